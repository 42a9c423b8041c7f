//! dingops on a PostgreSQL ledger: the real `Application` and the real binary against the
//! simulator, with the test server (`DINGOPS_TEST_DATABASE_URL`, one schema per test), and a
//! server of the test's own where a test stops and starts PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::{SchemaDatabase as _, TestSchema};
use dingops::config::{Database, Settings};
use dingops::domain::{Accepted, ConversationType, SessionWebhook};
use dingops::ledger::Ledger;
use dingtalk_sim::chat::{new_msg_id, text_message};

use crate::helpers::*;

/// An app whose ledger is `database`.
async fn spawn_on(database: Database) -> TestApp {
    spawn_app_with(Options {
        settings: Some(Box::new(move |s: &mut Settings| s.ledger.database = database)),
        ..Options::default()
    })
    .await
}

fn open(database: &Database) -> std::sync::Arc<dyn Ledger> {
    dingops::ledger::open_blocking(database, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap()
}

/// Waits until `msg_id` is finished in the ledger; its status and reply.
async fn finished(ledger: std::sync::Arc<dyn Ledger>, msg_id: &str) -> (String, Option<String>) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let l = ledger.clone();
        let rows = tokio::task::spawn_blocking(move || l.history(None, None, 1000).unwrap())
            .await
            .unwrap();
        if let Some(r) = rows.iter().find(|r| r.msg_id == msg_id && r.status == "done") {
            return (r.status.clone(), r.reply.clone());
        }
        assert!(Instant::now() < end, "{msg_id} did not finish: {rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_callback_on_a_postgres_ledger_is_accepted_once_answered_once_and_audited() {
    let Some(schema) = TestSchema::or_skip() else {
        return;
    };
    let app = spawn_on(schema.database()).await;
    let chat = app.chat(GROUP);
    let msg_id = new_msg_id();
    let body = text_message(&msg_id, &chat, &member(), "/help");
    assert_eq!(app.post_signed(&body).await.0, 200);
    // DingTalk's retry of the same msgId is acknowledged and not run again.
    assert_eq!(app.post_signed(&body).await.0, 200);
    let replies = app.replies(1).await;
    assert_reply(&replies[0], "ℹ️", "/help");
    let ledger = open(&schema.database());
    let (status, reply) = finished(ledger.clone(), &msg_id).await;
    assert_eq!((status.as_str(), reply.as_deref()), ("done", Some("session")));
    let l = ledger.clone();
    let rows = tokio::task::spawn_blocking(move || l.history(None, None, 100).unwrap())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(schema.column("SELECT session_webhook FROM commands"), [None]);
    app.stop().await;
}

#[tokio::test]
async fn a_command_left_open_in_postgres_runs_once_when_dingops_starts() {
    let Some(schema) = TestSchema::or_skip() else {
        return;
    };
    let sim = new_sim(Default::default());
    let (webhook, _) = sim.open_session(GROUP, Duration::from_secs(600));
    // Accepted by a dingops that stopped before running it.
    let left = Accepted {
        msg_id: new_msg_id(),
        received_ms: dingops::clock::now_ms(),
        conversation_id: GROUP.into(),
        conversation_type: ConversationType::Group,
        conversation_title: Some("Group A".into()),
        sender_staff_id: Some("member01".into()),
        sender_nick: Some("Max".into()),
        sender_is_admin: false,
        msgtype: "text".into(),
        text: Some("/help".into()),
        session_webhook: SessionWebhook::new(webhook),
        session_expires_ms: Some(dingops::clock::now_ms() + 600_000),
    };
    let database = schema.database();
    let seeded = left.clone();
    tokio::task::spawn_blocking(move || assert!(open(&database).accept(&seeded).unwrap()))
        .await
        .unwrap();
    let database = schema.database();
    let app = spawn_app_with(Options {
        sim: Some(sim),
        settings: Some(Box::new(move |s: &mut Settings| s.ledger.database = database)),
        ..Options::default()
    })
    .await;
    let replies = app.replies(1).await;
    assert_reply(&replies[0], "ℹ️", "/help");
    finished(open(&schema.database()), &left.msg_id).await;
    let (sim, _) = app.stop().await;
    // A second start finds nothing open and runs nothing again.
    let database = schema.database();
    let app = spawn_app_with(Options {
        sim: Some(sim),
        settings: Some(Box::new(move |s: &mut Settings| s.ledger.database = database)),
        ..Options::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sim.replies().len(), 1);
    app.stop().await;
}

/// A PostgreSQL server of the test's own, from `.ci/postgres`, stopped and deleted on drop.
struct OwnServer {
    dir: PathBuf,
    url: String,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");

impl OwnServer {
    /// A server of the test's own, or `None` when the test is skipped: like the tests on the
    /// test server, these run only where PostgreSQL is (`dingops_testkit::test_database_url`).
    async fn or_skip() -> Option<Self> {
        dingops_testkit::test_database_url()?;
        Some(tokio::task::spawn_blocking(Self::start).await.unwrap())
    }

    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dingops-pg-test-{}",
            new_msg_id().replace(['=', '+', '/'], "")
        ));
        let url = Self::run(&dir, "start");
        Self { dir, url }
    }

    /// Runs `.ci/postgres <verb> <dir>`; the URL it printed, if any.
    fn run(dir: &Path, verb: &str) -> String {
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg(verb)
            .arg(dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            ".ci/postgres {verb} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("export DINGOPS_TEST_DATABASE_URL='"))
            .map(|u| u.trim_end_matches('\'').to_owned())
            .unwrap_or_default()
    }

    fn stop(&self) {
        Self::run(&self.dir, "stop");
    }

    fn restart(&self) {
        let url = Self::run(&self.dir, "start");
        assert_eq!(url, self.url, "the server came back on its port");
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .args(["stop", "--remove"])
            .arg(&self.dir)
            .output();
    }
}

#[tokio::test]
async fn losing_postgres_fails_readyz_and_callbacks_with_503_and_its_return_recovers_without_a_restart() {
    let Some(server) = OwnServer::or_skip().await else {
        return;
    };
    let database = Database::parse(&server.url).unwrap();
    let app = spawn_on(database.clone()).await;
    let chat = app.chat(GROUP);
    assert_eq!(readyz(&app.address).await, 200);
    assert_eq!(app.say(&chat, &member(), "/help").await.0, 200);
    app.replies(1).await;

    let s = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    assert_eq!(
        readyz(&app.address).await,
        503,
        "/readyz while PostgreSQL is down"
    );
    let lost = new_msg_id();
    let body = text_message(&lost, &chat, &member(), "/help");
    assert_eq!(
        app.post_signed(&body).await.0,
        503,
        "a callback is not acknowledged while PostgreSQL is down"
    );

    let server = tokio::task::spawn_blocking(move || {
        s.restart();
        s
    })
    .await
    .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while readyz(&app.address).await != 200 {
        assert!(
            Instant::now() < end,
            "/readyz did not recover after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // DingTalk's retry of the refused callback is taken now, and run once.
    assert_eq!(app.post_signed(&body).await.0, 200);
    app.replies(2).await;
    finished(open(&database), &lost).await;
    app.stop().await;
    drop(server);
}

#[tokio::test]
async fn the_binary_serves_on_postgres_and_never_prints_its_password() {
    let Some(schema) = TestSchema::or_skip() else {
        return;
    };
    let password = {
        let url = url::Url::parse(schema.url()).unwrap();
        url.password().unwrap().to_owned()
    };
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = free_port();
    let mut child = spawn_binary_logging_to(
        &sim,
        port,
        Path::new("unused.db"),
        &[("DINGOPS_DATABASE", schema.url().to_owned())],
        log.into(),
    );
    wait_healthy(port).await;
    let address = format!("http://127.0.0.1:{port}");
    assert_eq!(readyz(&address).await, 200);
    assert!(!dir.path().join("unused.db.lock").exists());

    let mut env = sim_env(&sim);
    env.extend([
        ("DINGOPS_ADMINS", "admin01".into()),
        ("DINGOPS_DATABASE", schema.url().to_owned()),
    ]);
    let check = Command::new(env!("CARGO_BIN_EXE_dingops"))
        .arg("check")
        .env_clear()
        .envs(env.clone())
        .output()
        .unwrap();
    let check_text = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.status.success(), "{check_text}");
    assert!(
        check_text.contains("✅ ledger postgres://dingops:***@127.0.0.1:"),
        "{check_text}"
    );
    let audit = Command::new(env!("CARGO_BIN_EXE_dingops"))
        .args(["audit", "--json"])
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );

    child.kill().unwrap();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.contains("postgres://dingops:***@"), "{logged}");
    for text in [&logged, &check_text] {
        assert!(!text.contains(&password), "the database password leaked: {text}");
    }
}

#[tokio::test]
async fn a_postgres_server_that_cannot_be_reached_stops_the_start_with_a_clear_error() {
    let port = free_port();
    let url = format!("postgres://dingops:hunter2-pw@127.0.0.1:{port}/postgres?connect_timeout=2");
    let sim = new_sim(Default::default());
    let settings = {
        let mut s = settings_for(&sim, PathBuf::from("unused.db"));
        s.ledger.database = Database::parse(&url).unwrap();
        s
    };
    let err = dingops::server::Application::build_with_listener(
        settings,
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        dingops::server::RunOptions {
            handle_signals: false,
            http_workers: 1,
        },
    )
    .await
    .err()
    .expect("no ledger, no start");
    let text = err.to_string();
    assert!(text.contains("connect"), "{text}");
    assert!(!text.contains("hunter2-pw"), "{text}");
}

#[tokio::test]
async fn a_wrong_postgres_password_is_reported_with_the_servers_message_and_sqlstate_never_the_password() {
    let wrong = "WrongPw-5f0c2a9e";
    let Some(server) = dingops_testkit::test_database_url() else {
        return;
    };
    let database = {
        let mut url = url::Url::parse(&server).unwrap();
        url.set_password(Some(wrong)).unwrap();
        url.to_string()
    };
    let said = r#"password authentication failed for user "dingops" (SQLSTATE 28P01)"#;
    let sim = new_sim(Default::default());

    let mut env = sim_env(&sim);
    env.extend([
        ("DINGOPS_ADMINS", "admin01".into()),
        ("DINGOPS_DATABASE", database.clone()),
    ]);
    let check = dingops(&["check"], env).await;
    let check_text = check.stdout;
    assert_eq!(check.code, Some(1), "{check_text}");
    assert!(check_text.ends_with("1 check(s) failed.\n"), "{check_text}");
    assert!(
        check_text.contains("❌ ledger postgres://dingops:***@127.0.0.1:"),
        "{check_text}"
    );
    assert!(
        check_text.contains(&format!("does not open: ledger connect: {said}\n")),
        "{check_text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let mut serve = Reaper(spawn_binary_logging_to(
        &sim,
        free_port(),
        Path::new("unused.db"),
        &[("DINGOPS_DATABASE", database.clone())],
        std::fs::File::create(&log_path).unwrap().into(),
    ));
    let status = exit_within(&mut serve.0, Duration::from_secs(30))
        .await
        .expect("serve stops when the ledger refuses it");
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(1), "{logged}");
    assert!(
        logged.ends_with(&format!("dingops: ledger connect: {said}\n")),
        "{logged}"
    );
    for text in [&check_text, &logged] {
        assert!(!text.contains(wrong), "the password leaked: {text}");
        assert!(!text.contains("db error"), "{text}");
    }
}

/// PostgreSQL stops and comes back while callbacks keep arriving. Each sender plays DingTalk:
/// a callback not acknowledged (503, or no answer) is sent again, with the same msgId, until
/// it is. Every acknowledged command runs once and is answered once; some were refused while
/// the database was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_refuses_callbacks_meanwhile_and_loses_none_it_acknowledged() {
    let Some(server) = OwnServer::or_skip().await else {
        return;
    };
    let database = Database::parse(&server.url).unwrap();
    let app = std::sync::Arc::new(spawn_on(database.clone()).await);
    let chat = app.chat(GROUP);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (app, chat, stop, refused) = (app.clone(), chat.clone(), stop.clone(), refused.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let msg_id = new_msg_id();
                    let body = text_message(&msg_id, &chat, &member(), "/help");
                    loop {
                        match app.sender.send(&body).await {
                            Ok((200, _)) => break,
                            _ => {
                                refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    acknowledged.push(msg_id);
                    // About 20 callbacks a second in all: the replies, paced at 19 a second
                    // like every DingTalk API, keep up.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = tokio::task::spawn_blocking(move || {
        s.restart();
        s
    })
    .await
    .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while readyz(&app.address).await != 200 {
        assert!(Instant::now() < end, "/readyz did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for s in senders {
        acknowledged.extend(s.await.unwrap());
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "no callback arrived while PostgreSQL was down"
    );
    // Each acknowledged command is answered once, and finished once in the ledger.
    let replies = app.replies(acknowledged.len()).await;
    assert_eq!(replies.len(), acknowledged.len());
    let ledger = open(&database);
    let rows = tokio::task::spawn_blocking(move || ledger.history(None, None, 100_000).unwrap())
        .await
        .unwrap();
    for msg_id in &acknowledged {
        let mine: Vec<_> = rows.iter().filter(|r| &r.msg_id == msg_id).collect();
        assert_eq!(mine.len(), 1, "{msg_id}");
        assert_eq!(mine[0].status, "done", "{msg_id}");
    }
    drop(server);
}
