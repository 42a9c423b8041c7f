//! Several replicas on one ledger: each in this process on its own loopback port, sharing
//! one `SqliteLedger` or `MemoryLedger` the way replicas share one database.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use dingops::clock::now_ms;
use dingops::config::Settings;
use dingops::ledger::{Ledger, MemoryLedger, SqliteLedger};
use dingops::server::{Application, RunOptions};
use dingtalk_sim::chat::{CallbackSender, Chat, Member, new_msg_id, text_message};
use dingtalk_sim::{Fault, SimConfig, Simulator, api};
use secrecy::SecretString;

use crate::helpers::*;

/// One replica: a real `Application` on the shared ledger.
struct Replica {
    sender: CallbackSender,
    handle: ServerHandle,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Replica {
    async fn start(sim: &Simulator, ledger: Arc<dyn Ledger>, tweak: impl FnOnce(&mut Settings)) -> Self {
        init_logs();
        // The database path is not used: the ledger is given.
        let mut settings = settings_for(sim, "unused.db".into());
        tweak(&mut settings);
        let app = Application::build_with_ledger(
            settings,
            TcpListener::bind("127.0.0.1:0").unwrap(),
            RunOptions {
                handle_signals: false,
                http_workers: 1,
            },
            ledger,
        )
        .await
        .expect("the replica starts");
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        Self {
            sender: CallbackSender::new(&address, SecretString::from(sim.config().app_secret.clone())),
            handle,
            running: tokio::spawn(app.run_until_stopped()),
        }
    }

    /// Posts `text` by `who` in `chat` with the msgId `msg_id`; the HTTP status.
    async fn send(&self, chat: &Chat, who: &Member, text: &str, msg_id: &str) -> u16 {
        let body = text_message(msg_id, chat, who, text);
        self.sender.send(&body).await.unwrap().0
    }

    /// Stops the way SIGTERM does.
    async fn stop(self) {
        self.handle.stop(true).await;
        self.running.await.unwrap().unwrap();
    }

    /// Stops at once, as `kill -9` would: whatever runs is cut off and its leases are not
    /// given back.
    async fn kill(self) {
        self.running.abort();
        let _ = self.running.await;
        self.handle.stop(false).await;
    }
}

/// A simulator without DingTalk's rate limit, knowing `n` groups; their (cid, chatid).
fn sim_with_groups(n: usize) -> (Arc<Simulator>, Vec<(String, String)>) {
    let sim = new_sim(SimConfig {
        rate_limit_per_sec: 0,
        ..SimConfig::default()
    });
    let groups: Vec<(String, String)> = (0..n)
        .map(|i| (format!("cidReplica{i:04}=="), format!("chatreplica{i:04}")))
        .collect();
    for (cid, chat) in &groups {
        sim.add_group(cid, chat, cid);
    }
    (sim, groups)
}

/// Test settings for a replica: `groups` bound, no pacing (the simulator has no limit),
/// leases of `lease_secs`.
fn replica_settings(groups: &[(String, String)], lease_secs: u64) -> impl FnOnce(&mut Settings) + use<> {
    let pairs: Vec<(String, String)> = groups.to_vec();
    move |s: &mut Settings| {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        s.worker.groups = bindings(&refs);
        s.dingtalk.api_calls_per_sec = 0;
        s.worker.claim_lease = Duration::from_secs(lease_secs);
    }
}

/// Waits until the simulator recorded `n` replies, then a little longer to see that no
/// more come; returns them.
async fn exactly_replies(sim: &Simulator, n: usize, within: Duration) -> Vec<dingtalk_sim::RecordedReply> {
    let got = sim.wait_for_replies(n, within).await;
    assert!(got.len() >= n, "expected {n} replies, got {}", got.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sim.replies();
    assert_eq!(got.len(), n, "more replies than commands");
    got
}

/// DM switch calls per chatid, successful ones only.
fn switch_calls_by_chat(sim: &Simulator) -> BTreeMap<String, Vec<bool>> {
    let mut by_chat: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for call in sim.calls(Some(api::FRIEND_SWITCH)) {
        if call.answer != 0 {
            continue;
        }
        by_chat
            .entry(call.body["chatid"].as_str().unwrap().to_owned())
            .or_default()
            .push(call.body["is_prohibit"].as_bool().unwrap());
    }
    by_chat
}

/// 1 000 commands over 50 groups sent round robin to the replicas, one in seven also to
/// the next replica (DingTalk retrying at another address): each runs once and is
/// answered once.
async fn thousand_commands_over(replicas: usize, ledger: Arc<dyn Ledger>) {
    const GROUPS: usize = 50;
    const COMMANDS: usize = 1000;
    let (sim, groups) = sim_with_groups(GROUPS);
    let mut fleet = Vec::new();
    for _ in 0..replicas {
        fleet.push(Replica::start(&sim, ledger.clone(), replica_settings(&groups, 30)).await);
    }
    let fleet = Arc::new(fleet);
    let chats: Arc<Vec<Chat>> = Arc::new(groups.iter().map(|(cid, _)| session_chat(&sim, cid)).collect());
    // Four senders at once, each its share of the commands in order.
    let mut senders = tokio::task::JoinSet::new();
    for lane in 0..4 {
        let (fleet, chats) = (fleet.clone(), chats.clone());
        senders.spawn(async move {
            for i in (lane..COMMANDS).step_by(4) {
                let text = if (i / GROUPS).is_multiple_of(2) {
                    "/lock-dm"
                } else {
                    "/unlock-dm"
                };
                let msg_id = new_msg_id();
                let chat = &chats[i % GROUPS];
                let first = &fleet[i % fleet.len()];
                assert_eq!(first.send(chat, &admin(), text, &msg_id).await, 200);
                if i % 7 == 0 {
                    let again = &fleet[(i + 1) % fleet.len()];
                    assert_eq!(again.send(chat, &admin(), text, &msg_id).await, 200);
                }
            }
        });
    }
    while let Some(r) = senders.join_next().await {
        r.unwrap();
    }
    let replies = exactly_replies(&sim, COMMANDS, Duration::from_secs(60)).await;
    assert!(
        replies.iter().all(|r| r.content.starts_with('✅')),
        "{:?}",
        replies.iter().find(|r| !r.content.starts_with('✅'))
    );
    let calls = switch_calls_by_chat(&sim);
    assert_eq!(calls.len(), GROUPS);
    for (chat, sets) in &calls {
        assert_eq!(sets.len(), COMMANDS / GROUPS, "DM switch calls for {chat}");
    }
    let rows = ledger.history(None, None, 10 * COMMANDS).unwrap();
    assert_eq!(rows.len(), COMMANDS);
    assert!(
        rows.iter()
            .all(|r| r.status == "done" && r.result.as_deref() == Some("ok"))
    );
    assert_eq!(ledger.open_count().unwrap(), 0);
    let fleet = Arc::into_inner(fleet).unwrap();
    for r in fleet {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_commands_spread_over_two_replicas_on_sqlite_each_run_once_and_are_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(&dir.path().join("shared.db")).unwrap());
    thousand_commands_over(2, ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_commands_spread_over_three_replicas_each_run_once_and_are_answered_once() {
    thousand_commands_over(3, Arc::new(MemoryLedger::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_groups_commands_sent_alternately_to_two_replicas_reach_dingtalk_in_the_order_accepted() {
    let (sim, groups) = sim_with_groups(1);
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let a = Replica::start(&sim, ledger.clone(), replica_settings(&groups, 30)).await;
    let b = Replica::start(&sim, ledger.clone(), replica_settings(&groups, 30)).await;
    let chat = session_chat(&sim, &groups[0].0);
    let mut sent = Vec::new();
    for i in 0..24 {
        // Some calls are slow, so a command run out of turn would overtake its predecessor.
        if i % 3 == 0 {
            sim.inject(api::FRIEND_SWITCH, Fault::Delay { ms: 150 });
        }
        let lock = i % 2 == 0 || i % 5 == 0;
        let text = if lock { "/lock-dm" } else { "/unlock-dm" };
        let replica = if i % 2 == 0 { &a } else { &b };
        assert_eq!(replica.send(&chat, &admin(), text, &new_msg_id()).await, 200);
        sent.push(lock);
    }
    exactly_replies(&sim, sent.len(), Duration::from_secs(30)).await;
    let calls = switch_calls_by_chat(&sim);
    assert_eq!(
        calls[&groups[0].1], sent,
        "DingTalk saw the group's commands out of order"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_of_a_replica_killed_mid_call_is_finished_by_another_after_the_lease_and_answered_once() {
    const LEASE_SECS: u64 = 2;
    let (sim, groups) = sim_with_groups(1);
    let dir = tempfile::tempdir().unwrap();
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(&dir.path().join("shared.db")).unwrap());
    let a = Replica::start(&sim, ledger.clone(), replica_settings(&groups, LEASE_SECS)).await;
    let chat = session_chat(&sim, &groups[0].0);
    // A's call to DingTalk hangs long enough to be cut off by the kill.
    sim.inject(api::FRIEND_SWITCH, Fault::Delay { ms: 1500 });
    let msg_id = new_msg_id();
    assert_eq!(a.send(&chat, &admin(), "/lock-dm", &msg_id).await, 200);
    // A fetched a token for the call: it is in the command.
    assert!(
        eventually(Duration::from_secs(10), || !sim
            .calls(Some(api::GET_TOKEN))
            .is_empty())
        .await,
        "A never started the command"
    );
    // B starts, finds the command open, and leaves it to A, which holds the group.
    let b = Replica::start(&sim, ledger.clone(), replica_settings(&groups, LEASE_SECS)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sim.replies().is_empty());
    let killed_ms = now_ms();
    a.kill().await;

    let replies = exactly_replies(&sim, 1, Duration::from_secs(20)).await;
    assert_reply(&replies[0], "✅", "");
    let row = ledger
        .history(None, None, 10)
        .unwrap()
        .into_iter()
        .find(|r| r.msg_id == msg_id)
        .unwrap();
    assert_eq!((row.status.as_str(), row.result.as_deref()), ("done", Some("ok")));
    // B waited for A's lease to run out (A renewed it at most a third of a lease before
    // it was killed).
    let finished = row.finished_ms.unwrap();
    assert!(
        finished >= killed_ms + LEASE_SECS * 1000 * 2 / 3 - 100,
        "taken over {} ms after the kill, before A's lease ran out",
        finished - killed_ms
    );
    assert!(sim.group(&groups[0].0).unwrap().dm_prohibited);
    assert_eq!(ledger.open_count().unwrap(), 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stopped_gracefully_gives_its_groups_to_the_others_at_once() {
    // A lease far longer than the test: only the release lets B run the group.
    let (sim, groups) = sim_with_groups(1);
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let a = Replica::start(&sim, ledger.clone(), replica_settings(&groups, 600)).await;
    let b = Replica::start(&sim, ledger.clone(), replica_settings(&groups, 600)).await;
    let chat = session_chat(&sim, &groups[0].0);
    assert_eq!(a.send(&chat, &admin(), "/lock-dm", &new_msg_id()).await, 200);
    exactly_replies(&sim, 1, Duration::from_secs(10)).await;
    a.stop().await;
    assert_eq!(b.send(&chat, &admin(), "/unlock-dm", &new_msg_id()).await, 200);
    exactly_replies(&sim, 2, Duration::from_secs(10)).await;
    assert!(!sim.group(&groups[0].0).unwrap().dm_prohibited);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_revert_due_while_replicas_start_and_stop_runs_once() {
    let (sim, groups) = sim_with_groups(1);
    let (cid, chatid) = groups[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(&dir.path().join("shared.db")).unwrap());
    let settings = |s: &mut Settings| {
        replica_settings(&groups, 2)(s);
        s.worker.revert_minute = Duration::from_millis(3000);
    };
    let a = Replica::start(&sim, ledger.clone(), settings).await;
    let chat = session_chat(&sim, &cid);
    assert_eq!(a.send(&chat, &admin(), "/lock-dm 1m", &new_msg_id()).await, 200);
    exactly_replies(&sim, 1, Duration::from_secs(10)).await;
    let scheduled = Instant::now();
    // Two more replicas start, A stops before the revert is due; then the revert is due
    // on both survivors, and one of them dies and another starts.
    let b = Replica::start(&sim, ledger.clone(), settings).await;
    let c = Replica::start(&sim, ledger.clone(), settings).await;
    a.stop().await;
    let reverted = eventually(Duration::from_secs(15), || {
        sim.replies().iter().any(|r| r.via == "group-message")
    })
    .await;
    assert!(reverted, "the revert did not run");
    assert!(
        scheduled.elapsed() >= Duration::from_millis(2500),
        "it ran before it was due"
    );
    c.kill().await;
    let d = Replica::start(&sim, ledger.clone(), settings).await;
    // Long enough for any second run: leases of 2 s, timer ticks of 1 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let group_messages = sim
        .replies()
        .into_iter()
        .filter(|r| r.via == "group-message")
        .count();
    assert_eq!(group_messages, 1);
    assert_eq!(switch_calls_by_chat(&sim)[&chatid], [true, false]);
    let timer_rows = ledger
        .history(Some(&cid), None, 100)
        .unwrap()
        .into_iter()
        .filter(|r| r.sender_nick.as_deref() == Some("dingops (timer)"))
        .count();
    assert_eq!(timer_rows, 1);
    assert!(ledger.pending_reverts(None).unwrap().is_empty());
    b.stop().await;
    d.stop().await;
}
