//! Settings: a TOML file plus `DINGOPS_*` environment variables (environment wins),
//! validated at start into one section per part of dingops, so that each constructor takes
//! only its own section. The file and the variables stay flat (`app_key`,
//! `DINGOPS_APP_KEY`): the key names are the public contract, listed in docs/configuration.md.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::domain::{ChatId, ReplyHost, ReplyHosts};
/// The `database` key's value: the ledger's store, defined beside the stores.
pub use crate::ledger::{Database, PostgresUrl};

/// Why the configuration was refused. Each variant names the key; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("configuration key `{key}` (env {env}) is required")]
    Missing { key: &'static str, env: String },
    #[error("configuration key `{key}` (env {env}): {reason}")]
    Invalid {
        key: &'static str,
        env: String,
        reason: String,
    },
    #[error("configuration file has unknown key `{key}`; known keys: {known}")]
    UnknownKey { key: String, known: String },
}

/// The validated configuration of a dingops process, one section per part.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub dingtalk: DingTalkSettings,
    pub worker: WorkerSettings,
    pub ledger: LedgerSettings,
    pub stream: StreamSettings,
    pub fleet: FleetSettings,
}

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
    /// `off` or unset: never. Default off.
    pub reconcile_every: Option<Duration>,
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
}

/// The address of an HTTP CONNECT proxy (`proxy`): host and port, no credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAddr {
    pub host: String,
    pub port: u16,
}

impl ProxyAddr {
    /// `http://host:port` (port 80 when left out); anything else is refused with the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))?;
        if url.scheme() != "http" {
            return Err("expected http://host:port (an HTTP CONNECT proxy)".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("proxy credentials are not supported".into());
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("expected http://host:port without a path or query".into());
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the proxy URL has no host")?;
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

fn env_name(key: &str) -> String {
    format!("DINGOPS_{}", key.to_ascii_uppercase())
}

/// One raw value with its origin, converted to a typed value with a message naming the key.
enum Raw {
    File(toml::Value),
    Env(String),
}

struct Sources {
    file: toml::Table,
    env: HashMap<String, String>,
    /// Every key read so far: after a full read, the known keys.
    read: RefCell<Vec<&'static str>>,
}

impl Sources {
    /// The file's keys (all of them known) and the environment.
    fn new(toml_text: Option<&str>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let file: toml::Table = match toml_text {
            Some(text) => toml::from_str(text).map_err(|e| ConfigError::File {
                path: PathBuf::from("<toml>"),
                reason: e.message().to_owned(),
            })?,
            None => toml::Table::new(),
        };
        let known = Settings::known_keys();
        if let Some(unknown) = file.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey {
                key: unknown.clone(),
                known: known.join(", "),
            });
        }
        Ok(Sources {
            file,
            env: env.clone(),
            read: RefCell::default(),
        })
    }

    fn raw(&self, key: &'static str) -> Option<Raw> {
        self.read.borrow_mut().push(key);
        if let Some(v) = self.env.get(&env_name(key)) {
            return Some(Raw::Env(v.clone()));
        }
        self.file.get(key).cloned().map(Raw::File)
    }

    fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            env: env_name(key),
            reason: reason.into(),
        }
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Raw::Env(s)) => Ok(Some(s)),
            Some(Raw::File(toml::Value::String(s))) => Ok(Some(s)),
            Some(Raw::File(other)) => Err(Self::invalid(
                key,
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    fn required(&self, key: &'static str) -> Result<String, ConfigError> {
        match self.string(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            _ => Err(ConfigError::Missing {
                key,
                env: env_name(key),
            }),
        }
    }

    fn list(&self, key: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
        let items: Vec<String> = match self.raw(key) {
            None => return Ok(None),
            Some(Raw::Env(s)) | Some(Raw::File(toml::Value::String(s))) => {
                s.split(',').map(str::to_owned).collect()
            }
            Some(Raw::File(toml::Value::Array(a))) => a
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    other => Err(Self::invalid(
                        key,
                        format!("list items must be strings, found {}", other.type_str()),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(Raw::File(other)) => {
                return Err(Self::invalid(
                    key,
                    format!("expected a list of strings, found {}", other.type_str()),
                ));
            }
        };
        Ok(Some(
            items
                .into_iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        ))
    }

    fn bool(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(Raw::File(toml::Value::Boolean(b))) => Ok(b),
            Some(Raw::Env(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(Self::invalid(key, "expected true or false")),
            },
            Some(Raw::File(other)) => Err(Self::invalid(
                key,
                format!("expected true or false, found {}", other.type_str()),
            )),
        }
    }

    fn integer(&self, key: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let value = match self.raw(key) {
            None => return Ok(default),
            Some(Raw::File(toml::Value::Integer(i))) => u64::try_from(i).ok(),
            Some(Raw::Env(s)) => s.trim().parse::<u64>().ok(),
            Some(Raw::File(_)) => None,
        };
        match value {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(Self::invalid(
                key,
                format!("expected a whole number from {min} to {max}"),
            )),
        }
    }

    fn base_url(&self, key: &'static str, default: &str) -> Result<Url, ConfigError> {
        let text = self.string(key)?.unwrap_or_else(|| default.to_owned());
        let url = Url::parse(text.trim()).map_err(|e| Self::invalid(key, format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Self::invalid(key, "expected an http(s) URL with a host"));
        }
        if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(Self::invalid(key, "must not carry a query or user info"));
        }
        Ok(url)
    }

    fn groups(&self) -> Result<BTreeMap<String, ChatId>, ConfigError> {
        const KEY: &str = "groups";
        let pairs: Vec<(String, String)> = match self.raw(KEY) {
            None => Vec::new(),
            Some(Raw::Env(s)) | Some(Raw::File(toml::Value::String(s))) => s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    // openConversationIds end in `=`, so split at the last one.
                    pair.rsplit_once('=')
                        .map(|(cid, chat)| (cid.trim().to_owned(), chat.trim().to_owned()))
                        .ok_or_else(|| Self::invalid(KEY, "expected cid=chatid pairs separated by commas"))
                })
                .collect::<Result<_, _>>()?,
            Some(Raw::File(toml::Value::Table(t))) => t
                .into_iter()
                .map(|(cid, v)| match v {
                    toml::Value::String(chat) => Ok((cid, chat)),
                    other => Err(Self::invalid(
                        KEY,
                        format!(
                            "the chatid of `{cid}` must be a string, found {}",
                            other.type_str()
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(Raw::File(other)) => {
                return Err(Self::invalid(
                    KEY,
                    format!(
                        "expected a table of openConversationId = chatid, found {}",
                        other.type_str()
                    ),
                ));
            }
        };
        let mut groups = BTreeMap::new();
        for (cid, chat) in pairs {
            if cid.is_empty() || cid.len() > 256 {
                return Err(Self::invalid(KEY, "an openConversationId is empty or too long"));
            }
            let chat = ChatId::parse(&chat)
                .map_err(|_| Self::invalid(KEY, format!("`{chat}` (for `{cid}`) is not a chatid")))?;
            groups.insert(cid, chat);
        }
        Ok(groups)
    }
}

impl Settings {
    /// Loads the file at `path` (if any) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        load_with(path, Self::from_sources)
    }

    /// Builds settings from TOML text and an environment map; the environment wins.
    pub fn from_sources(toml_text: Option<&str>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::read(&Sources::new(toml_text, env)?)
    }

    /// Every key the file and the environment may set, in the order they are read: taken
    /// from the reading code itself, so the list cannot drift from it.
    pub fn known_keys() -> Vec<&'static str> {
        let src = Sources {
            file: toml::Table::new(),
            env: [("app_key", "k"), ("app_secret", "s")]
                .into_iter()
                .map(|(k, v)| (env_name(k), v.to_owned()))
                .collect(),
            read: RefCell::default(),
        };
        // With both required keys present every key is read; the result does not matter.
        let _ = Self::read(&src);
        src.read.into_inner()
    }

    fn read(src: &Sources) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerSettings::read(src)?,
            dingtalk: DingTalkSettings::read(src)?,
            worker: WorkerSettings::read(src)?,
            ledger: LedgerSettings::read(src)?,
            stream: StreamSettings::read(src)?,
            fleet: FleetSettings::read(src)?,
        })
    }
}

impl ServerSettings {
    fn read(src: &Sources) -> Result<Self, ConfigError> {
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
    fn read(src: &Sources) -> Result<Self, ConfigError> {
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
                .map_err(|reason| Sources::invalid("proxy", reason))?,
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
    fn read(src: &Sources) -> Result<Self, ConfigError> {
        let reply_hosts = src
            .list("reply_hosts")?
            .unwrap_or_else(|| vec!["oapi.dingtalk.com".into()])
            .iter()
            .map(|e| ReplyHost::parse(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| Sources::invalid("reply_hosts", reason))?;
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
            timezone: {
                let name = src.string("timezone")?.unwrap_or_else(|| "Asia/Shanghai".into());
                jiff::tz::TimeZone::get(name.trim()).map_err(|_| {
                    Sources::invalid(
                        "timezone",
                        "must be an IANA time zone name such as Asia/Shanghai or UTC",
                    )
                })?
            },
            claim_lease: Duration::from_secs(src.integer("claim_lease_secs", 30, 1, 3600)?),
            revert_minute: Duration::from_secs(60),
        })
    }
}

/// Reads the file at `path` (if any) and the `DINGOPS_*` environment, and builds from them
/// with `build`; a file error names the file.
fn load_with<T>(
    path: Option<&Path>,
    build: impl FnOnce(Option<&str>, &HashMap<String, String>) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let text = match path {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| ConfigError::File {
            path: p.to_owned(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("DINGOPS_"))
        .collect();
    build(text.as_deref(), &env).map_err(|e| match (e, path) {
        (ConfigError::File { reason, .. }, Some(p)) => ConfigError::File {
            path: p.to_owned(),
            reason,
        },
        (e, _) => e,
    })
}

impl LedgerSettings {
    /// Only the ledger's keys, for `dingops audit`, which needs no app credentials: the
    /// file is checked as for [`Settings::load`] (readable, TOML, known keys), the other
    /// sections' values are not.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        load_with(path, |text, env| Self::read(&Sources::new(text, env)?))
    }

    fn read(src: &Sources) -> Result<Self, ConfigError> {
        let database = src.string("database")?.unwrap_or_else(|| "dingops.db".into());
        let database = Database::parse(&database).map_err(|reason| Sources::invalid("database", reason))?;
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
    fn read(src: &Sources) -> Result<Self, ConfigError> {
        let policy = src
            .string("policy")?
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let dm_reapply_hours = src.integer("dm_reapply_hours", 24, 1, 87_600)?;
        let reconcile_every = match src.string("reconcile_every")?.as_deref().map(str::trim) {
            None | Some("" | "off") => None,
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
        if reconcile_every.is_some() && policy.is_none() {
            return Err(Sources::invalid(
                "reconcile_every",
                "needs a policy file: set `policy` too",
            ));
        }
        Ok(Self {
            policy,
            dm_reapply_hours,
            reconcile_every,
        })
    }

    /// `dm_reapply_hours` as a duration.
    pub fn dm_reapply(&self) -> Duration {
        Duration::from_secs(self.dm_reapply_hours.saturating_mul(3600))
    }
}

impl StreamSettings {
    fn read(src: &Sources) -> Result<Self, ConfigError> {
        let mode = match src
            .string("mode")?
            .map(|m| m.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("http") => Mode::Http,
            Some("stream") => Mode::Stream,
            Some("both") => Mode::Both,
            Some(_) => return Err(Sources::invalid("mode", "expected http, stream or both")),
        };
        Ok(Self {
            mode,
            connections: src.integer("stream_connections", 1, 1, 16)? as usize,
            keepalive_secs: src.integer("stream_keepalive_secs", 30, 1, 3600)?,
        })
    }

    /// `stream_keepalive_secs` as a duration.
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MINIMAL: &str = "app_key = \"k\"\napp_secret = \"s\"\n";

    #[test]
    fn defaults_fill_every_optional_key() {
        let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.dingtalk.oapi_base.as_str(), "https://oapi.dingtalk.com/");
        assert_eq!(s.dingtalk.api_base.as_str(), "https://api.dingtalk.com/");
        assert!(
            !s.worker.trust_is_admin,
            "the payload's isAdmin is not trusted by default"
        );
        assert_eq!(
            s.worker.reply_hosts,
            ReplyHosts::new(vec![ReplyHost::parse("oapi.dingtalk.com").unwrap()])
        );
        assert_eq!(s.server.signature_window_secs, 3600);
        assert_eq!(s.ledger.database, Database::Sqlite(PathBuf::from("dingops.db")));
        assert_eq!(s.ledger.retention_days, 180);
        assert_eq!(s.server.request_timeout_ms, 10_000);
        assert_eq!(s.server.max_connections, 10_000);
        assert!(s.worker.admins.is_empty() && s.worker.groups.is_empty());
        assert_eq!(s.worker.claim_lease, Duration::from_secs(30));
    }

    #[test]
    fn the_claim_lease_is_whole_seconds_from_one_to_an_hour() {
        let s = Settings::from_sources(
            Some("app_key = \"k\"\napp_secret = \"s\"\nclaim_lease_secs = 2\n"),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(s.worker.claim_lease, Duration::from_secs(2));
        for bad in ["0", "3601", "soon"] {
            let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_CLAIM_LEASE_SECS", bad)]))
                .unwrap_err();
            assert!(err.to_string().contains("`claim_lease_secs`"), "{bad}: {err}");
        }
    }

    #[test]
    fn environment_wins_over_the_file() {
        let s = Settings::from_sources(
            Some("app_key = \"file\"\napp_secret = \"s\"\nadmins = [\"a\"]\n"),
            &env(&[("DINGOPS_APP_KEY", "env"), ("DINGOPS_ADMINS", "x, y,")]),
        )
        .unwrap();
        assert_eq!(s.dingtalk.app_key, "env");
        assert_eq!(s.worker.admins, vec!["x", "y"]);
    }

    #[test]
    fn a_missing_secret_names_the_key_and_its_variable() {
        let err = Settings::from_sources(Some("app_key = \"k\""), &env(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration key `app_secret` (env DINGOPS_APP_SECRET) is required"
        );
    }

    #[test]
    fn a_bad_value_names_the_key() {
        let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_SIGNATURE_WINDOW_SECS", "soon")]))
            .unwrap_err();
        assert!(err.to_string().contains("`signature_window_secs`"), "{err}");
        let err =
            Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_TRUST_IS_ADMIN", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("`trust_is_admin`"), "{err}");
    }

    #[test]
    fn an_unknown_file_key_is_refused() {
        let err = Settings::from_sources(Some("app_key=\"k\"\napp_secert=\"s\""), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("unknown key `app_secert`"), "{err}");
    }

    #[test]
    fn groups_from_the_environment_split_at_the_last_equals_sign() {
        let s = Settings::from_sources(
            Some(MINIMAL),
            &env(&[("DINGOPS_GROUPS", "cidAAA===chat1, cidBB=chat2")]),
        )
        .unwrap();
        assert_eq!(s.worker.groups.get("cidAAA==").map(ChatId::as_str), Some("chat1"));
        assert_eq!(s.worker.groups.get("cidBB").map(ChatId::as_str), Some("chat2"));
    }

    #[test]
    fn groups_from_the_file_are_a_table() {
        let s = Settings::from_sources(
            Some("app_key=\"k\"\napp_secret=\"s\"\n[groups]\n\"cidX==\" = \"chatX\"\n"),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(s.worker.groups.get("cidX==").map(ChatId::as_str), Some("chatX"));
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        let s =
            Settings::from_sources(Some("app_key=\"k\"\napp_secret=\"hunter2-secret\""), &env(&[])).unwrap();
        assert_eq!(s.dingtalk.app_secret.expose_secret(), "hunter2-secret");
        assert!(!format!("{s:?}").contains("hunter2-secret"));
    }

    #[test]
    fn the_known_keys_are_every_documented_key_once() {
        let keys = Settings::known_keys();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "a key is read twice: {keys:?}");
        for key in [
            "listen",
            "app_key",
            "app_secret",
            "reply_hosts",
            "groups",
            "database",
            "robot_code",
            "timezone",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(keys.len(), 34);
    }

    #[test]
    fn a_postgres_url_selects_postgresql_and_never_shows_its_password() {
        for url in [
            "postgres://dingops:hunter2-pw@db.internal:5433/ops",
            "postgresql://dingops:hunter2-pw@db.internal:5433/ops?sslmode=disable",
        ] {
            let s = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_DATABASE", url)])).unwrap();
            let Database::Postgres(pg) = &s.ledger.database else {
                panic!("{url} is not read as PostgreSQL");
            };
            assert!(!pg.tls());
            assert_eq!(s.ledger.database.sqlite_path(), None);
            let config = pg.config().unwrap();
            assert_eq!(config.get_password(), Some(&b"hunter2-pw"[..]));
            assert_eq!(config.get_ports(), [5433]);
            assert_eq!(config.get_dbname(), Some("ops"));
            for shown in [
                s.ledger.database.to_string(),
                format!("{:?}", s.ledger.database),
                format!("{s:?}"),
            ] {
                assert!(!shown.contains("hunter2-pw"), "{shown}");
            }
            assert!(
                s.ledger.database.to_string().starts_with(&format!(
                    "{}://dingops:***@db.internal:5433/ops",
                    &url[..url.find(':').unwrap()]
                )),
                "{}",
                s.ledger.database
            );
        }
        let with_param = Database::parse("postgres://u@h/db?password=hunter2-pw&sslmode=require").unwrap();
        let Database::Postgres(pg) = &with_param else {
            panic!("not PostgreSQL");
        };
        assert!(pg.tls(), "sslmode=require asks for TLS");
        assert!(!with_param.to_string().contains("hunter2-pw"), "{with_param}");
        assert_eq!(
            Database::parse(" ledger.db ").unwrap(),
            Database::Sqlite(PathBuf::from("ledger.db"))
        );
    }

    #[test]
    fn a_bad_database_value_is_refused_without_repeating_it() {
        for bad in [
            "postgres://u:hunter2-pw@h/db?sslmode=prefer",
            "postgres://u:hunter2-pw@h:notaport/db",
            "postgres://u:hunter2-pw@h/db?bogus_option=1",
            "postgres://:hunter2-pw@/db",
            "mysql://u:hunter2-pw@h/db",
            "  ",
        ] {
            let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_DATABASE", bad)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("`database`"), "{bad}: {text}");
            assert!(!text.contains("hunter2-pw"), "{bad}: {text}");
        }
    }

    #[test]
    fn the_timezone_defaults_to_shanghai_and_refuses_unknown_names() {
        let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
        assert_eq!(s.worker.timezone.iana_name(), Some("Asia/Shanghai"));
        let s =
            Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_TIMEZONE", "Europe/Berlin")])).unwrap();
        assert_eq!(s.worker.timezone.iana_name(), Some("Europe/Berlin"));
        let e =
            Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_TIMEZONE", "Mars/Olympus")])).unwrap_err();
        assert!(e.to_string().contains("timezone"), "{e}");
    }

    #[test]
    fn stream_mode_is_off_unless_asked_for() {
        let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
        assert_eq!(s.stream.mode, Mode::Http);
        assert_eq!((s.stream.connections, s.stream.keepalive_secs), (1, 30));
        assert_eq!(s.dingtalk.proxy, None);
        let s = Settings::from_sources(
            Some("app_key=\"k\"\napp_secret=\"s\"\nmode=\"both\"\nstream_connections=3\n"),
            &env(&[("DINGOPS_MODE", "Stream"), ("DINGOPS_STREAM_KEEPALIVE_SECS", "2")]),
        )
        .unwrap();
        assert_eq!(s.stream.mode, Mode::Stream);
        assert_eq!((s.stream.connections, s.stream.keepalive_secs), (3, 2));
        let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_MODE", "websocket")])).unwrap_err();
        assert!(err.to_string().contains("`mode`"), "{err}");
    }

    #[test]
    fn reconciling_is_off_by_default_and_needs_a_policy_and_a_duration() {
        let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
        assert_eq!(s.fleet.policy, None);
        assert_eq!(s.fleet.reconcile_every, None);
        assert_eq!(s.fleet.dm_reapply_hours, 24);
        let s = Settings::from_sources(
            Some("app_key=\"k\"\napp_secret=\"s\"\npolicy=\"fleet.toml\"\nreconcile_every=\"90m\"\n"),
            &env(&[("DINGOPS_DM_REAPPLY_HOURS", "6")]),
        )
        .unwrap();
        assert_eq!(s.fleet.policy, Some(PathBuf::from("fleet.toml")));
        assert_eq!(s.fleet.reconcile_every, Some(Duration::from_secs(90 * 60)));
        assert_eq!(s.fleet.dm_reapply_hours, 6);
        let off = Settings::from_sources(
            Some("app_key=\"k\"\napp_secret=\"s\"\npolicy=\"p.toml\"\nreconcile_every=\"off\"\n"),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(off.fleet.reconcile_every, None);
        for (vars, key) in [
            (vec![("DINGOPS_RECONCILE_EVERY", "1h")], "`reconcile_every`"),
            (
                vec![("DINGOPS_POLICY", "p.toml"), ("DINGOPS_RECONCILE_EVERY", "soon")],
                "`reconcile_every`",
            ),
            (
                vec![("DINGOPS_POLICY", "p.toml"), ("DINGOPS_RECONCILE_EVERY", "10ms")],
                "`reconcile_every`",
            ),
            (vec![("DINGOPS_DM_REAPPLY_HOURS", "0")], "`dm_reapply_hours`"),
        ] {
            let err = Settings::from_sources(Some(MINIMAL), &env(&vars)).unwrap_err();
            assert!(err.to_string().contains(key), "{vars:?}: {err}");
        }
    }

    #[test]
    fn a_proxy_is_an_http_host_and_port_without_credentials() {
        let s = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_PROXY", "http://10.0.0.1:3128")]))
            .unwrap();
        let proxy = s.dingtalk.proxy.unwrap();
        assert_eq!((proxy.host.as_str(), proxy.port), ("10.0.0.1", 3128));
        assert_eq!(ProxyAddr::parse("http://proxy.corp").unwrap().port, 80);
        assert_eq!(
            ProxyAddr::parse("http://[::1]:8080").unwrap().authority(),
            "[::1]:8080"
        );
        for bad in [
            "https://p:1",
            "http://u:pw@p:1",
            "http://p:1/path",
            "socks5://p:1",
            "p:1",
        ] {
            let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_PROXY", bad)])).unwrap_err();
            assert!(err.to_string().contains("`proxy`"), "{bad}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }
}
