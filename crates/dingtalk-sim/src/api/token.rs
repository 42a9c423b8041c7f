//! The token APIs: `gettoken` (legacy) and `v1.0/oauth2/accessToken` (new style). Each
//! answers the same token again while it is valid, and extends it.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{self, error_answer};
use crate::clock::now_ms;
use crate::random_hex;
use crate::state::{Gate, Shared, gate, record};

/// Checks a token against the issued set: `Ok` or the legacy errcode.
pub(crate) fn check_token(tokens: &HashMap<String, u64>, token: Option<&str>) -> Result<(), i64> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(41001);
    };
    match tokens.get(token) {
        None => Err(40014),
        Some(exp) if *exp <= now_ms() => Err(42001),
        Some(_) => Ok(()),
    }
}

fn issue(tokens: &mut HashMap<String, u64>, ttl_secs: u64) -> String {
    let now = now_ms();
    tokens.retain(|_, exp| *exp > now);
    // DingTalk returns the same token while it is valid and extends it.
    let token = tokens.keys().next().cloned().unwrap_or_else(|| random_hex(32));
    tokens.insert(token.clone(), now + ttl_secs * 1000);
    token
}

#[derive(Deserialize)]
pub(crate) struct GetTokenQuery {
    appkey: Option<String>,
    appsecret: Option<String>,
}

pub(crate) async fn gettoken(shared: web::Data<Shared>, q: web::Query<GetTokenQuery>) -> HttpResponse {
    let stated_ttl = match gate(&shared, api::GET_TOKEN, false).await {
        Gate::Respond(r) => return r,
        Gate::StateTtl(t) => Some(t),
        Gate::Proceed => None,
    };
    let ok = q.appkey.as_deref() == Some(shared.config.app_key.as_str())
        && q.appsecret.as_deref() == Some(shared.config.app_secret.as_str());
    if !ok {
        record(&shared, api::GET_TOKEN, None, Value::Null, 40001);
        return error_answer(false, 40001, "不合法的corpid或corpsecret");
    }
    let ttl = shared.config.token_ttl_secs;
    let token = {
        let mut s = shared.state();
        let t = issue(&mut s.legacy_tokens, ttl);
        s.issued.push(t.clone());
        t
    };
    record(&shared, api::GET_TOKEN, None, Value::Null, 0);
    let expires_in = stated_ttl.unwrap_or(i64::try_from(ttl).unwrap_or(i64::MAX));
    HttpResponse::Ok()
        .json(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in}))
}

pub(crate) async fn access_token(shared: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let stated_ttl = match gate(&shared, api::ACCESS_TOKEN, true).await {
        Gate::Respond(r) => return r,
        Gate::StateTtl(t) => Some(t),
        Gate::Proceed => None,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ok = v.get("appKey").and_then(Value::as_str) == Some(shared.config.app_key.as_str())
        && v.get("appSecret").and_then(Value::as_str) == Some(shared.config.app_secret.as_str());
    if !ok {
        record(&shared, api::ACCESS_TOKEN, None, Value::Null, 400);
        return HttpResponse::BadRequest()
            .json(json!({"code": "invalidClientIdOrSecret", "message": "无效的clientId或者clientSecret"}));
    }
    let ttl = shared.config.token_ttl_secs;
    let token = {
        let mut s = shared.state();
        let t = issue(&mut s.modern_tokens, ttl);
        s.issued.push(t.clone());
        t
    };
    record(&shared, api::ACCESS_TOKEN, None, Value::Null, 0);
    let expire_in = stated_ttl.unwrap_or(i64::try_from(ttl).unwrap_or(i64::MAX));
    HttpResponse::Ok().json(json!({"accessToken": token, "expireIn": expire_in}))
}
