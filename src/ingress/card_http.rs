//! `POST /card-callback`: clicks on cards sent with `callbackType` HTTP. Verify the
//! `x-ddpaas-signature` headers → bounded body (the same bounds as `/callback`) → parse the
//! click → [`Pipeline::accept_click`] → its answer as the response body (see
//! docs/dingtalk.md, "Interactive cards"). Served only when cards are on. A signed header
//! pair is good for one click: a request that reuses it is answered as a duplicate and runs
//! nothing, whatever its body (see docs/cards.md, "Clicks over HTTP").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::SecretString;
use tracing::Instrument as _;

use super::Pipeline;
use super::card::ClickAck;
use super::card_callback::{http_click_identity, parse_click, verify_card_signature};
use super::http::{BodyError, discard_body, error, read_body, single_header};
use super::signature::SignatureError;
use crate::telemetry::Metrics;

/// The header with the signing time (ms since the epoch).
pub const TIMESTAMP_HEADER: &str = "x-ddpaas-signature-timestamp";
/// The header with Base64(HMAC-SHA256(key `card_callback_secret`, the timestamp)).
pub const SIGNATURE_HEADER: &str = "x-ddpaas-signature";

/// What the card callback route needs.
pub struct CardHttpIngress {
    /// `card_callback_secret`.
    pub secret: SecretString,
    /// `card_callback_window_secs` in ms: how far the timestamp may be from our clock.
    pub window_ms: u64,
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
    /// The pairs this process took within the window, entered or refused.
    pub used: UsedPairs,
}

/// Pairs remembered at most; past it, with none expired, a new pair is taken for used (a
/// signed pair comes from DingTalk only, so only a flood of real clicks gets there).
const MAX_USED_PAIRS: usize = 100_000;

/// The header pairs this process has taken, until their timestamp leaves the window. The
/// ledger knows the pairs of entered clicks (their identity) across restarts and replicas;
/// this also knows those of clicks refused at once (an admin's own approval, a member's
/// click), which are never recorded.
#[derive(Default)]
pub struct UsedPairs {
    /// Identity → the ms after which its timestamp is stale anyway.
    until: Mutex<HashMap<String, u64>>,
}

impl UsedPairs {
    /// Takes `identity` until `until_ms`; `false` when it was taken before.
    fn take(&self, identity: &str, until_ms: u64, now_ms: u64) -> bool {
        let mut used = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if used.len() >= MAX_USED_PAIRS {
            used.retain(|_, until| *until >= now_ms);
        }
        if used.contains_key(identity) || used.len() >= MAX_USED_PAIRS {
            return false;
        }
        used.insert(identity.to_owned(), until_ms);
        true
    }

    /// Gives `identity` back: the ledger could not take its click, and DingTalk will send
    /// the same request again.
    fn give_back(&self, identity: &str) {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(identity);
    }
}

/// The card callback route.
pub async fn card_callback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<CardHttpIngress>,
) -> HttpResponse {
    let (response, outcome, reason) = handle(&req, payload, &state).await;
    state
        .metrics
        .card_callbacks
        .with_label_values(&[outcome, reason])
        .inc();
    response
}

/// The signature's timestamp header and the signature, once the signature holds.
fn verify<'a>(state: &CardHttpIngress, req: &'a HttpRequest) -> Result<(&'a str, &'a str), SignatureError> {
    let timestamp = single_header(req.headers(), TIMESTAMP_HEADER)?;
    let signature = single_header(req.headers(), SIGNATURE_HEADER)?;
    verify_card_signature(
        &state.secret,
        timestamp,
        signature,
        state.pipeline.clock().now_ms(),
        state.window_ms,
    )?;
    timestamp.zip(signature).ok_or(SignatureError::Missing)
}

/// The route up to its answer, with the metric labels (outcome, reason).
async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &CardHttpIngress,
) -> (HttpResponse, &'static str, &'static str) {
    // The signature is checked before a byte of the body is read.
    let (timestamp, signature) = match verify(state, req) {
        Ok(pair) => pair,
        Err(e) => {
            // Debug: forged requests must not flood the log; the metric counts them.
            tracing::debug!(reason = e.reason(), "card callback rejected: signature");
            discard_body(req, payload).await;
            let message = format!(
                "{} signature ({TIMESTAMP_HEADER}, {SIGNATURE_HEADER})",
                e.reason()
            );
            return (
                error(StatusCode::UNAUTHORIZED, &message),
                "rejected",
                e.metric_reason(),
            );
        }
    };
    let body = match read_body(req, payload).await {
        Ok(b) => b,
        Err(e) => {
            if e == BodyError::Deadline {
                tracing::debug!("card callback rejected: body not received in time");
            } else {
                tracing::info!(reason = e.reason(), "card callback rejected: body");
            }
            return (e.response(), "rejected", e.reason());
        }
    };
    let click = match parse_click(&body) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "card callback rejected: payload");
            return (
                error(StatusCode::BAD_REQUEST, &e.to_string()),
                "rejected",
                "bad_request",
            );
        }
    };
    let identity = http_click_identity(timestamp, signature);
    let span = tracing::debug_span!("card_click", card = %click.out_track_id, action = %click.action);
    // The timestamp parsed when the signature was checked; past `until` it is stale.
    let until = timestamp
        .parse::<u64>()
        .unwrap_or(0)
        .saturating_add(state.window_ms);
    let ack = if state.used.take(&identity, until, state.pipeline.clock().now_ms()) {
        let ack = state
            .pipeline
            .accept_click(identity.clone(), click)
            .instrument(span)
            .await;
        if ack == ClickAck::Unavailable {
            state.used.give_back(&identity);
        }
        ack
    } else {
        tracing::debug!("card callback with a used signature pair: a duplicate");
        state.pipeline.duplicate_click(&click).instrument(span).await
    };
    match ack {
        ClickAck::Answer(x) => (HttpResponse::Ok().json(x), "answered", "-"),
        ClickAck::Unavailable => (
            error(StatusCode::SERVICE_UNAVAILABLE, "ledger unavailable, retry later"),
            "unavailable",
            "ledger",
        ),
    }
}
