//! The SQLite ledger (WAL journal): the default store.
//!
//! `mod.rs` opens the file and runs reads and writes; `files.rs` keeps the file (its
//! permissions, the writer thread and the checkpointer), `lock.rs` the lock that makes one
//! `serve` per file, `roles.rs` the statements of each role (`quota.rs` those of the monthly
//! quota, `cards.rs` those of cards and approvals).

mod cards;
mod files;
mod lock;
mod quota;
mod roles;

use files::{LedgerFile, checkpoint_loop, restrict_permissions, writer_loop};
pub use lock::{LockError, LockFile};

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{
    Cells, RowError, audit_from_row, binding_from_row, department_from_row, job_from_row, known_from_row,
    pending_from_row, to_i64, to_u64,
};
use super::{
    AuditRow, BindingStore, CommandLog, LeaseStore, LedgerError, LedgerFuture, Maintenance, PruneStep,
    RateBudget, RevertState, SettingStore, Slot, budget_args, budget_slot, sql,
};
use crate::clock::Clock;
use crate::domain::{Accepted, Answer, Binding, Delivery, Department, KnownValue, Pending, RevertJob};

/// The SQLite ledger (WAL journal).
///
/// Writes go to one writer thread that commits them in groups: every write waiting when a
/// transaction starts joins it, and each caller gets its answer after the commit. One commit
/// per batch instead of one per callback is what lets the ledger keep up with bursts. Reads
/// use their own connection, which WAL lets run beside the writer.
pub struct SqliteLedger {
    reader: Mutex<Connection>,
    writer: std::sync::mpsc::Sender<WriteJob>,
    // Dropping it stops the checkpoint thread.
    _checkpointer: std::sync::mpsc::Sender<()>,
    /// What leases and the rate budget are decided by: this machine's clock, which every
    /// process opening the file shares.
    clock: Arc<dyn Clock>,
}

/// What the writer thread runs: the operation (given the connection, or `None` when the
/// transaction could not start), returning what to do once the commit's fate is known.
type WriteJob = Box<dyn FnOnce(Option<&Connection>) -> Finisher + Send>;
type Finisher = Box<dyn FnOnce(Option<&str>) + Send>;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;

/// `/readyz`'s probe: a real write of one row, found by its primary key.
pub const READY_PROBE_SQL: &str = "UPDATE health SET probed_ms = ?1 WHERE id = 1";

/// `dingops_open_commands`: counted on the partial index of open commands, so its cost grows
/// with the backlog, not with the ledger.
pub const OPEN_COUNT_SQL: &str = "SELECT count(*) FROM commands WHERE status != 'done'";

impl SqliteLedger {
    /// Opens (creating if needed) the ledger at `path`, with leases and the rate budget
    /// read from `clock`.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, LedgerError> {
        restrict_permissions(path);
        let conn = Connection::open(path).map_err(sql("open"))?;
        // NORMAL is durable across process crashes in WAL mode; only an OS crash can lose
        // the last transactions.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(sql("configure"))?;
        super::migrations::migrate(&conn)?;
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
            .map_err(sql("configure"))?;
        // The WAL and shared-memory files exist now; narrow them if they were left wider.
        restrict_permissions(path);
        let file = LedgerFile {
            path: path.to_owned(),
            id: LedgerFile::identify(path)
                .map_err(|e| LedgerError::Missing(format!("{}: {e}", path.display())))?,
        };
        let checkpointer = Connection::open(path).map_err(sql("open"))?;
        checkpointer
            .execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(sql("configure"))?;
        let (stop_checkpoints, stop) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, stop))
            .map_err(|e| LedgerError::Join(e.to_string()))?;
        let reader = Connection::open(path).map_err(sql("open"))?;
        reader
            .execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(sql("configure"))?;
        let (writer, jobs) = std::sync::mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(conn, file, jobs))
            .map_err(|e| LedgerError::Join(e.to_string()))?;
        Ok(Self {
            reader: Mutex::new(reader),
            writer,
            _checkpointer: stop_checkpoints,
            clock,
        })
    }

    /// Runs a read on the reader connection.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, LedgerError>) -> Result<T, LedgerError> {
        let conn = self.reader.lock().map_err(|_| LedgerError::Poisoned)?;
        f(&conn)
    }

    /// Runs a write in the writer thread's next group commit; returns once it is committed.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            f,
        );
        rx.recv().map_err(|_| LedgerError::WriterGone)?
    }

    /// [`SqliteLedger::write`], awaited: the writer thread answers through a oneshot, so no
    /// thread waits for the commit.
    fn write_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> LedgerFuture<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            f,
        );
        Box::pin(async move { rx.await.map_err(|_| LedgerError::WriterGone)? })
    }

    /// Queues a write for the writer thread; `done` gets its result after the commit.
    fn submit<T: Send + 'static>(
        &self,
        done: Box<dyn FnOnce(Result<T, LedgerError>) + Send>,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    ) {
        let job: WriteJob = Box::new(move |conn| {
            let result = match conn {
                Some(c) => f(c),
                None => Err(LedgerError::Commit("could not begin a transaction".into())),
            };
            Box::new(move |failure| {
                done(match failure {
                    Some(e) => Err(LedgerError::Commit(e.to_owned())),
                    None => result,
                })
            })
        });
        if let Err(std::sync::mpsc::SendError(job)) = self.writer.send(job) {
            // The writer is gone: fail the job without running it.
            job(None)(Some("the ledger writer thread is gone"));
        }
    }
}

/// How SQLite reads a cell: integers are 64-bit, flags are integers.
impl Cells for rusqlite::Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
    fn opt_text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    fn opt_int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
    fn small(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    fn opt_small(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
    fn flag(&self, i: usize) -> rusqlite::Result<bool> {
        Ok(self.get::<_, i64>(i)? != 0)
    }
}

/// The result of a shared row mapping, as rusqlite's row closures want it: a stored chatid
/// that is invalid is a conversion failure of its column.
fn cells<T>(mapped: Result<T, RowError<rusqlite::Error>>) -> rusqlite::Result<T> {
    mapped.map_err(|e| match e {
        RowError::Cell(e) => e,
        RowError::ChatId(e) => {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        }
        RowError::Buttons(e) => {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
        }
        RowError::Name(e) => {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        }
    })
}

/// Records an accepted command unless its msgId is known: the one insert of ingest and of a
/// card's click. The number of rows inserted (0 or 1).
fn insert_accepted(conn: &Connection, c: &Accepted) -> rusqlite::Result<usize> {
    conn.prepare_cached(concat!(
        "INSERT OR IGNORE INTO commands (",
        accepted_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'accepted')"
    ))
    .and_then(|mut st| {
        st.execute(params![
            c.msg_id,
            to_i64(c.received_ms),
            c.conversation_id,
            c.conversation_type.as_wire(),
            c.conversation_title,
            c.sender_staff_id,
            c.sender_nick,
            c.sender_is_admin as i64,
            c.msgtype,
            c.text,
            c.session_webhook.expose(),
            c.session_expires_ms.map(to_i64),
        ])
    })
}

/// The pending revert of one setting of a group, if any.
fn pending_revert(conn: &Connection, cid: &str, setting: &str) -> Result<Option<RevertJob>, LedgerError> {
    conn.prepare_cached(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE conversation_id = ?1 AND setting = ?2 AND state IN ('pending', 'running')"
    ))
    .and_then(|mut st| {
        st.query_row(params![cid, setting], |r| cells(job_from_row(r)))
            .optional()
    })
    .map_err(sql("pending revert"))
}

/// A stored chatid; only valid ones are ever written, so a bad one means the file was edited.
impl SqliteLedger {
    /// Runs the lease statement `statement` (parameters: name, holder, the new end of the
    /// lease, now) once per name in one write; the names it changed, in the order given.
    fn write_leases(
        &self,
        op: &'static str,
        statement: &'static str,
        names: &[String],
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Vec<String>, LedgerError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let (names, holder, clock) = (names.to_vec(), holder.to_owned(), Arc::clone(&self.clock));
        self.write(move |conn| {
            // Read under the write lock, like the rate budget's clock.
            let now_ms = clock.now_ms();
            let (until, now) = (to_i64(now_ms.saturating_add(ttl_ms)), to_i64(now_ms));
            let mut st = conn.prepare_cached(statement).map_err(sql(op))?;
            let mut held = Vec::new();
            for name in names {
                if st.execute(params![name, holder, until, now]).map_err(sql(op))? == 1 {
                    held.push(name);
                }
            }
            Ok(held)
        })
    }
}
