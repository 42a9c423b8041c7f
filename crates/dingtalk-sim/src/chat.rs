//! The other half of the simulator: plays DingTalk's side of the robot callback, building
//! payloads shaped like the official samples and signing them with [`crate::sign`]. Used by
//! dingops' demo, tests and benchmarks.

use secrecy::SecretString;
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::sign::Signer;

/// Someone typing in a chat.
#[derive(Debug, Clone)]
pub struct Member {
    pub staff_id: String,
    pub nick: String,
    /// What DingTalk would send as `isAdmin`.
    pub is_admin: bool,
}

impl Member {
    pub fn new(staff_id: &str, nick: &str, is_admin: bool) -> Self {
        Self {
            staff_id: staff_id.into(),
            nick: nick.into(),
            is_admin,
        }
    }
}

/// Where a message is typed.
#[derive(Debug, Clone)]
pub struct Chat {
    pub open_conversation_id: String,
    pub title: String,
    /// `"2"` group, `"1"` 1:1.
    pub conversation_type: String,
    pub session_webhook: String,
    pub session_expires_ms: u64,
}

/// A fresh, unique msgId.
pub fn new_msg_id() -> String {
    use rand::RngExt as _;
    let n: u128 = rand::rng().random();
    format!("msg{n:032x}")
}

/// A robot callback body as DingTalk sends it for `text` typed by `sender` in `chat`.
pub fn text_message(msg_id: &str, chat: &Chat, sender: &Member, text: &str) -> Value {
    let now = now_ms();
    json!({
        "conversationId": chat.open_conversation_id,
        "atUsers": [{"dingtalkId": "$:LWCP_v1:$robot"}],
        "chatbotCorpId": "dingsimcorp",
        "chatbotUserId": "$:LWCP_v1:$robot",
        "msgId": msg_id,
        "senderNick": sender.nick,
        "isAdmin": sender.is_admin,
        "senderStaffId": sender.staff_id,
        "sessionWebhookExpiredTime": chat.session_expires_ms,
        "createAt": now,
        "senderCorpId": "dingsimcorp",
        "conversationType": chat.conversation_type,
        "senderId": format!("$:LWCP_v1:${}", sender.staff_id),
        "conversationTitle": chat.title,
        "isInAtList": true,
        "sessionWebhook": chat.session_webhook,
        // DingTalk strips the robot's @name and leaves a leading space.
        "text": {"content": format!(" {text}")},
        "msgtype": "text",
    })
}

/// Sends signed callbacks to a dingops `/callback`.
pub struct CallbackSender {
    http: reqwest::Client,
    url: String,
    signer: Signer,
}

impl CallbackSender {
    /// A sender for the dingops at `base_url` (`http://host:port`), signing with `secret`.
    pub fn new(base_url: &str, secret: SecretString) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            url: format!("{}/callback", base_url.trim_end_matches('/')),
            signer: Signer::new(secret),
        }
    }

    /// Current `timestamp` and `sign` headers.
    pub fn signed_headers(&self) -> (String, String) {
        self.signer.headers_now()
    }

    /// Posts `body` signed now; returns the status and the response body.
    pub async fn send(&self, body: &Value) -> Result<(u16, String), reqwest::Error> {
        let (ts, sign) = self.signed_headers();
        self.send_raw(body.to_string().into_bytes(), Some(&ts), Some(&sign))
            .await
    }

    /// Posts raw bytes with the given headers (absent when `None`).
    pub async fn send_raw(
        &self,
        body: Vec<u8>,
        timestamp: Option<&str>,
        sign: Option<&str>,
    ) -> Result<(u16, String), reqwest::Error> {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json; charset=utf-8")
            .body(body);
        if let Some(ts) = timestamp {
            req = req.header("timestamp", ts);
        }
        if let Some(s) = sign {
            req = req.header("sign", s);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, text))
    }
}
