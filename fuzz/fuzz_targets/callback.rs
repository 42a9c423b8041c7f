//! The callback entry point: signature headers, then the body, as the route sees them.
//! Input: `timestamp \n sign \n body`.
#![no_main]

use dingops::domain::{ReplyHost, ReplyHosts};
use dingops::ingress::payload::Callback;
use dingops::ingress::signature::Verifier;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

fuzz_target!(|data: &[u8]| {
    let verifier = Verifier::new(SecretString::from("fuzz-secret".to_owned()), 3600);
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let ts = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let sign = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let body = parts.next().unwrap_or_default();
    let _ = verifier.verify_at(ts, sign, 1_700_000_000_000);
    // A correctly signed request reaches the parser; fuzz it on every input.
    if let Ok(cb) = Callback::parse(body) {
        let _ = cb.text();
        let _ = cb.conversation_type();
        // Then what the worker does with it: the reply URL goes through the allow-list.
        let accepted = cb.into_accepted(1_700_000_000_000);
        let hosts = ReplyHosts::new(ReplyHost::parse("oapi.dingtalk.com").into_iter().collect());
        if let Ok(url) = url::Url::parse(accepted.session_webhook.expose()) {
            let _ = hosts.allows(&url);
        }
    }
});
