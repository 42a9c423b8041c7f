//! Who may run what: the admin list, the `isAdmin` switch, and the per-sender limit on admin
//! commands. One rule for typed commands and card clicks: the worker asks [`Authorizer::authorize`]
//! before a typed admin command, the card gate ([`crate::cards::gate`]) asks
//! [`Authorizer::is_admin`] and [`Authorizer::take`] before it enters a click, so a click
//! counts against the same per-sender limit as a typed command (see docs/cards.md).

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
        if !self.is_admin(job.sender_staff_id.as_deref(), job.sender_is_admin) {
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
        if !self.take(
            &job.conversation_id,
            job.sender_staff_id.as_deref().unwrap_or_default(),
            now,
        ) {
            return Some(Answer::new(
                spec.name,
                Outcome::Refused,
                self.slow_down(),
                "per-sender limit",
            ));
        }
        None
    }

    /// Whether `sender` is an admin: on the admin list, or (when trusted) marked `isAdmin`
    /// by the channel. A robot message carries `isAdmin` (`claims_admin`); a card click
    /// does not, so its clicker must be on the list.
    pub fn is_admin(&self, sender: Option<&str>, claims_admin: bool) -> bool {
        let listed = sender.is_some_and(|s| !s.is_empty() && self.admins.contains(s));
        listed || (self.trust_is_admin && claims_admin)
    }

    /// What a sender over the per-sender limit is told.
    pub fn slow_down(&self) -> String {
        format!(
            "slow down: at most {} admin commands (card clicks included) per minute per person in a group. Try again in a minute.",
            self.admin_commands_per_minute
        )
    }

    /// Counts an admin command or click by `sender` in `conversation_id` against the
    /// sender's limit there; `false` when the sender is over it (nothing counted). Protects
    /// the app's DingTalk quota against a runaway script or a clicking spree.
    pub fn take(&self, conversation_id: &str, sender: &str, now: Instant) -> bool {
        let limit = self.admin_commands_per_minute as usize;
        if limit == 0 {
            return true;
        }
        let key = (conversation_id.to_owned(), sender.to_owned());
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

    /// Gives back what [`Authorizer::take`] counted at `at`: the click was not entered after
    /// all (a duplicate, a busy card, a button no longer offered), so it ran nothing.
    pub fn give_back(&self, conversation_id: &str, sender: &str, at: Instant) {
        let key = (conversation_id.to_owned(), sender.to_owned());
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(times) = recent.get_mut(&key)
            && let Some(i) = times.iter().rposition(|t| *t == at)
        {
            times.remove(i);
        }
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
        assert!(p.take("cid==", "boss", t0));
        assert!(p.take("cid==", "boss", t0));
        assert!(!p.take("cid==", "boss", t0));
        assert!(p.take("cid==", "boss", t0 + SENDER_WINDOW));
    }

    #[test]
    fn typed_commands_and_clicks_share_one_limit_and_a_click_not_entered_is_given_back() {
        let p = Authorizer::new(&["boss".into()], false, 2);
        let t0 = Instant::now();
        assert_eq!(p.authorize(&job("boss", false), lock(), t0), None);
        // A click in the same group: the second and last of the minute.
        assert!(p.take("cid==", "boss", t0));
        let refused = p.authorize(&job("boss", false), lock(), t0).unwrap();
        assert_eq!(refused.detail, "per-sender limit");
        assert!(refused.text.contains("card clicks included"), "{}", refused.text);
        // The click was not entered after all: its count is given back.
        p.give_back("cid==", "boss", t0);
        assert_eq!(p.authorize(&job("boss", false), lock(), t0), None);
    }

    #[test]
    fn a_click_carries_no_is_admin_so_only_the_list_admits_its_clicker() {
        let p = Authorizer::new(&["boss".into()], true, 0);
        assert!(p.is_admin(Some("boss"), false));
        assert!(p.is_admin(Some("someone"), true), "a trusted isAdmin");
        assert!(
            !p.is_admin(Some("someone"), false),
            "a click never claims isAdmin"
        );
        assert!(!p.is_admin(Some(""), false) && !p.is_admin(None, false));
    }
}
