//! Wall-clock helpers. DingTalk speaks in milliseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
