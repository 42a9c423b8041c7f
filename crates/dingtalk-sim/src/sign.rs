//! DingTalk's side of the callback signature: the `sign` header it sends with a `timestamp`.
//!
//! DingTalk computes HMAC-SHA256 over `"{timestamp}\n{app_secret}"`, keyed by the app secret,
//! and sends the standard Base64 (with padding) of the 32-byte MAC. The HMAC here is built
//! from SHA-256 by hand (RFC 2104) rather than taken from the `hmac` crate that dingops'
//! verifier uses, so the two sides are separate implementations that must agree.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};

/// SHA-256 processes 64-byte blocks; HMAC pads or hashes the key to that size.
const BLOCK_LEN: usize = 64;

/// HMAC-SHA256 of `message` under `key` (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; BLOCK_LEN];
    if key.len() > BLOCK_LEN {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize();
    outer.into()
}

/// The `sign` header for `timestamp` (milliseconds since the epoch, as sent) and `app_secret`.
pub fn sign(app_secret: &str, timestamp: &str) -> String {
    let message = format!("{timestamp}\n{app_secret}");
    STANDARD.encode(hmac_sha256(app_secret.as_bytes(), message.as_bytes()))
}

/// The `x-ddpaas-signature` of an interactive card's HTTP callback: HMAC-SHA256 keyed by the
/// registered `apiSecret` over the `x-ddpaas-signature-timestamp` string alone, in standard
/// Base64 (the body is not signed).
pub fn card_signature(api_secret: &str, timestamp: &str) -> String {
    STANDARD.encode(hmac_sha256(api_secret.as_bytes(), timestamp.as_bytes()))
}

/// Signs callbacks for one app secret.
#[derive(Clone)]
pub struct Signer {
    secret: SecretString,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("secret", &"[REDACTED]").finish()
    }
}

impl Signer {
    pub fn new(secret: SecretString) -> Self {
        Self { secret }
    }

    /// The `sign` header for `timestamp`.
    pub fn sign(&self, timestamp: &str) -> String {
        sign(self.secret.expose_secret(), timestamp)
    }

    /// The `timestamp` and `sign` headers for the current time.
    pub fn headers_now(&self) -> (String, String) {
        let timestamp = crate::clock::now_ms().to_string();
        let sign = self.sign(&timestamp);
        (timestamp, sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn dingtalks_published_test_vector_signs_as_documented() {
        assert_eq!(
            sign("this is a secret", "1577262236757"),
            "DJrE6qdyVGCQz9z5r2MDuNcNAhwYnuAkyj13cx169CA="
        );
        let signer = Signer::new(SecretString::from("this is a secret".to_owned()));
        assert_eq!(
            signer.sign("1577262236757"),
            "DJrE6qdyVGCQz9z5r2MDuNcNAhwYnuAkyj13cx169CA="
        );
    }

    #[test]
    fn the_hmac_matches_rfc_4231_for_short_and_longer_than_a_block_keys() {
        // Test case 2: a key shorter than the block.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a 131-byte key, hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_secret_of_exactly_one_block_is_used_as_is() {
        let secret = "x".repeat(64);
        assert_eq!(
            sign(&secret, "1700000000000"),
            "GEZTSzpvPcwvwdVwGjD+8nH6NMgYBn8shaDZndr9fkY="
        );
    }

    #[test]
    fn headers_now_carry_the_current_millisecond_clock_and_its_signature() {
        let signer = Signer::new(SecretString::from("s".to_owned()));
        let before = crate::clock::now_ms();
        let (timestamp, signature) = signer.headers_now();
        let ts: u64 = timestamp.parse().expect("a decimal timestamp");
        assert!(ts >= before && ts <= crate::clock::now_ms(), "{ts}");
        assert_eq!(signature, sign("s", &timestamp));
    }

    #[test]
    fn a_card_signature_is_the_hmac_of_the_timestamp_alone() {
        // RFC 4231 test case 2, in Base64: key "Jefe", the message standing in for a timestamp.
        assert_eq!(
            card_signature("Jefe", "what do ya want for nothing?"),
            STANDARD.encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?"))
        );
        assert_eq!(
            card_signature("Jefe", "what do ya want for nothing?"),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let text = format!("{:?}", Signer::new(SecretString::from("top-secret".to_owned())));
        assert!(!text.contains("top-secret"), "{text}");
    }
}
