//! The worker pool: reads open commands from the ledger in acceptance order, holds a
//! bounded number in memory (and a few per group, so one group's backlog cannot crowd out
//! the others), runs the commands of one group one after another, and bounds how many call
//! DingTalk at once. With other replicas on the same ledger it runs only the groups whose
//! lease it holds (see [`super::group_leases`]).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::schedule::{Loaded, Next, Refill, Schedule, Step};
use super::{Job, Leases, WorkerContext};
use crate::domain::{Answer, Delivery, Outcome, Pending};
use crate::ledger::LedgerHandle;

/// How callbacks hand work to the pool: the command is already in the ledger, so they only
/// wake the pool, which reads it from there.
#[derive(Clone)]
pub struct Intake {
    wake: Arc<Notify>,
}

impl Intake {
    /// Tells the pool that the ledger has a new command.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Handle to the running pool. Dropping it stops the pool at once (as a crash would):
/// what is running is cut off and stays open in the ledger.
pub struct WorkerPool {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Commands loaded from the ledger per read.
const LOAD_BATCH: usize = 256;

/// Most commands of one group held in memory. The rest of a group's backlog stays in the
/// ledger: the shared cursor skips it and the group reads it from its own position later, so
/// a command of another group is loaded (and started) while a long backlog drains.
const PER_GROUP: usize = 8;

/// A loaded command and its place in memory (released when it finishes).
type Held = (Job, OwnedSemaphorePermit);

/// How often the ledger is read for new commands while this replica holds groups: other
/// replicas accept commands of those groups without waking this one.
const POLL: Duration = Duration::from_millis(250);

/// The schedule the loader and the runners share.
#[derive(Clone)]
struct Groups(Arc<Mutex<Schedule<Held>>>);

impl Groups {
    fn new(per_group: usize) -> Self {
        Self(Arc::new(Mutex::new(Schedule::new(per_group))))
    }

    fn lock(&self) -> MutexGuard<'_, Schedule<Held>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the pool works with: the worker that runs commands, the ledger it reads them
/// from, and this replica's leases (which groups it runs).
pub struct PoolParts {
    pub ctx: Arc<WorkerContext>,
    pub ledger: LedgerHandle,
    pub leases: Arc<Leases>,
}

impl WorkerPool {
    /// Starts the pool. It reads open commands from the ledger in the order they were
    /// accepted (at start, that resumes what a stop or crash left unfinished), holds at most
    /// `capacity` of them in memory (the backlog stays in the ledger), runs at most
    /// `concurrency` at once, and runs the commands of one group one after another, in order.
    pub fn start(parts: PoolParts, capacity: usize, concurrency: usize) -> (Intake, Self) {
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run_loader(
            parts,
            wake.clone(),
            stop.clone(),
            capacity,
            concurrency,
        ));
        (Intake { wake }, Self { stop, task })
    }

    /// Stops taking new work and finishes what is loaded and running, waiting at most
    /// `grace`. Whatever is unfinished then stays open in the ledger and resumes at the next
    /// start.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.notify_one();
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight commands did not finish in time; they resume at the next start"
            );
            self.task.abort();
        }
    }
}

/// Running slots: `command_concurrency` for commands that may call a DingTalk group API
/// (they can wait long on a token or on DingTalk), as many again for all others, so a /help
/// or a refusal never queues behind commands stuck on DingTalk and both kinds stay bounded.
#[derive(Clone)]
struct Slots {
    group_api: Arc<Semaphore>,
    other: Arc<Semaphore>,
}

impl Slots {
    fn new(concurrency: usize) -> Self {
        Self {
            group_api: Arc::new(Semaphore::new(concurrency.max(1))),
            other: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    async fn take(&self, job: &Job) -> Option<OwnedSemaphorePermit> {
        let kind = if job.calls_group_api() {
            &self.group_api
        } else {
            &self.other
        };
        kind.clone().acquire_owned().await.ok()
    }
}

/// The loader: everything the pool task owns.
struct Loader {
    ctx: Arc<WorkerContext>,
    ledger: LedgerHandle,
    leases: Arc<Leases>,
    groups: Groups,
    held: Arc<Semaphore>,
    slots: Slots,
    wake: Arc<Notify>,
    tasks: JoinSet<()>,
    /// Position of the last command the shared cursor looked at.
    cursor: i64,
    started_ms: u64,
    /// Each group's newest finished command at start (see [`Loader::admit`]).
    newest_done: HashMap<String, i64>,
}

async fn run_loader(
    PoolParts { ctx, ledger, leases }: PoolParts,
    wake: Arc<Notify>,
    stop: Arc<Notify>,
    capacity: usize,
    concurrency: usize,
) {
    let newest_done = match ledger.call(|l| l.newest_done_by_group()).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot read which groups finished newer commands; resuming without that check");
            HashMap::new()
        }
    };
    let capacity = capacity.max(1);
    let clock = Arc::clone(ctx.clock());
    let mut p = Loader {
        ctx,
        ledger,
        leases,
        groups: Groups::new(PER_GROUP.min(capacity)),
        held: Arc::new(Semaphore::new(capacity)),
        slots: Slots::new(concurrency),
        wake,
        tasks: JoinSet::new(),
        cursor: 0,
        started_ms: clock.now_ms(),
        newest_done,
    };
    let heartbeat = p.leases.heartbeat();
    let mut next_beat = clock.instant() + heartbeat;
    loop {
        while p.tasks.try_join_next().is_some() {}
        if clock.instant() >= next_beat {
            p.beat().await;
            next_beat = clock.instant() + heartbeat;
        }
        p.refill().await;
        if p.scan().await {
            continue;
        }
        // Commands of held groups may be accepted by other replicas, which do not wake this
        // one: read the ledger often then.
        let idle_wait = if p.leases.is_shared() && p.leases.held_count() > 0 {
            POLL
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            // A new command, or a group behind on its backlog has room for more.
            () = p.wake.notified() => {}
            () = stop.notified() => break,
            // Memory was full and a command finished: the backlog may be waiting in the ledger.
            Ok(permit) = p.held.acquire(), if p.held.available_permits() == 0 => drop(permit),
            () = tokio::time::sleep(idle_wait) => {}
            () = tokio::time::sleep_until(next_beat) => {}
        }
    }
    while p.tasks.join_next().await.is_some() {}
}

impl Loader {
    /// Renews the leases of the groups held (giving back those long unused), drops what is
    /// queued of groups whose lease was lost, and takes the groups other replicas held
    /// whose commands this one skipped, once their lease is free (given back, or run out
    /// because their holder died): their commands are read from the oldest skipped one.
    async fn beat(&mut self) {
        let groups = self.groups.clone();
        let lost = self.leases.renew(|cid| groups.lock().has(cid)).await;
        if !lost.is_empty() {
            let mut schedule = self.groups.lock();
            for cid in &lost {
                schedule.abandon(cid);
            }
        }
        let wanted = self.groups.lock().wanted();
        let taken = self.leases.take(wanted).await;
        if !taken.is_empty() {
            tracing::info!(groups = taken.len(), "took over groups another replica held");
            self.groups.lock().taken(taken);
        }
    }

    /// Reads open commands after the shared cursor and loads those whose group this replica
    /// holds and has room; `true` when there may be more to do at once (the read was full,
    /// or groups were taken whose commands are now to be read).
    async fn scan(&mut self) -> bool {
        let room = self.held.available_permits().min(LOAD_BATCH);
        if room == 0 {
            return false;
        }
        let cursor = self.cursor;
        // Taken after this number, a group may have had commands finished by its former
        // holder since the read: those are read again.
        let seq = self.leases.seq();
        let rows = match self.ledger.open_after(cursor, room).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot read open commands from the ledger");
                return false;
            }
        };
        let full = rows.len() == room;
        // Groups with new commands that this replica does not hold: met for the first time,
        // or held by another replica when last seen (which may have given them back since,
        // e.g. when it stopped): their leases are asked for in one write, so a group whose
        // holder left is taken at its next command rather than at the next heartbeat.
        let wanted: Vec<String> = {
            let schedule = self.groups.lock();
            let mut wanted: Vec<String> = Vec::new();
            for (_, job) in &rows {
                let cid = &job.accepted.conversation_id;
                if !schedule.has(cid)
                    && self.leases.taken_before(cid, u64::MAX).is_none()
                    && !wanted.contains(cid)
                {
                    wanted.push(cid.clone());
                }
            }
            wanted
        };
        let took = !self.leases.take(wanted).await.is_empty();
        for (rowid, job) in rows {
            let cid = &job.accepted.conversation_id;
            let lease = self.leases.taken_before(cid, seq);
            let step = self.groups.lock().step(rowid, cid, lease);
            if matches!(step, Step::Load) {
                let Ok(permit) = self.held.clone().try_acquire_owned() else {
                    // Memory is full: this row is read again once a command finishes.
                    return false;
                };
                self.load(rowid, job, permit).await;
            }
            self.cursor = rowid;
        }
        full || took
    }

    /// Reads more of the backlog of groups the cursor skipped, once they have room for half
    /// their share (one read per several commands, not one per command).
    async fn refill(&mut self) {
        let wanting = self.groups.lock().refills();
        for Refill { cid, after, want } in wanting {
            let want = want.min(self.held.available_permits());
            if want == 0 {
                return;
            }
            let (key, through) = (cid.clone(), self.cursor);
            let rows = match self
                .ledger
                .open_in_conversation_after(key, after, through, want)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a group's open commands from the ledger");
                    return;
                }
            };
            let caught_up = rows.len() < want;
            for (rowid, job) in rows {
                let Ok(permit) = self.held.clone().try_acquire_owned() else {
                    return;
                };
                self.load(rowid, job, permit).await;
            }
            if caught_up {
                self.groups.lock().caught_up(&cid);
            }
        }
    }

    /// Parses a command read from the ledger, admits it and queues it behind earlier ones of
    /// its group, starting a runner for the group when it has none.
    async fn load(&mut self, rowid: i64, job: Pending, permit: OwnedSemaphorePermit) {
        let cid = job.accepted.conversation_id.clone();
        let admitted = self.admit(rowid, Job::from(job)).await;
        let loaded = self
            .groups
            .lock()
            .load(rowid, &cid, admitted.map(|job| (job, permit)));
        if loaded == Loaded::StartRunner {
            self.tasks.spawn(run_group(
                self.ctx.clone(),
                self.leases.clone(),
                self.groups.clone(),
                self.slots.clone(),
                self.wake.clone(),
                cid,
            ));
        }
    }

    /// Whether a command read from the ledger runs. Not when it is from before this start,
    /// was never answered and:
    /// - its reply session has expired: it is stale, and whoever typed it was not told
    ///   anything. Commands of this run always run; an expired session then falls back to a
    ///   group message;
    /// - a newer command of its group already finished (a write of this command was lost
    ///   before a crash): running it now would undo the newer one, so it is superseded.
    ///
    /// Either is recorded as such.
    async fn admit(&self, rowid: i64, job: Job) -> Option<Job> {
        let a = &job.accepted;
        if job.answer.is_some() || a.received_ms >= self.started_ms {
            return Some(job);
        }
        let now = self.ctx.clock().now_ms();
        let (detail, delivery) = if a.session_expires_ms.is_some_and(|exp| exp <= now) {
            (
                "not run: its reply session expired before dingops restarted",
                Delivery::Expired,
            )
        } else if self
            .newest_done
            .get(&a.conversation_id)
            .is_some_and(|&p| p > rowid)
        {
            (
                "superseded: a newer command of this group finished first",
                Delivery::Superseded,
            )
        } else {
            return Some(job);
        };
        tracing::warn!(msg_id = %a.msg_id, "{detail}");
        let answer = Answer::new(job.command_name(), Outcome::Failed, "", detail);
        let id = job.accepted.msg_id;
        if let Err(e) = self.ledger.finish(id, answer, delivery, now).await {
            tracing::error!(error = %e, "could not record a command that is not run");
        }
        None
    }
}

/// Runs one group's commands in order until its queue is empty, each in a running slot of
/// its kind (see [`Slots`]). A command that panics is recorded as failed and the group goes
/// on. A command starts only while this replica's lease on the group has a good while to
/// go; when it has not (renewals failed), the group's queue is dropped for its next holder.
async fn run_group(
    ctx: Arc<WorkerContext>,
    leases: Arc<Leases>,
    groups: Groups,
    slots: Slots,
    wake: Arc<Notify>,
    cid: String,
) {
    loop {
        let valid = leases.valid(&cid);
        let Next::Run(_, (job, permit)) = groups.lock().next(&cid, valid) else {
            return;
        };
        let slot = slots.take(&job).await;
        if AssertUnwindSafe(ctx.process(&job)).catch_unwind().await.is_err() {
            ctx.fail_after_panic(&job).await;
        }
        drop(slot);
        drop(permit);
        // A group whose backlog waits in the ledger needs the loader once it has room for
        // half its share; other finishes need no read (a full memory is watched by the loader).
        if groups.lock().finished(&cid) {
            wake.notify_one();
        }
    }
}
