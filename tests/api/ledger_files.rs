//! The ledger on disk as the server sees it: readiness that agrees with the callback route
//! when the file is gone or cannot grow, constant-cost probes and pruning on a large ledger,
//! private ledger files and one `serve` per ledger.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dingtalk_sim::chat::{CallbackSender, new_msg_id, text_message};
use secrecy::SecretString;

use dingops::ledger::prelude::*;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_dingops");

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
