//! `dingops-bench cards`: how fast a click on a card is acknowledged, and what a card costs
//! in DingTalk calls. Per round, dingops (the real binary, `serve`, `card_template_id` set)
//! runs as a child process once in `mode=stream` and once in `mode=http` against the
//! simulator in this process. Admins' switch commands first make the cards (seven settings
//! in each of a few hundred groups, so none supersedes another; dingops' own random
//! outTrackIds); then admins press Undo on distinct cards in random order at a fixed rate,
//! as CALLBACK frames on the card topic (the ACK timed by the gateway, as the Stream
//! benchmark times robot messages) or as signed `POST /card-callback` requests (timed by
//! the client). The baseline is robot messages at the same rate over the same transport to
//! the same process. Then `card_costs` counts what each step of a card's life calls at
//! DingTalk. See docs/performance.md, "Card callbacks".

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dingops::clock::now_ms;
use dingtalk_sim::chat::{Chat, Member, new_msg_id, text_message};
use dingtalk_sim::sign::{card_signature, sign as signature};
use dingtalk_sim::stream::{BOT_TOPIC, CARD_TOPIC, Gateway, RecordedAck};
use dingtalk_sim::{RecordedCall, SimCard, SimConfig, Simulator, api};
use serde_json::{Value, json};

use crate::bench::{
    ChildServer, PhaseStats, drive, group_chat, http_request, in_scratch_dir, quantile_ms, sim_with_config,
    start_dingops,
};
use crate::card_setup::{ADMINS, CARD_SECRET, TEMPLATE};
use crate::stream::{Messages, gone, paced_frames, settle, signed_requests};

/// The switch commands that make one card each in a group: seven settings, so no card
/// supersedes another and every one is clickable.
const COMMANDS: [&str; 7] = [
    "/mute-all 1h",
    "/atall owner",
    "/join-approval on",
    "/searchable on",
    "/history on",
    "/manage owner",
    "/lock-dm",
];
/// A click's ACK p99, well inside the 2 s DingTalk waits.
pub const GOAL_P99_MS: f64 = 20.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct CardsOptions {
    /// Length of each latency phase.
    pub seconds: Duration,
    /// Clicks (and baseline messages) per second.
    pub rate: u32,
    /// Rounds; the report gives the median of each figure.
    pub rounds: usize,
    /// Keep-alive connections of the HTTP phases.
    pub connections: usize,
    /// `RUST_LOG` of the dingops under test.
    pub rust_log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Stream,
    Http,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Stream => "Stream",
            Transport::Http => "HTTP",
        }
    }
}

/// ACK latencies of one phase (µs, sorted), how many were sent, and how many were answered
/// as they should be.
#[derive(Debug, Default, Clone)]
struct Latency {
    us: Vec<u32>,
    sent: u64,
    ok: u64,
}

impl Latency {
    fn from_acks(sent: u64, acks: &[RecordedAck], ok: impl Fn(&RecordedAck) -> bool) -> Self {
        let mut us: Vec<u32> = acks
            .iter()
            .filter_map(|a| a.after_push_us)
            .map(|u| u32::try_from(u).unwrap_or(u32::MAX))
            .collect();
        us.sort_unstable();
        Self {
            us,
            sent,
            ok: acks.iter().filter(|a| ok(a)).count() as u64,
        }
    }

    fn from_http(stats: PhaseStats) -> Self {
        Self {
            sent: stats.statuses.values().sum::<u64>() + stats.errors,
            ok: stats.count(200),
            us: stats.latencies_us,
        }
    }

    fn ms(&self, q: f64) -> f64 {
        quantile_ms(&self.us, q)
    }
}

/// DingTalk calls counted in one round of one transport.
#[derive(Debug, Default, Clone)]
struct LoadCosts {
    commands: u64,
    creates: u64,
    /// `card/instances` updates while the cards were made (a supersede would be one).
    creation_updates: u64,
    clicks: u64,
    click_updates: u64,
    /// `im/group/update` and `friendswitch/update` calls of the clicks.
    click_writes: u64,
}

struct Round {
    transport: Transport,
    clicks: Latency,
    baseline: Latency,
    costs: LoadCosts,
}

/// Runs the card benchmark of the dingops binary `exe`; `Ok(true)` when the goal and every
/// check held.
pub async fn run(opts: &CardsOptions, exe: &Path, out: &mut dyn Write) -> anyhow::Result<bool> {
    in_scratch_dir("cards-bench", async |dir| run_in(opts, out, exe, dir).await).await
}

async fn run_in(opts: &CardsOptions, out: &mut dyn Write, exe: &Path, dir: &Path) -> anyhow::Result<bool> {
    anyhow::ensure!(
        opts.rounds >= 1 && opts.rate >= 1,
        "--rounds and --rate must be at least 1"
    );
    let (sim, base) = sim_with_config(
        "Base",
        100,
        SimConfig {
            rate_limit_per_sec: 0,
            ..SimConfig::default()
        },
    )?;
    let msgs = Messages {
        chats: Arc::new(base.iter().map(|(cid, _)| group_chat(&sim, cid)).collect()),
        admin: Member::new("admin01", "Bench Admin", false),
    };
    writeln!(
        out,
        "dingops cards bench: {} clicks/s for {} s per phase, {} rounds, loopback only",
        opts.rate,
        opts.seconds.as_secs(),
        opts.rounds
    )?;
    let mut rounds = Vec::new();
    for r in 0..opts.rounds {
        for t in [Transport::Stream, Transport::Http] {
            writeln!(out, "  round {} {}: cards, clicks, baseline …", r + 1, t.name())?;
            rounds.push(round(opts, exe, &sim, dir, r, t, &msgs, &base).await?);
        }
    }
    sim.stop().await;
    writeln!(out, "  the calls of each step of a card's life …")?;
    let steps = crate::card_costs::lifetime(dir).await?;
    print_report(opts, &rounds, &steps, out)
}

/// One round of one transport: a fresh dingops (and ledger), its cards, the click phase and
/// the baseline phase (in turn first, round by round).
#[allow(clippy::too_many_arguments)]
async fn round(
    opts: &CardsOptions,
    exe: &Path,
    sim: &Simulator,
    dir: &Path,
    r: usize,
    t: Transport,
    msgs: &Messages,
    base: &[(String, String)],
) -> anyhow::Result<Round> {
    let n = u64::from(opts.rate) * opts.seconds.as_secs();
    let tag = t.name();
    let groups: Vec<(String, String)> = (0..n.div_ceil(COMMANDS.len() as u64) + 1)
        .map(|i| {
            (
                format!("cidCard{r}{tag}{i:05}=="),
                format!("chatCard{r}{tag}{i:05}"),
            )
        })
        .collect();
    for (cid, chat) in &groups {
        sim.add_group(cid, chat, cid);
    }
    let bound: Vec<(String, String)> = base.iter().chain(&groups).cloned().collect();
    let admins = ADMINS.join(",");
    let mut env = vec![
        (
            "DINGOPS_MODE",
            if t == Transport::Stream { "stream" } else { "http" },
        ),
        ("DINGOPS_CARD_TEMPLATE_ID", TEMPLATE),
        ("DINGOPS_API_CALLS_PER_SEC", "0"),
        ("DINGOPS_ADMINS", admins.as_str()),
        ("RUST_LOG", opts.rust_log.as_str()),
    ];
    if t == Transport::Http {
        env.push(("DINGOPS_CARD_CALLBACK_SECRET", CARD_SECRET));
    }
    let db = dir.join(format!("cards-{r}-{tag}.db"));
    let dingops = start_dingops(exe, sim, &db, &bound, &env).await?;
    if t == Transport::Stream {
        subscribed(sim.stream()).await?;
    }
    let _ = (sim.take_calls(), sim.take_replies());
    let (cards, mut costs) = make_cards(sim, &dingops, t, &groups).await?;
    let clicks: Vec<String> = cards
        .iter()
        .take(usize::try_from(n).unwrap_or(usize::MAX))
        .enumerate()
        .map(|(k, c)| click_json(c, ADMINS[k % ADMINS.len()], "undo"))
        .collect();
    let (mut click_lat, mut base_lat) = (Latency::default(), Latency::default());
    let clicks_first = r.is_multiple_of(2);
    for clicks_now in [clicks_first, !clicks_first] {
        if clicks_now {
            click_lat = click_phase(opts, sim, &dingops, t, &clicks).await;
            settle(sim).await;
            let calls = sim.take_calls();
            costs.clicks = click_lat.ok;
            costs.click_updates = count(&calls, &[api::CARD_UPDATE]);
            costs.click_writes = count(&calls, &[api::GROUP_UPDATE, api::FRIEND_SWITCH]);
        } else {
            base_lat = baseline_phase(opts, sim, &dingops, t, msgs).await;
            settle(sim).await;
            let _ = sim.take_calls();
        }
        let _ = sim.take_replies();
    }
    drop(dingops);
    if t == Transport::Stream {
        gone(sim.stream()).await?;
    }
    Ok(Round {
        transport: t,
        clicks: click_lat,
        baseline: base_lat,
        costs,
    })
}

fn count(calls: &[RecordedCall], apis: &[&str]) -> u64 {
    calls.iter().filter(|c| apis.contains(&c.api.as_str())).count() as u64
}

/// Waits until a live Stream connection subscribed the card topic.
async fn subscribed(gw: &Gateway) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let live = gw
            .connections()
            .iter()
            .any(|c| c.subscriptions.iter().any(|s| s.topic == CARD_TOPIC));
        if live {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < end, "dingops did not subscribe {CARD_TOPIC}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends the [`COMMANDS`] in every group of `groups` through the transport and waits for
/// their cards; returns the clickable ones in random order, and the calls it took.
async fn make_cards(
    sim: &Simulator,
    dingops: &ChildServer,
    t: Transport,
    groups: &[(String, String)],
) -> anyhow::Result<(Vec<SimCard>, LoadCosts)> {
    let admin = Member::new(ADMINS[0], "Bench Admin", false);
    let mut payloads = Vec::new();
    for (cid, _) in groups {
        let chat: Chat = group_chat(sim, cid);
        for c in COMMANDS {
            payloads.push(text_message(&new_msg_id(), &chat, &admin, c).to_string());
        }
    }
    let before = sim.cards().len();
    let total = payloads.len();
    match t {
        Transport::Stream => push_all(sim.stream(), &payloads, 64).await?,
        Transport::Http => {
            let ts = now_ms().to_string();
            let sign = signature(&sim.config().app_secret, &ts);
            let payloads = Arc::new(payloads);
            let stats = drive(
                dingops.addr,
                16,
                Duration::from_secs(120),
                None,
                Some(total as u64),
                Arc::new(move |n| http_request(&ts, &sign, &payloads[usize::try_from(n).unwrap_or(0)])),
            )
            .await;
            anyhow::ensure!(
                stats.count(200) == total as u64,
                "{} of {total} commands answered 200",
                stats.count(200)
            );
        }
    }
    let end = Instant::now() + Duration::from_secs(120);
    while sim.cards().len() < before + total {
        anyhow::ensure!(
            Instant::now() < end,
            "{} of {total} cards after 120 s",
            sim.cards().len() - before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle(sim).await;
    let calls = sim.take_calls();
    let costs = LoadCosts {
        commands: total as u64,
        creates: count(&calls, &[api::CARD_CREATE]),
        creation_updates: count(&calls, &[api::CARD_UPDATE]),
        ..LoadCosts::default()
    };
    let mut cards: Vec<SimCard> = sim.cards()[before..]
        .iter()
        .filter(|c| c.params.get("status").map(String::as_str) == Some("done"))
        .filter(|c| c.params.get("buttons").is_some_and(|b| b.contains("\"undo\"")))
        .cloned()
        .collect();
    shuffle(&mut cards);
    Ok((cards, costs))
}

/// Pushes every payload as a robot frame, `in_flight` unacknowledged at most; all must be
/// acknowledged 200.
async fn push_all(gw: &Gateway, payloads: &[String], in_flight: u64) -> anyhow::Result<()> {
    let _ = gw.take_acks();
    let mut counter = gw.ack_counter();
    let base = *counter.borrow_and_update();
    let mut pushed = 0usize;
    while pushed < payloads.len() {
        let acked = counter.borrow_and_update().saturating_sub(base);
        while pushed < payloads.len() && (pushed as u64).saturating_sub(acked) < in_flight {
            gw.push_frame("CALLBACK", BOT_TOPIC, payloads[pushed].clone());
            pushed += 1;
        }
        let changed = tokio::time::timeout(Duration::from_secs(30), counter.changed()).await;
        anyhow::ensure!(matches!(changed, Ok(Ok(()))), "no ACK for 30 s");
    }
    let all = payloads.len() as u64;
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        counter.wait_for(|c| c.saturating_sub(base) >= all),
    )
    .await;
    let acks = gw.take_acks();
    let _ = gw.take_pushes();
    let ok = acks.iter().filter(|a| a.code == 200).count();
    anyhow::ensure!(
        ok == payloads.len(),
        "{ok} of {} commands acknowledged 200",
        payloads.len()
    );
    Ok(())
}

/// Fisher–Yates with a xorshift seeded from the clock: the clicks hit the cards in no
/// particular order.
fn shuffle<T>(v: &mut [T]) {
    let mut x = now_ms() ^ u64::from(std::process::id()).rotate_left(32) | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = usize::try_from(x % (i as u64 + 1)).unwrap_or(0);
        v.swap(i, j);
    }
}

/// A click's callback JSON, as DingTalk sends it (the Stream frame's `data`, the HTTP body).
fn click_json(card: &SimCard, user_id: &str, action: &str) -> String {
    let content = json!({"cardPrivateData": {"actionIds": [action], "params": {"action": action}}});
    json!({
        "type": "actionCallback",
        "outTrackId": card.out_track_id,
        "corpId": "dingbenchcorp",
        "userId": user_id,
        "userIdType": 1,
        "spaceType": "IM_GROUP",
        "spaceId": card.conversation_id,
        "extension": "{}",
        "content": content.to_string(),
    })
    .to_string()
}

/// A `POST /card-callback` request signed as DingTalk signs it.
fn card_request(timestamp: &str, signature: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /card-callback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json; charset=utf-8\r\n\
         x-ddpaas-signature-timestamp: {timestamp}\r\nx-ddpaas-signature: {signature}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether a Stream ACK's data says the click was entered (the card shows "working").
fn entered(ack: &RecordedAck) -> bool {
    let data = match &ack.data {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    };
    ack.code == 200 && data.pointer("/response/cardData/cardParamMap/status") == Some(&Value::from("working"))
}

async fn click_phase(
    opts: &CardsOptions,
    sim: &Simulator,
    dingops: &ChildServer,
    t: Transport,
    clicks: &[String],
) -> Latency {
    match t {
        Transport::Stream => {
            let gw = sim.stream();
            let (sent, acks) = paced_frames(gw, opts.rate, opts.seconds, |n| {
                match clicks.get(usize::try_from(n).unwrap_or(usize::MAX)) {
                    Some(c) => {
                        gw.push_frame("CALLBACK", CARD_TOPIC, c.clone());
                        true
                    }
                    None => false,
                }
            })
            .await;
            Latency::from_acks(sent, &acks, entered)
        }
        Transport::Http => {
            // A signed pair is good for one click (a reused one is a duplicate), so each
            // request is signed at its own millisecond, as DingTalk signs each callback: its
            // scheduled send time (one ms apart beyond 1 000 clicks/s).
            let start = now_ms();
            let step = u64::from((1000 / opts.rate.max(1)).max(1));
            let clicks = Arc::new(clicks.to_vec());
            let limit = clicks.len() as u64;
            Latency::from_http(
                drive(
                    dingops.addr,
                    opts.connections,
                    opts.seconds,
                    Some(opts.rate),
                    Some(limit),
                    Arc::new(move |n| {
                        let ts = start.saturating_add(n.saturating_mul(step)).to_string();
                        let sign = card_signature(CARD_SECRET, &ts);
                        card_request(&ts, &sign, &clicks[usize::try_from(n).unwrap_or(0)])
                    }),
                )
                .await,
            )
        }
    }
}

async fn baseline_phase(
    opts: &CardsOptions,
    sim: &Simulator,
    dingops: &ChildServer,
    t: Transport,
    msgs: &Messages,
) -> Latency {
    match t {
        Transport::Stream => {
            let gw = sim.stream();
            let (sent, acks) = paced_frames(gw, opts.rate, opts.seconds, |n| {
                gw.push_callback(&msgs.payload(n));
                true
            })
            .await;
            Latency::from_acks(sent, &acks, |a| a.code == 200)
        }
        Transport::Http => Latency::from_http(
            drive(
                dingops.addr,
                opts.connections,
                opts.seconds,
                Some(opts.rate),
                None,
                signed_requests(sim, msgs),
            )
            .await,
        ),
    }
}

// ---------------------------------------------------------------------------------------
// The report.

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Writes the tables; whether the goal and every check held.
fn print_report(
    opts: &CardsOptions,
    rounds: &[Round],
    steps: &[crate::card_costs::Step],
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let mut ok = true;
    writeln!(out)?;
    writeln!(
        out,
        "| figure | robot messages (baseline) | card clicks | ratio (p99) | goal |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for t in [Transport::Stream, Transport::Http] {
        let of: Vec<&Round> = rounds.iter().filter(|r| r.transport == t).collect();
        let med = |f: &dyn Fn(&Round) -> f64| median(of.iter().map(|r| f(r)).collect());
        let (b50, b99) = (med(&|r| r.baseline.ms(0.5)), med(&|r| r.baseline.ms(0.99)));
        let (c50, c99) = (med(&|r| r.clicks.ms(0.5)), med(&|r| r.clicks.ms(0.99)));
        let met = c99 <= GOAL_P99_MS;
        ok &= met;
        let how = match t {
            Transport::Stream => "frame written → ACK read by the gateway, 1 connection",
            Transport::Http => "signed POST → response read by the client",
        };
        writeln!(
            out,
            "| {} ACK latency at {}/s p50 / p99 (ms), median of {} round(s) ({how}) | {b50:.2} / {b99:.2} | {c50:.2} / {c99:.2} | {:.2} | click p99 ≤ {GOAL_P99_MS} ms {} |",
            t.name(),
            opts.rate,
            of.len(),
            c99 / b99,
            if met { "✔" } else { "✘" }
        )?;
    }
    writeln!(out)?;
    for (i, r) in rounds.iter().enumerate() {
        let c = &r.costs;
        let held = r.clicks.ok == r.clicks.sent
            && r.baseline.ok == r.baseline.sent
            && c.creates == c.commands
            && c.creation_updates == 0
            && c.click_updates == c.clicks
            && c.click_writes == c.clicks;
        ok &= held;
        writeln!(
            out,
            "  {} round {} {}: clicks p50/p99 {:.2}/{:.2} ms, {} of {} entered; baseline p50/p99 {:.2}/{:.2} ms, {} of {} ACK 200; \
             createAndDeliver per command {:.2} ({} of {}), card updates while making cards {}; per click: {:.2} card update, {:.2} im/group/update or friendswitch",
            if held { "✔" } else { "✘" },
            i / 2 + 1,
            r.transport.name(),
            r.clicks.ms(0.5),
            r.clicks.ms(0.99),
            r.clicks.ok,
            r.clicks.sent,
            r.baseline.ms(0.5),
            r.baseline.ms(0.99),
            r.baseline.ok,
            r.baseline.sent,
            c.creates as f64 / c.commands.max(1) as f64,
            c.creates,
            c.commands,
            c.creation_updates,
            c.click_updates as f64 / c.clicks.max(1) as f64,
            c.click_writes as f64 / c.clicks.max(1) as f64,
        )?;
    }
    crate::card_costs::print_steps(steps, out)?;
    Ok(ok)
}
