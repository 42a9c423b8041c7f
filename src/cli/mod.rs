//! The command line's side of dingops: one function per subcommand, and everything that
//! turns results into what an operator reads — tables ([`table`]), progress ([`progress`]),
//! text and JSON per subcommand. `fleet/` and `ops` return data; the words are here.
//! `main.rs` parses the arguments and dispatches to these functions.

pub mod audit;
pub mod check;
pub mod discover;
pub mod plan;
pub mod progress;
pub mod quota;
pub mod send;
pub mod table;

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{LedgerSettings, Settings};
use crate::fleet::Fleet;
use crate::fleet::policy_lease::POLICY_LEASE_TTL;
use crate::server::{Application, RunOptions};

/// Writes `text` to stdout. A reader that went away (`dingops audit | head`) is not an
/// error: the one place where a closed pipe is forgiven.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// `dingops serve`: the service, until a stop signal.
pub async fn serve(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config)?;
    tracing::info!(listen = %settings.server.listen, database = %settings.ledger.database, "starting dingops");
    let app = Application::build(settings, RunOptions::default()).await?;
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

/// `dingops check [--register-card-callback <URL> [--force]]`: the checklist; a
/// configuration that does not load is its first item.
pub async fn check(
    config: Option<&Path>,
    register: Option<&crate::ops::CardRegistration>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<ExitCode> {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            write_stdout(&format!("❌ configuration: {e}\n"))?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let items = crate::ops::check(&settings, register, clock).await;
    write_stdout(&check::render_check(&items))?;
    Ok(if items.iter().all(|i| i.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `dingops discover [--apply] [--json]`.
pub async fn discover(
    config: Option<&Path>,
    apply: bool,
    json: bool,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config)?;
    let progress = progress::discover_progress(clock.clone());
    let report = crate::fleet::discover::run(
        &settings.dingtalk,
        &settings.ledger.database,
        &settings.worker.groups,
        apply,
        progress.as_ref(),
        clock,
    )
    .await?;
    write_stdout(&if json {
        discover::json_text(&report)
    } else {
        discover::table(&report)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `dingops plan [--json]`: exit 0 nothing to do, 2 changes pending, 1 an error. With a
/// monthly budget it also says what the plan cost and what the month has left.
pub async fn plan(config: Option<&Path>, json: bool, clock: Arc<dyn Clock>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config)?;
    let fleet = open_fleet(&settings, clock).await?;
    let refused = fleet.dingtalk().quota_refusals();
    let plan = fleet.plan().await?;
    let cost = (plan.groups.len() as u64).saturating_sub(fleet.dingtalk().quota_refusals() - refused);
    let usage = match settings.dingtalk.quota.monthly {
        Some(_) => Some(fleet.dingtalk().quota_usage().await?),
        None => None,
    };
    let mut out = if json {
        let mut doc = plan::plan_json(&plan);
        if let Some(usage) = &usage {
            doc["quota"] = serde_json::json!({
                "cost": cost,
                "month": usage.month.key,
                "left_background": usage.left(crate::quota::Class::Background),
                "used": usage.used(),
                "budget": usage.budget.monthly,
                "reserve": usage.budget.reserve_calls(),
            });
        }
        format!("{}\n", crate::domain::printable_json(&doc.to_string()))
    } else {
        plan::plan_table(&plan)
    };
    if let (Some(usage), false) = (&usage, json) {
        out.push_str(&quota::plan_cost_line(cost, usage));
    }
    write_stdout(&out)?;
    Ok(ExitCode::from(plan.exit_code()))
}

/// `dingops quota [--json]`: this month's use of the monthly API quota by API and class,
/// as the ledger has it (every process on it), with budget, reserve and projection.
pub async fn quota(config: Option<&Path>, json: bool, clock: Arc<dyn Clock>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config)?;
    let ledger = crate::ledger::open(&settings.ledger.database, clock.clone()).await?;
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let client = crate::dingtalk::DingTalk::with_budget(&settings.dingtalk, metrics, ledger, clock)?;
    let usage = client.quota_usage().await?;
    let tz = &settings.dingtalk.timezone;
    write_stdout(&if json {
        quota::quota_json_text(&usage, tz)
    } else {
        quota::quota_table(&usage, tz)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The fleet of `plan` and `apply`, from the sections it needs.
async fn open_fleet(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Fleet, crate::fleet::OpenError> {
    Fleet::open(
        &settings.fleet,
        &settings.dingtalk,
        &settings.ledger.database,
        &settings.worker.groups,
        clock,
    )
    .await
}

/// How long `apply` waits for another policy run on the ledger to finish.
const APPLY_WAITS_FOR_LEASE: std::time::Duration = std::time::Duration::from_secs(300);

/// `dingops apply`: one policy run ([`Fleet::run_policy`]): not beside another apply nor
/// beside a reconcile run of a `serve` (any replica); its policy becomes the policy in force
/// for the organisation; refused (exit 1, nothing written) when the month is spent or the
/// reads and planned writes do not fit what the month has left for background work; a
/// budget that runs out midway stops the run cleanly (what was done is recorded; a rerun
/// resumes).
pub async fn apply(config: Option<&Path>, clock: Arc<dyn Clock>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(config)?;
    let fleet = open_fleet(&settings, clock).await?;
    let holder = format!("apply-{}", crate::worker::group_leases::replica_id());
    let dingtalk = fleet.dingtalk();
    let refused = dingtalk.quota_refusals();
    let progress = std::sync::OnceLock::new();
    let spec = crate::fleet::run::RunSpec {
        holder: &holder,
        origin: crate::fleet::run::RunOrigin::Apply,
        wait: APPLY_WAITS_FOR_LEASE,
        in_force: crate::fleet::run::InForce::Record,
        quota: crate::fleet::run::QuotaCheck::UpFront,
        pick: None,
    };
    let waiting = || {
        eprintln!(
            "apply: another policy run (a `dingops apply`, or a reconcile run of `serve`) is under \
             way on this ledger; waiting for it to finish (a killed one holds it for at most {} s)",
            POLICY_LEASE_TTL.as_secs()
        )
    };
    let run = fleet
        .run_policy(spec, waiting, |total, g| {
            progress
                .get_or_init(|| progress::ApplyProgress::new(total))
                .group(g)
        })
        .await;
    if let Some(p) = progress.get() {
        p.finish();
    }
    let report = match run {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    write_stdout(&report.summary())?;
    if dingtalk.quota_refusals() > refused {
        let usage = dingtalk.quota_usage().await?;
        eprintln!(
            "apply stopped: the month's background budget ran out ({}). What was done is recorded; run `dingops apply` again \
             when the month renews ({}) or with a larger monthly_call_budget to finish.",
            usage.line(),
            crate::dingtalk::quota::renews_text(&usage.month, dingtalk.quota_timezone())
                .trim_start_matches("on ")
        );
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// What `dingops audit` shows.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    /// Only this group (openConversationId).
    pub group: Option<String>,
    /// Only since then: a duration back or an RFC 3339 time, as typed.
    pub since: Option<String>,
    /// JSON lines instead of a table.
    pub json: bool,
    /// At most this many rows (newest).
    pub limit: usize,
}

/// `dingops audit`: reads only the ledger section, so it needs no app credentials; a
/// configuration that does not load is an error as for every other subcommand.
pub async fn audit(
    config: Option<&Path>,
    query: AuditQuery,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<ExitCode> {
    let database = LedgerSettings::load(config)?.database;
    if let Some(path) = database.sqlite_path()
        && !path.is_file()
    {
        anyhow::bail!("no ledger at {}", path.display());
    }
    let since = query
        .since
        .as_deref()
        .map(|since| audit::parse_since(since, clock.now_ms()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let ledger = crate::ledger::open(&database, clock).await?;
    let (group, limit) = (query.group, query.limit);
    let rows = ledger
        .call(move |l| l.history(group.as_deref(), since, limit))
        .await?;
    write_stdout(&if query.json {
        rows.iter()
            .rev()
            .map(|row| format!("{}\n", audit::audit_json_line(row)))
            .collect()
    } else {
        audit::audit_table(&rows)
    })?;
    Ok(ExitCode::SUCCESS)
}
