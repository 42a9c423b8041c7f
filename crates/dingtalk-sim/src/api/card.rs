//! The interactive-card APIs (docs/dingtalk.md, Simulator fidelity):
//! `v1.0/card/instances/createAndDeliver`, `PUT v1.0/card/instances` and
//! `v1.0/card/callbacks/register`. Like the other v1.0 APIs they pass the gate (faults, the
//! per-API rate limit, the monthly quota) and want the new-style token in
//! `x-acs-dingtalk-access-token`; what they keep lives in [`crate::cards`].

use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::api::token::check_token;
use crate::api::{self, header_token};
use crate::cards::transcript::transcribe;
use crate::cards::{CardChange, CardFailMode, Route, SimCard, card_data, private_data};
use crate::clock::now_ms;
use crate::random_hex;
use crate::state::{Gate, Shared, State, gate, record};

/// The prefix of a group's `openSpaceId`.
const GROUP_SPACE: &str = "dtv1.card//IM_GROUP.";

/// A refused call: HTTP status, DingTalk `code` and `message`.
struct Refusal(u16, &'static str, &'static str);

/// One served call: records it, then answers.
struct Call<'a> {
    shared: &'a Shared,
    api: &'static str,
    token: Option<String>,
    /// The body as recorded (secrets redacted).
    body: Value,
}

impl Call<'_> {
    fn answer(&self, outcome: Result<(i64, Value), Refusal>) -> HttpResponse {
        match outcome {
            Ok((recorded, body)) => {
                record(
                    self.shared,
                    self.api,
                    self.token.clone(),
                    self.body.clone(),
                    recorded,
                );
                HttpResponse::Ok().json(body)
            }
            Err(Refusal(status, code, message)) => {
                record(
                    self.shared,
                    self.api,
                    self.token.clone(),
                    self.body.clone(),
                    i64::from(status),
                );
                let status = actix_web::http::StatusCode::from_u16(status)
                    .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
                HttpResponse::build(status)
                    .json(json!({"code": code, "message": message, "requestid": random_hex(16)}))
            }
        }
    }
}

fn authorised(s: &State, token: Option<&str>) -> Result<(), Refusal> {
    check_token(&s.modern_tokens, token).map_err(|_| {
        Refusal(
            401,
            "InvalidAuthentication",
            "access_token过期或者不存在，需要重新获取",
        )
    })
}

const BUSY: Refusal = Refusal(500, "system.busy", "injected failure: 系统繁忙");

fn non_empty<'v>(v: &'v Value, field: &str) -> Option<&'v str> {
    v.get(field).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// `POST /v1.0/card/instances/createAndDeliver`: one card into one group.
pub(crate) async fn create_and_deliver(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Gate::Respond(r) = gate(&shared, api::CARD_CREATE, true).await {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let call = Call {
        shared: &shared,
        api: api::CARD_CREATE,
        token: header_token(&req),
        body: v.clone(),
    };
    let outcome = create(
        &mut shared.state(),
        &shared.config.app_key,
        call.token.as_deref(),
        &v,
    );
    call.answer(outcome)
}

fn create(s: &mut State, app_key: &str, token: Option<&str>, v: &Value) -> Result<(i64, Value), Refusal> {
    authorised(s, token)?;
    if s.cards.take_failure(CardFailMode::Status) {
        return Err(BUSY);
    }
    let card = new_card(s, app_key, v)?;
    let delivered = !s.cards.take_failure(CardFailMode::Deliver);
    let result = json!({
        "outTrackId": card.out_track_id,
        "deliverResults": [{
            "spaceType": "IM_GROUP",
            "spaceId": card.conversation_id,
            "success": delivered,
            "carrierId": if delivered { random_hex(24) } else { String::new() },
            "errorMsg": if delivered { "" } else { "injected failure: 投放失败" },
        }],
    });
    if !delivered {
        // The HTTP status, which tells it from a success (recorded as 0).
        return Ok((200, json!({"success": true, "result": result})));
    }
    let private = card.private.clone();
    s.cards.cards.push(card.clone());
    transcribe(s, &card, "card", &private, v.clone());
    Ok((0, json!({"success": true, "result": result})))
}

/// The card a `createAndDeliver` body describes, or why it is refused.
fn new_card(s: &State, app_key: &str, v: &Value) -> Result<SimCard, Refusal> {
    let template_id = non_empty(v, "cardTemplateId").ok_or(Refusal(
        400,
        "MissingcardTemplateId",
        "cardTemplateId is mandatory for this action.",
    ))?;
    let out_track_id = non_empty(v, "outTrackId").ok_or(Refusal(
        400,
        "MissingoutTrackId",
        "outTrackId is mandatory for this action.",
    ))?;
    if s.cards.cards.iter().any(|c| c.out_track_id == out_track_id) {
        return Err(Refusal(400, "param.cardAlreadyExist", "卡片已存在"));
    }
    let cid = non_empty(v, "openSpaceId")
        .and_then(|space| space.strip_prefix(GROUP_SPACE))
        .filter(|cid| s.groups.iter().any(|g| g.open_conversation_id == *cid))
        .ok_or(Refusal(400, "param.openSpaceIdInvalid", "openSpaceId不合法"))?;
    let robot_code = v
        .pointer("/imGroupOpenDeliverModel/robotCode")
        .and_then(Value::as_str)
        .filter(|code| *code == app_key)
        .ok_or(Refusal(400, "param.robotCodeInvalid", "robotCode不合法"))?;
    let callback_type = match v.get("callbackType").and_then(Value::as_str) {
        Some(t @ ("STREAM" | "HTTP")) => t,
        _ => {
            return Err(Refusal(
                400,
                "param.callbackTypeInvalid",
                "callbackType must be STREAM or HTTP",
            ));
        }
    };
    let route_key = match callback_type {
        "HTTP" => Some(non_empty(v, "callbackRouteKey").ok_or(Refusal(
            400,
            "param.callbackRouteKeyEmpty",
            "HTTP callbacks need a callbackRouteKey",
        ))?),
        _ => None,
    };
    if v.get("cardData").is_none_or(Value::is_null) {
        return Err(Refusal(
            400,
            "MissingcardData",
            "cardData is mandatory for this action.",
        ));
    }
    let params = card_data(v, "cardData").ok().flatten().ok_or(Refusal(
        400,
        "param.cardParamMapInvalid",
        "cardParamMap的值必须是字符串",
    ))?;
    let private = private_data(v).map_err(|()| {
        Refusal(
            400,
            "param.privateDataInvalid",
            "privateData的cardParamMap的值必须是字符串",
        )
    })?;
    Ok(SimCard {
        out_track_id: out_track_id.to_owned(),
        conversation_id: cid.to_owned(),
        template_id: template_id.to_owned(),
        callback_type: callback_type.to_owned(),
        callback_route_key: route_key.map(str::to_owned),
        robot_code: robot_code.to_owned(),
        params,
        private,
        updates: 0,
        created_ms: now_ms(),
    })
}

/// `PUT /v1.0/card/instances`: merges (`updateCardDataByKey`, `updatePrivateDataByKey`) or
/// replaces a card's public and private parameters.
pub(crate) async fn update_card(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Gate::Respond(r) = gate(&shared, api::CARD_UPDATE, true).await {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let call = Call {
        shared: &shared,
        api: api::CARD_UPDATE,
        token: header_token(&req),
        body: v.clone(),
    };
    let outcome = update(&mut shared.state(), call.token.as_deref(), &v);
    call.answer(outcome)
}

fn update(s: &mut State, token: Option<&str>, v: &Value) -> Result<(i64, Value), Refusal> {
    authorised(s, token)?;
    if s.cards.take_failure(CardFailMode::Update) {
        return Err(BUSY);
    }
    let out_track_id = non_empty(v, "outTrackId").ok_or(Refusal(
        400,
        "MissingoutTrackId",
        "outTrackId is mandatory for this action.",
    ))?;
    let params = card_data(v, "cardData")
        .map_err(|()| Refusal(400, "param.cardParamMapInvalid", "cardParamMap的值必须是字符串"))?;
    let private = private_data(v).map_err(|()| {
        Refusal(
            400,
            "param.privateDataInvalid",
            "privateData的cardParamMap的值必须是字符串",
        )
    })?;
    let (params_by_key, private_by_key) = CardChange::options(v);
    let change = CardChange {
        params,
        private,
        params_by_key,
        private_by_key,
    };
    if !crate::cards::transcript::update(s, out_track_id, &change, v.clone()) {
        return Err(Refusal(400, "param.cardNotExist", "卡片不存在"));
    }
    Ok((0, json!({"success": true, "result": true})))
}

/// `POST /v1.0/card/callbacks/register`: the URL (and secret) HTTP callbacks of a route key
/// go to. One key, one URL: another URL needs `forceUpdate`.
pub(crate) async fn register_callback(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Gate::Respond(r) = gate(&shared, api::CARD_REGISTER, true).await {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // The secret is kept, never recorded.
    let mut recorded = v.clone();
    if let Some(secret) = recorded.get_mut("apiSecret") {
        *secret = json!("<redacted>");
    }
    let call = Call {
        shared: &shared,
        api: api::CARD_REGISTER,
        token: header_token(&req),
        body: recorded,
    };
    let outcome = register(&mut shared.state(), call.token.as_deref(), &v);
    call.answer(outcome)
}

fn register(s: &mut State, token: Option<&str>, v: &Value) -> Result<(i64, Value), Refusal> {
    authorised(s, token)?;
    let key = non_empty(v, "callbackRouteKey").ok_or(Refusal(
        400,
        "MissingcallbackRouteKey",
        "callbackRouteKey is mandatory for this action.",
    ))?;
    let url = non_empty(v, "callbackUrl").ok_or(Refusal(
        400,
        "MissingcallbackUrl",
        "callbackUrl is mandatory for this action.",
    ))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Refusal(400, "param.callbackUrlInvalid", "callbackUrl不合法"));
    }
    let force = v.get("forceUpdate").and_then(Value::as_bool).unwrap_or(false);
    if !force && s.cards.routes.get(key).is_some_and(|r| r.url != url) {
        return Err(Refusal(
            400,
            "param.callbackRouteKeyExist",
            "callbackRouteKey已注册其他地址",
        ));
    }
    let secret = non_empty(v, "apiSecret").map_or_else(|| random_hex(32), str::to_owned);
    s.cards.routes.insert(
        key.to_owned(),
        Route {
            url: url.to_owned(),
            secret: SecretString::from(secret.clone()),
        },
    );
    Ok((
        0,
        json!({"success": true, "result": {"callbackUrl": url, "apiSecret": secret}}),
    ))
}
