//! `dingops demo`: the DingTalk simulator (the `dingtalk-sim` crate) and the real server on
//! loopback, a scripted group conversation, printed as a chat transcript, over HTTP callbacks
//! or over Stream mode (`--mode stream`). Success only when every step behaved. The steps
//! with text replies are here; the "Buttons" part (interactive cards, `buttons.rs`) runs
//! after them on a dingops restarted with a card template, on the same simulator and ledger.

mod buttons;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use dingtalk_sim::chat::{CallbackSender, Chat, Member, new_msg_id, text_message};
use dingtalk_sim::stream::BOT_TOPIC;
use dingtalk_sim::{RecordedCall, RecordedReply, SimConfig, Simulator, api};

use crate::clock::Clock;
use crate::config::{Mode, Settings};
use crate::server::{Application, RunOptions};

const GROUP_CID: &str = "cidDemoGroupQ2hhdE9wcw==";
const GROUP_CHATID: &str = "chatdemo0a1b2c3d";
const OTHER_CID: &str = "cidOtherGroupT3RoZXI=";
const OTHER_CHATID: &str = "chatother9f8e7d6c";

/// How the demo's messages reach dingops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Signed `POST /callback` requests (HTTP mode).
    Http,
    /// Frames pushed over the simulator's Stream gateway (Stream mode).
    Stream,
}

/// What a step must produce.
enum Expect {
    /// HTTP 200 and a reply starting with this mark that contains `contains`.
    Reply {
        mark: &'static str,
        contains: &'static str,
    },
    /// This HTTP status and no reply.
    Rejected { status: u16 },
    /// HTTP 200 and no reply: a redelivery.
    Duplicate,
    /// Nothing is sent: the demo waits for a timed revert to post its result in the group
    /// (through the group-message API), containing `contains`.
    Revert { contains: &'static str },
}

/// How long one minute of a timed revert lasts in the demo, so that `/mute-all 1m` reverts
/// while the transcript is being written. The transcript says so.
const DEMO_REVERT_MINUTE: Duration = Duration::from_secs(2);

/// The demo's policy: bound groups are not searchable. Reconcile runs every 2 s.
const DEMO_POLICY: &str = "[[rule]]\ngroups = [\"*\"]\nsearchable = false\n";

struct Step {
    who: &'static str,
    text: &'static str,
    /// Sign with a wrong secret.
    forged: bool,
    /// Resend the body of the previous step.
    redeliver: bool,
    expect: Expect,
    /// Expected DM switch of the demo group in the simulator after the step.
    dm_after: Option<bool>,
}

/// A reply starting with `mark` that contains `contains`.
fn reply(mark: &'static str, contains: &'static str) -> Expect {
    Expect::Reply { mark, contains }
}

fn script() -> Vec<Step> {
    let step = |who, text, expect, dm_after| Step {
        who,
        text,
        forged: false,
        redeliver: false,
        expect,
        dm_after,
    };
    vec![
        step("alice", "/help", reply("ℹ️", "/lock-dm"), Some(false)),
        step("alice", "/lock-dm", reply("⛔", "/bind"), Some(false)),
        step(
            "alice",
            "/bind chatother9f8e7d6c",
            reply("⛔", "another group"),
            Some(false),
        ),
        step(
            "alice",
            "/bind chatdemo0a1b2c3d",
            reply("✅", "bound"),
            Some(false),
        ),
        step("alice", "/lock-dm", reply("✅", "forbidden"), Some(true)),
        step("bob", "/unlock-dm", reply("⛔", "admins only"), Some(true)),
        step("bob", "/dm-status", reply("ℹ️", "forbidden"), Some(true)),
        step("alice", "/unlock-dm", reply("✅", "allowed again"), Some(false)),
        Step {
            redeliver: true,
            ..step("alice", "/unlock-dm", Expect::Duplicate, Some(false))
        },
        Step {
            forged: true,
            ..step(
                "mallory",
                "/lock-dm",
                Expect::Rejected { status: 401 },
                Some(false),
            )
        },
        step("bob", "/私聊状态", reply("ℹ️", "allowed"), Some(false)),
        step("alice", "/mute-all 1m", reply("✅", "It reverts at"), Some(false)),
        step(
            "bob",
            "/group-status",
            reply("ℹ️", "Pending revert: Whole-group mute back to off"),
            Some(false),
        ),
        step(
            "alice",
            "(no message: the demo waits for the timed revert)",
            Expect::Revert {
                contains: "Timed revert: Whole-group mute back to off",
            },
            Some(false),
        ),
        step(
            "bob",
            "/群状态",
            reply("ℹ️", "Whole-group mute: off"),
            Some(false),
        ),
        // The demo's policy keeps every bound group out of search (rule 1).
        step("alice", "/searchable on", reply("⛔", "rule 1"), Some(false)),
        step(
            "alice",
            "/searchable on 1m",
            reply("✅", "to the policy's value"),
            Some(false),
        ),
        step(
            "bob",
            "/group-status",
            reply("ℹ️", "exception until"),
            Some(false),
        ),
        step(
            "alice",
            "(no message: reconcile runs every 2 s and leaves the exception alone until it ends)",
            Expect::Revert {
                contains: "Searchable back to off: the group cannot be found by search, the policy's value (rule 1)",
            },
            Some(false),
        ),
    ]
}

/// The time of day of `ms`, for the transcript.
fn hms(ms: u64) -> String {
    let t = crate::clock::format_ms(ms);
    t.get(11..19).unwrap_or(&t).to_owned()
}

/// The string at `pointer` in `v`, `?` when there is none.
fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("?")
}

fn describe_call(call: &RecordedCall) -> String {
    let what = match call.api.as_str() {
        api::FRIEND_SWITCH => format!(
            "friendswitch/update chatid={} is_prohibit={}",
            call.body.get("chatid").and_then(Value::as_str).unwrap_or("?"),
            call.body.get("is_prohibit").map_or("?".into(), Value::to_string)
        ),
        api::CONVERT => format!(
            "convertToOpenConversationId chatId={}",
            call.body.as_str().unwrap_or("?")
        ),
        api::GROUP_UPDATE => format!(
            "im/group/update chatid={} managementOptions={}",
            call.body.get("chatid").and_then(Value::as_str).unwrap_or("?"),
            call.body
                .get("managementOptions")
                .map_or("?".into(), Value::to_string)
        ),
        api::CHAT_GET => format!("chat/get chatid={}", call.body.as_str().unwrap_or("?")),
        api::CARD_CREATE => format!(
            "card/instances/createAndDeliver outTrackId={} callbackType={}",
            str_at(&call.body, "/outTrackId"),
            str_at(&call.body, "/callbackType")
        ),
        api::CARD_UPDATE => format!(
            "card/instances (update) outTrackId={} status={}",
            str_at(&call.body, "/outTrackId"),
            str_at(&call.body, "/cardData/cardParamMap/status")
        ),
        api::CARD_REGISTER => format!(
            "card/callbacks/register callbackRouteKey={} callbackUrl={}",
            str_at(&call.body, "/callbackRouteKey"),
            str_at(&call.body, "/callbackUrl")
        ),
        api::GROUP_MESSAGE => "robot/groupMessages/send".into(),
        api::GET_TOKEN => "gettoken".into(),
        api::ACCESS_TOKEN => "oauth2/accessToken".into(),
        other => other.into(),
    };
    let answer = if call.answer == 0 {
        "ok".to_owned()
    } else {
        format!("error {}", call.answer)
    };
    format!("{what} → {answer}")
}

/// Settings of a dingops whose DingTalk is `sim`: [`Simulator::dingops_env`] read as
/// configuration; everything else at its default.
fn sim_settings(sim: &Simulator) -> Result<Settings, crate::config::ConfigError> {
    let env = sim
        .dingops_env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Settings::from_sources(None, &env)
}

/// The settings of the demo's dingops (before the Buttons part turns cards on): the
/// simulator's DingTalk, Alice the only admin, the ledger in `dir`, shortened reverts, the
/// demo's policy reconciled every 2 s.
fn demo_settings(sim: &Simulator, dir: &std::path::Path, transport: Transport) -> anyhow::Result<Settings> {
    let mut settings = sim_settings(sim)?;
    settings.worker.admins = vec!["manager01".into()];
    settings.worker.trust_is_admin = false;
    settings.ledger.database = dir.join("demo.db").into();
    settings.server.shutdown_grace_secs = 5;
    settings.worker.revert_minute = DEMO_REVERT_MINUTE;
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, DEMO_POLICY)?;
    settings.fleet.policy = Some(policy);
    settings.fleet.reconcile_every = Some(Duration::from_secs(2));
    if transport == Transport::Stream {
        settings.stream.mode = Mode::Stream;
    }
    Ok(settings)
}

/// A dingops serving on loopback (an [`Application`] on its own task).
struct Running {
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// `http://127.0.0.1:<port>`.
    url: String,
}

impl Running {
    async fn start(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let app = Application::build_with_listener(
            settings,
            listener,
            RunOptions {
                handle_signals: false,
                http_workers: 1,
            },
        )
        .await?;
        let url = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        let task = tokio::spawn(app.run_until_stopped());
        Ok(Self { handle, task, url })
    }

    /// Stops it gracefully and waits until it has.
    async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// Waits (10 s at most) until a live Stream connection subscribed `topic`.
async fn wait_for_subscriber(sim: &Simulator, topic: &str) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subscribed = sim
            .stream()
            .connections()
            .iter()
            .any(|c| c.subscriptions.iter().any(|s| s.topic == topic));
        if subscribed || std::time::Instant::now() >= end {
            return subscribed;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many steps of a part behaved, of how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    passed: usize,
    total: usize,
}

impl Tally {
    fn add(&mut self, behaved: bool) {
        self.total += 1;
        self.passed += usize::from(behaved);
    }
}

/// Runs the demo, writing the transcript to `out`. `Ok(true)` when every step behaved.
pub async fn run(out: &mut dyn Write, transport: Transport, clock: Arc<dyn Clock>) -> anyhow::Result<bool> {
    let sim_config = SimConfig::default();
    let sim = Simulator::start(sim_config.clone(), TcpListener::bind("127.0.0.1:0")?)?;
    sim.add_group(GROUP_CID, GROUP_CHATID, "dingops demo group");
    sim.add_group(OTHER_CID, OTHER_CHATID, "another group");

    let dir = std::env::temp_dir().join(format!("dingops-demo-{}-{}", std::process::id(), new_msg_id()));
    std::fs::create_dir_all(&dir)?;
    let result = both_parts(out, &sim, &dir, &sim_config, transport, &clock).await;
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The conversation with text replies, then the Buttons part; the summary of both.
async fn both_parts(
    out: &mut dyn Write,
    sim: &Simulator,
    dir: &std::path::Path,
    cfg: &SimConfig,
    transport: Transport,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<bool> {
    let settings = demo_settings(sim, dir, transport)?;
    let dingops = Running::start(settings.clone()).await?;
    let played = if transport == Transport::Stream && !wait_for_subscriber(sim, BOT_TOPIC).await {
        writeln!(out, "dingops did not open a Stream connection to the simulator")?;
        Ok(None)
    } else {
        play(out, sim, &dingops.url, cfg, transport, clock)
            .await
            .map(Some)
    };
    dingops.stop().await;
    let Some(text) = played? else {
        return Ok(false);
    };
    let cards = buttons::play(out, sim, settings, cfg, transport, clock).await?;
    let (passed, total) = (text.passed + cards.passed, text.total + cards.total);
    writeln!(out, "Summary: {passed} of {total} steps behaved.")?;
    Ok(passed == total)
}

/// Pushes `data` as a robot frame and waits for dingops' ACK; its code, 0 when none came.
async fn push_and_wait(sim: &Simulator, data: String) -> u16 {
    let gateway = sim.stream();
    let message_id = gateway.push_frame("CALLBACK", BOT_TOPIC, data);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if let Some(ack) = gateway.acks().iter().find(|a| a.message_id == message_id) {
            return u16::try_from(ack.code).unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    0
}

/// The demo's cast: who speaks, as which DingTalk member, in which role.
fn cast() -> HashMap<&'static str, (Member, &'static str)> {
    [
        (
            "alice",
            (
                Member::new("manager01", "Alice", true),
                "group admin, on the dingops admin list",
            ),
        ),
        ("bob", (Member::new("member01", "Bob", false), "member")),
        (
            "mallory",
            (Member::new("intruder", "Mallory", true), "forges the signature"),
        ),
    ]
    .into_iter()
    .collect()
}

/// The transcript's head: where everything runs and what the group looks like.
fn introduce(
    out: &mut dyn Write,
    sim: &Simulator,
    bot_url: &str,
    title: &str,
    stream: bool,
) -> std::io::Result<()> {
    writeln!(
        out,
        "dingops demo: the real dingops server and a simulated DingTalk, both on loopback"
    )?;
    writeln!(out, "  DingTalk simulator  {}", sim.url())?;
    if stream {
        writeln!(
            out,
            "  dingops             {bot_url}  (Stream mode: connected to {})",
            sim.stream().endpoint()
        )?;
    } else {
        writeln!(out, "  dingops             {bot_url}  (POST /callback)")?;
    }
    writeln!(
        out,
        "  group \"{title}\"  openConversationId {GROUP_CID}  chatid {GROUP_CHATID}"
    )?;
    writeln!(out, "  private chat in the group right now: allowed")?;
    writeln!(
        out,
        "  timed reverts are shortened for the demo: one minute lasts {} s (60 s in a real run)",
        DEMO_REVERT_MINUTE.as_secs()
    )?;
    writeln!(out)
}

/// How the demo's messages are sent: signed callbacks (one sender with the right secret,
/// one with a guessed one) or Stream frames.
struct Senders<'a> {
    sim: &'a Simulator,
    sender: CallbackSender,
    forger: CallbackSender,
    stream: bool,
}

impl<'a> Senders<'a> {
    /// Senders to the dingops at `bot_url` (HTTP) or through the simulator's gateway.
    fn new(sim: &'a Simulator, bot_url: &str, cfg: &SimConfig, stream: bool) -> Self {
        Self {
            sim,
            sender: CallbackSender::new(bot_url, SecretString::from(cfg.app_secret.clone())),
            forger: CallbackSender::new(bot_url, SecretString::from("a guessed secret".to_owned())),
            stream,
        }
    }

    /// Sends `body` (forged: signed wrongly, or as a cut-off frame); HTTP: the response
    /// status, Stream: the ACK's code.
    async fn send(&self, body: &Value, forged: bool) -> anyhow::Result<u16> {
        Ok(match (self.stream, forged) {
            (true, true) => {
                let text = body.to_string();
                let half = text.chars().count() / 2;
                push_and_wait(self.sim, text.chars().take(half).collect()).await
            }
            (true, false) => push_and_wait(self.sim, body.to_string()).await,
            (false, true) => {
                let (ts, sign) = self.forger.signed_headers();
                self.forger
                    .send_raw(body.to_string().into_bytes(), Some(&ts), Some(&sign))
                    .await?
                    .0
            }
            (false, false) => self.sender.send(body).await?.0,
        })
    }
}

/// A step that sends nothing: waits (20 s at most) for the timed revert's group message
/// and writes it with the DingTalk calls made meanwhile; whether it said `contains`.
async fn watch_revert(
    out: &mut dyn Write,
    sim: &Simulator,
    text: &str,
    contains: &str,
    (replies_before, calls_before): (usize, usize),
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<bool> {
    writeln!(out, "[{}] {}", hms(clock.now_ms()), text)?;
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let message = loop {
        let found = sim
            .replies()
            .into_iter()
            .skip(replies_before)
            .find(|r| r.via == "group-message");
        if found.is_some() || std::time::Instant::now() >= end {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let calls: Vec<_> = sim.calls(None).into_iter().skip(calls_before).collect();
    for call in &calls {
        writeln!(out, "           ↳ DingTalk API: {}", describe_call(call))?;
    }
    let behaved = match message {
        Some(m) if m.content.contains(contains) => {
            writeln!(
                out,
                "[{}] dingops (timer, group message): {}",
                hms(m.at_ms),
                m.content
            )?;
            writeln!(out, "           ✔ as expected")?;
            true
        }
        Some(m) => {
            writeln!(out, "           ✘ the revert said {:?}", m.content)?;
            false
        }
        None => {
            writeln!(out, "           ✘ no timed revert within 20 s")?;
            false
        }
    };
    writeln!(out)?;
    Ok(behaved)
}

/// What a step that sent a message saw: dingops' answer (HTTP status or ACK code, and
/// which of the two), the new replies and DingTalk calls.
struct Seen<'a> {
    status: u16,
    answered: &'static str,
    replies: &'a [RecordedReply],
    calls: &'a [RecordedCall],
}

/// How what a step saw differs from what it expects (written lines for refusals and
/// duplicates included); empty when it behaved.
fn problems(
    out: &mut dyn Write,
    expect: &Expect,
    seen: &Seen<'_>,
    member: &Member,
    stream: bool,
) -> std::io::Result<Vec<String>> {
    let Seen {
        status,
        answered,
        replies: new_replies,
        calls,
    } = *seen;
    let mut problems = Vec::new();
    match *expect {
        Expect::Reply { mark, contains } => {
            if status != 200 {
                problems.push(format!("{answered} {status}, expected 200"));
            }
            match new_replies {
                [r] => {
                    if !r.content.starts_with(mark) {
                        problems.push(format!("reply should start with {mark}"));
                    }
                    if !r.content.contains(contains) {
                        problems.push(format!("reply should mention \"{contains}\""));
                    }
                    if !r.at_user_ids.contains(&member.staff_id)
                        || !r.content.contains(&format!("@{}", member.staff_id))
                    {
                        problems.push("reply should @-mention the sender".into());
                    }
                }
                other => problems.push(format!("expected one reply, got {}", other.len())),
            }
        }
        Expect::Rejected { status: want } => {
            // Stream frames carry no signature: the broken payload is refused with 400.
            let want = if stream { 400 } else { want };
            writeln!(out, "           ↳ dingops answered {answered} {status}")?;
            if status != want {
                problems.push(format!("{answered} {status}, expected {want}"));
            }
            if !new_replies.is_empty() || !calls.is_empty() {
                problems.push("nothing should have been sent to DingTalk".into());
            }
        }
        Expect::Revert { .. } => {}
        Expect::Duplicate => {
            writeln!(
                out,
                "           ↳ dingops answered {answered} {status} and ignored the duplicate msgId"
            )?;
            if status != 200 {
                problems.push(format!("{answered} {status}, expected 200"));
            }
            if !new_replies.is_empty() || !calls.is_empty() {
                problems.push("a redelivered message must not run again".into());
            }
        }
    }
    Ok(problems)
}

/// Who a step's line in the transcript is from.
fn speaker(step: &Step, member: &Member, role: &str, stream: bool) -> String {
    if step.redeliver {
        format!("(DingTalk redelivers {}'s last message)", member.nick)
    } else if step.forged && stream {
        format!(
            "{} ({}, pushes a frame whose payload is cut off)",
            member.nick, member.staff_id
        )
    } else {
        format!("{} ({}, {role})", member.nick, member.staff_id)
    }
}

/// After a step's message was sent (dingops answered `status`): waits for its reply (or
/// a moment, when none is expected), writes the DingTalk calls and replies it caused, and
/// whether the step behaved.
async fn judge(
    out: &mut dyn Write,
    sim: &Simulator,
    step: &Step,
    member: &Member,
    status: u16,
    (replies_before, calls_before): (usize, usize),
    stream: bool,
) -> anyhow::Result<bool> {
    let answered = if stream { "ACK code" } else { "HTTP" };
    let wanted_reply = matches!(step.expect, Expect::Reply { .. });
    let replies = if wanted_reply {
        sim.wait_for_replies(replies_before + 1, Duration::from_secs(10))
            .await
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sim.replies()
    };
    let new_replies = &replies[replies_before.min(replies.len())..];
    let calls: Vec<_> = sim.calls(None).into_iter().skip(calls_before).collect();
    for call in calls.iter().filter(|c| c.api != api::SEND_BY_SESSION) {
        writeln!(out, "           ↳ DingTalk API: {}", describe_call(call))?;
    }
    for r in new_replies {
        let mut lines = r.content.lines();
        writeln!(out, "[{}] dingops: {}", hms(r.at_ms), lines.next().unwrap_or(""))?;
        for l in lines {
            writeln!(out, "           {l}")?;
        }
    }
    let seen = Seen {
        status,
        answered,
        replies: new_replies,
        calls: &calls,
    };
    let mut problems = problems(out, &step.expect, &seen, member, stream)?;
    if let Some(want) = step.dm_after {
        let now = sim.group(GROUP_CID).map(|g| g.dm_prohibited);
        if now != Some(want) {
            problems.push(format!(
                "private chat should be {} in DingTalk",
                if want { "forbidden" } else { "allowed" }
            ));
        }
    }
    if problems.is_empty() {
        writeln!(out, "           ✔ as expected")?;
    } else {
        for p in &problems {
            writeln!(out, "           ✘ {p}")?;
        }
    }
    writeln!(out)?;
    Ok(problems.is_empty())
}

/// The demo group as a callback names it, with a fresh reply session.
fn demo_chat(sim: &Simulator) -> Chat {
    let (webhook, expires) = sim.open_session(GROUP_CID, Duration::from_secs(90 * 60));
    Chat {
        open_conversation_id: GROUP_CID.into(),
        title: "dingops demo group".into(),
        conversation_type: "2".into(),
        session_webhook: webhook,
        session_expires_ms: expires,
    }
}

/// The conversation with text replies (the steps of [`script`]).
async fn play(
    out: &mut dyn Write,
    sim: &Simulator,
    bot_url: &str,
    cfg: &SimConfig,
    transport: Transport,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Tally> {
    let stream = transport == Transport::Stream;
    let people = cast();
    let chat = demo_chat(sim);
    let senders = Senders::new(sim, bot_url, cfg, stream);
    introduce(out, sim, bot_url, &chat.title, stream)?;

    let mut tally = Tally::default();
    let mut last_body: Option<Value> = None;
    for step in script() {
        let (member, role) = &people[step.who];
        let body = match (&last_body, step.redeliver) {
            (Some(b), true) => b.clone(),
            _ => text_message(&new_msg_id(), &chat, member, step.text),
        };
        let replies_before = sim.replies().len();
        let calls_before = sim.calls(None).len();
        let label = speaker(&step, member, role, stream);
        if let Expect::Revert { contains } = step.expect {
            tally.add(
                watch_revert(
                    out,
                    sim,
                    step.text,
                    contains,
                    (replies_before, calls_before),
                    clock,
                )
                .await?,
            );
            continue;
        }
        writeln!(out, "[{}] {label}: @dingops {}", hms(clock.now_ms()), step.text)?;
        let status = senders.send(&body, step.forged).await?;
        last_body = Some(body);
        tally.add(
            judge(
                out,
                sim,
                &step,
                member,
                status,
                (replies_before, calls_before),
                stream,
            )
            .await?,
        );
    }
    let state = sim.group(GROUP_CID).map(|g| g.dm_prohibited);
    writeln!(
        out,
        "Private chat in \"{}\" is now {} in (simulated) DingTalk.",
        chat.title,
        if state == Some(true) {
            "forbidden"
        } else {
            "allowed"
        }
    )?;
    writeln!(out)?;
    Ok(tally)
}
