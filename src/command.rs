//! The chat commands. One table, [`COMMANDS`], feeds both the parser and `/help`, so the
//! two cannot drift.

use crate::domain::ChatId;

/// What a command is, independent of its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    LockDm,
    UnlockDm,
    DmStatus,
    Bind,
    Help,
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
    /// Only admins may run it.
    pub admin_only: bool,
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
        admin_only: true,
        summary: "forbid members of this group to add each other as friends or chat privately",
    },
    CommandSpec {
        kind: CommandKind::UnlockDm,
        name: "/unlock-dm",
        alias: "/允许私聊",
        args: "",
        admin_only: true,
        summary: "allow members of this group to add each other and chat privately again",
    },
    CommandSpec {
        kind: CommandKind::DmStatus,
        name: "/dm-status",
        alias: "/私聊状态",
        args: "",
        admin_only: false,
        summary: "show this group's binding and the private-chat setting dingops last made",
    },
    CommandSpec {
        kind: CommandKind::Bind,
        name: "/bind",
        alias: "/绑定",
        args: "<chatid>",
        admin_only: true,
        summary: "link this group to its DingTalk chatid (verified with DingTalk before it is stored)",
    },
    CommandSpec {
        kind: CommandKind::Help,
        name: "/help",
        alias: "/帮助",
        args: "",
        admin_only: false,
        summary: "this list",
    },
];

/// A parsed command with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    LockDm,
    UnlockDm,
    DmStatus,
    Bind { chatid: ChatId },
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

    /// The row of a kind.
    pub fn of(kind: CommandKind) -> &'static CommandSpec {
        COMMANDS
            .iter()
            .find(|c| c.kind == kind)
            .unwrap_or_else(|| unreachable!("every CommandKind has a row in COMMANDS"))
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
        let args: Vec<&str> = words.collect();
        match spec.kind {
            CommandKind::Bind => match args.as_slice() {
                [] => Err(ParseError::MissingArgument(spec)),
                [chatid] => ChatId::parse(chatid)
                    .map(|chatid| Command::Bind { chatid })
                    .map_err(|_| ParseError::InvalidChatId(truncate(chatid, 64).to_owned())),
                _ => Err(ParseError::InvalidChatId(
                    truncate(&args.join(" "), 64).to_owned(),
                )),
            },
            kind if !args.is_empty() => {
                let _ = kind;
                Err(ParseError::UnexpectedArgument(spec))
            }
            CommandKind::LockDm => Ok(Command::LockDm),
            CommandKind::UnlockDm => Ok(Command::UnlockDm),
            CommandKind::DmStatus => Ok(Command::DmStatus),
            CommandKind::Help => Ok(Command::Help),
        }
    }

    /// The table row of this command.
    pub fn spec(&self) -> &'static CommandSpec {
        CommandSpec::of(self.kind())
    }

    /// The kind of this command.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::LockDm => CommandKind::LockDm,
            Command::UnlockDm => CommandKind::UnlockDm,
            Command::DmStatus => CommandKind::DmStatus,
            Command::Bind { .. } => CommandKind::Bind,
            Command::Help => CommandKind::Help,
        }
    }
}

/// The `/help` text, generated from [`COMMANDS`].
pub fn help_text() -> String {
    let mut out = String::from("dingops commands (@-mention me first):");
    for c in COMMANDS {
        let usage = if c.args.is_empty() {
            format!("{} ({})", c.name, c.alias)
        } else {
            format!("{} {} ({} {})", c.name, c.args, c.alias, c.args)
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
        assert_eq!(Command::parse("  @dingops /lock-dm "), Ok(Command::LockDm));
        assert_eq!(Command::parse("/unlock-dm @someone"), Ok(Command::UnlockDm));
    }

    #[test]
    fn names_are_case_insensitive_and_a_full_width_slash_works() {
        assert_eq!(Command::parse("/LOCK-DM"), Ok(Command::LockDm));
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
            Command::parse("/lock-dm now"),
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
