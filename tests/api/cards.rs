//! Reply cards (`card_template_id`): a switch command answered with a card, its buttons
//! (Undo, Extend, Revert now) clicked over HTTP callbacks and over Stream, the card updated in
//! place by clicks, the timer and newer commands, and the two-person rule of the ops group.

use std::sync::Arc;
use std::time::Duration;

use dingops::ledger::prelude::*;
use dingtalk_sim::chat::Member;
use dingtalk_sim::{CardFailMode, CardPress, CardPressOutcome, SimCard, api};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;

pub(crate) const TEMPLATE: &str = "dingops-reply.schema";
pub(crate) const CARD_SECRET: &str = "card-callback-secret-for-tests";

pub(crate) fn second_admin() -> Member {
    Member::new("admin02", "Bo", false)
}

/// An app in HTTP mode with cards on, its callback URL registered with the simulator.
pub(crate) async fn card_app(tweak: impl FnOnce(&mut dingops::config::Settings) + 'static) -> TestApp {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(move |s| {
            s.cards.template_id = Some(TEMPLATE.into());
            s.cards.callback_secret = Some(SecretString::from(CARD_SECRET));
            s.worker.admins = vec!["admin01".into(), "admin02".into()];
            tweak(s);
        })),
        ..Options::default()
    })
    .await;
    register(&app).await;
    app
}

/// Registers the app's `/card-callback` for the route key, as `dingops check
/// --register-card-callback` does.
async fn register(app: &TestApp) {
    register_at(&app.sim, &app.address).await;
}

pub(crate) async fn register_at(sim: &dingtalk_sim::Simulator, address: &str) {
    let settings = sim_settings(sim).unwrap();
    let client = dingops::dingtalk::DingTalk::new(
        &settings.dingtalk,
        Arc::new(dingops::telemetry::Metrics::new()),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    client
        .register_card_callback(
            &format!("{address}/card-callback"),
            "dingops",
            &SecretString::from(CARD_SECRET),
            true,
        )
        .await
        .expect("the callback URL is registered");
}

/// The one card expected after `text`.
pub(crate) async fn card_after(app: &TestApp, who: &Member, text: &str) -> SimCard {
    let before = app.sim.cards().len();
    let (status, _) = app.say(&app.chat(GROUP), who, text).await;
    assert_eq!(status, 200);
    let cards = app.sim.wait_for_cards(before + 1, Duration::from_secs(10)).await;
    assert_eq!(cards.len(), before + 1, "one card for {text}");
    cards.last().cloned().unwrap()
}

pub(crate) async fn press(app: &TestApp, card: &SimCard, who: &Member, action: &str) -> CardPressOutcome {
    app.sim
        .press_card(&CardPress {
            out_track_id: card.out_track_id.clone(),
            user_id: who.staff_id.clone(),
            action: action.into(),
            ..CardPress::default()
        })
        .await
        .expect("the card exists")
}

/// The card once its status is `status` (waits up to 10 s).
pub(crate) async fn card_in(app: &TestApp, id: &str, status: &str) -> SimCard {
    let ok = eventually(Duration::from_secs(10), || {
        app.sim
            .card(id)
            .is_some_and(|c| c.params.get("status").map(String::as_str) == Some(status))
    })
    .await;
    let card = app.sim.card(id).unwrap();
    assert!(ok, "card {id} never became {status}: {card:#?}");
    card
}

pub(crate) fn buttons(card: &SimCard) -> Value {
    serde_json::from_str(&card.params["buttons"]).unwrap()
}

pub(crate) fn option(app: &TestApp, field: &str) -> i64 {
    app.sim.group(GROUP).unwrap().options[field]
}

pub(crate) fn notice(outcome: &CardPressOutcome) -> String {
    outcome.response.as_ref().unwrap()["userPrivateData"]["cardParamMap"]["notice"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn without_a_template_a_switch_command_is_answered_with_text_and_no_card() {
    let app = spawn_app().await;
    let reply = app.ask(&app.chat(GROUP), &admin(), "/mute-all").await;
    assert_reply(&reply, "✅", "Whole-group mute is now on");
    assert!(app.sim.cards().is_empty());
    assert!(app.sim.calls(Some(api::CARD_CREATE)).is_empty());
}

#[tokio::test]
async fn a_switch_command_is_answered_with_a_card_that_carries_every_field_and_is_recorded_with_its_command()
{
    let app = card_app(|_| {}).await;
    let (status, msg_id) = app.say(&app.chat(GROUP), &admin(), "/mute-all 2h").await;
    assert_eq!(status, 200);
    let cards = app.sim.wait_for_cards(1, Duration::from_secs(10)).await;
    let card = &cards[0];
    assert_eq!(card.template_id, TEMPLATE);
    assert_eq!(card.conversation_id, GROUP);
    assert_eq!(card.callback_type, "HTTP");
    assert_eq!(card.callback_route_key.as_deref(), Some("dingops"));
    assert_eq!(card.robot_code, app.sim.config().app_key);
    assert_eq!(card.params["title"], "Whole-group mute: on");
    assert_eq!(card.params["status"], "done");
    assert_eq!(buttons(card), serde_json::json!(["undo", "extend", "revert_now"]));
    assert!(
        card.params["body"].contains("It reverts at"),
        "{}",
        card.params["body"]
    );
    assert!(
        card.params["body"].contains("`/mute-all 2h`"),
        "{}",
        card.params["body"]
    );
    // The card is the reply: no text went to the session.
    let texts: Vec<_> = app
        .sim
        .replies()
        .into_iter()
        .filter(|r| !r.via.starts_with("card"))
        .collect();
    assert!(texts.is_empty(), "{texts:#?}");
    let row = app.ledger().card(&card.out_track_id).unwrap().expect("recorded");
    assert_eq!(row.msg_id, msg_id);
    assert_eq!(row.setting.as_deref(), Some("chatBannedType"));
    assert_eq!(app.finished_row(&msg_id).await.reply.as_deref(), Some("card"));
}

#[tokio::test]
async fn a_card_dingtalk_refuses_or_does_not_deliver_falls_back_to_the_text_reply() {
    // One attempt per call: the refusal is not retried away.
    let app = card_app(|s| s.dingtalk.retry_max_attempts = 1).await;
    app.sim.fail_cards(CardFailMode::Status, 1);
    let reply = app.ask(&app.chat(GROUP), &admin(), "/mute-all").await;
    assert_reply(&reply, "✅", "Whole-group mute is now on");
    app.sim.fail_cards(CardFailMode::Deliver, 1);
    let reply = app.ask(&app.chat(GROUP), &admin(), "/unmute-all").await;
    assert_reply(&reply, "✅", "Whole-group mute is now off");
    assert!(app.sim.cards().is_empty(), "{:#?}", app.sim.cards());
    assert_eq!(app.sim.calls(Some(api::CARD_CREATE)).len(), 2);
}

#[tokio::test]
async fn undo_by_an_admin_restores_the_value_before_and_updates_the_card() {
    let app = card_app(|_| {}).await;
    let card = card_after(&app, &admin(), "/mute-all").await;
    assert_eq!(option(&app, "chatBannedType"), 1);
    let pressed = press(&app, &card, &second_admin(), "undo").await;
    assert_eq!(pressed.status, Some(200));
    let shown = &pressed.response.as_ref().unwrap()["cardData"]["cardParamMap"];
    assert_eq!(shown["status"], "working");
    assert_eq!(shown["buttons"], "[]");
    let card = card_in(&app, &card.out_track_id, "undone").await;
    assert_eq!(option(&app, "chatBannedType"), 0);
    assert_eq!(buttons(&card), serde_json::json!([]));
    assert!(
        card.params["body"].contains("Undone by admin02:"),
        "{}",
        card.params["body"]
    );
    let audit = app.ledger().history(Some(GROUP), None, 100).unwrap();
    assert!(
        audit.iter().any(|r| r.command.as_deref() == Some("undo (card)")
            && r.sender_staff_id.as_deref() == Some("admin02")
            && r.result.as_deref() == Some("ok")),
        "{audit:#?}"
    );
}

#[tokio::test]
async fn a_click_by_a_member_changes_nothing_and_tells_only_them_that_buttons_are_for_admins() {
    let app = card_app(|_| {}).await;
    let card = card_after(&app, &admin(), "/mute-all").await;
    let updates = app.sim.calls(Some(api::GROUP_UPDATE)).len();
    let pressed = press(&app, &card, &member(), "undo").await;
    assert_eq!(notice(&pressed), "Only dingops admins can use these buttons.");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let card = app.sim.card(&card.out_track_id).unwrap();
    assert_eq!(card.params["status"], "done");
    assert_eq!(
        card.private["member01"]["notice"],
        "Only dingops admins can use these buttons."
    );
    assert!(!card.private.contains_key("admin01"));
    assert_eq!(
        app.sim.calls(Some(api::GROUP_UPDATE)).len(),
        updates,
        "nothing reached DingTalk"
    );
    assert_eq!(option(&app, "chatBannedType"), 1);
}

#[tokio::test]
async fn a_replayed_http_callback_and_a_double_click_each_run_once() {
    let app = card_app(|_| {}).await;
    let card = card_after(&app, &admin(), "/mute-all").await;
    let updates = app.sim.calls(Some(api::GROUP_UPDATE)).len();
    // The same signed request twice (a replay within the window): one click.
    let first = press(&app, &card, &admin(), "undo").await;
    let replay = app
        .sim
        .press_card(&CardPress {
            out_track_id: card.out_track_id.clone(),
            user_id: "admin01".into(),
            action: "undo".into(),
            message_id: Some(first.message_id.clone()),
            ..CardPress::default()
        })
        .await
        .unwrap();
    assert_eq!(replay.status, Some(200));
    card_in(&app, &card.out_track_id, "undone").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sim.calls(Some(api::GROUP_UPDATE)).len(), updates + 1);

    // A double click: two clicks before the first has run; the second is told.
    let card = card_after(&app, &admin(), "/mute-all").await;
    let updates = app.sim.calls(Some(api::GROUP_UPDATE)).len();
    let (ada, bo) = (admin(), second_admin());
    let (a, b) = tokio::join!(press(&app, &card, &ada, "undo"), press(&app, &card, &bo, "undo"));
    let notices = [notice(&a), notice(&b)];
    assert!(notices.contains(&String::new()), "{notices:?}");
    card_in(&app, &card.out_track_id, "undone").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.sim.calls(Some(api::GROUP_UPDATE)).len(),
        updates + 1,
        "{notices:?}"
    );
}

#[tokio::test]
async fn extend_moves_the_revert_by_the_same_duration_and_revert_now_runs_it_at_once() {
    let app = card_app(|s| s.worker.revert_minute = Duration::from_secs(60)).await;
    let card = card_after(&app, &admin(), "/mute-all 30m").await;
    let due = app.ledger().pending_reverts(Some(GROUP)).unwrap()[0].due_ms;
    let updates = app.sim.calls(Some(api::GROUP_UPDATE)).len();
    press(&app, &card, &admin(), "extend").await;
    let extended = card_in(&app, &card.out_track_id, "extended").await;
    assert_eq!(
        app.sim.calls(Some(api::GROUP_UPDATE)).len(),
        updates,
        "DingTalk has the value already: Extend does not send it again"
    );
    assert_eq!(
        buttons(&extended),
        serde_json::json!(["undo", "extend", "revert_now"])
    );
    let pending = app.ledger().pending_reverts(Some(GROUP)).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].due_ms, due + 30 * 60_000);
    assert_eq!(pending[0].value, 0, "its end still restores the value before");
    assert_eq!(option(&app, "chatBannedType"), 1);

    press(&app, &card, &admin(), "revert_now").await;
    let reverted = card_in(&app, &card.out_track_id, "reverted").await;
    assert_eq!(buttons(&reverted), serde_json::json!([]));
    assert_eq!(option(&app, "chatBannedType"), 0);
    assert!(app.ledger().pending_reverts(Some(GROUP)).unwrap().is_empty());
}

#[tokio::test]
async fn the_timer_marks_the_card_reverted_and_a_newer_command_marks_it_superseded() {
    let app = card_app(|s| s.worker.revert_minute = Duration::from_millis(500)).await;
    let timed = card_after(&app, &admin(), "/mute-all 1m").await;
    let reverted = card_in(&app, &timed.out_track_id, "reverted").await;
    assert!(
        reverted.params["body"].contains("Timed revert"),
        "{}",
        reverted.params["body"]
    );
    assert_eq!(buttons(&reverted), serde_json::json!([]));

    let first = card_after(&app, &admin(), "/mute-all").await;
    let second = card_after(&app, &second_admin(), "/unmute-all").await;
    let superseded = card_in(&app, &first.out_track_id, "superseded").await;
    assert_eq!(buttons(&superseded), serde_json::json!([]));
    assert!(
        superseded.params["body"].contains("Superseded by Bo (admin02) with `/unmute-all`"),
        "{}",
        superseded.params["body"]
    );
    assert_eq!(
        app.sim.card(&second.out_track_id).unwrap().params["status"],
        "done"
    );
    // Undo on the superseded card answers privately and changes nothing.
    let updates = app.sim.calls(Some(api::GROUP_UPDATE)).len();
    let pressed = press(&app, &first, &admin(), "undo").await;
    assert!(
        notice(&pressed).contains("no longer valid"),
        "{}",
        notice(&pressed)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sim.calls(Some(api::GROUP_UPDATE)).len(), updates);
    assert_eq!(option(&app, "chatBannedType"), 0);
}

/// The ops group of the two-person rule.
const OPS: &str = OTHER;

/// An app with cards, a policy that unmutes every group, and OTHER as the ops group.
async fn ops_app(cards: bool) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[rule]]\ngroups = [\"*\"]\nmute_all = false\n").unwrap();
    let app = spawn_app_with(Options {
        dir: Some(dir),
        settings: Some(Box::new(move |s| {
            if cards {
                s.cards.template_id = Some(TEMPLATE.into());
                s.cards.callback_secret = Some(SecretString::from(CARD_SECRET));
            }
            s.cards.ops_group = Some(OPS.into());
            s.fleet.policy = Some(policy);
            s.worker.admins = vec!["admin01".into(), "admin02".into()];
            s.worker.groups = bindings(&[(GROUP, GROUP_CHATID), (OTHER, OTHER_CHATID)]);
        })),
        ..Options::default()
    })
    .await;
    if cards {
        register(&app).await;
    }
    // Drift the policy will fix.
    assert!(app.sim.set_option(GROUP, "chatBannedType", 1));
    app
}

/// The code in a plan's text.
fn code_in(text: &str) -> String {
    let start = text.find("/apply ").expect("the plan names its code") + "/apply ".len();
    text[start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

#[tokio::test]
async fn a_plan_card_is_refused_to_the_admin_who_asked_and_applied_once_by_a_second_admin() {
    let app = ops_app(true).await;
    let before = app.sim.cards().len();
    let (status, _) = app.say(&app.chat(OPS), &admin(), "/plan").await;
    assert_eq!(status, 200);
    let cards = app.sim.wait_for_cards(before + 1, Duration::from_secs(10)).await;
    let card = cards.last().unwrap().clone();
    assert_eq!(card.conversation_id, OPS);
    assert_eq!(card.params["status"], "pending_approval");
    assert_eq!(buttons(&card), serde_json::json!(["approve", "discard"]));
    assert!(
        card.params["body"].contains("1 settings to change"),
        "{}",
        card.params["body"]
    );
    assert!(
        card.params["body"].contains("DingTalk calls of the monthly quota"),
        "{}",
        card.params["body"]
    );

    let own = press(&app, &card, &admin(), "approve").await;
    assert!(notice(&own).contains("needs a second admin"), "{}", notice(&own));
    assert_eq!(option(&app, "chatBannedType"), 1, "nothing applied");

    press(&app, &card, &second_admin(), "approve").await;
    let done = card_in(&app, &card.out_track_id, "done").await;
    assert!(
        done.params["body"].contains("Approved by admin02 (asked by Ada (admin01))"),
        "{}",
        done.params["body"]
    );
    assert_eq!(option(&app, "chatBannedType"), 0, "the policy was applied");
    let updates = app.sim.calls(Some(api::GROUP_UPDATE)).len();
    // The code works once.
    let code = code_in(&card.params["body"]);
    let again = app
        .ask(&app.chat(OPS), &second_admin(), &format!("/apply {code}"))
        .await;
    assert_reply(&again, "⛔", "already approved");
    assert_eq!(app.sim.calls(Some(api::GROUP_UPDATE)).len(), updates);
}

#[tokio::test]
async fn without_cards_plan_gives_a_code_that_a_second_admin_applies_once_and_that_expires() {
    let app = ops_app(false).await;
    let plan = app.ask(&app.chat(OPS), &admin(), "/plan").await;
    assert_reply(&plan, "ℹ️", "/apply ");
    let code = code_in(&plan.content);
    let own = app.ask(&app.chat(OPS), &admin(), &format!("/apply {code}")).await;
    assert_reply(&own, "⛔", "needs a second admin");
    assert_eq!(option(&app, "chatBannedType"), 1);
    let elsewhere = app
        .ask(&app.chat(GROUP), &second_admin(), &format!("/apply {code}"))
        .await;
    assert_reply(&elsewhere, "ℹ️", "only in the ops group");
    let applied = app
        .ask(&app.chat(OPS), &second_admin(), &format!("/apply {code}"))
        .await;
    assert_reply(&applied, "✅", "Approved by Bo (admin02)");
    assert_eq!(option(&app, "chatBannedType"), 0);
    let reused = app
        .ask(&app.chat(OPS), &second_admin(), &format!("/apply {code}"))
        .await;
    assert_reply(&reused, "⛔", "works once");

    // A code past its ten minutes is refused.
    let plan = app.ask(&app.chat(OPS), &admin(), "/plan").await;
    let code = code_in(&plan.content);
    let ledger = app.ledger();
    let mut approval = ledger.approval(&code).unwrap().unwrap();
    approval.code = "EXPIRED2".into();
    approval.expires_ms = dingops::clock::now_ms() - 1;
    assert!(ledger.insert_approval(&approval).unwrap());
    let expired = app.ask(&app.chat(OPS), &second_admin(), "/apply EXPIRED2").await;
    assert_reply(&expired, "⛔", "expired");
    let unknown = app.ask(&app.chat(OPS), &second_admin(), "/apply NOSUCH22").await;
    assert_reply(&unknown, "⛔", "No plan has the code NOSUCH22");
}

#[tokio::test]
async fn a_click_killed_between_its_acknowledgement_and_its_dingtalk_call_is_resumed_once() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let port = free_port();
    let env = [
        ("DINGOPS_CARD_TEMPLATE_ID", TEMPLATE.to_owned()),
        ("DINGOPS_CARD_CALLBACK_SECRET", CARD_SECRET.to_owned()),
    ];
    let mut first = Reaper(spawn_binary(&sim, port, &db, &env));
    wait_healthy(port).await;
    let address = format!("http://127.0.0.1:{port}");
    register_at(&sim, &address).await;
    let sender = dingtalk_sim::chat::CallbackSender::new(&address, sim.config().app_secret.clone().into());
    let body = dingtalk_sim::chat::text_message(
        &dingtalk_sim::chat::new_msg_id(),
        &session_chat(&sim, GROUP),
        &admin(),
        "/mute-all",
    );
    assert_eq!(sender.send(&body).await.unwrap().0, 200);
    let card = sim
        .wait_for_cards(1, Duration::from_secs(10))
        .await
        .pop()
        .expect("a card");
    // The undo's DingTalk call hangs; the process is killed while it does.
    sim.inject(api::GROUP_UPDATE, dingtalk_sim::Fault::Hang);
    let pressed = sim
        .press_card(&CardPress {
            out_track_id: card.out_track_id.clone(),
            user_id: "admin01".into(),
            action: "undo".into(),
            ..CardPress::default()
        })
        .await
        .unwrap();
    assert_eq!(pressed.status, Some(200), "acknowledged before the call");
    wait_for_calls(&sim, "the hang", |c| {
        c.iter().any(|c| c.api == api::GROUP_UPDATE && c.answer == -3)
    })
    .await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    let _second = Reaper(spawn_binary(&sim, port, &db, &env));
    wait_healthy(port).await;
    let ok = eventually(Duration::from_secs(15), || {
        sim.card(&card.out_track_id)
            .is_some_and(|c| c.params["status"] == "undone")
    })
    .await;
    assert!(ok, "{:#?}", sim.card(&card.out_track_id));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let undos: Vec<_> = sim
        .calls(Some(api::GROUP_UPDATE))
        .into_iter()
        .filter(|c| c.answer != -3 && c.body.to_string().contains("\"chatBannedType\":0"))
        .collect();
    assert_eq!(undos.len(), 1, "resumed once: {undos:#?}");
    assert_eq!(sim.group(GROUP).unwrap().options["chatBannedType"], 0);
}

#[tokio::test]
async fn over_stream_a_card_calls_back_on_the_card_topic_and_a_pushed_again_click_runs_once() {
    let sim = stream_sim(2_000);
    let app = spawn_stream_app(sim, dingops::config::Mode::Stream, 1, |s| {
        s.cards.template_id = Some(TEMPLATE.into());
        s.worker.admins = vec!["admin01".into(), "admin02".into()];
    })
    .await;
    let before = app.sim.cards().len();
    let msg = app.sim.stream().push_callback(&dingtalk_sim::chat::text_message(
        &dingtalk_sim::chat::new_msg_id(),
        &app.chat(GROUP),
        &admin(),
        "/mute-all 2h",
    ));
    assert_eq!(ack_of(&app.sim, &msg).await.code, 200);
    let card = app
        .sim
        .wait_for_cards(before + 1, Duration::from_secs(10))
        .await
        .pop()
        .unwrap();
    assert_eq!(card.callback_type, "STREAM");
    assert_eq!(card.callback_route_key, None);

    let updates = app.sim.calls(Some(api::GROUP_UPDATE)).len();
    let first = press(&app, &card, &second_admin(), "revert_now").await;
    assert!(first.delivered);
    assert_eq!(first.status, Some(200));
    assert_eq!(
        first.response.as_ref().unwrap()["cardData"]["cardParamMap"]["status"],
        "working"
    );
    // DingTalk pushes the same frame again (it missed the ACK): it runs once.
    let again = app
        .sim
        .press_card(&CardPress {
            out_track_id: card.out_track_id.clone(),
            user_id: "admin02".into(),
            action: "revert_now".into(),
            message_id: Some(first.message_id.clone()),
            ..CardPress::default()
        })
        .await
        .unwrap();
    assert_eq!(again.status, Some(200));
    let reverted = card_in(&app, &card.out_track_id, "reverted").await;
    assert!(
        reverted.params["body"].contains("Reverted now by admin02:"),
        "{}",
        reverted.params["body"]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sim.calls(Some(api::GROUP_UPDATE)).len(), updates + 1);
    assert_eq!(option(&app, "chatBannedType"), 0);
}
