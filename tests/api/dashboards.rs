//! The Grafana dashboard and the Prometheus alert rules in `deploy/`: every metric a panel
//! or a rule names is one a running dingops exports at `GET /metrics`, the dashboard is
//! valid JSON with its variables, every alert has a severity, a summary and a runbook that
//! docs/operating.md has, and the Kubernetes PrometheusRules carry the same rules.
//!
//! Most labelled series the dashboard and the rules name are created at 0 when the
//! application starts (failure series, fixed label sets); the rest (commands, DingTalk
//! calls and their latency, replies, the quota's counts, Stream frames and ACKs, the rate
//! budget's wait) exist once something happened, so the test sends one command over HTTP
//! and one over Stream first.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dingops::config::{Mode, Settings};
use dingtalk_sim::chat::{new_msg_id, text_message};
use serde_json::Value;

use crate::helpers::*;

const RULES: &str = "deploy/prometheus/dingops.rules.yml";
const DASHBOARD: &str = "deploy/grafana/dingops.json";
const OPERATING: &str = "docs/operating.md";
const PROMETHEUS_RULES: &[&str] = &[
    "deploy/kubernetes/prometheusrule.yaml",
    "deploy/kubernetes-replicas/prometheusrule.yaml",
];
/// Where each alert's `runbook_url` points: docs/operating.md on the main branch.
const RUNBOOK_BASE: &str = "https://github.com/dingops/dingops/blob/main/docs/operating.md#";

fn read(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// One alert of the rules file, as its text says.
#[derive(Debug, Default)]
struct Rule {
    alert: String,
    expr: String,
    severity: Option<String>,
    summary: String,
    runbook_url: Option<String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The alerts of a rules file. The file is plain block YAML; a block scalar (`expr: |`,
/// `summary: >-`) is every following line indented deeper than its key.
fn rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        i += 1;
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            rules.push(Rule {
                alert: name.trim().to_owned(),
                ..Rule::default()
            });
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let block = || {
            lines[i..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect::<Vec<_>>()
        };
        let scalar = if value == "|" || value == ">-" {
            let body = block();
            i += body.len();
            body.join(" ").trim().to_owned()
        } else {
            value.to_owned()
        };
        match key {
            "expr" => rule.expr = scalar,
            "severity" => rule.severity = Some(scalar),
            "summary" => rule.summary = scalar,
            "runbook_url" => rule.runbook_url = Some(scalar),
            _ => {}
        }
    }
    rules
}

/// The `dingops_*` metric names in a PromQL expression (every metric dingops exports
/// starts so; the expressions name no other).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut start = 0;
    while let Some(at) = expr[start..].find("dingops_") {
        let from = start + at;
        let to = from + bytes[from..].iter().take_while(|b| word(**b)).count();
        // A label value (`job="dingops_x"`) or part of a longer word is not a name.
        let inside_word = from > 0 && word(bytes[from - 1]);
        let quoted = from > 0 && bytes[from - 1] == b'"';
        if !inside_word && !quoted {
            names.insert(expr[from..to].to_owned());
        }
        start = to;
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets and variable queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("a target's expr").to_owned());
        }
    }
    for var in dashboard["templating"]["list"].as_array().expect("variables") {
        if let Some(query) = var["definition"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    exprs
}

/// The metric names a `/metrics` text has samples of (histograms by their `_bucket`,
/// `_sum` and `_count` series, and by their family name).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            if let (Some(name), Some("histogram")) = (parts.next(), parts.next())
                && text.contains(&format!("\n{name}_count"))
            {
                names.insert(name.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// GitHub's anchors of a Markdown file's headings.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported_by_a_running_dingops() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let mut wanted = BTreeSet::new();
    for expr in dashboard_exprs(&dashboard) {
        wanted.extend(metric_names(&expr));
    }
    let rules = rules(&read(RULES));
    for rule in &rules {
        wanted.extend(metric_names(&rule.expr));
    }
    assert!(wanted.len() > 30, "too few names found: {wanted:?}");

    // Both ingresses, and a monthly budget, so that the quota's counts are exported.
    let app = spawn_stream_app(stream_sim(1000), Mode::Both, 1, |s: &mut Settings| {
        s.dingtalk.quota.monthly = Some(10_000);
    })
    .await;
    let chat = app.chat(GROUP);
    let reply = app.ask(&chat, &admin(), "/lock-dm").await;
    assert_reply(&reply, "✅", "forbidden");
    let frame = text_message(&new_msg_id(), &app.chat(GROUP), &admin(), "/unlock-dm");
    assert_eq!(push_and_ack(&app.sim, &frame).await.code, 200);
    app.replies(2).await;

    // The quota's counts come from the ledger every 2 s: read until nothing is missing or
    // the deadline passed, then assert once.
    let end = Instant::now() + Duration::from_secs(15);
    let missing = loop {
        let text = reqwest::get(format!("{}/metrics", app.address))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let have = exported(&text);
        let missing: Vec<&String> = wanted.iter().filter(|n| !have.contains(*n)).collect();
        if missing.is_empty() || Instant::now() >= end {
            break (missing.into_iter().cloned().collect::<Vec<_>>(), text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.0.is_empty(),
        "named by the dashboard or the rules but not exported: {:?}\n{}",
        missing.0,
        missing.1
    );
    // The mode and readiness the alerts read.
    let text = missing.1;
    assert!(
        text.contains(&format!(
            "dingops_info{{mode=\"both\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.contains("\ndingops_ready 1\n"), "{text}");
    // And every metric it exports has its row in docs/operating.md.
    let docs = read(OPERATING);
    let undocumented: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .filter(|name| !docs.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in {OPERATING}'s metrics table: {undocumented:?}"
    );
    app.stop().await;
}

#[test]
fn the_dashboard_has_a_datasource_and_an_instance_variable_and_every_panel_uses_both() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "dingops");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["type"], "query");
    assert_eq!(
        var("instance")["definition"],
        "label_values(dingops_info, instance)"
    );
    let mut targets = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains(r#"instance=~"$instance""#),
                "{} does not filter by the instance: {expr}",
                panel["title"]
            );
            targets += 1;
        }
    }
    assert!(targets >= 30, "{targets} targets");
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_section_in_the_operating_docs() {
    let rules = rules(&read(RULES));
    let names: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(
        names,
        [
            "DingopsQuotaProjectedOverBudget",
            "DingopsQuotaSpent",
            "DingopsStreamDown",
            "DingopsSignatureFailures",
            "DingopsPolicyDriftNotConverging",
            "DingopsApplyErrors",
            "DingopsTokenRefreshFailing",
            "DingopsRevertsOverdue",
            "DingopsLedgerWritesFailing",
            "DingopsNotReady",
        ]
    );
    let sections = anchors(&read(OPERATING));
    for rule in &rules {
        assert!(!rule.expr.is_empty(), "{rule:?}");
        assert!(
            matches!(rule.severity.as_deref(), Some("warning" | "critical")),
            "{rule:?}"
        );
        assert!(rule.summary.len() > 40, "{rule:?}");
        let anchor = format!("alert-{}", rule.alert.to_lowercase());
        assert_eq!(
            rule.runbook_url.as_deref(),
            Some(format!("{RUNBOOK_BASE}{anchor}").as_str()),
            "{rule:?}"
        );
        assert!(
            sections.contains(&anchor),
            "{OPERATING} has no section #{anchor} for {}",
            rule.alert
        );
    }
}

#[test]
fn the_kubernetes_prometheus_rules_carry_the_rules_file_unchanged() {
    let rules = read(RULES);
    // The rules file from its first key on (its header comments are its own).
    let groups: Vec<&str> = rules.lines().skip_while(|l| !l.starts_with("groups:")).collect();
    assert!(!groups.is_empty());
    for path in PROMETHEUS_RULES {
        let manifest = read(path);
        assert!(manifest.contains("kind: PrometheusRule"), "{path}");
        // `spec:` holds the groups, indented by two.
        let spec: Vec<String> = manifest
            .lines()
            .skip_while(|l| *l != "spec:")
            .skip(1)
            .map(|l| l.strip_prefix("  ").unwrap_or(l).to_owned())
            .collect();
        assert_eq!(
            spec, groups,
            "{path} differs from {RULES}: regenerate it (docs/operating.md, Alerts)"
        );
    }
}
