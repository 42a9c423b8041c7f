//! The HTTP server's routes besides the callback: `/healthz`, `/readyz`, `/metrics`, and the
//! 404 answer of any other path. `server.rs` mounts them beside `POST /callback`.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::ingress::stream::StreamStatus;
use crate::ledger::LedgerHandle;
use crate::telemetry::Metrics;

/// What the probe and metrics routes read.
pub struct Probes {
    pub ledger: LedgerHandle,
    pub metrics: Arc<Metrics>,
    /// Set in `stream` and `both` mode: ready needs a live Stream connection.
    pub stream: Option<StreamStatus>,
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready when, in `stream` and `both` mode, at least one Stream connection is live, no
/// command waits for a ledger write to land, and the ledger takes a durable write at its
/// configured path: one row, committed like a callback's, so `/readyz` and `/callback` fail
/// together.
pub async fn readyz(state: web::Data<Probes>) -> HttpResponse {
    match readiness(&state).await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Err(error) => {
            HttpResponse::ServiceUnavailable().json(json!({ "status": "not ready", "error": error }))
        }
    }
}

/// The readiness check of `/readyz`, also run at each scrape of `/metrics`: its answer is
/// `dingops_ready`. `Err` says why not ready.
async fn readiness(state: &Probes) -> Result<(), &'static str> {
    let ready = check_ready(state).await;
    state.metrics.ready.set(i64::from(ready.is_ok()));
    ready
}

async fn check_ready(state: &Probes) -> Result<(), &'static str> {
    if let Some(stream) = &state.stream
        && stream.live() == 0
    {
        return Err("no Stream connection is live");
    }
    // A command whose ledger write keeps failing holds its group until the write lands.
    if state.metrics.ledger_writes_retrying.get() > 0 {
        return Err("ledger writes are being retried");
    }
    state.ledger.call(|l| l.ping()).await.map_err(|e| {
        tracing::warn!(error = %e, "not ready");
        "ledger unavailable"
    })
}

pub async fn metrics_text(state: web::Data<Probes>) -> HttpResponse {
    match state.ledger.call(|l| l.open_count()).await {
        Ok(n) => state
            .metrics
            .open_commands
            .set(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!(error = %e, "cannot count open commands"),
    }
    // `dingops_ready` as of this scrape (the ledger's probe write is one short commit).
    let _ = readiness(&state).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

pub async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "error": "not found" }))
}
