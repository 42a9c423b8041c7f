//! Stream mode against the simulator's gateway: ACKs, dedupe across ingresses, the gateway's
//! faults (disconnect, dropped TCP, zombie, refused opens), several connections, a crash,
//! SIGTERM, and a CONNECT proxy; and a hostile gateway or proxy (a `disconnect` on every
//! connection, a flood of large pings, an unencrypted endpoint, a bad CONNECT answer).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dingops::config::Mode;
use dingops::ingress::stream::connection::MAX_PING_ECHO_BYTES;
use dingops::ingress::stream::{MAX_DRAINING, REPLACE_AT_ONCE_AFTER};
use dingtalk_sim::chat::{new_msg_id, text_message};
use dingtalk_sim::stream::{BOT_TOPIC, StreamFault};
use dingtalk_sim::{Fault, api};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

/// Long enough for anything on loopback; a test normally finishes far sooner.
const PATIENCE: Duration = Duration::from_secs(20);

fn lock_message(app: &TestApp) -> Value {
    text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/lock-dm")
}

fn switch_answers(app: &TestApp) -> Vec<i64> {
    app.sim
        .calls(Some(api::FRIEND_SWITCH))
        .iter()
        .map(|c| c.answer)
        .collect()
}

fn connection_ids(app: &TestApp) -> Vec<String> {
    app.sim.stream().connections().into_iter().map(|c| c.id).collect()
}

#[tokio::test]
async fn a_robot_frame_is_acknowledged_before_the_dingtalk_call_finishes() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    app.sim.inject(api::FRIEND_SWITCH, Fault::Delay { ms: 1500 });

    let ack = push_and_ack(&app.sim, &lock_message(&app)).await;

    assert_eq!(ack.code, 200);
    assert_eq!(ack.data, json!("{\"response\":null}"));
    assert_eq!(ack.headers["contentType"], json!("application/json"));
    assert!(app.sim.replies().is_empty(), "the ACK waited for the command");
    assert!(!app.sim.group(GROUP).unwrap().dm_prohibited);
    let reply = app.replies(1).await.pop().unwrap();
    assert_reply(&reply, "✅", "forbidden");
    assert_eq!(switch_answers(&app), vec![0]);
}

#[tokio::test]
async fn a_frame_repeated_with_the_same_msg_id_is_acknowledged_and_not_run_again() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    let body = lock_message(&app);

    let first = push_and_ack(&app.sim, &body).await;
    app.replies(1).await;
    let second = push_and_ack(&app.sim, &body).await;

    assert_eq!((first.code, second.code), (200, 200));
    assert_ne!(first.message_id, second.message_id);
    app.replies(1).await;
    assert_eq!(switch_answers(&app), vec![0]);
    assert_eq!(app.ledger_rows(), 1);
}

#[tokio::test]
async fn in_both_mode_a_message_arriving_over_http_and_stream_runs_once() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Both, 1, |_| {}).await;
    let body = lock_message(&app);

    let (status, _) = app.post_signed(&body).await;
    let ack = push_and_ack(&app.sim, &body).await;

    assert_eq!((status, ack.code), (200, 200));
    app.replies(1).await;
    assert_eq!(switch_answers(&app), vec![0]);
    assert_eq!(app.ledger_rows(), 1);
}

#[tokio::test]
async fn in_stream_mode_the_callback_route_answers_404_and_the_probes_still_serve() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    let (status, _) = app.post_signed(&lock_message(&app)).await;
    assert_eq!(status, 404);
    assert_eq!(readyz(&app.address).await, 200);
    let metrics = reqwest::get(format!("{}/metrics", app.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("dingops_stream_connections 1"), "{metrics}");
    assert_eq!(app.ledger_rows(), 0);
}

#[tokio::test]
async fn a_robot_frame_with_malformed_data_gets_ack_400_and_nothing_is_recorded() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    let gateway = app.sim.stream();
    let mut no_msg_id = lock_message(&app);
    no_msg_id.as_object_mut().unwrap().remove("msgId");

    for data in [
        "not json".to_owned(),
        "{\"msgId\": ".to_owned(),
        no_msg_id.to_string(),
    ] {
        let message_id = gateway.push_frame("CALLBACK", BOT_TOPIC, data.clone());
        assert_eq!(ack_of(&app.sim, &message_id).await.code, 400, "{data}");
    }
    assert_eq!(app.ledger_rows(), 0);
    assert!(app.sim.replies().is_empty());
}

#[tokio::test]
async fn a_frame_of_an_unknown_topic_gets_ack_404() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    let gateway = app.sim.stream();
    for (kind, topic) in [
        ("CALLBACK", "/v1.0/card/instances/callback"),
        ("EVENT", "chat_update_title"),
    ] {
        let message_id = gateway.push_frame(kind, topic, "{}".into());
        assert_eq!(ack_of(&app.sim, &message_id).await.code, 404, "{kind} {topic}");
    }
    assert_eq!(app.ledger_rows(), 0);
}

#[tokio::test]
async fn a_system_ping_is_answered_with_its_data() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    let connection = connection_ids(&app).remove(0);

    let ping = app
        .sim
        .stream()
        .ping(&connection)
        .expect("the connection is live");
    let ack = ack_of(&app.sim, &ping.message_id).await;

    assert_eq!(ack.code, 200);
    assert_eq!(ack.connection, connection);
    assert_eq!(ack.data, Value::String(ping.data));
}

#[tokio::test]
async fn a_websocket_ping_from_the_gateway_is_answered_with_a_pong() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    let connection = connection_ids(&app).remove(0);

    assert!(app.sim.stream().ws_ping(&connection, b"are-you-there"));

    let gateway = app.sim.stream();
    let answered = eventually(PATIENCE, || {
        gateway
            .ws_pongs()
            .iter()
            .any(|p| p.connection == connection && p.payload == b"are-you-there")
    })
    .await;
    assert!(answered, "{:?}", gateway.ws_pongs());
}

#[tokio::test]
async fn after_a_disconnect_the_replacement_opens_first_and_a_message_in_the_window_is_answered_once() {
    let app = spawn_stream_app(stream_sim(2000), Mode::Stream, 1, |_| {}).await;
    let gateway = app.sim.stream();
    let old = connection_ids(&app).remove(0);

    assert!(gateway.fault(&old, StreamFault::Disconnect));
    let body = lock_message(&app);
    let message_id = gateway.push_callback(&body);

    // The replacement is live while the old connection still is.
    let both = gateway.wait_for_connections(2, PATIENCE).await;
    assert_eq!(both.len(), 2, "no replacement while the old one was open");
    assert!(both.iter().any(|c| c.id == old));
    assert_eq!(ack_of(&app.sim, &message_id).await.code, 200);
    app.replies(1).await;
    // DingTalk closed the old one; dingops did not cut it short.
    assert!(eventually(PATIENCE, || gateway.closed().iter().any(|c| c.id == old)).await);
    let closed = gateway.closed();
    let reason = &closed.iter().find(|c| c.id == old).unwrap().reason;
    assert_eq!(reason, "closed by the gateway after disconnect");
    assert_eq!(gateway.connections().len(), 1);
    assert_eq!(switch_answers(&app), vec![0]);
    assert_eq!(readyz(&app.address).await, 200);
}

#[tokio::test]
async fn a_connection_that_lived_past_the_threshold_is_replaced_at_once_after_a_disconnect() {
    let app = spawn_stream_app(stream_sim(2000), Mode::Stream, 1, |_| {}).await;
    let gateway = app.sim.stream();
    let old = gateway.connections().remove(0);
    // Old enough by dingops' clock too, which started a moment after the gateway's.
    let age = REPLACE_AT_ONCE_AFTER + Duration::from_millis(200);
    let opened_for = Duration::from_millis(dingops::clock::now_ms().saturating_sub(old.opened_at_ms));
    tokio::time::sleep(age.saturating_sub(opened_for)).await;

    let at = dingops::clock::now_ms();
    assert!(gateway.fault(&old.id, StreamFault::Disconnect));
    let both = gateway.wait_for_connections(2, PATIENCE).await;

    assert_eq!(both.len(), 2, "no replacement while the old one was open");
    let new = both.iter().find(|c| c.id != old.id).unwrap();
    // At once: well before the backoff's floor (750 ms at the least).
    assert!(
        new.opened_at_ms.saturating_sub(at) < 500,
        "the replacement came {} ms after the disconnect",
        new.opened_at_ms.saturating_sub(at)
    );
    assert!(eventually(PATIENCE, || gateway.closed().iter().any(|c| c.id == old.id)).await);
    let closed = gateway.closed();
    let reason = &closed.iter().find(|c| c.id == old.id).unwrap().reason;
    assert_eq!(reason, "closed by the gateway after disconnect");
    assert_eq!(gateway.connections().len(), 1);
}

/// The real binary in Stream mode against `sim`: the process (killed when dropped), its
/// address, and the directory of its ledger (kept while it runs).
fn spawn_stream_binary(sim: &dingtalk_sim::Simulator) -> (Reaper, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = spawn_binary(
        sim,
        port,
        &dir.path().join("l.db"),
        &[("DINGOPS_MODE", "stream".into())],
    );
    (Reaper(child), format!("http://127.0.0.1:{port}"), dir)
}

/// Peaks seen while sampling the dingops process `pid` and the gateway.
#[derive(Debug, Default)]
struct Peaks {
    gateway_live: usize,
    fds: usize,
}

impl Peaks {
    fn sample(&mut self, pid: u32, sim: &dingtalk_sim::Simulator) {
        self.gateway_live = self.gateway_live.max(sim.stream().connections().len());
        self.fds = self.fds.max(open_fds(pid));
    }
}

/// dingops' largest resident set so far (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmHWM:").expect("dingops is running") as f64 / 1024.0
}

#[tokio::test]
async fn a_gateway_that_disconnects_every_connection_at_once_and_never_closes_one_gets_a_few_dials_and_bounded_resources()
 {
    let sim = stream_sim(1000);
    // `disconnect` right after every handshake, again every second, never a close.
    sim.stream()
        .fault_every_connection(Some(StreamFault::DisconnectAndHold));
    let (child, address, _dir) = spawn_stream_binary(&sim);
    let pid = child.0.id();
    assert!(!sim.stream().wait_for_connections(1, PATIENCE).await.is_empty());

    let mut peaks = Peaks::default();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        peaks.sample(pid, &sim);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live_metric = metric_at(&address, "dingops_stream_connections").await;
    let rss = peak_rss_mib(pid);
    drop(child);

    // The first dial, then the backoff: 1 s, 2 s, 4 s (each up to a quarter shorter).
    let opens = sim.calls(Some(api::STREAM_OPEN)).len();
    eprintln!(
        "10 s of disconnects: {opens} opens, at most {} connections open at once, {} descriptors, peak RSS {rss:.1} MiB",
        peaks.gateway_live, peaks.fds
    );
    assert!((3..=6).contains(&opens), "{opens} connections/open calls in 10 s");
    assert!(
        peaks.gateway_live <= 1 + MAX_DRAINING,
        "{} connections open at once",
        peaks.gateway_live
    );
    assert!(
        live_metric.is_some_and(|n| n <= (1 + MAX_DRAINING) as f64),
        "{live_metric:?}"
    );
    assert!(rss <= 64.0, "dingops peaked at {rss:.1} MiB");
    assert!(peaks.fds <= 64, "dingops had {} descriptors open", peaks.fds);
    // The oldest replaced connection was closed by dingops, with a close frame.
    let replaced = sim
        .stream()
        .close_frames()
        .into_iter()
        .filter(|c| c.code == Some(1000) && c.reason == "replaced after disconnect")
        .count();
    assert!(replaced >= 1, "{:?}", sim.stream().close_frames());
}

#[tokio::test]
async fn a_gateway_flooding_megabyte_pings_and_never_reading_the_answers_leaves_dingops_under_64_mib() {
    let sim = stream_sim(1000);
    let (child, address, _dir) = spawn_stream_binary(&sim);
    let pid = child.0.id();
    let gateway = sim.stream();
    let live = gateway.wait_for_connections(1, PATIENCE).await;
    assert_eq!(live.len(), 1);
    // Just under the 1 MiB a frame may have, with its headers.
    let flood = StreamFault::PingFlood {
        count: 300,
        bytes: (1 << 20) - 4096,
    };

    assert!(gateway.fault(&live[0].id, flood));
    // Until the gateway wrote all, or could write no more for a second: dingops stops
    // reading while what it answered is not read.
    let flood_sent = || {
        gateway
            .connections()
            .iter()
            .find(|c| c.id == live[0].id)
            .map_or(0, |c| c.flood_sent)
    };
    let (mut sent, mut progress_at) = (0, std::time::Instant::now());
    while sent < 300 && progress_at.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if flood_sent() > sent {
            (sent, progress_at) = (flood_sent(), std::time::Instant::now());
        }
    }
    let rss = peak_rss_mib(pid);
    let refused = metric_at(&address, "dingops_stream_pings_refused_total").await;
    let answered = metric_at(&address, r#"dingops_stream_acks_total{code="400"}"#).await;
    drop(child);

    eprintln!("ping flood: the gateway wrote {sent}, dingops refused {refused:?}, peak RSS {rss:.1} MiB");
    assert!(rss <= 64.0, "dingops peaked at {rss:.1} MiB");
    // It took at least a full outbox of them (256 answers) before it waited.
    assert!(sent >= 256, "the gateway wrote {sent} pings");
    assert!(refused.is_some_and(|n| n >= 256.0), "{refused:?}");
    // Each one refused was answered 400 (counted just after; read after it).
    assert!(answered >= refused, "{answered:?} answered of {refused:?}");
}

#[tokio::test]
async fn a_system_ping_is_echoed_up_to_4_kib_of_data_and_answered_400_beyond() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    let connection = connection_ids(&app).remove(0);
    let gateway = app.sim.stream();
    let opaque = |len: usize| {
        let data = json!({ "opaque": "x".repeat(len - r#"{"opaque":""}"#.len()) }).to_string();
        assert_eq!(data.len(), len);
        data
    };

    let fits = gateway
        .ping_with(&connection, &opaque(MAX_PING_ECHO_BYTES))
        .unwrap();
    let over = gateway
        .ping_with(&connection, &opaque(MAX_PING_ECHO_BYTES + 1))
        .unwrap();

    let ack = ack_of(&app.sim, &fits.message_id).await;
    assert_eq!((ack.code, ack.data), (200, Value::String(fits.data)));
    let ack = ack_of(&app.sim, &over.message_id).await;
    assert_eq!((ack.code, ack.data), (400, json!("{\"response\":null}")));
    assert_eq!(
        metric_at(&app.address, "dingops_stream_pings_refused_total").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_dropped_tcp_connection_is_reconnected_and_messages_flow_again() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    let gateway = app.sim.stream();
    let old = connection_ids(&app).remove(0);

    assert!(gateway.fault(&old, StreamFault::Drop));

    let replaced = eventually(PATIENCE, || gateway.connections().iter().any(|c| c.id != old)).await;
    assert!(replaced, "no new connection after the drop");
    assert_eq!(gateway.connections_opened(), 2);
    let ack = push_and_ack(&app.sim, &lock_message(&app)).await;
    assert_eq!(ack.code, 200);
    app.replies(1).await;
}

#[tokio::test]
async fn a_zombie_connection_is_found_by_the_keepalive_and_replaced() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |s| {
        s.stream.keepalive_secs = 2;
    })
    .await;
    let gateway = app.sim.stream();
    let old = connection_ids(&app).remove(0);

    assert!(gateway.fault(&old, StreamFault::Zombie));
    // Swallowed by the zombie, then pushed again once a live connection takes it.
    let message_id = gateway.push_callback(&lock_message(&app));

    let replaced = eventually(PATIENCE, || {
        gateway.connections().iter().any(|c| c.id != old && !c.zombie)
    })
    .await;
    assert!(replaced, "the zombie was not replaced");
    let ack = ack_of(&app.sim, &message_id).await;
    assert_eq!(ack.code, 200);
    assert_ne!(ack.connection, old);
    app.replies(1).await;
    assert_eq!(switch_answers(&app), vec![0]);
}

#[tokio::test]
async fn opens_refused_twice_are_retried_on_backoff_until_a_connection_opens() {
    let sim = stream_sim(1000);
    sim.stream().refuse_opens(2, 503);

    let app = spawn_stream_app(sim, Mode::Stream, 1, |_| {}).await;

    let answers: Vec<i64> = app
        .sim
        .calls(Some(api::STREAM_OPEN))
        .iter()
        .map(|c| c.answer)
        .collect();
    assert_eq!(answers, vec![503, 503, 0]);
    assert_eq!(readyz(&app.address).await, 200);
    let ack = push_and_ack(&app.sim, &lock_message(&app)).await;
    assert_eq!(ack.code, 200);
}

#[tokio::test]
async fn every_open_sends_the_credentials_once_and_a_fresh_ticket_is_used_per_connection() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 1, |_| {}).await;
    let gateway = app.sim.stream();
    let first = gateway.connections().remove(0);
    assert!(gateway.fault(&first.id, StreamFault::Drop));
    assert!(
        eventually(PATIENCE, || gateway
            .connections()
            .iter()
            .any(|c| c.id != first.id))
        .await
    );

    let opens = app.sim.calls(Some(api::STREAM_OPEN));
    assert_eq!(opens.len(), 2);
    let body = &opens[0].body;
    assert_eq!(body["clientId"], json!(app.sim.config().app_key));
    assert_eq!(
        body["clientSecret"],
        json!("<redacted>"),
        "the simulator hides what it checked"
    );
    assert_eq!(
        body["subscriptions"],
        json!([{"type": "CALLBACK", "topic": BOT_TOPIC}])
    );
    assert!(body["ua"].as_str().unwrap().starts_with("dingops/"));
    let second = gateway.connections().remove(0);
    assert_ne!(first.ticket, second.ticket);
}

#[tokio::test]
async fn a_wrong_secret_keeps_dingops_not_ready_and_the_log_names_the_keys_to_check() {
    let sim = stream_sim(1000);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let wrong = "wr0ng-s3cret-value";
    let mut child = spawn_binary_logging_to(
        &sim,
        port,
        &dir.path().join("l.db"),
        &[
            ("DINGOPS_MODE", "stream".into()),
            ("DINGOPS_APP_SECRET", wrong.into()),
        ],
        std::process::Stdio::piped(),
    );
    wait_healthy(port).await;
    wait_for_calls(&sim, "a refused open", |c| {
        c.iter().any(|c| c.api == api::STREAM_OPEN && c.answer == 401)
    })
    .await;

    assert_eq!(readyz(&format!("http://127.0.0.1:{port}")).await, 503);
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    child.wait().unwrap();
    assert!(
        stderr.contains("`app_key`") && stderr.contains("`app_secret`"),
        "{stderr}"
    );
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(!stderr.contains(wrong), "the secret was logged: {stderr}");
    assert!(sim.stream().connections().is_empty());
}

#[tokio::test]
async fn two_connections_share_twenty_messages_and_each_is_answered_once() {
    let app = spawn_stream_app(stream_sim(1000), Mode::Stream, 2, |_| {}).await;
    let chat = app.chat(OTHER);
    let mut message_ids = Vec::new();
    for _ in 0..20 {
        let body = text_message(&new_msg_id(), &chat, &member(), "/help");
        message_ids.push(app.sim.stream().push_callback(&body));
    }

    let replies = app.replies(20).await;
    assert!(replies.iter().all(|r| r.content.starts_with("ℹ️")));
    for id in &message_ids {
        assert_eq!(ack_of(&app.sim, id).await.code, 200);
    }
    let acks = app.sim.stream().acks();
    let used: std::collections::BTreeSet<&str> = acks.iter().map(|a| a.connection.as_str()).collect();
    assert_eq!(used.len(), 2, "both connections took messages");
    assert_eq!(app.ledger_rows(), 20);
}

#[tokio::test]
async fn a_binary_killed_mid_command_in_stream_mode_runs_it_after_the_restart() {
    let sim = stream_sim(1000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let port = free_port();
    let stream_mode = [("DINGOPS_MODE", "stream".to_owned())];
    let mut first = spawn_binary(&sim, port, &db, &stream_mode);
    assert_eq!(sim.stream().wait_for_connections(1, PATIENCE).await.len(), 1);
    sim.inject(api::FRIEND_SWITCH, Fault::Hang);
    let body = text_message(&new_msg_id(), &session_chat(&sim, GROUP), &admin(), "/lock-dm");
    let message_id = sim.stream().push_callback(&body);
    assert_eq!(ack_of(&sim, &message_id).await.code, 200);
    wait_for_calls(&sim, "the hang", |c| {
        c.iter().any(|c| c.api == api::FRIEND_SWITCH && c.answer == -3)
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(sim.replies().is_empty());

    let mut second = spawn_binary(&sim, port, &db, &stream_mode);
    let replies = sim.wait_for_replies(1, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.kill().unwrap();
    second.wait().unwrap();

    assert_eq!(replies.len(), 1);
    assert_eq!(sim.replies().len(), 1);
    assert_reply(&replies[0], "✅", "");
    let answers: Vec<i64> = sim
        .calls(Some(api::FRIEND_SWITCH))
        .iter()
        .map(|c| c.answer)
        .collect();
    assert_eq!(answers, vec![-3, 0]);
}

#[tokio::test]
async fn sigterm_closes_the_stream_connections_with_a_close_frame() {
    let sim = stream_sim(1000);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_binary(
        &sim,
        port,
        &dir.path().join("l.db"),
        &[
            ("DINGOPS_MODE", "stream".into()),
            ("DINGOPS_STREAM_CONNECTIONS", "2".into()),
        ],
    );
    let live = sim.stream().wait_for_connections(2, PATIENCE).await;
    assert_eq!(live.len(), 2);

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();

    assert!(status.success(), "{status:?}");
    let closes = sim.stream().close_frames();
    for connection in &live {
        let close = closes.iter().find(|c| c.connection == connection.id);
        assert_eq!(close.and_then(|c| c.code), Some(1000), "{closes:?}");
    }
    assert!(sim.stream().connections().is_empty());
}

/// A small HTTP proxy: CONNECT tunnels, and plain requests in absolute form forwarded to
/// their host; records `host:port` of each connection it carried.
async fn start_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    start_proxy_answering("HTTP/1.1 200 Connection established\r\n\r\n").await
}

/// [`start_proxy`] answering each CONNECT with `answer` (a whole head), and carrying the
/// tunnel whatever it said: a client that takes a bad answer for a 200 gets through.
async fn start_proxy_answering(answer: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(carry(client, log.clone(), answer));
        }
    });
    (addr, seen)
}

async fn carry(mut client: TcpStream, seen: Arc<Mutex<Vec<String>>>, connect_answer: &'static str) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let Ok(b) = client.read_u8().await else {
            return;
        };
        head.push(b);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let authority = if method == "CONNECT" {
        target.to_owned()
    } else {
        target
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_owned()
    };
    seen.lock().unwrap().push(format!("{method} {authority}"));
    let Ok(mut upstream) = TcpStream::connect(&authority).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if method == "CONNECT" {
        let _ = client.write_all(connect_answer.as_bytes()).await;
    } else {
        // Forwarded as it came; the simulator reads absolute-form targets.
        let _ = upstream.write_all(&head).await;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[tokio::test]
async fn through_a_connect_proxy_the_stream_and_the_api_calls_work_and_the_proxy_carried_them() {
    let (proxy, seen) = start_proxy().await;
    let sim = stream_sim(1000);
    let gateway_addr = sim.stream().addr().to_string();
    let app = spawn_stream_app(sim, Mode::Stream, 1, move |s| {
        s.dingtalk.proxy = Some(dingops::config::ProxyAddr::parse(&format!("http://{proxy}")).unwrap());
    })
    .await;

    let ack = push_and_ack(&app.sim, &lock_message(&app)).await;
    assert_eq!(ack.code, 200);
    assert_reply(&app.replies(1).await[0], "✅", "forbidden");

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&format!("CONNECT {gateway_addr}")),
        "the WebSocket did not go through the proxy: {seen:?}"
    );
    let sim_host = app.sim.host_port().to_owned();
    assert!(
        seen.iter().any(|s| s.ends_with(&sim_host)),
        "the API calls did not go through the proxy: {seen:?}"
    );
}

#[test]
fn dingops_demo_in_stream_mode_exits_zero_and_prints_the_conversation() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dingops"))
        .args(["demo", "--mode", "stream"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Stream mode: connected to ws://"), "{stdout}");
    assert!(stdout.contains("Summary: 23 of 23 steps behaved."), "{stdout}");
    assert_demo_buttons(&stdout);
    assert!(stdout.contains("dingops answered ACK code 400"), "{stdout}");
    assert!(!stdout.contains("✘"), "{stdout}");
}

/// The output of `dingops check` in Stream mode against `sim`, its ledger in `dir`, with
/// `extra` in its environment over the defaults.
async fn check_stream(
    sim: &dingtalk_sim::Simulator,
    dir: &std::path::Path,
    extra: Vec<(&'static str, String)>,
) -> std::process::Output {
    let mut env = sim_env(sim);
    env.extend([
        ("DINGOPS_MODE", "stream".into()),
        ("DINGOPS_ADMINS", "admin01".into()),
        ("DINGOPS_DATABASE", dir.join("l.db").display().to_string()),
    ]);
    env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    env.extend(extra);
    // The simulator runs on this test's runtime: wait for the binary off it.
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dingops"))
            .arg("check")
            .env_clear()
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The `Stream connection` line of a `dingops check` output, and the whole output.
fn stream_check_line(out: &std::process::Output) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("Stream connection"))
        .unwrap_or_default()
        .to_owned();
    (line, text)
}

#[tokio::test]
async fn check_in_stream_mode_opens_a_stream_connection_and_names_a_refusal() {
    let sim = stream_sim(1000);
    let dir = tempfile::tempdir().unwrap();
    let check = |secret: String| check_stream(&sim, dir.path(), vec![("DINGOPS_APP_SECRET", secret)]);

    let good = check(sim.config().app_secret.clone()).await;
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{text}");
    assert!(text.contains("✅ Stream connection"), "{text}");
    assert!(
        eventually(PATIENCE, || sim.stream().closed().len() == 1).await,
        "check left its connection open"
    );

    let bad = check("not-the-secret".into()).await;
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{text}");
    assert!(text.contains("❌ Stream connection"), "{text}");
    assert!(text.contains("`app_secret`"), "{text}");
    assert!(!text.contains("not-the-secret"), "{text}");
}

#[tokio::test]
async fn stream_logs_at_trace_level_never_contain_the_secret_the_ticket_or_the_session_webhook() {
    let sim = stream_sim(1000);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_binary_logging_to(
        &sim,
        port,
        &dir.path().join("l.db"),
        &[("DINGOPS_MODE", "stream".into()), ("RUST_LOG", "trace".into())],
        std::process::Stdio::piped(),
    );
    // Drain the log as it comes, so a full pipe cannot stall the binary.
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    });
    let live = sim.stream().wait_for_connections(1, PATIENCE).await;
    assert_eq!(live.len(), 1);
    let chat = session_chat(&sim, GROUP);
    let body = text_message(&new_msg_id(), &chat, &admin(), "/lock-dm");
    let message_id = sim.stream().push_callback(&body);
    assert_eq!(ack_of(&sim, &message_id).await.code, 200);
    sim.wait_for_replies(1, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let logs = reader.join().unwrap();

    assert!(logs.contains("Stream connection live"), "{logs}");
    let session = chat.session_webhook.split("session=").nth(1).unwrap();
    for (what, secret) in [
        ("secret", sim.config().app_secret.as_str()),
        ("ticket", live[0].ticket.as_str()),
        ("session", session),
    ] {
        assert!(!logs.contains(secret), "the {what} was logged");
    }
}

#[tokio::test]
async fn a_proxy_answering_connect_with_anything_but_an_http_1_x_2xx_status_line_is_refused_with_the_reason()
{
    let sim = stream_sim(1000);
    let dir = tempfile::tempdir().unwrap();
    let gateway_addr = sim.stream().addr().to_string();
    let not_http = "proxy: the answer does not start with an HTTP/1.x status line";
    for (answer, reason) in [
        ("garbageHTTP/1.1 200 Connection established\r\n\r\n", not_http),
        ("FOO 200 OK\r\n\r\n", not_http),
        ("HTTP/2 200\r\n\r\n", not_http),
        (
            "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
            "proxy refused the tunnel with HTTP 407",
        ),
    ] {
        let (proxy, seen) = start_proxy_answering(answer).await;

        let out = check_stream(
            &sim,
            dir.path(),
            vec![("DINGOPS_PROXY", format!("http://{proxy}"))],
        )
        .await;

        let (line, text) = stream_check_line(&out);
        assert!(line.starts_with("❌"), "{answer:?} was taken: {text}");
        assert!(line.contains(reason), "{answer:?}: {text}");
        let seen = seen.lock().unwrap().clone();
        assert!(seen.contains(&format!("CONNECT {gateway_addr}")), "{seen:?}");
    }
    assert_eq!(sim.stream().connections_opened(), 0);
}

/// Whether `text` holds an 8-4-4-4-12 hex token, the shape of the simulator's tickets.
fn holds_uuid(text: &str) -> bool {
    text.as_bytes().windows(36).any(|w| {
        w.iter().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
    })
}

#[tokio::test]
async fn an_unencrypted_endpoint_off_loopback_is_refused_before_any_connection_and_named_without_the_ticket()
{
    // Through a recording proxy, so that any connection attempt would show.
    let (proxy, seen) = start_proxy().await;
    let sim = stream_sim(1000);
    let port = sim.stream().addr().port();
    sim.stream()
        .advertise_endpoint(Some(format!("ws://stream.example.com:{port}/connect")));
    let app = spawn_app_with(Options {
        sim: Some(sim.clone()),
        settings: Some(Box::new(move |s| {
            s.stream.mode = Mode::Stream;
            s.dingtalk.proxy = Some(dingops::config::ProxyAddr::parse(&format!("http://{proxy}")).unwrap());
        })),
        ..Options::default()
    })
    .await;
    let refused = r#"dingops_stream_reconnects_total{reason="insecure_endpoint"}"#;
    let mut counted = None;
    for _ in 0..200 {
        counted = metric_at(&app.address, refused).await;
        // The series is exported at 0 from the start: wait for the count.
        if counted.is_some_and(|n| n > 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;

    assert_eq!(counted, Some(1.0));
    assert!(!sim.calls(Some(api::STREAM_OPEN)).is_empty());
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|s| s.starts_with("CONNECT")), "{seen:?}");
    assert_eq!(sim.stream().connections_opened(), 0);

    let dir = tempfile::tempdir().unwrap();
    let (line, text) = stream_check_line(&check_stream(&sim, dir.path(), vec![]).await);
    assert!(line.starts_with("❌"), "{text}");
    assert!(
        line.contains("unencrypted endpoint ws://stream.example.com: refused"),
        "{text}"
    );
    assert!(!holds_uuid(&text) && !text.contains("ticket="), "{text}");

    // On loopback ws:// is fine, by name too.
    sim.stream()
        .advertise_endpoint(Some(format!("ws://localhost:{port}/connect")));
    let (line, text) = stream_check_line(&check_stream(&sim, dir.path(), vec![]).await);
    assert!(line.starts_with("✅"), "{text}");
    assert_eq!(sim.stream().connections_opened(), 1);
}
