//! A button press played as DingTalk does: the click's callback goes the way the card's
//! `callbackType` says (a CALLBACK frame on the card topic to a Stream connection that
//! subscribed it, or a POST to the URL registered for its route key, signed with the
//! registered secret), and the answer (the ACK data's `response`, or the HTTP body) is
//! applied to the card: public parameters into the card, `userPrivateData` into the
//! clicker's private ones.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use super::{CardChange, CardPress, CardPressOutcome, SentPress, SimCard, card_data};
use crate::clock::now_ms;
use crate::sign::card_signature;
use crate::state::Shared;
use crate::stream::new_message_id;

/// How long a press waits for the ACK or the HTTP answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The callback JSON of a click (the Stream frame's `data`, the HTTP body).
fn click(card: &SimCard, p: &CardPress) -> Value {
    let content = json!({
        "cardPrivateData": {"actionIds": [p.action], "params": {"action": p.action}},
    });
    json!({
        "type": "actionCallback",
        "outTrackId": card.out_track_id,
        "corpId": "dingsimcorp",
        "userId": p.user_id,
        "userIdType": 1,
        "spaceType": "IM_GROUP",
        "spaceId": card.conversation_id,
        "extension": "{}",
        "content": content.to_string(),
    })
}

/// What came back from the robot.
struct Answer {
    delivered: bool,
    status: Option<i64>,
    response: Option<Value>,
    latency_ms: u64,
}

impl Answer {
    fn undelivered() -> Self {
        Self {
            delivered: false,
            status: None,
            response: None,
            latency_ms: 0,
        }
    }
}

fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Plays `p`; `None` when there is no such card.
pub(crate) async fn press(shared: &Shared, p: &CardPress) -> Option<CardPressOutcome> {
    let (card, message_id, sent, route) = {
        let mut s = shared.state();
        let card = s
            .cards
            .cards
            .iter()
            .find(|c| c.out_track_id == p.out_track_id)?
            .clone();
        let message_id = p.message_id.clone().unwrap_or_else(new_message_id);
        let sent = s
            .cards
            .presses
            .entry(message_id.clone())
            .or_insert_with(|| SentPress {
                data: click(&card, p).to_string(),
                timestamp: p.timestamp.clone().unwrap_or_else(|| now_ms().to_string()),
                user_id: p.user_id.clone(),
            })
            .clone();
        let route = card
            .callback_route_key
            .as_ref()
            .and_then(|k| s.cards.routes.get(k))
            .map(|r| (r.url.clone(), r.secret.clone()));
        (card, message_id, sent, route)
    };
    let answer = if card.callback_type == "HTTP" {
        match route {
            Some((url, secret)) => over_http(&url, &secret, p, &sent).await,
            None => Answer::undelivered(),
        }
    } else {
        over_stream(shared, &message_id, &sent).await
    };
    let applied = answer.status == Some(200)
        && answer
            .response
            .as_ref()
            .is_some_and(|x| apply(shared, &card.out_track_id, &sent.user_id, x));
    Some(CardPressOutcome {
        delivered: answer.delivered,
        status: answer.status,
        response: answer.response,
        applied,
        latency_ms: answer.latency_ms,
        message_id,
    })
}

async fn over_stream(shared: &Shared, message_id: &str, sent: &SentPress) -> Answer {
    let start = Instant::now();
    let Some(ack) = shared
        .stream
        .push_card_callback(message_id, &sent.timestamp, sent.data.clone())
    else {
        return Answer::undelivered();
    };
    let Ok(Ok(ack)) = tokio::time::timeout(ANSWER_WAIT, ack).await else {
        return Answer {
            delivered: true,
            status: None,
            response: None,
            latency_ms: ms_since(start),
        };
    };
    // DingTalk expects `data` as a JSON string; an object is taken as it is.
    let data = match &ack.data {
        Value::String(text) => serde_json::from_str(text).ok(),
        other => Some(other.clone()),
    };
    Answer {
        delivered: true,
        status: Some(ack.code),
        response: data
            .and_then(|d| d.get("response").cloned())
            .filter(|r| !r.is_null()),
        latency_ms: ms_since(start),
    }
}

async fn over_http(url: &str, secret: &SecretString, p: &CardPress, sent: &SentPress) -> Answer {
    let timestamp = p.timestamp.as_deref().unwrap_or(&sent.timestamp);
    let signature = p
        .signature
        .clone()
        .unwrap_or_else(|| card_signature(secret.expose_secret(), timestamp));
    let Ok(http) = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ANSWER_WAIT)
        .build()
    else {
        return Answer::undelivered();
    };
    let start = Instant::now();
    let sent = http
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-ddpaas-signature-timestamp", timestamp)
        .header("x-ddpaas-signature", signature)
        .body(sent.data.clone())
        .send()
        .await;
    let Ok(resp) = sent else {
        return Answer::undelivered();
    };
    let status = i64::from(resp.status().as_u16());
    let body = resp.bytes().await.unwrap_or_default();
    Answer {
        delivered: true,
        status: Some(status),
        response: serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(|r| !r.is_null()),
        latency_ms: ms_since(start),
    }
}

/// Applies a click's answer `x` to the card, as DingTalk does; `false` when it carries no
/// update or a malformed one (nothing changes then).
fn apply(shared: &Shared, out_track_id: &str, user_id: &str, x: &Value) -> bool {
    let Ok(params) = card_data(x, "cardData") else {
        return false;
    };
    let Ok(mine) = card_data(x, "userPrivateData") else {
        return false;
    };
    if params.is_none() && mine.is_none() {
        return false;
    }
    let (params_by_key, private_by_key) = CardChange::options(x);
    let change = CardChange {
        params,
        private: mine
            .map(|m| BTreeMap::from([(user_id.to_owned(), m)]))
            .unwrap_or_default(),
        params_by_key,
        private_by_key,
    };
    super::transcript::update(&mut shared.state(), out_track_id, &change, x.clone())
}
