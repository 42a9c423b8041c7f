//! The words of the pipeline, shared by every layer above: what an ingress accepted, what
//! dingops answered, how the reply went, and the validated values they carry.
//!
//! Nothing here does I/O or knows about HTTP, SQLite or DingTalk's client; the ledger, the
//! worker and the ingresses all build on these types (see docs/architecture.md).

use std::borrow::Cow;

use url::{Host, Url};

/// The `sessionWebhook` URL of a robot message. It is a bearer credential for replying into
/// the chat, so its `Debug` output is redacted and it is only exposed where a reply is sent
/// or the ledger persists it for resumption.
#[derive(Clone, serde::Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SessionWebhook(String);

impl SessionWebhook {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself; call only to send a reply or to persist it for resumption.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionWebhook([REDACTED])")
    }
}

mod names;
pub use names::UnknownName;
pub(crate) use names::named_enum;

/// A legacy DingTalk group id (`chat…`), the id `friendswitch/update` takes. Validated on
/// construction (1–128 ASCII letters, digits, `-`, `_`), so it is safe in a URL path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChatId(String);

/// Why a text is not a [`ChatId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a chatid: 1 to 128 ASCII letters, digits, '-' or '_'")]
pub struct InvalidChatId;

impl ChatId {
    /// Checks and wraps `s`.
    pub fn parse(s: &str) -> Result<Self, InvalidChatId> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidChatId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ChatId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a robot message was typed. DingTalk sends `"1"` for a 1:1 chat with the robot and
/// `"2"` for a group; anything else is treated as a group, as DingTalk documents no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationType {
    OneToOne,
    Group,
}

impl ConversationType {
    /// Reads DingTalk's `conversationType` value.
    pub fn from_wire(s: &str) -> Self {
        if s.trim() == "1" {
            Self::OneToOne
        } else {
            Self::Group
        }
    }

    /// DingTalk's value, as the ledger stores it.
    pub fn as_wire(self) -> &'static str {
        match self {
            Self::OneToOne => "1",
            Self::Group => "2",
        }
    }
}

/// A robot message an ingress verified and parsed: everything needed to run the command
/// (again, after a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub msg_id: String,
    pub received_ms: u64,
    /// The chat's openConversationId (`cid…`).
    pub conversation_id: String,
    pub conversation_type: ConversationType,
    pub conversation_title: Option<String>,
    pub sender_staff_id: Option<String>,
    pub sender_nick: Option<String>,
    pub sender_is_admin: bool,
    pub msgtype: String,
    /// Trimmed text, `None` for non-text messages.
    pub text: Option<String>,
    pub session_webhook: SessionWebhook,
    pub session_expires_ms: Option<u64>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The change was made.
    Ok,
    /// Information was given (help, status, hints).
    Info,
    /// Refused without calling DingTalk's group APIs (not allowed, not bound, wrong group).
    Refused,
    /// DingTalk answered with an error, or could not be reached.
    Failed,
}

impl Outcome {
    /// The status mark a chat reply starts with.
    pub fn mark(self) -> &'static str {
        match self {
            Outcome::Ok => "✅",
            Outcome::Info => "ℹ️",
            Outcome::Refused => "⛔",
            Outcome::Failed => "❌",
        }
    }

    /// The inverse of [`Outcome::as_str`]; unknown text reads as `Failed`.
    pub fn parse(s: &str) -> Self {
        match s {
            "ok" => Outcome::Ok,
            "info" => Outcome::Info,
            "refused" => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Info => "info",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// What dingops decided for a command, recorded before the reply is sent so that a restart
/// resends the reply without repeating the DingTalk call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The command's name (`/lock-dm`), or `-` when the text was not a command.
    pub command: String,
    pub outcome: Outcome,
    pub errcode: Option<i64>,
    /// The reply text after the mark and the mention.
    pub text: String,
    /// A short, secret-free note for the audit log.
    pub detail: String,
    /// What the reply card shows, when the reply is a card (not stored: a reply resent after
    /// a restart is text).
    pub card: Option<Box<ReplyCard>>,
}

impl Answer {
    /// An answer without a DingTalk errcode.
    pub fn new(command: &str, outcome: Outcome, text: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            command: command.to_owned(),
            outcome,
            errcode: None,
            text: text.into(),
            detail: detail.into(),
            card: None,
        }
    }
}

/// The card a reply becomes when cards are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyCard {
    /// A switch command's change, with its buttons (Undo, Extend, Revert now).
    Setting(SettingChange),
    /// A policy plan waiting for a second admin (Approve, Discard): its code, and the
    /// `outTrackId` its approval names.
    Plan { code: String, out_track_id: String },
}

/// What a switch command changed: what a reply card shows and its buttons act on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SettingChange {
    pub chat_id: String,
    /// The setting's stored name (`dm`, or DingTalk's field).
    pub setting: String,
    /// The value the command set.
    pub value: u8,
    /// The value before it, when dingops knew it.
    pub before: Option<u8>,
    /// A timed command: how long it lasts and when it ends (ledger ms).
    pub duration_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Who ran it, as replies show people, and the command as typed.
    pub by: String,
    pub command: String,
}

/// A command that was accepted but not finished, with its answer once it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub accepted: Accepted,
    pub answer: Option<Answer>,
}

/// How a reply reached the chat, or why it did not. The ledger's `reply` column holds
/// [`Delivery::as_ledger_text`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Posted to the message's sessionWebhook.
    Session,
    /// Posted with the robot group-message API after the session had expired.
    GroupMessage,
    /// Sent as an interactive card (a switch command's reply), or shown on the clicked card.
    Card,
    /// Not sent: the sessionWebhook is not on `reply_hosts`.
    HostNotAllowed,
    /// Not sent: the session expired and no fallback exists (1:1 chats), or the command was
    /// never run because its session expired while dingops was down.
    Expired,
    /// Not sent: DingTalk refused or could not be reached; the short error code.
    Failed(String),
    /// Not sent, and the command not run: a newer command of its group had already finished
    /// (found when resuming after a stop or crash), so running it now would undo that one.
    Superseded,
}

impl Delivery {
    /// The stable text recorded in the ledger and used as a metric label; borrowed for all
    /// but a failure, so the common case allocates nothing.
    pub fn as_ledger_text(&self) -> Cow<'static, str> {
        match self {
            Delivery::Session => "session".into(),
            Delivery::GroupMessage => "group-message".into(),
            Delivery::Card => "card".into(),
            Delivery::HostNotAllowed => "none-host-not-allowed".into(),
            Delivery::Expired => "none-expired".into(),
            Delivery::Superseded => "none-superseded".into(),
            Delivery::Failed(code) => format!("none-failed-{code}").into(),
        }
    }
}

/// A stored binding openConversationId → chatid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub conversation_id: String,
    pub chat_id: ChatId,
    pub bound_by: String,
    pub bound_ms: u64,
}

/// A department of the organisation as discovery found it, with its department group if it
/// has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Department {
    pub dept_id: i64,
    /// `None` for the root department (1).
    pub parent_id: Option<i64>,
    pub name: String,
    /// Names from the root down, joined with " / ".
    pub path: String,
    /// The department group's chatid (`dept_group_chat_id`), when the department has a group.
    pub chat_id: Option<ChatId>,
    /// That group's openConversationId, when it was converted.
    pub open_conversation_id: Option<String>,
}

/// The private-chat state dingops last set in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmState {
    pub prohibited: bool,
    pub set_by: String,
    pub set_by_nick: Option<String>,
    pub set_ms: u64,
}

impl From<KnownValue> for DmState {
    fn from(k: KnownValue) -> Self {
        Self {
            prohibited: k.value == 1,
            set_by: k.set_by,
            set_by_nick: k.set_by_nick,
            set_ms: k.set_ms,
        }
    }
}

named_enum! {
    /// Through what a setting was changed: recorded with its value (its text in
    /// `known_settings.via`) and shown by `/group-status`.
    pub enum Via("via") {
        Chat = "chat",
        Revert = "revert",
        Apply = "apply",
        Reconcile = "reconcile",
        /// A button on a reply card.
        Card = "card",
    }
}

/// What dingops last knew of one setting of a group: the value it set, by whom, when and
/// through what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownValue {
    /// 0 or 1 (for the DM switch 1 = private chat forbidden).
    pub value: u8,
    pub set_by: String,
    pub set_by_nick: Option<String>,
    pub via: Via,
    pub set_ms: u64,
}

/// The setting key of the private-chat switch in a [`RevertJob`]; the group switches use
/// DingTalk's `managementOptions` field names.
pub const DM_SETTING: &str = "dm";

/// Where a revert's `value` comes from when no policy decides the setting at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertRestore {
    /// The value before the command.
    Before,
    /// Not known (the DM switch dingops never set): the opposite of what the command set.
    Unknown,
}

impl RevertRestore {
    pub fn as_str(self) -> &'static str {
        match self {
            RevertRestore::Before => "before",
            RevertRestore::Unknown => "unknown",
        }
    }

    /// The inverse of [`RevertRestore::as_str`]; anything else reads as `Unknown`.
    pub fn parse(text: &str) -> Self {
        if text == "before" {
            RevertRestore::Before
        } else {
            RevertRestore::Unknown
        }
    }
}

/// A timed command's end (its exception): at `due_ms`, set `setting` of the group back: to
/// the policy's value when a policy decides it then, else to `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevertJob {
    /// The ledger's id; 0 before it is stored.
    pub id: i64,
    pub conversation_id: String,
    pub chat_id: ChatId,
    /// [`DM_SETTING`] or a `managementOptions` field.
    pub setting: String,
    /// The value the revert sets without a policy (0/1; for the DM switch 1 = private chat
    /// forbidden): the value before the command, or its opposite (see `restore`).
    pub value: u8,
    /// The value the command set, in force until `due_ms`.
    pub set_value: u8,
    pub restore: RevertRestore,
    pub due_ms: u64,
    /// Who ran the command that scheduled it, as [`who`] shows people.
    pub scheduled_by: String,
    /// The command that scheduled it, as typed (e.g. `/mute-all 30m`).
    pub scheduled_command: String,
    pub scheduled_ms: u64,
}

/// A person as shown in replies and the audit: `Nick (staffId)`, or whichever is known.
pub fn who(staff: &str, nick: Option<&str>) -> String {
    match nick.filter(|n| !n.is_empty() && *n != staff) {
        Some(n) if staff.is_empty() => n.to_owned(),
        Some(n) => format!("{n} ({staff})"),
        None if staff.is_empty() => "-".to_owned(),
        None => staff.to_owned(),
    }
}

/// `text` with every character that could steer a terminal or reorder what it shows
/// (C0/C1 controls, DEL, bidirectional overrides) written as a `\u{..}` escape. Nicks,
/// titles and error messages come from DingTalk users; printed raw, an `ESC[2J` in a nick
/// would clear the operator's screen and could fake the rows below it.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(steers_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if steers_terminal(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether `c` could steer a terminal or reorder what it shows (see [`printable`]): a
/// control character, or a bidirectional mark, embedding, override or isolate (U+061C,
/// U+200E, U+200F, U+202A–U+202E, U+2066–U+2069).
pub fn steers_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// The most characters of DingTalk-sourced text (a group name, a department path, an id, a
/// nick) a table cell of `plan`, `discover` and `audit` shows; longer text is cut and ends
/// in `…`. `--json` keeps it whole.
pub const CELL_CHARS: usize = 40;

/// `text` as a table cell: at most [`CELL_CHARS`] of its characters, its start kept and `…`
/// at the end when it is longer, then [`printable`] (an escaped control still counts as the
/// one character it stands for). A 20 000-character group name would otherwise widen every
/// row of its table to 20 000 columns.
pub fn table_cell(text: &str) -> Cow<'_, str> {
    cut_cell(text, false)
}

/// [`table_cell`] keeping the end of `text` (`…` first): for department paths, whose last
/// names tell siblings apart.
pub fn table_cell_tail(text: &str) -> Cow<'_, str> {
    cut_cell(text, true)
}

fn cut_cell(text: &str, keep_end: bool) -> Cow<'_, str> {
    if text.chars().count() <= CELL_CHARS {
        return printable(text);
    }
    let keep = CELL_CHARS - 1;
    Cow::Owned(if keep_end {
        let start = text.char_indices().nth_back(keep - 1).map_or(0, |(i, _)| i);
        format!("…{}", printable(&text[start..]))
    } else {
        let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
        format!("{}…", printable(&text[..end]))
    })
}

/// Serialized JSON with every character [`steers_terminal`] names written as a `\uXXXX`
/// escape (lowercase hex), except the pretty printer's line breaks: still the same JSON to
/// a reader, but no terminal command or reordering when printed. serde_json escapes C0
/// controls itself but writes DEL, C1 controls and bidirectional controls raw; every such
/// character is inside a string, and each is in the Basic Multilingual Plane, so one
/// `\uXXXX` is its whole escape. The `--json` output of `plan`, `discover` and `audit`
/// goes through here.
pub fn printable_json(json: &str) -> Cow<'_, str> {
    let escaped = |c: char| steers_terminal(c) && c != '\n';
    if !json.chars().any(escaped) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escaped(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One `host[:port]` entry of the `reply_hosts` allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHost {
    host: String,
    port: Option<u16>,
}

/// Why an entry is not a [`ReplyHost`]: names the entry (a configured host, no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyHostError {
    #[error("`{0}` is not host[:port]")]
    NotHostPort(String),
    #[error("`{0}` has no host")]
    NoHost(String),
}

impl ReplyHost {
    /// Parses `host[:port]`; the error says what is wrong with the entry.
    pub fn parse(entry: &str) -> Result<Self, ReplyHostError> {
        let entry = entry.trim();
        let not_host_port = || ReplyHostError::NotHostPort(entry.to_owned());
        if entry.is_empty() || entry.contains(['/', '@', '?', '#', ' ']) {
            return Err(not_host_port());
        }
        let url = Url::parse(&format!("http://{entry}/")).map_err(|_| not_host_port())?;
        let host = url
            .host_str()
            .ok_or_else(|| ReplyHostError::NoHost(entry.to_owned()))?
            .to_ascii_lowercase();
        // `Url` drops an explicit :80 for http; recover it from the text.
        let port = url.port().or_else(|| entry.ends_with(":80").then_some(80));
        Ok(Self { host, port })
    }
}

/// The path of every sessionWebhook DingTalk hands out.
pub const SESSION_PATH: &str = "/robot/sendBySession";

/// The hosts a sessionWebhook may point at. The URL arrives in the message body, which the
/// signature does not cover, so it is never trusted on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHosts(Vec<ReplyHost>);

impl ReplyHosts {
    pub fn new(hosts: Vec<ReplyHost>) -> Self {
        Self(hosts)
    }

    /// Whether `url` may be called: https (http only for loopback hosts), no user info,
    /// host and port on the list, and DingTalk's reply path `/robot/sendBySession` (a body
    /// that names an allowed host cannot point dingops at another endpoint on it).
    pub fn allows(&self, url: &Url) -> bool {
        if url.path() != SESSION_PATH || url.fragment().is_some() {
            return false;
        }
        let loopback = match url.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => return false,
        };
        let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
        if !scheme_ok || !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let Some(port) = url.port_or_known_default() else {
            return false;
        };
        self.0.iter().any(|entry| {
            entry.host.eq_ignore_ascii_case(host)
                && match entry.port {
                    Some(p) => p == port,
                    None => url.port().is_none(),
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(url: &str, hosts: &[&str]) -> bool {
        let hosts = ReplyHosts::new(hosts.iter().map(|h| ReplyHost::parse(h).unwrap()).collect());
        hosts.allows(&Url::parse(url).unwrap())
    }

    #[test]
    fn reply_urls_need_https_an_allowed_host_and_port() {
        let ok = "/robot/sendBySession?session=x";
        assert!(allowed(
            &format!("https://oapi.dingtalk.com{ok}"),
            &["oapi.dingtalk.com"]
        ));
        for bad in [
            "http://oapi.dingtalk.com",
            "https://evil.example",
            "https://oapi.dingtalk.com:8443",
            "https://user:pw@oapi.dingtalk.com",
            "https://oapi.dingtalk.com.evil.example",
            "ftp://oapi.dingtalk.com",
        ] {
            assert!(!allowed(&format!("{bad}{ok}"), &["oapi.dingtalk.com"]), "{bad}");
        }
        assert!(allowed(
            &format!("http://127.0.0.1:9000{ok}"),
            &["127.0.0.1:9000"]
        ));
        assert!(!allowed(
            &format!("http://127.0.0.1:9001{ok}"),
            &["127.0.0.1:9000"]
        ));
        assert!(!allowed(&format!("http://10.0.0.1:9000{ok}"), &["10.0.0.1:9000"]));
    }

    #[test]
    fn reply_urls_must_use_dingtalks_session_path() {
        for path in [
            "/",
            "/robot/send",
            "/robot/sendBySession/extra",
            "/robot/%73endBySession",
            "/ROBOT/sendBySession",
            "/topapi/chat/member/friendswitch/update",
        ] {
            let url = format!("https://oapi.dingtalk.com{path}?session=x");
            assert!(!allowed(&url, &["oapi.dingtalk.com"]), "{url}");
        }
        assert!(!allowed(
            "https://oapi.dingtalk.com/robot/sendBySession?session=x#frag",
            &["oapi.dingtalk.com"]
        ));
        // `..` segments are resolved by the URL parser before the check.
        assert!(allowed(
            "https://oapi.dingtalk.com/robot/x/../sendBySession?session=x",
            &["oapi.dingtalk.com"]
        ));
    }

    #[test]
    fn a_chatid_is_letters_digits_dash_and_underscore_up_to_128_bytes() {
        assert!(ChatId::parse("chat0a1B-_").is_ok());
        assert!(ChatId::parse(&"c".repeat(128)).is_ok());
        for bad in ["", "chat/../x", "chat x", "chat?x=1", "chät", &"c".repeat(129)] {
            assert_eq!(ChatId::parse(bad), Err(InvalidChatId), "{bad}");
        }
    }

    #[test]
    fn conversation_type_one_is_a_one_to_one_chat_and_anything_else_a_group() {
        assert_eq!(ConversationType::from_wire("1"), ConversationType::OneToOne);
        assert_eq!(ConversationType::from_wire("2"), ConversationType::Group);
        assert_eq!(ConversationType::from_wire("3"), ConversationType::Group);
        assert_eq!(ConversationType::OneToOne.as_wire(), "1");
    }

    #[test]
    fn delivery_texts_are_the_ledgers_stable_values() {
        assert_eq!(Delivery::Session.as_ledger_text(), "session");
        assert_eq!(Delivery::GroupMessage.as_ledger_text(), "group-message");
        assert_eq!(Delivery::HostNotAllowed.as_ledger_text(), "none-host-not-allowed");
        assert_eq!(Delivery::Expired.as_ledger_text(), "none-expired");
        assert_eq!(Delivery::Superseded.as_ledger_text(), "none-superseded");
        assert_eq!(
            Delivery::Failed("60011".into()).as_ledger_text(),
            "none-failed-60011"
        );
    }

    #[test]
    fn printable_escapes_every_bidirectional_control() {
        for c in [
            '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}',
            '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ] {
            let text = format!("a{c}b");
            assert_eq!(
                printable(&text),
                format!("a\\u{{{:x}}}b", u32::from(c)),
                "U+{:04X}",
                u32::from(c)
            );
        }
        // Neighbours that steer nothing stay as they are.
        for kept in ["\u{061b}", "\u{200d}", "\u{2065}", "\u{206a}", "名"] {
            assert!(matches!(printable(kept), Cow::Borrowed(_)), "{kept:?}");
        }
    }

    #[test]
    fn a_table_cell_is_cut_to_its_width_with_escapes_counted_as_one_character() {
        assert!(matches!(table_cell("Team 7"), Cow::Borrowed(_)));
        let exact = "x".repeat(CELL_CHARS);
        assert_eq!(table_cell(&exact), exact);

        let long = format!("{}{}", "名".repeat(30), "z".repeat(19_970));
        let cell = table_cell(&long);
        assert_eq!(cell.chars().count(), CELL_CHARS);
        assert_eq!(
            cell,
            format!("{}{}…", "名".repeat(30), "z".repeat(CELL_CHARS - 31))
        );

        let path = format!("{} / Backend / Platform", "Acme ".repeat(20));
        let tail = table_cell_tail(&path);
        assert_eq!(tail.chars().count(), CELL_CHARS);
        assert!(
            tail.starts_with('…') && tail.ends_with(" / Backend / Platform"),
            "{tail}"
        );

        let bidi = "\u{202e}".repeat(20_000);
        assert_eq!(
            table_cell(&bidi),
            format!("{}…", "\\u{202e}".repeat(CELL_CHARS - 1))
        );
        let bidi_end = format!("{bidi}end");
        assert_eq!(
            table_cell_tail(&bidi_end),
            format!("…{}end", "\\u{202e}".repeat(CELL_CHARS - 4))
        );
        assert_eq!(table_cell("a\u{1b}b"), "a\\u{1b}b");
    }

    #[test]
    fn printable_json_escapes_terminal_controls_in_lowercase_and_stays_the_same_json() {
        let value = serde_json::json!({
            "name": "a\u{202e}b\u{2066}c\u{61c}\u{9b}\u{7f}\u{1b}[2J",
            "list": ["x\ny"],
        });
        for json in [value.to_string(), serde_json::to_string_pretty(&value).unwrap()] {
            let shown = printable_json(&json);
            assert!(!shown.chars().any(|c| steers_terminal(c) && c != '\n'), "{shown}");
            assert!(
                shown.contains(r"a\u202eb\u2066c\u061c\u009b\u007f\u001b[2J"),
                "{shown}"
            );
            let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
            assert_eq!(back, value);
        }
        assert!(matches!(printable_json(r#"{"a":"名"}"#), Cow::Borrowed(_)));
    }

    #[test]
    fn a_person_is_shown_once_when_nick_equals_staff_id() {
        assert_eq!(who("u1", Some("Ada")), "Ada (u1)");
        assert_eq!(who("u1", Some("u1")), "u1");
        assert_eq!(who("", Some("Ada")), "Ada");
        assert_eq!(who("", None), "-");
    }
}
