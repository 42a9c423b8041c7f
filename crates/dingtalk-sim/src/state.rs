//! What the simulator knows and remembers (groups, departments, tokens, reply sessions, the
//! calls and replies it received, queued faults), and the gate every API call passes first:
//! an injected fault, then the per-API rate limit, then the monthly quota.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::error_answer;
use crate::clock::now_ms;
use crate::{SimConfig, random_hex, stream};

/// The six group switches `im/group/update` takes in `managementOptions` and `chat/get`
/// answers in `chat_info`, in that order.
pub const MANAGEMENT_FIELDS: [&str; 6] = [
    "chatBannedType",
    "mentionAllAuthority",
    "validationType",
    "searchable",
    "showHistoryType",
    "managementType",
];

/// A fault to inject into the next call of one API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// Answer this errcode (legacy APIs) or HTTP 400 with this code (new APIs).
    Errcode { errcode: i64 },
    /// Answer this HTTP status with an empty body.
    Http { status: u16 },
    /// Wait, then answer normally.
    Delay { ms: u64 },
    /// Never answer (the client's timeout must fire).
    Hang,
    /// New-style APIs: answer this HTTP status with `{code, message}`, e.g. 400
    /// `permession.checkFailed` "群主不在应用可见性内".
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// Send headers, then break the connection.
    Drop,
    /// Answer 302 with this `Location` (clients must not follow it).
    Redirect { location: String },
    /// Answer 200 with a JSON body of this many bytes.
    HugeBody { bytes: usize },
    /// Token APIs only: issue the token as usual but state this lifetime (`expires_in`,
    /// `expireIn`) in the answer, e.g. an absurd `i64::MAX`. Other APIs ignore it.
    TokenTtl { expires_in: i64 },
}

/// A group the simulator knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimGroup {
    pub open_conversation_id: String,
    pub chatid: String,
    pub title: String,
    /// Current private-chat switch: `true` when members may not add each other.
    pub dm_prohibited: bool,
    /// The six switches of [`MANAGEMENT_FIELDS`] by name, 0 or 1 (all 0 for a new group).
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, i64>,
    /// The owner's userId.
    #[serde(default)]
    pub owner: String,
    /// 1 normal, 2 disbanded.
    #[serde(default = "normal_status")]
    pub status: i64,
}

fn normal_status() -> i64 {
    1
}

/// The root department's id: the whole organisation.
pub const ROOT_DEPT: i64 = 1;

/// A department of the simulated organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimDepartment {
    pub dept_id: i64,
    /// `None` for the root department ([`ROOT_DEPT`]).
    pub parent_id: Option<i64>,
    pub name: String,
    /// The openConversationId of its department group (a group made with
    /// [`Simulator::add_group`](crate::Simulator::add_group)); `department/get` answers that group's chatid.
    pub group: Option<String>,
}

/// Why a department could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepartmentError {
    #[error("department ids are positive, not {0}")]
    BadId(i64),
    #[error("the root department {ROOT_DEPT} has no parent, and every other department has one")]
    BadParent,
    #[error("parent department {0} does not exist")]
    UnknownParent(i64),
    #[error("department {0} cannot be its own ancestor")]
    Cycle(i64),
    #[error("no group {0}: add it with add_group first")]
    UnknownGroup(String),
}

/// A recorded API call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedCall {
    pub api: String,
    pub at_ms: u64,
    /// The access token presented (query or header), if any.
    pub access_token: Option<String>,
    /// The path parameter or JSON body, as received.
    pub body: Value,
    /// The errcode (or HTTP status for new APIs) the simulator answered; 0 for success,
    /// -2 for a dropped connection, -3 for a call it never answered.
    pub answer: i64,
}

/// A reply received on a sessionWebhook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedReply {
    /// `session` (sendBySession) or `group-message` (the robot group-message API).
    pub via: String,
    pub open_conversation_id: String,
    pub at_ms: u64,
    /// The message text (`text.content` or `markdown.text`).
    pub content: String,
    pub at_user_ids: Vec<String>,
    pub body: Value,
    /// The session key it was posted to (sendBySession only).
    pub session: Option<String>,
    /// When it arrived, for latency measurements.
    #[serde(skip)]
    pub received: Instant,
}

pub(crate) struct Session {
    pub(crate) cid: String,
    pub(crate) expires_ms: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) groups: Vec<SimGroup>,
    pub(crate) legacy_tokens: HashMap<String, u64>,
    pub(crate) modern_tokens: HashMap<String, u64>,
    pub(crate) issued: Vec<String>,
    pub(crate) sessions: HashMap<String, Session>,
    pub(crate) calls: Vec<RecordedCall>,
    pub(crate) replies: Vec<RecordedReply>,
    pub(crate) faults: HashMap<String, VecDeque<Fault>>,
    /// Faults for the next call of an API (key `.0`) that names one group's chatid (`.1`).
    pub(crate) chat_faults: HashMap<(String, String), VecDeque<Fault>>,
    pub(crate) window: HashMap<String, VecDeque<Instant>>,
    /// In the order they were added, which is the order `listsubid` lists children in.
    pub(crate) departments: Vec<SimDepartment>,
    /// The organisation's monthly API quota.
    pub(crate) quota: crate::quota::Quota,
    /// Interactive cards, their callback addresses and queued failures.
    pub(crate) cards: crate::cards::Cards,
}

pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) base_url: String,
    pub(crate) stream: Arc<stream::Gateway>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// What the simulator does before serving a call: faults, the rate limit, the monthly quota.
pub(crate) enum Gate {
    Proceed,
    /// Proceed, and a token answer states this lifetime instead of the real one.
    StateTtl(i64),
    Respond(HttpResponse),
}

pub(crate) async fn gate(shared: &Shared, api: &str, new_style: bool) -> Gate {
    gate_chat(shared, api, &Value::Null, new_style).await
}

/// [`gate`] for a call whose JSON `body` names a group's `chatid`: a fault injected for
/// that group ([`Simulator::inject_for_chat`](crate::Simulator::inject_for_chat)) comes first, and a call it fails is recorded
/// with its body, so that a test can tell whose call it hit.
pub(crate) async fn gate_chat(shared: &Shared, api: &str, body: &Value, new_style: bool) -> Gate {
    let (fault, body) = {
        let mut s = shared.state();
        let for_chat = body
            .get("chatid")
            .and_then(Value::as_str)
            .and_then(|c| s.chat_faults.get_mut(&(api.to_owned(), c.to_owned())))
            .and_then(VecDeque::pop_front);
        match for_chat {
            Some(f) => (Some(f), body.clone()),
            None => (s.faults.get_mut(api).and_then(VecDeque::pop_front), Value::Null),
        }
    };
    let mut proceed = Gate::Proceed;
    match fault {
        Some(Fault::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(Fault::Hang) => {
            record(shared, api, None, body.clone(), -3);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Gate::Respond(HttpResponse::GatewayTimeout().finish());
        }
        Some(Fault::Http { status }) => {
            record(shared, api, None, body.clone(), i64::from(status));
            let status = actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
            return Gate::Respond(HttpResponse::build(status).finish());
        }
        Some(Fault::Status {
            status,
            code,
            message,
        }) => {
            record(shared, api, None, body.clone(), i64::from(status));
            let status = actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
            return Gate::Respond(
                HttpResponse::build(status)
                    .json(json!({"code": code, "message": message, "requestid": random_hex(16)})),
            );
        }
        Some(Fault::Errcode { errcode }) => {
            record(shared, api, None, body.clone(), errcode);
            return Gate::Respond(error_answer(new_style, errcode, "injected fault"));
        }
        Some(Fault::Redirect { location }) => {
            record(shared, api, None, body.clone(), 302);
            return Gate::Respond(
                HttpResponse::Found()
                    .insert_header(("location", location))
                    .finish(),
            );
        }
        Some(Fault::HugeBody { bytes }) => {
            record(shared, api, None, body.clone(), -4);
            let body = format!("{{\"errcode\":0,\"pad\":\"{}\"}}", "x".repeat(bytes));
            return Gate::Respond(HttpResponse::Ok().content_type("application/json").body(body));
        }
        Some(Fault::Drop) => {
            record(shared, api, None, body.clone(), -2);
            let broken = futures_util::stream::once(async {
                Err::<web::Bytes, _>(std::io::Error::other("connection dropped by the simulator"))
            });
            return Gate::Respond(HttpResponse::Ok().streaming(broken));
        }
        Some(Fault::TokenTtl { expires_in }) => proceed = Gate::StateTtl(expires_in),
        None => {}
    }
    let limit = shared.config.rate_limit_per_sec as usize;
    if limit > 0 {
        let mut s = shared.state();
        let window = s.window.entry(api.to_owned()).or_default();
        let now = Instant::now();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        if window.len() >= limit {
            drop(s);
            record(shared, api, None, body.clone(), 90018);
            return Gate::Respond(error_answer(new_style, 90018, "当前企业调用该接口的QPS超过上限"));
        }
        window.push_back(now);
    }
    if crate::quota::counted(api) && !shared.state().quota.take(now_ms()) {
        record(shared, api, None, body, 90020);
        return Gate::Respond(error_answer(new_style, 90020, "企业调用该接口的次数超过每月上限"));
    }
    proceed
}

pub(crate) fn record(shared: &Shared, api: &str, access_token: Option<String>, body: Value, answer: i64) {
    shared.state().calls.push(RecordedCall {
        api: api.to_owned(),
        at_ms: now_ms(),
        access_token,
        body,
        answer,
    });
}
