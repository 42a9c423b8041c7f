//! Spawning dingops against the simulator, and talking to it like DingTalk does.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use dingops::config::ConfigError;
use dingops::config::Settings;
use dingops::domain::ChatId;
use dingops::ledger::prelude::*;
use dingops::ledger::{AuditRow, SqliteLedger};
use dingops::ledger::{Database, PostgresUrl};
use dingops::server::{Application, RunOptions};
pub use dingops_testkit::TestSchema;
use dingtalk_sim::chat::{CallbackSender, Chat, Member, new_msg_id, text_message};
use dingtalk_sim::{RecordedCall, RecordedReply, SimConfig, Simulator};
use secrecy::SecretString;
use serde_json::Value;

pub const GROUP: &str = "cidGroupAaaaaaaaaaa==";
pub const GROUP_CHATID: &str = "chatgroupa0001";
pub const OTHER: &str = "cidGroupBbbbbbbbbbb==";
pub const OTHER_CHATID: &str = "chatgroupb0002";
/// A group bound in the configuration whose chatid DingTalk does not know.
pub const STALE: &str = "cidGroupStaleeeeeee==";
pub const STALE_CHATID: &str = "chatgonegone";
/// A group nobody bound.
pub const UNBOUND: &str = "cidGroupUnboundddd==";

pub fn admin() -> Member {
    Member::new("admin01", "Ada", false)
}

pub fn member() -> Member {
    Member::new("member01", "Max", false)
}

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        dingops::telemetry::init(dingops::telemetry::LogFormat::Pretty, "debug");
    }
}

/// A change to the test settings.
pub type Tweak = Box<dyn FnOnce(&mut Settings)>;

/// How to spawn.
#[derive(Default)]
pub struct Options {
    /// Changes to the test settings.
    pub settings: Option<Tweak>,
    pub sim: Option<Arc<Simulator>>,
    pub dir: Option<Arc<tempfile::TempDir>>,
    pub sim_config: SimConfig,
}

pub struct TestApp {
    pub sim: Arc<Simulator>,
    pub dir: Arc<tempfile::TempDir>,
    pub address: String,
    pub sender: CallbackSender,
    pub secret: String,
    handle: ServerHandle,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub fn new_sim(config: SimConfig) -> Arc<Simulator> {
    let sim = Simulator::start(config, TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    sim.add_group(GROUP, GROUP_CHATID, "Group A");
    sim.add_group(OTHER, OTHER_CHATID, "Group B");
    Arc::new(sim)
}

/// The `DINGOPS_*` environment that points a spawned dingops at `sim`.
pub fn sim_env(sim: &Simulator) -> Vec<(&'static str, String)> {
    sim.dingops_env()
}

/// Settings of a dingops whose DingTalk is `sim`: [`sim_env`] read as configuration, so
/// the in-process app and a spawned binary are pointed at the simulator the same way;
/// everything else at its default.
pub fn sim_settings(sim: &Simulator) -> Result<Settings, ConfigError> {
    let env = sim_env(sim).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Settings::from_sources(None, &env)
}

/// A test schema (`dingops_testkit`, which knows no dingops types) as a ledger's address.
pub trait SchemaDatabase {
    fn postgres_url(&self) -> PostgresUrl;

    /// The `database` setting of a ledger in this schema.
    fn database(&self) -> Database {
        Database::Postgres(self.postgres_url())
    }
}

impl SchemaDatabase for TestSchema {
    fn postgres_url(&self) -> PostgresUrl {
        PostgresUrl::parse(self.url()).unwrap_or_else(|e| panic!("the test schema's URL {e}"))
    }
}

/// The settings a test app runs with: the simulator as DingTalk, `admin01` as admin, GROUP
/// and STALE bound in the configuration, short timeouts.
pub fn settings_for(sim: &Simulator, db: PathBuf) -> Settings {
    let mut s = sim_settings(sim).expect("the simulator's settings are valid");
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.shutdown_grace_secs = 10;
    s.worker.admins = vec!["admin01".into()];
    s.worker.trust_is_admin = false;
    s.worker.groups = bindings(&[(GROUP, GROUP_CHATID), (STALE, STALE_CHATID)]);
    // Tests that send many admin commands are not about the per-sender limit; hostile.rs
    // turns it on where it is.
    s.worker.admin_commands_per_minute = 0;
    s.ledger.database = db.into();
    s.dingtalk.upstream_timeout_ms = 2000;
    s.dingtalk.retry_base_ms = 20;
    s
}

/// Static bindings openConversationId → chatid.
pub fn bindings(pairs: &[(&str, &str)]) -> BTreeMap<String, ChatId> {
    pairs
        .iter()
        .map(|(cid, chat)| ((*cid).to_owned(), ChatId::parse(chat).unwrap()))
        .collect()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    init_logs();
    let sim = opts.sim.unwrap_or_else(|| new_sim(opts.sim_config.clone()));
    let dir = opts.dir.unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
    let mut settings = settings_for(&sim, dir.path().join("ledger.db"));
    if let Some(tweak) = opts.settings {
        tweak(&mut settings);
    }
    let secret = sim.config().app_secret.clone();
    let app = Application::build_with_listener(
        settings,
        TcpListener::bind("127.0.0.1:0").unwrap(),
        RunOptions {
            handle_signals: false,
            http_workers: 2,
        },
    )
    .await
    .expect("the app starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let running = tokio::spawn(app.run_until_stopped());
    TestApp {
        sender: CallbackSender::new(&address, SecretString::from(secret.clone())),
        sim,
        dir,
        address,
        secret,
        handle,
        running,
    }
}

impl TestApp {
    /// A group chat in `cid` with a fresh reply session.
    pub fn chat(&self, cid: &str) -> Chat {
        session_chat(&self.sim, cid)
    }

    /// `who` types `text` in `chat`; returns the HTTP status and the msgId.
    pub async fn say(&self, chat: &Chat, who: &Member, text: &str) -> (u16, String) {
        let msg_id = new_msg_id();
        let body = text_message(&msg_id, chat, who, text);
        let (status, _) = self.sender.send(&body).await.unwrap();
        (status, msg_id)
    }

    /// Posts a raw body, correctly signed.
    pub async fn post_signed(&self, body: &Value) -> (u16, String) {
        self.sender.send(body).await.unwrap()
    }

    /// Waits for exactly `n` replies in total, and a little longer to see that no more come.
    pub async fn replies(&self, n: usize) -> Vec<RecordedReply> {
        let got = self.sim.wait_for_replies(n, Duration::from_secs(10)).await;
        assert!(
            got.len() >= n,
            "expected {n} replies, got {}: {got:#?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let got = self.sim.replies();
        assert_eq!(got.len(), n, "more replies than expected: {got:#?}");
        got
    }

    /// The one reply expected after `text`.
    pub async fn ask(&self, chat: &Chat, who: &Member, text: &str) -> RecordedReply {
        let before = self.sim.replies().len();
        let (status, _) = self.say(chat, who, text).await;
        assert_eq!(status, 200);
        self.replies(before + 1).await.pop().unwrap()
    }

    pub fn ledger(&self) -> SqliteLedger {
        SqliteLedger::open(
            &self.dir.path().join("ledger.db"),
            std::sync::Arc::new(dingops::clock::SystemClock),
        )
        .unwrap()
    }

    /// The audit row of `msg_id` once it is finished.
    pub async fn finished_row(&self, msg_id: &str) -> AuditRow {
        let ledger = self.ledger();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let row = ledger
                .history(None, None, 10_000)
                .unwrap()
                .into_iter()
                .find(|r| r.msg_id == msg_id);
            if let Some(r) = row.filter(|r| r.status == "done") {
                return r;
            }
            assert!(Instant::now() < end, "{msg_id} did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ledger_rows(&self) -> usize {
        self.ledger().history(None, None, 100_000).unwrap().len()
    }

    /// Stops the server the way SIGTERM does and waits for it.
    pub async fn stop(self) -> (Arc<Simulator>, Arc<tempfile::TempDir>) {
        self.handle.stop(true).await;
        self.running.await.unwrap().unwrap();
        (self.sim, self.dir)
    }
}

/// The real binary serving with the simulator as DingTalk, on `port`, ledger at `db`.
pub fn spawn_binary(
    sim: &Simulator,
    port: u16,
    db: &std::path::Path,
    extra: &[(&str, String)],
) -> std::process::Child {
    spawn_binary_logging_to(sim, port, db, extra, std::process::Stdio::null())
}

/// [`spawn_binary`] with its log output (stderr) going to `stderr`; `extra` wins over the
/// defaults.
pub fn spawn_binary_logging_to(
    sim: &Simulator,
    port: u16,
    db: &std::path::Path,
    extra: &[(&str, String)],
    stderr: std::process::Stdio,
) -> std::process::Child {
    serve_command(
        std::process::Command::new(env!("CARGO_BIN_EXE_dingops")),
        sim,
        port,
        db,
        extra,
        stderr,
    )
}

/// [`spawn_binary_logging_to`] through `sh -c '<prelude>; exec dingops serve'`, for limits
/// and a umask that must apply to the binary alone (`ulimit -n 256`, `umask 022`). The
/// child's pid is the binary's (sh execs it).
pub fn spawn_binary_under_shell(
    prelude: &str,
    sim: &Simulator,
    port: u16,
    db: &std::path::Path,
    extra: &[(&str, String)],
    stderr: std::process::Stdio,
) -> std::process::Child {
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("{prelude}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_dingops"));
    serve_command(cmd, sim, port, db, extra, stderr)
}

fn serve_command(
    mut cmd: std::process::Command,
    sim: &Simulator,
    port: u16,
    db: &std::path::Path,
    extra: &[(&str, String)],
    stderr: std::process::Stdio,
) -> std::process::Child {
    cmd.arg("serve")
        .env_clear()
        .envs(sim_env(sim))
        .env("DINGOPS_LISTEN", format!("127.0.0.1:{port}"))
        .env("DINGOPS_ADMINS", "admin01")
        .env("DINGOPS_GROUPS", format!("{GROUP}={GROUP_CHATID}"))
        .env("DINGOPS_DATABASE", db)
        .envs(extra.iter().cloned())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Kills the child when the test ends, whatever happened.
pub struct Reaper(pub std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `/healthz` answers on `port`.
pub async fn wait_healthy(port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .is_err()
    {
        assert!(Instant::now() < end, "dingops did not start on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `pred` holds for the simulator's recorded calls.
pub async fn wait_for_calls(sim: &Simulator, what: &str, pred: impl Fn(&[RecordedCall]) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !pred(&sim.calls(None)) {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}: {:#?}",
            sim.calls(None)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A group chat in `cid` with a fresh ten-minute reply session.
pub fn session_chat(sim: &Simulator, cid: &str) -> Chat {
    let (url, _) = sim.open_session(cid, Duration::from_secs(600));
    chat_with_webhook(cid, url)
}

/// A group chat in `cid` whose messages carry `session_webhook`, valid for ten minutes.
pub fn chat_with_webhook(cid: &str, session_webhook: impl Into<String>) -> Chat {
    Chat {
        open_conversation_id: cid.into(),
        title: format!("title of {cid}"),
        conversation_type: "2".into(),
        session_webhook: session_webhook.into(),
        session_expires_ms: dingops::clock::now_ms() + 600_000,
    }
}

/// Asserts that `reply` starts with the status `mark` and contains `text`.
#[track_caller]
pub fn assert_reply(reply: &RecordedReply, mark: &str, text: &str) {
    assert!(
        reply.content.starts_with(mark) && reply.content.contains(text),
        "expected a reply starting with {mark} and containing {text:?}, got {:?}",
        reply.content
    );
}

/// A simulator for Stream tests: unacknowledged frames come again after a second, and a
/// `disconnect` is followed by the close after `disconnect_grace_ms`.
pub fn stream_sim(disconnect_grace_ms: u64) -> Arc<Simulator> {
    new_sim(SimConfig {
        stream_repush_after_ms: 1000,
        stream_disconnect_grace_ms: disconnect_grace_ms,
        ..SimConfig::default()
    })
}

/// A test app in `mode` on `sim`, with `tweak` applied, once `connections` Stream connections
/// are live.
pub async fn spawn_stream_app(
    sim: Arc<Simulator>,
    mode: dingops::config::Mode,
    connections: usize,
    tweak: impl FnOnce(&mut Settings) + 'static,
) -> TestApp {
    let app = spawn_app_with(Options {
        sim: Some(sim),
        settings: Some(Box::new(move |s: &mut Settings| {
            s.stream.mode = mode;
            s.stream.connections = connections;
            tweak(s);
        })),
        ..Options::default()
    })
    .await;
    let live = app
        .sim
        .stream()
        .wait_for_connections(connections, Duration::from_secs(10))
        .await;
    assert_eq!(live.len(), connections, "dingops did not connect");
    app
}

/// Pushes `payload` as a robot frame; returns its ACK once it came.
pub async fn push_and_ack(sim: &Simulator, payload: &Value) -> dingtalk_sim::stream::RecordedAck {
    let message_id = sim.stream().push_callback(payload);
    ack_of(sim, &message_id).await
}

/// The first ACK of the frame `message_id`, waiting for it.
pub async fn ack_of(sim: &Simulator, message_id: &str) -> dingtalk_sim::stream::RecordedAck {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(ack) = sim
            .stream()
            .acks()
            .into_iter()
            .find(|a| a.message_id == message_id)
        {
            return ack;
        }
        assert!(Instant::now() < end, "no ACK of {message_id}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &std::process::Child) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// The status of `GET url`, or `None` when no answer came within 8 s.
pub async fn get_status(url: String) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    client.get(url).send().await.ok().map(|r| r.status().as_u16())
}

/// The status of `GET /readyz` on `address`.
pub async fn readyz(address: &str) -> u16 {
    reqwest::get(format!("{address}/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until `check` holds, for at most `timeout`; `false` when it never did.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The most of `calls` that arrived within any `window_ms` (half-open).
pub fn peak(calls: &[RecordedCall], window_ms: u64) -> usize {
    let mut times: Vec<u64> = calls.iter().map(|c| c.at_ms).collect();
    times.sort_unstable();
    let mut start = 0;
    let mut most = 0;
    for (end, t) in times.iter().enumerate() {
        while times[start] + window_ms <= *t {
            start += 1;
        }
        most = most.max(end + 1 - start);
    }
    most
}

/// Asserts that DingTalk never refused a call for its rate and that no API got more than
/// 19 calls within any second (DingTalk allows 20); the most calls of one API within any
/// 1.05 s (the window dingops paces by), for the caller to judge.
#[track_caller]
pub fn assert_within_budget(sim: &Simulator) -> usize {
    let all = sim.calls(None);
    let refused = all.iter().filter(|c| c.answer == 90018).count();
    assert_eq!(refused, 0, "{refused} calls refused with 90018");
    let apis: std::collections::BTreeSet<&str> = all.iter().map(|c| c.api.as_str()).collect();
    let mut most_per_window = 0;
    for api in apis {
        let calls: Vec<RecordedCall> = all.iter().filter(|c| c.api == api).cloned().collect();
        let (per_second, per_window) = (peak(&calls, 1000), peak(&calls, 1050));
        eprintln!(
            "{api}: {} calls, at most {per_second} in any 1 s, {per_window} in any 1.05 s",
            calls.len()
        );
        assert!(per_second <= 19, "{api}: {per_second} calls within one second");
        most_per_window = most_per_window.max(per_window);
    }
    most_per_window
}

/// Waits for `child` to exit, up to `limit`; `None` if it is still running then.
pub async fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a run of the binary ended.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` (off the async threads: the simulator runs on them).
pub async fn dingops(args: &[&str], env: Vec<(&'static str, String)>) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dingops"))
            .args(&args)
            .env_clear()
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `… kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The value of the metric `name` (with its labels, as printed) on the dingops at `address`;
/// `None` while it was never set.
pub async fn metric_at(address: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{address}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// Waits up to `secs` for a group message (the timer's announcements) containing `text`.
pub async fn group_message(app: &TestApp, text: &str, secs: u64) -> Option<RecordedReply> {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let found = app
            .sim
            .replies()
            .into_iter()
            .find(|r| r.via == "group-message" && r.content.contains(text));
        if found.is_some() || tokio::time::Instant::now() >= end {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The demo's Buttons part in its transcript: the card, a member's refused click, Extend and
/// Revert now.
pub fn assert_demo_buttons(stdout: &str) {
    for line in [
        "[card] Whole-group mute: on — done",
        "[Undo] [Extend] [Revert now]",
        "(to member01 only) Only dingops admins can use these buttons.",
        "[card update] Whole-group mute: on — extended",
        "[card update] Whole-group mute: on — reverted",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from {stdout}");
    }
}

/// Whether a change holds a setting's lease in the SQLite ledger at `db` (it takes it before
/// it calls DingTalk, so its call is under way once this is true).
pub fn setting_lease_held(db: &std::path::Path) -> bool {
    rusqlite::Connection::open(db)
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM leases WHERE name LIKE 'setting:%'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .unwrap_or(0)
        > 0
}
