//! The cost of the shared DingTalk rate budget: every paced DingTalk call first reserves its
//! send slot in the ledger, one write. This times `count` reservations on a SQLite ledger,
//! from one connection and from two connections to the same file at once (what two
//! processes do), `runs` times, and prints the median.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dingops::ledger::SqliteLedger;
use dingops::ledger::prelude::*;

use crate::bench::in_scratch_dir;

/// The limit dingops reserves with at its default 20 calls/s: 19 calls per 1.05 s.
const MAX: u32 = 19;
const WINDOW_MS: u64 = 1050;

pub struct BudgetOptions {
    pub count: usize,
    pub runs: usize,
}

/// Times the reservations and prints one line per setup to `out`.
pub async fn run(opts: &BudgetOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let (count, runs) = (opts.count.max(1), opts.runs.max(1));
    let results = in_scratch_dir("budget", async |dir| {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || measure(&dir, count, runs)).await?
    })
    .await?;
    writeln!(
        out,
        "shared rate budget: {count} reservations on SQLite, median of {runs}"
    )?;
    for (what, median) in results {
        writeln!(
            out,
            "  {what:<40} {:>8.1} ms  ({:.1} µs per reservation)",
            median.as_secs_f64() * 1000.0,
            median.as_secs_f64() * 1e6 / count as f64
        )?;
    }
    Ok(())
}

fn measure(dir: &Path, count: usize, runs: usize) -> anyhow::Result<Vec<(&'static str, Duration)>> {
    let mut one = Vec::new();
    let mut two = Vec::new();
    for run in 0..runs {
        let path = dir.join(format!("one-{run}.db"));
        let ledger = SqliteLedger::open(&path, std::sync::Arc::new(dingops::clock::SystemClock))?;
        let started = Instant::now();
        for _ in 0..count {
            ledger.reserve_call("friendswitch_update", MAX, WINDOW_MS)?;
        }
        one.push(started.elapsed());

        let path = dir.join(format!("two-{run}.db"));
        let ledgers = [
            Arc::new(SqliteLedger::open(
                &path,
                std::sync::Arc::new(dingops::clock::SystemClock),
            )?),
            Arc::new(SqliteLedger::open(
                &path,
                std::sync::Arc::new(dingops::clock::SystemClock),
            )?),
        ];
        let started = Instant::now();
        let threads: Vec<_> = ledgers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let l = l.clone();
                // The first connection takes the odd one out.
                let n = count / 2 + (i == 0) as usize * (count % 2);
                std::thread::spawn(move || -> anyhow::Result<()> {
                    for _ in 0..n {
                        l.reserve_call("friendswitch_update", MAX, WINDOW_MS)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("a reservation thread panicked"))??;
        }
        two.push(started.elapsed());
    }
    Ok(vec![
        ("one connection, one after another", median(one)),
        ("two connections to one file, at once", median(two)),
    ])
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}
