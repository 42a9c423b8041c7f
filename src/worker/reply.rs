//! Turning answers into chat messages: the reply text (with the sender @-mentioned), the
//! advice a ❌ carries, and delivery to the sessionWebhook with the group-message fallback.

use serde_json::{Value, json};
use url::Url;

use super::WorkerContext;
use crate::clock::now_ms;
use crate::dingtalk::{ApiError, ErrorClass};
use crate::domain::{Accepted, Answer, ConversationType, Delivery, Outcome, who};
use crate::ledger::LedgerError;

/// sendBySession's answer for an expired or unknown session.
const SESSION_GONE: i64 = 300_001;

/// The reply body DingTalk expects on a sessionWebhook: text with the sender @-mentioned.
pub fn reply_message(job: &Accepted, answer: &Answer) -> Value {
    let staff = job.sender_staff_id.as_deref().filter(|s| !s.is_empty());
    let content = match staff {
        Some(s) => format!("{} @{s} {}", answer.outcome.mark(), answer.text),
        None => format!("{} {}", answer.outcome.mark(), answer.text),
    };
    json!({
        "msgtype": "text",
        "text": {"content": content},
        "at": {"atUserIds": staff.into_iter().collect::<Vec<_>>(), "isAtAll": false},
    })
}

/// The ❌ answer when DingTalk refused `what` or could not be reached.
pub fn failed(command: &str, what: &str, e: &ApiError) -> Answer {
    Answer {
        command: command.to_owned(),
        outcome: Outcome::Failed,
        errcode: e.errcode(),
        text: match e {
            ApiError::Code { .. } | ApiError::Status { .. } | ApiError::Credentials(_) => {
                format!("DingTalk refused {what} ({}): {}.", e.short(), advice(e))
            }
            _ => format!("{what} did not go through ({}): {}.", e.short(), advice(e)),
        },
        detail: e.to_string(),
    }
}

/// [`failed`] for a read of a group: a missing permission is `qyapi_chat_read` there.
pub fn failed_reading(command: &str, what: &str, e: &ApiError) -> Answer {
    let permission = e.errcode() == Some(60011)
        || matches!(e, ApiError::Status { code, .. } if code.contains("PermissionDenied"));
    let mut answer = failed(command, what, e);
    if permission {
        answer.text = format!(
            "DingTalk refused {what} ({}): the app lacks permission qyapi_chat_read; add it in the DingTalk developer console.",
            e.short()
        );
    }
    answer
}

/// The ❌ answer when the ledger failed mid-command; the details go to the log only.
pub fn ledger_failed(command: &str, e: &LedgerError) -> Answer {
    tracing::error!(error = %e, "ledger failed while running a command");
    Answer::new(
        command,
        Outcome::Failed,
        "dingops could not read or write its ledger; the operators have been told in the log. Try again later.",
        "ledger error",
    )
}

/// What an admin should do about a DingTalk failure (see docs/dingtalk.md#error-codes).
pub fn advice(e: &ApiError) -> String {
    match e {
        ApiError::Code { errcode: 34001, .. } => {
            "the bound chatid is invalid; rebind this group with /bind <chatid>".into()
        }
        ApiError::Code { errcode: 40036, .. } => {
            "DingTalk says a parameter was empty (40036); rebind this group with /bind <chatid>".into()
        }
        ApiError::Code { errcode: 60011, .. } => {
            "the app lacks permission qyapi_chat_manage; add it in the DingTalk developer console".into()
        }
        ApiError::Code { errcode: 400001, .. } | ApiError::Code { errcode: -1, .. } => {
            "DingTalk had a system error; try again in a minute".into()
        }
        ApiError::Status { code, .. } if code == "invalideChatId" || code == "invalidChatId" => {
            "DingTalk does not know that chatid; check it and try again".into()
        }
        ApiError::Status { message, .. } if message.contains("群主不在应用可见性内") => {
            "the group owner is outside the app's visibility scope (群主不在应用可见性内); add the owner to the app's visible range in the DingTalk developer console".into()
        }
        ApiError::Status { code, .. } if code == "parameter.invalid" || code.starts_with("invalidParameter") => {
            "DingTalk says a parameter is invalid; check that the bound chatid is right (rebind with /bind <chatid>)".into()
        }
        ApiError::Status { code, .. } if code.contains("PermissionDenied") || code.starts_with("permession") => {
            "the app lacks permission qyapi_chat_manage (to change groups) or qyapi_chat_read (to read them); add it in the DingTalk developer console".into()
        }
        ApiError::Status { code, .. } if code.starts_with("Forbidden") => {
            "the app lacks permission qyapi_chat_read, or the group owner is outside the app's visibility; check the developer console".into()
        }
        ApiError::Credentials(_) => "DingTalk refused the app's credentials; check app_key and app_secret".into(),
        e => match e.class() {
            ErrorClass::RateLimited => "DingTalk is rate-limiting this app; try again in a minute".into(),
            ErrorClass::Transient => "DingTalk could not be reached; try again in a minute".into(),
            ErrorClass::TokenRejected => {
                "DingTalk refused the app's access token; check app_key and app_secret".into()
            }
            ErrorClass::Permanent => "see the dingops log for details".into(),
        },
    }
}

impl WorkerContext {
    /// Sends the answer to the chat. The message's sessionWebhook comes first; when it has
    /// expired (by its time or DingTalk's 300001), a group chat gets the robot group-message
    /// API instead, which cannot @-mention, so the sender is named in the text.
    pub(super) async fn deliver(&self, job: &Accepted, answer: &Answer) -> Delivery {
        let expired = job.session_expires_ms.is_some_and(|exp| now_ms() >= exp);
        if !expired {
            let url = match Url::parse(job.session_webhook.expose()) {
                Ok(u) if self.reply_hosts.allows(&u) => u,
                _ => {
                    tracing::warn!(
                        "reply not sent: the sessionWebhook is not https://<reply_hosts entry>/robot/sendBySession"
                    );
                    return Delivery::HostNotAllowed;
                }
            };
            match self
                .dingtalk
                .send_by_session(&url, &reply_message(job, answer))
                .await
            {
                Ok(()) => return Delivery::Session,
                Err(e) if e.errcode() == Some(SESSION_GONE) => {
                    tracing::info!("sessionWebhook is gone (300001); falling back to a group message");
                }
                Err(e) => {
                    tracing::warn!(error = %e.short(), "reply failed");
                    return Delivery::Failed(e.short());
                }
            }
        }
        if job.conversation_type == ConversationType::OneToOne {
            tracing::warn!("reply not sent: the 1:1 session expired");
            return Delivery::Expired;
        }
        let content = format!(
            "{} {}: {}",
            answer.outcome.mark(),
            who(
                job.sender_staff_id.as_deref().unwrap_or(""),
                job.sender_nick.as_deref()
            ),
            answer.text
        );
        match self
            .dingtalk
            .send_group_message(&job.conversation_id, &content)
            .await
        {
            Ok(()) => Delivery::GroupMessage,
            Err(e) => {
                tracing::warn!(error = %e.short(), "fallback group message failed");
                Delivery::Failed(e.short())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dingtalk::error::code;

    #[test]
    fn advice_names_the_fix_for_documented_codes() {
        assert!(advice(&code(60011)).contains("qyapi_chat_manage"));
        assert!(advice(&code(34001)).contains("/bind"));
        assert!(advice(&code(400001)).contains("try again"));
        let status = |code: &str, message: &str| ApiError::Status {
            status: 400,
            code: code.into(),
            message: message.into(),
        };
        assert!(advice(&status("permession.checkFailed", "群主不在应用可见性内")).contains("visibility"));
        assert!(advice(&status("permession.checkFailed", "")).contains("qyapi_chat_manage"));
        assert!(advice(&status("parameter.invalid", "")).contains("/bind"));
    }

    #[test]
    fn a_refusal_by_dingtalk_names_the_errcode_and_the_fix() {
        let a = failed("/lock-dm", "/lock-dm", &code(60011));
        assert_eq!(a.outcome, Outcome::Failed);
        assert_eq!(a.errcode, Some(60011));
        assert_eq!(
            a.text,
            "DingTalk refused /lock-dm (60011): the app lacks permission qyapi_chat_manage; add it in the DingTalk developer console."
        );
    }

    #[test]
    fn a_timeout_says_the_command_did_not_go_through() {
        let a = failed("/lock-dm", "/lock-dm", &ApiError::Timeout);
        assert_eq!(
            a.text,
            "/lock-dm did not go through (timeout): DingTalk could not be reached; try again in a minute."
        );
    }
}
