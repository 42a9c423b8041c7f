//! Plan and apply a policy: read each matched group's live settings, compare them with what
//! the policy wants, and make the difference with one `im/group/update` per group (all its
//! changed switches at once) and `friendswitch/update` for the private-chat switch.
//!
//! Apply reads each group again right before changing it and hands the difference to the
//! governance core, which serialises each setting with every other writer, drops what an
//! exception holds or what the policy no longer wants, and records each change as soon as
//! DingTalk made it; so a run killed half-way and started again finds the groups already
//! changed as they are and writes none of their readable settings twice.

use std::sync::Arc;

use futures_util::StreamExt as _;

use super::Fleet;
use super::plan::{Change, GroupPlan};
use super::run::RunOrigin;
use crate::clock::format_ms;
use crate::domain::{ChatId, printable};
use crate::governance::policy::{Resolution, Setting, Target, Unresolved};
use crate::governance::{Actor, Ask, Change as GovernedChange, Decision, Group, Held};
use crate::ledger::AuditRow;

/// Groups worked on at once by `apply`: enough for reads and writes of different groups to
/// use their APIs' budgets side by side.
const APPLY_IN_FLIGHT: usize = 8;

/// Who the audit names for changes the policy made.
pub const POLICY_SENDER: &str = "policy";

/// How one group's apply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupApplied {
    /// The plan it worked from, read right before the changes.
    pub plan: GroupPlan,
    /// The settings changed.
    pub applied: Vec<Setting>,
    /// What failed, with the reason.
    pub failures: Vec<String>,
    /// Planned changes the core did not send, and why: an exception made meanwhile holds
    /// the setting, or the policy changed since the group was read.
    pub left_alone: Vec<String>,
}

impl GroupApplied {
    /// The groups of `plan` already as the policy wants, as an apply reports them.
    pub fn unchanged_in(plan: &super::plan::Plan) -> Vec<GroupApplied> {
        plan.groups
            .iter()
            .filter(|g| g.error.is_none() && g.changes.is_empty())
            .map(|g| GroupApplied {
                plan: g.clone(),
                applied: Vec::new(),
                failures: Vec::new(),
                left_alone: Vec::new(),
            })
            .collect()
    }

    pub fn failed(&self) -> bool {
        self.plan.error.is_some() || !self.failures.is_empty()
    }

    /// One line for the operator: changed, unchanged, or failed with the reasons.
    pub fn line(&self) -> String {
        let group = printable(&self.plan.conversation_id);
        let changed: Vec<&str> = self.applied.iter().map(|s| s.key()).collect();
        let mut reasons: Vec<String> = self.plan.error.iter().cloned().collect();
        reasons.extend(self.failures.iter().cloned());
        if !reasons.is_empty() {
            let done = if changed.is_empty() {
                String::new()
            } else {
                format!(" (changed {})", changed.join(", "))
            };
            format!("{group}: failed{done}: {}", printable(&reasons.join("; ")))
        } else if changed.is_empty() {
            format!("{group}: unchanged")
        } else {
            format!("{group}: changed {}", changed.join(", "))
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub groups: Vec<GroupApplied>,
    pub unresolved: Vec<Unresolved>,
    /// Why the run stopped before its end: the policy it applies is no longer the policy in
    /// force for the organisation (the groups not done were left as they are).
    pub stopped: Option<String>,
}

/// Why a run stops when another process put a newer policy in force.
pub const NOT_IN_FORCE: &str = "stopped: the policy in force changed (serve reloaded a new policy) while this run was under way; \
     nothing more of the old policy was written. Run it again to apply the policy in force";

impl ApplyReport {
    /// Groups with at least one change made and nothing failed.
    pub fn changed(&self) -> usize {
        self.groups
            .iter()
            .filter(|g| !g.failed() && !g.applied.is_empty())
            .count()
    }

    pub fn unchanged(&self) -> usize {
        self.groups
            .iter()
            .filter(|g| !g.failed() && g.applied.is_empty())
            .count()
    }

    /// Adds groups a plan just found as the policy wants (not read again), in order.
    pub fn add_unchanged(&mut self, groups: Vec<GroupApplied>) {
        self.groups.extend(groups);
        self.groups
            .sort_by(|a, b| a.plan.conversation_id.cmp(&b.plan.conversation_id));
    }

    /// Groups where something failed, plus selectors that could not be resolved.
    pub fn failed(&self) -> usize {
        self.groups.iter().filter(|g| g.failed()).count() + self.unresolved.len()
    }

    /// `dingops apply`'s exit code: 0 when everything converged, else 1.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.failed() > 0 || self.stopped.is_some())
    }

    /// The summary printed at the end: counts, then each failure with its reason.
    pub fn summary(&self) -> String {
        let settings: usize = self.groups.iter().map(|g| g.applied.len()).sum();
        let mut out = format!(
            "{} groups: {} changed ({settings} settings), {} unchanged, {} failed.\n",
            self.groups.len(),
            self.changed(),
            self.unchanged(),
            self.failed()
        );
        for g in self.groups.iter().filter(|g| g.failed()) {
            out.push_str(&format!("  {}\n", g.line()));
        }
        for u in &self.unresolved {
            out.push_str(&format!("  {}\n", unresolved_line(u)));
        }
        if let Some(why) = &self.stopped {
            out.push_str(&format!("{why}.\n"));
        }
        out
    }
}

fn unresolved_line(u: &Unresolved) -> String {
    printable(&format!("rule {} `{}`: {}", u.rule, u.selector, u.reason)).into_owned()
}

impl Fleet {
    /// Applies the policy to groups already resolved: each group is read again, then changed
    /// (one `group/update` with all its changed switches, `friendswitch/update` for the
    /// private-chat switch), and its changes recorded at once. `origin` names the run in the
    /// audit and the core; `each` sees every group as it finishes. The caller holds the
    /// `policy` lease: [`Fleet::run_policy`].
    pub async fn apply_resolved(
        &self,
        resolution: Resolution,
        origin: &RunOrigin,
        mut each: impl FnMut(&GroupApplied),
    ) -> ApplyReport {
        let mut groups = Vec::with_capacity(resolution.targets.len());
        let stale = std::sync::atomic::AtomicBool::new(false);
        let stale = &stale;
        // Owned targets: a borrowing closure here makes the future not `Send` for every
        // lifetime, which `tokio::spawn` (the reconcile task) needs.
        let mut done = futures_util::stream::iter(resolution.targets)
            .map(|t| async move { self.apply_group(&t, origin, stale).await })
            .buffer_unordered(APPLY_IN_FLIGHT);
        while let Some(g) = done.next().await {
            each(&g);
            groups.push(g);
        }
        drop(done);
        groups.sort_by(|a, b| a.plan.conversation_id.cmp(&b.plan.conversation_id));
        ApplyReport {
            groups,
            unresolved: resolution.unresolved,
            stopped: stale
                .load(std::sync::atomic::Ordering::SeqCst)
                .then(|| NOT_IN_FORCE.to_owned()),
        }
    }

    /// One group of a run; `stale` is set (and every group after it left alone) once the
    /// run's policy is no longer the one in force.
    async fn apply_group(
        &self,
        target: &Target,
        origin: &RunOrigin,
        stale: &std::sync::atomic::AtomicBool,
    ) -> GroupApplied {
        use std::sync::atomic::Ordering::SeqCst;
        if !stale.load(SeqCst) && !self.governor.policy_in_force().await.unwrap_or(true) {
            stale.store(true, SeqCst);
        }
        if stale.load(SeqCst) {
            return GroupApplied {
                plan: GroupPlan::not_read(target),
                applied: Vec::new(),
                failures: Vec::new(),
                left_alone: vec!["not read: the policy in force changed".to_owned()],
            };
        }
        let plan = self.plan_group(target).await;
        let mut result = GroupApplied {
            plan,
            applied: Vec::new(),
            failures: Vec::new(),
            left_alone: Vec::new(),
        };
        if result.plan.error.is_some() || result.plan.changes.is_empty() {
            return result;
        }
        let chatid = result.plan.chat_id.clone();
        let cid = result.plan.conversation_id.clone();
        let change = GovernedChange {
            group: Group {
                conversation_id: cid.clone(),
                chat_id: chatid.clone(),
            },
            items: result
                .plan
                .changes
                .iter()
                .map(|c| (c.setting, Ask::Policy { value: c.wanted }))
                .collect(),
            by: Actor::named(POLICY_SENDER),
            via: origin.via(),
            command: format!("policy {}", origin.audit_name()),
            until_ms: None,
        };
        let written = match self.governor.change(change).await {
            Ok(w) => w,
            Err(e) => {
                result.failures.push(e.to_string());
                return result;
            }
        };
        let mut rows = Vec::new();
        // The rows' time is the ledger's, as the DM state's the plan compares with.
        let now = self.dingtalk.ledger_time().now_ms();
        let mut switch_failed = false;
        for (w, planned) in written.iter().zip(&result.plan.changes) {
            match &w.decision {
                Decision::Write { .. } => {
                    match (&w.error, w.setting) {
                        (None, _) => result.applied.push(w.setting),
                        (Some(e), Setting::Dm) => result.failures.push(format!("friendswitch/update: {e}")),
                        (Some(e), Setting::Switch(_)) if !switch_failed => {
                            switch_failed = true;
                            result.failures.push(format!("group/update: {e}"));
                        }
                        (Some(_), Setting::Switch(_)) => {}
                    }
                    rows.push(audit_row(&cid, &chatid, planned, origin, w.error.as_ref(), now));
                }
                Decision::Held(Held::Exception(e)) => result.left_alone.push(format!(
                    "{} held by an exception until {} by {}",
                    w.setting.key(),
                    format_ms(e.until_ms),
                    e.by
                )),
                Decision::Held(Held::Stale) => result.left_alone.push(format!(
                    "{}: the policy changed since the group was read",
                    w.setting.key()
                )),
                Decision::Held(Held::NotInForce) => {
                    stale.store(true, SeqCst);
                    result
                        .left_alone
                        .push(format!("{}: the policy in force changed", w.setting.key()));
                }
                Decision::Refused(_) | Decision::Superseded => {}
            }
        }
        if !rows.is_empty() {
            let rows = Arc::new(rows);
            self.governor
                .recorder()
                .until_landed("record policy changes in the audit", move |l| {
                    rows.iter().try_for_each(|r| l.record_own_action(r))
                })
                .await;
        }
        result
    }
}

/// The audit row of one change: sender `policy`, the setting and value in the policy's
/// words, the result and, on failure, DingTalk's errcode and message.
fn audit_row(
    cid: &str,
    chatid: &ChatId,
    change: &Change,
    origin: &RunOrigin,
    error: Option<&crate::dingtalk::ApiError>,
    now: u64,
) -> AuditRow {
    use rand::RngExt as _;
    let key = change.setting.key();
    let field = match change.setting {
        Setting::Switch(s) => s.field(),
        Setting::Dm => "is_prohibit",
    };
    let detail = match error {
        None => format!(
            "chatid {chatid} {field}: {} -> {}",
            change.now.text(change.setting, now),
            change.setting.word(change.wanted)
        ),
        Some(e) => e.to_string(),
    };
    AuditRow {
        msg_id: format!("policy-{:016x}-{key}", rand::rng().random::<u64>()),
        received_ms: now,
        conversation_id: cid.to_owned(),
        sender_staff_id: Some(POLICY_SENDER.to_owned()),
        sender_nick: None,
        text: Some(format!("{key} = {}", change.setting.word(change.wanted))),
        command: Some(format!("policy {}", origin.audit_name())),
        status: "done".to_owned(),
        result: Some(if error.is_none() { "ok" } else { "failed" }.to_owned()),
        errcode: error.and_then(crate::dingtalk::ApiError::errcode),
        detail: Some(detail),
        reply: None,
        finished_ms: Some(now),
    }
}
