//! The monthly API quota on the client's side: before a counted call goes out it takes one
//! unit of its class's share of `monthly_call_budget` (in the ledger, shared by every
//! process on it, or in this process without one); DingTalk's own "quota spent" (90020) is
//! recorded for the month. When the ledger cannot count a call, an interactive call goes
//! and is written to the ledger once it answers again (once: see `Gate::write_back`); a
//! background call waits for the ledger until its deadline, and is then not made. The arithmetic is `quota`; the reading of which APIs
//! count is in docs/dingtalk.md ("The monthly quota").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::tz::TimeZone;

use super::{Api, ApiError, DingTalk, QuotaCause, QuotaSpent};
use crate::ledger::{LedgerError, QuotaCount, QuotaHandle, QuotaTake};
use crate::quota::{Budget, Class, Month};

/// First pause of a background call waiting for the ledger to count it; it doubles up to
/// the max, until the call's deadline.
const UNCOUNTED_RETRY_FIRST: Duration = Duration::from_millis(50);
const UNCOUNTED_RETRY_MAX: Duration = Duration::from_secs(1);

/// The quota's state in one client, shared by its class-tagged handles.
pub(super) struct Gate {
    budget: Budget,
    /// `timezone`: where people read the time the quota renews. The month itself is
    /// DingTalk's ([`Month::dingtalk`]), whatever this says.
    timezone: TimeZone,
    /// Where calls are counted for every process; `None`: in `local`.
    book: Option<QuotaHandle>,
    /// Counts of this process alone, by (month, class), for a client without a ledger.
    local: Mutex<BTreeMap<(String, Class), u64>>,
    /// With a ledger: calls made that it could not count (interactive calls go anyway), by
    /// (month, api, class), until [`Gate::write_back`] has written each to it.
    unrecorded: Mutex<BTreeMap<(String, &'static str, Class), u64>>,
    /// Held by the one write-back under way: two at once could write one call twice.
    writing_back: tokio::sync::Mutex<()>,
    /// The month DingTalk answered 90020 for, as far as this process knows.
    spent: Mutex<Option<String>>,
    /// Calls this process did not make because their class's share was used up.
    refused: AtomicU64,
}

/// This month's use of the quota as the ledger (or, without one, this process) has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    pub month: Month,
    /// When it was read (ms since the epoch).
    pub now_ms: u64,
    pub budget: Budget,
    /// Calls by API and class.
    pub counts: Vec<QuotaCount>,
    /// Whether DingTalk answered 90020 this month (any process).
    pub spent: bool,
}

impl QuotaUsage {
    /// The month's calls, every class.
    pub fn used(&self) -> u64 {
        self.counts.iter().map(|c| c.calls).sum()
    }

    /// The month's calls made for `class`.
    pub fn used_by(&self, class: Class) -> u64 {
        self.counts
            .iter()
            .filter(|c| c.class == class)
            .map(|c| c.calls)
            .sum()
    }

    /// What `class` may still spend this month; `None` without a budget.
    pub fn left(&self, class: Class) -> Option<u64> {
        self.budget.left(class, self.used())
    }

    /// The month's use at its end, at the pace so far.
    pub fn projected(&self) -> u64 {
        self.month.projected(self.used(), self.now_ms)
    }

    /// One line: use, budget and reserve (for `dingops check` and the logs).
    pub fn line(&self) -> String {
        let used = self.used();
        let spent = if self.spent {
            "; DingTalk answered 90020 (the organisation's quota is spent)"
        } else {
            ""
        };
        match self.budget.monthly {
            None => format!(
                "monthly API quota {}: {used} calls counted; monthly_call_budget off{spent}",
                self.month.key
            ),
            Some(monthly) => format!(
                "monthly API quota {}: {used} of {monthly} calls used ({} interactive, {} background), \
                 {} kept for interactive calls, {} left for background work{spent}",
                self.month.key,
                self.used_by(Class::Interactive),
                self.used_by(Class::Background),
                self.budget.reserve_calls(),
                self.left(Class::Background).unwrap_or(0),
            ),
        }
    }
}

impl Gate {
    pub(super) fn new(budget: Budget, timezone: TimeZone, book: Option<QuotaHandle>) -> Self {
        Self {
            budget,
            timezone,
            book,
            local: Mutex::default(),
            unrecorded: Mutex::default(),
            writing_back: tokio::sync::Mutex::const_new(()),
            spent: Mutex::default(),
            refused: AtomicU64::new(0),
        }
    }

    /// Calls of `month` made that the ledger does not know yet.
    fn unrecorded_in(&self, month: &str) -> u64 {
        let unrecorded = self.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
        unrecorded
            .iter()
            .filter(|((m, _, _), _)| m == month)
            .map(|(_, n)| n)
            .sum()
    }

    fn note_unrecorded(&self, month: &str, api: &'static str, class: Class) {
        let mut unrecorded = self.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
        *unrecorded.entry((month.to_owned(), api, class)).or_default() += 1;
    }

    /// Writes the calls the ledger could not count when they were made to it, one at a time
    /// (each one atomic count, taken off the list once the ledger has it), until the list is
    /// empty or the ledger fails again (then the rest wait for the next write-back). One
    /// write-back at a time; run it in a task of its own (`DingTalk::write_back_quota`) so
    /// that no caller's cancellation falls between a count landing and its removal.
    async fn write_back(&self) {
        let Some(book) = &self.book else { return };
        let _one = self.writing_back.lock().await;
        loop {
            let next = {
                let unrecorded = self.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
                unrecorded.keys().next().cloned()
            };
            let Some((month, api, class)) = next else {
                return;
            };
            if let Err(e) = book.take_quota(&month, api, class, None).await {
                tracing::warn!(error = %e, "cannot yet write the calls made while the ledger could not count them; trying again later");
                return;
            }
            let mut unrecorded = self.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
            let key = (month, api, class);
            match unrecorded.get_mut(&key) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    unrecorded.remove(&key);
                }
            }
        }
    }

    /// Takes one call of `class` in this process's own count.
    fn take_locally(&self, month: &str, class: Class, ceiling: Option<u64>) -> QuotaTake {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let used: u64 = local
            .iter()
            .filter(|((m, _), _)| m == month)
            .map(|(_, n)| n)
            .sum();
        if ceiling.is_some_and(|c| used >= c) {
            return QuotaTake { taken: false, used };
        }
        *local.entry((month.to_owned(), class)).or_default() += 1;
        QuotaTake {
            taken: true,
            used: used + 1,
        }
    }
}

/// When `month`'s quota renews, as people in `tz` read it.
pub fn renews_text(month: &Month, tz: &TimeZone) -> String {
    let at = jiff::Timestamp::from_millisecond(i64::try_from(month.ends_ms).unwrap_or(i64::MAX))
        .unwrap_or(jiff::Timestamp::MAX)
        .to_zoned_datetime(tz.clone());
    let zone = tz.iana_name().unwrap_or("local time");
    format!("on {} {zone}", at.strftime("%Y-%m-%d %H:%M"))
}

impl DingTalk {
    /// The configured monthly budget.
    pub fn quota_budget(&self) -> Budget {
        self.shared.quota.budget
    }

    /// The zone the quota's renewal is shown in (`timezone`); not the zone its month turns
    /// in, which is DingTalk's (China time).
    pub fn quota_timezone(&self) -> &TimeZone {
        &self.shared.quota.timezone
    }

    /// DingTalk's month the client's clock is in now (China time, whatever `timezone` says).
    pub fn quota_month(&self) -> Month {
        Month::dingtalk(self.shared.clock.now_ms())
    }

    /// Calls this process did not make because their class's share of the month was used
    /// up (a run compares it before and after to know whether it was cut short).
    pub fn quota_refusals(&self) -> u64 {
        self.shared.quota.refused.load(Ordering::Relaxed)
    }

    /// This month's use as the ledger has it (every process on it), or this process's own
    /// count without a ledger.
    pub async fn quota_usage(&self) -> Result<QuotaUsage, LedgerError> {
        let gate = &self.shared.quota;
        let month = self.quota_month();
        let here = self.quota_spent_here();
        let (counts, spent) = match &gate.book {
            Some(book) => {
                let key = month.key.clone();
                book.call(move |l| Ok((l.quota_counts(&key)?, l.quota_spent(&key)?)))
                    .await?
            }
            None => {
                let local = gate.local.lock().unwrap_or_else(|p| p.into_inner());
                let counts = local
                    .iter()
                    .filter(|((m, _), _)| *m == month.key)
                    .map(|((_, class), calls)| QuotaCount {
                        api: "all".into(),
                        class: *class,
                        calls: *calls,
                    })
                    .collect();
                (counts, false)
            }
        };
        Ok(QuotaUsage {
            now_ms: self.shared.clock.now_ms(),
            month,
            budget: gate.budget,
            counts,
            spent: spent || here,
        })
    }

    /// Writes to the ledger the calls made while it could not count them, and waits for
    /// that; the rest stay listed when the ledger fails again. `serve` calls it every few
    /// seconds (with the quota's metrics), and a call the ledger counts starts it.
    pub async fn write_back_quota(&self) {
        if self
            .shared
            .quota
            .unrecorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return;
        }
        let shared = Arc::clone(&self.shared);
        // A task of its own: cancelling the caller does not cut a write-back midway.
        if let Err(e) = tokio::spawn(async move { shared.quota.write_back().await }).await {
            tracing::error!(error = %e, "the write-back of the monthly quota's counts ended early");
        }
    }

    /// Sets the quota's metrics from [`DingTalk::quota_usage`]: what `/metrics` shows,
    /// refreshed by `serve` every few seconds so that it includes what other processes (a
    /// CLI `apply`) spent. First writes back what the ledger could not count.
    pub async fn refresh_quota_metrics(&self) {
        self.write_back_quota().await;
        let usage = match self.quota_usage().await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the monthly quota from the ledger");
                return;
            }
        };
        let metrics = &self.shared.metrics.quota;
        metrics.calls.reset();
        for c in &usage.counts {
            metrics
                .calls
                .with_label_values(&[c.api.as_str(), c.class.as_str()])
                .set(i64::try_from(c.calls).unwrap_or(i64::MAX));
        }
        metrics.exhausted.set(i64::from(usage.spent));
        metrics
            .projected
            .set(i64::try_from(usage.projected()).unwrap_or(i64::MAX));
    }

    /// Whether this process saw DingTalk answer 90020 this month.
    pub fn quota_spent_here(&self) -> bool {
        let month = self.quota_month();
        self.shared
            .quota
            .spent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            == Some(month.key.as_str())
    }

    /// Takes one unit of this handle's class for a call of `api` about to go out; the
    /// typed [`ApiError::Quota`] when the class's share of the month is used up (then
    /// nothing is sent). Uncounted APIs and a budget that is `off` take nothing (no ledger
    /// write); background calls after a 90020 this month are refused here too. A background
    /// call the ledger cannot count waits for it until `deadline`, then is refused
    /// ([`ApiError::Uncounted`]).
    pub(super) async fn take_quota(&self, api: Api, deadline: tokio::time::Instant) -> Result<(), ApiError> {
        let gate = &self.shared.quota;
        if !api.counted() {
            return Ok(());
        }
        if self.class == Class::Background && self.quota_spent_here() {
            let month = self.quota_month();
            return Err(ApiError::Quota(QuotaSpent {
                cause: QuotaCause::DingTalk {
                    code: "90020".into(),
                    errcode: Some(90020),
                },
                renews: renews_text(&month, &gate.timezone),
            }));
        }
        let Some(monthly) = gate.budget.monthly else {
            return Ok(());
        };
        let month = self.quota_month();
        let ceiling = gate.budget.ceiling(self.class);
        let take = match &gate.book {
            None => gate.take_locally(&month.key, self.class, ceiling),
            Some(book) => {
                self.take_in_ledger(book, &month.key, api, ceiling, deadline)
                    .await?
            }
        };
        if take.taken {
            return Ok(());
        }
        gate.refused.fetch_add(1, Ordering::Relaxed);
        self.shared
            .metrics
            .quota
            .refused
            .with_label_values(&[self.class.as_str()])
            .inc();
        tracing::warn!(
            api = api.name(),
            class = self.class.as_str(),
            used = take.used,
            budget = monthly,
            "the month's budget for this class of calls is spent; not calling DingTalk"
        );
        Err(ApiError::Quota(QuotaSpent {
            cause: QuotaCause::Budget {
                class: self.class.as_str(),
                used: take.used,
                ceiling: ceiling.unwrap_or(monthly),
                monthly,
                reserve: gate.budget.reserve_calls(),
            },
            renews: renews_text(&month, &gate.timezone),
        }))
    }

    /// [`DingTalk::take_quota`] in the ledger. The calls made that it does not know yet
    /// count against the ceiling too, and a count that lands starts their write-back.
    async fn take_in_ledger(
        &self,
        book: &QuotaHandle,
        month: &str,
        api: Api,
        ceiling: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> Result<QuotaTake, ApiError> {
        let gate = &self.shared.quota;
        let mut pause = UNCOUNTED_RETRY_FIRST;
        loop {
            let unrecorded = gate.unrecorded_in(month);
            let asked = ceiling.map(|c| c.saturating_sub(unrecorded));
            let error = match book.take_quota(month, api.name(), self.class, asked).await {
                Ok(take) => {
                    if unrecorded > 0 {
                        // Not awaited: the call does not wait for the write-back.
                        let shared = Arc::clone(&self.shared);
                        tokio::spawn(async move { shared.quota.write_back().await });
                    }
                    return Ok(QuotaTake {
                        taken: take.taken,
                        used: take.used + unrecorded,
                    });
                }
                Err(e) => e,
            };
            if self.class == Class::Interactive {
                // A ledger that does not answer must not stop chat commands: the call goes,
                // and is written to the ledger once it answers.
                tracing::warn!(error = %error, api = api.name(), "cannot count the call in the ledger's monthly quota; it goes, and is counted once the ledger answers");
                gate.note_unrecorded(month, api.name(), self.class);
                return Ok(QuotaTake {
                    taken: true,
                    used: unrecorded + 1,
                });
            }
            let now = self.shared.clock.instant();
            if now.checked_add(pause).is_none_or(|at| at > deadline) {
                tracing::warn!(error = %error, api = api.name(), "cannot count a background call in the ledger's monthly quota; not calling DingTalk");
                return Err(ApiError::Uncounted);
            }
            tracing::debug!(error = %error, api = api.name(), "waiting for the ledger to count a background call");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(UNCOUNTED_RETRY_MAX);
        }
    }

    /// DingTalk answered `err`, that the organisation's quota is spent: the month is marked
    /// spent (here, in the metric and in the ledger for every process) and the error becomes
    /// [`ApiError::Quota`], which says when the quota renews. Never retried.
    pub(super) async fn quota_spent(&self, api: Api, err: ApiError) -> ApiError {
        if matches!(err, ApiError::Quota(_)) {
            return err;
        }
        let gate = &self.shared.quota;
        let month = self.quota_month();
        tracing::error!(
            api = api.name(),
            error = %err.short(),
            month = %month.key,
            "DingTalk says the organisation's monthly API quota is spent; background work pauses until the month rolls over"
        );
        *gate.spent.lock().unwrap_or_else(|p| p.into_inner()) = Some(month.key.clone());
        self.shared.metrics.quota.exhausted.set(1);
        if let Some(book) = &gate.book {
            let (key, at) = (month.key.clone(), self.shared.clock.now_ms());
            if let Err(e) = book.call(move |l| l.mark_quota_spent(&key, at)).await {
                tracing::warn!(error = %e, "cannot record in the ledger that the month's quota is spent");
            }
        }
        ApiError::Quota(QuotaSpent {
            cause: QuotaCause::DingTalk {
                code: err.short(),
                errcode: err.errcode(),
            },
            renews: renews_text(&month, &gate.timezone),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{LedgerHandle, MemoryLedger};
    use crate::quota::Reserve;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_write_backs_at_once_write_each_remembered_call_once() {
        let ledger = LedgerHandle::new(MemoryLedger::new());
        let budget = Budget {
            monthly: Some(100),
            reserve: Reserve::Calls(0),
        };
        let gate = Arc::new(Gate::new(budget, TimeZone::UTC, Some(ledger.quota())));
        for _ in 0..5 {
            gate.note_unrecorded("2026-12", "friendswitch_update", Class::Interactive);
        }
        gate.note_unrecorded("2026-11", "im_group_update", Class::Interactive);
        assert_eq!(gate.unrecorded_in("2026-12"), 5);
        let (a, b) = (Arc::clone(&gate), Arc::clone(&gate));
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { a.write_back().await }),
            tokio::spawn(async move { b.write_back().await })
        );
        ra.unwrap();
        rb.unwrap();
        let counts = |month: &'static str| {
            let ledger = ledger.clone();
            async move {
                ledger
                    .call(move |l| l.quota_counts(month))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|c| (c.api, c.class.as_str().to_owned(), c.calls))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            counts("2026-12").await,
            [("friendswitch_update".to_owned(), "interactive".to_owned(), 5)]
        );
        assert_eq!(
            counts("2026-11").await,
            [("im_group_update".to_owned(), "interactive".to_owned(), 1)],
            "each call is written to the month it was made in"
        );
        assert_eq!(gate.unrecorded_in("2026-12") + gate.unrecorded_in("2026-11"), 0);
        // Nothing left: another write-back writes nothing.
        gate.write_back().await;
        assert_eq!(counts("2026-12").await[0].2, 5);
    }
}
