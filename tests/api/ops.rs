//! Operating dingops: probes, metrics, logs without secrets, and the operators' CLI tools.

use std::process::Command;
use std::time::Duration;

use dingops::config::Settings;
use dingtalk_sim::chat::Member;
use dingtalk_sim::{Fault, api};
use serde_json::Value;

use crate::helpers::*;

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn readyz_is_200_with_a_usable_ledger_and_503_when_its_file_is_gone() {
    let app = spawn_app().await;
    assert_eq!(get(&format!("{}/readyz", app.address)).await.0, 200);
    let db = app.dir.path().join("ledger.db");
    std::fs::remove_file(&db).unwrap();
    let (status, body) = get(&format!("{}/readyz", app.address)).await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains(app.dir.path().to_str().unwrap()), "{body}");
    // Liveness is unaffected: restarting would not help the volume.
    assert_eq!(get(&format!("{}/healthz", app.address)).await.0, 200);
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_accepted_duplicate_and_rejected_callbacks_and_what_followed() {
    let app = spawn_app().await;
    let body = dingtalk_sim::chat::text_message(
        &dingtalk_sim::chat::new_msg_id(),
        &app.chat(GROUP),
        &admin(),
        "/lock-dm",
    );
    assert_eq!(app.post_signed(&body).await.0, 200);
    assert_eq!(app.post_signed(&body).await.0, 200);
    let (ts, _) = app.sender.signed_headers();
    let forged = app
        .sender
        .send_raw(
            body.to_string().into_bytes(),
            Some(&ts),
            Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        )
        .await
        .unwrap();
    assert_eq!(forged.0, 401);
    app.replies(1).await;
    let (status, text) = get(&format!("{}/metrics", app.address)).await;
    assert_eq!(status, 200);
    let m = |s: &str| metric(&text, s);
    assert_eq!(
        m(r#"dingops_callbacks_total{outcome="accepted",reason="-"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m(r#"dingops_callbacks_total{outcome="duplicate",reason="-"}"#),
        Some(1.0)
    );
    assert_eq!(
        m(r#"dingops_callbacks_total{outcome="rejected",reason="signature_mismatch"}"#),
        Some(1.0)
    );
    assert_eq!(
        m(r#"dingops_commands_total{command="/lock-dm",result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        m(r#"dingops_dingtalk_calls_total{api="friendswitch_update",errcode="0"}"#),
        Some(1.0)
    );
    assert_eq!(m(r#"dingops_token_fetches_total{kind="legacy"}"#), Some(1.0));
    assert_eq!(m(r#"dingops_replies_total{via="session"}"#), Some(1.0));
    assert_eq!(m("dingops_callback_ack_seconds_count"), Some(3.0));
    assert_eq!(m("dingops_command_seconds_count"), Some(1.0));
    assert_eq!(
        m(r#"dingops_dingtalk_call_seconds_count{api="friendswitch_update"}"#),
        Some(1.0)
    );
    assert_eq!(m("dingops_open_commands"), Some(0.0));
}

#[tokio::test]
async fn logs_at_trace_level_never_contain_the_secret_tokens_or_session_webhooks() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let port = free_port();
    let mut env: Vec<(&str, String)> = vec![
        (
            "DINGOPS_GROUPS",
            format!("{GROUP}={GROUP_CHATID},{STALE}={STALE_CHATID}"),
        ),
        ("DINGOPS_UPSTREAM_TIMEOUT_MS", "500".into()),
        ("RUST_LOG", "trace".into()),
    ];
    let db = dir.path().join("l.db");
    for format in ["json", "pretty"] {
        env.push(("DINGOPS_LOG_FORMAT", format.into()));
        let log_file = std::fs::File::create(&log_path).unwrap();
        let mut child = spawn_binary_logging_to(&sim, port, &db, &env, log_file.into());
        wait_healthy(port).await;
        let sender = dingtalk_sim::chat::CallbackSender::new(
            &format!("http://127.0.0.1:{port}"),
            sim.config().app_secret.clone().into(),
        );
        let mut webhooks = Vec::new();
        // Each step waits for its reply (or, when none can come, a moment) before the next.
        let mut say = async |cid: &str, text: &str, replies: bool| {
            let before = sim.replies().len();
            let chat = session_chat(&sim, cid);
            webhooks.push(chat.session_webhook.clone());
            let body =
                dingtalk_sim::chat::text_message(&dingtalk_sim::chat::new_msg_id(), &chat, &admin(), text);
            sender.send(&body).await.unwrap();
            if replies {
                let got = sim.wait_for_replies(before + 1, Duration::from_secs(10)).await;
                assert!(got.len() > before, "no reply to {text}");
            } else {
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        };
        // Success, token revocation, upstream errors, timeouts, reply failures and fallbacks.
        say(OTHER, &format!("/bind {OTHER_CHATID}"), true).await;
        say(GROUP, "/lock-dm", true).await;
        sim.revoke_tokens();
        say(GROUP, "/unlock-dm", true).await;
        sim.inject(api::FRIEND_SWITCH, Fault::Hang);
        say(GROUP, "/lock-dm", true).await;
        say(STALE, "/lock-dm", true).await;
        sim.inject(api::SEND_BY_SESSION, Fault::Errcode { errcode: 310000 });
        say(GROUP, "/help", false).await;
        sim.inject(api::SEND_BY_SESSION, Fault::Drop);
        say(GROUP, "/help", false).await;
        sim.expire_sessions();
        say(GROUP, "/dm-status", true).await;
        let rogue = format!(
            "https://evil.example/robot/sendBySession?session={}",
            "f".repeat(32)
        );
        let bad = serde_json::json!({"msgId": "m", "sessionWebhook": rogue});
        sender.send(&bad).await.unwrap();
        webhooks.push(rogue);
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();

        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(
            log.lines().count() > 50,
            "trace logging produced too little to prove anything:\n{log}"
        );
        assert!(!log.contains(&sim.config().app_secret), "the app secret leaked");
        let tokens = sim.issued_tokens();
        assert!(tokens.len() >= 3, "{tokens:?}");
        for t in tokens {
            assert!(!log.contains(&t), "token {t} leaked in {format} logs");
        }
        for w in &webhooks {
            let session = w.rsplit('=').next().unwrap();
            assert!(
                !log.contains(session),
                "session {session} leaked in {format} logs"
            );
        }
    }
}

fn check_env(sim: &dingtalk_sim::Simulator, dir: &std::path::Path) -> Vec<(&'static str, String)> {
    let mut env = sim_env(sim);
    env.extend([
        ("DINGOPS_ADMINS", "admin01".into()),
        ("DINGOPS_GROUPS", format!("{GROUP}={GROUP_CHATID}")),
        ("DINGOPS_DATABASE", dir.join("l.db").display().to_string()),
    ]);
    env
}

/// Whether the binary with `args` succeeded, and its stdout then stderr.
async fn run_bin(args: &[&str], env: Vec<(&'static str, String)>) -> (bool, String) {
    let run = dingops(args, env).await;
    (run.code == Some(0), format!("{}{}", run.stdout, run.stderr))
}

#[tokio::test]
async fn check_against_the_simulator_passes_every_item() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = run_bin(&["check"], check_env(&sim, dir.path())).await;
    assert!(ok, "{out}");
    assert!(!out.contains("❌"), "{out}");
    assert!(out.contains("✅ legacy access token"), "{out}");
    assert!(out.contains("✅ new access token"), "{out}");
    assert!(
        out.contains(&format!("✅ binding {GROUP} → {GROUP_CHATID}")),
        "{out}"
    );
    assert!(out.contains("All checks passed."), "{out}");
}

#[tokio::test]
async fn check_with_a_wrong_secret_fails_names_the_fix_and_exits_non_zero() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let mut env = check_env(&sim, dir.path());
    env.retain(|(k, _)| *k != "DINGOPS_APP_SECRET");
    env.push(("DINGOPS_APP_SECRET", "a-wrong-secret".into()));
    env.push(("DINGOPS_GROUPS", format!("{GROUP}={OTHER_CHATID}")));
    let (ok, out) = run_bin(&["check"], env).await;
    assert!(!ok, "{out}");
    assert!(out.contains("❌ legacy access token"), "{out}");
    assert!(out.contains("check app_key and app_secret"), "{out}");
    assert!(!out.contains("a-wrong-secret"), "{out}");
}

#[tokio::test]
async fn check_names_a_static_binding_that_points_at_another_group() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let mut env = check_env(&sim, dir.path());
    env.push(("DINGOPS_GROUPS", format!("{GROUP}={OTHER_CHATID}")));
    let (ok, out) = run_bin(&["check"], env).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("❌ binding {GROUP} → {OTHER_CHATID}: DingTalk says")),
        "{out}"
    );
}

#[tokio::test]
async fn send_delivers_a_signed_callback_and_prints_the_status() {
    let app = spawn_app().await;
    let (webhook, _) = app.sim.open_session(GROUP, Duration::from_secs(600));
    let env = vec![
        ("DINGOPS_APP_KEY", "any".to_owned()),
        ("DINGOPS_APP_SECRET", app.secret.clone()),
    ];
    let args = [
        "send",
        "--url",
        &app.address,
        "--text",
        "/lock-dm",
        "--sender",
        "admin01",
        "--group",
        GROUP,
        "--session-webhook",
        &webhook,
    ];
    let (ok, out) = run_bin(&args, env).await;
    assert!(ok, "{out}");
    assert!(out.starts_with("HTTP 200"), "{out}");
    let reply = app.replies(1).await.pop().unwrap();
    assert_reply(&reply, "✅ @admin01", "");
    assert!(app.sim.group(GROUP).unwrap().dm_prohibited);
}

#[tokio::test]
async fn send_with_the_wrong_secret_prints_401_and_fails() {
    let app = spawn_app().await;
    let env = vec![
        ("DINGOPS_APP_KEY", "any".to_owned()),
        ("DINGOPS_APP_SECRET", "nope".to_owned()),
    ];
    let (ok, out) = run_bin(&["send", "--url", &app.address, "--text", "/help"], env).await;
    assert!(!ok);
    assert!(out.starts_with("HTTP 401"), "{out}");
}

#[tokio::test]
async fn audit_lists_who_ran_what_where_and_the_result() {
    let app = spawn_app().await;
    app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await;
    app.ask(&app.chat(GROUP), &member(), "/unlock-dm").await;
    app.ask(&app.chat(STALE), &admin(), "/lock-dm").await;
    let db = app.dir.path().join("ledger.db").display().to_string();
    let env = || vec![("DINGOPS_DATABASE", db.clone())];

    let (ok, table) = run_bin(&["audit"], env()).await;
    assert!(ok, "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("time (UTC)"), "{table}");
    assert!(lines[1].contains(GROUP) && lines[1].contains("Ada (admin01)") && lines[1].contains("/lock-dm"));
    assert!(
        lines[1].contains(" ok ") && lines[1].ends_with("session"),
        "{table}"
    );
    assert!(
        lines[2].contains("Max (member01)") && lines[2].contains("refused"),
        "{table}"
    );
    assert!(
        lines[3].contains(STALE) && lines[3].contains("failed") && lines[3].contains("34001"),
        "{table}"
    );

    let (ok, json) = run_bin(&["audit", "--json", "--group", STALE, "--since", "1h"], env()).await;
    assert!(ok, "{json}");
    let rows: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!(rows[0]["errcode"], 34001);
    assert_eq!(rows[0]["command"], "/lock-dm");
    assert_eq!(rows[0]["sender_staff_id"], "admin01");

    let (ok, future) = run_bin(&["audit", "--since", "2999-01-01T00:00:00Z"], env()).await;
    assert!(ok);
    assert_eq!(future.lines().count(), 1, "{future}");
}

#[tokio::test]
async fn audit_needs_no_credentials_but_refuses_a_configuration_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    dingops::ledger::open(
        &dingops::config::Database::Sqlite(db.clone()),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .await
    .unwrap();
    let env = || vec![("DINGOPS_DATABASE", db.display().to_string())];
    // Only the ledger's keys are read: no app_key or app_secret needed.
    let (ok, out) = run_bin(&["audit"], env()).await;
    assert!(ok, "{out}");
    assert!(out.starts_with("time (UTC)"), "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "app_secert = \"s\"\n").unwrap();
    let run = dingops(&["--config", bad.to_str().unwrap(), "audit"], env()).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stderr);
    assert!(run.stderr.contains("unknown key `app_secert`"), "{}", run.stderr);
    let run = dingops(&["audit"], vec![("DINGOPS_DATABASE", "mysql://h/db".into())]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("`database` (env DINGOPS_DATABASE)"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_example_configuration_loads_and_documents_every_key() {
    let text = include_str!("../../deploy/dingops.example.toml");
    let s = Settings::from_sources(Some(text), &Default::default()).unwrap();
    assert_eq!(s.worker.admins, vec!["manager01"]);
    assert_eq!(s.worker.groups.len(), 1);
    let reference = include_str!("../../docs/configuration.md");
    for key in Settings::known_keys() {
        let documented = text.contains(&format!("\n{key} =")) || text.contains(&format!("\n[{key}]"));
        assert!(documented, "deploy/dingops.example.toml lacks `{key}`");
        assert!(
            reference.contains(&format!("| `{key}` |")),
            "docs/configuration.md's configuration table lacks `{key}`"
        );
    }
}

#[test]
fn the_dockerfile_copies_every_directory_the_manifest_builds_from() {
    // No Docker engine runs in CI, so this guards the one mistake cargo would report inside
    // `docker build`: a target the manifest declares but the image lacks.
    let dockerfile = include_str!("../../deploy/Dockerfile");
    let manifest = include_str!("../../Cargo.toml");
    assert!(dockerfile.contains("COPY Cargo.toml Cargo.lock ./"));
    assert!(dockerfile.contains("COPY src ./src"));
    if manifest.contains("[[bench]]") {
        assert!(
            dockerfile.contains("COPY benches ./benches"),
            "Cargo.toml declares benches"
        );
    }
}

#[tokio::test]
async fn audit_prints_terminal_escapes_from_a_nick_as_text_not_as_commands() {
    let app = spawn_app().await;
    let forger = Member::new(
        "member07",
        "\u{1b}[2J\u{1b}[H\u{9b}0mroot (admin1)\u{202e}",
        false,
    );
    app.ask(&app.chat(GROUP), &forger, "/lock-dm").await;
    let db = app.dir.path().join("ledger.db").display().to_string();
    let env = || vec![("DINGOPS_DATABASE", db.clone())];

    let (ok, table) = run_bin(&["audit"], env()).await;
    assert!(ok, "{table}");
    let raw = |c: char| (c.is_control() && c != '\n') || c == '\u{202e}';
    assert!(!table.chars().any(raw), "raw control characters in {table:?}");
    assert!(
        table.contains("\\u{1b}[2J\\u{1b}[H\\u{9b}0mroot (admin1)\\u{202e} (member07)"),
        "{table}"
    );

    let (ok, json) = run_bin(&["audit", "--json"], env()).await;
    assert!(ok, "{json}");
    assert!(!json.chars().any(raw), "raw control characters in {json:?}");
    let row: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        row["sender_nick"],
        forger.nick.as_str(),
        "the JSON still carries the real nick"
    );
}
