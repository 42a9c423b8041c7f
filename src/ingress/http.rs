//! The HTTP ingress, `POST /callback`: verify the headers → bounded body → parse → the
//! pipeline → an HTTP acknowledgement.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt as _;
use serde_json::json;
use tracing::Instrument as _;

use super::payload::Callback;
use super::signature::{SignatureError, Verifier};
use super::{Acknowledge, Admission, Inbound, Pipeline};
use crate::clock::now_ms;
use crate::telemetry::Metrics;

/// Largest callback body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the callback route needs.
pub struct HttpIngress {
    pub verifier: Verifier,
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
}

/// The HTTP acknowledgement: 200 `{"msgtype":"empty"}` for a new or duplicate message, 503
/// when the ledger could not record it; with the metric labels (outcome, reason).
struct HttpAck;

impl Acknowledge for HttpAck {
    type Output = (HttpResponse, &'static str, &'static str);

    fn acknowledge(self, admission: Admission) -> Self::Output {
        match admission {
            Admission::New => (ack(), "accepted", "-"),
            Admission::Duplicate => (ack(), "duplicate", "-"),
            Admission::Unavailable => (
                error(StatusCode::SERVICE_UNAVAILABLE, "ledger unavailable, retry later"),
                "unavailable",
                "ledger",
            ),
        }
    }
}

fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

/// One header's value: `Ok(None)` when absent, `Err` when repeated or not visible ASCII.
fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, SignatureError> {
    let mut values = headers.get_all(name);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SignatureError::Malformed);
    }
    first.to_str().map(Some).map_err(|_| SignatureError::Malformed)
}

fn verify(state: &HttpIngress, headers: &HeaderMap) -> Result<(), SignatureError> {
    let timestamp = single_header(headers, "timestamp")?;
    let sign = single_header(headers, "sign")?;
    state.verifier.verify(timestamp, sign)
}

/// Reads and drops a body of a declared length up to the limit; leaves anything else unread
/// (actix then closes the connection).
async fn discard_body(req: &HttpRequest, mut payload: web::Payload) {
    if declared_length(req).is_none_or(|n| n > MAX_BODY_BYTES as u64) {
        return;
    }
    let mut seen = 0;
    while let Some(Ok(chunk)) = payload.next().await {
        seen += chunk.len();
        if seen > MAX_BODY_BYTES {
            return;
        }
    }
}

/// Whether a body read failed because the body did not arrive within `request_timeout_ms`
/// (the server's request bound reports it as an I/O error of kind `TimedOut`).
fn body_timed_out(e: &actix_web::error::PayloadError) -> bool {
    matches!(e, actix_web::error::PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// The `Content-Length` the client declared, if any and readable.
fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<web::BytesMut, HttpResponse> {
    let declared = declared_length(req);
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 64 KiB"));
    }
    let mut body = web::BytesMut::with_capacity(declared.map_or(1024, |n| n as usize));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            if body_timed_out(&e) {
                error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body not received within request_timeout_ms",
                )
            } else {
                error(StatusCode::BAD_REQUEST, "could not read the body")
            }
        })?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 64 KiB"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The DingTalk robot callback (HTTP mode).
pub async fn callback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<HttpIngress>,
) -> HttpResponse {
    let started = std::time::Instant::now();
    let (response, outcome, reason) = handle(&req, payload, &state).await;
    state.metrics.callback(outcome, reason);
    state.metrics.ack_seconds.observe(started.elapsed().as_secs_f64());
    response
}

/// The pipeline up to the acknowledgement. Returns the response and the metric labels
/// (outcome, reason).
async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &HttpIngress,
) -> (HttpResponse, &'static str, &'static str) {
    // The signature is checked before a byte of the body is read.
    if let Err(e) = verify(state, req.headers()) {
        // Debug, not info: a flood of forged requests must not become a flood of log lines;
        // dingops_callbacks_total counts them.
        tracing::debug!(reason = e.reason(), "callback rejected: signature");
        let reason = match e {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Stale => "signature_stale",
            SignatureError::Mismatch => "signature_mismatch",
        };
        // The body is never parsed, but a small one is read and dropped so the connection
        // can be kept alive: actix closes a connection whose request body was left unread,
        // and a reconnect per rejection costs more than reading a few KiB.
        discard_body(req, payload).await;
        return (
            error(StatusCode::UNAUTHORIZED, &e.to_string()),
            "rejected",
            reason,
        );
    }
    let body = match read_body(req, payload).await {
        Ok(b) => b,
        Err(resp) => {
            let reason = match resp.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::REQUEST_TIMEOUT => "timeout",
                _ => "bad_request",
            };
            // A stalled body is a client's doing, and cheap to repeat: counted, not logged.
            if reason == "timeout" {
                tracing::debug!("callback rejected: body not received in time");
            } else {
                tracing::info!(status = resp.status().as_u16(), "callback rejected: body");
            }
            return (resp, "rejected", reason);
        }
    };
    let cb = match Callback::parse(&body) {
        Ok(cb) => cb,
        Err(e) => {
            tracing::info!(error = %e, "callback rejected: payload");
            return (
                error(StatusCode::BAD_REQUEST, &e.to_string()),
                "rejected",
                "bad_request",
            );
        }
    };
    let message = cb.into_accepted(now_ms());
    // Debug level: the worker's info-level `process` span carries msg_id, group and command
    // for every command; this one only frames the pipeline's debug lines.
    let span = tracing::debug_span!("callback", msg_id = %message.msg_id, group = %message.conversation_id);
    state
        .pipeline
        .accept(Inbound {
            message,
            ack: HttpAck,
        })
        .instrument(span)
        .await
}

fn ack() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "msgtype": "empty" }))
}
