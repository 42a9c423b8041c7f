//! The department APIs, `topapi/v2/department/listsubid` and `topapi/v2/department/get`
//! (legacy tokens), over the organisation built with [`crate::Simulator::add_department`].

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::api::token::check_token;
use crate::api::{self, TokenQuery, error_answer};
use crate::state::{Gate, Shared, gate, record};
use crate::{SimDepartment, random_hex};

/// Reads `{"dept_id": N}` from a department API's body; the errcode when it is missing.
fn dept_id_of(body: &[u8]) -> Result<(Value, i64), (Value, i64, &'static str)> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return Err((Value::Null, 43009, "post参数需要json类型")),
    };
    match v.get("dept_id").and_then(Value::as_i64) {
        Some(id) => Ok((v, id)),
        None => Err((v, 40035, "缺少参数 dept_id")),
    }
}

/// The common start of both department APIs: the gate, the body, the legacy token and the
/// department. `Err` is the answer to send.
async fn department_call(
    shared: &Shared,
    api: &str,
    token: Option<String>,
    body: &[u8],
) -> Result<(SimDepartment, Vec<i64>, Option<String>), HttpResponse> {
    if let Gate::Respond(r) = gate(shared, api, false).await {
        return Err(r);
    }
    let (v, dept_id) = match dept_id_of(body) {
        Ok(found) => found,
        Err((v, code, message)) => {
            record(shared, api, token, v, code);
            return Err(error_answer(false, code, message));
        }
    };
    let s = shared.state();
    if let Err(code) = check_token(&s.legacy_tokens, token.as_deref()) {
        drop(s);
        record(shared, api, token, v, code);
        return Err(error_answer(false, code, "不合法的access_token"));
    }
    let Some(dept) = s.departments.iter().find(|d| d.dept_id == dept_id).cloned() else {
        drop(s);
        record(shared, api, token, v, 60003);
        return Err(error_answer(false, 60003, "部门不存在"));
    };
    let children = s
        .departments
        .iter()
        .filter(|d| d.parent_id == Some(dept_id))
        .map(|d| d.dept_id)
        .collect();
    // A group removed since keeps its department, without a group.
    let chatid = dept.group.as_ref().and_then(|cid| {
        s.groups
            .iter()
            .find(|g| &g.open_conversation_id == cid)
            .map(|g| g.chatid.clone())
    });
    drop(s);
    record(shared, api, token, v, 0);
    Ok((dept, children, chatid))
}

/// `POST /topapi/v2/department/listsubid?access_token=…` `{"dept_id": N}`: the ids of the
/// department's direct sub-departments, or 60003 for an unknown department.
pub(crate) async fn department_listsubid(
    shared: web::Data<Shared>,
    q: web::Query<TokenQuery>,
    body: web::Bytes,
) -> HttpResponse {
    match department_call(&shared, api::DEPARTMENT_LISTSUBID, q.access_token.clone(), &body).await {
        Ok((_, children, _)) => HttpResponse::Ok().json(json!({
            "errcode": 0,
            "errmsg": "ok",
            "result": {"dept_id_list": children},
            "request_id": random_hex(16),
        })),
        Err(answer) => answer,
    }
}

/// `POST /topapi/v2/department/get?access_token=…` `{"dept_id": N}`: the department's
/// name, parent and, when it has a department group, `dept_group_chat_id`; 60003 for an
/// unknown department.
pub(crate) async fn department_get(
    shared: web::Data<Shared>,
    q: web::Query<TokenQuery>,
    body: web::Bytes,
) -> HttpResponse {
    match department_call(&shared, api::DEPARTMENT_GET, q.access_token.clone(), &body).await {
        Ok((dept, _, chatid)) => {
            let mut result = json!({
                "dept_id": dept.dept_id,
                "name": dept.name,
                "create_dept_group": chatid.is_some(),
                "group_contain_sub_dept": false,
                "auto_add_user": true,
                "order": dept.dept_id,
            });
            if let Some(parent) = dept.parent_id {
                result["parent_id"] = json!(parent);
            }
            if let Some(chatid) = chatid {
                result["dept_group_chat_id"] = json!(chatid);
            }
            HttpResponse::Ok().json(json!({
                "errcode": 0,
                "errmsg": "ok",
                "result": result,
                "request_id": random_hex(16),
            }))
        }
        Err(answer) => answer,
    }
}
