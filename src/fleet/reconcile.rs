//! `serve`'s reconcile loop: every `reconcile_every`, plan and apply the policy, count the
//! drift it found by setting and log it per group. The monthly quota bounds it: a run that
//! has no room in the month's background share (or after DingTalk's 90020) is skipped, one
//! that runs out midway stops, both counted; with `auto` it reads one group at a time, the
//! one read longest ago, spaced so that the background share lasts the month.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Fleet;
use super::apply::{ApplyReport, GroupApplied};
use super::run::{InForce, QuotaCheck, RunOrigin, RunRefused, RunSpec};
use crate::governance::policy::{Resolution, Setting};
use crate::quota::{Class, auto_interval};
use crate::telemetry::Metrics;

/// `reconcile_every`: a period, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    Period(Duration),
    /// One group per run, spaced by [`auto_interval`] over the month's background share.
    Auto,
}

impl From<Duration> for Every {
    fn from(period: Duration) -> Self {
        Every::Period(period)
    }
}

/// The time between runs with `auto` when the quota cannot be read.
const AUTO_FALLBACK: Duration = Duration::from_secs(600);

/// The lease that says which replica reconciled within the current period: taken for
/// `reconcile_every` at the start of a run and not given back, so the other replicas skip
/// their ticks until the period is over (the holder takes it again at its next tick).
pub const RECONCILE_LEASE: &str = "reconcile";

/// Plans and applies the policy periodically, one run at a time.
pub struct Reconciler {
    fleet: Fleet,
    every: Every,
    /// With `auto`: the order in which this process last read each group (a sequence
    /// number), so that the one read longest ago goes next.
    last_read: Mutex<HashMap<String, u64>>,
    reads: std::sync::atomic::AtomicU64,
    /// The groups whose last read by this process found drift, and whether the read before
    /// it did too (`dingops_policy_groups_drifting` counts those).
    drifting: Mutex<HashMap<String, bool>>,
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
    pub fn new(
        fleet: Fleet,
        every: impl Into<Every>,
        metrics: Arc<Metrics>,
        holder: String,
        shared: bool,
    ) -> Self {
        Self {
            fleet,
            every: every.into(),
            last_read: Mutex::default(),
            reads: std::sync::atomic::AtomicU64::new(1),
            drifting: Mutex::default(),
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
            tokio::time::sleep(self.period().await).await;
        }
    }

    /// The time to the next run: `reconcile_every`, or with `auto` what is left of the
    /// month over what the background may still spend.
    async fn period(&self) -> Duration {
        let Every::Period(every) = self.every else {
            return match self.fleet.dingtalk().quota_usage().await {
                Ok(usage) => {
                    let rest = Duration::from_millis(usage.month.ends_ms.saturating_sub(usage.now_ms));
                    auto_interval(usage.left(Class::Background).unwrap_or(0), rest)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the monthly quota; reconciling again later");
                    AUTO_FALLBACK
                }
            };
        };
        every
    }

    /// With `auto`, only the matched group read longest ago (never read: first).
    fn oldest_only(&self, mut resolution: Resolution) -> Resolution {
        let last = self.last_read.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(oldest) = resolution
            .targets
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| last.get(&t.conversation_id).copied().unwrap_or(0))
            .map(|(i, _)| i)
        {
            let target = resolution.targets.swap_remove(oldest);
            resolution.targets = vec![target];
        }
        resolution
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
        let (holder, ttl) = (self.holder.clone(), self.period().await.as_millis() as u64);
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
        let pick = |resolution| self.oldest_only(resolution);
        let spec = RunSpec {
            holder: &self.holder,
            origin: RunOrigin::Reconcile,
            wait: Duration::ZERO,
            in_force: InForce::Reload(&self.metrics),
            quota: QuotaCheck::SkipWhenSpent,
            pick: match self.every {
                Every::Auto => Some(&pick),
                Every::Period(_) => None,
            },
        };
        let refused_before = self.fleet.dingtalk().quota_refusals();
        let report = match self.fleet.run_policy(spec, || {}, |_, g| self.observe(g)).await {
            Err(RunRefused::Busy(_)) => {
                tracing::info!(
                    "another policy run (an apply or a reconcile) is under way; skipping this one"
                );
                return None;
            }
            Err(RunRefused::Lease(e)) => {
                tracing::warn!(error = %e, "cannot take the policy lease; skipping this run");
                return None;
            }
            Err(RunRefused::NoRoom { reason, usage }) => {
                self.metrics
                    .quota
                    .reconcile_skipped
                    .with_label_values(&[reason])
                    .inc();
                tracing::warn!(reason, "{usage}; skipping this reconcile run");
                return None;
            }
            run => run,
        };
        if self.fleet.dingtalk().quota_refusals() > refused_before || self.fleet.dingtalk().quota_spent_here()
        {
            self.metrics
                .quota
                .reconcile_skipped
                .with_label_values(&["shortened"])
                .inc();
            tracing::warn!(
                "the month's background budget ran out during this reconcile run; the groups not read wait for the next month (or a larger budget)"
            );
        }
        let report = match report {
            Ok(report) => report,
            Err(e) => {
                self.metrics.policy_runs.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "policy reconcile could not read the ledger");
                return None;
            }
        };
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

    /// Remembers whether a read of `group` found drift; sets the number of groups whose last
    /// two reads both did (the fix did not hold, or did not land).
    fn track_drift(&self, group: &str, drifted: bool) {
        let mut drifting = self.drifting.lock().unwrap_or_else(|p| p.into_inner());
        if drifted {
            let again = drifting.contains_key(group);
            drifting.insert(group.to_owned(), again);
        } else {
            drifting.remove(group);
        }
        let repeated = drifting.values().filter(|again| **again).count();
        self.metrics
            .policy_groups_drifting
            .set(i64::try_from(repeated).unwrap_or(i64::MAX));
    }

    /// Counts and logs the drift of one group: readable settings that differed from the
    /// policy. The private-chat switch cannot be read, so setting it again after
    /// `dm_reapply_hours` is not drift.
    fn observe(&self, g: &GroupApplied) {
        self.last_read.lock().unwrap_or_else(|p| p.into_inner()).insert(
            g.plan.conversation_id.clone(),
            self.reads.fetch_add(1, Ordering::Relaxed),
        );
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
        self.track_drift(&g.plan.conversation_id, !drifted.is_empty());
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
