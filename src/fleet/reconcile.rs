//! `serve`'s reconcile loop: every `reconcile_every`, plan and apply the policy, count the
//! drift it found by setting and log it per group.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::plan::{ApplyReport, Fleet, GroupApplied};
use super::policy::Setting;
use crate::telemetry::Metrics;

/// Plans and applies the policy periodically, one run at a time.
pub struct Reconciler {
    fleet: Fleet,
    every: Duration,
    metrics: Arc<Metrics>,
    running: AtomicBool,
}

/// The right to run one reconcile; released when dropped.
pub struct RunPermit<'a>(&'a AtomicBool);

impl Drop for RunPermit<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Reconciler {
    pub fn new(fleet: Fleet, every: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            fleet,
            every,
            metrics,
            running: AtomicBool::new(false),
        }
    }

    /// Runs at start, then every `reconcile_every` after the end of the previous run, until
    /// the task is aborted (at shutdown). A run cut off by the abort leaves every change it
    /// made recorded; the next start re-plans from the live state.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.run_once().await;
            tokio::time::sleep(self.every).await;
        }
    }

    /// Whether this process may start a run now: not while one is under way. The one place
    /// that decides, so that a lease shared by every process on the ledger can be taken
    /// here later.
    pub fn may_run(&self) -> Option<RunPermit<'_>> {
        self.running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| RunPermit(&self.running))
    }

    /// One plan-and-apply run; `None` when another run holds the permit or the ledger could
    /// not be read.
    pub async fn run_once(&self) -> Option<ApplyReport> {
        let _permit = self.may_run()?;
        let report = self.fleet.apply("reconcile", |g| self.observe(g)).await;
        match report {
            Ok(report) => {
                let result = if report.exit_code() == 0 {
                    "converged"
                } else {
                    "failed"
                };
                self.metrics.policy_runs.with_label_values(&[result]).inc();
                if report.failed() > 0 {
                    tracing::warn!(
                        failed = report.failed(),
                        changed = report.changed(),
                        "policy reconcile left groups unconverged: {}",
                        report.summary().trim_end()
                    );
                } else {
                    tracing::info!(
                        changed = report.changed(),
                        unchanged = report.unchanged(),
                        "policy reconciled"
                    );
                }
                Some(report)
            }
            Err(e) => {
                self.metrics.policy_runs.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "policy reconcile could not read the ledger");
                None
            }
        }
    }

    /// Counts and logs the drift of one group: readable settings that differed from the
    /// policy. The private-chat switch cannot be read, so setting it again after
    /// `dm_reapply_hours` is not drift.
    fn observe(&self, g: &GroupApplied) {
        let drifted: Vec<&str> = g
            .plan
            .changes
            .iter()
            .filter(|c| matches!(c.setting, Setting::Switch(_)))
            .map(|c| c.setting.key())
            .collect();
        for key in &drifted {
            self.metrics.policy_drift.with_label_values(&[key]).inc();
        }
        if !drifted.is_empty() {
            tracing::warn!(
                group = %g.plan.conversation_id,
                settings = %drifted.join(","),
                fixed = !g.failed(),
                "policy drift"
            );
        }
        if g.failed() {
            tracing::warn!(group = %g.plan.conversation_id, "{}", g.line());
        }
    }
}
