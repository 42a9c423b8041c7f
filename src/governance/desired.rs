//! What a group's setting should be, and what a request to change it may do: the pure
//! decisions of the governance core, apart from any I/O so they can be tested alone.
//!
//! Three sources say what a setting should be (docs/architecture.md, "The governance core"):
//! the policy, when one of its rules matches the group; an exception, while a timed chat
//! command is in force; and the value last known, read live or written by dingops.

/// The policy's value for one setting of one group, and the rule that decided it (the last
/// matching rule that names the setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWant {
    pub value: u8,
    /// The rule's number, from 1, in file order.
    pub rule: usize,
    /// The rule's group selectors as the file writes them (`"*"`, `dept:3/*`, …).
    pub selector: String,
}

/// A timed chat command in force: the value it set, until when, by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    /// The pending revert that ends it.
    pub revert_id: i64,
    pub value: u8,
    /// When it ends, in the ledger's milliseconds.
    pub until_ms: u64,
    pub by: String,
    pub command: String,
    /// What its end restores without a policy: the value before it, when known.
    pub restores: Option<u8>,
}

/// Everything the core knows about one setting of one group when it decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub policy: Option<PolicyWant>,
    pub exception: Option<Exception>,
}

/// What asks for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// A chat command or a card button; `timed` when it has a duration, which makes it an
    /// exception to the policy.
    Chat { value: u8, timed: bool },
    /// The end of the exception `revert_id`. `before` is the value before the command, when
    /// known; `fallback` the value to restore when neither a policy nor `before` says.
    Revert {
        revert_id: i64,
        before: Option<u8>,
        fallback: u8,
    },
    /// `apply` or reconcile, wanting what the policy wanted when the group was planned.
    Policy { value: u8 },
}

/// Why the end of an exception restores the value it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The policy's value (rule and selector), as the policy is when the exception ends.
    Policy(PolicyWant),
    /// The value before the command.
    Before,
    /// Neither is known (the DM switch, which DingTalk cannot read back, never set by
    /// dingops): the opposite of what the command set.
    Unknown,
}

/// Why a policy write is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// An exception holds the setting until it ends.
    Exception(Exception),
    /// The policy no longer wants the planned value (it was reloaded, or no rule names the
    /// setting any more): the plan is stale.
    Stale,
    /// The policy this process applies is no longer the policy in force for the organisation
    /// (another process loaded a newer one): a policy run stops.
    NotInForce,
}

/// What the core does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send `value` to DingTalk. `restore` is set for the end of an exception.
    Write { value: u8, restore: Option<Restore> },
    /// An untimed chat command against the policy: refused, naming the rule.
    Refused(PolicyWant),
    /// A policy write that must not be sent.
    Held(Held),
    /// The end of an exception that is no longer in force (a newer one replaced it, or an
    /// untimed command cancelled it): nothing to do.
    Superseded,
}

impl Desired {
    /// Decides `ask` against what the setting should be now.
    pub fn decide(&self, ask: &Ask) -> Decision {
        match ask {
            Ask::Chat { value, timed } => match &self.policy {
                Some(p) if !timed && p.value != *value => Decision::Refused(p.clone()),
                _ => Decision::Write {
                    value: *value,
                    restore: None,
                },
            },
            Ask::Revert {
                revert_id,
                before,
                fallback,
            } => {
                if self.exception.as_ref().is_none_or(|e| e.revert_id != *revert_id) {
                    return Decision::Superseded;
                }
                let (value, restore) = match (&self.policy, before) {
                    (Some(p), _) => (p.value, Restore::Policy(p.clone())),
                    (None, Some(b)) => (*b, Restore::Before),
                    (None, None) => (*fallback, Restore::Unknown),
                };
                Decision::Write {
                    value,
                    restore: Some(restore),
                }
            }
            Ask::Policy { value } => match (&self.exception, &self.policy) {
                (Some(e), _) => Decision::Held(Held::Exception(e.clone())),
                (None, Some(p)) if p.value == *value => Decision::Write {
                    value: *value,
                    restore: None,
                },
                (None, _) => Decision::Held(Held::Stale),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(value: u8) -> PolicyWant {
        PolicyWant {
            value,
            rule: 2,
            selector: "\"*\"".into(),
        }
    }

    fn exception(id: i64, value: u8) -> Exception {
        Exception {
            restores: None,
            revert_id: id,
            value,
            until_ms: 1_000,
            by: "Ada (ada01)".into(),
            command: "/mute-all 1m".into(),
        }
    }

    fn write(value: u8) -> Decision {
        Decision::Write { value, restore: None }
    }

    #[test]
    fn without_a_policy_every_chat_command_writes() {
        let d = Desired::default();
        assert_eq!(
            d.decide(&Ask::Chat {
                value: 1,
                timed: false
            }),
            write(1)
        );
        assert_eq!(
            d.decide(&Ask::Chat {
                value: 0,
                timed: true
            }),
            write(0)
        );
    }

    #[test]
    fn an_untimed_command_against_the_policy_is_refused_naming_the_rule_and_one_for_its_value_runs() {
        let d = Desired {
            policy: Some(rule(0)),
            exception: None,
        };
        assert_eq!(
            d.decide(&Ask::Chat {
                value: 1,
                timed: false
            }),
            Decision::Refused(rule(0))
        );
        assert_eq!(
            d.decide(&Ask::Chat {
                value: 0,
                timed: false
            }),
            write(0)
        );
    }

    #[test]
    fn a_timed_command_against_the_policy_is_an_exception_and_runs() {
        let d = Desired {
            policy: Some(rule(0)),
            exception: None,
        };
        assert_eq!(
            d.decide(&Ask::Chat {
                value: 1,
                timed: true
            }),
            write(1)
        );
    }

    #[test]
    fn policy_runs_leave_a_setting_held_by_an_exception_alone() {
        let d = Desired {
            policy: Some(rule(0)),
            exception: Some(exception(7, 1)),
        };
        assert_eq!(
            d.decide(&Ask::Policy { value: 0 }),
            Decision::Held(Held::Exception(exception(7, 1)))
        );
    }

    #[test]
    fn a_policy_write_planned_from_another_policy_is_stale() {
        let d = Desired {
            policy: Some(rule(1)),
            exception: None,
        };
        assert_eq!(d.decide(&Ask::Policy { value: 0 }), Decision::Held(Held::Stale));
        assert_eq!(
            Desired::default().decide(&Ask::Policy { value: 0 }),
            Decision::Held(Held::Stale)
        );
        assert_eq!(d.decide(&Ask::Policy { value: 1 }), write(1));
    }

    #[test]
    fn the_end_of_an_exception_restores_the_policys_value_as_the_policy_is_then() {
        // F3: the policy mutes, `/mute-all 1m` on the muted group; its end stays muted.
        let d = Desired {
            policy: Some(rule(1)),
            exception: Some(exception(7, 1)),
        };
        let ask = Ask::Revert {
            revert_id: 7,
            before: Some(1),
            fallback: 0,
        };
        assert_eq!(
            d.decide(&ask),
            Decision::Write {
                value: 1,
                restore: Some(Restore::Policy(rule(1)))
            }
        );
    }

    #[test]
    fn without_a_policy_the_end_restores_the_value_before_or_else_the_opposite() {
        let d = Desired {
            policy: None,
            exception: Some(exception(7, 1)),
        };
        let known = Ask::Revert {
            revert_id: 7,
            before: Some(1),
            fallback: 0,
        };
        assert_eq!(
            d.decide(&known),
            Decision::Write {
                value: 1,
                restore: Some(Restore::Before)
            }
        );
        let unknown = Ask::Revert {
            revert_id: 7,
            before: None,
            fallback: 0,
        };
        assert_eq!(
            d.decide(&unknown),
            Decision::Write {
                value: 0,
                restore: Some(Restore::Unknown)
            }
        );
    }

    #[test]
    fn the_end_of_a_replaced_or_cancelled_exception_does_nothing() {
        let replaced = Desired {
            policy: None,
            exception: Some(exception(8, 0)),
        };
        let ask = Ask::Revert {
            revert_id: 7,
            before: Some(0),
            fallback: 0,
        };
        assert_eq!(replaced.decide(&ask), Decision::Superseded);
        assert_eq!(Desired::default().decide(&ask), Decision::Superseded);
    }
}
