//! The ledger: one table of commands keyed by `msgId` serves dedupe, audit, state and
//! resumption; a table of bindings; one of the last DM state per group.
//!
//! The trait is synchronous and small so that another store (PostgreSQL) can back several
//! replicas later; async callers go through [`LedgerHandle`], which runs calls on the
//! blocking pool. It depends only on [`crate::domain`].

mod memory;
mod migrations;
mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use crate::domain::{Accepted, Answer, Binding, Delivery, Department, DmState, Pending, RevertJob};

pub use memory::MemoryLedger;
pub use sqlite::{OPEN_COUNT_SQL, READY_PROBE_SQL, SqliteLedger};

/// A ledger failure. The text names the operation, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {op}: {source}")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
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
    /// Takes or renews named leases for `holder` until `now_ms + ttl_ms`; returns the names
    /// `holder` holds afterwards, in the order given.
    ///
    /// For each name, in one atomic step (a concurrent caller sees the lease either before or
    /// after it): the lease is granted when no row exists, when `holder` already holds it
    /// (then it is renewed), or when it has expired, i.e. its `until_ms <= now_ms`; a lease
    /// of another holder with `until_ms > now_ms` is left as it is and the name is not
    /// returned. All names are handled in one write (one transaction). `now_ms` is the
    /// caller's wall clock in milliseconds since the Unix epoch: replicas compare their
    /// clocks through it, so they must agree to well within a lease. Leases are how
    /// replicas sharing one ledger divide the work (see docs/architecture.md): a group's
    /// commands run only on the holder of `group:<openConversationId>`; `timer` names the
    /// replica that runs reverts of groups nobody holds; other names are free for other
    /// one-at-a-time duties (a reconciler).
    fn try_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<String>, LedgerError>;
    /// [`Ledger::try_leases`] of one name: `true` when `holder` holds it afterwards.
    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64, now_ms: u64) -> Result<bool, LedgerError> {
        Ok(!self
            .try_leases(&[name.to_owned()], holder, ttl_ms, now_ms)?
            .is_empty())
    }
    /// Extends to `now_ms + ttl_ms` those of `names` that `holder` holds and that have not
    /// expired (`until_ms > now_ms`), in one write; returns them. Unlike
    /// [`Ledger::try_leases`] it never takes a lease back: a holder whose lease expired may
    /// have been replaced, and must treat the name as lost.
    fn renew_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<String>, LedgerError>;
    /// Gives up those of `names` that `holder` holds, in one write, so that another holder
    /// may take them at once; a name held by another holder is left alone.
    fn release_leases(&self, names: &[String], holder: &str) -> Result<(), LedgerError>;
    /// [`Ledger::release_leases`] of one name.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), LedgerError> {
        self.release_leases(&[name.to_owned()], holder)
    }
    /// Proves the store answers.
    fn ping(&self) -> Result<(), LedgerError>;
    /// One step of pruning: deletes the commands among the next `limit` after position
    /// `after` (in acceptance order) that are finished and were received and finished before
    /// `before_ms`. Open commands are never deleted. Each step is one short write, so a large
    /// ledger is pruned without holding the writer long. The default prunes nothing.
    fn prune_finished(&self, before_ms: u64, after: i64, limit: usize) -> Result<PruneStep, LedgerError> {
        let _ = (before_ms, after, limit);
        Ok(PruneStep::default())
    }
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
/// run it.
#[cfg(test)]
pub(crate) fn check_lease_contract(l: &dyn Ledger) {
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    // A free lease is granted; a live one of another holder is not.
    assert_eq!(
        l.try_leases(&names(&["a", "b"]), "r1", 1000, 10_000).unwrap(),
        names(&["a", "b"])
    );
    assert!(
        l.try_leases(&names(&["a", "b"]), "r2", 1000, 10_500)
            .unwrap()
            .is_empty()
    );
    assert!(
        !l.try_lease("a", "r2", 1000, 10_999).unwrap(),
        "live until 11 000"
    );
    // The holder renews: "a" now lasts until 11 900, "b" still ends at 11 000.
    assert_eq!(
        l.renew_leases(&names(&["a"]), "r1", 1000, 10_900).unwrap(),
        names(&["a"])
    );
    // Another holder cannot renew what it does not hold.
    assert!(
        l.renew_leases(&names(&["a", "b"]), "r2", 1000, 10_900)
            .unwrap()
            .is_empty()
    );
    // At its end a lease is expired: another holder takes "b", not the renewed "a".
    assert_eq!(
        l.try_leases(&names(&["a", "b"]), "r2", 1000, 11_000).unwrap(),
        names(&["b"])
    );
    // The former holder of "b" cannot renew it (it may have been replaced), nor take it.
    assert!(
        l.renew_leases(&names(&["b"]), "r1", 1000, 11_001)
            .unwrap()
            .is_empty()
    );
    assert!(!l.try_lease("b", "r1", 1000, 11_001).unwrap());
    // An expired lease is not renewed even by its holder, and nobody else took it: the
    // holder may take it again with try_leases.
    assert!(
        l.renew_leases(&names(&["a"]), "r1", 1000, 11_900)
            .unwrap()
            .is_empty()
    );
    assert!(l.try_lease("a", "r1", 1000, 11_900).unwrap());
    // Releasing a lease of another holder changes nothing; the holder's release frees it at once.
    l.release_leases(&names(&["a", "b"]), "r2").unwrap();
    assert!(!l.try_lease("a", "r2", 1000, 12_000).unwrap(), "r1 still holds a");
    l.release_lease("a", "r1").unwrap();
    assert!(l.try_lease("a", "r2", 1000, 12_000).unwrap());
    assert!(l.try_leases(&[], "r1", 1000, 12_000).unwrap().is_empty());
}
