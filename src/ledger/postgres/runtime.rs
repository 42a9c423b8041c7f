//! The PostgreSQL ledger's own runtime, on a thread of its own: its connections and the
//! writer live there, whatever runtime (or none) the caller runs on.

use super::*;

/// A single-threaded runtime on its own thread; it stops when this is dropped.
pub(super) struct RuntimeThread {
    pub(super) handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RuntimeThread {
    pub(super) fn start() -> Result<Self, LedgerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LedgerError::Join(format!("cannot start the ledger's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ledger-postgres".into())
            .spawn(move || {
                // Returns when the ledger is dropped (the sender with it); the runtime, its
                // connections and the writer end here, outside any other runtime.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| LedgerError::Join(e.to_string()))?;
        Ok(Self { handle, _stop: stop })
    }

    /// Runs `task` on the ledger's runtime and waits for its result, at most `timeout`.
    pub(super) fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        timeout: Duration,
        task: impl Future<Output = Result<T, LedgerError>> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let result = tokio::time::timeout(timeout, task)
                .await
                .unwrap_or(Err(LedgerError::Timeout(op)));
            let _ = tx.send(result);
        });
        rx.recv().map_err(|_| LedgerError::WriterGone)?
    }

    /// Starts `task` on the ledger's runtime, bounded by `timeout`; the caller awaits its
    /// result from any runtime, without a thread of its own waiting for it.
    pub(super) fn spawn<T: Send + 'static>(
        &self,
        op: &'static str,
        timeout: Duration,
        task: impl Future<Output = Result<T, LedgerError>> + Send + 'static,
    ) -> LedgerFuture<T> {
        let running = self.handle.spawn(async move {
            tokio::time::timeout(timeout, task)
                .await
                .unwrap_or(Err(LedgerError::Timeout(op)))
        });
        Box::pin(async move { running.await.map_err(|e| LedgerError::Join(e.to_string()))? })
    }

    /// Waits for a call [`RuntimeThread::spawn`] started (its own timeout bounds it).
    pub(super) fn block<T: Send + 'static>(
        &self,
        op: &'static str,
        call: LedgerFuture<T>,
    ) -> Result<T, LedgerError> {
        self.run(op, CALL_TIMEOUT * 2, call)
    }
}
