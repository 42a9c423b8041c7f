//! The command table: which commands exist, their names and aliases, who may run them,
//! what argument each takes and what it does to a group. A new command, or a new word for
//! one, is a row here; `/help` is generated from the same rows.

use super::Command;

/// What a command is, independent of its arguments. Declared in the order of [`COMMANDS`],
/// whose row `kind as usize` it has (checked when dingops compiles), `Help` last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    LockDm,
    UnlockDm,
    DmStatus,
    Bind,
    MuteAll,
    UnmuteAll,
    AtAll,
    JoinApproval,
    Searchable,
    History,
    Manage,
    GroupStatus,
    Plan,
    Apply,
    Help,
}

/// A group switch that DingTalk's `im/group/update` sets in `managementOptions` and
/// `chat/get` reads back (see docs/dingtalk.md). Each is 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupSwitch {
    Mute,
    AtAll,
    JoinApproval,
    Searchable,
    History,
    Manage,
}

impl GroupSwitch {
    /// Every switch, in the order `/group-status` shows them.
    pub const ALL: [GroupSwitch; 6] = [
        GroupSwitch::Mute,
        GroupSwitch::AtAll,
        GroupSwitch::JoinApproval,
        GroupSwitch::Searchable,
        GroupSwitch::History,
        GroupSwitch::Manage,
    ];

    /// DingTalk's field name in `managementOptions` and `chat_info`.
    pub fn field(self) -> &'static str {
        match self {
            GroupSwitch::Mute => "chatBannedType",
            GroupSwitch::AtAll => "mentionAllAuthority",
            GroupSwitch::JoinApproval => "validationType",
            GroupSwitch::Searchable => "searchable",
            GroupSwitch::History => "showHistoryType",
            GroupSwitch::Manage => "managementType",
        }
    }

    /// The switch whose DingTalk field is `field`.
    pub fn from_field(field: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.field() == field)
    }

    /// The setting in plain words, for `/group-status`.
    pub fn label(self) -> &'static str {
        match self {
            GroupSwitch::Mute => "Whole-group mute",
            GroupSwitch::AtAll => "Who may @all",
            GroupSwitch::JoinApproval => "Join approval",
            GroupSwitch::Searchable => "Searchable",
            GroupSwitch::History => "New members see history",
            GroupSwitch::Manage => "Who may manage the group",
        }
    }

    /// The kind of the command that sets this switch to `value`: the whole-group mute has a
    /// command for each value, every other switch one that takes a choice.
    pub(super) const fn command_kind(self, value: u8) -> CommandKind {
        match self {
            GroupSwitch::Mute if value == 1 => CommandKind::MuteAll,
            GroupSwitch::Mute => CommandKind::UnmuteAll,
            GroupSwitch::AtAll => CommandKind::AtAll,
            GroupSwitch::JoinApproval => CommandKind::JoinApproval,
            GroupSwitch::Searchable => CommandKind::Searchable,
            GroupSwitch::History => CommandKind::History,
            GroupSwitch::Manage => CommandKind::Manage,
        }
    }

    /// The meaning of `value` (0 or 1) in plain words.
    pub fn describe(self, value: u8) -> &'static str {
        match (self, value) {
            (GroupSwitch::Mute, 1) => "on: only the owner and admins can speak",
            (GroupSwitch::Mute, _) => "off: everyone can speak",
            (GroupSwitch::AtAll, 1) => "only the owner",
            (GroupSwitch::AtAll, _) => "everyone",
            (GroupSwitch::JoinApproval, 1) => "on: joining needs approval",
            (GroupSwitch::JoinApproval, _) => "off: anyone invited joins at once",
            (GroupSwitch::Searchable, 1) => "on: the group can be found by search",
            (GroupSwitch::Searchable, _) => "off: the group cannot be found by search",
            (GroupSwitch::History, 1) => "on: new members see the last 100 messages",
            (GroupSwitch::History, _) => "off: new members see no earlier messages",
            (GroupSwitch::Manage, 1) => "only the owner",
            (GroupSwitch::Manage, _) => "everyone",
        }
    }
}

/// One accepted argument word of a switch command and the value it sets.
#[derive(Debug, PartialEq, Eq)]
pub struct Choice {
    /// English word (case-insensitive).
    pub en: &'static str,
    /// Chinese word.
    pub zh: &'static str,
    pub value: u8,
}

const OWNER_EVERYONE: &[Choice] = &[
    Choice {
        en: "owner",
        zh: "群主",
        value: 1,
    },
    Choice {
        en: "everyone",
        zh: "所有人",
        value: 0,
    },
];

const ON_OFF: &[Choice] = &[
    Choice {
        en: "on",
        zh: "开",
        value: 1,
    },
    Choice {
        en: "off",
        zh: "关",
        value: 0,
    },
];

/// A command that takes no argument (a timed one takes an optional duration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    LockDm,
    UnlockDm,
    DmStatus,
    GroupStatus,
    Plan,
    Help,
}

impl Plain {
    const fn kind(self) -> CommandKind {
        match self {
            Plain::LockDm => CommandKind::LockDm,
            Plain::UnlockDm => CommandKind::UnlockDm,
            Plain::DmStatus => CommandKind::DmStatus,
            Plain::GroupStatus => CommandKind::GroupStatus,
            Plain::Plan => CommandKind::Plan,
            Plain::Help => CommandKind::Help,
        }
    }

    pub(super) fn command(self, revert_after: Option<u32>) -> Command {
        match self {
            Plain::LockDm => Command::LockDm { revert_after },
            Plain::UnlockDm => Command::UnlockDm { revert_after },
            Plain::DmStatus => Command::DmStatus,
            Plain::GroupStatus => Command::GroupStatus,
            Plain::Plan => Command::Plan,
            Plain::Help => Command::Help,
        }
    }
}

/// What a command takes after its name (besides a timed command's duration), and so which
/// command it makes: each kind of row carries exactly what its parse needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// Nothing.
    None(Plain),
    /// One chatid (`/bind`).
    ChatId,
    /// One approval code (`/apply`).
    Code,
    /// Nothing: sets the switch to the value.
    Fixed(GroupSwitch, u8),
    /// One of the words: sets the switch to that word's value.
    Choice(GroupSwitch, &'static [Choice]),
}

/// One row of the command table.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandSpec {
    pub kind: CommandKind,
    /// English name, with the slash.
    pub name: &'static str,
    /// Chinese alias, with the slash.
    pub alias: &'static str,
    /// Argument placeholder shown in help, empty when none.
    pub args: &'static str,
    /// What it takes after its name, and so which command it makes.
    pub arg: Arg,
    /// Only admins may run it.
    pub admin_only: bool,
    /// Running it may call a DingTalk group API (and so wait for a token and for DingTalk):
    /// the worker gives such commands their own running slots.
    pub calls_group_api: bool,
    /// One line for `/help`.
    pub summary: &'static str,
}

/// The command table, in the order `/help` lists it.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        kind: CommandKind::LockDm,
        name: "/lock-dm",
        alias: "/禁止私聊",
        args: "",
        arg: Arg::None(Plain::LockDm),
        admin_only: true,
        calls_group_api: true,
        summary: "forbid members of this group to add each other as friends or chat privately",
    },
    CommandSpec {
        kind: CommandKind::UnlockDm,
        name: "/unlock-dm",
        alias: "/允许私聊",
        args: "",
        arg: Arg::None(Plain::UnlockDm),
        admin_only: true,
        calls_group_api: true,
        summary: "allow members of this group to add each other and chat privately again",
    },
    CommandSpec {
        kind: CommandKind::DmStatus,
        name: "/dm-status",
        alias: "/私聊状态",
        args: "",
        arg: Arg::None(Plain::DmStatus),
        admin_only: false,
        calls_group_api: false,
        summary: "show this group's binding and the private-chat setting dingops last made",
    },
    CommandSpec {
        kind: CommandKind::Bind,
        name: "/bind",
        alias: "/绑定",
        args: "<chatid>",
        arg: Arg::ChatId,
        admin_only: true,
        calls_group_api: true,
        summary: "link this group to its DingTalk chatid (verified with DingTalk before it is stored)",
    },
    CommandSpec {
        kind: CommandKind::MuteAll,
        name: "/mute-all",
        alias: "/全员禁言",
        args: "",
        arg: Arg::Fixed(GroupSwitch::Mute, 1),
        admin_only: true,
        calls_group_api: true,
        summary: "mute the whole group: only the owner and admins can speak",
    },
    CommandSpec {
        kind: CommandKind::UnmuteAll,
        name: "/unmute-all",
        alias: "/解除全员禁言",
        args: "",
        arg: Arg::Fixed(GroupSwitch::Mute, 0),
        admin_only: true,
        calls_group_api: true,
        summary: "lift the whole-group mute",
    },
    CommandSpec {
        kind: CommandKind::AtAll,
        name: "/atall",
        alias: "/艾特全员",
        args: "owner|everyone",
        arg: Arg::Choice(GroupSwitch::AtAll, OWNER_EVERYONE),
        admin_only: true,
        calls_group_api: true,
        summary: "who may @all: only the owner (群主) or everyone (所有人)",
    },
    CommandSpec {
        kind: CommandKind::JoinApproval,
        name: "/join-approval",
        alias: "/入群验证",
        args: "on|off",
        arg: Arg::Choice(GroupSwitch::JoinApproval, ON_OFF),
        admin_only: true,
        calls_group_api: true,
        summary: "whether joining the group needs approval (开/关)",
    },
    CommandSpec {
        kind: CommandKind::Searchable,
        name: "/searchable",
        alias: "/群可搜索",
        args: "on|off",
        arg: Arg::Choice(GroupSwitch::Searchable, ON_OFF),
        admin_only: true,
        calls_group_api: true,
        summary: "whether the group can be found by search (开/关)",
    },
    CommandSpec {
        kind: CommandKind::History,
        name: "/history",
        alias: "/新人看历史",
        args: "on|off",
        arg: Arg::Choice(GroupSwitch::History, ON_OFF),
        admin_only: true,
        calls_group_api: true,
        summary: "whether new members see the last 100 messages (开/关)",
    },
    CommandSpec {
        kind: CommandKind::Manage,
        name: "/manage",
        alias: "/群管理",
        args: "owner|everyone",
        arg: Arg::Choice(GroupSwitch::Manage, OWNER_EVERYONE),
        admin_only: true,
        calls_group_api: true,
        summary: "who may manage the group: only the owner (群主) or everyone (所有人)",
    },
    CommandSpec {
        kind: CommandKind::GroupStatus,
        name: "/group-status",
        alias: "/群状态",
        args: "",
        arg: Arg::None(Plain::GroupStatus),
        admin_only: false,
        calls_group_api: true,
        summary: "this group's settings as DingTalk has them now, and pending reverts",
    },
    CommandSpec {
        kind: CommandKind::Plan,
        name: "/plan",
        alias: "/策略计划",
        args: "",
        arg: Arg::None(Plain::Plan),
        admin_only: true,
        calls_group_api: true,
        summary: "in the ops group: the policy's plan for the whole organisation, for a second admin to approve",
    },
    CommandSpec {
        kind: CommandKind::Apply,
        name: "/apply",
        alias: "/策略执行",
        args: "<code>",
        arg: Arg::Code,
        admin_only: true,
        calls_group_api: true,
        summary: "in the ops group: applies the plan with that code (a second admin, within 10 minutes)",
    },
    CommandSpec {
        kind: CommandKind::Help,
        name: "/help",
        alias: "/帮助",
        args: "",
        arg: Arg::None(Plain::Help),
        admin_only: false,
        calls_group_api: false,
        summary: "this list",
    },
];

// The table is checked when dingops compiles: row `i` is of the `i`th kind, so every kind
// has exactly one row ([`CommandSpec::of`] is an index), and each row's argument makes
// commands of its own kind.
const _: () = {
    assert!(
        COMMANDS.len() == CommandKind::Help as usize + 1,
        "every CommandKind has a row in COMMANDS"
    );
    let mut i = 0;
    while i < COMMANDS.len() {
        assert!(
            COMMANDS[i].kind as usize == i,
            "COMMANDS lists the kinds in their order"
        );
        assert!(
            COMMANDS[i].makes_its_kind(),
            "a row's argument makes commands of its kind"
        );
        i += 1;
    }
};

impl CommandSpec {
    /// Finds the table row whose name or alias is `word` (names are case-insensitive).
    pub fn lookup(word: &str) -> Option<&'static CommandSpec> {
        COMMANDS
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(word) || c.alias == word)
    }

    /// Whether the command takes an optional duration after which it reverts.
    pub fn timed(&self) -> bool {
        match self.arg {
            Arg::None(plain) => matches!(plain, Plain::LockDm | Plain::UnlockDm),
            Arg::ChatId | Arg::Code => false,
            Arg::Fixed(..) | Arg::Choice(..) => true,
        }
    }

    /// The argument words a switch command accepts; empty for any other command.
    pub fn choices(&self) -> &'static [Choice] {
        match self.arg {
            Arg::Choice(_, choices) => choices,
            _ => &[],
        }
    }

    /// The row of a kind.
    pub fn of(kind: CommandKind) -> &'static CommandSpec {
        // Row `kind as usize` is of that kind: see the check after `COMMANDS`.
        &COMMANDS[kind as usize]
    }

    /// Whether every command parsed from this row is of the row's kind (and so has this
    /// row as its [`Command::spec`]), and its help placeholder is there when it takes an
    /// argument.
    const fn makes_its_kind(&self) -> bool {
        let kind = self.kind as usize;
        match self.arg {
            Arg::None(plain) => self.args.is_empty() && plain.kind() as usize == kind,
            Arg::ChatId => !self.args.is_empty() && kind == CommandKind::Bind as usize,
            Arg::Code => !self.args.is_empty() && kind == CommandKind::Apply as usize,
            Arg::Fixed(switch, value) => {
                self.args.is_empty() && value <= 1 && switch.command_kind(value) as usize == kind
            }
            Arg::Choice(switch, choices) => {
                let mut ok = !self.args.is_empty() && !choices.is_empty();
                let mut i = 0;
                while i < choices.len() {
                    let value = choices[i].value;
                    ok = ok && value <= 1 && switch.command_kind(value) as usize == kind;
                    i += 1;
                }
                ok
            }
        }
    }
}

/// How to call a switch command with each of its choices, in English and Chinese.
pub(super) fn usage_of_choices(spec: &CommandSpec) -> String {
    let en: Vec<String> = spec
        .choices()
        .iter()
        .map(|c| format!("{} {}", spec.name, c.en))
        .collect();
    let zh: Vec<String> = spec
        .choices()
        .iter()
        .map(|c| format!("{} {}", spec.alias, c.zh))
        .collect();
    format!("{} ({})", en.join(" or "), zh.join(" / "))
}

/// The `/help` text, generated from [`COMMANDS`].
pub fn help_text() -> String {
    let mut out = String::from("dingops commands (@-mention me first):");
    for c in COMMANDS {
        let alias_args: Vec<&str> = c.choices().iter().map(|ch| ch.zh).collect();
        let alias_args = if alias_args.is_empty() {
            c.args.to_owned()
        } else {
            alias_args.join("|")
        };
        let usage = if c.args.is_empty() {
            format!("{} ({})", c.name, c.alias)
        } else {
            format!("{} {} ({} {alias_args})", c.name, c.args, c.alias)
        };
        let usage = if c.timed() {
            format!("{usage} [30m|2h|1d]")
        } else {
            usage
        };
        let who = if c.admin_only { " [admins]" } else { "" };
        out.push_str(&format!("\n{usage}{who}: {}", c.summary));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_command_and_alias() {
        let help = help_text();
        for spec in COMMANDS {
            assert!(help.contains(spec.name) && help.contains(spec.alias), "{help}");
        }
    }
}
