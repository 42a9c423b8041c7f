//! Several replicas on one ledger: each in this process on its own loopback port, either
//! sharing one `SqliteLedger` or `MemoryLedger` the way replicas share one database, or each
//! with a `PostgresLedger` of its own (its own pool) on one schema of the test PostgreSQL
//! server, as real replicas are.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{SchemaDatabase as _, TestSchema};
use actix_web::dev::ServerHandle;
use dingops::clock::now_ms;
use dingops::config::{Mode, Settings};
use dingops::ledger::{Ledger, MemoryLedger, SqliteLedger};
use dingops::server::{Application, RunOptions};
use dingtalk_sim::chat::{CallbackSender, Chat, Member, new_msg_id, text_message};
use dingtalk_sim::{Fault, SimConfig, Simulator, api};
use secrecy::SecretString;

use crate::helpers::*;

/// Where the replicas of a test keep their ledger.
#[derive(Clone)]
enum Store {
    /// One ledger object that every replica is given.
    Shared(Arc<dyn Ledger>),
    /// A schema on the test PostgreSQL server that each replica connects to on its own.
    Postgres(Arc<TestSchema>),
}

impl Store {
    fn memory() -> Self {
        Self::Shared(Arc::new(MemoryLedger::with_clock(std::sync::Arc::new(
            dingops::clock::SystemClock,
        ))))
    }

    /// A SQLite file in `dir`, opened once and shared.
    fn sqlite(dir: &tempfile::TempDir) -> Self {
        Self::Shared(Arc::new(
            SqliteLedger::open(
                &dir.path().join("shared.db"),
                std::sync::Arc::new(dingops::clock::SystemClock),
            )
            .unwrap(),
        ))
    }

    /// A schema on the test server, or `None` when the test is skipped (no server named).
    fn postgres() -> Option<Self> {
        TestSchema::or_skip().map(|schema| Self::Postgres(Arc::new(schema)))
    }

    /// The ledger for one more replica (or for the test to look into): the shared one, or a
    /// new connection pool on the schema.
    async fn ledger(&self) -> Arc<dyn Ledger> {
        match self {
            Self::Shared(ledger) => ledger.clone(),
            Self::Postgres(schema) => {
                let database = schema.database();
                tokio::task::spawn_blocking(move || {
                    dingops::ledger::open_blocking(
                        &database,
                        std::sync::Arc::new(dingops::clock::SystemClock),
                    )
                    .unwrap()
                })
                .await
                .unwrap()
            }
        }
    }
}

/// One replica: a real `Application` on its ledger.
struct Replica {
    sender: CallbackSender,
    handle: ServerHandle,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Replica {
    /// Starts on `store`'s ledger; once started, a replica with a Stream ingress is
    /// connected to the simulator's gateway.
    async fn start(sim: &Simulator, store: &Store, tweak: impl FnOnce(&mut Settings)) -> Self {
        init_logs();
        // The database path is not used: the ledger is given.
        let mut settings = settings_for(sim, "unused.db".into());
        tweak(&mut settings);
        let streams = if settings.stream.mode.stream() {
            settings.stream.connections
        } else {
            0
        };
        let connected_before = sim.stream().connections().len();
        let ledger = store.ledger().await;
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
        let replica = Self {
            sender: CallbackSender::new(&address, SecretString::from(sim.config().app_secret.clone())),
            handle,
            running: tokio::spawn(app.run_until_stopped()),
        };
        if streams > 0 {
            let want = connected_before + streams;
            let live = sim
                .stream()
                .wait_for_connections(want, Duration::from_secs(10))
                .await;
            assert_eq!(live.len(), want, "the replica did not connect its Stream");
        }
        replica
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
/// `msg_id` finished `ok`, and no earlier than its killed holder's lease could have run out
/// (the holder renewed it at most a third of a lease before it was killed at `killed_ms`).
#[track_caller]
fn assert_finished_after_the_lease(ledger: &dyn Ledger, msg_id: &str, killed_ms: u64, lease_secs: u64) {
    let row = ledger
        .history(None, None, 100)
        .unwrap()
        .into_iter()
        .find(|r| r.msg_id == msg_id)
        .unwrap();
    assert_eq!((row.status.as_str(), row.result.as_deref()), ("done", Some("ok")));
    let finished = row.finished_ms.unwrap();
    assert!(
        finished >= killed_ms + lease_secs * 1000 * 2 / 3 - 100,
        "taken over {} ms after the kill, before the lease ran out",
        finished - killed_ms
    );
}

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

/// 1 000 commands over 50 groups sent round robin to the replicas, one in five of them
/// through the Stream gateway to the first replica (which serves both ingresses), and one in
/// seven also to the next replica over HTTP (DingTalk retrying elsewhere, or the same message
/// on both ingresses): each runs once and is answered once.
async fn thousand_commands_over(replicas: usize, store: Store) {
    const GROUPS: usize = 50;
    const COMMANDS: usize = 1000;
    let (sim, groups) = sim_with_groups(GROUPS);
    let mut fleet = Vec::new();
    for n in 0..replicas {
        let settings = replica_settings(&groups, 30);
        fleet.push(
            Replica::start(&sim, &store, move |s: &mut Settings| {
                settings(s);
                if n == 0 {
                    s.stream.mode = Mode::Both;
                    s.stream.connections = 1;
                }
            })
            .await,
        );
    }
    let fleet = Arc::new(fleet);
    let chats: Arc<Vec<Chat>> = Arc::new(groups.iter().map(|(cid, _)| session_chat(&sim, cid)).collect());
    // Four senders at once, each its share of the commands in order; the Stream frames
    // each sender pushed.
    let mut senders = tokio::task::JoinSet::new();
    for lane in 0..4 {
        let (fleet, chats, sim) = (fleet.clone(), chats.clone(), sim.clone());
        senders.spawn(async move {
            let mut frames = Vec::new();
            for i in (lane..COMMANDS).step_by(4) {
                let text = if (i / GROUPS).is_multiple_of(2) {
                    "/lock-dm"
                } else {
                    "/unlock-dm"
                };
                let msg_id = new_msg_id();
                let chat = &chats[i % GROUPS];
                if i % 5 == 2 {
                    let body = text_message(&msg_id, chat, &admin(), text);
                    frames.push(sim.stream().push_callback(&body));
                    // Frames are acknowledged once the command is in the ledger; waiting for
                    // the ACK keeps the group's commands in the order sent.
                    assert_eq!(ack_of(&sim, frames.last().unwrap()).await.code, 200);
                } else {
                    let first = &fleet[i % fleet.len()];
                    assert_eq!(first.send(chat, &admin(), text, &msg_id).await, 200);
                }
                if i % 7 == 0 {
                    let again = &fleet[(i + 1) % fleet.len()];
                    assert_eq!(again.send(chat, &admin(), text, &msg_id).await, 200);
                }
            }
            frames
        });
    }
    let mut frames = Vec::new();
    while let Some(r) = senders.join_next().await {
        frames.extend(r.unwrap());
    }
    assert_eq!(frames.len(), COMMANDS / 5);
    let replies = exactly_replies(&sim, COMMANDS, Duration::from_secs(90)).await;
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
    let ledger = store.ledger().await;
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
    thousand_commands_over(2, Store::sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_commands_spread_over_three_replicas_each_run_once_and_are_answered_once() {
    thousand_commands_over(3, Store::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_commands_spread_over_two_replicas_on_postgres_and_both_ingresses_each_run_once_and_are_answered_once()
 {
    let Some(store) = Store::postgres() else { return };
    thousand_commands_over(2, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_commands_spread_over_three_replicas_on_postgres_and_both_ingresses_each_run_once_and_are_answered_once()
 {
    let Some(store) = Store::postgres() else { return };
    thousand_commands_over(3, store).await;
}

/// 24 commands of one group sent alternately to two replicas, some of their DingTalk calls
/// slow: DingTalk sees them in the order they were accepted.
async fn one_groups_commands_alternating_between_two_replicas(store: Store) {
    let (sim, groups) = sim_with_groups(1);
    let a = Replica::start(&sim, &store, replica_settings(&groups, 30)).await;
    let b = Replica::start(&sim, &store, replica_settings(&groups, 30)).await;
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
async fn a_groups_commands_sent_alternately_to_two_replicas_reach_dingtalk_in_the_order_accepted() {
    one_groups_commands_alternating_between_two_replicas(Store::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_groups_commands_sent_alternately_to_two_replicas_on_postgres_reach_dingtalk_in_the_order_accepted()
{
    let Some(store) = Store::postgres() else { return };
    one_groups_commands_alternating_between_two_replicas(store).await;
}

/// The replica running a slow command is killed mid-call; a replica started meanwhile
/// finishes the command once the killed one's lease ran out, and it is answered once.
async fn a_killed_replicas_command_is_taken_over(store: Store) {
    const LEASE_SECS: u64 = 2;
    let (sim, groups) = sim_with_groups(1);
    let a = Replica::start(&sim, &store, replica_settings(&groups, LEASE_SECS)).await;
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
    let b = Replica::start(&sim, &store, replica_settings(&groups, LEASE_SECS)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sim.replies().is_empty());
    let killed_ms = now_ms();
    a.kill().await;

    let replies = exactly_replies(&sim, 1, Duration::from_secs(20)).await;
    assert_reply(&replies[0], "✅", "");
    let ledger = store.ledger().await;
    // B waited for A's lease to run out.
    assert_finished_after_the_lease(ledger.as_ref(), &msg_id, killed_ms, LEASE_SECS);
    assert!(sim.group(&groups[0].0).unwrap().dm_prohibited);
    assert_eq!(ledger.open_count().unwrap(), 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_of_a_replica_killed_mid_call_is_finished_by_another_after_the_lease_and_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    a_killed_replicas_command_is_taken_over(Store::sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_of_a_replica_on_postgres_killed_mid_call_is_finished_by_another_after_the_lease_and_answered_once()
 {
    let Some(store) = Store::postgres() else { return };
    a_killed_replicas_command_is_taken_over(store).await;
}

/// A replica stopping gracefully releases its groups: another runs the next command at
/// once, not after the lease.
async fn a_stopped_replicas_groups_go_to_the_others_at_once(store: Store) {
    // A lease far longer than the test: only the release lets B run the group.
    let (sim, groups) = sim_with_groups(1);
    let a = Replica::start(&sim, &store, replica_settings(&groups, 600)).await;
    let b = Replica::start(&sim, &store, replica_settings(&groups, 600)).await;
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
async fn a_replica_stopped_gracefully_gives_its_groups_to_the_others_at_once() {
    a_stopped_replicas_groups_go_to_the_others_at_once(Store::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_on_postgres_stopped_gracefully_gives_its_groups_to_the_others_at_once() {
    let Some(store) = Store::postgres() else { return };
    a_stopped_replicas_groups_go_to_the_others_at_once(store).await;
}

/// A timed revert falls due while replicas start, stop and die: it runs once.
async fn a_timed_revert_among_changing_replicas(store: Store) {
    let (sim, groups) = sim_with_groups(1);
    let (cid, chatid) = groups[0].clone();
    let settings = |s: &mut Settings| {
        replica_settings(&groups, 2)(s);
        s.worker.revert_minute = Duration::from_millis(3000);
    };
    let a = Replica::start(&sim, &store, settings).await;
    let chat = session_chat(&sim, &cid);
    assert_eq!(a.send(&chat, &admin(), "/lock-dm 1m", &new_msg_id()).await, 200);
    exactly_replies(&sim, 1, Duration::from_secs(10)).await;
    // Two more replicas start, A stops before the revert is due; then the revert is due
    // on both survivors, and one of them dies and another starts.
    let b = Replica::start(&sim, &store, settings).await;
    let c = Replica::start(&sim, &store, settings).await;
    a.stop().await;
    let reverted = eventually(Duration::from_secs(15), || {
        sim.replies().iter().any(|r| r.via == "group-message")
    })
    .await;
    assert!(reverted, "the revert did not run");
    // Not before it was due: one shortened minute (3 s) after the lock, as DingTalk saw
    // the two calls (the test's own clock would count from when it saw the reply, which a
    // loaded machine delays).
    let switches: Vec<u64> = sim
        .calls(Some(api::FRIEND_SWITCH))
        .iter()
        .filter(|c| c.answer == 0 && c.body["chatid"] == chatid.as_str())
        .map(|c| c.at_ms)
        .collect();
    assert_eq!(switches.len(), 2, "the lock and its revert");
    assert!(
        switches[1] >= switches[0] + 2500,
        "it ran before it was due: {switches:?}"
    );
    c.kill().await;
    let d = Replica::start(&sim, &store, settings).await;
    // Long enough for any second run: leases of 2 s, timer ticks of 1 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let group_messages = sim
        .replies()
        .into_iter()
        .filter(|r| r.via == "group-message")
        .count();
    assert_eq!(group_messages, 1);
    assert_eq!(switch_calls_by_chat(&sim)[&chatid], [true, false]);
    let ledger = store.ledger().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_revert_due_while_replicas_start_and_stop_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    a_timed_revert_among_changing_replicas(Store::sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_revert_due_while_replicas_on_postgres_start_and_stop_runs_once() {
    let Some(store) = Store::postgres() else { return };
    a_timed_revert_among_changing_replicas(store).await;
}

/// 300 groups bound in the configuration, one `/lock-dm` each, sent round robin to three
/// replicas on one PostgreSQL schema, with DingTalk's rate limit on and dingops pacing at
/// its default: the fleet shares one budget, so DingTalk never refuses a call for its rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_postgres_draining_300_groups_keep_within_one_rate_budget() {
    const GROUPS: usize = 300;
    let Some(store) = Store::postgres() else { return };
    let sim = new_sim(SimConfig::default());
    assert_eq!(sim.config().rate_limit_per_sec, 20);
    let groups: Vec<(String, String)> = (0..GROUPS)
        .map(|i| (format!("cidFleet{i:04}=="), format!("chatfleet{i:04}")))
        .collect();
    for (cid, chat) in &groups {
        sim.add_group(cid, chat, cid);
    }
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let settings = replica_settings(&groups, 30);
        let replica = Replica::start(&sim, &store, |s: &mut Settings| {
            settings(s);
            // DingTalk's limit less one, per 1.05 s: the default.
            s.dingtalk.api_calls_per_sec = 20;
        })
        .await;
        fleet.push(replica);
    }
    for (i, (cid, _)) in groups.iter().enumerate() {
        let chat = session_chat(&sim, cid);
        let replica = &fleet[i % fleet.len()];
        assert_eq!(
            replica.send(&chat, &admin(), "/lock-dm", &new_msg_id()).await,
            200
        );
    }
    let replies = exactly_replies(&sim, GROUPS, Duration::from_secs(120)).await;
    assert!(
        replies.iter().all(|r| r.content.starts_with('✅')),
        "{:?}",
        replies.iter().find(|r| !r.content.starts_with('✅'))
    );
    for (cid, _) in &groups {
        assert!(sim.group(cid).unwrap().dm_prohibited, "{cid}");
    }
    let switches = sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(
        switches.len(),
        GROUPS,
        "one call per group, none refused and repeated"
    );
    // DingTalk (its limit is 20 calls per API in any second) refused nothing, and saw at
    // most its limit in any second. dingops aims at 19 per 1.05 s; the arrival figure is
    // printed rather than asserted: a call reaches DingTalk some ms after its slot, more on a
    // loaded machine, and that shifts arrivals into the next window.
    let all = sim.calls(None);
    let refused = all.iter().filter(|c| c.answer == 90018).count();
    assert_eq!(refused, 0, "{refused} calls refused with 90018");
    let (per_second, per_window) = (peak(&switches, 1000), peak(&switches, 1050));
    eprintln!(
        "the fleet: {} friendswitch calls, at most {per_second} in any 1 s, {per_window} in any 1.05 s",
        switches.len()
    );
    assert!(per_second <= 20, "{per_second} calls within one second");
    for r in fleet {
        r.stop().await;
    }
}

/// Child processes killed when the test ends, however it ends.
struct Binaries(Vec<std::process::Child>);

impl Drop for Binaries {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The pid in a lease holder's name (`<host>-<pid>-<random>`).
fn holder_pid(holder: &str) -> u32 {
    let mut parts = holder.rsplit('-');
    parts.next();
    parts
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in the lease holder {holder:?}"))
}

/// The pid of the process holding `group:<cid>` in `schema`, if any holds it.
fn group_holder(schema: &TestSchema, cid: &str) -> Option<u32> {
    let sql = format!("SELECT holder FROM leases WHERE name = 'group:{cid}'");
    schema
        .column(&sql)
        .into_iter()
        .flatten()
        .next()
        .map(|h| holder_pid(&h))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_binaries_on_postgres_share_the_callbacks_and_one_killed_mid_command_has_it_finished_by_the_other_once()
 {
    const LEASE_SECS: u64 = 2;
    let Some(schema) = TestSchema::or_skip() else {
        return;
    };
    let schema = Arc::new(schema);
    let sim = new_sim(SimConfig {
        rate_limit_per_sec: 0,
        ..SimConfig::default()
    });
    let extra = [
        ("DINGOPS_DATABASE", schema.url().to_owned()),
        ("DINGOPS_CLAIM_LEASE_SECS", LEASE_SECS.to_string()),
        // Not about the per-sender limit: one admin sends all the commands.
        ("DINGOPS_ADMIN_COMMANDS_PER_MINUTE", "0".to_owned()),
        (
            "DINGOPS_GROUPS",
            format!("{GROUP}={GROUP_CHATID},{OTHER}={OTHER_CHATID}"),
        ),
    ];
    let ports = [free_port(), free_port()];
    let mut children = Binaries(
        ports
            .iter()
            .map(|port| spawn_binary(&sim, *port, std::path::Path::new("unused.db"), &extra))
            .collect(),
    );
    for port in ports {
        wait_healthy(port).await;
    }
    let senders: Vec<CallbackSender> = ports
        .iter()
        .map(|port| {
            CallbackSender::new(
                &format!("http://127.0.0.1:{port}"),
                SecretString::from(sim.config().app_secret.clone()),
            )
        })
        .collect();
    let send = |to: usize, cid: &str, text: &str, msg_id: &str| {
        let body = text_message(msg_id, &session_chat(&sim, cid), &admin(), text);
        let sender = &senders[to];
        async move { sender.send(&body).await.unwrap().0 }
    };

    // Callbacks of two groups alternate between the binaries.
    for i in 0..20 {
        let cid = if i % 4 < 2 { GROUP } else { OTHER };
        let text = if i % 8 < 4 { "/lock-dm" } else { "/unlock-dm" };
        assert_eq!(send(i % 2, cid, text, &new_msg_id()).await, 200);
    }
    let replies = exactly_replies(&sim, 20, Duration::from_secs(30)).await;
    assert!(
        replies.iter().all(|r| r.content.starts_with('✅')),
        "{replies:#?}"
    );

    // The next command of GROUP goes to the binary not holding the group; its DingTalk
    // call hangs in the holder, which is killed there.
    let schema_ = schema.clone();
    let holder = tokio::task::spawn_blocking(move || group_holder(&schema_, GROUP))
        .await
        .unwrap();
    let to = match holder {
        Some(pid) if pid == children.0[0].id() => 1,
        _ => 0,
    };
    sim.inject(api::FRIEND_SWITCH, Fault::Hang);
    let msg_id = new_msg_id();
    assert_eq!(send(to, GROUP, "/unlock-dm", &msg_id).await, 200);
    assert!(
        eventually(Duration::from_secs(10), || sim
            .calls(Some(api::FRIEND_SWITCH))
            .iter()
            .any(|c| c.answer == -3))
        .await,
        "the command never reached DingTalk: {:#?}",
        sim.replies().last()
    );
    let schema_ = schema.clone();
    let running = tokio::task::spawn_blocking(move || group_holder(&schema_, GROUP))
        .await
        .unwrap()
        .expect("the group is held while its command runs");
    let killed = children
        .0
        .iter()
        .position(|c| c.id() == running)
        .expect("one of the binaries holds the group");
    let killed_ms = now_ms();
    children.0[killed].kill().unwrap();
    children.0[killed].wait().unwrap();

    let replies = exactly_replies(&sim, 21, Duration::from_secs(30)).await;
    assert_reply(&replies[20], "✅", "");
    let ledger = Store::Postgres(schema.clone()).ledger().await;
    assert_finished_after_the_lease(ledger.as_ref(), &msg_id, killed_ms, LEASE_SECS);
    assert!(!sim.group(GROUP).unwrap().dm_prohibited);
    assert_eq!(ledger.history(None, None, 100).unwrap().len(), 21);
    assert_eq!(ledger.open_count().unwrap(), 0);
    drop(children);
}
