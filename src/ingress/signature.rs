//! Verification of DingTalk's robot callback signature.
//!
//! DingTalk signs `"{timestamp}\n{app_secret}"` with HMAC-SHA256 keyed by the app secret and
//! sends the standard Base64 of the MAC in the `sign` header (docs/dingtalk.md#callback-signature). The
//! signature does not cover the body, so callers must also dedupe by `msgId`.
//!
//! This module knows nothing about HTTP: it takes the two header values as strings.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest `timestamp` header we parse: 13 digits are today's millisecond clock, 19 fit i64.
const MAX_TIMESTAMP_DIGITS: usize = 19;
/// Base64 of a 32-byte MAC is 44 characters; anything far longer is garbage.
const MAX_SIGN_LEN: usize = 64;

/// Why a callback's signature was refused. The text never includes the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The `timestamp` or `sign` header is absent or empty.
    #[error("missing timestamp or sign header")]
    Missing,
    /// A header is present but is not a decimal millisecond timestamp or not Base64.
    #[error("malformed timestamp or sign header")]
    Malformed,
    /// The timestamp is further from our clock than the configured window.
    #[error("timestamp outside the accepted window")]
    Stale,
    /// The signature does not match.
    #[error("signature mismatch")]
    Mismatch,
}

impl SignatureError {
    /// A stable short name for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Stale => "stale",
            Self::Mismatch => "mismatch",
        }
    }

    /// The `reason` label of a callback route's metric (`signature_missing`, …).
    pub fn metric_reason(self) -> &'static str {
        match self {
            Self::Missing => "signature_missing",
            Self::Malformed => "signature_malformed",
            Self::Stale => "signature_stale",
            Self::Mismatch => "signature_mismatch",
        }
    }
}

/// Verifies and produces callback signatures for one app secret.
///
/// The HMAC key schedule is computed once and cloned per request.
#[derive(Clone)]
pub struct Verifier {
    mac: HmacSha256,
    secret: SecretString,
    window_ms: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &"[REDACTED]")
            .field("window_ms", &self.window_ms)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `secret` that accepts timestamps within `window_secs` of the clock.
    pub fn new(secret: SecretString, window_secs: u64) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self {
            mac,
            secret,
            window_ms: window_secs.saturating_mul(1000),
        }
    }

    fn mac_for(&self, timestamp: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(timestamp.as_bytes());
        mac.update(b"\n");
        mac.update(self.secret.expose_secret().as_bytes());
        mac
    }

    /// The `sign` header DingTalk would send with `timestamp`. Used by the `send` command,
    /// the tests and the micro-benchmarks (the simulator has its own signer).
    pub fn sign(&self, timestamp: &str) -> String {
        STANDARD.encode(self.mac_for(timestamp).finalize().into_bytes())
    }

    /// Verifies the header values against the clock reading `now_ms` (ms since the epoch).
    pub fn verify_at(
        &self,
        timestamp: Option<&str>,
        sign: Option<&str>,
        now_ms: u64,
    ) -> Result<(), SignatureError> {
        let (timestamp, sign) = match (timestamp, sign) {
            (Some(t), Some(s)) if !t.is_empty() && !s.is_empty() => (t, s),
            _ => return Err(SignatureError::Missing),
        };
        if timestamp.len() > MAX_TIMESTAMP_DIGITS
            || !timestamp.bytes().all(|b| b.is_ascii_digit())
            || sign.len() > MAX_SIGN_LEN
        {
            return Err(SignatureError::Malformed);
        }
        let ts: u64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
        if ts.abs_diff(now_ms) > self.window_ms {
            return Err(SignatureError::Stale);
        }
        let given = STANDARD.decode(sign).map_err(|_| SignatureError::Malformed)?;
        // `verify_slice` compares in constant time.
        self.mac_for(timestamp)
            .verify_slice(&given)
            .map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_TS: &str = "1577262236757";
    const VECTOR_SIGN: &str = "DJrE6qdyVGCQz9z5r2MDuNcNAhwYnuAkyj13cx169CA=";

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(SecretString::from(secret.to_owned()), 3600)
    }

    #[test]
    fn the_protocol_test_vector_signs_as_documented() {
        assert_eq!(verifier("this is a secret").sign(VECTOR_TS), VECTOR_SIGN);
    }

    #[test]
    fn the_protocol_test_vector_verifies_at_its_own_time() {
        let v = verifier("this is a secret");
        assert_eq!(
            v.verify_at(Some(VECTOR_TS), Some(VECTOR_SIGN), 1_577_262_236_757),
            Ok(())
        );
    }

    #[test]
    fn a_signature_made_with_another_secret_is_a_mismatch() {
        let v = verifier("this is a secret");
        let forged = verifier("another secret").sign(VECTOR_TS);
        assert_eq!(
            v.verify_at(Some(VECTOR_TS), Some(&forged), 1_577_262_236_757),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_or_empty_headers_are_missing() {
        let v = verifier("s");
        assert_eq!(v.verify_at(None, Some("x"), 0), Err(SignatureError::Missing));
        assert_eq!(v.verify_at(Some("1"), None, 0), Err(SignatureError::Missing));
        assert_eq!(v.verify_at(Some(""), Some("x"), 0), Err(SignatureError::Missing));
    }

    #[test]
    fn non_numeric_negative_or_huge_timestamps_are_malformed() {
        let v = verifier("s");
        for ts in [
            "abc",
            "-5",
            "1.5",
            " 1",
            "12345678901234567890",
            "99999999999999999999",
        ] {
            assert_eq!(
                v.verify_at(Some(ts), Some("AAAA"), 0),
                Err(SignatureError::Malformed),
                "{ts}"
            );
        }
    }

    #[test]
    fn garbage_base64_is_malformed() {
        let v = verifier("s");
        let now = 1_700_000_000_000u64;
        let ts = now.to_string();
        assert_eq!(
            v.verify_at(Some(&ts), Some("!!not base64!!"), now),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn timestamps_just_inside_the_window_pass_and_just_outside_are_stale() {
        let v = verifier("s");
        let now = 1_700_000_000_000u64;
        for (ts, expected) in [
            (now - 3_600_000, Ok(())),
            (now + 3_600_000, Ok(())),
            (now - 3_600_001, Err(SignatureError::Stale)),
            (now + 3_600_001, Err(SignatureError::Stale)),
        ] {
            let ts = ts.to_string();
            let sign = v.sign(&ts);
            assert_eq!(v.verify_at(Some(&ts), Some(&sign), now), expected, "{ts}");
        }
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let text = format!("{:?}", verifier("top-secret-value"));
        assert!(!text.contains("top-secret-value"), "{text}");
    }
}
