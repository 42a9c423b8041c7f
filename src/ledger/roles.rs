//! The ledger's roles: one trait per concern, so that each consumer takes only what it uses
//! (the DingTalk client a [`RateBudget`], the worker's leases a [`LeaseStore`], ...). A
//! store implements every role; [`Ledger`] names a store with all of them, for wiring.
//!
//! The methods are synchronous and return once the store has answered. The hot path's
//! methods (reading open commands, finishing one, reserving a send slot) also have an async
//! form taking the store by `Arc`: by default it runs the synchronous method on tokio's
//! blocking pool; a store whose client is async (PostgreSQL) or whose writes are queued to a
//! thread of its own (SQLite) answers without occupying a blocking thread. A new concern is
//! a new role here, implemented by every store and run by `contract.rs` against each.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::cards::{Approval, ApprovalState, ApprovalVerdict, CardAction, CardRow, CardStatus, ClickEntry};
use super::{AuditRow, LedgerError, PruneStep, RevertState, Slot};
use crate::domain::{
    Accepted, Answer, Binding, DM_SETTING, Delivery, Department, DmState, KnownValue, Pending, RevertJob,
};
use crate::quota::Class;

/// What the async form of a role's method returns: it owns its arguments, so that it can be
/// awaited from any task.
pub type LedgerFuture<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'static>>;

/// Runs `f` against `store` on tokio's blocking pool: the async form of a synchronous call.
pub(crate) fn blocking<S, T, F>(store: Arc<S>, f: F) -> LedgerFuture<T>
where
    S: ?Sized + Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&S) -> Result<T, LedgerError> + Send + 'static,
{
    Box::pin(async move {
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| LedgerError::Join(e.to_string()))?
    })
}

/// Ingest and commands: dedupe by `msgId`, answers, the worker's reading of open commands,
/// and the audit.
pub trait CommandLog: Send + Sync + 'static {
    /// Records an accepted command unless its `msg_id` is known; `true` when it was new.
    fn accept(&self, cmd: &Accepted) -> Result<bool, LedgerError>;
    /// [`CommandLog::accept`] without blocking the caller: `done` gets the result. The hot
    /// path (every callback) uses this so that no thread waits for the commit. The default
    /// runs `accept` inline, which suits stores whose calls are quick.
    fn accept_then(&self, cmd: Accepted, done: Box<dyn FnOnce(Result<bool, LedgerError>) + Send>) {
        done(self.accept(&cmd));
    }
    /// Records the answer to a command (status `answered`).
    fn record_answer(&self, msg_id: &str, answer: &Answer) -> Result<(), LedgerError>;
    /// Records the answer and how the reply went (status `done`) and drops the stored reply URL.
    fn finish(
        &self,
        msg_id: &str,
        answer: &Answer,
        delivery: &Delivery,
        finished_ms: u64,
    ) -> Result<(), LedgerError>;
    /// Up to `limit` open commands after the position `cursor`, in the order they were
    /// accepted, each with its position (the worker's cursor; 0 is the start).
    fn open_after(&self, cursor: i64, limit: usize) -> Result<Vec<(i64, Pending)>, LedgerError>;
    /// Up to `limit` open commands of one group with positions in `after+1 ..= through`, in
    /// the order they were accepted: the worker reads a group's backlog from its own place
    /// when the shared cursor had to skip it.
    fn open_in_conversation_after(
        &self,
        conversation_id: &str,
        after: i64,
        through: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Pending)>, LedgerError>;
    /// For each group, the position of its newest finished command, counting only commands
    /// accepted after the oldest open one (empty when nothing is open). An open, unanswered
    /// command older than its group's entry must not run: a newer command already finished.
    fn newest_done_by_group(&self) -> Result<HashMap<String, i64>, LedgerError>;
    /// How many commands are open (accepted or answered, not finished).
    fn open_count(&self) -> Result<u64, LedgerError>;
    /// Audit rows, newest first, optionally for one group and since a time.
    fn history(
        &self,
        conversation_id: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, LedgerError>;
    /// Records something dingops did on its own (a timed revert) as a finished audit row.
    fn record_own_action(&self, row: &AuditRow) -> Result<(), LedgerError>;

    /// [`CommandLog::record_answer`], awaited.
    fn record_answer_async(self: Arc<Self>, msg_id: String, answer: Answer) -> LedgerFuture<()> {
        blocking(self, move |l| l.record_answer(&msg_id, &answer))
    }
    /// [`CommandLog::finish`], awaited.
    fn finish_async(
        self: Arc<Self>,
        msg_id: String,
        answer: Answer,
        delivery: Delivery,
        finished_ms: u64,
    ) -> LedgerFuture<()> {
        blocking(self, move |l| l.finish(&msg_id, &answer, &delivery, finished_ms))
    }
    /// [`CommandLog::open_after`], awaited.
    fn open_after_async(self: Arc<Self>, cursor: i64, limit: usize) -> LedgerFuture<Vec<(i64, Pending)>> {
        blocking(self, move |l| l.open_after(cursor, limit))
    }
    /// [`CommandLog::open_in_conversation_after`], awaited.
    fn open_in_conversation_after_async(
        self: Arc<Self>,
        conversation_id: String,
        after: i64,
        through: i64,
        limit: usize,
    ) -> LedgerFuture<Vec<(i64, Pending)>> {
        blocking(self, move |l| {
            l.open_in_conversation_after(&conversation_id, after, through, limit)
        })
    }
}

/// Bindings of groups to chatids, and the department tree discovery stored.
pub trait BindingStore: Send + Sync + 'static {
    fn binding(&self, conversation_id: &str) -> Result<Option<Binding>, LedgerError>;
    fn bind(&self, binding: &Binding) -> Result<(), LedgerError>;
    /// Every stored binding, ordered by openConversationId.
    fn bindings(&self) -> Result<Vec<Binding>, LedgerError>;
    /// The departments the last discovery stored, ordered by `dept_id`.
    fn departments(&self) -> Result<Vec<Department>, LedgerError>;
    /// Replaces the stored departments with `departments` in one write.
    fn replace_departments(&self, departments: &[Department]) -> Result<(), LedgerError>;
}

/// Settings and reverts: the last DM state per group, and timed reverts.
pub trait SettingStore: Send + Sync + 'static {
    /// What dingops knows of each setting of a group it set (or read): by the setting's stored
    /// name (`dm`, or DingTalk's `managementOptions` field).
    fn known_settings(&self, conversation_id: &str) -> Result<Vec<(String, KnownValue)>, LedgerError>;
    /// Records the value dingops set for `setting` of a group, replacing what it knew.
    fn record_setting(
        &self,
        conversation_id: &str,
        setting: &str,
        known: &KnownValue,
    ) -> Result<(), LedgerError>;
    /// [`SettingStore::record_setting`] by a writer that holds the setting's leases: recorded
    /// only when every lease of `fence` is still held by its holder (even one past its end
    /// that nobody took since), checked in the same atomic step as the write; `false`, and
    /// nothing written, when another holder took one meanwhile (or it was given back). The
    /// holder name is the fencing token: the governance core names each change's holder
    /// once and never again, so a stale writer cannot pass for the current one.
    fn record_setting_fenced(
        &self,
        conversation_id: &str,
        setting: &str,
        known: &KnownValue,
        fence: &Fence,
    ) -> Result<bool, LedgerError>;
    /// Records `digest` as the policy in force for the organisation (`by`: who loaded it,
    /// `set_ms`: when), replacing the one before. See docs/reliability.md.
    fn set_policy_in_force(&self, digest: &str, by: &str, set_ms: u64) -> Result<(), LedgerError>;
    /// The digest of the policy in force for the organisation, when one was recorded.
    fn policy_in_force(&self) -> Result<Option<String>, LedgerError>;
    /// [`SettingStore::known_settings`] of one setting.
    fn known_setting(&self, conversation_id: &str, setting: &str) -> Result<Option<KnownValue>, LedgerError> {
        Ok(self
            .known_settings(conversation_id)?
            .into_iter()
            .find_map(|(s, k)| (s == setting).then_some(k)))
    }
    /// The private-chat switch as dingops last set it.
    fn dm_state(&self, conversation_id: &str) -> Result<Option<DmState>, LedgerError> {
        Ok(self
            .known_setting(conversation_id, DM_SETTING)?
            .map(DmState::from))
    }
    /// Records the private-chat switch as set through a chat command (tests and tools; the
    /// governance core records through [`SettingStore::record_setting`]).
    fn set_dm_state(&self, conversation_id: &str, state: &DmState) -> Result<(), LedgerError> {
        let known = KnownValue {
            value: u8::from(state.prohibited),
            set_by: state.set_by.clone(),
            set_by_nick: state.set_by_nick.clone(),
            via: crate::domain::Via::Chat,
            set_ms: state.set_ms,
        };
        self.record_setting(conversation_id, DM_SETTING, &known)
    }
    /// Stores a pending revert. A pending revert of the same setting of the same group is
    /// marked `replaced` in the same write (it will never run) and returned.
    fn schedule_revert(&self, job: &RevertJob) -> Result<Option<RevertJob>, LedgerError>;
    /// Marks the pending revert of `setting` in a group `replaced` (a newer command without
    /// a duration stands for good) and returns it.
    fn cancel_revert(&self, conversation_id: &str, setting: &str) -> Result<Option<RevertJob>, LedgerError>;
    /// Pending reverts, soonest first: all, or one group's.
    fn pending_reverts(&self, conversation_id: Option<&str>) -> Result<Vec<RevertJob>, LedgerError>;
    /// Marks a pending revert as running, just before it runs; `false` when it is no longer
    /// pending (replaced meanwhile), so it must not run. Pending includes running: a revert
    /// whose run a crash interrupted runs again (setting a value twice is harmless).
    fn claim_revert(&self, id: i64) -> Result<bool, LedgerError>;
    /// Records how a running revert ended (`state`: done or failed), with `result`.
    fn finish_revert(
        &self,
        id: i64,
        state: RevertState,
        result: &str,
        finished_ms: u64,
    ) -> Result<(), LedgerError>;
}

/// The leases a writer holds while it changes a setting: a record it makes is refused once
/// another holder took any of them ([`SettingStore::record_setting_fenced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease names (`setting:<openConversationId>:<setting>`).
    pub leases: Vec<String>,
    /// The holder they were taken for: unique to one change, never reused.
    pub holder: String,
}

/// Named leases, by which replicas sharing one ledger divide the work.
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes or renews named leases for `holder` for `ttl_ms` from the ledger's own clock
    /// (see [`RateBudget::clock_ms`]); returns the names `holder` holds afterwards, in the
    /// order given.
    ///
    /// For each name, in one atomic step (a concurrent caller sees the lease either before or
    /// after it): the lease is granted when no row exists, when `holder` already holds it
    /// (then it is renewed), or when it has expired, i.e. its end is not after the ledger's
    /// now; a live lease of another holder is left as it is and the name is not returned. All
    /// names are handled in one write (one transaction). The ledger's clock decides, never
    /// the caller's: replicas whose clocks disagree still agree on who holds what. A caller
    /// that needs to know locally how long it holds a lease counts `ttl_ms` from a monotonic
    /// instant taken before the call. Leases are how replicas sharing one ledger divide the
    /// work (see docs/architecture.md): a group's commands run only on the holder of
    /// `group:<openConversationId>`; `timer` names the replica that runs reverts of groups
    /// nobody holds; other names are free for other one-at-a-time duties (a reconciler).
    fn try_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError>;
    /// [`LeaseStore::try_leases`] of one name: `true` when `holder` holds it afterwards.
    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, LedgerError> {
        Ok(!self.try_leases(&[name.to_owned()], holder, ttl_ms)?.is_empty())
    }
    /// Extends to the ledger's now plus `ttl_ms` those of `names` that `holder` holds and
    /// that have not expired, in one write; returns them. Unlike [`LeaseStore::try_leases`]
    /// it never takes a lease back: a holder whose lease expired may have been replaced, and
    /// must treat the name as lost.
    fn renew_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError>;
    /// Gives up those of `names` that `holder` holds, in one write, so that another holder
    /// may take them at once; a name held by another holder is left alone.
    fn release_leases(&self, names: &[String], holder: &str) -> Result<(), LedgerError>;
    /// Gives up every lease `holder` holds, in one write (a replica that stops).
    fn release_holder(&self, holder: &str) -> Result<(), LedgerError>;
    /// [`LeaseStore::release_leases`] of one name.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), LedgerError> {
        self.release_leases(&[name.to_owned()], holder)
    }
}

/// The rate budget every process sharing the ledger draws on, and the ledger's clock it is
/// decided by.
pub trait RateBudget: Send + Sync + 'static {
    /// The ledger's clock, in ms since the Unix epoch: the time leases and the rate budget
    /// are decided by. PostgreSQL answers with the server's clock; the file and memory
    /// stores, which live on one machine, with that machine's.
    fn clock_ms(&self) -> Result<u64, LedgerError>;
    /// Whether the ledger's clock is this machine's wall clock (a file or memory store on the
    /// system clock): then no offset needs measuring, it is exactly zero.
    fn clock_is_ours(&self) -> bool {
        false
    }
    /// Reserves the next send slot of `api` in the rate budget that every process sharing
    /// this ledger draws on, and returns it with the ledger's clock at the reservation. The
    /// slot is a time of the ledger's clock: the caller sends at that time as it reads the
    /// ledger's clock ([`super::LedgerTime`]), never by its own wall clock alone, so a caller
    /// whose clock is off takes no slot of another's time.
    ///
    /// The rule is a sliding window over the recorded slots of `api`: no half-open
    /// interval `[t, t + window_ms)` holds more than `max` of them. Let `now` be the
    /// store's clock read once the reservation holds the store's lock (time spent waiting
    /// for the lock must not count as free); then
    ///
    /// * the slots that still matter are those after `now − window_ms`; older ones may
    ///   be deleted in the same write;
    /// * if fewer than `max` of those exist, the slot is `now`;
    /// * otherwise it is the later of `now` and (the `max`-th latest slot + `window_ms`);
    /// * and it is at least [`super::budget_gap`] after the latest slot.
    ///
    /// Read, compute and insert form one atomic step: two reservations, from this process
    /// or any other sharing the store, never both see the state before the other's
    /// insert (SQLite: inside one `BEGIN IMMEDIATE` write; PostgreSQL: under a
    /// transaction-scoped advisory lock per `api`; memory: under the store's mutex). A
    /// reservation that fails records nothing. `max` and `window_ms` must be at least 1
    /// (else [`LedgerError::Invalid`], nothing written); every caller uses the same values
    /// for the same `api`. [`super::budget_slot`] is the rule's arithmetic.
    fn reserve_call(&self, api: &str, max: u32, window_ms: u64) -> Result<Slot, LedgerError>;

    /// [`RateBudget::clock_ms`], awaited.
    fn clock_ms_async(self: Arc<Self>) -> LedgerFuture<u64> {
        blocking(self, |l| l.clock_ms())
    }
    /// [`RateBudget::reserve_call`], awaited.
    fn reserve_call_async(self: Arc<Self>, api: String, max: u32, window_ms: u64) -> LedgerFuture<Slot> {
        blocking(self, move |l| l.reserve_call(&api, max, window_ms))
    }
}

/// Keeping the store: readiness and retention.
pub trait Maintenance: Send + Sync + 'static {
    /// Proves the store answers.
    fn ping(&self) -> Result<(), LedgerError>;
    /// One step of pruning: deletes the commands among the next `limit` after position
    /// `after` (in acceptance order) that are finished and were received and finished before
    /// `before_ms`. Open commands are never deleted. Each step is one short write, so a large
    /// ledger is pruned without holding the writer long.
    fn prune_finished(&self, before_ms: u64, after: i64, limit: usize) -> Result<PruneStep, LedgerError>;
}

/// What [`QuotaBook::take_quota`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaTake {
    /// Whether the call was counted (it may go out).
    pub taken: bool,
    /// The month's calls of every class afterwards (with this one when it was taken).
    pub used: u64,
}

/// One row of a month's count: calls of one API made for one class.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QuotaCount {
    pub api: String,
    pub class: Class,
    pub calls: u64,
}

/// The organisation's monthly API quota, counted for every process sharing the ledger
/// (docs/dingtalk.md, "The monthly quota"). Months are keys such as `2026-12`; the caller
/// decides them. A class is stored as its name (`interactive`, `background`).
pub trait QuotaBook: Send + Sync + 'static {
    /// Counts one call of `api` for `class` in `month` when the month's calls of every
    /// class together are fewer than `ceiling` (`None`: always). Read, compare and count are
    /// one atomic step, as for [`RateBudget::reserve_call`]: two processes never both take
    /// the last call under a ceiling. A refused call counts nothing.
    fn take_quota(
        &self,
        month: &str,
        api: &str,
        class: Class,
        ceiling: Option<u64>,
    ) -> Result<QuotaTake, LedgerError>;
    /// The month's counts, by API and class (ordered so).
    fn quota_counts(&self, month: &str) -> Result<Vec<QuotaCount>, LedgerError>;
    /// Records that DingTalk answered the organisation's quota is spent for `month` (90020);
    /// the first mark's time stays.
    fn mark_quota_spent(&self, month: &str, at_ms: u64) -> Result<(), LedgerError>;
    /// Whether any process marked `month` spent.
    fn quota_spent(&self, month: &str) -> Result<bool, LedgerError>;

    /// [`QuotaBook::take_quota`], awaited.
    fn take_quota_async(
        self: Arc<Self>,
        month: String,
        api: String,
        class: Class,
        ceiling: Option<u64>,
    ) -> LedgerFuture<QuotaTake> {
        blocking(self, move |l| l.take_quota(&month, &api, class, ceiling))
    }
}

/// Interactive cards: the cards dingops sent, the clicks on their buttons and the
/// approvals of the two-person rule (see [`super::cards`]).
pub trait CardStore: Send + Sync + 'static {
    /// Records a card; `false` (nothing written) when its `out_track_id` is known.
    fn insert_card(&self, card: &CardRow) -> Result<bool, LedgerError>;
    /// One card by its `out_track_id`.
    fn card(&self, out_track_id: &str) -> Result<Option<CardRow>, LedgerError>;
    /// The setting cards of one setting of a group whose status is one of `statuses`,
    /// newest first (by `created_ms`, then insertion).
    fn cards_of_setting(
        &self,
        conversation_id: &str,
        setting: &str,
        statuses: &[CardStatus],
    ) -> Result<Vec<CardRow>, LedgerError>;
    /// Sets a card's status, buttons, data and `updated_ms`, and clears `pending_click`.
    /// When `expect_status` is given, only if the card's status is that (`false`: not
    /// changed). `false` too for an unknown card.
    fn set_card_state(
        &self,
        out_track_id: &str,
        expect_status: Option<CardStatus>,
        status: CardStatus,
        buttons: &[CardAction],
        data: &str,
        now_ms: u64,
    ) -> Result<bool, LedgerError>;
    /// Enters a click once, in one atomic step: when `click.msg_id` is known →
    /// `Duplicate`; no card → `UnknownCard`; the card `working` → `Busy`; `action` not in
    /// its buttons → `NotOffered`; else the click is recorded as a command exactly as
    /// [`CommandLog::accept`] records one, and the card becomes `working`, buttons empty,
    /// `pending_click` = `click.msg_id`, `updated_ms` = `now_ms`.
    fn accept_click(
        &self,
        click: &Accepted,
        out_track_id: &str,
        action: CardAction,
        now_ms: u64,
    ) -> Result<ClickEntry, LedgerError>;
    /// Records an approval; `false` (nothing written) when its code is known.
    fn insert_approval(&self, approval: &Approval) -> Result<bool, LedgerError>;
    /// One approval by its code.
    fn approval(&self, code: &str) -> Result<Option<Approval>, LedgerError>;
    /// Decides an open approval in one atomic step: `state` is `approved` or `discarded`,
    /// `by` who decides. Unknown code → `Unknown`; not `open` → `AlreadyDecided`;
    /// `now_ms >= expires_ms` → `Expired`; `approved` by `asked_by` → `SameAdmin`; else
    /// the state, `decided_by` and `decided_ms` are written → `Decided`.
    fn decide_approval(
        &self,
        code: &str,
        state: ApprovalState,
        by: &str,
        now_ms: u64,
    ) -> Result<ApprovalVerdict, LedgerError>;
    /// Ends the run of an approved plan: `state` is `applied` or `failed`. Only an
    /// `approved` approval ends (`false`: unknown, or not `approved`, and nothing changed).
    /// An approval still `approved` is a run not ended: a restart resumes it.
    fn end_approval(&self, code: &str, state: ApprovalState) -> Result<bool, LedgerError>;
}

/// A store with every role: what `serve` and the CLI tools open, and split into roles for
/// the consumers they wire.
pub trait Ledger:
    CommandLog + BindingStore + SettingStore + LeaseStore + RateBudget + QuotaBook + CardStore + Maintenance
{
}

impl<
    T: CommandLog + BindingStore + SettingStore + LeaseStore + RateBudget + QuotaBook + CardStore + Maintenance,
> Ledger for T
{
}
