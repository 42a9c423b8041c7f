//! `dingops send`: a correctly signed callback to a running dingops (smoke test).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::clock::Clock;
use crate::config::Settings;
use crate::ingress::signature::Verifier;

/// What to send: the message as a (pretend) sender typed it in a group.
#[derive(Debug, Clone)]
pub struct Smoke {
    /// Base URL of the running dingops, e.g. http://127.0.0.1:8080
    pub url: String,
    /// The text, as typed after @-mentioning the robot.
    pub text: String,
    /// senderStaffId of the sender.
    pub sender: String,
    /// Send isAdmin: true.
    pub admin: bool,
    /// openConversationId of the group.
    pub group: String,
    /// sessionWebhook to put in the callback (where the reply goes).
    pub session_webhook: String,
}

/// Sends `smoke` signed with the configured app secret, at `clock`'s now; prints the HTTP
/// status and answer.
pub async fn send(config: Option<&Path>, smoke: &Smoke, clock: &dyn Clock) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config)?;
    let body = smoke_callback(
        &smoke.group,
        &smoke.sender,
        smoke.admin,
        &smoke.text,
        &smoke.session_webhook,
        clock.now_ms(),
    );
    let (status, answer) = post_signed(&smoke.url, &settings.dingtalk.app_secret, &body, clock.now_ms())
        .await
        .with_context(|| format!("cannot reach {}", smoke.url))?;
    super::write_stdout(&format!("HTTP {status} {answer}\n"))?;
    Ok(if status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The callback DingTalk would send when `sender` @-mentions the robot in `group` and types
/// `text`, with a fresh msgId and a reply session valid for 90 minutes. `send` builds it
/// here rather than with the simulator's builder so that builds without the simulator (the
/// `demo` feature) keep this smoke test.
fn smoke_callback(
    group: &str,
    sender: &str,
    admin: bool,
    text: &str,
    session_webhook: &str,
    now: u64,
) -> Value {
    use rand::RngExt as _;
    let msg_id = format!("smoke{:032x}", rand::rng().random::<u128>());
    json!({
        "msgId": msg_id,
        "msgtype": "text",
        "createAt": now,
        "conversationId": group,
        "conversationType": "2",
        "conversationTitle": "dingops smoke test",
        "senderStaffId": sender,
        "senderNick": sender,
        "isAdmin": admin,
        "isInAtList": true,
        // DingTalk strips the robot's @name and leaves a leading space.
        "text": {"content": format!(" {text}")},
        "sessionWebhook": session_webhook,
        "sessionWebhookExpiredTime": now + 90 * 60 * 1000,
    })
}

/// Posts `body` to the dingops at `base_url` with `timestamp` and `sign` headers for `now_ms`,
/// signed with `secret`; returns the HTTP status and the answer.
async fn post_signed(
    base_url: &str,
    secret: &SecretString,
    body: &Value,
    now_ms: u64,
) -> reqwest::Result<(u16, String)> {
    let timestamp = now_ms.to_string();
    let sign = Verifier::new(secret.clone(), 0).sign(&timestamp);
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()?
        .post(format!("{}/callback", base_url.trim_end_matches('/')))
        .header("content-type", "application/json; charset=utf-8")
        .header("timestamp", timestamp)
        .header("sign", sign)
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}
