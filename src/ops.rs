//! Operators' tools behind `dingops check` and `dingops audit`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::clock::{format_ms, now_ms};
use crate::config::Settings;
use crate::dingtalk::DingTalk;
use crate::domain::who;
use crate::ledger::{AuditRow, SqliteLedger};
use crate::telemetry::Metrics;
use crate::worker::reply::advice;

/// One line of the `check` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    pub ok: bool,
    pub what: String,
    /// What to do when it failed.
    pub fix: Option<String>,
}

impl CheckItem {
    fn pass(what: impl Into<String>) -> Self {
        Self {
            ok: true,
            what: what.into(),
            fix: None,
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            ok: false,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Checks the configuration against reality: the ledger, both tokens with the real
/// credentials, and every static binding with `convertToOpenConversationId`.
pub async fn check(settings: &Settings) -> Vec<CheckItem> {
    let mut items = vec![CheckItem::pass(format!(
        "configuration is valid (app_key {}, listen {})",
        settings.dingtalk.app_key, settings.server.listen
    ))];
    let path = settings.ledger.database.clone();
    match tokio::task::spawn_blocking(move || SqliteLedger::open(&path)).await {
        Ok(Ok(_)) => items.push(CheckItem::pass(format!(
            "ledger {} opens",
            settings.ledger.database.display()
        ))),
        Ok(Err(e)) => items.push(CheckItem::fail(
            format!("ledger {} does not open: {e}", settings.ledger.database.display()),
            "check the `database` path, its directory and permissions",
        )),
        Err(e) => items.push(CheckItem::fail(format!("ledger check failed: {e}"), "retry")),
    }
    if settings.worker.admins.is_empty() && !settings.worker.trust_is_admin {
        items.push(CheckItem::fail(
            "nobody may run admin commands",
            "list staffIds in `admins` or turn `trust_is_admin` on",
        ));
    }
    let client = match DingTalk::new(&settings.dingtalk, Arc::new(Metrics::new())) {
        Ok(c) => c,
        Err(e) => {
            items.push(CheckItem::fail(
                format!("DingTalk client: {e}"),
                "check oapi_base and api_base",
            ));
            return items;
        }
    };
    let (legacy, modern) = client.check_tokens().await;
    for (name, result) in [
        (
            format!("legacy access token from {}gettoken", settings.dingtalk.oapi_base),
            legacy,
        ),
        (
            format!(
                "new access token from {}v1.0/oauth2/accessToken",
                settings.dingtalk.api_base
            ),
            modern,
        ),
    ] {
        items.push(match result {
            Ok(()) => CheckItem::pass(name),
            Err(e) => CheckItem::fail(format!("{name}: {e}"), advice(&e)),
        });
    }
    for (cid, chatid) in &settings.worker.groups {
        let what = format!("binding {cid} → {chatid}");
        items.push(match client.open_conversation_id(chatid).await {
            Ok(found) if &found == cid => CheckItem::pass(what),
            Ok(found) => CheckItem::fail(
                format!("{what}: DingTalk says {chatid} is group {found}"),
                "correct the pair in [groups], or bind the group with /bind in its chat",
            ),
            Err(e) => CheckItem::fail(format!("{what}: {e}"), advice(&e)),
        });
    }
    items
}

/// The checklist as printed by `dingops check`.
pub fn render_check(items: &[CheckItem]) -> String {
    let mut out = String::new();
    for item in items {
        let mark = if item.ok { "✅" } else { "❌" };
        out.push_str(&format!("{mark} {}\n", item.what));
        if let Some(fix) = &item.fix {
            out.push_str(&format!("   fix: {fix}\n"));
        }
    }
    let failed = items.iter().filter(|i| !i.ok).count();
    if failed == 0 {
        out.push_str("All checks passed.\n");
    } else {
        out.push_str(&format!("{failed} check(s) failed.\n"));
    }
    out
}

/// Parses `--since`: a duration back from now (`2h`, `30m`, `7days`) or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<u64, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(now_ms().saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("`{text}` is neither a duration (2h, 30m) nor a time (2026-11-26T08:00:00Z)"))
        .map(|t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64)
}

/// One audit row as a JSON object.
pub fn audit_json(row: &AuditRow) -> serde_json::Value {
    json!({
        "msg_id": row.msg_id,
        "received": format_ms(row.received_ms),
        "received_ms": row.received_ms,
        "group": row.conversation_id,
        "sender_staff_id": row.sender_staff_id,
        "sender_nick": row.sender_nick,
        "text": row.text,
        "command": row.command,
        "status": row.status,
        "result": row.result,
        "errcode": row.errcode,
        "detail": row.detail,
        "reply": row.reply,
        "finished_ms": row.finished_ms,
    })
}

/// Audit rows as an aligned table, oldest first.
pub fn audit_table(rows: &[AuditRow]) -> String {
    let header = [
        "time (UTC)",
        "group",
        "sender",
        "command",
        "result",
        "errcode",
        "reply",
    ];
    let mut lines: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for r in rows.iter().rev() {
        let sender = who(
            r.sender_staff_id.as_deref().unwrap_or(""),
            r.sender_nick.as_deref(),
        );
        lines.push([
            format_ms(r.received_ms).trim_end_matches(" UTC").to_owned(),
            r.conversation_id.clone(),
            sender,
            r.command
                .clone()
                .unwrap_or_else(|| r.text.clone().unwrap_or_default()),
            r.result.clone().unwrap_or_else(|| r.status.clone()),
            r.errcode.map_or("-".into(), |c| c.to_string()),
            r.reply.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
