//! The wire format of DingTalk's answers: reading a body, telling success from an error
//! code or status, and mapping transport failures without their URLs (a legacy URL carries
//! the access token). A change to how an answer is read belongs here.

use std::time::Duration;

use reqwest::Response;
use secrecy::SecretString;
use serde_json::Value;
use url::Url;

use super::{ApiError, ErrorClass};
use crate::config::DingTalkSettings;

/// Largest answer body read from DingTalk; anything bigger is an error.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Maps a transport error without its URL: a legacy URL carries the access token.
pub(super) fn transport(e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::Timeout
    } else if e.is_connect() {
        ApiError::Connect
    } else {
        ApiError::Transport(e.without_url().to_string())
    }
}

pub(super) async fn read_body(mut resp: Response) -> Result<(u16, Value), ApiError> {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ApiError::Decode(format!(
                "answer larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((status, Value::Null));
    }
    match serde_json::from_slice(&body) {
        Ok(v) => Ok((status, v)),
        Err(_) if status >= 400 => Ok((status, Value::Null)),
        Err(e) => Err(ApiError::Decode(format!("HTTP {status}, body is not JSON: {e}"))),
    }
}

/// Reads a legacy answer: success needs HTTP 2xx and `errcode == 0` (and `success` true
/// where the API sends it).
pub(super) fn legacy_outcome(status: u16, v: &Value) -> Result<(), ApiError> {
    if let Some(errcode) = v.get("errcode").and_then(Value::as_i64)
        && errcode != 0
    {
        return Err(ApiError::Code {
            errcode,
            errmsg: v.get("errmsg").and_then(Value::as_str).unwrap_or("").to_owned(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(status_error(status, v));
    }
    match v.get("errcode").and_then(Value::as_i64) {
        Some(0) => {}
        _ => {
            return Err(ApiError::Decode(format!("HTTP {status} without an errcode")));
        }
    }
    if v.get("success").is_some_and(|s| s != &Value::Bool(true)) {
        return Err(ApiError::Code {
            errcode: 0,
            errmsg: "success was not true".into(),
        });
    }
    Ok(())
}

pub(super) fn status_error(status: u16, v: &Value) -> ApiError {
    ApiError::Status {
        status,
        code: v.get("code").and_then(Value::as_str).unwrap_or("").to_owned(),
        message: v.get("message").and_then(Value::as_str).unwrap_or("").to_owned(),
    }
}

/// How long an idle connection is kept for the next call: less than the 5 s after which
/// common servers (actix-web, hence the simulator; Node; Apache) close an idle keep-alive
/// connection. A call sent on a connection the server is closing fails with a transport
/// error, and a reply is not repeated after one (it might be posted twice,
/// docs/dingtalk.md), so the reply would be lost.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// The HTTP client of every DingTalk call: the configured timeouts, no redirects, our user
/// agent, idle connections kept for [`POOL_IDLE`], and the `proxy` when one is set. The
/// Stream ingress opens its connections with one too.
pub fn http_client(settings: &DingTalkSettings) -> Result<reqwest::Client, ApiError> {
    http_client_with(settings, POOL_IDLE)
}

fn http_client_with(settings: &DingTalkSettings, pool_idle: Duration) -> Result<reqwest::Client, ApiError> {
    let mut builder = reqwest::Client::builder()
        .pool_idle_timeout(pool_idle)
        .timeout(settings.upstream_timeout())
        .connect_timeout(settings.upstream_connect_timeout())
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dingops/", env!("CARGO_PKG_VERSION")));
    if let Some(proxy) = &settings.proxy {
        let proxy = reqwest::Proxy::all(proxy.url()).map_err(|e| ApiError::Transport(e.to_string()))?;
        builder = builder.proxy(proxy);
    }
    builder
        .build()
        .map_err(|e| ApiError::Transport(e.without_url().to_string()))
}

pub(super) fn join(base: &str, path: &str) -> Result<Url, ApiError> {
    Url::parse(&format!("{}{path}", base.trim_end_matches('/')))
        .map_err(|e| ApiError::Decode(format!("bad URL for {path}: {e}")))
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(super) fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The token and its lifetime (0 when absent) from a token answer.
pub(super) fn token_from(
    v: &Value,
    token_field: &str,
    ttl_field: &str,
) -> Result<(SecretString, i64), ApiError> {
    let token = v
        .get(token_field)
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Decode(format!("token answer without {token_field}")))?;
    let ttl = v.get(ttl_field).and_then(Value::as_i64).unwrap_or(0);
    Ok((SecretString::from(token.to_owned()), ttl))
}

/// A refused token request means the credentials are wrong: not worth a retry.
pub(super) fn credentials_error(e: ApiError) -> ApiError {
    match e.class() {
        ErrorClass::Transient | ErrorClass::RateLimited => e,
        _ => ApiError::Credentials(e.short()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    /// A server whose keep-alive has always just run out: it answers the first request of a
    /// connection and closes the connection unanswered when a second one comes on it (what
    /// an idle timer firing just then does). Its address.
    fn closing_idle_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}/robot/sendBySession", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    let mut answered = false;
                    loop {
                        let (mut line, mut length) = (String::new(), 0);
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        if answered {
                            return;
                        }
                        let ok = b"{\"errcode\":0,\"errmsg\":\"ok\"}";
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", ok.len());
                        conn.write_all(&[head.as_bytes(), ok].concat()).unwrap();
                        answered = true;
                    }
                });
            }
        });
        address
    }

    /// Two calls 500 ms apart to the server above, on a client that keeps idle connections
    /// for `pool_idle`: whether each succeeded.
    async fn two_calls(pool_idle: Duration) -> (bool, bool) {
        let env = [("DINGOPS_APP_KEY", "k"), ("DINGOPS_APP_SECRET", "s")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let settings = crate::config::Settings::from_sources(None, &env).unwrap();
        let client = http_client_with(&settings.dingtalk, pool_idle).unwrap();
        let url = closing_idle_server();
        // Read in full, as every call is, so the connection goes back to the pool.
        let call = || async {
            let resp = client.post(&url).body("{}").send().await.map_err(transport)?;
            read_body(resp).await
        };
        let first = call().await.is_ok();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = call().await.is_ok();
        (first, second)
    }

    #[tokio::test]
    async fn a_call_after_a_pause_longer_than_the_pool_keeps_connections_goes_on_a_new_one() {
        // Kept past the server's idle time, the connection is reused as the server closes
        // it: the call fails (a reply would be lost).
        assert_eq!(two_calls(Duration::from_secs(90)).await, (true, false));
        // Given up before the server would close it: a new connection, and the call goes.
        assert_eq!(two_calls(Duration::from_millis(200)).await, (true, true));
    }

    #[test]
    fn idle_connections_are_given_up_before_a_five_second_keep_alive_runs_out() {
        assert!(POOL_IDLE < Duration::from_secs(5));
    }
}
