//! Connections that stall or speak malformed HTTP: a stalled request body is closed while
//! valid callbacks are still answered under a low file limit, and malformed HTTP is counted
//! and logged at debug level only.

use std::process::Stdio;
use std::time::Duration;

use dingtalk_sim::chat::{CallbackSender, new_msg_id, text_message};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

/// A connection that sent a complete head for `POST /callback` with a forged `sign` and a
/// `Content-Length` larger than the part of the body it sends, and then stalls.
async fn stalled_body(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\ntimestamp: {}\r\nsign: Zm9yZ2Vk\r\n\
         content-type: application/json\r\ncontent-length: 10000\r\n\r\n{{\"msgId\":",
        dingops::clock::now_ms()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn stalled_request_bodies_are_closed_and_valid_callbacks_still_answered_under_a_low_file_limit() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // More stalled connections than the process may open files.
    let child = spawn_binary_under_shell(
        "ulimit -n 256",
        &sim,
        port,
        &dir.path().join("l.db"),
        &[
            ("DINGOPS_REQUEST_TIMEOUT_MS", "1000".into()),
            ("DINGOPS_SHUTDOWN_GRACE_SECS", "10".into()),
        ],
        Stdio::null(),
    );
    let mut child = Reaper(child);
    wait_healthy(port).await;

    // The test holds these open until it ends: they never go away on their own.
    let mut stalled = Vec::new();
    for _ in 0..300 {
        stalled.push(stalled_body(port).await);
    }

    // A valid callback and /healthz are answered long before the stalled clients give up.
    let base = format!("http://127.0.0.1:{port}");
    let sender = CallbackSender::new(&base, SecretString::from(sim.config().app_secret.clone()));
    let body = text_message(&new_msg_id(), &session_chat(&sim, GROUP), &member(), "/help");
    let answered = tokio::time::timeout(Duration::from_secs(8), sender.send(&body)).await;
    assert!(
        matches!(answered, Ok(Ok((200, _)))),
        "the valid callback was not answered: {answered:?}"
    );
    assert_eq!(get_status(format!("{base}/healthz")).await, Some(200));
    let replies = sim.wait_for_replies(1, Duration::from_secs(10)).await;
    assert_eq!(replies.len(), 1, "the valid command was not run");

    // The server answered the first stalled connection (a forged signature: 401 once its body
    // did not come) and closed it.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), stalled[0].read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the stalled connection was not closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // A correctly signed request whose body stalls gets 408, and its connection is closed.
    let (timestamp, sign) = sender.signed_headers();
    let mut signed = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\ntimestamp: {timestamp}\r\nsign: {sign}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"msgId\":"
    );
    signed.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), signed.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the stalled signed request was not closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Stalled connections do not hold a stop: it ends well before the 10 s grace period.
    for _ in 0..50 {
        stalled.push(stalled_body(port).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&child.0);
    let status = exit_within(&mut child.0, Duration::from_secs(6)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean exit within 6 s of SIGTERM: {status:?}"
    );
    drop(stalled);
}

/// `dingops_http_client_errors_total{kind}` from a /metrics text.
fn client_errors(metrics: &str, kind: &str) -> u64 {
    let prefix = format!("dingops_http_client_errors_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn malformed_http_is_counted_and_logged_at_debug_level_only() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = spawn_binary_logging_to(
        &sim,
        port,
        &dir.path().join("l.db"),
        &[("RUST_LOG", "info".into())],
        Stdio::from(log),
    );
    let mut child = Reaper(child);
    wait_healthy(port).await;

    const N: u64 = 300;
    let garbage: [&[u8]; 3] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
        b"GET / HTTP/7.0\r\n\r\n",
        b"POST /callback HTTP/1.1\r\nbad header line\r\n\r\n",
    ];
    for i in 0..N {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream
            .write_all(garbage[i as usize % garbage.len()])
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(client_errors(&metrics, "parse"), N, "{metrics}");

    sigterm(&child.0);
    assert!(exit_within(&mut child.0, Duration::from_secs(10)).await.is_some());
    let stderr = std::fs::read_to_string(&log_path).unwrap();
    assert!(stderr.contains("starting dingops"), "logging is on: {stderr}");
    let loud: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(
        loud.is_empty(),
        "{} loud lines, e.g. {:?}",
        loud.len(),
        loud.first()
    );
}
