//! Replies go only to allow-listed, unexpired sessionWebhooks.

use std::net::TcpListener;

use dingtalk_sim::{SimConfig, Simulator, api};

use crate::helpers::*;

#[tokio::test]
async fn a_session_webhook_outside_reply_hosts_is_never_called() {
    let app = spawn_app().await;
    // A second server on loopback that is not on reply_hosts.
    let rogue = Simulator::start(SimConfig::default(), TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let chat = session_chat(&rogue, GROUP);
    let (status, msg_id) = app.say(&chat, &admin(), "/lock-dm").await;
    assert_eq!(status, 200);
    let row = app.finished_row(&msg_id).await;
    assert_eq!(row.reply.as_deref(), Some("none-host-not-allowed"));
    assert!(rogue.calls(None).is_empty());
    assert!(rogue.replies().is_empty());
    // The command itself still ran: the allow-list guards only the reply.
    assert_eq!(row.result.as_deref(), Some("ok"));
}

#[tokio::test]
async fn non_https_and_foreign_webhooks_are_refused() {
    let app = spawn_app().await;
    for url in [
        "http://oapi.dingtalk.com/robot/sendBySession?session=x",
        "https://evil.example/robot/sendBySession?session=x",
        "https://user:pw@oapi.dingtalk.com/robot/sendBySession?session=x",
        "file:///etc/passwd",
        "not a url",
    ] {
        let chat = chat_with_webhook(GROUP, url);
        let (status, msg_id) = app.say(&chat, &member(), "/help").await;
        assert_eq!(status, 200);
        assert_eq!(
            app.finished_row(&msg_id).await.reply.as_deref(),
            Some("none-host-not-allowed"),
            "{url}"
        );
    }
}

#[tokio::test]
async fn a_session_past_its_expiry_time_is_not_called_and_a_group_message_names_the_sender() {
    let app = spawn_app().await;
    let mut chat = app.chat(GROUP);
    chat.session_expires_ms = dingops::clock::now_ms() - 1;
    let (status, msg_id) = app.say(&chat, &admin(), "/lock-dm").await;
    assert_eq!(status, 200);
    let reply = app.replies(1).await.pop().unwrap();
    assert_eq!(reply.via, "group-message");
    assert_eq!(reply.open_conversation_id, GROUP);
    assert!(
        reply
            .content
            .starts_with("✅ Ada (admin01): Private chat is now forbidden"),
        "{}",
        reply.content
    );
    assert!(app.sim.calls(Some(api::SEND_BY_SESSION)).is_empty());
    let sent = app.sim.calls(Some(api::GROUP_MESSAGE));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["robotCode"], app.sim.config().app_key.as_str());
    assert_eq!(sent[0].body["msgKey"], "sampleText");
    assert_eq!(
        app.finished_row(&msg_id).await.reply.as_deref(),
        Some("group-message")
    );
}

#[tokio::test]
async fn a_session_dingtalk_says_is_gone_falls_back_to_a_group_message() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    app.sim.expire_sessions();
    let (_, msg_id) = app.say(&chat, &member(), "/dm-status").await;
    let reply = app.replies(1).await.pop().unwrap();
    assert_eq!(reply.via, "group-message");
    assert!(
        reply.content.starts_with("ℹ️ Max (member01): "),
        "{}",
        reply.content
    );
    let answers: Vec<i64> = app
        .sim
        .calls(Some(api::SEND_BY_SESSION))
        .iter()
        .map(|c| c.answer)
        .collect();
    assert_eq!(answers, vec![300001]);
    assert_eq!(
        app.finished_row(&msg_id).await.reply.as_deref(),
        Some("group-message")
    );
}

#[tokio::test]
async fn an_expired_one_to_one_session_gets_no_reply_and_the_ledger_says_so() {
    let app = spawn_app().await;
    let mut chat = app.chat("cidPrivate==");
    chat.conversation_type = "1".into();
    chat.session_expires_ms = dingops::clock::now_ms() - 1;
    let (_, msg_id) = app.say(&chat, &member(), "/help").await;
    assert_eq!(
        app.finished_row(&msg_id).await.reply.as_deref(),
        Some("none-expired")
    );
    assert!(app.sim.replies().is_empty());
}

#[tokio::test]
async fn a_reply_dingtalk_refuses_is_recorded_with_its_errcode_and_not_retried() {
    let app = spawn_app().await;
    app.sim.inject(
        api::SEND_BY_SESSION,
        dingtalk_sim::Fault::Errcode { errcode: 310000 },
    );
    let (_, msg_id) = app.say(&app.chat(GROUP), &member(), "/help").await;
    assert_eq!(
        app.finished_row(&msg_id).await.reply.as_deref(),
        Some("none-failed-310000")
    );
    assert_eq!(app.sim.calls(Some(api::SEND_BY_SESSION)).len(), 1);
    assert!(app.sim.replies().is_empty());
}
