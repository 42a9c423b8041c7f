//! `dingops-bench`: the load benchmark, the soak test, the policy and card benchmarks of the
//! dingops binary, with the DingTalk simulator on loopback (see docs/performance.md and
//! docs/reliability.md, "Soak").

mod bench;
mod budget;
mod card_costs;
mod card_setup;
mod cards;
mod policy;
mod reverts;
mod stream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Load benchmark and soak test of dingops, all on loopback.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The dingops binary under test [default: `dingops` next to this executable].
    #[arg(long, global = true, value_name = "PATH")]
    dingops: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load benchmark against a same-run baseline (see docs/performance.md).
    Bench {
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds per throughput phase.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Bound groups the load is spread over.
        #[arg(long, default_value_t = 100)]
        groups: usize,
        /// Callbacks per second of the paced latency phase.
        #[arg(long, default_value_t = 500)]
        rate: u32,
        /// Groups of the drain phase at 20 calls/s (0 skips it).
        #[arg(long, default_value_t = 1000)]
        drain_groups: usize,
        /// RUST_LOG of the dingops under test (its logs go to /dev/null).
        #[arg(long, default_value = "info")]
        rust_log: String,
        /// A PostgreSQL server (postgres://user:password@host:port/db) for the ledger of the
        /// load phases instead of SQLite files; each phase uses a new schema, dropped after.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// dingops processes sharing the ledger in the burst (ingest) phase, callbacks sent
        /// to them in turn; more than one needs --database.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        replicas: u16,
    },
    /// Soak test: many mixed callbacks, then checks that nothing was lost or doubled.
    Soak {
        /// Callbacks to send.
        #[arg(long, default_value_t = 100_000)]
        callbacks: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Bound groups.
        #[arg(long, default_value_t = 200)]
        groups: usize,
    },
    /// Stream mode against the HTTP ingress of the same binary in `mode=both` (see
    /// docs/performance.md): frame-to-ACK latency, ingest, reconnect gaps, RSS after many messages.
    Stream {
        /// Seconds of each latency phase (Stream, then HTTP at the same rate).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Messages per second of the latency phases.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Unacknowledged Stream frames on one connection (per connection in the RSS phase),
        /// and HTTP connections, of the bursts.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Ingest rounds, each an HTTP burst then a Stream burst.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of each burst of an ingest round.
        #[arg(long, default_value_t = 3)]
        round_seconds: u64,
        /// Repetitions of each reconnect measurement.
        #[arg(long, default_value_t = 5)]
        reconnects: usize,
        /// Messages of the RSS phase.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Stream connections of the RSS phase.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Bound groups the messages are spread over.
        #[arg(long, default_value_t = 100)]
        groups: usize,
        /// RUST_LOG of the dingops under test (its logs go to /dev/null).
        #[arg(long, default_value = "info")]
        rust_log: String,
    },
    /// Card clicks (reply cards' buttons): ACK latency over Stream and `POST /card-callback`
    /// against robot messages at the same rate, and a card's cost in DingTalk calls (see
    /// docs/performance.md, "Card callbacks").
    Cards {
        /// Seconds of each latency phase (clicks, then messages, or the other way round).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Clicks (and baseline messages) per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Rounds, each a fresh dingops per transport; the medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Keep-alive connections of the HTTP phases.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// RUST_LOG of the dingops under test (its logs go to /dev/null).
        #[arg(long, default_value = "info")]
        rust_log: String,
    },
    /// The cost of the shared DingTalk rate budget: time of `count` reservations in a
    /// SQLite ledger (one write each), median of `runs`.
    Budget {
        /// Reservations per run.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Runs; the median is printed.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// `dingops apply` of a policy to many simulated groups: wall time against DingTalk's
    /// per-API quota, rate-limit rejections, peak RSS of the apply process.
    Policy {
        /// Simulated groups, all bound, each needing four switches and the DM switch changed.
        #[arg(long, default_value_t = 1000)]
        groups: usize,
    },
    /// `dingops serve` starting with many timed reverts due, each of another group: time
    /// until every group was told, against DingTalk's per-API quota.
    Reverts {
        /// Reverts due at the start, one per simulated group.
        #[arg(long, default_value_t = 300)]
        count: usize,
        /// Milliseconds the simulator takes to answer each `im/group/update`.
        #[arg(long, default_value_t = 0)]
        answer_ms: u64,
        /// One more group, first in line, whose update hangs until the HTTP timeout.
        #[arg(long)]
        hang: bool,
    },
    /// The benchmark's baseline server alone (`bench` runs it as a child process).
    Baseline {
        /// Listen address.
        #[arg(long)]
        listen: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dingops-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dingops-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Bench {
            connections,
            seconds,
            groups,
            rate,
            drain_groups,
            rust_log,
            database,
            replicas,
        } => {
            let exe = dingops_binary(cli.dingops)?;
            let opts = bench::BenchOptions {
                connections,
                duration: Duration::from_secs(seconds),
                groups,
                rate,
                drain_groups,
                rust_log,
                database,
                replicas: usize::from(replicas),
            };
            let mut out = std::io::stdout();
            bench::run(&opts, &exe, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Soak {
            callbacks,
            connections,
            groups,
        } => {
            let exe = dingops_binary(cli.dingops)?;
            let opts = bench::SoakOptions {
                callbacks,
                connections,
                groups,
            };
            let mut out = std::io::stdout();
            let ok = bench::soak(&opts, &exe, &mut out).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Stream {
            seconds,
            rate,
            in_flight,
            rounds,
            round_seconds,
            reconnects,
            messages,
            connections,
            groups,
            rust_log,
        } => {
            let exe = dingops_binary(cli.dingops)?;
            let opts = stream::StreamOptions {
                seconds: Duration::from_secs(seconds),
                rate,
                in_flight,
                rounds,
                round_seconds: Duration::from_secs(round_seconds),
                reconnects,
                messages,
                connections,
                groups,
                rust_log,
            };
            let mut out = std::io::stdout();
            let report = stream::run(&opts, &exe, &mut out).await?;
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Cards {
            seconds,
            rate,
            rounds,
            connections,
            rust_log,
        } => {
            let exe = dingops_binary(cli.dingops)?;
            let opts = cards::CardsOptions {
                seconds: Duration::from_secs(seconds),
                rate,
                rounds,
                connections,
                rust_log,
            };
            let mut out = std::io::stdout();
            let ok = cards::run(&opts, &exe, &mut out).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Budget { count, runs } => {
            let mut out = std::io::stdout();
            budget::run(&budget::BudgetOptions { count, runs }, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy { groups } => {
            let exe = dingops_binary(cli.dingops)?;
            let mut out = std::io::stdout();
            let report = policy::run(groups, &exe, &mut out).await?;
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Reverts {
            count,
            answer_ms,
            hang,
        } => {
            let exe = dingops_binary(cli.dingops)?;
            let mut out = std::io::stdout();
            let opts = reverts::RevertsOptions {
                count,
                answer_ms,
                hang,
            };
            let ok = reverts::run(&opts, &exe, &mut out).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Baseline { listen } => {
            let listener =
                TcpListener::bind(&listen).with_context(|| format!("cannot listen on {listen}"))?;
            bench::serve_baseline(listener, 2).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The dingops binary to measure: `--dingops`, else `dingops` in this executable's directory
/// (cargo puts both in `target/<profile>/`).
fn dingops_binary(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        anyhow::ensure!(path.is_file(), "--dingops {}: no such file", path.display());
        return Ok(path);
    }
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = me.parent().unwrap_or(Path::new("."));
    let path = dir.join(format!("dingops{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        // `cargo run -p dingops-bench` builds this executable but not the dingops binary.
        let build = if dir.ends_with("debug") {
            "cargo build -p dingops"
        } else {
            "cargo build --release -p dingops"
        };
        anyhow::bail!(
            "no dingops binary at {}: build it first with `{build}`, or pass --dingops PATH",
            path.display()
        );
    }
    Ok(path)
}
