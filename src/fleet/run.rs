//! The one policy run: what `dingops apply`, the two-person `/apply` of the ops group and
//! `serve`'s reconcile runs do. A run
//!
//! 1. holds the one `policy` lease for as long as it runs, waiting (bounded) while another
//!    run holds it;
//! 2. makes sure the policy it applies is the policy in force for the organisation: the CLI
//!    records its own as in force when it starts, a run started from `serve` checks that its
//!    policy is still the one recorded;
//! 3. with a monthly budget, is refused up front (nothing written) when its reads and writes
//!    do not fit what the month has left for background work (`apply`), or skipped when the
//!    month's background share is used up (reconcile);
//! 4. applies the groups (each write checks again, under its setting's lease, that the
//!    policy is still in force: [`crate::governance::Governor`]).
//!
//! See docs/reliability.md.

use std::time::Duration;

use super::Fleet;
use super::apply::{ApplyReport, GroupApplied};
use super::policy_lease::PolicyLease;
use crate::governance::Via;
use crate::governance::policy::Resolution;
use crate::ledger::LedgerError;
use crate::quota::Class;
use crate::telemetry::Metrics;

/// Where a policy run came from: it names the run in the audit and the core's `via`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOrigin {
    /// `dingops apply`.
    Apply,
    /// The two-person `/apply` of the ops group, with the plan, its asker and its approver.
    TwoPerson {
        plan: String,
        asked_by: String,
        approved_by: String,
    },
    /// A reconcile run of `serve`.
    Reconcile,
}

impl RunOrigin {
    /// Its name in the audit (`apply`, `apply (two-person rule: plan …, asked by …,
    /// approved by …)`, `reconcile`).
    pub fn audit_name(&self) -> String {
        match self {
            RunOrigin::Apply => "apply".to_owned(),
            RunOrigin::TwoPerson {
                plan,
                asked_by,
                approved_by,
            } => format!(
                "apply (two-person rule: plan {plan}, asked by {asked_by}, approved by {approved_by})"
            ),
            RunOrigin::Reconcile => "reconcile".to_owned(),
        }
    }

    /// The channel the governance core records its changes under.
    pub fn via(&self) -> Via {
        match self {
            RunOrigin::Reconcile => Via::Reconcile,
            RunOrigin::Apply | RunOrigin::TwoPerson { .. } => Via::Apply,
        }
    }
}

/// How a run makes sure its policy is the policy in force.
pub enum InForce<'a> {
    /// The CLI: its policy becomes the policy in force when it starts.
    Record,
    /// A run of `serve` on the policy it holds: it runs only while that is the one in force.
    Check,
    /// Reconcile: a changed policy file is read first (a refused one keeps the policy in
    /// force) and a new policy recorded as in force, as on SIGHUP.
    Reload(&'a Metrics),
}

/// How the monthly quota bounds a run.
pub enum QuotaCheck {
    /// With a monthly budget, refused up front ([`RunRefused::Quota`]) when its reads and
    /// writes do not fit what the month has left for background work.
    UpFront,
    /// Skipped ([`RunRefused::NoRoom`]) after DingTalk's 90020 this month or when the
    /// background share is used up; run when the quota cannot be read.
    SkipWhenSpent,
}

/// Picks the groups of a run among those the policy matches (reconcile's `auto`: one).
pub type Pick<'a> = &'a (dyn Fn(Resolution) -> Resolution + Send + Sync);

/// How a policy run is started.
pub struct RunSpec<'a> {
    /// Its name in the policy lease.
    pub holder: &'a str,
    pub origin: RunOrigin,
    /// How long it waits for another run that holds the policy lease (zero: not at all).
    pub wait: Duration,
    pub in_force: InForce<'a>,
    pub quota: QuotaCheck,
    /// `None`: every group the policy matches.
    pub pick: Option<Pick<'a>>,
}

/// Why a run did not start; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RunRefused {
    #[error(
        "another policy run (a `dingops apply`, or a reconcile run of `serve`) is under way on this ledger and still was after {0} s; try again when it is done"
    )]
    Busy(u64),
    /// The policy lease could not be read or taken.
    #[error(transparent)]
    Lease(LedgerError),
    #[error(
        "the policy this run would apply is no longer the policy in force (serve reloaded a new one); plan again"
    )]
    NotInForce,
    /// The monthly quota does not allow it: the refusal with its numbers.
    #[error("{0}")]
    Quota(String),
    /// [`QuotaCheck::SkipWhenSpent`]: no room this month; `reason` is `spent` (90020) or
    /// `budget` (the background share is used up), `usage` the quota's line.
    #[error("{usage}; skipping this run")]
    NoRoom { reason: &'static str, usage: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Api(#[from] crate::dingtalk::ApiError),
}

impl Fleet {
    /// Runs the policy as [`RunSpec`] says (see the module's documentation); `waiting` is
    /// called once when it has to wait for the lease, `each` as each group is done, with the
    /// number of groups the run applies.
    pub async fn run_policy(
        &self,
        spec: RunSpec<'_>,
        waiting: impl FnOnce(),
        each: impl FnMut(usize, &GroupApplied),
    ) -> Result<ApplyReport, RunRefused> {
        let Some(lease) = PolicyLease::take_waiting(
            self.ledger(),
            self.dingtalk().clock(),
            spec.holder,
            spec.wait,
            waiting,
        )
        .await
        .map_err(RunRefused::Lease)?
        else {
            return Err(RunRefused::Busy(spec.wait.as_secs()));
        };
        let result = self.run_held(&spec, each).await;
        lease.release().await;
        result
    }

    async fn run_held(
        &self,
        spec: &RunSpec<'_>,
        mut each: impl FnMut(usize, &GroupApplied),
    ) -> Result<ApplyReport, RunRefused> {
        let policy = self.governor().policy();
        let now = || self.dingtalk().ledger_time().now_ms();
        match spec.in_force {
            InForce::Record => policy.record_in_force(self.ledger(), spec.holder, now()).await,
            InForce::Check => {
                if !self.governor().policy_in_force().await? {
                    return Err(RunRefused::NotInForce);
                }
            }
            InForce::Reload(metrics) => {
                policy
                    .reload_in_force("reconcile", metrics, self.ledger(), spec.holder, now())
                    .await;
            }
        }
        if let QuotaCheck::SkipWhenSpent = spec.quota {
            self.room_this_month().await?;
        }
        let resolution = self.resolve().await?;
        let resolution = match spec.pick {
            Some(pick) => pick(resolution),
            None => resolution,
        };
        let (resolution, unchanged) = if let QuotaCheck::UpFront = spec.quota {
            self.fits_up_front(resolution).await?
        } else {
            (resolution, Vec::new())
        };
        let total = resolution.targets.len();
        let origin = &spec.origin;
        let mut report = self.apply_resolved(resolution, origin, |g| each(total, g)).await;
        report.add_unchanged(unchanged);
        Ok(report)
    }

    /// [`QuotaCheck::SkipWhenSpent`]: whether the month's quota lets a run start.
    async fn room_this_month(&self) -> Result<(), RunRefused> {
        let usage = match self.dingtalk().quota_usage().await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the monthly quota; reconciling anyway");
                return Ok(());
            }
        };
        let reason = if usage.spent {
            "spent"
        } else if usage.left(Class::Background) == Some(0) {
            "budget"
        } else {
            return Ok(());
        };
        Err(RunRefused::NoRoom {
            reason,
            usage: usage.line(),
        })
    }

    /// [`QuotaCheck::UpFront`]: with a monthly budget, the groups to apply (those the plan
    /// found to change) and those already as the policy wants, or the refusal.
    async fn fits_up_front(
        &self,
        resolution: Resolution,
    ) -> Result<(Resolution, Vec<GroupApplied>), RunRefused> {
        let dingtalk = self.dingtalk();
        let usage = dingtalk.quota_usage().await?;
        Ok(if usage.budget.monthly.is_some() {
            if usage.spent {
                return Err(RunRefused::Quota(format!(
                    "apply refused: DingTalk answered 90020 in {}: the organisation's monthly API quota is spent until {}. Nothing was changed.",
                    usage.month.key,
                    crate::dingtalk::quota::renews_text(&usage.month, dingtalk.quota_timezone())
                        .trim_start_matches("on ")
                )));
            }
            let reads = resolution.targets.len() as u64;
            crate::cli::quota::apply_fits(reads, 0, &usage).map_err(RunRefused::Quota)?;
            let refused_reading = dingtalk.quota_refusals();
            let plan = self.plan_resolved(resolution.clone()).await;
            let usage = dingtalk.quota_usage().await?;
            let (todo, writes) = plan.work();
            if dingtalk.quota_refusals() > refused_reading {
                return Err(RunRefused::Quota(format!(
                    "apply refused: the month's background budget ran out while reading the groups ({}). Nothing was changed.",
                    usage.line()
                )));
            }
            crate::cli::quota::apply_fits(todo.len() as u64, writes, &usage).map_err(RunRefused::Quota)?;
            let unchanged = GroupApplied::unchanged_in(&plan);
            let mut resolution = resolution;
            resolution.targets.retain(|t| todo.contains(&t.conversation_id));
            (resolution, unchanged)
        } else {
            (resolution, Vec::new())
        })
    }
}
