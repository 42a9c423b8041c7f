//! The one policy run: what `dingops apply` and the two-person `/apply` of the ops group do
//! (reconcile shares its lease and its check of the policy in force). A run
//!
//! 1. holds the one `policy` lease for as long as it runs, waiting (bounded) while another
//!    run holds it;
//! 2. makes sure the policy it applies is the policy in force for the organisation: the CLI
//!    records its own as in force when it starts, a run started from `serve` checks that its
//!    policy is still the one recorded;
//! 3. with a monthly budget, is refused up front (nothing written) when its reads and writes
//!    do not fit what the month has left for background work;
//! 4. applies the groups (each write checks again, under its setting's lease, that the
//!    policy is still in force: [`crate::governance::Governor`]).
//!
//! See docs/reliability.md.

use std::time::Duration;

use super::Fleet;
use super::apply::{ApplyReport, GroupApplied};
use super::policy_lease::PolicyLease;
use crate::ledger::LedgerError;

/// How a policy run is started.
pub struct RunSpec<'a> {
    /// Its name in the policy lease.
    pub holder: &'a str,
    /// Its name in the audit (`apply`, `apply (two-person rule: plan …, asked by …, approved by …)`).
    pub origin: &'a str,
    /// How long it waits for another run that holds the policy lease.
    pub wait: Duration,
    /// `true` (the CLI): its policy becomes the policy in force when it starts; `false` (a
    /// run of `serve`): it runs only while its policy is the one in force.
    pub puts_in_force: bool,
}

/// Why a run did not start; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RunRefused {
    #[error(
        "another policy run (a `dingops apply`, or a reconcile run of `serve`) is under way on this ledger and still was after {0} s; try again when it is done"
    )]
    Busy(u64),
    #[error(
        "the policy this run would apply is no longer the policy in force (serve reloaded a new one); plan again"
    )]
    NotInForce,
    /// The monthly quota does not allow it: the refusal with its numbers.
    #[error("{0}")]
    Quota(String),
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
        let Some(lease) = PolicyLease::take_waiting(self.ledger(), spec.holder, spec.wait, waiting).await?
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
        if spec.puts_in_force {
            let now = self.dingtalk().ledger_time().now_ms();
            policy.record_in_force(self.ledger(), spec.holder, now).await;
        } else if !self.governor().policy_in_force().await? {
            return Err(RunRefused::NotInForce);
        }
        let resolution = self.resolve().await?;
        let dingtalk = self.dingtalk();
        let usage = dingtalk.quota_usage().await?;
        let (resolution, unchanged) = if usage.budget.monthly.is_some() {
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
        };
        let total = resolution.targets.len();
        let mut report = self
            .apply_resolved(resolution, spec.origin, |g| each(total, g))
            .await;
        report.add_unchanged(unchanged);
        Ok(report)
    }
}
