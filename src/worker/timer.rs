//! The scheduler of timed reverts: one task, started by the server, that runs each revert
//! of the ledger's jobs table once when it falls due, including those that fell due while
//! dingops was stopped. A revert's result goes to the group through the robot group-message
//! API (the command's sessionWebhook has expired by then) and into the audit as an action of
//! `dingops (timer)`.
//!
//! Due reverts run side by side, up to [`CONCURRENCY`] at once, each in its own task: one
//! group whose DingTalk call hangs holds one slot, not the reverts of every other group. A
//! backlog (many reverts due at one start) drains at the rate budget the DingTalk client
//! paces its calls by. Two reverts of one setting of one group never run at once nor out of
//! order: the setting's lock and the ledger's claim decide, as for commands.
//!
//! With replicas on one ledger, a revert runs on the replica that holds its group's lease
//! (so it never overlaps a command of that group on another replica, and runs once); the
//! reverts of groups no replica holds are run by the holder of the `timer` lease, which
//! takes their groups' leases for the time of the revert.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::WorkerContext;
use super::group_leases::Borrowed;
use crate::advice::advice;
use crate::dingtalk::ApiError;
use crate::domain::{Delivery, Outcome, RevertJob};
use crate::governance::{Actor, Change, Decision, Restore, Setting, Via, Written};
use crate::ledger::{AuditRow, RevertState};

/// Who the audit names for a revert.
pub const TIMER: &str = "dingops (timer)";

/// How often the scheduler looks for due reverts; well inside the 5 s a revert may be late.
const TICK: Duration = Duration::from_secs(1);

/// Reverts that run at once. Enough to keep DingTalk's rate budget busy with answers as slow
/// as half a second, and to leave most of it to commands during a backlog; a group whose
/// calls hang holds one of them for a bounded time (each of its two DingTalk calls is given
/// up at the client's deadline).
const CONCURRENCY: usize = 16;

/// Runs due reverts until the task is aborted (at shutdown). Reverts still running are
/// aborted with it; one cut off is still marked running in the ledger and runs again at the
/// next start.
pub async fn run(ctx: Arc<WorkerContext>) {
    let mut scheduler = Scheduler::new(ctx.clone());
    let mut measured: Option<tokio::time::Instant> = None;
    loop {
        // Due times are in the ledger's time: measure how far it is from ours at start and
        // then every minute.
        if measured.is_none_or(|at| ctx.clock.instant().saturating_duration_since(at) >= CLOCK_EVERY) {
            ctx.measure_ledger_clock().await;
            measured = Some(ctx.clock.instant());
        }
        scheduler.start_due().await;
        // Card updates DingTalk did not take go again on this tick when their time came.
        if let Some(cards) = &ctx.cards {
            cards.resend_due().await;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// How often the scheduler measures the ledger's clock against this machine's.
const CLOCK_EVERY: Duration = Duration::from_secs(60);

/// The reverts under way, and the slots they take.
struct Scheduler {
    ctx: Arc<WorkerContext>,
    slots: Arc<Semaphore>,
    /// One task per revert under way; dropping the scheduler aborts them.
    tasks: JoinSet<()>,
    /// The ids of the reverts under way: a round never starts a second copy of one (it is
    /// still `running`, so still listed, while it runs).
    in_flight: Arc<Mutex<HashSet<i64>>>,
}

/// Marks a revert under way for as long as its task holds it, however the task ends.
struct InFlight {
    ids: Arc<Mutex<HashSet<i64>>>,
    id: i64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Scheduler {
    fn new(ctx: Arc<WorkerContext>) -> Self {
        Self {
            ctx,
            slots: Arc::new(Semaphore::new(CONCURRENCY)),
            tasks: JoinSet::new(),
            in_flight: Arc::default(),
        }
    }

    /// Starts every revert that is due now and not under way, soonest first, each once a
    /// slot is free; returns how many it started. Those it starts run on after it returns.
    async fn start_due(&mut self) -> usize {
        // Reap the tasks that ended. A panic in a revert itself was recorded by its task; one
        // around it (the claim) leaves the revert to run again.
        while let Some(ended) = self.tasks.try_join_next() {
            if ended.is_err_and(|e| e.is_panic()) {
                tracing::error!("a timed revert's task panicked; the revert runs again if it is still due");
            }
        }
        // Due times are in the ledger's time (see `LedgerTime`).
        let now = self.ctx.dingtalk.ledger_time().now_ms();
        let due = match self.ctx.ledger.call(|l| l.pending_reverts(None)).await {
            Ok(jobs) => {
                // Every replica reads every pending revert: each exports the whole ledger's.
                self.ctx
                    .metrics
                    .reverts
                    .observe(jobs.iter().map(|j| j.due_ms), now);
                jobs.into_iter().filter(|j| j.due_ms <= now).collect::<Vec<_>>()
            }
            Err(e) => {
                tracing::error!(error = %e, "could not read the pending reverts; trying again shortly");
                return 0;
            }
        };
        let mut started = 0;
        // Asked once per round, and only when a due revert's group is not held here.
        let mut timer_turn: Option<bool> = None;
        for job in due {
            if self.under_way(job.id) {
                continue;
            }
            // Waits while every slot is taken: the next due revert goes as soon as one is free.
            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                return started;
            };
            let leases = &self.ctx.leases;
            let borrowed = match leases.borrow(&job.conversation_id, false).await {
                Some(b) => Some(b),
                None => {
                    let turn = match timer_turn {
                        Some(t) => t,
                        None => *timer_turn.insert(leases.timer_turn().await),
                    };
                    if turn {
                        leases.borrow(&job.conversation_id, true).await
                    } else {
                        None
                    }
                }
            };
            // Another replica holds the group: it runs the revert.
            let Some(borrowed) = borrowed else {
                continue;
            };
            let in_flight = self.mark(job.id);
            let ctx = Arc::clone(&self.ctx);
            self.tasks
                .spawn(async move { ctx.claim_and_run(job, slot, borrowed, in_flight).await });
            started += 1;
        }
        started
    }

    fn under_way(&self, id: i64) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    fn mark(&self, id: i64) -> InFlight {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        InFlight {
            ids: Arc::clone(&self.in_flight),
            id,
        }
    }
}

impl WorkerContext {
    /// Runs one due revert in its slot, in the group it borrowed: unless a newer command
    /// replaced it meanwhile.
    async fn claim_and_run(
        &self,
        job: RevertJob,
        _slot: OwnedSemaphorePermit,
        _group: Borrowed,
        _in_flight: InFlight,
    ) {
        let id = job.id;
        // A newer command that replaced this revert meanwhile makes the claim fail; one that
        // replaces it after the claim is seen by the core, which then leaves the setting alone.
        match self.ledger.call(move |l| l.claim_revert(id)).await {
            Ok(true) => {
                // A bug in one revert must not end the scheduler: that revert is recorded
                // failed and the others still run.
                if AssertUnwindSafe(self.revert(job)).catch_unwind().await.is_err() {
                    tracing::error!(revert = id, "a timed revert panicked; it is recorded as failed");
                    self.metrics.reverts.ran.with_label_values(&["failed"]).inc();
                    let clock = Arc::clone(&self.clock);
                    self.write_until_landed("finish a timed revert that panicked", move |l| {
                        l.finish_revert(id, RevertState::Failed, "failed", clock.now_ms())
                    })
                    .await;
                }
            }
            // Replaced by a newer command since it was read: it must not run.
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "could not claim a revert; trying again shortly"),
        }
    }

    #[tracing::instrument(skip_all, fields(revert = job.id, group = %job.conversation_id, setting = %job.setting))]
    async fn revert(&self, job: RevertJob) {
        let Some(setting) = Setting::from_stored(&job.setting) else {
            tracing::error!(setting = %job.setting, "a timed revert names no setting dingops knows; recorded failed");
            self.metrics.reverts.ran.with_label_values(&["failed"]).inc();
            let (id, clock) = (job.id, Arc::clone(&self.clock));
            self.write_until_landed("finish a timed revert of an unknown setting", move |l| {
                l.finish_revert(id, RevertState::Failed, "failed", clock.now_ms())
            })
            .await;
            return;
        };
        let change = Change::end_exception(
            &job,
            setting,
            Actor::named(TIMER),
            Via::Revert,
            format!("revert of {}", job.scheduled_command),
        );
        // Each DingTalk call of the change is given up at the client's deadline, so that a
        // hanging DingTalk holds the revert's slot for a bounded time; what DingTalk did is
        // recorded however long the ledger takes (a record cut off would leave the ledger
        // with the old value and the group told a change that landed had failed).
        let written = match self.governor.change_within_deadline(change).await {
            Ok(mut w) if !w.is_empty() => Ok(w.remove(0)),
            Ok(_) => Err(ApiError::Decode("the core answered no outcome".into())),
            // A concurrent writer held it up, or the ledger could not be read: like a failed
            // call, the revert is recorded failed and the group told.
            Err(e) => Err(ApiError::Transport(e.to_string())),
        };
        let (value, because) = match &written {
            Ok(Written {
                decision: Decision::Superseded,
                ..
            }) => {
                tracing::info!("a timed revert was replaced while it was due; it did not run");
                return;
            }
            Ok(Written {
                decision: Decision::Write { value, restore },
                ..
            }) => (*value, restore.clone()),
            _ => (job.value, None),
        };
        let result = match written {
            Ok(w) => w.error.map_or(Ok(()), Err),
            Err(e) => Err(e),
        };
        let because = match because {
            Some(Restore::Policy(p)) => format!(", the policy's value (rule {})", p.rule),
            Some(Restore::Before) => ", as it was before the command".to_owned(),
            Some(Restore::Unknown) => {
                ", the opposite of the command (dingops did not know the value before it)".to_owned()
            }
            None => String::new(),
        };
        let what = format!("{} back to {}{because}", setting.label(), setting.describe(value));
        let origin = format!(
            "scheduled by {} with `{}`",
            job.scheduled_by, job.scheduled_command
        );
        let (outcome, text, state, errcode, detail) = match &result {
            Ok(()) => (
                Outcome::Ok,
                format!("Timed revert: {what} ({origin})."),
                RevertState::Done,
                None,
                format!("chatid {} {}={}", job.chat_id, job.setting, value),
            ),
            Err(e) => (
                Outcome::Failed,
                format!(
                    "Timed revert failed: DingTalk did not set {what} ({}): {}. ({origin})",
                    e.short(),
                    advice(e)
                ),
                RevertState::Failed,
                e.errcode(),
                e.to_string(),
            ),
        };
        tracing::info!(outcome = outcome.as_str(), "timed revert ran");
        self.metrics
            .reverts
            .ran
            .with_label_values(&[outcome.as_str()])
            .inc();
        let (id, short, clock) = (job.id, outcome.as_str().to_owned(), Arc::clone(&self.clock));
        self.write_until_landed("finish a timed revert", move |l| {
            l.finish_revert(id, state, &short, clock.now_ms())
        })
        .await;
        // The card of the command that scheduled it, when it was answered with one.
        if let (Some(cards), Outcome::Ok) = (&self.cards, outcome) {
            cards
                .reverted(&job.conversation_id, &job.setting, job.due_ms, &text)
                .await;
        }
        let content = format!("{} {text}", outcome.mark());
        let message = self.dingtalk.send_group_message(&job.conversation_id, &content);
        let delivery = match self.dingtalk.within_deadline("the group message", message).await {
            Ok(()) => Delivery::GroupMessage,
            Err(e) => {
                tracing::warn!(error = %e.short(), "the group message of a timed revert failed");
                Delivery::Failed(e.short())
            }
        };
        let row = audit_row(&job, outcome, errcode, detail, &delivery, self.clock.now_ms());
        self.write_until_landed("record a timed revert in the audit", move |l| {
            l.record_own_action(&row)
        })
        .await;
    }
}

/// The audit's row of a timed revert that ran: an action of [`TIMER`] in the group.
fn audit_row(
    job: &RevertJob,
    outcome: Outcome,
    errcode: Option<i64>,
    detail: String,
    delivery: &Delivery,
    finished_ms: u64,
) -> AuditRow {
    AuditRow {
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
        finished_ms: Some(finished_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChatId, RevertRestore};
    use crate::ledger::{LeaseStore as _, LedgerHandle, MemoryLedger, SettingStore as _};

    /// The revert of a `/mute-all 1m` in `cidG==`, scheduled at `scheduled_ms`, due at `due_ms`.
    fn mute_revert(due_ms: u64, scheduled_ms: u64) -> RevertJob {
        RevertJob {
            id: 0,
            conversation_id: "cidG==".into(),
            chat_id: ChatId::parse("chatg1").unwrap(),
            setting: "chatBannedType".into(),
            value: 0,
            set_value: 1,
            restore: RevertRestore::Before,
            due_ms,
            scheduled_by: "Ada (boss)".into(),
            scheduled_command: "/mute-all 1m".into(),
            scheduled_ms,
        }
    }

    #[tokio::test]
    async fn a_round_does_not_start_a_second_copy_of_a_revert_still_under_way() {
        let ledger = Arc::new(MemoryLedger::new());
        ledger.schedule_revert(&mute_revert(1, 0)).unwrap();
        // DingTalk is a closed port: the revert fails at once once it runs.
        let ctx = Arc::new(super::super::tests::rewired(WorkerContext {
            ledger: LedgerHandle::shared(ledger.clone()),
            ..super::super::tests::worker(MemoryLedger::new(), &[])
        }));
        // Another writer holds the setting (a command under way): the revert waits for it,
        // under way itself.
        let setting = "setting:cidG==:chatBannedType";
        assert!(ledger.try_lease(setting, "another writer", 60_000).unwrap());
        let mut scheduler = Scheduler::new(Arc::clone(&ctx));
        assert_eq!(scheduler.start_due().await, 1);
        assert_eq!(scheduler.start_due().await, 0, "the revert is still under way");
        assert_eq!(scheduler.start_due().await, 0, "the revert is still under way");
        ledger.release_lease(setting, "another writer").unwrap();
        // It runs (and fails), and is no longer under way once its task ended.
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while scheduler.under_way(1) {
            assert!(tokio::time::Instant::now() < end, "the revert never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ledger.pending_reverts(None).unwrap().is_empty());
        assert_eq!(scheduler.start_due().await, 0);
    }

    #[tokio::test]
    async fn a_revert_starts_once_the_ledgers_clock_reaches_its_due_time() {
        // The ledger's clock is a manual one: due times are moved past, never waited for.
        let clock = crate::clock::ManualClock::at(1_000_000);
        let ledger = Arc::new(MemoryLedger::with_clock(clock.clone()));
        ledger
            .schedule_revert(&mute_revert(1_060_000, 1_000_000))
            .unwrap();
        let ctx = Arc::new(super::super::tests::rewired(WorkerContext {
            ledger: LedgerHandle::shared(ledger.clone()),
            clock: clock.clone(),
            ..super::super::tests::worker(MemoryLedger::new(), &[])
        }));
        let mut scheduler = Scheduler::new(Arc::clone(&ctx));
        ctx.measure_ledger_clock().await;
        assert_eq!(scheduler.start_due().await, 0, "due in a minute");
        clock.advance(59_000);
        ctx.measure_ledger_clock().await;
        assert_eq!(scheduler.start_due().await, 0, "due in a second");
        clock.advance(1_000);
        ctx.measure_ledger_clock().await;
        assert_eq!(scheduler.start_due().await, 1, "due now");
    }
}
