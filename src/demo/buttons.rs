//! The demo's "Buttons" part: dingops restarted with a card template on the same simulator
//! and ledger, a switch command answered with an interactive card, and clicks on its buttons
//! (a member's, refused privately; an admin's Extend and Revert now), each printed with the
//! card as the simulator renders it and the DingTalk calls it made. See docs/cards.md.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use dingtalk_sim::chat::{Member, new_msg_id, text_message};
use dingtalk_sim::stream::CARD_TOPIC;
use dingtalk_sim::{
    CardPress, CardPressOutcome, RecordedCall, RecordedReply, SimCard, SimConfig, Simulator, api,
};

use super::{
    DEMO_REVERT_MINUTE, GROUP_CID, Running, Senders, Tally, Transport, cast, demo_chat, describe_call, hms,
};
use crate::clock::Clock;
use crate::config::Settings;

/// The card template the demo's dingops names (the simulator takes any id).
const TEMPLATE: &str = "dingops-demo.schema";
/// `card_callback_secret` of the HTTP mode run.
const CARD_SECRET: &str = "demo-card-callback-secret";
/// `/mute-all 1h` in demo time: sixty shortened minutes.
const DEMO_HOUR: Duration = Duration::from_secs(60 * DEMO_REVERT_MINUTE.as_secs());
/// The APIs that fetch an access token: dingops' own business, not a step's.
const TOKEN_APIS: [&str; 2] = [api::GET_TOKEN, api::ACCESS_TOKEN];

/// What a step does: type a command, or press a button of the card.
enum Act {
    Type(&'static str),
    Press(&'static str),
}

/// What a step must leave behind.
struct Want {
    /// The clicker's private notice in dingops' answer to the click (presses only; `""`:
    /// none).
    notice: &'static str,
    /// The card's status and buttons once the step is done.
    status: &'static str,
    buttons: &'static [&'static str],
    /// The card's body mentions this.
    body: &'static str,
    /// The time in the card's body moved by `/mute-all 1h`'s hour.
    extended: bool,
    /// The group's `chatBannedType` in the simulator afterwards.
    muted: i64,
    /// The DingTalk APIs the step called, in any order (token calls aside).
    calls: &'static [&'static str],
}

struct ButtonStep {
    who: &'static str,
    act: Act,
    want: Want,
}

const ALL_THREE: &[&str] = &["undo", "extend", "revert_now"];

fn script() -> Vec<ButtonStep> {
    vec![
        ButtonStep {
            who: "alice",
            act: Act::Type("/mute-all 1h"),
            want: Want {
                notice: "",
                status: "done",
                buttons: ALL_THREE,
                body: "It reverts at",
                extended: false,
                muted: 1,
                calls: &[api::GROUP_UPDATE, api::CARD_CREATE],
            },
        },
        ButtonStep {
            who: "bob",
            act: Act::Press("undo"),
            want: Want {
                notice: crate::cards::gate::ADMINS_ONLY,
                status: "done",
                buttons: ALL_THREE,
                body: "It reverts at",
                extended: false,
                muted: 1,
                calls: &[],
            },
        },
        ButtonStep {
            who: "alice",
            act: Act::Press("extend"),
            want: Want {
                notice: "",
                status: "extended",
                buttons: ALL_THREE,
                body: "Extended by manager01",
                extended: true,
                muted: 1,
                // Only the card changes: DingTalk has the value already.
                calls: &[api::CARD_UPDATE],
            },
        },
        ButtonStep {
            who: "alice",
            act: Act::Press("revert_now"),
            want: Want {
                notice: "",
                status: "reverted",
                buttons: &[],
                body: "Reverted now by manager01",
                extended: false,
                muted: 0,
                calls: &[api::GROUP_UPDATE, api::CARD_UPDATE],
            },
        },
    ]
}

/// A button's label as the simulator shows it.
fn label(action: &str) -> &str {
    match action {
        "undo" => "Undo",
        "extend" => "Extend",
        "revert_now" => "Revert now",
        other => other,
    }
}

/// Plays the Buttons part on a dingops built from `settings` with cards on.
pub(super) async fn play(
    out: &mut dyn Write,
    sim: &Simulator,
    mut settings: Settings,
    cfg: &SimConfig,
    transport: Transport,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Tally> {
    let stream = transport == Transport::Stream;
    settings.cards.template_id = Some(TEMPLATE.into());
    if !stream {
        settings.cards.callback_secret = Some(SecretString::from(CARD_SECRET));
    }
    // Without the policy, reconcile makes no calls of its own during the steps.
    settings.fleet.policy = None;
    settings.fleet.reconcile_every = None;
    writeln!(
        out,
        "Buttons: dingops restarts on the same ledger and simulator with card_template_id = \"{TEMPLATE}\""
    )?;
    writeln!(
        out,
        "  (switch commands are answered with an interactive card; the policy is left out so each step shows only its own DingTalk calls)"
    )?;
    let dingops = Running::start(settings.clone()).await?;
    let ready = if stream {
        introduce_stream(out, sim, &dingops.url).await
    } else {
        introduce_http(out, sim, &settings, &dingops.url, clock).await
    };
    let tally = match ready {
        Ok(true) => steps(out, sim, &dingops.url, cfg, stream, clock).await,
        Ok(false) => Ok(Tally {
            passed: 0,
            total: script().len(),
        }),
        Err(e) => Err(e),
    };
    dingops.stop().await;
    let tally = tally?;
    let muted = sim
        .group(GROUP_CID)
        .map(|g| g.options.get("chatBannedType").copied());
    writeln!(
        out,
        "Whole-group mute in \"dingops demo group\" is now {} in (simulated) DingTalk.",
        if muted == Some(Some(0)) { "off" } else { "on" }
    )?;
    Ok(tally)
}

/// Stream mode: dingops subscribes the card topic on its connection.
async fn introduce_stream(out: &mut dyn Write, sim: &Simulator, url: &str) -> anyhow::Result<bool> {
    if !super::wait_for_subscriber(sim, CARD_TOPIC).await {
        writeln!(
            out,
            "  ✘ dingops did not subscribe {CARD_TOPIC} on a Stream connection"
        )?;
        return Ok(false);
    }
    writeln!(
        out,
        "  dingops             {url}  (Stream mode: clicks come as frames on {CARD_TOPIC})"
    )?;
    writeln!(out)?;
    Ok(true)
}

/// HTTP mode: registers `POST /card-callback` for the route key, as `dingops check
/// --register-card-callback` does.
async fn introduce_http(
    out: &mut dyn Write,
    sim: &Simulator,
    settings: &Settings,
    url: &str,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<bool> {
    writeln!(
        out,
        "  dingops             {url}  (POST /callback, POST /card-callback)"
    )?;
    let calls_before = sim.calls(None).len();
    let client = crate::dingtalk::DingTalk::new(
        &settings.dingtalk,
        Arc::new(crate::telemetry::Metrics::new()),
        clock.clone(),
    )?;
    let registered = client
        .register_card_callback(
            &format!("{url}/card-callback"),
            &settings.cards.callback_route_key,
            &SecretString::from(CARD_SECRET),
            true,
        )
        .await;
    writeln!(
        out,
        "[{}] the operator registers the callback URL (dingops check --register-card-callback {url}/card-callback)",
        hms(clock.now_ms())
    )?;
    write_calls(out, &sim.calls(None)[calls_before..])?;
    if let Err(e) = registered {
        writeln!(out, "  ✘ the callback URL was not registered: {}", e.short())?;
        return Ok(false);
    }
    writeln!(out)?;
    Ok(true)
}

/// Writes DingTalk calls as the demo does (token calls included: they are real calls).
fn write_calls(out: &mut dyn Write, calls: &[RecordedCall]) -> std::io::Result<()> {
    for call in calls {
        writeln!(out, "           ↳ DingTalk API: {}", describe_call(call))?;
    }
    Ok(())
}

/// Writes what the group sees of the card: the card as sent, dingops' answer to a click as
/// DingTalk applies it (`answers`), or `card/instances` updates (not `answers`).
fn write_card_entries(out: &mut dyn Write, replies: &[RecordedReply], answers: bool) -> std::io::Result<()> {
    for r in replies.iter().filter(|r| r.via.starts_with("card")) {
        let who = match (r.via.as_str(), r.body.get("outTrackId").is_some()) {
            ("card", _) => "dingops (card)",
            (_, true) => "dingops (card update)",
            (_, false) => "dingops (its answer to the click, shown at once)",
        };
        let answer = r.via == "card-update" && r.body.get("outTrackId").is_none();
        if answer != answers {
            continue;
        }
        let mut lines = r.content.lines();
        writeln!(out, "[{}] {who}: {}", hms(r.at_ms), lines.next().unwrap_or(""))?;
        for l in lines {
            writeln!(out, "           {l}")?;
        }
    }
    Ok(())
}

/// The steps of [`script`] against the dingops at `url`.
async fn steps(
    out: &mut dyn Write,
    sim: &Simulator,
    url: &str,
    cfg: &SimConfig,
    stream: bool,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Tally> {
    let people = cast();
    let chat = demo_chat(sim);
    let senders = Senders::new(sim, url, cfg, stream);
    let mut tally = Tally::default();
    let mut card: Option<SimCard> = None;
    for step in script() {
        let (member, role) = &people[step.who];
        let (replies_before, calls_before) = (sim.replies().len(), sim.calls(None).len());
        let before = card.clone();
        let mut problems = Vec::new();
        match step.act {
            Act::Type(text) => {
                writeln!(
                    out,
                    "[{}] {} ({}, {role}): @dingops {text}",
                    hms(clock.now_ms()),
                    member.nick,
                    member.staff_id
                )?;
                let body = text_message(&new_msg_id(), &chat, member, text);
                let cards_before = sim.cards().len();
                let status = senders.send(&body, false).await?;
                if status != 200 {
                    let answered = if stream { "ACK code" } else { "HTTP" };
                    problems.push(format!("dingops answered {answered} {status}, expected 200"));
                }
                let cards = sim
                    .wait_for_cards(cards_before + 1, Duration::from_secs(10))
                    .await;
                card = cards.get(cards_before).cloned();
                if card.is_none() {
                    problems.push("no card was sent".into());
                }
            }
            Act::Press(action) => {
                let label = label(action);
                writeln!(
                    out,
                    "[{}] {} ({}, {role}): presses [{label}] on the card",
                    hms(clock.now_ms()),
                    member.nick,
                    member.staff_id
                )?;
                let (after, wrong) =
                    press(out, sim, card.as_ref(), member, action, &step.want, stream).await?;
                card = after;
                problems.extend(wrong);
            }
        }
        let replies = sim.replies();
        let replies = &replies[replies_before.min(replies.len())..];
        write_card_entries(out, replies, true)?;
        // A card update comes after the DingTalk call it reports: the calls are all in.
        let calls: Vec<_> = sim.calls(None).into_iter().skip(calls_before).collect();
        write_calls(out, &calls)?;
        if calls.iter().all(|c| TOKEN_APIS.contains(&c.api.as_str())) {
            writeln!(out, "           ↳ nothing reached DingTalk")?;
        }
        write_card_entries(out, replies, false)?;
        problems.extend(check(sim, card.as_ref(), before.as_ref(), &step.want, &calls));
        tally.add(report(out, &problems)?);
    }
    Ok(tally)
}

/// Presses `action` on `card` as `member` and waits for the card to settle; the card then,
/// and what is wrong with dingops' answer.
async fn press(
    out: &mut dyn Write,
    sim: &Simulator,
    card: Option<&SimCard>,
    member: &Member,
    action: &str,
    want: &Want,
    stream: bool,
) -> std::io::Result<(Option<SimCard>, Vec<String>)> {
    let Some(card) = card else {
        return Ok((None, vec!["there is no card to press".into()]));
    };
    let pressed = sim
        .press_card(&CardPress::new(&card.out_track_id, &member.staff_id, action))
        .await;
    let problems = describe_press(out, pressed.as_ref(), want, stream)?;
    Ok((settled(sim, card, want).await, problems))
}

/// Writes how dingops answered a click; what is wrong with the answer.
fn describe_press(
    out: &mut dyn Write,
    pressed: Option<&CardPressOutcome>,
    want: &Want,
    stream: bool,
) -> std::io::Result<Vec<String>> {
    let (how, answered) = if stream {
        (format!("a frame on {CARD_TOPIC}"), "ACK code")
    } else {
        ("a signed POST /card-callback".to_owned(), "HTTP")
    };
    let Some(p) = pressed else {
        return Ok(vec!["the simulator does not know the card".into()]);
    };
    let status = p
        .status
        .map_or_else(|| "nothing".to_owned(), |s| format!("{answered} {s}"));
    writeln!(
        out,
        "           ↳ DingTalk delivers the click as {how}; dingops answered {status} in {} ms",
        p.latency_ms
    )?;
    let mut problems = Vec::new();
    if p.status != Some(200) {
        problems.push(format!("dingops answered {status}, expected {answered} 200"));
    }
    let notice = p
        .response
        .as_ref()
        .and_then(|x| x.pointer("/userPrivateData/cardParamMap/notice"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if notice != want.notice {
        problems.push(format!(
            "the clicker's private notice is {notice:?}, expected {:?}",
            want.notice
        ));
    }
    Ok(problems)
}

/// The card once it shows `want.status` (10 s at most); when the status is not to change,
/// after a moment in which nothing more should happen.
async fn settled(sim: &Simulator, card: &SimCard, want: &Want) -> Option<SimCard> {
    let id = &card.out_track_id;
    if card.params.get("status").map(String::as_str) == Some(want.status) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return sim.card(id);
    }
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = sim.card(id);
        let done = now
            .as_ref()
            .is_some_and(|c| c.params.get("status").map(String::as_str) == Some(want.status));
        if done || std::time::Instant::now() >= end {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `YYYY-MM-DD HH:MM:SS` time in `text`.
fn last_time(text: &str) -> Option<jiff::civil::DateTime> {
    text.char_indices()
        .rev()
        .find_map(|(i, _)| text.get(i..i + 19)?.parse().ok())
}

/// How the card, the group and the calls differ from what the step wants.
fn check(
    sim: &Simulator,
    card: Option<&SimCard>,
    before: Option<&SimCard>,
    want: &Want,
    calls: &[RecordedCall],
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(card) = card {
        let get = |k: &str| card.params.get(k).map_or("", String::as_str);
        if get("status") != want.status {
            problems.push(format!(
                "the card shows {:?}, expected {:?}",
                get("status"),
                want.status
            ));
        }
        let buttons: Vec<String> = serde_json::from_str(get("buttons")).unwrap_or_default();
        if buttons != want.buttons {
            problems.push(format!(
                "the card offers {buttons:?}, expected {:?}",
                want.buttons
            ));
        }
        if !get("body").contains(want.body) {
            problems.push(format!("the card should mention \"{}\"", want.body));
        }
        if want.extended {
            let old = before.and_then(|b| last_time(b.params.get("body")?));
            let new = last_time(get("body"));
            let moved = old.zip(new).map(|(o, n)| o.duration_until(n).as_secs());
            if moved != i64::try_from(DEMO_HOUR.as_secs()).ok() {
                problems.push(format!(
                    "the revert time should move by {} s (one demo hour), moved {moved:?}",
                    DEMO_HOUR.as_secs()
                ));
            }
        }
    }
    let muted = sim
        .group(GROUP_CID)
        .and_then(|g| g.options.get("chatBannedType").copied());
    if muted != Some(want.muted) {
        problems.push(format!(
            "chatBannedType should be {} in DingTalk, is {muted:?}",
            want.muted
        ));
    }
    let mut made: Vec<&str> = calls
        .iter()
        .map(|c| c.api.as_str())
        .filter(|a| !TOKEN_APIS.contains(a))
        .collect();
    let mut wanted = want.calls.to_vec();
    made.sort_unstable();
    wanted.sort_unstable();
    if made != wanted {
        problems.push(format!("DingTalk calls {made:?}, expected {wanted:?}"));
    }
    problems
}

/// Writes ✔ or each problem; whether the step behaved.
fn report(out: &mut dyn Write, problems: &[String]) -> std::io::Result<bool> {
    if problems.is_empty() {
        writeln!(out, "           ✔ as expected")?;
    } else {
        for p in problems {
            writeln!(out, "           ✘ {p}")?;
        }
    }
    writeln!(out)?;
    Ok(problems.is_empty())
}
