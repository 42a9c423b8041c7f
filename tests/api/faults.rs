//! The fault matrix: each DingTalk failure mode, with the exact number of DingTalk calls
//! and replies the simulator saw. docs/reliability.md's fault matrix lists these rows.

use std::sync::Arc;
use std::time::Duration;

use dingtalk_sim::chat::{Chat, new_msg_id, text_message};
use dingtalk_sim::{Fault, RecordedReply, Simulator, api};
use serde_json::json;

use crate::helpers::*;

/// friendswitch answers the simulator gave, in order.
fn switch_answers(app: &TestApp) -> Vec<i64> {
    app.sim
        .calls(Some(api::FRIEND_SWITCH))
        .iter()
        .map(|c| c.answer)
        .collect()
}

async fn lock_with_faults(app: &TestApp, faults: &[Fault]) -> RecordedReply {
    for f in faults {
        app.sim.inject(api::FRIEND_SWITCH, f.clone());
    }
    app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await
}

fn assert_done(reply: &RecordedReply) {
    assert_reply(reply, "✅", "");
}

#[tokio::test]
async fn system_error_400001_twice_then_success_retries_and_replies_once() {
    let app = spawn_app().await;
    let e = Fault::Errcode { errcode: 400001 };
    let reply = lock_with_faults(&app, &[e.clone(), e]).await;
    assert_done(&reply);
    assert_eq!(switch_answers(&app), vec![400001, 400001, 0]);
    assert!(app.sim.group(GROUP).unwrap().dm_prohibited);
}

#[tokio::test]
async fn system_busy_minus_one_is_retried() {
    let app = spawn_app().await;
    assert_done(&lock_with_faults(&app, &[Fault::Errcode { errcode: -1 }]).await);
    assert_eq!(switch_answers(&app), vec![-1, 0]);
}

#[tokio::test]
async fn http_502_is_retried() {
    let app = spawn_app().await;
    assert_done(&lock_with_faults(&app, &[Fault::Http { status: 502 }]).await);
    assert_eq!(switch_answers(&app), vec![502, 0]);
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let app = spawn_app().await;
    assert_done(&lock_with_faults(&app, &[Fault::Drop]).await);
    assert_eq!(switch_answers(&app), vec![-2, 0]);
}

#[tokio::test]
async fn a_hang_longer_than_the_timeout_is_abandoned_and_retried() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s| s.dingtalk.upstream_timeout_ms = 300)),
        ..Options::default()
    })
    .await;
    assert_done(&lock_with_faults(&app, &[Fault::Hang]).await);
    assert_eq!(switch_answers(&app), vec![-3, 0]);
}

#[tokio::test]
async fn a_rejected_token_40014_is_fetched_again_once_and_the_call_retried_once() {
    let app = spawn_app().await;
    assert_done(&lock_with_faults(&app, &[Fault::Errcode { errcode: 40014 }]).await);
    assert_eq!(switch_answers(&app), vec![40014, 0]);
    assert_eq!(app.sim.calls(Some(api::GET_TOKEN)).len(), 2);
}

#[tokio::test]
async fn a_token_rejected_twice_fails_instead_of_looping() {
    let app = spawn_app().await;
    let e = Fault::Errcode { errcode: 42001 };
    let reply = lock_with_faults(&app, &[e.clone(), e]).await;
    assert_reply(&reply, "❌", "");
    assert_eq!(switch_answers(&app), vec![42001, 42001]);
    assert_eq!(app.sim.calls(Some(api::GET_TOKEN)).len(), 2);
}

#[tokio::test]
async fn rate_limit_90018_backs_off_at_least_a_second_then_succeeds() {
    let app = spawn_app().await;
    assert_done(&lock_with_faults(&app, &[Fault::Errcode { errcode: 90018 }]).await);
    let calls = app.sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(calls.iter().map(|c| c.answer).collect::<Vec<_>>(), vec![90018, 0]);
    assert!(calls[1].at_ms - calls[0].at_ms >= 1000, "{calls:#?}");
}

#[tokio::test]
async fn transient_failures_that_never_end_give_one_failure_reply_after_the_attempts() {
    let app = spawn_app().await;
    let e = Fault::Errcode { errcode: 400001 };
    let reply = lock_with_faults(&app, &[e.clone(), e.clone(), e.clone(), e]).await;
    assert_reply(&reply, "❌", "");
    assert!(
        reply.content.contains("400001") && reply.content.contains("try again"),
        "{}",
        reply.content
    );
    assert_eq!(switch_answers(&app), vec![400001; 4]);
}

#[tokio::test]
async fn a_hanging_dingtalk_does_not_hold_up_the_callback_route_or_other_commands() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s| s.dingtalk.upstream_timeout_ms = 3000)),
        ..Options::default()
    })
    .await;
    app.sim.inject(api::FRIEND_SWITCH, Fault::Hang);
    let (status, _) = app.say(&app.chat(GROUP), &admin(), "/lock-dm").await;
    assert_eq!(status, 200);
    wait_for_calls(&app.sim, "the hung call", |c| c.iter().any(|c| c.answer == -3)).await;
    // While the lock waits on DingTalk, another group is served.
    let other = app.ask(&app.chat(OTHER), &member(), "/help").await;
    assert_eq!(other.open_conversation_id, OTHER);
    assert!(app.sim.group(GROUP).is_some_and(|g| !g.dm_prohibited));
    // And the lock still completes after its retry.
    let replies = app.replies(2).await;
    assert!(replies[1].content.starts_with("✅"), "{replies:#?}");
}

#[tokio::test]
async fn a_burst_of_200_locks_across_200_groups_never_trips_the_rate_limit() {
    let groups: Vec<(String, String)> = (0..200)
        .map(|i| (format!("cidBurst{i:04}=="), format!("chatburst{i:04}")))
        .collect();
    let sim = new_sim(Default::default());
    for (cid, chat) in &groups {
        sim.add_group(cid, chat, cid);
    }
    let pairs: Vec<(&str, &str)> = groups.iter().map(|(c, h)| (c.as_str(), h.as_str())).collect();
    let bound = bindings(&pairs);
    let app = Arc::new(
        spawn_app_with(Options {
            sim: Some(sim),
            settings: Some(Box::new(move |s| {
                s.worker.groups = bound;
                // The test counts calls exactly: on a machine loaded by the other tests, the
                // short test timeout could expire on a slow answer and add a (correct) retry.
                s.dingtalk.upstream_timeout_ms = 10_000;
            })),
            ..Options::default()
        })
        .await,
    );
    let chats: Vec<Chat> = groups.iter().map(|(cid, _)| app.chat(cid)).collect();
    let mut tasks = Vec::new();
    for chat in chats {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.say(&chat, &admin(), "/lock-dm").await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let replies = app.sim.wait_for_replies(200, Duration::from_secs(60)).await;
    assert_eq!(replies.len(), 200);
    assert!(replies.iter().all(|r| r.content.starts_with("✅")));

    let calls = app.sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(calls.len(), 200);
    assert!(calls.iter().all(|c| c.answer == 0), "a call was refused");
    assert!(app.sim.calls(None).iter().all(|c| c.answer != 90018));
    for (cid, _) in &groups {
        assert!(app.sim.group(cid).unwrap().dm_prohibited, "{cid}");
    }
    assert_eq!(app.sim.calls(Some(api::GET_TOKEN)).len(), 1);

    let first = calls.first().unwrap().at_ms;
    let last = calls.last().unwrap().at_ms;
    let peak = app.sim.peak_calls_per_second(api::FRIEND_SWITCH);
    eprintln!(
        "burst: 200 friendswitch calls in {} ms, {:.1} calls/s on average, at most {peak} in any second",
        last - first,
        199_000.0 / (last - first) as f64
    );
    assert!(peak <= 20, "{peak} calls in one second");
}

/// Runs the real binary, makes `hang_api` hang, sends `/lock-dm`, waits until the hang is
/// reached and kills the process with SIGKILL; then restarts it on the same ledger and
/// returns the replies the simulator received within a few seconds.
async fn kill_during_hang_then_restart(sim: &Simulator, hang_api: &str) -> Vec<RecordedReply> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let port = free_port();
    let mut first = spawn_binary(sim, port, &db, &[]);
    wait_healthy(port).await;
    sim.inject(hang_api, Fault::Hang);
    let sender = dingtalk_sim::chat::CallbackSender::new(
        &format!("http://127.0.0.1:{port}"),
        sim.config().app_secret.clone().into(),
    );
    let body = text_message(&new_msg_id(), &session_chat(sim, GROUP), &admin(), "/lock-dm");
    assert_eq!(sender.send(&body).await.unwrap().0, 200);
    wait_for_calls(sim, "the hang", |c| {
        c.iter().any(|c| c.api == hang_api && c.answer == -3)
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(sim.replies().is_empty());

    let mut second = spawn_binary(sim, port, &db, &[]);
    wait_healthy(port).await;
    sim.wait_for_replies(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    sim.replies()
}

#[tokio::test]
async fn a_command_killed_after_the_dingtalk_call_is_resumed_with_only_its_reply() {
    let sim = new_sim(Default::default());
    let replies = kill_during_hang_then_restart(&sim, api::SEND_BY_SESSION).await;
    assert_eq!(replies.len(), 1);
    assert_reply(&replies[0], "✅", "");
    let calls = sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(calls.len(), 1, "DingTalk was called again");
    assert_eq!(
        calls[0].body,
        json!({"chatid": GROUP_CHATID, "is_prohibit": true})
    );
}

#[tokio::test]
async fn a_command_killed_before_the_dingtalk_call_completed_is_run_after_the_restart() {
    let sim = new_sim(Default::default());
    let replies = kill_during_hang_then_restart(&sim, api::FRIEND_SWITCH).await;
    assert_eq!(replies.len(), 1);
    assert_reply(&replies[0], "✅", "");
    // The hung call never answered; exactly one answered call did the change.
    let answers: Vec<i64> = sim
        .calls(Some(api::FRIEND_SWITCH))
        .iter()
        .map(|c| c.answer)
        .collect();
    assert_eq!(answers, vec![-3, 0]);
    assert!(sim.group(GROUP).unwrap().dm_prohibited);
}

#[tokio::test]
async fn a_backlog_larger_than_memory_waits_in_the_ledger_and_each_group_runs_in_order() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s| {
            s.worker.queue_capacity = 2;
            s.worker.command_concurrency = 2;
        })),
        ..Options::default()
    })
    .await;
    for _ in 0..5 {
        app.sim.inject(api::FRIEND_SWITCH, Fault::Delay { ms: 30 });
    }
    let (group, other) = (app.chat(GROUP), app.chat(OTHER));
    for i in 0..30 {
        let text = if i % 2 == 0 { "/lock-dm" } else { "/unlock-dm" };
        assert_eq!(app.say(&group, &admin(), text).await.0, 200);
        assert_eq!(app.say(&other, &member(), "/help").await.0, 200);
    }
    let replies = app.sim.wait_for_replies(60, Duration::from_secs(30)).await;
    assert_eq!(replies.len(), 60);
    let order: Vec<bool> = app
        .sim
        .calls(Some(api::FRIEND_SWITCH))
        .iter()
        .map(|c| c.body["is_prohibit"].as_bool().unwrap())
        .collect();
    let expected: Vec<bool> = (0..30).map(|i| i % 2 == 0).collect();
    assert_eq!(order, expected, "DingTalk saw the group's commands out of order");
    assert!(
        !app.sim.group(GROUP).unwrap().dm_prohibited,
        "the last command was /unlock-dm"
    );
}

fn stale_command(id: &str, received_ms: u64, expires_ms: u64, webhook: String) -> dingops::domain::Accepted {
    dingops::domain::Accepted {
        msg_id: id.into(),
        received_ms,
        conversation_id: GROUP.into(),
        conversation_type: dingops::domain::ConversationType::Group,
        conversation_title: None,
        sender_staff_id: Some("admin01".into()),
        sender_nick: Some("Ada".into()),
        sender_is_admin: false,
        msgtype: "text".into(),
        text: Some("/lock-dm".into()),
        session_webhook: dingops::domain::SessionWebhook::new(webhook),
        session_expires_ms: Some(expires_ms),
    }
}

#[tokio::test]
async fn at_start_a_command_whose_session_expired_meanwhile_is_recorded_and_not_run() {
    use dingops::ledger::prelude::*;
    let sim = new_sim(Default::default());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let now = dingops::clock::now_ms();
    let (live_url, live_exp) = sim.open_session(GROUP, Duration::from_secs(600));
    {
        let ledger = dingops::ledger::SqliteLedger::open(
            &dir.path().join("ledger.db"),
            std::sync::Arc::new(dingops::clock::SystemClock),
        )
        .unwrap();
        let dead = format!("{}/robot/sendBySession?session=gone", sim.url());
        ledger
            .accept(&stale_command(
                "old-expired",
                now - 7_200_000,
                now - 1_800_000,
                dead,
            ))
            .unwrap();
        ledger
            .accept(&stale_command("old-live", now - 60_000, live_exp, live_url))
            .unwrap();
    }
    let app = spawn_app_with(Options {
        sim: Some(sim),
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    let expired = app.finished_row("old-expired").await;
    assert_eq!(expired.reply.as_deref(), Some("none-expired"));
    assert_eq!(expired.result.as_deref(), Some("failed"));
    let live = app.finished_row("old-live").await;
    assert_eq!(live.result.as_deref(), Some("ok"));
    assert_eq!(live.reply.as_deref(), Some("session"));
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
    assert_eq!(app.replies(1).await.len(), 1);
}
