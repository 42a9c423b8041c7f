//! Limits on card clicks: a click passes the same admin rule and per-sender limit
//! (`admin_commands_per_minute`) as a typed command, and Extend stops after five on one card,
//! so one admin's clicking cannot spend the monthly quota a colleague's command needs.

use std::sync::Arc;
use std::time::Duration;

use dingops::ledger::prelude::*;
use dingtalk_sim::chat::Member;
use dingtalk_sim::{CardPress, CardPressOutcome, SimCard, api};
use secrecy::SecretString;

use crate::helpers::*;

const TEMPLATE: &str = "dingops-reply.schema";
const CARD_SECRET: &str = "card-callback-secret-for-click-limits";

fn second_admin() -> Member {
    Member::new("admin02", "Bo", false)
}

/// An app in HTTP mode with cards on and two admins, its callback URL registered with the
/// simulator; timed commands last real minutes.
async fn card_app(tweak: impl FnOnce(&mut dingops::config::Settings) + 'static) -> TestApp {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(move |s| {
            s.cards.template_id = Some(TEMPLATE.into());
            s.cards.callback_secret = Some(SecretString::from(CARD_SECRET));
            s.worker.admins = vec!["admin01".into(), "admin02".into()];
            s.worker.revert_minute = Duration::from_secs(60);
            tweak(s);
        })),
        ..Options::default()
    })
    .await;
    let settings = sim_settings(&app.sim).unwrap();
    let client = dingops::dingtalk::DingTalk::new(
        &settings.dingtalk,
        Arc::new(dingops::telemetry::Metrics::new()),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    client
        .register_card_callback(
            &format!("{}/card-callback", app.address),
            "dingops",
            &SecretString::from(CARD_SECRET),
            true,
        )
        .await
        .expect("the callback URL is registered");
    app
}

/// The one card expected after `who` types `text` in GROUP.
async fn card_after(app: &TestApp, who: &Member, text: &str) -> SimCard {
    let before = app.sim.cards().len();
    assert_eq!(app.say(&app.chat(GROUP), who, text).await.0, 200);
    let cards = app.sim.wait_for_cards(before + 1, Duration::from_secs(10)).await;
    assert_eq!(cards.len(), before + 1, "one card for {text}: {cards:#?}");
    cards.last().cloned().unwrap()
}

/// `who` presses `action`; returns once the click has run (the card no longer shows
/// `working`, at most 2 s).
async fn click(app: &TestApp, card: &SimCard, who: &Member, action: &str) -> CardPressOutcome {
    let outcome = app
        .sim
        .press_card(&CardPress::new(&card.out_track_id, &who.staff_id, action))
        .await
        .expect("the card exists");
    assert_eq!(outcome.status, Some(200), "{outcome:?}");
    eventually(Duration::from_secs(2), || {
        app.sim
            .card(&card.out_track_id)
            .is_some_and(|c| c.params.get("status").map(String::as_str) != Some("working"))
    })
    .await;
    outcome
}

fn notice(outcome: &CardPressOutcome) -> String {
    outcome.response.as_ref().unwrap()["userPrivateData"]["cardParamMap"]["notice"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn card_updates(app: &TestApp) -> usize {
    app.sim.calls(Some(api::CARD_UPDATE)).len()
}

fn revert_due(app: &TestApp) -> u64 {
    app.ledger().pending_reverts(Some(GROUP)).unwrap()[0].due_ms
}

#[tokio::test]
async fn an_admins_clicks_beyond_the_per_minute_limit_are_refused_privately_and_call_nothing() {
    let app = card_app(|s| s.worker.admin_commands_per_minute = 3).await;
    let card = card_after(&app, &admin(), "/mute-all 30m").await;
    let bo = second_admin();
    for _ in 0..3 {
        let ran = click(&app, &card, &bo, "extend").await;
        assert_eq!(notice(&ran), "", "{ran:?}");
    }
    let (updates, due, rows) = (card_updates(&app), revert_due(&app), app.ledger_rows());
    let over = click(&app, &card, &bo, "extend").await;
    assert!(notice(&over).contains("slow down"), "{over:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(card_updates(&app), updates, "nothing was sent to DingTalk");
    assert_eq!(revert_due(&app), due, "nothing changed");
    assert_eq!(app.ledger_rows(), rows, "nothing was recorded");
    let shown = app.sim.card(&card.out_track_id).unwrap();
    assert_eq!(shown.params["status"], "extended");
    assert!(
        shown.private["admin02"]["notice"].contains("slow down"),
        "{shown:#?}"
    );

    // One rule: Bo's typed admin command in the group is over the same limit.
    let typed = app.ask(&app.chat(GROUP), &bo, "/lock-dm").await;
    assert_reply(&typed, "⛔", "slow down");
    // Another admin's click is not.
    let ada = click(&app, &card, &admin(), "extend").await;
    assert_eq!(notice(&ada), "", "{ada:?}");
    assert_eq!(card_updates(&app), updates + 1);
}

#[tokio::test]
async fn extend_works_five_times_on_one_card_and_the_sixth_is_refused_privately() {
    let app = card_app(|_| {}).await;
    let card = card_after(&app, &admin(), "/mute-all 30m").await;
    let due = revert_due(&app);
    for i in 0..5 {
        let who = if i % 2 == 0 { admin() } else { second_admin() };
        let ran = click(&app, &card, &who, "extend").await;
        assert_eq!(notice(&ran), "", "extend {i}: {ran:?}");
    }
    assert_eq!(revert_due(&app), due + 5 * 30 * 60_000);
    let shown = app.sim.card(&card.out_track_id).unwrap();
    assert_eq!(shown.params["status"], "extended");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&shown.params["buttons"]).unwrap(),
        serde_json::json!(["undo", "revert_now"]),
        "the card no longer offers Extend"
    );
    let updates = card_updates(&app);
    let sixth = click(&app, &card, &second_admin(), "extend").await;
    assert!(notice(&sixth).contains("at most 5 times"), "{sixth:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(card_updates(&app), updates, "nothing was sent to DingTalk");
    assert_eq!(revert_due(&app), due + 5 * 30 * 60_000);
    // Revert now still works.
    let revert = click(&app, &card, &admin(), "revert_now").await;
    assert_eq!(notice(&revert), "", "{revert:?}");
    assert_eq!(app.sim.group(GROUP).unwrap().options["chatBannedType"], 0);
}

#[tokio::test]
async fn a_colleagues_lock_dm_still_works_after_one_admins_click_flood_under_a_small_quota() {
    let app = card_app(|s| {
        s.worker.admin_commands_per_minute = 10;
        s.dingtalk.quota.monthly = Some(14);
        s.dingtalk.quota.reserve = dingops::quota::Reserve::Percent(50);
    })
    .await;
    let card = card_after(&app, &admin(), "/mute-all 30m").await;
    let before = card_updates(&app);
    for _ in 0..15 {
        click(&app, &card, &admin(), "extend").await;
    }
    let flood = card_updates(&app) - before;
    let lock = card_after(&app, &second_admin(), "/lock-dm").await;
    assert_eq!(lock.params["status"], "done", "{lock:#?}");
    assert!(!lock.params["body"].contains("quota"), "{}", lock.params["body"]);
    assert!(flood <= 5, "{flood} card updates for one admin's Extend clicks");
}
