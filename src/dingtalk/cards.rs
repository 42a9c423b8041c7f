//! The interactive-card APIs: create a card and deliver it to a group
//! (`card/instances/createAndDeliver`), update it in place (`PUT card/instances`), and
//! register the address of HTTP card callbacks (`card/callbacks/register`). Each goes
//! through [`DingTalk::call`] like every v1.0 call: pacing, the monthly quota of the
//! handle's class, retries and token refresh. What the answers mean, and what is not
//! confirmed, is in docs/dingtalk.md ("Interactive cards"). A change to a card request or to
//! how its answer is read belongs here; what a card says belongs to `src/cards/`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::wire::{read_body, status_error, transport, truncate};
use super::{Api, ApiError, DingTalk, TokenKind};

/// The permission the card APIs need (互动卡片实例写权限).
pub const CARD_PERMISSION: &str = "Card.Instance.Write";

/// How DingTalk delivers the clicks on a card's buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardCallback {
    /// On the Stream connections, topic `/v1.0/card/instances/callback`.
    Stream,
    /// To the URL registered for `route_key` (`POST /card-callback`).
    Http { route_key: String },
}

/// A card to create in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSend {
    /// `card_template_id`.
    pub template_id: String,
    /// Our id of the card, unique per card: a second create with it does nothing.
    pub out_track_id: String,
    /// The group's openConversationId.
    pub conversation_id: String,
    pub callback: CardCallback,
    /// The card's `cardParamMap`.
    pub params: BTreeMap<String, String>,
    /// userId → that user's private `cardParamMap`.
    pub private: BTreeMap<String, BTreeMap<String, String>>,
}

impl DingTalk {
    /// `createAndDeliver`: creates `card` and delivers it to its group as the robot. Err
    /// when the status or `code` says so, and when any `deliverResults[].success` is not
    /// true ([`ApiError::Undelivered`]). After an attempt whose outcome is unknown (a
    /// timeout, a broken connection), a retry answered `param.cardAlreadyExist` means the
    /// first attempt created the card: that is success.
    #[tracing::instrument(skip_all, fields(out_track_id = %card.out_track_id, group = %card.conversation_id))]
    pub async fn create_card(&self, card: &CardSend) -> Result<(), ApiError> {
        let body = &create_body(card, &self.shared.robot_code);
        let unclear = &AtomicBool::new(false);
        self.call(Api::CardCreate, Some(TokenKind::Modern), |tok| async move {
            let answer = self
                .card_request(Method::POST, "/v1.0/card/instances/createAndDeliver", &tok, body)
                .await;
            match answer {
                Ok(v) => read_created(&v),
                Err(ApiError::Status { code, .. })
                    if code == "param.cardAlreadyExist" && unclear.load(Ordering::Relaxed) =>
                {
                    Ok(())
                }
                Err(e) => {
                    if matches!(e, ApiError::Timeout | ApiError::Transport(_)) {
                        unclear.store(true, Ordering::Relaxed);
                    }
                    Err(e)
                }
            }
        })
        .await
    }

    /// `PUT card/instances`: merges `params` into the card `out_track_id` and each user's
    /// `private` params into that user's view (`updateCardDataByKey`,
    /// `updatePrivateDataByKey`: keys left out keep their values). Nothing to update calls
    /// nothing.
    #[tracing::instrument(skip(self, params, private))]
    pub async fn update_card(
        &self,
        out_track_id: &str,
        params: &BTreeMap<String, String>,
        private: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<(), ApiError> {
        if params.is_empty() && private.is_empty() {
            return Ok(());
        }
        let body = &update_body(out_track_id, params, private);
        self.call(Api::CardUpdate, Some(TokenKind::Modern), |tok| async move {
            let v = self
                .card_request(Method::PUT, "/v1.0/card/instances", &tok, body)
                .await?;
            read_updated(&v)
        })
        .await
    }

    /// `card/callbacks/register`: DingTalk is to POST the clicks on cards sent with
    /// `route_key` to `url`, signed with `secret`. Without `force` DingTalk refuses a key
    /// registered to another URL; with it, the URL replaces the old one.
    #[tracing::instrument(skip(self, secret))]
    pub async fn register_card_callback(
        &self,
        url: &str,
        route_key: &str,
        secret: &SecretString,
        force: bool,
    ) -> Result<(), ApiError> {
        let body = &json!({
            "callbackRouteKey": route_key,
            "callbackUrl": url,
            "apiSecret": secret.expose_secret(),
            "forceUpdate": force,
        });
        self.call(Api::CardRegister, Some(TokenKind::Modern), |tok| async move {
            let v = self
                .card_request(Method::POST, "/v1.0/card/callbacks/register", &tok, body)
                .await?;
            read_registered(&v, url)
        })
        .await
    }

    /// One card request: the JSON answer of a 2xx, the error of anything else.
    async fn card_request(
        &self,
        method: Method,
        path: &str,
        token: &Option<SecretString>,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let resp = self
            .modern_request(method, path, token)?
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let (status, v) = read_body(resp).await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(card_error(status, &v))
        }
    }
}

/// A `cardParamMap` object.
fn param_map(params: &BTreeMap<String, String>) -> Value {
    json!({ "cardParamMap": params })
}

/// userId → `{"cardParamMap": …}`.
fn private_map(private: &BTreeMap<String, BTreeMap<String, String>>) -> Value {
    Value::Object(
        private
            .iter()
            .map(|(user, params)| (user.clone(), param_map(params)))
            .collect::<Map<_, _>>(),
    )
}

/// The `createAndDeliver` request of `card`, sent by the robot `robot_code`.
fn create_body(card: &CardSend, robot_code: &str) -> Value {
    let mut body = json!({
        "cardTemplateId": card.template_id,
        "outTrackId": card.out_track_id,
        "cardData": param_map(&card.params),
        "openSpaceId": format!("dtv1.card//IM_GROUP.{}", card.conversation_id),
        "imGroupOpenSpaceModel": {"supportForward": false},
        "imGroupOpenDeliverModel": {"robotCode": robot_code},
        "userIdType": 1,
    });
    match &card.callback {
        CardCallback::Stream => body["callbackType"] = json!("STREAM"),
        CardCallback::Http { route_key } => {
            body["callbackType"] = json!("HTTP");
            body["callbackRouteKey"] = json!(route_key);
        }
    }
    if !card.private.is_empty() {
        body["privateData"] = private_map(&card.private);
    }
    body
}

/// The `PUT card/instances` request: merge by key, staff userIds.
fn update_body(
    out_track_id: &str,
    params: &BTreeMap<String, String>,
    private: &BTreeMap<String, BTreeMap<String, String>>,
) -> Value {
    let mut body = json!({
        "outTrackId": out_track_id,
        "cardUpdateOptions": {"updateCardDataByKey": true, "updatePrivateDataByKey": true},
        "userIdType": 1,
    });
    if !params.is_empty() {
        body["cardData"] = param_map(params);
    }
    if !private.is_empty() {
        body["privateData"] = private_map(private);
    }
    body
}

/// A 2xx answer that still says `success: false`: an error with its `code` when it gives
/// one (so that the advice can read it; the status shows as 200), else a decode error.
fn unsuccessful(v: &Value, api: &str) -> Option<ApiError> {
    if v.get("success") != Some(&Value::Bool(false)) {
        return None;
    }
    Some(match status_error(200, v) {
        ApiError::Status { code, .. } if code.is_empty() => {
            ApiError::Decode(format!("{api} answered success: false"))
        }
        e => e,
    })
}

/// Reads a `createAndDeliver` answer: every `deliverResults` entry must say `success: true`.
fn read_created(v: &Value) -> Result<(), ApiError> {
    if let Some(e) = unsuccessful(v, "createAndDeliver") {
        return Err(e);
    }
    let results = match v.pointer("/result/deliverResults") {
        // DingTalk documents the list; an answer without it is taken at its HTTP status.
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(results)) => results,
        Some(_) => {
            return Err(ApiError::Decode(
                "createAndDeliver answered deliverResults that is not a list".into(),
            ));
        }
    };
    if results.is_empty() {
        return Err(ApiError::Undelivered("DingTalk delivered it nowhere".into()));
    }
    match results
        .iter()
        .find(|r| r.get("success") != Some(&Value::Bool(true)))
    {
        None => Ok(()),
        Some(failed) => {
            let reason = failed
                .get("errorMsg")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .unwrap_or("DingTalk gave no reason");
            Err(ApiError::Undelivered(truncate(reason, 200).to_owned()))
        }
    }
}

/// Reads a `PUT card/instances` answer (`{"success": true, "result": true}`).
fn read_updated(v: &Value) -> Result<(), ApiError> {
    if let Some(e) = unsuccessful(v, "card update") {
        return Err(e);
    }
    if v.get("result") == Some(&Value::Bool(false)) {
        return Err(ApiError::Decode("card update answered result: false".into()));
    }
    Ok(())
}

/// Reads a `card/callbacks/register` answer; it echoes the URL (and the secret, which is
/// never read): a different URL means the key kept its old one.
fn read_registered(v: &Value, url: &str) -> Result<(), ApiError> {
    if let Some(e) = unsuccessful(v, "card/callbacks/register") {
        return Err(e);
    }
    match v.pointer("/result/callbackUrl").and_then(Value::as_str) {
        Some(kept) if kept != url => Err(ApiError::Decode(format!(
            "card/callbacks/register kept the route key on another URL ({})",
            truncate(kept, 200)
        ))),
        _ => Ok(()),
    }
}

/// The error of a non-2xx card answer. A 403 that refuses permission names the scope
/// DingTalk asks for (`accessdenieddetail.requiredScopes`), or else the one the card APIs
/// need, so that the advice can name it.
fn card_error(status: u16, v: &Value) -> ApiError {
    let mut e = status_error(status, v);
    if let ApiError::Status {
        status: 403,
        code,
        message,
    } = &mut e
        && !code.contains("QpsLimit")
        && !code.contains("ApiCountLimit")
    {
        let scopes: Vec<&str> = v
            .pointer("/accessdenieddetail/requiredScopes")
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(Value::as_str).take(5).collect())
            .unwrap_or_default();
        if !scopes.is_empty() {
            message.push_str(&format!(
                " (requiredScopes: {})",
                truncate(&scopes.join(", "), 200)
            ));
        } else if code.contains("PermissionDenied") || code.contains("AccessDenied") {
            message.push_str(&format!(" (the card APIs need permission {CARD_PERMISSION})"));
        }
    }
    e
}

#[cfg(test)]
#[path = "cards_tests.rs"]
mod tests;
