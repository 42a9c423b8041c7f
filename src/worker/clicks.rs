//! Running the clicks on a reply card's buttons that the gate entered as commands
//! (`cards::gate`): Undo, Extend and Revert now go through the governance core like any
//! command, and the card shows the result in place. See docs/cards.md.

use std::sync::Arc;
use std::time::Duration;

use super::WorkerContext;
use super::reply::{failed, ledger_failed};
use crate::cards::{CLICK_MSGTYPE, CardData, gate, render};
use crate::domain::{Accepted, Answer, Delivery, Outcome, RevertJob, SettingChange};
use crate::governance::{Actor, Ask, Change, ChangeError, Decision, Group, Setting, Via};
use crate::ledger::{CardAction, CardKind, CardRow, CardStatus, RevertState};

/// The longest a timed change may last from now, Extend included: DingTalk's own limit on
/// timed settings is 30 days, and so is ours.
pub const MAX_EXCEPTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The detail of a click whose card no longer waits for it.
const NOT_PENDING: &str = "not the card's pending click";

/// The detail of a click on a timed card whose revert the timer ran meanwhile: the card
/// ends reverted, as the setting is, and the click changed nothing.
const TIMER_REVERTED: &str = "reverted by the timer meanwhile";

/// A click entered as a command: its action and card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub action: CardAction,
    pub out_track_id: String,
}

impl Click {
    /// The click a command is, when it is one (`cardAction`, text `<action> <outTrackId>`
    /// with an action dingops knows: the gate enters no other).
    pub fn of(accepted: &Accepted) -> Option<Self> {
        if accepted.msgtype != CLICK_MSGTYPE {
            return None;
        }
        let (action, id) = accepted.text.as_deref()?.split_once(' ')?;
        Some(Self {
            action: action.parse().ok()?,
            out_track_id: id.to_owned(),
        })
    }

    /// The name the audit shows, e.g. `undo (card)`.
    pub fn name(&self) -> &'static str {
        match self.action {
            CardAction::Undo => "undo (card)",
            CardAction::Extend => "extend (card)",
            CardAction::RevertNow => "revert now (card)",
            CardAction::Approve => "approve (card)",
            CardAction::Discard => "discard (card)",
        }
    }
}

/// Why a click changes nothing: the card is no longer the setting's latest word.
fn stale(name: &str, why: &str) -> Answer {
    Answer::new(
        name,
        Outcome::Refused,
        format!("{} {why}", gate::NO_LONGER_VALID),
        "stale card",
    )
}

impl WorkerContext {
    /// Runs a click: see the module's documentation.
    pub(super) async fn run_click(&self, job: &Accepted, click: &Click) -> Answer {
        let name = click.name();
        let id = click.out_track_id.clone();
        let row = match self.ledger.call(move |l| l.card(&id)).await {
            Ok(Some(row)) => row,
            Ok(None) => return Answer::new(name, Outcome::Info, gate::UNKNOWN_CARD, "unknown card"),
            Err(e) => return ledger_failed(name, &e),
        };
        // A plan card's click is decided by its approval alone, which a code allows once:
        // an Approve whose apply a stop cut short finds its card no longer pending (the card
        // shows the apply's progress) but its approval still running, and resumes it.
        if row.kind == CardKind::Plan {
            return self.run_plan_click(job, click, &row).await;
        }
        if row.pending_click.as_deref() != Some(job.msg_id.as_str()) {
            return Answer::new(name, Outcome::Info, gate::NO_LONGER_VALID, NOT_PENDING);
        }
        let Some(change) = CardData::of(&row).change else {
            return Answer::new(name, Outcome::Info, gate::UNKNOWN_CARD, "card without a change");
        };
        let Some(setting) = Setting::from_stored(&change.setting) else {
            return Answer::new(
                name,
                Outcome::Info,
                gate::UNKNOWN_CARD,
                "card of an unknown setting",
            );
        };
        // The card must still be the setting's latest word: dingops' record still has the
        // value it set and, for a timed one, its revert is still the one pending.
        let (cid, stored) = (row.conversation_id.clone(), change.setting.clone());
        let (known, pending) = match self
            .ledger
            .call(move |l| Ok((l.known_setting(&cid, &stored)?, l.pending_reverts(Some(&cid))?)))
            .await
        {
            Ok(x) => x,
            Err(e) => return ledger_failed(name, &e),
        };
        let revert = pending
            .into_iter()
            .find(|r| r.setting == change.setting && Some(r.due_ms) == change.until_ms);
        let changed = known.as_ref().map(|k| k.value) != Some(change.value);
        if changed || (change.until_ms.is_some() && revert.is_none()) {
            if let Some(answer) = self.reverted_by_timer(name, &row, &change, setting).await {
                return answer;
            }
            return stale(
                name,
                if changed {
                    "The setting was changed since."
                } else {
                    "Its timed change has ended."
                },
            );
        }
        let by = Actor {
            staff_id: job.sender_staff_id.clone().unwrap_or_default(),
            nick: job.sender_nick.clone(),
        };
        match (click.action, revert) {
            (CardAction::Extend, Some(r)) => self.extend(name, &row, &change, setting, r, by).await,
            (CardAction::Undo | CardAction::RevertNow, Some(r)) => {
                self.end_now(name, click, &row, &change, setting, r, by).await
            }
            (CardAction::Undo, None) => self.undo(name, &row, &change, setting, by).await,
            _ => stale(name, "This card does not offer it."),
        }
    }

    /// Extend: the same duration again from the current end, within [`MAX_EXCEPTION`].
    async fn extend(
        &self,
        name: &str,
        row: &CardRow,
        change: &SettingChange,
        setting: Setting,
        revert: RevertJob,
        by: Actor,
    ) -> Answer {
        let duration = change.duration_ms.unwrap_or(0);
        let now = self.dingtalk.ledger_time().now_ms();
        let until = revert.due_ms.saturating_add(duration);
        let max = now.saturating_add(u64::try_from(MAX_EXCEPTION.as_millis()).unwrap_or(u64::MAX));
        if until > max {
            return Answer::new(
                name,
                Outcome::Refused,
                "Extending it would end it more than 30 days from now, which DingTalk does not allow; type a new command instead.",
                "extend past 30 days",
            );
        }
        let Some(group) = group_of(row, change) else {
            return stale(name, "Its group is not known.");
        };
        let core = Change {
            group,
            items: vec![(
                setting,
                Ask::Chat {
                    value: change.value,
                    timed: true,
                },
            )],
            by: by.clone(),
            via: Via::Card,
            command: format!("extend of `{}`", change.command),
            until_ms: Some(until),
        };
        match self.through_core(name, core).await {
            Ok(()) => Answer::new(
                name,
                Outcome::Ok,
                format!(
                    "Extended by {}: {} stays {} until {}.",
                    by.shown(),
                    setting.label(),
                    setting.describe(change.value),
                    self.local_time(until)
                ),
                format!("revert {} moved to {}", revert.id, crate::clock::format_ms(until)),
            ),
            Err(a) => a,
        }
    }

    /// Revert now (and Undo of a timed change): the end of the exception, run now, as the
    /// timer would run it.
    #[allow(clippy::too_many_arguments)]
    async fn end_now(
        &self,
        name: &str,
        click: &Click,
        row: &CardRow,
        change: &SettingChange,
        setting: Setting,
        revert: RevertJob,
        by: Actor,
    ) -> Answer {
        let id = revert.id;
        // Its time came: the timer runs it (a claim does not tell a revert the timer runs
        // from one a stop cut off), and its run is the one revert. The card shows how it
        // ended; only a revert the timer did not take is run here.
        if self.dingtalk.ledger_time().now_ms() >= revert.due_ms {
            if let Err(e) = self.revert_ended(&revert).await {
                return ledger_failed(name, &e);
            }
            if let Some(answer) = self.reverted_by_timer(name, row, change, setting).await {
                return answer;
            }
        }
        match self.ledger.call(move |l| l.claim_revert(id)).await {
            Ok(true) => {}
            Ok(false) => return stale(name, "Its timed change has ended."),
            Err(e) => return ledger_failed(name, &e),
        }
        let core = Change::end_exception(
            &revert,
            setting,
            by.clone(),
            Via::Card,
            format!(
                "{} of `{}`",
                click.action.as_str().replace('_', " "),
                change.command
            ),
        );
        let result = self.through_core_value(name, core).await;
        let (state, short) = match &result {
            Ok(_) => (RevertState::Done, "ok"),
            Err(_) => (RevertState::Failed, "failed"),
        };
        let clock = Arc::clone(&self.clock);
        self.write_until_landed("finish a revert run from a card", move |l| {
            l.finish_revert(id, state, short, clock.now_ms())
        })
        .await;
        match result {
            Ok(value) => Answer::new(
                name,
                Outcome::Ok,
                format!(
                    "{} by {}: {} is back to {}.",
                    if click.action == CardAction::Undo {
                        "Undone"
                    } else {
                        "Reverted now"
                    },
                    by.shown(),
                    setting.label(),
                    setting.describe(value)
                ),
                format!("revert {id} run from the card"),
            ),
            Err(a) => a,
        }
    }

    /// Undo of a change that stands: back to the policy's value, else the value before, else
    /// the opposite (the DM switch, which cannot be read back).
    async fn undo(
        &self,
        name: &str,
        row: &CardRow,
        change: &SettingChange,
        setting: Setting,
        by: Actor,
    ) -> Answer {
        let Some(group) = group_of(row, change) else {
            return stale(name, "Its group is not known.");
        };
        let desired = match self.governor.desired(&group.conversation_id, None).await {
            Ok(d) => d,
            Err(e) => return ledger_failed(name, &e),
        };
        let target = desired
            .get(&setting)
            .and_then(|d| d.policy.as_ref().map(|p| p.value))
            .or(change.before)
            .unwrap_or(1 - change.value.min(1));
        let core = Change {
            group,
            items: vec![(
                setting,
                Ask::Chat {
                    value: target,
                    timed: false,
                },
            )],
            by: by.clone(),
            via: Via::Card,
            command: format!("undo of `{}`", change.command),
            until_ms: None,
        };
        match self.through_core(name, core).await {
            Ok(()) => Answer::new(
                name,
                Outcome::Ok,
                format!(
                    "Undone by {}: {} is back to {}.",
                    by.shown(),
                    setting.label(),
                    setting.describe(target)
                ),
                format!("{}={target}", change.setting),
            ),
            Err(a) => a,
        }
    }

    /// Waits until the timer's run of `revert` ended (it is no longer pending nor running),
    /// for at most the time a revert's DingTalk call may take and a few seconds to record it.
    async fn revert_ended(&self, revert: &RevertJob) -> Result<(), crate::ledger::LedgerError> {
        let deadline = self.clock.instant() + self.dingtalk.call_deadline() + Duration::from_secs(5);
        loop {
            let cid = revert.conversation_id.clone();
            let pending = self.ledger.call(move |l| l.pending_reverts(Some(&cid))).await?;
            if !pending.iter().any(|r| r.id == revert.id) || self.clock.instant() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The answer of a click on a timed card whose end came and whose setting no longer has
    /// the card's value: the timer's revert ran meanwhile, and the card ends reverted.
    async fn reverted_by_timer(
        &self,
        name: &str,
        row: &CardRow,
        change: &SettingChange,
        setting: Setting,
    ) -> Option<Answer> {
        let until = change.until_ms?;
        if self.dingtalk.ledger_time().now_ms() < until {
            return None;
        }
        let (cid, stored) = (row.conversation_id.clone(), change.setting.clone());
        let known = self
            .ledger
            .call(move |l| l.known_setting(&cid, &stored))
            .await
            .ok()
            .flatten()?;
        (known.value != change.value).then(|| {
            Answer::new(
                name,
                Outcome::Info,
                format!(
                    "Its timed revert ran at the same time: {} is back to {}.",
                    setting.label(),
                    setting.describe(known.value)
                ),
                TIMER_REVERTED,
            )
        })
    }

    async fn through_core(&self, name: &str, core: Change) -> Result<(), Answer> {
        self.through_core_value(name, core).await.map(|_| ())
    }

    /// Runs a click's change through the core: the value written, or the answer saying why not.
    async fn through_core_value(&self, name: &str, core: Change) -> Result<u8, Answer> {
        let written = match self.governor.change(core).await {
            Ok(mut w) if !w.is_empty() => w.remove(0),
            Ok(_) => return Err(stale(name, "dingops found nothing to change.")),
            Err(ChangeError::Busy) => {
                return Err(Answer::new(
                    name,
                    Outcome::Failed,
                    "Another change of this setting is under way; try again in a moment.",
                    "setting busy",
                ));
            }
            Err(ChangeError::Ledger(e)) => return Err(ledger_failed(name, &e)),
        };
        if let Some(e) = &written.error {
            return Err(failed(name, name, e));
        }
        match written.decision {
            Decision::Write { value, .. } => Ok(value),
            Decision::Refused(rule) => Err(Answer::new(
                name,
                Outcome::Refused,
                format!("The policy keeps this setting as it is (rule {}).", rule.rule),
                format!("refused by policy rule {}", rule.rule),
            )),
            _ => Err(stale(name, "Another change holds the setting.")),
        }
    }

    /// Shows a click's result on its card: the new status and buttons, or, when it changed
    /// nothing, the card as it was with a private notice to the clicker.
    pub(super) async fn show_click(&self, job: &Accepted, click: &Click, answer: &Answer) -> Delivery {
        let Some(cards) = self.cards.clone() else {
            return Delivery::Failed("cards-off".into());
        };
        let id = click.out_track_id.clone();
        let row = match self.ledger.call(move |l| l.card(&id)).await {
            Ok(Some(row)) => row,
            Ok(None) => return Delivery::Failed("unknown-card".into()),
            Err(e) => {
                tracing::warn!(error = %e, "could not read a clicked card");
                return Delivery::Failed("ledger".into());
            }
        };
        // A click that did not run (its card moved on meanwhile) leaves the card as it is.
        if answer.detail == NOT_PENDING {
            return Delivery::Failed("stale-click".into());
        }
        let mut data = CardData::of(&row);
        let body = data.params.get("body").cloned().unwrap_or_default();
        let clicker = job.sender_staff_id.clone().unwrap_or_default();
        let before_status = data
            .params
            .get("status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(CardStatus::Done);
        let before_buttons = render::buttons_of(&data.params);
        let (status, buttons, body, notice) = match answer.outcome {
            // A plan card's approval and discard show their own progress and end.
            Outcome::Ok if row.kind == CardKind::Plan => return Delivery::Card,
            Outcome::Ok => {
                let status = render::status_after(click.action);
                let buttons = match (&mut data.change, click.action) {
                    (Some(change), CardAction::Extend) => {
                        // The card's change now ends at the revert's new time.
                        let (cid, s) = (row.conversation_id.clone(), change.setting.clone());
                        if let Ok(pending) = self.ledger.call(move |l| l.pending_reverts(Some(&cid))).await
                            && let Some(r) = pending.iter().find(|r| r.setting == s)
                        {
                            change.until_ms = Some(r.due_ms);
                        }
                        gate::count_extend(&mut data.extends, render::standing_buttons(change))
                    }
                    _ => Vec::new(),
                };
                (status, buttons, format!("{body}\n\n{}", answer.text), None)
            }
            _ if answer.detail == TIMER_REVERTED => (
                CardStatus::Reverted,
                Vec::new(),
                format!("{body}\n\n{}", answer.text),
                None,
            ),
            Outcome::Refused if answer.detail == "stale card" => (
                CardStatus::Superseded,
                Vec::new(),
                body,
                Some(answer.text.clone()),
            ),
            _ => (before_status, before_buttons, body, Some(answer.text.clone())),
        };
        let notice = notice.map(|n| (clicker.clone(), n));
        // Only while the card still works on this click: one the timer or a newer change
        // ended meanwhile keeps that end.
        match cards
            .end_click(
                &row,
                data,
                status,
                &buttons,
                &body,
                notice.as_ref().map(|(u, n)| (u.as_str(), n.as_str())),
            )
            .await
        {
            Ok(true) => Delivery::Card,
            Ok(false) => Delivery::Failed("card-moved-on".into()),
            Err(e) => {
                tracing::warn!(error = %e, "could not update a clicked card");
                Delivery::Failed("card-update".into())
            }
        }
    }
}

/// The group a card's change was made in.
fn group_of(row: &CardRow, change: &SettingChange) -> Option<Group> {
    Some(Group {
        conversation_id: row.conversation_id.clone(),
        chat_id: crate::domain::ChatId::parse(&change.chat_id).ok()?,
    })
}
