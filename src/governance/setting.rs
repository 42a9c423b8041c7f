//! The seven settings of a group dingops governs: the private-chat switch and the six group
//! switches, with their names in the policy file, in the ledger and in plain words. The
//! policy's names and words come from the command table, so the policy and the chat commands
//! cannot drift.

use std::sync::LazyLock;

use crate::command::{Arg, COMMANDS, Choice, GroupSwitch};
use crate::domain::DM_SETTING;

/// One setting of a group: the private-chat switch or a group switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setting {
    /// The private-chat switch (`friendswitch/update`), which DingTalk cannot read back.
    Dm,
    /// A `managementOptions` switch that `chat/get` reads back.
    Switch(GroupSwitch),
}

/// A group switch as the policy file names it.
struct SwitchKey {
    /// The switch command's name without its slash, `-` as `_` (`mute_all`).
    key: String,
    switch: GroupSwitch,
    /// The words it accepts; empty when it takes `true`/`false` only.
    choices: &'static [Choice],
}

impl SwitchKey {
    /// Whether the value is written `true`/`false`: a command with a fixed value
    /// (`/mute-all`) or with the words `on`/`off`.
    fn boolean(&self) -> bool {
        self.choices.is_empty() || self.choices.iter().all(|c| matches!(c.en, "on" | "off"))
    }
}

/// The policy keys of the group switches, from the command table: for each switch, the
/// command that takes its words, or the one that sets it to 1 (`/mute-all`, not
/// `/unmute-all`).
static SWITCH_KEYS: LazyLock<Vec<SwitchKey>> = LazyLock::new(|| {
    COMMANDS
        .iter()
        .filter_map(|spec| match spec.arg {
            Arg::Choice(switch, _) | Arg::Fixed(switch, 1) => Some(SwitchKey {
                key: spec.name.trim_start_matches('/').replace('-', "_"),
                switch,
                choices: spec.choices(),
            }),
            _ => None,
        })
        .collect()
});

fn switch_key(switch: GroupSwitch) -> Option<&'static SwitchKey> {
    SWITCH_KEYS.iter().find(|k| k.switch == switch)
}

/// Why a policy file's value is not one of a setting's: what it takes, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, found {found}")]
pub struct ValueError {
    pub expected: String,
    pub found: String,
}

impl Setting {
    /// Every setting, in the order plans list them.
    pub fn all() -> impl Iterator<Item = Setting> {
        std::iter::once(Setting::Dm).chain(GroupSwitch::ALL.into_iter().map(Setting::Switch))
    }

    /// The name in the policy file (`dm`, `mute_all`, `atall`, …).
    pub fn key(self) -> &'static str {
        match self {
            Setting::Dm => DM_SETTING,
            Setting::Switch(s) => switch_key(s).map_or(s.field(), |k| k.key.as_str()),
        }
    }

    /// The setting named `key` in the policy file.
    pub fn from_key(key: &str) -> Option<Self> {
        Self::all().find(|s| s.key() == key)
    }

    /// `value` (0 or 1; for `dm` 1 = private chat forbidden) in the policy file's words.
    pub fn word(self, value: u8) -> &'static str {
        match self {
            Setting::Dm if value == 1 => "locked",
            Setting::Dm => "open",
            Setting::Switch(s) => match switch_key(s) {
                Some(k) if !k.boolean() => k.choices.iter().find(|c| c.value == value).map_or("?", |c| c.en),
                _ if value == 1 => "true",
                _ => "false",
            },
        }
    }

    /// What the file may say, for error messages.
    fn expected(self) -> String {
        match self {
            Setting::Dm => "\"locked\" or \"open\"".to_owned(),
            Setting::Switch(s) => match switch_key(s) {
                Some(k) if !k.boolean() => {
                    let words: Vec<String> = k.choices.iter().map(|c| format!("\"{}\"", c.en)).collect();
                    words.join(" or ")
                }
                _ => "true or false".to_owned(),
            },
        }
    }

    /// Reads the file's value for this setting: 0 or 1.
    pub(super) fn parse(self, value: &toml::Value) -> Result<u8, ValueError> {
        let found = || match value {
            toml::Value::String(s) => format!("\"{s}\""),
            other => other.type_str().to_owned(),
        };
        let refused = || ValueError {
            expected: self.expected(),
            found: found(),
        };
        match (self, value) {
            (Setting::Dm, toml::Value::String(s)) => match s.as_str() {
                "locked" => Ok(1),
                "open" => Ok(0),
                _ => Err(refused()),
            },
            (Setting::Switch(s), v) => {
                let Some(k) = switch_key(s) else {
                    return Err(refused());
                };
                match v {
                    toml::Value::Boolean(b) if k.boolean() => Ok(u8::from(*b)),
                    toml::Value::String(w) if !k.boolean() => k
                        .choices
                        .iter()
                        .find(|c| c.en.eq_ignore_ascii_case(w) || c.zh == w)
                        .map(|c| c.value)
                        .ok_or_else(refused),
                    _ => Err(refused()),
                }
            }
            _ => Err(refused()),
        }
    }
}

impl Setting {
    /// The name the ledger stores it under (reverts, known values): `dm`, or DingTalk's
    /// `managementOptions` field.
    pub fn stored(self) -> &'static str {
        match self {
            Setting::Dm => DM_SETTING,
            Setting::Switch(s) => s.field(),
        }
    }

    /// The setting the ledger stores as `name`.
    pub fn from_stored(name: &str) -> Option<Self> {
        if name == DM_SETTING {
            return Some(Setting::Dm);
        }
        GroupSwitch::from_field(name).map(Setting::Switch)
    }

    /// In plain words, for replies.
    pub fn label(self) -> &'static str {
        match self {
            Setting::Dm => "Private chat",
            Setting::Switch(s) => s.label(),
        }
    }

    /// `value` in plain words, for replies.
    pub fn describe(self, value: u8) -> &'static str {
        match self {
            Setting::Dm if value == 1 => "forbidden",
            Setting::Dm => "allowed",
            Setting::Switch(s) => s.describe(value),
        }
    }
}
