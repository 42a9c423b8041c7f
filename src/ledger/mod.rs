//! The ledger: one table of commands keyed by `msgId` serves dedupe, audit, state and
//! resumption; a table of bindings; one of the last DM state per group.
//!
//! The trait is synchronous and small, with two stores behind it: SQLite (the default, one
//! process) and PostgreSQL (a server that several replicas can share). Async callers go
//! through [`LedgerHandle`], which runs calls on the blocking pool. It depends only on
//! [`crate::domain`] and the `database` setting.

#[cfg(test)]
mod contract;
mod memory;
mod migrations;
mod postgres;
mod sqlite;
#[cfg(any(test, feature = "demo"))]
#[doc(hidden)]
pub mod test_postgres;

use std::collections::HashMap;
use std::sync::Arc;

use crate::domain::{Accepted, Answer, Binding, Delivery, Department, DmState, Pending, RevertJob};

pub use memory::MemoryLedger;
pub use postgres::PostgresLedger;
pub use sqlite::{OPEN_COUNT_SQL, READY_PROBE_SQL, SqliteLedger};

/// Opens the ledger `database` names: a SQLite file, or a PostgreSQL server (connected,
/// schema brought up to date). Blocking: call it off the async threads.
pub fn open(database: &crate::config::Database) -> Result<Arc<dyn Ledger>, LedgerError> {
    Ok(match database {
        crate::config::Database::Sqlite(path) => Arc::new(SqliteLedger::open(path)?),
        crate::config::Database::Postgres(url) => Arc::new(PostgresLedger::open(url)?),
    })
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
    #[error("ledger {op}: {source}")]
    Postgres {
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
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
