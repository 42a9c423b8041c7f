//! An in-memory ledger: the same contract as the SQLite store without durability. Unit tests
//! of the worker's decisions run against it; nothing in the service uses it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

mod cards;

use super::cards::{Approval, CardRow};
use super::{
    AuditRow, BindingStore, CommandLog, CommandStatus, LeaseStore, LedgerError, Maintenance, PruneStep,
    QuotaBook, QuotaCount, QuotaTake, RateBudget, RevertState, SettingStore, Slot, budget_args, budget_slot,
};
use crate::clock::Clock;
use crate::domain::{Accepted, Answer, Binding, Delivery, Department, KnownValue, Pending, RevertJob};

/// One command as the memory ledger keeps it.
#[derive(Debug, Clone)]
struct Row {
    accepted: Accepted,
    answer: Option<Answer>,
    delivery: Option<String>,
    finished_ms: Option<u64>,
}

impl Row {
    fn status(&self) -> &'static str {
        let status = match (&self.finished_ms, &self.answer) {
            (Some(_), _) => CommandStatus::Done,
            (None, Some(_)) => CommandStatus::Answered,
            (None, None) => CommandStatus::Accepted,
        };
        status.as_str()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Commands by position (1, 2, …), the order they were accepted in.
    commands: BTreeMap<i64, Row>,
    positions: HashMap<String, i64>,
    /// The last position handed out; never reused, even once its command is pruned.
    last_pos: i64,
    bindings: HashMap<String, Binding>,
    /// What dingops knows per group and setting.
    known: BTreeMap<(String, String), KnownValue>,
    departments: Vec<Department>,
    /// Pending reverts; run or replaced ones are dropped.
    reverts: Vec<RevertJob>,
    next_revert: i64,
    /// Audit rows of dingops' own actions.
    own: Vec<AuditRow>,
    /// Reserved send slots per API, ascending; only those that can still share a window
    /// with a new call are kept.
    call_slots: HashMap<String, Vec<u64>>,
    /// Leases by name: holder and the end of the lease (ms).
    leases: HashMap<String, (String, u64)>,
    /// The policy in force for the organisation: its digest.
    policy_in_force: Option<String>,
    /// Calls counted per (month, api, class).
    quota: BTreeMap<(String, String, crate::quota::Class), u64>,
    /// Months marked spent, with the first mark's time.
    quota_spent: HashMap<String, u64>,
    /// Cards by `out_track_id`, each with its insertion number (`cards.rs`).
    cards: HashMap<String, (u64, CardRow)>,
    /// The last insertion number of a card.
    last_card: u64,
    /// Approvals by code.
    approvals: HashMap<String, Approval>,
}

impl State {
    /// Whether a command (or an own action) with `msg_id` is recorded.
    fn knows(&self, msg_id: &str) -> bool {
        self.positions.contains_key(msg_id) || self.own.iter().any(|r| r.msg_id == msg_id)
    }

    /// Records an accepted command at the next position unless its `msg_id` is known;
    /// `true` when it was new. [`CommandLog::accept`] and a card's click both record here.
    fn insert_command(&mut self, cmd: &Accepted) -> bool {
        if self.positions.contains_key(&cmd.msg_id) {
            return false;
        }
        self.last_pos += 1;
        let pos = self.last_pos;
        self.positions.insert(cmd.msg_id.clone(), pos);
        self.commands.insert(
            pos,
            Row {
                accepted: cmd.clone(),
                answer: None,
                delivery: None,
                finished_ms: None,
            },
        );
        true
    }
}

/// A [`Ledger`] held in memory.
#[derive(Debug)]
pub struct MemoryLedger {
    /// Shared by the handles a test reopens (a restart keeps what was stored).
    state: Arc<Mutex<State>>,
    /// What leases and the rate budget are decided by.
    clock: Arc<dyn Clock>,
}

#[cfg(test)]
impl Default for MemoryLedger {
    fn default() -> Self {
        Self::with_clock(crate::clock::wall_clock())
    }
}

/// The open commands at positions in `range` that `wanted` keeps, in acceptance order, at
/// most `limit`, each with its position.
fn open_rows(
    s: &State,
    range: impl std::ops::RangeBounds<i64>,
    wanted: impl Fn(&Row) -> bool,
    limit: usize,
) -> Vec<(i64, Pending)> {
    s.commands
        .range(range)
        .filter(|(_, row)| row.finished_ms.is_none() && wanted(row))
        .take(limit)
        .map(|(pos, row)| {
            let pending = Pending {
                accepted: row.accepted.clone(),
                answer: row.answer.clone(),
            };
            (*pos, pending)
        })
        .collect()
}

impl MemoryLedger {
    /// A ledger on the machine's clock (tests).
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger whose leases and rate budget read `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::default(),
            clock,
        }
    }

    /// Another handle on the same store, reading `clock`: what reopening a file or connecting
    /// again to a server is for the other stores (tests).
    #[cfg(test)]
    pub(crate) fn reopen(&self, clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::clone(&self.state),
            clock,
        }
    }

    /// Every stored reply URL, in acceptance order; a finished command keeps none (tests).
    #[cfg(test)]
    pub(crate) fn stored_webhooks(&self) -> Vec<Option<String>> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.commands
            .values()
            .map(|r| {
                r.finished_ms
                    .is_none()
                    .then(|| r.accepted.session_webhook.expose().to_owned())
            })
            .collect()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, LedgerError> {
        self.state.lock().map_err(|_| LedgerError::Poisoned)
    }

    fn update(&self, msg_id: &str, f: impl FnOnce(&mut Row)) -> Result<(), LedgerError> {
        let mut s = self.state()?;
        if let Some(pos) = s.positions.get(msg_id).copied()
            && let Some(row) = s.commands.get_mut(&pos)
        {
            f(row);
        }
        Ok(())
    }
}

impl CommandLog for MemoryLedger {
    fn accept(&self, cmd: &Accepted) -> Result<bool, LedgerError> {
        Ok(self.state()?.insert_command(cmd))
    }

    fn record_answer(&self, msg_id: &str, answer: &Answer) -> Result<(), LedgerError> {
        self.update(msg_id, |row| row.answer = Some(answer.clone()))
    }

    fn finish(
        &self,
        msg_id: &str,
        answer: &Answer,
        delivery: &Delivery,
        finished_ms: u64,
    ) -> Result<(), LedgerError> {
        self.update(msg_id, |row| {
            row.answer = Some(answer.clone());
            row.delivery = Some(delivery.as_ledger_text().into_owned());
            row.finished_ms = Some(finished_ms);
        })
    }

    fn open_after(&self, cursor: i64, limit: usize) -> Result<Vec<(i64, Pending)>, LedgerError> {
        let s = self.state()?;
        Ok(open_rows(&s, cursor.saturating_add(1).., |_| true, limit))
    }

    fn open_in_conversation_after(
        &self,
        conversation_id: &str,
        after: i64,
        through: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Pending)>, LedgerError> {
        let s = self.state()?;
        if through <= after {
            return Ok(Vec::new());
        }
        Ok(open_rows(
            &s,
            after.saturating_add(1)..=through,
            |row| row.accepted.conversation_id == conversation_id,
            limit,
        ))
    }

    fn newest_done_by_group(&self) -> Result<HashMap<String, i64>, LedgerError> {
        let s = self.state()?;
        let Some(oldest_open) = s
            .commands
            .iter()
            .find(|(_, r)| r.finished_ms.is_none())
            .map(|(p, _)| *p)
        else {
            return Ok(HashMap::new());
        };
        let mut newest = HashMap::new();
        for (pos, row) in s.commands.range(oldest_open..) {
            if row.finished_ms.is_some() {
                newest.insert(row.accepted.conversation_id.clone(), *pos);
            }
        }
        Ok(newest)
    }

    fn open_count(&self) -> Result<u64, LedgerError> {
        let s = self.state()?;
        Ok(s.commands.values().filter(|r| r.finished_ms.is_none()).count() as u64)
    }

    fn history(
        &self,
        conversation_id: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, LedgerError> {
        let s = self.state()?;
        let mut rows: Vec<AuditRow> = s
            .commands
            .values()
            .filter(|r| conversation_id.is_none_or(|c| r.accepted.conversation_id == c))
            .filter(|r| r.accepted.received_ms >= since_ms.unwrap_or(0))
            .map(|r| {
                let a = &r.accepted;
                AuditRow {
                    msg_id: a.msg_id.clone(),
                    received_ms: a.received_ms,
                    conversation_id: a.conversation_id.clone(),
                    sender_staff_id: a.sender_staff_id.clone(),
                    sender_nick: a.sender_nick.clone(),
                    text: a.text.clone(),
                    command: r.answer.as_ref().map(|x| x.command.clone()),
                    status: r.status().to_owned(),
                    result: r.answer.as_ref().map(|x| x.outcome.as_str().to_owned()),
                    errcode: r.answer.as_ref().and_then(|x| x.errcode),
                    detail: r.answer.as_ref().map(|x| x.detail.clone()),
                    reply: r.delivery.clone(),
                    finished_ms: r.finished_ms,
                }
            })
            .collect();
        // Own actions are finished rows of the same table in the SQL stores.
        rows.extend(
            s.own
                .iter()
                .filter(|r| conversation_id.is_none_or(|c| r.conversation_id == c))
                .filter(|r| r.received_ms >= since_ms.unwrap_or(0))
                .cloned(),
        );
        rows.sort_by(|x, y| {
            y.received_ms
                .cmp(&x.received_ms)
                .then_with(|| x.msg_id.cmp(&y.msg_id))
        });
        rows.truncate(limit);
        Ok(rows)
    }

    fn record_own_action(&self, row: &AuditRow) -> Result<(), LedgerError> {
        let mut s = self.state()?;
        // A msgId already recorded is left as it is, as the SQL stores' `ON CONFLICT` does.
        if !s.knows(&row.msg_id) {
            s.own.push(row.clone());
        }
        Ok(())
    }
}

impl BindingStore for MemoryLedger {
    fn binding(&self, conversation_id: &str) -> Result<Option<Binding>, LedgerError> {
        Ok(self.state()?.bindings.get(conversation_id).cloned())
    }

    fn bind(&self, binding: &Binding) -> Result<(), LedgerError> {
        self.state()?
            .bindings
            .insert(binding.conversation_id.clone(), binding.clone());
        Ok(())
    }

    fn bindings(&self) -> Result<Vec<Binding>, LedgerError> {
        let mut all: Vec<Binding> = self.state()?.bindings.values().cloned().collect();
        all.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        Ok(all)
    }

    fn departments(&self) -> Result<Vec<Department>, LedgerError> {
        Ok(self.state()?.departments.clone())
    }

    fn replace_departments(&self, departments: &[Department]) -> Result<(), LedgerError> {
        let mut sorted = departments.to_vec();
        sorted.sort_by_key(|d| d.dept_id);
        self.state()?.departments = sorted;
        Ok(())
    }
}

impl SettingStore for MemoryLedger {
    fn known_settings(&self, conversation_id: &str) -> Result<Vec<(String, KnownValue)>, LedgerError> {
        Ok(self
            .state()?
            .known
            .iter()
            .filter(|((cid, _), _)| cid == conversation_id)
            .map(|((_, setting), k)| (setting.clone(), k.clone()))
            .collect())
    }

    fn record_setting(
        &self,
        conversation_id: &str,
        setting: &str,
        known: &KnownValue,
    ) -> Result<(), LedgerError> {
        self.state()?
            .known
            .insert((conversation_id.to_owned(), setting.to_owned()), known.clone());
        Ok(())
    }

    fn record_setting_fenced(
        &self,
        conversation_id: &str,
        setting: &str,
        known: &KnownValue,
        fence: &super::Fence,
    ) -> Result<bool, LedgerError> {
        let mut s = self.state()?;
        let held = fence
            .leases
            .iter()
            .all(|name| s.leases.get(name).is_some_and(|(h, _)| *h == fence.holder));
        if held {
            s.known
                .insert((conversation_id.to_owned(), setting.to_owned()), known.clone());
        }
        Ok(held)
    }

    fn set_policy_in_force(&self, digest: &str, _by: &str, _set_ms: u64) -> Result<(), LedgerError> {
        self.state()?.policy_in_force = Some(digest.to_owned());
        Ok(())
    }

    fn policy_in_force(&self) -> Result<Option<String>, LedgerError> {
        Ok(self.state()?.policy_in_force.clone())
    }

    fn schedule_revert(&self, job: &RevertJob) -> Result<Option<RevertJob>, LedgerError> {
        let replaced = self.cancel_revert(&job.conversation_id, &job.setting)?;
        let mut s = self.state()?;
        s.next_revert += 1;
        let mut job = job.clone();
        job.id = s.next_revert;
        s.reverts.push(job);
        Ok(replaced)
    }

    fn cancel_revert(&self, conversation_id: &str, setting: &str) -> Result<Option<RevertJob>, LedgerError> {
        let mut s = self.state()?;
        let i = s
            .reverts
            .iter()
            .position(|j| j.conversation_id == conversation_id && j.setting == setting);
        Ok(i.map(|i| s.reverts.remove(i)))
    }

    fn pending_reverts(&self, conversation_id: Option<&str>) -> Result<Vec<RevertJob>, LedgerError> {
        let mut jobs: Vec<RevertJob> = self
            .state()?
            .reverts
            .iter()
            .filter(|j| conversation_id.is_none_or(|c| j.conversation_id == c))
            .cloned()
            .collect();
        jobs.sort_by_key(|j| (j.due_ms, j.id));
        Ok(jobs)
    }

    fn claim_revert(&self, id: i64) -> Result<bool, LedgerError> {
        Ok(self.state()?.reverts.iter().any(|j| j.id == id))
    }

    fn finish_revert(
        &self,
        id: i64,
        _state: RevertState,
        _result: &str,
        _finished_ms: u64,
    ) -> Result<(), LedgerError> {
        self.state()?.reverts.retain(|j| j.id != id);
        Ok(())
    }
}

impl LeaseStore for MemoryLedger {
    fn try_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError> {
        let mut s = self.state()?;
        let now_ms = self.clock.now_ms();
        let until = now_ms.saturating_add(ttl_ms);
        let mut held = Vec::new();
        for name in names {
            let free = s
                .leases
                .get(name)
                .is_none_or(|(h, end)| h == holder || *end <= now_ms);
            if free {
                s.leases.insert(name.clone(), (holder.to_owned(), until));
                held.push(name.clone());
            }
        }
        Ok(held)
    }

    fn renew_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError> {
        let mut s = self.state()?;
        let now_ms = self.clock.now_ms();
        let until = now_ms.saturating_add(ttl_ms);
        let mut renewed = Vec::new();
        for name in names {
            if let Some((h, end)) = s.leases.get_mut(name)
                && h == holder
                && *end > now_ms
            {
                *end = until;
                renewed.push(name.clone());
            }
        }
        Ok(renewed)
    }

    fn release_leases(&self, names: &[String], holder: &str) -> Result<(), LedgerError> {
        let mut s = self.state()?;
        for name in names {
            if s.leases.get(name).is_some_and(|(h, _)| h == holder) {
                s.leases.remove(name);
            }
        }
        Ok(())
    }

    fn release_holder(&self, holder: &str) -> Result<(), LedgerError> {
        self.state()?.leases.retain(|_, (h, _)| h != holder);
        Ok(())
    }
}

impl RateBudget for MemoryLedger {
    fn clock_ms(&self) -> Result<u64, LedgerError> {
        Ok(self.clock.now_ms())
    }

    fn clock_is_ours(&self) -> bool {
        self.clock.is_system()
    }

    fn reserve_call(&self, api: &str, max: u32, window_ms: u64) -> Result<Slot, LedgerError> {
        budget_args(max, window_ms)?;
        let mut s = self.state()?;
        // Read under the lock: waiting for it is not free time.
        let now = self.clock.now_ms();
        let slots = s.call_slots.entry(api.to_owned()).or_default();
        let horizon = now.saturating_sub(window_ms);
        let stale = slots.partition_point(|&t| t <= horizon);
        slots.drain(..stale);
        let max_th_latest = slots.len().checked_sub(max as usize).map(|i| slots[i]);
        let slot = budget_slot(now, slots.last().copied(), max_th_latest, window_ms, max);
        let at = slots.partition_point(|&t| t <= slot);
        slots.insert(at, slot);
        Ok(Slot {
            at_ms: slot,
            now_ms: now,
        })
    }
}

impl QuotaBook for MemoryLedger {
    fn take_quota(
        &self,
        month: &str,
        api: &str,
        class: crate::quota::Class,
        ceiling: Option<u64>,
    ) -> Result<QuotaTake, LedgerError> {
        let mut s = self.state()?;
        let used: u64 = s
            .quota
            .iter()
            .filter(|((m, _, _), _)| m == month)
            .map(|(_, n)| n)
            .sum();
        if ceiling.is_some_and(|c| used >= c) {
            return Ok(QuotaTake { taken: false, used });
        }
        *s.quota
            .entry((month.to_owned(), api.to_owned(), class))
            .or_default() += 1;
        Ok(QuotaTake {
            taken: true,
            used: used + 1,
        })
    }

    fn quota_counts(&self, month: &str) -> Result<Vec<QuotaCount>, LedgerError> {
        let mut counts: Vec<QuotaCount> = self
            .state()?
            .quota
            .iter()
            .filter(|((m, _, _), _)| m == month)
            .map(|((_, api, class), calls)| QuotaCount {
                api: api.clone(),
                class: *class,
                calls: *calls,
            })
            .collect();
        // As the SQL stores order them: by API, then by the class's stored name.
        counts.sort_by(|a, b| (&a.api, a.class.as_str()).cmp(&(&b.api, b.class.as_str())));
        Ok(counts)
    }

    fn mark_quota_spent(&self, month: &str, at_ms: u64) -> Result<(), LedgerError> {
        self.state()?.quota_spent.entry(month.to_owned()).or_insert(at_ms);
        Ok(())
    }

    fn quota_spent(&self, month: &str) -> Result<bool, LedgerError> {
        Ok(self.state()?.quota_spent.contains_key(month))
    }
}

impl Maintenance for MemoryLedger {
    fn ping(&self) -> Result<(), LedgerError> {
        self.state().map(|_| ())
    }

    fn prune_finished(&self, before_ms: u64, after: i64, limit: usize) -> Result<PruneStep, LedgerError> {
        let mut s = self.state()?;
        let limit = limit.max(1);
        // The window of the next `limit` commands, by position.
        let window: Vec<(i64, bool, bool)> = s
            .commands
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(&pos, row)| {
                let old = row.accepted.received_ms < before_ms && row.finished_ms.unwrap_or(0) < before_ms;
                (
                    pos,
                    row.finished_ms.is_some() && old,
                    row.accepted.received_ms >= before_ms,
                )
            })
            .collect();
        let Some(&(last, _, _)) = window.last() else {
            return Ok(PruneStep::default());
        };
        let mut deleted = 0;
        for &(pos, prune, _) in &window {
            if prune && let Some(row) = s.commands.remove(&pos) {
                s.positions.remove(&row.accepted.msg_id);
                deleted += 1;
            }
        }
        // Commands are accepted in time order, so the first recent one ends the pruning.
        let finished = window.iter().any(|&(_, _, recent)| recent) || window.len() < limit;
        Ok(PruneStep {
            deleted,
            next: (!finished).then_some(last),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rate_budget_follows_the_sliding_window_rule() {
        super::super::testing::budget_tests::run_all(|clock| {
            Box::new(super::MemoryLedger::with_clock(clock))
        });
    }

    #[test]
    fn leases_are_granted_renewed_expired_and_released_as_the_trait_says() {
        let clock = crate::clock::ManualClock::at(0);
        super::super::testing::check_lease_contract(&super::MemoryLedger::with_clock(clock.clone()), &clock);
    }
}
