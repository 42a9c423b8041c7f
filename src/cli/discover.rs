//! `dingops discover`'s table, summary and JSON.

use serde_json::{Value, json};

use super::table::{Fit, Table};
use crate::domain::{printable, printable_json, table_cell};
use crate::fleet::discover::{BOUND_BY, BindState, CONFIGURATION, Report};

/// The table on stdout: one line per department, then the summary.
pub fn table(report: &Report) -> String {
    let mut table = Table::new(
        &["department", "group", "chatid", "openConversationId", "bound"],
        &[Fit::Tail, Fit::Head, Fit::Whole, Fit::Head, Fit::Whole],
    );
    for r in &report.rows {
        let (group, chat, cid) = match &r.found.group {
            None => ("-", "-".to_owned(), "-"),
            Some(g) => (
                match &g.name {
                    Ok(n) => n.as_str(),
                    Err(_) => "(name unreadable)",
                },
                g.chat_id.to_string(),
                g.open_conversation_id.as_str(),
            ),
        };
        let bound = match &r.state {
            BindState::NoGroup => "-".to_owned(),
            BindState::NotBound => "no".to_owned(),
            BindState::Bound { by } => format!("yes (by {})", table_cell(by)),
            BindState::Configured => "yes (configuration)".to_owned(),
            BindState::NewlyBound => "newly bound".to_owned(),
            BindState::Conflict { chat_id, .. } => format!("CONFLICT: bound to {chat_id}"),
        };
        table.row(&[r.found.path.as_str(), group, &chat, cid, &bound]);
    }
    let mut out = table.render();
    out.push('\n');
    out.push_str(&summary_text(report));
    out
}

/// The summary sentences under the table.
pub fn summary_text(report: &Report) -> String {
    let s = report.summary();
    let mut out = format!(
        "{} departments, {} with a department group: {} already bound",
        s.departments, s.with_group, s.already_bound
    );
    if report.applied {
        out.push_str(&format!(", {} newly bound", s.newly_bound));
    } else {
        out.push_str(&format!(", {} not bound", s.not_bound));
    }
    out.push_str(&format!(", {} conflicts.\n", s.conflicts));
    if report.applied {
        out.push_str("Stored the department tree in the ledger.\n");
    } else if s.not_bound > 0 {
        out.push_str("Run `dingops discover --apply` to bind the groups not bound yet.\n");
    }
    for r in &report.rows {
        if let (Some(g), BindState::Conflict { chat_id, by }) = (&r.found.group, &r.state) {
            out.push_str(&format!(
                "Conflict: group {} ({}) is bound to chatid {chat_id} by {}, but its department group is {}; left as it is. Check which is right, then run /bind <chatid> in that group.\n",
                printable(&g.open_conversation_id),
                printable(&r.found.path),
                printable(by),
                g.chat_id,
            ));
        }
    }
    if let Some(why) = report
        .rows
        .iter()
        .find_map(|r| r.found.group.as_ref().and_then(|g| g.name.as_ref().err()))
    {
        out.push_str(&format!(
            "{} group names could not be read with chat/get (first error: {}); the app may lack permission qyapi_chat_read. Binding does not need them.\n",
            s.names_unreadable,
            printable(why)
        ));
    }
    out
}

/// The whole result as one JSON document.
pub fn json(report: &Report) -> Value {
    let s = report.summary();
    let departments: Vec<Value> = report
        .rows
        .iter()
        .map(|r| {
            let g = r.found.group.as_ref();
            let (bound_chat_id, bound_by) = match &r.state {
                BindState::Bound { by } => (g.map(|g| g.chat_id.to_string()), Some(by.clone())),
                BindState::Configured => (g.map(|g| g.chat_id.to_string()), Some(CONFIGURATION.to_owned())),
                BindState::NewlyBound => (g.map(|g| g.chat_id.to_string()), Some(BOUND_BY.to_owned())),
                BindState::Conflict { chat_id, by } => (Some(chat_id.to_string()), Some(by.clone())),
                BindState::NoGroup | BindState::NotBound => (None, None),
            };
            json!({
                "dept_id": r.found.dept_id,
                "parent_id": r.found.parent_id,
                "name": r.found.name,
                "path": r.found.path,
                "chat_id": g.map(|g| g.chat_id.to_string()),
                "open_conversation_id": g.map(|g| g.open_conversation_id.clone()),
                "group_name": g.and_then(|g| g.name.as_ref().ok()),
                "group_name_error": g.and_then(|g| g.name.as_ref().err()),
                "binding": r.state.key(),
                "bound_chat_id": bound_chat_id,
                "bound_by": bound_by,
            })
        })
        .collect();
    json!({
        "applied": report.applied,
        "departments": departments,
        "summary": {
            "departments": s.departments,
            "with_group": s.with_group,
            "already_bound": s.already_bound,
            "newly_bound": s.newly_bound,
            "not_bound": s.not_bound,
            "conflicts": s.conflicts,
            "names_unreadable": s.names_unreadable,
        },
    })
}

/// [`json`] as text, with terminal controls escaped (still the same JSON).
pub fn json_text(report: &Report) -> String {
    let text = serde_json::to_string_pretty(&json(report)).unwrap_or_default();
    format!("{}\n", printable_json(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChatId;
    use crate::domain::steers_terminal;
    use crate::fleet::discover::{Found, FoundGroup, classify};
    use std::collections::BTreeMap;

    #[test]
    fn json_text_and_the_table_escape_terminal_controls() {
        let f = Found {
            dept_id: 1,
            parent_id: None,
            name: "d1".into(),
            path: "\u{1b}[2J\u{202e}x".into(),
            depth: 0,
            group: None,
            children: Vec::new(),
        };
        let report = Report {
            rows: classify(vec![f], &[], &BTreeMap::new()),
            applied: false,
        };
        let text = json_text(&report);
        assert!(!text.chars().any(|c| steers_terminal(c) && c != '\n'), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["departments"][0]["path"], "\u{1b}[2J\u{202e}x");
        assert!(!table(&report).contains('\u{1b}'));
    }

    #[test]
    fn an_unreadable_group_name_is_shown_as_such_with_the_likely_cause() {
        let f = Found {
            dept_id: 1,
            parent_id: None,
            name: "Root".into(),
            path: "Root".into(),
            depth: 0,
            group: Some(FoundGroup {
                chat_id: ChatId::parse("chatroot").unwrap(),
                open_conversation_id: "cidchatroot==".into(),
                name: Err("60011".into()),
            }),
            children: Vec::new(),
        };
        let report = Report {
            rows: classify(vec![f], &[], &BTreeMap::new()),
            applied: false,
        };
        assert!(table(&report).contains("(name unreadable)"));
        assert!(table(&report).contains("qyapi_chat_read"));
    }
}
