//! Plan and apply a policy: read each matched group's live settings, compare them with what
//! the policy wants, and make the difference with one `im/group/update` per group (all its
//! changed switches at once) and `friendswitch/update` for the private-chat switch.
//!
//! Apply reads each group again right before changing it and records each change in the
//! ledger as soon as DingTalk made it, so a run killed half-way and started again finds the
//! groups already changed as they are and writes none of their readable settings twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::dingtalk::DingTalk;
use crate::domain::{ChatId, DmState, printable, printable_json, table_cell};
use crate::governance::policy::{Policy, Resolution, Setting, Target, Unresolved};
use crate::ledger::{AuditRow, LedgerError, LedgerHandle};

/// Groups read at once by `plan` (the client paces each API on its own).
const PLAN_IN_FLIGHT: usize = 4;
/// Groups worked on at once by `apply`: enough for reads and writes of different groups to
/// use their APIs' budgets side by side.
const APPLY_IN_FLIGHT: usize = 8;
/// Attempts at recording a change DingTalk made.
const RECORD_ATTEMPTS: u32 = 5;

/// Who the audit names for changes the policy made.
pub const POLICY_SENDER: &str = "policy";

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
    /// In the policy file's words.
    pub fn text(&self, setting: Setting) -> String {
        match self {
            Now::Live(v @ (0 | 1)) => setting.word(*v as u8).to_owned(),
            Now::Live(v) => format!("unknown value {v}"),
            Now::NotReported => "not reported".to_owned(),
            Now::Dm(None) => "unknown".to_owned(),
            Now::Dm(Some(s)) => {
                let hours = now_ms().saturating_sub(s.set_ms) / 3_600_000;
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

/// What the policy means for one group now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    pub conversation_id: String,
    pub chat_id: ChatId,
    /// The group's name, once it was read.
    pub name: Option<String>,
    /// In [`Setting::all`] order.
    pub changes: Vec<Change>,
    /// Why the group could not be planned (then `changes` is empty).
    pub error: Option<String>,
}

/// A whole plan: one entry per matched group, and the selectors that matched nothing
/// dingops can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub groups: Vec<GroupPlan>,
    pub unresolved: Vec<Unresolved>,
}

impl Plan {
    /// How many settings would change.
    pub fn change_count(&self) -> usize {
        self.groups.iter().map(|g| g.changes.len()).sum()
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

/// How one group's apply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupApplied {
    /// The plan it worked from, read right before the changes.
    pub plan: GroupPlan,
    /// The settings changed.
    pub applied: Vec<Setting>,
    /// What failed, with the reason.
    pub failures: Vec<String>,
}

impl GroupApplied {
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
}

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

    /// Groups where something failed, plus selectors that could not be resolved.
    pub fn failed(&self) -> usize {
        self.groups.iter().filter(|g| g.failed()).count() + self.unresolved.len()
    }

    /// `dingops apply`'s exit code: 0 when everything converged, else 1.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.failed() > 0)
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
        out
    }
}

fn unresolved_line(u: &Unresolved) -> String {
    printable(&format!("rule {} `{}`: {}", u.rule, u.selector, u.reason)).into_owned()
}

/// The policy with everything it needs to plan and apply: the DingTalk client, the ledger
/// (bindings, departments, DM state, audit) and the configured static bindings.
pub struct Fleet {
    policy: Arc<Policy>,
    dingtalk: Arc<DingTalk>,
    ledger: LedgerHandle,
    static_groups: BTreeMap<String, ChatId>,
    dm_reapply: Duration,
}

/// Why `plan` or `apply` could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no policy file: set `policy` (env DINGOPS_POLICY) to its path")]
    NoPolicy,
    #[error(transparent)]
    Policy(#[from] crate::governance::policy::PolicyError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot build the DingTalk client: {0}")]
    Client(#[from] crate::dingtalk::ApiError),
}

impl Fleet {
    /// The ledger this fleet records its changes in.
    pub fn ledger(&self) -> &LedgerHandle {
        &self.ledger
    }

    /// The fleet of a CLI run (`plan`, `apply`): the configured policy, a DingTalk client of
    /// its own, and the ledger opened without the serve lock, so it can run beside `serve`.
    pub async fn open(settings: &crate::config::Settings) -> Result<Self, OpenError> {
        let path = settings.fleet.policy.as_ref().ok_or(OpenError::NoPolicy)?;
        let policy = Arc::new(Policy::load(path)?);
        let ledger = crate::ledger::open(&settings.ledger.database).await?;
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        // Paced by the budget every process on this ledger shares, a running `serve` included.
        let dingtalk = Arc::new(DingTalk::with_budget(
            &settings.dingtalk,
            metrics,
            ledger.clone(),
        )?);
        Ok(Self::new(
            policy,
            dingtalk,
            ledger,
            settings.worker.groups.clone(),
            settings.fleet.dm_reapply(),
        ))
    }

    pub fn new(
        policy: Arc<Policy>,
        dingtalk: Arc<DingTalk>,
        ledger: LedgerHandle,
        static_groups: BTreeMap<String, ChatId>,
        dm_reapply: Duration,
    ) -> Self {
        Self {
            policy,
            dingtalk,
            ledger,
            static_groups,
            dm_reapply,
        }
    }

    /// The matched groups: bindings from the ledger (they win, as for commands) and from
    /// the configuration, and the discovered departments.
    pub async fn resolve(&self) -> Result<Resolution, LedgerError> {
        let (bindings, departments) = self
            .ledger
            .call(|l| Ok((l.bindings()?, l.departments()?)))
            .await?;
        let mut bound = self.static_groups.clone();
        bound.extend(bindings.into_iter().map(|b| (b.conversation_id, b.chat_id)));
        Ok(self.policy.resolve(&bound, &departments))
    }

    /// Reads the group live and compares it with what the policy wants.
    pub async fn plan_group(&self, target: &Target) -> GroupPlan {
        let mut plan = GroupPlan {
            conversation_id: target.conversation_id.clone(),
            chat_id: target.chat_id.clone(),
            name: None,
            changes: Vec::new(),
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
        let fresh_after =
            now_ms().saturating_sub(u64::try_from(self.dm_reapply.as_millis()).unwrap_or(u64::MAX));
        for (setting, wanted) in &target.wanted {
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
        let groups = futures_util::stream::iter(resolution.targets)
            .map(|t| async move { self.plan_group(&t).await })
            .buffered(PLAN_IN_FLIGHT)
            .collect()
            .await;
        Ok(Plan {
            groups,
            unresolved: resolution.unresolved,
        })
    }

    /// Applies the policy: each group is read again, then changed (one `group/update` with
    /// all its changed switches, `friendswitch/update` for the private-chat switch), and its
    /// changes recorded at once. `origin` names the run in the audit (`apply`, `reconcile`);
    /// `each` sees every group as it finishes.
    pub async fn apply(
        &self,
        origin: &str,
        each: impl FnMut(&GroupApplied),
    ) -> Result<ApplyReport, LedgerError> {
        let resolution = self.resolve().await?;
        Ok(self.apply_resolved(resolution, origin, each).await)
    }

    /// [`Fleet::apply`] to groups already resolved (the CLI counts them first for its
    /// progress bar).
    pub async fn apply_resolved(
        &self,
        resolution: Resolution,
        origin: &str,
        mut each: impl FnMut(&GroupApplied),
    ) -> ApplyReport {
        let mut groups = Vec::with_capacity(resolution.targets.len());
        // Owned targets: a borrowing closure here makes the future not `Send` for every
        // lifetime, which `tokio::spawn` (the reconcile task) needs.
        let mut done = futures_util::stream::iter(resolution.targets)
            .map(|t| async move { self.apply_group(&t, origin).await })
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
        }
    }

    async fn apply_group(&self, target: &Target, origin: &str) -> GroupApplied {
        let plan = self.plan_group(target).await;
        let mut result = GroupApplied {
            plan,
            applied: Vec::new(),
            failures: Vec::new(),
        };
        if result.plan.error.is_some() {
            return result;
        }
        let chatid = result.plan.chat_id.clone();
        let cid = result.plan.conversation_id.clone();
        let switches: Vec<&Change> = result
            .plan
            .changes
            .iter()
            .filter(|c| matches!(c.setting, Setting::Switch(_)))
            .collect();
        let mut rows = Vec::new();
        let mut applied = Vec::new();
        let mut failures = Vec::new();
        if !switches.is_empty() {
            let fields: BTreeMap<&str, u8> = switches
                .iter()
                .filter_map(|c| match c.setting {
                    Setting::Switch(s) => Some((s.field(), c.wanted)),
                    Setting::Dm => None,
                })
                .collect();
            let outcome = self.dingtalk.update_group_fields(&chatid, &fields).await;
            if let Err(e) = &outcome {
                failures.push(format!("group/update: {e}"));
            }
            for change in &switches {
                if outcome.is_ok() {
                    applied.push(change.setting);
                }
                rows.push(audit_row(&cid, &chatid, change, origin, outcome.as_ref().err()));
            }
        }
        let mut dm_state = None;
        if let Some(change) = result.plan.changes.iter().find(|c| c.setting == Setting::Dm) {
            let prohibit = change.wanted == 1;
            let outcome = self.dingtalk.set_friend_switch(&chatid, prohibit).await;
            match &outcome {
                Ok(()) => {
                    applied.push(Setting::Dm);
                    dm_state = Some(DmState {
                        prohibited: prohibit,
                        set_by: POLICY_SENDER.to_owned(),
                        set_by_nick: None,
                        set_ms: now_ms(),
                    });
                }
                Err(e) => failures.push(format!("friendswitch/update: {e}")),
            }
            rows.push(audit_row(&cid, &chatid, change, origin, outcome.as_ref().err()));
        }
        if let Err(e) = self.record(&cid, rows, dm_state).await {
            failures.push(format!("changed in DingTalk but not recorded in the ledger: {e}"));
        }
        result.applied = applied;
        result.failures = failures;
        result
    }

    /// Records one group's changes: the audit rows and the DM state, retried a few times.
    async fn record(&self, cid: &str, rows: Vec<AuditRow>, dm: Option<DmState>) -> Result<(), LedgerError> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = Arc::new(rows);
        let mut wait = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            let (rows, dm, cid) = (rows.clone(), dm.clone(), cid.to_owned());
            let written = self
                .ledger
                .call(move |l| {
                    if let Some(state) = &dm {
                        l.set_dm_state(&cid, state)?;
                    }
                    rows.iter().try_for_each(|r| l.record_own_action(r))
                })
                .await;
            attempt += 1;
            match written {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= RECORD_ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "recording a policy change failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                }
            }
        }
    }
}

/// The audit row of one change: sender `policy`, the setting and value in the policy's
/// words, the result and, on failure, DingTalk's errcode and message.
fn audit_row(
    cid: &str,
    chatid: &ChatId,
    change: &Change,
    origin: &str,
    error: Option<&crate::dingtalk::ApiError>,
) -> AuditRow {
    use rand::RngExt as _;
    let now = now_ms();
    let key = change.setting.key();
    let field = match change.setting {
        Setting::Switch(s) => s.field(),
        Setting::Dm => "is_prohibit",
    };
    let detail = match error {
        None => format!(
            "chatid {chatid} {field}: {} -> {}",
            change.now.text(change.setting),
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
        command: Some(format!("policy {origin}")),
        status: "done".to_owned(),
        result: Some(if error.is_none() { "ok" } else { "failed" }.to_owned()),
        errcode: error.and_then(crate::dingtalk::ApiError::errcode),
        detail: Some(detail),
        reply: None,
        finished_ms: Some(now),
    }
}

/// The plan as an aligned table (group, name, setting, now → wanted), error rows included,
/// and a closing line with the counts.
pub fn plan_table(plan: &Plan) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        ["group", "name", "setting", "now", "", "wanted"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for g in &plan.groups {
        let group = table_cell(&g.conversation_id).into_owned();
        let name = table_cell(g.name.as_deref().unwrap_or("-")).into_owned();
        if let Some(e) = &g.error {
            rows.push(vec![group, name, format!("error: {}", printable(e))]);
            continue;
        }
        for c in &g.changes {
            rows.push(vec![
                group.clone(),
                name.clone(),
                c.setting.key().to_owned(),
                c.now.text(c.setting),
                "→".to_owned(),
                c.setting.word(c.wanted).to_owned(),
            ]);
        }
    }
    for u in &plan.unresolved {
        rows.push(vec![
            format!("rule {}", u.rule),
            printable(&u.selector).into_owned(),
            format!("error: {}", printable(&u.reason)),
        ]);
    }
    let mut out = String::new();
    if rows.len() > 1 {
        out = align(&rows);
    }
    let unchanged = plan
        .groups
        .iter()
        .filter(|g| g.error.is_none() && g.changes.is_empty())
        .count();
    let with_changes = plan.groups.iter().filter(|g| !g.changes.is_empty()).count();
    if plan.change_count() == 0 && plan.error_count() == 0 {
        out.push_str(&format!(
            "Nothing to do: {unchanged} groups are as the policy wants.\n"
        ));
    } else {
        out.push_str(&format!(
            "{} changes in {with_changes} groups; {unchanged} groups as the policy wants; {} errors.\n",
            plan.change_count(),
            plan.error_count()
        ));
    }
    out
}

/// Rows as columns padded to the widest cell; a short row's last cell runs on.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter(|r| r.len() > i + 1)
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i].saturating_sub(cell.chars().count()) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// [`plan_json`] as one line of text, with terminal controls escaped (still the same JSON):
/// what `plan --json` prints.
pub fn plan_json_text(plan: &Plan) -> String {
    format!("{}\n", printable_json(&plan_json(plan).to_string()))
}

/// The plan as one JSON document, for scripts.
pub fn plan_json(plan: &Plan) -> Value {
    let groups: Vec<Value> = plan
        .groups
        .iter()
        .map(|g| {
            let changes: Vec<Value> = g
                .changes
                .iter()
                .map(|c| {
                    let (field, now) = match (&c.setting, &c.now) {
                        (Setting::Switch(s), Now::Live(v)) => (json!(s.field()), json!(v)),
                        (Setting::Switch(s), _) => (json!(s.field()), Value::Null),
                        (Setting::Dm, Now::Dm(Some(d))) => (Value::Null, json!(u8::from(d.prohibited))),
                        (Setting::Dm, _) => (Value::Null, Value::Null),
                    };
                    json!({
                        "setting": c.setting.key(),
                        "field": field,
                        "now": now,
                        "now_text": c.now.text(c.setting),
                        "wanted": c.wanted,
                        "wanted_text": c.setting.word(c.wanted),
                    })
                })
                .collect();
            json!({
                "group": g.conversation_id,
                "chatid": g.chat_id.as_str(),
                "name": g.name,
                "changes": changes,
                "error": g.error,
            })
        })
        .collect();
    let unresolved: Vec<Value> = plan
        .unresolved
        .iter()
        .map(|u| json!({"rule": u.rule, "selector": u.selector, "reason": u.reason}))
        .collect();
    json!({
        "groups": groups,
        "unresolved": unresolved,
        "summary": {
            "groups": plan.groups.len(),
            "changes": plan.change_count(),
            "errors": plan.error_count(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::GroupSwitch;

    fn group(cid: &str, changes: Vec<Change>, error: Option<&str>) -> GroupPlan {
        GroupPlan {
            conversation_id: cid.into(),
            chat_id: ChatId::parse("chat1").unwrap(),
            name: Some("Team \u{1b}[2J".into()),
            changes,
            error: error.map(str::to_owned),
        }
    }

    fn mute(now: i64) -> Change {
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
        };
        assert_eq!(clean.exit_code(), 0);
        let pending = Plan {
            groups: vec![group("cidA==", vec![mute(0)], None)],
            unresolved: vec![],
        };
        assert_eq!(pending.exit_code(), 2);
        let broken = Plan {
            groups: vec![
                group("cidA==", vec![mute(0)], None),
                group("cidB==", vec![], Some("cannot read the group")),
            ],
            unresolved: vec![],
        };
        assert_eq!(broken.exit_code(), 1);
    }

    #[test]
    fn the_table_shows_now_and_wanted_in_the_policys_words_and_escapes_names() {
        let plan = Plan {
            groups: vec![
                group("cidA==", vec![mute(0)], None),
                group(
                    "cidB==",
                    vec![Change {
                        setting: Setting::Dm,
                        now: Now::Dm(None),
                        wanted: 1,
                    }],
                    None,
                ),
                group(
                    "cidC==",
                    vec![],
                    Some("cannot read the group: DingTalk errcode 49000: x"),
                ),
            ],
            unresolved: vec![Unresolved {
                rule: 2,
                selector: "dept:7".into(),
                reason: "department 7 is not among the discovered departments".into(),
            }],
        };
        let table = plan_table(&plan);
        assert!(table.contains("mute_all  false    →  true"), "{table}");
        assert!(table.contains("dm        unknown  →  locked"), "{table}");
        assert!(
            table.contains("error: cannot read the group: DingTalk errcode 49000"),
            "{table}"
        );
        assert!(table.contains("rule 2"), "{table}");
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(
            table.ends_with("2 changes in 2 groups; 0 groups as the policy wants; 2 errors.\n"),
            "{table}"
        );
        let json = plan_json(&plan);
        assert_eq!(json["summary"]["changes"], 2);
        assert_eq!(json["groups"][0]["changes"][0]["field"], "chatBannedType");
        assert_eq!(json["groups"][0]["changes"][0]["now"], 0);
        assert_eq!(json["groups"][1]["changes"][0]["now"], Value::Null);
    }
}
