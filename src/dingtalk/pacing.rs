//! Pacing: when each DingTalk call may be sent. Every API has a sliding-window limit in
//! this process ([`Limiter`]); with a shared rate budget the ledger decides the slots by
//! the same rule and every process on it keeps to them. A change to how fast, or in which
//! order, calls go belongs here; see docs/dingtalk.md.

use std::time::Duration;

use tokio::time::Instant;

use super::{Api, ApiError, DingTalk};
use crate::clock::Clock;
use crate::ledger::BudgetHandle;

/// The window of the pacing rule.
const WINDOW: Duration = Duration::from_millis(1050);

/// How long a reservation in the shared budget may take before the call is paced in this
/// process alone (the ledger waits as long for another process's write lock).
const RESERVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A sliding-window limit per API: at most `calls_per_sec − 1` calls in any 1.05 s. A call
/// under the limit goes at once (no added latency at low rates); beyond it, each call waits
/// for the slot the oldest call in the window frees. The one-call and 50 ms margins keep
/// network jitter from pushing DingTalk's own count (20 per second) over its limit.
///
/// With a shared budget ([`DingTalk::with_budget`]) the ledger decides the slots by the same
/// rule and this limiter only remembers them, so that pacing falls back to it with this
/// process's own recent calls counted when a reservation fails.
pub(super) struct Limiter {
    pub(super) max: usize,
    window: Duration,
    /// Send times of the last `max` calls, ascending, reserved slots in the future included.
    recent: std::sync::Mutex<std::collections::VecDeque<Instant>>,
}

impl Limiter {
    pub(super) fn new(calls_per_sec: u32) -> Option<Self> {
        (calls_per_sec > 0).then(|| Self {
            max: calls_per_sec.saturating_sub(1).max(1) as usize,
            window: WINDOW,
            recent: std::sync::Mutex::default(),
        })
    }

    /// Takes the next slot in this process and waits for it. Woken more than [`MAX_LATE`]
    /// after the slot (a loaded machine), it takes a new one rather than send late: a late
    /// call would reach DingTalk closer to the calls after it than the window allows.
    async fn acquire(&self, clock: &dyn Clock) {
        for _ in 0..LATE_RETRIES {
            let slot = self.take(clock.instant());
            tokio::time::sleep_until(slot).await;
            if clock.instant() <= slot + MAX_LATE {
                return;
            }
        }
    }

    /// Takes the next slot at `now`.
    fn take(&self, now: Instant) -> Instant {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // The shared budget's rule (`ledger::budget_slot`): the window, and a least gap
        // after the latest slot.
        let after_window = recent
            .len()
            .checked_sub(self.max)
            .map(|i| recent[i] + self.window);
        let gap = self.window / (2 * self.max.max(1) as u32);
        let after_gap = recent.back().map(|&t| t + gap);
        let slot = [Some(now), after_window, after_gap]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now);
        Self::remember(&mut recent, self.max, slot);
        slot
    }

    /// Notes a slot granted elsewhere (the shared budget).
    fn record(&self, slot: Instant) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        Self::remember(&mut recent, self.max, slot);
    }

    /// Inserts `slot` in order and keeps the latest `max`.
    fn remember(recent: &mut std::collections::VecDeque<Instant>, max: usize, slot: Instant) {
        let at = recent.partition_point(|t| *t <= slot);
        recent.insert(at, slot);
        while recent.len() > max {
            recent.pop_front();
        }
    }
}

/// How late after its slot a call may still be sent; later, it takes a new slot.
const MAX_LATE: Duration = Duration::from_millis(25);

/// How long an offset to the ledger's clock serves before it is measured again.
const CLOCK_MAX_AGE: Duration = Duration::from_secs(60);

/// Slots a call takes at most because it missed them (then it goes anyway).
const LATE_RETRIES: u32 = 4;

impl DingTalk {
    /// Waits for the next send slot of `api`: from the shared budget when there is one,
    /// else (or when the reservation fails) from this process's limiter. A shared slot
    /// beyond `deadline` fails the call with [`ApiError::Timeout`]: waiting for it would
    /// outlast the call.
    pub(super) async fn pace(&self, api: Api, deadline: Instant) -> Result<(), ApiError> {
        let Some(limiter) = self.shared.limiters.get(&api) else {
            return Ok(());
        };
        let Some(ledger) = &self.shared.budget else {
            limiter.acquire(self.shared.clock.as_ref()).await;
            return Ok(());
        };
        let asked = self.shared.clock.instant();
        for attempt in 1..=LATE_RETRIES {
            let Some(slot) = self.reserve(api, limiter, ledger, asked, deadline).await? else {
                return Ok(());
            };
            tokio::time::sleep_until(slot).await;
            // Sent more than MAX_LATE after its slot (the reservation's round trip or a late
            // wake-up on a loaded machine), a call would reach DingTalk closer to the calls
            // after it than the window allows: it takes a new slot instead.
            let late = self.shared.clock.instant().saturating_duration_since(slot);
            let late_ms = late.as_millis();
            if late <= MAX_LATE || attempt == LATE_RETRIES {
                break;
            }
            tracing::debug!(
                api = api.name(),
                late_ms,
                "a shared slot was missed; taking another"
            );
        }
        self.shared
            .metrics
            .budget_wait_seconds
            .with_label_values(&[api.name()])
            .observe(
                self.shared
                    .clock
                    .instant()
                    .saturating_duration_since(asked)
                    .as_secs_f64(),
            );
        Ok(())
    }

    /// Reserves a send slot of `api` in the shared budget: the slot as a tokio instant, the
    /// ledger's wait counted from when its answer arrived (the ledger's clock decides, this
    /// machine's wall clock plays no part). `None` when the budget could not be asked and
    /// the call was paced here instead (counted in `dingops_rate_budget_fallbacks_total`).
    async fn reserve(
        &self,
        api: Api,
        limiter: &Limiter,
        ledger: &BudgetHandle,
        asked: Instant,
        deadline: Instant,
    ) -> Result<Option<Instant>, ApiError> {
        let (max, window_ms) = (limiter.max as u32, WINDOW.as_millis() as u64);
        let reservation = ledger.reserve_call(api.name(), max, window_ms);
        let give_up = deadline.min(self.shared.clock.instant() + RESERVE_TIMEOUT);
        let slot = match tokio::time::timeout_at(give_up, reservation).await {
            Ok(Ok(slot)) => {
                // The slot is a time of the ledger's clock, read through the measured offset
                // (exact to within a short round trip; the ledger's wait, counted from when
                // its answer arrived, would send every call late by the reservation's commit).
                let ledger_now = self.shared.ledger_time.fresh_now_ms(ledger, CLOCK_MAX_AGE).await;
                let now = self.shared.clock.instant();
                now.checked_add(Duration::from_millis(slot.at_ms.saturating_sub(ledger_now)))
                    .unwrap_or(now)
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer in time".to_owned(),
                };
                tracing::warn!(api = api.name(), %error, "shared rate budget unavailable; pacing this call locally");
                self.shared
                    .metrics
                    .budget_fallbacks
                    .with_label_values(&[api.name()])
                    .inc();
                limiter.acquire(self.shared.clock.as_ref()).await;
                return Ok(None);
            }
        };
        limiter.record(slot);
        if slot > deadline {
            tracing::warn!(
                api = api.name(),
                wait_ms = slot.saturating_duration_since(asked).as_millis(),
                "the shared rate budget's next slot is beyond this call's deadline"
            );
            return Err(ApiError::Timeout);
        }
        Ok(Some(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_limiter_counts_slots_the_shared_budget_granted_in_any_order() {
        // 3 calls/s: at most 2 in any 1.05 s.
        let limiter = Limiter::new(3).unwrap();
        let now = Instant::now();
        let ms = Duration::from_millis;
        // Granted by the ledger, and learnt out of order.
        limiter.record(now + ms(500));
        limiter.record(now - ms(1000));
        // The window of the oldest of the last two frees a slot at -1000 + 1050, but the
        // latest slot is the ledger's at 500: the next comes a least gap (1050 / 4) after it.
        let gap = Duration::from_micros(262_500);
        assert_eq!(limiter.take(now), now + ms(500) + gap);
        // Now 500 and 762.5 are the last two: the next waits for 500 + 1050.
        assert_eq!(limiter.take(now), now + ms(1550));
    }

    #[test]
    fn pacing_off_means_no_limiter_at_all() {
        assert!(Limiter::new(0).is_none());
        assert_eq!(Limiter::new(1).unwrap().max, 1);
        assert_eq!(Limiter::new(20).unwrap().max, 19);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_over_the_limit_waits_on_the_clock_for_the_slot_the_window_frees() {
        // 3 calls/s: at most 2 in any 1.05 s, a least gap of 262.5 ms between slots. Time is
        // paused: each wait ends when tokio's clock reaches its slot, not on the wall clock.
        let clock = crate::clock::ManualClock::at(0);
        let limiter = Limiter::new(3).unwrap();
        let t0 = Instant::now();
        let waited = |from: Instant| Instant::now().saturating_duration_since(from);
        limiter.acquire(&*clock).await;
        assert_eq!(waited(t0), Duration::ZERO, "under the limit: at once");
        limiter.acquire(&*clock).await;
        let gap = Duration::from_micros(262_500);
        assert!(
            waited(t0) >= gap && waited(t0) <= gap + MAX_LATE,
            "{:?}",
            waited(t0)
        );
        limiter.acquire(&*clock).await;
        assert!(
            waited(t0) >= WINDOW && waited(t0) <= WINDOW + MAX_LATE,
            "the third waits for the first's window: {:?}",
            waited(t0)
        );
    }
}
