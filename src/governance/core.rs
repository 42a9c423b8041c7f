//! The one write path of a group setting. Whoever asks (a chat command, the end of a timed
//! command, `apply`, reconcile) hands the core a [`Change`]; the core
//!
//! 1. serialises it per (group, setting) across processes and replicas, through leases in
//!    the ledger (`setting:<openConversationId>:<setting>`), so that `dingops apply` in one
//!    process and a chat command in `serve` never interleave on one setting;
//! 2. reads what the setting should be under that serialisation (the policy in force, the
//!    exception in force) and decides ([`super::desired`]); a policy write decided from a
//!    stale plan is dropped, not sent;
//! 3. calls DingTalk (the client reserves the rate budget and the monthly quota), asking
//!    right before each attempt whether the change still holds its leases (renewed by the
//!    ledger's clock) and, for a policy write, whether its policy is still in force: a
//!    writer that lost either sends nothing more;
//! 4. records the new value of each setting it wrote (who, when, through what) and makes,
//!    replaces or cancels the exception (the pending revert), every record retried until it
//!    lands; the value's record is fenced by the change's holder name, so the ledger refuses
//!    it once another writer took a lease (docs/reliability.md).
//!
//! See docs/architecture.md, "The governance core".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::desired::{Ask, Decision, Desired, Exception, Held, PolicyWant};
use super::directory::Directory;
use super::record::Recorder;
use super::reload::PolicyCell;
use super::setting::Setting;
use crate::dingtalk::{ApiError, AttemptGuard, DingTalk, GuardPoint};
use crate::domain::{ChatId, KnownValue, RevertJob, RevertRestore, who};
use crate::lease::Renewal;
use crate::ledger::{Fence, LedgerError, LedgerHandle};

pub use crate::domain::Via;

/// A group dingops can change: its openConversationId and chatid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub conversation_id: String,
    pub chat_id: ChatId,
}

/// Who asks: a person's staffId and nick, or a name such as `policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub staff_id: String,
    pub nick: Option<String>,
}

impl Actor {
    pub fn named(name: &str) -> Self {
        Self {
            staff_id: name.to_owned(),
            nick: None,
        }
    }

    /// As replies and the audit show people.
    pub fn shown(&self) -> String {
        who(&self.staff_id, self.nick.as_deref())
    }
}

/// A request to change settings of one group.
#[derive(Debug, Clone)]
pub struct Change {
    pub group: Group,
    pub items: Vec<(Setting, Ask)>,
    pub by: Actor,
    pub via: Via,
    /// The command as typed (`/mute-all 30m`), or what ran (`policy apply`).
    pub command: String,
    /// A timed chat command: when its exception ends, in the ledger's milliseconds.
    pub until_ms: Option<u64>,
}

impl Change {
    /// The end of the exception `job` made: its revert of `setting`, run by `by` (the timer
    /// at its time, or a person's Revert now / Undo on the card). The core decides what it
    /// restores (the policy's value, the value before the command, or `job.value`).
    pub fn end_exception(job: &RevertJob, setting: Setting, by: Actor, via: Via, command: String) -> Self {
        Change {
            group: Group {
                conversation_id: job.conversation_id.clone(),
                chat_id: job.chat_id.clone(),
            },
            items: vec![(
                setting,
                Ask::Revert {
                    revert_id: job.id,
                    before: (job.restore == RevertRestore::Before).then_some(job.value),
                    fallback: job.value,
                },
            )],
            by,
            via,
            command,
            until_ms: None,
        }
    }
}

/// What became of one setting of a [`Change`].
#[derive(Debug, Clone)]
pub struct Written {
    pub setting: Setting,
    pub decision: Decision,
    /// What the policy in force wanted of the setting when the core decided.
    pub policy: Option<PolicyWant>,
    /// What dingops knew of the setting before (the last value it recorded).
    pub previous: Option<KnownValue>,
    /// The value before the command, as the exception will restore it without a policy.
    pub before: Option<u8>,
    /// The exception this write replaced (a timed command) or cancelled (an untimed one).
    pub replaced: Option<RevertJob>,
    /// The exception this write made (a timed command).
    pub scheduled: Option<RevertJob>,
    /// DingTalk's refusal, when the decision was to write and the call failed.
    pub error: Option<ApiError>,
}

impl Written {
    /// Whether DingTalk now has the value the core decided on.
    pub fn landed(&self) -> bool {
        matches!(self.decision, Decision::Write { .. }) && self.error.is_none()
    }
}

/// Why a change was not attempted at all.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Another writer held the setting longer than a change may wait.
    #[error("another change of this setting is under way; try again in a moment")]
    Busy,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// How long a setting's lease lasts unless renewed; renewed every third of it while the
/// change runs.
const SETTING_LEASE_TTL: Duration = Duration::from_secs(6);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// When a change last had its leases renewed (or taken): a monotonic instant read before the
/// ledger write that renewed them, so the lease surely lasts [`SETTING_LEASE_TTL`] from it.
type Renewed = Arc<std::sync::Mutex<tokio::time::Instant>>;

fn renewed_at(renewed: &Renewed) -> tokio::time::Instant {
    *renewed.lock().unwrap_or_else(|p| p.into_inner())
}

fn mark_renewed(renewed: &Renewed, at: tokio::time::Instant) {
    let mut last = renewed.lock().unwrap_or_else(|p| p.into_inner());
    *last = (*last).max(at);
}

/// How a change's DingTalk calls end: as the client ends them, or also at its deadline
/// ([`Governor::change_within_deadline`]). Never a bound on the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Client,
    Deadline,
}

impl Bound {
    async fn call<T>(
        self,
        dingtalk: &DingTalk,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        match self {
            Bound::Client => call.await,
            Bound::Deadline => dingtalk.within_deadline(what, call).await,
        }
    }
}
/// Why a write was abandoned: its lease is gone.
const LEASE_LOST: &str = "another writer took this setting's lease while this change was under way";
/// Why a policy write was abandoned: another process loaded a newer policy.
const NOT_IN_FORCE: &str = "the policy in force changed (serve reloaded it) while this run was under way";

/// How long a change waits for another writer of the same setting.
const WAIT_FOR_SETTING: Duration = Duration::from_secs(30);
/// First pause between two attempts at the setting's lease; it doubles up to the max.
const LEASE_RETRY_FIRST: Duration = Duration::from_millis(10);
const LEASE_RETRY_MAX: Duration = Duration::from_millis(250);

/// The core: see the module's documentation.
pub struct Governor {
    dingtalk: Arc<DingTalk>,
    ledger: LedgerHandle,
    policy: Arc<PolicyCell>,
    /// The groups known: bindings over the configuration.
    directory: Directory,
    recorder: Recorder,
    /// Names this process among the lease holders; each change adds a number of its own.
    holder: String,
    next: AtomicU64,
}

impl Governor {
    pub fn new(
        dingtalk: Arc<DingTalk>,
        ledger: LedgerHandle,
        policy: Arc<PolicyCell>,
        directory: Directory,
        recorder: Recorder,
        holder: String,
    ) -> Self {
        Self {
            dingtalk,
            ledger,
            policy,
            directory,
            recorder,
            holder,
            next: AtomicU64::new(0),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<PolicyCell> {
        &self.policy
    }

    /// The groups known: bindings over the configuration.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The one retry rule for records.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The DingTalk client the core calls with.
    pub fn dingtalk(&self) -> &Arc<DingTalk> {
        &self.dingtalk
    }

    /// Carries out `change`: see the module's documentation.
    pub async fn change(&self, change: Change) -> Result<Vec<Written>, ChangeError> {
        self.change_bounded(change, Bound::Client).await
    }

    /// [`Governor::change`] whose DingTalk calls are each given up at the client's deadline
    /// (`retry_deadline_ms`) even where the client would go on (a timed revert, which must
    /// not hold its slot for long). A call given up is a timeout for its settings. Only the
    /// calls are bounded: what landed is recorded, retried until it lands, however long the
    /// ledger takes.
    pub async fn change_within_deadline(&self, change: Change) -> Result<Vec<Written>, ChangeError> {
        self.change_bounded(change, Bound::Deadline).await
    }

    async fn change_bounded(&self, change: Change, bound: Bound) -> Result<Vec<Written>, ChangeError> {
        let cid = change.group.conversation_id.clone();
        let names: Vec<String> = change
            .items
            .iter()
            .map(|(s, _)| format!("setting:{cid}:{}", s.stored()))
            .collect();
        let holder = format!("{}#{}", self.holder, self.next.fetch_add(1, Ordering::Relaxed));
        let taking = self.dingtalk.clock().instant();
        self.serialise(&names, &holder).await?;
        let renewed: Renewed = Arc::new(std::sync::Mutex::new(taking));
        // The leases are short and renewed while the change runs, so that a writer killed
        // mid-change holds up the next one for a few seconds only.
        // Stopped when the change ends, or is dropped (a caller's deadline).
        let marks = renewed.clone();
        let renewing = crate::lease::hold(
            self.ledger.clone(),
            names.clone(),
            holder.clone(),
            SETTING_LEASE_TTL,
            self.dingtalk.clock().clone(),
            move |renewal| {
                match renewal {
                    Renewal::Kept { at } => mark_renewed(&marks, at),
                    Renewal::Lost => {
                        tracing::warn!(
                            "a setting's lease ran out during its change; another writer may overlap"
                        )
                    }
                    Renewal::Failed(e) => tracing::warn!(error = %e, "could not renew a setting's lease"),
                }
                std::ops::ControlFlow::Continue(())
            },
        );
        let fence = Fence {
            leases: names.clone(),
            holder: holder.clone(),
        };
        let result = self.change_held(&change, &fence, &renewed, bound).await;
        drop(renewing);
        let (ledger, release) = (self.ledger.clone(), names);
        // Best effort: a lease left behind ends with its lifetime.
        if let Err(e) = ledger.call(move |l| l.release_leases(&release, &holder)).await {
            tracing::warn!(error = %e, "could not release a setting's lease; it ends with its lifetime");
        }
        result
    }

    /// Takes every setting's lease, or none: a writer that got only some gives them back and
    /// tries again, so two writers of overlapping settings cannot hold each other up.
    async fn serialise(&self, names: &[String], holder: &str) -> Result<(), ChangeError> {
        let ttl_ms = millis(SETTING_LEASE_TTL);
        let clock = self.dingtalk.clock();
        let started = clock.instant();
        let mut pause = LEASE_RETRY_FIRST;
        loop {
            let (asked, who) = (names.to_vec(), holder.to_owned());
            // A ledger that refuses the write for a while (a lock, a restart) holds the change
            // up rather than failing it: the same retry rule as every record.
            let held = self
                .recorder
                .until_landed_with("take a setting's lease", move |l| {
                    l.try_leases(&asked, &who, ttl_ms)
                })
                .await;
            if held.len() == names.len() {
                return Ok(());
            }
            if !held.is_empty() {
                let who = holder.to_owned();
                self.ledger.call(move |l| l.release_leases(&held, &who)).await?;
            }
            if clock.instant().duration_since(started) >= WAIT_FOR_SETTING {
                return Err(ChangeError::Busy);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LEASE_RETRY_MAX);
        }
    }

    /// Asked at each DingTalk attempt of a change: the change still holds its settings'
    /// leases (renewed, so the ledger's clock decides; a lease that ran out or was taken is
    /// lost) and, for a policy write right before sending, its policy is still the one in
    /// force. Leases renewed less than half a lease ago (by a monotonic instant read before
    /// the renewal) surely still hold: nobody can take a live lease, so no ledger round trip
    /// is needed, and a chat command's request is not held past its slot in the rate budget.
    /// Older than that (the process stalled: the renewals every third of a lease did not
    /// run, or a hung attempt outlasted them), the ledger is asked, renewing them.
    fn attempt_guard(&self, fence: &Fence, renewed: &Renewed, policy: Option<String>) -> Box<AttemptGuard> {
        let (ledger, fence, clock, renewed) = (
            self.ledger.clone(),
            fence.clone(),
            self.dingtalk.clock().clone(),
            renewed.clone(),
        );
        Box::new(move |point| {
            let (ledger, fence, policy, clock, renewed) = (
                ledger.clone(),
                fence.clone(),
                policy.clone(),
                clock.clone(),
                renewed.clone(),
            );
            Box::pin(async move {
                let now = clock.instant();
                let fresh = now.duration_since(renewed_at(&renewed)) < SETTING_LEASE_TTL / 2;
                let check_policy = point == GuardPoint::BeforeSending && policy.is_some();
                if fresh && !check_policy {
                    return Ok(());
                }
                let (names, holder) = (fence.leases.clone(), fence.holder.clone());
                let ttl_ms = millis(SETTING_LEASE_TTL);
                let (held, in_force) = ledger
                    .call(move |l| {
                        let held = l.renew_leases(&names, &holder, ttl_ms)?;
                        let in_force = if check_policy { l.policy_in_force()? } else { None };
                        Ok((held, in_force))
                    })
                    .await
                    .map_err(|e| format!("cannot check the setting's lease: {e}"))?;
                if held.len() != fence.leases.len() {
                    return Err(LEASE_LOST.to_owned());
                }
                mark_renewed(&renewed, now);
                if in_force.is_some_and(|f| Some(f) != policy) {
                    return Err(NOT_IN_FORCE.to_owned());
                }
                Ok(())
            })
        })
    }

    /// Whether the policy this core applies is the one in force for the organisation (or
    /// none was recorded).
    pub async fn policy_in_force(&self) -> Result<bool, LedgerError> {
        let digest = self.policy.digest_hex();
        let in_force = self.ledger.call(|l| l.policy_in_force()).await?;
        Ok(in_force.is_none_or(|f| f == digest))
    }

    async fn change_held(
        &self,
        change: &Change,
        fence: &Fence,
        renewed: &Renewed,
        bound: Bound,
    ) -> Result<Vec<Written>, ChangeError> {
        let group = &change.group;
        let desired = self.desired(&group.conversation_id, Some(&group.chat_id)).await?;
        let cid = group.conversation_id.clone();
        let known: BTreeMap<Setting, KnownValue> = self
            .ledger
            .call(move |l| l.known_settings(&cid))
            .await?
            .into_iter()
            .filter_map(|(s, k)| Setting::from_stored(&s).map(|s| (s, k)))
            .collect();
        let mut out: Vec<Written> = change
            .items
            .iter()
            .map(|(setting, ask)| Written {
                setting: *setting,
                decision: desired.get(setting).cloned().unwrap_or_default().decide(ask),
                policy: desired.get(setting).and_then(|d| d.policy.clone()),
                previous: known.get(setting).cloned(),
                before: None,
                replaced: None,
                scheduled: None,
                error: None,
            })
            .collect();
        if change.until_ms.is_some() {
            self.find_before(group, &mut out).await;
        }
        // A card's Extend keeps the exception's own end: what it restores is the value before
        // the command that made it, not the value the exception set; and DingTalk already has
        // the value, so it is not sent again.
        let mut extending = vec![false; out.len()];
        if change.via == Via::Card && change.until_ms.is_some() {
            for ((w, (_, ask)), extends) in out.iter_mut().zip(&change.items).zip(&mut extending) {
                if let (Some(e), Ask::Chat { value, .. }) =
                    (desired.get(&w.setting).and_then(|d| d.exception.as_ref()), ask)
                    && e.value == *value
                {
                    w.before = e.restores;
                    *extends = true;
                }
            }
        }
        // A policy write applies this process's policy: only while it is the one in force.
        let policy_write = change
            .items
            .iter()
            .any(|(_, ask)| matches!(ask, Ask::Policy { .. }));
        if policy_write && !self.policy_in_force().await? {
            for (w, _) in out
                .iter_mut()
                .zip(&change.items)
                .filter(|(_, (_, ask))| matches!(ask, Ask::Policy { .. }))
            {
                if matches!(w.decision, Decision::Write { .. }) {
                    w.decision = Decision::Held(Held::NotInForce);
                }
            }
        }
        let guard = self.attempt_guard(fence, renewed, policy_write.then(|| self.policy.digest_hex()));
        self.call_dingtalk(group, &mut out, &extending, &*guard, bound)
            .await;
        self.record(change, &mut out, fence).await;
        Ok(out)
    }

    /// What each setting of a group should be now: the policy in force (resolved for this
    /// group alone) and the exception in force. `bound`: the group's chatid, when known.
    pub async fn desired(
        &self,
        conversation_id: &str,
        chat_id: Option<&ChatId>,
    ) -> Result<BTreeMap<Setting, Desired>, LedgerError> {
        let mut out: BTreeMap<Setting, Desired> = BTreeMap::new();
        let cid = conversation_id.to_owned();
        let (binding, departments, reverts) = self
            .ledger
            .call(move |l| Ok((l.binding(&cid)?, l.departments()?, l.pending_reverts(Some(&cid))?)))
            .await?;
        if let Some(policy) = self.policy.current() {
            let bound = self.directory.known(conversation_id, binding).map(|k| k.chat_id);
            let _ = chat_id;
            for (setting, (value, rule)) in policy.wants_for(conversation_id, bound.as_ref(), &departments) {
                out.entry(setting).or_default().policy = Some(PolicyWant {
                    value,
                    rule,
                    selector: policy.selectors(rule),
                });
            }
        }
        for job in reverts {
            let Some(setting) = Setting::from_stored(&job.setting) else {
                continue;
            };
            out.entry(setting).or_default().exception = Some(Exception {
                revert_id: job.id,
                value: job.set_value,
                until_ms: job.due_ms,
                by: job.scheduled_by.clone(),
                command: job.scheduled_command.clone(),
                restores: (job.restore == RevertRestore::Before).then_some(job.value),
            });
        }
        Ok(out)
    }

    /// The value before a timed command, for its end where no policy decides it: what dingops
    /// recorded, else (a group switch) what DingTalk answers now; the DM switch cannot be
    /// read back.
    async fn find_before(&self, group: &Group, out: &mut [Written]) {
        let mut unknown_switch = false;
        // Where a policy decides the setting, its end restores the policy's value: the value
        // before is not needed and not read.
        for w in out.iter_mut().filter(|w| w.policy.is_none()) {
            w.before = w.previous.as_ref().map(|k| k.value);
            unknown_switch |= w.before.is_none() && matches!(w.setting, Setting::Switch(_));
        }
        if !unknown_switch {
            return;
        }
        match self.dingtalk.chat_get(&group.chat_id).await {
            Ok(info) => {
                for w in out
                    .iter_mut()
                    .filter(|w| w.before.is_none() && w.policy.is_none())
                {
                    if let Setting::Switch(s) = w.setting {
                        w.before = info
                            .options
                            .get(s.field())
                            .and_then(|v| u8::try_from(*v).ok())
                            .filter(|v| *v <= 1);
                    }
                }
            }
            Err(e) => tracing::warn!(
                error = %e.short(),
                "could not read the group's settings before a timed command; its end restores the opposite"
            ),
        }
    }

    /// Sends what was decided: the group switches in one `im/group/update`, the DM switch
    /// with `friendswitch/update`.
    /// Items marked in `skip` are not sent (DingTalk has their value already).
    async fn call_dingtalk(
        &self,
        group: &Group,
        out: &mut [Written],
        skip: &[bool],
        guard: &AttemptGuard,
        bound: Bound,
    ) {
        let fields: BTreeMap<&str, u8> = out
            .iter()
            .zip(skip)
            .filter(|(_, skip)| !**skip)
            .filter_map(|(w, _)| match (w.setting, &w.decision) {
                (Setting::Switch(s), Decision::Write { value, .. }) => Some((s.field(), *value)),
                _ => None,
            })
            .collect();
        if !fields.is_empty()
            && let Err(e) = bound
                .call(
                    &self.dingtalk,
                    "im/group/update",
                    self.dingtalk
                        .update_group_fields_guarded(&group.chat_id, &fields, Some(guard)),
                )
                .await
        {
            for (w, _) in out.iter_mut().zip(skip).filter(|(w, skip)| {
                !**skip
                    && matches!(
                        (w.setting, &w.decision),
                        (Setting::Switch(_), Decision::Write { .. })
                    )
            }) {
                w.error = Some(e.clone());
            }
        }
        for (w, _) in out
            .iter_mut()
            .zip(skip)
            .filter(|(w, skip)| !**skip && w.setting == Setting::Dm)
        {
            if let Decision::Write { value, .. } = w.decision
                && let Err(e) = bound
                    .call(
                        &self.dingtalk,
                        "friendswitch/update",
                        self.dingtalk
                            .set_friend_switch_guarded(&group.chat_id, value == 1, Some(guard)),
                    )
                    .await
            {
                w.error = Some(e);
            }
        }
    }

    /// Records what landed: each setting's new value, and for a chat command its exception
    /// (made, replacing an older one, or cancelled by an untimed command). Each record is
    /// retried until it lands: DingTalk made the change, the ledger must know it.
    async fn record(&self, change: &Change, out: &mut [Written], fence: &Fence) {
        let cid = change.group.conversation_id.clone();
        let now = self.dingtalk.ledger_time().now_ms();
        for (w, (_, ask)) in out.iter_mut().zip(&change.items).filter(|(w, _)| w.landed()) {
            let Decision::Write { value, .. } = w.decision else {
                continue;
            };
            let known = KnownValue {
                value,
                set_by: change.by.staff_id.clone(),
                set_by_nick: change.by.nick.clone(),
                via: change.via,
                set_ms: now,
            };
            let (key, stored, fenced) = (cid.clone(), w.setting.stored(), fence.clone());
            // Fenced: once another writer took the setting's lease, its value is the one
            // that stands and this one is not recorded (nor its exception).
            let recorded = self
                .recorder
                .until_landed_with("record a setting's new value", move |l| {
                    l.record_setting_fenced(&key, stored, &known, &fenced)
                })
                .await;
            if !recorded {
                tracing::warn!(
                    setting = stored,
                    "a setting's lease was taken by another writer before this change was recorded; not recorded"
                );
                w.error = Some(ApiError::Abandoned(LEASE_LOST.to_owned()));
                continue;
            }
            // Only a person's command (typed, or a card's button) makes or ends an exception;
            // the end of one (a revert) is finished by whoever ran it.
            if !matches!(change.via, Via::Chat | Via::Card) || !matches!(ask, Ask::Chat { .. }) {
                continue;
            }
            match change.until_ms {
                Some(due_ms) => {
                    let job = RevertJob {
                        id: 0,
                        conversation_id: cid.clone(),
                        chat_id: change.group.chat_id.clone(),
                        setting: stored.to_owned(),
                        value: w.before.unwrap_or(1 - value.min(1)),
                        set_value: value,
                        restore: if w.before.is_some() {
                            RevertRestore::Before
                        } else {
                            RevertRestore::Unknown
                        },
                        due_ms,
                        scheduled_by: change.by.shown(),
                        scheduled_command: change.command.clone(),
                        scheduled_ms: now,
                    };
                    let scheduled = job.clone();
                    w.replaced = self
                        .recorder
                        .until_landed_with("schedule the end of a timed command", move |l| {
                            l.schedule_revert(&job)
                        })
                        .await;
                    w.scheduled = Some(scheduled);
                }
                None => {
                    let key = cid.clone();
                    w.replaced = self
                        .recorder
                        .until_landed_with("cancel the end of a timed command", move |l| {
                            l.cancel_revert(&key, stored)
                        })
                        .await;
                }
            }
        }
    }
}
