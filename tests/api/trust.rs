//! What dingops trusts: the payload's isAdmin claim, where replies may go, and
//! configurations that would silently drop every reply (found by the hardening audit).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dingtalk_sim::api;
use dingtalk_sim::chat::{CallbackSender, Member, new_msg_id, text_message};
use serde_json::Value;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_dingops");

/// The audit's replay: a member's `timestamp`/`sign` pair reused at once with another body,
/// another sender and `isAdmin: true`. The signature covers only the timestamp, so the body
/// is accepted; what must hold is that the claim makes nobody an admin under the defaults.
#[tokio::test]
async fn a_replayed_header_pair_claiming_is_admin_cannot_run_an_admin_command_by_default() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The real binary with nothing about trust_is_admin configured: the default decides.
    let mut child = spawn_binary(&sim, port, &dir.path().join("l.db"), &[]);
    wait_healthy(port).await;
    let sender = CallbackSender::new(
        &format!("http://127.0.0.1:{port}"),
        sim.config().app_secret.clone().into(),
    );
    let chat = session_chat(&sim, GROUP);
    let (ts, sign) = sender.signed_headers();
    let genuine = text_message(&new_msg_id(), &chat, &member(), "/dm-status");
    let sent = sender
        .send_raw(genuine.to_string().into_bytes(), Some(&ts), Some(&sign))
        .await
        .unwrap();
    assert_eq!(sent.0, 200);
    let forged = text_message(
        &new_msg_id(),
        &chat,
        &Member::new("intruder9", "IT Support", true),
        "/lock-dm",
    );
    let replayed = sender
        .send_raw(forged.to_string().into_bytes(), Some(&ts), Some(&sign))
        .await
        .unwrap();
    assert_eq!(
        replayed.0, 200,
        "the pair is inside its window, so the body is taken"
    );
    let replies = sim.wait_for_replies(2, Duration::from_secs(10)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(replies.len(), 2, "{replies:#?}");
    let refusal = replies
        .iter()
        .find(|r| r.content.contains("intruder9") || r.at_user_ids.iter().any(|u| u == "intruder9"))
        .expect("the forged command is answered");
    assert_reply(refusal, "⛔", "admin");
    assert!(
        sim.calls(Some(api::FRIEND_SWITCH)).is_empty(),
        "the forged /lock-dm reached DingTalk"
    );
    assert!(!sim.group(GROUP).unwrap().dm_prohibited);
}

/// Runs `dingops serve` with app credentials plus `extra` until it exits (or
/// 10 s pass); returns whether it succeeded and its stderr.
fn serve_until_exit(extra: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("DINGOPS_APP_KEY", "k")
        .env("DINGOPS_APP_SECRET", "s")
        .env("DINGOPS_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("DINGOPS_ADMINS", "admin01")
        .env("DINGOPS_DATABASE", dir.path().join("l.db"))
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("serve kept running: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_empty_reply_hosts_list_stops_serve_instead_of_dropping_every_reply() {
    for empty in ["", " , "] {
        let (ok, stderr) = serve_until_exit(&[("DINGOPS_REPLY_HOSTS", empty)]);
        assert!(!ok, "serve started with reply_hosts={empty:?}");
        assert!(
            stderr.contains("`reply_hosts`") && stderr.contains("at least one host"),
            "{stderr}"
        );
    }
}

#[test]
fn an_empty_reply_hosts_list_in_the_config_file_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dingops.toml");
    std::fs::write(&path, "app_key = \"k\"\napp_secret = \"s\"\nreply_hosts = []\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "check"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    // `check` prints its checklist, the configuration item included, on stdout.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("`reply_hosts`") && stdout.contains("at least one host"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_session_webhook_on_an_allowed_host_but_another_path_is_never_called() {
    let app = spawn_app().await;
    let base = app.sim.url().trim_end_matches('/').to_owned();
    for url in [
        format!("{base}/topapi/chat/member/friendswitch/update?chatid={GROUP_CHATID}"),
        format!("{base}/robot/sendBySession/../../gettoken?session=x"),
        format!("{base}/robot/send?access_token=x"),
        format!("{base}/robot/sendBySession2?session=x"),
    ] {
        let chat = chat_with_webhook(GROUP, url.clone());
        let (status, msg_id) = app.say(&chat, &member(), "/help").await;
        assert_eq!(status, 200);
        let row = app.finished_row(&msg_id).await;
        assert_eq!(row.reply.as_deref(), Some("none-host-not-allowed"), "{url}");
    }
    // /help calls no API, so any call the simulator saw was a reply sent where it must not go.
    let calls: Vec<Value> = app
        .sim
        .calls(None)
        .into_iter()
        .map(|c| serde_json::json!({"api": c.api, "body": c.body}))
        .collect();
    assert!(calls.is_empty(), "{calls:#?}");
    assert!(app.sim.replies().is_empty());
}
