//! One function per command of the command table: what each does once the sender has been
//! authorized. Refusals that depend on the group (not bound, chatid of another group) are
//! decided here, before any DingTalk group API is called.

use super::WorkerContext;
use super::reply::{failed, failed_reading, ledger_failed};
use crate::clock::format_ms;
use crate::command::{Command, GroupSwitch, help_text};
use crate::domain::{
    Accepted, Answer, Binding, ChatId, Outcome, ReplyCard, RevertRestore, SettingChange, who,
};
use crate::governance::directory::Source;
use crate::governance::{
    Actor, Ask, Change, ChangeError, Decision, Desired, Group, PolicyWant, Setting, Via,
};
use crate::ledger::LedgerError;

impl WorkerContext {
    /// Carries out an authorized command.
    pub(super) async fn execute(&self, job: &Accepted, command: &Command) -> Answer {
        let name = command.spec().name;
        let revert_after = command.revert_after();
        match command {
            Command::Help => help(name),
            Command::LockDm { .. } => self.set(job, name, Setting::Dm, 1, revert_after).await,
            Command::UnlockDm { .. } => self.set(job, name, Setting::Dm, 0, revert_after).await,
            Command::DmStatus => self.dm_status(job, name).await,
            Command::Bind { chatid } => self.bind(job, name, chatid).await,
            Command::Switch { switch, value, .. } => {
                self.set(job, name, Setting::Switch(*switch), *value, revert_after)
                    .await
            }
            Command::GroupStatus => self.group_status(job, name).await,
            Command::Plan => self.plan(job, name).await,
            Command::Apply { code } => self.apply_code(job, name, code).await,
        }
    }

    /// The chatid of a group and where it comes from: a verified `/bind` wins over the
    /// configuration.
    async fn chatid_of(&self, cid: &str) -> Result<Option<(ChatId, String)>, LedgerError> {
        let known = self.governor.directory().lookup(&self.ledger, cid).await?;
        Ok(known.map(|k| {
            let how = match k.source {
                Source::Bound { by, at_ms } => format!("bound by {by} at {}", format_ms(at_ms)),
                Source::Configured => "from the dingops configuration".to_owned(),
            };
            (k.chat_id, how)
        }))
    }

    /// Changes one setting through the governance core: with a duration the command is an
    /// exception that ends at its time, without one it stands (or is refused when a policy
    /// wants another value).
    async fn set(
        &self,
        job: &Accepted,
        name: &str,
        setting: Setting,
        value: u8,
        revert_after: Option<u32>,
    ) -> Answer {
        let chatid = match self.chatid_of(&job.conversation_id).await {
            Ok(Some((chatid, _))) => chatid,
            Ok(None) => return not_bound(name),
            Err(e) => return ledger_failed(name, &e),
        };
        // In the ledger's time, which every replica's timer compares it with.
        let until_ms = revert_after.map(|minutes| {
            let after = self.revert_minute.saturating_mul(minutes);
            self.dingtalk
                .ledger_time()
                .now_ms()
                .saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2))
        });
        let typed = job.text.as_deref().unwrap_or("").trim().to_owned();
        let change = Change {
            group: Group {
                conversation_id: job.conversation_id.clone(),
                chat_id: chatid.clone(),
            },
            items: vec![(
                setting,
                Ask::Chat {
                    value,
                    timed: until_ms.is_some(),
                },
            )],
            by: Actor {
                staff_id: job.sender_staff_id.clone().unwrap_or_default(),
                nick: job.sender_nick.clone(),
            },
            via: Via::Chat,
            command: typed.clone(),
            until_ms,
        };
        let written = match self.governor.change(change).await {
            Ok(mut w) if !w.is_empty() => w.remove(0),
            Ok(_) => return panicked_like(name),
            Err(ChangeError::Busy) => return busy(name),
            Err(ChangeError::Ledger(e)) => return ledger_failed(name, &e),
        };
        if let Decision::Refused(rule) = &written.decision {
            return refused_by_policy(name, setting, rule, &typed);
        }
        let change = SettingChange {
            chat_id: chatid.to_string(),
            setting: setting.stored().to_owned(),
            value,
            before: written.before.or(written.previous.as_ref().map(|p| p.value)),
            duration_ms: revert_after.map(|minutes| {
                u64::try_from(self.revert_minute.saturating_mul(minutes).as_millis()).unwrap_or(u64::MAX / 2)
            }),
            until_ms: written.scheduled.as_ref().map(|j| j.due_ms),
            by: who(
                job.sender_staff_id.as_deref().unwrap_or(""),
                job.sender_nick.as_deref(),
            ),
            command: typed.clone(),
        };
        if let Some(e) = &written.error {
            let mut answer = failed(name, name, e);
            answer.card = Some(Box::new(ReplyCard::Setting(change)));
            return answer;
        }
        let mut text = match setting {
            Setting::Dm if value == 1 => "Private chat is now forbidden in this group: members can no longer add each other as friends or chat privately.".to_owned(),
            Setting::Dm => "Private chat is allowed again in this group: members can add each other as friends and chat privately.".to_owned(),
            Setting::Switch(s) => format!("{} is now {}.", s.label(), s.describe(value)),
        };
        match (&written.previous, setting) {
            (Some(p), Setting::Dm) => text.push_str(&format!(
                " (dingops had last {} it: {} at {}.)",
                if p.value == 1 { "locked" } else { "unlocked" },
                who(&p.set_by, p.set_by_nick.as_deref()),
                format_ms(p.set_ms)
            )),
            (Some(p), Setting::Switch(s)) if p.value == value => text.push_str(&format!(
                " It already was {} (set by {} at {}), so nothing changed.",
                s.describe(value),
                who(&p.set_by, p.set_by_nick.as_deref()),
                format_ms(p.set_ms)
            )),
            _ => {}
        }
        let mut detail = match setting {
            Setting::Dm => format!("chatid {chatid} is_prohibit={}", value == 1),
            Setting::Switch(s) => format!("chatid {chatid} {}={value}", s.field()),
        };
        if let Some(job) = &written.scheduled {
            let back = match (&written.policy, job.restore) {
                (Some(p), _) => format!(
                    "to the policy's value, {} (rule {}). Until then the policy leaves it alone",
                    setting.describe(p.value),
                    p.rule
                ),
                (None, RevertRestore::Before) => {
                    format!("to {}, as it was before", setting.describe(job.value))
                }
                (None, RevertRestore::Unknown) => format!(
                    "to {}: dingops does not know what it was before",
                    setting.describe(job.value)
                ),
            };
            text.push_str(&format!(
                " It reverts at {}, {back}.",
                self.local_time(job.due_ms)
            ));
            detail.push_str(&format!("; revert at {}", format_ms(job.due_ms)));
        }
        if let Some(p) = &written.replaced {
            text.push_str(&format!(
                " This replaces the revert that was due at {} (scheduled by {} with `{}`).",
                self.local_time(p.due_ms),
                p.scheduled_by,
                p.scheduled_command
            ));
            detail.push_str(&format!("; replaced revert {}", p.id));
        }
        let mut answer = Answer::new(name, Outcome::Ok, text, detail);
        answer.card = Some(Box::new(ReplyCard::Setting(change)));
        answer
    }

    /// The group's settings as DingTalk has them now (`chat/get`), and the DM switch from
    /// the ledger, which DingTalk cannot be asked for.
    async fn group_status(&self, job: &Accepted, name: &str) -> Answer {
        let chatid = match self.chatid_of(&job.conversation_id).await {
            Ok(Some((chatid, _))) => chatid,
            Ok(None) => return not_bound(name),
            Err(e) => return ledger_failed(name, &e),
        };
        let info = match self.dingtalk.chat_get(&chatid).await {
            Ok(info) => info,
            Err(e) => return failed_reading(name, &format!("reading group {chatid}"), &e),
        };
        let cid = job.conversation_id.clone();
        let dm = match self.ledger.call(move |l| l.dm_state(&cid)).await {
            Ok(s) => s,
            Err(e) => return ledger_failed(name, &e),
        };
        let desired = match self.governor.desired(&job.conversation_id, Some(&chatid)).await {
            Ok(d) => d,
            Err(e) => return ledger_failed(name, &e),
        };
        let mark = |setting: Setting| match desired.get(&setting) {
            Some(Desired {
                exception: Some(e), ..
            }) => format!(
                " (exception until {} by {}, `{}`)",
                self.local_time(e.until_ms),
                e.by,
                e.command
            ),
            Some(Desired { policy: Some(p), .. }) => {
                format!(" (policy rule {}: {})", p.rule, setting.describe(p.value))
            }
            _ => String::new(),
        };
        let status = match info.status {
            1 => "normal",
            2 => "disbanded",
            _ => "unknown",
        };
        let mut lines = vec![format!(
            "Group \"{}\" (chatid {chatid}), owner {}, status {status}. Live from DingTalk:",
            info.name, info.owner
        )];
        for switch in GroupSwitch::ALL {
            let value = match info.options.get(switch.field()).copied() {
                Some(v @ (0 | 1)) => switch.describe(v as u8).to_owned(),
                Some(v) => format!("unknown value {v}"),
                None => "not reported by DingTalk".to_owned(),
            };
            lines.push(format!(
                "- {}: {value}{}",
                switch.label(),
                mark(Setting::Switch(switch))
            ));
        }
        lines.push(match dm {
            Some(s) => format!(
                "- Private chat: {}, set by {} at {} through dingops (DingTalk has no API to read it back).{}",
                if s.prohibited { "forbidden" } else { "allowed" },
                who(&s.set_by, s.set_by_nick.as_deref()),
                format_ms(s.set_ms),
                mark(Setting::Dm)
            ),
            None => format!(
                "- Private chat: dingops has not changed it (DingTalk has no API to read it).{}",
                mark(Setting::Dm)
            ),
        });
        let cid = job.conversation_id.clone();
        let reverts = match self.ledger.call(move |l| l.pending_reverts(Some(&cid))).await {
            Ok(r) => r,
            Err(e) => return ledger_failed(name, &e),
        };
        if reverts.is_empty() {
            lines.push("No timed reverts are pending.".to_owned());
        }
        for r in reverts {
            lines.push(format!(
                "Pending revert: {} back to {} at {}, scheduled by {} with `{}`.",
                setting_label(&r.setting),
                setting_value(&r.setting, r.value),
                self.local_time(r.due_ms),
                r.scheduled_by,
                r.scheduled_command
            ));
        }
        Answer::new(name, Outcome::Info, lines.join("\n"), "status")
    }

    async fn dm_status(&self, job: &Accepted, name: &str) -> Answer {
        let binding = match self.chatid_of(&job.conversation_id).await {
            Ok(b) => b,
            Err(e) => return ledger_failed(name, &e),
        };
        let cid = job.conversation_id.clone();
        let state = match self.ledger.call(move |l| l.dm_state(&cid)).await {
            Ok(s) => s,
            Err(e) => return ledger_failed(name, &e),
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

    async fn bind(&self, job: &Accepted, name: &str, chatid: &ChatId) -> Answer {
        let converted = match self.dingtalk.open_conversation_id(chatid).await {
            Ok(c) => c,
            Err(e) => return failed(name, &format!("chatid {chatid}"), &e),
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
            chat_id: chatid.clone(),
            bound_by: who(
                job.sender_staff_id.as_deref().unwrap_or(""),
                job.sender_nick.as_deref(),
            ),
            bound_ms: self.clock.now_ms(),
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
            Err(e) => ledger_failed(name, &e),
        }
    }
}

fn help(name: &str) -> Answer {
    Answer::new(name, Outcome::Info, help_text(), "help")
}

/// A revert's setting in plain words.
pub(super) fn setting_label(setting: &str) -> &'static str {
    match GroupSwitch::from_field(setting) {
        Some(s) => s.label(),
        None => "Private chat",
    }
}

/// A revert's value in plain words.
pub(super) fn setting_value(setting: &str, value: u8) -> &'static str {
    match GroupSwitch::from_field(setting) {
        Some(s) => s.describe(value),
        None if value == 1 => "forbidden",
        None => "allowed",
    }
}

/// ⛔: an untimed command that wants another value than the policy's.
fn refused_by_policy(name: &str, setting: Setting, rule: &PolicyWant, typed: &str) -> Answer {
    let example = if typed.is_empty() { name } else { typed };
    Answer::new(
        name,
        Outcome::Refused,
        format!(
            "The policy keeps {} at \"{}\" in this group (rule {}, {}). To make a temporary exception, give a duration, e.g. `{example} 2h`; at its end the setting returns to the policy's value.",
            setting.label(),
            setting.describe(rule.value),
            rule.rule,
            rule.selector
        ),
        format!("refused by policy rule {}", rule.rule),
    )
}

/// ❌: another writer held the setting for longer than a change waits.
fn busy(name: &str) -> Answer {
    Answer::new(
        name,
        Outcome::Failed,
        "Another change of this setting is under way (a policy run or a timed revert); try again in a moment.",
        "setting busy",
    )
}

/// ❌: the core answered nothing for the one setting asked (it always does).
fn panicked_like(name: &str) -> Answer {
    Answer::new(
        name,
        Outcome::Failed,
        "dingops hit an internal error running this command; the operators have been told in the log. Try again later.",
        "internal error: no outcome for the setting",
    )
}

fn not_bound(name: &str) -> Answer {
    Answer::new(
        name,
        Outcome::Refused,
        "This group is not bound to its DingTalk chatid yet, so I cannot change its settings. An admin can bind it with /bind <chatid>.",
        "group not bound",
    )
}
