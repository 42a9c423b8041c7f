//! The Stream gateway driven by a minimal WebSocket client, on loopback.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use dingtalk_sim::chat::{Chat, Member};
use dingtalk_sim::stream::{BOT_TOPIC, StreamFault};
use dingtalk_sim::{SimConfig, Simulator, api};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = WebSocketStream<TcpStream>;

/// Long enough for anything on loopback; tests normally finish far sooner.
const PATIENCE: Duration = Duration::from_secs(10);

fn sim_with(config: SimConfig) -> Simulator {
    Simulator::start(config, TcpListener::bind("127.0.0.1:0").expect("bind")).expect("start")
}

fn sim() -> Simulator {
    sim_with(SimConfig {
        stream_repush_after_ms: 300,
        stream_disconnect_grace_ms: 300,
        ..SimConfig::default()
    })
}

fn open_body(sim: &Simulator, secret: &str) -> Value {
    json!({
        "clientId": sim.config().app_key,
        "clientSecret": secret,
        "subscriptions": [{"type": "CALLBACK", "topic": BOT_TOPIC}],
        "ua": "dingtalk-sim-tests/0.1",
        "localIp": "127.0.0.1",
    })
}

/// `POST /v1.0/gateway/connections/open`: status and JSON body.
async fn post_open(sim: &Simulator, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1.0/gateway/connections/open", sim.url()))
        .header("accept", "application/json")
        .json(body)
        .send()
        .await
        .expect("open call");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A fresh `(endpoint, ticket)`.
async fn open(sim: &Simulator) -> (String, String) {
    let secret = sim.config().app_secret.clone();
    let (status, body) = post_open(sim, &open_body(sim, &secret)).await;
    assert_eq!(status, 200, "{body}");
    let endpoint = body["endpoint"].as_str().expect("endpoint").to_owned();
    let ticket = body["ticket"].as_str().expect("ticket").to_owned();
    (endpoint, ticket)
}

async fn connect(endpoint: &str, ticket: &str) -> Result<Ws, tungstenite::Error> {
    let addr = endpoint
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port")
        .to_owned();
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let url = format!("{endpoint}?ticket={ticket}");
    tokio_tungstenite::client_async(url, tcp).await.map(|(ws, _)| ws)
}

/// Opens and connects; returns the socket and its connection id.
async fn connected(sim: &Simulator) -> (Ws, String) {
    let before: Vec<String> = sim.stream().connections().into_iter().map(|c| c.id).collect();
    let (endpoint, ticket) = open(sim).await;
    let ws = connect(&endpoint, &ticket).await.expect("handshake");
    let live = sim
        .stream()
        .wait_for_connections(before.len() + 1, PATIENCE)
        .await;
    let new = live
        .into_iter()
        .find(|c| !before.contains(&c.id))
        .expect("the new connection is live");
    assert_eq!(new.ticket, ticket);
    (ws, new.id)
}

/// The next text frame as JSON; `None` when none comes within `wait`.
async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Value> {
    tokio::time::timeout(wait, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str::<Value>(t.as_str()).expect("a JSON frame");
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended: {other:?}"),
            }
        }
    })
    .await
    .ok()
}

fn ack(message_id: &str, data: &str) -> Message {
    Message::text(
        json!({
            "code": 200,
            "headers": {"contentType": "application/json", "messageId": message_id},
            "message": "OK",
            "data": data,
        })
        .to_string(),
    )
}

fn chat(sim: &Simulator) -> Chat {
    let cid = "cidStreamTest==";
    sim.add_group(cid, "chatStreamTest", "stream test");
    let (session_webhook, session_expires_ms) = sim.open_session(cid, Duration::from_secs(600));
    Chat {
        open_conversation_id: cid.into(),
        title: "stream test".into(),
        conversation_type: "2".into(),
        session_webhook,
        session_expires_ms,
    }
}

/// Waits until `conn` is recorded as closed; returns why it closed.
async fn closed_reason(sim: &Simulator, conn: &str) -> String {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(c) = sim.stream().closed().into_iter().find(|c| c.id == conn) {
                return c.reason;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("recorded as closed")
}

fn admin() -> Member {
    Member::new("staff-admin", "Admin", true)
}

#[tokio::test]
async fn a_pushed_robot_message_arrives_as_a_callback_frame_and_its_ack_stops_the_re_push() {
    let sim = sim();
    let (mut ws, conn) = connected(&sim).await;
    let chat = chat(&sim);
    let pushed = sim.stream().push(&chat, &admin(), "/help");

    let frame = next_frame(&mut ws, PATIENCE).await.expect("the CALLBACK frame");
    assert_eq!(frame["specVersion"], "1.0");
    assert_eq!(frame["type"], "CALLBACK");
    let h = &frame["headers"];
    assert_eq!(h["topic"], BOT_TOPIC);
    assert_eq!(h["contentType"], "application/json");
    assert_eq!(h["messageId"], pushed.message_id.as_str());
    assert_eq!(h["connectionId"], conn.as_str());
    assert_eq!(h["appId"], sim.stream().app_id());
    let time = h["time"].as_str().expect("time is a string");
    assert!(
        time.len() == 13 && time.bytes().all(|b| b.is_ascii_digit()),
        "{time}"
    );
    let data: Value =
        serde_json::from_str(frame["data"].as_str().expect("data is a string")).expect("data is JSON");
    assert_eq!(data["msgId"], pushed.msg_id.as_str());
    assert_eq!(data["conversationId"], chat.open_conversation_id.as_str());
    assert_eq!(data["sessionWebhook"], chat.session_webhook.as_str());
    assert_eq!(data["text"]["content"], " /help");
    assert_eq!(data["senderStaffId"], "staff-admin");

    ws.send(ack(&pushed.message_id, r#"{"response":null}"#))
        .await
        .expect("send ACK");
    let acks = sim.stream().wait_for_acks(1, PATIENCE).await;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].message_id, pushed.message_id);
    assert_eq!(acks[0].code, 200);
    assert_eq!(acks[0].message, "OK");
    assert_eq!(acks[0].connection, conn);
    assert_eq!(acks[0].data, json!(r#"{"response":null}"#));
    assert_eq!(acks[0].frame_type.as_deref(), Some("CALLBACK"));
    assert_eq!(acks[0].topic.as_deref(), Some(BOT_TOPIC));

    // Three re-push delays later nothing came again.
    assert_eq!(next_frame(&mut ws, Duration::from_millis(900)).await, None);
    assert!(sim.stream().unacknowledged().is_empty());
    let pushes = sim.stream().pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!((pushes[0].attempt, pushes[0].delivered), (1, true));
    sim.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_callback_is_pushed_again_after_the_delay_with_the_same_message_id() {
    let sim = sim();
    let (mut ws, conn) = connected(&sim).await;
    let pushed = sim.stream().push(&chat(&sim), &admin(), "/dm-status");
    let first = next_frame(&mut ws, PATIENCE).await.expect("first push");
    let second = next_frame(&mut ws, PATIENCE).await.expect("re-push");
    assert_eq!(first["headers"]["messageId"], pushed.message_id.as_str());
    assert_eq!(second["headers"]["messageId"], pushed.message_id.as_str());
    assert_eq!(first["data"], second["data"]);
    assert_eq!(second["headers"]["connectionId"], conn.as_str());
    let pushes = sim.stream().pushes();
    assert!(pushes.len() >= 2);
    assert_eq!((pushes[0].attempt, pushes[1].attempt), (1, 2));
    assert!(pushes[1].at_ms - pushes[0].at_ms >= 300, "{pushes:?}");
    assert_eq!(sim.stream().unacknowledged(), vec![pushed.message_id.clone()]);

    ws.send(ack(&pushed.message_id, r#"{"response":null}"#))
        .await
        .expect("send ACK");
    sim.stream().wait_for_acks(1, PATIENCE).await;
    assert!(sim.stream().unacknowledged().is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn the_re_push_of_a_frame_whose_connection_closed_goes_to_a_live_one() {
    let sim = sim();
    let (a, conn_a) = connected(&sim).await;
    let (b, conn_b) = connected(&sim).await;
    let pushed = sim.stream().push(&chat(&sim), &admin(), "/help");
    // Whichever got it closes without acknowledging; the other one gets it again.
    let (mut got, mut other, other_id) = if sim.stream().pushes()[0].connection == conn_a {
        (a, b, conn_b)
    } else {
        (b, a, conn_a)
    };
    next_frame(&mut got, PATIENCE).await.expect("first push");
    got.close(None).await.expect("close");
    let again = next_frame(&mut other, PATIENCE).await.expect("re-push");
    assert_eq!(again["headers"]["messageId"], pushed.message_id.as_str());
    assert_eq!(again["headers"]["connectionId"], other_id.as_str());
    sim.stop().await;
}

#[tokio::test]
async fn pushes_take_turns_over_live_connections_and_wait_while_none_is_live() {
    let sim = sim();
    let waiting = sim.stream().push_callback(&json!({"msgId": "early"}));
    assert!(sim.stream().pushes().is_empty());
    let (mut a, conn_a) = connected(&sim).await;
    let early = next_frame(&mut a, PATIENCE).await.expect("the waiting frame");
    assert_eq!(early["headers"]["messageId"], waiting.as_str());
    a.send(ack(&waiting, "{}")).await.expect("ack");
    sim.stream().wait_for_acks(1, PATIENCE).await;

    let (_b, conn_b) = connected(&sim).await;
    let ids: Vec<String> = (0..4)
        .map(|i| sim.stream().push_callback(&json!({"msgId": format!("m{i}")})))
        .collect();
    let targets: Vec<String> = sim
        .stream()
        .pushes()
        .into_iter()
        .filter(|p| p.attempt == 1 && ids.contains(&p.message_id))
        .map(|p| p.connection)
        .collect();
    assert_eq!(targets.len(), 4);
    assert_eq!(targets.iter().filter(|c| **c == conn_a).count(), 2, "{targets:?}");
    assert_eq!(targets.iter().filter(|c| **c == conn_b).count(), 2, "{targets:?}");
    sim.stop().await;
}

#[tokio::test]
async fn a_ticket_is_refused_the_second_time() {
    let sim = sim();
    let (endpoint, ticket) = open(&sim).await;
    let _first = connect(&endpoint, &ticket).await.expect("first use");
    match connect(&endpoint, &ticket).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("a reused ticket must be refused, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        sim.stream().refused_handshakes(),
        vec!["unknown or already used ticket"]
    );
    assert_eq!(sim.stream().connections_opened(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn a_connection_without_a_valid_ticket_or_on_another_path_is_refused() {
    let sim = sim();
    let endpoint = sim.stream().endpoint();
    for (url_endpoint, ticket, status) in [
        (endpoint.clone(), "not-a-ticket".to_owned(), 401),
        (endpoint.clone(), String::new(), 401),
        (endpoint.replace("/connect", "/other"), open(&sim).await.1, 404),
    ] {
        match connect(&url_endpoint, &ticket).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), status),
            other => panic!(
                "{url_endpoint}?ticket={ticket} must be refused: {:?}",
                other.map(|_| ())
            ),
        }
    }
    assert_eq!(sim.stream().connections_opened(), 0);
    sim.stop().await;
}

#[tokio::test]
async fn an_expired_ticket_is_refused() {
    let sim = sim_with(SimConfig {
        stream_ticket_ttl_secs: 1,
        ..SimConfig::default()
    });
    let (endpoint, ticket) = open(&sim).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(
        connect(&endpoint, &ticket).await,
        Err(tungstenite::Error::Http(r)) if r.status().as_u16() == 401
    ));
    assert_eq!(sim.stream().refused_handshakes(), vec!["expired ticket"]);
    sim.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_is_answered_401_with_a_dingtalk_error_body() {
    let sim = sim();
    let (status, body) = post_open(&sim, &open_body(&sim, "wrong-secret")).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "Unauthorized");
    assert!(!body["message"].as_str().unwrap_or_default().is_empty(), "{body}");
    assert!(body.get("ticket").is_none());
    let calls = sim.calls(Some(api::STREAM_OPEN));
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].answer, 401);
    // The recorded body keeps who called, not the secret.
    assert_eq!(calls[0].body["clientId"], sim.config().app_key.as_str());
    assert_eq!(calls[0].body["clientSecret"], "<redacted>");
    sim.stop().await;
}

#[tokio::test]
async fn refused_opens_are_answered_in_turn_then_opens_succeed() {
    let sim = sim();
    sim.stream().refuse_opens(2, 503);
    sim.stream().refuse_opens(1, 403);
    let secret = sim.config().app_secret.clone();
    let body = open_body(&sim, &secret);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post_open(&sim, &body).await.0);
    }
    assert_eq!(statuses, vec![503, 503, 403, 200]);
    let answers: Vec<i64> = sim
        .calls(Some(api::STREAM_OPEN))
        .iter()
        .map(|c| c.answer)
        .collect();
    assert_eq!(answers, vec![503, 503, 403, 0]);
    sim.stop().await;
}

#[tokio::test]
async fn an_open_without_valid_subscriptions_is_answered_400() {
    let sim = sim();
    let secret = sim.config().app_secret.clone();
    for subs in [
        json!(null),
        json!([]),
        json!([{"type": "PUSH", "topic": BOT_TOPIC}]),
    ] {
        let mut body = open_body(&sim, &secret);
        body["subscriptions"] = subs.clone();
        let (status, answer) = post_open(&sim, &body).await;
        assert_eq!(status, 400, "{subs}: {answer}");
        assert!(answer["code"].as_str().is_some_and(|c| !c.is_empty()), "{answer}");
    }
    sim.stop().await;
}

#[tokio::test]
async fn a_system_ping_arrives_and_its_echo_is_recorded_as_an_ack() {
    let sim = sim();
    let (mut ws, conn) = connected(&sim).await;
    let ping = sim.stream().ping(&conn).expect("live connection");
    let frame = next_frame(&mut ws, PATIENCE).await.expect("the ping frame");
    assert_eq!(frame["type"], "SYSTEM");
    assert_eq!(frame["headers"]["topic"], "ping");
    assert_eq!(frame["headers"]["messageId"], ping.message_id.as_str());
    assert_eq!(frame["data"], ping.data.as_str());
    let opaque: Value = serde_json::from_str(&ping.data).expect("JSON data");
    assert!(opaque["opaque"].as_str().is_some_and(|o| !o.is_empty()));

    ws.send(ack(&ping.message_id, &ping.data)).await.expect("pong");
    let acks = sim.stream().wait_for_acks(1, PATIENCE).await;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].frame_type.as_deref(), Some("SYSTEM"));
    assert_eq!(acks[0].topic.as_deref(), Some("ping"));
    assert_eq!(acks[0].data, json!(ping.data));
    // SYSTEM frames are not re-pushed.
    assert!(sim.stream().pushes().is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn a_disconnect_frame_arrives_then_the_gateway_closes_the_connection_after_the_grace() {
    let sim = sim();
    let (mut ws, conn) = connected(&sim).await;
    let sent = Instant::now();
    assert!(sim.stream().fault(&conn, StreamFault::Disconnect));
    let frame = next_frame(&mut ws, PATIENCE).await.expect("the disconnect frame");
    assert_eq!(frame["type"], "SYSTEM");
    assert_eq!(frame["headers"]["topic"], "disconnect");
    let data: Value = serde_json::from_str(frame["data"].as_str().expect("string data")).expect("JSON");
    assert_eq!(data["reason"], "connection is expired");
    assert!(sim.stream().connections()[0].disconnecting);

    let close = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("the gateway closes");
    assert!(sent.elapsed() >= Duration::from_millis(300));
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
    assert_eq!(
        closed_reason(&sim, &conn).await,
        "closed by the gateway after disconnect"
    );
    assert!(sim.stream().connections().is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn every_connection_can_be_disconnected_at_once_and_held_open_with_disconnects_repeated() {
    let sim = sim();
    sim.stream()
        .fault_every_connection(Some(StreamFault::DisconnectAndHold));
    let (mut ws, conn) = connected(&sim).await;

    // One at once, then another each time the grace (300 ms) is over; never a close.
    let started = Instant::now();
    for _ in 0..3 {
        let frame = next_frame(&mut ws, PATIENCE).await.expect("a disconnect frame");
        assert_eq!(frame["type"], "SYSTEM");
        assert_eq!(frame["headers"]["topic"], "disconnect");
    }
    assert!(started.elapsed() >= Duration::from_millis(600));
    let live = sim.stream().connections();
    assert_eq!(live.len(), 1);
    assert!(live[0].disconnecting);
    assert!(sim.stream().closed().is_empty(), "{:?}", sim.stream().closed());

    // Every new connection gets it too, until it is turned off.
    let (mut second, _) = connected(&sim).await;
    let frame = next_frame(&mut second, PATIENCE)
        .await
        .expect("a disconnect frame");
    assert_eq!(frame["headers"]["topic"], "disconnect");
    sim.stream().fault_every_connection(None);
    let (mut third, _) = connected(&sim).await;
    assert!(next_frame(&mut third, Duration::from_millis(500)).await.is_none());
    ws.close(None).await.expect("close frame");
    assert_eq!(
        closed_reason(&sim, &conn).await,
        "the client closed the connection"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_ping_flood_writes_large_pings_back_to_back_and_then_reads_nothing() {
    let sim = sim();
    let (mut ws, conn) = connected(&sim).await;

    assert!(sim.stream().fault(
        &conn,
        StreamFault::PingFlood {
            count: 3,
            bytes: 100_000
        }
    ));
    for _ in 0..3 {
        let frame = next_frame(&mut ws, PATIENCE).await.expect("a ping");
        assert_eq!(frame["headers"]["topic"], "ping");
        let data = frame["data"].as_str().expect("string data");
        assert_eq!(data.len(), 100_000);
        let opaque: Value = serde_json::from_str(data).expect("JSON data");
        assert!(opaque["opaque"].is_string());
        ws.send(ack(frame["headers"]["messageId"].as_str().unwrap(), data))
            .await
            .expect("the answer is written");
    }
    assert_eq!(sim.stream().connections()[0].flood_sent, 3);

    // Deaf: the answers are never read, nothing more is sent.
    assert!(next_frame(&mut ws, Duration::from_millis(500)).await.is_none());
    assert!(sim.stream().acks().is_empty());
    assert_eq!(sim.stream().connections().len(), 1);
    assert!(sim.stream().fault(&conn, StreamFault::Drop));
    assert_eq!(closed_reason(&sim, &conn).await, "deaf: dropped by the simulator");
    sim.stop().await;
}

#[tokio::test]
async fn connections_open_can_hand_out_another_endpoint() {
    let sim = sim();
    let own = sim.stream().endpoint();
    sim.stream()
        .advertise_endpoint(Some("ws://stream.example.com/connect".into()));
    assert_eq!(open(&sim).await.0, "ws://stream.example.com/connect");
    sim.stream().advertise_endpoint(None);
    assert_eq!(open(&sim).await.0, own);
    sim.stop().await;
}

#[tokio::test]
async fn a_zombie_connection_answers_no_ping_and_swallows_pushes() {
    let sim = sim();
    let (mut ws, conn) = connected(&sim).await;
    // Alive first: a WebSocket ping is answered.
    ws.send(Message::Ping(b"alive?".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Ok(Message::Pong(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .expect("a pong while alive");
    assert_eq!(&pong[..], b"alive?");

    assert!(sim.stream().fault(&conn, StreamFault::Zombie));
    ws.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .expect("ping");
    let pushed = sim.stream().push_callback(&json!({"msgId": "lost"}));
    let heard = tokio::time::timeout(Duration::from_millis(700), ws.next()).await;
    assert!(heard.is_err(), "a zombie sends nothing, got {heard:?}");
    let live = sim.stream().connections();
    assert_eq!(live.len(), 1);
    assert!(live[0].zombie);
    let pushes = sim.stream().pushes();
    assert!(
        pushes.iter().all(|p| p.message_id == pushed && !p.delivered),
        "{pushes:?}"
    );
    assert_eq!(sim.stream().ws_pings().len(), 1, "the zombie read no ping");

    // The client gives up; the gateway notices the closed TCP connection.
    drop(ws);
    assert_eq!(
        closed_reason(&sim, &conn).await,
        "zombie: the client closed the connection"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_dropped_connection_ends_without_a_close_frame() {
    let sim = sim();
    let (mut ws, conn) = connected(&sim).await;
    assert!(sim.stream().fault(&conn, StreamFault::Drop));
    let end = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("the connection ends");
    assert!(
        matches!(end, None | Some(Err(_))),
        "expected a broken connection, got {end:?}"
    );
    assert_eq!(closed_reason(&sim, &conn).await, "dropped by the simulator");
    assert!(sim.stream().connections().is_empty());
    assert!(sim.stream().close_frames().is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn client_pings_pongs_and_close_frames_are_recorded() {
    let sim = sim();
    let (mut ws, conn) = connected(&sim).await;
    assert!(sim.stream().ws_ping(&conn, b"gateway"));
    ws.send(Message::Ping(b"client".to_vec().into()))
        .await
        .expect("ping");
    // Reading the gateway's ping queues the pong; flushing sends it.
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Ok(Message::Ping(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .expect("the gateway's ping");
    ws.flush().await.expect("pong");
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    let closes = tokio::time::timeout(PATIENCE, async {
        loop {
            let c = sim.stream().close_frames();
            if !c.is_empty() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the close frame is recorded");
    assert_eq!(closes[0].connection, conn);
    assert_eq!(closes[0].code, Some(1001));
    assert_eq!(closes[0].reason, "bye");
    let pings = sim.stream().ws_pings();
    assert_eq!(pings.len(), 1);
    assert_eq!(pings[0].payload, b"client");
    let pongs = sim.stream().ws_pongs();
    assert_eq!(pongs.len(), 1);
    assert_eq!(pongs[0].payload, b"gateway");
    sim.stop().await;
}

#[tokio::test]
async fn a_raw_frame_is_sent_as_it_is_and_not_tracked() {
    let sim = sim();
    let (mut ws, conn) = connected(&sim).await;
    assert_eq!(sim.stream().send_raw("{not json").as_deref(), Some(conn.as_str()));
    let got = tokio::time::timeout(PATIENCE, ws.next()).await.expect("a frame");
    match got {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "{not json"),
        other => panic!("expected the raw text, got {other:?}"),
    }
    assert!(sim.stream().pushes().is_empty());
    assert!(sim.stream().unacknowledged().is_empty());
    ws.send(Message::text("garbage from the client"))
        .await
        .expect("send");
    let received = tokio::time::timeout(PATIENCE, async {
        loop {
            let r = sim.stream().received();
            if !r.is_empty() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("recorded");
    assert_eq!(received[0].text, "garbage from the client");
    assert!(sim.stream().acks().is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn an_ack_records_the_time_since_its_push_and_taken_records_are_gone() {
    let sim = sim();
    let (mut ws, _) = connected(&sim).await;
    let chat = chat(&sim);
    let mut counter = sim.stream().ack_counter();
    assert_eq!(*counter.borrow_and_update(), 0);
    let first = sim.stream().push(&chat, &admin(), "/help");
    next_frame(&mut ws, PATIENCE).await.expect("the first frame");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    ws.send(ack(&first.message_id, "{}")).await.expect("send ACK");
    tokio::time::timeout(PATIENCE, counter.changed())
        .await
        .expect("the counter moves on the ACK")
        .expect("the gateway is alive");
    assert_eq!(*counter.borrow_and_update(), 1);
    // Measured on the monotonic clock from the write: at least the 30 ms the client waited
    // after reading the frame, at most the whole time since it was written.
    let acks = sim.stream().take_acks();
    assert_eq!(acks.len(), 1);
    let us = acks[0].after_push_us.expect("a pushed frame's ACK is timed");
    assert!(us >= 30_000, "{us} µs");
    assert!(u128::from(us) <= t0.elapsed().as_micros() + 100_000, "{us} µs");
    assert!(sim.stream().acks().is_empty());
    assert_eq!(sim.stream().take_pushes().len(), 1);
    assert!(sim.stream().pushes().is_empty());

    // A second ACK of the same frame is recorded, untimed, and counted.
    ws.send(ack(&first.message_id, "{}")).await.expect("send ACK");
    let second = sim.stream().push(&chat, &admin(), "/help");
    next_frame(&mut ws, PATIENCE).await.expect("the second frame");
    ws.send(ack(&second.message_id, "{}")).await.expect("send ACK");
    let acks = sim.stream().wait_for_acks(2, PATIENCE).await;
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0].after_push_us, None);
    assert!(acks[1].after_push_us.is_some());
    assert_eq!(*sim.stream().ack_counter().borrow(), 3);
    let pushes = sim.stream().pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].message_id, second.message_id);
    sim.stop().await;
}
