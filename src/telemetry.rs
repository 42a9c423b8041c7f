//! Logs and metrics.
//!
//! Logs: `tracing`, as JSON lines or human-readable text, level from `RUST_LOG`. Secrets
//! never reach a log line: the app secret, tokens and sessionWebhook URLs are wrapped in
//! redacting types and transport errors are logged without their URL.
//!
//! Metrics: one Prometheus registry per application (so tests can run several side by side),
//! rendered in the text exposition format at `GET /metrics`.

use std::time::Duration;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Installs the global subscriber: level from `RUST_LOG` (else `default_level`), to stderr.
///
/// actix-http reports each malformed request or broken client connection as an ERROR line of
/// its connection dispatcher, so garbage sent to the port would become a flood of ERROR lines.
/// Those events never reach the output as they are: [`ClientErrors`] counts them in
/// `dingops_http_client_errors_total` and logs them again at debug level.
pub fn init(format: LogFormat, default_level: &str) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // The WebSocket library logs whole handshake requests and frames at trace level: the
    // Stream ticket and robot messages' sessionWebhook. It never logs below info here,
    // whatever RUST_LOG asks.
    for cap in ["tungstenite=info", "tokio_tungstenite=info"] {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
    use std::io::IsTerminal as _;
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let output = match format {
        LogFormat::Json => output
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => output.boxed(),
    };
    let output = output.with_filter(filter).with_filter(client_noise().not());
    let _ = tracing_subscriber::registry()
        .with(output)
        .with(ClientErrors.with_filter(client_noise()))
        .try_init();
}

/// The actix-http modules that log a client's malformed request or broken connection.
const CLIENT_NOISE_TARGETS: &[&str] = &["actix_http::h1::dispatcher", "actix_http::h1::decoder"];

/// actix-http's warnings and errors about one client connection. A `Targets` filter is
/// decided once per call site, so the hot path's disabled `debug!` lines stay free (a
/// closure filter would be asked again at every event).
fn client_noise() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_targets(
        CLIENT_NOISE_TARGETS
            .iter()
            .map(|t| (*t, tracing_subscriber::filter::LevelFilter::WARN)),
    )
}

/// `dingops_http_client_errors_total{kind}`. Process-wide, because the log events it counts
/// are: every application's registry exports the same counter.
static HTTP_CLIENT_ERRORS: std::sync::LazyLock<IntCounterVec> = std::sync::LazyLock::new(|| {
    let errors = IntCounterVec::new(
        Opts::new(
            "dingops_http_client_errors_total",
            "HTTP connections closed because of the client, by kind: parse (malformed HTTP), \
             io (broken connection), timeout (request head or body not sent within \
             request_timeout_ms), other.",
        ),
        &["kind"],
    )
    .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
    initialised(errors, &[&["parse"], &["io"], &["timeout"], &["other"]])
});

/// Counts a connection closed because of the client (`parse`, `io`, `timeout`, `other`).
pub fn http_client_error(kind: &str) {
    HTTP_CLIENT_ERRORS.with_label_values(&[kind]).inc();
}

/// Counts actix-http's client-error events and logs them again at debug level.
struct ClientErrors;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ClientErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = MessageText::default();
        event.record(&mut message);
        let text = message.0;
        let kind = if text.contains("parse error") || text.contains("too large") {
            "parse"
        } else if text.contains("I/O error") || text.contains("write zero") {
            "io"
        } else {
            "other"
        };
        http_client_error(kind);
        tracing::debug!(target: "dingops::http", kind, error = %text, "client connection closed");
    }
}

/// The `message` field of an event.
#[derive(Default)]
struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Every metric dingops exports.
pub struct Metrics {
    registry: Registry,
    /// `dingops_callbacks_total{outcome, reason}`.
    pub callbacks: IntCounterVec,
    /// `dingops_card_callbacks_total{outcome, reason}`: card clicks on `POST /card-callback`.
    pub card_callbacks: IntCounterVec,
    /// `dingops_commands_total{command, result}`.
    pub commands: IntCounterVec,
    /// `dingops_dingtalk_calls_total{api, errcode}`; errcode `0` is success.
    pub dingtalk_calls: IntCounterVec,
    /// `dingops_token_fetches_total{kind}`.
    pub token_fetches: IntCounterVec,
    /// `dingops_replies_total{via}`.
    pub replies: IntCounterVec,
    /// `dingops_callback_ack_seconds`: from the request to the acknowledgement.
    pub ack_seconds: Histogram,
    /// `dingops_command_seconds`: from acceptance to the reply.
    pub command_seconds: Histogram,
    /// `dingops_dingtalk_call_seconds{api}`: one HTTP exchange with DingTalk.
    pub dingtalk_seconds: HistogramVec,
    /// `dingops_open_commands`: accepted and not finished (the backlog plus those running).
    pub open_commands: IntGauge,
    /// `dingops_ledger_write_retries_total`: failed ledger writes of a running command that
    /// were tried again (each retry counts once).
    pub ledger_write_retries: IntCounter,
    /// `dingops_ledger_writes_retrying`: commands waiting for a ledger write to land; while it
    /// is above 0, `/readyz` answers 503.
    pub ledger_writes_retrying: IntGauge,
    /// `dingops_rate_budget_fallbacks_total{api}`: calls whose reservation in the shared
    /// rate budget failed, paced in this process alone instead.
    pub budget_fallbacks: IntCounterVec,
    /// `dingops_rate_budget_wait_seconds{api}`: from asking the shared rate budget for a
    /// slot to that slot (the reservation's ledger write plus the wait).
    pub budget_wait_seconds: HistogramVec,
    /// Stream mode (see [`StreamMetrics`]).
    pub stream: StreamMetrics,
    /// `dingops_policy_drift_total{setting}`: settings `serve`'s reconcile found different
    /// from the policy in a group (by the policy's setting name).
    pub policy_drift: IntCounterVec,
    /// `dingops_policy_runs_total{result}`: reconcile runs by result (converged, failed).
    pub policy_runs: IntCounterVec,
    /// `dingops_policy_reload_errors_total`: policy files refused when read again (SIGHUP,
    /// or a changed file before a reconcile run); the previous policy stayed in force.
    pub policy_reload_errors: IntCounter,
    /// The monthly API quota.
    pub quota: QuotaMetrics,
    /// `dingops_policy_groups_drifting`: groups whose last two reconcile reads by this
    /// process both found drift (the fix did not hold or did not land).
    pub policy_groups_drifting: IntGauge,
    /// `dingops_token_fetch_failures_total{kind}`: access-token fetches that failed after
    /// their retries.
    pub token_fetch_failures: IntCounterVec,
    /// `dingops_ready`: 1 when the last readiness check (`/readyz`, or the one every scrape
    /// of `/metrics` runs) passed.
    pub ready: IntGauge,
    /// `dingops_info{version, mode}`: always 1; says which ingress mode runs.
    pub info: IntGaugeVec,
    /// Timed reverts (see [`RevertMetrics`]).
    pub reverts: RevertMetrics,
}

/// The metrics of the timed reverts, set by the scheduler at each of its rounds (every
/// second) from the list it reads anyway.
pub struct RevertMetrics {
    /// `dingops_reverts_pending`: timed reverts scheduled and not finished.
    pub pending: IntGauge,
    /// `dingops_reverts_due`: pending reverts whose time has come.
    pub due: IntGauge,
    /// `dingops_reverts_overdue`: pending reverts due more than [`REVERT_OVERDUE`] ago.
    pub overdue: IntGauge,
    /// `dingops_reverts_total{result}`: reverts that ran, by result (ok, failed).
    pub ran: IntCounterVec,
}

/// How late a due revert may be before it counts as overdue: the scheduler looks every
/// second and one revert's DingTalk calls give up within the client's deadline.
pub const REVERT_OVERDUE: Duration = Duration::from_secs(60);

impl RevertMetrics {
    fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                IntGauge::new(name, help)
                    .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}")),
            )
        };
        Self {
            pending: gauge(
                "dingops_reverts_pending",
                "Timed reverts scheduled and not finished.",
            ),
            due: gauge(
                "dingops_reverts_due",
                "Timed reverts whose time has come and that have not finished.",
            ),
            overdue: gauge(
                "dingops_reverts_overdue",
                "Timed reverts due more than a minute ago and not finished.",
            ),
            ran: initialised(
                counter(
                    registry,
                    "dingops_reverts_total",
                    "Timed reverts that ran, by result (ok, failed).",
                    &["result"],
                ),
                &[&["ok"], &["failed"]],
            ),
        }
    }

    /// Sets the gauges from the pending reverts' due times (ms, the ledger's clock) at `now`.
    pub fn observe(&self, due_ms: impl Iterator<Item = u64>, now_ms: u64) {
        let late_ms = REVERT_OVERDUE.as_millis() as u64;
        let (mut pending, mut due, mut overdue) = (0i64, 0i64, 0i64);
        for at in due_ms {
            pending += 1;
            if at <= now_ms {
                due += 1;
            }
            if at.saturating_add(late_ms) < now_ms {
                overdue += 1;
            }
        }
        self.pending.set(pending);
        self.due.set(due);
        self.overdue.set(overdue);
    }
}

/// The metrics of the monthly API quota (docs/operating.md).
pub struct QuotaMetrics {
    /// `dingops_quota_calls{api,class}`: this month's counted calls, as the ledger has them
    /// (every process on it), refreshed when scraped.
    pub calls: IntGaugeVec,
    /// `dingops_quota_budget`: `monthly_call_budget` (0: off).
    pub budget: IntGauge,
    /// `dingops_quota_exhausted`: 1 when DingTalk answered this month that the
    /// organisation's quota is spent (90020).
    pub exhausted: IntGauge,
    /// `dingops_quota_projected`: this month's counted calls at its end, at the pace so far.
    pub projected: IntGauge,
    /// `dingops_reconcile_skipped_total{reason}`: reconcile runs skipped or cut short by
    /// the quota (`spent`, `budget`, `shortened`).
    pub reconcile_skipped: IntCounterVec,
    /// `dingops_quota_refused_total{class}`: calls not made because the class's share of
    /// the month was used up.
    pub refused: IntCounterVec,
}

impl QuotaMetrics {
    fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                IntGauge::new(name, help)
                    .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}")),
            )
        };
        Self {
            calls: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "dingops_quota_calls",
                        "Calls counted against the monthly API quota this month, by API and class (from the ledger).",
                    ),
                    &["api", "class"],
                )
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            ),
            budget: gauge(
                "dingops_quota_budget",
                "monthly_call_budget: the calls dingops may make per month (0: off).",
            ),
            exhausted: gauge(
                "dingops_quota_exhausted",
                "1 when DingTalk answered this month that the organisation's API quota is spent (90020).",
            ),
            projected: gauge(
                "dingops_quota_projected",
                "This month's counted calls at its end, at the pace so far (every process on the ledger).",
            ),
            reconcile_skipped: initialised(
                counter(
                    registry,
                    "dingops_reconcile_skipped_total",
                    "Reconcile runs skipped or cut short by the monthly quota, by reason (spent, budget, shortened).",
                    &["reason"],
                ),
                &[&["spent"], &["budget"], &["shortened"]],
            ),
            refused: initialised(
                counter(
                    registry,
                    "dingops_quota_refused_total",
                    "DingTalk calls not made because their class's share of the monthly budget was used up.",
                    &["class"],
                ),
                &[&["interactive"], &["background"]],
            ),
        }
    }
}

/// The metrics of the Stream ingress.
pub struct StreamMetrics {
    /// `dingops_stream_connections`: Stream connections live now.
    pub connections: IntGauge,
    /// `dingops_stream_reconnects_total{reason}`: why a connection was replaced or a new
    /// one tried (disconnect, closed, dropped, keepalive, open_refused, open_failed,
    /// connect_failed, insecure_endpoint).
    pub reconnects: IntCounterVec,
    /// `dingops_stream_frames_total{type, topic}`: frames received; unknown topics count as
    /// `other`.
    pub frames: IntCounterVec,
    /// `dingops_stream_acks_total{code}`: ACKs sent, by code.
    pub acks: IntCounterVec,
    /// `dingops_stream_ack_seconds`: from reading a robot frame to queueing its ACK.
    pub ack_seconds: Histogram,
    /// `dingops_stream_pings_refused_total`: SYSTEM pings whose data was too large to echo
    /// (answered 400).
    pub pings_refused: IntCounter,
}

impl StreamMetrics {
    fn new(registry: &Registry) -> Self {
        let connections = register(
            registry,
            IntGauge::new("dingops_stream_connections", "Stream connections live now.")
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        );
        let ack_seconds = register(
            registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "dingops_stream_ack_seconds",
                    "Time from reading a robot frame to queueing its ACK.",
                )
                .buckets(FAST_BUCKETS.to_vec()),
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        );
        Self {
            connections,
            reconnects: initialised(
                counter(
                    registry,
                    "dingops_stream_reconnects_total",
                    "Stream reconnects by reason (disconnect, closed, dropped, keepalive, open_refused, open_failed, connect_failed, insecure_endpoint).",
                    &["reason"],
                ),
                &[
                    &["disconnect"],
                    &["closed"],
                    &["dropped"],
                    &["keepalive"],
                    &["open_refused"],
                    &["open_failed"],
                    &["connect_failed"],
                    &["insecure_endpoint"],
                ],
            ),
            frames: counter(
                registry,
                "dingops_stream_frames_total",
                "Stream frames received, by type and topic (unknown topics as other).",
                &["type", "topic"],
            ),
            acks: counter(
                registry,
                "dingops_stream_acks_total",
                "Stream ACKs sent, by code.",
                &["code"],
            ),
            ack_seconds,
            pings_refused: register(
                registry,
                IntCounter::new(
                    "dingops_stream_pings_refused_total",
                    "Stream SYSTEM pings whose data was too large to echo, answered 400.",
                )
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            ),
        }
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are fixed and unique, so registration cannot collide.
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    register(registry, c)
}

/// Creates the series `values` of `counter` at 0. A labelled series exists only once set,
/// and an alert on `increase()` misses the first failure of a series that did not exist:
/// the series alerts and panels name are exported from the start.
fn initialised(counter: IntCounterVec, values: &[&[&str]]) -> IntCounterVec {
    for v in values {
        counter.with_label_values(v);
    }
    counter
}

/// The reasons of `dingops_callbacks_total` and `dingops_card_callbacks_total` a signature
/// check gives (docs/operating.md).
const SIGNATURE_REASONS: &[&str] = &[
    "signature_missing",
    "signature_malformed",
    "signature_stale",
    "signature_mismatch",
];

/// A callbacks counter, its signature-failure, ledger-refusal and success series created
/// at 0 (`ok` is the outcome of a handled one: accepted, answered).
fn callback_counter(registry: &Registry, name: &str, help: &str, ok: &str) -> IntCounterVec {
    let c = counter(registry, name, help, &["outcome", "reason"]);
    c.with_label_values(&[ok, "-"]);
    c.with_label_values(&["unavailable", "ledger"]);
    for reason in SIGNATURE_REASONS {
        c.with_label_values(&["rejected", reason]);
    }
    c
}

const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];
const SLOW_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A free slot costs one ledger write (well under a millisecond to a few); a busy budget
/// makes calls wait up to seconds.
const BUDGET_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        register(&registry, HTTP_CLIENT_ERRORS.clone());
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
            register(&registry, h)
        };
        let dingtalk_seconds = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "dingops_dingtalk_call_seconds",
                    "Duration of one HTTP exchange with DingTalk.",
                )
                .buckets(SLOW_BUCKETS.to_vec()),
                &["api"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        );
        let open_commands = register(
            &registry,
            IntGauge::new(
                "dingops_open_commands",
                "Commands accepted and not finished: the backlog plus those running.",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        );
        let ledger_write_retries = register(
            &registry,
            IntCounter::new(
                "dingops_ledger_write_retries_total",
                "Ledger writes of running commands that failed and were tried again.",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        );
        let ledger_writes_retrying = register(
            &registry,
            IntGauge::new(
                "dingops_ledger_writes_retrying",
                "Commands waiting for a failed ledger write to land (not ready while above 0).",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        );
        let budget_wait_seconds = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "dingops_rate_budget_wait_seconds",
                    "Time from asking the shared DingTalk rate budget for a send slot to that slot.",
                )
                .buckets(BUDGET_BUCKETS.to_vec()),
                &["api"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        );
        Self {
            budget_fallbacks: counter(
                &registry,
                "dingops_rate_budget_fallbacks_total",
                "DingTalk calls whose reservation in the shared rate budget failed, paced in this process alone.",
                &["api"],
            ),
            budget_wait_seconds,
            callbacks: callback_counter(
                &registry,
                "dingops_callbacks_total",
                "Robot callbacks by outcome (accepted, duplicate, rejected, unavailable) and reason.",
                "accepted",
            ),
            card_callbacks: callback_counter(
                &registry,
                "dingops_card_callbacks_total",
                "Card clicks on POST /card-callback by outcome (answered, rejected, unavailable) and reason.",
                "answered",
            ),
            commands: counter(
                &registry,
                "dingops_commands_total",
                "Commands answered, by command and result (ok, info, refused, failed).",
                &["command", "result"],
            ),
            dingtalk_calls: counter(
                &registry,
                "dingops_dingtalk_calls_total",
                "DingTalk API calls by API and errcode (0 = success).",
                &["api", "errcode"],
            ),
            token_fetches: initialised(
                counter(
                    &registry,
                    "dingops_token_fetches_total",
                    "Access-token fetches by kind (legacy, modern).",
                    &["kind"],
                ),
                &[&["legacy"], &["modern"]],
            ),
            token_fetch_failures: initialised(
                counter(
                    &registry,
                    "dingops_token_fetch_failures_total",
                    "Access-token fetches that failed after their retries, by kind (legacy, modern).",
                    &["kind"],
                ),
                &[&["legacy"], &["modern"]],
            ),
            replies: counter(
                &registry,
                "dingops_replies_total",
                "Replies by delivery path (session, group-message, none-...).",
                &["via"],
            ),
            ack_seconds: histogram(
                "dingops_callback_ack_seconds",
                "Time from receiving a callback to acknowledging it.",
                FAST_BUCKETS,
            ),
            command_seconds: histogram(
                "dingops_command_seconds",
                "Time from accepting a command to finishing its reply.",
                SLOW_BUCKETS,
            ),
            dingtalk_seconds,
            open_commands,
            ledger_write_retries,
            ledger_writes_retrying,
            stream: StreamMetrics::new(&registry),
            policy_drift: {
                let drift = counter(
                    &registry,
                    "dingops_policy_drift_total",
                    "Settings found different from the policy by serve's reconcile, by setting.",
                    &["setting"],
                );
                // The readable settings: the private-chat switch is never drift.
                for setting in crate::governance::Setting::all() {
                    if matches!(setting, crate::governance::Setting::Switch(_)) {
                        drift.with_label_values(&[setting.key()]);
                    }
                }
                drift
            },
            policy_runs: initialised(
                counter(
                    &registry,
                    "dingops_policy_runs_total",
                    "Reconcile runs of serve by result (converged, failed).",
                    &["result"],
                ),
                &[&["converged"], &["failed"]],
            ),
            policy_groups_drifting: register(
                &registry,
                IntGauge::new(
                    "dingops_policy_groups_drifting",
                    "Groups whose last two reconcile reads by this process both found settings different from the policy.",
                )
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            ),
            ready: register(
                &registry,
                IntGauge::new(
                    "dingops_ready",
                    "1 when the last readiness check (/readyz, or the one each scrape of /metrics runs) passed.",
                )
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            ),
            info: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "dingops_info",
                        "Always 1: the version and the ingress mode (http, stream, both) of this process.",
                    ),
                    &["version", "mode"],
                )
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            ),
            reverts: RevertMetrics::new(&registry),
            policy_reload_errors: register(
                &registry,
                IntCounter::new(
                    "dingops_policy_reload_errors_total",
                    "Policy files refused when read again; the previous policy stayed in force.",
                )
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            ),
            quota: QuotaMetrics::new(&registry),
            registry,
        }
    }

    /// Says which ingress `mode` (http, stream, both) this process runs, in `dingops_info`.
    pub fn describe(&self, mode: &str) {
        self.info.reset();
        self.info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), mode])
            .set(1);
    }

    /// Counts a callback.
    pub fn callback(&self, outcome: &str, reason: &str) {
        self.callbacks.with_label_values(&[outcome, reason]).inc();
    }

    /// Records one DingTalk exchange.
    pub fn dingtalk_call(&self, api: &str, errcode: &str, took: Duration) {
        self.dingtalk_calls.with_label_values(&[api, errcode]).inc();
        self.dingtalk_seconds
            .with_label_values(&[api])
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revert_counts_as_due_at_its_time_and_as_overdue_a_minute_after() {
        let metrics = Metrics::new();
        let now = 10_000_000;
        let late = REVERT_OVERDUE.as_millis() as u64;
        let due_times = [
            now + 1,        // pending
            now,            // due now
            now - late,     // due exactly a minute ago: not yet overdue
            now - late - 1, // overdue
        ];
        metrics.reverts.observe(due_times.into_iter(), now);
        assert_eq!(metrics.reverts.pending.get(), 4);
        assert_eq!(metrics.reverts.due.get(), 3);
        assert_eq!(metrics.reverts.overdue.get(), 1);
        metrics.reverts.observe(std::iter::empty(), now);
        assert_eq!(
            (
                metrics.reverts.pending.get(),
                metrics.reverts.due.get(),
                metrics.reverts.overdue.get()
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn the_failure_series_alerts_read_are_exported_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for line in [
            "dingops_callbacks_total{outcome=\"rejected\",reason=\"signature_mismatch\"} 0",
            "dingops_callbacks_total{outcome=\"unavailable\",reason=\"ledger\"} 0",
            "dingops_card_callbacks_total{outcome=\"unavailable\",reason=\"ledger\"} 0",
            "dingops_policy_runs_total{result=\"failed\"} 0",
            "dingops_reverts_total{result=\"failed\"} 0",
            "dingops_token_fetch_failures_total{kind=\"modern\"} 0",
            "dingops_quota_refused_total{class=\"interactive\"} 0",
            "dingops_stream_reconnects_total{reason=\"open_refused\"} 0",
            "dingops_policy_drift_total{setting=\"mute_all\"} 0",
            "dingops_reverts_overdue 0",
            "dingops_ready 0",
        ] {
            assert!(text.contains(&format!("{line}\n")), "no {line}:\n{text}");
        }
        assert!(
            !text.contains("dingops_policy_drift_total{setting=\"dm\"}"),
            "the private-chat switch is never drift"
        );
    }
}
