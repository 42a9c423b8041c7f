//! `dingops-bench policy`: `dingops apply` on many simulated groups, against DingTalk's
//! quota: wall time next to the bound the per-API rate limit sets, rate-limit rejections,
//! and the peak RSS of the apply process.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dingops::domain::{Binding, ChatId};
use dingops::ledger::SqliteLedger;
use dingops::ledger::prelude::*;
use dingtalk_sim::{SimConfig, api};

use crate::bench::{in_scratch_dir, proc_status_kib, sim_with_config};

/// The policy applied: four switches differ from a new group, and the private-chat switch.
const POLICY: &str = r#"
[[rule]]
groups = ["*"]
dm = "locked"
mute_all = false
atall = "owner"
join_approval = true
searchable = false
history = true
manage = "owner"
"#;

/// The switches [`POLICY`] wants, by DingTalk field.
const WANTED: [(&str, i64); 6] = [
    ("chatBannedType", 0),
    ("mentionAllAuthority", 1),
    ("validationType", 1),
    ("searchable", 0),
    ("showHistoryType", 1),
    ("managementType", 1),
];

/// Calls DingTalk allows per API per second, less the one-call margin dingops keeps.
const QUOTA_PER_SEC: f64 = 19.0;

/// The figures of one run.
#[derive(Debug)]
pub struct PolicyReport {
    pub groups: usize,
    pub wall: Duration,
    /// `groups` × the calls one group needs of each API (one) ÷ 19/s: the APIs' budgets are
    /// separate, so reads and writes of different groups overlap.
    pub bound: Duration,
    /// The floor of dingops' own pacing: 19 calls per 1.05 s per API.
    pub pacing_floor: Duration,
    pub calls: Vec<(&'static str, usize)>,
    pub rejected: usize,
    /// When the rejections came, in seconds from the start of the run.
    pub rejected_at: Vec<f64>,
    pub peak_rss_kib: Option<u64>,
    pub converged: bool,
    pub exit_code: Option<i32>,
}

impl PolicyReport {
    /// Every group converged, the process said so, and DingTalk refused nothing for its rate.
    pub fn ok(&self) -> bool {
        self.converged && self.exit_code == Some(0) && self.rejected == 0
    }
}

/// Applies [`POLICY`] to `groups` simulated groups with the dingops binary `exe`.
pub async fn run(groups: usize, exe: &Path, out: &mut dyn Write) -> anyhow::Result<PolicyReport> {
    in_scratch_dir("policy", async |dir| run_in(groups, exe, dir, out).await).await
}

async fn run_in(n: usize, exe: &Path, dir: &Path, out: &mut dyn Write) -> anyhow::Result<PolicyReport> {
    // DingTalk's limit: 20 calls per second per API.
    let (sim, groups) = sim_with_config("Policy", n, SimConfig::default())?;
    let db = dir.join("ledger.db");
    {
        let ledger = SqliteLedger::open(&db, std::sync::Arc::new(dingops::clock::SystemClock))?;
        for (cid, chat) in &groups {
            ledger.bind(&Binding {
                conversation_id: cid.clone(),
                chat_id: ChatId::parse(chat).map_err(|e| anyhow::anyhow!("{chat}: {e}"))?,
                bound_by: "dingops-bench".into(),
                bound_ms: dingops::clock::now_ms(),
            })?;
        }
    }
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    writeln!(
        out,
        "dingops apply: {n} groups, 4 switches and the DM switch each"
    )?;

    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("apply")
        .env_clear()
        .envs(sim.dingops_env())
        .env("DINGOPS_DATABASE", &db)
        .env("DINGOPS_POLICY", &policy)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    // The peak is read while the process lives: /proc forgets it at exit.
    let mut peak_rss_kib = None;
    let deadline = started + Duration::from_secs(60 + n as u64);
    let status = loop {
        if let Some(kib) = proc_status_kib(child.id(), "VmHWM:") {
            peak_rss_kib = Some(kib);
        }
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed();
    let converged = groups.iter().all(|(cid, _)| {
        sim.group(cid)
            .is_some_and(|g| g.dm_prohibited && WANTED.iter().all(|(f, v)| g.options.get(*f) == Some(v)))
    });
    let calls = [api::CHAT_GET, api::GROUP_UPDATE, api::FRIEND_SWITCH]
        .map(|a| (a, sim.calls(Some(a)).len()))
        .to_vec();
    let start_ms = dingops::clock::now_ms().saturating_sub(u64::try_from(wall.as_millis()).unwrap_or(0));
    let rejected_at: Vec<f64> = sim
        .calls(None)
        .iter()
        .filter(|c| c.answer == 90018)
        .map(|c| c.at_ms.saturating_sub(start_ms) as f64 / 1000.0)
        .collect();
    let rejected = rejected_at.len();
    let report = PolicyReport {
        groups: n,
        wall,
        bound: Duration::from_secs_f64(n as f64 / QUOTA_PER_SEC),
        pacing_floor: Duration::from_secs_f64(n as f64 * 1.05 / QUOTA_PER_SEC),
        calls,
        rejected,
        rejected_at,
        peak_rss_kib,
        converged,
        exit_code: status.and_then(|s| s.code()),
    };
    print_report(&report, out)?;
    sim.stop().await;
    Ok(report)
}

fn print_report(r: &PolicyReport, out: &mut dyn Write) -> std::io::Result<()> {
    let calls: Vec<String> = r.calls.iter().map(|(a, c)| format!("{a} {c}")).collect();
    writeln!(out, "| figure | value |")?;
    writeln!(out, "|---|---|")?;
    writeln!(out, "| groups | {} |", r.groups)?;
    writeln!(out, "| calls | {} |", calls.join(", "))?;
    writeln!(
        out,
        "| wall time | {:.1} s ({:+.1} % against the quota bound) |",
        r.wall.as_secs_f64(),
        (r.wall.as_secs_f64() / r.bound.as_secs_f64().max(f64::EPSILON) - 1.0) * 100.0
    )?;
    writeln!(
        out,
        "| quota bound | {:.1} s (groups × 1 call per API ÷ 19/s; each API has its own budget) |",
        r.bound.as_secs_f64()
    )?;
    writeln!(
        out,
        "| dingops' pacing floor | {:.1} s (19 calls per 1.05 s per API) |",
        r.pacing_floor.as_secs_f64()
    )?;
    writeln!(
        out,
        "| rate-limit rejections (90018) | {} (each retried after ≥ 1 s){} |",
        r.rejected,
        match (r.rejected_at.first(), r.rejected_at.last()) {
            (Some(first), Some(last)) => format!(", from {first:.1} s to {last:.1} s"),
            _ => String::new(),
        }
    )?;
    match r.peak_rss_kib {
        Some(kib) => writeln!(out, "| peak RSS of apply | {:.1} MiB |", kib as f64 / 1024.0)?,
        None => writeln!(out, "| peak RSS of apply | not readable |")?,
    }
    writeln!(
        out,
        "| converged | {} (exit code {}) |",
        r.converged,
        r.exit_code
            .map_or("none: killed at the deadline".to_owned(), |c| c.to_string())
    )
}
