//! The dingops command line: a thin layer over the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use serde_json::{Value, json};

use dingops::config::{Database, Settings};
use dingops::fleet::plan::{Fleet, GroupApplied};
use dingops::fleet::policy_lease::{POLICY_LEASE_TTL, PolicyLease};
use dingops::ingress::signature::Verifier;
use dingops::server::{Application, RunOptions};
use dingops::telemetry::LogFormat;

/// dingops: DingTalk group policy, one chat command away.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (keys in docs/configuration.md); DINGOPS_* variables override it.
    #[arg(long, global = true, env = "DINGOPS_CONFIG")]
    config: Option<PathBuf>,
    /// Log format (level from RUST_LOG).
    #[arg(
        long,
        global = true,
        env = "DINGOPS_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service (the default).
    Serve,
    /// Play a scripted group conversation against the built-in simulator; no account needed.
    #[cfg(feature = "demo")]
    Demo {
        /// How the messages reach dingops: HTTP callbacks or Stream mode.
        #[arg(long, value_enum, default_value = "http")]
        mode: dingops::demo::Transport,
    },
    /// Run the DingTalk simulator alone (the same as the `dingtalk-sim` binary).
    #[cfg(feature = "demo")]
    Sim(dingtalk_sim::cli::SimArgs),
    /// Send a correctly signed callback to a running dingops (smoke test).
    Send {
        /// Base URL of the running dingops, e.g. http://127.0.0.1:8080
        #[arg(long)]
        url: String,
        /// The text, as typed after @-mentioning the robot.
        #[arg(long)]
        text: String,
        /// senderStaffId of the (pretend) sender.
        #[arg(long, default_value = "dingops-smoke-test")]
        sender: String,
        /// Send isAdmin: true.
        #[arg(long)]
        admin: bool,
        /// openConversationId of the group.
        #[arg(long, default_value = "cidDingopsSmokeTest==")]
        group: String,
        /// sessionWebhook to put in the callback (where the reply goes).
        #[arg(
            long,
            default_value = "https://oapi.dingtalk.com/robot/sendBySession?session=dingops-smoke-test"
        )]
        session_webhook: String,
    },
    /// Validate the configuration and try the real credentials and bindings.
    Check,
    /// Find every department group of the organisation and whether it is bound; with
    /// --apply, store the department tree and bind the groups not bound yet.
    Discover {
        /// Store the tree and bind the unbound department groups (a group bound to another
        /// chatid is left as it is and reported).
        #[arg(long)]
        apply: bool,
        /// One JSON document (departments and summary) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what the policy would change: live settings of every matched group against the
    /// policy. Exit code 0: nothing to do; 2: changes pending; 1: an error.
    Plan {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make the changes the policy asks for (re-planned from the live state; safe to run
    /// again after an interruption). Exit code 0: every group converged; 1: some failed.
    Apply,
    /// Show the ledger's history: who ran what, where, when, with what result.
    Audit {
        /// Only this group (openConversationId).
        #[arg(long)]
        group: Option<String>,
        /// Only since then: a duration back (2h, 30m, 7days) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// At most this many rows (newest).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dingops: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dingops: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format;
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => {
            dingops::telemetry::init(log_format, "info");
            let settings = Settings::load(cli.config.as_deref())?;
            tracing::info!(listen = %settings.server.listen, database = %settings.ledger.database, "starting dingops");
            let app = Application::build(settings, RunOptions::default()).await?;
            app.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "demo")]
        Cmd::Demo { mode } => {
            dingops::telemetry::init(log_format, "error");
            let mut out = std::io::stdout();
            let ok = dingops::demo::run(&mut out, mode).await?;
            out.flush()?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        #[cfg(feature = "demo")]
        Cmd::Sim(args) => {
            dingops::telemetry::init(log_format, "info");
            dingtalk_sim::cli::serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Send {
            url,
            text,
            sender,
            admin,
            group,
            session_webhook,
        } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let body = smoke_callback(&group, &sender, admin, &text, &session_webhook);
            let (status, answer) = post_signed(&url, &settings.dingtalk.app_secret, &body)
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            println!("HTTP {status} {answer}");
            Ok(if status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Check => {
            dingops::telemetry::init(log_format, "error");
            let settings = match Settings::load(cli.config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    println!("❌ configuration: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let items = dingops::ops::check(&settings).await;
            print!("{}", dingops::ops::render_check(&items));
            Ok(if items.iter().all(|i| i.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Discover { apply, json } => {
            dingops::telemetry::init(log_format, "error");
            let settings = Settings::load(cli.config.as_deref())?;
            let progress = dingops::fleet::discover::stderr_progress();
            let report = dingops::fleet::discover::run(&settings, apply, progress.as_ref()).await?;
            let text = if json { report.json_text() } else { report.table() };
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::Plan { json } => {
            dingops::telemetry::init(log_format, "error");
            let settings = Settings::load(cli.config.as_deref())?;
            let fleet = Fleet::open(&settings).await?;
            let plan = fleet.plan().await?;
            let text = if json {
                dingops::fleet::plan::plan_json_text(&plan)
            } else {
                dingops::fleet::plan::plan_table(&plan)
            };
            write_stdout(&text)?;
            Ok(ExitCode::from(plan.exit_code()))
        }
        Cmd::Apply => {
            dingops::telemetry::init(log_format, "error");
            let settings = Settings::load(cli.config.as_deref())?;
            let fleet = Fleet::open(&settings).await?;
            // One policy run at a time on the ledger: not beside another apply, nor beside a
            // reconcile run of a `serve` (any replica).
            let holder = format!("apply-{}", dingops::worker::group_leases::replica_id());
            let waited = PolicyLease::take_waiting(fleet.ledger(), &holder, APPLY_WAITS_FOR_LEASE, || {
                eprintln!(
                    "apply: another policy run (a `dingops apply`, or a reconcile run of `serve`) is under \
                     way on this ledger; waiting for it to finish (a killed one holds it for at most {} s)",
                    POLICY_LEASE_TTL.as_secs()
                )
            })
            .await?;
            let Some(lease) = waited else {
                eprintln!(
                    "error: another policy run still holds this ledger after {} s; try again later",
                    APPLY_WAITS_FOR_LEASE.as_secs()
                );
                return Ok(ExitCode::FAILURE);
            };
            let resolution = fleet.resolve().await?;
            let progress = Progress::new(resolution.targets.len());
            let report = fleet
                .apply_resolved(resolution, "apply", |g| progress.group(g))
                .await;
            progress.finish();
            lease.release().await;
            write_stdout(&report.summary())?;
            Ok(ExitCode::from(report.exit_code()))
        }
        Cmd::Audit {
            group,
            since,
            json,
            limit,
        } => {
            let database = match Settings::load(cli.config.as_deref()) {
                Ok(s) => s.ledger.database,
                // Reading the audit needs only the database.
                Err(_) => match std::env::var("DINGOPS_DATABASE") {
                    Ok(text) => Database::parse(&text)
                        .map_err(|reason| anyhow::anyhow!("DINGOPS_DATABASE {reason}"))?,
                    Err(_) => Database::Sqlite(PathBuf::from("dingops.db")),
                },
            };
            if let Some(path) = database.sqlite_path()
                && !path.is_file()
            {
                anyhow::bail!("no ledger at {}", path.display());
            }
            let since = since
                .as_deref()
                .map(dingops::ops::parse_since)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let ledger = dingops::ledger::open(&database).await?;
            let rows = ledger
                .call(move |l| l.history(group.as_deref(), since, limit))
                .await?;
            let text = if json {
                rows.iter()
                    .rev()
                    .map(|row| format!("{}\n", dingops::ops::audit_json_line(row)))
                    .collect()
            } else {
                dingops::ops::audit_table(&rows)
            };
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                // `dingops audit | head` closes the pipe early; that is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error.
/// How long `apply` waits for another policy run on the ledger to finish.
const APPLY_WAITS_FOR_LEASE: std::time::Duration = std::time::Duration::from_secs(300);

fn write_stdout(text: &str) -> std::io::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// `apply`'s progress: a bar on a terminal (failures printed above it), a plain line per
/// group otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(groups: usize) -> Self {
        use std::io::IsTerminal as _;
        if !std::io::stdout().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(groups as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} groups, {elapsed} ({eta} left) {msg}",
        ) {
            bar.set_style(style);
        }
        Self(Some(bar))
    }

    fn group(&self, g: &GroupApplied) {
        match &self.0 {
            Some(bar) => {
                if g.failed() {
                    bar.println(g.line());
                }
                bar.inc(1);
            }
            None => {
                let _ = write_stdout(&format!("{}\n", g.line()));
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// The callback DingTalk would send when `sender` @-mentions the robot in `group` and types
/// `text`, with a fresh msgId and a reply session valid for 90 minutes. `send` builds it
/// here rather than with the simulator's builder so that builds without the simulator (the
/// `demo` feature) keep this smoke test.
fn smoke_callback(group: &str, sender: &str, admin: bool, text: &str, session_webhook: &str) -> Value {
    use rand::RngExt as _;
    let now = dingops::clock::now_ms();
    let msg_id = format!("smoke{:032x}", rand::rng().random::<u128>());
    json!({
        "msgId": msg_id,
        "msgtype": "text",
        "createAt": now,
        "conversationId": group,
        "conversationType": "2",
        "conversationTitle": "dingops smoke test",
        "senderStaffId": sender,
        "senderNick": sender,
        "isAdmin": admin,
        "isInAtList": true,
        // DingTalk strips the robot's @name and leaves a leading space.
        "text": {"content": format!(" {text}")},
        "sessionWebhook": session_webhook,
        "sessionWebhookExpiredTime": now + 90 * 60 * 1000,
    })
}

/// Posts `body` to the dingops at `base_url` with `timestamp` and `sign` headers for now,
/// signed with `secret`; returns the HTTP status and the answer.
async fn post_signed(base_url: &str, secret: &SecretString, body: &Value) -> reqwest::Result<(u16, String)> {
    let timestamp = dingops::clock::now_ms().to_string();
    let sign = Verifier::new(secret.clone(), 0).sign(&timestamp);
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()?
        .post(format!("{}/callback", base_url.trim_end_matches('/')))
        .header("content-type", "application/json; charset=utf-8")
        .header("timestamp", timestamp)
        .header("sign", sign)
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}
