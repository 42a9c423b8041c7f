//! `dingops-bench stream`: Stream mode measured against the HTTP ingress of the same binary.
//! dingops (the real binary, `serve`) runs as a child process in `mode=both` against the
//! simulator in this process, whose Stream gateway pushes robot messages (random msgIds
//! like DingTalk's) and times each ACK from the frame's write on the monotonic clock. HTTP
//! figures come from the same process in the same run, so the ratio holds on a noisy
//! machine. See docs/performance.md, "Stream mode".

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dingops::clock::now_ms;
use dingops::ingress::stream::REPLACE_AT_ONCE_AFTER;
use dingtalk_sim::chat::{Chat, Member, new_msg_id, text_message};
use dingtalk_sim::sign::sign as signature;
use dingtalk_sim::stream::{Gateway, RecordedAck, StreamFault};
use dingtalk_sim::{SimConfig, Simulator, api};
use serde_json::Value;

use crate::bench::{
    ChildServer, PhaseStats, drive, group_chat, http_request, in_scratch_dir, quantile_ms, sim_with_config,
    start_dingops,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Length of each latency phase (Stream, then HTTP at the same rate).
    pub seconds: Duration,
    /// Messages per second of the latency phases.
    pub rate: u32,
    /// Unacknowledged frames on the Stream connection, and HTTP connections, of the ingest
    /// rounds (per connection in the RSS phase).
    pub in_flight: usize,
    /// Ingest rounds (each one HTTP burst and one Stream burst).
    pub rounds: usize,
    /// Length of each burst of an ingest round.
    pub round_seconds: Duration,
    /// Repetitions of each reconnect measurement.
    pub reconnects: usize,
    /// Messages of the RSS phase.
    pub messages: u64,
    /// Stream connections of the RSS phase.
    pub connections: usize,
    /// Bound groups the messages are spread over.
    pub groups: usize,
    /// `RUST_LOG` of the dingops under test.
    pub rust_log: String,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            seconds: Duration::from_secs(10),
            rate: 1000,
            in_flight: 64,
            rounds: 3,
            round_seconds: Duration::from_secs(3),
            reconnects: 5,
            messages: 100_000,
            connections: 4,
            groups: 100,
            rust_log: "info".into(),
        }
    }
}

/// The RSS phase's outcome.
#[derive(Debug, Default)]
pub struct RssPhase {
    pub sent_in: Duration,
    pub rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// (description, held) of each check.
    pub checks: Vec<(String, bool)>,
}

/// The figures of one run.
#[derive(Debug, Default)]
pub struct StreamReport {
    /// Frame written → ACK received, µs, sorted.
    pub stream_latency_us: Vec<u32>,
    /// The Stream latency phase's frames, and how many were acknowledged 200.
    pub stream_latency_counts: (u64, u64),
    /// The HTTP phase at the same rate (request written → response read by the client).
    pub http_latency: Option<PhaseStats>,
    /// Acknowledged messages/s of each ingest round.
    pub http_ingest: Vec<f64>,
    pub stream_ingest: Vec<f64>,
    /// Per `disconnect`: (ms with no live connection, ms from the fault to the replacement
    /// being live).
    pub disconnect: Vec<(u64, u64)>,
    /// Per dropped TCP connection: ms with no live connection.
    pub dropped: Vec<u64>,
    pub rss: Option<RssPhase>,
    /// This process's peak RSS (simulator included), KiB.
    pub bench_peak_rss_kib: Option<u64>,
}

impl StreamReport {
    /// Whether every check of the RSS phase held.
    pub fn ok(&self) -> bool {
        self.rss
            .as_ref()
            .is_none_or(|r| r.checks.iter().all(|(_, held)| *held))
    }
}

/// Runs the Stream benchmark of the dingops binary `exe`, printing progress and the table.
pub async fn run(opts: &StreamOptions, exe: &Path, out: &mut dyn Write) -> anyhow::Result<StreamReport> {
    in_scratch_dir("stream-bench", async |dir| run_in(opts, out, exe, dir).await).await
}

/// Messages typed by an admin: ¾ `/help`, ¼ `/lock-dm`, across the bound groups.
#[derive(Clone)]
pub(crate) struct Messages {
    pub(crate) chats: Arc<Vec<Chat>>,
    pub(crate) admin: Member,
}

impl Messages {
    fn text(k: u64) -> &'static str {
        if k.is_multiple_of(4) { "/lock-dm" } else { "/help" }
    }

    /// The k-th message, with a fresh random msgId.
    pub(crate) fn payload(&self, k: u64) -> Value {
        let chat = &self.chats[(k as usize) % self.chats.len()];
        text_message(&new_msg_id(), chat, &self.admin, Self::text(k))
    }
}

async fn run_in(
    opts: &StreamOptions,
    out: &mut dyn Write,
    exe: &Path,
    dir: &Path,
) -> anyhow::Result<StreamReport> {
    let mut report = StreamReport::default();
    let (sim, groups) = sim_with_config(
        "Stream",
        opts.groups,
        SimConfig {
            rate_limit_per_sec: 0,
            // DingTalk closes a connection some seconds after its `disconnect`; a shorter
            // grace keeps the repetitions short and changes nothing measured.
            stream_disconnect_grace_ms: 1000,
            ..SimConfig::default()
        },
    )?;
    let sim = Arc::new(sim);
    let msgs = Messages {
        chats: Arc::new(groups.iter().map(|(cid, _)| group_chat(&sim, cid)).collect()),
        admin: Member::new("admin01", "Bench Admin", false),
    };
    let log = opts.rust_log.as_str();
    writeln!(
        out,
        "dingops stream bench: mode=both, {} groups, loopback only",
        opts.groups
    )?;

    // 1. Latency at a fixed rate over one connection, every command executed at once; then
    //    the HTTP ingress at the same rate in the same process.
    {
        let dingops = start_both(
            exe,
            &sim,
            &dir.join("latency.db"),
            &groups,
            1,
            &[("DINGOPS_API_CALLS_PER_SEC", "0"), ("RUST_LOG", log)],
        )
        .await?;
        writeln!(
            out,
            "  Stream: {} msgs/s over one connection for {} s …",
            opts.rate,
            opts.seconds.as_secs()
        )?;
        let (sent, acks) = paced_pushes(sim.stream(), opts.rate, opts.seconds, &msgs).await;
        let mut lat: Vec<u32> = acks
            .iter()
            .filter(|a| a.code == 200)
            .filter_map(|a| a.after_push_us)
            .map(|us| u32::try_from(us).unwrap_or(u32::MAX))
            .collect();
        lat.sort_unstable();
        let ok = acks.iter().filter(|a| a.code == 200).count() as u64;
        report.stream_latency_counts = (sent, ok);
        report.stream_latency_us = lat;

        writeln!(
            out,
            "  HTTP: {} callbacks/s for {} s …",
            opts.rate,
            opts.seconds.as_secs()
        )?;
        report.http_latency = Some(
            drive(
                dingops.addr,
                opts.in_flight,
                opts.seconds,
                Some(opts.rate),
                None,
                signed_requests(&sim, &msgs),
            )
            .await,
        );
        // Let the workers finish before the reconnects.
        settle(&sim).await;

        // 3a. `disconnect`: the replacement should be live before the old one closes (each
        //     connection lives 10 s first, as dingops replaces younger ones after the backoff).
        writeln!(out, "  Stream: {} × disconnect …", opts.reconnects)?;
        for _ in 0..opts.reconnects {
            report.disconnect.push(disconnect_gap(sim.stream()).await?);
        }
        drop(dingops);
        gone(sim.stream()).await?;
    }

    // 2. Ingest: bursts as fast as acknowledged, HTTP and Stream in turn, DingTalk pacing on
    //    (the backlog waits in the ledger, as in `bench`'s burst).
    {
        let dingops = start_both(
            exe,
            &sim,
            &dir.join("ingest.db"),
            &groups,
            1,
            &[("RUST_LOG", log)],
        )
        .await?;
        writeln!(
            out,
            "  ingest: {} rounds of {} s bursts, {} in flight (HTTP: that many connections; Stream: that many unacknowledged frames on one connection) …",
            opts.rounds,
            opts.round_seconds.as_secs(),
            opts.in_flight
        )?;
        for _ in 0..opts.rounds {
            let http = drive(
                dingops.addr,
                opts.in_flight,
                opts.round_seconds,
                None,
                None,
                signed_requests(&sim, &msgs),
            )
            .await;
            report.http_ingest.push(http.per_sec(200));
            let (rate, acks) = stream_burst(sim.stream(), opts.in_flight, opts.round_seconds, &msgs).await;
            let refused = acks.iter().filter(|a| a.code != 200).count();
            anyhow::ensure!(refused == 0, "ingest: {refused} Stream ACKs other than 200");
            report.stream_ingest.push(rate);
        }
        drop(dingops);
        gone(sim.stream()).await?;
    }

    // 3b. Dropped TCP: a fresh dingops each time, since each drop in a row doubles the backoff.
    writeln!(out, "  Stream: {} × dropped TCP connection …", opts.reconnects)?;
    for i in 0..opts.reconnects {
        let dingops = start_both(
            exe,
            &sim,
            &dir.join(format!("drop{i}.db")),
            &groups,
            1,
            &[("RUST_LOG", log)],
        )
        .await?;
        report.dropped.push(drop_gap(sim.stream()).await?);
        drop(dingops);
        gone(sim.stream()).await?;
    }

    // 4. RSS after many messages over several connections, each one answered.
    writeln!(
        out,
        "  Stream: {} messages over {} connections, {} in flight each, every command executed …",
        opts.messages, opts.connections, opts.in_flight
    )?;
    report.rss = Some(rss_phase(opts, exe, &sim, &groups, &msgs, dir).await?);
    report.bench_peak_rss_kib = crate::bench::proc_status_kib(std::process::id(), "VmHWM:");
    sim.stop().await;
    print_report(opts, &report, out)?;
    Ok(report)
}

/// dingops in `mode=both` with `connections` Stream connections, once they are live.
async fn start_both(
    exe: &Path,
    sim: &Simulator,
    db: &Path,
    groups: &[(String, String)],
    connections: usize,
    extra: &[(&str, &str)],
) -> anyhow::Result<ChildServer> {
    let n = connections.to_string();
    let mut env = vec![
        ("DINGOPS_MODE", "both"),
        ("DINGOPS_STREAM_CONNECTIONS", n.as_str()),
    ];
    env.extend_from_slice(extra);
    let dingops = start_dingops(exe, sim, db, groups, &env).await?;
    let live = sim
        .stream()
        .wait_for_connections(connections, Duration::from_secs(15))
        .await;
    anyhow::ensure!(
        live.len() == connections,
        "dingops opened {} of {connections} Stream connections",
        live.len()
    );
    Ok(dingops)
}

/// Waits until the gateway saw every connection of a stopped dingops close.
pub(crate) async fn gone(gw: &Gateway) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    while !gw.connections().is_empty() {
        anyhow::ensure!(Instant::now() < end, "the stopped dingops' connections stay live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Waits until no reply arrived for half a second: the workers are idle.
pub(crate) async fn settle(sim: &Simulator) {
    let end = Instant::now() + Duration::from_secs(120);
    let mut last = sim.reply_count();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sim.reply_count();
        if now == last || Instant::now() > end {
            return;
        }
        last = now;
    }
}

/// Signed HTTP callbacks of the same messages (random msgIds).
pub(crate) fn signed_requests(sim: &Simulator, msgs: &Messages) -> Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> {
    let ts = now_ms().to_string();
    let sign = signature(&sim.config().app_secret, &ts);
    let msgs = msgs.clone();
    Arc::new(move |n: u64| http_request(&ts, &sign, &msgs.payload(n).to_string()))
}

/// Pushes `rate` frames a second for `duration` (each on time, or at once when late);
/// returns how many were pushed and their ACKs, waiting for those at most 30 s.
async fn paced_pushes(
    gw: &Gateway,
    rate: u32,
    duration: Duration,
    msgs: &Messages,
) -> (u64, Vec<RecordedAck>) {
    paced_frames(gw, rate, duration, |n| {
        gw.push_callback(&msgs.payload(n));
        true
    })
    .await
}

/// [`paced_pushes`] of any frames: `push(n)` pushes the n-th one, or returns `false` when
/// there is none (the phase ends early then).
pub(crate) async fn paced_frames(
    gw: &Gateway,
    rate: u32,
    duration: Duration,
    mut push: impl FnMut(u64) -> bool,
) -> (u64, Vec<RecordedAck>) {
    let _ = gw.take_acks();
    let _ = gw.take_pushes();
    let mut counter = gw.ack_counter();
    let base = *counter.borrow_and_update();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let due = start + interval.mul_f64(n as f64);
        if due >= start + duration {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        if !push(n) {
            break;
        }
        n += 1;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        counter.wait_for(|c| c.saturating_sub(base) >= n),
    )
    .await;
    (n, gw.take_acks())
}

/// Keeps `in_flight` frames unacknowledged on the gateway for `duration`; returns the ACKs
/// per second within it, and every ACK once the last frames were acknowledged too.
async fn stream_burst(
    gw: &Gateway,
    in_flight: usize,
    duration: Duration,
    msgs: &Messages,
) -> (f64, Vec<RecordedAck>) {
    let _ = gw.take_acks();
    let mut counter = gw.ack_counter();
    let base = *counter.borrow_and_update();
    let start = Instant::now();
    let end = start + duration;
    let mut pushed = 0u64;
    loop {
        let acked = counter.borrow_and_update().saturating_sub(base);
        if Instant::now() >= end {
            break;
        }
        while pushed.saturating_sub(acked) < in_flight as u64 {
            gw.push_callback(&msgs.payload(pushed));
            pushed += 1;
        }
        tokio::select! {
            changed = counter.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(end.into()) => {}
        }
    }
    let acked = counter.borrow().saturating_sub(base);
    let rate = acked as f64 / start.elapsed().as_secs_f64();
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        counter.wait_for(|c| c.saturating_sub(base) >= pushed),
    )
    .await;
    let _ = gw.take_pushes();
    (rate, gw.take_acks())
}

/// The only live connection (dingops holds one).
fn only_connection(gw: &Gateway) -> anyhow::Result<dingtalk_sim::stream::ConnectionInfo> {
    let mut live = gw.connections();
    anyhow::ensure!(live.len() == 1, "{} live connections, expected 1", live.len());
    Ok(live.remove(0))
}

/// Plays `fault` on the only connection and waits until it closed and a new one is live;
/// returns (ms with no live connection, ms from the fault to the new connection).
async fn reconnect(gw: &Gateway, fault: StreamFault) -> anyhow::Result<(u64, u64)> {
    let old = only_connection(gw)?;
    let at = now_ms();
    anyhow::ensure!(
        gw.fault(&old.id, fault),
        "the connection went away before the {fault:?}"
    );
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let closed = gw.closed().into_iter().find(|c| c.id == old.id);
        let new = gw.connections().into_iter().find(|c| c.id != old.id);
        if let (Some(closed), Some(new)) = (closed, new) {
            return Ok((
                new.opened_at_ms.saturating_sub(closed.at_ms),
                new.opened_at_ms.saturating_sub(at),
            ));
        }
        anyhow::ensure!(Instant::now() < end, "no replacement 15 s after a {fault:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn disconnect_gap(gw: &Gateway) -> anyhow::Result<(u64, u64)> {
    // DingTalk rebalances connections that lived for hours; dingops replaces one younger
    // than REPLACE_AT_ONCE_AFTER only after the backoff, so each is let age past it first.
    let old = only_connection(gw)?;
    let age = Duration::from_millis(now_ms().saturating_sub(old.opened_at_ms));
    let old_enough = REPLACE_AT_ONCE_AFTER + Duration::from_millis(200);
    tokio::time::sleep(old_enough.saturating_sub(age)).await;
    reconnect(gw, StreamFault::Disconnect).await
}

async fn drop_gap(gw: &Gateway) -> anyhow::Result<u64> {
    Ok(reconnect(gw, StreamFault::Drop).await?.0)
}

async fn rss_phase(
    opts: &StreamOptions,
    exe: &Path,
    sim: &Simulator,
    groups: &[(String, String)],
    msgs: &Messages,
    dir: &Path,
) -> anyhow::Result<RssPhase> {
    use dingops::ledger::prelude::*;
    let db = dir.join("rss.db");
    let dingops = start_both(
        exe,
        sim,
        &db,
        groups,
        opts.connections,
        &[("DINGOPS_API_CALLS_PER_SEC", "0"), ("RUST_LOG", "warn")],
    )
    .await?;
    let gw = sim.stream();
    // Replies and calls too are taken as they come and counted here.
    let _ = (sim.take_replies(), sim.take_calls());
    let (mut replies, mut switches) = (0usize, 0usize);
    let mut count_calls = |sim: &Simulator| {
        replies += sim.take_replies().len();
        switches += sim
            .take_calls()
            .iter()
            .filter(|c| c.api == api::FRIEND_SWITCH)
            .count();
        replies
    };
    let _ = gw.take_acks();
    let _ = gw.take_pushes();
    let mut counter = gw.ack_counter();
    let base = *counter.borrow_and_update();
    let window = (opts.in_flight * opts.connections) as u64;
    // Frames not yet acknowledged, and the tallies of the ACKs taken from the gateway as
    // they come (so neither side keeps 100 000 records).
    let mut unacked: HashSet<String> = HashSet::new();
    let (mut acked_ok, mut acked_other, mut acked_again) = (0u64, 0u64, 0u64);
    let mut tally = |acks: Vec<RecordedAck>, unacked: &mut HashSet<String>| {
        for a in acks {
            if !unacked.remove(&a.message_id) {
                acked_again += 1;
            } else if a.code == 200 {
                acked_ok += 1;
            } else {
                acked_other += 1;
            }
        }
    };
    let start = Instant::now();
    let (mut pushed, mut turns) = (0u64, 0u64);
    while pushed < opts.messages {
        let acked = counter.borrow_and_update().saturating_sub(base);
        while pushed < opts.messages && pushed.saturating_sub(acked) < window {
            unacked.insert(gw.push_callback(&msgs.payload(pushed)));
            pushed += 1;
        }
        tally(gw.take_acks(), &mut unacked);
        turns += 1;
        if turns.is_multiple_of(256) {
            count_calls(sim);
        }
        if tokio::time::timeout(Duration::from_secs(30), counter.changed())
            .await
            .is_err()
        {
            anyhow::bail!("no ACK for 30 s after {pushed} pushes");
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        counter.wait_for(|c| c.saturating_sub(base) >= pushed),
    )
    .await;
    let sent_in = start.elapsed();
    tally(gw.take_acks(), &mut unacked);
    let repushes = gw.take_pushes().iter().filter(|p| p.attempt > 1).count();
    let n = opts.messages as usize;
    let end = Instant::now() + Duration::from_secs(600);
    while count_calls(sim) < n && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything extra would come now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    count_calls(sim);
    let rss_kib = dingops.rss_kib();
    let peak_rss_kib = dingops.peak_rss_kib();
    let ledger = dingops::ledger::SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock))?;
    let rows = ledger.history(None, None, usize::MAX)?;
    let done = rows.iter().filter(|r| r.status == "done").count();
    let locks = (0..opts.messages).filter(|k| k.is_multiple_of(4)).count();
    let checks = vec![
        (
            format!(
                "every message acknowledged 200: {acked_ok} of {n}, {acked_other} other codes, {} unacknowledged",
                unacked.len()
            ),
            acked_ok == opts.messages && acked_other == 0 && unacked.is_empty(),
        ),
        (
            format!("no frame pushed again: {repushes} re-pushes, {acked_again} repeated ACKs"),
            repushes == 0 && acked_again == 0,
        ),
        (
            format!("one reply per message: {replies} replies for {n}"),
            replies == n,
        ),
        (
            format!(
                "one finished ledger row per message: {} rows, {done} done",
                rows.len()
            ),
            rows.len() == n && done == n,
        ),
        (
            format!("one friendswitch call per /lock-dm: {switches} calls for {locks}"),
            switches == locks,
        ),
    ];
    drop(dingops);
    gone(gw).await?;
    Ok(RssPhase {
        sent_in,
        rss_kib,
        peak_rss_kib,
        checks,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn print_report(opts: &StreamOptions, r: &StreamReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "| figure | HTTP | Stream | ratio | goal |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    let s = &r.stream_latency_us;
    if let Some(h) = &r.http_latency {
        let (sent, ok) = r.stream_latency_counts;
        writeln!(
            out,
            "| ack latency at {} msgs/s p50 / p99 / p99.9 (ms); Stream: frame written → ACK read by the gateway, 1 connection, {ok} of {sent} ACK 200; HTTP: request → response, {} connections | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} (p99) | Stream p99 ≤ 2 ms {} |",
            opts.rate,
            opts.in_flight,
            h.quantile_ms(0.5),
            h.quantile_ms(0.99),
            h.quantile_ms(0.999),
            quantile_ms(s, 0.5),
            quantile_ms(s, 0.99),
            quantile_ms(s, 0.999),
            quantile_ms(s, 0.99) / h.quantile_ms(0.99),
            if quantile_ms(s, 0.99) <= 2.0 { "✔" } else { "✘" },
        )?;
    }
    if !r.stream_ingest.is_empty() {
        let (h, st) = (median(&r.http_ingest), median(&r.stream_ingest));
        let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
        writeln!(
            out,
            "| ingest msgs/s, burst, {} in flight, median of {} rounds ({} / {}) | {h:.0} | {st:.0} | {:.2} | — |",
            opts.in_flight,
            r.stream_ingest.len(),
            list(&r.http_ingest),
            list(&r.stream_ingest),
            st / h
        )?;
    }
    let med = |v: &[u64]| median(&v.iter().map(|x| *x as f64).collect::<Vec<_>>());
    if !r.disconnect.is_empty() {
        let gaps: Vec<u64> = r.disconnect.iter().map(|d| d.0).collect();
        let live: Vec<u64> = r.disconnect.iter().map(|d| d.1).collect();
        writeln!(
            out,
            "| no live connection after a `disconnect`, median of {} (ms; each {gaps:?}; replacement live {:.0} ms after the frame) | — | {:.0} | — | 0 {} |",
            gaps.len(),
            med(&live),
            med(&gaps),
            if gaps.iter().all(|g| *g == 0) {
                "✔"
            } else {
                "✘"
            },
        )?;
    }
    if !r.dropped.is_empty() {
        writeln!(
            out,
            "| no live connection after a dropped TCP connection, median of {} (ms; each {:?}) | — | {:.0} | — | ≤ 1 000 + connect |",
            r.dropped.len(),
            r.dropped,
            med(&r.dropped),
        )?;
    }
    if let Some(p) = &r.rss {
        let ok = p.peak_rss_kib.is_some_and(|k| k <= 64 * 1024);
        writeln!(
            out,
            "| dingops RSS after {} messages over {} connections, every command executed (MiB, now / peak; pushed and acknowledged in {:.1} s, {:.0}/s) | — | {} / {} | — | ≤ 64 MiB {} |",
            opts.messages,
            opts.connections,
            p.sent_in.as_secs_f64(),
            opts.messages as f64 / p.sent_in.as_secs_f64(),
            mib(p.rss_kib),
            mib(p.peak_rss_kib),
            if ok { "✔" } else { "✘" },
        )?;
        writeln!(out)?;
        for (what, held) in &p.checks {
            writeln!(out, "  {} {what}", if *held { "✔" } else { "✘" })?;
        }
    }
    writeln!(
        out,
        "  (this bench process, simulator included, peaked at {} MiB)",
        mib(r.bench_peak_rss_kib)
    )?;
    Ok(())
}
