//! Setting leases and their fence: a writer (a `dingops apply`) that lost a setting's lease
//! while its DingTalk call hung sends nothing more and records nothing, and says so; the
//! chat command that took the lease meanwhile stands, with its exception.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dingops::domain::{Binding, ChatId};
use dingops::ledger::prelude::*;
use dingtalk_sim::{Fault, api};

use crate::helpers::*;

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// The `searchable` values `im/group/update` was sent for GROUP, in order.
fn searchable_writes(sim: &dingtalk_sim::Simulator) -> Vec<(i64, i64)> {
    sim.calls(Some(api::GROUP_UPDATE))
        .iter()
        .filter(|c| c.body["chatid"] == GROUP_CHATID)
        .filter_map(|c| Some((c.body["managementOptions"]["searchable"].as_i64()?, c.answer)))
        .collect()
}

#[tokio::test]
async fn an_apply_stopped_past_its_setting_lease_does_not_send_its_retry_and_reports_the_write_abandoned() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_with(Options {
        dir: Some(dir.clone()),
        ..Options::default()
    })
    .await;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[rule]]\ngroups = [\"*\"]\nsearchable = true\n").unwrap();
    app.ledger()
        .bind(&Binding {
            conversation_id: GROUP.into(),
            chat_id: ChatId::parse(GROUP_CHATID).unwrap(),
            bound_by: "test".into(),
            bound_ms: dingops::clock::now_ms(),
        })
        .unwrap();
    assert_eq!(app.sim.group(GROUP).unwrap().options["searchable"], 0);
    // The apply's first group/update hangs: its client gives up after 2 s and retries.
    app.sim
        .inject_for_chat(api::GROUP_UPDATE, GROUP_CHATID, Fault::Hang);
    let out = dir.path().join("apply.out");
    let child = Command::new(env!("CARGO_BIN_EXE_dingops"))
        .arg("apply")
        .env_clear()
        .envs(sim_env(&app.sim))
        .env("DINGOPS_DATABASE", dir.path().join("ledger.db"))
        .env("DINGOPS_POLICY", &policy)
        .env("DINGOPS_UPSTREAM_TIMEOUT_MS", "2000")
        .env("DINGOPS_RETRY_BASE_MS", "20")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let pid = child.0.id();
    wait_for_calls(&app.sim, "the apply's hanging group/update", |calls| {
        calls.iter().any(|c| c.api == api::GROUP_UPDATE && c.answer == -3)
    })
    .await;
    // Stopped for longer than its 6 s lease; meanwhile an admin's timed command waits for the
    // lease to run out, takes it and writes.
    signal(pid, "-STOP");
    let reply = app.ask(&app.chat(GROUP), &admin(), "/searchable off 1h").await;
    assert_reply(&reply, "✅", "");
    signal(pid, "-CONT");
    let status = exit_within(&mut child.0, Duration::from_secs(60))
        .await
        .expect("the apply ends");
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(out.with_extension("err")).unwrap();
    let writes = searchable_writes(&app.sim);
    assert_eq!(
        app.sim.group(GROUP).unwrap().options["searchable"],
        0,
        "the chat command's value stands; searchable writes (value, answer): {writes:?}\n{stdout}\n{stderr}"
    );
    assert_eq!(
        writes.iter().filter(|(v, a)| *v == 1 && *a == 0).count(),
        0,
        "no write of the apply landed after it lost the lease: {writes:?}"
    );
    let ledger = app.ledger();
    let known = ledger.known_setting(GROUP, "searchable").unwrap().unwrap();
    assert_eq!((known.value, known.via.as_str()), (0, "chat"), "{known:?}");
    let pending = ledger.pending_reverts(Some(GROUP)).unwrap();
    assert_eq!(pending.len(), 1, "the exception stays in force: {pending:?}");
    assert!(
        !stdout.contains("1 changed") && stdout.contains("abandoned"),
        "the apply says it abandoned the write: {stdout}"
    );
    assert_eq!(status.code(), Some(1), "{stdout}");
}
