//! Governing the whole organisation rather than one group at a time: discovering the
//! department groups, planning and applying the policy (read by [`crate::governance::policy`]),
//! and `serve`'s reconcile loop. [`Fleet`] holds what planning and applying need; `plan.rs`
//! reads and compares, `apply.rs` changes and records. They return data: the CLI's words for
//! it are in `crate::cli`.

pub mod apply;
pub mod discover;
pub mod ops_room;
pub mod plan;
pub mod policy_lease;
pub mod reconcile;
pub mod run;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::{Database, DingTalkSettings, FleetSettings};
use crate::dingtalk::DingTalk;
use crate::domain::ChatId;
use crate::governance::policy::Resolution;
use crate::governance::{Directory, Governor, PolicyCell, Recorder};
use crate::ledger::{LedgerError, LedgerHandle};
use crate::telemetry::Metrics;

/// The policy with everything it needs to plan and apply: the governance core it changes
/// settings through (which holds the policy in force and the DingTalk client), the ledger
/// (bindings, departments, known values, audit) and the configured static bindings.
pub struct Fleet {
    governor: Governor,
    dingtalk: Arc<DingTalk>,
    ledger: LedgerHandle,
    dm_reapply: Duration,
}

/// Why `plan` or `apply` could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no policy file: set `policy` (env DINGOPS_POLICY) to its path")]
    NoPolicy,
    #[error(transparent)]
    Policy(#[from] crate::governance::policy::PolicyError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot build the DingTalk client: {0}")]
    Client(#[from] crate::dingtalk::ApiError),
}

impl Fleet {
    /// The DingTalk client this fleet calls through (background class).
    pub fn dingtalk(&self) -> &DingTalk {
        &self.dingtalk
    }

    /// The ledger this fleet records its changes in.
    pub fn ledger(&self) -> &LedgerHandle {
        &self.ledger
    }

    /// The fleet of a CLI run (`plan`, `apply`): the configured policy, a DingTalk client of
    /// its own, and the ledger opened without the serve lock, so it can run beside `serve`;
    /// the time is read from `clock`.
    pub async fn open(
        fleet: &FleetSettings,
        dingtalk: &DingTalkSettings,
        database: &Database,
        static_groups: &BTreeMap<String, ChatId>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenError> {
        let path = fleet.policy.as_ref().ok_or(OpenError::NoPolicy)?;
        let policy = Arc::new(PolicyCell::load(Some(path))?);
        let ledger = crate::ledger::open(database, clock.clone()).await?;
        let metrics = Arc::new(Metrics::new());
        // Paced by the budget every process on this ledger shares, a running `serve` included.
        let dingtalk = Arc::new(DingTalk::with_budget(
            dingtalk,
            metrics.clone(),
            ledger.clone(),
            clock,
        )?);
        let holder = format!("cli-{}", crate::worker::group_leases::replica_id());
        Ok(Self::new(
            policy,
            dingtalk,
            ledger,
            static_groups.clone(),
            fleet.dm_reapply(),
            metrics,
            holder,
        ))
    }

    /// A fleet that changes settings through a governance core of its own on `policy`:
    /// `holder` names this process among the writers of settings.
    pub fn new(
        policy: Arc<PolicyCell>,
        dingtalk: Arc<DingTalk>,
        ledger: LedgerHandle,
        static_groups: BTreeMap<String, ChatId>,
        dm_reapply: Duration,
        metrics: Arc<Metrics>,
        holder: String,
    ) -> Self {
        // Plan, apply and reconcile are background work: never the interactive reserve.
        let dingtalk = Arc::new(dingtalk.for_class(crate::quota::Class::Background));
        let governor = Governor::new(
            Arc::clone(&dingtalk),
            ledger.clone(),
            policy,
            Directory::new(static_groups),
            Recorder::new(ledger.clone(), metrics),
            holder,
        );
        Self {
            governor,
            dingtalk,
            ledger,
            dm_reapply,
        }
    }

    /// The matched groups: bindings from the ledger (they win, as for commands) and from
    /// the configuration, and the discovered departments.
    pub async fn resolve(&self) -> Result<Resolution, LedgerError> {
        let (bindings, departments) = self
            .ledger
            .call(|l| Ok((l.bindings()?, l.departments()?)))
            .await?;
        let bound = self.governor.directory().all(bindings);
        Ok(match self.governor.policy().current() {
            Some(policy) => policy.resolve(&bound, &departments),
            None => Resolution {
                targets: Vec::new(),
                unresolved: Vec::new(),
            },
        })
    }

    /// The governance core this fleet changes settings through.
    pub fn governor(&self) -> &Governor {
        &self.governor
    }
}
