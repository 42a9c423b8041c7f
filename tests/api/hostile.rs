//! Hostile inputs at `POST /callback` and in the payload's URLs: each gets a clear answer and
//! changes nothing it should not. docs/reliability.md's table of hostile inputs lists these.

use std::net::TcpListener;
use std::time::Duration;

use dingtalk_sim::chat::{new_msg_id, text_message};
use dingtalk_sim::{Fault, SimConfig, Simulator, api};
use serde_json::{Value, json};

use crate::helpers::*;

/// Posts raw parts; returns the status.
async fn post(app: &TestApp, headers: &[(&str, String)], body: Vec<u8>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(format!("{}/callback", app.address))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    req.send().await.unwrap().status().as_u16()
}

fn signed(app: &TestApp) -> Vec<(&'static str, String)> {
    let (ts, sign) = app.sender.signed_headers();
    vec![
        ("timestamp", ts),
        ("sign", sign),
        ("content-type", "application/json".into()),
    ]
}

async fn assert_nothing_happened(app: &TestApp) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.sim.calls(None).is_empty(), "{:?}", app.sim.calls(None));
    assert_eq!(app.ledger_rows(), 0);
}

fn valid_body(app: &TestApp) -> Vec<u8> {
    text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/lock-dm")
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn duplicated_signature_headers_are_rejected_with_401() {
    let app = spawn_app().await;
    let (ts, sign) = app.sender.signed_headers();
    let resp = reqwest::Client::new()
        .post(format!("{}/callback", app.address))
        .header("timestamp", ts.as_str())
        .header("sign", sign.as_str())
        .header("sign", sign.as_str())
        .body(valid_body(&app))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn oversized_headers_are_refused_without_a_server_error() {
    let app = spawn_app().await;
    let mut headers = signed(&app);
    // Above actix's 128 KiB bound on the request head.
    headers.push(("x-padding", "p".repeat(200 * 1024)));
    let status = post(&app, &headers, valid_body(&app)).await;
    assert!((400..500).contains(&status), "{status}");
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn negative_fractional_and_twenty_digit_timestamps_are_rejected_with_401() {
    let app = spawn_app().await;
    for ts in ["-1", "1.5e12", "12345678901234567890", "0x1F", "", " "] {
        let headers = vec![("timestamp", ts.to_owned()), ("sign", "AAAA".to_owned())];
        assert_eq!(post(&app, &headers, valid_body(&app)).await, 401, "{ts:?}");
    }
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_rejected_with_400() {
    let app = spawn_app().await;
    let mut body = valid_body(&app);
    body.splice(10..10, [0xff, 0xfe, 0xc0]);
    assert_eq!(post(&app, &signed(&app), body).await, 400);
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn deeply_nested_json_is_rejected_with_400_without_blowing_the_stack() {
    let app = spawn_app().await;
    let body = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)).into_bytes();
    assert_eq!(post(&app, &signed(&app), body).await, 400);
    let nested = format!(
        r#"{{"msgId":"x","extra":{}1{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    assert_eq!(post(&app, &signed(&app), nested.into_bytes()).await, 400);
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn sixty_four_kib_of_whitespace_is_rejected_with_400() {
    let app = spawn_app().await;
    assert_eq!(post(&app, &signed(&app), vec![b' '; 64 * 1024]).await, 400);
    assert_eq!(post(&app, &signed(&app), vec![b' '; 64 * 1024 + 1]).await, 413);
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn a_wrong_content_type_with_a_valid_signed_body_is_still_processed() {
    // DingTalk documents application/json; the signature, not the content type, is what
    // authenticates, so a mislabelled body is parsed all the same.
    let app = spawn_app().await;
    let mut headers = signed(&app);
    headers.retain(|(k, _)| *k != "content-type");
    headers.push(("content-type", "text/plain".into()));
    let body = text_message(&new_msg_id(), &app.chat(GROUP), &member(), "/help").to_string();
    assert_eq!(post(&app, &headers, body.into_bytes()).await, 200);
    app.replies(1).await;
}

#[tokio::test]
async fn rich_text_and_empty_text_get_a_hint_and_no_api_call() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    let mut rich = text_message(&new_msg_id(), &chat, &admin(), "");
    rich["msgtype"] = json!("richText");
    rich.as_object_mut().unwrap().remove("text");
    rich["content"] = json!({"richText": [{"text": "/lock-dm"}]});
    assert_eq!(app.post_signed(&rich).await.0, 200);
    let empty = text_message(&new_msg_id(), &chat, &admin(), "");
    assert_eq!(app.post_signed(&empty).await.0, 200);
    let replies = app.replies(2).await;
    assert!(
        replies.iter().all(|r| r.content.starts_with("ℹ️")),
        "{replies:#?}"
    );
    assert!(
        replies[0].content.contains("text commands"),
        "{}",
        replies[0].content
    );
    assert_reply(&replies[1], "", "/help");
    assert!(app.sim.calls(Some(api::FRIEND_SWITCH)).is_empty());
}

#[tokio::test]
async fn session_webhooks_with_other_schemes_hosts_user_info_or_ip_literals_are_never_called() {
    let app = spawn_app().await;
    let port = app.sim.host_port().rsplit(':').next().unwrap().to_owned();
    for url in [
        format!("ftp://127.0.0.1:{port}/robot/sendBySession?session=x"),
        format!("http://user:pw@127.0.0.1:{port}/robot/sendBySession?session=x"),
        format!("http://[::1]:{port}/robot/sendBySession?session=x"),
        format!("http://localhost:{port}/robot/sendBySession?session=x"),
        "https://93.184.216.34/robot/sendBySession?session=x".to_owned(),
        "https://oapi.dingtalk.com@evil.example/robot/sendBySession?session=x".to_owned(),
        "javascript:alert(1)".to_owned(),
    ] {
        let chat = chat_with_webhook(GROUP, url.clone());
        let (status, msg_id) = app.say(&chat, &member(), "/help").await;
        assert_eq!(status, 200);
        let row = app.finished_row(&msg_id).await;
        assert_eq!(row.reply.as_deref(), Some("none-host-not-allowed"), "{url}");
    }
    assert!(app.sim.calls(Some(api::SEND_BY_SESSION)).is_empty());
}

#[tokio::test]
async fn a_redirect_from_an_allowed_host_is_not_followed() {
    let app = spawn_app().await;
    let rogue = Simulator::start(SimConfig::default(), TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let (rogue_url, _) = rogue.open_session(GROUP, Duration::from_secs(600));
    app.sim
        .inject(api::SEND_BY_SESSION, Fault::Redirect { location: rogue_url });
    let (_, msg_id) = app.say(&app.chat(GROUP), &member(), "/help").await;
    let row = app.finished_row(&msg_id).await;
    assert_eq!(row.reply.as_deref(), Some("none-failed-http-302"));
    assert!(rogue.calls(None).is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn an_oversized_answer_from_dingtalk_is_an_error_not_a_memory_spike() {
    let app = spawn_app().await;
    let huge = Fault::HugeBody {
        bytes: 4 * 1024 * 1024,
    };
    for _ in 0..4 {
        app.sim.inject(api::FRIEND_SWITCH, huge.clone());
    }
    let reply = app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await;
    assert_reply(&reply, "❌", "decode");
    // A malformed answer is not retried.
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
}

#[tokio::test]
async fn an_admin_running_more_than_ten_commands_a_minute_is_told_to_slow_down() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s| s.worker.admin_commands_per_minute = 10)),
        ..Options::default()
    })
    .await;
    let chat = app.chat(GROUP);
    for i in 0..10 {
        let text = if i % 2 == 0 { "/lock-dm" } else { "/unlock-dm" };
        assert!(app.ask(&chat, &admin(), text).await.content.starts_with("✅"));
    }
    let eleventh = app.ask(&chat, &admin(), "/lock-dm").await;
    assert_reply(&eleventh, "⛔", "slow down");
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 10);
    // Information is not limited, and another group is counted on its own.
    assert!(
        app.ask(&chat, &admin(), "/dm-status")
            .await
            .content
            .starts_with("ℹ️")
    );
    let other = app.ask(&app.chat(STALE), &admin(), "/lock-dm").await;
    assert_reply(&other, "❌", "");
}

#[tokio::test]
async fn extra_mentions_and_unicode_around_a_command_still_parse() {
    let app = spawn_app().await;
    let reply = app
        .ask(
            &app.chat(GROUP),
            &admin(),
            "@张三 @李四\u{2005}/lock-dm\u{3000}@王五 ",
        )
        .await;
    assert_reply(&reply, "✅", "");
    let weird: Value = json!("\u{0}\u{1b}[31m/lock-dm\u{202e}");
    let reply = app.ask(&app.chat(GROUP), &admin(), weird.as_str().unwrap()).await;
    assert_reply(&reply, "ℹ️", "");
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
}
