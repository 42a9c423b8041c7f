//! A msgId runs once, however often DingTalk delivers it, also across restarts.

use std::sync::Arc;
use std::time::Duration;

use dingtalk_sim::api;
use dingtalk_sim::chat::{new_msg_id, text_message};

use crate::helpers::*;

#[tokio::test]
async fn a_redelivered_msg_id_is_acknowledged_but_executes_once() {
    let app = spawn_app().await;
    let body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/lock-dm");
    for _ in 0..3 {
        let (status, answer) = app.post_signed(&body).await;
        assert_eq!(status, 200);
        assert_eq!(answer, r#"{"msgtype":"empty"}"#);
    }
    app.replies(1).await;
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
    assert_eq!(app.ledger_rows(), 1);
}

#[tokio::test]
async fn concurrent_deliveries_of_one_msg_id_execute_once() {
    let app = Arc::new(spawn_app().await);
    let body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/lock-dm");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (app, body) = (app.clone(), body.clone());
        tasks.push(tokio::spawn(async move { app.post_signed(&body).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    app.replies(1).await;
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
}

#[tokio::test]
async fn a_redelivery_after_a_restart_on_the_same_database_does_not_execute_again() {
    let app = spawn_app().await;
    let body = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/lock-dm");
    assert_eq!(app.post_signed(&body).await.0, 200);
    app.replies(1).await;
    let (sim, dir) = app.stop().await;

    let restarted = spawn_app_with(Options {
        sim: Some(sim),
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    assert_eq!(restarted.post_signed(&body).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(restarted.sim.replies().len(), 1);
    assert_eq!(restarted.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
}
