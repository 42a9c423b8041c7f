//! The PostgreSQL ledger: the same store as SQLite's on a server that several `serve`
//! replicas can share.
//!
//! The [`Ledger`] trait is synchronous and is called from tokio's blocking pool and from the
//! callback path; the client (`tokio-postgres`) is asynchronous. The ledger runs its own
//! single-threaded runtime on a thread of its own: every call becomes a task there, bounded
//! by a timeout, and the caller waits on a channel, so a call works from any thread and
//! never nests one runtime in another.
//!
//! Callbacks are committed in groups, as in SQLite: a writer task takes every acceptance
//! waiting when it starts a write and inserts them with one statement (one round trip, one
//! commit), on a connection of its own. Being the only writer of open commands, it hands
//! out acceptance positions (a `BIGSERIAL`) in commit order, which the worker's cursor
//! relies on. Other writes are short statements on pooled connections.

mod migrations;
mod pool;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Row;

use self::pool::{Connector, Pool, Session};
use super::rows::{
    Cells, RowError, audit_from_row, binding_from_row, department_from_row, dm_state_from_row, job_from_row,
    pending_from_row, to_i64, to_u64,
};
use super::{
    AuditRow, BindingStore, CommandLog, LeaseStore, LedgerError, LedgerFuture, Maintenance, PruneStep,
    RateBudget, RevertState, SettingStore, Slot,
};
use crate::clock::Clock;
use crate::config::PostgresUrl;
use crate::domain::{Accepted, Answer, Binding, Delivery, Department, DmState, Pending, RevertJob};

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

/// A single-threaded runtime on its own thread; it stops when this is dropped.
struct RuntimeThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RuntimeThread {
    fn start() -> Result<Self, LedgerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LedgerError::Join(format!("cannot start the ledger's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ledger-postgres".into())
            .spawn(move || {
                // Returns when the ledger is dropped (the sender with it); the runtime, its
                // connections and the writer end here, outside any other runtime.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| LedgerError::Join(e.to_string()))?;
        Ok(Self { handle, _stop: stop })
    }

    /// Runs `task` on the ledger's runtime and waits for its result, at most `timeout`.
    fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        timeout: Duration,
        task: impl Future<Output = Result<T, LedgerError>> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let result = tokio::time::timeout(timeout, task)
                .await
                .unwrap_or(Err(LedgerError::Timeout(op)));
            let _ = tx.send(result);
        });
        rx.recv().map_err(|_| LedgerError::WriterGone)?
    }

    /// Starts `task` on the ledger's runtime, bounded by `timeout`; the caller awaits its
    /// result from any runtime, without a thread of its own waiting for it.
    fn spawn<T: Send + 'static>(
        &self,
        op: &'static str,
        timeout: Duration,
        task: impl Future<Output = Result<T, LedgerError>> + Send + 'static,
    ) -> LedgerFuture<T> {
        let running = self.handle.spawn(async move {
            tokio::time::timeout(timeout, task)
                .await
                .unwrap_or(Err(LedgerError::Timeout(op)))
        });
        Box::pin(async move { running.await.map_err(|e| LedgerError::Join(e.to_string()))? })
    }

    /// Waits for a call [`RuntimeThread::spawn`] started (its own timeout bounds it).
    fn block<T: Send + 'static>(&self, op: &'static str, call: LedgerFuture<T>) -> Result<T, LedgerError> {
        self.run(op, CALL_TIMEOUT * 2, call)
    }
}

/// What the writer task commits in groups, with when it was queued.
enum Ingest {
    Accept(
        Box<Accepted>,
        Box<dyn FnOnce(Result<bool, LedgerError>) + Send>,
        Instant,
    ),
    /// `/readyz`'s probe, committed by the same connection and path as callbacks.
    Ping(i64, Box<dyn FnOnce(Result<(), LedgerError>) + Send>, Instant),
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
        let config = url.config().map_err(LedgerError::Schema)?;
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

async fn writer_loop(pool: Arc<Pool>, mut jobs: tokio::sync::mpsc::UnboundedReceiver<Ingest>) {
    let mut session: Option<Session> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut accepts = Vec::new();
        let mut accepted_done = Vec::new();
        let mut pings = Vec::new();
        let mut probe_ms = 0;
        for job in batch.drain(..) {
            // A job that waited out a whole write timeout behind stuck batches is refused
            // now: its caller (a callback) must hear "retry later" in bounded time.
            match job {
                Ingest::Accept(_, done, queued) if queued.elapsed() > WRITE_TIMEOUT => {
                    done(Err(LedgerError::Timeout("waiting for the group commit")));
                }
                Ingest::Ping(_, done, queued) if queued.elapsed() > WRITE_TIMEOUT => {
                    done(Err(LedgerError::Timeout("waiting for the group commit")));
                }
                Ingest::Accept(cmd, done, _) => {
                    accepts.push(*cmd);
                    accepted_done.push(done);
                }
                Ingest::Ping(ms, done, _) => {
                    probe_ms = probe_ms.max(ms);
                    pings.push(done);
                }
            }
        }
        if accepts.is_empty() && pings.is_empty() {
            continue;
        }
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            write_batch(
                &pool,
                &mut session,
                &accepts,
                (!pings.is_empty()).then_some(probe_ms),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(LedgerError::Timeout("group commit")));
        match written {
            Ok(results) => {
                for (done, result) in accepted_done.into_iter().zip(results) {
                    done(result);
                }
                for done in pings {
                    done(Ok(()));
                }
            }
            Err(e) => {
                // The connection may be broken or mid-statement: the next batch opens another.
                session = None;
                tracing::error!(error = %e, "ledger commit failed");
                let reason = e.to_string();
                for done in accepted_done {
                    done(Err(LedgerError::Commit(reason.clone())));
                }
                for done in pings {
                    done(Err(LedgerError::Commit(reason.clone())));
                }
            }
        }
    }
}

/// Inserts the acceptances unless their msgId is known (one statement), then the probe if
/// asked for; a result per acceptance, `true` for the first of each new msgId.
async fn write_batch(
    pool: &Pool,
    session: &mut Option<Session>,
    accepts: &[Accepted],
    probe_ms: Option<i64>,
) -> Result<Vec<Result<bool, LedgerError>>, LedgerError> {
    if session.as_ref().is_none_or(|s| s.client.is_closed()) {
        *session = Some(pool.connector().connect().await?);
    }
    let Some(s) = session.as_mut() else {
        return Err(LedgerError::WriterGone);
    };
    let results = if accepts.is_empty() {
        Vec::new()
    } else {
        match insert_accepted(s, accepts).await {
            Ok(new) => first_of_each(accepts, new),
            // A row the server refuses (none should be) must not fail the others with it.
            Err(e) if e.as_db_error().is_some() && accepts.len() > 1 => {
                tracing::warn!(error = %describe(&e), "a group commit was refused; inserting its rows one by one");
                let mut results = Vec::with_capacity(accepts.len());
                for cmd in accepts {
                    results.push(match insert_accepted(s, std::slice::from_ref(cmd)).await {
                        Ok(new) => Ok(!new.is_empty()),
                        Err(e) if e.as_db_error().is_some() => Err(pg("accept")(e)),
                        Err(e) => return Err(pg("accept")(e)),
                    });
                }
                results
            }
            Err(e) => return Err(pg("accept")(e)),
        }
    };
    if let Some(ms) = probe_ms {
        s.execute(READY_PROBE_SQL, &[&ms]).await.map_err(pg("ping"))?;
    }
    Ok(results)
}

/// `/readyz`'s probe: a real write of one row, found by its primary key.
pub const READY_PROBE_SQL: &str = "UPDATE health SET probed_ms = $1 WHERE id = 1";

/// The acceptances, as arrays unnested in their order: one prepared statement whatever the
/// size of the batch, and positions handed out in that order.
///
/// Positions must also become visible in order, across replicas: a worker reads open
/// commands after the last position it saw, so a batch that took lower positions but
/// committed after a higher one would be passed over. The statement therefore takes a
/// transaction-level advisory lock before its first row gets a position (the lock's row is
/// joined to every inserted row) and holds it until its commit: ingest batches of all
/// replicas take positions and commit one after another.
const INSERT_ACCEPTED_SQL: &str = "WITH in_order AS (SELECT pg_advisory_xact_lock(7301446012553011))
     INSERT INTO commands (msg_id, received_ms, conversation_id,
     conversation_type, conversation_title, sender_staff_id, sender_nick, sender_is_admin, msgtype,
     text, session_webhook, session_expires_ms, status)
     SELECT m, r, c, ct, tt, s, n, a, mt, tx, w, e, 'accepted'
     FROM in_order CROSS JOIN
          unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                 $8::bool[], $9::text[], $10::text[], $11::text[], $12::int8[])
          WITH ORDINALITY AS t(m, r, c, ct, tt, s, n, a, mt, tx, w, e, o)
     ORDER BY o
     ON CONFLICT (msg_id) DO NOTHING
     RETURNING msg_id";

/// Inserts `accepts`; the msgIds that were new.
async fn insert_accepted(
    s: &mut Session,
    accepts: &[Accepted],
) -> Result<std::collections::HashSet<String>, tokio_postgres::Error> {
    let col = |f: fn(&Accepted) -> String| accepts.iter().map(f).collect::<Vec<_>>();
    let opt = |f: fn(&Accepted) -> Option<String>| accepts.iter().map(f).collect::<Vec<_>>();
    let msg_id = col(|c| text(&c.msg_id));
    let received: Vec<i64> = accepts.iter().map(|c| to_i64(c.received_ms)).collect();
    let cid = col(|c| text(&c.conversation_id));
    let ctype = col(|c| c.conversation_type.as_wire().to_owned());
    let title = opt(|c| opt_text(&c.conversation_title));
    let staff = opt(|c| opt_text(&c.sender_staff_id));
    let nick = opt(|c| opt_text(&c.sender_nick));
    let admin: Vec<bool> = accepts.iter().map(|c| c.sender_is_admin).collect();
    let msgtype = col(|c| text(&c.msgtype));
    let body = opt(|c| opt_text(&c.text));
    let webhook = col(|c| text(c.session_webhook.expose()));
    let expires: Vec<Option<i64>> = accepts.iter().map(|c| c.session_expires_ms.map(to_i64)).collect();
    let rows = s
        .query(
            INSERT_ACCEPTED_SQL,
            &[
                &msg_id, &received, &cid, &ctype, &title, &staff, &nick, &admin, &msgtype, &body, &webhook,
                &expires,
            ],
        )
        .await?;
    rows.iter().map(|r| r.try_get::<_, String>(0)).collect()
}

/// `true` for the first acceptance of each msgId in `new`, `false` for the rest (known
/// already, or a second copy within the batch).
fn first_of_each(
    accepts: &[Accepted],
    mut new: std::collections::HashSet<String>,
) -> Vec<Result<bool, LedgerError>> {
    accepts.iter().map(|c| Ok(new.remove(&text(&c.msg_id)))).collect()
}

const OPEN_AFTER_SQL: &str = concat!(
    "SELECT ",
    pending_columns!("pos"),
    " FROM commands WHERE pos > $1 AND status <> 'done' ORDER BY pos LIMIT $2"
);

/// A range of positions, filtered: no per-group index, which would slow every insert.
const OPEN_IN_CONVERSATION_SQL: &str = concat!(
    "SELECT ",
    pending_columns!("pos"),
    " FROM commands WHERE pos > $1 AND pos <= $2 AND status <> 'done' AND conversation_id = $3
     ORDER BY pos LIMIT $4"
);

/// `dingops_open_commands`: counted on the partial index of open commands.
pub const OPEN_COUNT_SQL: &str = "SELECT count(*) FROM commands WHERE status <> 'done'";

fn rows<T>(
    op: &'static str,
    rows: &[Row],
    f: impl Fn(&Row) -> Result<T, tokio_postgres::Error>,
) -> Result<Vec<T>, LedgerError> {
    rows.iter().map(f).collect::<Result<_, _>>().map_err(pg(op))
}

/// Marks the pending (or running) revert of a setting `replaced`, returning it; within a
/// transaction that holds the setting's advisory lock.
async fn replace_pending(
    tx: &tokio_postgres::Transaction<'_>,
    cid: &str,
    setting: &str,
    now_ms: i64,
) -> Result<Option<RevertJob>, LedgerError> {
    // One writer per setting of a group at a time, across connections and replicas: the
    // unique index allows one pending job, and two transactions that both replaced the old
    // one would both insert.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))",
        &[&cid, &setting],
    )
    .await
    .map_err(pg("replace revert"))?;
    let replaced = tx
        .query_opt(
            concat!(
                "UPDATE jobs SET state = 'replaced', finished_ms = $3
                 WHERE conversation_id = $1 AND setting = $2 AND state IN ('pending', 'running')
                 RETURNING ",
                job_columns!()
            ),
            &[&cid, &setting, &now_ms],
        )
        .await
        .map_err(pg("replace revert"))?;
    replaced
        .as_ref()
        .map(|r| job_from_row(r).map_err(unmapped("read revert")))
        .transpose()
}

/// The hot path's calls, started on the ledger's runtime: the synchronous role methods wait
/// for them, their async forms return them.
impl PostgresLedger {
    fn record_answer_call(&self, msg_id: String, a: Answer) -> LedgerFuture<()> {
        self.with_async("record_answer", move |mut c| async move {
            c.execute(
                "UPDATE commands SET status = 'answered', command = $2, result = $3, errcode = $4,
                 detail = $5, answer_text = $6 WHERE msg_id = $1",
                &[
                    &text(&msg_id),
                    &text(&a.command),
                    &a.outcome.as_str(),
                    &a.errcode,
                    &text(&a.detail),
                    &text(&a.text),
                ],
            )
            .await
            .map_err(pg("record_answer"))?;
            Ok(((), c))
        })
    }

    fn finish_call(&self, msg_id: String, a: Answer, reply: String, finished_ms: u64) -> LedgerFuture<()> {
        self.with_async("finish", move |mut c| async move {
            c.execute(
                "UPDATE commands SET status = 'done', command = $2, result = $3, errcode = $4,
                 detail = $5, reply = $6, finished_ms = $7, session_webhook = NULL, answer_text = NULL
                 WHERE msg_id = $1",
                &[
                    &text(&msg_id),
                    &text(&a.command),
                    &a.outcome.as_str(),
                    &a.errcode,
                    &text(&a.detail),
                    &text(&reply),
                    &to_i64(finished_ms),
                ],
            )
            .await
            .map_err(pg("finish"))?;
            Ok(((), c))
        })
    }

    fn open_after_call(&self, cursor: i64, limit: usize) -> LedgerFuture<Vec<(i64, Pending)>> {
        self.with_async("open_after", move |mut c| async move {
            let found = c
                .query(OPEN_AFTER_SQL, &[&cursor, &limit_of(limit)])
                .await
                .map_err(pg("open_after"))?;
            Ok((mapped("open_after", &found, pending_from_row)?, c))
        })
    }

    fn open_in_conversation_call(
        &self,
        cid: String,
        after: i64,
        through: i64,
        limit: usize,
    ) -> LedgerFuture<Vec<(i64, Pending)>> {
        self.with_async("open_in_conversation_after", move |mut c| async move {
            let found = c
                .query(
                    OPEN_IN_CONVERSATION_SQL,
                    &[&after, &through, &cid, &limit_of(limit)],
                )
                .await
                .map_err(pg("open_in_conversation_after"))?;
            Ok((mapped("open_in_conversation_after", &found, pending_from_row)?, c))
        })
    }

    fn clock_ms_call(&self) -> LedgerFuture<u64> {
        let fixed = self.fixed_now();
        self.with_async("read the clock", move |mut c| async move {
            let row = c
                .query_opt(concat!("SELECT ", ledger_now!("$1")), &[&fixed])
                .await
                .map_err(pg("read the clock"))?
                .ok_or(LedgerError::Invalid("the server did not tell its clock"))?;
            Ok((to_u64(row.get(0)), c))
        })
    }

    fn reserve_call_call(&self, api: String, max: u32, window_ms: u64) -> LedgerFuture<Slot> {
        if let Err(e) = super::budget_args(max, window_ms) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let fixed = self.fixed_now();
        self.with_async("reserve call", move |mut c| async move {
            let tx = c.client.transaction().await.map_err(pg("reserve call"))?;
            // One lock per API for the transaction: every replica's reservations of that API
            // queue here, from before the read until the insert is committed.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('dingops call budget ' || $1, 0))",
                &[&text(&api)],
            )
            .await
            .map_err(pg("reserve call"))?;
            // The clock is read under the lock (waiting for it is not free time), from the
            // server's clock; slots too old to share a window with this one go in the same
            // round trip.
            let now: i64 = tx
                .query_one(
                    concat!(
                        "WITH c AS (SELECT ",
                        ledger_now!("$3"),
                        " AS now), gone AS (DELETE FROM call_slots WHERE api = $1 AND slot_ms <= (SELECT now FROM c) - $2)
                         SELECT now FROM c"
                    ),
                    &[&text(&api), &to_i64(window_ms), &fixed],
                )
                .await
                .map_err(pg("reserve call"))?
                .get(0);
            let now = to_u64(now);
            let max_th_latest: Option<i64> = tx
                .query_opt(
                    "SELECT slot_ms FROM call_slots WHERE api = $1 ORDER BY slot_ms DESC LIMIT 1 OFFSET $2",
                    &[&text(&api), &(i64::from(max) - 1)],
                )
                .await
                .map_err(pg("reserve call"))?
                .map(|r| r.get(0));
            let latest: Option<i64> = tx
                .query_one(
                    "SELECT max(slot_ms) FROM call_slots WHERE api = $1",
                    &[&text(&api)],
                )
                .await
                .map_err(pg("reserve call"))?
                .get(0);
            let slot = super::budget_slot(now, latest.map(to_u64), max_th_latest.map(to_u64), window_ms, max);
            tx.execute(
                "INSERT INTO call_slots (api, slot_ms) VALUES ($1, $2)",
                &[&text(&api), &to_i64(slot)],
            )
            .await
            .map_err(pg("reserve call"))?;
            tx.commit().await.map_err(pg("reserve call"))?;
            Ok((
                Slot {
                    at_ms: slot,
                    now_ms: now,
                },
                c,
            ))
        })
    }
}

impl CommandLog for PostgresLedger {
    fn accept(&self, cmd: &Accepted) -> Result<bool, LedgerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.accept_then(
            cmd.clone(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| LedgerError::WriterGone)?
    }

    fn accept_then(&self, cmd: Accepted, done: Box<dyn FnOnce(Result<bool, LedgerError>) + Send>) {
        self.ingest(Ingest::Accept(Box::new(cmd), done, Instant::now()));
    }

    fn record_answer(&self, msg_id: &str, a: &Answer) -> Result<(), LedgerError> {
        self.runtime.block(
            "record_answer",
            self.record_answer_call(msg_id.to_owned(), a.clone()),
        )
    }

    fn record_answer_async(self: Arc<Self>, msg_id: String, answer: Answer) -> LedgerFuture<()> {
        self.record_answer_call(msg_id, answer)
    }

    fn finish(
        &self,
        msg_id: &str,
        a: &Answer,
        delivery: &Delivery,
        finished_ms: u64,
    ) -> Result<(), LedgerError> {
        let reply = delivery.as_ledger_text().into_owned();
        self.runtime.block(
            "finish",
            self.finish_call(msg_id.to_owned(), a.clone(), reply, finished_ms),
        )
    }

    fn finish_async(
        self: Arc<Self>,
        msg_id: String,
        answer: Answer,
        delivery: Delivery,
        finished_ms: u64,
    ) -> LedgerFuture<()> {
        let reply = delivery.as_ledger_text().into_owned();
        self.finish_call(msg_id, answer, reply, finished_ms)
    }

    fn open_after(&self, cursor: i64, limit: usize) -> Result<Vec<(i64, Pending)>, LedgerError> {
        self.runtime
            .block("open_after", self.open_after_call(cursor, limit))
    }

    fn open_after_async(self: Arc<Self>, cursor: i64, limit: usize) -> LedgerFuture<Vec<(i64, Pending)>> {
        self.open_after_call(cursor, limit)
    }

    fn open_in_conversation_after(
        &self,
        conversation_id: &str,
        after: i64,
        through: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Pending)>, LedgerError> {
        self.runtime.block(
            "open_in_conversation_after",
            self.open_in_conversation_call(conversation_id.to_owned(), after, through, limit),
        )
    }

    fn open_in_conversation_after_async(
        self: Arc<Self>,
        conversation_id: String,
        after: i64,
        through: i64,
        limit: usize,
    ) -> LedgerFuture<Vec<(i64, Pending)>> {
        self.open_in_conversation_call(conversation_id, after, through, limit)
    }
    fn newest_done_by_group(&self) -> Result<HashMap<String, i64>, LedgerError> {
        self.with("newest_done_by_group", move |mut c| async move {
            let found = c
                .query(
                    "SELECT conversation_id, max(pos) FROM commands
                     WHERE status = 'done'
                       AND pos > (SELECT min(pos) FROM commands WHERE status <> 'done')
                     GROUP BY conversation_id",
                    &[],
                )
                .await
                .map_err(pg("newest_done_by_group"))?;
            let pairs = rows("newest_done_by_group", &found, |r| {
                Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?))
            })?;
            Ok((pairs.into_iter().collect(), c))
        })
    }

    fn open_count(&self) -> Result<u64, LedgerError> {
        self.with("open_count", move |mut c| async move {
            let found = c.query(OPEN_COUNT_SQL, &[]).await.map_err(pg("open_count"))?;
            let n = rows("open_count", &found, |r| r.try_get::<_, i64>(0))?;
            Ok((n.first().copied().map_or(0, to_u64), c))
        })
    }

    fn history(
        &self,
        conversation_id: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, LedgerError> {
        let cid = conversation_id.map(str::to_owned);
        let since = to_i64(since_ms.unwrap_or(0));
        self.with("history", move |mut c| async move {
            let found = c
                .query(
                    concat!(
                        "SELECT ",
                        audit_columns!(),
                        " FROM commands
                         WHERE ($1::text IS NULL OR conversation_id = $1) AND received_ms >= $2
                         ORDER BY received_ms DESC, msg_id LIMIT $3"
                    ),
                    &[&cid, &since, &limit_of(limit)],
                )
                .await
                .map_err(pg("history"))?;
            let all = mapped("history", &found, audit_from_row)?;
            Ok((all, c))
        })
    }

    fn record_own_action(&self, row: &AuditRow) -> Result<(), LedgerError> {
        let r = row.clone();
        self.with("record own action", move |mut c| async move {
            c.execute(
                "INSERT INTO commands (msg_id, received_ms, conversation_id, conversation_type,
                 sender_staff_id, sender_nick, sender_is_admin, msgtype, text, status, command, result,
                 errcode, detail, reply, finished_ms)
                 VALUES ($1, $2, $3, '2', $4, $5, false, 'timer', $6, 'done', $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (msg_id) DO NOTHING",
                &[
                    &text(&r.msg_id),
                    &to_i64(r.received_ms),
                    &text(&r.conversation_id),
                    &opt_text(&r.sender_staff_id),
                    &opt_text(&r.sender_nick),
                    &opt_text(&r.text),
                    &opt_text(&r.command),
                    &opt_text(&r.result),
                    &r.errcode,
                    &opt_text(&r.detail),
                    &opt_text(&r.reply),
                    &r.finished_ms.map(to_i64),
                ],
            )
            .await
            .map_err(pg("record own action"))?;
            Ok(((), c))
        })
    }
}

impl BindingStore for PostgresLedger {
    fn binding(&self, conversation_id: &str) -> Result<Option<Binding>, LedgerError> {
        let cid = conversation_id.to_owned();
        self.with("binding", move |mut c| async move {
            let found = c
                .query_opt(
                    concat!(
                        "SELECT ",
                        binding_columns!(),
                        " FROM bindings WHERE conversation_id = $1"
                    ),
                    &[&cid],
                )
                .await
                .map_err(pg("binding"))?;
            let found = found
                .as_ref()
                .map(|r| binding_from_row(r).map_err(unmapped("binding")))
                .transpose()?;
            Ok((found, c))
        })
    }

    fn bind(&self, b: &Binding) -> Result<(), LedgerError> {
        let b = b.clone();
        self.with("bind", move |mut c| async move {
            c.execute(
                "INSERT INTO bindings (conversation_id, chat_id, bound_by, bound_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (conversation_id) DO UPDATE SET chat_id = excluded.chat_id,
                 bound_by = excluded.bound_by, bound_ms = excluded.bound_ms",
                &[
                    &text(&b.conversation_id),
                    &b.chat_id.as_str(),
                    &text(&b.bound_by),
                    &to_i64(b.bound_ms),
                ],
            )
            .await
            .map_err(pg("bind"))?;
            Ok(((), c))
        })
    }

    fn bindings(&self) -> Result<Vec<Binding>, LedgerError> {
        self.with("bindings", move |mut c| async move {
            let found = c
                .query(
                    concat!(
                        "SELECT ",
                        binding_columns!(),
                        " FROM bindings ORDER BY conversation_id"
                    ),
                    &[],
                )
                .await
                .map_err(pg("bindings"))?;
            let all = mapped("binding", &found, binding_from_row)?;
            Ok((all, c))
        })
    }

    fn departments(&self) -> Result<Vec<Department>, LedgerError> {
        self.with("departments", move |mut c| async move {
            let found = c
                .query(
                    concat!(
                        "SELECT ",
                        department_columns!(),
                        " FROM departments ORDER BY dept_id"
                    ),
                    &[],
                )
                .await
                .map_err(pg("departments"))?;
            let all = mapped("departments", &found, department_from_row)?;
            Ok((all, c))
        })
    }

    fn replace_departments(&self, departments: &[Department]) -> Result<(), LedgerError> {
        let departments = departments.to_vec();
        self.with("replace_departments", move |mut c| async move {
            let ids: Vec<i64> = departments.iter().map(|d| d.dept_id).collect();
            let parents: Vec<Option<i64>> = departments.iter().map(|d| d.parent_id).collect();
            let names: Vec<String> = departments.iter().map(|d| text(&d.name)).collect();
            let paths: Vec<String> = departments.iter().map(|d| text(&d.path)).collect();
            let chats: Vec<Option<String>> = departments
                .iter()
                .map(|d| d.chat_id.as_ref().map(|c| c.as_str().to_owned()))
                .collect();
            let ocids: Vec<Option<String>> = departments.iter().map(|d| opt_text(&d.open_conversation_id)).collect();
            let tx = c.client.transaction().await.map_err(pg("replace_departments"))?;
            tx.execute("DELETE FROM departments", &[])
                .await
                .map_err(pg("replace_departments"))?;
            tx.execute(
                "INSERT INTO departments (dept_id, parent_id, name, path, chat_id, open_conversation_id)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[])",
                &[&ids, &parents, &names, &paths, &chats, &ocids],
            )
            .await
            .map_err(pg("replace_departments"))?;
            tx.commit().await.map_err(pg("replace_departments"))?;
            Ok(((), c))
        })
    }
}

impl SettingStore for PostgresLedger {
    fn dm_state(&self, conversation_id: &str) -> Result<Option<DmState>, LedgerError> {
        let cid = conversation_id.to_owned();
        self.with("dm_state", move |mut c| async move {
            let found = c
                .query_opt(
                    concat!(
                        "SELECT ",
                        dm_state_columns!(),
                        " FROM dm_state WHERE conversation_id = $1"
                    ),
                    &[&cid],
                )
                .await
                .map_err(pg("dm_state"))?;
            let state = found
                .map(|r| dm_state_from_row(&r).map_err(unmapped("dm_state")))
                .transpose()?;
            Ok((state, c))
        })
    }

    fn set_dm_state(&self, conversation_id: &str, st: &DmState) -> Result<(), LedgerError> {
        let (cid, st) = (conversation_id.to_owned(), st.clone());
        self.with("set_dm_state", move |mut c| async move {
            c.execute(
                "INSERT INTO dm_state (conversation_id, prohibited, set_by, set_by_nick, set_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (conversation_id) DO UPDATE SET prohibited = excluded.prohibited,
                 set_by = excluded.set_by, set_by_nick = excluded.set_by_nick, set_ms = excluded.set_ms",
                &[
                    &text(&cid),
                    &st.prohibited,
                    &text(&st.set_by),
                    &opt_text(&st.set_by_nick),
                    &to_i64(st.set_ms),
                ],
            )
            .await
            .map_err(pg("set_dm_state"))?;
            Ok(((), c))
        })
    }

    fn schedule_revert(&self, job: &RevertJob) -> Result<Option<RevertJob>, LedgerError> {
        let job = job.clone();
        self.with("schedule revert", move |mut c| async move {
            let tx = c.client.transaction().await.map_err(pg("schedule revert"))?;
            let replaced =
                replace_pending(&tx, &job.conversation_id, &job.setting, to_i64(job.scheduled_ms)).await?;
            tx.execute(
                "INSERT INTO jobs (conversation_id, chat_id, setting, value, due_ms, scheduled_by,
                 scheduled_command, scheduled_ms, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending')",
                &[
                    &text(&job.conversation_id),
                    &job.chat_id.as_str(),
                    &text(&job.setting),
                    &i16::from(job.value),
                    &to_i64(job.due_ms),
                    &text(&job.scheduled_by),
                    &text(&job.scheduled_command),
                    &to_i64(job.scheduled_ms),
                ],
            )
            .await
            .map_err(pg("schedule revert"))?;
            tx.commit().await.map_err(pg("schedule revert"))?;
            Ok((replaced, c))
        })
    }

    fn cancel_revert(&self, conversation_id: &str, setting: &str) -> Result<Option<RevertJob>, LedgerError> {
        let (cid, setting) = (conversation_id.to_owned(), setting.to_owned());
        self.with("cancel revert", move |mut c| async move {
            let tx = c.client.transaction().await.map_err(pg("cancel revert"))?;
            let replaced = replace_pending(&tx, &cid, &setting, to_i64(crate::clock::now_ms())).await?;
            tx.commit().await.map_err(pg("cancel revert"))?;
            Ok((replaced, c))
        })
    }

    fn pending_reverts(&self, conversation_id: Option<&str>) -> Result<Vec<RevertJob>, LedgerError> {
        let cid = conversation_id.map(str::to_owned);
        self.with("pending reverts", move |mut c| async move {
            let found = c
                .query(
                    concat!(
                        "SELECT ",
                        job_columns!(),
                        " FROM jobs WHERE state IN ('pending', 'running') AND ($1::text IS NULL OR conversation_id = $1)
                         ORDER BY due_ms, id"
                    ),
                    &[&cid],
                )
                .await
                .map_err(pg("pending reverts"))?;
            let all = mapped("read revert", &found, job_from_row)?;
            Ok((all, c))
        })
    }

    fn claim_revert(&self, id: i64) -> Result<bool, LedgerError> {
        self.with("claim revert", move |mut c| async move {
            let n = c
                .execute(
                    "UPDATE jobs SET state = 'running' WHERE id = $1 AND state IN ('pending', 'running')",
                    &[&id],
                )
                .await
                .map_err(pg("claim revert"))?;
            Ok((n == 1, c))
        })
    }

    fn finish_revert(
        &self,
        id: i64,
        state: RevertState,
        result: &str,
        finished_ms: u64,
    ) -> Result<(), LedgerError> {
        let (state, result) = (state.as_str(), result.to_owned());
        self.with("finish revert", move |mut c| async move {
            c.execute(
                "UPDATE jobs SET state = $2, result = $3, finished_ms = $4 WHERE id = $1 AND state = 'running'",
                &[&id, &state, &text(&result), &to_i64(finished_ms)],
            )
            .await
            .map_err(pg("finish revert"))?;
            Ok(((), c))
        })
    }
}

impl LeaseStore for PostgresLedger {
    fn try_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError> {
        // One statement: the upsert's WHERE leaves a live lease of another holder as it is;
        // the server's clock decides what is live and when the new lease ends.
        self.write_leases(
            "try leases",
            concat!(
                "INSERT INTO leases (name, holder, until_ms)
                 SELECT n, $2, c.now + $3 FROM unnest($1::text[]) AS t(n), (SELECT ",
                ledger_now!("$4"),
                " AS now) AS c
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                 WHERE leases.holder = excluded.holder OR leases.until_ms <= excluded.until_ms - $3
                 RETURNING name"
            ),
            names,
            holder,
            ttl_ms,
        )
    }

    fn renew_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError> {
        self.write_leases(
            "renew leases",
            concat!(
                "UPDATE leases SET until_ms = c.now + $3 FROM (SELECT ",
                ledger_now!("$4"),
                " AS now) AS c
                 WHERE leases.name = ANY($1) AND leases.holder = $2 AND leases.until_ms > c.now
                 RETURNING leases.name"
            ),
            names,
            holder,
            ttl_ms,
        )
    }

    fn release_leases(&self, names: &[String], holder: &str) -> Result<(), LedgerError> {
        if names.is_empty() {
            return Ok(());
        }
        let (names, holder) = (names.iter().map(|n| text(n)).collect::<Vec<_>>(), text(holder));
        self.with("release leases", move |mut c| async move {
            c.execute(
                "DELETE FROM leases WHERE name = ANY($1) AND holder = $2",
                &[&names, &holder],
            )
            .await
            .map_err(pg("release leases"))?;
            Ok(((), c))
        })
    }

    fn release_holder(&self, holder: &str) -> Result<(), LedgerError> {
        let holder = text(holder);
        self.with("release holder", move |mut c| async move {
            c.execute("DELETE FROM leases WHERE holder = $1", &[&holder])
                .await
                .map_err(pg("release holder"))?;
            Ok(((), c))
        })
    }
}

impl RateBudget for PostgresLedger {
    fn clock_ms(&self) -> Result<u64, LedgerError> {
        self.runtime.block("read the clock", self.clock_ms_call())
    }

    fn clock_ms_async(self: Arc<Self>) -> LedgerFuture<u64> {
        self.clock_ms_call()
    }

    fn reserve_call(&self, api: &str, max: u32, window_ms: u64) -> Result<Slot, LedgerError> {
        self.runtime.block(
            "reserve call",
            self.reserve_call_call(api.to_owned(), max, window_ms),
        )
    }

    fn reserve_call_async(self: Arc<Self>, api: String, max: u32, window_ms: u64) -> LedgerFuture<Slot> {
        self.reserve_call_call(api, max, window_ms)
    }
}

impl Maintenance for PostgresLedger {
    fn ping(&self) -> Result<(), LedgerError> {
        // A real write committed by the writer, on the connection and path callbacks take: it
        // fails when PostgreSQL is gone, read-only or stuck, exactly when callbacks get 503.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.ingest(Ingest::Ping(
            to_i64(crate::clock::now_ms()),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            Instant::now(),
        ));
        rx.recv().map_err(|_| LedgerError::WriterGone)?
    }

    fn prune_finished(&self, before_ms: u64, after: i64, limit: usize) -> Result<PruneStep, LedgerError> {
        let before = to_i64(before_ms);
        let limit = limit_of(limit.max(1));
        self.with("prune", move |mut c| async move {
            // The window of the next `limit` commands, by position.
            let found = c
                .query(
                    "SELECT count(*), max(pos), bool_or(received_ms >= $3) FROM
                     (SELECT pos, received_ms FROM commands WHERE pos > $1 ORDER BY pos LIMIT $2) w",
                    &[&after, &limit, &before],
                )
                .await
                .map_err(pg("prune"))?;
            let window = rows("prune", &found, |r| {
                Ok((
                    r.try_get::<_, i64>(0)?,
                    r.try_get::<_, Option<i64>>(1)?,
                    r.try_get::<_, Option<bool>>(2)?,
                ))
            })?;
            let Some(&(count, Some(last), recent)) = window.first() else {
                return Ok((PruneStep::default(), c));
            };
            let deleted = c
                .execute(
                    "DELETE FROM commands WHERE pos > $1 AND pos <= $2 AND status = 'done'
                     AND received_ms < $3 AND coalesce(finished_ms, 0) < $3",
                    &[&after, &last, &before],
                )
                .await
                .map_err(pg("prune"))?;
            // Commands are accepted in time order, so the first recent one ends the pruning.
            let finished = recent == Some(true) || count < limit;
            Ok((
                PruneStep {
                    deleted: usize::try_from(deleted).unwrap_or(usize::MAX),
                    next: (!finished).then_some(last),
                },
                c,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn a_client_side_error_is_described_with_its_causes() {
        let Err(e) = "host=127.0.0.1 port=notaport".parse::<tokio_postgres::Config>() else {
            panic!("a port that is not a number parsed");
        };
        assert_eq!(e.to_string(), "invalid connection string");
        assert_eq!(
            describe(&e),
            "invalid connection string: invalid value for option `port`"
        );
    }
}
