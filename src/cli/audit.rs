//! `dingops audit`'s table and JSON lines, and its `--since`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::table::{Fit, Table};
use crate::clock::format_ms;
use crate::domain::{printable_json, who};
use crate::ledger::AuditRow;

/// Parses `--since`: a duration back from `now_ms` (`2h`, `30m`, `7days`) or an RFC 3339 time.
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(now_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
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
    let mut table = Table::new(
        &[
            "time (UTC)",
            "group",
            "sender",
            "command",
            "result",
            "errcode",
            "reply",
        ],
        &[
            Fit::Whole,
            Fit::Head,
            Fit::Head,
            Fit::Head,
            Fit::Whole,
            Fit::Whole,
            Fit::Whole,
        ],
    );
    for r in rows.iter().rev() {
        let sender = who(
            r.sender_staff_id.as_deref().unwrap_or(""),
            r.sender_nick.as_deref(),
        );
        let command = r.command.as_deref().or(r.text.as_deref()).unwrap_or_default();
        table.row(&[
            format_ms(r.received_ms).trim_end_matches(" UTC"),
            &r.conversation_id,
            &sender,
            command,
            r.result.as_deref().unwrap_or(&r.status),
            &r.errcode.map_or("-".into(), |c| c.to_string()),
            r.reply.as_deref().unwrap_or("-"),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CELL_CHARS, steers_terminal};

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
