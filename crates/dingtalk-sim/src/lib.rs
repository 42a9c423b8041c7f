//! A DingTalk simulator: a real, stateful HTTP server speaking the parts of DingTalk's API
//! that dingops uses (tokens, the private-chat switch, chatid conversion, replies), with
//! DingTalk's error shapes, token expiry, its per-API rate limit and injectable faults, plus
//! [`chat`], which plays DingTalk's side of the robot callback and signs it with [`sign`],
//! and [`stream`], DingTalk's Stream mode: `connections/open` and a WebSocket gateway.
//!
//! dingops' demo, integration tests and benchmarks run against it; the `dingtalk-sim` binary
//! (and `dingops sim`) serves it alone. It does not depend on dingops, so dingops' signature
//! verifier is checked against an independent signer.

pub mod chat;
pub mod cli;
pub mod clock;
pub mod sign;
pub mod stream;

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::clock::now_ms;

/// API names the simulator records calls under and takes faults for.
pub mod api {
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
}

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

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub app_key: String,
    pub app_secret: String,
    /// Lifetime of the tokens it issues, in seconds.
    pub token_ttl_secs: u64,
    /// Calls per second per API before it answers 90018; 0 turns the limit off.
    pub rate_limit_per_sec: u32,
    /// Where the Stream gateway listens (port 0: any free port).
    pub stream_listen: String,
    /// How long the Stream gateway waits for an ACK before it pushes a frame again.
    pub stream_repush_after_ms: u64,
    /// How long a connection stays open after the gateway sent it `disconnect`.
    pub stream_disconnect_grace_ms: u64,
    /// Lifetime of a `connections/open` ticket.
    pub stream_ticket_ttl_secs: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            app_key: "dingdemo-app-key".into(),
            app_secret: "demo-app-secret-not-for-production".into(),
            token_ttl_secs: 7200,
            rate_limit_per_sec: 20,
            stream_listen: "127.0.0.1:0".into(),
            stream_repush_after_ms: 5000,
            stream_disconnect_grace_ms: 10_000,
            stream_ticket_ttl_secs: 90,
        }
    }
}

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
    /// [`Simulator::add_group`]); `department/get` answers that group's chatid.
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

struct Session {
    cid: String,
    expires_ms: u64,
}

#[derive(Default)]
struct State {
    groups: Vec<SimGroup>,
    legacy_tokens: HashMap<String, u64>,
    modern_tokens: HashMap<String, u64>,
    issued: Vec<String>,
    sessions: HashMap<String, Session>,
    calls: Vec<RecordedCall>,
    replies: Vec<RecordedReply>,
    faults: HashMap<String, VecDeque<Fault>>,
    /// Faults for the next call of an API (key `.0`) that names one group's chatid (`.1`).
    chat_faults: HashMap<(String, String), VecDeque<Fault>>,
    window: HashMap<String, VecDeque<Instant>>,
    /// In the order they were added, which is the order `listsubid` lists children in.
    departments: Vec<SimDepartment>,
}

struct Shared {
    config: SimConfig,
    state: Mutex<State>,
    base_url: String,
    stream: Arc<stream::Gateway>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// A running simulator.
pub struct Simulator {
    shared: Arc<Shared>,
    handle: ServerHandle,
}

pub(crate) fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

impl Simulator {
    /// Starts the simulator on `listener`, and its Stream gateway on
    /// `config.stream_listen` (both spawned on the current tokio runtime).
    pub fn start(config: SimConfig, listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let stream = stream::Gateway::start(
            TcpListener::bind(&config.stream_listen)?,
            stream::Timing {
                repush_after: Duration::from_millis(config.stream_repush_after_ms),
                disconnect_grace: Duration::from_millis(config.stream_disconnect_grace_ms),
                ticket_ttl: Duration::from_secs(config.stream_ticket_ttl_secs),
            },
        )?;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                departments: vec![SimDepartment {
                    dept_id: ROOT_DEPT,
                    parent_id: None,
                    name: "Root".into(),
                    group: None,
                }],
                ..State::default()
            }),
            base_url: format!("http://{addr}"),
            stream,
        });
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(1024 * 1024))
                .route("/gettoken", web::get().to(gettoken))
                .route("/v1.0/oauth2/accessToken", web::post().to(access_token))
                .route(
                    "/topapi/chat/member/friendswitch/update",
                    web::post().to(friendswitch),
                )
                .route(
                    "/v1.0/im/chat/{chat_id}/convertToOpenConversationId",
                    web::post().to(convert),
                )
                .route("/v1.0/im/group/update", web::post().to(group_update))
                .route("/chat/get", web::get().to(chat_get))
                .route(
                    "/topapi/v2/department/listsubid",
                    web::post().to(department_listsubid),
                )
                .route("/topapi/v2/department/get", web::post().to(department_get))
                .route("/robot/sendBySession", web::post().to(send_by_session))
                .route("/v1.0/robot/groupMessages/send", web::post().to(group_message))
                .route("/v1.0/gateway/connections/open", web::post().to(stream_open))
                .route("/_sim/groups", web::get().to(control_groups))
                .route("/_sim/groups", web::post().to(control_add_group))
                .route("/_sim/departments", web::get().to(control_departments))
                .route("/_sim/departments", web::post().to(control_add_department))
                .route("/_sim/sessions", web::post().to(control_open_session))
                .route("/_sim/calls", web::get().to(control_calls))
                .route("/_sim/replies", web::get().to(control_replies))
                .route("/_sim/faults", web::post().to(control_fault))
                .route("/_sim/revoke-tokens", web::post().to(control_revoke))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self { shared, handle })
    }

    /// The base URL (`http://127.0.0.1:port`), both `oapi_base` and `api_base`.
    pub fn url(&self) -> &str {
        &self.shared.base_url
    }

    /// The Stream gateway: push frames, play its faults, read what clients answered.
    pub fn stream(&self) -> &stream::Gateway {
        &self.shared.stream
    }

    /// `host:port`, for `reply_hosts`.
    pub fn host_port(&self) -> &str {
        self.shared.base_url.trim_start_matches("http://")
    }

    /// The most calls of `api` it received within any one second.
    pub fn peak_calls_per_second(&self, api: &str) -> usize {
        let times: Vec<u64> = self.calls(Some(api)).iter().map(|c| c.at_ms).collect();
        peak_in_window(times, 1000)
    }

    /// Its configuration, including the app credentials it accepts.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Adds (or replaces) a group.
    pub fn add_group(&self, open_conversation_id: &str, chatid: &str, title: &str) {
        add_group(&self.shared, open_conversation_id, chatid, title);
    }

    /// Adds (or replaces) the department `dept_id` under `parent_id`, with `group` (the
    /// openConversationId of a group made with [`Self::add_group`]) as its department
    /// group. The organisation starts with the root department 1, named "Root" and without
    /// a group; adding department 1 renames it or gives it a group. A replaced department
    /// keeps its place among its siblings and its own sub-departments.
    pub fn add_department(
        &self,
        dept_id: i64,
        parent_id: Option<i64>,
        name: &str,
        group: Option<&str>,
    ) -> Result<(), DepartmentError> {
        add_department(
            &self.shared,
            SimDepartment {
                dept_id,
                parent_id,
                name: name.to_owned(),
                group: group.map(str::to_owned),
            },
        )
    }

    /// Seeds the small organisation `dingops sim` starts with, and its department groups:
    ///
    /// ```text
    /// 1 Demo Corp            group "Demo Corp all hands"
    /// ├── 2 Engineering      group "Engineering"
    /// │   ├── 3 Backend      group "Backend team"
    /// │   └── 4 Frontend     (no group)
    /// └── 5 Sales            group "Sales"
    ///     └── 6 Sales East   (no group)
    /// ```
    pub fn seed_demo_departments(&self) -> Result<(), DepartmentError> {
        for (cid, chatid, title) in DEMO_GROUPS {
            self.add_group(cid, chatid, title);
        }
        let [all, eng, backend, sales] = DEMO_GROUPS.map(|(cid, _, _)| Some(cid));
        self.add_department(ROOT_DEPT, None, "Demo Corp", all)?;
        self.add_department(2, Some(ROOT_DEPT), "Engineering", eng)?;
        self.add_department(3, Some(2), "Backend", backend)?;
        self.add_department(4, Some(2), "Frontend", None)?;
        self.add_department(5, Some(ROOT_DEPT), "Sales", sales)?;
        self.add_department(6, Some(5), "Sales East", None)
    }

    /// The departments, in the order they were added.
    pub fn departments(&self) -> Vec<SimDepartment> {
        self.shared.state().departments.clone()
    }

    /// A group's current state.
    pub fn group(&self, open_conversation_id: &str) -> Option<SimGroup> {
        self.shared
            .state()
            .groups
            .iter()
            .find(|g| g.open_conversation_id == open_conversation_id)
            .cloned()
    }

    /// Changes one switch of a group as its owner would in the DingTalk client, behind
    /// dingops' back; `false` when the group or the field is unknown.
    pub fn set_option(&self, open_conversation_id: &str, field: &str, value: i64) -> bool {
        let mut s = self.shared.state();
        match s
            .groups
            .iter_mut()
            .find(|g| g.open_conversation_id == open_conversation_id)
            .and_then(|g| g.options.get_mut(field))
        {
            Some(v) => {
                *v = value;
                true
            }
            None => false,
        }
    }

    /// Opens a reply session for a group; returns the sessionWebhook and its expiry (ms).
    pub fn open_session(&self, open_conversation_id: &str, ttl: Duration) -> (String, u64) {
        open_session(&self.shared, open_conversation_id, ttl)
    }

    /// How many replies arrived so far.
    pub fn reply_count(&self) -> usize {
        self.shared.state().replies.len()
    }

    /// Calls received, optionally of one API.
    pub fn calls(&self, api: Option<&str>) -> Vec<RecordedCall> {
        self.shared
            .state()
            .calls
            .iter()
            .filter(|c| api.is_none_or(|a| c.api == a))
            .cloned()
            .collect()
    }

    /// Replies received.
    pub fn replies(&self) -> Vec<RecordedReply> {
        self.shared.state().replies.clone()
    }

    /// The replies received since the last call, removed from the records (and from
    /// [`Self::reply_count`]): a long run (a benchmark) keeps the simulator's memory flat by
    /// taking them as they come.
    pub fn take_replies(&self) -> Vec<RecordedReply> {
        std::mem::take(&mut self.shared.state().replies)
    }

    /// The calls received since the last call, removed from the records (see
    /// [`Self::take_replies`]).
    pub fn take_calls(&self) -> Vec<RecordedCall> {
        std::mem::take(&mut self.shared.state().calls)
    }

    /// Waits until at least `n` replies arrived or `timeout` passed; returns them all.
    pub async fn wait_for_replies(&self, n: usize, timeout: Duration) -> Vec<RecordedReply> {
        let end = Instant::now() + timeout;
        loop {
            let replies = self.replies();
            if replies.len() >= n || Instant::now() >= end {
                return replies;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The valid legacy tokens it issued.
    pub fn legacy_tokens(&self) -> Vec<String> {
        self.shared.state().legacy_tokens.keys().cloned().collect()
    }

    /// Every token it ever issued, for tests that prove tokens are never logged.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.state().issued.clone()
    }

    /// Queues a fault for the next call of `api`.
    pub fn inject(&self, api: &str, fault: Fault) {
        self.shared
            .state()
            .faults
            .entry(api.to_owned())
            .or_default()
            .push_back(fault);
    }

    /// Queues a fault for the next call of `api` that names the group `chatid`
    /// (`friendswitch/update`, `im/group/update`); calls for other groups go on as usual. It
    /// comes before any fault queued for the whole API by [`Self::inject`].
    pub fn inject_for_chat(&self, api: &str, chatid: &str, fault: Fault) {
        self.shared
            .state()
            .chat_faults
            .entry((api.to_owned(), chatid.to_owned()))
            .or_default()
            .push_back(fault);
    }

    /// Expires every open reply session (sendBySession answers 300001 from now on).
    pub fn expire_sessions(&self) {
        self.shared.state().sessions.clear();
    }

    /// Forgets every issued token, as if DingTalk revoked them.
    pub fn revoke_tokens(&self) {
        let mut s = self.shared.state();
        s.legacy_tokens.clear();
        s.modern_tokens.clear();
    }

    /// Stops the server and the Stream gateway (its connections are cut).
    pub async fn stop(&self) {
        self.shared.stream.stop();
        self.handle.stop(false).await;
    }
}

impl Drop for Simulator {
    /// The gateway's tasks hold it alive; a simulator that goes away takes them along.
    fn drop(&mut self) {
        self.shared.stream.stop();
    }
}

/// The most of `times` (ms) that fall within any `window_ms`-long span.
fn peak_in_window(mut times: Vec<u64>, window_ms: u64) -> usize {
    times.sort_unstable();
    let mut start = 0;
    let mut peak = 0;
    for (end, t) in times.iter().enumerate() {
        while times[start] + window_ms <= *t {
            start += 1;
        }
        peak = peak.max(end + 1 - start);
    }
    peak
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_counts_calls_within_any_one_second_span() {
        assert_eq!(super::peak_in_window(vec![], 1000), 0);
        assert_eq!(super::peak_in_window(vec![0, 999, 1000, 1500, 1999], 1000), 3);
        assert_eq!(super::peak_in_window(vec![3000, 0, 1000, 2000], 1000), 1);
    }
}

fn add_group(shared: &Shared, cid: &str, chatid: &str, title: &str) {
    let mut s = shared.state();
    s.groups
        .retain(|g| g.open_conversation_id != cid && g.chatid != chatid);
    s.groups.push(SimGroup {
        open_conversation_id: cid.to_owned(),
        chatid: chatid.to_owned(),
        title: title.to_owned(),
        dm_prohibited: false,
        options: MANAGEMENT_FIELDS.iter().map(|f| ((*f).to_owned(), 0)).collect(),
        owner: "owner001".to_owned(),
        status: 1,
    });
}

/// The department groups of [`Simulator::seed_demo_departments`]: openConversationId,
/// chatid, title.
pub const DEMO_GROUPS: [(&str, &str, &str); 4] = [
    (
        "cidDemoAllHands000000==",
        "chatdemoallhands",
        "Demo Corp all hands",
    ),
    ("cidDemoEngineering0000==", "chatdemoengineering", "Engineering"),
    ("cidDemoBackend00000000==", "chatdemobackend", "Backend team"),
    ("cidDemoSales0000000000==", "chatdemosales", "Sales"),
];

fn add_department(shared: &Shared, dept: SimDepartment) -> Result<(), DepartmentError> {
    if dept.dept_id <= 0 {
        return Err(DepartmentError::BadId(dept.dept_id));
    }
    let mut s = shared.state();
    match dept.parent_id {
        None if dept.dept_id == ROOT_DEPT => {}
        Some(parent) if dept.dept_id != ROOT_DEPT => {
            // Walk up from the parent: it must exist, and the new department must not be
            // among its ancestors (a loop would hang a naive walk, but DingTalk has none).
            let mut at = Some(parent);
            while let Some(id) = at {
                if id == dept.dept_id {
                    return Err(DepartmentError::Cycle(id));
                }
                at = match s.departments.iter().find(|d| d.dept_id == id) {
                    Some(d) => d.parent_id,
                    None if id == parent => return Err(DepartmentError::UnknownParent(parent)),
                    None => None,
                };
            }
        }
        _ => return Err(DepartmentError::BadParent),
    }
    if let Some(g) = &dept.group
        && !s.groups.iter().any(|x| &x.open_conversation_id == g)
    {
        return Err(DepartmentError::UnknownGroup(g.clone()));
    }
    match s.departments.iter_mut().find(|d| d.dept_id == dept.dept_id) {
        Some(old) => *old = dept,
        None => s.departments.push(dept),
    }
    Ok(())
}

fn open_session(shared: &Shared, cid: &str, ttl: Duration) -> (String, u64) {
    let session = random_hex(32);
    let expires_ms = now_ms() + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
    shared.state().sessions.insert(
        session.clone(),
        Session {
            cid: cid.to_owned(),
            expires_ms,
        },
    );
    (
        format!("{}/robot/sendBySession?session={session}", shared.base_url),
        expires_ms,
    )
}

/// What the simulator does before serving a call: faults, then the rate limit.
enum Gate {
    Proceed,
    /// Proceed, and a token answer states this lifetime instead of the real one.
    StateTtl(i64),
    Respond(HttpResponse),
}

async fn gate(shared: &Shared, api: &str, new_style: bool) -> Gate {
    gate_chat(shared, api, &Value::Null, new_style).await
}

/// [`gate`] for a call whose JSON `body` names a group's `chatid`: a fault injected for
/// that group ([`Simulator::inject_for_chat`]) comes first, and a call it fails is recorded
/// with its body, so that a test can tell whose call it hit.
async fn gate_chat(shared: &Shared, api: &str, body: &Value, new_style: bool) -> Gate {
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
    proceed
}

fn error_answer(new_style: bool, errcode: i64, message: &str) -> HttpResponse {
    if new_style {
        let (status, code) = match errcode {
            90018 => (403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi".to_owned()),
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

fn record(shared: &Shared, api: &str, access_token: Option<String>, body: Value, answer: i64) {
    shared.state().calls.push(RecordedCall {
        api: api.to_owned(),
        at_ms: now_ms(),
        access_token,
        body,
        answer,
    });
}

/// Checks a token against the issued set: `Ok` or the legacy errcode.
fn check_token(tokens: &HashMap<String, u64>, token: Option<&str>) -> Result<(), i64> {
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
struct GetTokenQuery {
    appkey: Option<String>,
    appsecret: Option<String>,
}

async fn gettoken(shared: web::Data<Shared>, q: web::Query<GetTokenQuery>) -> HttpResponse {
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

async fn access_token(shared: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
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

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

async fn friendswitch(
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

async fn convert(shared: web::Data<Shared>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
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

#[derive(Deserialize)]
struct SessionQuery {
    session: Option<String>,
}

async fn send_by_session(
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

fn header_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("x-acs-dingtalk-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `POST /v1.0/robot/groupMessages/send` (sampleText / sampleMarkdown only).
async fn group_message(shared: web::Data<Shared>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
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

/// `POST /v1.0/im/group/update`: stores the `managementOptions` switches of the group
/// `chatid`. Answers `{"success": true}`, or DingTalk's `{code, message}` shapes: 401 for a
/// bad token, 400 `parameter.invalid` for a missing or unknown chatid or a value other than
/// 0/1, 400 `permession.checkFailed` for a disbanded group.
async fn group_update(shared: web::Data<Shared>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
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
struct ChatGetQuery {
    access_token: Option<String>,
    chatid: Option<String>,
}

/// `GET /chat/get?access_token=…&chatid=…`: the group's `chat_info` (the six switches,
/// name, owner, status, …), or a legacy errcode (40014 bad token, 49000 unknown chatid).
async fn chat_get(shared: web::Data<Shared>, q: web::Query<ChatGetQuery>) -> HttpResponse {
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
async fn department_listsubid(
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
async fn department_get(
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

async fn control_departments(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().departments)
}

async fn control_add_department(shared: web::Data<Shared>, d: web::Json<SimDepartment>) -> HttpResponse {
    match add_department(&shared, d.into_inner()) {
        Ok(()) => HttpResponse::Ok().json(json!({"ok": true})),
        Err(e) => HttpResponse::BadRequest().json(json!({"ok": false, "error": e.to_string()})),
    }
}

async fn control_groups(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().groups)
}

#[derive(Deserialize)]
struct NewGroup {
    open_conversation_id: String,
    chatid: String,
    #[serde(default)]
    title: String,
}

async fn control_add_group(shared: web::Data<Shared>, g: web::Json<NewGroup>) -> HttpResponse {
    add_group(&shared, &g.open_conversation_id, &g.chatid, &g.title);
    HttpResponse::Ok().json(json!({"ok": true}))
}

#[derive(Deserialize)]
struct NewSession {
    open_conversation_id: String,
    #[serde(default = "default_session_ttl")]
    ttl_ms: u64,
}

fn default_session_ttl() -> u64 {
    90 * 60 * 1000
}

async fn control_open_session(shared: web::Data<Shared>, r: web::Json<NewSession>) -> HttpResponse {
    let (url, expires) = open_session(&shared, &r.open_conversation_id, Duration::from_millis(r.ttl_ms));
    HttpResponse::Ok().json(json!({"sessionWebhook": url, "sessionWebhookExpiredTime": expires}))
}

async fn control_calls(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().calls)
}

async fn control_replies(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().replies)
}

#[derive(Deserialize)]
struct NewFault {
    api: String,
    fault: Fault,
    /// Only for the next call that names this group ([`Simulator::inject_for_chat`]).
    #[serde(default)]
    chatid: Option<String>,
}

async fn control_fault(shared: web::Data<Shared>, f: web::Json<NewFault>) -> HttpResponse {
    let f = f.into_inner();
    let mut s = shared.state();
    match f.chatid {
        Some(chatid) => s
            .chat_faults
            .entry((f.api, chatid))
            .or_default()
            .push_back(f.fault),
        None => s.faults.entry(f.api).or_default().push_back(f.fault),
    }
    HttpResponse::Ok().json(json!({"ok": true}))
}

async fn control_revoke(shared: web::Data<Shared>) -> HttpResponse {
    let mut s = shared.state();
    s.legacy_tokens.clear();
    s.modern_tokens.clear();
    HttpResponse::Ok().json(json!({"ok": true}))
}

/// `POST /v1.0/gateway/connections/open`: registers a Stream connection and answers the
/// gateway's endpoint with a single-use ticket.
async fn stream_open(shared: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
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
