//! The fleet as the worker's [`Organisation`]: the plan and the apply the ops group's
//! two-person rule starts from chat (see `worker::approvals`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::Fleet;
use super::run::{InForce, QuotaCheck, RunOrigin, RunSpec};
use crate::worker::approvals::{ApprovedRun, OrgFuture, Organisation, PlanBrief};

/// How long an approved plan waits for another policy run (a `dingops apply`, a reconcile
/// run) to finish before it is refused, saying so.
const TWO_PERSON_WAITS_FOR_LEASE: Duration = Duration::from_secs(5);

/// The changes a plan lists in the chat; the rest are counted.
const FIRST_CHANGES: usize = 5;

impl Organisation for Fleet {
    fn plan(&self) -> OrgFuture<'_, Result<PlanBrief, String>> {
        Box::pin(async move {
            let digest = self.governor().policy().digest_hex();
            let plan = self.plan().await.map_err(|e| e.to_string())?;
            let (todo, writes) = plan.work();
            let groups_changing = plan.groups.iter().filter(|g| !g.changes.is_empty()).count();
            let mut lines = vec![format!(
                "Policy plan: {} settings to change in {} of {} groups; {} held by exceptions; {} errors.",
                plan.change_count(),
                groups_changing,
                plan.groups.len(),
                plan.held_count(),
                plan.error_count()
            )];
            lines.push(format!(
                "Applying it costs about {} DingTalk calls of the monthly quota ({} reads, {writes} writes).",
                todo.len() as u64 + writes,
                todo.len()
            ));
            let changes = plan.groups.iter().flat_map(|g| {
                let name = g.name.clone().unwrap_or_else(|| g.conversation_id.clone());
                g.changes.iter().map(move |c| {
                    format!(
                        "- {name}: {} {} → {}",
                        c.setting.key(),
                        c.now.text(c.setting, plan.at_ms),
                        c.setting.word(c.wanted)
                    )
                })
            });
            lines.extend(changes.clone().take(FIRST_CHANGES));
            let more = changes.count().saturating_sub(FIRST_CHANGES);
            if more > 0 {
                lines.push(format!("- … and {more} more"));
            }
            Ok(PlanBrief {
                policy_digest: digest,
                text: lines.join("\n"),
            })
        })
    }

    fn apply(
        &self,
        run: ApprovedRun,
        progress: tokio::sync::mpsc::UnboundedSender<(usize, usize)>,
    ) -> OrgFuture<'_, Result<String, String>> {
        Box::pin(async move {
            if self.governor().policy().digest_hex() != run.policy_digest {
                return Err("the policy changed since this plan was made; run /plan again".to_owned());
            }
            // Named by the plan: the same run resumed after a restart holds the same lease.
            let holder = format!("two-person-{}", run.code);
            let spec = RunSpec {
                holder: &holder,
                origin: RunOrigin::TwoPerson {
                    plan: run.code.to_string(),
                    asked_by: run.asked_by.to_string(),
                    approved_by: run.approved_by.to_string(),
                },
                wait: TWO_PERSON_WAITS_FOR_LEASE,
                in_force: InForce::Check,
                quota: QuotaCheck::UpFront,
                pick: None,
            };
            let done = AtomicUsize::new(0);
            let report = self
                .run_policy(
                    spec,
                    || {},
                    |total, _| {
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        let _ = progress.send((n, total));
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(report.summary())
        })
    }
}
