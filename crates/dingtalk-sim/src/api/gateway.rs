//! Stream mode's HTTP half: `v1.0/gateway/connections/open` checks the app's credentials
//! and has the gateway ([`crate::stream`]) issue a ticket.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::api;
use crate::random_hex;
use crate::state::{Gate, Shared, gate, record};

/// `POST /v1.0/gateway/connections/open`: registers a Stream connection and answers the
/// gateway's endpoint with a single-use ticket.
pub(crate) async fn stream_open(shared: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    if let Gate::Respond(r) = gate(&shared, api::STREAM_OPEN, true).await {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // The secret is checked, not kept.
    let mut recorded = v.clone();
    if let Some(secret) = recorded.get_mut("clientSecret") {
        *secret = json!("<redacted>");
    }
    if let Some(status) = shared.stream.take_refusal() {
        record(&shared, api::STREAM_OPEN, None, recorded, i64::from(status));
        let (code, message) = match status {
            401 => ("Unauthorized", "injected refusal: 无效的clientId或者clientSecret"),
            403 => ("Forbidden.AccessDenied", "injected refusal: 没有调用该接口的权限"),
            _ => ("ServiceUnavailable", "injected refusal: 系统繁忙"),
        };
        let status = actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
        return HttpResponse::build(status)
            .json(json!({"code": code, "message": message, "requestid": random_hex(16)}));
    }
    if !v.is_object() {
        record(&shared, api::STREAM_OPEN, None, recorded, 400);
        return HttpResponse::BadRequest().json(
            json!({"code": "InvalidParameter", "message": "请求体不是JSON对象", "requestid": random_hex(16)}),
        );
    }
    let ok = v.get("clientId").and_then(Value::as_str) == Some(shared.config.app_key.as_str())
        && v.get("clientSecret").and_then(Value::as_str) == Some(shared.config.app_secret.as_str());
    if !ok {
        record(&shared, api::STREAM_OPEN, None, recorded, 401);
        return HttpResponse::Unauthorized().json(json!({
            "code": "Unauthorized",
            "message": "无效的clientId或者clientSecret",
            "requestid": random_hex(16)
        }));
    }
    match shared.stream.open(&v) {
        Ok(ticket) => {
            record(&shared, api::STREAM_OPEN, None, recorded, 0);
            HttpResponse::Ok().json(json!({"endpoint": shared.stream.endpoint(), "ticket": ticket}))
        }
        Err(why) => {
            record(&shared, api::STREAM_OPEN, None, recorded, 400);
            HttpResponse::BadRequest().json(json!({
                "code": "InvalidParameter.subscriptions",
                "message": why,
                "requestid": random_hex(16)
            }))
        }
    }
}
