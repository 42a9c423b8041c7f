//! One live Stream connection: a read loop that never waits on the pipeline (each robot
//! message or card click is handed to its own task, at most [`IN_FLIGHT`] at once), a
//! writer task that owns
//! the socket's sending half behind a queue bounded in frames and in bytes, and the
//! keepalive watchdog.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::Instrument as _;

use super::dial::Socket;
use super::frame::{self, Route};
use crate::ingress::card::ClickAck;
use crate::ingress::card_callback::{parse_click, stream_click_identity};
use crate::ingress::payload::Callback;
use crate::ingress::{Acknowledge, Admission, Inbound, Pipeline};
use crate::telemetry::Metrics;

/// Robot messages of one connection between reading and acknowledging, at most; beyond it
/// the read loop waits (the ledger is the bottleneck then, and DingTalk re-pushes anyway).
const IN_FLIGHT: u32 = 64;
/// Frames waiting for the writer, at most.
const OUTBOX: usize = 256;
/// Bytes of the frames waiting for the writer, at most: a gateway that does not read what
/// dingops writes holds no more of its memory than this per connection (the read loop
/// waits meanwhile).
const OUTBOX_BYTES: usize = 64 * 1024;
/// Largest SYSTEM `ping` data echoed; DingTalk's is a few bytes (`{"opaque":"…"}`). A
/// larger one is answered 400 without it, so a gateway cannot make dingops copy and queue
/// megabytes per frame.
pub const MAX_PING_ECHO_BYTES: usize = 4 * 1024;
/// Longest one write may take before the connection counts as broken.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, how long in-flight messages may take to be acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection waits for the other side's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What every connection shares.
pub struct Shared {
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
    pub keepalive: Duration,
    /// Connections live now (read by `/readyz`).
    pub live: Arc<AtomicUsize>,
    /// Whether card clicks are taken (cards are on, so the card topic is subscribed); off,
    /// a card frame is a topic dingops does not take.
    pub cards: bool,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// DingTalk closed it (after a `disconnect`, or on its own).
    Closed,
    /// The socket broke (read error, reset, write failure).
    Dropped(String),
    /// Neither a pong nor a frame came within the keepalive after our ping.
    Keepalive,
    /// DingTalk announced a disconnect and dingops closed the connection itself: DingTalk
    /// did not close it in time, or newer replaced connections of its slot were open.
    Retired,
    /// dingops is stopping.
    Shutdown,
}

impl End {
    /// The `reason` label of `dingops_stream_reconnects_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Dropped(_) => "dropped",
            End::Keepalive => "keepalive",
            End::Retired => "disconnect",
            End::Shutdown => "shutdown",
        }
    }
}

/// Counts a connection as live while it exists.
struct LiveGuard(Arc<Shared>);

impl LiveGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.live.fetch_add(1, Ordering::SeqCst);
        shared.metrics.stream.connections.inc();
        Self(shared)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.stream.connections.dec();
    }
}

/// The Stream acknowledgement: an ACK frame with code 200 for a new or duplicate message,
/// none when the ledger refused it (DingTalk then pushes it again).
struct StreamAck {
    message_id: String,
}

impl Acknowledge for StreamAck {
    type Output = Option<String>;

    fn acknowledge(self, admission: Admission) -> Option<String> {
        match admission {
            Admission::New | Admission::Duplicate => Some(frame::ack_empty(&self.message_id, 200)),
            Admission::Unavailable => None,
        }
    }
}

/// The writer's queue, bounded in frames ([`OUTBOX`]) and in bytes ([`OUTBOX_BYTES`]): a
/// send waits while either is full.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::Sender<(Message, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
}

/// The writer stopped: the connection is broken.
#[derive(Debug)]
struct WriterGone;

impl Outbox {
    fn new() -> (Self, mpsc::Receiver<(Message, OwnedSemaphorePermit)>) {
        let (queue, queued) = mpsc::channel(OUTBOX);
        let room = Arc::new(Semaphore::new(OUTBOX_BYTES));
        (Self { queue, room }, queued)
    }

    /// Queues `message` once there is room for it; its room is given back once it is
    /// written.
    async fn send(&self, message: Message) -> Result<(), WriterGone> {
        // A frame larger than the whole budget (none is) would wait for all of it.
        let size = u32::try_from(message.len().clamp(1, OUTBOX_BYTES)).unwrap_or(u32::MAX);
        let room = self
            .room
            .clone()
            .acquire_many_owned(size)
            .await
            .map_err(|_| WriterGone)?;
        self.queue.send((message, room)).await.map_err(|_| WriterGone)
    }
}

/// Serves one connection until it ends. `disconnecting` fires when DingTalk first announces
/// the connection's end, so the caller can open the replacement while this one is still
/// read; once `retire` turns true, dingops closes the connection itself.
pub async fn run(
    shared: Arc<Shared>,
    socket: Socket,
    label: String,
    disconnecting: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
    mut retire: watch::Receiver<bool>,
) -> End {
    let _live = LiveGuard::new(shared.clone());
    let (sink, mut stream) = socket.split();
    let (outbox, queued) = Outbox::new();
    let writer = tokio::spawn(write_loop(sink, queued));
    let permits = Arc::new(Semaphore::new(IN_FLIGHT as usize));
    let keepalive = shared.keepalive;
    let clock = Arc::clone(shared.pipeline.clock());
    let mut last_seen = clock.instant();
    let mut ping_sent: Option<Instant> = None;
    let mut disconnecting = Some(disconnecting);

    let end = loop {
        let watchdog = ping_sent.unwrap_or(last_seen) + keepalive;
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => break End::Shutdown,
            Ok(_) = retire.wait_for(|retired| *retired) => break End::Retired,
            next = tokio::time::timeout_at(watchdog, stream.next()) => next,
        };
        let now = clock.instant();
        let message = match next {
            Err(_) if ping_sent.is_some() => break End::Keepalive,
            Err(_) => {
                ping_sent = Some(now);
                tracing::debug!(connection = %label, "idle; keepalive ping");
                if outbox.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break End::Dropped("the writer stopped".into());
                }
                continue;
            }
            Ok(None) => break End::Closed,
            Ok(Some(Err(e))) => break End::Dropped(e.to_string()),
            Ok(Some(Ok(message))) => message,
        };
        last_seen = now;
        ping_sent = None;
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                shared
                    .metrics
                    .stream
                    .frames
                    .with_label_values(&["binary", "-"])
                    .inc();
                continue;
            }
            // tungstenite answers pings and close frames itself; any of them shows the
            // connection is alive.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => continue,
        };
        let inbound = frame::read(text.as_str());
        shared
            .metrics
            .stream
            .frames
            .with_label_values(&[inbound.kind, inbound.topic])
            .inc();
        let reply = match inbound.route {
            Route::Card { message_id, .. } if !shared.cards => {
                tracing::debug!(connection = %label, "card click while cards are off; answered 404");
                Some((frame::ack_empty(&message_id, 404), 404))
            }
            route @ (Route::Robot { .. } | Route::Card { .. }) => {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break End::Dropped("closed semaphore".into());
                };
                tokio::spawn(handle_inbound(shared.clone(), outbox.clone(), route, permit));
                continue;
            }
            Route::Ping { message_id, data } if data.len() > MAX_PING_ECHO_BYTES => {
                tracing::debug!(connection = %label, bytes = data.len(), "SYSTEM ping data too large to echo; answered 400");
                shared.metrics.stream.pings_refused.inc();
                Some((frame::ack_empty(&message_id, 400), 400))
            }
            Route::Ping { message_id, data } => Some((frame::ack(&message_id, 200, &data), 200)),
            Route::Disconnect { message_id, reason } => {
                // Only the first counts: the supervisor's linger runs from it, and later
                // ones (a hostile gateway may repeat them) neither restart it nor log at info.
                match disconnecting.take() {
                    Some(tx) => {
                        tracing::info!(connection = %label, %reason, "DingTalk announced a disconnect");
                        let _ = tx.send(());
                    }
                    None => tracing::debug!(connection = %label, "DingTalk repeated its disconnect"),
                }
                Some((frame::ack_empty(&message_id, 200), 200))
            }
            Route::Malformed { message_id } => {
                tracing::info!(connection = %label, topic = inbound.topic, "frame rejected: its data is not a string");
                Some((frame::ack_empty(&message_id, 400), 400))
            }
            Route::Unknown { message_id } => {
                tracing::debug!(connection = %label, kind = inbound.kind, "frame of a topic dingops does not take");
                Some((frame::ack_empty(&message_id, 404), 404))
            }
            Route::OtherSystem => None,
            Route::Invalid => {
                tracing::debug!(connection = %label, "a text frame that is not a Stream frame was ignored");
                None
            }
        };
        if let Some((ack, code)) = reply {
            shared
                .metrics
                .stream
                .acks
                .with_label_values(&[code_label(code)])
                .inc();
            if outbox.send(Message::text(ack)).await.is_err() {
                break End::Dropped("the writer stopped".into());
            }
        }
    };

    match &end {
        End::Shutdown => {
            // Messages already read are acknowledged before the close frame; frames not read
            // stay unacknowledged and DingTalk pushes them to another connection.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, permits.acquire_many(IN_FLIGHT)).await;
            close(outbox, writer, &mut stream, "dingops is stopping").await;
        }
        End::Keepalive => close(outbox, writer, &mut stream, "no answer to keepalive").await,
        End::Retired => close(outbox, writer, &mut stream, "replaced after disconnect").await,
        // Acknowledgements still in flight go out while the socket takes them; the writer
        // ends with the last of them.
        End::Closed | End::Dropped(_) => drop(outbox),
    }
    end
}

/// Sends a close frame after whatever is queued, then reads (and drops) until the other side
/// closes too, for at most [`CLOSE_WAIT`].
async fn close<S>(outbox: Outbox, writer: tokio::task::JoinHandle<()>, stream: &mut S, reason: &'static str)
where
    S: futures_util::Stream + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: reason.into(),
    };
    let _ = outbox.send(Message::Close(Some(frame))).await;
    drop(outbox);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while stream.next().await.is_some() {} }).await;
}

/// Puts a robot message or a card click through the pipeline and queues its ACK; none when
/// the ledger could not record it, so that DingTalk pushes it again.
async fn handle_inbound(shared: Arc<Shared>, outbox: Outbox, route: Route, _permit: OwnedSemaphorePermit) {
    let clock = Arc::clone(shared.pipeline.clock());
    let started = clock.instant();
    let ack = match route {
        Route::Robot { message_id, data } => robot_ack(&shared, message_id, &data).await,
        Route::Card { message_id, data } => click_ack(&shared, &message_id, &data).await,
        _ => None,
    };
    let Some((ack, code)) = ack else {
        return;
    };
    shared
        .metrics
        .stream
        .acks
        .with_label_values(&[code_label(code)])
        .inc();
    shared
        .metrics
        .stream
        .ack_seconds
        .observe(clock.instant().saturating_duration_since(started).as_secs_f64());
    let _ = outbox.send(Message::text(ack)).await;
}

/// A robot message's ACK and its code: 200 once the ledger holds it, 400 when it does not
/// parse.
async fn robot_ack(shared: &Shared, message_id: String, data: &str) -> Option<(String, u16)> {
    let callback = match Callback::parse(data.as_bytes()) {
        Ok(callback) => callback,
        Err(e) => {
            tracing::info!(error = %e, "robot frame rejected: payload");
            return Some((frame::ack_empty(&message_id, 400), 400));
        }
    };
    let message = callback.into_accepted(shared.pipeline.clock().now_ms());
    let span = tracing::debug_span!("stream", msg_id = %message.msg_id, group = %message.conversation_id);
    let ack = shared
        .pipeline
        .accept(Inbound {
            message,
            ack: StreamAck { message_id },
        })
        .instrument(span)
        .await;
    ack.map(|ack| (ack, 200))
}

/// A card click's ACK and its code: 200 with the pipeline's answer as `{"response": X}`,
/// 400 when the click cannot be read.
async fn click_ack(shared: &Shared, message_id: &str, data: &str) -> Option<(String, u16)> {
    let click = match parse_click(data.as_bytes()) {
        Ok(click) => click,
        Err(e) => {
            tracing::info!(error = %e, "card click rejected: payload");
            return Some((frame::ack_empty(message_id, 400), 400));
        }
    };
    let span = tracing::debug_span!("card_click", card = %click.out_track_id, action = %click.action);
    let answer = shared
        .pipeline
        .accept_click(stream_click_identity(message_id), click)
        .instrument(span)
        .await;
    match answer {
        ClickAck::Answer(x) => Some((frame::ack_card(message_id, &x), 200)),
        ClickAck::Unavailable => None,
    }
}

fn code_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        400 => "400",
        404 => "404",
        _ => "other",
    }
}

/// Owns the sending half: writes what is queued, each write bounded, until a close frame, a
/// failure, or the last sender is gone.
async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    mut queued: mpsc::Receiver<(Message, OwnedSemaphorePermit)>,
) {
    // Each frame's room in the outbox is given back once it is written.
    while let Some((message, _room)) = queued.recv().await {
        let closing = matches!(message, Message::Close(_));
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) if !closing => {}
            _ => break,
        }
    }
}
