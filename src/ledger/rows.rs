//! One statement shape for both SQL stores: the column lists their reads select, the
//! statuses they store, and the mapping of a row to the domain. SQLite and PostgreSQL differ
//! only in how a cell is read ([`Cells`], one impl per driver), in their placeholders, and
//! in how they write and lock; those stay in `sqlite/` and `postgres/`. A new column goes
//! into the list here and into both migrations.

use crate::domain::{
    Accepted, Answer, Binding, ChatId, ConversationType, Department, InvalidChatId, KnownValue, Outcome,
    Pending, RevertJob, RevertRestore, SessionWebhook, UnknownName,
};

use super::AuditRow;
use super::cards::{Approval, CardAction, CardRow};

/// The status of a command, stored as its text in `commands.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    /// Recorded, not answered yet.
    Accepted,
    /// Answered; the reply may not have gone out.
    Answered,
    /// Finished: answered and the reply sent (or given up).
    Done,
}

impl CommandStatus {
    /// The stored text; SQL statements spell these literally.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Answered => "answered",
            Self::Done => "done",
        }
    }
}

/// The state of a timed revert, stored as its text in `jobs.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertState {
    /// Waiting for its due time.
    Pending,
    /// Claimed by a timer; a crash leaves it running, which counts as pending.
    Running,
    /// Ran and set the value back.
    Done,
    /// Ran and failed.
    Failed,
    /// A newer command of the same setting took its place; it never runs.
    Replaced,
}

impl RevertState {
    /// The stored text; SQL statements spell these literally.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Replaced => "replaced",
        }
    }
}

/// The columns an accepted command is inserted with, in the order both stores bind them;
/// `status` last, which the statements set to `accepted`. Ingest and a card's click insert
/// through the same statement per store, so a click is a command like any other.
macro_rules! accepted_columns {
    () => {
        "msg_id, received_ms, conversation_id, conversation_type, conversation_title,
         sender_staff_id, sender_nick, sender_is_admin, msgtype, text, session_webhook,
         session_expires_ms, status"
    };
}

/// The columns of an open command before its position, in the order
/// [`pending_from_row`] reads them; the position (`rowid` or `pos`) follows.
macro_rules! pending_columns {
    ($pos:literal) => {
        concat!(
            "msg_id, received_ms, conversation_id, conversation_type, conversation_title,
             sender_staff_id, sender_nick, sender_is_admin, msgtype, text, session_webhook,
             session_expires_ms, status, command, result, errcode, detail, answer_text, ",
            $pos
        )
    };
}

/// The columns [`audit_from_row`] reads, in its order.
macro_rules! audit_columns {
    () => {
        "msg_id, received_ms, conversation_id, sender_staff_id, sender_nick, text,
         command, status, result, errcode, detail, reply, finished_ms"
    };
}

/// The columns [`job_from_row`] reads, in its order.
macro_rules! job_columns {
    () => {
        "id, conversation_id, chat_id, setting, value, due_ms, scheduled_by, scheduled_command, scheduled_ms,
         set_value, restore"
    };
}

/// The columns [`binding_from_row`] reads, in its order.
macro_rules! binding_columns {
    () => {
        "conversation_id, chat_id, bound_by, bound_ms"
    };
}

/// The columns [`department_from_row`] reads, in its order.
macro_rules! department_columns {
    () => {
        "dept_id, parent_id, name, path, chat_id, open_conversation_id"
    };
}

/// The columns [`known_from_row`] reads, in its order.
macro_rules! known_columns {
    () => {
        "setting, value, set_by, set_by_nick, via, set_ms"
    };
}

/// The columns [`card_from_row`] reads, in its order; inserts bind them in this order too.
macro_rules! card_columns {
    () => {
        "out_track_id, conversation_id, msg_id, kind, setting, created_by, status, buttons,
         pending_click, data, created_ms, updated_ms"
    };
}

/// The columns [`approval_from_row`] reads, in its order; inserts bind them in this order too.
macro_rules! approval_columns {
    () => {
        "code, conversation_id, asked_by, asked_by_nick, asked_ms, expires_ms, out_track_id,
         policy_digest, state, decided_by, decided_ms"
    };
}

/// Reading one cell of a row, as each driver does it. Integers are stored as 64-bit, except
/// a revert's value ([`Cells::small`]) and flags, which each dialect stores its own way.
pub(crate) trait Cells {
    type Error;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    /// A setting's value (PostgreSQL: `smallint`).
    fn small(&self, i: usize) -> Result<i64, Self::Error>;
    fn opt_small(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    fn flag(&self, i: usize) -> Result<bool, Self::Error>;
}

/// Why a row did not map: the driver could not read a cell, or a stored chatid is invalid
/// (only valid ones are ever written, so the table was edited).
#[derive(Debug)]
pub(crate) enum RowError<E> {
    Cell(E),
    ChatId(InvalidChatId),
    /// A card's buttons are not a JSON array of strings (only such are written).
    Buttons(serde_json::Error),
    /// A stored name (a card's status or kind, ...) names no value dingops knows.
    Name(UnknownName),
}

/// The value a stored name names.
fn named<T: std::str::FromStr<Err = UnknownName>, E>(text: String) -> Result<T, RowError<E>> {
    text.parse().map_err(RowError::Name)
}

impl<E> From<E> for RowError<E> {
    fn from(e: E) -> Self {
        Self::Cell(e)
    }
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn chat_id<E>(s: String) -> Result<ChatId, RowError<E>> {
    ChatId::parse(&s).map_err(RowError::ChatId)
}

/// An open command and its position, from a row of [`pending_columns`].
pub(crate) fn pending_from_row<R: Cells>(r: &R) -> Result<(i64, Pending), RowError<R::Error>> {
    let accepted = Accepted {
        msg_id: r.text(0)?,
        received_ms: to_u64(r.int(1)?),
        conversation_id: r.text(2)?,
        conversation_type: ConversationType::from_wire(&r.text(3)?),
        conversation_title: r.opt_text(4)?,
        sender_staff_id: r.opt_text(5)?,
        sender_nick: r.opt_text(6)?,
        sender_is_admin: r.flag(7)?,
        msgtype: r.text(8)?,
        text: r.opt_text(9)?,
        session_webhook: SessionWebhook::new(r.opt_text(10)?.unwrap_or_default()),
        session_expires_ms: r.opt_int(11)?.map(to_u64),
    };
    let answer = if r.text(12)? == CommandStatus::Answered.as_str() {
        Some(Answer {
            command: r.opt_text(13)?.unwrap_or_default(),
            outcome: Outcome::parse(&r.opt_text(14)?.unwrap_or_default()),
            errcode: r.opt_int(15)?,
            detail: r.opt_text(16)?.unwrap_or_default(),
            text: r.opt_text(17)?.unwrap_or_default(),
            card: None,
        })
    } else {
        None
    };
    Ok((r.int(18)?, Pending { accepted, answer }))
}

/// An audit row, from a row of [`audit_columns`].
pub(crate) fn audit_from_row<R: Cells>(r: &R) -> Result<AuditRow, RowError<R::Error>> {
    Ok(AuditRow {
        msg_id: r.text(0)?,
        received_ms: to_u64(r.int(1)?),
        conversation_id: r.text(2)?,
        sender_staff_id: r.opt_text(3)?,
        sender_nick: r.opt_text(4)?,
        text: r.opt_text(5)?,
        command: r.opt_text(6)?,
        status: r.text(7)?,
        result: r.opt_text(8)?,
        errcode: r.opt_int(9)?,
        detail: r.opt_text(10)?,
        reply: r.opt_text(11)?,
        finished_ms: r.opt_int(12)?.map(to_u64),
    })
}

/// A revert, from a row of [`job_columns`].
pub(crate) fn job_from_row<R: Cells>(r: &R) -> Result<RevertJob, RowError<R::Error>> {
    Ok(RevertJob {
        id: r.int(0)?,
        conversation_id: r.text(1)?,
        chat_id: chat_id(r.text(2)?)?,
        setting: r.text(3)?,
        value: u8::try_from(r.small(4)?).unwrap_or(0),
        due_ms: to_u64(r.int(5)?),
        scheduled_by: r.text(6)?,
        scheduled_command: r.text(7)?,
        scheduled_ms: to_u64(r.int(8)?),
        // Reverts scheduled before the governance core set the opposite of their value.
        set_value: match r.opt_small(9)? {
            Some(v) => u8::try_from(v).unwrap_or(0),
            None => 1 - u8::try_from(r.small(4)?).unwrap_or(0).min(1),
        },
        restore: RevertRestore::parse(&r.text(10)?),
    })
}

/// A binding, from a row of [`binding_columns`].
pub(crate) fn binding_from_row<R: Cells>(r: &R) -> Result<Binding, RowError<R::Error>> {
    Ok(Binding {
        conversation_id: r.text(0)?,
        chat_id: chat_id(r.text(1)?)?,
        bound_by: r.text(2)?,
        bound_ms: to_u64(r.int(3)?),
    })
}

/// A department, from a row of [`department_columns`].
pub(crate) fn department_from_row<R: Cells>(r: &R) -> Result<Department, RowError<R::Error>> {
    Ok(Department {
        dept_id: r.int(0)?,
        parent_id: r.opt_int(1)?,
        name: r.text(2)?,
        path: r.text(3)?,
        chat_id: r.opt_text(4)?.map(chat_id).transpose()?,
        open_conversation_id: r.opt_text(5)?,
    })
}

/// A setting's stored name and what dingops knows of it, from a row of [`known_columns`].
pub(crate) fn known_from_row<R: Cells>(r: &R) -> Result<(String, KnownValue), RowError<R::Error>> {
    Ok((
        r.text(0)?,
        KnownValue {
            value: u8::try_from(r.small(1)?).unwrap_or(0).min(1),
            set_by: r.text(2)?,
            set_by_nick: r.opt_text(3)?,
            via: named(r.text(4)?)?,
            set_ms: to_u64(r.int(5)?),
        },
    ))
}

/// A card's buttons as stored: a JSON array of the action ids, in order.
pub(crate) fn buttons_text(buttons: &[CardAction]) -> String {
    serde_json::to_string(buttons).unwrap_or_else(|_| "[]".to_owned())
}

/// A card, from a row of [`card_columns`].
pub(crate) fn card_from_row<R: Cells>(r: &R) -> Result<CardRow, RowError<R::Error>> {
    Ok(CardRow {
        out_track_id: r.text(0)?,
        conversation_id: r.text(1)?,
        msg_id: r.text(2)?,
        kind: named(r.text(3)?)?,
        setting: r.opt_text(4)?,
        created_by: r.text(5)?,
        status: named(r.text(6)?)?,
        buttons: serde_json::from_str(&r.text(7)?).map_err(RowError::Buttons)?,
        pending_click: r.opt_text(8)?,
        data: r.text(9)?,
        created_ms: to_u64(r.int(10)?),
        updated_ms: to_u64(r.int(11)?),
    })
}

/// An approval, from a row of [`approval_columns`].
pub(crate) fn approval_from_row<R: Cells>(r: &R) -> Result<Approval, RowError<R::Error>> {
    Ok(Approval {
        code: r.text(0)?,
        conversation_id: r.text(1)?,
        asked_by: r.text(2)?,
        asked_by_nick: r.opt_text(3)?,
        asked_ms: to_u64(r.int(4)?),
        expires_ms: to_u64(r.int(5)?),
        out_track_id: r.opt_text(6)?,
        policy_digest: r.text(7)?,
        state: named(r.text(8)?)?,
        decided_by: r.opt_text(9)?,
        decided_ms: r.opt_int(10)?.map(to_u64),
    })
}
