//! What a click gets at once. DingTalk waits at most 2 s for the acknowledgement, so the gate
//! decides only what the ledger and the admin rule can tell quickly: a click from someone
//! who is not an admin, from an admin over the per-sender limit (the worker's
//! [`Authorizer`], shared: clicks and typed commands count together), an Extend past
//! [`MAX_EXTENDS`], a click on a card dingops does not know, on a button no longer offered,
//! or on a card already working gets a private notice and changes nothing; any other click
//! is entered once as a command (its identity is its msgId) and the card shows "working"
//! until the worker has run it. See docs/cards.md.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{CLICK_MSGTYPE, CardData};
use crate::clock::Clock;
use crate::domain::{Accepted, ConversationType, SessionWebhook};
use crate::ledger::{CardAction, CardHandle, CardKind, CardRow, CardStatus, ClickEntry, LedgerError};
use crate::worker::Authorizer;

/// How many times Extend works on one card; after that the card no longer offers it and a
/// new command is needed (each Extend is a card update, a call of the monthly quota).
pub const MAX_EXTENDS: u32 = 5;

/// The private notices a clicker may see.
pub const ADMINS_ONLY: &str = "Only dingops admins can use these buttons.";
pub const NEEDS_SECOND_ADMIN: &str =
    "This plan needs a second admin: another admin must approve it, not the one who asked for it.";
pub const NO_LONGER_VALID: &str = "This button is no longer valid: the card changed since you saw it.";
pub const ALREADY_WORKING: &str = "dingops is already working on a click on this card.";
pub const UNKNOWN_CARD: &str = "dingops does not know this card.";
pub const EXTENDS_USED: &str =
    "Extend works at most 5 times on one card; type a new command to change it again.";

/// What the gate decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The acknowledgement's `response` object.
    pub response: Value,
    /// Whether a new command was entered (the worker must be woken).
    pub new: bool,
}

/// The acknowledgement's `response`: the card's public parameters to show now (merged by
/// key), and the clicker's private notice (empty clears an old one).
pub fn response(params: &BTreeMap<String, String>, notice: &str) -> Value {
    json!({
        "cardUpdateOptions": {"updateCardDataByKey": true, "updatePrivateDataByKey": true},
        "cardData": {"cardParamMap": params},
        "userPrivateData": {"cardParamMap": {"notice": notice}},
    })
}

/// The command a click is entered as: the group of its card, the clicker as sender.
pub fn click_command(
    identity: &str,
    row: &CardRow,
    user_id: &str,
    action: CardAction,
    now_ms: u64,
) -> Accepted {
    Accepted {
        msg_id: identity.to_owned(),
        received_ms: now_ms,
        conversation_id: row.conversation_id.clone(),
        conversation_type: ConversationType::Group,
        conversation_title: None,
        sender_staff_id: Some(user_id.to_owned()),
        sender_nick: None,
        sender_is_admin: false,
        msgtype: CLICK_MSGTYPE.to_owned(),
        text: Some(format!("{action} {}", row.out_track_id)),
        session_webhook: SessionWebhook::new(""),
        session_expires_ms: None,
    }
}

/// The gate of one dingops: its ledger and the worker's admin rule.
#[derive(Clone)]
pub struct Gate {
    ledger: CardHandle,
    authorizer: Arc<Authorizer>,
    clock: Arc<dyn Clock>,
}

impl Gate {
    pub fn new(ledger: CardHandle, authorizer: Arc<Authorizer>, clock: Arc<dyn Clock>) -> Self {
        Self {
            ledger,
            authorizer,
            clock,
        }
    }

    /// Answers a click whose identity was used before: nothing entered, and nothing public
    /// shown. The first use of the pair may still be on its way into the ledger, so the card
    /// read now may be from before it; showing that would put its buttons back for everyone.
    /// `Err`: the ledger did not answer.
    pub async fn duplicate(&self, out_track_id: &str) -> Result<Admitted, LedgerError> {
        let id = out_track_id.to_owned();
        Ok(match self.ledger.call(move |l| l.card(&id)).await? {
            Some(_) => Admitted {
                response: response(&BTreeMap::new(), ""),
                new: false,
            },
            None => refused(&BTreeMap::new(), UNKNOWN_CARD),
        })
    }

    /// Decides a click (see the module's documentation). `Err`: the ledger did not answer;
    /// nothing was entered, and DingTalk will push the click again.
    pub async fn enter(
        &self,
        identity: &str,
        out_track_id: &str,
        user_id: &str,
        action: &str,
    ) -> Result<Admitted, LedgerError> {
        let id = out_track_id.to_owned();
        let Some(row) = self.ledger.call(move |l| l.card(&id)).await? else {
            return Ok(refused(&BTreeMap::new(), UNKNOWN_CARD));
        };
        let data = CardData::of(&row);
        let shown = data.params.clone();
        // A click carries no isAdmin: only the admin list admits its clicker.
        if !self.authorizer.is_admin(Some(user_id), false) {
            tracing::info!(action, "a card button was clicked by someone who is not an admin");
            return Ok(refused(&shown, ADMINS_ONLY));
        }
        // An action dingops does not know was never offered: refused as one no longer is,
        // before it counts against the per-sender limit.
        let Ok(action) = action.parse::<CardAction>() else {
            tracing::info!(action, "a card button dingops does not know was clicked");
            return Ok(refused(&BTreeMap::new(), NO_LONGER_VALID));
        };
        if row.kind == CardKind::Plan && action == CardAction::Approve && row.created_by == user_id {
            return Ok(refused(&shown, NEEDS_SECOND_ADMIN));
        }
        if action == CardAction::Extend && data.extends >= MAX_EXTENDS {
            return Ok(refused(&current(&row, &shown), EXTENDS_USED));
        }
        // The per-sender limit of admin commands, counted in the card's group; given back
        // below when the click is not entered after all. A click pushed again while it runs
        // was counted the first time.
        let counted = row.pending_click.as_deref() != Some(identity);
        let at = self.clock.instant();
        if counted && !self.authorizer.take(&row.conversation_id, user_id, at) {
            tracing::info!(%action, "a card button was clicked over the per-sender limit");
            return Ok(refused(&current(&row, &shown), &self.authorizer.slow_down()));
        }
        let now = self.clock.now_ms();
        let command = click_command(identity, &row, user_id, action, now);
        let id = row.out_track_id.clone();
        let entry = self
            .ledger
            .call(move |l| l.accept_click(&command, &id, action, now))
            .await;
        if counted && !matches!(entry, Ok(ClickEntry::New)) {
            self.authorizer.give_back(&row.conversation_id, user_id, at);
        }
        Ok(match entry? {
            ClickEntry::New => {
                let mut working = shown.clone();
                working.insert("status".to_owned(), CardStatus::Working.as_str().to_owned());
                working.insert("buttons".to_owned(), "[]".to_owned());
                Admitted {
                    response: response(&working, ""),
                    new: true,
                }
            }
            // Pushed again: the card as the ledger has it now, read after the click was
            // entered (the read above may come from before it, when the pushes came at once).
            ClickEntry::Duplicate => {
                let id = row.out_track_id.clone();
                let now_row = self.ledger.call(move |l| l.card(&id)).await?.unwrap_or(row);
                let shown = CardData::of(&now_row).params;
                Admitted {
                    response: response(&current(&now_row, &shown), ""),
                    new: false,
                }
            }
            // A click that lost shows nothing public: the card was read before the click that
            // won moved it on, and showing that would put its buttons back for everyone.
            ClickEntry::UnknownCard => refused(&BTreeMap::new(), UNKNOWN_CARD),
            ClickEntry::Busy => refused(&BTreeMap::new(), ALREADY_WORKING),
            ClickEntry::NotOffered => refused(&BTreeMap::new(), NO_LONGER_VALID),
        })
    }
}

/// Counts a successful Extend in the card's `extends` and returns `buttons` without Extend
/// once it has been used [`MAX_EXTENDS`] times.
pub fn count_extend(extends: &mut u32, mut buttons: Vec<CardAction>) -> Vec<CardAction> {
    *extends = extends.saturating_add(1);
    if *extends >= MAX_EXTENDS {
        buttons.retain(|b| *b != CardAction::Extend);
    }
    buttons
}

/// The parameters as the card shows them now: its status and buttons from the ledger.
fn current(row: &CardRow, shown: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut p = shown.clone();
    p.insert("status".to_owned(), row.status.as_str().to_owned());
    p.insert(
        "buttons".to_owned(),
        serde_json::to_string(&row.buttons).unwrap_or_else(|_| "[]".to_owned()),
    );
    p
}

fn refused(shown: &BTreeMap<String, String>, notice: &str) -> Admitted {
    Admitted {
        response: response(shown, notice),
        new: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cards::render;
    use crate::clock::ManualClock;
    use crate::ledger::{CardStore as _, CommandLog as _, LedgerHandle, MemoryLedger};

    fn card(kind: &str, buttons: &[&str]) -> CardRow {
        CardRow {
            out_track_id: "dingops-1".into(),
            conversation_id: "cidG==".into(),
            msg_id: "m0".into(),
            kind: kind.parse().unwrap(),
            setting: Some("chatBannedType".into()),
            created_by: "boss".into(),
            status: CardStatus::Done,
            buttons: buttons.iter().map(|b| b.parse().unwrap()).collect(),
            pending_click: None,
            data: CardData {
                params: render::params("t", "b", CardStatus::Done, &[]),
                ..CardData::default()
            }
            .to_json(),
            created_ms: 1,
            updated_ms: 1,
        }
    }

    fn gate_over(row: CardRow) -> (Gate, Arc<MemoryLedger>) {
        gate_limited(row, 0)
    }

    /// A gate whose admins may run `per_minute` admin commands a minute (0: unlimited).
    fn gate_limited(row: CardRow, per_minute: u32) -> (Gate, Arc<MemoryLedger>) {
        let ledger = Arc::new(MemoryLedger::new());
        assert!(ledger.insert_card(&row).unwrap());
        let handle = LedgerHandle::shared(ledger.clone());
        let authorizer = Authorizer::new(&["boss".into(), "deputy".into()], true, per_minute);
        let gate = Gate::new(handle.into(), Arc::new(authorizer), ManualClock::at(5));
        (gate, ledger)
    }

    fn notice_of(a: &Admitted) -> &str {
        a.response["userPrivateData"]["cardParamMap"]["notice"]
            .as_str()
            .unwrap_or("?")
    }

    #[tokio::test]
    async fn an_admins_click_is_entered_once_and_shows_working() {
        let (gate, ledger) = gate_over(card("setting", &["undo"]));
        let first = gate.enter("card:x", "dingops-1", "deputy", "undo").await.unwrap();
        assert!(first.new);
        assert_eq!(first.response["cardData"]["cardParamMap"]["status"], "working");
        assert_eq!(notice_of(&first), "");
        let again = gate.enter("card:x", "dingops-1", "deputy", "undo").await.unwrap();
        assert!(!again.new, "a pushed-again click is not entered twice");
        assert_eq!(ledger.open_count().unwrap(), 1);
        let other = gate.enter("card:y", "dingops-1", "boss", "undo").await.unwrap();
        assert!(!other.new);
        assert_eq!(notice_of(&other), ALREADY_WORKING);
        // The click that lost shows nothing public: never the buttons of the card it read.
        assert_eq!(other.response["cardData"]["cardParamMap"], json!({}));
    }

    #[tokio::test]
    async fn a_member_an_unknown_card_and_a_button_not_offered_enter_nothing() {
        let (gate, ledger) = gate_over(card("setting", &["undo"]));
        let member = gate.enter("card:a", "dingops-1", "member", "undo").await.unwrap();
        assert_eq!(notice_of(&member), ADMINS_ONLY);
        let unknown = gate.enter("card:b", "dingops-9", "boss", "undo").await.unwrap();
        assert_eq!(notice_of(&unknown), UNKNOWN_CARD);
        let stale = gate.enter("card:c", "dingops-1", "boss", "extend").await.unwrap();
        assert_eq!(notice_of(&stale), NO_LONGER_VALID);
        assert!(![member, unknown, stale].iter().any(|a| a.new));
        assert_eq!(ledger.open_count().unwrap(), 0);
    }

    #[tokio::test]
    async fn an_action_id_dingops_does_not_know_is_refused_as_no_longer_offered_and_not_counted() {
        let (gate, ledger) = gate_limited(card("setting", &["undo"]), 1);
        for (identity, action) in [("card:a", "Undo"), ("card:b", "reboot"), ("card:c", "")] {
            let odd = gate.enter(identity, "dingops-1", "boss", action).await.unwrap();
            assert!(!odd.new, "{action:?}");
            assert_eq!(notice_of(&odd), NO_LONGER_VALID, "{action:?}");
            assert_eq!(odd.response["cardData"]["cardParamMap"], json!({}));
        }
        assert_eq!(ledger.open_count().unwrap(), 0);
        // Not counted against the per-sender limit: the admin's one click a minute is left.
        assert!(
            gate.enter("card:d", "dingops-1", "boss", "undo")
                .await
                .unwrap()
                .new
        );
    }

    #[tokio::test]
    async fn the_admin_who_asked_for_a_plan_cannot_approve_it_but_may_discard_it() {
        let (gate, _) = gate_over(card("plan", &["approve", "discard"]));
        let own = gate
            .enter("card:a", "dingops-1", "boss", "approve")
            .await
            .unwrap();
        assert_eq!(notice_of(&own), NEEDS_SECOND_ADMIN);
        assert!(!own.new);
        assert!(
            gate.enter("card:b", "dingops-1", "boss", "discard")
                .await
                .unwrap()
                .new
        );
    }

    #[tokio::test]
    async fn an_admin_over_the_per_sender_limit_is_told_privately_and_a_click_not_entered_is_not_counted() {
        let (gate, ledger) = gate_limited(card("setting", &["undo"]), 1);
        // A button not offered and a click pushed again are not entered: they do not count.
        let stale = gate.enter("card:a", "dingops-1", "boss", "extend").await.unwrap();
        assert_eq!(notice_of(&stale), NO_LONGER_VALID);
        let first = gate.enter("card:b", "dingops-1", "boss", "undo").await.unwrap();
        assert!(first.new);
        let again = gate.enter("card:b", "dingops-1", "boss", "undo").await.unwrap();
        assert!(!again.new);
        assert_eq!(notice_of(&again), "", "a duplicate, not over the limit");
        let over = gate.enter("card:c", "dingops-1", "boss", "undo").await.unwrap();
        assert!(!over.new);
        assert!(
            notice_of(&over).starts_with("slow down: at most 1 admin commands"),
            "{}",
            notice_of(&over)
        );
        assert_eq!(ledger.open_count().unwrap(), 1);
        // Another admin has a limit of their own.
        let deputy = gate.enter("card:d", "dingops-1", "deputy", "undo").await.unwrap();
        assert_eq!(notice_of(&deputy), ALREADY_WORKING);
    }

    #[tokio::test]
    async fn a_click_never_claims_is_admin_even_where_is_admin_is_trusted() {
        let (gate, ledger) = gate_over(card("setting", &["undo"]));
        let member = gate.enter("card:a", "dingops-1", "member", "undo").await.unwrap();
        assert_eq!(notice_of(&member), ADMINS_ONLY);
        assert_eq!(ledger.open_count().unwrap(), 0);
    }

    #[tokio::test]
    async fn extend_is_refused_once_the_card_has_used_its_extends() {
        let mut row = card("setting", &["undo", "extend"]);
        let mut data = CardData::of(&row);
        let mut buttons = row.buttons.clone();
        for _ in 0..MAX_EXTENDS {
            buttons = count_extend(&mut data.extends, row.buttons.clone());
        }
        assert_eq!(data.extends, MAX_EXTENDS);
        assert_eq!(buttons, [CardAction::Undo], "the card no longer offers Extend");
        row.data = data.to_json();
        let (gate, ledger) = gate_over(row);
        let sixth = gate.enter("card:a", "dingops-1", "boss", "extend").await.unwrap();
        assert_eq!(notice_of(&sixth), EXTENDS_USED);
        assert!(!sixth.new);
        assert_eq!(ledger.open_count().unwrap(), 0);
    }
}
