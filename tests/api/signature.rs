//! `POST /callback` refuses anything not signed with the app secret inside the window, and a
//! refused callback changes nothing: no ledger row, no DingTalk call, no reply.

use std::time::Duration;

use dingops::clock::now_ms;
use dingops::ingress::signature::Verifier;
use dingtalk_sim::chat::{new_msg_id, text_message};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;

async fn assert_rejected_and_nothing_happened(app: &TestApp, ts: Option<&str>, sign: Option<&str>) {
    let body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/lock-dm");
    let (status, answer) = app
        .sender
        .send_raw(body.to_string().into_bytes(), ts, sign)
        .await
        .unwrap();
    assert_eq!(status, 401, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert!(v["error"].is_string(), "{answer}");
    assert!(!answer.contains(&app.secret));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.sim.calls(None).is_empty(), "{:?}", app.sim.calls(None));
    assert!(app.sim.replies().is_empty());
    assert_eq!(app.ledger_rows(), 0);
}

fn sign_with(secret: &str, ts: &str) -> String {
    Verifier::new(SecretString::from(secret.to_owned()), 3600).sign(ts)
}

#[tokio::test]
async fn a_correctly_signed_callback_is_acknowledged_with_msgtype_empty() {
    let app = spawn_app().await;
    let body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/help");
    let (status, answer) = app.post_signed(&body).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        serde_json::json!({"msgtype": "empty"})
    );
    app.replies(1).await;
}

#[tokio::test]
async fn a_signature_made_with_the_wrong_secret_is_rejected_with_401() {
    let app = spawn_app().await;
    let ts = now_ms().to_string();
    assert_rejected_and_nothing_happened(&app, Some(&ts), Some(&sign_with("wrong secret", &ts))).await;
}

#[tokio::test]
async fn missing_signature_headers_are_rejected_with_401() {
    let app = spawn_app().await;
    let ts = now_ms().to_string();
    let sign = sign_with(&app.secret, &ts);
    assert_rejected_and_nothing_happened(&app, None, Some(&sign)).await;
    assert_rejected_and_nothing_happened(&app, Some(&ts), None).await;
    assert_rejected_and_nothing_happened(&app, None, None).await;
}

#[tokio::test]
async fn a_stale_timestamp_is_rejected_even_when_correctly_signed() {
    let app = spawn_app().await;
    let ts = (now_ms() - 3_601_000).to_string();
    assert_rejected_and_nothing_happened(&app, Some(&ts), Some(&sign_with(&app.secret, &ts))).await;
}

#[tokio::test]
async fn a_future_timestamp_is_rejected_even_when_correctly_signed() {
    let app = spawn_app().await;
    let ts = (now_ms() + 3_601_000).to_string();
    assert_rejected_and_nothing_happened(&app, Some(&ts), Some(&sign_with(&app.secret, &ts))).await;
}

#[tokio::test]
async fn garbage_in_the_signature_headers_is_rejected_with_401() {
    let app = spawn_app().await;
    let ts = now_ms().to_string();
    assert_rejected_and_nothing_happened(&app, Some(&ts), Some("***not base64***")).await;
    assert_rejected_and_nothing_happened(
        &app,
        Some("yesterday"),
        Some(&sign_with(&app.secret, "yesterday")),
    )
    .await;
    assert_rejected_and_nothing_happened(&app, Some(&ts), Some(&"A".repeat(5000))).await;
}

#[tokio::test]
async fn a_forged_signature_is_rejected_before_an_oversized_body_is_read() {
    let app = spawn_app().await;
    let ts = now_ms().to_string();
    let (status, _) = app
        .sender
        .send_raw(vec![b' '; 200 * 1024], Some(&ts), Some(&sign_with("wrong", &ts)))
        .await
        .unwrap();
    assert_eq!(status, 401);
}
