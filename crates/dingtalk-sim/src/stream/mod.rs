//! DingTalk's side of Stream mode: tickets issued by `connections/open` (the HTTP route lives
//! with the other APIs, in `api/gateway.rs`) and a WebSocket gateway that pushes frames to the
//! connected clients, records what they answer, re-pushes what they leave unacknowledged and
//! plays the failures Stream clients meet: `disconnect`, a dropped TCP connection, a silent
//! ("zombie") connection, refused opens; and what a hostile gateway could do: `disconnect`
//! on every connection without ever closing one, a flood of large pings it never reads the
//! answers of, an unencrypted endpoint elsewhere. docs/dingtalk.md (Stream mode) describes
//! the protocol.

mod card;
mod records;
mod server;
mod wire;

pub use records::{
    ClosedConnection, ConnectionInfo, ControlFrame, PushedMessage, ReceivedClose, ReceivedFrame, RecordedAck,
    RecordedPush, SentSystemFrame, Subscription,
};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::chat::{Chat, Member, new_msg_id, text_message};
use crate::clock::now_ms;
use server::accept_loop;
pub(crate) use wire::new_message_id;
use wire::{parse_subscriptions, uuid_like};

/// The topic of robot messages.
pub const BOT_TOPIC: &str = "/v1.0/im/bot/messages/get";
/// The topic of interactive cards' button callbacks (see [`crate::cards`]).
pub const CARD_TOPIC: &str = "/v1.0/card/instances/callback";
/// The frames' `specVersion`.
pub const SPEC_VERSION: &str = "1.0";
/// The WebSocket path of the gateway (the endpoint `connections/open` hands out).
pub const CONNECT_PATH: &str = "/connect";

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
    /// Pushed only to connections that subscribed `topic` (card callbacks); other frames go
    /// to any live connection.
    subscribers_only: bool,
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
    /// Who waits for the next ACK of a `messageId` (a card press, see `card.rs`).
    ack_waiters: HashMap<String, Vec<oneshot::Sender<RecordedAck>>>,
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
            subscribers_only: false,
        });
        let idx = s.pending.len() - 1;
        dispatch(&mut s, idx, self.timing.repush_after);
        message_id
    }

    /// Sends `text` as it is (a malformed frame, say) to one live connection in turn,
    /// without tracking it; returns the connection's id, `None` when none is live.
    pub fn send_raw(&self, text: &str) -> Option<String> {
        let mut s = self.state();
        let i = pick(&mut s, None)?;
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

    /// Stops accepting, re-pushing and serving: every connection is cut.
    pub(crate) fn stop(&self) {
        let mut s = self.state();
        for t in s.tasks.drain(..) {
            t.abort();
        }
        s.live.clear();
    }
}

/// The next live connection in turn (among those that subscribed `topic`, when given): one
/// not being disconnected if there is any.
fn pick(s: &mut State, topic: Option<&str>) -> Option<usize> {
    let n = s.live.len();
    if n == 0 {
        return None;
    }
    let start = s.next_target;
    let eligible =
        |i: &usize| topic.is_none_or(|t| s.live[*i].info.subscriptions.iter().any(|sub| sub.topic == t));
    let mut turn = (0..n).map(|k| (start + k) % n);
    let preferred = turn
        .clone()
        .find(|i| eligible(i) && !s.live[*i].info.disconnecting);
    let i = preferred.or_else(|| turn.find(eligible))?;
    s.next_target = (i + 1) % n;
    Some(i)
}

/// Pushes `s.pending[idx]` to a live connection, if there is one, and schedules the re-push.
fn dispatch(s: &mut State, idx: usize, repush_after: Duration) {
    let only = s.pending[idx]
        .subscribers_only
        .then(|| s.pending[idx].topic.clone());
    let Some(target) = pick(s, only.as_deref()) else {
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
