//! The dingops command line: the arguments, and a dispatch to `dingops::cli`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use dingops::cli::{self, AuditQuery, send::Smoke};
use dingops::clock::{Clock, SystemClock};
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
    Check {
        /// Also register this public address of POST /card-callback with DingTalk for
        /// card_callback_route_key, signed with card_callback_secret (http mode cards).
        #[arg(long, value_name = "URL")]
        register_card_callback: Option<String>,
        /// With --register-card-callback: replace the URL the route key is registered to
        /// (forceUpdate); without it DingTalk refuses to move a registered key.
        #[arg(long, requires = "register_card_callback")]
        force: bool,
    },
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
    /// Show this month's use of the monthly API quota: calls by API and class (every
    /// process on the ledger), budget, reserve and the projected use at the end of the month.
    Quota {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
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

/// One subcommand, one function of `dingops::cli`; the log level suits each.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_deref();
    let logs = |default| dingops::telemetry::init(cli.log_format, default);
    // The one clock of a CLI run; `serve` builds its own.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => {
            logs("info");
            cli::serve(config).await
        }
        #[cfg(feature = "demo")]
        Cmd::Demo { mode } => {
            logs("error");
            let mut out = std::io::stdout();
            let ok = dingops::demo::run(&mut out, mode, clock).await?;
            std::io::Write::flush(&mut out)?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        #[cfg(feature = "demo")]
        Cmd::Sim(args) => {
            logs("info");
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
            let smoke = Smoke {
                url,
                text,
                sender,
                admin,
                group,
                session_webhook,
            };
            cli::send::send(config, &smoke, clock.as_ref()).await
        }
        Cmd::Quota { json } => {
            logs("error");
            cli::quota(config, json, clock).await
        }
        Cmd::Check {
            register_card_callback,
            force,
        } => {
            logs("error");
            let register = register_card_callback.map(|url| dingops::ops::CardRegistration { url, force });
            cli::check(config, register.as_ref(), clock).await
        }
        Cmd::Discover { apply, json } => {
            logs("error");
            cli::discover(config, apply, json, clock).await
        }
        Cmd::Plan { json } => {
            logs("error");
            cli::plan(config, json, clock).await
        }
        Cmd::Apply => {
            logs("error");
            cli::apply(config, clock).await
        }
        Cmd::Audit {
            group,
            since,
            json,
            limit,
        } => {
            let query = AuditQuery {
                group,
                since,
                json,
                limit,
            };
            cli::audit(config, query, clock).await
        }
    }
}
