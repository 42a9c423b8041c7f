//! Access tokens: fetched once for many concurrent commands, refreshed when DingTalk
//! revokes them.

use std::sync::Arc;

use dingtalk_sim::api;

use crate::helpers::*;

#[tokio::test]
async fn twenty_concurrent_commands_cause_one_token_fetch() {
    let app = Arc::new(spawn_app().await);
    let chat = app.chat(GROUP);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (app, chat) = (app.clone(), chat.clone());
        let text = if i % 2 == 0 { "/lock-dm" } else { "/unlock-dm" };
        tasks.push(tokio::spawn(
            async move { app.say(&chat, &admin(), text).await.0 },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let replies = app.replies(20).await;
    assert!(
        replies.iter().all(|r| r.content.starts_with("✅")),
        "{replies:#?}"
    );
    assert_eq!(app.sim.calls(Some(api::GET_TOKEN)).len(), 1);
    let switches = app.sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(switches.len(), 20);
    assert!(switches.iter().all(|c| c.answer == 0), "{switches:#?}");
}

#[tokio::test]
async fn a_revoked_token_is_fetched_again_once_and_the_call_retried() {
    let app = spawn_app().await;
    let chat = app.chat(GROUP);
    app.ask(&chat, &admin(), "/lock-dm").await;
    app.sim.revoke_tokens();
    let reply = app.ask(&chat, &admin(), "/unlock-dm").await;
    assert_reply(&reply, "✅", "");
    assert_eq!(app.sim.calls(Some(api::GET_TOKEN)).len(), 2);
    let answers: Vec<i64> = app
        .sim
        .calls(Some(api::FRIEND_SWITCH))
        .iter()
        .map(|c| c.answer)
        .collect();
    assert_eq!(answers, vec![0, 40014, 0]);
}

#[tokio::test]
async fn wrong_credentials_fail_the_command_with_a_clear_reason_and_no_retry_storm() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s| s.dingtalk.app_key = "not-the-app".into())),
        ..Options::default()
    })
    .await;
    let reply = app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await;
    assert_reply(&reply, "❌", "");
    assert!(
        reply.content.contains("app_key and app_secret"),
        "{}",
        reply.content
    );
    assert_eq!(app.sim.calls(Some(api::GET_TOKEN)).len(), 1);
    assert!(app.sim.calls(Some(api::FRIEND_SWITCH)).is_empty());
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    // Tokens of 2 s are refreshed at half their life, so a command 1.5 s later fetches anew.
    let app = spawn_app_with(Options {
        sim_config: dingtalk_sim::SimConfig {
            token_ttl_secs: 2,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let chat = app.chat(GROUP);
    app.ask(&chat, &admin(), "/lock-dm").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    app.ask(&chat, &admin(), "/unlock-dm").await;
    assert_eq!(app.sim.calls(Some(api::GET_TOKEN)).len(), 2);
    // No call was refused for an expired token.
    assert!(
        app.sim
            .calls(Some(api::FRIEND_SWITCH))
            .iter()
            .all(|c| c.answer == 0)
    );
}
