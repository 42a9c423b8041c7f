//! Which store holds the ledger (`database`): a SQLite file or a PostgreSQL server.

use std::path::{Path, PathBuf};

use super::PostgresUrl;

/// The store of the ledger: `database` names a SQLite file, or a PostgreSQL server by a
/// `postgres://` (or `postgresql://`) URL. Printing it (`Display`, `Debug`) never shows a
/// password.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(PostgresUrl),
}

/// Why a text is not a [`Database`]; never repeats the value (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseError {
    #[error("must not be empty")]
    Empty,
    #[error("is a URL of an unknown kind; use a file path or a postgres:// URL")]
    UnknownUrl,
    #[error(transparent)]
    Postgres(#[from] super::postgres::PostgresUrlError),
}

impl Database {
    /// Reads a `database` value: a PostgreSQL URL by its scheme, else a file path. The
    /// reason of a refusal never repeats the value (it may hold a password).
    pub fn parse(text: &str) -> Result<Self, DatabaseError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DatabaseError::Empty);
        }
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(Self::Postgres(PostgresUrl::parse(text)?));
        }
        if lower.contains("://") {
            return Err(DatabaseError::UnknownUrl);
        }
        Ok(Self::Sqlite(PathBuf::from(text)))
    }

    /// The SQLite file, when the ledger is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(path) => Some(path),
            Self::Postgres(_) => None,
        }
    }
}

impl From<PathBuf> for Database {
    fn from(path: PathBuf) -> Self {
        Self::Sqlite(path)
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(url.redacted()),
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&url.redacted()).finish(),
        }
    }
}
