//! The chat commands. One table, [`COMMANDS`], feeds both the parser and `/help`, so the
//! two cannot drift.

use crate::domain::ChatId;

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
    const fn command_kind(self, value: u8) -> CommandKind {
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
    Help,
}

impl Plain {
    const fn kind(self) -> CommandKind {
        match self {
            Plain::LockDm => CommandKind::LockDm,
            Plain::UnlockDm => CommandKind::UnlockDm,
            Plain::DmStatus => CommandKind::DmStatus,
            Plain::GroupStatus => CommandKind::GroupStatus,
            Plain::Help => CommandKind::Help,
        }
    }

    fn command(self, revert_after: Option<u32>) -> Command {
        match self {
            Plain::LockDm => Command::LockDm { revert_after },
            Plain::UnlockDm => Command::UnlockDm { revert_after },
            Plain::DmStatus => Command::DmStatus,
            Plain::GroupStatus => Command::GroupStatus,
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

/// A parsed command with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Forbids private chat; with `revert_after` (minutes), allows it again then.
    LockDm {
        revert_after: Option<u32>,
    },
    /// Allows private chat; with `revert_after` (minutes), forbids it again then.
    UnlockDm {
        revert_after: Option<u32>,
    },
    DmStatus,
    Bind {
        chatid: ChatId,
    },
    /// Sets a group switch to `value` (0 or 1); with `revert_after` (minutes), sets it back
    /// then.
    Switch {
        switch: GroupSwitch,
        value: u8,
        revert_after: Option<u32>,
    },
    GroupStatus,
    Help,
}

/// Why a text is not a command. The `Display` text is the hint the user gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("I only understand commands. Type /help to see them.")]
    NotACommand,
    #[error("I don't know the command `{0}`. Type /help to see the commands.")]
    Unknown(String),
    #[error("{} needs an argument: {} {}", .0.name, .0.name, .0.args)]
    MissingArgument(&'static CommandSpec),
    #[error("{} takes no arguments; type just {}", .0.name, .0.name)]
    UnexpectedArgument(&'static CommandSpec),
    #[error("`{got}` is not a choice of {}: use {}", .spec.name, usage_of_choices(.spec))]
    BadChoice { spec: &'static CommandSpec, got: String },
    #[error(
        "`{got}` is not a duration for {}: use e.g. {} 30m, 2h, 1h30m or 1d (from 1 minute to 30 days)",
        .spec.name, .spec.name
    )]
    BadDuration { spec: &'static CommandSpec, got: String },
    #[error("`{0}` is not a chatid: a chatid looks like `chat` followed by letters and digits")]
    InvalidChatId(String),
}

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
            Arg::ChatId => false,
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

/// Longest text we look at; DingTalk messages can be long, commands are short.
const MAX_COMMAND_TEXT: usize = 4096;

impl Command {
    /// Parses the trimmed text of an @-message. Words starting with `@` (mentions that may
    /// remain in the text) are ignored wherever they stand.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let text = truncate(text.trim(), MAX_COMMAND_TEXT);
        let mut words = text.split_whitespace().filter(|w| !w.starts_with('@'));
        let Some(first) = words.next() else {
            return Err(ParseError::NotACommand);
        };
        // Chinese input methods often produce a full-width slash.
        let first = match first.strip_prefix('／') {
            Some(rest) => format!("/{rest}"),
            None => first.to_owned(),
        };
        if !first.starts_with('/') {
            return Err(ParseError::NotACommand);
        }
        let spec = CommandSpec::lookup(&first)
            .ok_or_else(|| ParseError::Unknown(truncate(&first, 64).to_owned()))?;
        let mut args: Vec<&str> = words.collect();
        // A timed command's optional last word is its duration, after its choice if it takes one.
        let mut revert_after = None;
        if spec.timed() && args.len() > spec.choices().len().min(1) {
            let word = args.pop().unwrap_or_default();
            revert_after = Some(parse_minutes(word).ok_or_else(|| ParseError::BadDuration {
                spec,
                got: truncate(word, 64).to_owned(),
            })?);
        }
        match spec.arg {
            Arg::ChatId => match args.as_slice() {
                [] => Err(ParseError::MissingArgument(spec)),
                [chatid] => ChatId::parse(chatid)
                    .map(|chatid| Command::Bind { chatid })
                    .map_err(|_| ParseError::InvalidChatId(truncate(chatid, 64).to_owned())),
                _ => Err(ParseError::InvalidChatId(
                    truncate(&args.join(" "), 64).to_owned(),
                )),
            },
            Arg::Choice(switch, choices) => match args.as_slice() {
                [] => Err(ParseError::MissingArgument(spec)),
                [word] => {
                    let choice = choices
                        .iter()
                        .find(|c| c.en.eq_ignore_ascii_case(word) || c.zh == *word)
                        .ok_or_else(|| ParseError::BadChoice {
                            spec,
                            got: truncate(word, 64).to_owned(),
                        })?;
                    Ok(Command::Switch {
                        switch,
                        value: choice.value,
                        revert_after,
                    })
                }
                _ => Err(ParseError::BadChoice {
                    spec,
                    got: truncate(&args.join(" "), 64).to_owned(),
                }),
            },
            _ if !args.is_empty() => Err(ParseError::UnexpectedArgument(spec)),
            Arg::None(plain) => Ok(plain.command(revert_after)),
            Arg::Fixed(switch, value) => Ok(Command::Switch {
                switch,
                value,
                revert_after,
            }),
        }
    }

    /// Minutes after which this command reverts, when it was given a duration.
    pub fn revert_after(&self) -> Option<u32> {
        match self {
            Command::LockDm { revert_after }
            | Command::UnlockDm { revert_after }
            | Command::Switch { revert_after, .. } => *revert_after,
            _ => None,
        }
    }

    /// The table row of this command.
    pub fn spec(&self) -> &'static CommandSpec {
        CommandSpec::of(self.kind())
    }

    /// The kind of this command.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::LockDm { .. } => CommandKind::LockDm,
            Command::UnlockDm { .. } => CommandKind::UnlockDm,
            Command::DmStatus => CommandKind::DmStatus,
            Command::Bind { .. } => CommandKind::Bind,
            Command::Switch { switch, value, .. } => switch.command_kind(*value),
            Command::GroupStatus => CommandKind::GroupStatus,
            Command::Help => CommandKind::Help,
        }
    }
}

/// Longest duration of a timed command: 30 days, in minutes.
pub const MAX_REVERT_MINUTES: u32 = 30 * 24 * 60;

/// A duration such as `30m`, `2h`, `1h30m` or `1d` in minutes: units `d`, `h`, `m`, each at
/// most once and in that order; 1 minute to 30 days. `None` for anything else.
pub fn parse_minutes(word: &str) -> Option<u32> {
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    let mut last_rank = u8::MAX;
    for c in word.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = number.unwrap_or(0).checked_mul(10)?.checked_add(u64::from(d))?;
            if n > u64::from(MAX_REVERT_MINUTES) {
                return None;
            }
            number = Some(n);
            continue;
        }
        let (rank, minutes) = match c.to_ascii_lowercase() {
            'd' => (3, 24 * 60),
            'h' => (2, 60),
            'm' => (1, 1),
            _ => return None,
        };
        if rank >= last_rank {
            return None;
        }
        last_rank = rank;
        total = total.checked_add(number.take()?.checked_mul(minutes)?)?;
    }
    if number.is_some() {
        return None;
    }
    u32::try_from(total)
        .ok()
        .filter(|m| (1..=MAX_REVERT_MINUTES).contains(m))
}

/// How to call a switch command with each of its choices, in English and Chinese.
fn usage_of_choices(spec: &CommandSpec) -> String {
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

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_and_alias_in_the_table_parses_to_its_command() {
        for spec in COMMANDS {
            for word in [spec.name, spec.alias] {
                let text = if spec.args.is_empty() {
                    word.to_owned()
                } else if let Some(choice) = spec.choices().first() {
                    let arg = if word == spec.alias { choice.zh } else { choice.en };
                    format!("{word} {arg}")
                } else {
                    format!("{word} chat123abc")
                };
                let cmd = Command::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(cmd.kind(), spec.kind, "{text}");
            }
        }
    }

    #[test]
    fn help_lists_every_command_and_alias() {
        let help = help_text();
        for spec in COMMANDS {
            assert!(help.contains(spec.name) && help.contains(spec.alias), "{help}");
        }
    }

    #[test]
    fn leading_space_and_mentions_are_ignored() {
        assert_eq!(
            Command::parse("  @dingops /lock-dm "),
            Ok(Command::LockDm { revert_after: None })
        );
        assert_eq!(
            Command::parse("/unlock-dm @someone"),
            Ok(Command::UnlockDm { revert_after: None })
        );
    }

    #[test]
    fn names_are_case_insensitive_and_a_full_width_slash_works() {
        assert_eq!(
            Command::parse("/LOCK-DM"),
            Ok(Command::LockDm { revert_after: None })
        );
        assert_eq!(Command::parse("／帮助"), Ok(Command::Help));
    }

    #[test]
    fn bind_takes_exactly_one_valid_chatid() {
        assert_eq!(
            Command::parse("/bind chatdafe234"),
            Ok(Command::Bind {
                chatid: ChatId::parse("chatdafe234").unwrap()
            })
        );
        assert!(matches!(
            Command::parse("/bind"),
            Err(ParseError::MissingArgument(_))
        ));
        assert!(matches!(
            Command::parse("/bind ../../x"),
            Err(ParseError::InvalidChatId(_))
        ));
        assert!(matches!(
            Command::parse("/bind a b"),
            Err(ParseError::InvalidChatId(_))
        ));
    }

    #[test]
    fn plain_text_is_not_a_command_and_unknown_commands_are_named() {
        assert_eq!(Command::parse("hello"), Err(ParseError::NotACommand));
        assert_eq!(Command::parse(""), Err(ParseError::NotACommand));
        assert_eq!(
            Command::parse("/reboot"),
            Err(ParseError::Unknown("/reboot".into()))
        );
    }

    #[test]
    fn arguments_to_commands_without_arguments_are_refused() {
        assert!(matches!(
            Command::parse("/dm-status now"),
            Err(ParseError::UnexpectedArgument(_))
        ));
    }

    #[test]
    fn durations_take_minutes_hours_and_days_from_a_minute_to_thirty_days() {
        for (word, minutes) in [
            ("1m", 1),
            ("30m", 30),
            ("2h", 120),
            ("1h30m", 90),
            ("1d", 1440),
            ("1d2h", 1560),
            ("30d", 43_200),
            ("2H", 120),
        ] {
            assert_eq!(parse_minutes(word), Some(minutes), "{word}");
        }
        for word in [
            "",
            "0m",
            "31d",
            "30d1m",
            "90",
            "m",
            "1x",
            "30m1h",
            "1h1h",
            "-1h",
            "99999999999d",
        ] {
            assert_eq!(parse_minutes(word), None, "{word}");
        }
    }

    #[test]
    fn every_timed_command_takes_an_optional_duration_last() {
        assert_eq!(
            Command::parse("/mute-all 30m"),
            Ok(Command::Switch {
                switch: GroupSwitch::Mute,
                value: 1,
                revert_after: Some(30)
            })
        );
        assert_eq!(
            Command::parse("/入群验证 关 1d"),
            Ok(Command::Switch {
                switch: GroupSwitch::JoinApproval,
                value: 0,
                revert_after: Some(1440)
            })
        );
        assert_eq!(
            Command::parse("/unlock-dm 1h"),
            Ok(Command::UnlockDm {
                revert_after: Some(60)
            })
        );
        let e = Command::parse("/lock-dm soon").unwrap_err();
        assert!(matches!(e, ParseError::BadDuration { .. }));
        assert!(e.to_string().contains("30m, 2h, 1h30m or 1d"), "{e}");
        assert!(matches!(
            Command::parse("/history on 45d"),
            Err(ParseError::BadDuration { .. })
        ));
        assert!(matches!(
            Command::parse("/group-status 1h"),
            Err(ParseError::UnexpectedArgument(_))
        ));
    }

    #[test]
    fn switch_commands_set_their_field_to_the_value_of_the_choice() {
        let cases = [
            ("/mute-all", GroupSwitch::Mute, 1),
            ("/解除全员禁言", GroupSwitch::Mute, 0),
            ("/atall owner", GroupSwitch::AtAll, 1),
            ("/艾特全员 所有人", GroupSwitch::AtAll, 0),
            ("/join-approval ON", GroupSwitch::JoinApproval, 1),
            ("/群可搜索 关", GroupSwitch::Searchable, 0),
            ("/history on", GroupSwitch::History, 1),
            ("/群管理 群主", GroupSwitch::Manage, 1),
            ("/manage everyone", GroupSwitch::Manage, 0),
        ];
        for (text, switch, value) in cases {
            assert_eq!(
                Command::parse(text),
                Ok(Command::Switch {
                    switch,
                    value,
                    revert_after: None
                }),
                "{text}"
            );
        }
        assert_eq!(
            GroupSwitch::from_field("searchable"),
            Some(GroupSwitch::Searchable)
        );
    }

    #[test]
    fn a_bad_choice_names_the_accepted_ones() {
        let e = Command::parse("/searchable maybe").unwrap_err();
        assert!(matches!(e, ParseError::BadChoice { .. }));
        assert_eq!(
            e.to_string(),
            "`maybe` is not a choice of /searchable: use /searchable on or /searchable off (/群可搜索 开 / /群可搜索 关)"
        );
        assert!(matches!(
            Command::parse("/atall"),
            Err(ParseError::MissingArgument(_))
        ));
        assert!(matches!(
            Command::parse("/mute-all now"),
            Err(ParseError::BadDuration { .. })
        ));
        assert!(matches!(
            Command::parse("/mute-all 1h 2h"),
            Err(ParseError::UnexpectedArgument(_))
        ));
    }

    #[test]
    fn very_long_text_is_bounded() {
        let long = format!("/{}", "x".repeat(100_000));
        match Command::parse(&long) {
            Err(ParseError::Unknown(name)) => assert!(name.len() <= 64),
            other => panic!("{other:?}"),
        }
    }
}
