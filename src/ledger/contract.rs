//! The ledger's contract, run against every store: each test below runs once on the memory
//! store, once on SQLite and once on PostgreSQL (a schema of its own on the test server, see
//! `dingops_testkit::TestSchema`). Tests of one store's own concerns (file modes, migrations from
//! old files) stay beside that store.

use std::collections::HashMap;
use std::sync::Arc;

use super::testing::SchemaUrl as _;
use super::{CommandLog as _, Ledger, PostgresLedger, RevertState, SqliteLedger};
use crate::domain::{
    Accepted, Answer, Binding, ChatId, ConversationType, Delivery, Department, DmState, KnownValue, Outcome,
    Pending, RevertJob, RevertRestore, SessionWebhook,
};
use dingops_testkit::TestSchema;

/// A store that tests can open (and open again, as a restart does).
trait Store {
    fn open(&self) -> Arc<dyn Ledger> {
        self.open_with_clock(crate::clock::wall_clock())
    }
    /// Opens the store with leases and the rate budget read from `clock`.
    fn open_with_clock(&self, clock: Arc<dyn crate::clock::Clock>) -> Arc<dyn Ledger>;
    /// Every stored reply URL (`session_webhook`), in acceptance order.
    fn stored_webhooks(&self) -> Vec<Option<String>>;
}

struct Sqlite(tempfile::TempDir);

impl Sqlite {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
}

impl Store for Sqlite {
    fn open_with_clock(&self, clock: Arc<dyn crate::clock::Clock>) -> Arc<dyn Ledger> {
        Arc::new(SqliteLedger::open(&self.0.path().join("l.db"), clock).unwrap())
    }

    fn stored_webhooks(&self) -> Vec<Option<String>> {
        let conn = rusqlite::Connection::open(self.0.path().join("l.db")).unwrap();
        let mut st = conn
            .prepare("SELECT session_webhook FROM commands ORDER BY rowid")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

struct Postgres(TestSchema);

impl Postgres {
    /// A schema on the test server, or `None` when the test is skipped (no server named).
    fn or_skip() -> Option<Self> {
        TestSchema::or_skip().map(Self)
    }
}

impl Store for Postgres {
    fn open_with_clock(&self, clock: Arc<dyn crate::clock::Clock>) -> Arc<dyn Ledger> {
        Arc::new(PostgresLedger::open_with_clock(&self.0.postgres_url(), clock).unwrap())
    }

    fn stored_webhooks(&self) -> Vec<Option<String>> {
        self.0.column("SELECT session_webhook FROM commands ORDER BY pos")
    }
}

/// The memory store; reopening it gives another handle on the same contents.
struct Memory(super::MemoryLedger);

impl Memory {
    fn new() -> Self {
        Self(super::MemoryLedger::new())
    }
}

impl Store for Memory {
    fn open_with_clock(&self, clock: Arc<dyn crate::clock::Clock>) -> Arc<dyn Ledger> {
        Arc::new(self.0.reopen(clock))
    }

    fn stored_webhooks(&self) -> Vec<Option<String>> {
        self.0.stored_webhooks()
    }
}

/// Each test, once per store.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::$name(&super::Memory::new()) })*
        }
        mod sqlite {
            $(#[test] fn $name() { super::$name(&super::Sqlite::new()) })*
        }
        mod postgres {
            $(#[test] fn $name() {
                let Some(store) = super::Postgres::or_skip() else { return };
                super::$name(&store)
            })*
        }
    };
}

contract!(
    a_msg_id_is_accepted_once_and_survives_reopening,
    an_answered_command_is_pending_with_its_answer_until_finished,
    open_commands_are_listed_after_a_cursor_in_acceptance_order,
    a_groups_open_commands_are_read_from_its_own_position_up_to_a_limit,
    the_newest_finished_command_of_each_group_after_the_oldest_open_one_is_known,
    discovered_departments_are_replaced_as_a_whole_and_read_back_in_id_order,
    every_binding_is_listed_in_conversation_order,
    rebinding_replaces_the_chatid,
    a_new_revert_replaces_the_pending_one_of_its_setting_only,
    a_revert_interrupted_while_running_is_pending_again_after_reopening,
    acceptances_committed_together_keep_their_order_and_each_msg_id_is_new_once,
    a_text_with_a_nul_character_is_accepted_without_failing_its_neighbours,
    the_dm_state_of_a_group_is_stored_and_replaced,
    the_known_value_of_each_setting_is_stored_per_group_and_replaced,
    a_reverts_exception_value_and_restore_rule_read_back_as_written,
    the_audit_lists_newest_first_by_group_and_time_with_own_actions,
    pruning_deletes_old_finished_commands_in_steps_and_never_open_ones,
    the_probe_writes_and_succeeds_on_a_working_store,
    leases_are_granted_renewed_expired_and_released_as_the_trait_says,
);

/// The monthly quota's contract (`QuotaBook`), once per store.
mod quota;

/// The interactive cards' contract (`CardStore`), once per store.
mod cards;

/// The fence of a setting's record and the policy in force (`SettingStore`), once per store.
mod fencing;

fn leases_are_granted_renewed_expired_and_released_as_the_trait_says(store: &dyn Store) {
    let clock = crate::clock::ManualClock::at(0);
    super::testing::check_lease_contract(store.open_with_clock(clock.clone()).as_ref(), &clock);
    // Leases are in the store: another handle on it (another replica) sees them.
    let (a, b) = (
        store.open_with_clock(clock.clone()),
        store.open_with_clock(clock.clone()),
    );
    clock.set(1000);
    assert!(a.try_lease("group:x", "r1", 5000).unwrap());
    clock.set(2000);
    assert!(!b.try_lease("group:x", "r2", 5000).unwrap());
    clock.set(6000);
    assert!(b.try_lease("group:x", "r2", 5000).unwrap());
}

/// On PostgreSQL the server's clock decides: a lease taken now is live for its length
/// whatever the clocks of the replicas, and the server's clock is what the store tells.
#[test]
fn leases_on_postgres_go_by_the_servers_clock() {
    let Some(store) = Postgres::or_skip() else { return };
    let (a, b) = (store.open(), store.open());
    let wall = crate::clock::wall_clock();
    let before = wall.now_ms();
    let told = a.clock_ms().unwrap();
    // The test's machine is the server's: the two clocks agree to within the round trip.
    assert!(
        told + 1000 >= before && told <= wall.now_ms() + 1000,
        "{told} vs {before}"
    );
    assert!(a.try_lease("group:x", "r1", 60_000).unwrap());
    assert!(!b.try_lease("group:x", "r2", 60_000).unwrap());
    assert_eq!(
        b.renew_leases(&["group:x".to_owned()], "r1", 60_000).unwrap(),
        ["group:x"]
    );
    // A lease of no length has ended by the next statement.
    assert!(a.try_lease("group:y", "r1", 0).unwrap());
    assert!(b.try_lease("group:y", "r2", 60_000).unwrap());
}

/// Every open command, oldest first.
fn unfinished(l: &dyn Ledger) -> Vec<Pending> {
    l.open_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn accepted(id: &str) -> Accepted {
    Accepted {
        msg_id: id.into(),
        received_ms: 1,
        conversation_id: "cid1==".into(),
        conversation_type: ConversationType::Group,
        conversation_title: Some("t".into()),
        sender_staff_id: Some("u1".into()),
        sender_nick: Some("n".into()),
        sender_is_admin: false,
        msgtype: "text".into(),
        text: Some("/help".into()),
        session_webhook: SessionWebhook::new("http://127.0.0.1:1/x"),
        session_expires_ms: Some(10),
    }
}

fn in_group(id: &str, cid: &str) -> Accepted {
    let mut c = accepted(id);
    c.conversation_id = cid.into();
    c
}

fn ids(rows: Vec<(i64, Pending)>) -> Vec<String> {
    rows.into_iter().map(|(_, p)| p.accepted.msg_id).collect()
}

fn a_msg_id_is_accepted_once_and_survives_reopening(store: &dyn Store) {
    {
        let l = store.open();
        assert!(l.accept(&accepted("m1")).unwrap());
        assert!(!l.accept(&accepted("m1")).unwrap());
    }
    let l = store.open();
    assert!(!l.accept(&accepted("m1")).unwrap());
    assert_eq!(
        unfinished(l.as_ref()),
        vec![Pending {
            accepted: accepted("m1"),
            answer: None
        }]
    );
}

fn an_answered_command_is_pending_with_its_answer_until_finished(store: &dyn Store) {
    let l = store.open();
    l.accept(&accepted("m1")).unwrap();
    let answer = Answer {
        command: "/help".into(),
        outcome: Outcome::Info,
        errcode: Some(-7),
        text: "the list".into(),
        detail: "help".into(),
        card: None,
    };
    l.record_answer("m1", &answer).unwrap();
    assert_eq!(unfinished(l.as_ref())[0].answer, Some(answer.clone()));
    assert_eq!(l.open_count().unwrap(), 1);
    assert_eq!(store.stored_webhooks(), [Some("http://127.0.0.1:1/x".to_owned())]);
    l.finish("m1", &answer, &Delivery::Session, 2).unwrap();
    assert!(unfinished(l.as_ref()).is_empty());
    assert_eq!(l.open_count().unwrap(), 0);
    assert_eq!(
        store.stored_webhooks(),
        [None],
        "the reply URL is dropped once finished"
    );
    let rows = l.history(Some("cid1=="), None, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].result.as_deref(), Some("info"));
    assert_eq!(rows[0].errcode, Some(-7));
    assert_eq!(rows[0].finished_ms, Some(2));
    assert_eq!(rows[0].status, "done");
}

fn open_commands_are_listed_after_a_cursor_in_acceptance_order(store: &dyn Store) {
    let l = store.open();
    for id in ["m3", "m1", "m2"] {
        l.accept(&accepted(id)).unwrap();
    }
    let first = l.open_after(0, 2).unwrap();
    let got: Vec<&str> = first.iter().map(|(_, p)| p.accepted.msg_id.as_str()).collect();
    assert_eq!(got, ["m3", "m1"]);
    let rest = l.open_after(first[1].0, 10).unwrap();
    assert_eq!(ids(rest), ["m2"]);
    assert_eq!(l.open_count().unwrap(), 3);
}

fn a_groups_open_commands_are_read_from_its_own_position_up_to_a_limit(store: &dyn Store) {
    let l = store.open();
    for (id, cid) in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("a3", "A"), ("a4", "A")] {
        l.accept(&in_group(id, cid)).unwrap();
    }
    let pos: HashMap<String, i64> = l
        .open_after(0, 10)
        .unwrap()
        .into_iter()
        .map(|(p, c)| (c.accepted.msg_id, p))
        .collect();
    assert_eq!(
        ids(l
            .open_in_conversation_after("A", pos["a1"], pos["a3"], 10)
            .unwrap()),
        ["a2", "a3"]
    );
    assert_eq!(
        ids(l.open_in_conversation_after("A", 0, pos["a4"], 2).unwrap()),
        ["a1", "a2"]
    );
    assert!(
        l.open_in_conversation_after("B", pos["b1"], pos["a4"], 10)
            .unwrap()
            .is_empty()
    );
}

fn the_newest_finished_command_of_each_group_after_the_oldest_open_one_is_known(store: &dyn Store) {
    let l = store.open();
    assert!(l.newest_done_by_group().unwrap().is_empty());
    let done = Answer::new("/help", Outcome::Info, "", "");
    for (id, cid) in [("a0", "A"), ("a1", "A"), ("b1", "B"), ("a2", "A"), ("c1", "C")] {
        l.accept(&in_group(id, cid)).unwrap();
    }
    let pos: HashMap<String, i64> = l
        .open_after(0, 10)
        .unwrap()
        .into_iter()
        .map(|(p, c)| (c.accepted.msg_id, p))
        .collect();
    for id in ["a0", "a2", "c1"] {
        l.finish(id, &done, &Delivery::Session, 2).unwrap();
    }
    // a1 is the oldest open command; a0 finished before it and does not count.
    assert_eq!(
        l.newest_done_by_group().unwrap(),
        HashMap::from([("A".to_owned(), pos["a2"]), ("C".to_owned(), pos["c1"])])
    );
    for id in ["a1", "b1"] {
        l.finish(id, &done, &Delivery::Session, 3).unwrap();
    }
    assert!(l.newest_done_by_group().unwrap().is_empty(), "nothing is open");
}

fn department(dept_id: i64, parent_id: Option<i64>, chat: Option<&str>) -> Department {
    Department {
        dept_id,
        parent_id,
        name: format!("d{dept_id}"),
        path: format!("Root / d{dept_id}"),
        chat_id: chat.map(|c| ChatId::parse(c).unwrap()),
        open_conversation_id: chat.map(|c| format!("cid{c}=")),
    }
}

fn discovered_departments_are_replaced_as_a_whole_and_read_back_in_id_order(store: &dyn Store) {
    let l = store.open();
    assert!(l.departments().unwrap().is_empty());
    l.replace_departments(&[
        department(7, Some(1), None),
        department(1, None, Some("chatRoot")),
    ])
    .unwrap();
    assert_eq!(
        l.departments().unwrap(),
        vec![
            department(1, None, Some("chatRoot")),
            department(7, Some(1), None)
        ]
    );
    l.replace_departments(&[department(9, Some(1), Some("chat9"))])
        .unwrap();
    assert_eq!(
        l.departments().unwrap(),
        vec![department(9, Some(1), Some("chat9"))]
    );
    l.replace_departments(&[]).unwrap();
    assert!(l.departments().unwrap().is_empty());
}

fn binding(cid: &str, chat: &str) -> Binding {
    Binding {
        conversation_id: cid.into(),
        chat_id: ChatId::parse(chat).unwrap(),
        bound_by: "Ada (u1)".into(),
        bound_ms: 1,
    }
}

fn every_binding_is_listed_in_conversation_order(store: &dyn Store) {
    let l = store.open();
    // Byte order, whatever the server's locale: uppercase sorts before lowercase.
    for (cid, chat) in [("cidb=", "chatB"), ("cidB=", "chatA"), ("cidA=", "chatC")] {
        l.bind(&binding(cid, chat)).unwrap();
    }
    let all: Vec<String> = l
        .bindings()
        .unwrap()
        .into_iter()
        .map(|b| b.conversation_id)
        .collect();
    assert_eq!(all, ["cidA=", "cidB=", "cidb="]);
    assert_eq!(l.binding("cidb=").unwrap(), Some(binding("cidb=", "chatB")));
    assert_eq!(l.binding("nope").unwrap(), None);
}

fn rebinding_replaces_the_chatid(store: &dyn Store) {
    let l = store.open();
    for chat in ["chatA", "chatB"] {
        l.bind(&binding("cid", chat)).unwrap();
    }
    assert_eq!(l.binding("cid").unwrap().unwrap().chat_id.as_str(), "chatB");
    assert_eq!(l.bindings().unwrap().len(), 1);
}

fn revert(setting: &str, due_ms: u64) -> RevertJob {
    RevertJob {
        id: 0,
        conversation_id: "cid".into(),
        chat_id: ChatId::parse("chatA").unwrap(),
        setting: setting.into(),
        value: 1,
        set_value: 0,
        restore: RevertRestore::Before,
        due_ms,
        scheduled_by: "Ada (u1)".into(),
        scheduled_command: "/mute-all 30m".into(),
        scheduled_ms: 1,
    }
}

fn a_new_revert_replaces_the_pending_one_of_its_setting_only(store: &dyn Store) {
    let l = store.open();
    assert_eq!(l.schedule_revert(&revert("chatBannedType", 10)).unwrap(), None);
    l.schedule_revert(&revert("searchable", 30)).unwrap();
    let replaced = l.schedule_revert(&revert("chatBannedType", 20)).unwrap().unwrap();
    assert_eq!(replaced.due_ms, 10);
    assert_eq!(
        RevertJob {
            id: 0,
            ..replaced.clone()
        },
        revert("chatBannedType", 10)
    );
    let pending = l.pending_reverts(Some("cid")).unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|j| (j.setting.as_str(), j.due_ms))
            .collect::<Vec<_>>(),
        [("chatBannedType", 20), ("searchable", 30)]
    );
    assert!(l.pending_reverts(Some("other")).unwrap().is_empty());
    // The replaced job can no longer be claimed; a cancelled one neither.
    assert!(!l.claim_revert(replaced.id).unwrap());
    let cancelled = l.cancel_revert("cid", "searchable").unwrap().unwrap();
    assert!(!l.claim_revert(cancelled.id).unwrap());
    assert_eq!(l.cancel_revert("cid", "searchable").unwrap(), None);
}

fn a_revert_interrupted_while_running_is_pending_again_after_reopening(store: &dyn Store) {
    let id = {
        let l = store.open();
        l.schedule_revert(&revert("dm", 5)).unwrap();
        let id = l.pending_reverts(None).unwrap()[0].id;
        assert!(l.claim_revert(id).unwrap());
        id
    };
    let l = store.open();
    assert_eq!(l.pending_reverts(None).unwrap()[0].id, id);
    assert!(l.claim_revert(id).unwrap());
    l.finish_revert(id, RevertState::Done, "ok", 9).unwrap();
    assert!(l.pending_reverts(None).unwrap().is_empty());
    assert!(!l.claim_revert(id).unwrap());
}

fn acceptances_committed_together_keep_their_order_and_each_msg_id_is_new_once(store: &dyn Store) {
    let l = store.open();
    assert!(l.accept(&accepted("known")).unwrap());
    // Queued without waiting, so that the store commits them in groups: copies of one msgId
    // within a group, and one known before.
    let names: Vec<String> = (0..300)
        .map(|i| match i % 3 {
            0 => format!("m{i}"),
            1 => format!("m{}", i - 1),
            _ => "known".to_owned(),
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, name) in names.iter().enumerate() {
        let tx = tx.clone();
        l.accept_then(
            accepted(name),
            Box::new(move |r| {
                tx.send((i, r.unwrap())).unwrap();
            }),
        );
    }
    drop(tx);
    let mut results: Vec<(usize, bool)> = rx.iter().collect();
    results.sort_unstable();
    assert_eq!(results.len(), 300);
    for (i, new) in results {
        assert_eq!(new, i % 3 == 0, "acceptance {i} ({})", names[i]);
    }
    let order = ids(l.open_after(0, 1000).unwrap());
    let expected: Vec<String> = std::iter::once("known".to_owned())
        .chain((0..300).step_by(3).map(|i| format!("m{i}")))
        .collect();
    assert_eq!(order, expected);
}

fn a_text_with_a_nul_character_is_accepted_without_failing_its_neighbours(store: &dyn Store) {
    let l = store.open();
    let mut odd = accepted("nul");
    odd.text = Some("/help\0me".into());
    odd.sender_nick = Some("N\0".into());
    let (tx, rx) = std::sync::mpsc::channel();
    for c in [accepted("before"), odd, accepted("after")] {
        let tx = tx.clone();
        l.accept_then(c, Box::new(move |r| tx.send(r.unwrap()).unwrap()));
    }
    drop(tx);
    assert_eq!(rx.iter().collect::<Vec<_>>(), [true, true, true]);
    let open = unfinished(l.as_ref());
    assert_eq!(open.len(), 3);
    // SQLite keeps the NUL; PostgreSQL text cannot, and holds U+FFFD in its place.
    let text = open[1].accepted.text.clone().unwrap().replace('\u{FFFD}', "\0");
    assert_eq!(text, "/help\0me");
}

fn the_dm_state_of_a_group_is_stored_and_replaced(store: &dyn Store) {
    let l = store.open();
    assert_eq!(l.dm_state("cid").unwrap(), None);
    let first = DmState {
        prohibited: true,
        set_by: "u1".into(),
        set_by_nick: Some("Ada".into()),
        set_ms: 5,
    };
    l.set_dm_state("cid", &first).unwrap();
    assert_eq!(l.dm_state("cid").unwrap(), Some(first));
    let second = DmState {
        prohibited: false,
        set_by: "u2".into(),
        set_by_nick: None,
        set_ms: 6,
    };
    l.set_dm_state("cid", &second).unwrap();
    assert_eq!(l.dm_state("cid").unwrap(), Some(second));
    assert_eq!(l.dm_state("other").unwrap(), None);
}

fn the_known_value_of_each_setting_is_stored_per_group_and_replaced(store: &dyn Store) {
    let l = store.open();
    let known = |value: u8, via: &str, set_ms: u64| KnownValue {
        value,
        set_by: "policy".into(),
        set_by_nick: None,
        via: via.parse().unwrap(),
        set_ms,
    };
    assert!(l.known_settings("cid").unwrap().is_empty());
    l.record_setting("cid", "chatBannedType", &known(1, "apply", 5))
        .unwrap();
    l.record_setting("cid", "searchable", &known(0, "chat", 6))
        .unwrap();
    l.record_setting("other", "searchable", &known(1, "chat", 7))
        .unwrap();
    l.record_setting("cid", "chatBannedType", &known(0, "revert", 8))
        .unwrap();
    assert_eq!(
        l.known_settings("cid").unwrap(),
        [
            ("chatBannedType".to_owned(), known(0, "revert", 8)),
            ("searchable".to_owned(), known(0, "chat", 6)),
        ]
    );
    assert_eq!(
        l.known_setting("other", "searchable").unwrap(),
        Some(known(1, "chat", 7))
    );
    assert_eq!(
        l.dm_state("cid").unwrap(),
        None,
        "the DM switch is a setting of its own"
    );
}

fn a_reverts_exception_value_and_restore_rule_read_back_as_written(store: &dyn Store) {
    let l = store.open();
    let unknown = RevertJob {
        value: 0,
        set_value: 1,
        restore: RevertRestore::Unknown,
        ..revert("dm", 10)
    };
    l.schedule_revert(&unknown).unwrap();
    l.schedule_revert(&revert("searchable", 20)).unwrap();
    let pending = l.pending_reverts(Some("cid")).unwrap();
    let read: Vec<(u8, u8, RevertRestore)> = pending
        .iter()
        .map(|j| (j.value, j.set_value, j.restore))
        .collect();
    assert_eq!(
        read,
        [(0, 1, RevertRestore::Unknown), (1, 0, RevertRestore::Before)]
    );
}

fn the_audit_lists_newest_first_by_group_and_time_with_own_actions(store: &dyn Store) {
    let l = store.open();
    for (id, cid, ms) in [("x1", "A", 10), ("x2", "B", 20), ("x3", "A", 30)] {
        let mut c = in_group(id, cid);
        c.received_ms = ms;
        l.accept(&c).unwrap();
    }
    let own = super::AuditRow {
        msg_id: "timer-1".into(),
        received_ms: 40,
        conversation_id: "A".into(),
        sender_staff_id: None,
        sender_nick: Some("dingops (timer)".into()),
        text: Some("revert".into()),
        command: Some("/mute-all".into()),
        status: "done".into(),
        result: Some("ok".into()),
        errcode: None,
        detail: Some("reverted".into()),
        reply: Some("group".into()),
        finished_ms: Some(41),
    };
    l.record_own_action(&own).unwrap();
    // Recording it twice keeps one row.
    l.record_own_action(&own).unwrap();
    let all: Vec<String> = l
        .history(None, None, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.msg_id)
        .collect();
    assert_eq!(all, ["timer-1", "x3", "x2", "x1"]);
    let group_a = l.history(Some("A"), Some(20), 10).unwrap();
    assert_eq!(group_a.len(), 2);
    assert_eq!(group_a[0], own);
    assert_eq!(group_a[1].msg_id, "x3");
    assert_eq!(group_a[1].status, "accepted");
    assert_eq!(l.history(None, None, 1).unwrap().len(), 1);
    assert_eq!(l.open_count().unwrap(), 3, "own actions are finished rows");
}

fn pruning_deletes_old_finished_commands_in_steps_and_never_open_ones(store: &dyn Store) {
    let l = store.open();
    let done = Answer::new("/help", Outcome::Info, "", "");
    // Six old commands (received at 1..=6), the third still open; two recent ones.
    for i in 1..=8u64 {
        let mut c = accepted(&format!("p{i}"));
        c.received_ms = if i <= 6 { i } else { 1000 + i };
        l.accept(&c).unwrap();
        if i != 3 {
            l.finish(&c.msg_id, &done, &Delivery::Session, c.received_ms + 1)
                .unwrap();
        }
    }
    let (mut after, mut deleted, mut steps) = (0, 0, 0);
    loop {
        let step = l.prune_finished(500, after, 2).unwrap();
        deleted += step.deleted;
        steps += 1;
        match step.next {
            Some(next) => after = next,
            None => break,
        }
        assert!(steps < 10, "pruning does not end");
    }
    assert_eq!(deleted, 5);
    assert!(steps >= 3, "two commands per step: {steps} steps");
    let left: Vec<String> = l
        .history(None, None, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.msg_id)
        .collect();
    assert_eq!(left, ["p8", "p7", "p3"]);
    assert!(
        !l.accept(&accepted("p3")).unwrap(),
        "the open command is still known"
    );
}

fn the_probe_writes_and_succeeds_on_a_working_store(store: &dyn Store) {
    let l = store.open();
    l.ping().unwrap();
    l.ping().unwrap();
}

/// The rate-budget rule on PostgreSQL (SQLite and memory run the same checks beside their
/// stores): each check gets a fresh schema, kept until the end.
#[test]
fn the_rate_budget_follows_the_sliding_window_rule_on_postgres() {
    let Some(server) = dingops_testkit::test_database_url() else {
        return;
    };
    let schemas = std::sync::Mutex::new(Vec::new());
    super::testing::budget_tests::run_all(|clock| {
        let schema = TestSchema::on(&server);
        let ledger = PostgresLedger::open_with_clock(&schema.postgres_url(), clock).unwrap();
        schemas.lock().unwrap().push(schema);
        Box::new(ledger)
    });
}

/// Two PostgreSQL ledgers (two replicas) reserving at once get exactly the slots one
/// would have made alone.
#[test]
fn reservations_from_two_replicas_share_one_budget_on_postgres() {
    let Some(schema) = TestSchema::or_skip() else {
        return;
    };
    let clock = crate::clock::ManualClock::at(0);
    let open = || -> Arc<dyn Ledger> {
        Arc::new(PostgresLedger::open_with_clock(&schema.postgres_url(), clock.clone()).unwrap())
    };
    super::testing::budget_tests::two_handles_reserving_at_once_get_the_slots_of_one(open(), open(), &clock);
}

/// Two replicas ingesting at once while a third reads open commands after its cursor, as the
/// worker does: every command is seen, none is passed over because a batch with lower
/// positions committed after one with higher positions.
#[test]
fn a_reader_after_its_cursor_misses_no_command_while_two_replicas_ingest_on_postgres() {
    let Some(schema) = TestSchema::or_skip() else {
        return;
    };
    let writers: Vec<Arc<dyn Ledger>> = (0..2)
        .map(|_| Arc::new(PostgresLedger::open(&schema.postgres_url()).unwrap()) as Arc<dyn Ledger>)
        .collect();
    let reader = PostgresLedger::open(&schema.postgres_url()).unwrap();
    let per_writer = 1500;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = writers
        .iter()
        .enumerate()
        .flat_map(|(w, l)| {
            // Several threads per replica, so its batches hold several acceptances.
            (0..4).map(move |t| (w, t, l.clone()))
        })
        .map(|(w, t, l)| {
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..per_writer / 4 {
                    assert!(l.accept(&accepted(&format!("w{w}t{t}m{i}"))).unwrap());
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    let mut cursor = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst) == threads.len();
        for (pos, p) in reader.open_after(cursor, 1000).unwrap() {
            cursor = pos;
            seen.insert(p.accepted.msg_id);
        }
        if finished && reader.open_after(cursor, 1).unwrap().is_empty() {
            break;
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(seen.len(), 2 * per_writer, "the cursor passed over commands");
}
