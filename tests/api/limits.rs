//! Body limits and payload validation: 413 over 64 KiB, 400 for malformed bodies, and
//! unknown fields tolerated.

use std::time::Duration;

use dingtalk_sim::chat::{new_msg_id, text_message};
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn a_body_over_64_kib_is_rejected_with_413_and_changes_nothing() {
    let app = spawn_app().await;
    let mut body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/lock-dm");
    body["padding"] = Value::String("x".repeat(64 * 1024));
    let (status, answer) = app.post_signed(&body).await;
    assert_eq!(status, 413, "{answer}");
    assert!(serde_json::from_str::<Value>(&answer).unwrap()["error"].is_string());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.sim.calls(None).is_empty());
    assert_eq!(app.ledger_rows(), 0);
}

#[tokio::test]
async fn a_body_of_exactly_64_kib_is_accepted() {
    let app = spawn_app().await;
    let mut body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/help");
    body["padding"] = Value::String(String::new());
    let len = body.to_string().len();
    body["padding"] = Value::String("x".repeat(64 * 1024 - len));
    assert_eq!(body.to_string().len(), 64 * 1024);
    let (status, _) = app.post_signed(&body).await;
    assert_eq!(status, 200);
    app.replies(1).await;
}

#[tokio::test]
async fn malformed_json_is_rejected_with_400_and_changes_nothing() {
    let app = spawn_app().await;
    let (ts, sign) = app.sender.signed_headers();
    for body in [&b"{not json"[..], b"", b"[]", b"null", &[0xff, 0xfe, 0x00]] {
        let (status, answer) = app
            .sender
            .send_raw(body.to_vec(), Some(&ts), Some(&sign))
            .await
            .unwrap();
        assert_eq!(status, 400, "{answer}");
        assert!(serde_json::from_str::<Value>(&answer).unwrap()["error"].is_string());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.sim.calls(None).is_empty());
    assert_eq!(app.ledger_rows(), 0);
}

#[tokio::test]
async fn a_callback_without_a_required_field_is_rejected_with_400() {
    let app = spawn_app().await;
    for field in [
        "msgId",
        "conversationId",
        "sessionWebhook",
        "conversationType",
        "msgtype",
    ] {
        let mut body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/help");
        body.as_object_mut().unwrap().remove(field);
        let (status, answer) = app.post_signed(&body).await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert!(answer.contains(field), "the error names {field}: {answer}");
    }
    assert_eq!(app.ledger_rows(), 0);
}

#[tokio::test]
async fn unknown_fields_are_tolerated() {
    let app = spawn_app().await;
    let mut body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/help");
    body["openThreadId"] = Value::String("t1".into());
    body["hostingContext"] = serde_json::json!({"userId": "u", "nick": "n"});
    let (status, _) = app.post_signed(&body).await;
    assert_eq!(status, 200);
    assert!(app.replies(1).await[0].content.starts_with("ℹ️"));
}
