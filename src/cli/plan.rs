//! `dingops plan`'s table and JSON.

use serde_json::{Value, json};

use super::table::{Fit, Table};
use crate::clock::format_ms;
use crate::domain::{printable, printable_json};
use crate::fleet::plan::{Now, Plan};
use crate::governance::policy::Setting;

/// The plan as an aligned table (group, name, setting, now → wanted), error rows included,
/// and a closing line with the counts.
pub fn plan_table(plan: &Plan) -> String {
    let mut table = Table::new(
        &["group", "name", "setting", "now", "", "wanted"],
        &[
            Fit::Head,
            Fit::Head,
            Fit::Whole,
            Fit::Whole,
            Fit::Whole,
            Fit::Whole,
        ],
    );
    for g in &plan.groups {
        let group = g.conversation_id.as_str();
        let name = g.name.as_deref().unwrap_or("-");
        if let Some(e) = &g.error {
            table.row(&[group, name, &format!("error: {e}")]);
            continue;
        }
        for c in &g.changes {
            table.row(&[
                group,
                name,
                c.setting.key(),
                &c.now.text(c.setting, plan.at_ms),
                "→",
                c.setting.word(c.wanted),
            ]);
        }
        for h in &g.held {
            table.row(&[
                group,
                name,
                h.setting.key(),
                h.setting.word(h.value),
                "=",
                &format!(
                    "held by an exception until {}, by {} (`{}`); then {}",
                    format_ms(h.until_ms),
                    h.by,
                    h.command,
                    h.setting.word(h.wanted)
                ),
            ]);
        }
    }
    for u in &plan.unresolved {
        // The selector is the operator's own text: shown whole.
        table.row_fitted(vec![
            format!("rule {}", u.rule),
            printable(&u.selector).into_owned(),
            format!("error: {}", printable(&u.reason)),
        ]);
    }
    let mut out = String::new();
    if !table.is_empty() {
        out = table.render();
    }
    let unchanged = plan
        .groups
        .iter()
        .filter(|g| g.error.is_none() && g.changes.is_empty())
        .count();
    let with_changes = plan.groups.iter().filter(|g| !g.changes.is_empty()).count();
    if plan.change_count() == 0 && plan.error_count() == 0 {
        out.push_str(&format!(
            "Nothing to do: {unchanged} groups are as the policy wants"
        ));
    } else {
        out.push_str(&format!(
            "{} changes in {with_changes} groups; {unchanged} groups as the policy wants; {} errors",
            plan.change_count(),
            plan.error_count()
        ));
    }
    match plan.held_count() {
        0 => out.push_str(".\n"),
        n => out.push_str(&format!("; {n} settings held by exceptions.\n")),
    }
    out
}

/// [`plan_json`] as one line of text, with terminal controls escaped (still the same JSON):
/// what `plan --json` prints.
pub fn plan_json_text(plan: &Plan) -> String {
    format!("{}\n", printable_json(&plan_json(plan).to_string()))
}

/// The plan as one JSON document, for scripts.
pub fn plan_json(plan: &Plan) -> Value {
    let groups: Vec<Value> = plan
        .groups
        .iter()
        .map(|g| {
            let changes: Vec<Value> = g
                .changes
                .iter()
                .map(|c| {
                    let (field, now) = match (&c.setting, &c.now) {
                        (Setting::Switch(s), Now::Live(v)) => (json!(s.field()), json!(v)),
                        (Setting::Switch(s), _) => (json!(s.field()), Value::Null),
                        (Setting::Dm, Now::Dm(Some(d))) => (Value::Null, json!(u8::from(d.prohibited))),
                        (Setting::Dm, _) => (Value::Null, Value::Null),
                    };
                    json!({
                        "setting": c.setting.key(),
                        "field": field,
                        "now": now,
                        "now_text": c.now.text(c.setting, plan.at_ms),
                        "wanted": c.wanted,
                        "wanted_text": c.setting.word(c.wanted),
                    })
                })
                .collect();
            let exceptions: Vec<Value> = g
                .held
                .iter()
                .map(|h| {
                    json!({
                        "setting": h.setting.key(),
                        "value": h.value,
                        "value_text": h.setting.word(h.value),
                        "wanted": h.wanted,
                        "wanted_text": h.setting.word(h.wanted),
                        "until_ms": h.until_ms,
                        "by": h.by,
                        "command": h.command,
                    })
                })
                .collect();
            json!({
                "group": g.conversation_id,
                "chatid": g.chat_id.as_str(),
                "name": g.name,
                "changes": changes,
                "exceptions": exceptions,
                "error": g.error,
            })
        })
        .collect();
    let unresolved: Vec<Value> = plan
        .unresolved
        .iter()
        .map(|u| json!({"rule": u.rule, "selector": u.selector, "reason": u.reason}))
        .collect();
    json!({
        "groups": groups,
        "unresolved": unresolved,
        "summary": {
            "groups": plan.groups.len(),
            "changes": plan.change_count(),
            "exceptions": plan.held_count(),
            "errors": plan.error_count(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::plan::Change;
    use crate::fleet::plan::tests::{group, mute};
    use crate::governance::policy::Unresolved;

    #[test]
    fn the_table_shows_now_and_wanted_in_the_policys_words_and_escapes_names() {
        let plan = Plan {
            groups: vec![
                group("cidA==", vec![mute(0)], None),
                group(
                    "cidB==",
                    vec![Change {
                        setting: Setting::Dm,
                        now: Now::Dm(None),
                        wanted: 1,
                    }],
                    None,
                ),
                group(
                    "cidC==",
                    vec![],
                    Some("cannot read the group: DingTalk errcode 49000: x"),
                ),
            ],
            unresolved: vec![Unresolved {
                rule: 2,
                selector: "dept:7".into(),
                reason: "department 7 is not among the discovered departments".into(),
            }],
            at_ms: 0,
        };
        let table = plan_table(&plan);
        assert!(table.contains("mute_all  false    →  true"), "{table}");
        assert!(table.contains("dm        unknown  →  locked"), "{table}");
        assert!(
            table.contains("error: cannot read the group: DingTalk errcode 49000"),
            "{table}"
        );
        assert!(table.contains("rule 2"), "{table}");
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(
            table.ends_with("2 changes in 2 groups; 0 groups as the policy wants; 2 errors.\n"),
            "{table}"
        );
        let json = plan_json(&plan);
        assert_eq!(json["summary"]["changes"], 2);
        assert_eq!(json["groups"][0]["changes"][0]["field"], "chatBannedType");
        assert_eq!(json["groups"][0]["changes"][0]["now"], 0);
        assert_eq!(json["groups"][1]["changes"][0]["now"], Value::Null);
    }
}
