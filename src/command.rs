//! The chat commands: what a text typed after @dingops means. One table, [`COMMANDS`]
//! (in [`table`]), feeds both the parser here and `/help`, so the two cannot drift.

mod table;

use table::usage_of_choices;
pub use table::{Arg, COMMANDS, Choice, CommandKind, CommandSpec, GroupSwitch, Plain, help_text};

use crate::domain::ChatId;

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
    /// The policy's plan, for the two-person rule.
    Plan,
    /// Applies the plan with this code.
    Apply {
        code: String,
    },
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
    #[error("`{0}` is not a plan code: a code is the 8 letters and digits /plan gave")]
    InvalidCode(String),
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
            Arg::Code => match args.as_slice() {
                [] => Err(ParseError::MissingArgument(spec)),
                [code]
                    if (1..=16).contains(&code.len()) && code.chars().all(|c| c.is_ascii_alphanumeric()) =>
                {
                    Ok(Command::Apply {
                        code: code.to_ascii_uppercase(),
                    })
                }
                _ => Err(ParseError::InvalidCode(truncate(&args.join(" "), 64).to_owned())),
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
            Command::Plan => CommandKind::Plan,
            Command::Apply { .. } => CommandKind::Apply,
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
