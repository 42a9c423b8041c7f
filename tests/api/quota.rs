//! The monthly API quota as a budget (docs/dingtalk.md, "The monthly quota"): DingTalk's
//! 90020 in chat, `apply` refused by the budget, a `serve` seeing what a CLI spent, the
//! reserve kept from background work, and replicas on PostgreSQL sharing one count.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{SchemaDatabase as _, TestSchema};
use dingops::config::Settings;
use dingops::dingtalk::DingTalk;
use dingops::domain::{Binding, ChatId};
use dingops::ledger::prelude::*;
use dingops::ledger::{LedgerHandle, SqliteLedger};
use dingops::telemetry::Metrics;
use dingtalk_sim::{SimConfig, Simulator, api};

use crate::helpers::*;

/// A policy that differs from a new simulator group in two switches.
const MUTED: &str = r#"
[[rule]]
groups = ["*"]
mute_all = true
searchable = true
"#;

fn cid(i: usize) -> String {
    format!("cidQuota{i:04}==")
}

/// `n` groups in the simulator, bound in the ledger at `db`, and `policy` beside it.
fn fleet(sim: &Simulator, dir: &std::path::Path, n: usize, policy: &str) {
    let ledger = SqliteLedger::open(
        &dir.join("ledger.db"),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    for i in 0..n {
        let chat = format!("chatquota{i:04}");
        sim.add_group(&cid(i), &chat, &format!("Team {i}"));
        ledger
            .bind(&Binding {
                conversation_id: cid(i),
                chat_id: ChatId::parse(&chat).unwrap(),
                bound_by: "test".into(),
                bound_ms: dingops::clock::now_ms(),
            })
            .unwrap();
    }
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
}

/// The environment of a CLI run on that fleet with `budget` calls a month and no reserve.
fn cli_env(
    sim: &Simulator,
    dir: &std::path::Path,
    budget: &str,
    reserve: &str,
) -> Vec<(&'static str, String)> {
    let mut env = sim.dingops_env();
    env.extend([
        ("DINGOPS_DATABASE", dir.join("ledger.db").display().to_string()),
        ("DINGOPS_POLICY", dir.join("policy.toml").display().to_string()),
        ("DINGOPS_RETRY_BASE_MS", "20".to_owned()),
        ("DINGOPS_MONTHLY_CALL_BUDGET", budget.to_owned()),
        ("DINGOPS_INTERACTIVE_RESERVE", reserve.to_owned()),
    ]);
    env
}

#[tokio::test]
async fn ninety_thousand_twenty_is_one_call_the_quota_reply_ready_and_the_metric() {
    let sim = new_sim(SimConfig::default());
    // The organisation has spent its month before dingops started.
    sim.set_quota(100, 100);
    let app = spawn_app_with(Options {
        sim: Some(sim.clone()),
        ..Options::default()
    })
    .await;
    let reply = app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await;
    assert_reply(
        &reply,
        "❌",
        "The organisation's monthly DingTalk API quota is spent",
    );
    assert!(reply.content.contains("it renews on "), "{}", reply.content);
    assert!(
        reply.content.contains("-01 00:00 Asia/Shanghai"),
        "{}",
        reply.content
    );
    // Exactly one call: no retry.
    assert_eq!(sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
    assert_eq!(
        readyz(&app.address).await,
        200,
        "inbound keeps working: still ready"
    );
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while metric_at(&app.address, "dingops_quota_exhausted").await != Some(1.0)
        && std::time::Instant::now() < end
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric_at(&app.address, "dingops_quota_exhausted").await,
        Some(1.0)
    );
    let row = app.ledger().quota_spent(&quota_month()).unwrap();
    assert!(row, "the month is marked spent in the ledger for every process");
    // The reply is a sessionWebhook post, which the quota does not count: it arrived.
    app.stop().await;
}

/// This month's key in Shanghai, as the ledger keys it.
fn quota_month() -> String {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    dingops::quota::Month::of(dingops::clock::now_ms(), &tz).key
}

#[tokio::test]
async fn apply_refused_by_the_budget_writes_nothing_and_names_the_numbers() {
    let sim = new_sim(SimConfig::default());
    let dir = tempfile::tempdir().unwrap();
    fleet(&sim, dir.path(), 6, MUTED);
    // 6 reads fit in 10, but then 6 re-reads and 6 writes do not fit in the 4 left.
    let run = dingops(&["apply"], cli_env(&sim, dir.path(), "10", "0")).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("apply refused: the changes need 12 calls (6 reads, 6 writes)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("has 4 left for background work"),
        "{}",
        run.stderr
    );
    assert!(
        sim.calls(Some(api::GROUP_UPDATE)).is_empty(),
        "nothing was written"
    );
    // plan says what it cost and what is left.
    let run = dingops(&["plan"], cli_env(&sim, dir.path(), "20", "0")).await;
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("This plan cost 6 calls"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("(budget 20, 12 used, 0 kept for interactive calls)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("8 calls are left for background work in 20"),
        "{}",
        run.stdout
    );
    // With room, apply converges.
    let run = dingops(&["apply"], cli_env(&sim, dir.path(), "40", "0")).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(sim.calls(Some(api::GROUP_UPDATE)).len(), 6);
    // And `dingops quota` reports the month from the ledger.
    let run = dingops(&["quota"], cli_env(&sim, dir.path(), "40", "0")).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("im_group_update"), "{}", run.stdout);
    assert!(
        run.stdout.contains("30 calls (0 interactive, 30 background)"),
        "{}",
        run.stdout
    );
    let run = dingops(&["quota", "--json"], cli_env(&sim, dir.path(), "40", "0")).await;
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["used"], 30);
    assert_eq!(doc["budget"], 40);
}

#[tokio::test]
async fn a_serve_shows_in_its_metrics_the_calls_a_cli_apply_made() {
    let sim = new_sim(SimConfig::default());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    fleet(&sim, dir.path(), 3, MUTED);
    let app = spawn_app_with(Options {
        sim: Some(sim.clone()),
        dir: Some(dir.clone()),
        settings: Some(Box::new(|s: &mut Settings| {
            s.dingtalk.quota.monthly = Some(1000);
        })),
        ..Options::default()
    })
    .await;
    assert_eq!(
        metric_at(&app.address, "dingops_quota_budget").await,
        Some(1000.0)
    );
    let run = dingops(&["apply"], cli_env(&sim, dir.path(), "1000", "20%")).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let reads = r#"dingops_quota_calls{api="chat_get",class="background"}"#;
    let writes = r#"dingops_quota_calls{api="im_group_update",class="background"}"#;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while metric_at(&app.address, writes).await != Some(3.0) && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric_at(&app.address, reads).await, Some(6.0));
    assert_eq!(metric_at(&app.address, writes).await, Some(3.0));
    app.stop().await;
}

#[tokio::test]
async fn background_work_never_spends_the_reserve_while_a_chat_command_still_works() {
    let sim = new_sim(SimConfig::default());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    fleet(&sim, dir.path(), 8, MUTED);
    let policy = dir.path().join("policy.toml");
    let app = spawn_app_with(Options {
        sim: Some(sim.clone()),
        dir: Some(dir.clone()),
        settings: Some(Box::new(move |s: &mut Settings| {
            s.fleet.policy = Some(policy);
            s.fleet.reconcile_every = Some(Duration::from_secs(1));
            s.dingtalk.quota.monthly = Some(10);
            s.dingtalk.quota.reserve = dingops::quota::Reserve::Calls(5);
        })),
        ..Options::default()
    })
    .await;
    let skipped = r#"dingops_reconcile_skipped_total{reason="budget"}"#;
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while metric_at(&app.address, skipped).await.unwrap_or(0.0) < 1.0 && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        metric_at(&app.address, skipped).await.unwrap_or(0.0) >= 1.0,
        "a later run is skipped"
    );
    let background = sim.calls(Some(api::CHAT_GET)).len() + sim.calls(Some(api::GROUP_UPDATE)).len();
    assert_eq!(background, 5, "reconcile stops at the budget less the reserve");
    let reply = app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await;
    assert_reply(&reply, "✅", "");
    assert_eq!(sim.calls(Some(api::FRIEND_SWITCH)).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_on_postgres_share_one_months_count() {
    let sim = new_sim(SimConfig::default());
    let Some(schema) = TestSchema::or_skip() else {
        return;
    };
    let mut settings = sim_settings(&sim).unwrap();
    settings.dingtalk.quota.monthly = Some(7);
    settings.dingtalk.quota.reserve = dingops::quota::Reserve::Calls(0);
    let clients: Vec<Arc<DingTalk>> = (0..2)
        .map(|_| {
            let ledger = LedgerHandle::shared(
                dingops::ledger::open_blocking(
                    &schema.database(),
                    std::sync::Arc::new(dingops::clock::SystemClock),
                )
                .unwrap(),
            );
            Arc::new(
                DingTalk::with_budget(
                    &settings.dingtalk,
                    Arc::new(Metrics::new()),
                    ledger,
                    std::sync::Arc::new(dingops::clock::SystemClock),
                )
                .unwrap(),
            )
        })
        .collect();
    let chat = ChatId::parse(GROUP_CHATID).unwrap();
    let runs = clients.iter().map(|c| {
        let (c, chat) = (c.clone(), chat.clone());
        tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..6 {
                if c.set_friend_switch(&chat, true).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        })
    });
    let mut made = 0;
    for r in runs {
        made += r.await.unwrap();
    }
    assert_eq!(
        made, 7,
        "the two replicas together made the month's budget, no more"
    );
    assert_eq!(sim.calls(Some(api::FRIEND_SWITCH)).len(), 7);
    let usage = clients[1].quota_usage().await.unwrap();
    assert_eq!(usage.used(), 7);
}

/// DingTalk's month is China time (UTC+8) whatever `timezone` says: with
/// `timezone = "America/Los_Angeles"` and the clock 30 s after midnight in Beijing on
/// December 1st (still the morning of November 30th in Los Angeles), November's spent
/// budget is behind and December's is whole; the renewal is shown in Los Angeles time.
#[tokio::test]
async fn the_quota_renews_at_midnight_china_time_whatever_the_timezone_it_is_shown_in() {
    use dingops::clock::ManualClock;
    use dingops::quota::{Class, Reserve};

    let sim = new_sim(SimConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(
        &dir.path().join("ledger.db"),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    // November (China time) spent to the budget by background reads.
    for _ in 0..4 {
        assert!(
            ledger
                .take_quota("2026-11", "chat_get", dingops::quota::Class::Background, None)
                .unwrap()
                .taken
        );
    }
    let mut settings = sim_settings(&sim).unwrap();
    settings.dingtalk.timezone = jiff::tz::TimeZone::get("America/Los_Angeles").unwrap();
    settings.dingtalk.quota.monthly = Some(4);
    settings.dingtalk.quota.reserve = Reserve::Calls(0);
    // Pacing reads the ledger's wall clock, which this test does not move: off.
    settings.dingtalk.api_calls_per_sec = 0;
    // 2026-12-01 00:00:30 in Beijing is 2026-11-30 08:00:30 in Los Angeles.
    let midnight_beijing: u64 = 1_796_054_400_000;
    let clock = ManualClock::at(midnight_beijing + 30_000);
    let client = DingTalk::with_budget(
        &settings.dingtalk,
        Arc::new(Metrics::new()),
        LedgerHandle::new(ledger),
        clock.clone(),
    )
    .unwrap();
    let background = client.for_class(Class::Background);

    let usage = client.quota_usage().await.unwrap();
    assert_eq!(usage.month.key, "2026-12", "the quota has renewed");
    assert_eq!(usage.month.starts_ms, midnight_beijing);
    assert_eq!(usage.used(), 0);
    assert_eq!(
        dingops::cli::quota::apply_fits(2, 2, &usage),
        Ok(()),
        "apply may spend the new month"
    );
    assert_eq!(
        dingops::dingtalk::quota::renews_text(&usage.month, client.quota_timezone()),
        "on 2026-12-31 08:00 America/Los_Angeles",
        "midnight of January 1st in Beijing, shown in Los Angeles time"
    );
    let chat = ChatId::parse(GROUP_CHATID).unwrap();
    background.chat_get(&chat).await.unwrap();
    assert_eq!(client.quota_usage().await.unwrap().used(), 1);

    // A minute earlier it was still November in Beijing too: spent.
    clock.set(midnight_beijing - 30_000);
    let refused = background.chat_get(&chat).await;
    assert!(
        matches!(refused, Err(dingops::dingtalk::ApiError::Quota(_))),
        "{refused:?}"
    );
    assert_eq!(sim.calls(Some(api::CHAT_GET)).len(), 1);
}

/// The sum of the ledger's counts of `month`.
fn counted(db: &std::path::Path, month: &str) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    let calls: i64 = conn
        .query_row(
            "SELECT coalesce(sum(calls), 0) FROM quota_calls WHERE month = ?1",
            [month],
            |r| r.get(0),
        )
        .unwrap();
    u64::try_from(calls).unwrap()
}

/// The ledger cannot count calls while its file is moved away (every write fails, nothing
/// is committed). A chat command's call still goes, counted in the process; a background
/// call is not made uncounted. Once the ledger answers again, the calls counted in the
/// process are written to it, once: its month then counts exactly the calls made.
#[tokio::test]
async fn calls_made_while_the_ledger_could_not_count_them_are_written_to_it_once_it_returns() {
    use dingops::quota::{Class, Reserve};

    let sim = new_sim(SimConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let mut settings = sim_settings(&sim).unwrap();
    settings.dingtalk.quota.monthly = Some(100);
    settings.dingtalk.quota.reserve = Reserve::Calls(0);
    settings.dingtalk.retry_base_ms = 20;
    // How long a background call waits for the ledger before it is refused.
    settings.dingtalk.retry_deadline_ms = 1000;
    let ledger =
        LedgerHandle::new(SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock)).unwrap());
    let client = DingTalk::with_budget(
        &settings.dingtalk,
        Arc::new(Metrics::new()),
        ledger,
        std::sync::Arc::new(dingops::clock::SystemClock),
    )
    .unwrap();
    let background = client.for_class(Class::Background);
    let month = client.quota_month().key;
    let chat = ChatId::parse(GROUP_CHATID).unwrap();
    let made = || sim.calls(Some(api::FRIEND_SWITCH)).len() + sim.calls(Some(api::CHAT_GET)).len();

    client.set_friend_switch(&chat, true).await.unwrap();
    background.chat_get(&chat).await.unwrap();
    assert_eq!(counted(&db, &month), 2);

    let away = dir.path().join("ledger.db.away");
    std::fs::rename(&db, &away).unwrap();
    for prohibit in [false, true, false] {
        client.set_friend_switch(&chat, prohibit).await.unwrap();
    }
    let refused = background.chat_get(&chat).await;
    assert!(
        refused.is_err(),
        "a background call was made that the ledger could not count: {refused:?}"
    );
    assert_eq!(sim.calls(Some(api::CHAT_GET)).len(), 1, "nothing sent uncounted");
    assert_eq!(made(), 5);
    std::fs::rename(&away, &db).unwrap();
    assert_eq!(
        counted(&db, &month),
        2,
        "the ledger counted nothing while it was away"
    );

    // The ledger answers again: the next call is counted there, and the three counted in the
    // process follow it.
    background.chat_get(&chat).await.unwrap();
    assert_eq!(made(), 6);
    let exact = eventually(Duration::from_secs(10), || counted(&db, &month) == 6).await;
    assert!(exact, "the ledger counts {} of 6 calls", counted(&db, &month));
    // Once only: later calls add one each.
    client.set_friend_switch(&chat, true).await.unwrap();
    background.chat_get(&chat).await.unwrap();
    assert_eq!(made(), 8);
    let usage = client.quota_usage().await.unwrap();
    assert_eq!(usage.used(), 8, "{:?}", usage.counts);
    assert_eq!(usage.used_by(Class::Interactive), 5, "{:?}", usage.counts);
    assert_eq!(usage.used_by(Class::Background), 3, "{:?}", usage.counts);
}
