//! The application: wires the ledger, the DingTalk client, the worker pool, the HTTP
//! server (the callback ingress, the probes and the request bounds of `ingress`) and, in
//! Stream mode, the Stream ingress together; start-up (resumption) and shutdown. What it
//! wires lives in those modules (see docs/architecture.md).

use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle, ServiceRequest};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpServer, web};

use crate::config::Settings;
use crate::dingtalk::DingTalk;
use crate::ingress::Pipeline;
use crate::ingress::card_http::{CardHttpIngress, card_callback};
use crate::ingress::http::{HttpIngress, bound_request, callback, connections_per_worker};
use crate::ingress::probes::{self, Probes};
use crate::ingress::signature::Verifier;
use crate::ingress::stream::StreamIngress;
use crate::ledger::{Ledger, LedgerHandle, Sharing};
use crate::telemetry::Metrics;
use crate::worker::{PoolParts, WorkerContext, WorkerPool};

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
    #[error(transparent)]
    Lock(#[from] crate::ledger::LockError),
    #[error("cannot build the DingTalk client: {0}")]
    Client(#[from] crate::dingtalk::ApiError),
    #[error(transparent)]
    Policy(#[from] crate::governance::policy::PolicyError),
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
    /// Held until the application is dropped: alone on a SQLite file, its lock file.
    _sharing: Sharing,
    /// The Stream ingress, in `stream` and `both` mode.
    stream: Option<StreamIngress>,
}

/// How often `serve` reads the month's quota counts from the ledger for `/metrics`.
const QUOTA_METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

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
        Self::build_on(settings, listener, options, None).await
    }

    /// Builds the application on a ledger the caller opened, which other applications (the
    /// replicas of a test) may share; `settings.ledger.database` is not used, and no ledger
    /// lock is taken: sharing is what the leases are for.
    pub async fn build_with_ledger(
        settings: Settings,
        listener: TcpListener,
        options: RunOptions,
        ledger: Arc<dyn Ledger>,
    ) -> Result<Self, StartError> {
        Self::build_on(settings, listener, options, Some(ledger)).await
    }

    /// Builds the application on the `given` ledger ([`Sharing::Replicas`]), or else on the
    /// configured one, shared as [`Sharing::claim`] decides.
    async fn build_on(
        settings: Settings,
        listener: TcpListener,
        options: RunOptions,
        given: Option<Arc<dyn Ledger>>,
    ) -> Result<Self, StartError> {
        // A bad policy is refused before anything starts.
        let policy = Arc::new(crate::governance::PolicyCell::load(
            settings.fleet.policy.as_deref(),
        )?);
        // Listening from here on: a SIGHUP during the start must not end the process.
        let hangup = options
            .handle_signals
            .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()));
        // One clock for the ledger, the worker, its pool, leases and timer, and the DingTalk
        // client: the only one this process builds.
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        let (ledger, sharing) = match given {
            Some(ledger) => (LedgerHandle::shared(ledger), Sharing::Replicas),
            None => {
                let sharing = Sharing::claim(&settings.ledger.database, clock.as_ref())?;
                (
                    crate::ledger::open(&settings.ledger.database, clock.clone()).await?,
                    sharing,
                )
            }
        };
        let metrics = Arc::new(Metrics::new());
        metrics.describe(settings.stream.mode.name());
        let reload_metrics = metrics.clone();
        // The policy this serve loaded is the policy in force for the organisation: a policy
        // run of another one (a `dingops apply` started before) stops writing.
        policy.record_in_force(&ledger, "serve", clock.now_ms()).await;
        let in_force = (ledger.clone(), clock.clone());
        // One DingTalk rate budget for every process and replica on this ledger (CLI tools
        // included).
        let dingtalk = Arc::new(DingTalk::with_budget(
            &settings.dingtalk,
            metrics.clone(),
            ledger.clone(),
            clock.clone(),
        )?);
        // Reply cards, when a template is configured; their calls are interactive.
        let cards = crate::cards::Cards::new(
            &settings.cards,
            settings.stream.mode,
            ledger.clone(),
            Arc::new(dingtalk.for_class(crate::quota::Class::Interactive)),
            clock.clone(),
        )
        .map(Arc::new);
        let ops_room = ops_room(&settings, &policy, &dingtalk, &ledger, &metrics);
        let ctx = Arc::new(
            WorkerContext::new(
                &settings.worker,
                ledger.clone(),
                dingtalk.clone(),
                metrics.clone(),
                &sharing,
                clock.clone(),
            )
            .with_policy(policy.clone())
            .with_cards(cards.clone())
            .with_ops_room(ops_room),
        );
        let leases = ctx.leases().clone();
        let authorizer = ctx.authorizer().clone();
        tracing::info!(
            replica = leases.holder(),
            shared_ledger = leases.is_shared(),
            claim_lease_secs = settings.worker.claim_lease.as_secs(),
            "replica started"
        );
        // The policy is reconciled through the same client, so within the same pacing.
        let every = match (settings.fleet.reconcile_every, settings.fleet.reconcile_auto) {
            (Some(every), _) => Some(crate::fleet::reconcile::Every::Period(every)),
            (None, true) => Some(crate::fleet::reconcile::Every::Auto),
            (None, false) => None,
        };
        let reconcile = match (policy.path().is_some(), every) {
            (true, Some(every)) => {
                let fleet = crate::fleet::Fleet::new(
                    policy.clone(),
                    dingtalk.clone(),
                    ledger.clone(),
                    settings.worker.groups.clone(),
                    settings.fleet.dm_reapply(),
                    metrics.clone(),
                    leases.holder().to_owned(),
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
        // The quota's metrics, from the ledger: what every process on it spent; first the
        // calls the ledger could not count when they were made are written back to it.
        let quota_metrics = tokio::spawn(async move {
            loop {
                dingtalk.refresh_quota_metrics().await;
                tokio::time::sleep(QUOTA_METRICS_EVERY).await;
            }
        });
        // One scheduler runs the timed reverts, those that fell due while stopped first.
        let timer = tokio::spawn(crate::worker::timer::run(ctx.clone()));
        // The pool starts by resuming whatever a stop or crash left open in the ledger.
        let parts = PoolParts {
            ctx,
            ledger: ledger.clone(),
            leases: leases.clone(),
        };
        let (intake, pool) = WorkerPool::start(
            parts,
            settings.worker.queue_capacity,
            settings.worker.command_concurrency,
        );

        let mut pipeline = Pipeline::new(ledger.clone(), intake, clock.clone());
        if cards.is_some() {
            pipeline = pipeline.with_cards(crate::cards::gate::Gate::new(
                ledger.clone().into(),
                authorizer,
                clock.clone(),
            ));
        }
        let stream = if settings.stream.mode.stream() {
            Some(StreamIngress::start(
                &settings.dingtalk,
                &settings.stream,
                settings.cards.enabled(),
                pipeline.clone(),
                metrics.clone(),
            )?)
        } else {
            None
        };
        let serve_callback = settings.stream.mode.http();
        // `POST /card-callback` with cards on in http or both mode (where the secret is
        // required); otherwise it answers 404 like any unknown path.
        let card_ingress = match (&settings.cards.callback_secret, serve_callback) {
            (Some(secret), true) if settings.cards.enabled() => Some(web::Data::new(CardHttpIngress {
                secret: secret.clone(),
                window_ms: settings.cards.callback_window_secs.saturating_mul(1000),
                pipeline: pipeline.clone(),
                metrics: metrics.clone(),
                used: Default::default(),
            })),
            _ => None,
        };
        let ingress = web::Data::new(HttpIngress {
            verifier: Verifier::new(
                settings.dingtalk.app_secret.clone(),
                settings.server.signature_window_secs,
            ),
            pipeline,
            metrics: metrics.clone(),
        });
        let pruner = tokio::spawn(crate::ledger::retention::prune_loop(
            ledger.clone(),
            settings.ledger.retention(),
            clock.clone(),
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
            let app = match &card_ingress {
                Some(cards) => app
                    .app_data(cards.clone())
                    .route("/card-callback", web::post().to(card_callback)),
                None => app,
            };
            app.route("/healthz", web::get().to(probes::healthz))
                .route("/readyz", web::get().to(probes::readyz))
                .route("/metrics", web::get().to(probes::metrics_text))
                .default_service(web::to(probes::not_found))
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
        let mut tasks = vec![pruner, timer, quota_metrics];
        tasks.extend(reconcile);
        if options.handle_signals {
            tasks.push(tokio::spawn(stop_on_signal(server.handle(), stopping.clone())));
        }
        if let Some(hangup) = hangup {
            let (ledger, clock) = in_force;
            tasks.push(tokio::spawn(reload_on_hangup(
                hangup,
                policy,
                reload_metrics,
                ledger,
                clock,
            )));
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
            _sharing: sharing,
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
/// Reads the policy again on each SIGHUP (`systemctl reload`); a refused file keeps the
/// policy in force.
async fn reload_on_hangup(
    hangup: std::io::Result<tokio::signal::unix::Signal>,
    policy: Arc<crate::governance::PolicyCell>,
    metrics: Arc<Metrics>,
    ledger: LedgerHandle,
    clock: Arc<dyn crate::clock::Clock>,
) {
    let mut hangup = match hangup {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; the policy is read at start only");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        if policy.path().is_none() {
            tracing::info!("SIGHUP: no policy file is configured; nothing to reload");
            continue;
        }
        policy
            .reload_in_force("SIGHUP", &metrics, &ledger, "serve", clock.now_ms())
            .await;
    }
}

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

/// The two-person rule's ops group, when `ops_group` is set: the policy runs it may start
/// (none without a policy file), through a fleet of its own.
fn ops_room(
    settings: &Settings,
    policy: &Arc<crate::governance::PolicyCell>,
    dingtalk: &Arc<DingTalk>,
    ledger: &LedgerHandle,
    metrics: &Arc<Metrics>,
) -> Option<crate::worker::approvals::OpsRoom> {
    let group = settings.cards.ops_group.clone()?;
    let organisation = policy.path().is_some().then(|| {
        let fleet = crate::fleet::Fleet::new(
            policy.clone(),
            dingtalk.clone(),
            ledger.clone(),
            settings.worker.groups.clone(),
            settings.fleet.dm_reapply(),
            metrics.clone(),
            format!("{}-ops", crate::worker::group_leases::replica_id()),
        );
        Arc::new(fleet) as Arc<dyn crate::worker::approvals::Organisation>
    });
    Some(crate::worker::approvals::OpsRoom { group, organisation })
}
