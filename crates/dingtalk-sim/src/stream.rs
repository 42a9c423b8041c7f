//! DingTalk's side of Stream mode: tickets issued by `connections/open` (the HTTP route lives
//! with the other APIs in the crate root) and a WebSocket gateway that pushes frames to the
//! connected clients, records what they answer, re-pushes what they leave unacknowledged and
//! plays the failures Stream clients meet: `disconnect`, a dropped TCP connection, a silent
//! ("zombie") connection, refused opens; and what a hostile gateway could do: `disconnect`
//! on every connection without ever closing one, a flood of large pings it never reads the
//! answers of, an unencrypted endpoint elsewhere. docs/dingtalk.md (Stream mode) describes
//! the protocol.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::chat::{Chat, Member, new_msg_id, text_message};
use crate::clock::now_ms;
use crate::random_hex;

/// The topic of robot messages.
pub const BOT_TOPIC: &str = "/v1.0/im/bot/messages/get";
/// The frames' `specVersion`.
pub const SPEC_VERSION: &str = "1.0";
/// The WebSocket path of the gateway (the endpoint `connections/open` hands out).
pub const CONNECT_PATH: &str = "/connect";

/// How long a client may take for the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the gateway was told by `connections/open`: one `{type, topic}` pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    #[serde(rename = "type")]
    pub kind: String,
    pub topic: String,
}

/// A live WebSocket connection of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionInfo {
    /// The `connectionId` header of the frames pushed on it.
    pub id: String,
    /// The ticket it was opened with.
    pub ticket: String,
    pub opened_at_ms: u64,
    /// The subscriptions of the `connections/open` call that issued the ticket.
    pub subscriptions: Vec<Subscription>,
    /// Made silent by [`StreamFault::Zombie`]: open TCP, nothing read or sent.
    pub zombie: bool,
    /// A `disconnect` was sent; the gateway closes it when the grace is over (or, after
    /// [`StreamFault::DisconnectAndHold`], sends another one).
    pub disconnecting: bool,
    /// SYSTEM pings of a [`StreamFault::PingFlood`] written to it so far.
    pub flood_sent: u32,
}

/// A connection that ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClosedConnection {
    pub id: String,
    pub at_ms: u64,
    /// Why, in words: the client closed, dropped by the simulator, disconnect grace over, …
    pub reason: String,
}

/// An ACK (any JSON text frame with an integer `code` and a string `headers.messageId`)
/// received from a client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedAck {
    pub connection: String,
    pub at_ms: u64,
    pub message_id: String,
    pub code: i64,
    /// `message`, empty when absent.
    pub message: String,
    /// `data` as received (DingTalk expects a JSON string).
    pub data: Value,
    pub headers: Value,
    /// Type and topic of the frame the gateway sent with this `messageId`, if it sent one.
    pub frame_type: Option<String>,
    pub topic: Option<String>,
    /// Microseconds from the gateway starting to write the latest push of this frame to this
    /// ACK arriving (monotonic clock); `None` for a frame that was not pushed by
    /// [`Gateway::push_frame`] or whose earlier ACK already took the measurement.
    pub after_push_us: Option<u64>,
}

/// A frame pushed to a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedPush {
    pub message_id: String,
    pub frame_type: String,
    pub topic: String,
    pub connection: String,
    pub at_ms: u64,
    /// 1 for the first push, 2 for the first re-push, …
    pub attempt: u32,
    /// `false` when a zombie connection swallowed it.
    pub delivered: bool,
}

/// A text or binary frame received from a client that is not an ACK, as it came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceivedFrame {
    pub connection: String,
    pub at_ms: u64,
    pub text: String,
}

/// A WebSocket control frame (ping or pong) received from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlFrame {
    pub connection: String,
    pub at_ms: u64,
    pub payload: Vec<u8>,
}

/// A WebSocket close frame received from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceivedClose {
    pub connection: String,
    pub at_ms: u64,
    /// The close code; `None` for a close frame without one.
    pub code: Option<u16>,
    pub reason: String,
}

/// A robot message pushed over Stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedMessage {
    /// The payload's `msgId`.
    pub msg_id: String,
    /// The frame's `headers.messageId`, which the ACK must echo.
    pub message_id: String,
}

/// A SYSTEM frame sent to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentSystemFrame {
    pub message_id: String,
    /// Its `data` string (a `ping`'s reply must echo it).
    pub data: String,
}

/// A failure to play on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamFault {
    /// Send a SYSTEM `disconnect`, then close the connection when the grace is over.
    Disconnect,
    /// Break the TCP connection at once (reset, no close frame).
    Drop,
    /// Keep the TCP connection open but read nothing, answer no ping and send nothing:
    /// frames pushed to it are lost (and re-pushed after the delay, as unacknowledged).
    Zombie,
    /// A hostile gateway: send a SYSTEM `disconnect` and never close the connection; each
    /// time the grace is over, send another `disconnect` instead.
    DisconnectAndHold,
    /// A hostile gateway: write `count` SYSTEM pings whose `data` is `bytes` long, back to
    /// back, and never read again (not even the answers); the TCP connection stays open
    /// until the simulator drops it or stops.
    PingFlood { count: u32, bytes: u32 },
}

/// Timing of the gateway, from the simulator's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub repush_after: Duration,
    pub disconnect_grace: Duration,
    pub ticket_ttl: Duration,
}

enum Command {
    Send(String),
    /// A tracked frame: the write's start is noted for [`RecordedAck::after_push_us`].
    Push {
        message_id: String,
        frame: String,
    },
    Disconnect(String),
    /// A `disconnect` after which the gateway never closes (see [`StreamFault::DisconnectAndHold`]).
    DisconnectAndHold(String),
    PingFlood {
        count: u32,
        bytes: u32,
    },
    WsPing(Vec<u8>),
    Drop,
    Zombie,
}

struct Live {
    info: ConnectionInfo,
    tx: mpsc::UnboundedSender<Command>,
}

struct Ticket {
    expires: Instant,
    subscriptions: Vec<Subscription>,
}

struct Pending {
    seq: u64,
    message_id: String,
    frame_type: String,
    topic: String,
    /// Headers without `connectionId`, which each push sets.
    headers: Map<String, Value>,
    data: String,
    attempts: u32,
    next_at: Instant,
}

#[derive(Default)]
struct State {
    tickets: HashMap<String, Ticket>,
    refusals: VecDeque<u16>,
    live: Vec<Live>,
    next_target: usize,
    opened: usize,
    closed: Vec<ClosedConnection>,
    seq: u64,
    pending: Vec<Pending>,
    sent: HashMap<String, (String, String)>,
    acks: Vec<RecordedAck>,
    pushes: Vec<RecordedPush>,
    received: Vec<ReceivedFrame>,
    pings: Vec<ControlFrame>,
    pongs: Vec<ControlFrame>,
    closes: Vec<ReceivedClose>,
    refused_handshakes: Vec<String>,
    tasks: Vec<AbortHandle>,
    /// When the latest push of each tracked frame started to be written, until its ACK.
    written: HashMap<String, Instant>,
    /// ACKs received in all, also those taken by [`Gateway::take_acks`].
    ack_total: u64,
    /// Tells [`Gateway::ack_counter`]'s receivers about `ack_total`, once one asked.
    ack_count: Option<watch::Sender<u64>>,
    /// Played on every connection right after its handshake.
    every_connection: Option<StreamFault>,
    /// The endpoint `connections/open` hands out instead of the gateway's own.
    advertised: Option<String>,
}

/// The Stream gateway of a running simulator (see [`crate::Simulator::stream`]).
pub struct Gateway {
    addr: SocketAddr,
    app_id: String,
    timing: Timing,
    state: Mutex<State>,
}

impl Gateway {
    /// Starts the gateway on `listener` (spawned on the current tokio runtime).
    pub(crate) fn start(listener: std::net::TcpListener, timing: Timing) -> std::io::Result<Arc<Self>> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let gw = Arc::new(Self {
            addr,
            app_id: uuid_like(),
            timing,
            state: Mutex::new(State::default()),
        });
        let accept = tokio::spawn(accept_loop(gw.clone(), listener));
        let repush = tokio::spawn(repush_loop(gw.clone()));
        let mut s = gw.state();
        s.tasks.push(accept.abort_handle());
        s.tasks.push(repush.abort_handle());
        drop(s);
        Ok(gw)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Where the gateway listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `endpoint` that `connections/open` answers: `ws://127.0.0.1:port/connect`, or
    /// what [`Self::advertise_endpoint`] set.
    pub fn endpoint(&self) -> String {
        self.state()
            .advertised
            .clone()
            .unwrap_or_else(|| format!("ws://{}{CONNECT_PATH}", self.addr))
    }

    /// Makes `connections/open` hand out `endpoint` (any text) instead of the gateway's own;
    /// `None` goes back to the gateway's.
    pub fn advertise_endpoint(&self, endpoint: Option<String>) {
        self.state().advertised = endpoint;
    }

    /// Plays `fault` on every connection accepted from now on, right after its handshake;
    /// `None` stops it.
    pub fn fault_every_connection(&self, fault: Option<StreamFault>) {
        self.state().every_connection = fault;
    }

    /// The `appId` header of the frames.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Makes the next `n` `connections/open` calls answer `status` (401, 403, 5xx, …) with a
    /// DingTalk-style `{code, message}` body.
    pub fn refuse_opens(&self, n: usize, status: u16) {
        self.state().refusals.extend(std::iter::repeat_n(status, n));
    }

    /// Checks the subscriptions of a `connections/open` body (whose credentials were
    /// checked) and issues a ticket; `Err` says what is wrong with the body.
    pub(crate) fn open(&self, body: &Value) -> Result<String, &'static str> {
        let subscriptions = parse_subscriptions(body)?;
        let now = Instant::now();
        let mut s = self.state();
        s.tickets.retain(|_, t| t.expires > now);
        let ticket = uuid_like();
        s.tickets.insert(
            ticket.clone(),
            Ticket {
                expires: now + self.timing.ticket_ttl,
                subscriptions,
            },
        );
        Ok(ticket)
    }

    /// Takes the next injected refusal of `connections/open`, if any.
    pub(crate) fn take_refusal(&self) -> Option<u16> {
        self.state().refusals.pop_front()
    }

    /// Pushes a text message typed by `sender` in `chat` as a robot CALLBACK frame; the
    /// payload is the HTTP callback's, `sessionWebhook` included.
    pub fn push(&self, chat: &Chat, sender: &Member, text: &str) -> PushedMessage {
        let msg_id = new_msg_id();
        let payload = text_message(&msg_id, chat, sender, text);
        let message_id = self.push_callback(&payload);
        PushedMessage { msg_id, message_id }
    }

    /// Pushes `payload` as a robot CALLBACK frame; returns the frame's `messageId`.
    pub fn push_callback(&self, payload: &Value) -> String {
        self.push_frame("CALLBACK", BOT_TOPIC, payload.to_string())
    }

    /// Pushes a frame of `frame_type` on `topic` with `data` as its (string) `data`, to one
    /// live connection in turn; returns its `messageId`. Until a client acknowledges it (an
    /// ACK of any code settles it), it is pushed again every re-push delay, to the next live
    /// connection in turn; while no connection is live it waits for one.
    pub fn push_frame(&self, frame_type: &str, topic: &str, data: String) -> String {
        let message_id = new_message_id();
        let mut headers = Map::new();
        headers.insert("appId".into(), json!(self.app_id));
        headers.insert("contentType".into(), json!("application/json"));
        headers.insert("messageId".into(), json!(message_id));
        headers.insert("time".into(), json!(now_ms().to_string()));
        headers.insert("topic".into(), json!(topic));
        let mut s = self.state();
        s.seq += 1;
        let seq = s.seq;
        s.sent
            .insert(message_id.clone(), (frame_type.to_owned(), topic.to_owned()));
        s.pending.push(Pending {
            seq,
            message_id: message_id.clone(),
            frame_type: frame_type.to_owned(),
            topic: topic.to_owned(),
            headers,
            data,
            attempts: 0,
            next_at: Instant::now(),
        });
        let idx = s.pending.len() - 1;
        dispatch(&mut s, idx, self.timing.repush_after);
        message_id
    }

    /// Sends `text` as it is (a malformed frame, say) to one live connection in turn,
    /// without tracking it; returns the connection's id, `None` when none is live.
    pub fn send_raw(&self, text: &str) -> Option<String> {
        let mut s = self.state();
        let i = pick(&mut s)?;
        let live = &s.live[i];
        let id = live.info.id.clone();
        live.tx.send(Command::Send(text.to_owned())).ok()?;
        Some(id)
    }

    /// Sends a SYSTEM `ping` with `{"opaque": …}` data to `connection`; `None` when it is
    /// not live.
    pub fn ping(&self, connection: &str) -> Option<SentSystemFrame> {
        self.ping_with(connection, &json!({"opaque": uuid_like()}).to_string())
    }

    /// Sends a SYSTEM `ping` with `data` to `connection`; `None` when it is not live.
    pub fn ping_with(&self, connection: &str, data: &str) -> Option<SentSystemFrame> {
        let data = data.to_owned();
        let (message_id, frame) = self.system_frame(connection, "ping", &data)?;
        let s = self.state();
        let live = s.live.iter().find(|l| l.info.id == connection)?;
        live.tx.send(Command::Send(frame)).ok()?;
        Some(SentSystemFrame { message_id, data })
    }

    /// Sends a WebSocket-level ping with `payload` (≤ 125 bytes) to `connection`.
    pub fn ws_ping(&self, connection: &str, payload: &[u8]) -> bool {
        let s = self.state();
        s.live
            .iter()
            .find(|l| l.info.id == connection)
            .is_some_and(|l| l.tx.send(Command::WsPing(payload.to_vec())).is_ok())
    }

    /// Plays `fault` on `connection`; `false` when it is not live.
    pub fn fault(&self, connection: &str, fault: StreamFault) -> bool {
        let command = match fault {
            StreamFault::Disconnect | StreamFault::DisconnectAndHold => {
                let Some(frame) = self.disconnect_frame(connection) else {
                    return false;
                };
                if fault == StreamFault::Disconnect {
                    Command::Disconnect(frame)
                } else {
                    Command::DisconnectAndHold(frame)
                }
            }
            StreamFault::Drop => Command::Drop,
            StreamFault::Zombie => Command::Zombie,
            StreamFault::PingFlood { count, bytes } => Command::PingFlood { count, bytes },
        };
        let mut s = self.state();
        let Some(live) = s.live.iter_mut().find(|l| l.info.id == connection) else {
            return false;
        };
        match fault {
            StreamFault::Disconnect | StreamFault::DisconnectAndHold => live.info.disconnecting = true,
            StreamFault::Zombie => live.info.zombie = true,
            StreamFault::Drop | StreamFault::PingFlood { .. } => {}
        }
        live.tx.send(command).is_ok()
    }

    /// A SYSTEM `disconnect` frame for `connection`, as DingTalk words it.
    fn disconnect_frame(&self, connection: &str) -> Option<String> {
        let data = json!({"reason": "connection is expired"}).to_string();
        self.system_frame(connection, "disconnect", &data)
            .map(|(_, frame)| frame)
    }

    fn system_frame(&self, connection: &str, topic: &str, data: &str) -> Option<(String, String)> {
        let message_id = new_message_id();
        let frame = json!({
            "specVersion": SPEC_VERSION,
            "type": "SYSTEM",
            "headers": {
                "appId": self.app_id,
                "connectionId": connection,
                "contentType": "application/json",
                "messageId": message_id,
                "time": now_ms().to_string(),
                "topic": topic,
            },
            "data": data,
        })
        .to_string();
        let mut s = self.state();
        if !s.live.iter().any(|l| l.info.id == connection) {
            return None;
        }
        s.sent
            .insert(message_id.clone(), ("SYSTEM".to_owned(), topic.to_owned()));
        Some((message_id, frame))
    }

    /// The live connections, in the order they opened.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.state().live.iter().map(|l| l.info.clone()).collect()
    }

    /// How many WebSocket connections were ever accepted.
    pub fn connections_opened(&self) -> usize {
        self.state().opened
    }

    /// Connections that ended, and why.
    pub fn closed(&self) -> Vec<ClosedConnection> {
        self.state().closed.clone()
    }

    /// Every ACK received (but those [`Self::take_acks`] took).
    pub fn acks(&self) -> Vec<RecordedAck> {
        self.state().acks.clone()
    }

    /// Every push of a tracked frame, re-pushes included (but those [`Self::take_pushes`]
    /// took).
    pub fn pushes(&self) -> Vec<RecordedPush> {
        self.state().pushes.clone()
    }

    /// The ACKs received since the last call, removed from the records: a long run (a
    /// benchmark) keeps the gateway's memory flat by taking them as they come.
    pub fn take_acks(&self) -> Vec<RecordedAck> {
        std::mem::take(&mut self.state().acks)
    }

    /// The pushes since the last call, removed from the records (see [`Self::take_acks`]).
    pub fn take_pushes(&self) -> Vec<RecordedPush> {
        std::mem::take(&mut self.state().pushes)
    }

    /// How many ACKs were received in all (taken ones included), updated as each arrives:
    /// `changed().await` on it waits for the next ACK without polling.
    pub fn ack_counter(&self) -> watch::Receiver<u64> {
        let mut s = self.state();
        let total = s.ack_total;
        s.ack_count
            .get_or_insert_with(|| watch::channel(total).0)
            .subscribe()
    }

    /// `messageId`s of the tracked frames no client has acknowledged yet.
    pub fn unacknowledged(&self) -> Vec<String> {
        let s = self.state();
        let mut pending: Vec<(u64, String)> =
            s.pending.iter().map(|p| (p.seq, p.message_id.clone())).collect();
        pending.sort();
        pending.into_iter().map(|(_, id)| id).collect()
    }

    /// Every text or binary frame received that was not an ACK (garbage, a malformed ACK).
    pub fn received(&self) -> Vec<ReceivedFrame> {
        self.state().received.clone()
    }

    /// WebSocket pings received from clients.
    pub fn ws_pings(&self) -> Vec<ControlFrame> {
        self.state().pings.clone()
    }

    /// WebSocket pongs received from clients.
    pub fn ws_pongs(&self) -> Vec<ControlFrame> {
        self.state().pongs.clone()
    }

    /// WebSocket close frames received from clients.
    pub fn close_frames(&self) -> Vec<ReceivedClose> {
        self.state().closes.clone()
    }

    /// Why each refused WebSocket handshake was refused.
    pub fn refused_handshakes(&self) -> Vec<String> {
        self.state().refused_handshakes.clone()
    }

    /// Waits until at least `n` connections are live or `timeout` passed; returns them.
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> Vec<ConnectionInfo> {
        wait_until(timeout, || {
            let c = self.connections();
            (c.len() >= n, c)
        })
        .await
    }

    /// Waits until at least `n` ACKs arrived or `timeout` passed; returns them all.
    pub async fn wait_for_acks(&self, n: usize, timeout: Duration) -> Vec<RecordedAck> {
        wait_until(timeout, || {
            let a = self.acks();
            (a.len() >= n, a)
        })
        .await
    }

    /// Stops accepting, re-pushing and serving: every connection is cut.
    pub(crate) fn stop(&self) {
        let mut s = self.state();
        for t in s.tasks.drain(..) {
            t.abort();
        }
        s.live.clear();
    }

    fn take_ticket(&self, ticket: Option<&str>) -> Result<(String, Vec<Subscription>), &'static str> {
        let Some(ticket) = ticket.filter(|t| !t.is_empty()) else {
            return Err("no ticket");
        };
        let mut s = self.state();
        match s.tickets.remove(ticket) {
            None => Err("unknown or already used ticket"),
            Some(t) if t.expires <= Instant::now() => Err("expired ticket"),
            Some(t) => Ok((ticket.to_owned(), t.subscriptions)),
        }
    }

    fn refuse_handshake(&self, reason: &str) {
        self.state().refused_handshakes.push(reason.to_owned());
    }

    fn on_message(&self, connection: &str, msg: Message) {
        let now = Instant::now();
        let at_ms = now_ms();
        let mut s = self.state();
        match msg {
            Message::Text(t) => {
                let text = t.as_str().to_owned();
                if let Some(mut ack) = parse_ack(connection, at_ms, &text, &s.sent) {
                    s.pending.retain(|p| p.message_id != ack.message_id);
                    ack.after_push_us = s
                        .written
                        .remove(&ack.message_id)
                        .map(|t| u64::try_from(now.duration_since(t).as_micros()).unwrap_or(u64::MAX));
                    s.acks.push(ack);
                    s.ack_total += 1;
                    if let Some(count) = &s.ack_count {
                        count.send_replace(s.ack_total);
                    }
                } else {
                    s.received.push(ReceivedFrame {
                        connection: connection.to_owned(),
                        at_ms,
                        text,
                    });
                }
            }
            Message::Binary(b) => s.received.push(ReceivedFrame {
                connection: connection.to_owned(),
                at_ms,
                text: String::from_utf8_lossy(&b).into_owned(),
            }),
            Message::Ping(p) => s.pings.push(ControlFrame {
                connection: connection.to_owned(),
                at_ms,
                payload: p.to_vec(),
            }),
            Message::Pong(p) => s.pongs.push(ControlFrame {
                connection: connection.to_owned(),
                at_ms,
                payload: p.to_vec(),
            }),
            Message::Close(frame) => s.closes.push(ReceivedClose {
                connection: connection.to_owned(),
                at_ms,
                code: frame.as_ref().map(|f| u16::from(f.code)),
                reason: frame.map(|f| f.reason.as_str().to_owned()).unwrap_or_default(),
            }),
            Message::Frame(_) => {}
        }
    }

    fn register(&self, info: ConnectionInfo, tx: mpsc::UnboundedSender<Command>) {
        let id = info.id.clone();
        let every = {
            let mut s = self.state();
            s.opened += 1;
            s.live.push(Live { info, tx });
            s.every_connection
        };
        if let Some(fault) = every {
            self.fault(&id, fault);
        }
    }

    fn count_flooded(&self, connection: &str) {
        if let Some(live) = self.state().live.iter_mut().find(|l| l.info.id == connection) {
            live.info.flood_sent += 1;
        }
    }

    fn unregister(&self, connection: &str, reason: String) {
        let mut s = self.state();
        s.live.retain(|l| l.info.id != connection);
        s.closed.push(ClosedConnection {
            id: connection.to_owned(),
            at_ms: now_ms(),
            reason,
        });
    }
}

async fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> (bool, T)) -> T {
    let end = Instant::now() + timeout;
    loop {
        let (done, value) = check();
        if done || Instant::now() >= end {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next live connection in turn: one not being disconnected if there is any.
fn pick(s: &mut State) -> Option<usize> {
    let n = s.live.len();
    if n == 0 {
        return None;
    }
    let start = s.next_target;
    let preferred = (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| !s.live[i].info.disconnecting);
    let i = preferred.unwrap_or(start % n);
    s.next_target = (i + 1) % n;
    Some(i)
}

/// Pushes `s.pending[idx]` to a live connection, if there is one, and schedules the re-push.
fn dispatch(s: &mut State, idx: usize, repush_after: Duration) {
    let Some(target) = pick(s) else {
        return;
    };
    let (connection, zombie, tx) = {
        let l = &s.live[target];
        (l.info.id.clone(), l.info.zombie, l.tx.clone())
    };
    let p = &mut s.pending[idx];
    p.attempts += 1;
    p.next_at = Instant::now() + repush_after;
    let mut headers = p.headers.clone();
    headers.insert("connectionId".into(), json!(connection));
    let frame = json!({
        "specVersion": SPEC_VERSION,
        "type": p.frame_type,
        "headers": headers,
        "data": p.data,
    })
    .to_string();
    let sent = tx
        .send(Command::Push {
            message_id: p.message_id.clone(),
            frame,
        })
        .is_ok();
    let push = RecordedPush {
        message_id: p.message_id.clone(),
        frame_type: p.frame_type.clone(),
        topic: p.topic.clone(),
        connection,
        at_ms: now_ms(),
        attempt: p.attempts,
        delivered: sent && !zombie,
    };
    s.pushes.push(push);
}

async fn repush_loop(gw: Arc<Gateway>) {
    let tick = (gw.timing.repush_after / 5).clamp(Duration::from_millis(10), Duration::from_millis(200));
    loop {
        tokio::time::sleep(tick).await;
        let mut s = gw.state();
        let now = Instant::now();
        let mut due: Vec<(u64, usize)> = s
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| p.next_at <= now)
            .map(|(i, p)| (p.seq, i))
            .collect();
        due.sort_unstable();
        for (_, idx) in due {
            dispatch(&mut s, idx, gw.timing.repush_after);
        }
    }
}

async fn accept_loop(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors or the like: wait instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let task = tokio::spawn(serve(gw.clone(), tcp));
        let mut s = gw.state();
        s.tasks.retain(|t| !t.is_finished());
        s.tasks.push(task.abort_handle());
    }
}

/// How a connection's loop ended.
enum End {
    Closed(String),
    Drop,
    Zombie,
    /// After a [`StreamFault::PingFlood`].
    Deaf,
}

async fn serve(gw: Arc<Gateway>, tcp: TcpStream) {
    let mut admitted: Option<(String, Vec<Subscription>)> = None;
    // The error type is tungstenite's handshake answer, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != CONNECT_PATH {
            gw.refuse_handshake("unknown path");
            return Err(refusal(StatusCode::NOT_FOUND, "unknown path"));
        }
        let ticket = req.uri().query().and_then(|q| query_param(q, "ticket"));
        match gw.take_ticket(ticket.as_deref()) {
            Ok(t) => {
                admitted = Some(t);
                Ok(resp)
            }
            Err(why) => {
                gw.refuse_handshake(why);
                Err(refusal(StatusCode::UNAUTHORIZED, why))
            }
        }
    };
    let ws = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async(tcp, callback),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    let Some((ticket, subscriptions)) = admitted else {
        return;
    };
    let id = uuid_like();
    let (tx, rx) = mpsc::unbounded_channel();
    gw.register(
        ConnectionInfo {
            id: id.clone(),
            ticket,
            opened_at_ms: now_ms(),
            subscriptions,
            zombie: false,
            disconnecting: false,
            flood_sent: 0,
        },
        tx,
    );
    let reason = run(&gw, &id, ws, rx).await;
    gw.unregister(&id, reason);
}

async fn run(
    gw: &Gateway,
    id: &str,
    mut ws: WebSocketStream<TcpStream>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) -> String {
    let mut close_at: Option<tokio::time::Instant> = None;
    // After a `DisconnectAndHold`: when the grace is over, another `disconnect`, no close.
    let mut hold = false;
    let end = loop {
        let grace_over = async {
            match close_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // Commands first: a fault takes effect before anything the client sends after it.
        tokio::select! {
            biased;
            command = rx.recv() => match command {
                None => break End::Closed("the gateway stopped".into()),
                Some(Command::Send(text)) => {
                    if let Err(e) = ws.send(Message::text(text)).await {
                        break End::Closed(format!("write error: {e}"));
                    }
                }
                Some(Command::Push { message_id, frame }) => {
                    gw.state().written.insert(message_id, Instant::now());
                    if let Err(e) = ws.send(Message::text(frame)).await {
                        break End::Closed(format!("write error: {e}"));
                    }
                }
                Some(Command::Disconnect(text)) => {
                    if let Err(e) = ws.send(Message::text(text)).await {
                        break End::Closed(format!("write error: {e}"));
                    }
                    close_at = Some(tokio::time::Instant::now() + gw.timing.disconnect_grace);
                }
                Some(Command::DisconnectAndHold(text)) => {
                    if let Err(e) = ws.send(Message::text(text)).await {
                        break End::Closed(format!("write error: {e}"));
                    }
                    hold = true;
                    close_at = Some(tokio::time::Instant::now() + gw.timing.disconnect_grace);
                }
                Some(Command::PingFlood { count, bytes }) => {
                    if let Err(e) = flood(gw, id, &mut ws, count, bytes).await {
                        break End::Closed(format!("write error: {e}"));
                    }
                    break End::Deaf;
                }
                Some(Command::WsPing(payload)) => {
                    if let Err(e) = ws.send(Message::Ping(payload.into())).await {
                        break End::Closed(format!("write error: {e}"));
                    }
                }
                Some(Command::Drop) => break End::Drop,
                Some(Command::Zombie) => break End::Zombie,
            },
            incoming = ws.next() => match incoming {
                None => break End::Closed("the client closed the connection".into()),
                Some(Err(e)) => break End::Closed(format!("read error: {e}")),
                Some(Ok(msg)) => gw.on_message(id, msg),
            },
            () = grace_over => {
                if hold {
                    let Some(text) = gw.disconnect_frame(id) else {
                        break End::Closed("the gateway stopped".into());
                    };
                    if let Err(e) = ws.send(Message::text(text)).await {
                        break End::Closed(format!("write error: {e}"));
                    }
                    close_at = Some(tokio::time::Instant::now() + gw.timing.disconnect_grace);
                    continue;
                }
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "connection is expired".into(),
                    }))
                    .await;
                // Give the client a moment to answer the close frame.
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(msg)) = ws.next().await {
                        gw.on_message(id, msg);
                    }
                })
                .await;
                break End::Closed("closed by the gateway after disconnect".into());
            }
        }
    };
    match end {
        End::Closed(reason) => reason,
        End::Drop => {
            reset(ws.into_inner());
            "dropped by the simulator".into()
        }
        End::Zombie => zombie(ws.into_inner(), rx).await,
        End::Deaf => deaf(ws.into_inner(), rx).await,
    }
}

/// Writes `count` SYSTEM pings with `bytes` of `data` each (`{"opaque":"xxx…"}`), reading
/// nothing in between; counts each in [`ConnectionInfo::flood_sent`].
async fn flood(
    gw: &Gateway,
    id: &str,
    ws: &mut WebSocketStream<TcpStream>,
    count: u32,
    bytes: u32,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let wrapper = r#"{"opaque":""}"#.len();
    let filler = "x".repeat((bytes as usize).saturating_sub(wrapper));
    let data = json!({ "opaque": filler }).to_string();
    // Serialized once: each frame is a small one with the data spliced in.
    let data = format!(r#""data":{}"#, Value::String(data));
    for _ in 0..count {
        let Some((_, frame)) = gw.system_frame(id, "ping", "") else {
            return Ok(());
        };
        let frame = frame.replacen(r#""data":"""#, &data, 1);
        ws.send(Message::text(frame)).await?;
        gw.count_flooded(id);
    }
    Ok(())
}

/// A deaf connection: the TCP connection stays open, nothing is read (so whatever the client
/// writes piles up in its buffers) and nothing is sent, until the simulator drops it or
/// stops.
async fn deaf(tcp: TcpStream, mut rx: mpsc::UnboundedReceiver<Command>) -> String {
    loop {
        match rx.recv().await {
            None => return "the gateway stopped".into(),
            Some(Command::Drop) => {
                reset(tcp);
                return "deaf: dropped by the simulator".into();
            }
            // Swallowed: a deaf gateway sends nothing.
            Some(_) => {}
        }
    }
}

/// Closes `tcp` with a reset instead of an orderly shutdown.
fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

/// A silent connection: bytes from the client are read and thrown away (so nothing is
/// answered, not even a ping), nothing is sent, and the TCP connection stays open until
/// the client gives up or the simulator drops it.
async fn zombie(tcp: TcpStream, mut rx: mpsc::UnboundedReceiver<Command>) -> String {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            ready = tcp.readable() => {
                if let Err(e) = ready {
                    return format!("zombie: read error: {e}");
                }
                match tcp.try_read(&mut buf) {
                    Ok(0) => return "zombie: the client closed the connection".into(),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return format!("zombie: read error: {e}"),
                }
            }
            command = rx.recv() => match command {
                None => return "the gateway stopped".into(),
                Some(Command::Drop) => {
                    reset(tcp);
                    return "zombie: dropped by the simulator".into();
                }
                // Swallowed: a zombie sends nothing.
                Some(_) => {}
            },
        }
    }
}

fn refusal(status: StatusCode, why: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(why.to_owned()));
    *resp.status_mut() = status;
    resp
}

/// `{code, message, headers.messageId}` of a client frame, if it is an ACK.
fn parse_ack(
    connection: &str,
    at_ms: u64,
    text: &str,
    sent: &HashMap<String, (String, String)>,
) -> Option<RecordedAck> {
    let v: Value = serde_json::from_str(text).ok()?;
    let code = v.get("code")?.as_i64()?;
    let headers = v.get("headers")?.clone();
    let message_id = headers.get("messageId")?.as_str()?.to_owned();
    let (frame_type, topic) = match sent.get(&message_id) {
        Some((t, topic)) => (Some(t.clone()), Some(topic.clone())),
        None => (None, None),
    };
    Some(RecordedAck {
        connection: connection.to_owned(),
        at_ms,
        code,
        message: v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        data: v.get("data").cloned().unwrap_or(Value::Null),
        headers,
        message_id,
        frame_type,
        topic,
        after_push_us: None,
    })
}

/// The `subscriptions` of a `connections/open` body: a non-empty list of `{type, topic}`
/// with a known type and a non-empty topic.
fn parse_subscriptions(body: &Value) -> Result<Vec<Subscription>, &'static str> {
    let Some(list) = body.get("subscriptions").and_then(Value::as_array) else {
        return Err("subscriptions is missing or not a list");
    };
    if list.is_empty() {
        return Err("subscriptions is empty");
    }
    list.iter()
        .map(|s| {
            let kind = s.get("type").and_then(Value::as_str).unwrap_or_default();
            let topic = s.get("topic").and_then(Value::as_str).unwrap_or_default();
            if !matches!(kind, "SYSTEM" | "EVENT" | "CALLBACK") {
                return Err("a subscription's type is not SYSTEM, EVENT or CALLBACK");
            }
            if topic.is_empty() {
                return Err("a subscription has no topic");
            }
            Ok(Subscription {
                kind: kind.to_owned(),
                topic: topic.to_owned(),
            })
        })
        .collect()
}

/// The value of `name` in a query string, percent-decoded (`+` is a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh id shaped like DingTalk's tickets and ids (8-4-4-4-12 hex digits).
fn uuid_like() -> String {
    let h = random_hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A fresh frame `messageId`, shaped like DingTalk's (`212ca9d7_974_1898c159aa6_1783b`).
fn new_message_id() -> String {
    format!(
        "{}_{}_{:x}_{}",
        random_hex(8),
        random_hex(3),
        now_ms(),
        random_hex(5)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_in_the_query_is_percent_decoded() {
        assert_eq!(query_param("ticket=a%2Bb+c", "ticket").as_deref(), Some("a+b c"));
        assert_eq!(query_param("x=1&ticket=abc", "ticket").as_deref(), Some("abc"));
        assert_eq!(query_param("tickets=abc", "ticket"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn subscriptions_need_a_known_type_and_a_topic() {
        let ok = json!({"subscriptions": [{"type": "CALLBACK", "topic": BOT_TOPIC}]});
        assert_eq!(
            parse_subscriptions(&ok),
            Ok(vec![Subscription {
                kind: "CALLBACK".into(),
                topic: BOT_TOPIC.into()
            }])
        );
        for bad in [
            json!({}),
            json!({"subscriptions": []}),
            json!({"subscriptions": [{"type": "PUSH", "topic": "x"}]}),
            json!({"subscriptions": [{"type": "EVENT", "topic": ""}]}),
        ] {
            assert!(parse_subscriptions(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_ack_needs_an_integer_code_and_a_message_id() {
        let sent = HashMap::from([("m1".to_owned(), ("CALLBACK".to_owned(), BOT_TOPIC.to_owned()))]);
        let ack = parse_ack(
            "c",
            1,
            r#"{"code":200,"headers":{"messageId":"m1","contentType":"application/json"},"message":"OK","data":"{\"response\":null}"}"#,
            &sent,
        )
        .expect("an ACK");
        assert_eq!(
            (ack.code, ack.message_id.as_str(), ack.message.as_str()),
            (200, "m1", "OK")
        );
        assert_eq!(ack.topic.as_deref(), Some(BOT_TOPIC));
        assert_eq!(ack.data, json!("{\"response\":null}"));
        assert!(parse_ack("c", 1, r#"{"code":"200","headers":{"messageId":"m1"}}"#, &sent).is_none());
        assert!(parse_ack("c", 1, r#"{"code":200,"headers":{}}"#, &sent).is_none());
        assert!(parse_ack("c", 1, "not json", &sent).is_none());
    }
}
