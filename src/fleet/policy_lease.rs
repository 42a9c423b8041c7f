//! One policy run at a time across every process and replica on the ledger: `dingops apply`
//! and `serve`'s reconcile runs take the `policy` lease for as long as they run, renewing it
//! in the background, and give it back when they end. A holder that dies leaves the lease
//! to run out after [`POLICY_LEASE_TTL`].

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::lease::{Holding, Renewal};
use crate::ledger::{LedgerError, LedgerHandle};

/// The lease every policy run holds.
pub const POLICY_LEASE: &str = "policy";

/// How long the lease outlives its holder's last renewal; renewed every third of it. Short,
/// because an `apply` that was killed holds it that long for the rerun.
pub const POLICY_LEASE_TTL: Duration = Duration::from_secs(15);

/// A held `policy` lease; renewed until [`PolicyLease::release`] (or the drop of the value,
/// which stops the renewal and lets the lease run out).
pub struct PolicyLease {
    ledger: LedgerHandle,
    holder: String,
    _renewal: Holding,
}

impl PolicyLease {
    /// Takes the lease for `holder`; `None` when another holder has it.
    pub async fn take(
        ledger: &LedgerHandle,
        clock: &Arc<dyn Clock>,
        holder: &str,
    ) -> Result<Option<Self>, LedgerError> {
        let ttl = POLICY_LEASE_TTL.as_millis() as u64;
        let who = holder.to_owned();
        let taken = ledger.call(move |l| l.try_lease(POLICY_LEASE, &who, ttl)).await?;
        if !taken {
            return Ok(None);
        }
        let renewal = crate::lease::hold(
            ledger.clone(),
            vec![POLICY_LEASE.to_owned()],
            holder.to_owned(),
            POLICY_LEASE_TTL,
            clock.clone(),
            |renewal| match renewal {
                Renewal::Lost => {
                    tracing::error!(
                        "the policy lease was lost; another policy run may start beside this one"
                    );
                    ControlFlow::Break(())
                }
                Renewal::Failed(e) => {
                    tracing::warn!(error = %e, "cannot renew the policy lease; trying again");
                    ControlFlow::Continue(())
                }
                Renewal::Kept { .. } => ControlFlow::Continue(()),
            },
        );
        Ok(Some(Self {
            ledger: ledger.clone(),
            holder: holder.to_owned(),
            _renewal: renewal,
        }))
    }

    /// Takes the lease for `holder`, waiting (polling every half second) while another
    /// holder has it, for at most `max_wait`; `waiting` is called once if it has to wait.
    /// `None` when it is still held by another at the end.
    pub async fn take_waiting(
        ledger: &LedgerHandle,
        clock: &Arc<dyn Clock>,
        holder: &str,
        max_wait: Duration,
        waiting: impl FnOnce(),
    ) -> Result<Option<Self>, LedgerError> {
        let until = tokio::time::Instant::now() + max_wait;
        let mut waiting = Some(waiting);
        loop {
            if let Some(lease) = Self::take(ledger, clock, holder).await? {
                return Ok(Some(lease));
            }
            if tokio::time::Instant::now() >= until {
                return Ok(None);
            }
            if let Some(say) = waiting.take() {
                say();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Gives the lease back, so that the next run need not wait for it to run out.
    pub async fn release(self) {
        let Self {
            ledger,
            holder,
            _renewal: renewal,
        } = self;
        drop(renewal);
        if let Err(e) = ledger.call(move |l| l.release_lease(POLICY_LEASE, &holder)).await {
            tracing::warn!(error = %e, "cannot give back the policy lease; it runs out by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::MemoryLedger;

    fn clock() -> Arc<dyn Clock> {
        crate::clock::ManualClock::at(0)
    }

    #[tokio::test]
    async fn one_policy_run_at_a_time_and_the_next_may_start_once_it_is_given_back() {
        let ledger = LedgerHandle::new(MemoryLedger::new());
        let first = PolicyLease::take(&ledger, &clock(), "apply-a")
            .await
            .unwrap()
            .unwrap();
        assert!(
            PolicyLease::take(&ledger, &clock(), "replica-b")
                .await
                .unwrap()
                .is_none()
        );
        first.release().await;
        let second = PolicyLease::take(&ledger, &clock(), "replica-b").await.unwrap();
        assert!(second.is_some());
    }

    #[tokio::test]
    async fn a_run_waiting_for_the_lease_starts_when_the_holder_gives_it_back() {
        let ledger = LedgerHandle::new(MemoryLedger::new());
        let first = PolicyLease::take(&ledger, &clock(), "apply-a")
            .await
            .unwrap()
            .unwrap();
        let (l, said) = (
            ledger.clone(),
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        );
        let said2 = said.clone();
        let waiter = tokio::spawn(async move {
            PolicyLease::take_waiting(&l, &clock(), "apply-b", Duration::from_secs(10), move || {
                said2.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!waiter.is_finished(), "the second run started beside the first");
        first.release().await;
        assert!(waiter.await.unwrap().unwrap().is_some());
        assert!(said.load(std::sync::atomic::Ordering::SeqCst));
        // Nobody gives it back: the wait ends without it.
        let l = ledger.clone();
        let none = PolicyLease::take_waiting(&l, &clock(), "apply-c", Duration::from_millis(600), || {})
            .await
            .unwrap();
        assert!(none.is_none());
    }
}
