//! The robot's replies: `robot/sendBySession` (a callback's sessionWebhook) and
//! `v1.0/robot/groupMessages/send`, both recorded as [`RecordedReply`]s.

use std::sync::MutexGuard;
use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::token::check_token;
use crate::api::{self, error_answer, header_token};
use crate::clock::now_ms;
use crate::state::{Gate, Shared, State, gate, record};
use crate::{RecordedReply, random_hex};

#[derive(Deserialize)]
pub(crate) struct SessionQuery {
    session: Option<String>,
}

pub(crate) async fn send_by_session(
    shared: web::Data<Shared>,
    q: web::Query<SessionQuery>,
    body: web::Bytes,
) -> HttpResponse {
    if let Gate::Respond(r) = gate(&shared, api::SEND_BY_SESSION, false).await {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = shared.state();
    let cid = q
        .session
        .as_deref()
        .and_then(|k| s.sessions.get(k))
        .filter(|sess| sess.expires_ms > now_ms())
        .map(|sess| sess.cid.clone());
    let Some(cid) = cid else {
        drop(s);
        record(&shared, api::SEND_BY_SESSION, None, v, 300001);
        return error_answer(false, 300001, "session 不存在");
    };
    let content = v
        .pointer("/text/content")
        .or_else(|| v.pointer("/markdown/text"))
        .and_then(Value::as_str);
    let Some(content) = content else {
        drop(s);
        record(&shared, api::SEND_BY_SESSION, None, v, 40035);
        return error_answer(false, 40035, "缺少参数 content");
    };
    let at_user_ids = v
        .pointer("/at/atUserIds")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    s.replies.push(RecordedReply {
        via: "session".into(),
        open_conversation_id: cid,
        at_ms: now_ms(),
        content: content.to_owned(),
        at_user_ids,
        body: v.clone(),
        session: q.session.clone(),
        received: Instant::now(),
    });
    drop(s);
    record(&shared, api::SEND_BY_SESSION, None, v, 0);
    HttpResponse::Ok().json(json!({"errcode": 0, "errmsg": "ok"}))
}

/// `POST /v1.0/robot/groupMessages/send` (sampleText / sampleMarkdown only).
pub(crate) async fn group_message(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Gate::Respond(r) = gate(&shared, api::GROUP_MESSAGE, true).await {
        return r;
    }
    let token = header_token(&req);
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = shared.state();
    let bad = |s: MutexGuard<'_, State>, status: u16, code: &str, message: &str| {
        drop(s);
        record(
            &shared,
            api::GROUP_MESSAGE,
            token.clone(),
            v.clone(),
            i64::from(status),
        );
        let status =
            actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
        HttpResponse::build(status).json(json!({"code": code, "message": message}))
    };
    if check_token(&s.modern_tokens, token.as_deref()).is_err() {
        return bad(
            s,
            401,
            "InvalidAuthentication",
            "access_token过期或者不存在，需要重新获取",
        );
    }
    if v.get("robotCode").and_then(Value::as_str) != Some(shared.config.app_key.as_str()) {
        return bad(s, 400, "invalidParameter.robotCode.empty", "robotCode无效");
    }
    let cid = v
        .get("openConversationId")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !s.groups.iter().any(|g| g.open_conversation_id == cid) {
        return bad(s, 400, "invalid.openConversationId", "openConversationId无效");
    }
    let param: Value = v
        .get("msgParam")
        .and_then(Value::as_str)
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or(Value::Null);
    let content = match v.get("msgKey").and_then(Value::as_str) {
        Some("sampleText") => param.get("content"),
        Some("sampleMarkdown") => param.get("text"),
        _ => None,
    }
    .and_then(Value::as_str)
    .map(str::to_owned);
    let Some(content) = content else {
        return bad(s, 400, "invalidParameter.msgParam", "msgParam无效");
    };
    s.replies.push(RecordedReply {
        via: "group-message".into(),
        open_conversation_id: cid,
        at_ms: now_ms(),
        content,
        at_user_ids: Vec::new(),
        body: v.clone(),
        session: None,
        received: Instant::now(),
    });
    drop(s);
    record(&shared, api::GROUP_MESSAGE, token, v, 0);
    HttpResponse::Ok().json(json!({"processQueryKey": random_hex(24)}))
}
