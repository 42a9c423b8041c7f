//! The configuration keys as the file and the environment give them, merged by figment
//! (a variable wins over the file), then read into typed values by the sections with
//! errors that name the key and its variable. The key list is the type [`Keys`].
//!
//! The file is parsed by the `toml` crate (its messages are what a file error quotes) and
//! the variables are taken as they are: figment's own `Env` provider would read `123` or
//! `true` as a number or a boolean, and an app key or secret must stay the text it is.

use std::collections::{BTreeMap, HashMap};

use figment::value::magic::Tagged;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use url::Url;

use super::ConfigError;
use crate::domain::ChatId;

/// Declares [`Keys`], one field per key, and [`Keys::NAMES`] in the same order.
macro_rules! keys {
    ($($section:literal: $($key:ident),+;)+) => {
        /// Every key the file and the environment may set, each as given or absent.
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(default)]
        pub(super) struct Keys {
            $($($key: Option<Tagged<toml::Value>>,)+)+
        }

        impl Keys {
            /// The key names, section by section in the order they are read.
            pub(super) const NAMES: &[&str] = &[$($(stringify!($key)),+),+];

            fn get(&self, key: &str) -> Option<&Tagged<toml::Value>> {
                match key {
                    $($(stringify!($key) => self.$key.as_ref(),)+)+
                    _ => None,
                }
            }
        }
    };
}

keys! {
    "server": listen, signature_window_secs, shutdown_grace_secs, request_timeout_ms, max_connections;
    "dingtalk": app_key, app_secret, robot_code, oapi_base, api_base, upstream_timeout_ms,
        upstream_connect_timeout_ms, api_calls_per_sec, retry_max_attempts, retry_base_ms,
        retry_deadline_ms, proxy, monthly_call_budget, interactive_reserve;
    "worker": reply_hosts, admins, trust_is_admin, groups, command_concurrency, queue_capacity,
        admin_commands_per_minute, timezone, claim_lease_secs;
    "ledger": database, retention_days;
    "stream": mode, stream_connections, stream_keepalive_secs;
    "fleet": policy, dm_reapply_hours, reconcile_every;
    "cards": card_template_id, card_callback_secret, card_callback_route_key,
        card_callback_window_secs, ops_group;
}

/// The environment variable of `key`: `DINGOPS_` and the key in capitals.
pub(super) fn env_name(key: &str) -> String {
    format!("DINGOPS_{}", key.to_ascii_uppercase())
}

/// The name figment knows the environment by; a value whose tag leads to it came from a
/// variable.
const ENV: &str = "DINGOPS_* environment variables";

/// The configuration file's keys.
struct FileKeys(toml::Table);

impl Provider for FileKeys {
    fn metadata(&self) -> Metadata {
        Metadata::named("configuration file")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = Value::serialize(&self.0)?.into_dict().unwrap_or_default();
        Ok(Profile::Default.collect(dict))
    }
}

/// The `DINGOPS_*` variable of each key that has one, as text.
struct EnvKeys(Dict);

impl EnvKeys {
    fn new(env: &HashMap<String, String>) -> Self {
        Self(
            Keys::NAMES
                .iter()
                .filter_map(|key| {
                    let value = env.get(&env_name(key))?;
                    Some(((*key).to_owned(), Value::from(value.clone())))
                })
                .collect(),
        )
    }
}

impl Provider for EnvKeys {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// One raw value with its origin, converted to a typed value with a message naming the key.
enum Raw {
    File(toml::Value),
    Env(String),
}

/// The merged keys, read one at a time by the sections.
pub(super) struct Sources {
    keys: Keys,
    figment: Figment,
}

impl Sources {
    /// The file's keys (all of them known) and the environment, merged.
    pub(super) fn new(toml_text: Option<&str>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let file: toml::Table = match toml_text {
            Some(text) => toml::from_str(text).map_err(|e| ConfigError::File {
                path: "<toml>".into(),
                reason: e.message().to_owned(),
            })?,
            None => toml::Table::new(),
        };
        if let Some(unknown) = file.keys().find(|k| !Keys::NAMES.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey {
                key: unknown.clone(),
                known: Keys::NAMES.join(", "),
            });
        }
        let figment = Figment::from(FileKeys(file)).merge(EnvKeys::new(env));
        // Every field takes any value, so this fails only on a figment fault.
        let keys = figment.extract().map_err(|e| ConfigError::File {
            path: "<toml>".into(),
            reason: e.to_string(),
        })?;
        Ok(Self { keys, figment })
    }

    fn raw(&self, key: &'static str) -> Option<Raw> {
        debug_assert!(Keys::NAMES.contains(&key), "`{key}` is not a field of Keys");
        let given = self.keys.get(key)?;
        let from_env = self
            .figment
            .get_metadata(given.tag())
            .is_some_and(|m| m.name == ENV);
        Some(match (from_env, given.clone().into_inner()) {
            (true, toml::Value::String(s)) => Raw::Env(s),
            (_, value) => Raw::File(value),
        })
    }

    pub(super) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            env: env_name(key),
            reason: reason.into(),
        }
    }

    pub(super) fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
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

    /// A key that is text or a whole number (`monthly_call_budget = 5000` or `"off"`), as text.
    pub(super) fn text_or_integer(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.raw(key) {
            Some(Raw::File(toml::Value::Integer(i))) => Ok(Some(i.to_string())),
            _ => self.string(key),
        }
    }

    pub(super) fn required(&self, key: &'static str) -> Result<String, ConfigError> {
        match self.string(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            _ => Err(ConfigError::Missing {
                key,
                env: env_name(key),
            }),
        }
    }

    pub(super) fn list(&self, key: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
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

    pub(super) fn bool(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
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

    pub(super) fn integer(
        &self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
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

    pub(super) fn base_url(&self, key: &'static str, default: &str) -> Result<Url, ConfigError> {
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

    pub(super) fn groups(&self) -> Result<BTreeMap<String, ChatId>, ConfigError> {
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
