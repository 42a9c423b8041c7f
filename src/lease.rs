//! Holding leases in the ledger: the one renewal rule for every lease a process holds while
//! it works (a policy run's `policy` lease, a change's setting leases, a replica's group
//! leases). A lease is renewed every third of its lifetime, so that two renewals can fail
//! before it runs out, and a holder that dies leaves it to run out soon. See
//! docs/reliability.md.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::ledger::{LedgerError, LedgerHandle};

/// How often a lease of lifetime `ttl` is renewed.
pub fn renewal_period(ttl: Duration) -> Duration {
    ttl / 3
}

/// How one renewal went.
#[derive(Debug)]
pub enum Renewal {
    /// Every lease is held again for its lifetime from `at` (read before the write).
    Kept { at: tokio::time::Instant },
    /// At least one ran out before it could be renewed: another holder may have it.
    Lost,
    /// The ledger could not be written; the next renewal tries again.
    Failed(LedgerError),
}

/// Leases being held: their renewal stops when this is dropped (they then run out after
/// their lifetime unless given back).
pub struct Holding(tokio::task::JoinHandle<()>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Holds the leases `names` (already taken by `holder`): renews them all every
/// [`renewal_period`] of `ttl` and tells `report` how each renewal went, until `report`
/// breaks or the [`Holding`] is dropped.
pub fn hold(
    ledger: LedgerHandle,
    names: Vec<String>,
    holder: String,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    mut report: impl FnMut(Renewal) -> ControlFlow<()> + Send + 'static,
) -> Holding {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    Holding(tokio::spawn(async move {
        loop {
            tokio::time::sleep(renewal_period(ttl)).await;
            let (asked, who) = (names.clone(), holder.clone());
            let at = clock.instant();
            let renewal = match ledger.call(move |l| l.renew_leases(&asked, &who, ttl_ms)).await {
                Ok(kept) if kept.len() == names.len() => Renewal::Kept { at },
                Ok(_) => Renewal::Lost,
                Err(e) => Renewal::Failed(e),
            };
            if report(renewal).is_break() {
                return;
            }
        }
    }))
}
