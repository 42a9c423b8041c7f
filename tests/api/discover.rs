//! `dingops discover`: the department walk against the simulator's organisation, the table
//! and JSON it prints, and `--apply` beside a running `serve`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use dingops::domain::{Binding, ChatId};
use dingops::fleet::discover::{self, BindState, DiscoverError, NoProgress};
use dingops::ledger::SqliteLedger;
use dingops::ledger::prelude::*;
use dingtalk_sim::chat::{CallbackSender, text_message};
use dingtalk_sim::{Fault, ROOT_DEPT, SimConfig, Simulator, api};
use serde_json::Value;

use crate::helpers::*;

const ALL_HANDS: (&str, &str) = ("cidAcmeAllHands==", "chatacmeallhands");
const BACKEND: (&str, &str) = ("cidAcmeBackend==", "chatacmebackend");
const PLATFORM: (&str, &str) = ("cidAcmePlatform==", "chatacmeplatform");

/// The organisation of these tests (GROUP, bound in the test configuration, is the Sales
/// group):
///
/// ```text
/// 1 Acme                      group "Acme all hands"
/// ├── 2 Eng                   (no group)
/// │   ├── 3 Backend           group "Backend"
/// │   │   └── 4 Platform      group "Platform"
/// │   └── 5 Frontend          (no group)
/// └── 6 Sales                 group GROUP ("Group A")
/// ```
fn seed_tree(sim: &Simulator) {
    sim.add_group(ALL_HANDS.0, ALL_HANDS.1, "Acme all hands");
    sim.add_group(BACKEND.0, BACKEND.1, "Backend");
    sim.add_group(PLATFORM.0, PLATFORM.1, "Platform");
    sim.add_department(ROOT_DEPT, None, "Acme", Some(ALL_HANDS.0))
        .unwrap();
    sim.add_department(2, Some(1), "Eng", None).unwrap();
    sim.add_department(3, Some(2), "Backend", Some(BACKEND.0))
        .unwrap();
    sim.add_department(4, Some(3), "Platform", Some(PLATFORM.0))
        .unwrap();
    sim.add_department(5, Some(2), "Frontend", None).unwrap();
    sim.add_department(6, Some(1), "Sales", Some(GROUP)).unwrap();
}

/// The environment of a dingops process on `db`, configured like [`spawn_binary`]'s serve.
fn env(sim: &Simulator, db: &Path) -> Vec<(&'static str, String)> {
    let mut env = sim_env(sim);
    env.push(("DINGOPS_DATABASE", db.display().to_string()));
    env.push(("DINGOPS_ADMINS", "admin01".into()));
    env.push(("DINGOPS_GROUPS", format!("{GROUP}={GROUP_CHATID}")));
    env
}

/// A row as compared: id, parent, path, chatid, openConversationId, group name, state.
type RowView<'a> = (
    i64,
    Option<i64>,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    &'a BindState,
);

fn chat(c: &str) -> ChatId {
    ChatId::parse(c).unwrap()
}

#[tokio::test]
async fn discovery_finds_groups_at_every_depth_lists_departments_without_and_costs_two_calls_per_department_and_two_per_group()
 {
    let sim = new_sim(SimConfig::default());
    seed_tree(&sim);
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&sim, dir.path().join("ledger.db"));
    let report = discover::run(
        &settings.dingtalk,
        &settings.ledger.database,
        &settings.worker.groups,
        false,
        &NoProgress,
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .await
    .unwrap();

    let rows: Vec<RowView> = report
        .rows
        .iter()
        .map(|r| {
            let g = r.found.group.as_ref();
            (
                r.found.dept_id,
                r.found.parent_id,
                r.found.path.as_str(),
                g.map(|g| g.chat_id.as_str()),
                g.map(|g| g.open_conversation_id.as_str()),
                g.and_then(|g| g.name.as_deref().ok()),
                &r.state,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                1,
                None,
                "Acme",
                Some(ALL_HANDS.1),
                Some(ALL_HANDS.0),
                Some("Acme all hands"),
                &BindState::NotBound
            ),
            (2, Some(1), "Acme / Eng", None, None, None, &BindState::NoGroup),
            (
                3,
                Some(2),
                "Acme / Eng / Backend",
                Some(BACKEND.1),
                Some(BACKEND.0),
                Some("Backend"),
                &BindState::NotBound
            ),
            (
                4,
                Some(3),
                "Acme / Eng / Backend / Platform",
                Some(PLATFORM.1),
                Some(PLATFORM.0),
                Some("Platform"),
                &BindState::NotBound
            ),
            (
                5,
                Some(2),
                "Acme / Eng / Frontend",
                None,
                None,
                None,
                &BindState::NoGroup
            ),
            (
                6,
                Some(1),
                "Acme / Sales",
                Some(GROUP_CHATID),
                Some(GROUP),
                Some("Group A"),
                &BindState::Configured
            ),
        ]
    );
    let s = report.summary();
    assert_eq!(
        (
            s.departments,
            s.with_group,
            s.already_bound,
            s.not_bound,
            s.newly_bound,
            s.conflicts
        ),
        (6, 4, 1, 3, 0, 0)
    );
    // Two calls per department, two per department group, each once.
    let count = |api: &str| sim.calls(Some(api)).len();
    assert_eq!(count(api::DEPARTMENT_LISTSUBID), 6);
    assert_eq!(count(api::DEPARTMENT_GET), 6);
    assert_eq!(count(api::CONVERT), 4);
    assert_eq!(count(api::CHAT_GET), 4);
    let asked: BTreeSet<i64> = sim
        .calls(Some(api::DEPARTMENT_GET))
        .iter()
        .map(|c| c.body["dept_id"].as_i64().unwrap())
        .collect();
    assert_eq!(asked, (1..=6).collect());
    // Without --apply nothing is stored.
    let ledger = SqliteLedger::open(
        &dir.path().join("ledger.db"),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    assert!(ledger.departments().unwrap().is_empty());
    assert!(ledger.bindings().unwrap().is_empty());
}

#[tokio::test]
async fn discover_json_is_one_document_with_a_row_per_department_and_a_summary() {
    let sim = new_sim(SimConfig::default());
    seed_tree(&sim);
    let dir = tempfile::tempdir().unwrap();
    let run = dingops(&["discover", "--json"], env(&sim, &dir.path().join("l.db"))).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["applied"], false);
    let depts = doc["departments"].as_array().unwrap();
    assert_eq!(depts.len(), 6);
    let keys: BTreeSet<&str> = depts[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "dept_id",
            "parent_id",
            "name",
            "path",
            "chat_id",
            "open_conversation_id",
            "group_name",
            "group_name_error",
            "binding",
            "bound_chat_id",
            "bound_by",
        ])
    );
    assert!(depts.iter().all(|d| d.as_object().unwrap().len() == keys.len()));
    let platform = &depts[3];
    assert_eq!(platform["dept_id"], 4);
    assert_eq!(platform["parent_id"], 3);
    assert_eq!(platform["name"], "Platform");
    assert_eq!(platform["path"], "Acme / Eng / Backend / Platform");
    assert_eq!(platform["chat_id"], PLATFORM.1);
    assert_eq!(platform["open_conversation_id"], PLATFORM.0);
    assert_eq!(platform["group_name"], "Platform");
    assert_eq!(platform["group_name_error"], Value::Null);
    assert_eq!(platform["binding"], "not-bound");
    assert_eq!(depts[0]["parent_id"], Value::Null);
    assert_eq!(depts[1]["chat_id"], Value::Null);
    assert_eq!(depts[1]["binding"], "no-group");
    assert_eq!(depts[5]["binding"], "bound");
    assert_eq!(depts[5]["bound_by"], "the configuration");
    assert_eq!(
        doc["summary"],
        serde_json::json!({
            "departments": 6, "with_group": 4, "already_bound": 1, "newly_bound": 0,
            "not_bound": 3, "conflicts": 0, "names_unreadable": 0
        })
    );
    // Progress goes to stderr (plain lines: it is not a terminal), never into the JSON.
    assert!(
        run.stderr.contains("discover: done, 6 departments read"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn discover_cuts_long_names_in_its_table_and_escapes_bidi_controls_in_both_outputs() {
    let sim = new_sim(SimConfig::default());
    let group_name = format!("\u{202e}\u{61c}{}", "名".repeat(19_998));
    sim.add_group("cidLongName==", "chatlongname", &group_name);
    sim.add_department(ROOT_DEPT, None, &"Acme".repeat(30), None)
        .unwrap();
    sim.add_department(2, Some(ROOT_DEPT), "Platform", Some("cidLongName=="))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The name's controls, written raw.
    let raw = |text: &str| text.contains(['\u{202e}', '\u{61c}']);

    let run = dingops(&["discover"], env(&sim, &dir.path().join("l.db"))).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(!raw(&run.stdout), "{}", run.stdout);
    let row = run
        .stdout
        .lines()
        .find(|l| l.contains("chatlongname"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    // The path keeps its end (the department's own name), the group name its start.
    let cells = format!(
        r"…{} / Platform  \u{{202e}}\u{{61c}}{}…  chatlongname  cidLongName==",
        "Acme".repeat(7),
        "名".repeat(37)
    );
    assert!(row.starts_with(&cells) && row.ends_with("  no"), "{row}");
    let widest = run.stdout.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(widest <= 140, "a line of {widest} characters: {}", run.stdout);

    let run = dingops(&["discover", "--json"], env(&sim, &dir.path().join("l.db"))).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(!raw(&run.stdout), "{}", run.stdout);
    assert!(
        run.stdout.contains(r#""group_name": "\u202e\u061c名名"#),
        "{}",
        run.stdout
    );
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    // Discovery keeps the first 128 characters of a name it reads (as before).
    let kept: String = group_name.chars().take(128).collect();
    assert_eq!(doc["departments"][1]["group_name"], format!("{kept}…"));
}

/// `who` types `text` in the group `cid`, through the dingops on `port`; returns the reply.
async fn ask(sim: &Simulator, port: u16, cid: &str, text: &str) -> dingtalk_sim::RecordedReply {
    let sender = CallbackSender::new(
        &format!("http://127.0.0.1:{port}"),
        sim.config().app_secret.clone().into(),
    );
    let before = sim.reply_count();
    let body = text_message(
        &dingtalk_sim::chat::new_msg_id(),
        &session_chat(sim, cid),
        &admin(),
        text,
    );
    assert_eq!(sender.send(&body).await.unwrap().0, 200);
    let replies = sim.wait_for_replies(before + 1, Duration::from_secs(10)).await;
    assert_eq!(replies.len(), before + 1, "no reply to {text} in {cid}");
    replies[before].clone()
}

#[tokio::test]
async fn apply_in_a_second_process_lets_a_running_serve_act_in_a_discovered_group_without_bind() {
    let sim = new_sim(SimConfig::default());
    seed_tree(&sim);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let port = free_port();
    let mut serve = spawn_binary(&sim, port, &db, &[]);
    wait_healthy(port).await;

    let reply = ask(&sim, port, PLATFORM.0, "/lock-dm").await;
    assert_reply(&reply, "⛔", "not bound");
    assert!(!sim.group(PLATFORM.0).unwrap().dm_prohibited);

    let run = dingops(&["discover", "--apply"], env(&sim, &db)).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("Acme / Eng / Backend / Platform "))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        line.contains(PLATFORM.1) && line.contains(PLATFORM.0) && line.ends_with("newly bound"),
        "{line}"
    );
    assert!(
        run.stdout.contains(
            "6 departments, 4 with a department group: 1 already bound, 3 newly bound, 0 conflicts."
        ),
        "{}",
        run.stdout
    );

    let reply = ask(&sim, port, PLATFORM.0, "/lock-dm").await;
    assert_reply(&reply, "✅", "");
    assert!(sim.group(PLATFORM.0).unwrap().dm_prohibited);
    let calls = sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["chatid"], PLATFORM.1);

    let ledger = SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap();
    let bound: Vec<(String, String, String)> = ledger
        .bindings()
        .unwrap()
        .into_iter()
        .map(|b| (b.conversation_id, b.chat_id.to_string(), b.bound_by))
        .collect();
    let mut expected: Vec<(String, String, String)> = [ALL_HANDS, BACKEND, PLATFORM]
        .iter()
        .map(|(cid, chat)| ((*cid).to_owned(), (*chat).to_owned(), "discovered".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(bound, expected);
    let depts = ledger.departments().unwrap();
    assert_eq!(depts.len(), 6);
    assert_eq!(depts[3].path, "Acme / Eng / Backend / Platform");
    assert_eq!(depts[3].open_conversation_id.as_deref(), Some(PLATFORM.0));

    // A second run finds everything bound and changes nothing.
    let again = dingops(&["discover", "--apply", "--json"], env(&sim, &db)).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    let doc: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(doc["summary"]["newly_bound"], 0);
    assert_eq!(doc["summary"]["already_bound"], 4);
    assert_eq!(ledger.bindings().unwrap().len(), 3);

    serve.kill().unwrap();
    serve.wait().unwrap();
}

#[tokio::test]
async fn a_permission_error_exits_1_naming_the_department_and_stores_nothing() {
    let sim = new_sim(SimConfig::default());
    seed_tree(&sim);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let first = dingops(&["discover", "--apply"], env(&sim, &db)).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let ledger = SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap();
    let departments_before = ledger.departments().unwrap();
    let bindings_before = ledger.bindings().unwrap();

    // A new department group below Platform, then a refusal on the sixth department read:
    // Platform, which is read only after the five above it.
    sim.add_group("cidAcmeInfra==", "chatacmeinfra", "Infra");
    sim.add_department(7, Some(4), "Infra", Some("cidAcmeInfra=="))
        .unwrap();
    for _ in 0..5 {
        sim.inject(api::DEPARTMENT_GET, Fault::Delay { ms: 0 });
    }
    sim.inject(api::DEPARTMENT_GET, Fault::Errcode { errcode: 60011 });
    let run = dingops(&["discover", "--apply"], env(&sim, &db)).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(
            "department 4 (under Acme / Eng / Backend): department/get of 4 failed: DingTalk errcode 60011"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("qyapi_get_department_list"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    for token in sim.issued_tokens() {
        assert!(!run.stderr.contains(&token), "a token leaked: {}", run.stderr);
    }
    assert_eq!(ledger.departments().unwrap(), departments_before);
    assert_eq!(ledger.bindings().unwrap(), bindings_before);
}

#[tokio::test]
async fn a_group_bound_to_another_chatid_is_kept_and_reported_as_a_conflict() {
    let sim = new_sim(SimConfig::default());
    seed_tree(&sim);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let mine = Binding {
        conversation_id: BACKEND.0.into(),
        chat_id: chat("chatsomethingelse"),
        bound_by: "Ada (admin01)".into(),
        bound_ms: 7,
    };
    SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock))
        .unwrap()
        .bind(&mine)
        .unwrap();

    let run = dingops(&["discover", "--apply"], env(&sim, &db)).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("Acme / Eng / Backend "))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(line.ends_with("CONFLICT: bound to chatsomethingelse"), "{line}");
    assert!(
        run.stdout.contains(&format!(
            "Conflict: group {} (Acme / Eng / Backend) is bound to chatid chatsomethingelse by Ada (admin01), but its department group is {}; left as it is.",
            BACKEND.0, BACKEND.1
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("2 newly bound, 1 conflicts."),
        "{}",
        run.stdout
    );
    let ledger = SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap();
    assert_eq!(ledger.binding(BACKEND.0).unwrap(), Some(mine));
    assert_eq!(
        ledger.binding(PLATFORM.0).unwrap().map(|b| b.chat_id),
        Some(chat(PLATFORM.1))
    );
}

#[tokio::test]
async fn an_invalid_chatid_from_dingtalk_is_an_error_for_its_department_not_a_panic() {
    let sim = new_sim(SimConfig::default());
    seed_tree(&sim);
    sim.add_group("cidOdd==", "chat odd/../x", "odd");
    sim.add_department(8, Some(2), "Odd", Some("cidOdd==")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&sim, dir.path().join("ledger.db"));
    let e = discover::run(
        &settings.dingtalk,
        &settings.ledger.database,
        &settings.worker.groups,
        true,
        &NoProgress,
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DiscoverError::Api { dept_id: 8, .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("department 8 (under Acme / Eng)"), "{text}");
    assert!(text.contains("not a chatid"), "{text}");
    assert!(
        sim.calls(Some(api::CONVERT))
            .iter()
            .all(|c| c.body != "chat odd/../x")
    );
    let ledger = SqliteLedger::open(
        &dir.path().join("ledger.db"),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    assert!(ledger.departments().unwrap().is_empty());
    assert!(ledger.bindings().unwrap().is_empty());
}

/// At DingTalk's default limit, with the client's default pace. A rate-limit answer (a
/// loaded machine can bunch calls that were sent far enough apart) is retried, so the
/// assertions are about the outcome: every department read successfully exactly once.
#[tokio::test]
async fn a_200_department_tree_is_walked_completely_at_dingtalks_default_limit() {
    let sim = new_sim(SimConfig::default());
    // Root, 20 departments under it, 179 under those: 200 in all, every tenth with a group.
    for id in 2..=200_i64 {
        let parent = if id <= 21 { 1 } else { (id - 2) % 20 + 2 };
        let group = (id % 10 == 0).then(|| {
            let cid = format!("cidBig{id}==");
            sim.add_group(&cid, &format!("chatbig{id}"), &format!("g{id}"));
            cid
        });
        sim.add_department(id, Some(parent), &format!("d{id}"), group.as_deref())
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&sim, dir.path().join("ledger.db"));
    let started = Instant::now();
    let report = discover::run(
        &settings.dingtalk,
        &settings.ledger.database,
        &settings.worker.groups,
        true,
        &NoProgress,
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .await
    .unwrap();
    let rejected = sim.calls(None).iter().filter(|c| c.answer == 90018).count();
    eprintln!(
        "discovered 200 departments in {:?} ({rejected} rate-limit answers)",
        started.elapsed()
    );
    let s = report.summary();
    assert_eq!((s.departments, s.with_group, s.newly_bound), (200, 20, 20));
    for (api, n) in [
        (api::DEPARTMENT_GET, 200),
        (api::DEPARTMENT_LISTSUBID, 200),
        (api::CONVERT, 20),
        (api::CHAT_GET, 20),
    ] {
        let ok = sim.calls(Some(api)).into_iter().filter(|c| c.answer == 0);
        let ok: Vec<Value> = ok.map(|c| c.body).collect();
        assert_eq!(ok.len(), n, "{api}");
        if n == 200 {
            let ids: BTreeSet<i64> = ok.iter().map(|b| b["dept_id"].as_i64().unwrap()).collect();
            assert_eq!(ids, (1..=200).collect(), "{api}");
        }
    }
    let ledger = SqliteLedger::open(
        &dir.path().join("ledger.db"),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    assert_eq!(ledger.departments().unwrap().len(), 200);
    assert_eq!(ledger.bindings().unwrap().len(), 20);
}
