//! The server's defences found by the hardening audit: stalled requests, malformed HTTP,
//! readiness that agrees with the callback route, a pruned ledger with constant-cost probes,
//! private ledger files and one `serve` per ledger.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dingtalk_sim::chat::{CallbackSender, new_msg_id, text_message};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use dingops::ledger::prelude::*;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_dingops");

fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

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

async fn get_status(url: String) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    client.get(url).send().await.ok().map(|r| r.status().as_u16())
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

#[tokio::test]
async fn a_deleted_ledger_file_makes_callbacks_and_readyz_answer_503() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    assert_eq!(app.say(&chat, &member(), "/help").await.0, 200);
    assert_eq!(get_status(format!("{}/readyz", app.address)).await, Some(200));

    std::fs::remove_file(app.dir.path().join("ledger.db")).unwrap();

    // Written to the deleted file, the command would be lost at the next restart.
    assert_eq!(app.say(&chat, &member(), "/help").await.0, 503);
    assert_eq!(get_status(format!("{}/readyz", app.address)).await, Some(503));
}

/// Disk full is simulated with a file-size limit (`ulimit -f`, SIGXFSZ ignored) equal to the
/// size of a ledger filled beforehand: the database file cannot grow and the WAL fills up,
/// and writes fail as on a full disk. (A checkpoint may later free WAL space; both routes
/// then recover together, which this test does not follow.)
#[tokio::test]
async fn when_the_ledger_cannot_grow_readyz_fails_with_the_callbacks() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    drop(dingops::ledger::SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap());
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for i in 0..30 {
            insert_command(
                &conn,
                &format!("fill{i}"),
                dingops::clock::now_ms(),
                "done",
                Some(1),
            );
            conn.execute(
                "UPDATE commands SET text = ?1 WHERE msg_id = ?2",
                rusqlite::params!["f".repeat(10_000), format!("fill{i}")],
            )
            .unwrap();
        }
    }
    let size = std::fs::metadata(&db).unwrap().len();
    assert_eq!(size % 512, 0);
    let port = free_port();
    let child = spawn_binary_under_shell(
        &format!("trap '' XFSZ; ulimit -f {}", size / 512),
        &sim,
        port,
        &db,
        &[],
        Stdio::null(),
    );
    let _child = Reaper(child);
    wait_healthy(port).await;
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(get_status(format!("{base}/readyz")).await, Some(200));
    // The probe is a write: a read would succeed on a full disk.
    let probed: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT probed_ms FROM health", [], |r| r.get(0))
        .unwrap();
    assert!(probed > 0, "/readyz wrote nothing");

    let sender = CallbackSender::new(&base, SecretString::from(sim.config().app_secret.clone()));
    let chat = session_chat(&sim, GROUP);
    let filler = "x".repeat(10_000);
    for sent in 0.. {
        assert!(sent < 500, "the ledger never filled up");
        let body = text_message(&new_msg_id(), &chat, &member(), &filler);
        let (status, _) = sender.send(&body).await.unwrap();
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
    }
    // The callbacks are refused, and /readyz says so. A probe writes less than a 10 KB
    // callback, so it may still fit in the last few KB; each probe that fits takes some of
    // them, and /readyz turns 503 (before, a read-only probe stayed 200 for ever).
    let mut probes = 0;
    while get_status(format!("{base}/readyz")).await != Some(503) {
        probes += 1;
        assert!(probes < 50, "/readyz stays 200 while callbacks get 503");
    }
}

/// The query plan of `sql` on the ledger at `db`, one detail per line.
fn plan(db: &std::path::Path, sql: &str) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let params = vec![0i64; st.parameter_count()];
    st.query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .join("\n")
}

/// Inserts a command row directly.
fn insert_command(
    conn: &rusqlite::Connection,
    msg_id: &str,
    received_ms: u64,
    status: &str,
    finished_ms: Option<u64>,
) {
    conn.execute(
        "INSERT INTO commands (msg_id, received_ms, conversation_id, conversation_type,
         sender_is_admin, msgtype, status, finished_ms) VALUES (?1, ?2, ?3, '2', 0, 'picture', ?4, ?5)",
        rusqlite::params![
            msg_id,
            received_ms as i64,
            UNBOUND,
            status,
            finished_ms.map(|f| f as i64)
        ],
    )
    .unwrap();
}

#[tokio::test]
async fn readyz_and_the_open_command_gauge_do_not_scan_a_large_ledger() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("ledger.db");
    drop(dingops::ledger::SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap());
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        let now = dingops::clock::now_ms();
        for i in 0..200_000u64 {
            insert_command(&tx, &format!("m{i}"), now - 200_000 + i, "done", Some(now));
        }
        tx.commit().unwrap();
    }

    // The probe is one row found by its key; the gauge walks the index of open commands only.
    let probe = plan(&db, dingops::ledger::READY_PROBE_SQL);
    assert!(
        probe.starts_with("SEARCH health USING INTEGER PRIMARY KEY") && !probe.contains("SCAN"),
        "{probe}"
    );
    let open = plan(&db, dingops::ledger::OPEN_COUNT_SQL);
    assert!(open.contains("INDEX commands_open"), "{open}");

    let app = spawn_app_with(Options {
        dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(get_status(format!("{}/readyz", app.address)).await, Some(200));
    let metrics = reqwest::get(format!("{}/metrics", app.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("dingops_open_commands 0"), "{metrics}");
}

#[tokio::test]
async fn pruning_deletes_old_finished_commands_and_keeps_recent_and_open_ones() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("ledger.db");
    drop(dingops::ledger::SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap());
    let now = dingops::clock::now_ms();
    let day = 86_400_000;
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        // More than one pruning step's worth of old finished commands.
        for i in 0..1_200u64 {
            insert_command(
                &tx,
                &format!("old{i}"),
                now - 200 * day + i,
                "done",
                Some(now - 200 * day + i),
            );
        }
        insert_command(&tx, "oldOpen", now - 199 * day, "accepted", None);
        insert_command(&tx, "oldFinishedLate", now - 199 * day, "done", Some(now - day));
        for i in 0..10u64 {
            insert_command(
                &tx,
                &format!("recent{i}"),
                now - 2 * day + i,
                "done",
                Some(now - 2 * day + i),
            );
        }
        tx.commit().unwrap();
    }

    let app = spawn_app_with(Options {
        dir: Some(dir.clone()),
        settings: Some(Box::new(|s| s.ledger.retention_days = 30)),
        ..Default::default()
    })
    .await;
    let ids = |app: &TestApp| -> Vec<String> {
        app.ledger()
            .history(None, None, 100_000)
            .unwrap()
            .into_iter()
            .map(|r| r.msg_id)
            .collect()
    };
    let end = Instant::now() + Duration::from_secs(20);
    while ids(&app)
        .iter()
        .any(|id| id.starts_with("old") && id[3..].parse::<u32>().is_ok())
    {
        assert!(Instant::now() < end, "old finished commands were not pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut left = ids(&app);
    left.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("recent{i}")).collect();
    expected.extend(["oldFinishedLate".into(), "oldOpen".into()]);
    expected.sort();
    assert_eq!(left, expected);
}

#[tokio::test]
async fn ledger_files_are_created_private_under_umask_022() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = spawn_binary_under_shell(
        "umask 022",
        &sim,
        port,
        &dir.path().join("l.db"),
        &[],
        Stdio::null(),
    );
    let mut child = Reaper(child);
    wait_healthy(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let sender = CallbackSender::new(&base, SecretString::from(sim.config().app_secret.clone()));
    let body = text_message(&new_msg_id(), &session_chat(&sim, GROUP), &member(), "/help");
    assert_eq!(sender.send(&body).await.unwrap().0, 200);
    sim.wait_for_replies(1, Duration::from_secs(10)).await;

    let mut seen = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, ["l.db", "l.db-shm", "l.db-wal", "l.db.lock"]);

    sigterm(&child.0);
    assert!(exit_within(&mut child.0, Duration::from_secs(10)).await.is_some());
}

#[tokio::test]
async fn a_second_serve_on_the_same_ledger_refuses_to_start_and_names_the_first() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let port = free_port();
    let first = Reaper(spawn_binary(&sim, port, &db, &[]));
    wait_healthy(port).await;

    let log_path = dir.path().join("second.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut second = Reaper(spawn_binary_logging_to(
        &sim,
        free_port(),
        &db,
        &[],
        Stdio::from(log),
    ));
    let status = exit_within(&mut second.0, Duration::from_secs(10)).await;
    let stderr = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the second serve did not refuse to start: {status:?} {stderr}"
    );
    assert!(
        stderr.contains("in use by another dingops serve")
            && stderr.contains(&format!("pid {}", first.0.id())),
        "{stderr}"
    );

    // The CLI still reads the ledger the first one holds.
    let audit = Command::new(BIN)
        .args(["audit", "--json"])
        .env_clear()
        .env("DINGOPS_DATABASE", &db)
        .output()
        .unwrap();
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    // And the first one still serves.
    assert_eq!(
        get_status(format!("http://127.0.0.1:{port}/readyz")).await,
        Some(200)
    );
}
