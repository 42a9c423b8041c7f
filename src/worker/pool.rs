//! The worker pool: reads open commands from the ledger in acceptance order, holds a
//! bounded number in memory, runs a bounded number at once, one group's commands one after
//! another.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::WorkerContext;
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

/// Handle to the running pool.
pub struct WorkerPool {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Commands loaded from the ledger per read.
const LOAD_BATCH: usize = 256;

/// A loaded command and its place in memory (released when it finishes).
type Held = (Pending, OwnedSemaphorePermit);
type GroupQueues = Arc<std::sync::Mutex<HashMap<String, VecDeque<Held>>>>;

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
    pub async fn shutdown(self, grace: Duration) {
        self.stop.notify_one();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight commands did not finish in time; they resume at the next start"
            );
            task.abort();
        }
    }
}

async fn pump(
    ctx: Arc<WorkerContext>,
    wake: Arc<Notify>,
    stop: Arc<Notify>,
    capacity: usize,
    concurrency: usize,
) {
    let held = Arc::new(Semaphore::new(capacity.max(1)));
    let running = Arc::new(Semaphore::new(concurrency.max(1)));
    let groups: GroupQueues = Arc::default();
    let mut tasks = JoinSet::new();
    let mut cursor: i64 = 0;
    let started_ms = now_ms();
    loop {
        while tasks.try_join_next().is_some() {}
        let room = held.available_permits().min(LOAD_BATCH);
        let rows = if room == 0 {
            Vec::new()
        } else {
            match ctx.ledger.call(move |l| l.open_after(cursor, room)).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read open commands from the ledger");
                    Vec::new()
                }
            }
        };
        let loaded = rows.len();
        for (rowid, job) in rows {
            cursor = rowid;
            let Ok(permit) = held.clone().try_acquire_owned() else {
                break;
            };
            if let Some(job) = not_stale(&ctx, job, started_ms).await {
                enqueue(&ctx, &groups, &running, &mut tasks, job, permit);
            }
        }
        if loaded == room && room > 0 {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = stop.notified() => break,
            // Room in memory again (the backlog may be waiting in the ledger).
            Ok(p) = held.acquire(), if room == 0 => drop(p),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// A command from before this start (a stop or crash interrupted it) that was never answered
/// and whose reply session has expired is not run: it is stale, and whoever typed it was not
/// told anything. It is recorded as such. Commands of this run always run; an expired session
/// then falls back to a group message.
async fn not_stale(ctx: &WorkerContext, job: Pending, started_ms: u64) -> Option<Pending> {
    let a = &job.accepted;
    let stale = job.answer.is_none()
        && a.received_ms < started_ms
        && a.session_expires_ms.is_some_and(|exp| exp <= now_ms());
    if !stale {
        return Some(job);
    }
    tracing::warn!(msg_id = %a.msg_id, "not run: its reply session expired before dingops restarted");
    let answer = Answer::new(
        "-",
        Outcome::Failed,
        "",
        "not run: its reply session expired before dingops restarted",
    );
    let id = job.accepted.msg_id;
    if let Err(e) = ctx
        .ledger
        .call(move |l| l.finish(&id, &answer, &Delivery::Expired, now_ms()))
        .await
    {
        tracing::error!(error = %e, "could not record an expired command");
    }
    None
}

/// Queues a command behind earlier ones of its group, or starts a runner for the group.
fn enqueue(
    ctx: &Arc<WorkerContext>,
    groups: &GroupQueues,
    running: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    job: Pending,
    permit: OwnedSemaphorePermit,
) {
    let cid = job.accepted.conversation_id.clone();
    {
        let mut map = groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = map.get_mut(&cid) {
            queue.push_back((job, permit));
            return;
        }
        map.insert(cid.clone(), VecDeque::new());
    }
    tasks.spawn(run_group(
        ctx.clone(),
        groups.clone(),
        running.clone(),
        cid,
        (job, permit),
    ));
}

/// Runs one group's commands in order until its queue is empty.
async fn run_group(
    ctx: Arc<WorkerContext>,
    groups: GroupQueues,
    running: Arc<Semaphore>,
    cid: String,
    first: Held,
) {
    let mut next = Some(first);
    while let Some((job, held)) = next {
        if let Ok(slot) = running.acquire().await {
            ctx.process(job).await;
            drop(slot);
        }
        drop(held);
        let mut map = groups.lock().unwrap_or_else(|p| p.into_inner());
        next = map.get_mut(&cid).and_then(VecDeque::pop_front);
        if next.is_none() {
            map.remove(&cid);
        }
    }
}
