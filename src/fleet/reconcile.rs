//! `serve`'s reconcile loop: every `reconcile_every`, plan and apply the policy, count the
//! drift it found by setting and log it per group.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Fleet;
use super::apply::{ApplyReport, GroupApplied};
use super::policy_lease::PolicyLease;
use crate::governance::policy::Setting;
use crate::telemetry::Metrics;

/// The lease that says which replica reconciled within the current period: taken for
/// `reconcile_every` at the start of a run and not given back, so the other replicas skip
/// their ticks until the period is over (the holder takes it again at its next tick).
pub const RECONCILE_LEASE: &str = "reconcile";

/// Plans and applies the policy periodically, one run at a time.
pub struct Reconciler {
    fleet: Fleet,
    every: Duration,
    metrics: Arc<Metrics>,
    running: AtomicBool,
    /// This replica's name in the leases.
    holder: String,
    /// Other replicas share the ledger: one reconcile per period across them.
    shared: bool,
}

/// The right to run one reconcile; released when dropped.
pub struct RunPermit<'a>(&'a AtomicBool);

impl Drop for RunPermit<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Reconciler {
    pub fn new(fleet: Fleet, every: Duration, metrics: Arc<Metrics>, holder: String, shared: bool) -> Self {
        Self {
            fleet,
            every,
            metrics,
            running: AtomicBool::new(false),
            holder,
            shared,
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

    /// Whether this process may start a run now: not while one is under way here.
    pub fn may_run(&self) -> Option<RunPermit<'_>> {
        self.running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| RunPermit(&self.running))
    }

    /// Whether this replica reconciles in the current period: with replicas, the one that
    /// holds (or now takes) the period's lease.
    async fn my_period(&self) -> bool {
        if !self.shared {
            return true;
        }
        let (holder, ttl) = (self.holder.clone(), self.every.as_millis() as u64);
        match self
            .fleet
            .ledger()
            .call(move |l| l.try_lease(RECONCILE_LEASE, &holder, ttl))
            .await
        {
            Ok(mine) => mine,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the reconcile lease; skipping this run");
                false
            }
        }
    }

    /// One plan-and-apply run; `None` when another run holds the permit (here, in another
    /// replica, or a `dingops apply`) or the ledger could not be read.
    pub async fn run_once(&self) -> Option<ApplyReport> {
        let _permit = self.may_run()?;
        if !self.my_period().await {
            tracing::debug!("another replica reconciles in this period");
            return None;
        }
        let lease = match PolicyLease::take(self.fleet.ledger(), &self.holder).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tracing::info!(
                    "another policy run (an apply or a reconcile) is under way; skipping this one"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the policy lease; skipping this run");
                return None;
            }
        };
        // A changed policy file is read before the run; a refused one keeps the policy in force.
        self.fleet
            .governor()
            .policy()
            .reload_logged("reconcile", &self.metrics);
        let report = self.fleet.apply("reconcile", |g| self.observe(g)).await;
        lease.release().await;
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
