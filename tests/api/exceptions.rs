//! The governance core where its callers meet: a policy and people's chat commands
//! (refusals, exceptions and their ends), reconcile beside exceptions, `apply` beside a
//! command, the policy read again on SIGHUP, and timed commands without a policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dingtalk_sim::chat::{CallbackSender, new_msg_id, text_message};
use dingtalk_sim::{Fault, api};
use secrecy::SecretString;

use crate::helpers::*;

/// The policy of the scenarios: unmuted, only the owner may @all, searchable.
const POLICY: &str = "[[rule]]\ngroups = [\"*\"]\nmute_all = false\natall = \"owner\"\nsearchable = true\n";

fn write_policy(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The group's value of a `managementOptions` field in the simulator.
fn option(app: &TestApp, field: &str) -> i64 {
    app.sim.group(GROUP).unwrap().options[field]
}

#[tokio::test]
async fn reconcile_every_second_leaves_two_exceptions_alone_fixes_drift_beside_them_and_their_ends_restore_the_policy()
 {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let policy = write_policy(&dir, POLICY);
    let app = spawn_app_with(Options {
        dir: Some(dir),
        settings: Some(Box::new(move |s| {
            s.fleet.policy = Some(policy);
            s.fleet.reconcile_every = Some(Duration::from_secs(1));
            // One minute of a timed command lasts a second.
            s.worker.revert_minute = Duration::from_millis(1000);
        })),
        ..Options::default()
    })
    .await;
    let chat = app.chat(GROUP);
    assert!(eventually(Duration::from_secs(15), || option(&app, "searchable") == 1).await);

    // Without a duration, another value than the policy's is refused, naming the rule.
    let refused = app.ask(&chat, &admin(), "/mute-all").await;
    assert_reply(&refused, "⛔", "rule 1");
    assert_reply(&refused, "⛔", "`/mute-all 2h`");
    assert_eq!(option(&app, "chatBannedType"), 0, "nothing was sent");

    // With one, it is an exception; so is the second.
    let muted = app.ask(&chat, &admin(), "/mute-all 8m").await;
    assert_reply(&muted, "✅", "to the policy's value");
    let hidden = app.ask(&chat, &admin(), "/searchable off 8m").await;
    assert_reply(&hidden, "✅", "It reverts at");
    assert_eq!(
        (option(&app, "chatBannedType"), option(&app, "searchable")),
        (1, 0)
    );

    // Drift in the same group: the owner lets everyone @all. Reconcile fixes that and
    // leaves the exceptions as they are.
    assert!(app.sim.set_option(GROUP, "mentionAllAuthority", 0));
    assert!(
        eventually(Duration::from_secs(5), || option(&app, "mentionAllAuthority")
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (option(&app, "chatBannedType"), option(&app, "searchable")),
        (1, 0)
    );

    let status = app.ask(&chat, &admin(), "/group-status").await;
    assert_reply(&status, "ℹ️", "exception until");
    assert!(
        status
            .content
            .contains("Who may @all: only the owner (policy rule 1"),
        "{}",
        status.content
    );
    assert_eq!(
        status.content.matches("exception until").count(),
        2,
        "{}",
        status.content
    );

    // Their ends restore the policy's values, and say so.
    let end = group_message(&app, "Whole-group mute back to", 20)
        .await
        .expect("the mute exception's end");
    assert!(
        end.content.contains("the policy's value (rule 1)"),
        "{}",
        end.content
    );
    assert!(eventually(Duration::from_secs(10), || option(&app, "searchable") == 1).await);
    assert_eq!(option(&app, "chatBannedType"), 0);
    // Reconcile never wrote over an exception: every group/update that set the two
    // switches away from the commands' values came from the ends of the exceptions.
    let updates = app.sim.calls(Some(api::GROUP_UPDATE));
    let unmutes = updates
        .iter()
        .filter(|c| c.body["managementOptions"]["chatBannedType"] == 0)
        .count();
    assert_eq!(unmutes, 1, "{updates:#?}");
    app.stop().await;
}

#[tokio::test]
async fn with_the_policy_muting_a_timed_mute_of_a_muted_group_ends_muted() {
    // The second audit's F3: the end used to set the opposite of the command.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let policy = write_policy(&dir, "[[rule]]\ngroups = [\"*\"]\nmute_all = true\n");
    let app = spawn_app_with(Options {
        dir: Some(dir),
        settings: Some(Box::new(move |s| {
            s.fleet.policy = Some(policy);
            s.worker.revert_minute = Duration::from_millis(1000);
        })),
        ..Options::default()
    })
    .await;
    assert!(app.sim.set_option(GROUP, "chatBannedType", 1));
    let chat = app.chat(GROUP);
    let reply = app.ask(&chat, &admin(), "/mute-all 1m").await;
    assert_reply(&reply, "✅", "to the policy's value");
    let end = group_message(&app, "Timed revert", 20).await.expect("the end");
    assert!(end.content.starts_with("✅"), "{}", end.content);
    assert!(end.content.contains("back to on"), "{}", end.content);
    let updates = app.sim.calls(Some(api::GROUP_UPDATE));
    assert_eq!(updates.len(), 2, "{updates:#?}");
    assert_eq!(updates[1].body["managementOptions"]["chatBannedType"], 1);
    assert_eq!(
        option(&app, "chatBannedType"),
        1,
        "the group stays muted, as the policy wants"
    );
    app.stop().await;
}

#[tokio::test]
async fn without_a_policy_a_timed_command_ends_on_the_value_before_it() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s| s.worker.revert_minute = Duration::from_millis(1000))),
        ..Options::default()
    })
    .await;
    let chat = app.chat(GROUP);
    // Already off: turning it off for a minute ends off, not on.
    let reply = app.ask(&chat, &admin(), "/join-approval off 1m").await;
    assert_reply(&reply, "✅", "as it was before");
    let end = group_message(&app, "Timed revert", 20).await.expect("the end");
    assert!(
        end.content.contains("as it was before the command"),
        "{}",
        end.content
    );
    let updates = app.sim.calls(Some(api::GROUP_UPDATE));
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1].body["managementOptions"]["validationType"], 0);

    // A command that changes nothing dingops knows of says so.
    let again = app.ask(&chat, &admin(), "/join-approval off").await;
    assert_reply(&again, "✅", "so nothing changed");
    app.stop().await;
}

#[tokio::test]
async fn an_apply_whose_read_is_slow_leaves_an_exception_made_meanwhile_and_plan_lists_it() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let policy = write_policy(&dir, "[[rule]]\ngroups = [\"*\"]\nmute_all = false\n");
    let policy_path = policy.clone();
    let app = spawn_app_with(Options {
        dir: Some(dir.clone()),
        settings: Some(Box::new(move |s| {
            s.fleet.policy = Some(policy);
            s.worker.revert_minute = Duration::from_millis(1000);
        })),
        ..Options::default()
    })
    .await;
    // The group is muted behind dingops' back: apply plans to unmute it, but reads slowly.
    assert!(app.sim.set_option(GROUP, "chatBannedType", 1));
    app.sim.inject(api::CHAT_GET, Fault::Delay { ms: 3000 });
    let mut env = sim_env(&app.sim);
    env.push((
        "DINGOPS_DATABASE",
        dir.path().join("ledger.db").display().to_string(),
    ));
    env.push(("DINGOPS_POLICY", policy_path.display().to_string()));
    env.push(("DINGOPS_GROUPS", format!("{GROUP}={GROUP_CHATID}")));
    let apply = tokio::spawn(dingops(&["apply"], env.clone()));
    // Meanwhile an admin mutes it for a while: an exception.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let reply = app.ask(&app.chat(GROUP), &admin(), "/mute-all 30m").await;
    assert_reply(&reply, "✅", "");
    let run = apply.await.unwrap();
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(option(&app, "chatBannedType"), 1, "the exception stands");
    assert!(
        app.sim
            .calls(Some(api::GROUP_UPDATE))
            .iter()
            .all(|c| c.body["managementOptions"]["chatBannedType"] == 1),
        "apply wrote over the exception"
    );

    let plan = dingops(&["plan"], env.clone()).await;
    assert_eq!(plan.code, Some(0), "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("held by an exception until"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("1 settings held by exceptions"),
        "{}",
        plan.stdout
    );
    let json = dingops(&["plan", "--json"], env).await;
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["summary"]["exceptions"], 1, "{v}");
    assert_eq!(v["summary"]["changes"], 0, "{v}");
    assert_eq!(v["groups"][0]["exceptions"][0]["setting"], "mute_all");
    assert_eq!(v["groups"][0]["exceptions"][0]["command"], "/mute-all 30m");
    app.stop().await;
}

#[tokio::test]
async fn sighup_keeps_the_policy_when_the_new_file_is_invalid_and_an_exception_ends_on_the_reloaded_value() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(&dir, "[[rule]]\ngroups = [\"*\"]\nsearchable = false\n");
    let sim = new_sim(Default::default());
    let port = free_port();
    let log = dir.path().join("serve.log");
    let child = Reaper(spawn_binary_logging_to(
        &sim,
        port,
        &dir.path().join("ledger.db"),
        &[
            ("DINGOPS_POLICY", policy.display().to_string()),
            ("DINGOPS_ADMIN_COMMANDS_PER_MINUTE", "0".to_owned()),
        ],
        std::fs::File::create(&log).unwrap().into(),
    ));
    wait_healthy(port).await;
    let address = format!("http://127.0.0.1:{port}");
    let sender = CallbackSender::new(&address, SecretString::from(sim.config().app_secret.clone()));
    let chat = session_chat(&sim, GROUP);
    let say = |text: &str| text_message(&new_msg_id(), &chat, &admin(), text);

    // An exception to `searchable = false`, ending in a (real) minute.
    assert_eq!(sender.send(&say("/searchable on 1m")).await.unwrap().0, 200);
    assert!(eventually(Duration::from_secs(10), || sim.replies().len() == 1).await);
    assert!(
        sim.replies()[0].content.contains("to the policy's value, off"),
        "{:?}",
        sim.replies()
    );

    // An invalid file on SIGHUP: refused, counted, serve goes on with the old policy.
    std::fs::write(
        &policy,
        "[[rule]]\ngroups = [\"*\"]\nsearchable = \"sometimes\"\n",
    )
    .unwrap();
    let hup = |pid: u32| {
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        )
    };
    hup(child.0.id());
    let counted = || async { metric_at(&address, "dingops_policy_reload_errors_total").await == Some(1.0) };
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !counted().await {
        assert!(
            tokio::time::Instant::now() < end,
            "the refused reload was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(readyz(&address).await, 200, "serve keeps running");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("rule 1, `searchable`"), "{logged}");
    let untimed = text_message(&new_msg_id(), &chat, &admin(), "/searchable on");
    assert_eq!(sender.send(&untimed).await.unwrap().0, 200);
    assert!(eventually(Duration::from_secs(10), || sim.replies().len() == 2).await);
    assert!(
        sim.replies()[1].content.starts_with("⛔"),
        "the old policy is in force: {:?}",
        sim.replies()
    );

    // A valid new policy: the exception's end lands on its value.
    std::fs::write(&policy, "[[rule]]\ngroups = [\"*\"]\nsearchable = true\n").unwrap();
    hup(child.0.id());
    let ended = eventually(Duration::from_secs(90), || {
        sim.replies()
            .iter()
            .any(|r| r.via == "group-message" && r.content.contains("Timed revert"))
    })
    .await;
    assert!(ended, "{:#?}", sim.replies());
    let updates = sim.calls(Some(api::GROUP_UPDATE));
    assert_eq!(
        updates.last().unwrap().body["managementOptions"]["searchable"],
        1,
        "{updates:#?}"
    );
    assert_eq!(sim.group(GROUP).unwrap().options["searchable"], 1);
    drop(child);
}
