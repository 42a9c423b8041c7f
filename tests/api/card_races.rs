//! Cards when a click races the timer or another click: the card ends in the state the
//! setting is in (Revert now racing the timer's own revert ends `reverted`, the setting
//! reverted once), and a click that lost never shows the card clickable again.

use std::time::Duration;

use dingtalk_sim::chat::Member;
use dingtalk_sim::{Fault, api};

use crate::cards::{buttons, card_after, card_app, card_in, notice, option, press, second_admin};
use crate::helpers::*;

/// The revert jobs of the app's ledger in `state`.
fn reverts_in(app: &TestApp, state: &str) -> i64 {
    rusqlite::Connection::open(app.dir.path().join("ledger.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM jobs WHERE state = ?1", [state], |r| {
            r.get(0)
        })
        .unwrap()
}

/// The `im/group/update` calls that unmuted GROUP.
fn unmutes(app: &TestApp) -> usize {
    app.sim
        .calls(Some(api::GROUP_UPDATE))
        .into_iter()
        .filter(|c| c.body["chatid"] == GROUP_CHATID && c.body.to_string().contains("\"chatBannedType\":0"))
        .count()
}

#[tokio::test]
async fn revert_now_racing_the_timers_own_revert_ends_the_card_reverted_and_reverts_once() {
    let app = card_app(|s| s.worker.revert_minute = Duration::from_secs(1)).await;
    let card = card_after(&app, &admin(), "/mute-all 1m").await;
    // The timer's revert is under way, its DingTalk call slow, when Revert now is clicked.
    app.sim.inject(api::GROUP_UPDATE, Fault::Delay { ms: 2_500 });
    let running = eventually(Duration::from_secs(10), || reverts_in(&app, "running") == 1).await;
    assert!(running, "the timer never started the revert");
    let pressed = press(&app, &card, &second_admin(), "revert_now").await;
    assert_eq!(pressed.status, Some(200));
    let settled = eventually(Duration::from_secs(15), || {
        reverts_in(&app, "running") == 0
            && app
                .sim
                .card(&card.out_track_id)
                .is_some_and(|c| c.params["status"] != "working")
    })
    .await;
    assert!(settled, "{:#?}", app.sim.card(&card.out_track_id));
    let shown = card_in(&app, &card.out_track_id, "reverted").await;
    assert_eq!(buttons(&shown), serde_json::json!([]));
    assert!(
        !shown.params["body"].contains("no longer valid"),
        "{}",
        shown.params["body"]
    );
    assert!(
        shown.params["body"].contains("back to off"),
        "{}",
        shown.params["body"]
    );
    assert_eq!(option(&app, "chatBannedType"), 0);
    assert_eq!(unmutes(&app), 1, "reverted once");
}

#[tokio::test]
async fn a_click_that_loses_to_a_simultaneous_click_never_shows_the_card_clickable_again() {
    let app = card_app(|s| s.worker.admins = (1..=8).map(|n| format!("admin0{n}")).collect()).await;
    let card = card_after(&app, &admin(), "/mute-all").await;
    // The winner's DingTalk call is slow: the card is still working when the loser is told.
    app.sim.inject(api::GROUP_UPDATE, Fault::Delay { ms: 1_500 });
    // Eight admins' clicks at once: one runs, the others lose.
    let presses = (1..=8).map(|n| {
        let who = Member::new(&format!("admin0{n}"), "Admin", false);
        let (app, card) = (&app, &card);
        async move { press(app, card, &who, "undo").await }
    });
    let outcomes = futures_util::future::join_all(presses).await;
    assert!(outcomes.iter().any(|o| notice(o).is_empty()), "{outcomes:#?}");
    for outcome in &outcomes {
        let notice = notice(outcome);
        assert!(
            notice.is_empty() || notice.contains("already working"),
            "{outcome:#?}"
        );
        let shown = &outcome.response.as_ref().unwrap()["cardData"]["cardParamMap"];
        assert!(
            shown.get("buttons").is_none_or(|b| b == "[]")
                && shown.get("status").is_none_or(|s| s == "working"),
            "a click's answer shows the card clickable (notice {notice:?}): {shown}"
        );
    }
    let now = app.sim.card(&card.out_track_id).unwrap();
    assert_eq!(
        (now.params["status"].as_str(), now.params["buttons"].as_str()),
        ("working", "[]"),
        "{now:#?}"
    );
    let undone = card_in(&app, &card.out_track_id, "undone").await;
    assert_eq!(buttons(&undone), serde_json::json!([]));
    assert_eq!(option(&app, "chatBannedType"), 0);
}
