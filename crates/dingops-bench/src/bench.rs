//! `dingops-bench bench`: the load benchmark. It runs dingops (the real binary, `serve`) and
//! a baseline server (a minimal actix-web handler that answers 200 `{"msgtype":"empty"}`
//! without verification or ledger; this executable's `baseline` subcommand) as child
//! processes on loopback, drives both with the same keep-alive HTTP/1.1 client and the same
//! requests, and prints dingops/baseline ratios. The simulator plays DingTalk in this
//! process. Nothing leaves the machine. `dingops-bench soak` is the soak test.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use dingops::clock::now_ms;
use dingops_testkit::TestSchema;
use dingtalk_sim::chat::{Chat, Member, text_message};
use dingtalk_sim::sign::sign as signature;
use dingtalk_sim::{SimConfig, Simulator, api};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Concurrent keep-alive connections of the load phases.
    pub connections: usize,
    /// Length of each throughput phase.
    pub duration: Duration,
    /// Bound groups the load is spread over.
    pub groups: usize,
    /// Callbacks per second of the fixed-rate latency phases.
    pub rate: u32,
    /// Groups of the drain phase (one `/lock-dm` each, paced at DingTalk's limit); 0 skips it.
    pub drain_groups: usize,
    /// `RUST_LOG` of the dingops under test.
    pub rust_log: String,
    /// A PostgreSQL server (`postgres://` URL) for the ledger of the load phases instead of
    /// SQLite files; each phase gets a schema of its own there, dropped afterwards.
    pub database: Option<String>,
    /// dingops processes on the one ledger of the burst (ingest) phase, each callback sent
    /// to the next in turn; more than one needs `database` (a SQLite ledger has one
    /// process).
    pub replicas: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            connections: 64,
            duration: Duration::from_secs(5),
            groups: 100,
            rate: 500,
            drain_groups: 1000,
            rust_log: "info".into(),
            database: None,
            replicas: 1,
        }
    }
}

/// Serves the baseline: `POST /callback` answers `{"msgtype":"empty"}` after reading the body.
pub async fn serve_baseline(listener: TcpListener, workers: usize) -> std::io::Result<()> {
    HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(64 * 1024))
            .route(
                "/callback",
                web::post().to(|_body: web::Bytes| async {
                    HttpResponse::Ok().json(serde_json::json!({"msgtype": "empty"}))
                }),
            )
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().finish() }),
            )
    })
    .workers(workers)
    .listen(listener)?
    .run()
    .await
}

/// Counts and latencies of one phase.
#[derive(Debug, Default)]
pub struct PhaseStats {
    pub statuses: HashMap<u16, u64>,
    pub latencies_us: Vec<u32>,
    pub elapsed: Duration,
    pub errors: u64,
}

impl PhaseStats {
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    pub fn per_sec(&self, status: u16) -> f64 {
        self.count(status) as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..1) of the latencies, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latencies_us, q)
    }
}

pub(crate) fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted_us[i.min(sorted_us.len() - 1)]) / 1000.0
}

/// One keep-alive HTTP/1.1 connection that sends prepared requests and reads the status.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its whole response; returns the status.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap_or("");
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + length {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(status);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A `POST /callback` request with the given headers and body.
pub(crate) fn http_request(timestamp: &str, sign: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /callback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json; charset=utf-8\r\n\
         timestamp: {timestamp}\r\nsign: {sign}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Drives `addr` with `connections` keep-alive connections. Each sends `make(n)` for a
/// global sequence number n; with `rate` set, sends are paced to that many per second in
/// total, otherwise as fast as answers come back. Stops at `duration` or after `limit`.
pub(crate) async fn drive(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    rate: Option<u32>,
    limit: Option<u64>,
    make: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>,
) -> PhaseStats {
    drive_all(&[addr], connections, duration, rate, limit, make).await
}

/// [`drive`] over several servers: each of the `connections` load connections keeps a
/// connection to every server in `addrs` and sends request n to `addrs[n % addrs.len()]`,
/// so the callbacks go to the servers in turn.
pub(crate) async fn drive_all(
    addrs: &[SocketAddr],
    connections: usize,
    duration: Duration,
    rate: Option<u32>,
    limit: Option<u64>,
    make: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>,
) -> PhaseStats {
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(addrs.to_vec());
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (seq, make, addrs) = (seq.clone(), make.clone(), addrs.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = PhaseStats::default();
            let mut conns = Vec::with_capacity(addrs.len());
            for addr in addrs.iter() {
                match Conn::open(*addr).await {
                    Ok(conn) => conns.push(conn),
                    Err(_) => {
                        stats.errors += 1;
                        return stats;
                    }
                }
            }
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / f64::from(r.max(1))));
            let mut next =
                start + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections as f64));
            loop {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                if Instant::now() >= end {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
                let request = make(n);
                let to = usize::try_from(n).unwrap_or(0) % addrs.len();
                let conn = &mut conns[to];
                let t0 = Instant::now();
                match conn.exchange(&request).await {
                    Ok(status) => {
                        let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
                        stats.latencies_us.push(us);
                        *stats.statuses.entry(status).or_default() += 1;
                    }
                    Err(_) => {
                        stats.errors += 1;
                        match Conn::open(addrs[to]).await {
                            Ok(c) => *conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            stats
        }));
    }
    let mut total = PhaseStats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            for (k, v) in s.statuses {
                *total.statuses.entry(k).or_default() += v;
            }
            total.latencies_us.extend(s.latencies_us);
            total.errors += s.errors;
        }
    }
    total.elapsed = start.elapsed();
    total.latencies_us.sort_unstable();
    total
}

/// A child server process, killed on drop.
pub(crate) struct ChildServer {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildServer {
    /// Peak resident set size (VmHWM) in KiB, from /proc.
    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// Current resident set size (VmRSS) in KiB, from /proc.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmRSS:")
    }
}

/// A `… kB` field of `/proc/<pid>/status`.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

async fn wait_up(addr: SocketAddr) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(Instant::now() < end, "server on {addr} did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs `command` silenced as a server on `addr` and waits until it accepts connections.
async fn spawn_server(mut command: Command, addr: SocketAddr) -> anyhow::Result<ChildServer> {
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let server = ChildServer { child, addr };
    wait_up(addr).await?;
    Ok(server)
}

/// The baseline: this executable's `baseline` subcommand.
async fn start_baseline() -> anyhow::Result<ChildServer> {
    let addr = free_addr()?;
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["baseline", "--listen", &addr.to_string()]);
    spawn_server(command, addr).await
}

pub(crate) async fn start_dingops(
    exe: &Path,
    sim: &Simulator,
    db: &Path,
    groups: &[(String, String)],
    extra: &[(&str, &str)],
) -> anyhow::Result<ChildServer> {
    let addr = free_addr()?;
    let bindings = groups
        .iter()
        .map(|(cid, chat)| format!("{cid}={chat}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .env_clear()
        .envs(sim.dingops_env())
        .env("DINGOPS_LISTEN", addr.to_string())
        .env("DINGOPS_ADMINS", "admin01")
        .env("DINGOPS_DATABASE", db)
        .env("DINGOPS_GROUPS", bindings)
        // The load sends many admin commands from one sender; the per-sender limit would turn
        // most of them into cheap refusals, so it is off here.
        .env("DINGOPS_ADMIN_COMMANDS_PER_MINUTE", "0")
        .envs(extra.iter().copied());
    spawn_server(command, addr).await
}

/// The ledger of one load phase: the SQLite file `file` in `dir`, or a new schema on the
/// PostgreSQL server of `--database` (kept until the returned guard is dropped).
fn phase_database(opts: &BenchOptions, dir: &Path, file: &str) -> (Option<TestSchema>, String) {
    match &opts.database {
        Some(server) => {
            let schema = TestSchema::on(server);
            let url = schema.url().to_owned();
            (Some(schema), url)
        }
        None => (None, dir.join(file).display().to_string()),
    }
}

/// A group chat with a fresh one-hour reply session in the simulator.
pub(crate) fn group_chat(sim: &Simulator, cid: &str) -> Chat {
    let (url, exp) = sim.open_session(cid, Duration::from_secs(3600));
    Chat {
        open_conversation_id: cid.to_owned(),
        title: cid.to_owned(),
        conversation_type: "2".into(),
        session_webhook: url,
        session_expires_ms: exp,
    }
}

/// A simulator on loopback that knows `n` groups named after `prefix` and limits each API
/// to `rate_limit_per_sec` (0 = no limit); returns it with the groups' (cid, chatid) pairs.
fn sim_with_groups(
    prefix: &str,
    n: usize,
    rate_limit_per_sec: u32,
) -> anyhow::Result<(Simulator, Vec<(String, String)>)> {
    sim_with_config(
        prefix,
        n,
        SimConfig {
            rate_limit_per_sec,
            ..SimConfig::default()
        },
    )
}

/// [`sim_with_groups`] with any configuration.
pub(crate) fn sim_with_config(
    prefix: &str,
    n: usize,
    config: SimConfig,
) -> anyhow::Result<(Simulator, Vec<(String, String)>)> {
    let sim = Simulator::start(config, TcpListener::bind("127.0.0.1:0")?)?;
    let groups: Vec<(String, String)> = (0..n)
        .map(|i| (format!("cid{prefix}{i:05}=="), format!("chat{prefix}{i:05}")))
        .collect();
    for (cid, chat) in &groups {
        sim.add_group(cid, chat, cid);
    }
    Ok((sim, groups))
}

/// The figures of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub baseline: Option<PhaseStats>,
    /// With DingTalk pacing on (the default): the burst's backlog waits in the ledger.
    pub burst: Option<PhaseStats>,
    pub burst_rss_kib: Option<u64>,
    /// With pacing off: every accepted command is also executed at full speed meanwhile.
    pub accepted: Option<PhaseStats>,
    pub forged: Option<PhaseStats>,
    pub baseline_paced: Option<PhaseStats>,
    pub paced: Option<PhaseStats>,
    pub e2e_ms: Vec<f64>,
    pub peak_rss_kib: Option<u64>,
    pub drain: Option<(usize, Duration, u64, usize)>,
}

/// Runs the benchmark of the dingops binary `exe`, printing progress and the table to `out`.
pub async fn run(opts: &BenchOptions, exe: &Path, out: &mut dyn Write) -> anyhow::Result<Report> {
    in_scratch_dir("bench", async |dir| run_in(opts, out, exe, dir).await).await
}

/// Runs `f` with a scratch directory removed afterwards.
pub(crate) async fn in_scratch_dir<T>(
    name: &str,
    f: impl AsyncFnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let dir = std::env::temp_dir().join(format!("dingops-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = f(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(opts: &BenchOptions, out: &mut dyn Write, exe: &Path, dir: &Path) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(
        opts.replicas == 1 || opts.database.is_some(),
        "--replicas {} needs --database postgres://…: a SQLite ledger serves one process",
        opts.replicas
    );
    let mut report = Report::default();
    let (sim, load_groups) = sim_with_groups("Load", opts.groups, 0)?;
    let secret = sim.config().app_secret.clone();
    let ts = now_ms().to_string();
    let (sign, forged_sign) = (signature(&secret, &ts), signature("not the secret", &ts));
    // One long-lived session per group: the reply path of the load phases.
    let chats: Arc<Vec<Chat>> = Arc::new(load_groups.iter().map(|(cid, _)| group_chat(&sim, cid)).collect());
    let admin = Member::new("admin01", "Bench Admin", false);
    let run_id = now_ms();
    let make = {
        let (chats, admin, ts, sign) = (chats.clone(), admin.clone(), ts.clone(), sign.clone());
        move |prefix: &'static str| -> Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> {
            let (chats, admin, ts, sign) = (chats.clone(), admin.clone(), ts.clone(), sign.clone());
            Arc::new(move |n: u64| {
                let chat = &chats[(n as usize) % chats.len()];
                let text = if n.is_multiple_of(4) { "/lock-dm" } else { "/help" };
                // DingTalk's msgIds are opaque random strings; random keys cost the ledger's
                // unique index more than sequential ones would, so the bench uses them too.
                let body = text_message(
                    &format!("{prefix}{}", dingtalk_sim::chat::new_msg_id()),
                    chat,
                    &admin,
                    text,
                );
                http_request(&ts, &sign, &body.to_string())
            })
        }
    };

    writeln!(
        out,
        "dingops bench: {} connections, {} s phases, {} groups, loopback only",
        opts.connections,
        opts.duration.as_secs(),
        opts.groups
    )?;
    match &opts.database {
        Some(url) => writeln!(
            out,
            "  ledger: PostgreSQL {}",
            dingops::config::PostgresUrl::parse(url)
                .map(|u| u.redacted().to_owned())
                .map_err(|e| anyhow::anyhow!("--database {e}"))?
        )?,
        None => writeln!(out, "  ledger: SQLite files")?,
    }

    // Baseline: saturated and paced.
    {
        let baseline = start_baseline().await?;
        writeln!(out, "  baseline (minimal actix-web handler) …")?;
        report.baseline = Some(
            drive(
                baseline.addr,
                opts.connections,
                opts.duration,
                None,
                None,
                make("b"),
            )
            .await,
        );
        report.baseline_paced = Some(
            drive(
                baseline.addr,
                opts.connections,
                opts.duration,
                Some(opts.rate),
                None,
                make("bp"),
            )
            .await,
        );
    }

    // dingops with its defaults (DingTalk pacing on): a burst is acknowledged and its
    // backlog waits in the ledger, drained at DingTalk's rate.
    {
        let (_schema, database) = phase_database(opts, dir, "burst.db");
        let mut fleet = Vec::with_capacity(opts.replicas);
        for _ in 0..opts.replicas {
            fleet.push(
                start_dingops(
                    exe,
                    &sim,
                    &dir.join("burst.db"),
                    &load_groups,
                    &[
                        ("RUST_LOG", opts.rust_log.as_str()),
                        ("DINGOPS_DATABASE", database.as_str()),
                    ],
                )
                .await?,
            );
        }
        if opts.replicas > 1 {
            writeln!(
                out,
                "  dingops: a burst of signed callbacks, default pacing, {} replicas on one database in turn …",
                opts.replicas
            )?;
        } else {
            writeln!(out, "  dingops: a burst of signed callbacks, default pacing …")?;
        }
        let addrs: Vec<SocketAddr> = fleet.iter().map(|d| d.addr).collect();
        report.burst = Some(drive_all(&addrs, opts.connections, opts.duration, None, None, make("u")).await);
        // The largest of the replicas.
        report.burst_rss_kib = fleet.iter().filter_map(ChildServer::peak_rss_kib).max();
    }

    // dingops with pacing off: accepted throughput while executing every command, paced ack
    // latency, forged rejection, end-to-end latency.
    {
        let (_schema, database) = phase_database(opts, dir, "load.db");
        let dingops = start_dingops(
            exe,
            &sim,
            &dir.join("load.db"),
            &load_groups,
            &[
                ("DINGOPS_API_CALLS_PER_SEC", "0"),
                ("RUST_LOG", opts.rust_log.as_str()),
                ("DINGOPS_DATABASE", database.as_str()),
            ],
        )
        .await?;
        writeln!(
            out,
            "  dingops: signed callbacks, every command executed at once …"
        )?;
        let replies_before = sim.reply_count() as u64;
        let accepted = drive(
            dingops.addr,
            opts.connections,
            opts.duration,
            None,
            None,
            make("a"),
        )
        .await;
        let expected = replies_before + accepted.count(200);
        // Let the workers drain before the latency phases.
        let drain_end = Instant::now() + Duration::from_secs(120);
        while (sim.reply_count() as u64) < expected && Instant::now() < drain_end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report.accepted = Some(accepted);
        writeln!(out, "  dingops: paced at {} callbacks/s …", opts.rate)?;
        report.paced = Some(
            drive(
                dingops.addr,
                opts.connections,
                opts.duration,
                Some(opts.rate),
                None,
                make("p"),
            )
            .await,
        );
        writeln!(out, "  dingops: forged signatures …")?;
        let forged_make: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> = {
            let (chats, admin, ts) = (chats.clone(), admin.clone(), ts.clone());
            Arc::new(move |n: u64| {
                let chat = &chats[(n as usize) % chats.len()];
                let body = text_message(&format!("f-{run_id}-{n}"), chat, &admin, "/lock-dm");
                http_request(&ts, &forged_sign, &body.to_string())
            })
        };
        report.forged = Some(
            drive(
                dingops.addr,
                opts.connections,
                opts.duration,
                None,
                None,
                forged_make,
            )
            .await,
        );

        writeln!(out, "  dingops: end-to-end latency at 100 callbacks/s …")?;
        report.e2e_ms = end_to_end(&sim, dingops.addr, &load_groups, &ts, &sign, &admin).await;
        report.peak_rss_kib = dingops.peak_rss_kib();
    }

    if opts.drain_groups > 0 {
        writeln!(
            out,
            "  drain: {} /lock-dm in {} groups at DingTalk's 20 calls/s …",
            opts.drain_groups, opts.drain_groups
        )?;
        report.drain = Some(drain(exe, dir, opts.drain_groups).await?);
    }
    sim.stop().await;
    print_report(opts, &report, out)?;
    Ok(report)
}

/// Callback sent → reply received by the simulator, at 100 callbacks/s (no queueing, no
/// rate limit binding), each on its own session so replies match callbacks.
async fn end_to_end(
    sim: &Simulator,
    addr: SocketAddr,
    load_groups: &[(String, String)],
    ts: &str,
    sign: &str,
    admin: &Member,
) -> Vec<f64> {
    const N: usize = 500;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let Ok(mut conn) = Conn::open(addr).await else {
        return Vec::new();
    };
    let start = Instant::now();
    for i in 0..N {
        let (cid, _) = &load_groups[i % load_groups.len()];
        let (url, exp) = sim.open_session(cid, Duration::from_secs(600));
        let session = url.rsplit('=').next().unwrap_or_default().to_owned();
        let chat = Chat {
            open_conversation_id: cid.clone(),
            title: cid.clone(),
            conversation_type: "2".into(),
            session_webhook: url,
            session_expires_ms: exp,
        };
        let text = if i.is_multiple_of(2) { "/lock-dm" } else { "/help" };
        let body = text_message(&format!("e2e-{}-{i}", now_ms()), &chat, admin, text);
        tokio::time::sleep_until((start + Duration::from_millis(10 * i as u64)).into()).await;
        sent.insert(session, Instant::now());
        let _ = conn.exchange(&http_request(ts, sign, &body.to_string())).await;
    }
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let replies = sim.replies();
        let mut lat: Vec<f64> = replies
            .iter()
            .filter_map(|r| {
                let t0 = sent.get(r.session.as_deref()?)?;
                Some(r.received.duration_since(*t0).as_secs_f64() * 1000.0)
            })
            .collect();
        if lat.len() >= N || Instant::now() > end {
            lat.sort_by(f64::total_cmp);
            return lat;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 1 000 `/lock-dm` across 1 000 groups against a simulator that enforces 20 calls/s per API,
/// with dingops's default pacing. Returns (replies, duration, 90018 answers, peak calls in
/// any second).
async fn drain(exe: &Path, dir: &Path, n: usize) -> anyhow::Result<(usize, Duration, u64, usize)> {
    let (sim, drain_groups) = sim_with_groups("Drain", n, SimConfig::default().rate_limit_per_sec)?;
    let dingops = start_dingops(exe, &sim, &dir.join("drain.db"), &drain_groups, &[]).await?;
    let ts = now_ms().to_string();
    let sign = signature(&sim.config().app_secret, &ts);
    let admin = Member::new("admin01", "Bench Admin", false);
    let requests: Vec<Vec<u8>> = drain_groups
        .iter()
        .enumerate()
        .map(|(i, (cid, _))| {
            let chat = group_chat(&sim, cid);
            let body = text_message(&format!("drain-{}-{i}", now_ms()), &chat, &admin, "/lock-dm");
            http_request(&ts, &sign, &body.to_string())
        })
        .collect();
    let requests = Arc::new(requests);
    let start = Instant::now();
    let make: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> = {
        let requests = requests.clone();
        Arc::new(move |i: u64| requests[i as usize].clone())
    };
    let sent = drive(
        dingops.addr,
        16,
        Duration::from_secs(60),
        None,
        Some(n as u64),
        make,
    )
    .await;
    anyhow::ensure!(
        sent.count(200) == n as u64,
        "drain: {:?} of {n} accepted",
        sent.statuses
    );
    let replies = sim.wait_for_replies(n, Duration::from_secs(600)).await;
    let took = start.elapsed();
    let limited = sim.calls(None).iter().filter(|c| c.answer == 90018).count() as u64;
    let peak = sim.peak_calls_per_second(api::FRIEND_SWITCH);
    sim.stop().await;
    Ok((replies.len(), took, limited, peak))
}

fn print_report(opts: &BenchOptions, r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "| figure | baseline | dingops | ratio | target |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    if let (Some(b), Some(u)) = (&r.baseline, &r.burst) {
        let base = b.per_sec(200);
        writeln!(
            out,
            "| accepted signed callbacks/s, burst with default pacing ({} conns, durable ledger{}) | {:.0} | {:.0} | {:.2} | ≥ 0.50 |",
            opts.connections,
            if opts.replicas > 1 {
                format!(", {} replicas", opts.replicas)
            } else {
                String::new()
            },
            base,
            u.per_sec(200),
            u.per_sec(200) / base
        )?;
        writeln!(
            out,
            "| ack latency in that burst p50 / p99 / p99.9 (ms) | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} (p99) | — |",
            b.quantile_ms(0.5),
            b.quantile_ms(0.99),
            b.quantile_ms(0.999),
            u.quantile_ms(0.5),
            u.quantile_ms(0.99),
            u.quantile_ms(0.999),
            u.quantile_ms(0.99) / b.quantile_ms(0.99)
        )?;
        if let Some(kib) = r.burst_rss_kib {
            writeln!(
                out,
                "| dingops peak RSS after that burst (MiB) | — | {:.1} | — | ≤ 64 MiB |",
                kib as f64 / 1024.0
            )?;
        }
    }
    if let (Some(b), Some(a), Some(f)) = (&r.baseline, &r.accepted, &r.forged) {
        let base = b.per_sec(200);
        writeln!(
            out,
            "| accepted signed callbacks/s while executing each at once (pacing off) | {:.0} | {:.0} | {:.2} | — |",
            base,
            a.per_sec(200),
            a.per_sec(200) / base
        )?;
        writeln!(
            out,
            "| forged signatures rejected/s | {:.0} | {:.0} | {:.2} | ≥ 0.80 |",
            base,
            f.per_sec(401),
            f.per_sec(401) / base
        )?;
        writeln!(
            out,
            "| ack latency while executing p50 / p99 / p99.9 (ms) | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} (p99) | — |",
            b.quantile_ms(0.5),
            b.quantile_ms(0.99),
            b.quantile_ms(0.999),
            a.quantile_ms(0.5),
            a.quantile_ms(0.99),
            a.quantile_ms(0.999),
            a.quantile_ms(0.99) / b.quantile_ms(0.99)
        )?;
        let other: u64 = a
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, c)| c)
            .sum();
        if other > 0 || a.errors > 0 {
            writeln!(
                out,
                "| (dingops answers other than 200: {:?}, errors {}) | | | | |",
                a.statuses, a.errors
            )?;
        }
    }
    if let (Some(b), Some(p)) = (&r.baseline_paced, &r.paced) {
        writeln!(
            out,
            "| ack latency at {} callbacks/s p50 / p99 / p99.9 (ms) | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} (p99) | p99 ≤ 5 ms |",
            opts.rate,
            b.quantile_ms(0.5),
            b.quantile_ms(0.99),
            b.quantile_ms(0.999),
            p.quantile_ms(0.5),
            p.quantile_ms(0.99),
            p.quantile_ms(0.999),
            p.quantile_ms(0.99) / b.quantile_ms(0.99)
        )?;
    }
    if !r.e2e_ms.is_empty() {
        let q = |x: f64| r.e2e_ms[((r.e2e_ms.len() - 1) as f64 * x).round() as usize];
        writeln!(
            out,
            "| end-to-end callback → reply at 100/s p50 / p99 (ms), {} replies | — | {:.1} / {:.1} | — | p99 ≤ 50 ms |",
            r.e2e_ms.len(),
            q(0.5),
            q(0.99)
        )?;
    }
    if let Some(kib) = r.peak_rss_kib {
        writeln!(
            out,
            "| dingops peak RSS after executing the load (MiB) | — | {:.1} | — | ≤ 64 MiB |",
            kib as f64 / 1024.0
        )?;
    }
    if let Some((replies, took, limited, peak)) = r.drain {
        writeln!(
            out,
            "| drain of {replies} /lock-dm in {replies} groups | — | {:.1} s, {:.1} calls/s, peak {peak}/s, {limited} × 90018 | — | 20/s, zero 90018 |",
            took.as_secs_f64(),
            replies as f64 / took.as_secs_f64(),
        )?;
    }
    Ok(())
}

/// What `dingops-bench soak` sends.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub callbacks: u64,
    pub connections: usize,
    pub groups: usize,
}

/// Soak: `callbacks` mixed requests (50 % valid and unique, 20 % redeliveries of those, 20 %
/// forged, 10 % malformed) at high concurrency against a dingops child and the simulator,
/// then checks that every accepted unique msgId has exactly one finished ledger row, that
/// DingTalk got one call per `/lock-dm` and one reply per command, and how RSS behaved.
/// Returns whether every check held.
pub async fn soak(opts: &SoakOptions, exe: &Path, out: &mut dyn Write) -> anyhow::Result<bool> {
    in_scratch_dir("soak", async |dir| soak_in(opts, out, exe, dir).await).await
}

async fn soak_in(opts: &SoakOptions, out: &mut dyn Write, exe: &Path, dir: &Path) -> anyhow::Result<bool> {
    use dingops::ledger::prelude::*;
    let (sim, soak_groups) = sim_with_groups("Soak", opts.groups, 0)?;
    let db = dir.join("soak.db");
    let dingops = start_dingops(
        exe,
        &sim,
        &db,
        &soak_groups,
        &[("DINGOPS_API_CALLS_PER_SEC", "0"), ("RUST_LOG", "warn")],
    )
    .await?;
    let chats: Arc<Vec<Chat>> = Arc::new(soak_groups.iter().map(|(cid, _)| group_chat(&sim, cid)).collect());
    let ts = now_ms().to_string();
    let sign = signature(&sim.config().app_secret, &ts);
    let forged = signature("guess", &ts);
    let run = dingtalk_sim::chat::new_msg_id();
    let admin = Member::new("admin01", "Soak Admin", false);
    // The k-th valid command: the same body every time it is sent.
    let valid = {
        let (chats, admin, run) = (chats.clone(), admin.clone(), run.clone());
        move |k: u64| {
            let chat = &chats[(k as usize) % chats.len()];
            let text = if k.is_multiple_of(4) { "/lock-dm" } else { "/help" };
            text_message(&format!("{run}-{k}"), chat, &admin, text).to_string()
        }
    };
    let make: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> = {
        let (ts, sign, valid) = (ts.clone(), sign.clone(), valid.clone());
        Arc::new(move |n: u64| {
            let (decade, slot) = (n / 10, n % 10);
            match slot {
                0..=4 => http_request(&ts, &sign, &valid(decade * 5 + slot)),
                5 | 6 => http_request(&ts, &sign, &valid(decade * 5 + slot - 5)),
                7 | 8 => http_request(&ts, &forged, &valid(decade * 5)),
                _ => http_request(&ts, &sign, "{\"msgId\": \"broken"),
            }
        })
    };
    writeln!(
        out,
        "dingops soak: {} callbacks over {} connections (50 % valid, 20 % redelivered, 20 % forged, 10 % malformed)",
        opts.callbacks, opts.connections
    )?;
    // RSS sampled once a second from start to end.
    let pid = dingops.child.id();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
                    })
                {
                    samples.push(kib);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    };
    let sent = drive(
        dingops.addr,
        opts.connections,
        Duration::from_secs(600),
        None,
        Some(opts.callbacks),
        make,
    )
    .await;
    let valid_sent = (0..opts.callbacks).filter(|n| n % 10 <= 4).count() as u64;
    let locks = (0..opts.callbacks)
        .filter(|n| n % 10 <= 4)
        .filter(|n| ((n / 10) * 5 + n % 10).is_multiple_of(4))
        .count();
    writeln!(
        out,
        "  sent in {:.1} s ({:.0}/s): {:?}, transport errors {}",
        sent.elapsed.as_secs_f64(),
        opts.callbacks as f64 / sent.elapsed.as_secs_f64(),
        sent.statuses,
        sent.errors
    )?;
    let replies = sim
        .wait_for_replies(valid_sent as usize, Duration::from_secs(600))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampling.store(false, Ordering::Relaxed);
    let rss = sampler.await.unwrap_or_default();
    let ledger = dingops::ledger::SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock))?;
    let rows = ledger.history(None, None, usize::MAX)?;
    let done = rows.iter().filter(|r| r.status == "done").count();
    let switch_calls = sim.calls(Some(api::FRIEND_SWITCH)).len();
    let mut ok = true;
    let mut check = |name: String, holds: bool| -> std::io::Result<()> {
        ok &= holds;
        writeln!(out, "  {} {name}", if holds { "✔" } else { "✘" })
    };
    let expect = |status: u16, share: u64| sent.count(status) == share;
    let tenth = |slots: &[u64]| (0..opts.callbacks).filter(|n| slots.contains(&(n % 10))).count() as u64;
    check(
        format!(
            "every valid and redelivered callback answered 200 ({})",
            sent.count(200)
        ),
        expect(200, tenth(&[0, 1, 2, 3, 4, 5, 6])),
    )?;
    check(
        format!("every forged one 401 ({})", sent.count(401)),
        expect(401, tenth(&[7, 8])),
    )?;
    check(
        format!("every malformed one 400 ({})", sent.count(400)),
        expect(400, tenth(&[9])),
    )?;
    check(
        format!(
            "one ledger row per unique msgId: {} rows for {valid_sent} unique",
            rows.len()
        ),
        rows.len() as u64 == valid_sent,
    )?;
    check(
        format!("every row finished: {done} done"),
        done as u64 == valid_sent,
    )?;
    check(
        format!("one friendswitch call per /lock-dm: {switch_calls} calls for {locks}"),
        switch_calls == locks,
    )?;
    check(
        format!("one reply per command: {} replies", replies.len()),
        replies.len() as u64 == valid_sent && sim.reply_count() as u64 == valid_sent,
    )?;
    let max = rss.iter().copied().max().unwrap_or(0);
    let last = rss.last().copied().unwrap_or(0);
    // The last three samples must be flat. The first sample is taken before the load starts,
    // so it is never part of that tail: a short run has only two or three samples.
    let under_load = rss.get(1..).unwrap_or_default();
    let tail = &under_load[under_load.len().saturating_sub(3)..];
    let plateau = tail.iter().all(|s| *s <= max)
        && tail.iter().max().copied().unwrap_or(0) - tail.iter().min().copied().unwrap_or(0) <= max / 10;
    check(
        format!(
            "RSS settles: samples (MiB) {}",
            rss.iter()
                .map(|k| format!("{:.0}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        plateau && last > 0,
    )?;
    sim.stop().await;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback HTTP/1.1 server answering every request 200; counts the requests.
    async fn counting_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One whole request (head and Content-Length body) per answer.
                        while let Some(end) = find(&buf, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            if buf.len() < end + 4 + length {
                                break;
                            }
                            buf.drain(..end + 4 + length);
                            counted.fetch_add(1, Ordering::Relaxed);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn callbacks_driven_at_several_servers_go_to_each_in_turn() {
        let servers = [
            counting_server().await,
            counting_server().await,
            counting_server().await,
        ];
        let addrs: Vec<SocketAddr> = servers.iter().map(|(a, _)| *a).collect();
        let make: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> =
            Arc::new(|n| http_request("1", "sign", &format!("{{\"n\":{n}}}")));
        let stats = drive_all(&addrs, 4, Duration::from_secs(30), None, Some(300), make).await;
        assert_eq!(stats.count(200), 300);
        assert_eq!(stats.errors, 0);
        let counts: Vec<u64> = servers.iter().map(|(_, c)| c.load(Ordering::Relaxed)).collect();
        assert_eq!(counts, [100, 100, 100]);
    }
}
