//! Card callbacks over Stream: a button press pushed as a CALLBACK frame on [`CARD_TOPIC`] to
//! a connection that subscribed that topic, and the ACK it gets back (see
//! [`crate::cards`]).

use std::time::Instant;

use serde_json::{Map, json};
use tokio::sync::oneshot;

use super::{CARD_TOPIC, Gateway, Pending, RecordedAck, dispatch};

impl Gateway {
    /// Pushes a card callback `data` as a CALLBACK frame on [`CARD_TOPIC`] with `messageId`
    /// `message_id` and `time` header `time_ms`, to one live connection that subscribed the
    /// topic, in turn; the receiver gets the next ACK of that `messageId`. `None` when no
    /// live connection subscribed the topic (nothing is pushed then).
    ///
    /// A `message_id` still unacknowledged is pushed again at once; one acknowledged before
    /// is pushed again as a new frame with the same id: both are DingTalk's re-push. Until
    /// acknowledged it is re-pushed like any frame, to subscribers only.
    pub(crate) fn push_card_callback(
        &self,
        message_id: &str,
        time_ms: &str,
        data: String,
    ) -> Option<oneshot::Receiver<RecordedAck>> {
        let mut s = self.state();
        let subscribed = s
            .live
            .iter()
            .any(|l| l.info.subscriptions.iter().any(|sub| sub.topic == CARD_TOPIC));
        if !subscribed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        s.ack_waiters.entry(message_id.to_owned()).or_default().push(tx);
        let idx = match s.pending.iter().position(|p| p.message_id == message_id) {
            Some(idx) => idx,
            None => {
                let mut headers = Map::new();
                headers.insert("appId".into(), json!(self.app_id));
                headers.insert("contentType".into(), json!("application/json"));
                headers.insert("messageId".into(), json!(message_id));
                headers.insert("time".into(), json!(time_ms));
                headers.insert("topic".into(), json!(CARD_TOPIC));
                s.seq += 1;
                let seq = s.seq;
                s.sent.insert(
                    message_id.to_owned(),
                    ("CALLBACK".to_owned(), CARD_TOPIC.to_owned()),
                );
                s.pending.push(Pending {
                    seq,
                    message_id: message_id.to_owned(),
                    frame_type: "CALLBACK".to_owned(),
                    topic: CARD_TOPIC.to_owned(),
                    headers,
                    data,
                    attempts: 0,
                    next_at: Instant::now(),
                    subscribers_only: true,
                });
                s.pending.len() - 1
            }
        };
        dispatch(&mut s, idx, self.timing.repush_after);
        Some(rx)
    }
}
