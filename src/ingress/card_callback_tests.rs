//! A click as DingTalk sends it and as community clients have met it; the HTTP signature
//! against a vector computed outside Rust.

use serde_json::json;

use super::*;

/// The callback of docs/dingtalk.md: `content` a JSON string.
fn documented() -> Value {
    json!({
        "type": "actionCallback",
        "outTrackId": "dingops-42",
        "corpId": "dingcorp",
        "userId": "admin01",
        "userIdType": 1,
        "spaceType": "IM_GROUP",
        "spaceId": "cidGroupAaaaaaaaaaa==",
        "extension": "{}",
        "content": "{\"cardPrivateData\":{\"actionIds\":[\"undo\"],\"params\":{\"action\":\"undo\"}}}",
    })
}

fn parse(v: &Value) -> Result<CardClick, ClickError> {
    parse_click(v.to_string().as_bytes())
}

#[test]
fn the_documented_callback_is_a_click() {
    assert_eq!(
        parse(&documented()),
        Ok(CardClick {
            out_track_id: "dingops-42".into(),
            user_id: "admin01".into(),
            action: "undo".into(),
            space_id: Some("cidGroupAaaaaaaaaaa==".into()),
        })
    );
}

#[test]
fn content_may_be_an_object_or_come_as_value() {
    let object = json!({"cardPrivateData": {"actionIds": ["extend"]}});
    let mut v = documented();
    v["content"] = object.clone();
    assert_eq!(parse(&v).unwrap().action, "extend");
    let mut v = documented();
    v.as_object_mut().unwrap().remove("content");
    v["value"] = json!(object.to_string());
    assert_eq!(parse(&v).unwrap().action, "extend");
    v["value"] = object;
    assert_eq!(parse(&v).unwrap().action, "extend");
}

#[test]
fn the_action_comes_from_the_params_when_there_are_no_action_ids() {
    let mut v = documented();
    v["content"] = json!({"cardPrivateData": {"actionIds": [], "params": {"action": "revert_now"}}});
    assert_eq!(parse(&v).unwrap().action, "revert_now");
    v["content"] = json!({"cardPrivateData": {"params": {"action": " approve "}}});
    assert_eq!(parse(&v).unwrap().action, "approve");
    // The first action id wins over the params.
    v["content"] = json!({"cardPrivateData": {"actionIds": ["discard"], "params": {"action": "approve"}}});
    assert_eq!(parse(&v).unwrap().action, "discard");
}

#[test]
fn a_click_without_its_card_clicker_or_action_is_refused_by_name() {
    for (field, missing) in [
        ("outTrackId", "outTrackId"),
        ("userId", "userId"),
        ("content", "content"),
    ] {
        let mut v = documented();
        v.as_object_mut().unwrap().remove(field);
        assert_eq!(parse(&v), Err(ClickError::Missing(missing)), "{field}");
        let mut v = documented();
        v[field] = json!("");
        assert!(parse(&v).is_err(), "empty {field}");
    }
    let mut v = documented();
    v["userId"] = json!(42);
    assert_eq!(parse(&v), Err(ClickError::Missing("userId")));
    for content in [
        json!({}),
        json!({"cardPrivateData": {}}),
        json!({"cardPrivateData": {"actionIds": [""], "params": {}}}),
        json!({"cardPrivateData": {"actionIds": [7]}}),
    ] {
        let mut v = documented();
        v["content"] = content.clone();
        assert!(matches!(parse(&v), Err(ClickError::Missing(_))), "{content}");
    }
    let mut v = documented();
    v.as_object_mut().unwrap().remove("spaceId");
    assert_eq!(parse(&v).unwrap().space_id, None);
}

#[test]
fn oversized_or_garbled_clicks_are_refused() {
    assert!(matches!(parse_click(b"not json"), Err(ClickError::Json(_))));
    assert!(matches!(parse_click(b"[1,2]"), Err(ClickError::Json(_))));
    assert!(matches!(
        parse_click(&vec![b' '; MAX_CLICK_BYTES + 1]),
        Err(ClickError::Json(_))
    ));
    let nested = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let mut v = documented();
    v["content"] = json!(nested);
    assert!(matches!(parse(&v), Err(ClickError::Json(_))));
    v["content"] = json!("[1]");
    assert!(matches!(parse(&v), Err(ClickError::Json(_))));
    v["content"] = json!(3);
    assert!(matches!(parse(&v), Err(ClickError::Json(_))));
    for (field, value) in [
        ("outTrackId", "t".repeat(MAX_ID_BYTES + 1)),
        ("userId", "u".repeat(MAX_USER_BYTES + 1)),
        ("spaceId", "c".repeat(MAX_ID_BYTES + 1)),
        ("userId", "admin\u{1b}[2J".to_owned()),
    ] {
        let mut v = documented();
        v[field] = json!(value);
        assert_eq!(parse(&v), Err(ClickError::Invalid(field)), "{field}");
    }
    for action in ["a".repeat(MAX_ACTION_BYTES + 1), "un do".into()] {
        let mut v = documented();
        v["content"] = json!({"cardPrivateData": {"actionIds": [action]}});
        assert_eq!(parse(&v), Err(ClickError::Invalid("action")));
    }
}

#[test]
fn an_error_never_repeats_a_value_from_the_callback() {
    let mut v = documented();
    v["userId"] = json!(format!("secretuser{}", "x".repeat(200)));
    let err = parse(&v).unwrap_err().to_string();
    assert!(!err.contains("secretuser"), "{err}");
}

/// Computed with Python's hmac module: base64(HMAC-SHA256(b"dingops-card-secret",
/// b"1700000000123")).
const VECTOR_SECRET: &str = "dingops-card-secret";
const VECTOR_TS: &str = "1700000000123";
const VECTOR_SIGNATURE: &str = "xQ44DWJo5TLnAaiwaV0+VXRxTe4iP3jsZuQxuyZBOlI=";
const NOW: u64 = 1_700_000_000_123;
const WINDOW: u64 = 3_600_000;

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

#[test]
fn the_signature_is_the_hmac_of_the_timestamp_alone() {
    assert_eq!(
        card_signature(&secret(VECTOR_SECRET), VECTOR_TS),
        VECTOR_SIGNATURE
    );
    assert_eq!(
        verify_card_signature(
            &secret(VECTOR_SECRET),
            Some(VECTOR_TS),
            Some(VECTOR_SIGNATURE),
            NOW,
            WINDOW
        ),
        Ok(())
    );
}

#[test]
fn another_secret_or_timestamp_is_a_mismatch() {
    let other = card_signature(&secret("another"), VECTOR_TS);
    assert_eq!(
        verify_card_signature(&secret(VECTOR_SECRET), Some(VECTOR_TS), Some(&other), NOW, WINDOW),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_card_signature(
            &secret(VECTOR_SECRET),
            Some("1700000000124"),
            Some(VECTOR_SIGNATURE),
            NOW,
            WINDOW
        ),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn both_headers_are_required() {
    let s = secret(VECTOR_SECRET);
    for (ts, sig) in [
        (None, Some(VECTOR_SIGNATURE)),
        (Some(VECTOR_TS), None),
        (Some(""), Some(VECTOR_SIGNATURE)),
        (Some(VECTOR_TS), Some("")),
        (None, None),
    ] {
        assert_eq!(
            verify_card_signature(&s, ts, sig, NOW, WINDOW),
            Err(SignatureError::Missing),
            "{ts:?} {sig:?}"
        );
    }
}

#[test]
fn a_timestamp_just_outside_the_window_is_stale_and_one_inside_passes() {
    let s = secret(VECTOR_SECRET);
    let at = |now| verify_card_signature(&s, Some(VECTOR_TS), Some(VECTOR_SIGNATURE), now, WINDOW);
    assert_eq!(at(NOW + WINDOW), Ok(()));
    assert_eq!(at(NOW - WINDOW), Ok(()));
    assert_eq!(at(NOW + WINDOW + 1), Err(SignatureError::Stale));
    assert_eq!(at(NOW - WINDOW - 1), Err(SignatureError::Stale));
}

#[test]
fn malformed_headers_are_refused_before_any_mac() {
    let s = secret(VECTOR_SECRET);
    for ts in ["-1", "1.7e12", " 1700000000123", "12345678901234567890"] {
        assert_eq!(
            verify_card_signature(&s, Some(ts), Some(VECTOR_SIGNATURE), NOW, WINDOW),
            Err(SignatureError::Malformed),
            "{ts}"
        );
    }
    for sig in ["!!not base64!!", &"A".repeat(65)] {
        assert_eq!(
            verify_card_signature(&s, Some(VECTOR_TS), Some(sig), NOW, WINDOW),
            Err(SignatureError::Malformed),
            "{sig}"
        );
    }
}

#[test]
fn an_http_click_is_known_by_its_signed_pair_whatever_its_body() {
    // Computed with Python: sha256(b'1700000000123\n' + VECTOR_SIGNATURE).hexdigest().
    assert_eq!(
        http_click_identity(VECTOR_TS, VECTOR_SIGNATURE),
        "card:2b91dce056db5a3b6dde37131753bc79acebb75169b0b89a92b0329fdb673f2f"
    );
    assert_ne!(
        http_click_identity("1700000000124", VECTOR_SIGNATURE),
        http_click_identity(VECTOR_TS, VECTOR_SIGNATURE)
    );
    assert_eq!(stream_click_identity("m-1"), "card:m-1");
}
