//! The application: wires the ledger, the DingTalk client, the worker pool, the HTTP
//! server (the callback ingress and the probes) and, in Stream mode, the Stream ingress together; start-up (resumption) and shutdown.

use std::cell::RefCell;
use std::future::Future as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Payload, Server, ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage as _, HttpResponse, HttpServer, web};
use serde_json::json;

use crate::config::Settings;
use crate::dingtalk::DingTalk;
use crate::ingress::Pipeline;
use crate::ingress::http::{HttpIngress, callback};
use crate::ingress::signature::Verifier;
use crate::ingress::stream::{StreamIngress, StreamStatus};
use crate::ledger::LedgerHandle;
use crate::telemetry::Metrics;
use crate::worker::{WorkerContext, WorkerPool};

/// What the probe and metrics routes read.
struct Probes {
    ledger: LedgerHandle,
    metrics: Arc<Metrics>,
    /// Set in `stream` and `both` mode: ready needs a live Stream connection.
    stream: Option<StreamStatus>,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(
        "the ledger {database} is in use by another dingops serve ({holder}); one ledger serves one process"
    )]
    LedgerInUse { database: String, holder: String },
    #[error("cannot lock the ledger {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the DingTalk client: {0}")]
    Client(#[from] crate::dingtalk::ApiError),
    #[error(transparent)]
    Policy(#[from] crate::fleet::policy::PolicyError),
}

/// A built, not yet running, dingops server.
pub struct Application {
    port: u16,
    server: Server,
    pool: WorkerPool,
    grace: Duration,
    /// When a signal asked to stop: the grace period counts from there.
    stopping: Arc<OnceLock<Instant>>,
    /// The signal listener, the ledger pruner, the timer and the reconciler; stopped with the application
    /// (aborted if it is dropped without being stopped).
    tasks: Tasks,
    /// This replica's leases, given back when it stops.
    leases: Arc<crate::worker::Leases>,
    /// Held until the application is dropped: one `serve` per SQLite ledger file. `None`
    /// when the caller gave the ledger ([`Application::build_with_ledger`]).
    _lock: Option<std::fs::File>,
    /// The Stream ingress, in `stream` and `both` mode.
    stream: Option<StreamIngress>,
}

/// Background tasks, aborted when dropped.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Options that only embedders (tests, `demo`) change.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Install SIGINT/SIGTERM handlers (the service does; tests and `demo` do not).
    pub handle_signals: bool,
    /// HTTP worker threads.
    pub http_workers: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            handle_signals: true,
            http_workers: 2,
        }
    }
}

impl Application {
    /// Binds `settings.listen` and builds the application.
    pub async fn build(settings: Settings, options: RunOptions) -> Result<Self, StartError> {
        let listener = TcpListener::bind(settings.server.listen).map_err(|source| StartError::Listen {
            addr: settings.server.listen.to_string(),
            source,
        })?;
        Self::build_with_listener(settings, listener, options).await
    }

    /// Builds the application on a listener the caller bound (tests use port 0).
    pub async fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
        options: RunOptions,
    ) -> Result<Self, StartError> {
        // A bad policy is refused before anything starts.
        let policy = match &settings.fleet.policy {
            Some(path) => Some(Arc::new(crate::fleet::policy::Policy::load(path)?)),
            None => None,
        };
        // One `serve` per SQLite file; a PostgreSQL ledger is shared by design.
        let lock = match settings.ledger.database.sqlite_path() {
            Some(path) => Some(lock_ledger(path)?),
            None => None,
        };
        let database = settings.ledger.database.clone();
        let ledger = tokio::task::spawn_blocking(move || crate::ledger::open(&database))
            .await
            .map_err(|e| crate::ledger::LedgerError::Join(e.to_string()))??;
        // The lock file makes this the only `serve` on a SQLite file: it runs every group
        // without leases (and a restart after a kill resumes at once, with no lease to wait
        // out). A PostgreSQL ledger is shared by replicas, which divide the groups by leases.
        Self::build_on(
            settings,
            listener,
            options,
            LedgerHandle::shared(ledger),
            lock,
            policy,
        )
        .await
    }

    /// Builds the application on a ledger the caller opened, which other applications (the
    /// replicas of a test) may share; `settings.ledger.database` is not used, and no ledger
    /// lock is taken: sharing is what the leases are for.
    pub async fn build_with_ledger(
        settings: Settings,
        listener: TcpListener,
        options: RunOptions,
        ledger: Arc<dyn crate::ledger::Ledger>,
    ) -> Result<Self, StartError> {
        let policy = match &settings.fleet.policy {
            Some(path) => Some(Arc::new(crate::fleet::policy::Policy::load(path)?)),
            None => None,
        };
        Self::build_on(
            settings,
            listener,
            options,
            LedgerHandle::shared(ledger),
            None,
            policy,
        )
        .await
    }

    /// Builds the application on `ledger`. Without `lock` (the SQLite lock file that makes
    /// this process the ledger's only `serve`), other replicas may share the ledger, and
    /// groups are run under leases.
    async fn build_on(
        settings: Settings,
        listener: TcpListener,
        options: RunOptions,
        ledger: LedgerHandle,
        lock: Option<std::fs::File>,
        policy: Option<Arc<crate::fleet::policy::Policy>>,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        // One DingTalk rate budget for every process and replica on this ledger (CLI tools
        // included).
        let dingtalk = Arc::new(DingTalk::with_budget(
            &settings.dingtalk,
            metrics.clone(),
            ledger.clone(),
        )?);
        let ctx = WorkerContext::new(
            &settings.worker,
            ledger.clone(),
            dingtalk.clone(),
            metrics.clone(),
        );
        let ctx = Arc::new(if lock.is_some() {
            ctx
        } else {
            ctx.shared_with_replicas(&settings.worker)
        });
        let leases = ctx.leases().clone();
        tracing::info!(
            replica = leases.holder(),
            shared_ledger = leases.is_shared(),
            claim_lease_secs = settings.worker.claim_lease.as_secs(),
            "replica started"
        );
        // The policy is reconciled through the same client, so within the same pacing.
        let reconcile = match (policy, settings.fleet.reconcile_every) {
            (Some(policy), Some(every)) => {
                let fleet = crate::fleet::plan::Fleet::new(
                    policy,
                    dingtalk,
                    ledger.clone(),
                    settings.worker.groups.clone(),
                    settings.fleet.dm_reapply(),
                );
                let reconciler = Arc::new(crate::fleet::reconcile::Reconciler::new(
                    fleet,
                    every,
                    metrics.clone(),
                    leases.holder().to_owned(),
                    leases.is_shared(),
                ));
                Some(tokio::spawn(reconciler.run()))
            }
            _ => None,
        };
        // One scheduler runs the timed reverts, those that fell due while stopped first.
        let timer = tokio::spawn(crate::worker::timer::run(ctx.clone()));
        // The pool starts by resuming whatever a stop or crash left open in the ledger.
        let (intake, pool) = WorkerPool::start(
            ctx,
            settings.worker.queue_capacity,
            settings.worker.command_concurrency,
        );

        let pipeline = Pipeline::new(ledger.clone(), intake);
        let stream = if settings.stream.mode.stream() {
            Some(StreamIngress::start(
                &settings,
                pipeline.clone(),
                metrics.clone(),
            )?)
        } else {
            None
        };
        let serve_callback = settings.stream.mode.http();
        let ingress = web::Data::new(HttpIngress {
            verifier: Verifier::new(
                settings.dingtalk.app_secret.clone(),
                settings.server.signature_window_secs,
            ),
            pipeline,
            metrics: metrics.clone(),
        });
        let pruner = tokio::spawn(prune_loop(
            ledger.clone(),
            Duration::from_secs(settings.ledger.retention_days.saturating_mul(86_400)),
        ));
        let probes = web::Data::new(Probes {
            ledger,
            metrics,
            stream: stream.as_ref().map(StreamIngress::status),
        });
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Listen {
                addr: settings.server.listen.to_string(),
                source,
            })?
            .port();
        let workers = options.http_workers.max(1);
        let request_timeout = settings.server.request_timeout();
        let per_worker = connections_per_worker(
            settings.server.max_connections,
            settings.worker.command_concurrency,
            workers,
        );
        let server = HttpServer::new(move || {
            let app = App::new()
                .app_data(ingress.clone())
                .app_data(probes.clone())
                .wrap(from_fn(move |req: ServiceRequest, next: Next<_>| {
                    bound_request(request_timeout, req, next)
                }));
            // In `stream` mode `/callback` is not served: it answers 404 like any unknown path.
            let app = if serve_callback {
                app.route("/callback", web::post().to(callback))
            } else {
                app
            };
            app.route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics_text))
                .default_service(web::to(not_found))
        })
        .workers(workers)
        .max_connections(per_worker)
        // The head of a request; its body is bounded by `bound_request`.
        .client_request_timeout(request_timeout)
        .client_disconnect_timeout(Duration::from_secs(1))
        // Every request ends within request_timeout_ms, so a stop never waits longer for one,
        // nor longer than the grace period.
        .shutdown_timeout(
            settings
                .server
                .shutdown_grace_secs
                .min(settings.server.request_timeout_ms.div_ceil(1000)),
        )
        // Signals are handled below, so that the grace period counts from the signal.
        .disable_signals();
        let server = server
            .listen(listener)
            .map_err(|source| StartError::Listen {
                addr: settings.server.listen.to_string(),
                source,
            })?
            .run();
        let stopping = Arc::new(OnceLock::new());
        let mut tasks = vec![pruner, timer];
        tasks.extend(reconcile);
        if options.handle_signals {
            tasks.push(tokio::spawn(stop_on_signal(server.handle(), stopping.clone())));
        }
        let tasks = Tasks(tasks);
        Ok(Self {
            port,
            server,
            pool,
            grace: Duration::from_secs(settings.server.shutdown_grace_secs),
            stopping,
            tasks,
            leases,
            _lock: lock,
            stream,
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the server (as SIGTERM does).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped, then lets in-flight commands finish (bounded by the grace period).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        // What is left of the grace period (it counts from the signal) goes to closing the
        // Stream connections, then to the commands still running.
        let (grace, stopping) = (self.grace, self.stopping.clone());
        let left = move || {
            stopping
                .get()
                .map_or(grace, |since| grace.saturating_sub(since.elapsed()))
        };
        if let Some(stream) = self.stream {
            tracing::info!("HTTP server stopped; closing Stream connections");
            stream.shutdown(left()).await;
        }
        let grace_left = left();
        tracing::info!(
            grace_left_ms = grace_left.as_millis() as u64,
            "HTTP server stopped; finishing in-flight commands"
        );
        self.pool.shutdown(grace_left).await;
        drop(self.tasks);
        // The other replicas take this one's groups at once rather than after the lease.
        self.leases.release_all().await;
        tracing::info!("stopped");
        result
    }
}

/// SIGTERM stops gracefully (requests in progress finish, then commands in flight, within
/// the grace period); SIGINT stops HTTP at once and still lets commands in flight finish.
async fn stop_on_signal(handle: ServerHandle, stopping: Arc<OnceLock<Instant>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for signals");
            return;
        }
    };
    let graceful = tokio::select! {
        _ = term.recv() => true,
        _ = int.recv() => false,
    };
    let _ = stopping.set(Instant::now());
    tracing::info!(graceful, "stop signal received");
    handle.stop(graceful).await;
}

/// The ledger lock file: `<database>.lock`, holding the pid and start time of its holder.
fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    name.into()
}

/// Takes the ledger's lock for this process: two `serve` on one ledger would both run every
/// open command. The lock is an exclusive `flock` on `<database>.lock`, released when the
/// file is closed (the application is dropped, or the process dies). CLI tools such as
/// `dingops audit` open the ledger without it.
fn lock_ledger(database: &Path) -> Result<std::fs::File, StartError> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = lock_path(database);
    let failed = |source| StartError::Lock {
        path: path.display().to_string(),
        source,
    };
    // Not truncated on open: the holder's pid is in it.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = (&file).take(256).read_to_string(&mut text);
            // The file is only ours to write, but its text reaches a terminal: printable only.
            let holder: String = text
                .trim()
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(120)
                .collect();
            return Err(StartError::LedgerInUse {
                database: database.display().to_string(),
                holder: if holder.is_empty() {
                    "holder unknown".into()
                } else {
                    holder
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
    }
    if file
        .metadata()
        .map(|m| m.permissions().mode() & 0o077 != 0)
        .unwrap_or(false)
    {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(failed)?;
    }
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "pid {} since {since}", std::process::id()))
        .map_err(failed)?;
    Ok(file)
}

/// Files the process keeps beside its HTTP connections: the ledger's (three connections with
/// their WAL and shared memory), the runtime's, logs, and outbound connections to DingTalk.
const FILE_RESERVE: u64 = 64;

/// The per-worker connection limit (actix counts per worker) for `max_connections` in
/// total, lowered so that the connections fit in the process's open-file limit: past it,
/// `accept` fails (EMFILE) and new connections, valid callbacks included, wait in the
/// backlog while actix retries; below it, the excess waits in the backlog and the ledger and
/// DingTalk calls keep the files they need.
fn connections_per_worker(max_connections: usize, command_concurrency: usize, workers: usize) -> usize {
    let mut total = max_connections as u64;
    if let Some(limit) = open_file_limit() {
        let fit = limit.saturating_sub(FILE_RESERVE + command_concurrency as u64);
        if fit < total {
            tracing::info!(
                max_connections,
                open_file_limit = limit,
                lowered_to = fit,
                "max_connections lowered to fit the open-file limit"
            );
            total = fit;
        }
    }
    usize::try_from(total / workers as u64)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The soft limit on open files (RLIMIT_NOFILE), where the system tells it without unsafe
/// code (Linux: `/proc/self/limits`).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bounds every request's body: it must arrive within `request_timeout_ms` of the head
/// (actix bounds the head itself), else reading it fails with an I/O error of kind `TimedOut`
/// and the handler answers (the callback route: 408). Whatever the answer, a connection whose request
/// body was not read to its end is closed after the response rather than drained: actix would
/// otherwise keep reading a chunked body that never ends.
async fn bound_request<B: MessageBody + Unpin + 'static>(
    timeout: Duration,
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<HoldPayload<B>>, actix_web::Error> {
    let payload = match req.take_payload() {
        Payload::None => None,
        payload => {
            let shared = Rc::new(RefCell::new(payload));
            req.set_payload(Payload::Stream {
                payload: Box::pin(SharedPayload {
                    payload: shared.clone(),
                    deadline: tokio::time::Instant::now() + timeout,
                    timer: None,
                }),
            });
            Some(shared)
        }
    };
    let response = next.call(req).await?;
    Ok(response.map_body(|_, body| HoldPayload {
        body,
        _payload: payload,
    }))
}

/// The request payload as the handler reads it, failing at the deadline, while
/// [`bound_request`] keeps the payload too.
struct SharedPayload {
    payload: Rc<RefCell<Payload>>,
    deadline: tokio::time::Instant,
    /// Armed the first time the body is not there yet: most bodies come with their head.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl futures_util::Stream for SharedPayload {
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = futures_util::Stream::poll_next(Pin::new(&mut *this.payload.borrow_mut()), cx);
        if polled.is_ready() {
            return polled;
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                crate::telemetry::http_client_error("timeout");
                Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request body not received within request_timeout_ms",
                    ),
                ))))
            }
        }
    }
}

/// A response body that keeps the request's payload alive until the response is sent, so that
/// actix closes a connection whose request body is unfinished instead of draining it.
pub struct HoldPayload<B> {
    body: B,
    _payload: Option<Rc<RefCell<Payload>>>,
}

impl<B: MessageBody + Unpin> MessageBody for HoldPayload<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// How often finished commands past `retention_days` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Commands looked at per pruning step (one short write).
const PRUNE_BATCH: usize = 500;
/// Pause between steps, so that pruning a large backlog leaves the writer to callbacks.
const PRUNE_PAUSE: Duration = Duration::from_millis(10);

/// Deletes finished commands older than `retention` from the ledger: at start, then hourly.
async fn prune_loop(ledger: LedgerHandle, retention: Duration) {
    loop {
        let cutoff =
            crate::clock::now_ms().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        let (mut after, mut deleted) = (0, 0);
        loop {
            match ledger
                .call(move |l| l.prune_finished(cutoff, after, PRUNE_BATCH))
                .await
            {
                Ok(step) => {
                    deleted += step.deleted;
                    match step.next {
                        Some(next) => after = next,
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ledger pruning failed; retrying later");
                    break;
                }
            }
            tokio::time::sleep(PRUNE_PAUSE).await;
        }
        if deleted > 0 {
            tracing::info!(deleted, "pruned finished commands past retention_days");
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready when, in `stream` and `both` mode, at least one Stream connection is live, no
/// command waits for a ledger write to land, and the ledger takes a durable write at its
/// configured path: one row, committed like a callback's, so `/readyz` and `/callback` fail
/// together.
async fn readyz(state: web::Data<Probes>) -> HttpResponse {
    if let Some(stream) = &state.stream
        && stream.live() == 0
    {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "not ready", "error": "no Stream connection is live" }));
    }
    // A command whose ledger write keeps failing holds its group until the write lands.
    if state.metrics.ledger_writes_retrying.get() > 0 {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "not ready", "error": "ledger writes are being retried" }));
    }
    match state.ledger.call(|l| l.ping()).await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "status": "not ready", "error": "ledger unavailable" }))
        }
    }
}

async fn metrics_text(state: web::Data<Probes>) -> HttpResponse {
    match state.ledger.call(|l| l.open_count()).await {
        Ok(n) => state
            .metrics
            .open_commands
            .set(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!(error = %e, "cannot count open commands"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "error": "not found" }))
}
