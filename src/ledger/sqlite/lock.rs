//! The lock file that makes a process the only `serve` on a SQLite ledger.

use std::path::Path;

use super::files::sidecar;

/// Why `serve` could not take a SQLite ledger's lock file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the ledger {database} is in use by another dingops serve ({holder}); one ledger serves one process"
    )]
    InUse { database: String, holder: String },
    #[error("cannot lock the ledger {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The lock that makes a process the only `serve` on a SQLite ledger: two `serve` on one
/// ledger would both run every open command. It is an exclusive `flock` on
/// `<database>.lock`, whose text names the holder (pid and start time), released when this is
/// dropped or the process dies. CLI tools such as `dingops audit` open the ledger without it.
#[derive(Debug)]
pub struct LockFile {
    _file: std::fs::File,
}

impl LockFile {
    /// Takes the lock of the ledger `database` for this process, since `clock`'s now.
    pub fn take(database: &Path, clock: &dyn crate::clock::Clock) -> Result<Self, LockError> {
        use std::io::{Read as _, Seek as _, Write as _};
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let path = sidecar(database, ".lock");
        let failed = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        // Not truncated on open: the holder's pid is in it.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = (&file).take(256).read_to_string(&mut text);
                // The file is only ours to write, but its text reaches a terminal: printable only.
                let holder: String = text
                    .trim()
                    .chars()
                    .filter(|c| c.is_ascii_graphic() || *c == ' ')
                    .take(120)
                    .collect();
                return Err(LockError::InUse {
                    database: database.display().to_string(),
                    holder: if holder.is_empty() {
                        "holder unknown".into()
                    } else {
                        holder
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
        if file
            .metadata()
            .map(|m| m.permissions().mode() & 0o077 != 0)
            .unwrap_or(false)
        {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(failed)?;
        }
        let since = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(clock.now_ms()),
        );
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "pid {} since {since}", std::process::id()))
            .map_err(failed)?;
        Ok(Self { _file: file })
    }
}
