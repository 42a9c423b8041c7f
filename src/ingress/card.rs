//! Button clicks on dingops' interactive cards, as both ingresses hand them to the pipeline:
//! the click (read from a Stream frame's `data` or the HTTP body, which are the same JSON)
//! and the answer DingTalk shows at once. See docs/dingtalk.md, "Interactive cards".

use serde_json::Value;

use super::Pipeline;

/// A click on a card's button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardClick {
    /// Our id of the card (`outTrackId`).
    pub out_track_id: String,
    /// The clicker's userId (staffId).
    pub user_id: String,
    /// The button's action id (`undo`, `extend`, ...).
    pub action: String,
    /// The group the card is in, when the callback says.
    pub space_id: Option<String>,
}

/// The pipeline's answer to a click.
#[derive(Debug, Clone, PartialEq)]
pub enum ClickAck {
    /// Answer with this object (the Stream ACK's `response`; the HTTP body itself).
    Answer(Value),
    /// The ledger could not record it: do not acknowledge (Stream) or answer 503 (HTTP), so
    /// that DingTalk pushes it again.
    Unavailable,
}

impl Pipeline {
    /// Enters a click once (by `identity`: the same identity twice runs once) and answers it
    /// (see `cards::gate`). Without cards configured, every click is answered "unknown card".
    pub async fn accept_click(&self, identity: String, click: CardClick) -> ClickAck {
        let Some(gate) = &self.cards else {
            return ClickAck::Answer(crate::cards::gate::response(
                &Default::default(),
                crate::cards::gate::UNKNOWN_CARD,
            ));
        };
        match gate
            .enter(&identity, &click.out_track_id, &click.user_id, &click.action)
            .await
        {
            Ok(admitted) => {
                if admitted.new {
                    self.intake.wake();
                }
                ClickAck::Answer(admitted.response)
            }
            Err(e) => {
                tracing::error!(error = %e, "ledger unavailable; card click not acknowledged");
                ClickAck::Unavailable
            }
        }
    }

    /// Answers a click whose identity was used before as a duplicate: nothing entered,
    /// nothing public shown (see `Gate::duplicate`).
    pub async fn duplicate_click(&self, click: &CardClick) -> ClickAck {
        let Some(gate) = &self.cards else {
            return ClickAck::Answer(crate::cards::gate::response(
                &Default::default(),
                crate::cards::gate::UNKNOWN_CARD,
            ));
        };
        match gate.duplicate(&click.out_track_id).await {
            Ok(admitted) => ClickAck::Answer(admitted.response),
            Err(e) => {
                tracing::error!(error = %e, "ledger unavailable; card click not acknowledged");
                ClickAck::Unavailable
            }
        }
    }
}
