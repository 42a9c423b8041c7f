//! The worker pool: reads open commands from the ledger in acceptance order, holds a
//! bounded number in memory (and a few per group, so one group's backlog cannot crowd out
//! the others), runs the commands of one group one after another, and bounds how many call
//! DingTalk at once. With other replicas on the same ledger it runs only the groups whose
//! lease it holds (see [`super::lease`]).

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{Job, WorkerContext};
use crate::clock::now_ms;
use crate::domain::{Answer, Delivery, Outcome, Pending};

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

/// A loaded command, its position, and its place in memory (released when it finishes).
type Held = (i64, Job, OwnedSemaphorePermit);

/// How often the ledger is read for new commands while this replica holds groups: other
/// replicas accept commands of those groups without waking this one.
const POLL: Duration = Duration::from_millis(250);

/// One group's commands in memory.
#[derive(Default)]
struct Group {
    queue: VecDeque<Held>,
    /// Loaded and not finished: those queued and the one running.
    held: usize,
    /// A runner task works through `queue`.
    runner: bool,
    /// Position of this group's newest loaded command.
    loaded_upto: i64,
    /// The shared cursor skipped some of this group's open commands; they are read from
    /// `loaded_upto` on, and the cursor skips the group until it has caught up.
    behind: bool,
    /// Its lease was lost: what is still queued is dropped and nothing more is loaded; the
    /// entry goes once the running command (if any) has finished.
    lost: bool,
}

/// What the loader and the runners share.
#[derive(Default)]
struct State {
    /// The groups with commands in memory (this replica holds their leases).
    map: HashMap<String, Group>,
    /// Groups with open commands this replica did not load because another replica held
    /// the group (or its lease was lost): the position of the oldest such command. Taking
    /// the group later reads its commands from there.
    skipped: HashMap<String, i64>,
}

impl State {
    fn skip(&mut self, cid: &str, pos: i64) {
        self.skipped
            .entry(cid.to_owned())
            .and_modify(|p| *p = (*p).min(pos))
            .or_insert(pos);
    }

    /// Drops what is queued of a group whose lease is lost; its commands stay open in the
    /// ledger for the group's next holder.
    fn abandon(&mut self, cid: &str) {
        let Some(g) = self.map.get_mut(cid) else {
            return;
        };
        g.lost = true;
        let mut oldest = g.behind.then_some(g.loaded_upto.saturating_add(1));
        for (pos, _, _) in g.queue.drain(..) {
            oldest = Some(oldest.map_or(pos, |o| o.min(pos)));
            g.held = g.held.saturating_sub(1);
        }
        g.behind = false;
        if g.held == 0 && !g.runner {
            self.map.remove(cid);
        }
        if let Some(pos) = oldest {
            self.skip(cid, pos);
        }
    }
}

#[derive(Clone, Default)]
struct Groups(Arc<Mutex<State>>);

impl Groups {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WorkerPool {
    /// Starts the pool. It reads open commands from the ledger in the order they were
    /// accepted (at start, that resumes what a stop or crash left unfinished), holds at most
    /// `capacity` of them in memory (the backlog stays in the ledger), runs at most
    /// `concurrency` at once, and runs the commands of one group one after another, in order.
    pub fn start(ctx: Arc<WorkerContext>, capacity: usize, concurrency: usize) -> (Intake, Self) {
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(pump(ctx, wake.clone(), stop.clone(), capacity, concurrency));
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
struct Pump {
    ctx: Arc<WorkerContext>,
    groups: Groups,
    held: Arc<Semaphore>,
    slots: Slots,
    wake: Arc<Notify>,
    tasks: JoinSet<()>,
    /// Position of the last command the shared cursor looked at.
    cursor: i64,
    per_group: usize,
    started_ms: u64,
    /// Each group's newest finished command at start (see [`Pump::admit`]).
    newest_done: HashMap<String, i64>,
}

async fn pump(
    ctx: Arc<WorkerContext>,
    wake: Arc<Notify>,
    stop: Arc<Notify>,
    capacity: usize,
    concurrency: usize,
) {
    let newest_done = match ctx.ledger.call(|l| l.newest_done_by_group()).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot read which groups finished newer commands; resuming without that check");
            HashMap::new()
        }
    };
    let capacity = capacity.max(1);
    let mut p = Pump {
        ctx,
        groups: Groups::default(),
        held: Arc::new(Semaphore::new(capacity)),
        slots: Slots::new(concurrency),
        wake,
        tasks: JoinSet::new(),
        cursor: 0,
        per_group: PER_GROUP.min(capacity),
        started_ms: now_ms(),
        newest_done,
    };
    let heartbeat = p.ctx.leases.heartbeat();
    let mut next_beat = tokio::time::Instant::now() + heartbeat;
    loop {
        while p.tasks.try_join_next().is_some() {}
        if tokio::time::Instant::now() >= next_beat {
            p.beat().await;
            next_beat = tokio::time::Instant::now() + heartbeat;
        }
        p.refill().await;
        if p.scan().await {
            continue;
        }
        // Commands of held groups may be accepted by other replicas, which do not wake this
        // one: read the ledger often then.
        let idle_wait = if p.ctx.leases.is_shared() && p.ctx.leases.held_count() > 0 {
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

/// What the loader does with one command it read.
enum Step {
    Load,
    Skip,
}

impl Pump {
    /// Renews the leases of the groups held (giving back those long unused), drops what is
    /// queued of groups whose lease was lost, and takes the groups other replicas held
    /// whose commands this one skipped, once their lease is free (given back, or run out
    /// because their holder died): their commands are read from the oldest skipped one.
    async fn beat(&mut self) {
        let groups = self.groups.clone();
        let lost = self
            .ctx
            .leases
            .renew(|cid| groups.lock().map.contains_key(cid))
            .await;
        if !lost.is_empty() {
            let mut st = self.groups.lock();
            for cid in &lost {
                st.abandon(cid);
            }
        }
        let wanted: Vec<String> = {
            let st = self.groups.lock();
            st.skipped
                .keys()
                .filter(|cid| !st.map.contains_key(*cid))
                .cloned()
                .collect()
        };
        let taken = self.ctx.leases.take(wanted).await;
        if !taken.is_empty() {
            tracing::info!(groups = taken.len(), "took over groups another replica held");
            let mut st = self.groups.lock();
            for cid in taken {
                if let Some(from) = st.skipped.remove(&cid) {
                    st.map.insert(
                        cid,
                        Group {
                            behind: true,
                            loaded_upto: from.saturating_sub(1),
                            ..Group::default()
                        },
                    );
                }
            }
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
        let seq = self.ctx.leases.seq();
        let rows = match self.ctx.ledger.open_after(cursor, room).await {
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
            let st = self.groups.lock();
            let mut wanted: Vec<String> = Vec::new();
            for (_, job) in &rows {
                let cid = &job.accepted.conversation_id;
                if !st.map.contains_key(cid)
                    && self.ctx.leases.taken_before(cid, u64::MAX).is_none()
                    && !wanted.contains(cid)
                {
                    wanted.push(cid.clone());
                }
            }
            wanted
        };
        let took = !self.ctx.leases.take(wanted).await.is_empty();
        for (rowid, job) in rows {
            let step = self.step(rowid, &job.accepted.conversation_id, seq);
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

    /// Decides about the command at `rowid` of group `cid`, read after the take numbered
    /// `seq`.
    fn step(&self, rowid: i64, cid: &str, seq: u64) -> Step {
        let mut st = self.groups.lock();
        if let Some(g) = st.map.get_mut(cid) {
            if g.lost {
                st.skip(cid, rowid);
                return Step::Skip;
            }
            if !g.behind && g.held >= self.per_group {
                g.behind = true;
            }
            return if g.behind { Step::Skip } else { Step::Load };
        }
        match self.ctx.leases.taken_before(cid, seq) {
            // Held all along since before the read, nothing of it skipped: the row is current.
            Some(true) if !st.skipped.contains_key(cid) => Step::Load,
            // Taken just now (or older commands of it were skipped): its open commands are
            // read again from the oldest that may be waiting.
            Some(_) => {
                let from = st.skipped.remove(cid).map_or(rowid, |p| p.min(rowid));
                st.map.insert(
                    cid.to_owned(),
                    Group {
                        behind: true,
                        loaded_upto: from.saturating_sub(1),
                        ..Group::default()
                    },
                );
                Step::Skip
            }
            // Another replica holds it and runs it.
            None => {
                st.skip(cid, rowid);
                Step::Skip
            }
        }
    }

    /// Reads more of the backlog of groups the cursor skipped, once they have room for half
    /// their share (one read per several commands, not one per command).
    async fn refill(&mut self) {
        let wanting: Vec<(String, i64, usize)> = self
            .groups
            .lock()
            .map
            .iter()
            .filter(|(_, g)| g.behind && g.held * 2 <= self.per_group)
            .map(|(cid, g)| (cid.clone(), g.loaded_upto, self.per_group - g.held))
            .collect();
        for (cid, after, want) in wanting {
            let want = want.min(self.held.available_permits());
            if want == 0 {
                return;
            }
            let (key, through) = (cid.clone(), self.cursor);
            let rows = match self
                .ctx
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
                let mut st = self.groups.lock();
                if let Some(g) = st.map.get_mut(&cid) {
                    g.behind = false;
                    if g.held == 0 && !g.runner {
                        st.map.remove(&cid);
                    }
                }
            }
        }
    }

    /// Parses a command read from the ledger, admits it and queues it behind earlier ones of
    /// its group, starting a runner for the group when it has none.
    async fn load(&mut self, rowid: i64, job: Pending, permit: OwnedSemaphorePermit) {
        let cid = job.accepted.conversation_id.clone();
        let admitted = self.admit(rowid, Job::from(job)).await;
        let mut st = self.groups.lock();
        let g = st.map.entry(cid.clone()).or_default();
        g.loaded_upto = g.loaded_upto.max(rowid);
        let Some(job) = admitted else {
            if g.held == 0 && !g.runner && !g.behind {
                st.map.remove(&cid);
            }
            return;
        };
        g.held += 1;
        g.queue.push_back((rowid, job, permit));
        if !g.runner {
            g.runner = true;
            self.tasks.spawn(run_group(
                self.ctx.clone(),
                self.groups.clone(),
                self.slots.clone(),
                self.wake.clone(),
                self.per_group,
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
        let (detail, delivery) = if a.session_expires_ms.is_some_and(|exp| exp <= now_ms()) {
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
        if let Err(e) = self.ctx.ledger.finish(id, answer, delivery, now_ms()).await {
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
    groups: Groups,
    slots: Slots,
    wake: Arc<Notify>,
    per_group: usize,
    cid: String,
) {
    loop {
        let valid = ctx.leases.valid(&cid);
        let next = {
            let mut st = groups.lock();
            if !valid {
                st.abandon(&cid);
            }
            let Some(g) = st.map.get_mut(&cid) else {
                return;
            };
            match g.queue.pop_front() {
                Some(h) => h,
                None => {
                    g.runner = false;
                    if g.held == 0 && !g.behind {
                        st.map.remove(&cid);
                    }
                    return;
                }
            }
        };
        let (_, job, permit) = next;
        let slot = slots.take(&job).await;
        if AssertUnwindSafe(ctx.process(&job)).catch_unwind().await.is_err() {
            ctx.fail_after_panic(&job).await;
        }
        drop(slot);
        drop(permit);
        // A group whose backlog waits in the ledger needs the loader once it has room for
        // half its share; other finishes need no read (a full memory is watched by the pump).
        let refill = groups.lock().map.get_mut(&cid).is_some_and(|g| {
            g.held = g.held.saturating_sub(1);
            g.behind && g.held * 2 <= per_group
        });
        if refill {
            wake.notify_one();
        }
    }
}
