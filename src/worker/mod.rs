//! The command worker. Each command goes authorize → execute → reply → record:
//! [`authorizer`] decides who may run what, [`commands`] carries each command out, [`reply`]
//! delivers the answer, and the ledger records it; [`pool`] schedules commands with bounded
//! concurrency and per-group order, deciding by [`schedule`]. Nothing here knows which
//! ingress a message came by.

pub mod approvals;
pub mod authorizer;
pub mod clicks;
mod commands;
pub mod group_leases;
pub mod pool;
pub mod reply;
mod schedule;
pub mod timer;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;

use crate::clock::Clock;
use crate::command::{Command, ParseError, help_text};
use crate::config::WorkerSettings;
use crate::dingtalk::DingTalk;
use crate::domain::{Accepted, Answer, ConversationType, Outcome, Pending, ReplyHosts};
use crate::governance::{Directory, Governor, PolicyCell, Recorder};
use crate::ledger::{Ledger, LedgerError, LedgerFuture, LedgerHandle, Sharing};
use crate::telemetry::Metrics;

pub use authorizer::Authorizer;
pub use group_leases::Leases;
pub use pool::{Intake, PoolParts, WorkerPool};

/// What the worker needs to decide and act.
pub struct WorkerContext {
    ledger: LedgerHandle,
    dingtalk: Arc<DingTalk>,
    /// Who may run what; the card gate shares it, so clicks count like typed commands.
    authorizer: Arc<Authorizer>,
    reply_hosts: ReplyHosts,
    metrics: Arc<Metrics>,
    /// The zone replies state revert times in.
    timezone: jiff::tz::TimeZone,
    /// How long one minute of a timed revert lasts (shortened only by the demo and tests).
    revert_minute: Duration,
    /// The one write path of a group setting, shared with the timer (and, in `serve`, the
    /// policy in force).
    governor: Arc<Governor>,
    /// The groups this replica holds among the replicas sharing the ledger.
    leases: Arc<Leases>,
    /// Where the worker, its pool, its leases and its timer read the time.
    clock: Arc<dyn Clock>,
    /// Reply cards, when `card_template_id` is set.
    cards: Option<Arc<crate::cards::Cards>>,
    /// The organisation's policy runs, for the two-person rule in `ops_group`.
    organisation: Option<approvals::OpsRoom>,
    /// Tests only: runs first in [`WorkerContext::answer`], so a test can make a command
    /// panic there.
    #[cfg(test)]
    before_answer: Option<fn(&Accepted)>,
}

/// The ❌ answer of a command that panicked; the panic itself went to the log.
fn panicked(command: &str) -> Answer {
    Answer::new(
        command,
        Outcome::Failed,
        "dingops hit an internal error running this command; the operators have been told in the log. Try again later.",
        "internal error: the command panicked",
    )
}

/// A command to run, its text parsed once when the pool loads it: choosing its running slot,
/// answering it and naming it after a panic all read that one parse.
pub struct Job {
    pub accepted: Accepted,
    /// Its answer, when it was answered before a restart: only the reply is left to send.
    pub answer: Option<Answer>,
    /// `accepted.text` parsed; `None` when the message has no text or is a click.
    parsed: Option<Result<Command, ParseError>>,
    /// A click on a card's button, entered as a command.
    click: Option<clicks::Click>,
}

impl From<Pending> for Job {
    fn from(Pending { accepted, answer }: Pending) -> Self {
        let click = clicks::Click::of(&accepted);
        let parsed = match click {
            Some(_) => None,
            None => accepted.text.as_deref().map(Command::parse),
        };
        Self {
            accepted,
            answer,
            parsed,
            click,
        }
    }
}

impl Job {
    /// The command name in its text, or `-`.
    fn command_name(&self) -> &'static str {
        if let Some(click) = &self.click {
            return click.name();
        }
        match &self.parsed {
            Some(Ok(c)) => c.spec().name,
            _ => "-",
        }
    }

    /// Whether running it may call one of DingTalk's group APIs (and so wait for a token and
    /// for DingTalk). Only those take one of the `command_concurrency` running slots: a /help
    /// or a refusal must never queue behind commands stuck on DingTalk.
    pub(crate) fn calls_group_api(&self) -> bool {
        self.answer.is_none()
            && self.accepted.conversation_type == ConversationType::Group
            && (self.click.is_some() || matches!(&self.parsed, Some(Ok(c)) if c.spec().calls_group_api))
    }
}

impl WorkerContext {
    /// The context of a worker on `ledger`, shared with other replicas or not as `sharing`
    /// says: alone, it runs every group without a word to the ledger ([`Leases::solo`]);
    /// among replicas, groups are run under leases in the ledger ([`Leases::shared`]).
    pub fn new(
        settings: &WorkerSettings,
        ledger: LedgerHandle,
        dingtalk: Arc<DingTalk>,
        metrics: Arc<Metrics>,
        sharing: &Sharing,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (holder, ttl) = (group_leases::replica_id(), settings.claim_lease);
        let leases = match sharing {
            Sharing::Alone(_) => Leases::solo(ledger.clone(), holder, ttl, clock.clone()),
            Sharing::Replicas => Leases::shared(ledger.clone(), holder, ttl, clock.clone()),
        };
        let governor = Arc::new(Governor::new(
            Arc::clone(&dingtalk),
            ledger.clone(),
            Arc::new(PolicyCell::fixed(None)),
            Directory::new(settings.groups.clone()),
            Recorder::new(ledger.clone(), Arc::clone(&metrics)),
            leases.holder().to_owned(),
        ));
        Self {
            ledger: ledger.clone(),
            // Chat commands, their replies and timed reverts are interactive: they may spend
            // the reserve background work leaves.
            dingtalk: Arc::new(dingtalk.for_class(crate::quota::Class::Interactive)),
            authorizer: Arc::new(Authorizer::new(
                &settings.admins,
                settings.trust_is_admin,
                settings.admin_commands_per_minute,
            )),
            reply_hosts: settings.reply_hosts.clone(),
            governor,
            metrics,
            timezone: settings.timezone.clone(),
            revert_minute: settings.revert_minute,
            leases: Arc::new(leases),
            clock,
            cards: None,
            organisation: None,
            #[cfg(test)]
            before_answer: None,
        }
    }

    /// This worker with `policy` in force: chat commands against it are refused or make
    /// exceptions, and the ends of exceptions restore its values.
    pub fn with_policy(mut self, policy: Arc<PolicyCell>) -> Self {
        self.governor = Arc::new(Governor::new(
            Arc::clone(&self.dingtalk),
            self.ledger.clone(),
            policy,
            self.governor.directory().clone(),
            Recorder::new(self.ledger.clone(), Arc::clone(&self.metrics)),
            self.leases.holder().to_owned(),
        ));
        self
    }

    /// This worker with reply cards.
    pub fn with_cards(mut self, cards: Option<Arc<crate::cards::Cards>>) -> Self {
        self.cards = cards;
        self
    }

    /// The governance core this worker changes settings through.
    pub fn governor(&self) -> &Arc<Governor> {
        &self.governor
    }

    /// The admin rule and per-sender limit, for the card gate to share.
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    /// The clock the worker reads the time by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// This replica's leases (its name among the replicas is [`Leases::holder`]).
    pub fn leases(&self) -> &Arc<Leases> {
        &self.leases
    }

    /// Measures how far the ledger's clock is from this machine's, so that revert due
    /// times go by the ledger's; warns when they differ by more than a sixth of a lease
    /// (leases themselves go by the ledger's clock alone, but an operator should know).
    pub async fn measure_ledger_clock(&self) {
        match self.dingtalk.ledger_time().measure(&self.ledger).await {
            Ok(offset) => {
                let tolerated = self.leases.ttl() / 6;
                if offset.unsigned_abs() > u64::try_from(tolerated.as_millis()).unwrap_or(u64::MAX) {
                    tracing::warn!(
                        offset_ms = offset,
                        tolerated_ms = tolerated.as_millis(),
                        "this machine's clock differs from the ledger's; leases and revert times go by the ledger's clock, but check NTP on this host"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the ledger's clock; keeping the last offset"),
        }
    }

    /// Runs a ledger write of a running command until it lands: a command whose DingTalk
    /// call happened must have it on record before its reply goes out, and its group's next
    /// command waits until it has (the core's one retry rule, [`Recorder`]).
    async fn write_until_landed<F>(&self, what: &'static str, write: F)
    where
        F: Fn(&dyn Ledger) -> Result<(), LedgerError> + Send + Sync + 'static,
    {
        self.governor.recorder().until_landed(what, write).await
    }

    /// [`WorkerContext::write_until_landed`] of a write the ledger handle awaits itself
    /// (an answer, a finish: the hot path, which PostgreSQL runs on its own runtime).
    async fn until_landed<F>(&self, what: &'static str, write: F)
    where
        F: Fn(&LedgerHandle) -> LedgerFuture<()>,
    {
        self.governor.recorder().until_landed_async(what, write).await
    }

    /// `ms` as a local time in the configured `timezone`, e.g. `2026-11-27 15:30 CST
    /// (Asia/Shanghai)`.
    pub(crate) fn local_time(&self, ms: u64) -> String {
        let Ok(t) = jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX)) else {
            return crate::clock::format_ms(ms);
        };
        let zoned = t.to_zoned_datetime(self.timezone.clone());
        match self.timezone.iana_name() {
            Some(name) => format!("{} ({name})", zoned.strftime("%Y-%m-%d %H:%M:%S %Z")),
            None => zoned.strftime("%Y-%m-%d %H:%M:%S %Z").to_string(),
        }
    }

    /// [`WorkerContext::answer`], with a panic turned into a ❌ answer.
    async fn answer_catching_panic(&self, job: &Job) -> Answer {
        match AssertUnwindSafe(self.answer(job)).catch_unwind().await {
            Ok(a) => a,
            Err(_) => {
                tracing::error!("a command panicked; it is recorded as failed");
                panicked(job.command_name())
            }
        }
    }

    /// Records a command that panicked outside its answer (delivering or recording): it is
    /// finished as failed, so its group goes on.
    pub(crate) async fn fail_after_panic(&self, job: &Job) {
        let msg_id = job.accepted.msg_id.clone();
        tracing::error!(msg_id = %msg_id, "a command panicked; it is recorded as failed");
        let answer = panicked(job.command_name());
        let delivery = crate::domain::Delivery::Failed("panic".into());
        let clock = Arc::clone(&self.clock);
        self.until_landed("finish a command that panicked", move |l| {
            l.finish(msg_id.clone(), answer.clone(), delivery.clone(), clock.now_ms())
        })
        .await;
    }

    /// Decides and carries out one command; never calls DingTalk for a refused one.
    pub async fn answer(&self, job: &Job) -> Answer {
        if let Some(click) = &job.click {
            return self.run_click(&job.accepted, click).await;
        }
        let Job {
            accepted: job,
            parsed,
            ..
        } = job;
        #[cfg(test)]
        if let Some(hook) = self.before_answer {
            hook(job);
        }
        let Some(parsed) = parsed else {
            return Answer::new(
                "-",
                Outcome::Info,
                "I only understand text commands. Type /help to see them.",
                format!("msgtype {}", job.msgtype),
            );
        };
        let command = match parsed {
            Ok(c) => c,
            Err(e @ (ParseError::BadChoice { spec, .. } | ParseError::BadDuration { spec, .. })) => {
                // A wrong argument to a switch is refused (⛔) with the accepted values.
                return Answer::new(spec.name, Outcome::Refused, e.to_string(), "bad argument");
            }
            Err(e) => {
                let name = match &e {
                    ParseError::MissingArgument(s) | ParseError::UnexpectedArgument(s) => s.name,
                    _ => "-",
                };
                return Answer::new(name, Outcome::Info, e.to_string(), "not a valid command");
            }
        };
        let spec = command.spec();
        if job.conversation_type == ConversationType::OneToOne {
            let mut text = String::from(
                "dingops commands work in group chats: add me to a group, @-mention me there and type the command.",
            );
            if *command == Command::Help {
                text = format!("{text}\n{}", help_text());
            }
            return Answer::new(spec.name, Outcome::Info, text, "1:1 chat");
        }
        if let Some(refusal) = self.authorizer.authorize(job, spec, self.clock.instant()) {
            return refusal;
        }
        self.execute(job, command).await
    }

    /// Runs one command to the end and records it. A command answered before a restart only
    /// gets its reply sent: DingTalk is not called twice.
    #[tracing::instrument(
        skip_all,
        fields(msg_id = %job.accepted.msg_id, group = %job.accepted.conversation_id, command = tracing::field::Empty)
    )]
    pub async fn process(&self, job: &Job) {
        let accepted = &job.accepted;
        let answer = match &job.answer {
            Some(a) => a.clone(),
            None => {
                let a = self.answer_catching_panic(job).await;
                // Only an answer that changed or asked DingTalk is recorded before the reply:
                // after a crash it must not be repeated. Information and refusals are simply
                // answered again, which saves a ledger write on most commands.
                if matches!(a.outcome, Outcome::Ok | Outcome::Failed) {
                    let (msg_id, record) = (accepted.msg_id.clone(), a.clone());
                    self.until_landed("record the answer of a command", move |l| {
                        l.record_answer(msg_id.clone(), record.clone())
                    })
                    .await;
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
        let delivery = match &job.click {
            Some(click) => self.show_click(accepted, click, &answer).await,
            None => self.reply(accepted, &answer).await,
        };
        self.metrics
            .replies
            .with_label_values(&[delivery.as_ledger_text().as_ref()])
            .inc();
        self.metrics
            .command_seconds
            .observe(self.clock.now_ms().saturating_sub(accepted.received_ms) as f64 / 1000.0);
        let (msg_id, clock) = (accepted.msg_id.clone(), Arc::clone(&self.clock));
        self.until_landed("record the end of a command", move |l| {
            l.finish(msg_id.clone(), answer.clone(), delivery.clone(), clock.now_ms())
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Settings;
    use crate::domain::{Binding, ChatId, DmState, SessionWebhook};
    use crate::ledger::{BindingStore as _, CommandLog as _, MemoryLedger, SettingStore as _};

    /// A worker over an in-memory ledger whose DingTalk is a closed loopback port: any call
    /// to it fails, so a decision that needs none is visible as a non-`Failed` answer.
    /// `ctx` with its governance core rebuilt on the ledger it was given (a test that swaps
    /// the ledger of [`worker`]'s context wants the core to write there too).
    pub(super) fn rewired(ctx: WorkerContext) -> WorkerContext {
        ctx.with_policy(Arc::new(crate::governance::PolicyCell::fixed(None)))
    }

    pub(super) fn worker(ledger: MemoryLedger, extra: &[(&str, &str)]) -> WorkerContext {
        let env: HashMap<String, String> = [
            ("DINGOPS_APP_KEY", "k"),
            ("DINGOPS_APP_SECRET", "s"),
            ("DINGOPS_OAPI_BASE", "http://127.0.0.1:9"),
            ("DINGOPS_API_BASE", "http://127.0.0.1:9"),
            ("DINGOPS_REPLY_HOSTS", "127.0.0.1:9"),
            ("DINGOPS_ADMINS", "boss"),
            ("DINGOPS_TRUST_IS_ADMIN", "false"),
            ("DINGOPS_RETRY_MAX_ATTEMPTS", "1"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let settings = Settings::from_sources(None, &env).unwrap();
        let metrics = Arc::new(Metrics::new());
        let clock = crate::clock::wall_clock();
        let dingtalk = Arc::new(DingTalk::new(&settings.dingtalk, metrics.clone(), clock.clone()).unwrap());
        // The memory ledger is this context's alone, as a SQLite file is a locked `serve`'s.
        let ledger = LedgerHandle::new(ledger);
        WorkerContext {
            leases: Arc::new(Leases::solo(
                ledger.clone(),
                group_leases::replica_id(),
                settings.worker.claim_lease,
                clock.clone(),
            )),
            ..WorkerContext::new(
                &settings.worker,
                ledger,
                dingtalk,
                metrics,
                &Sharing::Replicas,
                clock,
            )
        }
    }

    /// A message that is not answered yet, as the pool would load it.
    impl From<Accepted> for Job {
        fn from(accepted: Accepted) -> Self {
            Pending {
                accepted,
                answer: None,
            }
            .into()
        }
    }

    fn typed(staff: &str, text: &str) -> Accepted {
        Accepted {
            msg_id: "m1".into(),
            received_ms: 1,
            conversation_id: "cidG==".into(),
            conversation_type: ConversationType::Group,
            conversation_title: None,
            sender_staff_id: Some(staff.into()),
            sender_nick: Some("Ada".into()),
            sender_is_admin: false,
            msgtype: "text".into(),
            text: Some(text.into()),
            session_webhook: SessionWebhook::new("http://127.0.0.1:9/robot/sendBySession?session=x"),
            session_expires_ms: None,
        }
    }

    #[tokio::test]
    async fn a_member_running_an_admin_command_is_refused() {
        let a = worker(MemoryLedger::new(), &[])
            .answer(&typed("member", "/lock-dm").into())
            .await;
        assert_eq!(a.outcome, Outcome::Refused);
        assert_eq!(a.detail, "sender is not an admin");
    }

    #[tokio::test]
    async fn an_admin_in_an_unbound_group_is_told_how_to_bind() {
        let a = worker(MemoryLedger::new(), &[])
            .answer(&typed("boss", "/lock-dm").into())
            .await;
        assert_eq!(a.outcome, Outcome::Refused);
        assert_eq!(a.detail, "group not bound");
        assert!(a.text.contains("/bind <chatid>"), "{}", a.text);
    }

    #[tokio::test]
    async fn dm_status_reads_the_binding_and_the_last_state_from_the_ledger() {
        let ledger = MemoryLedger::new();
        ledger
            .bind(&Binding {
                conversation_id: "cidG==".into(),
                chat_id: ChatId::parse("chatg1").unwrap(),
                bound_by: "Ada (boss)".into(),
                bound_ms: 0,
            })
            .unwrap();
        ledger
            .set_dm_state(
                "cidG==",
                &DmState {
                    prohibited: true,
                    set_by: "boss".into(),
                    set_by_nick: Some("Ada".into()),
                    set_ms: 0,
                },
            )
            .unwrap();
        let a = worker(ledger, &[])
            .answer(&typed("member", "/dm-status").into())
            .await;
        assert_eq!(a.outcome, Outcome::Info);
        assert_eq!(
            a.text,
            "This group is bound to chatid chatg1 (bound by Ada (boss) at 1970-01-01 00:00:00 UTC).\n\
             Private chat: forbidden, set by Ada (boss) at 1970-01-01 00:00:00 UTC through dingops \
             (the group owner may have changed it in DingTalk since)."
        );
    }

    #[tokio::test]
    async fn a_static_binding_from_the_configuration_counts_as_bound() {
        let w = worker(MemoryLedger::new(), &[("DINGOPS_GROUPS", "cidG===chatcfg1")]);
        let a = w.answer(&typed("member", "/dm-status").into()).await;
        assert!(
            a.text
                .starts_with("This group is bound to chatid chatcfg1 (from the dingops configuration)."),
            "{}",
            a.text
        );
    }

    #[tokio::test]
    async fn a_bound_admin_command_reaches_dingtalk_and_its_failure_is_a_failed_answer() {
        let w = worker(MemoryLedger::new(), &[("DINGOPS_GROUPS", "cidG===chatcfg1")]);
        let a = w.answer(&typed("boss", "/lock-dm").into()).await;
        assert_eq!(a.outcome, Outcome::Failed);
        assert!(
            a.text.starts_with("/lock-dm did not go through (connect)"),
            "{}",
            a.text
        );
    }

    #[tokio::test]
    async fn a_command_in_a_one_to_one_chat_is_explained_not_run() {
        let mut job = typed("boss", "/lock-dm");
        job.conversation_type = ConversationType::OneToOne;
        let a = worker(MemoryLedger::new(), &[]).answer(&job.into()).await;
        assert_eq!(a.outcome, Outcome::Info);
        assert_eq!(a.detail, "1:1 chat");
    }

    #[tokio::test]
    async fn plain_text_gets_a_hint_and_a_picture_a_text_only_note() {
        let w = worker(MemoryLedger::new(), &[]);
        let a = w.answer(&typed("member", "hello").into()).await;
        assert_eq!(
            (a.outcome, a.detail.as_str()),
            (Outcome::Info, "not a valid command")
        );
        let mut picture = typed("member", "");
        picture.text = None;
        picture.msgtype = "picture".into();
        let a = w.answer(&picture.into()).await;
        assert_eq!(a.detail, "msgtype picture");
    }

    #[tokio::test]
    async fn process_records_the_answer_and_the_delivery_in_the_ledger() {
        let ledger = Arc::new(MemoryLedger::new());
        let job = typed("member", "/help");
        ledger.accept(&job).unwrap();
        // The test keeps a handle on the ledger the worker writes to.
        let w = rewired(WorkerContext {
            ledger: LedgerHandle::shared(ledger.clone()),
            ..worker(MemoryLedger::new(), &[])
        });
        w.process(
            &Pending {
                accepted: job,
                answer: None,
            }
            .into(),
        )
        .await;
        let row = &ledger.history(None, None, 10).unwrap()[0];
        assert_eq!(row.status, "done");
        assert_eq!(row.result.as_deref(), Some("info"));
        // The sessionWebhook's port is closed, so the reply failed and says so.
        assert_eq!(row.reply.as_deref(), Some("none-failed-connect"));
        assert_eq!(ledger.open_count().unwrap(), 0);
    }

    /// Panics for the message `m-boom`: a stand-in for any bug in a command.
    fn boom(job: &Accepted) {
        if job.msg_id == "m-boom" {
            panic!("a command bug (test)");
        }
    }

    /// Runs a pool (4 in memory, 1 running slot) over `w`, reading `ledger`, until no
    /// command is open there (at most 10 s: `stalled` says what went wrong), then stops it.
    async fn drain(w: WorkerContext, ledger: &Arc<MemoryLedger>, stalled: &str) {
        let parts = PoolParts {
            leases: w.leases().clone(),
            ledger: LedgerHandle::shared(ledger.clone()),
            ctx: Arc::new(w),
        };
        let (intake, pool) = WorkerPool::start(parts, 4, 1);
        intake.wake();
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while ledger.open_count().unwrap() > 0 {
            assert!(tokio::time::Instant::now() < end, "{stalled}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pool.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_panicking_command_is_recorded_failed_and_its_group_goes_on() {
        let ledger = Arc::new(MemoryLedger::new());
        // Both take a running slot (they may call a group API), and there is only one.
        let mut first = typed("boss", "/lock-dm");
        first.msg_id = "m-boom".into();
        let mut second = typed("boss", "/unlock-dm");
        second.msg_id = "m-next".into();
        ledger.accept(&first).unwrap();
        ledger.accept(&second).unwrap();
        let w = rewired(WorkerContext {
            ledger: LedgerHandle::shared(ledger.clone()),
            before_answer: Some(boom),
            ..worker(MemoryLedger::new(), &[])
        });
        // One running slot and one group: a leaked slot or a stuck group would stall the second.
        drain(w, &ledger, "the group stalled after a panic").await;
        let rows = ledger.history(None, None, 10).unwrap();
        let row = |id: &str| rows.iter().find(|r| r.msg_id == id).unwrap().clone();
        let boomed = row("m-boom");
        assert_eq!(boomed.status, "done");
        assert_eq!(boomed.result.as_deref(), Some("failed"));
        assert_eq!(
            boomed.detail.as_deref(),
            Some("internal error: the command panicked")
        );
        let next = row("m-next");
        assert_eq!(
            (next.status.as_str(), next.command.as_deref()),
            ("done", Some("/unlock-dm"))
        );
    }

    #[tokio::test]
    async fn a_command_from_before_the_start_whose_session_expired_by_the_workers_clock_is_not_run() {
        let ledger = Arc::new(MemoryLedger::new());
        let mut stale = typed("boss", "/dm-status");
        stale.msg_id = "m-stale".into();
        stale.session_expires_ms = Some(2_000_000);
        let mut live = typed("boss", "/dm-status");
        live.msg_id = "m-live".into();
        live.conversation_id = "cidH==".into();
        live.session_expires_ms = Some(3_000_000);
        ledger.accept(&stale).unwrap();
        ledger.accept(&live).unwrap();
        // The worker starts at 2 500 000 by its clock: between the two sessions' ends.
        let w = rewired(WorkerContext {
            ledger: LedgerHandle::shared(ledger.clone()),
            clock: crate::clock::ManualClock::at(2_500_000),
            ..worker(MemoryLedger::new(), &[])
        });
        drain(w, &ledger, "the commands never finished").await;
        let rows = ledger.history(None, None, 10).unwrap();
        let detail = |id: &str| rows.iter().find(|r| r.msg_id == id).unwrap().detail.clone();
        let expired = "not run: its reply session expired before dingops restarted";
        assert_eq!(detail("m-stale").as_deref(), Some(expired));
        assert_ne!(detail("m-live").as_deref(), Some(expired));
    }

    #[tokio::test]
    async fn a_panic_gives_a_failed_answer_with_the_command_name() {
        let mut w = worker(MemoryLedger::new(), &[]);
        w.before_answer = Some(|_| panic!("a command bug (test)"));
        let a = w
            .answer_catching_panic(&typed("member", "/dm-status").into())
            .await;
        assert_eq!((a.command.as_str(), a.outcome), ("/dm-status", Outcome::Failed));
        assert!(a.text.contains("internal error"), "{}", a.text);
    }
}
