//! API names the simulator records calls under and takes faults for.
//!
//! The routes serving them, one family a file: `token.rs` (`gettoken`,
//! `oauth2/accessToken`), `group.rs` (the private-chat switch, chatid conversion,
//! `im/group/update`, `chat/get`), `department.rs` (`department/listsubid`,
//! `department/get`), `robot.rs` (`sendBySession`, `groupMessages/send`), `card.rs` (the
//! interactive-card APIs: `createAndDeliver`, `PUT card/instances`, `callbacks/register`)
//! and `gateway.rs` (Stream mode's `connections/open`).

pub(crate) mod card;
pub(crate) mod department;
pub(crate) mod gateway;
pub(crate) mod group;
pub(crate) mod robot;
pub(crate) mod token;

use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::random_hex;

pub const GET_TOKEN: &str = "gettoken";
pub const ACCESS_TOKEN: &str = "oauth2_access_token";
pub const FRIEND_SWITCH: &str = "friendswitch_update";
pub const CONVERT: &str = "convert_to_open_conversation_id";
pub const SEND_BY_SESSION: &str = "send_by_session";
pub const GROUP_MESSAGE: &str = "robot_group_messages_send";
pub const STREAM_OPEN: &str = "gateway_connections_open";
pub const GROUP_UPDATE: &str = "im_group_update";
pub const CHAT_GET: &str = "chat_get";
pub const DEPARTMENT_LISTSUBID: &str = "department_listsubid";
pub const DEPARTMENT_GET: &str = "department_get";
pub const CARD_CREATE: &str = "card_create_and_deliver";
pub const CARD_UPDATE: &str = "card_instances_update";
pub const CARD_REGISTER: &str = "card_callbacks_register";

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    pub(crate) access_token: Option<String>,
}

pub(crate) fn header_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("x-acs-dingtalk-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(crate) fn error_answer(new_style: bool, errcode: i64, message: &str) -> HttpResponse {
    if new_style {
        let (status, code) = match errcode {
            90018 => (403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi".to_owned()),
            90020 => (403, "Forbidden.AccessDenied.ApiCountLimitForOrg".to_owned()),
            60011 => (
                403,
                "Forbidden.AccessDenied.AccessTokenPermissionDenied".to_owned(),
            ),
            c => (400, c.to_string()),
        };
        let status =
            actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
        HttpResponse::build(status)
            .json(json!({"code": code, "message": message, "requestid": random_hex(16)}))
    } else {
        HttpResponse::Ok().json(json!({"errcode": errcode, "errmsg": message, "request_id": random_hex(16)}))
    }
}
