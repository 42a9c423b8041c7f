//! Stream-mode frames: what DingTalk sends, how it is routed, and the ACK frames dingops
//! answers with. Pure functions, no I/O (see docs/dingtalk.md#stream-mode).

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The topic of robot messages.
pub const BOT_TOPIC: &str = "/v1.0/im/bot/messages/get";
/// The topic of clicks on interactive cards' buttons (subscribed when cards are on).
pub const CARD_TOPIC: &str = "/v1.0/card/instances/callback";
/// The `data` of an ACK to a robot message; DingTalk ignores it.
const EMPTY_RESPONSE: &str = "{\"response\":null}";

/// A frame as it comes; header values are read as strings or numbers alike.
#[derive(Debug, Deserialize)]
struct RawFrame {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

/// What a text frame asks of dingops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// SYSTEM `ping`: answer with its `data`.
    Ping { message_id: String, data: String },
    /// SYSTEM `disconnect`: DingTalk will close this connection soon.
    Disconnect { message_id: String, reason: String },
    /// A robot message: `data` is the callback payload (JSON text), not parsed yet.
    Robot { message_id: String, data: String },
    /// A click on a card's button: `data` is the click (JSON text), not parsed yet.
    Card { message_id: String, data: String },
    /// A robot or card frame whose `data` is not a string.
    Malformed { message_id: String },
    /// A topic dingops did not subscribe to (or a type it does not take).
    Unknown { message_id: String },
    /// A SYSTEM frame of another topic: nothing to answer.
    OtherSystem,
    /// Not a frame (no JSON, no `messageId`): it cannot even be acknowledged.
    Invalid,
}

/// A text frame, read: where it goes and its metric labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedFrame {
    pub route: Route,
    /// `SYSTEM`, `EVENT`, `CALLBACK`, `other`, or `invalid` when it is not a frame.
    pub kind: &'static str,
    /// The robot or card topic, `ping`, `disconnect`, `other`, or `-` when it is not a frame. Fixed
    /// strings, so a hostile gateway cannot grow the metric's label set.
    pub topic: &'static str,
}

/// Reads one text frame.
pub fn read(text: &str) -> RoutedFrame {
    let Ok(frame) = serde_json::from_str::<RawFrame>(text) else {
        return RoutedFrame {
            route: Route::Invalid,
            kind: "invalid",
            topic: "-",
        };
    };
    let topic = header(&frame.headers, "topic").unwrap_or_default();
    RoutedFrame {
        kind: match frame.kind.as_str() {
            "SYSTEM" => "SYSTEM",
            "EVENT" => "EVENT",
            "CALLBACK" => "CALLBACK",
            _ => "other",
        },
        topic: match topic.as_str() {
            BOT_TOPIC => BOT_TOPIC,
            CARD_TOPIC => CARD_TOPIC,
            "ping" => "ping",
            "disconnect" => "disconnect",
            _ => "other",
        },
        route: route(frame, &topic),
    }
}

fn route(frame: RawFrame, topic: &str) -> Route {
    let Some(message_id) = header(&frame.headers, "messageId").filter(|m| !m.is_empty()) else {
        return Route::Invalid;
    };
    let data = match frame.data {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    match (frame.kind.as_str(), topic) {
        ("SYSTEM", "ping") => Route::Ping {
            message_id,
            data: data.unwrap_or_default(),
        },
        ("SYSTEM", "disconnect") => Route::Disconnect {
            message_id,
            reason: data
                .as_deref()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(short))
                .unwrap_or_default(),
        },
        ("SYSTEM", _) => Route::OtherSystem,
        ("CALLBACK", BOT_TOPIC) => match data {
            Some(data) => Route::Robot { message_id, data },
            None => Route::Malformed { message_id },
        },
        ("CALLBACK", CARD_TOPIC) => match data {
            Some(data) => Route::Card { message_id, data },
            None => Route::Malformed { message_id },
        },
        _ => Route::Unknown { message_id },
    }
}

/// A header as a string (DingTalk sends strings where numbers are meant, and may send either).
fn header(headers: &Map<String, Value>, name: &str) -> Option<String> {
    match headers.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// At most 200 characters of text from the network, for a log line.
fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

/// An ACK frame: `code` for the frame `message_id`, with `data` (a JSON string).
pub fn ack(message_id: &str, code: u16, data: &str) -> String {
    let message = match code {
        200 => "OK",
        400 => "bad request",
        404 => "topic not supported",
        _ => "error",
    };
    json!({
        "code": code,
        "headers": {"contentType": "application/json", "messageId": message_id},
        "message": message,
        "data": data,
    })
    .to_string()
}

/// The ACK of a robot message (or of anything that needs no answer data).
pub fn ack_empty(message_id: &str, code: u16) -> String {
    ack(message_id, code, EMPTY_RESPONSE)
}

/// The ACK of a card click, code 200: `data` is the JSON string `{"response": answer}`,
/// as the Stream SDKs send it; DingTalk applies `answer` to the card.
pub fn ack_card(message_id: &str, answer: &Value) -> String {
    ack(message_id, 200, &json!({ "response": answer }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: &str, topic: &str, data: Value) -> String {
        json!({
            "specVersion": "1.0",
            "type": kind,
            "headers": {"messageId": "m1", "topic": topic, "time": "1690362102194", "contentType": "application/json"},
            "data": data,
        })
        .to_string()
    }

    #[test]
    fn a_robot_callback_carries_its_data_unparsed() {
        let route = read(&frame("CALLBACK", BOT_TOPIC, json!("{\"msgId\":\"x\"}"))).route;
        assert_eq!(
            route,
            Route::Robot {
                message_id: "m1".into(),
                data: "{\"msgId\":\"x\"}".into()
            }
        );
    }

    #[test]
    fn a_robot_callback_without_string_data_is_malformed() {
        for data in [json!({"msgId": "x"}), Value::Null, json!(3)] {
            assert_eq!(
                read(&frame("CALLBACK", BOT_TOPIC, data)).route,
                Route::Malformed {
                    message_id: "m1".into()
                }
            );
        }
    }

    #[test]
    fn ping_and_disconnect_are_system_topics() {
        assert_eq!(
            read(&frame("SYSTEM", "ping", json!("{\"opaque\":\"o\"}"))).route,
            Route::Ping {
                message_id: "m1".into(),
                data: "{\"opaque\":\"o\"}".into()
            }
        );
        assert_eq!(
            read(&frame(
                "SYSTEM",
                "disconnect",
                json!("{\"reason\":\"connection is expired\"}")
            ))
            .route,
            Route::Disconnect {
                message_id: "m1".into(),
                reason: "connection is expired".into()
            }
        );
        assert_eq!(
            read(&frame("SYSTEM", "KEEPALIVE", json!(""))).route,
            Route::OtherSystem
        );
    }

    #[test]
    fn a_card_click_carries_its_data_unparsed_and_needs_it_as_a_string() {
        assert_eq!(
            read(&frame("CALLBACK", CARD_TOPIC, json!("{\"outTrackId\":\"t\"}"))),
            RoutedFrame {
                route: Route::Card {
                    message_id: "m1".into(),
                    data: "{\"outTrackId\":\"t\"}".into()
                },
                kind: "CALLBACK",
                topic: CARD_TOPIC,
            }
        );
        assert_eq!(
            read(&frame("CALLBACK", CARD_TOPIC, json!({"outTrackId": "t"}))).route,
            Route::Malformed {
                message_id: "m1".into()
            }
        );
        // Only a CALLBACK frame is a click.
        assert_eq!(
            read(&frame("EVENT", CARD_TOPIC, json!("{}"))).route,
            Route::Unknown {
                message_id: "m1".into()
            }
        );
    }

    #[test]
    fn a_card_ack_carries_the_answer_inside_response_as_a_json_string() {
        let answer = json!({"cardData": {"cardParamMap": {"status": "working"}}});
        let v: Value = serde_json::from_str(&ack_card("m9", &answer)).unwrap();
        assert_eq!(v["code"], json!(200));
        assert_eq!(v["headers"]["messageId"], json!("m9"));
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"response": answer}));
    }

    #[test]
    fn other_topics_and_types_are_unknown() {
        for (kind, topic) in [("EVENT", "*"), ("PUSH", BOT_TOPIC)] {
            assert_eq!(
                read(&frame(kind, topic, json!("{}"))).route,
                Route::Unknown {
                    message_id: "m1".into()
                },
                "{kind} {topic}"
            );
        }
    }

    #[test]
    fn a_frame_without_a_message_id_cannot_be_acknowledged() {
        assert_eq!(read("not json").route, Route::Invalid);
        assert_eq!(
            read(r#"{"type":"CALLBACK","headers":{"topic":"x"}}"#).route,
            Route::Invalid
        );
        let invalid = read("not json");
        assert_eq!((invalid.kind, invalid.topic), ("invalid", "-"));
    }

    #[test]
    fn numeric_header_values_are_read_as_strings() {
        let text = r#"{"type":"SYSTEM","headers":{"messageId":42,"topic":"ping"},"data":"d"}"#;
        assert_eq!(
            read(text).route,
            Route::Ping {
                message_id: "42".into(),
                data: "d".into()
            }
        );
    }

    #[test]
    fn labels_never_carry_a_topic_from_the_network() {
        let labels = |f: String| {
            let r = read(&f);
            (r.kind, r.topic)
        };
        assert_eq!(
            labels(frame("CALLBACK", BOT_TOPIC, json!(""))),
            ("CALLBACK", BOT_TOPIC)
        );
        assert_eq!(
            labels(frame("EVENT", "/made/up/1", json!(""))),
            ("EVENT", "other")
        );
        assert_eq!(labels(frame("WEIRD", "ping", json!(""))), ("other", "ping"));
    }

    #[test]
    fn an_ack_echoes_the_message_id_with_string_data() {
        let v: Value = serde_json::from_str(&ack_empty("m1", 200)).unwrap();
        assert_eq!(
            v,
            json!({"code": 200, "headers": {"contentType": "application/json", "messageId": "m1"}, "message": "OK", "data": "{\"response\":null}"})
        );
        let v: Value = serde_json::from_str(&ack("m2", 200, "{\"opaque\":\"o\"}")).unwrap();
        assert_eq!(v["data"], json!("{\"opaque\":\"o\"}"));
        assert_eq!(v["headers"]["messageId"], json!("m2"));
    }
}
