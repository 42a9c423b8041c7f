//! Plan a policy: read each matched group's live settings and compare them with what the
//! policy wants. `apply.rs` makes the difference.

use futures_util::StreamExt as _;

use super::Fleet;
use crate::domain::{ChatId, DmState};
use crate::governance::policy::{Resolution, Setting, Target, Unresolved};
use crate::ledger::LedgerError;

/// Groups read at once by `plan` (the client paces each API on its own).
const PLAN_IN_FLIGHT: usize = 4;

/// What a group has now for one setting, as far as dingops can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Now {
    /// `chat/get` answered this value.
    Live(i64),
    /// `chat/get` left the field out.
    NotReported,
    /// The private-chat switch as dingops last set it (DingTalk cannot read it back), if
    /// it did: different from the wanted value, or set too long ago.
    Dm(Option<DmState>),
}

impl Now {
    /// In the policy file's words, how long ago counted to `now_ms` (the ledger's time, which
    /// the DM state's time is in).
    pub fn text(&self, setting: Setting, now_ms: u64) -> String {
        match self {
            Now::Live(v @ (0 | 1)) => setting.word(*v as u8).to_owned(),
            Now::Live(v) => format!("unknown value {v}"),
            Now::NotReported => "not reported".to_owned(),
            Now::Dm(None) => "unknown".to_owned(),
            Now::Dm(Some(s)) => {
                let hours = now_ms.saturating_sub(s.set_ms) / 3_600_000;
                format!("{} ({hours}h ago)", setting.word(u8::from(s.prohibited)))
            }
        }
    }
}

/// One setting to change in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub setting: Setting,
    pub now: Now,
    pub wanted: u8,
}

/// A setting the policy names, held by an exception until it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldByException {
    pub setting: Setting,
    /// The value the exception set.
    pub value: u8,
    /// The policy's value, which its end restores.
    pub wanted: u8,
    /// When it ends, in the ledger's milliseconds.
    pub until_ms: u64,
    pub by: String,
    pub command: String,
}

/// What the policy means for one group now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    pub conversation_id: String,
    pub chat_id: ChatId,
    /// The group's name, once it was read.
    pub name: Option<String>,
    /// In [`Setting::all`] order.
    pub changes: Vec<Change>,
    /// Settings the policy names that an exception (a timed chat command) holds: apply and
    /// reconcile leave them alone until it ends.
    pub held: Vec<HeldByException>,
    /// Why the group could not be planned (then `changes` is empty).
    pub error: Option<String>,
}

impl GroupPlan {
    /// A group a run did not read (it stopped before).
    pub fn not_read(target: &Target) -> Self {
        Self {
            conversation_id: target.conversation_id.clone(),
            chat_id: target.chat_id.clone(),
            name: None,
            changes: Vec::new(),
            held: Vec::new(),
            error: None,
        }
    }
}

/// A whole plan: one entry per matched group, and the selectors that matched nothing
/// dingops can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub groups: Vec<GroupPlan>,
    pub unresolved: Vec<Unresolved>,
    /// The ledger's time when the plan was made.
    pub at_ms: u64,
}

impl Plan {
    /// How many settings would change.
    /// What applying this plan costs in DingTalk calls besides each group's re-read: the
    /// groups to apply (with changes, or whose read failed), and the writes (one
    /// `group/update` per group with switch changes, one `friendswitch/update` per DM change).
    pub fn work(&self) -> (std::collections::BTreeSet<String>, u64) {
        let mut writes = 0;
        let mut todo = std::collections::BTreeSet::new();
        for g in &self.groups {
            if g.error.is_some() || !g.changes.is_empty() {
                todo.insert(g.conversation_id.clone());
            }
            if g.changes.iter().any(|c| matches!(c.setting, Setting::Switch(_))) {
                writes += 1;
            }
            writes += g.changes.iter().filter(|c| c.setting == Setting::Dm).count() as u64;
        }
        (todo, writes)
    }

    pub fn change_count(&self) -> usize {
        self.groups.iter().map(|g| g.changes.len()).sum()
    }

    /// How many settings exceptions hold (not changes: apply leaves them alone).
    pub fn held_count(&self) -> usize {
        self.groups.iter().map(|g| g.held.len()).sum()
    }

    /// How many errors (unreadable groups and unresolved selectors).
    pub fn error_count(&self) -> usize {
        self.groups.iter().filter(|g| g.error.is_some()).count() + self.unresolved.len()
    }

    /// `dingops plan`'s exit code: 1 on any error, else 2 when changes are pending, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.error_count() > 0 {
            1
        } else if self.change_count() > 0 {
            2
        } else {
            0
        }
    }
}

impl Fleet {
    /// Reads the group live and compares it with what the policy wants.
    pub async fn plan_group(&self, target: &Target) -> GroupPlan {
        let mut plan = GroupPlan {
            conversation_id: target.conversation_id.clone(),
            chat_id: target.chat_id.clone(),
            name: None,
            changes: Vec::new(),
            held: Vec::new(),
            error: None,
        };
        let info = match self.dingtalk.chat_get(&target.chat_id).await {
            Ok(info) => info,
            Err(e) => {
                plan.error = Some(format!("cannot read the group: {e}"));
                return plan;
            }
        };
        plan.name = Some(info.name.clone());
        if info.status == 2 {
            plan.error = Some("the group is disbanded".to_owned());
            return plan;
        }
        let dm = if target.wanted.contains_key(&Setting::Dm) {
            let cid = target.conversation_id.clone();
            match self.ledger.call(move |l| l.dm_state(&cid)).await {
                Ok(s) => s,
                Err(e) => {
                    plan.error = Some(format!("cannot read the DM state: {e}"));
                    return plan;
                }
            }
        } else {
            None
        };
        let desired = match self
            .governor
            .desired(&target.conversation_id, Some(&target.chat_id))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                plan.error = Some(format!("cannot read the group's exceptions: {e}"));
                return plan;
            }
        };
        // The DM state's time is the ledger's (its writer stamped it so).
        let fresh_after = self
            .dingtalk
            .ledger_time()
            .now_ms()
            .saturating_sub(u64::try_from(self.dm_reapply.as_millis()).unwrap_or(u64::MAX));
        for (setting, wanted) in &target.wanted {
            if let Some(e) = desired.get(setting).and_then(|d| d.exception.as_ref()) {
                plan.held.push(HeldByException {
                    setting: *setting,
                    value: e.value,
                    wanted: *wanted,
                    until_ms: e.until_ms,
                    by: e.by.clone(),
                    command: e.command.clone(),
                });
                continue;
            }
            let now = match setting {
                Setting::Dm => match &dm {
                    Some(s) if u8::from(s.prohibited) == *wanted && s.set_ms > fresh_after => continue,
                    other => Now::Dm(other.clone()),
                },
                Setting::Switch(s) => match info.options.get(s.field()) {
                    Some(v) if *v == i64::from(*wanted) => continue,
                    Some(v) => Now::Live(*v),
                    None => Now::NotReported,
                },
            };
            plan.changes.push(Change {
                setting: *setting,
                now,
                wanted: *wanted,
            });
        }
        plan
    }

    /// Plans every matched group, a few reads at a time.
    pub async fn plan(&self) -> Result<Plan, LedgerError> {
        let resolution = self.resolve().await?;
        Ok(self.plan_resolved(resolution).await)
    }

    /// [`Fleet::plan`] of groups already resolved.
    pub async fn plan_resolved(&self, resolution: Resolution) -> Plan {
        let at_ms = self.dingtalk.ledger_time().now_ms();
        let groups = futures_util::stream::iter(resolution.targets)
            .map(|t| async move { self.plan_group(&t).await })
            .buffered(PLAN_IN_FLIGHT)
            .collect()
            .await;
        Plan {
            groups,
            unresolved: resolution.unresolved,
            at_ms,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::command::GroupSwitch;

    /// A group `cid` named with a terminal escape, with `changes` or an `error`.
    pub(crate) fn group(cid: &str, changes: Vec<Change>, error: Option<&str>) -> GroupPlan {
        GroupPlan {
            conversation_id: cid.into(),
            chat_id: ChatId::parse("chat1").unwrap(),
            name: Some("Team \u{1b}[2J".into()),
            changes,
            held: Vec::new(),
            error: error.map(str::to_owned),
        }
    }

    /// Whole-group mute wanted on, live `now`.
    pub(crate) fn mute(now: i64) -> Change {
        Change {
            setting: Setting::Switch(GroupSwitch::Mute),
            now: Now::Live(now),
            wanted: 1,
        }
    }

    #[test]
    fn the_exit_code_is_one_on_any_error_two_for_pending_changes_and_zero_otherwise() {
        let clean = Plan {
            groups: vec![group("cidA==", vec![], None)],
            unresolved: vec![],
            at_ms: 0,
        };
        assert_eq!(clean.exit_code(), 0);
        let pending = Plan {
            groups: vec![group("cidA==", vec![mute(0)], None)],
            unresolved: vec![],
            at_ms: 0,
        };
        assert_eq!(pending.exit_code(), 2);
        let broken = Plan {
            groups: vec![
                group("cidA==", vec![mute(0)], None),
                group("cidB==", vec![], Some("cannot read the group")),
            ],
            unresolved: vec![],
            at_ms: 0,
        };
        assert_eq!(broken.exit_code(), 1);
    }
}
