//! The ledger's record of interactive cards: each card dingops sent with the command it
//! answers, the clicks on its buttons (entered once each), and the approvals of the
//! two-person rule. See docs/architecture.md, "Buttons".

use crate::domain::named_enum;

named_enum! {
    /// A card's status as last sent: stored as its text in `cards.status`, and the card's
    /// `status` parameter on the wire (the template shows it).
    pub enum CardStatus("card status") {
        /// Running a click: it offers no button until the click's command finished and the
        /// card was updated.
        Working = "working",
        /// A setting card whose command worked, or a plan card whose run ended.
        Done = "done",
        /// A setting card whose command failed, or a plan card whose run failed.
        Failed = "failed",
        /// Undo worked.
        Undone = "undone",
        /// Its timed change ended (Revert now, or the timer).
        Reverted = "reverted",
        /// Extend worked.
        Extended = "extended",
        /// A newer change of its setting took its place.
        Superseded = "superseded",
        /// A plan card waiting for a second admin.
        PendingApproval = "pending_approval",
        /// A plan card approved: its run under way.
        Approved = "approved",
        /// A plan card discarded.
        Discarded = "discarded",
        /// DingTalk did not take the card when it was sent.
        Unsent = "unsent",
    }
}

named_enum! {
    /// What a card answers, stored as its text in `cards.kind`.
    pub enum CardKind("card kind") {
        /// A switch command's reply.
        Setting = "setting",
        /// A policy plan waiting for a second admin (the two-person rule).
        Plan = "plan",
    }
}

named_enum! {
    /// The action id a button carries, as the template's buttons name it: stored in
    /// `cards.buttons` (a JSON array of them), sent in the card's `buttons` parameter and
    /// carried back by a click.
    pub enum CardAction("card action") {
        Undo = "undo",
        Extend = "extend",
        RevertNow = "revert_now",
        Approve = "approve",
        Discard = "discard",
    }
}

/// A card dingops sent, or is about to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRow {
    /// Our own id of the card (DingTalk's `outTrackId`), unique per card.
    pub out_track_id: String,
    /// The group it was sent to.
    pub conversation_id: String,
    /// The command it answers (its msgId).
    pub msg_id: String,
    /// A switch command's reply, or a plan (the two-person rule).
    pub kind: CardKind,
    /// For a setting card, the setting's stored name (`dm`, or DingTalk's field).
    pub setting: Option<String>,
    /// staffId of who asked (the command's sender).
    pub created_by: String,
    /// The card's status as last sent.
    pub status: CardStatus,
    /// The actions offered now, in order.
    pub buttons: Vec<CardAction>,
    /// The msgId of the click being run, while the card is `working`.
    pub pending_click: Option<String>,
    /// The card module's own facts (JSON): values, durations, the rendered parameters.
    pub data: String,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// What [`CardStore::accept_click`] did with a click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClickEntry {
    /// Recorded as a new command; the card is now `working` with no buttons, its
    /// `pending_click` the click's msgId.
    New,
    /// The click's msgId was already recorded (a pushed-again callback): nothing changed.
    Duplicate,
    /// No card has that `outTrackId`.
    UnknownCard,
    /// The card is `working` on another click (a double click): nothing recorded.
    Busy,
    /// The action is not among the card's buttons now: nothing recorded.
    NotOffered,
}

/// A plan waiting for a second admin (the two-person rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The code `/apply <code>` takes; unique.
    pub code: String,
    /// The group (`ops_group`) it was asked in.
    pub conversation_id: String,
    /// staffId and nick of who asked for the plan.
    pub asked_by: String,
    pub asked_by_nick: Option<String>,
    pub asked_ms: u64,
    /// After this (ledger ms) the code no longer works.
    pub expires_ms: u64,
    /// The plan card, when one was sent.
    pub out_track_id: Option<String>,
    /// The policy's digest the plan was made from.
    pub policy_digest: String,
    /// Open, approved (its run under way, or cut short by a stop: a restart resumes it),
    /// discarded; once its run ended, applied or failed.
    pub state: ApprovalState,
    /// staffId of who approved or discarded it.
    pub decided_by: Option<String>,
    pub decided_ms: Option<u64>,
}

/// What [`CardStore::decide_approval`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalVerdict {
    /// The approval was open and is now in the state asked for (returned as it is now).
    Decided(Approval),
    /// No approval has that code.
    Unknown,
    /// Its time ran out (nothing changed).
    Expired(Approval),
    /// It was approved or discarded before (nothing changed).
    AlreadyDecided(Approval),
    /// An approval by the admin who asked (nothing changed).
    SameAdmin(Approval),
}

named_enum! {
    /// The state of an approval (the two-person rule), stored as its text in
    /// `approvals.state`.
    pub enum ApprovalState("approval state") {
        /// Nobody decided it yet.
        Open = "open",
        /// Approved by a second admin: its run under way, or cut short by a stop (a restart
        /// resumes it).
        Approved = "approved",
        /// Discarded.
        Discarded = "discarded",
        /// Its run ended and the policy was applied.
        Applied = "applied",
        /// Its run ended and failed.
        Failed = "failed",
    }
}

/// Checks the state [`super::CardStore::end_approval`] is asked to write.
pub(crate) fn ending(state: ApprovalState) -> Result<(), super::LedgerError> {
    if matches!(state, ApprovalState::Applied | ApprovalState::Failed) {
        Ok(())
    } else {
        Err(super::LedgerError::Invalid(
            "an approved plan's run ends applied or failed",
        ))
    }
}

/// Checks the state [`super::CardStore::decide_approval`] is asked to write.
pub(crate) fn decision(state: ApprovalState) -> Result<(), super::LedgerError> {
    if matches!(state, ApprovalState::Approved | ApprovalState::Discarded) {
        Ok(())
    } else {
        Err(super::LedgerError::Invalid(
            "an approval is decided as approved or discarded",
        ))
    }
}

/// The verdict on deciding `approval` (as stored) as `state` by `by` at `now_ms`, in the
/// trait's order; `None` when it may be decided. Every store decides by this.
pub(crate) fn verdict(
    approval: &Approval,
    state: ApprovalState,
    by: &str,
    now_ms: u64,
) -> Option<ApprovalVerdict> {
    if approval.state != ApprovalState::Open {
        Some(ApprovalVerdict::AlreadyDecided(approval.clone()))
    } else if now_ms >= approval.expires_ms {
        Some(ApprovalVerdict::Expired(approval.clone()))
    } else if state == ApprovalState::Approved && by == approval.asked_by {
        Some(ApprovalVerdict::SameAdmin(approval.clone()))
    } else {
        None
    }
}

/// What a click on `card` (as stored) for `action` comes to, in the trait's order after
/// the msgId and the card's existence; `None` when it is entered as a new command.
pub(crate) fn click_refusal(card: &CardRow, action: CardAction) -> Option<ClickEntry> {
    if card.status == CardStatus::Working {
        Some(ClickEntry::Busy)
    } else if !card.buttons.contains(&action) {
        Some(ClickEntry::NotOffered)
    } else {
        None
    }
}
