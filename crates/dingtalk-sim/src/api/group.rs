//! The group APIs: the private-chat switch (`topapi/chat/member/friendswitch/update`),
//! chatid conversion (`convertToOpenConversationId`), `v1.0/im/group/update` and `chat/get`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::token::check_token;
use crate::api::{self, TokenQuery, error_answer, header_token};
use crate::state::{Gate, Shared, gate, gate_chat, record};
use crate::{MANAGEMENT_FIELDS, random_hex};

pub(crate) async fn friendswitch(
    shared: web::Data<Shared>,
    q: web::Query<TokenQuery>,
    body: web::Bytes,
) -> HttpResponse {
    let named = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Gate::Respond(r) = gate_chat(&shared, api::FRIEND_SWITCH, &named, false).await {
        return r;
    }
    let token = q.access_token.clone();
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            record(&shared, api::FRIEND_SWITCH, token, Value::Null, 43009);
            return error_answer(false, 43009, "post参数需要json类型");
        }
    };
    let mut s = shared.state();
    if let Err(code) = check_token(&s.legacy_tokens, token.as_deref()) {
        drop(s);
        record(&shared, api::FRIEND_SWITCH, token, v, code);
        return error_answer(false, code, "不合法的access_token");
    }
    let chatid = v.get("chatid").and_then(Value::as_str).unwrap_or("").to_owned();
    let prohibit = v.get("is_prohibit").and_then(Value::as_bool);
    let answer = match (chatid.is_empty(), prohibit) {
        (true, _) | (_, None) => 40036,
        (false, Some(p)) => match s.groups.iter_mut().find(|g| g.chatid == chatid) {
            Some(g) => {
                g.dm_prohibited = p;
                0
            }
            None => 34001,
        },
    };
    drop(s);
    record(&shared, api::FRIEND_SWITCH, token, v, answer);
    match answer {
        0 => HttpResponse::Ok()
            .json(json!({"success": true, "errcode": 0, "errmsg": "ok", "request_id": random_hex(16)})),
        40036 => error_answer(false, 40036, "参数为空"),
        _ => error_answer(false, 34001, "无效的chatid"),
    }
}

pub(crate) async fn convert(
    shared: web::Data<Shared>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    if let Gate::Respond(r) = gate(&shared, api::CONVERT, true).await {
        return r;
    }
    let chat_id = path.into_inner();
    let token = header_token(&req);
    let s = shared.state();
    if check_token(&s.modern_tokens, token.as_deref()).is_err() {
        drop(s);
        record(&shared, api::CONVERT, token, json!(chat_id), 401);
        return HttpResponse::Unauthorized().json(json!({
            "code": "InvalidAuthentication",
            "message": "access_token过期或者不存在，需要重新获取"
        }));
    }
    let cid = s
        .groups
        .iter()
        .find(|g| g.chatid == chat_id)
        .map(|g| g.open_conversation_id.clone());
    drop(s);
    match cid {
        Some(cid) => {
            record(&shared, api::CONVERT, token, json!(chat_id), 0);
            HttpResponse::Ok().json(json!({"openConversationId": cid}))
        }
        None => {
            record(&shared, api::CONVERT, token, json!(chat_id), 400);
            HttpResponse::BadRequest().json(json!({"code": "invalideChatId", "message": "不合法的chatId"}))
        }
    }
}

/// `POST /v1.0/im/group/update`: stores the `managementOptions` switches of the group
/// `chatid`. Answers `{"success": true}`, or DingTalk's `{code, message}` shapes: 401 for a
/// bad token, 400 `parameter.invalid` for a missing or unknown chatid or a value other than
/// 0/1, 400 `permession.checkFailed` for a disbanded group.
pub(crate) async fn group_update(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Gate::Respond(r) = gate_chat(&shared, api::GROUP_UPDATE, &v, true).await {
        return r;
    }
    let token = header_token(&req);
    let answer = |status: u16, code: &str, message: &str| {
        record(
            &shared,
            api::GROUP_UPDATE,
            token.clone(),
            v.clone(),
            i64::from(status),
        );
        let status =
            actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
        HttpResponse::build(status)
            .json(json!({"code": code, "message": message, "requestid": random_hex(16)}))
    };
    let mut s = shared.state();
    if check_token(&s.modern_tokens, token.as_deref()).is_err() {
        drop(s);
        return answer(
            401,
            "InvalidAuthentication",
            "access_token过期或者不存在，需要重新获取",
        );
    }
    let chatid = v.get("chatid").and_then(Value::as_str).unwrap_or("");
    let options = v.get("managementOptions").and_then(Value::as_object);
    let valid = options.is_some_and(|o| {
        o.iter()
            .all(|(k, val)| MANAGEMENT_FIELDS.contains(&k.as_str()) && matches!(val.as_i64(), Some(0 | 1)))
    });
    let Some(group) = s
        .groups
        .iter_mut()
        .find(|g| g.chatid == chatid && !chatid.is_empty())
    else {
        drop(s);
        return answer(400, "parameter.invalid", "chatid不合法");
    };
    if !valid {
        drop(s);
        return answer(400, "parameter.invalid", "managementOptions参数不合法");
    }
    if group.status != 1 {
        drop(s);
        return answer(400, "permession.checkFailed", "群已解散");
    }
    for (k, val) in options.into_iter().flatten() {
        group.options.insert(k.clone(), val.as_i64().unwrap_or(0));
    }
    drop(s);
    record(&shared, api::GROUP_UPDATE, token, v, 0);
    HttpResponse::Ok().json(json!({"success": true}))
}

#[derive(Deserialize)]
pub(crate) struct ChatGetQuery {
    access_token: Option<String>,
    chatid: Option<String>,
}

/// `GET /chat/get?access_token=…&chatid=…`: the group's `chat_info` (the six switches,
/// name, owner, status, …), or a legacy errcode (40014 bad token, 49000 unknown chatid).
pub(crate) async fn chat_get(shared: web::Data<Shared>, q: web::Query<ChatGetQuery>) -> HttpResponse {
    if let Gate::Respond(r) = gate(&shared, api::CHAT_GET, false).await {
        return r;
    }
    let token = q.access_token.clone();
    let chatid = q.chatid.clone().unwrap_or_default();
    let s = shared.state();
    if let Err(code) = check_token(&s.legacy_tokens, token.as_deref()) {
        drop(s);
        record(&shared, api::CHAT_GET, token, json!(chatid), code);
        return error_answer(false, code, "不合法的access_token");
    }
    let group = s
        .groups
        .iter()
        .find(|g| g.chatid == chatid && !chatid.is_empty())
        .cloned();
    drop(s);
    let Some(g) = group else {
        record(&shared, api::CHAT_GET, token, json!(chatid), 49000);
        return error_answer(false, 49000, "缺少参数chatid或chatid不合法");
    };
    let mut info = json!({
        "chatid": g.chatid,
        "name": g.title,
        "owner": g.owner,
        "useridlist": [g.owner],
        "conversationTag": 2,
        "status": g.status,
        "icon": "",
    });
    for (k, val) in &g.options {
        info[k.as_str()] = json!(val);
    }
    record(&shared, api::CHAT_GET, token, json!(chatid), 0);
    HttpResponse::Ok().json(json!({"errcode": 0, "errmsg": "ok", "chat_info": info}))
}
