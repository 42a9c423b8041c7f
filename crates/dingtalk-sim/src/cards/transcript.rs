//! The group transcript of cards: a new card and each update written as text where the
//! robot's other replies are (see [`super::render`]).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;

use super::{CardChange, ParamMap, SimCard, render};
use crate::RecordedReply;
use crate::clock::now_ms;
use crate::state::State;

/// Applies `change` to the card `out_track_id` and writes `[card update] …` to its group's
/// transcript; `false` when there is no such card.
pub(crate) fn update(s: &mut State, out_track_id: &str, change: &CardChange, body: Value) -> bool {
    let Some(card) = s.cards.get_mut(out_track_id) else {
        return false;
    };
    change.apply(card);
    let card = card.clone();
    transcribe(s, &card, "card-update", &change.private, body);
    true
}

/// Writes `card` to its group's transcript, with the `notice`s of `private` (`via`: `card`
/// for a new card, `card-update` for an update).
pub(crate) fn transcribe(
    s: &mut State,
    card: &SimCard,
    via: &str,
    private: &BTreeMap<String, ParamMap>,
    body: Value,
) {
    let head = if via == "card" { "[card]" } else { "[card update]" };
    s.replies.push(RecordedReply {
        via: via.to_owned(),
        open_conversation_id: card.conversation_id.clone(),
        at_ms: now_ms(),
        content: render(head, &card.params, private),
        at_user_ids: Vec::new(),
        body,
        session: None,
        received: Instant::now(),
    });
}
