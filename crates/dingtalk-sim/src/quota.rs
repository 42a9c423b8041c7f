//! The organisation's monthly API quota, as DingTalk's standard edition keeps it: a number of
//! calls per calendar month over every OpenAPI but the exempt ones, after which each counted
//! call answers errcode 90020 (new-style APIs: HTTP 403
//! `Forbidden.AccessDenied.ApiCountLimitForOrg`) until the month rolls over.
//!
//! Which APIs count is our reading of DingTalk's documentation ("token and contacts APIs are
//! exempt"): the token APIs and the department APIs are exempt; replies through a
//! sessionWebhook are not OpenAPI calls; Stream mode's `connections/open` is the transport
//! and is taken as exempt too. The month is China's (UTC+8, no daylight saving).

use serde::Serialize;

use crate::api;

/// Whether a call of `api` (one of the names in [`crate::api`]) counts against the quota.
pub fn counted(api: &str) -> bool {
    !matches!(
        api,
        api::GET_TOKEN
            | api::ACCESS_TOKEN
            | api::DEPARTMENT_LISTSUBID
            | api::DEPARTMENT_GET
            | api::SEND_BY_SESSION
            | api::STREAM_OPEN
    )
}

/// The calendar month (China time) of an instant in milliseconds since the Unix epoch, as
/// `YYYY-MM`.
pub fn month_of(ms: u64) -> String {
    const CHINA_OFFSET_MS: u64 = 8 * 3600 * 1000;
    let days = i64::try_from((ms + CHINA_OFFSET_MS) / 86_400_000).unwrap_or(i64::MAX);
    let (year, month) = civil_from_days(days);
    format!("{year:04}-{month:02}")
}

/// Year and month of a day counted from 1970-01-01 (Howard Hinnant's civil-from-days).
fn civil_from_days(z: i64) -> (i64, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(1))
}

/// The quota's state: this month's count of counted calls that were served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Quota {
    /// Calls a month; 0: no quota.
    pub limit: u64,
    /// The month `used` counts (`YYYY-MM`, China time).
    pub month: String,
    /// Counted calls served this month.
    pub used: u64,
}

impl Quota {
    /// Takes one call of this month at `now_ms`: `false` when the month's quota is spent.
    pub(crate) fn take(&mut self, now_ms: u64) -> bool {
        let month = month_of(now_ms);
        if month != self.month {
            self.month = month;
            self.used = 0;
        }
        if self.limit > 0 && self.used >= self.limit {
            return false;
        }
        self.used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_counted_in_china_time() {
        // 2026-11-30T16:00:00Z is 2026-12-01 00:00 in Beijing.
        assert_eq!(month_of(1_796_054_400_000 - 1), "2026-11");
        assert_eq!(month_of(1_796_054_400_000), "2026-12");
        assert_eq!(month_of(0), "1970-01");
        // 2028-02-29T12:00:00Z, a leap day.
        assert_eq!(month_of(1_835_438_400_000), "2028-02");
    }

    #[test]
    fn a_spent_quota_refuses_until_the_month_rolls_over() {
        let mut q = Quota {
            limit: 2,
            ..Quota::default()
        };
        let nov = 1_796_054_400_000 - 10_000;
        assert!(q.take(nov));
        assert!(q.take(nov));
        assert!(!q.take(nov + 1));
        assert_eq!(q.used, 2);
        assert!(q.take(1_796_054_400_000), "a new month starts from zero");
        assert_eq!((q.month.as_str(), q.used), ("2026-12", 1));
    }

    #[test]
    fn token_department_and_session_apis_are_exempt() {
        for api in [
            api::GET_TOKEN,
            api::ACCESS_TOKEN,
            api::DEPARTMENT_GET,
            api::DEPARTMENT_LISTSUBID,
            api::SEND_BY_SESSION,
            api::STREAM_OPEN,
        ] {
            assert!(!counted(api), "{api}");
        }
        for api in [
            api::FRIEND_SWITCH,
            api::CHAT_GET,
            api::GROUP_UPDATE,
            api::CONVERT,
            api::GROUP_MESSAGE,
        ] {
            assert!(counted(api), "{api}");
        }
    }
}
