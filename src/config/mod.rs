//! Settings: a TOML file plus `DINGOPS_*` environment variables (environment wins),
//! validated at start into one section per part of dingops, so that each constructor takes
//! only its own section. The file and the variables stay flat (`app_key`,
//! `DINGOPS_APP_KEY`): the key names are the public contract, listed in docs/configuration.md.
//!
//! `keys.rs` declares every key once and merges the file and the variables with figment;
//! `sections.rs` reads each section from them with its defaults and checks.

mod keys;
mod sections;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    pub cards: CardSettings,
}

use keys::{Keys, Sources};
pub use sections::{
    CardSettings, DingTalkSettings, FleetSettings, LedgerSettings, Mode, ProxyAddr, ProxyError,
    ServerSettings, StreamSettings, WorkerSettings,
};

impl Settings {
    /// Loads the file at `path` (if any) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        load_with(path, Self::from_sources)
    }

    /// Builds settings from TOML text and an environment map; the environment wins.
    pub fn from_sources(toml_text: Option<&str>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::read(&Sources::new(toml_text, env)?)
    }

    /// Every key the file and the environment may set, section by section: the fields of
    /// the keys' type, so the list cannot drift from what is read.
    pub fn known_keys() -> Vec<&'static str> {
        Keys::NAMES.to_vec()
    }

    fn read(src: &Sources) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerSettings::read(src)?,
            dingtalk: DingTalkSettings::read(src)?,
            worker: WorkerSettings::read(src)?,
            ledger: LedgerSettings::read(src)?,
            stream: StreamSettings::read(src)?,
            fleet: FleetSettings::read(src)?,
            cards: CardSettings::read(src)?,
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
