//! Who may run what: the admin list, the `isAdmin` switch, and the per-sender limit on admin
//! commands.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::command::CommandSpec;
use crate::domain::{Accepted, Answer, Outcome};

/// The window of the per-sender limit.
const SENDER_WINDOW: Duration = Duration::from_secs(60);

/// Senders remembered before idle ones are forgotten.
const MAX_REMEMBERED: usize = 10_000;

/// The authorization rules of one dingops.
#[derive(Debug, Default)]
pub struct Authorizer {
    admins: HashSet<String>,
    trust_is_admin: bool,
    /// Admin commands per sender per group per minute; 0 = unlimited.
    admin_commands_per_minute: u32,
    /// When each (group, sender) ran its recent admin commands.
    recent: std::sync::Mutex<HashMap<(String, String), VecDeque<Instant>>>,
}

impl Authorizer {
    pub fn new(admins: &[String], trust_is_admin: bool, admin_commands_per_minute: u32) -> Self {
        Self {
            admins: admins.iter().cloned().collect(),
            trust_is_admin,
            admin_commands_per_minute,
            recent: std::sync::Mutex::default(),
        }
    }

    /// `None` when the sender may run `spec` now, else the refusal to send. Commands anyone
    /// may run are never limited.
    pub fn authorize(&self, job: &Accepted, spec: &CommandSpec, now: Instant) -> Option<Answer> {
        if !spec.admin_only {
            return None;
        }
        if !self.is_admin(job) {
            return Some(Answer::new(
                spec.name,
                Outcome::Refused,
                format!(
                    "{} is for admins only. Ask a group admin who is on the dingops admin list.",
                    spec.name
                ),
                "sender is not an admin",
            ));
        }
        if !self.within_sender_limit(job, now) {
            return Some(Answer::new(
                spec.name,
                Outcome::Refused,
                format!(
                    "slow down: at most {} admin commands per minute per person in a group. Try again in a minute.",
                    self.admin_commands_per_minute
                ),
                "per-sender limit",
            ));
        }
        None
    }

    /// On the admin list, or (when trusted) marked `isAdmin` by DingTalk.
    pub fn is_admin(&self, job: &Accepted) -> bool {
        let listed = job
            .sender_staff_id
            .as_deref()
            .is_some_and(|s| !s.is_empty() && self.admins.contains(s));
        listed || (self.trust_is_admin && job.sender_is_admin)
    }

    /// Counts an admin command against its sender's limit in its group; `false` when the
    /// sender is over it. Protects the app's DingTalk quota against a runaway script.
    fn within_sender_limit(&self, job: &Accepted, now: Instant) -> bool {
        let limit = self.admin_commands_per_minute as usize;
        if limit == 0 {
            return true;
        }
        let key = (
            job.conversation_id.clone(),
            job.sender_staff_id.clone().unwrap_or_default(),
        );
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // Forget senders idle for a whole window so the map stays small.
        if recent.len() > MAX_REMEMBERED {
            recent.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < SENDER_WINDOW)
            });
        }
        let times = recent.entry(key).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SENDER_WINDOW)
        {
            times.pop_front();
        }
        if times.len() >= limit {
            return false;
        }
        times.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandKind, CommandSpec};
    use crate::domain::{ConversationType, SessionWebhook};

    fn job(staff: &str, is_admin: bool) -> Accepted {
        Accepted {
            msg_id: "m".into(),
            received_ms: 1,
            conversation_id: "cid==".into(),
            conversation_type: ConversationType::Group,
            conversation_title: None,
            sender_staff_id: Some(staff.into()),
            sender_nick: None,
            sender_is_admin: is_admin,
            msgtype: "text".into(),
            text: Some("/lock-dm".into()),
            session_webhook: SessionWebhook::new("http://127.0.0.1:1/x"),
            session_expires_ms: None,
        }
    }

    fn lock() -> &'static CommandSpec {
        CommandSpec::of(CommandKind::LockDm)
    }

    #[test]
    fn the_admin_list_is_authoritative_when_is_admin_is_not_trusted() {
        let p = Authorizer::new(&["boss".into()], false, 0);
        assert_eq!(p.authorize(&job("boss", false), lock(), Instant::now()), None);
        let refused = p
            .authorize(&job("someone", true), lock(), Instant::now())
            .unwrap();
        assert_eq!(refused.outcome, Outcome::Refused);
        assert_eq!(refused.detail, "sender is not an admin");
    }

    #[test]
    fn is_admin_counts_only_when_trusted() {
        let p = Authorizer::new(&[], true, 0);
        assert_eq!(p.authorize(&job("someone", true), lock(), Instant::now()), None);
        assert!(
            p.authorize(&job("someone", false), lock(), Instant::now())
                .is_some()
        );
    }

    #[test]
    fn commands_for_everyone_are_neither_checked_nor_limited() {
        let p = Authorizer::new(&[], false, 1);
        let help = CommandSpec::of(CommandKind::Help);
        for _ in 0..5 {
            assert_eq!(p.authorize(&job("someone", false), help, Instant::now()), None);
        }
    }

    #[test]
    fn the_per_sender_limit_refuses_the_command_over_it_and_frees_up_after_a_minute() {
        let p = Authorizer::new(&["boss".into()], false, 2);
        let t0 = Instant::now();
        assert!(p.within_sender_limit(&job("boss", false), t0));
        assert!(p.within_sender_limit(&job("boss", false), t0));
        assert!(!p.within_sender_limit(&job("boss", false), t0));
        assert!(p.within_sender_limit(&job("boss", false), t0 + SENDER_WINDOW));
    }
}
