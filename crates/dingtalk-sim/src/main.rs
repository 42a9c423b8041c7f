//! `dingtalk-sim`: the DingTalk simulator alone, for pointing a local dingops (or anything
//! else that speaks DingTalk's robot APIs) at it.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use dingtalk_sim::cli::SimArgs;

/// A simulated DingTalk on one port: tokens, the private-chat switch, chatid conversion,
/// replies, and `/_sim/*` routes to add groups, open sessions, read calls and inject faults.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Log level from RUST_LOG, `info` by default, to stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dingtalk-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dingtalk_sim::cli::serve(cli.sim)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dingtalk-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
