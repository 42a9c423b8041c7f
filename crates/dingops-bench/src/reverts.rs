//! `dingops-bench reverts`: `count` timed reverts of as many groups, all due when `dingops
//! serve` starts on their ledger: the time until every group was told, next to the bound
//! DingTalk's per-API limit sets; optionally with a slow answer to every `im/group/update`,
//! and with one more group, first in line, whose update hangs until the HTTP timeout.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use dingops::domain::{ChatId, RevertJob, RevertRestore};
use dingops::ledger::SqliteLedger;
use dingops::ledger::prelude::*;
use dingtalk_sim::{Fault, SimConfig, api};

use crate::bench::{in_scratch_dir, sim_with_config, start_dingops};

/// Calls DingTalk allows per API per second, less the one-call margin dingops keeps.
const QUOTA_PER_SEC: f64 = 19.0;

pub struct RevertsOptions {
    pub count: usize,
    /// Milliseconds the simulator takes to answer each `im/group/update`.
    pub answer_ms: u64,
    /// One more group, due first, whose first update hangs.
    pub hang: bool,
}

/// Runs the reverts with the dingops binary `exe`; `true` when every group was told and
/// DingTalk refused nothing for its rate.
pub async fn run(opts: &RevertsOptions, exe: &Path, out: &mut dyn Write) -> anyhow::Result<bool> {
    in_scratch_dir("reverts", async |dir| run_in(opts, exe, dir, out).await).await
}

async fn run_in(opts: &RevertsOptions, exe: &Path, dir: &Path, out: &mut dyn Write) -> anyhow::Result<bool> {
    let n = opts.count.max(1);
    // Group 0 is the hanging one when there is one.
    let total = n + usize::from(opts.hang);
    let (sim, groups) = sim_with_config("Revert", total, SimConfig::default())?;
    let db = dir.join("ledger.db");
    let due_ms = dingops::clock::now_ms().saturating_sub(1000);
    {
        let ledger = SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock))?;
        for (cid, chat) in &groups {
            sim.set_option(cid, "chatBannedType", 1);
            ledger.schedule_revert(&RevertJob {
                id: 0,
                conversation_id: cid.clone(),
                chat_id: ChatId::parse(chat).map_err(|e| anyhow::anyhow!("{chat}: {e}"))?,
                setting: "chatBannedType".into(),
                value: 0,
                set_value: 1,
                restore: RevertRestore::Before,
                due_ms,
                scheduled_by: "dingops-bench".into(),
                scheduled_command: "/mute-all 1m".into(),
                scheduled_ms: due_ms.saturating_sub(60_000),
            })?;
        }
    }
    if opts.hang {
        sim.inject_for_chat(api::GROUP_UPDATE, &groups[0].1, Fault::Hang);
    }
    if opts.answer_ms > 0 {
        for _ in 0..total {
            sim.inject(api::GROUP_UPDATE, Fault::Delay { ms: opts.answer_ms });
        }
    }
    writeln!(
        out,
        "dingops serve: {n} timed reverts of {n} groups due at start, im/group/update answered in {} ms{}",
        opts.answer_ms,
        if opts.hang {
            ", one more group first in line whose update hangs"
        } else {
            ""
        }
    )?;

    let (started, start_ms) = (Instant::now(), dingops::clock::now_ms());
    let server = start_dingops(exe, &sim, &db, &[], &[]).await?;
    let deadline = started + Duration::from_secs(120 + n as u64);
    let told =
        |sim: &dingtalk_sim::Simulator| sim.replies().iter().filter(|r| r.via == "group-message").count();
    while told(&sim) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    drop(server);

    let updates = sim.calls(Some(api::GROUP_UPDATE));
    let messages = sim.calls(Some(api::GROUP_MESSAGE));
    // The others: how long after the start their update reached DingTalk.
    let hung = opts.hang.then(|| groups[0].1.as_str());
    let latest_ms = updates
        .iter()
        .filter(|c| c.answer == 0 && hung.is_none_or(|h| c.body["chatid"] != h))
        .map(|c| c.at_ms.saturating_sub(start_ms))
        .max()
        .unwrap_or(0);
    let first = updates.iter().map(|c| c.at_ms).min().unwrap_or(0);
    let last = messages.iter().map(|c| c.at_ms).max().unwrap_or(0);
    let rejected = sim.calls(None).iter().filter(|c| c.answer == 90018).count();
    let all_told = told(&sim) >= total;
    let bound = n as f64 / QUOTA_PER_SEC;
    writeln!(out, "| figure | value |")?;
    writeln!(out, "|---|---|")?;
    writeln!(
        out,
        "| all told, from the process start | {:.1} s{} |",
        wall.as_secs_f64(),
        if all_told {
            ""
        } else {
            " (not all: stopped at the deadline)"
        }
    )?;
    writeln!(
        out,
        "| first update to last group message | {:.1} s |",
        last.saturating_sub(first) as f64 / 1000.0
    )?;
    writeln!(
        out,
        "| quota bound | {bound:.1} s (reverts ÷ 19/s; each API has its own budget); dingops' pacing floor {:.1} s |",
        bound * 1.05
    )?;
    writeln!(
        out,
        "| last update{} reached DingTalk | {:.1} s after the process start |",
        if opts.hang { " of the other groups" } else { "" },
        latest_ms as f64 / 1000.0
    )?;
    writeln!(
        out,
        "| calls | im_group_update {}, robot_group_messages_send {} |",
        updates.len(),
        messages.len()
    )?;
    writeln!(out, "| rate-limit rejections (90018) | {rejected} |")?;
    sim.stop().await;
    Ok(all_told && rejected == 0)
}
