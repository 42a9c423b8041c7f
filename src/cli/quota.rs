//! The monthly quota as the CLI shows it: `dingops quota [--json]`, the cost line of
//! `plan`, and the words of `apply`'s budget check (the numbers come from
//! `dingtalk::quota`; docs/operating.md, "The monthly quota").

use serde_json::{Value, json};

use super::table::{Fit, Table};
use crate::dingtalk::quota::{QuotaUsage, renews_text};
use crate::domain::printable_json;
use crate::quota::Class;

/// `dingops quota`: use by API and class, then total, budget, reserve and the projection.
pub fn quota_table(usage: &QuotaUsage, tz: &jiff::tz::TimeZone) -> String {
    let mut table = Table::new(&["api", "class", "calls"], &[Fit::Whole, Fit::Whole, Fit::Whole]);
    for c in &usage.counts {
        table.row(&[c.api.as_str(), c.class.as_str(), &c.calls.to_string()]);
    }
    let mut out = String::new();
    if table.is_empty() {
        out.push_str(&format!("No counted calls in {} yet.\n", usage.month.key));
    } else {
        out.push_str(&table.render());
    }
    let used = usage.used();
    out.push_str(&format!(
        "Month {}: {used} calls ({} interactive, {} background); projected {} by the end of the month.\n",
        usage.month.key,
        usage.used_by(Class::Interactive),
        usage.used_by(Class::Background),
        usage.projected()
    ));
    match usage.budget.monthly {
        None => out.push_str("Budget: off (monthly_call_budget); nothing is held back.\n"),
        Some(monthly) => out.push_str(&format!(
            "Budget: {monthly} calls, {} kept for interactive calls; {} left for background work, {} for interactive.\n",
            usage.budget.reserve_calls(),
            usage.left(Class::Background).unwrap_or(0),
            usage.left(Class::Interactive).unwrap_or(0),
        )),
    }
    if usage.spent {
        out.push_str(&format!(
            "DingTalk answered 90020 this month: the organisation's quota is spent until {}.\n",
            renews_text(&usage.month, tz).trim_start_matches("on ")
        ));
    }
    out
}

/// `dingops quota --json`: one document.
pub fn quota_json(usage: &QuotaUsage, tz: &jiff::tz::TimeZone) -> Value {
    let calls: Vec<Value> = usage
        .counts
        .iter()
        .map(|c| json!({"api": c.api, "class": c.class.as_str(), "calls": c.calls}))
        .collect();
    json!({
        "month": usage.month.key,
        "renews": renews_text(&usage.month, tz).trim_start_matches("on ").to_owned(),
        "calls": calls,
        "used": usage.used(),
        "interactive": usage.used_by(Class::Interactive),
        "background": usage.used_by(Class::Background),
        "budget": usage.budget.monthly,
        "reserve": usage.budget.monthly.map(|_| usage.budget.reserve_calls()),
        "left_background": usage.left(Class::Background),
        "left_interactive": usage.left(Class::Interactive),
        "projected": usage.projected(),
        "spent": usage.spent,
    })
}

/// [`quota_json`] as one line with terminal controls escaped.
pub fn quota_json_text(usage: &QuotaUsage, tz: &jiff::tz::TimeZone) -> String {
    format!("{}\n", printable_json(&quota_json(usage, tz).to_string()))
}

/// `plan`'s closing line with a budget: what this plan cost and what the month has left
/// for background work.
pub fn plan_cost_line(cost: u64, usage: &QuotaUsage) -> String {
    let monthly = usage.budget.monthly.unwrap_or(0);
    format!(
        "This plan cost {cost} calls; {} calls are left for background work in {} (budget {monthly}, {} used, {} kept for interactive calls).\n",
        usage.left(Class::Background).unwrap_or(0),
        usage.month.key,
        usage.used(),
        usage.budget.reserve_calls()
    )
}

/// What `apply` needs against what the month has left for it: `Err` with the refusal.
pub fn apply_fits(reads: u64, writes: u64, usage: &QuotaUsage) -> Result<(), String> {
    let Some(left) = usage.left(Class::Background) else {
        return Ok(());
    };
    let need = reads + writes;
    if need <= left {
        return Ok(());
    }
    Err(format!(
        "apply refused: the changes need {need} calls ({reads} reads, {writes} writes) but {} has {left} left for background work \
         (monthly_call_budget {}: {} used, {} kept for interactive calls). Nothing was changed. Raise monthly_call_budget, \
         narrow the policy, or wait for the month to renew.",
        usage.month.key,
        usage.budget.monthly.unwrap_or(0),
        usage.used(),
        usage.budget.reserve_calls()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::QuotaCount;
    use crate::quota::{Budget, Month, Reserve};

    fn usage(background: u64, interactive: u64) -> QuotaUsage {
        let month = Month::of(1_796_054_400_000, &jiff::tz::TimeZone::UTC);
        QuotaUsage {
            now_ms: month.starts_ms + (month.ends_ms - month.starts_ms) / 2,
            month,
            budget: Budget {
                monthly: Some(100),
                reserve: Reserve::Percent(20),
            },
            counts: vec![
                QuotaCount {
                    api: "chat_get".into(),
                    class: crate::quota::Class::Background,
                    calls: background,
                },
                QuotaCount {
                    api: "im_group_update".into(),
                    class: crate::quota::Class::Interactive,
                    calls: interactive,
                },
            ],
            spent: false,
        }
    }

    #[test]
    fn the_report_shows_use_by_api_and_class_budget_reserve_and_projection() {
        let text = quota_table(&usage(30, 10), &jiff::tz::TimeZone::UTC);
        assert!(text.contains("chat_get"), "{text}");
        assert!(
            text.contains("40 calls (10 interactive, 30 background); projected 80"),
            "{text}"
        );
        assert!(text.contains("Budget: 100 calls, 20 kept for interactive calls; 40 left for background work, 60 for interactive."), "{text}");
        let doc = quota_json(&usage(30, 10), &jiff::tz::TimeZone::UTC);
        assert_eq!(doc["used"], 40);
        assert_eq!(doc["left_background"], 40);
        assert_eq!(doc["projected"], 80);
    }

    #[test]
    fn apply_is_refused_when_reads_and_writes_do_not_fit_naming_the_numbers() {
        assert!(apply_fits(20, 20, &usage(30, 10)).is_ok());
        let e = apply_fits(30, 20, &usage(30, 10)).unwrap_err();
        assert!(e.contains("need 50 calls (30 reads, 20 writes)"), "{e}");
        assert!(e.contains("40 left for background work"), "{e}");
    }
}
