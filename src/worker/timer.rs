//! The scheduler of timed reverts: one task, started by the server, that runs each revert
//! of the ledger's jobs table once when it falls due, including those that fell due while
//! dingops was stopped. A revert's result goes to the group through the robot group-message
//! API (the command's sessionWebhook has expired by then) and into the audit as an action of
//! `dingops (timer)`.
//!
//! With replicas on one ledger, a revert runs on the replica that holds its group's lease
//! (so it never overlaps a command of that group on another replica, and runs once); the
//! reverts of groups no replica holds are run by the holder of the `timer` lease, which
//! takes their groups' leases for the time of the revert.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;

use super::WorkerContext;
use super::commands::{setting_label, setting_value};
use super::reply::advice;
use crate::clock::now_ms;
use crate::domain::{DM_SETTING, Delivery, DmState, Outcome, RevertJob};
use crate::ledger::AuditRow;

/// Who the audit names for a revert.
pub const TIMER: &str = "dingops (timer)";

/// How often the scheduler looks for due reverts; well inside the 5 s a revert may be late.
const TICK: Duration = Duration::from_secs(1);

/// Runs due reverts until the task is aborted (at shutdown). A revert cut off by the abort
/// is still marked running in the ledger and runs again at the next start.
pub async fn run(ctx: Arc<WorkerContext>) {
    let mut measured: Option<tokio::time::Instant> = None;
    loop {
        // Due times are in the ledger's time: measure how far it is from ours at start and
        // then every minute.
        if measured.is_none_or(|at| at.elapsed() >= CLOCK_EVERY) {
            ctx.measure_ledger_clock().await;
            measured = Some(tokio::time::Instant::now());
        }
        ctx.run_due_reverts().await;
        tokio::time::sleep(TICK).await;
    }
}

/// How often the scheduler measures the ledger's clock against this machine's.
const CLOCK_EVERY: Duration = Duration::from_secs(60);

impl WorkerContext {
    /// Runs every revert that is due now, soonest first; returns how many ran.
    pub async fn run_due_reverts(&self) -> usize {
        let now = self.ledger_time.now_ms();
        let due = match self.ledger.call(|l| l.pending_reverts(None)).await {
            Ok(jobs) => jobs.into_iter().filter(|j| j.due_ms <= now).collect::<Vec<_>>(),
            Err(e) => {
                tracing::error!(error = %e, "could not read the pending reverts; trying again shortly");
                return 0;
            }
        };
        let mut ran = 0;
        // Asked once per round, and only when a due revert's group is not held here.
        let mut timer_turn: Option<bool> = None;
        for job in due {
            let id = job.id;
            let borrowed = match self.leases.borrow(&job.conversation_id, false).await {
                Some(b) => Some(b),
                None => {
                    let turn = match timer_turn {
                        Some(t) => t,
                        None => *timer_turn.insert(self.leases.timer_turn().await),
                    };
                    if turn {
                        self.leases.borrow(&job.conversation_id, true).await
                    } else {
                        None
                    }
                }
            };
            // Another replica holds the group: it runs the revert.
            let Some(_borrowed) = borrowed else {
                continue;
            };
            // A newer command on this setting that is under way finishes first; if it
            // replaced this revert, the claim below fails and the revert does not run.
            let _setting = self.lock_setting(&job.conversation_id, &job.setting).await;
            match self.ledger.call(move |l| l.claim_revert(id)).await {
                Ok(true) => {
                    // A bug in one revert must not end the scheduler: that revert is
                    // recorded failed and the others still run.
                    if AssertUnwindSafe(self.revert(job)).catch_unwind().await.is_err() {
                        tracing::error!(revert = id, "a timed revert panicked; it is recorded as failed");
                        self.write_until_landed("finish a timed revert that panicked", move |l| {
                            l.finish_revert(id, "failed", "failed", now_ms())
                        })
                        .await;
                    }
                    ran += 1;
                }
                // Replaced by a newer command since it was read: it must not run.
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "could not claim a revert; trying again shortly"),
            }
        }
        ran
    }

    #[tracing::instrument(skip_all, fields(revert = job.id, group = %job.conversation_id, setting = %job.setting))]
    async fn revert(&self, job: RevertJob) {
        let result = if job.setting == DM_SETTING {
            self.dingtalk
                .set_friend_switch(&job.chat_id, job.value == 1)
                .await
        } else {
            self.dingtalk
                .update_group(&job.chat_id, &job.setting, job.value)
                .await
        };
        let what = format!(
            "{} back to {}",
            setting_label(&job.setting),
            setting_value(&job.setting, job.value)
        );
        let origin = format!(
            "scheduled by {} with `{}`",
            job.scheduled_by, job.scheduled_command
        );
        let (outcome, text, state, errcode, detail) = match &result {
            Ok(()) => (
                Outcome::Ok,
                format!("Timed revert: {what} ({origin})."),
                "done",
                None,
                format!("chatid {} {}={}", job.chat_id, job.setting, job.value),
            ),
            Err(e) => (
                Outcome::Failed,
                format!(
                    "Timed revert failed: DingTalk did not set {what} ({}): {}. ({origin})",
                    e.short(),
                    advice(e)
                ),
                "failed",
                e.errcode(),
                e.to_string(),
            ),
        };
        tracing::info!(outcome = outcome.as_str(), "timed revert ran");
        if result.is_ok() && job.setting == DM_SETTING {
            let (cid, state) = (
                job.conversation_id.clone(),
                DmState {
                    prohibited: job.value == 1,
                    set_by: TIMER.to_owned(),
                    set_by_nick: None,
                    set_ms: now_ms(),
                },
            );
            self.write_until_landed("record the DM state a revert set", move |l| {
                l.set_dm_state(&cid, &state)
            })
            .await;
        }
        let (id, short) = (job.id, outcome.as_str().to_owned());
        self.write_until_landed("finish a timed revert", move |l| {
            l.finish_revert(id, state, &short, now_ms())
        })
        .await;
        let content = format!("{} {text}", outcome.mark());
        let delivery = match self
            .dingtalk
            .send_group_message(&job.conversation_id, &content)
            .await
        {
            Ok(()) => Delivery::GroupMessage,
            Err(e) => {
                tracing::warn!(error = %e.short(), "the group message of a timed revert failed");
                Delivery::Failed(e.short())
            }
        };
        let row = AuditRow {
            msg_id: format!("timer-{}", job.id),
            received_ms: job.due_ms,
            conversation_id: job.conversation_id.clone(),
            sender_staff_id: None,
            sender_nick: Some(TIMER.to_owned()),
            text: Some(format!("revert {}={}", job.setting, job.value)),
            command: Some(format!(
                "revert of {} by {}",
                job.scheduled_command, job.scheduled_by
            )),
            status: "done".to_owned(),
            result: Some(outcome.as_str().to_owned()),
            errcode,
            detail: Some(detail),
            reply: Some(delivery.as_ledger_text().into_owned()),
            finished_ms: Some(now_ms()),
        };
        self.write_until_landed("record a timed revert in the audit", move |l| {
            l.record_own_action(&row)
        })
        .await;
    }
}
