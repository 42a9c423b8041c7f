//! The two-person rule: in the ops group (`ops_group`), `/plan` posts the policy's plan for
//! the whole organisation with a code (and, with cards, Approve and Discard buttons); a
//! second admin approves it with `/apply <code>` or the button within ten minutes, and the
//! policy is applied, its progress shown on the card. The code works once; the admin who
//! asked cannot approve. See docs/cards.md.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::WorkerContext;
use super::clicks::Click;
use super::reply::ledger_failed;
use crate::cards::{CardData, gate};
use crate::domain::{Accepted, Answer, Outcome, ReplyCard, who};
use crate::ledger::{Approval, ApprovalState, ApprovalVerdict, CardAction, CardRow, CardStatus};

/// Whether deciding `approval` as `state` for `job` resumes its run: it is still
/// `approved` (its run never ended) and `job`'s sender approved it. Commands of one group
/// run one at a time in order, so only the command that approved it, run again after a
/// restart, finds it so.
fn resumes(approval: &Approval, state: ApprovalState, job: &Accepted) -> bool {
    state == ApprovalState::Approved
        && approval.state == ApprovalState::Approved
        && approval.decided_by.is_some()
        && approval.decided_by == job.sender_staff_id
}

/// What an [`Organisation`] call returns.
pub type OrgFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a plan's code works.
pub const CODE_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// At most one progress update of a plan card this often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A plan as the ops group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanBrief {
    /// The digest of the policy the plan was made from: an approval applies that policy only.
    pub policy_digest: String,
    /// Counts, the first changes and the quota cost, for the chat.
    pub text: String,
}

/// The organisation-wide policy runs the worker may start from chat (implemented by the
/// fleet, which sits above the worker).
pub trait Organisation: Send + Sync + 'static {
    fn plan(&self) -> OrgFuture<'_, Result<PlanBrief, String>>;
    /// Applies the policy of an approved plan when its digest is still the plan's;
    /// `progress` gets (groups done, groups in all) as groups finish. `Ok`: the summary.
    fn apply(
        &self,
        run: ApprovedRun,
        progress: tokio::sync::mpsc::UnboundedSender<(usize, usize)>,
    ) -> OrgFuture<'_, Result<String, String>>;
}

/// An approved plan's run, as the organisation applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedRun {
    /// The plan's code: the run's name in the policy lease, so a run resumed after a
    /// restart takes over the lease its stopped process left instead of waiting it out.
    pub code: String,
    /// The digest of the policy the plan was made from.
    pub policy_digest: String,
    /// The staffIds of the admin who asked and the admin who approved, for the audit.
    pub asked_by: String,
    pub approved_by: String,
}

/// The ops group and the policy runs it may start.
#[derive(Clone)]
pub struct OpsRoom {
    /// Its openConversationId.
    pub group: String,
    /// `None` when no policy is configured.
    pub organisation: Option<Arc<dyn Organisation>>,
}

/// A fresh code: eight letters and digits a person can type (no 0/O, 1/I).
fn fresh_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..8)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl WorkerContext {
    /// This worker with the two-person rule in `room`.
    pub fn with_ops_room(mut self, room: Option<OpsRoom>) -> Self {
        self.organisation = room;
        self
    }

    /// The policy runs of the ops group, when `job` is in it; else the answer saying why not.
    fn ops_room(&self, job: &Accepted, name: &str) -> Result<Arc<dyn Organisation>, Answer> {
        let Some(room) = &self.organisation else {
            return Err(Answer::new(
                name,
                Outcome::Info,
                format!("{name} works only in the ops group, and none is configured (ops_group)."),
                "no ops group",
            ));
        };
        if room.group != job.conversation_id {
            return Err(Answer::new(
                name,
                Outcome::Info,
                format!("{name} works only in the ops group (ops_group), not here."),
                "not the ops group",
            ));
        }
        room.organisation.clone().ok_or_else(|| {
            Answer::new(
                name,
                Outcome::Info,
                "No policy is configured (policy), so there is nothing to plan or apply.",
                "no policy",
            )
        })
    }

    /// `/plan`: the plan, recorded with a code for a second admin.
    pub(super) async fn plan(&self, job: &Accepted, name: &str) -> Answer {
        let organisation = match self.ops_room(job, name) {
            Ok(o) => o,
            Err(a) => return a,
        };
        let brief = match organisation.plan().await {
            Ok(b) => b,
            Err(e) => {
                return Answer::new(
                    name,
                    Outcome::Failed,
                    format!("The plan could not be made: {e}."),
                    "plan failed",
                );
            }
        };
        let now = self.dingtalk.ledger_time().now_ms();
        let code = fresh_code();
        let out_track_id = self.cards.as_ref().map(|c| c.fresh_id(&job.msg_id));
        let approval = Approval {
            code: code.clone(),
            conversation_id: job.conversation_id.clone(),
            asked_by: job.sender_staff_id.clone().unwrap_or_default(),
            asked_by_nick: job.sender_nick.clone(),
            asked_ms: now,
            expires_ms: now.saturating_add(CODE_LIFETIME.as_millis() as u64),
            out_track_id: out_track_id.clone(),
            policy_digest: brief.policy_digest.clone(),
            state: ApprovalState::Open,
            decided_by: None,
            decided_ms: None,
        };
        let expires = approval.expires_ms;
        if let Err(e) = self.ledger.call(move |l| l.insert_approval(&approval)).await {
            return ledger_failed(name, &e);
        }
        let mut answer = Answer::new(
            name,
            Outcome::Info,
            format!(
                "{}\n\nA second admin (not {}) approves it with `/apply {code}` before {}; the code works once.",
                brief.text,
                who(
                    job.sender_staff_id.as_deref().unwrap_or(""),
                    job.sender_nick.as_deref()
                ),
                self.local_time(expires)
            ),
            format!("plan {code}"),
        );
        if let Some(out_track_id) = out_track_id {
            answer.card = Some(Box::new(ReplyCard::Plan { code, out_track_id }));
        }
        answer
    }

    /// `/apply <code>`.
    pub(super) async fn apply_code(&self, job: &Accepted, name: &str, code: &str) -> Answer {
        let organisation = match self.ops_room(job, name) {
            Ok(o) => o,
            Err(a) => return a,
        };
        self.approve(job, name, code, organisation).await
    }

    /// Approve or Discard on a plan card.
    pub(super) async fn run_plan_click(&self, job: &Accepted, click: &Click, row: &CardRow) -> Answer {
        let name = click.name();
        let Some(code) = CardData::of(row).code else {
            return Answer::new(
                name,
                Outcome::Info,
                gate::UNKNOWN_CARD,
                "plan card without a code",
            );
        };
        match click.action {
            CardAction::Approve => match self.ops_room(job, name) {
                Ok(organisation) => self.approve(job, name, &code, organisation).await,
                Err(a) => a,
            },
            CardAction::Discard => self.discard(job, name, &code).await,
            _ => Answer::new(name, Outcome::Refused, gate::NO_LONGER_VALID, "stale card"),
        }
    }

    /// Decides `code` for `job`'s sender; `Err` is the refusal. `(approval, true)`: an
    /// approval this sender decided whose run never ended (a stop cut it short): the
    /// command that approved it runs again after the restart, and resumes it.
    async fn decide(
        &self,
        job: &Accepted,
        name: &str,
        code: &str,
        state: ApprovalState,
    ) -> Result<(Approval, bool), Answer> {
        let (key, by) = (code.to_owned(), job.sender_staff_id.clone().unwrap_or_default());
        let now = self.dingtalk.ledger_time().now_ms();
        let verdict = self
            .ledger
            .call(move |l| l.decide_approval(&key, state, &by, now))
            .await
            .map_err(|e| ledger_failed(name, &e))?;
        let refused = |text: String, detail: &str| Answer::new(name, Outcome::Refused, text, detail);
        match verdict {
            ApprovalVerdict::Decided(a) => Ok((a, false)),
            ApprovalVerdict::AlreadyDecided(a) if resumes(&a, state, job) => Ok((a, true)),
            ApprovalVerdict::Unknown => Err(refused(
                format!("No plan has the code {code}. Run /plan for a new one."),
                "unknown code",
            )),
            ApprovalVerdict::Expired(a) => Err(refused(
                format!(
                    "The code {code} expired at {}. Run /plan again.",
                    self.local_time(a.expires_ms)
                ),
                "expired code",
            )),
            ApprovalVerdict::AlreadyDecided(a) => Err(refused(
                format!(
                    "The plan {code} was already {} by {}; a code works once. Run /plan again.",
                    if a.state == ApprovalState::Discarded {
                        ApprovalState::Discarded
                    } else {
                        ApprovalState::Approved
                    },
                    a.decided_by.as_deref().unwrap_or("-")
                ),
                "used code",
            )),
            ApprovalVerdict::SameAdmin(_) => Err(refused(gate::NEEDS_SECOND_ADMIN.to_owned(), "same admin")),
        }
    }

    /// Approves `code` and applies the policy, showing its progress on the plan card.
    async fn approve(
        &self,
        job: &Accepted,
        name: &str,
        code: &str,
        organisation: Arc<dyn Organisation>,
    ) -> Answer {
        let (approval, resumed) = match self.decide(job, name, code, ApprovalState::Approved).await {
            Ok(a) => a,
            Err(a) => return a,
        };
        let approver = who(
            job.sender_staff_id.as_deref().unwrap_or(""),
            job.sender_nick.as_deref(),
        );
        let asker = who(&approval.asked_by, approval.asked_by_nick.as_deref());
        let card = self.plan_card(&approval).await;
        let heading = if resumed {
            tracing::info!(code, "resuming the apply of a plan approved before a restart");
            format!("Approved by {approver} (asked by {asker}); the apply resumed after dingops restarted.")
        } else {
            format!("Approved by {approver} (asked by {asker}).")
        };
        self.show_plan(
            card.as_ref(),
            CardStatus::Approved,
            &format!("{heading} Applying…"),
        )
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let run = organisation.apply(
            ApprovedRun {
                code: code.to_owned(),
                policy_digest: approval.policy_digest.clone(),
                asked_by: approval.asked_by.clone(),
                approved_by: job.sender_staff_id.clone().unwrap_or_default(),
            },
            tx,
        );
        tokio::pin!(run);
        let mut last_shown = self.clock.instant();
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                Some((done, total)) = rx.recv() => {
                    if self.clock.instant().duration_since(last_shown) >= PROGRESS_EVERY {
                        last_shown = self.clock.instant();
                        self.show_plan(card.as_ref(), CardStatus::Approved, &format!("{heading} Applying: {done} of {total} groups done.")).await;
                    }
                }
            }
        };
        // The run ended: a restart no longer resumes it.
        let (key, ended) = (
            code.to_owned(),
            if result.is_ok() {
                ApprovalState::Applied
            } else {
                ApprovalState::Failed
            },
        );
        self.write_until_landed("end the run of an approved plan", move |l| {
            l.end_approval(&key, ended).map(|_| ())
        })
        .await;
        match result {
            Ok(summary) => {
                self.show_plan(
                    card.as_ref(),
                    CardStatus::Done,
                    &format!("{heading}\n\n{summary}"),
                )
                .await;
                Answer::new(
                    name,
                    Outcome::Ok,
                    format!("{heading}\n{summary}"),
                    format!("plan {code} approved by {approver}, asked by {asker}"),
                )
            }
            Err(e) => {
                self.show_plan(
                    card.as_ref(),
                    CardStatus::Failed,
                    &format!("{heading}\n\nThe apply failed: {e}."),
                )
                .await;
                Answer::new(
                    name,
                    Outcome::Failed,
                    format!("{heading} The apply failed: {e}."),
                    format!("plan {code} approved by {approver}; apply failed"),
                )
            }
        }
    }

    /// Discards `code`.
    async fn discard(&self, job: &Accepted, name: &str, code: &str) -> Answer {
        let approval = match self.decide(job, name, code, ApprovalState::Discarded).await {
            Ok((a, _)) => a,
            Err(a) => return a,
        };
        let by = who(
            job.sender_staff_id.as_deref().unwrap_or(""),
            job.sender_nick.as_deref(),
        );
        let card = self.plan_card(&approval).await;
        self.show_plan(
            card.as_ref(),
            CardStatus::Discarded,
            &format!("Discarded by {by}."),
        )
        .await;
        Answer::new(
            name,
            Outcome::Ok,
            format!("Discarded by {by}: the plan {code} will not be applied."),
            format!("plan {code} discarded by {by}"),
        )
    }

    /// The plan card of an approval, when it has one.
    async fn plan_card(&self, approval: &Approval) -> Option<CardRow> {
        let id = approval.out_track_id.clone()?;
        self.cards.as_ref()?;
        self.ledger.call(move |l| l.card(&id)).await.ok().flatten()
    }

    /// Shows a plan card's status, with `line` after the plan.
    async fn show_plan(&self, card: Option<&CardRow>, status: CardStatus, line: &str) {
        let (Some(cards), Some(row)) = (&self.cards, card) else {
            return;
        };
        let plan = CardData::of(row).params.get("body").cloned().unwrap_or_default();
        let plan = plan
            .split("\n\nA second admin")
            .next()
            .unwrap_or_default()
            .to_owned();
        if let Err(e) = cards
            .update(row, status, &[], &format!("{plan}\n\n{line}"), None)
            .await
        {
            tracing::warn!(error = %e, "could not update a plan card");
        }
    }
}
