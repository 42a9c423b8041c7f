//! Interactive cards as DingTalk keeps them (docs/dingtalk.md, Simulator fidelity): the cards
//! the robot created with `createAndDeliver` (served in `api/card.rs`), their public and
//! per-user private parameters as `PUT /v1.0/card/instances` and click answers left them,
//! the callback addresses registered per route key, and the failures queued for the card
//! APIs. `press.rs` plays a button click (over Stream or a signed HTTP POST) and applies
//! its answer; `control.rs` is how tests steer and read it (`Simulator` methods and the
//! `/_sim/cards*` routes). Cards show in the transcript ([`crate::Simulator::replies`]) as
//! text, rendered here.

pub(crate) mod control;
pub(crate) mod press;
pub(crate) mod transcript;

use std::collections::{BTreeMap, HashMap};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Parameters by name (`cardParamMap`): every value a string.
pub type ParamMap = BTreeMap<String, String>;

/// A card the robot created, as it stands now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimCard {
    pub out_track_id: String,
    /// The group's openConversationId (from `openSpaceId`).
    pub conversation_id: String,
    pub template_id: String,
    /// `STREAM` or `HTTP`.
    pub callback_type: String,
    /// Only for `HTTP`.
    pub callback_route_key: Option<String>,
    pub robot_code: String,
    /// The public `cardParamMap`.
    pub params: ParamMap,
    /// Private parameters by userId.
    pub private: BTreeMap<String, ParamMap>,
    /// Updates applied since it was created: `PUT`s and click answers.
    pub updates: u64,
    pub created_ms: u64,
}

/// A callback address registered with `card/callbacks/register` (its secret is never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardCallbackRoute {
    pub callback_route_key: String,
    pub callback_url: String,
}

/// Which card API call a queued failure hits ([`crate::Simulator::fail_cards`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardFailMode {
    /// `createAndDeliver` answers HTTP 500 `system.busy`.
    Status,
    /// `createAndDeliver` answers 200 with `deliverResults[0].success = false` (no card is
    /// kept).
    Deliver,
    /// `PUT /v1.0/card/instances` answers HTTP 500 `system.busy`.
    Update,
}

/// A button press to play ([`crate::Simulator::press_card`], `POST /_sim/cards/press`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CardPress {
    pub out_track_id: String,
    /// The clicker's userId (staff id).
    pub user_id: String,
    /// The action id (`undo`, `extend`, …); any id is sent, offered on the card or not.
    pub action: String,
    /// The Stream frame's `messageId`; a fresh one when absent. A press with an id used
    /// before sends that press's callback again, unchanged (a re-push).
    #[serde(default)]
    pub message_id: Option<String>,
    /// HTTP only: the `x-ddpaas-signature-timestamp` to send instead of the clock's (ms).
    #[serde(default)]
    pub timestamp: Option<String>,
    /// HTTP only: the `x-ddpaas-signature` to send instead of the right one.
    #[serde(default)]
    pub signature: Option<String>,
}

impl CardPress {
    /// A press of `action` on the card `out_track_id` by `user_id`.
    pub fn new(out_track_id: &str, user_id: &str, action: &str) -> Self {
        Self {
            out_track_id: out_track_id.to_owned(),
            user_id: user_id.to_owned(),
            action: action.to_owned(),
            ..Self::default()
        }
    }

    /// The same press with this `messageId` (pressing twice with one id is a re-push).
    #[must_use]
    pub fn message_id(mut self, message_id: &str) -> Self {
        self.message_id = Some(message_id.to_owned());
        self
    }
}

/// What became of a press.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardPressOutcome {
    /// Stream: pushed to a connection that subscribed the card topic; HTTP: the registered
    /// URL answered.
    pub delivered: bool,
    /// The ACK's `code` or the HTTP status; `None` when none came within 5 s.
    pub status: Option<i64>,
    /// The answer: the ACK data's `response`, or the HTTP body (JSON), if any.
    pub response: Option<Value>,
    /// Whether the answer updated the card (status 200 and a well-formed update).
    pub applied: bool,
    /// From the push (or POST) to the answer.
    pub latency_ms: u64,
    /// The frame's `messageId`, for a re-push.
    pub message_id: String,
}

/// A registered callback address.
pub(crate) struct Route {
    pub(crate) url: String,
    pub(crate) secret: SecretString,
}

/// A press's callback as first sent, sent again unchanged for the same `messageId`.
#[derive(Clone)]
pub(crate) struct SentPress {
    pub(crate) data: String,
    pub(crate) timestamp: String,
    /// The clicker, whose private parameters the answer's `userPrivateData` updates.
    pub(crate) user_id: String,
}

/// The simulator's card state (a part of [`State`]).
#[derive(Default)]
pub(crate) struct Cards {
    pub(crate) cards: Vec<SimCard>,
    pub(crate) routes: BTreeMap<String, Route>,
    pub(crate) fail_status: u32,
    pub(crate) fail_deliver: u32,
    pub(crate) fail_update: u32,
    pub(crate) presses: HashMap<String, SentPress>,
}

impl Cards {
    pub(crate) fn get_mut(&mut self, out_track_id: &str) -> Option<&mut SimCard> {
        self.cards.iter_mut().find(|c| c.out_track_id == out_track_id)
    }

    /// Takes one queued failure of `mode`: `true` when there was one.
    pub(crate) fn take_failure(&mut self, mode: CardFailMode) -> bool {
        let left = match mode {
            CardFailMode::Status => &mut self.fail_status,
            CardFailMode::Deliver => &mut self.fail_deliver,
            CardFailMode::Update => &mut self.fail_update,
        };
        if *left == 0 {
            return false;
        }
        *left -= 1;
        true
    }
}

/// `{k: "v", …}` with every value a string; `None` for anything else.
pub(crate) fn param_map(v: &Value) -> Option<ParamMap> {
    v.as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// `cardData.cardParamMap` of `body`: `Ok(None)` when `cardData` is absent, `Err` when it
/// or its map is malformed.
pub(crate) fn card_data(body: &Value, field: &str) -> Result<Option<ParamMap>, ()> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(data) => data.get("cardParamMap").and_then(param_map).map(Some).ok_or(()),
    }
}

/// `privateData` of `body`: `{userId: {"cardParamMap": {…}}}`, empty when absent.
pub(crate) fn private_data(body: &Value) -> Result<BTreeMap<String, ParamMap>, ()> {
    match body.get("privateData") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(users)) => users
            .iter()
            .map(|(user, data)| {
                let map = data.get("cardParamMap").and_then(param_map).ok_or(())?;
                Ok((user.clone(), map))
            })
            .collect(),
        Some(_) => Err(()),
    }
}

/// A change to a card's parameters: merged by key, or replacing what was there.
pub(crate) struct CardChange {
    pub(crate) params: Option<ParamMap>,
    pub(crate) private: BTreeMap<String, ParamMap>,
    pub(crate) params_by_key: bool,
    pub(crate) private_by_key: bool,
}

impl CardChange {
    /// The `cardUpdateOptions` flags of `body` (absent: replace).
    pub(crate) fn options(body: &Value) -> (bool, bool) {
        let flag = |name: &str| {
            body.pointer(&format!("/cardUpdateOptions/{name}"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        (flag("updateCardDataByKey"), flag("updatePrivateDataByKey"))
    }

    fn apply(&self, card: &mut SimCard) {
        if let Some(params) = &self.params {
            if self.params_by_key {
                card.params.extend(params.clone());
            } else {
                card.params = params.clone();
            }
        }
        for (user, map) in &self.private {
            let mine = card.private.entry(user.clone()).or_default();
            if self.private_by_key {
                mine.extend(map.clone());
            } else {
                *mine = map.clone();
            }
        }
        card.updates += 1;
    }
}

/// A button's label for an action id.
fn label(action: &str) -> &str {
    match action {
        "undo" => "Undo",
        "extend" => "Extend",
        "revert_now" => "Revert now",
        "approve" => "Approve",
        "discard" => "Discard",
        other => other,
    }
}

/// A card as text: `<head> <title> — <status>`, the body, the buttons (`[Undo] [Extend]`),
/// then `(to <userId> only) <notice>` for each private `notice` that is not empty (an empty
/// one clears an old notice: nothing to show).
pub(crate) fn render(head: &str, params: &ParamMap, private: &BTreeMap<String, ParamMap>) -> String {
    let get = |k: &str| params.get(k).map_or("", String::as_str);
    let mut lines = vec![format!("{head} {} — {}", get("title"), get("status"))];
    if !get("body").is_empty() {
        lines.push(get("body").to_owned());
    }
    let buttons = get("buttons");
    match serde_json::from_str::<Vec<String>>(buttons) {
        Ok(ids) if !ids.is_empty() => lines.push(
            ids.iter()
                .map(|id| format!("[{}]", label(id)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Ok(_) => {}
        Err(_) if buttons.is_empty() => {}
        Err(_) => lines.push(format!("(buttons not a JSON list of ids: {buttons})")),
    }
    for (user, map) in private {
        if let Some(notice) = map.get("notice").filter(|n| !n.is_empty()) {
            lines.push(format!("(to {user} only) {notice}"));
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> ParamMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_card_renders_its_title_status_body_buttons_and_private_notices() {
        let params = map(&[
            ("title", "DMs off"),
            ("status", "done"),
            ("body", "by Admin"),
            ("buttons", r#"["undo","extend","revert_now","approve","discard"]"#),
        ]);
        let private = BTreeMap::from([
            ("u1".to_owned(), map(&[("notice", "admins only")])),
            ("u2".to_owned(), map(&[("notice", "")])),
        ]);
        assert_eq!(
            render("[card]", &params, &private),
            "[card] DMs off — done\nby Admin\n[Undo] [Extend] [Revert now] [Approve] [Discard]\n\
             (to u1 only) admins only"
        );
    }

    #[test]
    fn no_buttons_and_no_body_leave_just_the_head_line() {
        let params = map(&[("title", "t"), ("status", "superseded"), ("buttons", "[]")]);
        assert_eq!(
            render("[card update]", &params, &BTreeMap::new()),
            "[card update] t — superseded"
        );
    }

    #[test]
    fn param_maps_take_string_values_only() {
        assert_eq!(
            param_map(&serde_json::json!({"a": "1"})),
            Some(map(&[("a", "1")]))
        );
        assert_eq!(param_map(&serde_json::json!({"a": 1})), None);
        assert_eq!(param_map(&serde_json::json!(["a"])), None);
    }
}
