//! The robot message body, parsed leniently: unknown fields are ignored, numbers that the
//! docs call strings are accepted either way. HTTP callbacks and Stream-mode frames carry the
//! same JSON (see docs/dingtalk.md#callback-payload).

use serde::{Deserialize, Deserializer};

use crate::domain::{Accepted, ConversationType, SessionWebhook};

/// One robot callback as DingTalk sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Callback {
    /// Stable message id: the dedupe key.
    pub msg_id: String,
    /// `text`, `richText`, `picture`, …
    pub msgtype: String,
    /// The openConversationId of the chat.
    pub conversation_id: String,
    /// `"1"` for a 1:1 chat, `"2"` for a group.
    #[serde(deserialize_with = "string_or_number")]
    pub conversation_type: String,
    #[serde(default)]
    pub conversation_title: Option<String>,
    #[serde(default)]
    pub sender_staff_id: Option<String>,
    #[serde(default)]
    pub sender_nick: Option<String>,
    #[serde(default)]
    pub is_admin: Option<bool>,
    #[serde(default)]
    pub text: Option<TextBody>,
    /// Fallback seen in one doc sample: the text as a top-level string.
    #[serde(default)]
    pub content: Option<serde_json::Value>,
    pub session_webhook: SessionWebhook,
    #[serde(default, deserialize_with = "opt_millis")]
    pub session_webhook_expired_time: Option<u64>,
    #[serde(default, deserialize_with = "opt_millis")]
    pub create_at: Option<u64>,
}

/// `text` of a text message.
#[derive(Debug, Clone, Deserialize)]
pub struct TextBody {
    #[serde(default)]
    pub content: String,
}

/// Why a body was refused with 400.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not UTF-8 JSON: {0}")]
    Json(String),
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
}

impl Callback {
    /// Parses and checks a callback body.
    pub fn parse(body: &[u8]) -> Result<Self, PayloadError> {
        let cb: Callback = serde_json::from_slice(body).map_err(|e| {
            // serde's message names the field and position, never the value of a string.
            PayloadError::Json(e.to_string())
        })?;
        for (name, value) in [
            ("msgId", cb.msg_id.as_str()),
            ("conversationId", cb.conversation_id.as_str()),
            ("msgtype", cb.msgtype.as_str()),
            ("sessionWebhook", cb.session_webhook.expose()),
        ] {
            if value.trim().is_empty() {
                return Err(PayloadError::Empty(name));
            }
        }
        if cb.msg_id.len() > 512 || cb.conversation_id.len() > 512 {
            return Err(PayloadError::Json(
                "msgId or conversationId longer than 512 bytes".into(),
            ));
        }
        Ok(cb)
    }

    /// The trimmed text of a text message, or `None` for other message types.
    pub fn text(&self) -> Option<String> {
        if self.msgtype != "text" {
            return None;
        }
        let raw = match (&self.text, &self.content) {
            (Some(t), _) => t.content.as_str(),
            (None, Some(serde_json::Value::String(s))) => s.as_str(),
            _ => "",
        };
        Some(raw.trim().to_owned())
    }

    /// Where the message was typed.
    pub fn conversation_type(&self) -> ConversationType {
        ConversationType::from_wire(&self.conversation_type)
    }

    /// The message as the pipeline takes it, received at `received_ms`.
    pub fn into_accepted(self, received_ms: u64) -> Accepted {
        Accepted {
            text: self.text(),
            conversation_type: self.conversation_type(),
            msg_id: self.msg_id,
            received_ms,
            conversation_id: self.conversation_id,
            conversation_title: self.conversation_title,
            sender_staff_id: self.sender_staff_id,
            sender_nick: self.sender_nick,
            sender_is_admin: self.is_admin.unwrap_or(false),
            msgtype: self.msgtype,
            session_webhook: self.session_webhook,
            session_expires_ms: self.session_webhook_expired_time,
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        N(i64),
    }
    Ok(match V::deserialize(d)? {
        V::S(s) => s,
        V::N(n) => n.to_string(),
    })
}

fn opt_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        N(u64),
        F(f64),
        S(String),
    }
    Ok(match Option::<V>::deserialize(d)? {
        None => None,
        Some(V::N(n)) => Some(n),
        Some(V::F(f)) if f.is_finite() && f >= 0.0 => Some(f as u64),
        Some(V::F(_)) => None,
        Some(V::S(s)) => s.trim().parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFICIAL_SAMPLE: &str = r#"{
        "conversationId": "xxx",
        "atUsers": [ { "dingtalkId": "xxx", "staffId":"xxx", "unionId":"edxxx34" } ],
        "chatbotCorpId": "dinge8a565xxxx",
        "chatbotUserId": "$:LWCP_v1:$Cxxxxx",
        "msgId": "msg0xxxxx",
        "senderNick": "杨xx",
        "isAdmin": true,
        "senderStaffId": "user123",
        "sessionWebhookExpiredTime": 1613635652738,
        "createAt": 1613630252678,
        "senderCorpId": "dinge8a565xxxx",
        "conversationType": "2",
        "senderId": "$:LWCP_v1:$Ff09GIxxxxx",
        "conversationTitle": "机器人测试-TEST",
        "isInAtList": true,
        "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=xxxxx",
        "text": { "content": " 你好" },
        "msgtype": "text"
    }"#;

    #[test]
    fn the_official_sample_parses_and_its_text_is_trimmed() {
        let cb = Callback::parse(OFFICIAL_SAMPLE.as_bytes()).unwrap();
        assert_eq!(cb.msg_id, "msg0xxxxx");
        assert_eq!(cb.sender_staff_id.as_deref(), Some("user123"));
        assert_eq!(cb.is_admin, Some(true));
        assert_eq!(cb.session_webhook_expired_time, Some(1_613_635_652_738));
        assert_eq!(cb.text().as_deref(), Some("你好"));
        assert_eq!(cb.conversation_type(), ConversationType::Group);
    }

    #[test]
    fn debug_output_redacts_the_session_webhook() {
        let cb = Callback::parse(OFFICIAL_SAMPLE.as_bytes()).unwrap();
        assert!(!format!("{cb:?}").contains("session=xxxxx"));
    }

    #[test]
    fn a_missing_required_field_is_an_error() {
        let body = OFFICIAL_SAMPLE.replace("\"msgId\": \"msg0xxxxx\",", "");
        let err = Callback::parse(body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("msgId"), "{err}");
    }

    #[test]
    fn an_empty_msg_id_is_an_error() {
        let body = OFFICIAL_SAMPLE.replace("msg0xxxxx", " ");
        assert!(matches!(
            Callback::parse(body.as_bytes()),
            Err(PayloadError::Empty("msgId"))
        ));
    }

    #[test]
    fn timestamps_sent_as_strings_are_accepted() {
        let body = OFFICIAL_SAMPLE.replace("1613635652738", "\"1613635652738\"");
        let cb = Callback::parse(body.as_bytes()).unwrap();
        assert_eq!(cb.session_webhook_expired_time, Some(1_613_635_652_738));
    }

    #[test]
    fn a_top_level_content_string_is_the_fallback_text() {
        let body = OFFICIAL_SAMPLE.replace(
            "\"text\": { \"content\": \" 你好\" },",
            "\"content\": \" /help \",",
        );
        assert_eq!(
            Callback::parse(body.as_bytes()).unwrap().text().as_deref(),
            Some("/help")
        );
    }

    #[test]
    fn a_picture_has_no_text() {
        let body = OFFICIAL_SAMPLE.replace("\"msgtype\": \"text\"", "\"msgtype\": \"picture\"");
        assert_eq!(Callback::parse(body.as_bytes()).unwrap().text(), None);
    }
}
