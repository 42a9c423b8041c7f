//! The monthly API quota on the client's side: before a counted call goes out it takes one
//! unit of its class's share of `monthly_call_budget` (in the ledger, shared by every
//! process on it, or in this process without one); DingTalk's own "quota spent" (90020) is
//! recorded for the month. The arithmetic is `governance::quota`; the reading of which APIs
//! count is in docs/dingtalk.md ("The monthly quota").

use std::collections::BTreeMap;
use std::sync::Mutex;

use jiff::tz::TimeZone;

use super::{Api, ApiError, DingTalk, QuotaCause, QuotaSpent};
use crate::governance::quota::{Budget, Class, Month};
use crate::ledger::{QuotaHandle, QuotaTake};

/// The quota's state in one client, shared by its class-tagged handles.
pub(super) struct Gate {
    budget: Budget,
    timezone: TimeZone,
    /// Where calls are counted for every process; `None`: in `local`.
    book: Option<QuotaHandle>,
    /// Counts of this process alone, by (month, class), for a client without a ledger.
    local: Mutex<BTreeMap<(String, Class), u64>>,
    /// The month DingTalk answered 90020 for, as far as this process knows.
    spent: Mutex<Option<String>>,
}

impl Gate {
    pub(super) fn new(budget: Budget, timezone: TimeZone, book: Option<QuotaHandle>) -> Self {
        Self {
            budget,
            timezone,
            book,
            local: Mutex::default(),
            spent: Mutex::default(),
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

    /// The zone whose calendar months the quota counts.
    pub fn quota_timezone(&self) -> &TimeZone {
        &self.shared.quota.timezone
    }

    /// The month the client's clock is in now.
    pub fn quota_month(&self) -> Month {
        Month::of(self.shared.clock.now_ms(), &self.shared.quota.timezone)
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
    /// write); background calls after a 90020 this month are refused here too.
    pub(super) async fn take_quota(&self, api: Api) -> Result<(), ApiError> {
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
            Some(book) => match book
                .take_quota(&month.key, api.name(), self.class.as_str(), ceiling)
                .await
            {
                Ok(take) => take,
                Err(e) => {
                    // A ledger that does not answer must not stop chat commands: the call
                    // goes, counted here only.
                    tracing::warn!(error = %e, api = api.name(), "cannot count the call in the ledger's monthly quota; counting it here");
                    gate.take_locally(&month.key, self.class, ceiling)
                }
            },
        };
        if take.taken {
            return Ok(());
        }
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
