//! What the gateway saw, for tests to read: its connections, live and ended, the frames it
//! pushed, and the ACKs and other frames clients sent; and the [`Gateway`] methods that read
//! (or take) them.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::Gateway;

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
    /// Made silent by [`StreamFault::Zombie`](super::StreamFault::Zombie): open TCP, nothing read or sent.
    pub zombie: bool,
    /// A `disconnect` was sent; the gateway closes it when the grace is over (or, after
    /// [`StreamFault::DisconnectAndHold`](super::StreamFault::DisconnectAndHold), sends another one).
    pub disconnecting: bool,
    /// SYSTEM pings of a [`StreamFault::PingFlood`](super::StreamFault::PingFlood) written to it so far.
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

impl Gateway {
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
