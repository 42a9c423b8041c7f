//! `retention_days`: finished commands past it are deleted from the ledger in the
//! background, in short steps, so that pruning a large backlog leaves the writer to callbacks.

use std::sync::Arc;
use std::time::Duration;

use super::LedgerHandle;

/// How often finished commands past `retention_days` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Commands looked at per pruning step (one short write).
const PRUNE_BATCH: usize = 500;
/// Pause between steps, so that pruning a large backlog leaves the writer to callbacks.
const PRUNE_PAUSE: Duration = Duration::from_millis(10);

/// Deletes finished commands older than `retention` from the ledger: at start, then hourly.
/// Runs until its task is aborted. "Older" is by `clock` (the wiring's).
pub async fn prune_loop(ledger: LedgerHandle, retention: Duration, clock: Arc<dyn crate::clock::Clock>) {
    loop {
        let cutoff = clock
            .now_ms()
            .saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        let (mut after, mut deleted) = (0, 0);
        loop {
            match ledger
                .call(move |l| l.prune_finished(cutoff, after, PRUNE_BATCH))
                .await
            {
                Ok(step) => {
                    deleted += step.deleted;
                    match step.next {
                        Some(next) => after = next,
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ledger pruning failed; retrying later");
                    break;
                }
            }
            tokio::time::sleep(PRUNE_PAUSE).await;
        }
        if deleted > 0 {
            tracing::info!(deleted, "pruned finished commands past retention_days");
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}
