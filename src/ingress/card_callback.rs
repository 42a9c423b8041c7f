//! Reading a card button's callback, the same JSON on both ingresses (a Stream frame's
//! `data`, the body of `POST /card-callback`), and checking the HTTP callback's signature
//! (`x-ddpaas-signature` = Base64(HMAC-SHA256(key `card_callback_secret`, message the
//! `x-ddpaas-signature-timestamp`)); see docs/dingtalk.md, "Interactive cards". Pure
//! functions: no HTTP, no ledger. What a click does is decided behind
//! [`Pipeline::accept_click`](super::Pipeline::accept_click).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::card::CardClick;
use super::signature::SignatureError;

/// Longest callback read; the HTTP route's body cap is the same.
pub const MAX_CLICK_BYTES: usize = 64 * 1024;
/// Longest `outTrackId` and `spaceId` accepted.
const MAX_ID_BYTES: usize = 256;
/// Longest `userId` accepted.
const MAX_USER_BYTES: usize = 128;
/// Longest action id accepted (ours are a few letters: `revert_now`).
const MAX_ACTION_BYTES: usize = 64;
/// Longest `x-ddpaas-signature-timestamp` parsed (i64 milliseconds fit in 19 digits).
const MAX_TIMESTAMP_DIGITS: usize = 19;
/// Base64 of a 32-byte MAC is 44 characters; anything far longer is garbage.
const MAX_SIGNATURE_LEN: usize = 64;

/// Why a callback was refused (HTTP 400, Stream ACK 400). The text names the field, never
/// its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClickError {
    /// Not a JSON object, or `content`/`value` is not one (nor a string holding one).
    #[error("card callback is not the expected JSON: {0}")]
    Json(String),
    /// A required field is absent, empty or not a string.
    #[error("card callback without `{0}`")]
    Missing(&'static str),
    /// A field is longer than any id dingops hands out, or holds control characters.
    #[error("card callback field `{0}` is too long or not plain text")]
    Invalid(&'static str),
}

/// Reads a click: `outTrackId`, `userId` and the action (`cardPrivateData.actionIds[0]`, or
/// else `cardPrivateData.params.action`) are required; `spaceId` is kept when present. The
/// action's data is in `content`, or `value` as some clients see it, itself a JSON string or
/// an object.
pub fn parse_click(data: &[u8]) -> Result<CardClick, ClickError> {
    if data.len() > MAX_CLICK_BYTES {
        return Err(ClickError::Json(format!("larger than {MAX_CLICK_BYTES} bytes")));
    }
    // serde's message names the position, never the value of a string.
    let body: Map<String, Value> =
        serde_json::from_slice(data).map_err(|e| ClickError::Json(e.to_string()))?;
    let out_track_id = text(&body, "outTrackId", MAX_ID_BYTES)?.ok_or(ClickError::Missing("outTrackId"))?;
    let user_id = text(&body, "userId", MAX_USER_BYTES)?.ok_or(ClickError::Missing("userId"))?;
    let space_id = text(&body, "spaceId", MAX_ID_BYTES)?;
    let content = match body.get("content").filter(|c| !c.is_null()) {
        Some(c) => object(c, "content")?,
        None => match body.get("value").filter(|v| !v.is_null()) {
            Some(v) => object(v, "value")?,
            None => return Err(ClickError::Missing("content")),
        },
    };
    let private = content
        .get("cardPrivateData")
        .and_then(Value::as_object)
        .ok_or(ClickError::Missing("cardPrivateData"))?;
    let first_id = private
        .get("actionIds")
        .and_then(Value::as_array)
        .and_then(|ids| ids.first())
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let from_params = private
        .get("params")
        .and_then(|p| p.get("action"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let action = first_id.or(from_params).ok_or(ClickError::Missing("action"))?;
    if action.len() > MAX_ACTION_BYTES || !action.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClickError::Invalid("action"));
    }
    Ok(CardClick {
        out_track_id,
        user_id,
        action: action.to_owned(),
        space_id,
    })
}

/// A string field, trimmed: `None` when absent, null or empty; an error when it is not a
/// string, longer than `max` bytes or holds control characters.
fn text(body: &Map<String, Value>, field: &'static str, max: usize) -> Result<Option<String>, ClickError> {
    let s = match body.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err(ClickError::Missing(field)),
    };
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(ClickError::Invalid(field));
    }
    Ok((!s.is_empty()).then(|| s.to_owned()))
}

/// `content`/`value`: an object, or a string that holds one.
fn object(v: &Value, field: &'static str) -> Result<Map<String, Value>, ClickError> {
    match v {
        Value::Object(o) => Ok(o.clone()),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => Ok(o),
            Ok(_) => Err(ClickError::Json(format!("`{field}` does not hold an object"))),
            Err(e) => Err(ClickError::Json(format!("`{field}`: {e}"))),
        },
        _ => Err(ClickError::Json(format!(
            "`{field}` is neither an object nor a string"
        ))),
    }
}

/// The `x-ddpaas-signature` DingTalk sends with `timestamp` for `secret`.
pub fn card_signature(secret: &SecretString, timestamp: &str) -> String {
    STANDARD.encode(mac(secret, timestamp).finalize().into_bytes())
}

fn mac(secret: &SecretString, timestamp: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.as_bytes());
    mac
}

/// Checks an HTTP card callback's headers against `secret`: both are required, the
/// timestamp (ms) must be within `window_ms` of `now_ms`, and the signature is compared in
/// constant time. The body is not signed (DingTalk signs the timestamp alone), so a
/// signed pair is good for one click: see [`http_click_identity`].
pub fn verify_card_signature(
    secret: &SecretString,
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    now_ms: u64,
    window_ms: u64,
) -> Result<(), SignatureError> {
    let (timestamp, signature) = match (timestamp_header, signature_header) {
        (Some(t), Some(s)) if !t.is_empty() && !s.is_empty() => (t, s),
        _ => return Err(SignatureError::Missing),
    };
    if timestamp.len() > MAX_TIMESTAMP_DIGITS
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
        || signature.len() > MAX_SIGNATURE_LEN
    {
        return Err(SignatureError::Malformed);
    }
    let at: u64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    if at.abs_diff(now_ms) > window_ms {
        return Err(SignatureError::Stale);
    }
    let given = STANDARD
        .decode(signature)
        .map_err(|_| SignatureError::Malformed)?;
    // `verify_slice` compares in constant time.
    mac(secret, timestamp)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

/// The identity of an HTTP click for the ledger: `card:` and the hex SHA-256 of the
/// timestamp header, a newline and the signature header. DingTalk signs the timestamp
/// alone, so the pair is all that proves a request came from DingTalk: it is good for one
/// click whatever the body says, and a request that reuses it is a duplicate (see
/// docs/cards.md, "Clicks over HTTP"). The Stream ingress uses the frame's messageId instead.
pub fn http_click_identity(timestamp: &str, signature: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(timestamp.as_bytes());
    hash.update(b"\n");
    hash.update(signature.as_bytes());
    let digest = hash.finalize();
    let mut id = String::with_capacity(5 + 64);
    id.push_str("card:");
    for byte in digest {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// The identity of a Stream click: `card:` and the frame's messageId.
pub fn stream_click_identity(message_id: &str) -> String {
    format!("card:{message_id}")
}

#[cfg(test)]
#[path = "card_callback_tests.rs"]
mod tests;
