//! The binary: `demo`, configuration errors, health, and a graceful stop on SIGTERM.

use std::process::Command;
use std::time::Duration;

use dingtalk_sim::chat::{CallbackSender, new_msg_id, text_message};
use dingtalk_sim::{Fault, api};
use secrecy::SecretString;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_dingops");

#[test]
fn dingops_demo_exits_zero_and_prints_the_conversation() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Summary: 23 of 23 steps behaved."), "{stdout}");
    assert_demo_buttons(&stdout);
    assert!(
        stdout.contains("✅ @manager01 Private chat is now forbidden"),
        "{stdout}"
    );
    assert!(!stdout.contains("✘"), "{stdout}");
}

#[test]
fn a_missing_app_secret_stops_serve_with_a_message_naming_the_key() {
    let out = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("DINGOPS_APP_KEY", "k")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`app_secret`") && stderr.contains("DINGOPS_APP_SECRET"),
        "{stderr}"
    );
}

#[test]
fn a_bad_value_in_the_config_file_is_named_and_the_secret_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dingops.toml");
    std::fs::write(
        &path,
        "app_key = \"k\"\napp_secret = \"sup3r-s3cret\"\nreply_hosts = 5\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "serve"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`reply_hosts`"), "{stderr}");
    assert!(!stderr.contains("sup3r-s3cret"), "{stderr}");
}

#[tokio::test]
async fn healthz_answers_200() {
    let app = spawn_app().await;
    let resp = reqwest::get(format!("{}/healthz", app.address)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn sigterm_stops_the_server_after_the_in_flight_command_finishes() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_binary(&sim, port, &dir.path().join("l.db"), &[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(port).await;

    // DingTalk is slow: the command is still running when SIGTERM arrives.
    sim.inject(api::FRIEND_SWITCH, Fault::Delay { ms: 800 });
    let chat = session_chat(&sim, GROUP);
    let sender = CallbackSender::new(&base, SecretString::from(sim.config().app_secret.clone()));
    let body = text_message(&new_msg_id(), &chat, &admin(), "/lock-dm");
    assert_eq!(sender.send(&body).await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(sim.group(GROUP).unwrap().dm_prohibited);
    assert_eq!(sim.replies().len(), 1);
    assert!(sim.replies()[0].content.starts_with("✅"));
}
