//! Each command's happy path and each refusal, asserting the exact request DingTalk got and
//! the reply posted in the chat.

use dingops::ledger::prelude::*;
use dingtalk_sim::chat::{Chat, Member, new_msg_id, text_message};
use dingtalk_sim::{Fault, api};
use serde_json::json;

use crate::helpers::*;

fn assert_mentions(reply: &dingtalk_sim::RecordedReply, who: &Member) {
    assert_eq!(reply.at_user_ids, vec![who.staff_id.clone()]);
    assert!(
        reply.content.contains(&format!("@{}", who.staff_id)),
        "{}",
        reply.content
    );
}

#[tokio::test]
async fn lock_dm_forbids_private_chat_for_the_bound_chatid_and_replies_done() {
    let app = spawn_app().await;
    let reply = app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await;

    let calls = app.sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].body,
        json!({"chatid": GROUP_CHATID, "is_prohibit": true})
    );
    assert_eq!(calls[0].access_token.as_ref(), app.sim.legacy_tokens().first());
    assert_reply(&reply, "✅", "forbidden");
    assert_mentions(&reply, &admin());
    assert_eq!(reply.open_conversation_id, GROUP);
    assert!(app.sim.group(GROUP).unwrap().dm_prohibited);
}

#[tokio::test]
async fn unlock_dm_allows_private_chat_again_and_names_who_locked_it_before() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    app.ask(&chat, &admin(), "/lock-dm").await;
    let reply = app.ask(&chat, &admin(), "/unlock-dm").await;

    let calls = app.sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].body,
        json!({"chatid": GROUP_CHATID, "is_prohibit": false})
    );
    assert_reply(&reply, "✅", "");
    assert!(
        reply.content.contains("last locked it: Ada (admin01)"),
        "{}",
        reply.content
    );
    assert!(!app.sim.group(GROUP).unwrap().dm_prohibited);
}

#[tokio::test]
async fn locking_an_already_locked_group_still_calls_dingtalk() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    app.ask(&chat, &admin(), "/lock-dm").await;
    let reply = app.ask(&chat, &admin(), "/禁止私聊").await;
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 2);
    assert_reply(&reply, "", "last locked it");
}

#[tokio::test]
async fn dm_status_shows_the_binding_and_the_last_state_to_anyone() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    let before = app.ask(&chat, &member(), "/dm-status").await;
    assert_reply(&before, "ℹ️", GROUP_CHATID);
    assert_reply(&before, "", "has not changed");

    app.ask(&chat, &admin(), "/lock-dm").await;
    let after = app.ask(&chat, &member(), "/dm-status").await;
    assert!(
        after.content.contains("forbidden, set by Ada (admin01)"),
        "{}",
        after.content
    );
    assert_mentions(&after, &member());
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
}

#[tokio::test]
async fn bind_verifies_the_chatid_with_dingtalk_and_then_lock_dm_uses_it() {
    let app = spawn_app().await;
    // OTHER is not bound in the configuration.
    let chat = app.chat(OTHER);
    let reply = app.ask(&chat, &admin(), &format!("/bind {OTHER_CHATID}")).await;
    assert_reply(&reply, "✅", "");

    let converts = app.sim.calls(Some(api::CONVERT));
    assert_eq!(converts.len(), 1);
    assert_eq!(converts[0].body, json!(OTHER_CHATID));
    assert!(converts[0].access_token.is_some());

    app.ask(&chat, &admin(), "/lock-dm").await;
    let switch = app.sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(
        switch[0].body,
        json!({"chatid": OTHER_CHATID, "is_prohibit": true})
    );
    assert!(app.sim.group(OTHER).unwrap().dm_prohibited);
}

#[tokio::test]
async fn bind_with_another_groups_chatid_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let chat = app.chat(OTHER);
    let reply = app.ask(&chat, &admin(), &format!("/绑定 {GROUP_CHATID}")).await;
    assert_reply(&reply, "⛔", "another group");
    assert!(app.ledger().binding(OTHER).unwrap().is_none());
    let status = app.ask(&chat, &admin(), "/dm-status").await;
    assert_reply(&status, "", "not bound");
}

#[tokio::test]
async fn bind_with_a_chatid_dingtalk_does_not_know_fails_with_the_reason() {
    let app = spawn_app().await;
    let reply = app.ask(&app.chat(OTHER), &admin(), "/bind chatnosuchgroup").await;
    assert_reply(&reply, "❌", "invalideChatId");
    assert!(app.ledger().binding(OTHER).unwrap().is_none());
}

#[tokio::test]
async fn a_member_who_is_not_an_admin_is_refused_and_dingtalk_is_not_called() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    for text in ["/lock-dm", "/unlock-dm", &format!("/bind {GROUP_CHATID}")] {
        let reply = app.ask(&chat, &member(), text).await;
        assert_reply(&reply, "⛔", "admins only");
        assert_mentions(&reply, &member());
    }
    let api_calls: Vec<_> = app
        .sim
        .calls(None)
        .into_iter()
        .filter(|c| c.api != api::SEND_BY_SESSION)
        .collect();
    assert!(api_calls.is_empty(), "{api_calls:?}");
    assert!(!app.sim.group(GROUP).unwrap().dm_prohibited);
}

#[tokio::test]
async fn is_admin_from_the_payload_counts_only_when_trust_is_admin_is_on() {
    let payload_admin = Member::new("owner77", "Olga", true);
    let app = spawn_app().await;
    let reply = app.ask(&app.chat(GROUP), &payload_admin, "/lock-dm").await;
    assert_reply(&reply, "⛔", "");

    let trusting = spawn_app_with(Options {
        settings: Some(Box::new(|s| s.worker.trust_is_admin = true)),
        ..Options::default()
    })
    .await;
    let reply = trusting
        .ask(&trusting.chat(GROUP), &payload_admin, "/lock-dm")
        .await;
    assert_reply(&reply, "✅", "");
}

#[tokio::test]
async fn lock_dm_in_an_unbound_group_is_refused_with_how_to_bind() {
    let app = spawn_app().await;
    let reply = app.ask(&app.chat(UNBOUND), &admin(), "/lock-dm").await;
    assert_reply(&reply, "⛔", "/bind <chatid>");
    assert!(app.sim.calls(Some(api::FRIEND_SWITCH)).is_empty());
    assert!(app.sim.calls(Some(api::GET_TOKEN)).is_empty());
}

#[tokio::test]
async fn commands_in_a_one_to_one_chat_explain_that_they_work_in_groups() {
    let app = spawn_app().await;
    let mut chat: Chat = app.chat("cidPrivateChat==");
    chat.conversation_type = "1".into();
    let reply = app.ask(&chat, &admin(), "/lock-dm").await;
    assert_reply(&reply, "ℹ️", "group chats");
    let api_calls: Vec<_> = app
        .sim
        .calls(None)
        .into_iter()
        .filter(|c| c.api != api::SEND_BY_SESSION)
        .collect();
    assert!(api_calls.is_empty(), "{api_calls:?}");
}

#[tokio::test]
async fn help_lists_every_command_in_english_and_chinese() {
    let app = spawn_app().await;
    let reply = app.ask(&app.chat(GROUP), &member(), "/帮助").await;
    assert_reply(&reply, "ℹ️", "");
    for spec in dingops::command::COMMANDS {
        assert!(reply.content.contains(spec.name), "{}", reply.content);
        assert!(reply.content.contains(spec.alias), "{}", reply.content);
    }
}

#[tokio::test]
async fn unknown_commands_and_plain_text_get_a_hint_pointing_to_help() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    let unknown = app.ask(&chat, &admin(), "/reboot-everything").await;
    assert_reply(&unknown, "ℹ️", "");
    assert!(unknown.content.contains("/reboot-everything") && unknown.content.contains("/help"));
    let plain = app.ask(&chat, &admin(), "hello robot").await;
    assert_reply(&plain, "", "/help");
}

#[tokio::test]
async fn a_picture_message_gets_a_hint_and_no_api_call() {
    let app = spawn_app().await;
    let mut body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "");
    body["msgtype"] = json!("picture");
    body.as_object_mut().unwrap().remove("text");
    body["content"] = json!({"downloadCode": "abc"});
    assert_eq!(app.post_signed(&body).await.0, 200);
    let reply = app.replies(1).await.pop().unwrap();
    assert_reply(&reply, "", "text commands");
}

#[tokio::test]
async fn a_missing_permission_60011_fails_with_the_permission_to_add() {
    let app = spawn_app().await;
    app.sim
        .inject(api::FRIEND_SWITCH, Fault::Errcode { errcode: 60011 });
    let reply = app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await;
    assert_reply(&reply, "❌", "60011");
    assert_reply(&reply, "", "qyapi_chat_manage");
    // A permanent error is not retried.
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
    assert!(!app.sim.group(GROUP).unwrap().dm_prohibited);
}

#[tokio::test]
async fn an_invalid_bound_chatid_34001_fails_and_says_to_rebind() {
    let app = spawn_app().await;
    let (status, msg_id) = app.say(&app.chat(STALE), &admin(), "/lock-dm").await;
    assert_eq!(status, 200);
    let reply = app.replies(1).await.pop().unwrap();
    assert_reply(&reply, "❌", "");
    assert!(
        reply.content.contains("34001") && reply.content.contains("/bind"),
        "{}",
        reply.content
    );
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
    let row = app.finished_row(&msg_id).await;
    assert_eq!(row.result.as_deref(), Some("failed"));
    assert_eq!(row.errcode, Some(34001));
}

#[tokio::test]
async fn every_command_is_audited_with_sender_group_result_and_errcode() {
    let app = spawn_app().await;
    let (_, ok_id) = app.say(&app.chat(GROUP), &admin(), "/lock-dm").await;
    let (_, refused_id) = app.say(&app.chat(GROUP), &member(), "/unlock-dm").await;
    app.replies(2).await;
    let ok = app.finished_row(&ok_id).await;
    assert_eq!(ok.sender_staff_id.as_deref(), Some("admin01"));
    assert_eq!(ok.sender_nick.as_deref(), Some("Ada"));
    assert_eq!(ok.conversation_id, GROUP);
    assert_eq!(ok.command.as_deref(), Some("/lock-dm"));
    assert_eq!(ok.result.as_deref(), Some("ok"));
    assert_eq!(ok.reply.as_deref(), Some("session"));
    assert!(ok.finished_ms.unwrap() >= ok.received_ms);
    let refused = app.finished_row(&refused_id).await;
    assert_eq!(refused.result.as_deref(), Some("refused"));
    assert_eq!(refused.command.as_deref(), Some("/unlock-dm"));
}
