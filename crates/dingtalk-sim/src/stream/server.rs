//! The gateway's WebSocket server: the accept loop, the handshake (path and ticket), and one
//! loop a connection that writes what the gateway sends, records what the client sends and
//! plays the connection's faults (close after `disconnect`, drop, zombie, deaf after a ping
//! flood).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::wire::{parse_ack, query_param, uuid_like};
use super::{
    CONNECT_PATH, ClosedConnection, Command, ConnectionInfo, ControlFrame, Gateway, Live, ReceivedClose,
    ReceivedFrame, Subscription,
};
use crate::clock::now_ms;

/// How long a client may take for the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

impl Gateway {
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
                    if let Some(waiters) = s.ack_waiters.remove(&ack.message_id) {
                        for w in waiters {
                            let _ = w.send(ack.clone());
                        }
                    }
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

pub(super) async fn accept_loop(gw: Arc<Gateway>, listener: TcpListener) {
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
    /// After a [`StreamFault::PingFlood`](super::StreamFault::PingFlood).
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
