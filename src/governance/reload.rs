//! The policy in force, and reading it again: on SIGHUP in `serve`, and before each
//! reconcile run when the file changed. A file that does not validate is refused and the
//! policy in force stays (docs/organisation.md, "Reloading the policy").

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest as _, Sha256};

use crate::governance::policy::{Policy, PolicyError};

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The file holds the policy already in force (or there is no policy file).
    Unchanged,
    /// A new policy is in force.
    Replaced,
    /// The file was refused; the previous policy stays in force.
    Refused(PolicyError),
}

/// The policy in force, shared by the worker (chat commands), the timer (the ends of
/// exceptions), the core and the reconcile loop.
#[derive(Debug)]
pub struct PolicyCell {
    path: Option<PathBuf>,
    current: RwLock<Option<Arc<Policy>>>,
    /// The digest of the file text in force, to tell a changed file from an unchanged one.
    digest: Mutex<Option<[u8; 32]>>,
}

impl PolicyCell {
    /// Loads the policy file at `path` (none: no policy); an invalid file is an error.
    pub fn load(path: Option<&Path>) -> Result<Self, PolicyError> {
        let cell = Self {
            path: path.map(Path::to_path_buf),
            current: RwLock::new(None),
            digest: Mutex::new(None),
        };
        if let Some(path) = path {
            let (policy, digest) = read(path)?;
            *cell.write() = Some(Arc::new(policy));
            *cell.digest.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
        }
        Ok(cell)
    }

    /// A policy given as a value, with no file to reload from.
    pub fn fixed(policy: Option<Policy>) -> Self {
        Self {
            path: None,
            current: RwLock::new(policy.map(Arc::new)),
            digest: Mutex::new(None),
        }
    }

    /// The policy in force.
    pub fn current(&self) -> Option<Arc<Policy>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The file the policy is read from.
    /// The digest of the policy file in force, in hex (`-` without a file): a plan names the
    /// policy it was made from by it.
    pub fn digest_hex(&self) -> String {
        match *self.digest.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(d) => d.iter().map(|b| format!("{b:02x}")).collect(),
            None => "-".to_owned(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads the file again and puts it in force when it validates and differs from the
    /// policy in force.
    pub fn reload(&self) -> Reload {
        let Some(path) = &self.path else {
            return Reload::Unchanged;
        };
        let (policy, digest) = match read(path) {
            Ok(read) => read,
            Err(e) => return Reload::Refused(e),
        };
        let mut in_force = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        if *in_force == Some(digest) {
            return Reload::Unchanged;
        }
        *self.write() = Some(Arc::new(policy));
        *in_force = Some(digest);
        Reload::Replaced
    }

    /// [`PolicyCell::reload`], told to the operator: a new policy is logged, a refused file
    /// is logged with its rule and field and counted in `dingops_policy_reload_errors_total`.
    /// `why` says what asked (`SIGHUP`, `reconcile`).
    pub fn reload_logged(&self, why: &'static str, metrics: &crate::telemetry::Metrics) -> Reload {
        let outcome = self.reload();
        Self::log_reload(why, metrics, &outcome);
        outcome
    }

    /// [`PolicyCell::reload_logged`] in `serve`: a new policy is recorded in the ledger as
    /// the policy in force for the organisation before it is announced, so that a policy run
    /// of the old one (a `dingops apply` in another process) stops writing.
    pub async fn reload_in_force(
        &self,
        why: &'static str,
        metrics: &crate::telemetry::Metrics,
        ledger: &crate::ledger::LedgerHandle,
        by: &str,
        now_ms: u64,
    ) -> Reload {
        let outcome = self.reload();
        if matches!(outcome, Reload::Replaced) {
            self.record_in_force(ledger, by, now_ms).await;
        }
        Self::log_reload(why, metrics, &outcome);
        outcome
    }

    /// Records this policy in the ledger as the policy in force for the organisation (`by`
    /// names the process); a failure is logged (the next load or run records it again).
    pub async fn record_in_force(&self, ledger: &crate::ledger::LedgerHandle, by: &str, now_ms: u64) {
        if self.path.is_none() {
            return;
        }
        let (digest, by) = (self.digest_hex(), by.to_owned());
        if let Err(e) = ledger
            .call(move |l| l.set_policy_in_force(&digest, &by, now_ms))
            .await
        {
            tracing::error!(error = %e, "cannot record the policy in force in the ledger");
        }
    }

    fn log_reload(why: &'static str, metrics: &crate::telemetry::Metrics, outcome: &Reload) {
        match outcome {
            Reload::Unchanged => tracing::debug!(why, "policy file unchanged"),
            Reload::Replaced => tracing::info!(why, "policy reloaded: the new file is in force"),
            Reload::Refused(e) => {
                metrics.policy_reload_errors.inc();
                tracing::error!(why, error = %e, "policy reload refused; the previous policy stays in force");
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Arc<Policy>>> {
        self.current.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn read(path: &Path) -> Result<(Policy, [u8; 32]), PolicyError> {
    let (policy, text) = Policy::load_text(path)?;
    Ok((policy, Sha256::digest(text.as_bytes()).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::GroupSwitch;
    use crate::governance::policy::Setting;

    const MUTED: &str = "[[rule]]\ngroups = [\"*\"]\nmute_all = true\n";
    const UNMUTED: &str = "[[rule]]\ngroups = [\"*\"]\nmute_all = false\n";

    fn mute(cell: &PolicyCell) -> u8 {
        cell.current().expect("a policy").rules[0].settings[&Setting::Switch(GroupSwitch::Mute)]
    }

    #[test]
    fn a_changed_file_replaces_the_policy_and_an_invalid_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, MUTED).unwrap();
        let cell = PolicyCell::load(Some(&path)).unwrap();
        assert_eq!(mute(&cell), 1);
        assert!(matches!(cell.reload(), Reload::Unchanged));

        std::fs::write(&path, UNMUTED).unwrap();
        assert!(matches!(cell.reload(), Reload::Replaced));
        assert_eq!(mute(&cell), 0);

        std::fs::write(&path, "[[rule]]\ngroups = [\"*\"]\nmute_all = \"sometimes\"\n").unwrap();
        match cell.reload() {
            Reload::Refused(e) => assert!(e.to_string().contains("rule 1, `mute_all`"), "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(mute(&cell), 0, "the previous policy stays in force");

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(cell.reload(), Reload::Refused(PolicyError::Read { .. })));
        assert_eq!(mute(&cell), 0);
    }

    #[test]
    fn without_a_file_there_is_nothing_to_reload() {
        let cell = PolicyCell::load(None).unwrap();
        assert!(cell.current().is_none());
        assert!(matches!(cell.reload(), Reload::Unchanged));
    }
}
