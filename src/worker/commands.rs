//! One function per command of the command table: what each does once the sender has been
//! authorized. Refusals that depend on the group (not bound, chatid of another group) are
//! decided here, before any DingTalk group API is called.

use super::WorkerContext;
use super::reply::{failed, failed_reading, ledger_failed};
use crate::clock::format_ms;
use crate::command::{Command, GroupSwitch, help_text};
use crate::domain::{Accepted, Answer, Binding, ChatId, DM_SETTING, DmState, Outcome, RevertJob, who};
use crate::ledger::LedgerError;

impl WorkerContext {
    /// Carries out an authorized command.
    pub(super) async fn execute(&self, job: &Accepted, command: &Command) -> Answer {
        let name = command.spec().name;
        let revert_after = command.revert_after();
        match command {
            Command::Help => help(name),
            Command::LockDm { .. } => self.set_dm(job, name, true, revert_after).await,
            Command::UnlockDm { .. } => self.set_dm(job, name, false, revert_after).await,
            Command::DmStatus => self.dm_status(job, name).await,
            Command::Bind { chatid } => self.bind(job, name, chatid).await,
            Command::Switch { switch, value, .. } => {
                self.set_switch(job, name, *switch, *value, revert_after).await
            }
            Command::GroupStatus => self.group_status(job, name).await,
        }
    }

    /// The chatid of a group and where it comes from: a verified `/bind` wins over the
    /// configuration.
    async fn chatid_of(&self, cid: &str) -> Result<Option<(ChatId, String)>, LedgerError> {
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

    /// After a setting changed: schedules its revert when the command had a duration, and
    /// replaces a pending revert of the same setting either way. Returns the sentences for
    /// the reply and for the audit detail.
    async fn after_change(
        &self,
        job: &Accepted,
        chatid: &ChatId,
        setting: &str,
        value_set: u8,
        revert_after: Option<u32>,
    ) -> (String, String) {
        let cid = job.conversation_id.clone();
        let key = setting.to_owned();
        // A read failure only costs the "replaces" sentence; the write below still replaces.
        let previous = self
            .ledger
            .call(move |l| l.pending_reverts(Some(&cid)))
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|j| j.setting == key);
        let mut text = String::new();
        let mut detail = String::new();
        match revert_after {
            Some(minutes) => {
                // In the ledger's time, which every replica's timer compares it with.
                let now = self.dingtalk.ledger_time().now_ms();
                let after = self.revert_minute.saturating_mul(minutes);
                let due_ms = now.saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2));
                let revert = RevertJob {
                    id: 0,
                    conversation_id: job.conversation_id.clone(),
                    chat_id: chatid.clone(),
                    setting: setting.to_owned(),
                    value: 1 - value_set.min(1),
                    due_ms,
                    scheduled_by: who(
                        job.sender_staff_id.as_deref().unwrap_or(""),
                        job.sender_nick.as_deref(),
                    ),
                    scheduled_command: job.text.as_deref().unwrap_or("").trim().to_owned(),
                    scheduled_ms: now,
                };
                self.write_until_landed("schedule a timed revert", move |l| {
                    l.schedule_revert(&revert).map(|_| ())
                })
                .await;
                text.push_str(&format!(" It reverts at {}.", self.local_time(due_ms)));
                detail.push_str(&format!("; revert at {}", crate::clock::format_ms(due_ms)));
            }
            None if previous.is_some() => {
                let (cid, key) = (job.conversation_id.clone(), setting.to_owned());
                self.write_until_landed("cancel a timed revert", move |l| {
                    l.cancel_revert(&cid, &key).map(|_| ())
                })
                .await;
            }
            None => {}
        }
        if let Some(p) = previous {
            text.push_str(&format!(
                " This replaces the revert that was due at {} (scheduled by {} with `{}`).",
                self.local_time(p.due_ms),
                p.scheduled_by,
                p.scheduled_command
            ));
            detail.push_str(&format!("; replaced revert {}", p.id));
        }
        (text, detail)
    }

    async fn set_dm(&self, job: &Accepted, name: &str, prohibit: bool, revert_after: Option<u32>) -> Answer {
        let chatid = match self.chatid_of(&job.conversation_id).await {
            Ok(Some((chatid, _))) => chatid,
            Ok(None) => return not_bound(name),
            Err(e) => return ledger_failed(name, &e),
        };
        let cid = job.conversation_id.clone();
        let previous = match self.ledger.call(move |l| l.dm_state(&cid)).await {
            Ok(p) => p,
            Err(e) => return ledger_failed(name, &e),
        };
        // Held until the pending revert of this setting is replaced (see lock_setting).
        let _setting = self.lock_setting(&job.conversation_id, DM_SETTING).await;
        if let Err(e) = self.dingtalk.set_friend_switch(&chatid, prohibit).await {
            return failed(name, name, &e);
        }
        let state = DmState {
            prohibited: prohibit,
            set_by: job.sender_staff_id.clone().unwrap_or_default(),
            set_by_nick: job.sender_nick.clone(),
            set_ms: self.clock.now_ms(),
        };
        let cid = job.conversation_id.clone();
        // DingTalk made the change: record it before anything else of this group happens.
        self.write_until_landed("record the new DM state", move |l| l.set_dm_state(&cid, &state))
            .await;
        let (timed, timed_detail) = self
            .after_change(job, &chatid, DM_SETTING, u8::from(prohibit), revert_after)
            .await;
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
        text.push_str(&timed);
        Answer::new(
            name,
            Outcome::Ok,
            text,
            format!("chatid {chatid} is_prohibit={prohibit}{timed_detail}"),
        )
    }

    async fn set_switch(
        &self,
        job: &Accepted,
        name: &str,
        switch: GroupSwitch,
        value: u8,
        revert_after: Option<u32>,
    ) -> Answer {
        let chatid = match self.chatid_of(&job.conversation_id).await {
            Ok(Some((chatid, _))) => chatid,
            Ok(None) => return not_bound(name),
            Err(e) => return ledger_failed(name, &e),
        };
        // Held until the pending revert of this setting is replaced (see lock_setting).
        let _setting = self.lock_setting(&job.conversation_id, switch.field()).await;
        if let Err(e) = self.dingtalk.update_group(&chatid, switch.field(), value).await {
            return failed(name, name, &e);
        }
        let (timed, timed_detail) = self
            .after_change(job, &chatid, switch.field(), value, revert_after)
            .await;
        Answer::new(
            name,
            Outcome::Ok,
            format!("{} is now {}.{timed}", switch.label(), switch.describe(value)),
            format!("chatid {chatid} {}={value}{timed_detail}", switch.field()),
        )
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
            lines.push(format!("- {}: {value}", switch.label()));
        }
        lines.push(match dm {
            Some(s) => format!(
                "- Private chat: {}, set by {} at {} through dingops (DingTalk has no API to read it back).",
                if s.prohibited { "forbidden" } else { "allowed" },
                who(&s.set_by, s.set_by_nick.as_deref()),
                format_ms(s.set_ms)
            ),
            None => "- Private chat: dingops has not changed it (DingTalk has no API to read it).".to_owned(),
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

fn not_bound(name: &str) -> Answer {
    Answer::new(
        name,
        Outcome::Refused,
        "This group is not bound to its DingTalk chatid yet, so I cannot change its settings. An admin can bind it with /bind <chatid>.",
        "group not bound",
    )
}
