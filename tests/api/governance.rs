//! Group governance: the switch commands reach `im/group/update` with the exact field and
//! value, `/group-status` reads the group live with `chat/get`, and refusals call nothing.

use dingops::command::{Arg, COMMANDS, CommandKind};
use dingops::ledger::prelude::*;
use dingtalk_sim::{Fault, api};
use serde_json::json;

use crate::helpers::*;

/// Every switch command and alias with an argument, and the field and value it must set.
fn switch_cases() -> Vec<(String, &'static str, u8)> {
    let mut cases = Vec::new();
    for spec in COMMANDS {
        match spec.arg {
            Arg::Fixed(switch, fixed) => {
                cases.push((spec.name.to_owned(), switch.field(), fixed));
                cases.push((spec.alias.to_owned(), switch.field(), fixed));
            }
            Arg::Choice(switch, choices) => {
                for c in choices {
                    cases.push((format!("{} {}", spec.name, c.en), switch.field(), c.value));
                    cases.push((format!("{} {}", spec.alias, c.zh), switch.field(), c.value));
                }
            }
            _ => {}
        }
    }
    cases
}

#[tokio::test]
async fn every_switch_command_and_alias_sends_its_field_and_value_for_the_bound_chatid() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    let cases = switch_cases();
    assert_eq!(cases.len(), 2 * (2 + 5 * 2), "every row has a name and an alias");
    for (i, (text, field, value)) in cases.iter().enumerate() {
        let reply = app.ask(&chat, &admin(), text).await;
        assert_reply(&reply, "✅", "is now");
        let calls = app.sim.calls(Some(api::GROUP_UPDATE));
        assert_eq!(calls.len(), i + 1, "{text}");
        let call = &calls[i];
        assert_eq!(
            call.body,
            json!({"chatid": GROUP_CHATID, "managementOptions": {*field: value}}),
            "{text}"
        );
        let token = call.access_token.as_deref().expect("token header");
        assert!(app.sim.issued_tokens().iter().any(|t| t == token), "{text}");
        assert_eq!(call.answer, 0);
        assert_eq!(
            app.sim.group(GROUP).unwrap().options[*field],
            i64::from(*value),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_member_an_unbound_group_and_a_bad_argument_are_refused_without_calling_dingtalk() {
    let app = spawn_app().await;
    let refused = [
        (GROUP, member(), "/mute-all", "admins only"),
        (GROUP, member(), "/群管理 群主", "admins only"),
        (UNBOUND, admin(), "/searchable on", "not bound"),
        (UNBOUND, member(), "/group-status", "not bound"),
        (
            GROUP,
            admin(),
            "/searchable maybe",
            "/searchable on or /searchable off",
        ),
        (
            GROUP,
            admin(),
            "/艾特全员 谁",
            "/艾特全员 群主 / /艾特全员 所有人",
        ),
    ];
    for (cid, who, text, says) in refused {
        let reply = app.ask(&app.chat(cid), &who, text).await;
        assert_reply(&reply, "⛔", says);
    }
    assert!(app.sim.calls(Some(api::GROUP_UPDATE)).is_empty());
    assert!(app.sim.calls(Some(api::CHAT_GET)).is_empty());
}

#[tokio::test]
async fn group_status_shows_live_values_changed_behind_dingops_back_and_the_dm_switch() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    app.ask(&chat, &admin(), "/lock-dm").await;
    app.ask(&chat, &admin(), "/mute-all").await;
    // The owner changes two switches in the DingTalk client.
    assert!(app.sim.set_option(GROUP, "chatBannedType", 0));
    assert!(app.sim.set_option(GROUP, "searchable", 1));

    let reply = app.ask(&chat, &member(), "/群状态").await;
    assert_reply(&reply, "ℹ️", "Group \"Group A\"");
    for line in [
        "Whole-group mute: off",
        "Searchable: on",
        "Who may @all: everyone",
        "Join approval: off",
        "New members see history: off",
        "Who may manage the group: everyone",
        "Private chat: forbidden, set by Ada (admin01)",
    ] {
        assert!(reply.content.contains(line), "{line} in {}", reply.content);
    }
    let reads = app.sim.calls(Some(api::CHAT_GET));
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].body, json!(GROUP_CHATID));
    assert_eq!(reads[0].access_token.as_ref(), app.sim.legacy_tokens().first());
}

#[tokio::test]
async fn group_status_is_not_counted_against_the_per_sender_limit() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s| s.worker.admin_commands_per_minute = 1)),
        ..Options::default()
    })
    .await;
    let chat = app.chat(GROUP);
    app.ask(&chat, &admin(), "/mute-all").await;
    for _ in 0..3 {
        let reply = app.ask(&chat, &admin(), "/group-status").await;
        assert_reply(&reply, "ℹ️", "Whole-group mute: on");
    }
    let reply = app.ask(&chat, &admin(), "/unmute-all").await;
    assert_reply(&reply, "⛔", "slow down");
}

#[tokio::test]
async fn dingtalk_refusing_an_update_is_a_failure_with_advice() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    app.sim.inject(
        api::GROUP_UPDATE,
        Fault::Status {
            status: 400,
            code: "permession.checkFailed".into(),
            message: "群主不在应用可见性内".into(),
        },
    );
    let reply = app.ask(&chat, &admin(), "/mute-all").await;
    assert_reply(&reply, "❌", "permession.checkFailed");
    assert_reply(&reply, "", "visibility");

    app.sim
        .inject(api::GROUP_UPDATE, Fault::Errcode { errcode: 60011 });
    let reply = app.ask(&chat, &admin(), "/history on").await;
    assert_reply(&reply, "❌", "qyapi_chat_manage");

    app.sim.inject(api::CHAT_GET, Fault::Errcode { errcode: 60011 });
    let reply = app.ask(&chat, &member(), "/group-status").await;
    assert_reply(&reply, "❌", "qyapi_chat_read");

    // A chatid DingTalk does not know: a parameter error.
    let reply = app.ask(&app.chat(STALE), &admin(), "/searchable on").await;
    assert_reply(&reply, "❌", "parameter.invalid");
    assert_reply(&reply, "", "/bind");
    assert_eq!(app.sim.group(GROUP).unwrap().options["chatBannedType"], 0);
}

#[test]
fn help_lists_the_switch_commands_with_their_chinese_choices() {
    let help = dingops::command::help_text();
    for kind in [CommandKind::AtAll, CommandKind::GroupStatus] {
        let spec = dingops::command::CommandSpec::of(kind);
        assert!(help.contains(spec.name) && help.contains(spec.alias), "{help}");
    }
    assert!(help.contains("/艾特全员 群主|所有人"), "{help}");
}

/// Options where one minute of a timed revert lasts `minute_ms` (the test clock seam).
fn fast_reverts(minute_ms: u64) -> Options {
    Options {
        settings: Some(Box::new(move |s| {
            s.worker.revert_minute = std::time::Duration::from_millis(minute_ms)
        })),
        ..Options::default()
    }
}

#[tokio::test]
async fn a_timed_switch_reverts_on_time_and_posts_its_result_in_the_group() {
    let app = spawn_app_with(fast_reverts(1000)).await;
    let chat = app.chat(GROUP);
    let reply = app.ask(&chat, &admin(), "/mute-all 2m").await;
    assert_reply(&reply, "✅", "It reverts at");
    assert_reply(&reply, "", "(Asia/Shanghai)");
    let set = app.sim.calls(Some(api::GROUP_UPDATE));
    assert_eq!(set.len(), 1);
    assert_eq!(app.sim.group(GROUP).unwrap().options["chatBannedType"], 1);

    let message = group_message(&app, "Timed revert", 20)
        .await
        .expect("the revert's group message");
    assert!(message.content.starts_with("✅"), "{}", message.content);
    assert!(message.content.contains("Ada (admin01)"), "{}", message.content);
    assert_eq!(message.open_conversation_id, GROUP);
    assert_eq!(message.body["msgKey"], "sampleText");
    assert_eq!(message.body["robotCode"], app.sim.config().app_key.as_str());

    let calls = app.sim.calls(Some(api::GROUP_UPDATE));
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].body,
        json!({"chatid": GROUP_CHATID, "managementOptions": {"chatBannedType": 0}})
    );
    // Not before it was due (two shortened minutes after the command).
    assert!(calls[1].at_ms >= set[0].at_ms + 1900, "{calls:?}");
    assert_eq!(app.sim.group(GROUP).unwrap().options["chatBannedType"], 0);

    // The timer records its row once the group message went out (the row says how it went):
    // it may land a moment after the message.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let rows = loop {
        let rows = app.ledger().history(Some(GROUP), None, 100).unwrap();
        let recorded = rows
            .iter()
            .any(|r| r.sender_nick.as_deref() == Some("dingops (timer)"));
        if recorded || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let audit = dingops::cli::audit::audit_table(&rows);
    assert!(
        audit.contains("dingops (timer)") && audit.contains("revert of /mute-all 2m by Ada (admin01)"),
        "{audit}"
    );
    let timer_row = rows
        .into_iter()
        .find(|r| r.sender_nick.as_deref() == Some("dingops (timer)"))
        .expect("an audit row by the timer");
    assert_eq!(timer_row.result.as_deref(), Some("ok"));
    let command = timer_row.command.unwrap();
    assert!(
        command.contains("/mute-all 2m") && command.contains("Ada (admin01)"),
        "{command}"
    );
    assert_eq!(timer_row.reply.as_deref(), Some("group-message"));
}

#[tokio::test]
async fn a_newer_command_on_the_same_setting_replaces_the_pending_revert_which_never_runs() {
    let app = spawn_app_with(fast_reverts(1000)).await;
    let chat = app.chat(GROUP);
    app.ask(&chat, &admin(), "/searchable on 3m").await;
    let reply = app.ask(&chat, &admin(), "/群可搜索 开 1d").await;
    assert_reply(&reply, "✅", "This replaces the revert that was due at");
    let reply = app.ask(&chat, &admin(), "/searchable on").await;
    assert_reply(&reply, "✅", "This replaces the revert");
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(app.sim.calls(Some(api::GROUP_UPDATE)).len(), 3);
    assert!(app.sim.replies().iter().all(|r| r.via != "group-message"));
    assert_eq!(app.sim.group(GROUP).unwrap().options["searchable"], 1);
    let status = app.ask(&chat, &member(), "/group-status").await;
    assert_reply(&status, "ℹ️", "No timed reverts are pending.");
}

#[tokio::test]
async fn group_status_lists_pending_reverts_in_local_time_and_bad_durations_are_refused() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    let reply = app.ask(&chat, &admin(), "/lock-dm 30m").await;
    assert_reply(&reply, "✅", "It reverts at");
    let status = app.ask(&chat, &member(), "/group-status").await;
    assert_reply(&status, "ℹ️", "Pending revert: Private chat back to allowed at");
    assert_reply(
        &status,
        "",
        "CST (Asia/Shanghai), scheduled by Ada (admin01) with `/lock-dm 30m`",
    );

    for text in ["/mute-all 45d", "/lock-dm soon", "/atall owner 0m"] {
        let reply = app.ask(&chat, &admin(), text).await;
        assert_reply(&reply, "⛔", "30m, 2h, 1h30m or 1d");
    }
    assert!(app.sim.calls(Some(api::GROUP_UPDATE)).is_empty());
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
}

#[tokio::test]
async fn a_revert_that_fell_due_while_dingops_was_stopped_runs_at_start() {
    let app = spawn_app_with(fast_reverts(2000)).await;
    let chat = app.chat(GROUP);
    app.ask(&chat, &admin(), "/unlock-dm 2m").await;
    app.ask(&chat, &admin(), "/history on 1h").await;
    let (sim, dir) = app.stop().await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        sim.calls(Some(api::FRIEND_SWITCH)).len(),
        1,
        "nothing runs while stopped"
    );

    let app = spawn_app_with(Options {
        sim: Some(sim),
        dir: Some(dir),
        ..fast_reverts(2000)
    })
    .await;
    let message = group_message(&app, "Timed revert", 20)
        .await
        .expect("the revert ran at start");
    assert!(
        message.content.contains("Private chat back to forbidden"),
        "{}",
        message.content
    );
    let calls = app.sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].body,
        json!({"chatid": GROUP_CHATID, "is_prohibit": true})
    );
    assert!(app.sim.group(GROUP).unwrap().dm_prohibited);
    // The other revert, not due yet, survived the restart.
    let status = app.ask(&app.chat(GROUP), &member(), "/group-status").await;
    assert_reply(
        &status,
        "ℹ️",
        "Pending revert: New members see history back to off",
    );
    assert_reply(&status, "", "Private chat: forbidden, set by dingops (timer)");
}

#[tokio::test]
async fn a_revert_dingtalk_refuses_posts_a_failure_with_advice() {
    let app = spawn_app_with(fast_reverts(500)).await;
    let chat = app.chat(GROUP);
    app.ask(&chat, &admin(), "/manage owner 1m").await;
    app.sim
        .inject(api::GROUP_UPDATE, Fault::Errcode { errcode: 60011 });
    let message = group_message(&app, "Timed revert failed", 20)
        .await
        .expect("the failed revert is told");
    assert!(message.content.starts_with("❌"), "{}", message.content);
    assert!(
        message.content.contains("qyapi_chat_manage"),
        "{}",
        message.content
    );
}

/// The revert of `/mute-all 1m` is slow to reach DingTalk; meanwhile an admin mutes the
/// group again, for good. The newer command must be the one that stays: it waits for the
/// revert in flight instead of racing it.
#[tokio::test]
async fn a_newer_command_during_a_revert_in_flight_is_the_value_that_stays() {
    let app = spawn_app_with(fast_reverts(1000)).await;
    let chat = app.chat(GROUP);
    let reply = app.ask(&chat, &admin(), "/mute-all 1m").await;
    assert_reply(&reply, "✅", "It reverts at");
    // The revert falls due after 1 s and is picked up within the scheduler's 1 s tick; its
    // DingTalk call then takes 4 s, so 2.5 s from now it is in flight.
    app.sim.inject(api::GROUP_UPDATE, Fault::Delay { ms: 4000 });
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, _) = app.say(&chat, &admin(), "/mute-all").await;
    assert_eq!(status, 200);
    // The command's reply and the revert's group message.
    let replies = app
        .sim
        .wait_for_replies(3, std::time::Duration::from_secs(15))
        .await;
    assert_eq!(replies.len(), 3, "{replies:#?}");
    let values: Vec<serde_json::Value> = app
        .sim
        .calls(Some(api::GROUP_UPDATE))
        .iter()
        .map(|c| c.body["managementOptions"]["chatBannedType"].clone())
        .collect();
    assert_eq!(values, [1, 0, 1], "mute, the revert, then the newer mute");
    assert_eq!(app.sim.group(GROUP).unwrap().options["chatBannedType"], 1);
}
