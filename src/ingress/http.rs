//! The HTTP ingress, `POST /callback`: verify the headers → bounded body → parse → the
//! pipeline → an HTTP acknowledgement. Also the HTTP server's bounds that every route is
//! under: the body deadline ([`bound_request`]) and the connection limit
//! ([`connections_per_worker`]).

use std::cell::RefCell;
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use futures_util::StreamExt as _;
use serde_json::json;
use tracing::Instrument as _;

use super::payload::Callback;
use super::signature::{SignatureError, Verifier};
use super::{Acknowledge, Admission, Inbound, Pipeline};
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

pub(super) fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

/// One header's value: `Ok(None)` when absent, `Err` when repeated or not visible ASCII.
pub(super) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, SignatureError> {
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
    state
        .verifier
        .verify_at(timestamp, sign, state.pipeline.clock().now_ms())
}

/// Reads and drops a body of a declared length up to the limit; leaves anything else unread
/// (actix then closes the connection).
pub(super) async fn discard_body(req: &HttpRequest, mut payload: web::Payload) {
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

/// The `Content-Length` the client declared, if any and readable.
fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Why a callback's body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyError {
    /// Declared or found larger than [`MAX_BODY_BYTES`]: 413.
    TooLarge,
    /// Not received within `request_timeout_ms` ([`BodyDeadline`]): 408.
    Deadline,
    /// Any other read failure: 400.
    Unreadable,
}

impl BodyError {
    pub(super) fn response(self) -> HttpResponse {
        match self {
            Self::TooLarge => error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 64 KiB"),
            Self::Deadline => error(
                StatusCode::REQUEST_TIMEOUT,
                "body not received within request_timeout_ms",
            ),
            Self::Unreadable => error(StatusCode::BAD_REQUEST, "could not read the body"),
        }
    }

    /// The `reason` label of `dingops_callbacks_total`.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Deadline => "timeout",
            Self::Unreadable => "bad_request",
        }
    }
}

pub(super) async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::BytesMut, BodyError> {
    let declared = declared_length(req);
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = web::BytesMut::with_capacity(declared.map_or(1024, |n| n as usize));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            if BodyDeadline::failed(&e) {
                BodyError::Deadline
            } else {
                BodyError::Unreadable
            }
        })?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
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
    let started = state.pipeline.clock().instant();
    let (response, outcome, reason) = handle(&req, payload, &state).await;
    state.metrics.callback(outcome, reason);
    let took = state
        .pipeline
        .clock()
        .instant()
        .saturating_duration_since(started);
    state.metrics.ack_seconds.observe(took.as_secs_f64());
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
        // The body is never parsed, but a small one is read and dropped so the connection
        // can be kept alive: actix closes a connection whose request body was left unread,
        // and a reconnect per rejection costs more than reading a few KiB.
        discard_body(req, payload).await;
        return (
            error(StatusCode::UNAUTHORIZED, &e.to_string()),
            "rejected",
            e.metric_reason(),
        );
    }
    let body = match read_body(req, payload).await {
        Ok(b) => b,
        Err(e) => {
            let resp = e.response();
            // A stalled body is a client's doing, and cheap to repeat: counted, not logged.
            if e == BodyError::Deadline {
                tracing::debug!("callback rejected: body not received in time");
            } else {
                tracing::info!(status = resp.status().as_u16(), "callback rejected: body");
            }
            return (resp, "rejected", e.reason());
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
    let message = cb.into_accepted(state.pipeline.clock().now_ms());
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

/// How a request body read fails when the body did not arrive within `request_timeout_ms`
/// of the head: [`bound_request`] ends the payload stream with this error (inside the
/// [`PayloadError`] every payload stream fails with), and a handler recognises it with
/// [`BodyDeadline::failed`] (the callback route answers 408).
#[derive(Debug, thiserror::Error)]
#[error("request body not received within request_timeout_ms")]
pub struct BodyDeadline;

impl BodyDeadline {
    fn into_payload_error(self) -> PayloadError {
        PayloadError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, self))
    }

    /// Whether a body read failed with this error.
    pub fn failed(e: &PayloadError) -> bool {
        matches!(e, PayloadError::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<BodyDeadline>()))
    }
}

/// Bounds every request's body: it must arrive within `timeout` (`request_timeout_ms`) of the
/// head (actix bounds the head itself), else reading it fails with [`BodyDeadline`] and the
/// handler answers. Whatever the answer, a connection whose request body was not read to its
/// end is closed after the response rather than drained: actix would otherwise keep reading a
/// chunked body that never ends.
pub async fn bound_request<B: MessageBody + Unpin + 'static>(
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
    type Item = Result<web::Bytes, PayloadError>;

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
                Poll::Ready(Some(Err(BodyDeadline.into_payload_error())))
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

/// Files the process keeps beside its HTTP connections: the ledger's (three connections with
/// their WAL and shared memory), the runtime's, logs, and outbound connections to DingTalk.
const FILE_RESERVE: u64 = 64;

/// The per-worker connection limit (actix counts per worker) for `max_connections` in
/// total, lowered so that the connections fit in the process's open-file limit: past it,
/// `accept` fails (EMFILE) and new connections, valid callbacks included, wait in the
/// backlog while actix retries; below it, the excess waits in the backlog and the ledger and
/// DingTalk calls keep the files they need.
pub fn connections_per_worker(max_connections: usize, command_concurrency: usize, workers: usize) -> usize {
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
