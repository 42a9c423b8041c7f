//! The organisation's monthly API quota as a budget: DingTalk's calendar month (China
//! time, whatever `timezone` dingops shows times in), the two classes of calls and how much
//! of the month each may spend (docs/operating.md, "The monthly quota"; DingTalk's side in
//! docs/dingtalk.md).
//!
//! Pure arithmetic; the counts themselves live in the ledger, shared by every process.

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _};

/// Who a call is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Chat commands, their API replies, timed reverts, card updates: kept going by the
    /// reserve.
    Interactive,
    /// Reconcile, `plan`, `apply`, `discover`: never spends the reserve.
    Background,
}

impl Class {
    pub const ALL: [Class; 2] = [Class::Interactive, Class::Background];

    /// As stored in the ledger and shown in metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Interactive => "interactive",
            Class::Background => "background",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl std::str::FromStr for Class {
    type Err = crate::domain::UnknownName;

    /// The class a stored name names; an unknown name is an error (the table was edited).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| crate::domain::UnknownName {
                what: "quota class",
                name: text.to_owned(),
            })
    }
}

/// `interactive_reserve`: a number of calls, or a share of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Calls(u64),
    /// Percent of the budget, 0–100.
    Percent(u8),
}

/// Why a text is not a [`Reserve`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("expected a percentage from 0% to 100%, found {0:?}")]
    Percent(String),
    #[error("expected a number of calls or a percentage such as \"20%\", found {0:?}")]
    Calls(String),
}

impl Reserve {
    /// Reads `"20%"` or `"1000"`.
    pub fn parse(text: &str) -> Result<Self, ReserveError> {
        let text = text.trim();
        if let Some(p) = text.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Reserve::Percent(p)),
                _ => Err(ReserveError::Percent(text.to_owned())),
            };
        }
        text.parse::<u64>()
            .map(Reserve::Calls)
            .map_err(|_| ReserveError::Calls(text.to_owned()))
    }
}

/// How many calls a month dingops may make, and how many of them only interactive work may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `monthly_call_budget`; `None`: `off`.
    pub monthly: Option<u64>,
    pub reserve: Reserve,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            monthly: None,
            reserve: Reserve::Percent(20),
        }
    }
}

impl Budget {
    /// The reserve in calls (at most the budget); 0 without a budget.
    pub fn reserve_calls(&self) -> u64 {
        let Some(monthly) = self.monthly else { return 0 };
        match self.reserve {
            Reserve::Calls(n) => n.min(monthly),
            Reserve::Percent(p) => monthly * u64::from(p) / 100,
        }
    }

    /// The most calls of every class together that `class` may bring the month to: the
    /// whole budget for interactive calls, the budget less the reserve for background ones.
    /// `None` without a budget.
    pub fn ceiling(&self, class: Class) -> Option<u64> {
        let monthly = self.monthly?;
        Some(match class {
            Class::Interactive => monthly,
            Class::Background => monthly - self.reserve_calls(),
        })
    }

    /// How many more calls `class` may make when the month has used `used` (all classes).
    pub fn left(&self, class: Class, used: u64) -> Option<u64> {
        self.ceiling(class).map(|c| c.saturating_sub(used))
    }
}

/// The zone DingTalk's month turns in: China time, UTC+8 all year (China has kept no
/// daylight saving since 1991). `timezone` only says how times are shown.
pub fn china_time() -> TimeZone {
    TimeZone::fixed(jiff::tz::offset(8))
}

/// One calendar month in a time zone; the quota's is DingTalk's ([`Month::dingtalk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Month {
    /// `YYYY-MM`: how the ledger keys its counts.
    pub key: String,
    pub starts_ms: u64,
    /// The first millisecond of the next month: when the quota renews.
    pub ends_ms: u64,
}

impl Month {
    /// DingTalk's month `ms` (milliseconds since the Unix epoch) falls in: the calendar
    /// month in China time, the month the quota counts and renews by.
    pub fn dingtalk(ms: u64) -> Month {
        Month::of(ms, &china_time())
    }

    /// The month `ms` (milliseconds since the Unix epoch) falls in, in `tz`.
    pub fn of(ms: u64, tz: &TimeZone) -> Month {
        let at = Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or(Timestamp::MAX);
        let local = at.to_zoned_datetime(tz.clone());
        let first = local
            .date()
            .first_of_month()
            .to_zoned_datetime(tz.clone())
            .and_then(|d| d.start_of_day())
            .unwrap_or_else(|_| local.clone());
        let next = first
            .checked_add(1.month())
            .and_then(|d| d.start_of_day())
            .unwrap_or_else(|_| first.clone());
        let millis = |z: &jiff::ZonedDateTime| u64::try_from(z.timestamp().as_millisecond()).unwrap_or(0);
        Month {
            key: format!("{:04}-{:02}", first.year(), first.month()),
            starts_ms: millis(&first),
            ends_ms: millis(&next),
        }
    }

    /// The share of the month gone at `ms`, 0.0–1.0.
    pub fn elapsed(&self, ms: u64) -> f64 {
        let len = self.ends_ms.saturating_sub(self.starts_ms).max(1) as f64;
        (ms.saturating_sub(self.starts_ms) as f64 / len).clamp(0.0, 1.0)
    }

    /// Calls used so far, projected to the end of the month at the same pace.
    pub fn projected(&self, used: u64, ms: u64) -> u64 {
        let gone = self.elapsed(ms).max(1.0 / (31.0 * 24.0));
        (used as f64 / gone).round() as u64
    }
}

/// `reconcile_every = "auto"`: the time between two live reads so that what the background
/// may still spend this month lasts until it ends. `left` calls remain for background work
/// and `remaining` of the month; at least a second, at most a day apart.
pub fn auto_interval(left: u64, remaining: Duration) -> Duration {
    let per_read = remaining
        .checked_div(u32::try_from(left).unwrap_or(u32::MAX))
        .unwrap_or(remaining);
    per_read.clamp(Duration::from_secs(1), Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shanghai() -> TimeZone {
        TimeZone::get("Asia/Shanghai").expect("built-in zone")
    }

    #[test]
    fn the_month_is_the_calendar_month_in_the_configured_zone() {
        // 2026-11-30T16:00:00Z is 2026-12-01 00:00 in Shanghai.
        let m = Month::of(1_796_054_400_000, &shanghai());
        assert_eq!(m.key, "2026-12");
        assert_eq!(m.starts_ms, 1_796_054_400_000);
        assert_eq!(m.ends_ms, 1_796_054_400_000 + 31 * 86_400_000);
        assert_eq!(Month::of(1_796_054_400_000 - 1, &shanghai()).key, "2026-11");
        assert_eq!(Month::of(1_796_054_400_000 - 1, &TimeZone::UTC).key, "2026-11");
        assert_eq!(
            Month::of(1_796_054_400_000 + 8 * 3_600_000, &TimeZone::UTC).key,
            "2026-12"
        );
    }

    #[test]
    fn dingtalks_month_is_the_calendar_month_in_china_time() {
        // 2026-11-30T16:00:00Z is 2026-12-01 00:00 in Beijing, still November in Los Angeles.
        let m = Month::dingtalk(1_796_054_400_000);
        assert_eq!(m, Month::of(1_796_054_400_000, &shanghai()));
        assert_eq!(m.key, "2026-12");
        assert_eq!(Month::dingtalk(1_796_054_400_000 - 1).key, "2026-11");
        let la = TimeZone::get("America/Los_Angeles").expect("built-in zone");
        assert_eq!(Month::of(1_796_054_400_000, &la).key, "2026-11");
    }

    #[test]
    fn background_work_never_reaches_into_the_reserve() {
        let b = Budget {
            monthly: Some(5000),
            reserve: Reserve::Percent(20),
        };
        assert_eq!(b.reserve_calls(), 1000);
        assert_eq!(b.ceiling(Class::Background), Some(4000));
        assert_eq!(b.left(Class::Background, 3990), Some(10));
        assert_eq!(b.left(Class::Background, 4500), Some(0));
        assert_eq!(b.left(Class::Interactive, 4500), Some(500));
        assert_eq!(Budget::default().left(Class::Background, 1_000_000), None);
        let counted = Budget {
            monthly: Some(100),
            reserve: Reserve::Calls(500),
        };
        assert_eq!(
            counted.ceiling(Class::Background),
            Some(0),
            "a reserve larger than the budget is all of it"
        );
    }

    #[test]
    fn a_reserve_is_a_count_or_a_percentage() {
        assert_eq!(Reserve::parse("20%"), Ok(Reserve::Percent(20)));
        assert_eq!(Reserve::parse(" 750 "), Ok(Reserve::Calls(750)));
        assert!(
            Reserve::parse("120%")
                .unwrap_err()
                .to_string()
                .contains("0% to 100%")
        );
        assert!(
            Reserve::parse("lots")
                .unwrap_err()
                .to_string()
                .contains("\"20%\"")
        );
    }

    #[test]
    fn auto_spreads_the_background_share_over_what_is_left_of_the_month() {
        // 4 000 background calls for a 30-day month: one read every 10.8 minutes.
        let month = Duration::from_secs(30 * 86_400);
        assert_eq!(auto_interval(4000, month), Duration::from_millis(648_000));
        assert_eq!(auto_interval(0, month), Duration::from_secs(86_400));
        assert_eq!(
            auto_interval(10_000_000, Duration::from_secs(60)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_projection_keeps_the_pace_of_the_month_so_far() {
        let m = Month::of(1_796_054_400_000, &shanghai());
        let mid = m.starts_ms + (m.ends_ms - m.starts_ms) / 2;
        assert_eq!(m.projected(1200, mid), 2400);
    }
}
