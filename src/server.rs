//! The application: wires the ledger, the DingTalk client, the worker pool, the HTTP
//! server (the callback ingress and the probes) and, in Stream mode, the Stream ingress together; start-up (resumption) and shutdown.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::json;

use crate::config::Settings;
use crate::dingtalk::DingTalk;
use crate::ingress::Pipeline;
use crate::ingress::http::{HttpIngress, callback};
use crate::ingress::signature::Verifier;
use crate::ingress::stream::{StreamIngress, StreamStatus};
use crate::ledger::{LedgerHandle, SqliteLedger};
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
    #[error("cannot build the DingTalk client: {0}")]
    Client(#[from] crate::dingtalk::ApiError),
}

/// A built, not yet running, dingops server.
pub struct Application {
    port: u16,
    server: Server,
    pool: WorkerPool,
    grace: Duration,
    /// The Stream ingress, in `stream` and `both` mode.
    stream: Option<StreamIngress>,
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
        let path = settings.ledger.database.clone();
        let ledger = tokio::task::spawn_blocking(move || SqliteLedger::open(&path))
            .await
            .map_err(|e| crate::ledger::LedgerError::Join(e.to_string()))??;
        let ledger = LedgerHandle::new(ledger);
        let metrics = Arc::new(Metrics::new());
        let dingtalk = Arc::new(DingTalk::new(&settings.dingtalk, metrics.clone())?);
        let ctx = Arc::new(WorkerContext::new(
            &settings.worker,
            ledger.clone(),
            dingtalk,
            metrics.clone(),
        ));
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
        let mut server = HttpServer::new(move || {
            let app = App::new().app_data(ingress.clone()).app_data(probes.clone());
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
        .workers(options.http_workers.max(1))
        .shutdown_timeout(settings.server.shutdown_grace_secs);
        if !options.handle_signals {
            server = server.disable_signals();
        }
        let server = server
            .listen(listener)
            .map_err(|source| StartError::Listen {
                addr: settings.server.listen.to_string(),
                source,
            })?
            .run();
        Ok(Self {
            port,
            server,
            pool,
            grace: Duration::from_secs(settings.server.shutdown_grace_secs),
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
        if let Some(stream) = self.stream {
            tracing::info!("HTTP server stopped; closing Stream connections");
            stream.shutdown(self.grace).await;
        }
        tracing::info!("HTTP server stopped; finishing in-flight commands");
        self.pool.shutdown(self.grace).await;
        tracing::info!("stopped");
        result
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready when the ledger answers a write transaction at its configured path and, in `stream`
/// and `both` mode, at least one Stream connection is live.
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
