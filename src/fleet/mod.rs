//! Governing the whole organisation rather than one group at a time: discovering the
//! department groups, planning and applying the policy (read by [`crate::governance::policy`]),
//! and `serve`'s reconcile loop. [`Fleet`] holds what planning and applying need; `plan.rs`
//! reads and compares, `apply.rs` changes and records. They return data: the CLI's words for
//! it are in `crate::cli`.

pub mod apply;
pub mod discover;
pub mod plan;
pub mod policy_lease;
pub mod reconcile;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Database, DingTalkSettings, FleetSettings};
use crate::dingtalk::DingTalk;
use crate::domain::ChatId;
use crate::governance::policy::{Policy, Resolution};
use crate::ledger::{LedgerError, LedgerHandle};

/// The policy with everything it needs to plan and apply: the DingTalk client, the ledger
/// (bindings, departments, DM state, audit) and the configured static bindings.
pub struct Fleet {
    policy: Arc<Policy>,
    dingtalk: Arc<DingTalk>,
    ledger: LedgerHandle,
    static_groups: BTreeMap<String, ChatId>,
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
    /// its own, and the ledger opened without the serve lock, so it can run beside `serve`.
    pub async fn open(
        fleet: &FleetSettings,
        dingtalk: &DingTalkSettings,
        database: &Database,
        static_groups: &BTreeMap<String, ChatId>,
    ) -> Result<Self, OpenError> {
        let path = fleet.policy.as_ref().ok_or(OpenError::NoPolicy)?;
        let policy = Arc::new(Policy::load(path)?);
        let ledger = crate::ledger::open(database).await?;
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        // Paced by the budget every process on this ledger shares, a running `serve` included.
        let dingtalk = Arc::new(DingTalk::with_budget(dingtalk, metrics, ledger.clone())?);
        Ok(Self::new(
            policy,
            dingtalk,
            ledger,
            static_groups.clone(),
            fleet.dm_reapply(),
        ))
    }

    pub fn new(
        policy: Arc<Policy>,
        dingtalk: Arc<DingTalk>,
        ledger: LedgerHandle,
        static_groups: BTreeMap<String, ChatId>,
        dm_reapply: Duration,
    ) -> Self {
        Self {
            policy,
            // Plan, apply and reconcile are background work: never the interactive reserve.
            dingtalk: Arc::new(dingtalk.for_class(crate::governance::quota::Class::Background)),
            ledger,
            static_groups,
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
        let mut bound = self.static_groups.clone();
        bound.extend(bindings.into_iter().map(|b| (b.conversation_id, b.chat_id)));
        Ok(self.policy.resolve(&bound, &departments))
    }
}
