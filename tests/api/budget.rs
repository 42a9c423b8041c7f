//! One DingTalk rate budget for every process on a ledger: the send slots are reserved in
//! the ledger, so two processes together stay within what one may send.

use std::sync::Arc;
use std::time::Duration;

use dingops::dingtalk::DingTalk;
use dingops::domain::ChatId;
use dingops::ledger::prelude::*;
use dingops::ledger::{LedgerHandle, SqliteLedger};
use dingops::telemetry::Metrics;
use dingtalk_sim::chat::{new_msg_id, text_message};
use dingtalk_sim::{Simulator, api};

use crate::helpers::*;

/// `n` groups `cid{prefix}NNNN==` / `chat{prefix}NNNN` added to `sim`.
fn add_groups(sim: &Simulator, prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let pair = (format!("cid{prefix}{i:04}=="), format!("chat{prefix}{i:04}"));
            sim.add_group(&pair.0, &pair.1, &pair.0);
            pair
        })
        .collect()
}

/// The pace of the two-process tests (see there).
const PACE: &str = "15";

fn client(sim: &Simulator, ledger: Option<LedgerHandle>, metrics: Arc<Metrics>) -> Arc<DingTalk> {
    let settings = sim_settings(sim).unwrap();
    assert_eq!(settings.dingtalk.api_calls_per_sec, 20);
    Arc::new(match ledger {
        Some(l) => DingTalk::with_budget(
            &settings.dingtalk,
            metrics,
            l,
            std::sync::Arc::new(dingops::clock::SystemClock),
        )
        .unwrap(),
        None => DingTalk::new(
            &settings.dingtalk,
            metrics,
            std::sync::Arc::new(dingops::clock::SystemClock),
        )
        .unwrap(),
    })
}

/// Locks DM in every group of `groups` through `client`, eight calls at a time (as many
/// as `serve` runs group commands at once by default); every call succeeds.
async fn lock_all(client: Arc<DingTalk>, groups: Vec<(String, String)>) {
    use futures_util::StreamExt as _;
    let results: Vec<_> = futures_util::stream::iter(groups)
        .map(|(_, chat)| {
            let client = client.clone();
            async move {
                client
                    .set_friend_switch(&ChatId::parse(&chat).unwrap(), true)
                    .await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in results {
        r.unwrap();
    }
}

#[tokio::test]
async fn two_clients_on_two_connections_to_one_ledger_file_share_one_rate_budget() {
    let sim = new_sim(Default::default());
    let (first, second) = (add_groups(&sim, "first", 60), add_groups(&sim, "second", 60));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    // Two ledgers opened on the same file: two connections, as two processes have.
    let a = client(
        &sim,
        Some(LedgerHandle::new(
            SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap(),
        )),
        Arc::default(),
    );
    let b = client(
        &sim,
        Some(LedgerHandle::new(
            SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap(),
        )),
        Arc::default(),
    );

    let (ra, rb) = tokio::join!(
        tokio::spawn(lock_all(a, first.clone())),
        tokio::spawn(lock_all(b, second.clone()))
    );
    ra.unwrap();
    rb.unwrap();

    let switches = sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(switches.len(), 120, "one call per group, none repeated");
    for (cid, _) in first.iter().chain(&second) {
        assert!(sim.group(cid).unwrap().dm_prohibited, "{cid}");
    }
    // Both called at once: each alone kept within its own limit, so only the shared
    // budget kept the pair within DingTalk's.
    assert_within_budget(&sim);
}

#[tokio::test]
async fn calls_go_on_paced_locally_when_the_ledger_cannot_take_a_reservation() {
    let sim = new_sim(Default::default());
    let groups = add_groups(&sim, "local", 40);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let ledger =
        LedgerHandle::new(SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap());
    // The ledger refuses every write once its file is gone.
    std::fs::remove_file(&db).unwrap();
    let metrics = Arc::new(Metrics::new());
    let dingtalk = client(&sim, Some(ledger), metrics.clone());

    lock_all(dingtalk, groups.clone()).await;

    for (cid, _) in &groups {
        assert!(sim.group(cid).unwrap().dm_prohibited, "{cid}");
    }
    let fallbacks = |api: &str| metrics.budget_fallbacks.with_label_values(&[api]).get();
    let switches = sim.calls(Some(api::FRIEND_SWITCH));
    // One fallback per attempt (a call DingTalk refused for its rate is tried again).
    assert_eq!(fallbacks("friendswitch_update"), switches.len() as u64);
    assert!(switches.len() >= 40);
    assert_eq!(fallbacks("gettoken"), 1);
    // Paced all the same: at 19 per 1.05 s the 40th call goes 2.1 s after the first
    // (unpaced, all 40 take a few ms; the margin is for a first call that arrived late).
    // How exactly local pacing keeps DingTalk's count is faults.rs' burst test.
    let span = switches.last().unwrap().at_ms - switches.first().unwrap().at_ms;
    assert!(span >= 1500, "40 calls in {span} ms: not paced");
}

#[tokio::test]
async fn with_pacing_off_the_shared_budget_is_not_asked() {
    let sim = new_sim(Default::default());
    let groups = add_groups(&sim, "free", 5);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let ledger =
        LedgerHandle::new(SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap());
    std::fs::remove_file(&db).unwrap();
    let mut settings = sim_settings(&sim).unwrap();
    settings.dingtalk.api_calls_per_sec = 0;
    let metrics = Arc::new(Metrics::new());
    let dingtalk = Arc::new(
        DingTalk::with_budget(
            &settings.dingtalk,
            metrics.clone(),
            ledger,
            std::sync::Arc::new(dingops::clock::SystemClock),
        )
        .unwrap(),
    );

    lock_all(dingtalk, groups).await;

    assert_eq!(sim.calls(Some(api::FRIEND_SWITCH)).len(), 5);
    // A reservation against the missing file would have failed and been counted.
    let asked: u64 = ["friendswitch_update", "gettoken"]
        .iter()
        .map(|api| metrics.budget_fallbacks.with_label_values(&[api]).get())
        .sum();
    assert_eq!(asked, 0);
}

/// Runs a real `serve` (pace [`PACE`]) that binds and locks `served`, one `/bind` and one
/// `/lock-dm` per group from an admin, while `dingops <command>` runs as a second process on
/// the same ledger file, with `others` as its static bindings and `env` besides; returns the
/// 80 replies of `serve` and the second process's output.
async fn busy_serve_beside(
    sim: &Simulator,
    served: &[(String, String)],
    dir: &std::path::Path,
    command: &'static str,
    others: &[(String, String)],
    env: Vec<(&'static str, String)>,
) -> (Vec<dingtalk_sim::RecordedReply>, std::process::Output) {
    let db = dir.join("ledger.db");
    let port = free_port();
    // Both processes pace at 15 calls/s per API. Alone, each stays under DingTalk's 20/s;
    // with a budget each, together they would reach 28/s. 15 (not the default 20) leaves
    // room for arrival jitter on a loaded machine, so the tests tell sharing from not
    // sharing rather than measuring the scheduler.
    let mut serve = spawn_binary(sim, port, &db, &[("DINGOPS_API_CALLS_PER_SEC", PACE.to_owned())]);
    wait_healthy(port).await;
    let groups: Vec<String> = others.iter().map(|(cid, chat)| format!("{cid}={chat}")).collect();
    let mut all_env = sim_env(sim);
    all_env.extend([
        ("DINGOPS_ADMINS", "admin01".to_owned()),
        ("DINGOPS_GROUPS", groups.join(",")),
        ("DINGOPS_DATABASE", db.display().to_string()),
        ("DINGOPS_API_CALLS_PER_SEC", PACE.to_owned()),
    ]);
    all_env.extend(env);
    let second = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dingops"))
            .arg(command)
            .env_clear()
            .envs(all_env)
            .output()
            .unwrap()
    });
    let sender = dingtalk_sim::chat::CallbackSender::new(
        &format!("http://127.0.0.1:{port}"),
        sim.config().app_secret.clone().into(),
    );
    for (cid, chat) in served {
        let room = session_chat(sim, cid);
        for text in [format!("/bind {chat}"), "/lock-dm".to_owned()] {
            let body = text_message(&new_msg_id(), &room, &admin(), &text);
            assert_eq!(sender.send(&body).await.unwrap().0, 200);
        }
    }
    let replies = sim.wait_for_replies(80, Duration::from_secs(60)).await;
    let out = second.await.unwrap();
    serve.kill().unwrap();
    serve.wait().unwrap();
    (replies, out)
}

#[tokio::test]
async fn check_beside_a_busy_serve_on_the_same_ledger_keeps_dingtalk_within_one_budget() {
    let sim = new_sim(Default::default());
    // serve binds and locks these groups, one command each after the other per group …
    let served = add_groups(&sim, "served", 40);
    // … while `dingops check` verifies these static bindings, with the same DingTalk API
    // (convertToOpenConversationId) as /bind.
    let checked = add_groups(&sim, "checked", 40);
    let dir = tempfile::tempdir().unwrap();
    let (replies, out) = busy_serve_beside(&sim, &served, dir.path(), "check", &checked, Vec::new()).await;

    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("All checks passed."), "{text}");
    assert_eq!(replies.len(), 80);
    assert!(
        replies.iter().all(|r| r.content.starts_with('✅')),
        "{replies:#?}"
    );
    for (cid, _) in &served {
        assert!(sim.group(cid).unwrap().dm_prohibited, "{cid}");
    }
    let converts = sim.calls(Some(api::CONVERT));
    assert_eq!(
        converts.len(),
        80,
        "one conversion per /bind and per checked binding"
    );
    let times = |chats: &[(String, String)]| -> Vec<u64> {
        converts
            .iter()
            .filter(|c| chats.iter().any(|(_, chat)| c.body == chat.as_str()))
            .map(|c| c.at_ms)
            .collect()
    };
    let (by_serve, by_check) = (times(&served), times(&checked));
    assert_eq!((by_serve.len(), by_check.len()), (40, 40));
    // The two processes called the same API side by side.
    let (first_check, last_check) = (by_check[0], by_check[by_check.len() - 1]);
    assert!(
        by_serve.iter().any(|t| (first_check..=last_check).contains(t)),
        "serve and check did not call DingTalk at the same time"
    );
    let per_window = assert_within_budget(&sim);
    assert!(
        per_window <= 19,
        "{per_window} calls of one API in a 1.05 s window"
    );
}

#[tokio::test]
async fn a_call_whose_shared_slot_lies_beyond_its_deadline_fails_without_calling_dingtalk() {
    let sim = new_sim(Default::default());
    let groups = add_groups(&sim, "late", 1);
    // Other processes have reserved the next two minutes of friendswitch calls.
    let ledger = dingops::ledger::MemoryLedger::with_clock(std::sync::Arc::new(dingops::clock::SystemClock));
    for _ in 0..19 * 115 {
        ledger.reserve_call("friendswitch_update", 19, 1050).unwrap();
    }
    let dingtalk = client(&sim, Some(LedgerHandle::new(ledger)), Arc::default());

    let chat = ChatId::parse(&groups[0].1).unwrap();
    let err = dingtalk.set_friend_switch(&chat, true).await.unwrap_err();

    assert_eq!(err, dingops::dingtalk::ApiError::Timeout);
    assert!(sim.calls(Some(api::FRIEND_SWITCH)).is_empty());
    assert!(!sim.group(&groups[0].0).unwrap().dm_prohibited);
}

#[tokio::test]
async fn apply_beside_a_busy_serve_keeps_the_combined_calls_of_each_api_within_one_budget() {
    let sim = new_sim(Default::default());
    // serve binds and locks these groups on behalf of their admins …
    let served = add_groups(&sim, "served", 40);
    // … while `dingops apply` brings these to a policy: chat/get, group/update and the same
    // friendswitch API that /lock-dm calls.
    let governed = add_groups(&sim, "governed", 40);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\ngroups = [\"*\"]\ndm = \"locked\"\nmute_all = true\n",
    )
    .unwrap();
    let env = vec![("DINGOPS_POLICY", policy.display().to_string())];
    let (replies, out) = busy_serve_beside(&sim, &served, dir.path(), "apply", &governed, env).await;

    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(replies.len(), 80);
    assert!(
        replies.iter().all(|r| r.content.starts_with('✅')),
        "{replies:#?}"
    );
    for (cid, _) in served.iter().chain(&governed) {
        assert!(sim.group(cid).unwrap().dm_prohibited, "{cid}");
    }
    // Both processes called friendswitch, and at the same time.
    let switches = sim.calls(Some(api::FRIEND_SWITCH));
    let times = |chats: &[(String, String)]| -> Vec<u64> {
        switches
            .iter()
            .filter(|c| chats.iter().any(|(_, chat)| c.body["chatid"] == chat.as_str()))
            .map(|c| c.at_ms)
            .collect()
    };
    let (by_serve, by_apply) = (times(&served), times(&governed));
    assert_eq!((by_serve.len(), by_apply.len()), (40, 40));
    let (first, last) = (by_apply[0], by_apply[by_apply.len() - 1]);
    assert!(
        by_serve.iter().any(|t| (first..=last).contains(t)),
        "serve and apply did not call friendswitch at the same time"
    );
    // Zero 90018, and the two processes together never above 19 calls of one API in any
    // 1.05 s window of arrival at DingTalk.
    let per_window = assert_within_budget(&sim);
    assert!(
        per_window <= 19,
        "{per_window} calls of one API in a 1.05 s window"
    );
}
