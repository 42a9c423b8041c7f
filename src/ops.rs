//! Operators' tools behind `dingops check` and `dingops audit`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::clock::{format_ms, now_ms};
use crate::config::Settings;
use crate::dingtalk::DingTalk;
use crate::dingtalk::advice;
pub use crate::domain::{printable, steers_terminal};
use crate::domain::{printable_json, table_cell, who};
use crate::ledger::AuditRow;
use crate::telemetry::Metrics;

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
    if let Some(path) = &settings.fleet.policy {
        items.push(match crate::fleet::policy::Policy::load(path) {
            Ok(policy) => CheckItem::pass(format!(
                "policy {} is valid ({} rules)",
                path.display(),
                policy.rules.len()
            )),
            Err(e) => CheckItem::fail(
                e.to_string(),
                "correct the policy file; `serve` refuses to start with it",
            ),
        });
    }
    let mut ledger = None;
    let opened = match crate::ledger::open(&settings.ledger.database).await {
        Ok(opened) => opened.call(|l| l.ping()).await.map(|()| opened),
        Err(e) => Err(e),
    };
    match opened {
        Ok(opened) => {
            items.push(CheckItem::pass(format!(
                "ledger {} opens and takes a write",
                settings.ledger.database
            )));
            ledger = Some(opened);
        }
        Err(e) => items.push(CheckItem::fail(
            format!("ledger {} does not open: {e}", settings.ledger.database),
            match settings.ledger.database {
                crate::config::Database::Sqlite(_) => {
                    "check the `database` path, its directory and permissions"
                }
                crate::config::Database::Postgres(_) => {
                    "check the `database` URL: host, port, user, password, database name and sslmode"
                }
            },
        )),
    }
    if settings.worker.admins.is_empty() && !settings.worker.trust_is_admin {
        items.push(CheckItem::fail(
            "nobody may run admin commands",
            "list the staffIds of the admins in `admins`",
        ));
    }
    // A running `serve` may share the app's rate budget through the ledger: check's calls
    // draw on it too. Without a ledger they are paced here alone.
    let metrics = Arc::new(Metrics::new());
    let client = match ledger {
        Some(ledger) => DingTalk::with_budget(&settings.dingtalk, metrics, ledger),
        None => DingTalk::new(&settings.dingtalk, metrics),
    };
    let client = match client {
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
    if settings.stream.mode.stream() {
        items.push(check_stream(settings).await);
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

/// Opens one Stream connection with the real credentials and closes it again.
async fn check_stream(settings: &Settings) -> CheckItem {
    use crate::ingress::stream::dial::{DialError, Dialer};
    let what = format!(
        "Stream connection through {}v1.0/gateway/connections/open",
        settings.dingtalk.api_base
    );
    let dialer = match Dialer::new(&settings.dingtalk) {
        Ok(d) => d,
        Err(e) => return CheckItem::fail(format!("{what}: {e}"), "check api_base and proxy"),
    };
    match dialer.dial().await {
        Ok((mut socket, endpoint)) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
            CheckItem::pass(format!(
                "{what}: connected to {}",
                endpoint.host_str().unwrap_or_default()
            ))
        }
        Err(e @ DialError::Refused { .. }) => CheckItem::fail(
            format!("{what}: {e}"),
            "copy the AppKey and AppSecret of the app into `app_key` and `app_secret`, and set the robot's message receiving mode to Stream mode",
        ),
        Err(e @ DialError::Insecure { .. }) => CheckItem::fail(
            format!("{what}: {e}"),
            "point `api_base` at DingTalk (https://api.dingtalk.com), whose connections/open hands out wss:// endpoints",
        ),
        Err(e) => CheckItem::fail(
            format!("{what}: {e}"),
            "allow outbound HTTPS to api.dingtalk.com:443 and wss-open-connection.dingtalk.com:443, or set `proxy`",
        ),
    }
}

/// The checklist as printed by `dingops check`.
pub fn render_check(items: &[CheckItem]) -> String {
    let mut out = String::new();
    for item in items {
        let mark = if item.ok { "✅" } else { "❌" };
        // Error messages in `what` can quote DingTalk's errmsg.
        out.push_str(&format!("{mark} {}\n", printable(&item.what)));
        if let Some(fix) = &item.fix {
            out.push_str(&format!("   fix: {}\n", printable(fix)));
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

/// One audit row as one line of JSON. JSON escapes C0 controls itself; DEL, C1 controls
/// and bidirectional overrides are escaped too (`\u009b` is still the same string to a
/// JSON reader, but no longer a terminal command).
pub fn audit_json_line(row: &AuditRow) -> String {
    printable_json(&audit_json(row).to_string()).into_owned()
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
        let command = r.command.as_deref().or(r.text.as_deref()).unwrap_or_default();
        lines.push([
            format_ms(r.received_ms).trim_end_matches(" UTC").to_owned(),
            table_cell(&r.conversation_id).into_owned(),
            table_cell(&sender).into_owned(),
            table_cell(command).into_owned(),
            printable(r.result.as_deref().unwrap_or(&r.status)).into_owned(),
            r.errcode.map_or("-".into(), |c| c.to_string()),
            printable(r.reply.as_deref().unwrap_or("-")).into_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CELL_CHARS;
    use std::borrow::Cow;

    #[test]
    fn printable_escapes_terminal_controls_and_bidi_overrides_but_keeps_other_text() {
        assert!(matches!(printable("张三 (admin01)"), Cow::Borrowed(_)));
        assert_eq!(printable("\u{1b}[2J\u{1b}[Hroot"), "\\u{1b}[2J\\u{1b}[Hroot");
        assert_eq!(printable("a\u{9b}2Jb\u{7f}"), "a\\u{9b}2Jb\\u{7f}");
        assert_eq!(printable("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(printable("line\nbreak\r"), "line\\u{a}break\\u{d}");
    }

    /// A finished row of `nick` in group `cid` that typed `text` (not a command).
    fn row(cid: &str, nick: &str, text: &str) -> AuditRow {
        AuditRow {
            msg_id: "m".into(),
            received_ms: 0,
            conversation_id: cid.into(),
            sender_staff_id: Some("s".into()),
            sender_nick: Some(nick.into()),
            text: Some(text.into()),
            command: None,
            status: "done".into(),
            result: Some("info".into()),
            errcode: None,
            detail: None,
            reply: None,
            finished_ms: None,
        }
    }

    #[test]
    fn an_audit_json_line_has_no_raw_control_characters_and_still_parses() {
        let row = row("cid==", "\u{1b}[2J\u{9b}H\u{202e}root", "/help");
        let line = audit_json_line(&row);
        assert!(!line.chars().any(steers_terminal), "{line}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["sender_nick"], "\u{1b}[2J\u{9b}H\u{202e}root");
    }

    #[test]
    fn the_audit_table_cuts_long_groups_nicks_and_texts_to_a_cell_each() {
        let long = row(&"cid".repeat(300), &"名".repeat(5000), &"x".repeat(20_000));
        let table = audit_table(&[long, row("cid==", "Ada", "/help")]);
        let widths: Vec<usize> = table.lines().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w <= 180), "{widths:?}: {table}");
        assert!(
            table.contains(&format!("{}…", "名".repeat(CELL_CHARS - 1))),
            "{table}"
        );
        assert!(
            table.contains(&format!("{}…", "x".repeat(CELL_CHARS - 1))),
            "{table}"
        );
    }
}
