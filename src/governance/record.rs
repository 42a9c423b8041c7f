//! The one retry rule for records: a ledger write that follows a change DingTalk made (the
//! setting's new value, an exception, a command's outcome, an audit row) is tried until it
//! lands. Each retry is counted; while one is pending `/readyz` says not ready.

use std::sync::Arc;
use std::time::Duration;

use crate::ledger::{Ledger, LedgerError, LedgerFuture, LedgerHandle};
use crate::telemetry::Metrics;

/// First wait before a failed write is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Keeps `dingops_ledger_writes_retrying` raised while a write waits to land, however that
/// wait ends (it lands, or shutdown drops the task).
struct Retrying<'a>(&'a Metrics);

impl<'a> Retrying<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.ledger_writes_retrying.inc();
        Self(metrics)
    }
}

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        self.0.ledger_writes_retrying.dec();
    }
}

/// Writes to the ledger until they land.
#[derive(Clone)]
pub struct Recorder {
    ledger: LedgerHandle,
    metrics: Arc<Metrics>,
}

impl Recorder {
    pub fn new(ledger: LedgerHandle, metrics: Arc<Metrics>) -> Self {
        Self { ledger, metrics }
    }

    /// Runs `write` until it succeeds.
    pub async fn until_landed<F>(&self, what: &'static str, write: F)
    where
        F: Fn(&dyn Ledger) -> Result<(), LedgerError> + Send + Sync + 'static,
    {
        self.until_landed_with(what, write).await
    }

    /// [`Recorder::until_landed`] for a write that answers something.
    pub async fn until_landed_with<T, F>(&self, what: &'static str, write: F) -> T
    where
        T: Send + 'static,
        F: Fn(&dyn Ledger) -> Result<T, LedgerError> + Send + Sync + 'static,
    {
        let write = Arc::new(write);
        self.until_landed_async(what, move |ledger| {
            let attempt = Arc::clone(&write);
            ledger.call(move |l| attempt(l))
        })
        .await
    }

    /// [`Recorder::until_landed`] of a write the ledger handle awaits itself (the hot path's
    /// answers and finishes, which PostgreSQL runs on its own runtime).
    pub async fn until_landed_async<T, F>(&self, what: &'static str, write: F) -> T
    where
        F: Fn(&LedgerHandle) -> LedgerFuture<T>,
    {
        let mut wait = RETRY_FIRST;
        let mut retrying: Option<Retrying<'_>> = None;
        let mut retries: u64 = 0;
        loop {
            match write(&self.ledger).await {
                Ok(answer) => {
                    if retrying.is_some() {
                        tracing::info!(retries, what, "ledger write landed after retries");
                    }
                    return answer;
                }
                Err(e) => {
                    if retrying.is_none() {
                        retrying = Some(Retrying::start(&self.metrics));
                        tracing::error!(error = %e, what, "ledger write failed; retrying until it lands");
                    } else {
                        tracing::warn!(error = %e, what, retries, "ledger write failed again");
                    }
                }
            }
            retries = retries.saturating_add(1);
            self.metrics.ledger_write_retries.inc();
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2).min(RETRY_MAX);
        }
    }
}
