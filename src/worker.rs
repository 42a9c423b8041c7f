//! The command worker: authorize → execute → reply → record, with bounded concurrency.
//!
//! Callbacks put [`Accepted`] commands on a bounded queue after the ledger has them; the
//! dispatcher runs at most `command_concurrency` at once. Nothing here knows about HTTP
//! ingress, so a Stream-mode ingress can feed the same queue.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use url::Url;

use crate::clock::{format_ms, now_ms};
use crate::command::{Command, CommandSpec, ParseError, help_text};
use crate::config::{ReplyHost, Settings, reply_url_allowed};
use crate::dingtalk::{ApiError, DingTalk};
use crate::ledger::{Accepted, Answer, Binding, DmState, LedgerError, LedgerHandle, Outcome, Pending};
use crate::telemetry::Metrics;

/// What the worker needs to decide and act.
pub struct WorkerContext {
    pub ledger: LedgerHandle,
    pub dingtalk: Arc<DingTalk>,
    pub admins: HashSet<String>,
    pub trust_is_admin: bool,
    pub reply_hosts: Vec<ReplyHost>,
    pub static_groups: BTreeMap<String, String>,
    pub robot_code: String,
    pub metrics: Arc<Metrics>,
    /// Admin commands per sender per group per minute; 0 = unlimited.
    pub admin_commands_per_minute: u32,
    /// When each (group, sender) ran its recent admin commands.
    recent: std::sync::Mutex<HashMap<(String, String), VecDeque<std::time::Instant>>>,
}

/// The window of the per-sender limit.
const SENDER_WINDOW: Duration = Duration::from_secs(60);

impl WorkerContext {
    pub fn new(
        settings: &Settings,
        ledger: LedgerHandle,
        dingtalk: Arc<DingTalk>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            ledger,
            dingtalk,
            admins: settings.admins.iter().cloned().collect(),
            trust_is_admin: settings.trust_is_admin,
            reply_hosts: settings.reply_hosts.clone(),
            static_groups: settings.groups.clone(),
            robot_code: settings.robot_code.clone(),
            metrics,
            admin_commands_per_minute: settings.admin_commands_per_minute,
            recent: std::sync::Mutex::default(),
        }
    }
}

/// Constructors of answers.
trait AnswerExt {
    fn new(command: &str, outcome: Outcome, text: impl Into<String>, detail: impl Into<String>) -> Self;
    fn failed(command: &str, what: &str, e: &ApiError) -> Self;
    fn ledger_failed(command: &str, e: &LedgerError) -> Self;
}

impl AnswerExt for Answer {
    fn new(command: &str, outcome: Outcome, text: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            command: command.to_owned(),
            outcome,
            errcode: None,
            text: text.into(),
            detail: detail.into(),
        }
    }

    fn failed(command: &str, what: &str, e: &ApiError) -> Self {
        Self {
            command: command.to_owned(),
            outcome: Outcome::Failed,
            errcode: e.errcode(),
            text: match e {
                ApiError::Code { .. } | ApiError::Status { .. } | ApiError::Credentials(_) => {
                    format!("DingTalk refused {what} ({}): {}.", e.short(), e.advice())
                }
                _ => format!("{what} did not go through ({}): {}.", e.short(), e.advice()),
            },
            detail: e.to_string(),
        }
    }

    fn ledger_failed(command: &str, e: &LedgerError) -> Self {
        tracing::error!(error = %e, "ledger failed while running a command");
        Self::new(
            command,
            Outcome::Failed,
            "dingops could not read or write its ledger; the operators have been told in the log. Try again later.",
            "ledger error",
        )
    }
}

/// How a reply reached the chat, or why it did not; recorded in the ledger's `reply` column.
pub mod via {
    /// Posted to the callback's sessionWebhook.
    pub const SESSION: &str = "session";
    /// Posted with the robot group-message API after the session had expired.
    pub const GROUP_MESSAGE: &str = "group-message";
}

/// The reply body DingTalk expects on a sessionWebhook: text with the sender @-mentioned.
pub fn reply_message(job: &Accepted, answer: &Answer) -> Value {
    let staff = job.sender_staff_id.as_deref().filter(|s| !s.is_empty());
    let content = match staff {
        Some(s) => format!("{} @{s} {}", answer.outcome.mark(), answer.text),
        None => format!("{} {}", answer.outcome.mark(), answer.text),
    };
    json!({
        "msgtype": "text",
        "text": {"content": content},
        "at": {"atUserIds": staff.into_iter().collect::<Vec<_>>(), "isAtAll": false},
    })
}

/// A person as shown in replies and the audit: `Nick (staffId)`, or whichever is known.
pub fn who(staff: &str, nick: Option<&str>) -> String {
    match nick.filter(|n| !n.is_empty() && *n != staff) {
        Some(n) if staff.is_empty() => n.to_owned(),
        Some(n) => format!("{n} ({staff})"),
        None if staff.is_empty() => "-".to_owned(),
        None => staff.to_owned(),
    }
}

impl WorkerContext {
    fn is_admin(&self, job: &Accepted) -> bool {
        let listed = job
            .sender_staff_id
            .as_deref()
            .is_some_and(|s| !s.is_empty() && self.admins.contains(s));
        listed || (self.trust_is_admin && job.sender_is_admin)
    }

    /// Counts an admin command against its sender's limit in its group; `false` when the
    /// sender is over it. Protects the app's DingTalk quota against a runaway script.
    fn within_sender_limit(&self, job: &Accepted) -> bool {
        let limit = self.admin_commands_per_minute as usize;
        if limit == 0 {
            return true;
        }
        let key = (
            job.conversation_id.clone(),
            job.sender_staff_id.clone().unwrap_or_default(),
        );
        let now = std::time::Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // Forget senders idle for a whole window so the map stays small.
        if recent.len() > 10_000 {
            recent.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < SENDER_WINDOW)
            });
        }
        let times = recent.entry(key).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SENDER_WINDOW)
        {
            times.pop_front();
        }
        if times.len() >= limit {
            return false;
        }
        times.push_back(now);
        true
    }

    /// The chatid of a group: a verified `/bind` wins over the configuration.
    async fn chatid_of(&self, cid: &str) -> Result<Option<(String, String)>, LedgerError> {
        let key = cid.to_owned();
        let bound = self.ledger.call(move |l| l.binding(&key)).await?;
        Ok(match bound {
            Some(b) => Some((
                b.chat_id,
                format!("bound by {} at {}", b.bound_by, format_ms(b.bound_ms)),
            )),
            None => self
                .static_groups
                .get(cid)
                .map(|c| (c.clone(), "from the dingops configuration".to_owned())),
        })
    }

    /// Decides and carries out one command; never calls DingTalk for a refused one.
    pub async fn answer(&self, job: &Accepted) -> Answer {
        let Some(text) = job.text.as_deref() else {
            return Answer::new(
                "-",
                Outcome::Info,
                "I only understand text commands. Type /help to see them.",
                format!("msgtype {}", job.msgtype),
            );
        };
        let command = match Command::parse(text) {
            Ok(c) => c,
            Err(e) => {
                let name = match &e {
                    ParseError::MissingArgument(s) | ParseError::UnexpectedArgument(s) => s.name,
                    _ => "-",
                };
                return Answer::new(name, Outcome::Info, e.to_string(), "not a valid command");
            }
        };
        let spec: &CommandSpec = command.spec();
        if job.conversation_type == "1" {
            let mut text = String::from(
                "dingops commands work in group chats: add me to a group, @-mention me there and type the command.",
            );
            if command == Command::Help {
                text = format!("{text}\n{}", help_text());
            }
            return Answer::new(spec.name, Outcome::Info, text, "1:1 chat");
        }
        if spec.admin_only && !self.is_admin(job) {
            return Answer::new(
                spec.name,
                Outcome::Refused,
                format!(
                    "{} is for admins only. Ask a group admin who is on the dingops admin list.",
                    spec.name
                ),
                "sender is not an admin",
            );
        }
        if spec.admin_only && !self.within_sender_limit(job) {
            return Answer::new(
                spec.name,
                Outcome::Refused,
                format!(
                    "slow down: at most {} admin commands per minute per person in a group. Try again in a minute.",
                    self.admin_commands_per_minute
                ),
                "per-sender limit",
            );
        }
        match command {
            Command::Help => Answer::new(spec.name, Outcome::Info, help_text(), "help"),
            Command::LockDm => self.set_dm(job, spec.name, true).await,
            Command::UnlockDm => self.set_dm(job, spec.name, false).await,
            Command::DmStatus => self.status(job, spec.name).await,
            Command::Bind { chatid } => self.bind(job, spec.name, &chatid).await,
        }
    }

    async fn set_dm(&self, job: &Accepted, name: &str, prohibit: bool) -> Answer {
        let chatid = match self.chatid_of(&job.conversation_id).await {
            Ok(Some((chatid, _))) => chatid,
            Ok(None) => return not_bound(name),
            Err(e) => return Answer::ledger_failed(name, &e),
        };
        let cid = job.conversation_id.clone();
        let previous = match self.ledger.call(move |l| l.dm_state(&cid)).await {
            Ok(p) => p,
            Err(e) => return Answer::ledger_failed(name, &e),
        };
        if let Err(e) = self.dingtalk.set_friend_switch(&chatid, prohibit).await {
            return Answer::failed(name, name, &e);
        }
        let staff = job.sender_staff_id.clone().unwrap_or_default();
        let state = DmState {
            prohibited: prohibit,
            set_by: staff,
            set_by_nick: job.sender_nick.clone(),
            set_ms: now_ms(),
        };
        let cid = job.conversation_id.clone();
        if let Err(e) = self.ledger.call(move |l| l.set_dm_state(&cid, &state)).await {
            // DingTalk made the change; only our record of it is missing.
            tracing::error!(error = %e, "could not record the new DM state");
        }
        let mut text = if prohibit {
            "Private chat is now forbidden in this group: members can no longer add each other as friends or chat privately.".to_owned()
        } else {
            "Private chat is allowed again in this group: members can add each other as friends and chat privately.".to_owned()
        };
        if let Some(p) = previous {
            text.push_str(&format!(
                " (dingops had last {} it: {} at {}.)",
                if p.prohibited { "locked" } else { "unlocked" },
                who(&p.set_by, p.set_by_nick.as_deref()),
                format_ms(p.set_ms)
            ));
        }
        Answer::new(
            name,
            Outcome::Ok,
            text,
            format!("chatid {chatid} is_prohibit={prohibit}"),
        )
    }

    async fn status(&self, job: &Accepted, name: &str) -> Answer {
        let binding = match self.chatid_of(&job.conversation_id).await {
            Ok(b) => b,
            Err(e) => return Answer::ledger_failed(name, &e),
        };
        let cid = job.conversation_id.clone();
        let state = match self.ledger.call(move |l| l.dm_state(&cid)).await {
            Ok(s) => s,
            Err(e) => return Answer::ledger_failed(name, &e),
        };
        let binding_text = match binding {
            Some((chatid, how)) => format!("This group is bound to chatid {chatid} ({how})."),
            None => "This group is not bound to a chatid yet; an admin can run /bind <chatid>.".to_owned(),
        };
        let state_text = match state {
            Some(s) => format!(
                "Private chat: {}, set by {} at {} through dingops (the group owner may have changed it in DingTalk since).",
                if s.prohibited { "forbidden" } else { "allowed" },
                who(&s.set_by, s.set_by_nick.as_deref()),
                format_ms(s.set_ms)
            ),
            None => "Private chat: dingops has not changed this group's setting yet.".to_owned(),
        };
        Answer::new(
            name,
            Outcome::Info,
            format!("{binding_text}\n{state_text}"),
            "status",
        )
    }

    async fn bind(&self, job: &Accepted, name: &str, chatid: &str) -> Answer {
        let converted = match self.dingtalk.open_conversation_id(chatid).await {
            Ok(c) => c,
            Err(e) => return Answer::failed(name, &format!("chatid {chatid}"), &e),
        };
        if converted != job.conversation_id {
            return Answer::new(
                name,
                Outcome::Refused,
                format!(
                    "chatid {chatid} belongs to another group, not this one. Run /bind in the group it belongs to."
                ),
                "chatid of another group",
            );
        }
        let binding = Binding {
            conversation_id: job.conversation_id.clone(),
            chat_id: chatid.to_owned(),
            bound_by: who(
                job.sender_staff_id.as_deref().unwrap_or(""),
                job.sender_nick.as_deref(),
            ),
            bound_ms: now_ms(),
        };
        match self.ledger.call(move |l| l.bind(&binding)).await {
            Ok(()) => Answer::new(
                name,
                Outcome::Ok,
                format!(
                    "This group is now bound to chatid {chatid}. Admins can use /lock-dm and /unlock-dm here."
                ),
                format!("bound chatid {chatid}"),
            ),
            Err(e) => Answer::ledger_failed(name, &e),
        }
    }

    /// Sends the answer to the chat; returns how that went (see [`via`]). The callback's
    /// sessionWebhook comes first; when it has expired (by its time or DingTalk's 300001), a
    /// group chat gets the robot group-message API instead, which cannot @-mention, so the
    /// sender is named in the text.
    async fn deliver(&self, job: &Accepted, answer: &Answer) -> String {
        let expired = job.session_expires_ms.is_some_and(|exp| now_ms() >= exp);
        if !expired {
            let url = match Url::parse(job.session_webhook.expose()) {
                Ok(u) if reply_url_allowed(&u, &self.reply_hosts) => u,
                _ => {
                    tracing::warn!("reply not sent: the sessionWebhook is not on reply_hosts");
                    return "none-host-not-allowed".into();
                }
            };
            match self
                .dingtalk
                .send_by_session(&url, &reply_message(job, answer))
                .await
            {
                Ok(()) => return via::SESSION.into(),
                Err(e) if e.errcode() == Some(SESSION_GONE) => {
                    tracing::info!("sessionWebhook is gone (300001); falling back to a group message");
                }
                Err(e) => {
                    tracing::warn!(error = %e.short(), "reply failed");
                    return format!("none-failed-{}", e.short());
                }
            }
        }
        if job.conversation_type == "1" {
            tracing::warn!("reply not sent: the 1:1 session expired");
            return "none-expired".into();
        }
        let content = format!(
            "{} {}: {}",
            answer.outcome.mark(),
            who(
                job.sender_staff_id.as_deref().unwrap_or(""),
                job.sender_nick.as_deref()
            ),
            answer.text
        );
        match self
            .dingtalk
            .send_group_message(&self.robot_code, &job.conversation_id, &content)
            .await
        {
            Ok(()) => via::GROUP_MESSAGE.into(),
            Err(e) => {
                tracing::warn!(error = %e.short(), "fallback group message failed");
                format!("none-failed-{}", e.short())
            }
        }
    }

    /// Runs one command to the end and records it. A command answered before a restart only
    /// gets its reply sent: DingTalk is not called twice.
    #[tracing::instrument(
        skip_all,
        fields(msg_id = %job.accepted.msg_id, group = %job.accepted.conversation_id, command = tracing::field::Empty)
    )]
    pub async fn process(&self, job: Pending) {
        let Pending { accepted, answer } = job;
        let answer = match answer {
            Some(a) => a,
            None => {
                let a = self.answer(&accepted).await;
                // Only an answer that changed or asked DingTalk is recorded before the reply:
                // after a crash it must not be repeated. Information and refusals are simply
                // answered again, which saves a ledger write on most commands.
                if matches!(a.outcome, Outcome::Ok | Outcome::Failed) {
                    let (msg_id, record) = (accepted.msg_id.clone(), a.clone());
                    if let Err(e) = self.ledger.call(move |l| l.record_answer(&msg_id, &record)).await {
                        tracing::error!(error = %e, "could not record the answer of a command");
                    }
                }
                a
            }
        };
        tracing::Span::current().record("command", answer.command.as_str());
        let errcode = answer.errcode.map_or_else(|| "-".to_owned(), |c| c.to_string());
        tracing::info!(outcome = answer.outcome.as_str(), errcode = %errcode, "command answered");
        self.metrics
            .commands
            .with_label_values(&[answer.command.as_str(), answer.outcome.as_str()])
            .inc();
        let reply = self.deliver(&accepted, &answer).await;
        self.metrics.replies.with_label_values(&[reply.as_str()]).inc();
        self.metrics
            .command_seconds
            .observe(now_ms().saturating_sub(accepted.received_ms) as f64 / 1000.0);
        let msg_id = accepted.msg_id.clone();
        if let Err(e) = self
            .ledger
            .call(move |l| l.finish(&msg_id, &answer, &reply, now_ms()))
            .await
        {
            tracing::error!(error = %e, "could not record the end of a command");
        }
    }
}

/// sendBySession's answer for an expired or unknown session.
const SESSION_GONE: i64 = 300_001;

fn not_bound(name: &str) -> Answer {
    Answer::new(
        name,
        Outcome::Refused,
        "This group is not bound to its DingTalk chatid yet, so I cannot change its settings. An admin can bind it with /bind <chatid>.",
        "group not bound",
    )
}

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
        .call(move |l| l.finish(&id, &answer, "none-expired", now_ms()))
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
