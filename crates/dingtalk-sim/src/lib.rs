//! A DingTalk simulator: a real, stateful HTTP server speaking the parts of DingTalk's API
//! that dingops uses (tokens, the private-chat switch, chatid conversion, replies), with
//! DingTalk's error shapes, token expiry, its per-API rate limit and injectable faults, plus
//! [`chat`], which plays DingTalk's side of the robot callback and signs it with [`sign`],
//! and [`stream`], DingTalk's Stream mode: `connections/open` and a WebSocket gateway, and
//! [`cards`], interactive cards: their APIs, button presses and their transcript.
//!
//! dingops' demo, integration tests and benchmarks run against it; the `dingtalk-sim` binary
//! (and `dingops sim`) serves it alone. It does not depend on dingops, so dingops' signature
//! verifier is checked against an independent signer.

pub mod api;
pub mod cards;
pub mod chat;
pub mod cli;
pub mod clock;
mod control;
pub mod quota;
pub mod sign;
mod state;
pub mod stream;

pub use cards::{CardCallbackRoute, CardFailMode, CardPress, CardPressOutcome, SimCard};
pub use control::DEMO_GROUPS;
pub use state::{
    DepartmentError, Fault, MANAGEMENT_FIELDS, ROOT_DEPT, RecordedCall, RecordedReply, SimDepartment,
    SimGroup,
};

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use rand::RngExt as _;

use crate::api::card::{create_and_deliver, register_callback, update_card};
use crate::api::department::{department_get, department_listsubid};
use crate::api::gateway::stream_open;
use crate::api::group::{chat_get, convert, friendswitch, group_update};
use crate::api::robot::{group_message, send_by_session};
use crate::api::token::{access_token, gettoken};
use crate::cards::control::{control_callbacks, control_card, control_cards, control_fail, control_press};
use crate::control::{
    control_add_department, control_add_group, control_calls, control_departments, control_fault,
    control_groups, control_open_session, control_quota, control_replies, control_revoke, control_set_quota,
};
use crate::state::{Shared, State};

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
    /// The organisation's calls per calendar month (China time) over the counted APIs
    /// before it answers 90020 / `Forbidden.AccessDenied.ApiCountLimitForOrg`; 0 turns the
    /// quota off. See [`quota`].
    pub monthly_quota: u64,
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
            monthly_quota: 0,
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
        let monthly_quota = config.monthly_quota;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                departments: vec![SimDepartment {
                    dept_id: ROOT_DEPT,
                    parent_id: None,
                    name: "Root".into(),
                    group: None,
                }],
                quota: quota::Quota {
                    limit: monthly_quota,
                    ..quota::Quota::default()
                },
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
                .route(
                    "/v1.0/card/instances/createAndDeliver",
                    web::post().to(create_and_deliver),
                )
                .route("/v1.0/card/instances", web::put().to(update_card))
                .route("/v1.0/card/callbacks/register", web::post().to(register_callback))
                .route("/_sim/groups", web::get().to(control_groups))
                .route("/_sim/groups", web::post().to(control_add_group))
                .route("/_sim/departments", web::get().to(control_departments))
                .route("/_sim/departments", web::post().to(control_add_department))
                .route("/_sim/sessions", web::post().to(control_open_session))
                .route("/_sim/calls", web::get().to(control_calls))
                .route("/_sim/replies", web::get().to(control_replies))
                .route("/_sim/faults", web::post().to(control_fault))
                .route("/_sim/revoke-tokens", web::post().to(control_revoke))
                .route("/_sim/quota", web::get().to(control_quota))
                .route("/_sim/quota", web::post().to(control_set_quota))
                .route("/_sim/cards", web::get().to(control_cards))
                .route("/_sim/cards/callbacks", web::get().to(control_callbacks))
                .route("/_sim/cards/press", web::post().to(control_press))
                .route("/_sim/cards/fail", web::post().to(control_fail))
                .route("/_sim/cards/{out_track_id}", web::get().to(control_card))
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

    /// Its configuration, including the app credentials it accepts.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// The `DINGOPS_*` environment that points a dingops at this simulator: the app
    /// credentials it accepts, its address as both API bases, and its `host:port` as the one
    /// reply host. The demo, the tests and the bench all point dingops here this way (the
    /// names are dingops' configuration keys, docs/configuration.md; no code of dingops is
    /// used).
    pub fn dingops_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DINGOPS_APP_KEY", self.config().app_key.clone()),
            ("DINGOPS_APP_SECRET", self.config().app_secret.clone()),
            ("DINGOPS_OAPI_BASE", self.url().to_owned()),
            ("DINGOPS_API_BASE", self.url().to_owned()),
            ("DINGOPS_REPLY_HOSTS", self.host_port().to_owned()),
        ]
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
