//! One function per command of the command table: what each does once the sender has been
//! authorized. Refusals that depend on the group (not bound, chatid of another group) are
//! decided here, before any DingTalk group API is called.

use super::WorkerContext;
use super::reply::{failed, failed_reading, ledger_failed};
use crate::clock::{format_ms, now_ms};
use crate::command::{Command, GroupSwitch, help_text};
use crate::domain::{Accepted, Answer, Binding, ChatId, DmState, Outcome, who};
use crate::ledger::LedgerError;

impl WorkerContext {
    /// Carries out an authorized command.
    pub(super) async fn execute(&self, job: &Accepted, command: Command) -> Answer {
        let name = command.spec().name;
        match command {
            Command::Help => help(name),
            Command::LockDm => self.set_dm(job, name, true).await,
            Command::UnlockDm => self.set_dm(job, name, false).await,
            Command::DmStatus => self.dm_status(job, name).await,
            Command::Bind { chatid } => self.bind(job, name, &chatid).await,
            Command::Switch { switch, value } => self.set_switch(job, name, switch, value).await,
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

    async fn set_dm(&self, job: &Accepted, name: &str, prohibit: bool) -> Answer {
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
        if let Err(e) = self.dingtalk.set_friend_switch(&chatid, prohibit).await {
            return failed(name, name, &e);
        }
        let state = DmState {
            prohibited: prohibit,
            set_by: job.sender_staff_id.clone().unwrap_or_default(),
            set_by_nick: job.sender_nick.clone(),
            set_ms: now_ms(),
        };
        let cid = job.conversation_id.clone();
        // DingTalk made the change: record it before anything else of this group happens.
        self.write_until_landed("record the new DM state", move |l| l.set_dm_state(&cid, &state))
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
        Answer::new(
            name,
            Outcome::Ok,
            text,
            format!("chatid {chatid} is_prohibit={prohibit}"),
        )
    }

    async fn set_switch(&self, job: &Accepted, name: &str, switch: GroupSwitch, value: u8) -> Answer {
        let chatid = match self.chatid_of(&job.conversation_id).await {
            Ok(Some((chatid, _))) => chatid,
            Ok(None) => return not_bound(name),
            Err(e) => return ledger_failed(name, &e),
        };
        if let Err(e) = self.dingtalk.update_group(&chatid, switch.field(), value).await {
            return failed(name, name, &e);
        }
        Answer::new(
            name,
            Outcome::Ok,
            format!("{} is now {}.", switch.label(), switch.describe(value)),
            format!("chatid {chatid} {}={value}", switch.field()),
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
            bound_ms: now_ms(),
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

fn not_bound(name: &str) -> Answer {
    Answer::new(
        name,
        Outcome::Refused,
        "This group is not bound to its DingTalk chatid yet, so I cannot change its settings. An admin can bind it with /bind <chatid>.",
        "group not bound",
    )
}
