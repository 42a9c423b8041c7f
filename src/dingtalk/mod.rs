//! The DingTalk API client: tokens, the group APIs dingops drives, and replies.
//!
//! Every call goes through one path ([`DingTalk::call`]) that applies the per-API rate
//! limit, the retry policy and token invalidation, so each API function only describes its
//! request and how to read the answer.

mod apis;
pub mod cards;
pub mod error;
mod pacing;
pub mod quota;
pub mod token;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt as _;
use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::time::Instant;

pub use cards::{CardCallback, CardSend};
pub use error::{ApiError, ErrorClass, QuotaCause, QuotaSpent};
use pacing::Limiter;
use token::TokenCache;
pub use wire::http_client;
use wire::{credentials_error, join, legacy_outcome, read_body, status_error, token_from, transport};

use crate::clock::Clock;
use crate::config::DingTalkSettings;
use crate::domain::ChatId;
use crate::ledger::{BudgetHandle, LedgerHandle};
use crate::quota::Class;
use crate::telemetry::Metrics;

/// The DingTalk APIs dingops calls; each has its own rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    GetToken,
    AccessToken,
    FriendSwitch,
    ConvertChatId,
    SendBySession,
    GroupMessage,
    GroupUpdate,
    ChatGet,
    DepartmentListSubId,
    DepartmentGet,
    CardCreate,
    CardUpdate,
    CardRegister,
}

impl Api {
    pub const ALL: [Api; 13] = [
        Api::GetToken,
        Api::AccessToken,
        Api::FriendSwitch,
        Api::ConvertChatId,
        Api::SendBySession,
        Api::GroupMessage,
        Api::GroupUpdate,
        Api::ChatGet,
        Api::DepartmentListSubId,
        Api::DepartmentGet,
        Api::CardCreate,
        Api::CardUpdate,
        Api::CardRegister,
    ];

    /// A stable name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Api::GetToken => "gettoken",
            Api::AccessToken => "oauth2_access_token",
            Api::FriendSwitch => "friendswitch_update",
            Api::ConvertChatId => "convert_to_open_conversation_id",
            Api::SendBySession => "send_by_session",
            Api::GroupMessage => "robot_group_messages_send",
            Api::GroupUpdate => "im_group_update",
            Api::ChatGet => "chat_get",
            Api::DepartmentListSubId => "department_listsubid",
            Api::DepartmentGet => "department_get",
            Api::CardCreate => "card.createAndDeliver",
            Api::CardUpdate => "card.update",
            Api::CardRegister => "card.register",
        }
    }

    /// Whether a call of this API counts against the organisation's monthly quota: every
    /// OpenAPI call but the token and department APIs, which DingTalk exempts, and replies
    /// through a sessionWebhook, which are not OpenAPI calls (our reading, see
    /// docs/dingtalk.md).
    pub fn counted(self) -> bool {
        !matches!(
            self,
            Api::GetToken
                | Api::AccessToken
                | Api::DepartmentListSubId
                | Api::DepartmentGet
                | Api::SendBySession
        )
    }

    /// Whether repeating the call after an unclear failure (timeout, broken connection)
    /// is harmless. A reply is not: DingTalk may already have posted it. A card is: its
    /// `outTrackId` makes a second create a no-op ([`cards`]).
    fn idempotent(self) -> bool {
        !matches!(self, Api::SendBySession | Api::GroupMessage)
    }

    /// Whether a transient failure of this API may be retried: always for idempotent APIs;
    /// for replies only when DingTalk surely did not act (no connection, or an error answer).
    fn may_retry(self, err: &ApiError) -> bool {
        self.idempotent() || !matches!(err, ApiError::Timeout | ApiError::Transport(_))
    }
}

/// Which token an API takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    /// `?access_token=` on oapi.
    Legacy,
    /// `x-acs-dingtalk-access-token` on api.
    Modern,
}

/// Asked at two points of each attempt of a write (the first and every retry): `Err(why)`
/// abandons the call, nothing more is sent (the governance core checks the setting's lease
/// and the policy in force).
pub type AttemptGuard =
    dyn Fn(GuardPoint) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

/// Where an attempt asks its [`AttemptGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardPoint {
    /// Before the quota and the pacing: the check that may take a ledger write.
    BeforePacing,
    /// After the pacing, right before the request: a check here delays the request past its
    /// slot in the rate budget, so a guard keeps it for what cannot wait (it was long since
    /// the last check, or a policy write's policy in force).
    BeforeSending,
}

/// Retry and pacing settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Calls per second per API; 0 disables the limiter.
    pub calls_per_sec: u32,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub deadline: Duration,
}

impl ClientOptions {
    pub fn from_settings(s: &DingTalkSettings) -> Self {
        Self {
            timeout: s.upstream_timeout(),
            connect_timeout: s.upstream_connect_timeout(),
            calls_per_sec: s.api_calls_per_sec,
            max_attempts: s.retry_max_attempts,
            base_backoff: Duration::from_millis(s.retry_base_ms),
            deadline: Duration::from_millis(s.retry_deadline_ms),
        }
    }
}

/// A group as `chat/get` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    /// The owner's userId.
    pub owner: String,
    /// 1 normal, 2 disbanded.
    pub status: i64,
    /// The switches DingTalk answered, by field name (`chatBannedType`, …); a field it left
    /// out is absent.
    pub options: BTreeMap<String, i64>,
}

/// A department as `department/get` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepartmentInfo {
    pub name: String,
    /// The chatid of its department group; `None` when it has none.
    pub group: Option<ChatId>,
}

/// The fields of `chat_info` that hold the group switches.
const SWITCH_FIELDS: [&str; 6] = [
    "chatBannedType",
    "mentionAllAuthority",
    "validationType",
    "searchable",
    "showHistoryType",
    "managementType",
];

/// The DingTalk client of one app.
pub struct DingTalk {
    shared: Arc<Shared>,
    /// Whom this handle's calls are made for: they are counted against that class's share
    /// of the monthly budget ([`DingTalk::for_class`]).
    class: Class,
}

/// What every class-tagged handle of one client shares: connections, tokens, pacing and
/// the quota's counts.
struct Shared {
    http: reqwest::Client,
    oapi_base: String,
    api_base: String,
    app_key: String,
    app_secret: SecretString,
    robot_code: String,
    legacy: TokenCache,
    modern: TokenCache,
    limiters: HashMap<Api, Limiter>,
    /// The ledger whose rate budget every process on it shares; `None`: pace locally.
    budget: Option<BudgetHandle>,
    /// The monthly quota: the budget, its months, and where calls are counted.
    quota: quota::Gate,
    /// The budget's slots are times of the ledger's clock: this is how they map to ours.
    ledger_time: crate::ledger::LedgerTime,
    /// Where deadlines and the pacing's slots are read.
    clock: Arc<dyn Clock>,
    options: ClientOptions,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for DingTalk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DingTalk")
            .field("oapi_base", &self.shared.oapi_base)
            .field("api_base", &self.shared.api_base)
            .field("app_key", &self.shared.app_key)
            .field("shared_budget", &self.shared.budget.is_some())
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl DingTalk {
    /// A client for the app in `settings` that paces its calls in this process alone and
    /// counts the monthly budget (if any) in this process alone: for tools that run without
    /// a ledger. Beside other processes on a ledger, use [`DingTalk::with_budget`]. Its calls
    /// are interactive until [`DingTalk::for_class`] says otherwise. It reads the time
    /// (deadlines, pacing, token refreshes, the quota's month) from `clock`.
    pub fn new(
        settings: &DingTalkSettings,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ApiError> {
        Self::build(settings, metrics, None, clock)
    }

    fn build(
        settings: &DingTalkSettings,
        metrics: Arc<Metrics>,
        ledger: Option<LedgerHandle>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ApiError> {
        let options = ClientOptions::from_settings(settings);
        let http = http_client(settings)?;
        let limiters: HashMap<Api, Limiter> = Api::ALL
            .into_iter()
            .filter_map(|api| Limiter::new(options.calls_per_sec).map(|l| (api, l)))
            .collect();
        if ledger.is_some() {
            // Exported at 0 from the start (docs/operating.md): the first fallback shows
            // as an increase.
            for api in limiters.keys() {
                metrics.budget_fallbacks.with_label_values(&[api.name()]);
            }
        }
        metrics
            .quota
            .budget
            .set(settings.quota.monthly.map_or(0, |m| m as i64));
        let shared = Shared {
            http,
            oapi_base: settings.oapi_base.to_string(),
            api_base: settings.api_base.to_string(),
            app_key: settings.app_key.clone(),
            app_secret: settings.app_secret.clone(),
            robot_code: settings.robot_code.clone(),
            legacy: TokenCache::new(clock.clone()),
            modern: TokenCache::new(clock.clone()),
            limiters,
            budget: ledger.as_ref().map(LedgerHandle::budget),
            quota: quota::Gate::new(
                settings.quota,
                settings.timezone.clone(),
                ledger.map(|l| l.quota()),
            ),
            ledger_time: crate::ledger::LedgerTime::with_clock(clock.clone()),
            clock,
            options,
            metrics,
        };
        Ok(Self {
            shared: Arc::new(shared),
            class: Class::Interactive,
        })
    }

    /// A client whose per-API pacing is the rate budget kept in `ledger`, one budget for
    /// every process and replica that shares it: each call first reserves its send slot
    /// there (one ledger write), then waits for it. When a reservation fails, the call is
    /// paced in this process alone (logged, counted in
    /// `dingops_rate_budget_fallbacks_total`). `api_calls_per_sec = 0` still turns pacing
    /// off, and then the ledger is not asked. With a `monthly_call_budget`, each counted call
    /// is also counted in the ledger's monthly quota, shared the same way. The time is
    /// read from `clock`, as [`DingTalk::new`]'s.
    pub fn with_budget(
        settings: &DingTalkSettings,
        metrics: Arc<Metrics>,
        ledger: LedgerHandle,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ApiError> {
        Self::build(settings, metrics, Some(ledger), clock)
    }

    /// A handle on the same client (connections, tokens, pacing, counts) whose calls are
    /// made for `class`: the worker's are interactive, `fleet/`'s background.
    #[must_use]
    pub fn for_class(&self, class: Class) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            class,
        }
    }

    /// Whom this handle's calls are made for.
    pub fn class(&self) -> Class {
        self.class
    }

    fn cache(&self, kind: TokenKind) -> &TokenCache {
        match kind {
            TokenKind::Legacy => &self.shared.legacy,
            TokenKind::Modern => &self.shared.modern,
        }
    }

    /// The clock this client reads the time by (injected: tests drive it).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// This process's reading of the ledger's clock: the budget's slots go by it, and so do
    /// the worker's revert due times (one offset, measured by whichever needs it first).
    pub fn ledger_time(&self) -> &crate::ledger::LedgerTime {
        &self.shared.ledger_time
    }

    /// How long one call may take with its retries (`retry_deadline_ms`).
    pub fn call_deadline(&self) -> Duration {
        self.shared.options.deadline
    }

    /// `call` (one call of this client), given up at [`DingTalk::call_deadline`] even where
    /// the client would go on: an attempt started just before it, or a call waiting its turn
    /// in the local pacing. Given up, it is [`ApiError::Timeout`]. Only DingTalk's calls are
    /// wrapped so, never a record of what they did (see docs/reliability.md).
    pub async fn within_deadline<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let deadline = self.call_deadline();
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    what,
                    deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                    "a DingTalk call outlasted its deadline; given up"
                );
                Err(ApiError::Timeout)
            }
        }
    }

    /// The deadline of a call starting now.
    fn deadline(&self) -> Instant {
        let now = self.shared.clock.instant();
        now.checked_add(self.shared.options.deadline).unwrap_or(now)
    }

    /// Runs one API call with pacing, retries and (for `token`) the token's invalidation,
    /// within the configured deadline.
    async fn call<T, F, Fut>(&self, api: Api, token: Option<TokenKind>, op: F) -> Result<T, ApiError>
    where
        F: Fn(Option<SecretString>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        self.call_until(api, token, self.deadline(), None, op).await
    }

    /// [`DingTalk::call`] that asks `guard` right before each attempt (the first and every
    /// retry) and sends nothing more once it says no.
    async fn call_guarded<T, F, Fut>(
        &self,
        api: Api,
        token: Option<TokenKind>,
        guard: Option<&AttemptGuard>,
        op: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(Option<SecretString>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        self.call_until(api, token, self.deadline(), guard, op).await
    }

    /// [`DingTalk::call`] with a given deadline; waiting for a token counts against it.
    async fn call_until<T, F, Fut>(
        &self,
        api: Api,
        token: Option<TokenKind>,
        deadline: Instant,
        guard: Option<&AttemptGuard>,
        op: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(Option<SecretString>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut attempt: u32 = 0;
        let mut token_refreshed = false;
        loop {
            let tok = match token {
                // Boxed: fetching a token is itself a `call`. Waiting for another caller's
                // fetch counts against this call's deadline.
                Some(kind) => Some(
                    tokio::time::timeout_at(deadline, Box::pin(self.token(kind, deadline)))
                        .await
                        .map_err(|_| ApiError::Timeout)??,
                ),
                None => None,
            };
            // A writer that was stalled (a stopped process, a hung earlier attempt) learns
            // here that it may no longer write, before it spends quota or a slot.
            if let Some(guard) = guard {
                guard(GuardPoint::BeforePacing)
                    .await
                    .map_err(ApiError::Abandoned)?;
            }
            self.take_quota(api, deadline).await?;
            self.pace(api, deadline).await?;
            if let Some(guard) = guard {
                guard(GuardPoint::BeforeSending)
                    .await
                    .map_err(ApiError::Abandoned)?;
            }
            let started = self.shared.clock.instant();
            let result = op(tok.clone()).await;
            let took = self.shared.clock.instant().saturating_duration_since(started);
            let elapsed_ms = took.as_millis();
            let code = match &result {
                Ok(_) => "0".to_owned(),
                Err(e) => e.short(),
            };
            self.shared.metrics.dingtalk_call(api.name(), &code, took);
            let err = match result {
                Ok(v) => {
                    tracing::debug!(api = api.name(), elapsed_ms, "DingTalk call succeeded");
                    return Ok(v);
                }
                Err(e) => e,
            };
            attempt = attempt.saturating_add(1);
            tracing::warn!(api = api.name(), attempt, elapsed_ms, error = %err.short(), "DingTalk call failed");
            let wait = match err.class() {
                ErrorClass::QuotaSpent => return Err(self.quota_spent(api, err).await),
                ErrorClass::TokenRejected if !token_refreshed => {
                    if let (Some(kind), Some(stale)) = (token, tok.as_ref()) {
                        self.cache(kind).invalidate(stale).await;
                    }
                    token_refreshed = true;
                    Duration::ZERO
                }
                ErrorClass::RateLimited => {
                    Duration::from_secs(1).saturating_mul(2u32.saturating_pow(attempt.clamp(1, 5) - 1))
                }
                ErrorClass::Transient if api.may_retry(&err) => {
                    let base = self
                        .shared
                        .options
                        .base_backoff
                        .saturating_mul(2u32.saturating_pow(attempt.clamp(1, 10) - 1));
                    let half_ms = u64::try_from(base.as_millis() / 2).unwrap_or(u64::MAX - 1);
                    let jitter = rand::rng().random_range(0..=half_ms.saturating_add(1));
                    base.saturating_add(Duration::from_millis(jitter))
                }
                _ => return Err(err),
            };
            let late = self
                .shared
                .clock
                .instant()
                .checked_add(wait)
                .is_none_or(|at| at > deadline);
            if attempt >= self.shared.options.max_attempts || late {
                return Err(err);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// A valid token of `kind`, from the cache or fetched once for all waiting callers; a
    /// fetch this caller starts gives up at `deadline`.
    async fn token(&self, kind: TokenKind, deadline: Instant) -> Result<SecretString, ApiError> {
        match kind {
            TokenKind::Legacy => {
                self.shared
                    .legacy
                    .get(|| self.counted_fetch("legacy", self.fetch_legacy_token(deadline)))
                    .await
            }
            TokenKind::Modern => {
                self.shared
                    .modern
                    .get(|| self.counted_fetch("modern", self.fetch_modern_token(deadline)))
                    .await
            }
        }
    }

    /// One token fetch of `kind`, counted in `dingops_token_fetch_failures_total` when it
    /// fails after its retries (callers waiting on it share the one failure).
    async fn counted_fetch(
        &self,
        kind: &'static str,
        fetch: impl Future<Output = Result<(SecretString, i64), ApiError>>,
    ) -> Result<(SecretString, i64), ApiError> {
        let fetched = fetch.await;
        if fetched.is_err() {
            self.shared
                .metrics
                .token_fetch_failures
                .with_label_values(&[kind])
                .inc();
        }
        fetched
    }

    async fn fetch_legacy_token(&self, deadline: Instant) -> Result<(SecretString, i64), ApiError> {
        self.shared
            .metrics
            .token_fetches
            .with_label_values(&["legacy"])
            .inc();
        self.call_until(Api::GetToken, None, deadline, None, |_| async {
            let mut url = join(&self.shared.oapi_base, "/gettoken")?;
            url.query_pairs_mut()
                .append_pair("appkey", &self.shared.app_key)
                .append_pair("appsecret", self.shared.app_secret.expose_secret());
            let resp = self.shared.http.get(url).send().await.map_err(transport)?;
            let (status, v) = read_body(resp).await?;
            legacy_outcome(status, &v).map_err(credentials_error)?;
            token_from(&v, "access_token", "expires_in")
        })
        .await
    }

    async fn fetch_modern_token(&self, deadline: Instant) -> Result<(SecretString, i64), ApiError> {
        self.shared
            .metrics
            .token_fetches
            .with_label_values(&["modern"])
            .inc();
        self.call_until(Api::AccessToken, None, deadline, None, |_| async {
            let url = join(&self.shared.api_base, "/v1.0/oauth2/accessToken")?;
            let body =
                json!({"appKey": self.shared.app_key, "appSecret": self.shared.app_secret.expose_secret()});
            let resp = self
                .shared
                .http
                .post(url)
                .json(&body)
                .send()
                .await
                .map_err(transport)?;
            let (status, v) = read_body(resp).await?;
            if !(200..300).contains(&status) {
                return Err(credentials_error(status_error(status, &v)));
            }
            token_from(&v, "accessToken", "expireIn")
        })
        .await
    }

    /// Fetches both tokens now (for `dingops check`).
    pub async fn check_tokens(&self) -> (Result<(), ApiError>, Result<(), ApiError>) {
        (
            self.token(TokenKind::Legacy, self.deadline()).await.map(|_| ()),
            self.token(TokenKind::Modern, self.deadline()).await.map(|_| ()),
        )
    }

    /// One new-style POST (`x-acs-dingtalk-access-token` header, optional JSON body); the
    /// answer's JSON when the status is 2xx, the `{code, message}` error otherwise.
    async fn modern_post(
        &self,
        path: &str,
        token: &Option<SecretString>,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut req = self.modern_request(Method::POST, path, token)?;
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(transport)?;
        let (status, v) = read_body(resp).await?;
        if !(200..300).contains(&status) {
            return Err(status_error(status, &v));
        }
        Ok(v)
    }

    fn modern_request(
        &self,
        method: Method,
        path: &str,
        token: &Option<SecretString>,
    ) -> Result<RequestBuilder, ApiError> {
        let url = join(&self.shared.api_base, path)?;
        let mut req = self.shared.http.request(method, url);
        if let Some(t) = token {
            req = req.header("x-acs-dingtalk-access-token", t.expose_secret());
        }
        Ok(req)
    }
}
