//! The policy: validation, `dingops plan` and `dingops apply` (the real binary) against the
//! simulator's groups, resumption after SIGKILL, department selectors, and `serve`'s
//! reconcile loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dingops::domain::{Binding, ChatId, Department};
use dingops::fleet::Fleet;
use dingops::ledger::SqliteLedger;
use dingops::ledger::prelude::*;
use dingtalk_sim::{Fault, SimConfig, Simulator, api};
use serde_json::Value;

use crate::helpers::*;

/// The six switches of a new simulator group are all 0: this policy wants them that way.
const ALL_ZERO: &str = r#"
[[rule]]
groups = ["*"]
mute_all = false
atall = "everyone"
join_approval = false
searchable = false
history = false
manage = "everyone"
"#;

/// A policy that differs from a new group in four switches and the DM switch.
const LOCKED_DOWN: &str = r#"
[[rule]]
groups = ["*"]
dm = "locked"
mute_all = false
atall = "owner"
join_approval = true
searchable = false
history = true
manage = "owner"
"#;

fn cid(i: usize) -> String {
    format!("cidFleet{i:04}==")
}

fn chatid(i: usize) -> String {
    format!("chatfleet{i:04}")
}

/// A simulator with `n` groups, each bound in a fresh ledger, and `policy` written beside it.
struct Fleet40 {
    sim: Arc<Simulator>,
    dir: tempfile::TempDir,
}

impl Fleet40 {
    fn new(n: usize, policy: &str) -> Self {
        let sim = new_sim(SimConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(
            &dir.path().join("ledger.db"),
            std::sync::Arc::new(dingops::clock::SystemClock),
        )
        .unwrap();
        for i in 0..n {
            sim.add_group(&cid(i), &chatid(i), &format!("Team {i}"));
            ledger
                .bind(&Binding {
                    conversation_id: cid(i),
                    chat_id: ChatId::parse(&chatid(i)).unwrap(),
                    bound_by: "test".into(),
                    bound_ms: dingops::clock::now_ms(),
                })
                .unwrap();
        }
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        Self { sim, dir }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    fn ledger(&self) -> SqliteLedger {
        SqliteLedger::open(&self.db(), std::sync::Arc::new(dingops::clock::SystemClock)).unwrap()
    }

    /// The binary with `args`, pointed at the simulator, this ledger and policy; its stdout
    /// goes to `out`.
    fn command(&self, args: &[&str], out: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dingops"));
        cmd.args(args)
            .env_clear()
            .envs(sim_env(&self.sim))
            .env("DINGOPS_DATABASE", self.db())
            .env("DINGOPS_POLICY", self.dir.path().join("policy.toml"))
            .env("DINGOPS_RETRY_BASE_MS", "20")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(std::fs::File::create(out.with_extension("err")).unwrap());
        cmd
    }

    /// Runs the binary to its end (at most two minutes): exit code, stdout, stderr.
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with(args, &[]).await
    }

    /// [`Fleet40::run`] with more environment variables.
    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = self
            .dir
            .path()
            .join(format!("out-{}.txt", dingtalk_sim::chat::new_msg_id()));
        let mut command = self.command(args, &out);
        command.envs(env.iter().copied());
        let mut child = Reaper(command.spawn().unwrap());
        let status = exit_within(&mut child.0, Duration::from_secs(120))
            .await
            .unwrap_or_else(|| panic!("dingops {args:?} did not finish"));
        let stdout = std::fs::read_to_string(&out).unwrap();
        let stderr = std::fs::read_to_string(out.with_extension("err")).unwrap();
        (status.code().unwrap_or(-1), stdout, stderr)
    }

    /// `plan --json`: the exit code and the set of (group, setting, now, wanted).
    async fn plan(&self) -> (i32, BTreeSet<(String, String, Option<i64>, i64)>, Value) {
        let (code, out, err) = self.run(&["plan", "--json"]).await;
        let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        let mut changes = BTreeSet::new();
        for g in doc["groups"].as_array().unwrap() {
            for c in g["changes"].as_array().unwrap() {
                changes.insert((
                    g["group"].as_str().unwrap().to_owned(),
                    c["setting"].as_str().unwrap().to_owned(),
                    c["now"].as_i64(),
                    c["wanted"].as_i64().unwrap(),
                ));
            }
        }
        (code, changes, doc)
    }

    /// Whether every one of the first `n` groups has `options` as wanted.
    fn converged(&self, n: usize, wanted: &[(&str, i64)]) -> bool {
        (0..n).all(|i| {
            let g = self.sim.group(&cid(i)).unwrap();
            wanted.iter().all(|(f, v)| g.options[*f] == *v)
        })
    }
}

/// The switches [`LOCKED_DOWN`] wants, by DingTalk field.
const LOCKED_DOWN_FIELDS: [(&str, i64); 6] = [
    ("chatBannedType", 0),
    ("mentionAllAuthority", 1),
    ("validationType", 1),
    ("searchable", 0),
    ("showHistoryType", 1),
    ("managementType", 1),
];

/// Successful `group/update` calls per (chatid, field).
fn writes_per_field(sim: &Simulator) -> BTreeMap<(String, String), usize> {
    let mut writes = BTreeMap::new();
    for call in sim.calls(Some(api::GROUP_UPDATE)) {
        if call.answer != 0 {
            continue;
        }
        let chat = call.body["chatid"].as_str().unwrap().to_owned();
        for field in call.body["managementOptions"].as_object().unwrap().keys() {
            *writes.entry((chat.clone(), field.clone())).or_insert(0) += 1;
        }
    }
    writes
}

fn rate_limited(sim: &Simulator) -> usize {
    sim.calls(None).iter().filter(|c| c.answer == 90018).count()
}

/// `text` with every run of whitespace as one space: table rows without their padding.
fn squeeze(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_bad_policy_is_refused_by_check_plan_and_serve_with_the_rule_and_field_named() {
    let fleet = Fleet40::new(
        1,
        "[[rule]]\ngroups = [\"*\"]\ndm = \"locked\"\n\n[[rule]]\ngroups = [\"*\"]\natall = \"boss\"\n",
    );
    let says = "rule 2, `atall`: expected \"owner\" or \"everyone\", found \"boss\"";
    let (code, out, _) = fleet.run(&["check"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "❌ policy file {}",
            fleet.dir.path().join("policy.toml").display()
        )),
        "{out}"
    );
    assert!(out.contains(says), "{out}");
    let (code, out, err) = fleet.run(&["plan"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(says), "{err}");

    let mut settings = settings_for(&fleet.sim, fleet.db());
    settings.fleet.policy = Some(fleet.dir.path().join("policy.toml"));
    let err = dingops::server::Application::build_with_listener(
        settings,
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        dingops::server::RunOptions {
            handle_signals: false,
            http_workers: 1,
        },
    )
    .await
    .err()
    .expect("serve refuses a bad policy");
    assert!(err.to_string().contains(says), "{err}");
    assert!(fleet.sim.calls(Some(api::CHAT_GET)).is_empty());
    assert!(fleet.sim.calls(Some(api::GROUP_UPDATE)).is_empty());
}

#[tokio::test]
async fn plan_on_forty_groups_lists_exactly_the_differing_settings_and_exits_2() {
    let fleet = Fleet40::new(40, ALL_ZERO);
    let mut expected = BTreeSet::new();
    for i in (0..40).step_by(5) {
        assert!(fleet.sim.set_option(&cid(i), "chatBannedType", 1));
        expected.insert((cid(i), "mute_all".to_owned(), Some(1), 0));
    }
    for i in (0..40).step_by(7) {
        assert!(fleet.sim.set_option(&cid(i), "searchable", 1));
        assert!(fleet.sim.set_option(&cid(i), "managementType", 1));
        expected.insert((cid(i), "searchable".to_owned(), Some(1), 0));
        expected.insert((cid(i), "manage".to_owned(), Some(1), 0));
    }
    let (code, changes, doc) = fleet.plan().await;
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(changes, expected);
    assert_eq!(doc["groups"].as_array().unwrap().len(), 40);
    assert_eq!(doc["summary"]["errors"], 0);

    let (code, table, _) = fleet.run(&["plan"]).await;
    assert_eq!(code, 2);
    let rows = squeeze(&table);
    assert!(rows.starts_with("group name setting now wanted\n"), "{table}");
    assert!(
        rows.contains(&format!("{} Team 0 mute_all true → false\n", cid(0))),
        "{table}"
    );
    assert!(
        rows.contains(&format!("{} Team 7 manage owner → everyone\n", cid(7))),
        "{table}"
    );
    assert_eq!(table.lines().count(), 1 + expected.len() + 1, "{table}");
    assert!(
        table.ends_with("20 changes in 12 groups; 28 groups as the policy wants; 0 errors.\n"),
        "{table}"
    );
    // Planning reads each group once per run and changes nothing. (Two runs back to back
    // are two rate budgets: a read refused for its rate at the seam is retried.)
    let reads = fleet.sim.calls(Some(api::CHAT_GET));
    assert_eq!(reads.iter().filter(|c| c.answer == 0).count(), 80);
    assert!(fleet.sim.calls(Some(api::GROUP_UPDATE)).is_empty());
}

#[tokio::test]
async fn a_group_named_with_20000_characters_gets_a_short_plan_row_and_its_whole_name_in_plan_json() {
    let fleet = Fleet40::new(2, ALL_ZERO);
    let name = format!("Huge {}", "名".repeat(19_995));
    fleet.sim.add_group(&cid(0), &chatid(0), &name);
    for i in 0..2 {
        assert!(fleet.sim.set_option(&cid(i), "chatBannedType", 1));
    }
    let (code, table, err) = fleet.run(&["plan"]).await;
    assert_eq!(code, 2, "{table}{err}");
    let rows = squeeze(&table);
    assert!(
        rows.contains(&format!(
            "{} Huge {}… mute_all true → false\n",
            cid(0),
            "名".repeat(34)
        )),
        "{table}"
    );
    assert!(
        rows.contains(&format!("{} Team 1 mute_all true → false\n", cid(1))),
        "{table}"
    );
    let widest = table.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(widest <= 100, "a row of {widest} characters: {table}");

    let (code, _, doc) = fleet.plan().await;
    assert_eq!(code, 2);
    let group = doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == cid(0).as_str())
        .unwrap();
    assert_eq!(group["name"].as_str(), Some(name.as_str()));
}

#[tokio::test]
async fn bidi_controls_in_a_group_name_are_escaped_in_the_plan_table_and_in_plan_json() {
    let fleet = Fleet40::new(1, ALL_ZERO);
    let name = "Ops \u{202e}\u{61c}fdp\u{2066}x\u{2069}";
    fleet.sim.add_group(&cid(0), &chatid(0), name);
    assert!(fleet.sim.set_option(&cid(0), "chatBannedType", 1));
    // The name's controls, written raw.
    let raw = |text: &str| text.contains(['\u{202e}', '\u{61c}', '\u{2066}', '\u{2069}']);

    let (code, table, err) = fleet.run(&["plan"]).await;
    assert_eq!(code, 2, "{table}{err}");
    assert!(!raw(&table), "{table}");
    assert!(
        squeeze(&table).contains(&format!(
            r"{} Ops \u{{202e}}\u{{61c}}fdp\u{{2066}}x\u{{2069}} mute_all true → false",
            cid(0)
        )),
        "{table}"
    );

    let (code, json, err) = fleet.run(&["plan", "--json"]).await;
    assert_eq!(code, 2, "{json}{err}");
    assert!(!raw(&json), "{json}");
    assert!(
        json.contains(r#""name":"Ops \u202e\u061cfdp\u2066x\u2069""#),
        "{json}"
    );
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["groups"][0]["name"], name);
}

#[tokio::test]
async fn a_group_that_cannot_be_read_is_an_error_row_and_the_others_are_still_listed() {
    let fleet = Fleet40::new(3, ALL_ZERO);
    assert!(fleet.sim.set_option(&cid(2), "showHistoryType", 1));
    fleet
        .ledger()
        .bind(&Binding {
            conversation_id: "cidGone==".into(),
            chat_id: ChatId::parse("chatgone").unwrap(),
            bound_by: "test".into(),
            bound_ms: 0,
        })
        .unwrap();
    let (code, table, _) = fleet.run(&["plan"]).await;
    assert_eq!(code, 1, "{table}");
    let rows = squeeze(&table);
    assert!(
        rows.contains("cidGone== - error: cannot read the group: DingTalk errcode 49000"),
        "{table}"
    );
    assert!(
        rows.contains(&format!("{} Team 2 history true → false", cid(2))),
        "{table}"
    );
    assert!(
        rows.ends_with("1 changes in 1 groups; 2 groups as the policy wants; 1 errors."),
        "{table}"
    );
}

#[tokio::test]
async fn apply_converges_forty_groups_with_one_update_per_changed_group_and_a_second_run_changes_nothing() {
    let fleet = Fleet40::new(40, LOCKED_DOWN);
    // Some groups already have some of the wanted values.
    for i in (0..40).step_by(4) {
        fleet.sim.set_option(&cid(i), "mentionAllAuthority", 1);
    }
    for i in [3, 13] {
        for (field, value) in LOCKED_DOWN_FIELDS {
            fleet.sim.set_option(&cid(i), field, value);
        }
    }
    // Paced well below DingTalk's 20/s: on a loaded machine (tests run in parallel) a call
    // can reach the simulator late and bunch up with the next second's, which no pacing
    // within 50 ms of the limit can rule out.
    let (code, out, err) = fleet
        .run_with(&["apply"], &[("DINGOPS_API_CALLS_PER_SEC", "15")])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.ends_with("40 groups: 40 changed (182 settings), 0 unchanged, 0 failed.\n"),
        "{out}"
    );
    assert!(out.contains(&format!("{}: changed dm\n", cid(3))), "{out}");
    assert!(fleet.converged(40, &LOCKED_DOWN_FIELDS));
    assert_eq!(rate_limited(&fleet.sim), 0, "no call was refused for its rate");

    // One group/update per group with switches to change, with exactly those switches.
    let updates = fleet.sim.calls(Some(api::GROUP_UPDATE));
    assert_eq!(updates.len(), 38);
    for call in &updates {
        assert_eq!(call.answer, 0);
        let chat = call.body["chatid"].as_str().unwrap();
        let i: usize = chat.trim_start_matches("chatfleet").parse().unwrap();
        let mut fields: Vec<&str> = call.body["managementOptions"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        let mut wanted = vec!["managementType", "showHistoryType", "validationType"];
        if !i.is_multiple_of(4) {
            wanted.push("mentionAllAuthority");
        }
        wanted.sort_unstable();
        assert_eq!(fields, wanted, "{chat}");
    }
    // The DM switch of every group, once.
    let dm = fleet.sim.calls(Some(api::FRIEND_SWITCH));
    assert_eq!(dm.len(), 40);
    assert!((0..40).all(|i| fleet.sim.group(&cid(i)).unwrap().dm_prohibited));

    // Every change is an audit row by `policy`, and the DM state is on record.
    let ledger = fleet.ledger();
    let rows = ledger.history(None, None, 10_000).unwrap();
    assert!(
        rows.iter()
            .all(|r| r.sender_staff_id.as_deref() == Some("policy"))
    );
    assert_eq!(rows.len(), 182);
    assert!(rows.iter().all(|r| r.result.as_deref() == Some("ok")));
    let row = rows
        .iter()
        .find(|r| r.conversation_id == cid(1) && r.text.as_deref() == Some("atall = owner"))
        .unwrap();
    assert_eq!(row.command.as_deref(), Some("policy apply"));
    assert_eq!(
        row.detail.as_deref(),
        Some("chatid chatfleet0001 mentionAllAuthority: everyone -> owner")
    );
    let state = ledger.dm_state(&cid(0)).unwrap().unwrap();
    assert!(state.prohibited);
    assert_eq!(state.set_by, "policy");

    // Nothing is left to do.
    let (code, changes, _) = fleet.plan().await;
    assert_eq!((code, changes.len()), (0, 0));
    let (code, out, _) = fleet.run(&["apply"]).await;
    assert_eq!(code, 0);
    assert!(
        out.ends_with("40 groups: 0 changed (0 settings), 40 unchanged, 0 failed.\n"),
        "{out}"
    );
    assert_eq!(fleet.sim.calls(Some(api::GROUP_UPDATE)).len(), 38);
    assert_eq!(fleet.sim.calls(Some(api::FRIEND_SWITCH)).len(), 40);
    assert_eq!(ledger.history(None, None, 10_000).unwrap().len(), 182);
}

#[tokio::test]
async fn a_dm_switch_set_longer_ago_than_dm_reapply_hours_is_planned_again() {
    let fleet = Fleet40::new(2, "[[rule]]\ngroups = [\"*\"]\ndm = \"locked\"\n");
    let ledger = fleet.ledger();
    let hour = 3_600_000;
    let now = dingops::clock::now_ms();
    for (i, prohibited, age) in [(0, true, 25 * hour), (1, true, hour)] {
        ledger
            .set_dm_state(
                &cid(i),
                &dingops::domain::DmState {
                    prohibited,
                    set_by: "admin01".into(),
                    set_by_nick: None,
                    set_ms: now - age,
                },
            )
            .unwrap();
    }
    let (code, changes, _) = fleet.plan().await;
    assert_eq!(code, 2);
    assert_eq!(changes, BTreeSet::from([(cid(0), "dm".to_owned(), Some(1), 1)]));
    ledger
        .set_dm_state(
            &cid(1),
            &dingops::domain::DmState {
                prohibited: false,
                set_by: "admin01".into(),
                set_by_nick: None,
                set_ms: now,
            },
        )
        .unwrap();
    let (_, changes, _) = fleet.plan().await;
    assert_eq!(changes.len(), 2, "{changes:?}");
}

#[tokio::test]
async fn a_kill_9_during_apply_and_a_rerun_converge_without_writing_a_readable_setting_twice() {
    let fleet = Fleet40::new(40, LOCKED_DOWN);
    // Slow group updates, so the kill lands in the middle of the run.
    for _ in 0..40 {
        fleet.sim.inject(api::GROUP_UPDATE, Fault::Delay { ms: 250 });
    }
    let out = fleet.dir.path().join("killed.txt");
    let mut first = Reaper(fleet.command(&["apply"], &out).spawn().unwrap());
    let interrupted = eventually(Duration::from_secs(60), || {
        fleet
            .sim
            .calls(Some(api::GROUP_UPDATE))
            .iter()
            .filter(|c| c.answer == 0)
            .count()
            >= 6
    })
    .await;
    assert!(interrupted, "apply made no progress");
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // A request the killed process had in flight may still be carried out by DingTalk; let
    // the simulator finish those (each waits 250 ms) before the rerun reads the groups.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = fleet.sim.calls(Some(api::GROUP_UPDATE)).len();
    assert!(
        before < 40,
        "the kill came after the run: nothing was interrupted"
    );
    assert!(!fleet.converged(40, &LOCKED_DOWN_FIELDS));

    let (code, out, err) = fleet.run(&["apply"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(fleet.converged(40, &LOCKED_DOWN_FIELDS));
    let writes = writes_per_field(&fleet.sim);
    assert_eq!(writes.len(), 40 * 4, "every differing switch was written");
    assert!(
        writes.values().all(|n| *n == 1),
        "a setting was written twice: {writes:?}"
    );
    let (code, changes, _) = fleet.plan().await;
    assert_eq!((code, changes.len()), (0, 0));
}

#[tokio::test]
async fn drift_on_one_group_shows_in_plan_for_that_group_only() {
    let fleet = Fleet40::new(40, LOCKED_DOWN);
    let (code, _, err) = fleet.run(&["apply"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(fleet.sim.set_option(&cid(17), "validationType", 0));
    let (code, changes, _) = fleet.plan().await;
    assert_eq!(code, 2);
    assert_eq!(
        changes,
        BTreeSet::from([(cid(17), "join_approval".to_owned(), Some(0), 1)])
    );
}

fn dept(id: i64, parent: Option<i64>, group: Option<usize>) -> Department {
    Department {
        dept_id: id,
        parent_id: parent,
        name: format!("Dept {id}"),
        path: format!("Org / Dept {id}"),
        chat_id: group.map(|i| ChatId::parse(&chatid(i)).unwrap()),
        open_conversation_id: group.map(cid),
    }
}

#[tokio::test]
async fn department_selectors_take_one_group_or_a_whole_subtree() {
    // 1 ─ 2 (group 0) ─ 4 (no group) ─ 5 (group 1)
    //   └ 3 (group 2) ─ 6 (group 3)
    let fleet = Fleet40::new(
        3,
        "[[rule]]\ngroups = [\"dept:2\"]\nmute_all = true\n\n[[rule]]\ngroups = [\"dept:3/*\", \"dept:4/*\"]\nsearchable = true\n",
    );
    // Group 3 is not bound: the chatid discovery stored is used.
    fleet.sim.add_group(&cid(3), &chatid(3), "Team 3");
    fleet
        .ledger()
        .replace_departments(&[
            dept(1, None, None),
            dept(2, Some(1), Some(0)),
            dept(3, Some(1), Some(2)),
            dept(4, Some(2), None),
            dept(5, Some(4), Some(1)),
            dept(6, Some(3), Some(3)),
        ])
        .unwrap();
    let mut settings = settings_for(&fleet.sim, fleet.db());
    settings.worker.groups.clear();
    settings.fleet.policy = Some(fleet.dir.path().join("policy.toml"));
    let plan = Fleet::open(
        &settings.fleet,
        &settings.dingtalk,
        &settings.ledger.database,
        &settings.worker.groups,
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .await
    .unwrap()
    .plan()
    .await
    .unwrap();
    let got: BTreeSet<(String, &str)> = plan
        .groups
        .iter()
        .flat_map(|g| {
            g.changes
                .iter()
                .map(|c| (g.conversation_id.clone(), c.setting.key()))
        })
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([
            (cid(0), "mute_all"),
            (cid(1), "searchable"),
            (cid(2), "searchable"),
            (cid(3), "searchable"),
        ])
    );
    assert!(plan.unresolved.is_empty(), "{:?}", plan.unresolved);
    assert_eq!(plan.exit_code(), 2);
}

#[tokio::test]
async fn serve_with_reconcile_every_fixes_drift_and_counts_it_by_setting() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\ngroups = [\"*\"]\natall = \"owner\"\nsearchable = false\n",
    )
    .unwrap();
    let app = spawn_app_with(Options {
        dir: Some(dir),
        settings: Some(Box::new(move |s| {
            s.worker.groups = bindings(&[(GROUP, GROUP_CHATID), (OTHER, OTHER_CHATID)]);
            s.fleet.policy = Some(policy);
            s.fleet.reconcile_every = Some(Duration::from_secs(1));
        })),
        ..Options::default()
    })
    .await;
    let owner_only = |cid: &str| app.sim.group(cid).unwrap().options["mentionAllAuthority"] == 1;
    assert!(eventually(Duration::from_secs(15), || owner_only(GROUP) && owner_only(OTHER)).await);
    // The owner of one group lets everyone @all again, behind dingops' back.
    assert!(app.sim.set_option(OTHER, "mentionAllAuthority", 0));
    assert!(eventually(Duration::from_secs(15), || owner_only(OTHER)).await);

    // The run counts the drift once its group's write is done and recorded: the metric is
    // read once that run has ended (or the deadline passed), then asserted exactly.
    let read_metrics = || async {
        reqwest::get(format!("{}/metrics", app.address))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut metrics = read_metrics().await;
    while !metrics.contains("dingops_policy_drift_total{setting=\"atall\"} 3")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = read_metrics().await;
    }
    assert!(
        metrics.contains("dingops_policy_drift_total{setting=\"atall\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dingops_policy_drift_total{setting=\"searchable\"} 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dingops_policy_runs_total{result=\"converged\"}"),
        "{metrics}"
    );
    let updates = app.sim.calls(Some(api::GROUP_UPDATE));
    assert_eq!(
        updates.iter().filter(|c| c.answer == 0).count(),
        3,
        "{updates:#?}"
    );
    let rows = app.ledger().history(Some(OTHER), None, 100).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.command.as_deref() == Some("policy reconcile"))
    );
    app.stop().await;
}

#[test]
fn the_example_policy_is_valid() {
    let policy = dingops::governance::policy::Policy::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/policy.example.toml"
    )))
    .unwrap();
    assert_eq!(policy.rules.len(), 2);
    assert_eq!(policy.rules[0].settings.len(), 7);
}

#[tokio::test]
async fn two_replicas_reconciling_one_ledger_run_the_policy_once_per_period() {
    let fleet = Fleet40::new(4, LOCKED_DOWN);
    let mut settings = settings_for(&fleet.sim, fleet.db());
    settings.fleet.policy = Some(fleet.dir.path().join("policy.toml"));
    let every = Duration::from_secs(3600);
    let reconciler = |name: &str| {
        let settings = settings.clone();
        let name = name.to_owned();
        async move {
            let f = Fleet::open(
                &settings.fleet,
                &settings.dingtalk,
                &settings.ledger.database,
                &settings.worker.groups,
                std::sync::Arc::new(dingops::clock::SystemClock),
            )
            .await
            .unwrap();
            dingops::fleet::reconcile::Reconciler::new(f, every, Arc::default(), name, true)
        }
    };
    let (a, b) = (reconciler("replica-a").await, reconciler("replica-b").await);
    let (ra, rb) = tokio::join!(a.run_once(), b.run_once());
    // Exactly one of the two ran; the other saw the period taken (or the run under way).
    assert_eq!([ra.is_some(), rb.is_some()].iter().filter(|r| **r).count(), 1);
    assert!(fleet.converged(4, &LOCKED_DOWN_FIELDS));
    let updates = fleet.sim.calls(Some(api::GROUP_UPDATE)).len();
    // Within the period neither runs again; the one that ran may go on (its next period).
    let (winner, loser) = if ra.is_some() { (&a, &b) } else { (&b, &a) };
    assert!(loser.run_once().await.is_none());
    assert!(winner.run_once().await.is_some());
    assert_eq!(fleet.sim.calls(Some(api::GROUP_UPDATE)).len(), updates);
}
