//! The PostgreSQL ledger: the same store as SQLite's on a server that several `serve`
//! replicas can share.
//!
//! The client (`tokio-postgres`) is asynchronous. The ledger runs its own single-threaded
//! runtime on a thread of its own (`runtime.rs`): every call becomes a task there, bounded by
//! a timeout. An async caller awaits the task's result from its own runtime (the hot path's
//! calls, `calls.rs`, and the async forms of the roles); a synchronous role method waits on a
//! channel, so a call works from any thread and never nests one runtime in another. The
//! roles' statements are in `roles.rs` (`quota.rs` the monthly quota's, `cards.rs` those of
//! cards and approvals), the group commit of callbacks in `ingest.rs`.
//!
//! Callbacks are committed in groups, as in SQLite: a writer task takes every acceptance
//! waiting when it starts a write and inserts them with one statement (one round trip, one
//! commit), on a connection of its own. Being the only writer of open commands, it hands
//! out acceptance positions (a `BIGSERIAL`) in commit order, which the worker's cursor
//! relies on. Other writes are short statements on pooled connections.

mod migrations;
mod pool;
mod url;
pub use url::{PostgresUrl, PostgresUrlError};

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Row;

use self::pool::{Connector, Pool, Session};
use super::rows::{
    Cells, RowError, audit_from_row, binding_from_row, department_from_row, job_from_row, known_from_row,
    pending_from_row, to_i64, to_u64,
};
use super::{
    AuditRow, BindingStore, CommandLog, LeaseStore, LedgerError, LedgerFuture, Maintenance, PruneStep,
    RateBudget, RevertState, SettingStore, Slot,
};
use crate::clock::Clock;
use crate::domain::{Accepted, Answer, Binding, Delivery, Department, KnownValue, Pending, RevertJob};

/// Connections for reads and short writes (the writer has one more of its own).
const POOL_SIZE: usize = 8;
/// Most acceptances inserted by one statement.
const MAX_BATCH: usize = 1024;
/// How long one group commit may take before its callbacks are told to retry.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any other call may take, waiting for a connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Maps a PostgreSQL error of operation `op`.
pub(crate) fn pg(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> LedgerError {
    move |error| LedgerError::Postgres { op, error }
}

/// What went wrong, in words an operator can act on: the server's message and SQLSTATE when
/// the server refused (`password authentication failed for user "x" (SQLSTATE 28P01)`),
/// else the client's error with its causes (`error connecting to server: Connection
/// refused (os error 111)`). `tokio_postgres::Error` itself only says `db error`. Neither
/// contains the password: the server does not echo it and the URL is not part of the error.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The ledger on a PostgreSQL server.
pub struct PostgresLedger {
    runtime: RuntimeThread,
    pool: Arc<Pool>,
    writer: tokio::sync::mpsc::UnboundedSender<Ingest>,
    /// `None`: leases and the rate budget go by the server's clock, the one clock every
    /// replica shares. Tests hand in a clock of their own.
    clock: Option<Arc<dyn Clock>>,
}

/// The ledger's now in SQL, in ms since the Unix epoch: the server's clock unless the
/// parameter `$n` holds a time (a test's clock). `clock_timestamp()`, not `now()`: the time
/// of the statement, not of the transaction's start (a reservation may have waited for
/// its lock).
macro_rules! ledger_now {
    ($param:literal) => {
        concat!(
            "COALESCE(",
            $param,
            "::bigint, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
        )
    };
}

impl PostgresLedger {
    /// Runs the lease statement `statement` (parameters: the names, holder, the lease's
    /// length, a fixed now or NULL for the server's clock; it returns the names it changed)
    /// in one round trip; those names, in the order given.
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
        let (names, holder) = (names.iter().map(|n| text(n)).collect::<Vec<_>>(), text(holder));
        let (ttl, now) = (to_i64(ttl_ms), self.fixed_now());
        self.with(op, move |mut c| async move {
            let rows = c
                .query(statement, &[&names, &holder, &ttl, &now])
                .await
                .map_err(pg(op))?;
            let held: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
            Ok((names.into_iter().filter(|n| held.contains(n)).collect(), c))
        })
    }

    /// Connects to the server at `url`, brings its schema up to date and starts the writer.
    pub fn open(url: &PostgresUrl) -> Result<Self, LedgerError> {
        Self::open_inner(url, None)
    }

    /// [`PostgresLedger::open`] with leases and the rate budget read from `clock` instead
    /// of the server's clock (tests).
    pub fn open_with_clock(url: &PostgresUrl, clock: Arc<dyn Clock>) -> Result<Self, LedgerError> {
        Self::open_inner(url, Some(clock))
    }

    /// The time a test's clock fixes for a statement, or `None` for the server's.
    fn fixed_now(&self) -> Option<i64> {
        self.clock.as_ref().map(|c| to_i64(c.now_ms()))
    }

    fn open_inner(url: &PostgresUrl, clock: Option<Arc<dyn Clock>>) -> Result<Self, LedgerError> {
        let config = url.config().map_err(|e| LedgerError::Schema(e.to_string()))?;
        let connector = Connector::new(config, url.tls())?;
        let pool = Arc::new(Pool::new(connector, POOL_SIZE));
        let runtime = RuntimeThread::start()?;
        let migrating = Arc::clone(&pool);
        runtime.run("migrate", CALL_TIMEOUT * 4, async move {
            let mut session = migrating.connector().connect().await?;
            migrations::migrate(&mut session.client).await
        })?;
        let (writer, jobs) = tokio::sync::mpsc::unbounded_channel();
        runtime.handle.spawn(writer_loop(Arc::clone(&pool), jobs));
        Ok(Self {
            runtime,
            pool,
            writer,
            clock,
        })
    }

    /// Runs `f` with a pooled connection on the ledger's runtime. The connection goes back to
    /// the pool only when `f` succeeded.
    fn with<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(pool::Lease) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, pool::Lease), LedgerError>> + Send + 'static,
    {
        self.runtime.run(op, CALL_TIMEOUT, self.pooled(f))
    }

    /// [`PostgresLedger::with`], awaited: the call runs on the ledger's runtime while the
    /// caller's task waits, with no blocking thread between them.
    fn with_async<T, F, Fut>(&self, op: &'static str, f: F) -> LedgerFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(pool::Lease) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, pool::Lease), LedgerError>> + Send + 'static,
    {
        self.runtime.spawn(op, CALL_TIMEOUT, self.pooled(f))
    }

    fn pooled<T, F, Fut>(&self, f: F) -> impl Future<Output = Result<T, LedgerError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(pool::Lease) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, pool::Lease), LedgerError>> + Send + 'static,
    {
        let pool = Arc::clone(&self.pool);
        async move {
            let lease = pool.get().await?;
            let (value, lease) = f(lease).await?;
            lease.done();
            Ok(value)
        }
    }

    fn ingest(&self, job: Ingest) {
        if let Err(tokio::sync::mpsc::error::SendError(job)) = self.writer.send(job) {
            match job {
                Ingest::Accept(_, done, _) => done(Err(LedgerError::WriterGone)),
                Ingest::Ping(_, done, _) => done(Err(LedgerError::WriterGone)),
            }
        }
    }
}

/// PostgreSQL text cannot hold NUL characters; SQLite can, and a callback may carry one. It
/// is stored as U+FFFD rather than failing the whole group commit it joined.
fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

fn opt_text(s: &Option<String>) -> Option<String> {
    s.as_deref().map(text)
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// How PostgreSQL reads a cell: a revert's value is a `smallint`, flags are `boolean`.
impl Cells for Row {
    type Error = tokio_postgres::Error;
    fn text(&self, i: usize) -> Result<String, Self::Error> {
        self.try_get(i)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error> {
        self.try_get(i)
    }
    fn int(&self, i: usize) -> Result<i64, Self::Error> {
        self.try_get(i)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Error> {
        self.try_get(i)
    }
    fn small(&self, i: usize) -> Result<i64, Self::Error> {
        self.try_get::<_, i16>(i).map(i64::from)
    }
    fn opt_small(&self, i: usize) -> Result<Option<i64>, Self::Error> {
        Ok(self.try_get::<_, Option<i16>>(i)?.map(i64::from))
    }
    fn flag(&self, i: usize) -> Result<bool, Self::Error> {
        self.try_get(i)
    }
}

/// Maps a failed row mapping of operation `op`: a stored chatid is only ever written valid,
/// so a bad one means the table was edited.
fn unmapped(op: &'static str) -> impl Fn(RowError<tokio_postgres::Error>) -> LedgerError {
    move |e| match e {
        RowError::Cell(error) => LedgerError::Postgres { op, error },
        RowError::ChatId(e) => LedgerError::Schema(format!("a stored chatid is invalid: {e}")),
        RowError::Buttons(e) => LedgerError::Schema(format!("a stored card's buttons are invalid: {e}")),
        RowError::Name(e) => LedgerError::Schema(format!("a stored {e}")),
    }
}

/// Every row of `found` mapped by the shared mapping `f`.
fn mapped<T>(
    op: &'static str,
    found: &[Row],
    f: impl Fn(&Row) -> Result<T, RowError<tokio_postgres::Error>>,
) -> Result<Vec<T>, LedgerError> {
    found.iter().map(|r| f(r).map_err(unmapped(op))).collect()
}

// After `ledger_now!`, which they use.
mod calls;
mod cards;
mod ingest;
mod quota;
mod roles;
mod runtime;

use self::calls::{OPEN_COUNT_SQL, replace_pending, rows};
use self::ingest::{Ingest, writer_loop};
use self::runtime::RuntimeThread;
