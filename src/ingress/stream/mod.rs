//! The Stream-mode ingress: dingops dials DingTalk and holds `stream_connections` WebSocket
//! connections; each robot message it reads enters the same [`Pipeline`] as an HTTP callback
//! (the connection itself is authenticated, so there is no signature step) and is acknowledged
//! with an ACK frame once the ledger holds it (see docs/dingtalk.md#stream-mode). With cards
//! on, the connections also subscribe the card topic, and each click goes to
//! [`Pipeline::accept_click`], its answer back in the ACK.
//!
//! Each connection slot is kept by a supervisor: open (a fresh ticket every time), connect,
//! serve, and on the end reconnect with a jittered backoff (1 s doubling to 60 s, reset once a
//! connection lived 60 s). A `disconnect` from DingTalk makes the supervisor open the
//! replacement at once while the old connection is still read until DingTalk closes it, so
//! nothing pushed in between is lost; dingops closes it itself 30 s after the first
//! `disconnect`. A connection disconnected within [`REPLACE_AT_ONCE_AFTER`] of opening is
//! replaced after the backoff instead, and at most [`MAX_DRAINING`] replaced connections per
//! slot are read at once (the oldest is closed beyond), so a gateway that disconnects every
//! connection at once and never closes one gets a few dials, not a storm.

pub mod connection;
pub mod dial;
pub mod frame;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::RngExt as _;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinError;
use tokio::task::JoinHandle;

use self::connection::{End, Shared};
use self::dial::{DialError, Dialer};
use super::Pipeline;
use crate::config::{DingTalkSettings, StreamSettings};
use crate::dingtalk::ApiError;
use crate::telemetry::Metrics;

/// The first reconnect delay; each further one doubles it.
const BACKOFF_FLOOR: Duration = Duration::from_secs(1);
/// The longest reconnect delay, and the one after refused credentials.
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A connection that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// A connection that lived this long before its `disconnect` is replaced at once (DingTalk
/// rebalances connections that lived for hours); a younger one waits for the backoff.
pub const REPLACE_AT_ONCE_AFTER: Duration = Duration::from_secs(10);
/// After a `disconnect`, how long the old connection is read before dingops closes it
/// itself (DingTalk closes it after about 10 s); counted from the first `disconnect`.
const DISCONNECT_LINGER: Duration = Duration::from_secs(30);
/// Replaced connections of one slot read at once, at most; beyond it the oldest is closed.
pub const MAX_DRAINING: usize = 2;

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
    /// Starts `stream_connections` supervisors on the current runtime. With `cards` (cards
    /// are on) each connection also subscribes the card topic and takes its clicks.
    pub fn start(
        dingtalk: &DingTalkSettings,
        stream: &StreamSettings,
        cards: bool,
        pipeline: Pipeline,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ApiError> {
        let dialer = Arc::new(Dialer::new(dingtalk)?.with_cards(cards));
        let status = StreamStatus::default();
        let shared = Arc::new(Shared {
            pipeline,
            metrics,
            keepalive: stream.keepalive(),
            live: status.live.clone(),
            cards,
        });
        let (stop, stopping) = watch::channel(false);
        let slots = (0..stream.connections)
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

/// A replaced connection, read until DingTalk closes it or dingops retires it.
struct Draining {
    task: JoinHandle<End>,
    retire: watch::Sender<bool>,
}

impl Draining {
    /// Reads the connection of `task` until it ends, retiring it once `linger` is over.
    fn start(
        label: String,
        mut task: JoinHandle<End>,
        retire: watch::Sender<bool>,
        linger: Duration,
    ) -> Self {
        let at_linger = retire.clone();
        let task = tokio::spawn(async move {
            let end = tokio::select! {
                end = &mut task => end,
                () = tokio::time::sleep(linger) => {
                    at_linger.send_replace(true);
                    task.await
                }
            };
            let end = ended(end);
            tracing::info!(connection = %label, reason = end.reason(), "replaced Stream connection ended");
            end
        });
        Self { task, retire }
    }

    fn retired(&self) -> bool {
        *self.retire.borrow()
    }
}

/// Forgets the replaced connections that ended and retires the oldest beyond `max` of those
/// still read; returns how many it retired.
fn crowd_out(draining: &mut Vec<Draining>, max: usize) -> usize {
    draining.retain(|d| !d.task.is_finished());
    let read: Vec<&Draining> = draining.iter().filter(|d| !d.retired()).collect();
    let excess = read.len().saturating_sub(max);
    for old in read.into_iter().take(excess) {
        old.retire.send_replace(true);
    }
    excess
}

fn ended(joined: Result<End, JoinError>) -> End {
    joined.unwrap_or_else(|e| End::Dropped(format!("task failed: {e}")))
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
    // Connections DingTalk asked to close, read until they do (or dingops retires them).
    let mut draining: Vec<Draining> = Vec::new();
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
                    DialError::Insecure { .. } => {
                        tracing::error!(slot, error = %e, "Stream endpoint refused");
                        backoff.next_delay()
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
        let started = shared.pipeline.clock().instant();
        let (announce, announced) = oneshot::channel();
        let (retire, retired) = watch::channel(false);
        let mut task = tokio::spawn(connection::run(
            shared.clone(),
            socket,
            label.clone(),
            announce,
            stopping.clone(),
            retired,
        ));
        tokio::select! {
            Ok(()) = announced => {
                shared.metrics.stream.reconnects.with_label_values(&["disconnect"]).inc();
                let lived = shared.pipeline.clock().instant().saturating_duration_since(started);
                if lived >= HEALTHY_AFTER {
                    backoff.reset();
                }
                draining.push(Draining::start(label.clone(), task, retire, DISCONNECT_LINGER));
                let closed = crowd_out(&mut draining, MAX_DRAINING);
                if closed > 0 {
                    tracing::warn!(slot, closed, "Stream: more replaced connections open than {MAX_DRAINING}; closed the oldest");
                }
                if lived >= REPLACE_AT_ONCE_AFTER {
                    delay = Duration::ZERO;
                    tracing::info!(connection = %label, "Stream: opening the replacement while the old connection is still read");
                } else {
                    delay = backoff.next_delay();
                    tracing::warn!(
                        connection = %label,
                        lived_ms = lived.as_millis() as u64,
                        retry_in_ms = delay.as_millis() as u64,
                        "DingTalk disconnected a Stream connection right after it opened; the replacement waits for the backoff"
                    );
                }
            }
            end = &mut task => {
                let end = ended(end);
                if end == End::Shutdown {
                    tracing::info!(connection = %label, "Stream connection closed for shutdown");
                    break;
                }
                shared.metrics.stream.reconnects.with_label_values(&[end.reason()]).inc();
                if shared.pipeline.clock().instant().saturating_duration_since(started) >= HEALTHY_AFTER {
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
        let _ = old.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

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

    /// A stand-in for a connection task: ends once retired.
    fn until_retired() -> (JoinHandle<End>, watch::Sender<bool>) {
        let (retire, mut retired) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _ = retired.wait_for(|r| *r).await;
            End::Retired
        });
        (task, retire)
    }

    #[tokio::test]
    async fn a_replaced_connection_is_retired_when_the_linger_is_over_and_not_before() {
        let (task, retire) = until_retired();
        let started = Instant::now();
        let draining = Draining::start("0.1".into(), task, retire, Duration::from_millis(200));
        assert!(!draining.retired());
        assert_eq!(draining.task.await.unwrap(), End::Retired);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn beyond_the_cap_the_oldest_replaced_connections_are_retired() {
        let mut draining: Vec<Draining> = (0..4)
            .map(|i| {
                let (task, retire) = until_retired();
                Draining::start(format!("0.{i}"), task, retire, BACKOFF_CAP)
            })
            .collect();
        assert_eq!(crowd_out(&mut draining, 2), 2);
        let retired: Vec<bool> = draining.iter().map(Draining::retired).collect();
        assert_eq!(retired, [true, true, false, false]);
        // The retired ones end; nothing more is retired while two are read.
        for _ in 0..100 {
            if draining.iter().filter(|d| d.task.is_finished()).count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(crowd_out(&mut draining, 2), 0);
        assert_eq!(draining.len(), 2);
    }

    #[test]
    fn a_refusal_waits_at_the_cap() {
        let mut b = Backoff::default();
        assert!(b.at_cap() >= BACKOFF_CAP.mul_f64(0.75));
        assert!(b.next_delay() >= BACKOFF_CAP.mul_f64(0.75));
    }
}
