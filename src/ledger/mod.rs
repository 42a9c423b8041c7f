//! The ledger: one table of commands keyed by `msgId` serves dedupe, audit, state and
//! resumption; a table of bindings; one of the last DM state per group.
//!
//! Its interface is a set of role traits ([`roles`]: commands, bindings, settings and
//! reverts, leases, the rate budget, the monthly quota, maintenance), each consumer taking the roles it uses;
//! three stores implement them all: SQLite (the default, one process), PostgreSQL (a server
//! that several replicas can share) and memory (unit tests). Async callers go through a
//! [`Handle`]. It depends only on [`crate::domain`] and the `database` setting.

#[macro_use]
mod rows;
pub mod cards;
#[cfg(test)]
mod contract;
mod database;
mod memory;
mod migrations;
mod postgres;
pub mod retention;
pub mod roles;
mod sqlite;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;

use crate::domain::{Accepted, Answer, Delivery, Pending};
use crate::quota::Class;

pub use cards::{
    Approval, ApprovalState, ApprovalVerdict, CardAction, CardKind, CardRow, CardStatus, ClickEntry,
};
pub use roles::{
    BindingStore, CardStore, CommandLog, Fence, LeaseStore, Ledger, LedgerFuture, Maintenance, QuotaBook,
    QuotaCount, QuotaTake, RateBudget, SettingStore,
};
pub use rows::{CommandStatus, RevertState};

/// The role traits, unnamed: for a caller that calls a store's methods directly (tests and
/// tools holding a `SqliteLedger` or `MemoryLedger`), `use dingops::ledger::prelude::*`.
pub mod prelude {
    pub use super::roles::{
        BindingStore as _, CardStore as _, CommandLog as _, LeaseStore as _, Maintenance as _,
        QuotaBook as _, RateBudget as _, SettingStore as _,
    };
}

pub use database::{Database, DatabaseError};
pub use memory::MemoryLedger;
pub use postgres::{PostgresLedger, PostgresUrl, PostgresUrlError};
pub use sqlite::{LockError, LockFile, OPEN_COUNT_SQL, READY_PROBE_SQL, SqliteLedger};

/// Opens the ledger `database` names: a SQLite file, or a PostgreSQL server (connected,
/// schema brought up to date), on the blocking pool. Every process opens its ledger here:
/// `serve` (after [`Sharing::claim`]) and the CLI tools, which take no lock and so run beside
/// a `serve`. A SQLite ledger decides leases and rate-budget slots by `clock` (this
/// machine's); a PostgreSQL one by the server's clock, the one every replica shares.
pub async fn open(
    database: &Database,
    clock: Arc<dyn crate::clock::Clock>,
) -> Result<LedgerHandle, LedgerError> {
    let database = database.clone();
    let ledger = tokio::task::spawn_blocking(move || open_blocking(&database, clock))
        .await
        .map_err(|e| LedgerError::Join(e.to_string()))??;
    Ok(Handle::shared(ledger))
}

/// [`open`] on the calling thread, for a caller that keeps the ledger itself (the tests).
pub fn open_blocking(
    database: &Database,
    clock: Arc<dyn crate::clock::Clock>,
) -> Result<Arc<dyn Ledger>, LedgerError> {
    Ok(match database {
        Database::Sqlite(path) => Arc::new(SqliteLedger::open(path, clock)?),
        Database::Postgres(url) => Arc::new(PostgresLedger::open(url)?),
    })
}

/// Whether a `serve` is alone on its ledger or one of replicas sharing it: decided where
/// the ledger is opened, and handed to the worker, which runs groups with or without leases
/// (see docs/architecture.md).
#[derive(Debug)]
pub enum Sharing {
    /// A SQLite file, under its lock file (held until this is dropped): the only `serve` on
    /// it runs every group without leases, and a restart after a kill resumes at once, with
    /// no lease to wait out.
    Alone(LockFile),
    /// A PostgreSQL ledger, or one the caller shares (the replicas of a test): the replicas
    /// divide the groups by leases.
    Replicas,
}

impl Sharing {
    /// How a `serve` shares the ledger `database`: a SQLite file is locked for this process
    /// (one `serve` per file); a PostgreSQL ledger is shared by design. Taken before the
    /// ledger is opened. The lock file tells since when, by `clock`.
    pub fn claim(database: &Database, clock: &dyn crate::clock::Clock) -> Result<Self, LockError> {
        Ok(match database.sqlite_path() {
            Some(path) => Self::Alone(LockFile::take(path, clock)?),
            None => Self::Replicas,
        })
    }
}

/// A ledger failure. The text names the operation, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {op}: {source}")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// Shown with the server's own message and SQLSTATE (see `postgres::describe`); the
    /// error is no `#[source]`, so that a printer of the chain does not repeat it.
    #[error("ledger {op}: {}", postgres::describe(error))]
    Postgres {
        op: &'static str,
        error: tokio_postgres::Error,
    },
    #[error("ledger {0}: timed out")]
    Timeout(&'static str),
    #[error("ledger file {0} is gone")]
    Missing(String),
    #[error("ledger commit failed: {0}")]
    Commit(String),
    #[error("ledger writer thread is gone")]
    WriterGone,
    #[error("ledger lock poisoned")]
    Poisoned,
    #[error("ledger task failed: {0}")]
    Join(String),
    #[error("ledger schema: {0}")]
    Schema(String),
    /// The caller passed a value the operation cannot take; nothing was written.
    #[error("ledger: {0}")]
    Invalid(&'static str),
}

/// Maps a SQLite error of operation `op`.
fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> LedgerError {
    move |source| LedgerError::Sqlite { op, source }
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub msg_id: String,
    pub received_ms: u64,
    pub conversation_id: String,
    pub sender_staff_id: Option<String>,
    pub sender_nick: Option<String>,
    pub text: Option<String>,
    pub command: Option<String>,
    pub status: String,
    pub result: Option<String>,
    pub errcode: Option<i64>,
    pub detail: Option<String>,
    pub reply: Option<String>,
    pub finished_ms: Option<u64>,
}

/// A send slot granted by [`RateBudget::reserve_call`], in the ledger's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// When the call may go, in ms since the Unix epoch by the ledger's clock.
    pub at_ms: u64,
    /// The ledger's clock when the slot was granted.
    pub now_ms: u64,
}

impl Slot {
    /// How long after the ledger's now at the reservation the slot comes.
    pub fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.at_ms.saturating_sub(self.now_ms))
    }
}

/// The slot [`RateBudget::reserve_call`] grants at `now`, given the latest slot and the
/// `max`-th latest of the slots after `now − window_ms` (`None` when there are fewer).
///
/// Besides the window rule, consecutive slots are at least [`budget_gap`] apart: a burst
/// goes out as a ramp over half a window rather than all in the same millisecond, so the
/// few milliseconds by which calls reach DingTalk later or earlier than planned move a call
/// or two across the edge of DingTalk's one-second count, never a whole burst.
pub fn budget_slot(
    now: u64,
    latest: Option<u64>,
    max_th_latest: Option<u64>,
    window_ms: u64,
    max: u32,
) -> u64 {
    let after_window = max_th_latest.map_or(0, |s| s.saturating_add(window_ms));
    let after_gap = latest.map_or(0, |s| s.saturating_add(budget_gap(window_ms, max)));
    now.max(after_window).max(after_gap)
}

/// The least time between two slots of one API: half the window's share per call.
pub fn budget_gap(window_ms: u64, max: u32) -> u64 {
    window_ms / (2 * u64::from(max.max(1)))
}

/// Checks the arguments of [`RateBudget::reserve_call`].
fn budget_args(max: u32, window_ms: u64) -> Result<(), LedgerError> {
    if max == 0 {
        return Err(LedgerError::Invalid(
            "a rate budget needs at least one call per window",
        ));
    }
    if window_ms == 0 {
        return Err(LedgerError::Invalid(
            "a rate budget needs a window of at least 1 ms",
        ));
    }
    Ok(())
}

/// What one [`Maintenance::prune_finished`] step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStep {
    /// Rows deleted.
    pub deleted: usize,
    /// Where the next step starts; `None` once the step reached commands received after the
    /// cutoff, or the end.
    pub next: Option<i64>,
}

/// This process's reading of the ledger's clock: the machine's wall clock corrected by the
/// offset last measured against [`RateBudget::clock_ms`]. Due times of timed reverts are kept in
/// the ledger's time, and rate-budget slots are the ledger's times, so replicas whose clocks
/// disagree still act on one clock, the one they share. Starts at no offset until measured.
#[derive(Debug)]
pub struct LedgerTime {
    offset_ms: std::sync::atomic::AtomicI64,
    /// When the offset was last measured.
    measured: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// This machine's clock, which the offset corrects.
    clock: Arc<dyn crate::clock::Clock>,
}

/// Readings of the ledger's clock per measurement; the one with the shortest round trip
/// wins, so a slow answer (a busy machine) does not skew the offset.
const CLOCK_SAMPLES: usize = 3;

impl LedgerTime {
    /// The ledger's time read on `clock` (this machine's, injected), before any measurement.
    pub fn with_clock(clock: Arc<dyn crate::clock::Clock>) -> Self {
        Self {
            offset_ms: std::sync::atomic::AtomicI64::new(0),
            measured: std::sync::Mutex::new(None),
            clock,
        }
    }

    /// The ledger's time now, as last measured.
    pub fn now_ms(&self) -> u64 {
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.clock.now_ms().saturating_add_signed(offset)
    }

    /// Reads the ledger's clock and keeps how far it is from this machine's (the ledger's
    /// time minus ours at the middle of the shortest of a few round trips); returns that
    /// offset.
    pub async fn measure<R: RateBudget + ?Sized>(&self, ledger: &Handle<R>) -> Result<i64, LedgerError> {
        let mut best: Option<(u64, i64)> = None;
        let samples = if ledger.0.clock_is_ours() {
            best = Some((0, 0));
            0
        } else {
            CLOCK_SAMPLES
        };
        for _ in 0..samples {
            let before = self.clock.now_ms();
            let theirs = ledger.clock_ms().await?;
            let after = self.clock.now_ms();
            let (rtt, ours) = (after.saturating_sub(before), before / 2 + after / 2);
            let offset = i64::try_from(theirs)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(ours).unwrap_or(i64::MAX));
            if best.is_none_or(|(shortest, _)| rtt < shortest) {
                best = Some((rtt, offset));
            }
        }
        let offset = best.map_or(0, |(_, offset)| offset);
        self.offset_ms.store(offset, std::sync::atomic::Ordering::Relaxed);
        *self.measured.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.clock.instant());
        Ok(offset)
    }

    /// The ledger's time now, measuring the offset first when it never was or was last
    /// measured more than `max_age` ago. A failed measurement keeps the last offset.
    pub async fn fresh_now_ms<R: RateBudget + ?Sized>(
        &self,
        ledger: &Handle<R>,
        max_age: std::time::Duration,
    ) -> u64 {
        let stale = self
            .measured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| self.clock.instant().duration_since(at) > max_age);
        if stale && let Err(e) = self.measure(ledger).await {
            tracing::warn!(error = %e, "cannot read the ledger's clock; keeping the last offset");
        }
        self.now_ms()
    }
}

/// A cloneable async front of a store's role `R` (or of every role: [`LedgerHandle`]). The
/// hot path's calls are awaited as the store answers them (see [`roles`]); any other call
/// runs on tokio's blocking pool through [`Handle::call`].
pub struct Handle<R: ?Sized>(Arc<R>);

/// A handle on every role of a store: what `serve` and the CLI tools wire.
pub type LedgerHandle = Handle<dyn Ledger>;

/// A handle on the rate budget only: what the DingTalk client takes.
pub type BudgetHandle = Handle<dyn RateBudget>;

impl<R: ?Sized> Clone for Handle<R> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl LedgerHandle {
    pub fn new(ledger: impl Ledger) -> Self {
        Self(Arc::new(ledger))
    }

    /// A handle on a ledger the caller keeps a reference to as well.
    pub fn shared(ledger: Arc<dyn Ledger>) -> Self {
        Self(ledger)
    }

    /// The rate-budget role of this ledger.
    pub fn budget(&self) -> BudgetHandle {
        let budget: Arc<dyn RateBudget> = self.0.clone();
        Handle(budget)
    }
}

impl From<LedgerHandle> for BudgetHandle {
    fn from(ledger: LedgerHandle) -> Self {
        ledger.budget()
    }
}

/// A handle on the quota only: what the DingTalk client counts its calls in.
pub type QuotaHandle = Handle<dyn QuotaBook>;

impl LedgerHandle {
    /// The quota role of this ledger.
    pub fn quota(&self) -> QuotaHandle {
        let quota: Arc<dyn QuotaBook> = self.0.clone();
        Handle(quota)
    }
}

impl<R: ?Sized + QuotaBook> Handle<R> {
    /// [`QuotaBook::take_quota`].
    pub async fn take_quota(
        &self,
        month: &str,
        api: &str,
        class: Class,
        ceiling: Option<u64>,
    ) -> Result<QuotaTake, LedgerError> {
        Arc::clone(&self.0)
            .take_quota_async(month.to_owned(), api.to_owned(), class, ceiling)
            .await
    }
}

/// A handle on the command log only: what the ingress takes (it records what arrives).
pub type CommandHandle = Handle<dyn CommandLog>;

impl From<LedgerHandle> for CommandHandle {
    fn from(ledger: LedgerHandle) -> Self {
        let commands: Arc<dyn CommandLog> = ledger.0;
        Handle(commands)
    }
}

/// A handle on the cards only: what the ingress enters button clicks through.
pub type CardHandle = Handle<dyn CardStore>;

impl From<LedgerHandle> for CardHandle {
    fn from(ledger: LedgerHandle) -> Self {
        let cards: Arc<dyn CardStore> = ledger.0;
        Handle(cards)
    }
}

impl<R: ?Sized + Send + Sync + 'static> Handle<R> {
    /// Runs `f` against the store off the async threads.
    pub fn call<T, F>(&self, f: F) -> LedgerFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&R) -> Result<T, LedgerError> + Send + 'static,
    {
        roles::blocking(Arc::clone(&self.0), f)
    }
}

impl<R: ?Sized + CommandLog> Handle<R> {
    /// Records an accepted command unless its msgId is known, without occupying a thread
    /// while the commit is pending.
    pub async fn accept(&self, cmd: Accepted) -> Result<bool, LedgerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.accept_then(
            cmd,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| LedgerError::WriterGone)?
    }

    /// [`CommandLog::record_answer`].
    pub fn record_answer(&self, msg_id: String, answer: Answer) -> LedgerFuture<()> {
        Arc::clone(&self.0).record_answer_async(msg_id, answer)
    }

    /// [`CommandLog::finish`].
    pub fn finish(
        &self,
        msg_id: String,
        answer: Answer,
        delivery: Delivery,
        finished_ms: u64,
    ) -> LedgerFuture<()> {
        Arc::clone(&self.0).finish_async(msg_id, answer, delivery, finished_ms)
    }

    /// [`CommandLog::open_after`].
    pub async fn open_after(&self, cursor: i64, limit: usize) -> Result<Vec<(i64, Pending)>, LedgerError> {
        Arc::clone(&self.0).open_after_async(cursor, limit).await
    }

    /// [`CommandLog::open_in_conversation_after`].
    pub async fn open_in_conversation_after(
        &self,
        conversation_id: String,
        after: i64,
        through: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Pending)>, LedgerError> {
        Arc::clone(&self.0)
            .open_in_conversation_after_async(conversation_id, after, through, limit)
            .await
    }
}

impl<R: ?Sized + RateBudget> Handle<R> {
    /// [`RateBudget::reserve_call`].
    pub async fn reserve_call(&self, api: &str, max: u32, window_ms: u64) -> Result<Slot, LedgerError> {
        Arc::clone(&self.0)
            .reserve_call_async(api.to_owned(), max, window_ms)
            .await
    }

    /// [`RateBudget::clock_ms`].
    pub async fn clock_ms(&self) -> Result<u64, LedgerError> {
        Arc::clone(&self.0).clock_ms_async().await
    }
}

#[cfg(test)]
mod time_tests {
    use super::{LedgerHandle, LedgerTime, MemoryLedger};
    use crate::clock::{Clock as _, ManualClock};

    #[tokio::test]
    async fn the_ledgers_time_is_read_through_the_offset_measured_against_its_clock() {
        // A ledger whose clock runs 35 s ahead of this machine's, then one 35 s behind.
        for skew in [35_000_i64, -35_000] {
            let ours = ManualClock::at(1_700_000_000_000);
            let clock = ManualClock::at(ours.now_ms().saturating_add_signed(skew));
            let ledger = LedgerHandle::new(MemoryLedger::with_clock(clock.clone()));
            let time = LedgerTime::with_clock(ours.clone());
            assert!(
                time.now_ms().abs_diff(ours.now_ms()) < 1000,
                "no offset before measuring"
            );
            let offset = time.measure(&ledger).await.unwrap();
            assert!((offset - skew).abs() < 1000, "measured {offset} for {skew}");
            // The manual clock stands while ours runs on: within the test's run time.
            assert!(time.now_ms().abs_diff(clock.now_ms()) < 1000);
        }
    }
}
