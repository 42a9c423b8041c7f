//! The metrics the alerts of deploy/prometheus/dingops.rules.yml read, on a running dingops:
//! readiness, token fetches that fail, groups drifting again, pending reverts, the quota's
//! projection (docs/operating.md, "Alerts").

use std::sync::Arc;
use std::time::{Duration, Instant};

use dingops::config::{Mode, Settings};
use dingtalk_sim::api;
use secrecy::SecretString;

use crate::helpers::*;

/// Reads `name` from `/metrics` until `want` holds or `secs` passed; the last value read.
async fn metric_until(address: &str, name: &str, secs: u64, want: impl Fn(f64) -> bool) -> Option<f64> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let value = metric_at(address, name).await;
        if value.is_some_and(&want) || Instant::now() >= end {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stream_instance_without_a_connection_exports_not_ready_and_its_mode() {
    let sim = stream_sim(1000);
    let app = spawn_app_with(Options {
        sim: Some(sim.clone()),
        settings: Some(Box::new(|s: &mut Settings| {
            s.stream.mode = Mode::Stream;
            s.dingtalk.app_secret = SecretString::from("wr0ng-s3cret-value".to_owned());
        })),
        ..Options::default()
    })
    .await;
    wait_for_calls(&sim, "a refused open", |c| {
        c.iter().any(|c| c.api == api::STREAM_OPEN && c.answer == 401)
    })
    .await;

    assert_eq!(metric_at(&app.address, "dingops_ready").await, Some(0.0));
    assert_eq!(
        metric_at(&app.address, "dingops_stream_connections").await,
        Some(0.0)
    );
    let info = format!(
        "dingops_info{{mode=\"stream\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric_at(&app.address, &info).await, Some(1.0));
    assert!(
        metric_at(
            &app.address,
            r#"dingops_stream_reconnects_total{reason="open_refused"}"#
        )
        .await
        .is_some_and(|n| n >= 1.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_token_fetch_dingtalk_refuses_counts_as_a_failed_fetch_of_its_kind() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s| s.dingtalk.app_key = "not-the-app".into())),
        ..Options::default()
    })
    .await;
    let legacy = r#"dingops_token_fetch_failures_total{kind="legacy"}"#;
    assert_eq!(metric_at(&app.address, legacy).await, Some(0.0));

    let reply = app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await;
    assert_reply(&reply, "❌", "");

    assert_eq!(metric_at(&app.address, legacy).await, Some(1.0));
    assert_eq!(
        metric_at(
            &app.address,
            r#"dingops_token_fetch_failures_total{kind="modern"}"#
        )
        .await,
        Some(0.0)
    );
    assert_eq!(
        metric_at(&app.address, r#"dingops_token_fetches_total{kind="legacy"}"#).await,
        Some(1.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_group_whose_fix_is_undone_before_every_read_drifts_until_a_read_finds_it_converged() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[rule]]\ngroups = [\"*\"]\natall = \"owner\"\n").unwrap();
    let app = spawn_app_with(Options {
        dir: Some(dir),
        settings: Some(Box::new(move |s| {
            s.worker.groups = bindings(&[(GROUP, GROUP_CHATID)]);
            s.fleet.policy = Some(policy);
            s.fleet.reconcile_every = Some(Duration::from_secs(1));
        })),
        ..Options::default()
    })
    .await;
    let gauge = "dingops_policy_groups_drifting";
    assert_eq!(metric_at(&app.address, gauge).await, Some(0.0));

    // The owner lets everyone @all again each time the reconcile fixed it, until a read
    // found it changed back twice in a row.
    let owner_only = || app.sim.group(GROUP).unwrap().options["mentionAllAuthority"] == 1;
    let end = Instant::now() + Duration::from_secs(20);
    let mut drifting = None;
    while Instant::now() < end {
        if owner_only() {
            assert!(app.sim.set_option(GROUP, "mentionAllAuthority", 0));
        }
        drifting = metric_at(&app.address, gauge).await;
        if drifting == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(drifting, Some(1.0), "the group never counted as drifting again");

    // Left alone, the next read finds the fix in place.
    let after = metric_until(&app.address, gauge, 15, |n| n == 0.0).await;
    assert_eq!(after, Some(0.0));
    assert!(owner_only());
    app.stop().await;
}

#[tokio::test]
async fn a_scheduled_revert_is_pending_and_neither_due_nor_overdue() {
    let app = spawn_app().await;
    assert_eq!(
        metric_at(&app.address, "dingops_reverts_pending").await,
        Some(0.0)
    );
    let reply = app.ask(&app.chat(GROUP), &admin(), "/mute-all 1h").await;
    assert_reply(&reply, "✅", "");

    // The scheduler sets the gauges at its next round (every second).
    let pending = metric_until(&app.address, "dingops_reverts_pending", 10, |n| n == 1.0).await;
    assert_eq!(pending, Some(1.0));
    assert_eq!(metric_at(&app.address, "dingops_reverts_due").await, Some(0.0));
    assert_eq!(
        metric_at(&app.address, "dingops_reverts_overdue").await,
        Some(0.0)
    );
    assert_eq!(
        metric_at(&app.address, r#"dingops_reverts_total{result="failed"}"#).await,
        Some(0.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn with_a_budget_the_quotas_projection_is_exported_and_at_least_the_calls_counted() {
    let app = spawn_app_with(Options {
        settings: Some(Box::new(|s: &mut Settings| {
            s.dingtalk.quota.monthly = Some(1000);
        })),
        ..Options::default()
    })
    .await;
    let reply = app.ask(&app.chat(GROUP), &admin(), "/lock-dm").await;
    assert_reply(&reply, "✅", "");

    // The quota's metrics are read from the ledger every 2 s.
    let counted = r#"dingops_quota_calls{api="friendswitch_update",class="interactive"}"#;
    assert_eq!(
        metric_until(&app.address, counted, 10, |n| n == 1.0).await,
        Some(1.0)
    );
    let projected = metric_until(&app.address, "dingops_quota_projected", 10, |n| n >= 1.0).await;
    assert!(projected.is_some_and(|n| n >= 1.0), "{projected:?}");
    assert_eq!(
        metric_at(&app.address, "dingops_quota_budget").await,
        Some(1000.0)
    );
    app.stop().await;
}
