//! The sections of the settings, one per part of dingops, each read and checked from the
//! merged keys with its defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::keys::Sources;
use super::{ConfigError, Database, load_with};
use crate::domain::{ChatId, ReplyHost, ReplyHosts};

/// Governing many groups at once: the policy file, `plan`/`apply`, and the reconcile loop
/// of `serve` (see docs/architecture.md).
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// `policy`: path of the TOML policy file (desired settings for sets of bound groups).
    /// Default none: `plan`, `apply` and reconciling need one.
    pub policy: Option<PathBuf>,
    /// `dm_reapply_hours`: the private-chat switch cannot be read back from DingTalk, so the
    /// policy sets it again unless dingops set it to the wanted value within this many hours.
    /// Default 24.
    pub dm_reapply_hours: u64,
    /// `reconcile_every`: how often `serve` plans and applies the policy (`30m`, `1h`, …);
    /// `off` or unset: never. Default off. With `auto` it is `None` and
    /// [`FleetSettings::reconcile_auto`] is set.
    pub reconcile_every: Option<Duration>,
    /// `reconcile_every = "auto"`: one group at a time, the one read longest ago, spaced so
    /// that the month's background budget lasts the month (needs `monthly_call_budget`).
    pub reconcile_auto: bool,
}

/// The HTTP server and its callback route.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `listen`: HTTP listen address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// `signature_window_secs`: accepted distance between a callback's `timestamp` and our
    /// clock, in seconds. Default 3600.
    pub signature_window_secs: u64,
    /// `shutdown_grace_secs`: how long a stop waits for in-flight commands, in seconds. Default 30.
    pub shutdown_grace_secs: u64,
    /// `request_timeout_ms`: time a client has to send a request's head, and again its body,
    /// before the connection is closed (408), in ms. Default 10000.
    pub request_timeout_ms: u64,
    /// `max_connections`: open HTTP connections in total (all workers together); more wait
    /// in the listen backlog. Lowered at start to fit the process's file limit. Default 10000.
    pub max_connections: usize,
}

/// The DingTalk app and how dingops calls its APIs.
#[derive(Debug, Clone)]
pub struct DingTalkSettings {
    /// `app_key`: AppKey / ClientID of the DingTalk app. Required.
    pub app_key: String,
    /// `app_secret`: the callback signature key and the token credential. Required; never logged.
    pub app_secret: SecretString,
    /// `robot_code`: robotCode for the group-message fallback. Default: `app_key`.
    pub robot_code: String,
    /// `oapi_base`: legacy API base (gettoken, topapi). Default `https://oapi.dingtalk.com`.
    pub oapi_base: Url,
    /// `api_base`: new API base (oauth2, im). Default `https://api.dingtalk.com`.
    pub api_base: Url,
    /// `upstream_timeout_ms`: total time one outbound HTTP call may take, in ms. Default 5000.
    pub upstream_timeout_ms: u64,
    /// `upstream_connect_timeout_ms`: time to establish an outbound connection, in ms. Default 2000.
    pub upstream_connect_timeout_ms: u64,
    /// `api_calls_per_sec`: calls per second per DingTalk API (DingTalk allows 20); 0 turns
    /// pacing off. Default 20.
    pub api_calls_per_sec: u32,
    /// `retry_max_attempts`: attempts per DingTalk call, the first included. Default 4.
    pub retry_max_attempts: u32,
    /// `retry_base_ms`: first backoff after a transient failure, doubled each time, in ms. Default 200.
    pub retry_base_ms: u64,
    /// `retry_deadline_ms`: total time one DingTalk call may take with its retries, in ms. Default 30000.
    pub retry_deadline_ms: u64,
    /// `proxy`: an `http://host:port` proxy that carries every outbound connection (API
    /// calls, replies and Stream-mode WebSockets) through HTTP CONNECT. Default none.
    pub proxy: Option<ProxyAddr>,
    /// `monthly_call_budget` and `interactive_reserve`: the calls dingops may make per
    /// calendar month and the share kept for interactive work (docs/configuration.md).
    /// Default off, 20%.
    pub quota: crate::quota::Budget,
    /// `timezone` (shared with the worker's replies): where the quota's renewal is shown.
    /// The quota's months are DingTalk's (China time) whatever it says.
    pub timezone: jiff::tz::TimeZone,
}

/// The address of an HTTP CONNECT proxy (`proxy`): host and port, no credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAddr {
    pub host: String,
    pub port: u16,
}

/// Why a text is not a [`ProxyAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a URL: {0}")]
    NotUrl(url::ParseError),
    #[error("expected http://host:port (an HTTP CONNECT proxy)")]
    NotHttp,
    #[error("proxy credentials are not supported")]
    Credentials,
    #[error("expected http://host:port without a path or query")]
    PathOrQuery,
    #[error("the proxy URL has no host")]
    NoHost,
}

impl ProxyAddr {
    /// `http://host:port` (port 80 when left out); anything else is refused with the reason.
    pub fn parse(text: &str) -> Result<Self, ProxyError> {
        let url = Url::parse(text.trim()).map_err(ProxyError::NotUrl)?;
        if url.scheme() != "http" {
            return Err(ProxyError::NotHttp);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ProxyError::Credentials);
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(ProxyError::PathOrQuery);
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(ProxyError::NoHost)?;
        Ok(Self {
            host: host.to_owned(),
            port: url.port_or_known_default().unwrap_or(80),
        })
    }

    /// `http://host:port`, as reqwest takes it.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// `host:port`, as a TCP connect takes it (IPv6 hosts keep their brackets).
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Which ingresses run (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /callback` only: DingTalk's HTTP mode.
    Http,
    /// Stream mode only: dingops dials DingTalk; `/callback` answers 404.
    Stream,
    /// Both, sharing one ledger (a message that comes both ways runs once).
    Both,
}

impl Mode {
    /// The name in the configuration (`http`, `stream`, `both`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Stream => "stream",
            Mode::Both => "both",
        }
    }

    /// Whether `POST /callback` is served.
    pub fn http(self) -> bool {
        matches!(self, Mode::Http | Mode::Both)
    }

    /// Whether Stream-mode connections are held.
    pub fn stream(self) -> bool {
        matches!(self, Mode::Stream | Mode::Both)
    }
}

/// Stream mode: the WebSocket ingress (see docs/dingtalk.md#stream-mode).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `mode`: `http`, `stream` or `both`. Default `http`.
    pub mode: Mode,
    /// `stream_connections`: Stream connections held at once. Default 1.
    pub connections: usize,
    /// `stream_keepalive_secs`: idle time before a WebSocket ping, and the time the ping
    /// then has to be answered before the connection counts as dead, in seconds. Default 30.
    pub keepalive_secs: u64,
}

/// Who may run what, where replies may go, and how commands are scheduled.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// `admins`: staffIds allowed to run admin commands. Default empty.
    pub admins: Vec<String>,
    /// `trust_is_admin`: treat the payload's `isAdmin: true` as admin. Default `false`:
    /// the signature does not cover the body, so a replayed header pair could carry it.
    pub trust_is_admin: bool,
    /// `reply_hosts`: hosts a sessionWebhook may point at. Default `oapi.dingtalk.com`.
    pub reply_hosts: ReplyHosts,
    /// `groups`: static bindings openConversationId → chatid. Default empty.
    pub groups: BTreeMap<String, ChatId>,
    /// `command_concurrency`: commands that call a DingTalk group API at once, and, separately,
    /// other commands at once. Default 8.
    pub command_concurrency: usize,
    /// `queue_capacity`: accepted commands held in memory for the workers; a larger backlog
    /// waits in the ledger. Default 256.
    pub queue_capacity: usize,
    /// `admin_commands_per_minute`: admin commands one sender may run per minute in one
    /// group; 0 = unlimited. Default 10.
    pub admin_commands_per_minute: u32,
    /// `timezone`: the IANA time zone replies state revert times in. Default
    /// `Asia/Shanghai`.
    pub timezone: jiff::tz::TimeZone,
    /// `claim_lease_secs`: how long a replica's claim on a group's commands lasts without
    /// being renewed (it renews every third of it); a replica that dies has its groups
    /// taken over by another after at most this long. Default 30.
    pub claim_lease: Duration,
    /// How long one minute of a timed revert lasts. Not a configuration key: always 60 s
    /// from the configuration; the demo and the tests shorten it so that a `/mute-all 1m`
    /// reverts within seconds.
    pub revert_minute: Duration,
}

/// Where the ledger lives.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// `database`: the SQLite file of the ledger and bindings, or a `postgres://` URL.
    /// Default `dingops.db`.
    pub database: Database,
    /// `retention_days`: finished commands older than this are deleted from the ledger in
    /// the background. Default 180.
    pub retention_days: u64,
}

impl ServerSettings {
    pub(super) fn read(src: &Sources) -> Result<Self, ConfigError> {
        let listen_text = src.string("listen")?.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text
            .trim()
            .parse()
            .map_err(|_| Sources::invalid("listen", format!("`{listen_text}` is not ip:port")))?;
        Ok(Self {
            listen,
            signature_window_secs: src.integer("signature_window_secs", 3600, 1, 86_400)?,
            shutdown_grace_secs: src.integer("shutdown_grace_secs", 30, 0, 3600)?,
            request_timeout_ms: src.integer("request_timeout_ms", 10_000, 100, 600_000)?,
            max_connections: src.integer("max_connections", 10_000, 1, 1_000_000)? as usize,
        })
    }

    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

impl DingTalkSettings {
    pub(super) fn read(src: &Sources) -> Result<Self, ConfigError> {
        let app_key = src.required("app_key")?;
        let app_secret = SecretString::from(src.required("app_secret")?);
        let robot_code = src
            .string("robot_code")?
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| app_key.clone());
        Ok(Self {
            app_key,
            app_secret,
            robot_code,
            oapi_base: src.base_url("oapi_base", "https://oapi.dingtalk.com")?,
            api_base: src.base_url("api_base", "https://api.dingtalk.com")?,
            upstream_timeout_ms: src.integer("upstream_timeout_ms", 5000, 100, 600_000)?,
            upstream_connect_timeout_ms: src.integer("upstream_connect_timeout_ms", 2000, 100, 600_000)?,
            api_calls_per_sec: src.integer("api_calls_per_sec", 20, 0, 10_000)? as u32,
            retry_max_attempts: src.integer("retry_max_attempts", 4, 1, 20)? as u32,
            retry_base_ms: src.integer("retry_base_ms", 200, 1, 60_000)?,
            retry_deadline_ms: src.integer("retry_deadline_ms", 30_000, 100, 3_600_000)?,
            proxy: src
                .string("proxy")?
                .filter(|p| !p.trim().is_empty())
                .map(|p| ProxyAddr::parse(&p))
                .transpose()
                .map_err(|reason| Sources::invalid("proxy", reason.to_string()))?,
            quota: read_quota(src)?,
            timezone: read_timezone(src)?,
        })
    }

    /// `upstream_timeout_ms` as a duration.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    /// `upstream_connect_timeout_ms` as a duration.
    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_connect_timeout_ms)
    }
}

impl WorkerSettings {
    pub(super) fn read(src: &Sources) -> Result<Self, ConfigError> {
        let reply_hosts = src
            .list("reply_hosts")?
            .unwrap_or_else(|| vec!["oapi.dingtalk.com".into()])
            .iter()
            .map(|e| ReplyHost::parse(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| Sources::invalid("reply_hosts", reason.to_string()))?;
        if reply_hosts.is_empty() {
            // With no host allowed every reply would be dropped without a word in the chat.
            return Err(Sources::invalid(
                "reply_hosts",
                "must name at least one host (DingTalk's is oapi.dingtalk.com)",
            ));
        }
        Ok(Self {
            admins: src.list("admins")?.unwrap_or_default(),
            trust_is_admin: src.bool("trust_is_admin", false)?,
            reply_hosts: ReplyHosts::new(reply_hosts),
            groups: src.groups()?,
            command_concurrency: src.integer("command_concurrency", 8, 1, 1024)? as usize,
            queue_capacity: src.integer("queue_capacity", 256, 1, 1_000_000)? as usize,
            admin_commands_per_minute: src.integer("admin_commands_per_minute", 10, 0, 100_000)? as u32,
            timezone: read_timezone(src)?,
            claim_lease: Duration::from_secs(src.integer("claim_lease_secs", 30, 1, 3600)?),
            revert_minute: Duration::from_secs(60),
        })
    }
}

/// `timezone`: an IANA name, default Asia/Shanghai.
fn read_timezone(src: &Sources) -> Result<jiff::tz::TimeZone, ConfigError> {
    let name = src.string("timezone")?.unwrap_or_else(|| "Asia/Shanghai".into());
    jiff::tz::TimeZone::get(name.trim()).map_err(|_| {
        Sources::invalid(
            "timezone",
            "must be an IANA time zone name such as Asia/Shanghai or UTC",
        )
    })
}

/// `monthly_call_budget` (`off` or a positive number) and `interactive_reserve` (a count
/// or a percentage of the budget).
fn read_quota(src: &Sources) -> Result<crate::quota::Budget, ConfigError> {
    use crate::quota::{Budget, Reserve};
    let monthly = match src
        .text_or_integer("monthly_call_budget")?
        .as_deref()
        .map(str::trim)
    {
        None | Some("" | "off") => None,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(Sources::invalid(
                    "monthly_call_budget",
                    format!("expected off or a positive number of calls such as 5000, found {text:?}"),
                ));
            }
        },
    };
    let reserve = match src.text_or_integer("interactive_reserve")? {
        None => Reserve::Percent(20),
        Some(text) => Reserve::parse(&text)
            .map_err(|reason| Sources::invalid("interactive_reserve", reason.to_string()))?,
    };
    Ok(Budget { monthly, reserve })
}

impl LedgerSettings {
    /// Only the ledger's keys, for `dingops audit`, which needs no app credentials: the
    /// file is checked as for [`Settings::load`] (readable, TOML, known keys), the other
    /// sections' values are not.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        load_with(path, |text, env| Self::read(&Sources::new(text, env)?))
    }

    pub(super) fn read(src: &Sources) -> Result<Self, ConfigError> {
        let database = src.string("database")?.unwrap_or_else(|| "dingops.db".into());
        let database =
            Database::parse(&database).map_err(|reason| Sources::invalid("database", reason.to_string()))?;
        Ok(Self {
            database,
            retention_days: src.integer("retention_days", 180, 1, 36_500)?,
        })
    }

    /// `retention_days` as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days.saturating_mul(86_400))
    }
}

impl FleetSettings {
    pub(super) fn read(src: &Sources) -> Result<Self, ConfigError> {
        let policy = src
            .string("policy")?
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let dm_reapply_hours = src.integer("dm_reapply_hours", 24, 1, 87_600)?;
        let mut reconcile_auto = false;
        let reconcile_every = match src.string("reconcile_every")?.as_deref().map(str::trim) {
            None | Some("" | "off") => None,
            Some("auto") => {
                if read_quota(src)?.monthly.is_none() {
                    return Err(Sources::invalid(
                        "reconcile_every",
                        "`auto` spreads the reads over the month's budget: set `monthly_call_budget` too (or give a duration such as 1h)",
                    ));
                }
                reconcile_auto = true;
                None
            }
            Some(text) => {
                let every = humantime::parse_duration(text).map_err(|_| {
                    Sources::invalid(
                        "reconcile_every",
                        format!("`{text}` is not a duration such as 30m or 1h (or off)"),
                    )
                })?;
                if every < Duration::from_secs(1) {
                    return Err(Sources::invalid("reconcile_every", "must be at least 1s"));
                }
                Some(every)
            }
        };
        if (reconcile_every.is_some() || reconcile_auto) && policy.is_none() {
            return Err(Sources::invalid(
                "reconcile_every",
                "needs a policy file: set `policy` too",
            ));
        }
        Ok(Self {
            policy,
            dm_reapply_hours,
            reconcile_every,
            reconcile_auto,
        })
    }

    /// `dm_reapply_hours` as a duration.
    pub fn dm_reapply(&self) -> Duration {
        Duration::from_secs(self.dm_reapply_hours.saturating_mul(3600))
    }
}

impl StreamSettings {
    pub(super) fn read(src: &Sources) -> Result<Self, ConfigError> {
        Ok(Self {
            mode: read_mode(src)?,
            connections: src.integer("stream_connections", 1, 1, 16)? as usize,
            keepalive_secs: src.integer("stream_keepalive_secs", 30, 1, 3600)?,
        })
    }

    /// `stream_keepalive_secs` as a duration.
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs)
    }
}

/// `mode`: `http` (the default), `stream` or `both`.
fn read_mode(src: &Sources) -> Result<Mode, ConfigError> {
    match src
        .string("mode")?
        .map(|m| m.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("http") => Ok(Mode::Http),
        Some("stream") => Ok(Mode::Stream),
        Some("both") => Ok(Mode::Both),
        Some(_) => Err(Sources::invalid("mode", "expected http, stream or both")),
    }
}

/// Interactive cards: the replies with buttons and their callbacks (see docs/dingtalk.md,
/// "Interactive cards"). Without `card_template_id` replies stay text.
#[derive(Debug, Clone)]
pub struct CardSettings {
    /// `card_template_id`: the published card template replies are sent with. Default none:
    /// cards off.
    pub template_id: Option<String>,
    /// `card_callback_secret`: the `apiSecret` DingTalk signs HTTP card callbacks with (and
    /// `dingops check --register-card-callback` registers). Required in http and both mode
    /// when cards are on; never printed.
    pub callback_secret: Option<SecretString>,
    /// `card_callback_route_key`: the `callbackRouteKey` of HTTP card callbacks. Default
    /// `dingops`.
    pub callback_route_key: String,
    /// `card_callback_window_secs`: accepted distance between an HTTP card callback's
    /// `x-ddpaas-signature-timestamp` and our clock (1–600; default 60). Shorter than
    /// `signature_window_secs`: DingTalk signs a card callback's timestamp but not its body,
    /// so a signed pair is a one-click ticket only as long as it is fresh.
    pub callback_window_secs: u64,
    /// `ops_group`: the openConversationId of the group where `/plan` asks for a second
    /// admin's approval. Default none.
    pub ops_group: Option<String>,
}

/// Longest `card_template_id`, `ops_group` accepted.
const MAX_ID_BYTES: usize = 256;
/// Longest `card_callback_route_key` accepted.
const MAX_ROUTE_KEY_BYTES: usize = 64;
/// `card_callback_window_secs` by default: about a minute.
const DEFAULT_CARD_WINDOW_SECS: u64 = 60;
/// The longest `card_callback_window_secs`: ten minutes, far below the shortest
/// `retention_days` (a day), so the ledger always remembers an entered click's pair for
/// longer than the pair is fresh.
const MAX_CARD_WINDOW_SECS: u64 = 600;

impl CardSettings {
    /// Whether replies are cards (`card_template_id` is set).
    pub fn enabled(&self) -> bool {
        self.template_id.is_some()
    }

    pub(super) fn read(src: &Sources) -> Result<Self, ConfigError> {
        let template_id = non_empty(src.string("card_template_id")?);
        if let Some(id) = &template_id
            && (id.len() > MAX_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Sources::invalid(
                "card_template_id",
                format!(
                    "expected the template id from DingTalk's card builder (visible ASCII, at most {MAX_ID_BYTES} bytes), such as xxxx-xxxx.schema"
                ),
            ));
        }
        let callback_secret = non_empty(src.string("card_callback_secret")?).map(SecretString::from);
        let callback_route_key =
            non_empty(src.string("card_callback_route_key")?).unwrap_or_else(|| "dingops".into());
        if callback_route_key.len() > MAX_ROUTE_KEY_BYTES
            || !callback_route_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Sources::invalid(
                "card_callback_route_key",
                format!("expected letters, digits, `-`, `_` or `.`, at most {MAX_ROUTE_KEY_BYTES} of them"),
            ));
        }
        let callback_window_secs = src.integer(
            "card_callback_window_secs",
            DEFAULT_CARD_WINDOW_SECS,
            1,
            MAX_CARD_WINDOW_SECS,
        )?;
        let ops_group = non_empty(src.string("ops_group")?);
        if let Some(cid) = &ops_group
            && (!cid.starts_with("cid")
                || cid.len() > MAX_ID_BYTES
                || !cid.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Sources::invalid(
                "ops_group",
                "expected the group's openConversationId (it starts with `cid`), not a chatid or a name",
            ));
        }
        if template_id.is_some() && callback_secret.is_none() && read_mode(src)?.http() {
            return Err(Sources::invalid(
                "card_callback_secret",
                "is required with `card_template_id` in http or both mode: DingTalk signs the card callbacks to POST /card-callback with it",
            ));
        }
        Ok(Self {
            template_id,
            callback_secret,
            callback_route_key,
            callback_window_secs,
            ops_group,
        })
    }
}

/// A text key's value trimmed, `None` when absent or empty.
fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}
