//! Policy runs: one at a time on the ledger (the `policy` lease) whoever starts them (`dingops
//! apply`, reconcile, the two-person `/apply`), each within the month's background share,
//! and each writing only while the policy it applies is the one in force for the
//! organisation (a `serve` that reloads a new policy stops a running `dingops apply`).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dingops::domain::{Binding, ChatId};
use dingops::ledger::prelude::*;
use dingtalk_sim::chat::Member;
use dingtalk_sim::{SimConfig, api};

use crate::helpers::*;

fn second_admin() -> Member {
    Member::new("admin02", "Bo", false)
}

/// The ops group of the two-person rule.
const OPS: &str = OTHER;

/// An app (text replies) with a policy that unmutes every group, OTHER as the ops group,
/// GROUP drifted from the policy.
async fn ops_app(tweak: impl FnOnce(&mut dingops::config::Settings) + 'static) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[rule]]\ngroups = [\"*\"]\nmute_all = false\n").unwrap();
    let app = spawn_app_with(Options {
        dir: Some(dir),
        settings: Some(Box::new(move |s| {
            s.cards.ops_group = Some(OPS.into());
            s.fleet.policy = Some(policy);
            s.worker.admins = vec!["admin01".into(), "admin02".into()];
            s.worker.groups = bindings(&[(GROUP, GROUP_CHATID), (OTHER, OTHER_CHATID)]);
            tweak(s);
        })),
        ..Options::default()
    })
    .await;
    assert!(app.sim.set_option(GROUP, "chatBannedType", 1));
    app
}

/// The code in a plan's text.
fn code_in(text: &str) -> String {
    let start = text.find("/apply ").expect("the plan names its code") + "/apply ".len();
    text[start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

fn muted(app: &TestApp) -> i64 {
    app.sim.group(GROUP).unwrap().options["chatBannedType"]
}

#[tokio::test]
async fn a_two_person_apply_while_another_policy_run_holds_the_lease_is_refused_saying_so_and_changes_nothing()
 {
    let app = ops_app(|_| {}).await;
    let plan = app.ask(&app.chat(OPS), &admin(), "/plan").await;
    let code = code_in(&plan.content);
    // A `dingops apply` (or another replica's reconcile) is running.
    assert!(
        app.ledger()
            .try_lease("policy", "apply-elsewhere", 600_000)
            .unwrap()
    );
    let applied = app
        .ask(&app.chat(OPS), &second_admin(), &format!("/apply {code}"))
        .await;
    assert_reply(&applied, "❌", "another policy run");
    assert_eq!(muted(&app), 1, "nothing applied beside the other run");
    assert!(app.sim.calls(Some(api::GROUP_UPDATE)).is_empty());
}

#[tokio::test]
async fn a_two_person_apply_waits_for_a_policy_run_that_ends_within_seconds_then_applies() {
    let app = ops_app(|_| {}).await;
    let plan = app.ask(&app.chat(OPS), &admin(), "/plan").await;
    let code = code_in(&plan.content);
    let ledger = app.ledger();
    assert!(ledger.try_lease("policy", "apply-elsewhere", 600_000).unwrap());
    // The other run ends a second later.
    let ends = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ledger.release_lease("policy", "apply-elsewhere").unwrap();
    });
    let applied = app
        .ask(&app.chat(OPS), &second_admin(), &format!("/apply {code}"))
        .await;
    ends.await.unwrap();
    assert_reply(&applied, "✅", "Approved by Bo (admin02)");
    assert_eq!(muted(&app), 0, "applied once the other run ended");
}

#[tokio::test]
async fn a_two_person_apply_that_does_not_fit_the_background_share_is_refused_naming_the_numbers() {
    let app = ops_app(|s| {
        s.dingtalk.quota.monthly = Some(5);
        s.dingtalk.quota.reserve = dingops::quota::Reserve::Calls(0);
    })
    .await;
    // The plan reads the two groups: 3 calls of the month are left, and the apply needs
    // 2 reads, then 1 read and 1 write of the group that changes.
    let plan = app.ask(&app.chat(OPS), &admin(), "/plan").await;
    let code = code_in(&plan.content);
    let applied = app
        .ask(&app.chat(OPS), &second_admin(), &format!("/apply {code}"))
        .await;
    assert_reply(
        &applied,
        "❌",
        "apply refused: the changes need 2 calls (1 reads, 1 writes)",
    );
    assert!(
        applied.content.contains("1 left for background work"),
        "{}",
        applied.content
    );
    assert_eq!(muted(&app), 1, "nothing applied");
    assert!(app.sim.calls(Some(api::GROUP_UPDATE)).is_empty());
}

fn cid(i: usize) -> String {
    format!("cidRun{i:04}==")
}

fn chatid(i: usize) -> String {
    format!("chatrun{i:04}")
}

#[tokio::test]
async fn a_running_apply_writes_nothing_of_the_old_policy_once_serve_reloaded_a_new_one() {
    let sim = new_sim(SimConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let ledger =
        dingops::ledger::SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap();
    let n = 12;
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
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[rule]]\ngroups = [\"*\"]\nsearchable = true\n").unwrap();
    // `serve` on the same ledger and policy file.
    let port = free_port();
    let log = dir.path().join("serve.log");
    let serve = Reaper(spawn_binary_logging_to(
        &sim,
        port,
        &db,
        &[("DINGOPS_POLICY", policy.display().to_string())],
        std::fs::File::create(&log).unwrap().into(),
    ));
    wait_healthy(port).await;
    // A `dingops apply` paced at two writes a second.
    let out = dir.path().join("apply.out");
    let child = Command::new(env!("CARGO_BIN_EXE_dingops"))
        .arg("apply")
        .env_clear()
        .envs(sim_env(&sim))
        .env("DINGOPS_DATABASE", &db)
        .env("DINGOPS_POLICY", &policy)
        .env("DINGOPS_API_CALLS_PER_SEC", "2")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let old_writes = |sim: &dingtalk_sim::Simulator, after_ms: u64| {
        sim.calls(Some(api::GROUP_UPDATE))
            .iter()
            .filter(|c| c.at_ms > after_ms && c.body["managementOptions"]["searchable"] == 1)
            .count()
    };
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while old_writes(&sim, 0) < 2 {
        assert!(std::time::Instant::now() < end, "the apply did not start writing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The operator changes the policy and reloads `serve`.
    std::fs::write(&policy, "[[rule]]\ngroups = [\"*\"]\nsearchable = false\n").unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &serve.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap().contains("policy reloaded") {
        assert!(std::time::Instant::now() < end, "serve did not reload");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reloaded_ms = dingops::clock::now_ms();
    let before = old_writes(&sim, 0);
    let status = exit_within(&mut child.0, Duration::from_secs(60))
        .await
        .expect("the apply ends");
    let stdout = std::fs::read_to_string(&out).unwrap();
    // A write already sent when serve reloaded may land just after; none starts later.
    let late = old_writes(&sim, reloaded_ms + 1000);
    assert_eq!(
        late, 0,
        "{late} writes of the old policy after the reload ({before} before it; {} groups)\n{stdout}",
        n
    );
    assert!(stdout.contains("policy in force changed"), "{stdout}");
    assert_eq!(status.code(), Some(1), "{stdout}");
}
