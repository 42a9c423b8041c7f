//! The worker under faults: ledger writes that fail, tokens that hang, one group's backlog,
//! and panics. Each test reproduces an attack the hardening audit ran.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dingops::clock::now_ms;
use dingops::domain::{Accepted, Answer, ConversationType, Delivery, Outcome, SessionWebhook};
use dingops::ledger::SqliteLedger;
use dingops::ledger::prelude::*;
use dingtalk_sim::{Fault, RecordedReply, api};

use crate::helpers::*;

/// GET `path` on the app: status and body.
async fn get(app: &TestApp, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("{}{path}", app.address)).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The value of the unlabelled metric `name`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let (_, text) = get(app, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits (up to `secs`) until `metric` satisfies `pred`.
async fn wait_metric(app: &TestApp, name: &str, secs: u64, pred: impl Fn(f64) -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = metric(app, name).await;
        if pred(v) {
            return;
        }
        assert!(Instant::now() < end, "{name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_ledger_write_blocked_by_another_connection_is_retried_until_it_lands_and_the_reply_waits_for_it() {
    let app = spawn_app().await;
    // The DingTalk call takes a while, so the lock below is in place before its answer is
    // recorded.
    app.sim.inject(api::FRIEND_SWITCH, Fault::Delay { ms: 1500 });
    let (status, msg_id) = app.say(&app.chat(GROUP), &admin(), "/lock-dm").await;
    assert_eq!(status, 200);
    // Once the call has met its injected delay, the (slow) call is under way: the ledger's
    // writes before it (the setting's lease, the rate-budget slot) are done.
    assert!(
        eventually(Duration::from_secs(10), || app
            .sim
            .faults_pending(api::FRIEND_SWITCH)
            == 0)
        .await,
        "the call never reached DingTalk"
    );
    let blocker = rusqlite::Connection::open(app.dir.path().join("ledger.db")).unwrap();
    blocker.busy_timeout(Duration::from_secs(10)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    // SQLite gives up on the lock after its busy timeout; dingops tries again.
    wait_metric(&app, "dingops_ledger_write_retries_total", 30, |v| v >= 1.0).await;
    assert_eq!(metric(&app, "dingops_ledger_writes_retrying").await, 1.0);
    let (ready, body) = get(&app, "/readyz").await;
    assert_eq!(ready, 503, "{body}");
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
    assert!(
        app.sim.replies().is_empty(),
        "no reply before the answer is on record"
    );

    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let replies = app.replies(1).await;
    assert_reply(&replies[0], "✅", "Private chat is now forbidden");
    let row = app.finished_row(&msg_id).await;
    assert_eq!(row.result.as_deref(), Some("ok"));
    assert_eq!(row.reply.as_deref(), Some("session"));
    wait_metric(&app, "dingops_ledger_writes_retrying", 10, |v| v == 0.0).await;
    assert_eq!(get(&app, "/readyz").await.0, 200);
    assert_eq!(app.sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
    assert!(app.sim.group(GROUP).unwrap().dm_prohibited);
    assert_eq!(app.sim.replies().len(), 1);
}

/// A command as the ingress would have accepted it, `age_ms` ago, with a live session.
fn old_command(app_sim: &dingtalk_sim::Simulator, msg_id: &str, text: &str, age_ms: u64) -> Accepted {
    let (url, expires_ms) = app_sim.open_session(GROUP, Duration::from_secs(600));
    Accepted {
        msg_id: msg_id.into(),
        received_ms: now_ms() - age_ms,
        conversation_id: GROUP.into(),
        conversation_type: ConversationType::Group,
        conversation_title: Some("Group A".into()),
        sender_staff_id: Some("admin01".into()),
        sender_nick: Some("Ada".into()),
        sender_is_admin: false,
        msgtype: "text".into(),
        text: Some(text.into()),
        session_webhook: SessionWebhook::new(url),
        session_expires_ms: Some(expires_ms),
    }
}

#[tokio::test]
async fn an_older_unanswered_command_is_recorded_superseded_not_run_when_a_newer_one_of_its_group_finished() {
    let sim = new_sim(Default::default());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    {
        // What a lost write leaves: the /lock-dm still open without its answer, the later
        // /unlock-dm of the same group finished.
        let ledger = SqliteLedger::open(
            &dir.path().join("ledger.db"),
            std::sync::Arc::new(dingops::clock::SystemClock),
        )
        .unwrap();
        ledger
            .accept(&old_command(&sim, "m-lock", "/lock-dm", 60_000))
            .unwrap();
        ledger
            .accept(&old_command(&sim, "m-unlock", "/unlock-dm", 50_000))
            .unwrap();
        let done = Answer::new("/unlock-dm", Outcome::Ok, "allowed", "chatid x is_prohibit=false");
        ledger
            .finish("m-unlock", &done, &Delivery::Session, now_ms())
            .unwrap();
    }
    let app = spawn_app_with(Options {
        sim: Some(sim),
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    let row = app.finished_row("m-lock").await;
    assert_eq!(row.result.as_deref(), Some("failed"));
    assert_eq!(
        row.detail.as_deref(),
        Some("superseded: a newer command of this group finished first")
    );
    assert_eq!(row.reply.as_deref(), Some("none-superseded"));
    assert_eq!(row.command.as_deref(), Some("/lock-dm"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.sim.calls(Some(api::FRIEND_SWITCH)).is_empty());
    assert!(!app.sim.group(GROUP).unwrap().dm_prohibited);
    assert!(app.sim.replies().is_empty());
    // The group still works.
    assert_reply(&app.ask(&app.chat(GROUP), &admin(), "/dm-status").await, "ℹ️", "");
}

#[tokio::test]
async fn a_hanging_token_fetch_is_shared_by_all_waiting_commands_and_help_does_not_wait_for_it() {
    let groups: Vec<(String, String)> = (0..8)
        .map(|i| (format!("cidAuditTok{i}xxxxxxxxx=="), format!("chatauditt{i}")))
        .collect();
    let sim = new_sim(Default::default());
    for (cid, chat) in &groups {
        sim.add_group(cid, chat, cid);
    }
    let bound: Vec<(String, String)> = groups.clone();
    let app = Arc::new(
        spawn_app_with(Options {
            sim: Some(sim),
            settings: Some(Box::new(move |s| {
                for (cid, chat) in &bound {
                    s.worker.groups.extend(bindings(&[(cid, chat)]));
                }
                s.dingtalk.upstream_timeout_ms = 1000;
                s.dingtalk.retry_max_attempts = 2;
                s.dingtalk.retry_deadline_ms = 20_000;
                s.worker.command_concurrency = 8;
            })),
            ..Options::default()
        })
        .await,
    );
    // More hangs than any fetch could use: every gettoken call hangs.
    for _ in 0..40 {
        app.sim.inject(api::GET_TOKEN, Fault::Hang);
    }
    let mut sends = Vec::new();
    for (cid, _) in &groups {
        let (app, chat) = (app.clone(), app.chat(cid));
        sends.push(tokio::spawn(async move {
            app.say(&chat, &admin(), "/lock-dm").await.0
        }));
    }
    for s in sends {
        assert_eq!(s.await.unwrap(), 200);
    }
    wait_for_calls(&app.sim, "a gettoken call", |c| {
        c.iter().any(|c| c.api == api::GET_TOKEN)
    })
    .await;
    let (status, _) = app.say(&app.chat(OTHER), &member(), "/help").await;
    assert_eq!(status, 200);

    let replies = app.replies(9).await;
    assert_eq!(replies[0].open_conversation_id, OTHER, "{replies:#?}");
    assert_reply(&replies[0], "ℹ️", "/lock-dm");
    let failures: Vec<&RecordedReply> = replies[1..].iter().collect();
    for r in &failures {
        assert_reply(r, "❌", "did not go through (timeout)");
    }
    // One fetch for all eight: as many gettoken calls as one call's attempts.
    assert_eq!(app.sim.calls(Some(api::GET_TOKEN)).len(), 2);
    // One result for all: the failures arrive together, not one fetch (2 s) apart.
    let first = failures.iter().map(|r| r.at_ms).min().unwrap();
    let last = failures.iter().map(|r| r.at_ms).max().unwrap();
    assert!(last - first < 1500, "failures spread over {} ms", last - first);
    assert!(app.sim.calls(Some(api::FRIEND_SWITCH)).is_empty());
}

#[tokio::test]
async fn a_long_backlog_in_one_group_does_not_hold_up_a_command_of_another_group() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s| {
            s.worker.queue_capacity = 16;
            s.worker.command_concurrency = 8;
        })),
        ..Options::default()
    })
    .await;
    const BACKLOG: usize = 120;
    for _ in 0..BACKLOG {
        app.sim.inject(api::FRIEND_SWITCH, Fault::Delay { ms: 150 });
    }
    let chat = app.chat(GROUP);
    for i in 0..BACKLOG {
        let text = if i % 2 == 0 { "/lock-dm" } else { "/unlock-dm" };
        assert_eq!(app.say(&chat, &admin(), text).await.0, 200);
    }
    let (status, _) = app.say(&app.chat(OTHER), &member(), "/help").await;
    assert_eq!(status, 200);
    let end = Instant::now() + Duration::from_secs(60);
    let backlog_done = loop {
        let replies = app.sim.replies();
        if replies.iter().any(|r| r.open_conversation_id == OTHER) {
            break replies.iter().filter(|r| r.open_conversation_id == GROUP).count();
        }
        assert!(Instant::now() < end, "the other group's /help was never answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Before the fix, /help was not even loaded until all but 15 of the backlog had finished.
    assert!(
        backlog_done < BACKLOG / 3,
        "/help waited for {backlog_done} of the {BACKLOG} backlogged commands"
    );
}

#[tokio::test]
async fn an_absurd_token_lifetime_from_dingtalk_does_not_panic_and_the_group_keeps_answering() {
    let app = spawn_app().await;
    app.sim
        .inject(api::GET_TOKEN, Fault::TokenTtl { expires_in: i64::MAX });
    let chat = app.chat(GROUP);
    assert_reply(
        &app.ask(&chat, &admin(), "/lock-dm").await,
        "✅",
        "Private chat is now forbidden",
    );
    assert_reply(
        &app.ask(&chat, &admin(), "/unlock-dm").await,
        "✅",
        "Private chat is allowed again",
    );
    // The token was cached (with a capped lifetime), not fetched again.
    assert_eq!(app.sim.calls(Some(api::GET_TOKEN)).len(), 1);
    assert_eq!(get(&app, "/readyz").await.0, 200);
}
