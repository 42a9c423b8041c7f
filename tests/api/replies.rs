//! Replies go only to allow-listed, unexpired sessionWebhooks.

use std::net::TcpListener;
use std::time::Duration;

use dingops::sim::chat::{Chat, new_msg_id, text_message};
use dingops::sim::{SimConfig, Simulator, api};

use crate::helpers::*;

#[tokio::test]
async fn a_session_webhook_outside_reply_hosts_is_never_called() {
    let app = spawn_app().await;
    // A second server on loopback that is not on reply_hosts.
    let rogue = Simulator::start(
        SimConfig::default(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .unwrap();
    let (url, exp) = rogue.open_session(GROUP, Duration::from_secs(600));
    let chat = Chat {
        open_conversation_id: GROUP.into(),
        title: "t".into(),
        conversation_type: "2".into(),
        session_webhook: url,
        session_expires_ms: exp,
    };
    let (status, msg_id) = app.say(&chat, &admin(), "/lock-dm").await;
    assert_eq!(status, 200);
    let row = app.finished_row(&msg_id).await;
    assert_eq!(row.reply.as_deref(), Some("host-not-allowed"));
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
        let chat = Chat {
            open_conversation_id: GROUP.into(),
            title: "t".into(),
            conversation_type: "2".into(),
            session_webhook: url.into(),
            session_expires_ms: dingops::clock::now_ms() + 600_000,
        };
        let (status, msg_id) = app.say(&chat, &member(), "/help").await;
        assert_eq!(status, 200);
        assert_eq!(
            app.finished_row(&msg_id).await.reply.as_deref(),
            Some("host-not-allowed"),
            "{url}"
        );
    }
}

#[tokio::test]
async fn an_expired_session_is_not_called() {
    let app = spawn_app().await;
    let mut chat = app.chat(GROUP);
    chat.session_expires_ms = dingops::clock::now_ms() - 1;
    let (status, msg_id) = app.say(&chat, &member(), "/help").await;
    assert_eq!(status, 200);
    assert_eq!(
        app.finished_row(&msg_id).await.reply.as_deref(),
        Some("expired")
    );
    assert!(app.sim.calls(Some(api::SEND_BY_SESSION)).is_empty());
}

#[tokio::test]
async fn a_reply_dingtalk_refuses_is_recorded_with_its_errcode() {
    let app = spawn_app().await;
    // The simulator forgets the session: DingTalk answers 300001.
    let body = {
        let mut chat = app.chat(GROUP);
        chat.session_webhook = format!("{}/robot/sendBySession?session=unknown", app.sim.url());
        text_message(&new_msg_id(), &chat, &member(), "/help")
    };
    let msg_id = body["msgId"].as_str().unwrap().to_owned();
    assert_eq!(app.post_signed(&body).await.0, 200);
    assert_eq!(
        app.finished_row(&msg_id).await.reply.as_deref(),
        Some("failed-300001")
    );
    assert_eq!(app.sim.calls(Some(api::SEND_BY_SESSION)).len(), 1);
}
