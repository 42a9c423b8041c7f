//! Turning answers into chat messages: the reply text (with the sender @-mentioned), the
//! advice a ❌ carries, and delivery to the sessionWebhook with the group-message fallback.

use serde_json::{Value, json};
use url::Url;

use super::WorkerContext;
use crate::advice::{Needs, advice_for};
use crate::dingtalk::ApiError;
use crate::domain::{Accepted, Answer, ConversationType, Delivery, Outcome, ReplyCard, who};
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
    failed_needing(command, what, e, Needs::ChangeGroups)
}

/// [`failed`] for a call that needs `needs` (a missing permission is named after it).
fn failed_needing(command: &str, what: &str, e: &ApiError, needs: Needs) -> Answer {
    let advice = |e| advice_for(e, needs);
    Answer {
        command: command.to_owned(),
        outcome: Outcome::Failed,
        errcode: e.errcode(),
        text: match e {
            // 90020, or dingops' own monthly budget: no retry will help before the month
            // rolls over, so the reply says when that is.
            ApiError::Quota(q) => format!(
                "The organisation's monthly DingTalk API quota is spent, so {what} did not go through; it renews {}.",
                q.renews
            ),
            ApiError::Code { .. } | ApiError::Status { .. } | ApiError::Credentials(_) => {
                format!("DingTalk refused {what} ({}): {}.", e.short(), advice(e))
            }
            _ => format!("{what} did not go through ({}): {}.", e.short(), advice(e)),
        },
        detail: e.to_string(),
        card: None,
    }
}

/// [`failed`] for a read of a group: a missing permission is `qyapi_chat_read` there.
pub fn failed_reading(command: &str, what: &str, e: &ApiError) -> Answer {
    failed_needing(command, what, e, Needs::ReadGroups)
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

impl WorkerContext {
    /// Replies to a command: a switch command's answer as a card when cards are on (text
    /// when the card could not be sent), anything else as text. A change supersedes the
    /// cards of earlier changes of its setting.
    pub(super) async fn reply(&self, job: &Accepted, answer: &Answer) -> Delivery {
        let (Some(cards), Some(card)) = (&self.cards, answer.card.as_deref()) else {
            return self.deliver(job, answer).await;
        };
        let sent = match card {
            ReplyCard::Setting(change) => cards.send_answer(job, answer, change).await,
            ReplyCard::Plan { code, out_track_id } => cards.send_plan(job, answer, code, out_track_id).await,
        };
        let (delivery, keep) = match sent {
            Ok(id) => (Delivery::Card, Some(id)),
            Err(_) => (self.deliver(job, answer).await, None),
        };
        if let (ReplyCard::Setting(change), Outcome::Ok) = (card, answer.outcome) {
            cards
                .supersede(
                    &job.conversation_id,
                    &change.setting,
                    keep.as_deref(),
                    &change.by,
                    &change.command,
                )
                .await;
        }
        delivery
    }

    /// Sends the answer to the chat as text. The message's sessionWebhook comes first; when it has
    /// expired (by its time or DingTalk's 300001), a group chat gets the robot group-message
    /// API instead, which cannot @-mention, so the sender is named in the text.
    pub(super) async fn deliver(&self, job: &Accepted, answer: &Answer) -> Delivery {
        let expired = job
            .session_expires_ms
            .is_some_and(|exp| self.clock.now_ms() >= exp);
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
