//! The ledger: one table of commands keyed by `msgId` serves dedupe, audit, state and
//! resumption; a table of bindings; one of the last DM state per group.
//!
//! The trait is synchronous and small, with two stores behind it: SQLite (the default, one
//! process) and PostgreSQL (a server that several replicas can share). Async callers go
//! through [`LedgerHandle`], which runs calls on the blocking pool. It depends only on
//! [`crate::domain`] and the `database` setting.

#[cfg(test)]
mod contract;
mod database;
mod memory;
mod migrations;
mod postgres;
pub mod retention;
mod sqlite;
#[cfg(any(test, feature = "demo"))]
#[doc(hidden)]
pub mod test_postgres;

use std::collections::HashMap;
use std::sync::Arc;

use crate::domain::{Accepted, Answer, Binding, Delivery, Department, DmState, Pending, RevertJob};

pub use database::Database;
pub use memory::MemoryLedger;
pub use postgres::{PostgresLedger, PostgresUrl};
pub use sqlite::{LockError, LockFile, OPEN_COUNT_SQL, READY_PROBE_SQL, SqliteLedger};

/// Opens the ledger `database` names: a SQLite file, or a PostgreSQL server (connected,
/// schema brought up to date), on the blocking pool. Every process opens its ledger here:
/// `serve` (after [`Sharing::claim`]) and the CLI tools, which take no lock and so run beside
/// a `serve`.
pub async fn open(database: &Database) -> Result<LedgerHandle, LedgerError> {
    let database = database.clone();
    let ledger = tokio::task::spawn_blocking(move || open_blocking(&database))
        .await
        .map_err(|e| LedgerError::Join(e.to_string()))??;
    Ok(LedgerHandle::shared(ledger))
}

/// [`open`] on the calling thread, for a caller that keeps the ledger itself (the tests).
pub fn open_blocking(database: &Database) -> Result<Arc<dyn Ledger>, LedgerError> {
    Ok(match database {
        Database::Sqlite(path) => Arc::new(SqliteLedger::open(path)?),
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
    /// ledger is opened.
    pub fn claim(database: &Database) -> Result<Self, LockError> {
        Ok(match database.sqlite_path() {
            Some(path) => Self::Alone(LockFile::take(path)?),
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

/// The store behind dedupe, audit, bindings and state.
pub trait Ledger: Send + Sync + 'static {
    /// Records an accepted command unless its `msg_id` is known; `true` when it was new.
    fn accept(&self, cmd: &Accepted) -> Result<bool, LedgerError>;
    /// [`Ledger::accept`] without blocking the caller: `done` gets the result. The hot path
    /// (every callback) uses this so that no thread waits for the commit. The default runs
    /// `accept` inline, which suits stores whose calls are quick.
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
    fn binding(&self, conversation_id: &str) -> Result<Option<Binding>, LedgerError>;
    fn bind(&self, binding: &Binding) -> Result<(), LedgerError>;
    /// Every stored binding, ordered by openConversationId.
    fn bindings(&self) -> Result<Vec<Binding>, LedgerError>;
    /// The departments the last discovery stored, ordered by `dept_id`.
    fn departments(&self) -> Result<Vec<Department>, LedgerError>;
    /// Replaces the stored departments with `departments` in one write.
    fn replace_departments(&self, departments: &[Department]) -> Result<(), LedgerError>;
    fn dm_state(&self, conversation_id: &str) -> Result<Option<DmState>, LedgerError>;
    fn set_dm_state(&self, conversation_id: &str, state: &DmState) -> Result<(), LedgerError>;
    /// Audit rows, newest first, optionally for one group and since a time.
    fn history(
        &self,
        conversation_id: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, LedgerError>;
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
    /// Records how a running revert ended: `state` `done` or `failed`, with `result`.
    fn finish_revert(&self, id: i64, state: &str, result: &str, finished_ms: u64) -> Result<(), LedgerError>;
    /// Records something dingops did on its own (a timed revert) as a finished audit row.
    fn record_own_action(&self, row: &AuditRow) -> Result<(), LedgerError>;
    /// Takes or renews named leases for `holder` for `ttl_ms` from the ledger's own clock
    /// (see [`Ledger::clock_ms`]); returns the names `holder` holds afterwards, in the order
    /// given.
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
    /// [`Ledger::try_leases`] of one name: `true` when `holder` holds it afterwards.
    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, LedgerError> {
        Ok(!self.try_leases(&[name.to_owned()], holder, ttl_ms)?.is_empty())
    }
    /// Extends to the ledger's now plus `ttl_ms` those of `names` that `holder` holds and
    /// that have not expired, in one write; returns them. Unlike [`Ledger::try_leases`] it
    /// never takes a lease back: a holder whose lease expired may have been replaced, and
    /// must treat the name as lost.
    fn renew_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError>;
    /// Gives up those of `names` that `holder` holds, in one write, so that another holder
    /// may take them at once; a name held by another holder is left alone.
    fn release_leases(&self, names: &[String], holder: &str) -> Result<(), LedgerError>;
    /// Gives up every lease `holder` holds, in one write (a replica that stops).
    fn release_holder(&self, holder: &str) -> Result<(), LedgerError>;
    /// [`Ledger::release_leases`] of one name.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), LedgerError> {
        self.release_leases(&[name.to_owned()], holder)
    }
    /// Proves the store answers.
    fn ping(&self) -> Result<(), LedgerError>;
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
    /// ledger's clock ([`LedgerTime`]), never by its own wall clock alone, so a caller whose
    /// clock is off takes no slot of another's time.
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
    /// * and it is at least [`budget_gap`] after the latest slot.
    ///
    /// Read, compute and insert form one atomic step: two reservations, from this process
    /// or any other sharing the store, never both see the state before the other's
    /// insert (SQLite: inside one `BEGIN IMMEDIATE` write; PostgreSQL: under a
    /// transaction-scoped advisory lock per `api`). A reservation that fails records
    /// nothing. `max` and `window_ms` must be at least 1 (else [`LedgerError::Invalid`],
    /// nothing written); every caller uses the same values for the same `api`.
    /// [`budget_slot`] is the rule's arithmetic.
    fn reserve_call(&self, api: &str, max: u32, window_ms: u64) -> Result<Slot, LedgerError>;
    /// One step of pruning: deletes the commands among the next `limit` after position
    /// `after` (in acceptance order) that are finished and were received and finished before
    /// `before_ms`. Open commands are never deleted. Each step is one short write, so a large
    /// ledger is pruned without holding the writer long. The default prunes nothing.
    fn prune_finished(&self, before_ms: u64, after: i64, limit: usize) -> Result<PruneStep, LedgerError> {
        let _ = (before_ms, after, limit);
        Ok(PruneStep::default())
    }
}

/// A send slot granted by [`Ledger::reserve_call`], in the ledger's time.
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

/// The slot [`Ledger::reserve_call`] grants at `now`, given the latest slot and the
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

/// Checks the arguments of [`Ledger::reserve_call`].
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

/// What one [`Ledger::prune_finished`] step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStep {
    /// Rows deleted.
    pub deleted: usize,
    /// Where the next step starts; `None` once the step reached commands received after the
    /// cutoff, or the end.
    pub next: Option<i64>,
}

/// This process's reading of the ledger's clock: the machine's wall clock corrected by the
/// offset last measured against [`Ledger::clock_ms`]. Due times of timed reverts are kept in
/// the ledger's time, and rate-budget slots are the ledger's times, so replicas whose clocks
/// disagree still act on one clock, the one they share. Starts at no offset until measured.
#[derive(Debug, Default)]
pub struct LedgerTime {
    offset_ms: std::sync::atomic::AtomicI64,
    /// When the offset was last measured.
    measured: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Readings of the ledger's clock per measurement; the one with the shortest round trip
/// wins, so a slow answer (a busy machine) does not skew the offset.
const CLOCK_SAMPLES: usize = 3;

impl LedgerTime {
    /// The ledger's time now, as last measured.
    pub fn now_ms(&self) -> u64 {
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        crate::clock::now_ms().saturating_add_signed(offset)
    }

    /// Reads the ledger's clock and keeps how far it is from this machine's (the ledger's
    /// time minus ours at the middle of the shortest of a few round trips); returns that
    /// offset.
    pub async fn measure(&self, ledger: &LedgerHandle) -> Result<i64, LedgerError> {
        let mut best: Option<(u64, i64)> = None;
        let samples = if ledger.call(|l| Ok(l.clock_is_ours())).await? {
            best = Some((0, 0));
            0
        } else {
            CLOCK_SAMPLES
        };
        for _ in 0..samples {
            let before = crate::clock::now_ms();
            let theirs = ledger.call(|l| l.clock_ms()).await?;
            let after = crate::clock::now_ms();
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
        *self.measured.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        Ok(offset)
    }

    /// The ledger's time now, measuring the offset first when it never was or was last
    /// measured more than `max_age` ago. A failed measurement keeps the last offset.
    pub async fn fresh_now_ms(&self, ledger: &LedgerHandle, max_age: std::time::Duration) -> u64 {
        let stale = self
            .measured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() > max_age);
        if stale && let Err(e) = self.measure(ledger).await {
            tracing::warn!(error = %e, "cannot read the ledger's clock; keeping the last offset");
        }
        self.now_ms()
    }
}

/// A cloneable async front of a [`Ledger`]: each call runs on tokio's blocking pool.
#[derive(Clone)]
pub struct LedgerHandle(Arc<dyn Ledger>);

impl LedgerHandle {
    pub fn new(ledger: impl Ledger) -> Self {
        Self(Arc::new(ledger))
    }

    /// A handle on a ledger the caller keeps a reference to as well.
    pub fn shared(ledger: Arc<dyn Ledger>) -> Self {
        Self(ledger)
    }

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

    /// Runs `f` against the ledger off the async threads.
    pub async fn call<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Ledger) -> Result<T, LedgerError> + Send + 'static,
    {
        let ledger = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || f(ledger.as_ref()))
            .await
            .map_err(|e| LedgerError::Join(e.to_string()))?
    }
}

/// The lease contract every backend keeps (see [`Ledger::try_leases`]); each backend's tests
/// run it on a store that reads `clock`, which the check moves.
#[cfg(test)]
pub(crate) fn check_lease_contract(l: &dyn Ledger, clock: &crate::clock::ManualClock) {
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    // A free lease is granted; a live one of another holder is not.
    clock.set(10_000);
    assert_eq!(
        l.try_leases(&names(&["a", "b"]), "r1", 1000).unwrap(),
        names(&["a", "b"])
    );
    clock.set(10_500);
    assert!(l.try_leases(&names(&["a", "b"]), "r2", 1000).unwrap().is_empty());
    clock.set(10_999);
    assert!(!l.try_lease("a", "r2", 1000).unwrap(), "live until 11 000");
    // The holder renews: "a" now lasts until 11 900, "b" still ends at 11 000.
    clock.set(10_900);
    assert_eq!(l.renew_leases(&names(&["a"]), "r1", 1000).unwrap(), names(&["a"]));
    // Another holder cannot renew what it does not hold.
    assert!(
        l.renew_leases(&names(&["a", "b"]), "r2", 1000)
            .unwrap()
            .is_empty()
    );
    // At its end a lease is expired: another holder takes "b", not the renewed "a".
    clock.set(11_000);
    assert_eq!(
        l.try_leases(&names(&["a", "b"]), "r2", 1000).unwrap(),
        names(&["b"])
    );
    // The former holder of "b" cannot renew it (it may have been replaced), nor take it.
    clock.set(11_001);
    assert!(l.renew_leases(&names(&["b"]), "r1", 1000).unwrap().is_empty());
    assert!(!l.try_lease("b", "r1", 1000).unwrap());
    // An expired lease is not renewed even by its holder, and nobody else took it: the
    // holder may take it again with try_leases.
    clock.set(11_900);
    assert!(l.renew_leases(&names(&["a"]), "r1", 1000).unwrap().is_empty());
    assert!(l.try_lease("a", "r1", 1000).unwrap());
    // Releasing a lease of another holder changes nothing; the holder's release frees it at once.
    clock.set(12_000);
    l.release_leases(&names(&["a", "b"]), "r2").unwrap();
    assert!(!l.try_lease("a", "r2", 1000).unwrap(), "r1 still holds a");
    l.release_lease("a", "r1").unwrap();
    assert!(l.try_lease("a", "r2", 1000).unwrap());
    assert!(l.try_leases(&[], "r1", 1000).unwrap().is_empty());
    // A stopping replica gives up all its leases at once, and only its own.
    clock.set(100_000);
    assert!(l.try_lease("h1", "stopping", 60_000).unwrap());
    assert!(l.try_lease("h2", "stopping", 60_000).unwrap());
    assert!(l.try_lease("h3", "staying", 60_000).unwrap());
    l.release_holder("stopping").unwrap();
    clock.set(100_001);
    assert!(l.try_lease("h1", "next", 60_000).unwrap());
    assert!(l.try_lease("h2", "next", 60_000).unwrap());
    assert!(!l.try_lease("h3", "next", 60_000).unwrap());
    // The store tells its clock.
    assert_eq!(l.clock_ms().unwrap(), 100_001);
}

/// The rate-budget rule, checked the same way against every store, on a store that reads
/// the clock the checks move.
#[cfg(test)]
pub(crate) mod budget_tests {
    use super::{Ledger, LedgerError, Slot};
    use crate::clock::ManualClock;

    /// Where the checks' clock starts; any time would do, the store reads only this clock.
    const BASE: u64 = 1_700_000_000_000;

    /// The slot granted to a reservation made when the clock shows `t`.
    fn at(l: &dyn Ledger, clock: &ManualClock, api: &str, max: u32, window: u64, t: u64) -> u64 {
        clock.set(t);
        l.reserve_call(api, max, window).unwrap().at_ms
    }

    /// Whether no half-open `[t, t + window)` holds more than `max` of `slots`.
    fn within_rule(slots: &[u64], max: usize, window: u64) -> bool {
        let mut sorted = slots.to_vec();
        sorted.sort_unstable();
        sorted
            .iter()
            .enumerate()
            .all(|(i, &t)| sorted[i..].iter().take_while(|&&s| s < t + window).count() <= max)
    }

    pub(crate) fn a_full_window_pushes_the_next_slot_to_the_oldest_plus_the_window(
        l: &dyn Ledger,
        clock: &ManualClock,
    ) {
        let b = BASE;
        let got: Vec<u64> = (0..7).map(|_| at(l, clock, "friendswitch", 3, 1000, b)).collect();
        // Within a window, each slot a least gap (1000 / 6) after the one before.
        let expected: Vec<u64> = [0, 166, 332, 1000, 1166, 1332, 2000]
            .iter()
            .map(|d| b + d)
            .collect();
        assert_eq!(got, expected);
        // Another API has a budget of its own.
        assert_eq!(at(l, clock, "chat_get", 3, 1000, b), b);
        // Once the window has passed, a call goes at once again.
        assert_eq!(at(l, clock, "friendswitch", 3, 1000, b + 5000), b + 5000);
    }

    pub(crate) fn a_call_waits_only_for_the_slot_its_windows_oldest_call_frees(
        l: &dyn Ledger,
        clock: &ManualClock,
    ) {
        let b = BASE;
        for t in [0, 500, 999] {
            assert_eq!(at(l, clock, "api", 3, 1000, b + t), b + t);
        }
        // The window of 0 frees a slot at 1000, but the least gap after 999 is later.
        assert_eq!(at(l, clock, "api", 3, 1000, b + 999), b + 999 + 166);
        // 500, 999, 1165 fill a window: the next waits for 500 + 1000.
        assert_eq!(at(l, clock, "api", 3, 1000, b + 1000), b + 1500);
    }

    pub(crate) fn a_slot_comes_with_the_ledgers_clock_and_the_wait_between_them(
        l: &dyn Ledger,
        clock: &ManualClock,
    ) {
        clock.set(BASE);
        let first = l.reserve_call("api", 5, 1000).unwrap();
        assert_eq!(
            first,
            Slot {
                at_ms: BASE,
                now_ms: BASE
            }
        );
        assert_eq!(first.wait(), std::time::Duration::ZERO);
        // The next one a least gap (1000 / 10) later, said as a wait from the same now.
        let second = l.reserve_call("api", 5, 1000).unwrap();
        assert_eq!(
            second,
            Slot {
                at_ms: BASE + 100,
                now_ms: BASE
            }
        );
        assert_eq!(second.wait(), std::time::Duration::from_millis(100));
    }

    pub(crate) fn bad_arguments_are_refused_and_record_nothing(l: &dyn Ledger, clock: &ManualClock) {
        clock.set(BASE);
        for (max, window) in [(0, 1000), (2, 0)] {
            let err = l.reserve_call("api", max, window).unwrap_err();
            assert!(matches!(err, LedgerError::Invalid(_)), "{err}");
        }
        // Nothing was recorded: a budget of one call still has its slot free.
        assert_eq!(at(l, clock, "api", 1, 1000, BASE), BASE);
        assert_eq!(at(l, clock, "api", 1, 1000, BASE), BASE + 1000);
    }

    pub(crate) fn random_requests_never_break_the_window_rule(l: &dyn Ledger, clock: &ManualClock) {
        let b = BASE;
        let (max, window) = (19, 1050);
        // A fixed pseudo-random walk of request times, bursts and pauses mixed.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut t = b;
        let mut slots = Vec::new();
        for _ in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += match x % 10 {
                0 => 700 + x % 900,
                1..=3 => x % 60,
                _ => 0,
            };
            let slot = at(l, clock, "api", max, window, t);
            assert!(slot >= t, "a slot before its request: {slot} < {t}");
            slots.push(slot);
        }
        assert!(within_rule(&slots, max as usize, window));
        // And the rule is tight: a burst is not paced slower than it allows.
        let burst: Vec<u64> = (0..40).map(|_| at(l, clock, "tight", max, window, b)).collect();
        // A burst goes out as ramps: 19 slots a least gap apart, then the next window.
        let gap = super::budget_gap(window, max);
        let ramps: Vec<u64> = (0..40u64)
            .map(|i| b + (i / 19) * window + (i % 19) * gap)
            .collect();
        assert_eq!(burst, ramps);
    }

    /// Two handles on one store (two processes, two replicas) reserving 200 slots at once,
    /// from eight threads, while the clock stands: exactly the slots one process alone gets,
    /// ramps of 19 slots a least gap apart, one ramp per window.
    pub(crate) fn two_handles_reserving_at_once_get_the_slots_of_one(
        a: std::sync::Arc<dyn Ledger>,
        b: std::sync::Arc<dyn Ledger>,
        clock: &ManualClock,
    ) {
        clock.set(BASE);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let l = if i % 2 == 0 { a.clone() } else { b.clone() };
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| l.reserve_call("friendswitch_update", 19, 1050).unwrap().at_ms)
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        // Calls per slot, by the slot's distance from the clock.
        let mut per_slot = std::collections::BTreeMap::<u64, usize>::new();
        for slot in threads.into_iter().flat_map(|t| t.join().unwrap()) {
            *per_slot.entry(slot - BASE).or_default() += 1;
        }
        let gap = super::budget_gap(1050, 19);
        let expected: std::collections::BTreeMap<u64, usize> = (0..200u64)
            .map(|i| ((i / 19) * 1050 + (i % 19) * gap, 1))
            .collect();
        assert_eq!(per_slot, expected);
    }

    /// Runs every check above on fresh ledgers made by `open`, each reading the clock it
    /// is given.
    pub(crate) fn run_all(open: impl Fn(std::sync::Arc<ManualClock>) -> Box<dyn Ledger>) {
        let checks: [fn(&dyn Ledger, &ManualClock); 5] = [
            a_full_window_pushes_the_next_slot_to_the_oldest_plus_the_window,
            a_call_waits_only_for_the_slot_its_windows_oldest_call_frees,
            a_slot_comes_with_the_ledgers_clock_and_the_wait_between_them,
            bad_arguments_are_refused_and_record_nothing,
            random_requests_never_break_the_window_rule,
        ];
        for check in checks {
            let clock = ManualClock::at(BASE);
            check(open(clock.clone()).as_ref(), &clock);
        }
    }

    #[test]
    fn the_rule_checker_itself_catches_a_crowded_window() {
        assert!(within_rule(&[0, 10, 1000], 2, 1000));
        assert!(!within_rule(&[0, 10, 999], 2, 1000));
    }
}

#[cfg(test)]
mod time_tests {
    use super::{LedgerHandle, LedgerTime, MemoryLedger};
    use crate::clock::{Clock as _, ManualClock, now_ms};

    #[tokio::test]
    async fn the_ledgers_time_is_read_through_the_offset_measured_against_its_clock() {
        // A ledger whose clock runs 35 s ahead of this machine's, then one 35 s behind.
        for skew in [35_000_i64, -35_000] {
            let clock = ManualClock::at(now_ms().saturating_add_signed(skew));
            let ledger = LedgerHandle::new(MemoryLedger::with_clock(clock.clone()));
            let time = LedgerTime::default();
            assert!(
                time.now_ms().abs_diff(now_ms()) < 1000,
                "no offset before measuring"
            );
            let offset = time.measure(&ledger).await.unwrap();
            assert!((offset - skew).abs() < 1000, "measured {offset} for {skew}");
            // The manual clock stands while ours runs on: within the test's run time.
            assert!(time.now_ms().abs_diff(clock.now_ms()) < 1000);
        }
    }
}
