//! The simulator's clock. DingTalk speaks in milliseconds since the Unix epoch: callback
//! timestamps, session expiries and token lifetimes.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn now_ms_is_the_millisecond_wall_clock() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
        let now = super::now_ms();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
        assert!(u128::from(now) >= before.as_millis() && u128::from(now) <= after.as_millis());
        // 13 digits, like the timestamps DingTalk sends (until the year 2286).
        assert_eq!(now.to_string().len(), 13);
    }
}
