//! The SQLite ledger's files: their permissions, the writer thread that commits in groups,
//! and the checkpointer.

use std::path::Path;

use rusqlite::Connection;

use super::{Finisher, MAX_BATCH, WriteJob};

/// Copies the WAL back into the database file every second from its own connection, so the
/// writer never stalls on a checkpoint's fsync (SQLite's automatic checkpoint would run it
/// inside a commit, in the path of every waiting callback).
pub(super) fn checkpoint_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(std::time::Duration::from_secs(1)) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "ledger checkpoint failed");
        }
    }
}

/// The file a ledger was opened on: the writer commits only while its path still names it.
/// An open connection keeps writing to a file that was deleted or replaced, and nothing
/// written there would survive a restart.
pub(super) struct LedgerFile {
    pub(super) path: std::path::PathBuf,
    pub(super) id: (u64, u64),
}

impl LedgerFile {
    pub(super) fn identify(path: &Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path)?;
        Ok((meta.dev(), meta.ino()))
    }

    /// `Err` with the reason when the path no longer names the opened file.
    pub(super) fn check(&self) -> Result<(), String> {
        match Self::identify(&self.path) {
            Ok(id) if id == self.id => Ok(()),
            Ok(_) => Err(format!("ledger file {} was replaced", self.path.display())),
            Err(e) => Err(format!("ledger file {} is gone: {e}", self.path.display())),
        }
    }
}

/// The ledger's files (database, WAL, shared memory) hold sessionWebhook URLs: they are for
/// the owner only, whatever the umask. A new database is created 0600 before SQLite opens it,
/// and SQLite gives the WAL and shared-memory files the database's mode; files an older
/// dingops created with wider modes are narrowed.
pub(super) fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    // Any other failure to create it is left to SQLite to report.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    for file in [path.to_owned(), sidecar(path, "-wal"), sidecar(path, "-shm")] {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(file = %file.display(), error = %e, "cannot make the ledger file private");
        }
    }
}

/// `path` with `suffix` appended to its file name (`dingops.db` → `dingops.db-wal`).
pub(crate) fn sidecar(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

pub(super) fn writer_loop(conn: Connection, file: LedgerFile, jobs: std::sync::mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let began = conn.execute_batch("BEGIN IMMEDIATE");
        let finishers: Vec<Finisher> = batch
            .into_iter()
            .map(|job| job(began.as_ref().ok().map(|_| &conn)))
            .collect();
        let committed = began
            .map_err(|e| e.to_string())
            .and_then(|()| file.check())
            .and_then(|()| conn.execute_batch("COMMIT").map_err(|e| e.to_string()));
        let failure = match committed {
            Ok(()) => None,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                tracing::error!(error = %e, "ledger commit failed");
                Some(e)
            }
        };
        for finish in finishers {
            finish(failure.as_deref());
        }
    }
}
