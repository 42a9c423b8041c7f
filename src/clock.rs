//! The time, read in one place. DingTalk speaks in milliseconds since the Unix epoch.
//!
//! Code reads the time through a [`Clock`] it was given: wall time ([`Clock::now_ms`]) for
//! what is recorded or compared with DingTalk and the ledger, and a monotonic instant
//! ([`Clock::instant`], tokio's) for deadlines, pacing and leases as this process counts
//! them. Tests hand a [`ManualClock`] and run tokio with paused time
//! (`tokio::time::pause`/`advance`), so nothing waits on the wall clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where a ledger store reads the time it decides leases and rate-budget slots by, and
/// where the worker, its pool, leases and timer and the DingTalk client's pacing read theirs.
/// The service uses [`SystemClock`] (or, on PostgreSQL, the server's own clock); tests hand a
/// [`ManualClock`] and move it themselves instead of sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// A monotonic instant on tokio's clock, which `tokio::time::pause` and `advance` move
    /// in tests (and tokio's timers go by).
    fn instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
    /// Whether this is the machine's own wall clock ([`now_ms`]).
    fn is_system(&self) -> bool {
        false
    }
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn is_system(&self) -> bool {
        true
    }
}

/// The machine's wall clock, for a test that runs on it. Product code never builds its
/// own: the wiring (`main.rs`, `server.rs`) hands the clock down.
#[cfg(test)]
pub(crate) fn wall_clock() -> std::sync::Arc<dyn Clock> {
    std::sync::Arc::new(SystemClock)
}

/// A clock that stands still until it is set or advanced (tests).
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock showing `ms`.
    pub fn at(ms: u64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self(std::sync::atomic::AtomicU64::new(ms)))
    }

    /// Shows `ms` from now on.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the clock on by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An RFC 3339 UTC rendering of a millisecond timestamp, to the second, for chat replies
/// and the audit log.
pub fn format_ms(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

#[cfg(test)]
mod tests {
    #[test]
    fn format_ms_renders_utc_to_the_second() {
        assert_eq!(super::format_ms(1_577_262_236_757), "2019-12-25 08:23:56 UTC");
    }
}
