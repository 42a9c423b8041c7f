//! The Stream-mode ingress: dingops dials DingTalk and holds `stream_connections` WebSocket
//! connections; each robot message it reads enters the same [`Pipeline`] as an HTTP callback
//! (the connection itself is authenticated, so there is no signature step) and is acknowledged
//! with an ACK frame once the ledger holds it (see docs/dingtalk.md#stream-mode).
//!
//! Each connection slot is kept by a supervisor: open (a fresh ticket every time), connect,
//! serve, and on the end reconnect with a jittered backoff (1 s doubling to 60 s, reset once a
//! connection lived 60 s). A `disconnect` from DingTalk makes the supervisor open the
//! replacement at once while the old connection is still read until DingTalk closes it, so
//! nothing pushed in between is lost.

pub mod connection;
pub mod dial;
pub mod frame;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::RngExt as _;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::connection::{End, Shared};
use self::dial::{DialError, Dialer};
use super::Pipeline;
use crate::config::Settings;
use crate::dingtalk::ApiError;
use crate::telemetry::Metrics;

/// The first reconnect delay; each further one doubles it.
const BACKOFF_FLOOR: Duration = Duration::from_secs(1);
/// The longest reconnect delay, and the one after refused credentials.
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A connection that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Reconnect delays: 1 s, 2 s, 4 s … 60 s, each shortened by up to a quarter at random so
/// that many clients do not come back at the same instant.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt, which counts as one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let base = BACKOFF_FLOOR
            .saturating_mul(1u32 << self.failures.min(6))
            .min(BACKOFF_CAP);
        self.failures = self.failures.saturating_add(1);
        jitter(base)
    }

    /// The delay at the cap: what a refusal that will not pass by itself gets.
    pub fn at_cap(&mut self) -> Duration {
        self.failures = self.failures.max(6);
        jitter(BACKOFF_CAP)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.75..=1.0))
}

/// How many Stream connections are live; what `/readyz` asks.
#[derive(Debug, Clone, Default)]
pub struct StreamStatus {
    live: Arc<AtomicUsize>,
}

impl StreamStatus {
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// The running Stream ingress.
pub struct StreamIngress {
    stop: watch::Sender<bool>,
    slots: Vec<JoinHandle<()>>,
    status: StreamStatus,
}

impl StreamIngress {
    /// Starts `stream_connections` supervisors on the current runtime.
    pub fn start(settings: &Settings, pipeline: Pipeline, metrics: Arc<Metrics>) -> Result<Self, ApiError> {
        let dialer = Arc::new(Dialer::new(&settings.dingtalk)?);
        let status = StreamStatus::default();
        let shared = Arc::new(Shared {
            pipeline,
            metrics,
            keepalive: settings.stream.keepalive(),
            live: status.live.clone(),
        });
        let (stop, stopping) = watch::channel(false);
        let slots = (0..settings.stream.connections)
            .map(|slot| tokio::spawn(supervise(shared.clone(), dialer.clone(), slot, stopping.clone())))
            .collect();
        Ok(Self { stop, slots, status })
    }

    pub fn status(&self) -> StreamStatus {
        self.status.clone()
    }

    /// Stops reading new frames, lets the messages already read be acknowledged and closes
    /// every connection with a close frame; waits at most `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.slots);
        if tokio::time::timeout(grace.max(Duration::from_secs(1)), all)
            .await
            .is_err()
        {
            tracing::warn!("Stream connections did not close in time");
        }
        tracing::info!("Stream connections closed");
    }
}

/// Keeps one connection slot filled until dingops stops.
async fn supervise(
    shared: Arc<Shared>,
    dialer: Arc<Dialer>,
    slot: usize,
    mut stopping: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    let mut delay = Duration::ZERO;
    // Connections DingTalk asked to close, read until they do.
    let mut draining: Vec<JoinHandle<End>> = Vec::new();
    let mut serial = 0u64;
    loop {
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
        if *stopping.borrow() {
            break;
        }
        let dialed = tokio::select! {
            dialed = dialer.dial() => dialed,
            _ = stopping.wait_for(|s| *s) => break,
        };
        let (socket, endpoint) = match dialed {
            Ok(ok) => ok,
            Err(e) => {
                shared
                    .metrics
                    .stream
                    .reconnects
                    .with_label_values(&[e.reason()])
                    .inc();
                delay = match &e {
                    DialError::Refused { .. } => {
                        tracing::error!(slot, error = %e, "Stream connection refused");
                        backoff.at_cap()
                    }
                    _ => {
                        tracing::warn!(slot, error = %e, "Stream connection failed");
                        backoff.next_delay()
                    }
                };
                tracing::info!(slot, retry_in_ms = delay.as_millis() as u64, "Stream: retrying");
                continue;
            }
        };
        serial += 1;
        let label = format!("{slot}.{serial}");
        tracing::info!(
            connection = %label,
            endpoint = %endpoint.host_str().unwrap_or_default(),
            "Stream connection live"
        );
        let started = Instant::now();
        let (announce, announced) = oneshot::channel();
        let mut task = tokio::spawn(connection::run(
            shared.clone(),
            socket,
            label.clone(),
            announce,
            stopping.clone(),
        ));
        draining.retain(|t| !t.is_finished());
        tokio::select! {
            Ok(()) = announced => {
                shared.metrics.stream.reconnects.with_label_values(&["disconnect"]).inc();
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
                let old = label.clone();
                draining.push(tokio::spawn(async move {
                    let end = task.await.unwrap_or_else(|e| End::Dropped(format!("task failed: {e}")));
                    tracing::info!(connection = %old, reason = end.reason(), "replaced Stream connection ended");
                    end
                }));
                delay = Duration::ZERO;
            }
            end = &mut task => {
                let end = end.unwrap_or_else(|e| End::Dropped(format!("task failed: {e}")));
                if end == End::Shutdown {
                    tracing::info!(connection = %label, "Stream connection closed for shutdown");
                    break;
                }
                shared.metrics.stream.reconnects.with_label_values(&[end.reason()]).inc();
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
                delay = backoff.next_delay();
                match &end {
                    End::Dropped(why) => tracing::info!(connection = %label, reason = end.reason(), error = %why, retry_in_ms = delay.as_millis() as u64, "Stream connection lost; reconnecting"),
                    _ => tracing::info!(connection = %label, reason = end.reason(), retry_in_ms = delay.as_millis() as u64, "Stream connection ended; reconnecting"),
                }
            }
        }
    }
    for old in draining {
        let _ = old.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_one_second_to_the_cap_with_jitter_below() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..9).map(|_| b.next_delay()).collect();
        let bases = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for (d, base) in delays.iter().zip(bases) {
            let base = Duration::from_secs(base);
            assert!(*d <= base && *d >= base.mul_f64(0.75), "{d:?} for {base:?}");
        }
        b.reset();
        assert!(b.next_delay() <= BACKOFF_FLOOR);
    }

    #[test]
    fn a_refusal_waits_at_the_cap() {
        let mut b = Backoff::default();
        assert!(b.at_cap() >= BACKOFF_CAP.mul_f64(0.75));
        assert!(b.next_delay() >= BACKOFF_CAP.mul_f64(0.75));
    }
}
