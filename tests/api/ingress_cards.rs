//! The two ways a card click comes in, as far as the ingresses decide: `POST /card-callback`
//! (signed with `card_callback_secret`, bounded like `/callback`) and the card topic on the
//! Stream connections. Hostile or broken clicks get a clear answer and change nothing; what
//! a valid click does is tests/api/cards.rs's.

use std::sync::Arc;
use std::time::Duration;

use dingops::config::{Mode, Settings};
use dingops::dingtalk::{CardCallback, CardSend, DingTalk};
use dingops::ingress::card_callback::card_signature;
use dingtalk_sim::{CardPress, Simulator};
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::*;

const TEMPLATE: &str = "dingops-test.schema";
const CARD_SECRET: &str = "card-callback-secret";

fn cards_on(s: &mut Settings) {
    s.cards.template_id = Some(TEMPLATE.into());
    s.cards.callback_secret = Some(SecretString::from(CARD_SECRET.to_owned()));
}

async fn card_app() -> TestApp {
    spawn_app_with(Options {
        settings: Some(Box::new(cards_on)),
        ..Options::default()
    })
    .await
}

/// A click as DingTalk sends it.
fn click_body() -> Vec<u8> {
    click_on("dingops-card-1", "admin01", "undo")
}

/// The body DingTalk sends when `user` presses `action` on the card `out_track_id`.
fn click_on(out_track_id: &str, user: &str, action: &str) -> Vec<u8> {
    let content = json!({"cardPrivateData": {"actionIds": [action], "params": {"action": action}}});
    json!({
        "type": "actionCallback",
        "outTrackId": out_track_id,
        "corpId": "dingcorp",
        "userId": user,
        "userIdType": 1,
        "spaceType": "IM_GROUP",
        "spaceId": GROUP,
        "extension": "{}",
        "content": content.to_string(),
    })
    .to_string()
    .into_bytes()
}

/// The signature headers DingTalk sends at `timestamp_ms`.
fn signed_at(timestamp_ms: u64) -> Vec<(&'static str, String)> {
    let ts = timestamp_ms.to_string();
    let sig = card_signature(&SecretString::from(CARD_SECRET.to_owned()), &ts);
    vec![
        ("x-ddpaas-signature-timestamp", ts),
        ("x-ddpaas-signature", sig),
        ("content-type", "application/json".into()),
    ]
}

fn signed_now() -> Vec<(&'static str, String)> {
    signed_at(dingops::clock::now_ms())
}

/// Posts raw parts to `/card-callback`; the status and body.
async fn post(app: &TestApp, headers: &[(&str, String)], body: Vec<u8>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/card-callback", app.address))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Nothing reached DingTalk and nothing entered the ledger.
async fn assert_nothing_happened(app: &TestApp) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.sim.calls(None).is_empty(), "{:?}", app.sim.calls(None));
    assert_eq!(app.ledger_rows(), 0);
}

#[tokio::test]
async fn a_card_callback_signed_with_another_secret_is_refused_with_401() {
    let app = card_app().await;
    let ts = dingops::clock::now_ms().to_string();
    let forged = card_signature(&SecretString::from("not-the-secret".to_owned()), &ts);
    let headers = [
        ("x-ddpaas-signature-timestamp", ts),
        ("x-ddpaas-signature", forged),
    ];
    let (status, body) = post(&app, &headers, click_body()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        json!("mismatch signature (x-ddpaas-signature-timestamp, x-ddpaas-signature)")
    );
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn a_card_callback_without_both_signature_headers_is_refused_with_401() {
    let app = card_app().await;
    let full = signed_now();
    for keep in [
        "x-ddpaas-signature-timestamp",
        "x-ddpaas-signature",
        "content-type",
    ] {
        let headers: Vec<_> = full.iter().filter(|(k, _)| *k == keep).cloned().collect();
        assert_eq!(post(&app, &headers, click_body()).await.0, 401, "only {keep}");
    }
    // The robot callback's headers are not the card callback's.
    let (ts, sign) = app.sender.signed_headers();
    let robot = [("timestamp", ts), ("sign", sign)];
    assert_eq!(post(&app, &robot, click_body()).await.0, 401);
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn a_stale_card_callback_is_refused_with_401() {
    let app = card_app().await;
    let window_ms = 3_600_000;
    for at in [
        dingops::clock::now_ms() - window_ms - 60_000,
        dingops::clock::now_ms() + window_ms + 60_000,
    ] {
        let (status, body) = post(&app, &signed_at(at), click_body()).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("stale"), "{body}");
    }
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn an_oversized_card_callback_is_refused_with_413() {
    let app = card_app().await;
    let mut body = click_body();
    body.resize(64 * 1024 + 1, b' ');
    assert_eq!(post(&app, &signed_now(), body).await.0, 413);
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn a_malformed_card_callback_is_refused_with_400() {
    let app = card_app().await;
    let without_action = json!({
        "outTrackId": "dingops-card-1",
        "userId": "admin01",
        "content": "{\"cardPrivateData\":{\"actionIds\":[]}}",
    });
    let without_card = json!({"userId": "admin01", "content": {"cardPrivateData": {"actionIds": ["undo"]}}});
    for (body, says) in [
        (b"not json".to_vec(), "not the expected JSON"),
        (without_action.to_string().into_bytes(), "without `action`"),
        (without_card.to_string().into_bytes(), "without `outTrackId`"),
        (vec![0xff, 0xfe], "not the expected JSON"),
    ] {
        let (status, text) = post(&app, &signed_now(), body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text}");
    }
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn without_a_card_template_card_callback_is_not_served() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s: &mut Settings| {
            s.cards.callback_secret = Some(SecretString::from(CARD_SECRET.to_owned()));
        })),
        ..Options::default()
    })
    .await;
    assert_eq!(post(&app, &signed_now(), click_body()).await.0, 404);
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn in_stream_mode_card_callback_is_not_served() {
    let sim = stream_sim(1000);
    let app = spawn_stream_app(sim, Mode::Stream, 1, cards_on).await;
    assert_eq!(post(&app, &signed_now(), click_body()).await.0, 404);
}

/// A card the robot posted in GROUP, created through dingops' client; its outTrackId.
async fn sim_card(sim: &Simulator, callback: CardCallback) -> String {
    let settings = sim_settings(sim).unwrap();
    let dingtalk = DingTalk::new(
        &settings.dingtalk,
        Arc::new(dingops::telemetry::Metrics::new()),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    let out_track_id = format!("dingops-test-{}", dingtalk_sim::chat::new_msg_id());
    dingtalk
        .create_card(&CardSend {
            template_id: TEMPLATE.into(),
            out_track_id: out_track_id.clone(),
            conversation_id: GROUP.into(),
            callback,
            params: [
                ("title", "t"),
                ("body", "b"),
                ("status", "done"),
                ("buttons", "[\"undo\"]"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            private: Default::default(),
        })
        .await
        .unwrap();
    out_track_id
}

#[tokio::test]
async fn with_cards_on_a_stream_connection_takes_card_clicks_and_acks_a_broken_one_400() {
    let sim = stream_sim(1000);
    let app = spawn_stream_app(sim.clone(), Mode::Stream, 1, cards_on).await;
    let card = sim_card(&sim, CardCallback::Stream).await;
    let rows_before = app.ledger_rows();
    // A press without an action id: the click cannot be read.
    let outcome = sim
        .press_card(&CardPress::new(&card, "admin01", ""))
        .await
        .unwrap();
    assert!(outcome.delivered, "the card topic is not subscribed: {outcome:?}");
    assert_eq!(outcome.status, Some(400), "{outcome:?}");
    assert_eq!(outcome.response, None);
    assert!(!outcome.applied);
    assert_eq!(app.ledger_rows(), rows_before);
    let metrics = reqwest::get(format!("{}/metrics", app.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "dingops_stream_frames_total{topic=\"/v1.0/card/instances/callback\",type=\"CALLBACK\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_a_card_template_the_card_topic_is_not_subscribed() {
    let sim = stream_sim(1000);
    let app = spawn_stream_app(sim.clone(), Mode::Stream, 1, |_| {}).await;
    let card = sim_card(&sim, CardCallback::Stream).await;
    let outcome = sim
        .press_card(&CardPress::new(&card, "admin01", "undo"))
        .await
        .unwrap();
    assert!(!outcome.delivered, "{outcome:?}");
    assert_eq!(app.ledger_rows(), 0);
}

#[tokio::test]
async fn an_http_click_with_a_forged_signature_from_dingtalk_is_refused_with_401() {
    let app = card_app().await;
    let settings = sim_settings(&app.sim).unwrap();
    let dingtalk = DingTalk::new(
        &settings.dingtalk,
        Arc::new(dingops::telemetry::Metrics::new()),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    dingtalk
        .register_card_callback(
            &format!("{}/card-callback", app.address),
            "dingops",
            &SecretString::from(CARD_SECRET.to_owned()),
            false,
        )
        .await
        .unwrap();
    let card = sim_card(
        &app.sim,
        CardCallback::Http {
            route_key: "dingops".into(),
        },
    )
    .await;
    let mut press = CardPress::new(&card, "admin01", "undo");
    press.signature = Some(card_signature(
        &SecretString::from("forged".to_owned()),
        &dingops::clock::now_ms().to_string(),
    ));
    let outcome = app.sim.press_card(&press).await.unwrap();
    assert_eq!(outcome.status, Some(401), "{outcome:?}");
    assert!(!outcome.applied);
    assert_eq!(app.ledger_rows(), 0);
}

#[tokio::test]
async fn a_signed_card_callback_whose_body_stalls_gets_408_and_its_connection_is_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s: &mut Settings| {
            cards_on(s);
            s.server.request_timeout_ms = 300;
        })),
        ..Options::default()
    })
    .await;
    let headers: String = signed_now()
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let port = app.address.rsplit(':').next().unwrap();
    let mut conn = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let head = format!(
        "POST /card-callback HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}content-length: 1000\r\n\r\n{{\"outTrackId\":"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the stalled card callback was not closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_nothing_happened(&app).await;
}

/// The environment of `dingops check` against `sim` with cards on, its ledger in `dir`.
fn check_env(sim: &Simulator, dir: &std::path::Path, secret: bool) -> Vec<(&'static str, String)> {
    let mut env = sim_env(sim);
    env.extend([
        ("DINGOPS_ADMINS", "admin01".into()),
        ("DINGOPS_DATABASE", dir.join("l.db").display().to_string()),
        ("DINGOPS_CARD_TEMPLATE_ID", TEMPLATE.into()),
    ]);
    if secret {
        env.push(("DINGOPS_CARD_CALLBACK_SECRET", CARD_SECRET.into()));
    } else {
        env.push(("DINGOPS_MODE", "stream".into()));
    }
    env
}

#[tokio::test]
async fn check_registers_the_card_callback_and_moves_it_only_with_force() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let first = "https://ops.example.com/card-callback";
    let run = dingops(
        &["check", "--register-card-callback", first],
        check_env(&sim, dir.path(), true),
    )
    .await;
    let out = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "✅ registered card callback address {first} for route key `dingops`"
        )),
        "{out}"
    );
    assert!(out.contains("note: sent forceUpdate: false"), "{out}");
    assert!(
        out.contains(&format!("✅ interactive cards on: template {TEMPLATE}")),
        "{out}"
    );
    assert!(!out.contains(CARD_SECRET), "{out}");
    let routes = |sim: &Simulator| -> Vec<(String, String)> {
        sim.card_callbacks()
            .into_iter()
            .map(|r| (r.callback_route_key, r.callback_url))
            .collect()
    };
    assert_eq!(routes(&sim), [("dingops".to_owned(), first.to_owned())]);

    // Another URL for the same key is refused without --force, and the fix says so.
    let second = "https://ops2.example.com/card-callback";
    let run = dingops(
        &["check", "--register-card-callback", second],
        check_env(&sim, dir.path(), true),
    )
    .await;
    let out = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, Some(1), "{out}");
    assert!(
        out.contains(&format!("❌ registering card callback address {second}")),
        "{out}"
    );
    assert!(out.contains("fix: that card_callback_route_key is registered to another URL; run `dingops check --register-card-callback <URL> --force`"), "{out}");
    assert_eq!(routes(&sim), [("dingops".to_owned(), first.to_owned())]);

    let run = dingops(
        &["check", "--register-card-callback", second, "--force"],
        check_env(&sim, dir.path(), true),
    )
    .await;
    let out = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, Some(0), "{out}");
    assert!(out.contains("note: --force sent forceUpdate: true"), "{out}");
    assert_eq!(routes(&sim), [("dingops".to_owned(), second.to_owned())]);
    assert!(!out.contains(CARD_SECRET), "{out}");
}

#[tokio::test]
async fn registering_a_card_callback_without_the_secret_names_the_key_and_calls_nothing() {
    let sim = new_sim(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let run = dingops(
        &[
            "check",
            "--register-card-callback",
            "https://ops.example.com/card-callback",
        ],
        check_env(&sim, dir.path(), false),
    )
    .await;
    let out = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, Some(1), "{out}");
    assert!(
        out.contains("card_callback_secret is not set") && out.contains("fix: set `card_callback_secret`"),
        "{out}"
    );
    assert!(sim.card_callbacks().is_empty());
    // In stream mode the card topic is subscribed, and check says so.
    assert!(
        out.contains("clicks come over Stream (card topic /v1.0/card/instances/callback subscribed)"),
        "{out}"
    );
    // --force means nothing alone.
    let run = dingops(&["check", "--force"], check_env(&sim, dir.path(), false)).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
}

#[tokio::test]
async fn a_card_callback_older_than_the_card_window_but_within_the_robot_window_is_refused_with_401() {
    let app = card_app().await;
    // Two minutes: inside `signature_window_secs` (an hour), outside the card window (60 s).
    for at in [
        dingops::clock::now_ms() - 120_000,
        dingops::clock::now_ms() + 120_000,
    ] {
        let (status, body) = post(&app, &signed_at(at), click_body()).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("stale"), "{body}");
    }
    assert_nothing_happened(&app).await;
}

/// The ops group of the two-person rule.
const OPS: &str = OTHER;

/// An app with cards, two admins, OTHER as the ops group and a policy that unmutes every
/// group; GROUP is muted, so a plan has one change to make.
async fn ops_card_app() -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[rule]]\ngroups = [\"*\"]\nmute_all = false\n",
    )
    .unwrap();
    let app = ops_card_app_on(None, dir).await;
    assert!(app.sim.set_option(GROUP, "chatBannedType", 1));
    app
}

/// [`ops_card_app`]'s app on `sim` (else a new one) and the ledger and policy in `dir`.
async fn ops_card_app_on(sim: Option<Arc<Simulator>>, dir: Arc<tempfile::TempDir>) -> TestApp {
    let policy = dir.path().join("policy.toml");
    spawn_app_with(Options {
        dir: Some(dir),
        sim,
        settings: Some(Box::new(move |s: &mut Settings| {
            cards_on(s);
            s.cards.ops_group = Some(OPS.into());
            s.fleet.policy = Some(policy);
            s.worker.admins = vec!["admin01".into(), "admin02".into()];
            s.worker.groups = bindings(&[(GROUP, GROUP_CHATID), (OTHER, OTHER_CHATID)]);
        })),
        ..Options::default()
    })
    .await
}

/// The card `who` gets in `cid` for `text`.
async fn card_for(
    app: &TestApp,
    cid: &str,
    who: &dingtalk_sim::chat::Member,
    text: &str,
) -> dingtalk_sim::SimCard {
    let before = app.sim.cards().len();
    assert_eq!(app.say(&app.chat(cid), who, text).await.0, 200);
    let cards = app.sim.wait_for_cards(before + 1, Duration::from_secs(10)).await;
    assert_eq!(cards.len(), before + 1, "one card for {text}");
    cards.into_iter().rfind(|c| c.conversation_id == cid).unwrap()
}

/// The card's status once it is `status` (waits up to 10 s).
async fn card_becomes(app: &TestApp, id: &str, status: &str) {
    let ok = eventually(Duration::from_secs(10), || {
        app.sim
            .card(id)
            .is_some_and(|c| c.params.get("status").map(String::as_str) == Some(status))
    })
    .await;
    assert!(ok, "card {id} never became {status}: {:#?}", app.sim.card(id));
}

fn notice_in(body: &str) -> String {
    let answer: serde_json::Value = serde_json::from_str(body).unwrap();
    answer["userPrivateData"]["cardParamMap"]["notice"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

#[tokio::test]
async fn a_captured_signature_pair_replayed_with_another_body_is_a_duplicate_and_runs_nothing() {
    let app = ops_card_app().await;
    let ada = admin();
    let setting = card_for(&app, GROUP, &ada, "/lock-dm").await;
    let plan = card_for(&app, OPS, &ada, "/plan").await;
    assert_eq!(plan.params["status"], "pending_approval");
    let now = dingops::clock::now_ms();

    // Ada's Undo on her setting card, entered and run: its header pair is captured.
    let entered = signed_at(now);
    let (status, body) = post(&app, &entered, click_on(&setting.out_track_id, "admin01", "undo")).await;
    assert_eq!(status, 200, "{body}");
    card_becomes(&app, &setting.out_track_id, "undone").await;
    // Ada's Approve of her own plan, refused by the two-person rule: captured too.
    let refused = signed_at(now + 1);
    let (status, body) = post(&app, &refused, click_on(&plan.out_track_id, "admin01", "approve")).await;
    assert_eq!(status, 200, "{body}");
    assert!(notice_in(&body).contains("needs a second admin"), "{body}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (updates, rows) = (
        app.sim.calls(Some(dingtalk_sim::api::GROUP_UPDATE)).len(),
        app.ledger_rows(),
    );
    // Each captured pair with a forged body: the second admin approves the plan.
    for pair in [&entered, &refused] {
        let (status, body) = post(&app, pair, click_on(&plan.out_track_id, "admin02", "approve")).await;
        assert_eq!(status, 200, "answered as a duplicate: {body}");
        assert_eq!(notice_in(&body), "", "{body}");
    }
    assert_the_plan_was_not_applied(&app, updates, rows).await;
    assert_eq!(
        app.sim.card(&plan.out_track_id).unwrap().params["status"],
        "pending_approval"
    );

    // The second admin's own click (its own pair) still approves it.
    let (status, body) = post(
        &app,
        &signed_at(now + 2),
        click_on(&plan.out_track_id, "admin02", "approve"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let applied = eventually(Duration::from_secs(10), || {
        app.sim.group(GROUP).unwrap().options["chatBannedType"] == 0
    })
    .await;
    assert!(applied, "{:#?}", app.sim.card(&plan.out_track_id));
}

#[tokio::test]
async fn a_captured_pair_of_an_entered_click_is_still_a_duplicate_after_a_restart() {
    let app = ops_card_app().await;
    let ada = admin();
    let setting = card_for(&app, GROUP, &ada, "/lock-dm").await;
    let plan = card_for(&app, OPS, &ada, "/plan").await;
    let entered = signed_at(dingops::clock::now_ms());
    let (status, body) = post(&app, &entered, click_on(&setting.out_track_id, "admin01", "undo")).await;
    assert_eq!(status, 200, "{body}");
    card_becomes(&app, &setting.out_track_id, "undone").await;

    // A new process knows the pair from the ledger alone.
    let (sim, dir) = app.stop().await;
    let app = ops_card_app_on(Some(sim), dir).await;
    let (updates, rows) = (
        app.sim.calls(Some(dingtalk_sim::api::GROUP_UPDATE)).len(),
        app.ledger_rows(),
    );
    let (status, body) = post(&app, &entered, click_on(&plan.out_track_id, "admin02", "approve")).await;
    assert_eq!(status, 200, "answered as a duplicate: {body}");
    assert_eq!(notice_in(&body), "", "{body}");
    assert_the_plan_was_not_applied(&app, updates, rows).await;
}

/// After a replayed Approve: half a second on, the group is still muted, DingTalk got no
/// more writes than `updates` and the ledger holds no more than `rows`.
async fn assert_the_plan_was_not_applied(app: &TestApp, updates: usize, rows: usize) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.sim.group(GROUP).unwrap().options["chatBannedType"],
        1,
        "the plan was not applied"
    );
    assert_eq!(
        app.sim.calls(Some(dingtalk_sim::api::GROUP_UPDATE)).len(),
        updates
    );
    assert_eq!(app.ledger_rows(), rows, "nothing was entered");
}
