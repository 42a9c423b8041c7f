//! The wire format as clients write it: ACK frames, the `subscriptions` of a
//! `connections/open` body and the ticket in the handshake's query; and fresh ids shaped
//! like DingTalk's.

use std::collections::HashMap;

use serde_json::Value;

use super::{RecordedAck, Subscription};
use crate::clock::now_ms;
use crate::random_hex;

/// `{code, message, headers.messageId}` of a client frame, if it is an ACK.
pub(super) fn parse_ack(
    connection: &str,
    at_ms: u64,
    text: &str,
    sent: &HashMap<String, (String, String)>,
) -> Option<RecordedAck> {
    let v: Value = serde_json::from_str(text).ok()?;
    let code = v.get("code")?.as_i64()?;
    let headers = v.get("headers")?.clone();
    let message_id = headers.get("messageId")?.as_str()?.to_owned();
    let (frame_type, topic) = match sent.get(&message_id) {
        Some((t, topic)) => (Some(t.clone()), Some(topic.clone())),
        None => (None, None),
    };
    Some(RecordedAck {
        connection: connection.to_owned(),
        at_ms,
        code,
        message: v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        data: v.get("data").cloned().unwrap_or(Value::Null),
        headers,
        message_id,
        frame_type,
        topic,
        after_push_us: None,
    })
}

/// The `subscriptions` of a `connections/open` body: a non-empty list of `{type, topic}`
/// with a known type and a non-empty topic.
pub(super) fn parse_subscriptions(body: &Value) -> Result<Vec<Subscription>, &'static str> {
    let Some(list) = body.get("subscriptions").and_then(Value::as_array) else {
        return Err("subscriptions is missing or not a list");
    };
    if list.is_empty() {
        return Err("subscriptions is empty");
    }
    list.iter()
        .map(|s| {
            let kind = s.get("type").and_then(Value::as_str).unwrap_or_default();
            let topic = s.get("topic").and_then(Value::as_str).unwrap_or_default();
            if !matches!(kind, "SYSTEM" | "EVENT" | "CALLBACK") {
                return Err("a subscription's type is not SYSTEM, EVENT or CALLBACK");
            }
            if topic.is_empty() {
                return Err("a subscription has no topic");
            }
            Ok(Subscription {
                kind: kind.to_owned(),
                topic: topic.to_owned(),
            })
        })
        .collect()
}

/// The value of `name` in a query string, percent-decoded (`+` is a space).
pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh id shaped like DingTalk's tickets and ids (8-4-4-4-12 hex digits).
pub(super) fn uuid_like() -> String {
    let h = random_hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A fresh frame `messageId`, shaped like DingTalk's (`212ca9d7_974_1898c159aa6_1783b`).
pub(crate) fn new_message_id() -> String {
    format!(
        "{}_{}_{:x}_{}",
        random_hex(8),
        random_hex(3),
        now_ms(),
        random_hex(5)
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::stream::BOT_TOPIC;

    #[test]
    fn a_ticket_in_the_query_is_percent_decoded() {
        assert_eq!(query_param("ticket=a%2Bb+c", "ticket").as_deref(), Some("a+b c"));
        assert_eq!(query_param("x=1&ticket=abc", "ticket").as_deref(), Some("abc"));
        assert_eq!(query_param("tickets=abc", "ticket"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn subscriptions_need_a_known_type_and_a_topic() {
        let ok = json!({"subscriptions": [{"type": "CALLBACK", "topic": BOT_TOPIC}]});
        assert_eq!(
            parse_subscriptions(&ok),
            Ok(vec![Subscription {
                kind: "CALLBACK".into(),
                topic: BOT_TOPIC.into()
            }])
        );
        for bad in [
            json!({}),
            json!({"subscriptions": []}),
            json!({"subscriptions": [{"type": "PUSH", "topic": "x"}]}),
            json!({"subscriptions": [{"type": "EVENT", "topic": ""}]}),
        ] {
            assert!(parse_subscriptions(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_ack_needs_an_integer_code_and_a_message_id() {
        let sent = HashMap::from([("m1".to_owned(), ("CALLBACK".to_owned(), BOT_TOPIC.to_owned()))]);
        let ack = parse_ack(
            "c",
            1,
            r#"{"code":200,"headers":{"messageId":"m1","contentType":"application/json"},"message":"OK","data":"{\"response\":null}"}"#,
            &sent,
        )
        .expect("an ACK");
        assert_eq!(
            (ack.code, ack.message_id.as_str(), ack.message.as_str()),
            (200, "m1", "OK")
        );
        assert_eq!(ack.topic.as_deref(), Some(BOT_TOPIC));
        assert_eq!(ack.data, json!("{\"response\":null}"));
        assert!(parse_ack("c", 1, r#"{"code":"200","headers":{"messageId":"m1"}}"#, &sent).is_none());
        assert!(parse_ack("c", 1, r#"{"code":200,"headers":{}}"#, &sent).is_none());
        assert!(parse_ack("c", 1, "not json", &sent).is_none());
    }
}
