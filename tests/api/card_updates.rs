//! Card updates that DingTalk must take: every `cardParamMap` value within DingTalk's 1 KB
//! however many clicks a card saw, and an update DingTalk refused retried later, the group
//! told in text meanwhile, so that no card stays `working`.

use std::time::Duration;

use dingtalk_sim::chat::Member;
use dingtalk_sim::{CardFailMode, api};
use serde_json::Value;

use crate::cards::{buttons, card_after, card_app, card_in, option, press, second_admin};
use crate::helpers::*;
use dingops::cards::gate::MAX_EXTENDS;

/// DingTalk's limit on one `cardParamMap` value (docs/cards.md).
const VALUE_LIMIT: usize = 1024;

/// Every string under a `cardParamMap` in `v`, with where it was.
fn param_values(v: &Value, inside: bool, out: &mut Vec<String>) {
    match v {
        Value::String(s) if inside => out.push(s.clone()),
        Value::Object(m) => {
            for (k, x) in m {
                param_values(x, inside || k == "cardParamMap", out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| param_values(x, inside, out)),
        _ => {}
    }
}

/// Two admins with the longest userIds DingTalk hands out (64 characters): each Extend's line
/// names one of them, so the card's body grows fastest.
fn long_admins() -> (Member, Member) {
    (
        Member::new(&format!("{:a<64}", "admin01-"), "Ada", false),
        Member::new(&format!("{:b<64}", "admin02-"), "Bo", false),
    )
}

#[tokio::test]
async fn extends_up_to_the_cap_by_admins_with_long_ids_keep_every_card_value_within_dingtalks_kilobyte() {
    let (first, second) = long_admins();
    let ids = vec![first.staff_id.clone(), second.staff_id.clone()];
    let app = card_app(move |s| {
        s.worker.revert_minute = Duration::from_secs(60);
        s.worker.admins = ids;
    })
    .await;
    let card = card_after(&app, &first, "/mute-all 30m").await;
    let mut acks = Vec::new();
    for n in 0..MAX_EXTENDS {
        let who = if n % 2 == 0 { &first } else { &second };
        let pressed = press(&app, &card, who, "extend").await;
        acks.extend(pressed.response);
        card_in(&app, &card.out_track_id, "extended").await;
    }
    let mut values = Vec::new();
    for call in app
        .sim
        .calls(None)
        .into_iter()
        .filter(|c| c.api == api::CARD_UPDATE || c.api == api::CARD_CREATE)
    {
        param_values(&call.body, false, &mut values);
    }
    for ack in &acks {
        param_values(ack, false, &mut values);
    }
    assert!(values.len() > MAX_EXTENDS as usize * 4, "{} values", values.len());
    let longest = values.iter().map(String::len).max().unwrap_or(0);
    assert!(
        longest <= VALUE_LIMIT,
        "a cardParamMap value of {longest} bytes went to DingTalk: {:?}",
        values.iter().max_by_key(|v| v.len())
    );
    // The card still says what the command did and what the last click did, and that
    // earlier lines are left out.
    let shown = app.sim.card(&card.out_track_id).unwrap();
    let body = &shown.params["body"];
    assert!(body.contains("`/mute-all 30m`"), "{body}");
    let newest = body.rsplit("\n\n").next().unwrap();
    assert!(
        newest.starts_with(&format!("Extended by {}: ", first.staff_id)),
        "the last Extend shows last: {body}"
    );
    assert!(body.contains("earlier updates not shown"), "{body}");
    // Extend has been used up: the card offers the rest.
    assert_eq!(buttons(&shown), serde_json::json!(["undo", "revert_now"]));
}

#[tokio::test]
async fn a_card_update_dingtalk_refuses_is_retried_and_the_group_is_told_meanwhile() {
    // One attempt per call: each refusal reaches dingops.
    let app = card_app(|s| s.dingtalk.retry_max_attempts = 1).await;
    let card = card_after(&app, &admin(), "/mute-all").await;
    app.sim.fail_cards(CardFailMode::Update, 3);
    let pressed = press(&app, &card, &second_admin(), "undo").await;
    assert_eq!(pressed.status, Some(200));
    let told = group_message(&app, "could not update its card", 10).await;
    let told = told.unwrap_or_else(|| panic!("the group was not told: {:#?}", app.sim.replies()));
    assert!(told.content.contains("Undone by admin02"), "{}", told.content);
    assert!(told.content.contains("tries the card again"), "{}", told.content);
    assert_eq!(option(&app, "chatBannedType"), 0, "the undo itself went through");
    // The card does not stay `working`: it shows the undo once DingTalk takes the update.
    let undone = card_in(&app, &card.out_track_id, "undone").await;
    assert_eq!(buttons(&undone), serde_json::json!([]));
    assert!(
        undone.params["body"].contains("Undone by admin02"),
        "{}",
        undone.params["body"]
    );
    let refused = app
        .sim
        .calls(Some(api::CARD_UPDATE))
        .into_iter()
        .filter(|c| c.answer == 500)
        .count();
    assert_eq!(refused, 3, "every refusal was retried");
}
