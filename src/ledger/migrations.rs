//! Versioned schema migrations of the SQLite ledger.
//!
//! `PRAGMA user_version` holds the number of steps a database has taken; opening it runs the
//! steps it has not, each in its own transaction together with the new version number, so a
//! crash leaves either the old or the new version, never half a step. Steps are only ever
//! appended: a released step is never edited.

use rusqlite::Connection;

use super::{LedgerError, sql};

/// The steps, in order; step `i` brings a database from version `i` to `i + 1`.
///
/// Step 1 is the schema of the first release. Databases made before versioning existed have
/// its tables at version 0; its statements are written to leave those as they are.
const STEPS: &[&str] = &[
    // 1: commands (dedupe, audit, queue, resumption), bindings, last DM state per group.
    "CREATE TABLE IF NOT EXISTS commands (
    msg_id              TEXT PRIMARY KEY,
    received_ms         INTEGER NOT NULL,
    conversation_id     TEXT NOT NULL,
    conversation_type   TEXT NOT NULL,
    conversation_title  TEXT,
    sender_staff_id     TEXT,
    sender_nick         TEXT,
    sender_is_admin     INTEGER NOT NULL,
    msgtype             TEXT NOT NULL,
    text                TEXT,
    session_webhook     TEXT,
    session_expires_ms  INTEGER,
    status              TEXT NOT NULL,
    command             TEXT,
    result              TEXT,
    errcode             INTEGER,
    detail              TEXT,
    answer_text         TEXT,
    reply               TEXT,
    finished_ms         INTEGER
);
CREATE INDEX IF NOT EXISTS commands_open ON commands(received_ms) WHERE status != 'done';
-- A per-group index cost a third of ingest throughput (one more b-tree page dirtied per
-- callback); `audit --group` scans instead.
DROP INDEX IF EXISTS commands_group;
CREATE TABLE IF NOT EXISTS bindings (
    conversation_id TEXT PRIMARY KEY,
    chat_id         TEXT NOT NULL,
    bound_by        TEXT NOT NULL,
    bound_ms        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dm_state (
    conversation_id TEXT PRIMARY KEY,
    prohibited      INTEGER NOT NULL,
    set_by          TEXT NOT NULL,
    set_by_nick     TEXT,
    set_ms          INTEGER NOT NULL
);",
    // 2: one row that `/readyz` rewrites: a probe that proves the ledger takes a durable
    // write without reading the commands table.
    "CREATE TABLE IF NOT EXISTS health (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_ms INTEGER NOT NULL
);
INSERT OR IGNORE INTO health (id, probed_ms) VALUES (1, 0);",
    // 3: timed reverts. `state` is pending, done, failed or replaced; at most one pending
    // job per setting of a group.
    "CREATE TABLE IF NOT EXISTS jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id   TEXT NOT NULL,
    chat_id           TEXT NOT NULL,
    setting           TEXT NOT NULL,
    value             INTEGER NOT NULL,
    due_ms            INTEGER NOT NULL,
    scheduled_by      TEXT NOT NULL,
    scheduled_command TEXT NOT NULL,
    scheduled_ms      INTEGER NOT NULL,
    state             TEXT NOT NULL,
    result            TEXT,
    finished_ms       INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs(due_ms) WHERE state IN ('pending', 'running');
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_pending ON jobs(conversation_id, setting)
    WHERE state = 'pending';",
    "CREATE TABLE IF NOT EXISTS departments (
    dept_id              INTEGER PRIMARY KEY,
    parent_id            INTEGER,
    name                 TEXT NOT NULL,
    path                 TEXT NOT NULL,
    chat_id              TEXT,
    open_conversation_id TEXT
);",
    // 5: the shared DingTalk rate budget: the send slots reserved per API by every process
    // on this ledger. Rows older than one window are deleted by the reservations themselves.
    "CREATE TABLE IF NOT EXISTS call_slots (
    api     TEXT NOT NULL,
    slot_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS call_slots_by_api ON call_slots(api, slot_ms);",
    // 6: named leases of replicas sharing this ledger: a group's commands run on the holder
    // of `group:<openConversationId>` until `until_ms` (wall-clock ms); an expired lease may
    // be taken by another holder.
    "CREATE TABLE IF NOT EXISTS leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);",
    // 7: the governance core. What dingops knows of each of the seven settings of a group
    // (the DM switch's state moves here from `dm_state`), and for each timed command the
    // value it set and whether its end restores the value before it.
    "CREATE TABLE IF NOT EXISTS group_settings (
    conversation_id TEXT NOT NULL,
    setting         TEXT NOT NULL,
    value           INTEGER NOT NULL,
    set_by          TEXT NOT NULL,
    set_by_nick     TEXT,
    via             TEXT NOT NULL,
    set_ms          INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, setting)
);
INSERT OR IGNORE INTO group_settings (conversation_id, setting, value, set_by, set_by_nick, via, set_ms)
    SELECT conversation_id, 'dm', prohibited, set_by, set_by_nick,
           CASE set_by WHEN 'policy' THEN 'apply' WHEN 'dingops (timer)' THEN 'revert' ELSE 'chat' END,
           set_ms
    FROM dm_state;
DROP TABLE dm_state;
ALTER TABLE jobs ADD COLUMN set_value INTEGER;
ALTER TABLE jobs ADD COLUMN restore TEXT NOT NULL DEFAULT 'unknown';",
    // 8: the monthly API quota (docs/dingtalk.md, "The monthly quota"): calls counted per
    // calendar month, API and class by every process on this ledger, and the months DingTalk
    // answered 90020 for.
    "CREATE TABLE IF NOT EXISTS quota_calls (
    month TEXT NOT NULL,
    api   TEXT NOT NULL,
    class TEXT NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (month, api, class)
);
CREATE TABLE IF NOT EXISTS quota_spent (
    month     TEXT PRIMARY KEY,
    marked_ms INTEGER NOT NULL
);",
    // 9: interactive cards (docs/architecture.md, "Buttons"): each card dingops sent, with
    // its status, the buttons it offers (a JSON array) and the click it works on; and the
    // approvals of the two-person rule. A card's clicks are rows of `commands`. The rowid
    // of `cards` is its insertion order.
    "CREATE TABLE IF NOT EXISTS cards (
    out_track_id    TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    msg_id          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    setting         TEXT,
    created_by      TEXT NOT NULL,
    status          TEXT NOT NULL,
    buttons         TEXT NOT NULL,
    pending_click   TEXT,
    data            TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cards_of_setting ON cards(conversation_id, setting, status);
CREATE TABLE IF NOT EXISTS approvals (
    code            TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    asked_by        TEXT NOT NULL,
    asked_by_nick   TEXT,
    asked_ms        INTEGER NOT NULL,
    expires_ms      INTEGER NOT NULL,
    out_track_id    TEXT,
    policy_digest   TEXT NOT NULL,
    state           TEXT NOT NULL,
    decided_by      TEXT,
    decided_ms      INTEGER
);",
    // 10: the policy in force for the organisation: the digest of the policy file `serve`
    // loaded last (or `dingops apply` started with); a policy run writes only while its
    // policy is this one (docs/reliability.md).
    "CREATE TABLE IF NOT EXISTS policy_in_force (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    digest  TEXT NOT NULL,
    set_by  TEXT NOT NULL,
    set_ms  INTEGER NOT NULL
);",
];

/// The version a database has after all steps.
pub const LATEST: u32 = STEPS.len() as u32;

/// The database's current version.
pub fn version(conn: &Connection) -> Result<u32, LedgerError> {
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, u32>(0))
        .map_err(sql("read schema version"))
}

/// Brings the database to [`LATEST`]. A database from a newer dingops is refused rather than
/// written with an older idea of its schema.
pub fn migrate(conn: &Connection) -> Result<(), LedgerError> {
    let current = version(conn)?;
    if current > LATEST {
        return Err(LedgerError::Schema(format!(
            "the ledger has schema version {current}, newer than this dingops knows ({LATEST}); \
             run the dingops that wrote it, or a newer one"
        )));
    }
    for (i, step) in STEPS.iter().enumerate().skip(current as usize) {
        let next = i as u32 + 1;
        let sql_text = format!("BEGIN IMMEDIATE;\n{step}\nPRAGMA user_version = {next};\nCOMMIT;");
        if let Err(e) = conn.execute_batch(&sql_text) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(LedgerError::Sqlite {
                op: "migrate",
                source: e,
            });
        }
        tracing::info!(version = next, "ledger schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema as the first release created it, before versioning: no user_version.
    const UNVERSIONED_SCHEMA: &str = "
        CREATE TABLE commands (
            msg_id TEXT PRIMARY KEY, received_ms INTEGER NOT NULL, conversation_id TEXT NOT NULL,
            conversation_type TEXT NOT NULL, conversation_title TEXT, sender_staff_id TEXT,
            sender_nick TEXT, sender_is_admin INTEGER NOT NULL, msgtype TEXT NOT NULL, text TEXT,
            session_webhook TEXT, session_expires_ms INTEGER, status TEXT NOT NULL, command TEXT,
            result TEXT, errcode INTEGER, detail TEXT, answer_text TEXT, reply TEXT,
            finished_ms INTEGER);
        CREATE INDEX commands_open ON commands(received_ms) WHERE status != 'done';
        CREATE INDEX commands_group ON commands(conversation_id);
        CREATE TABLE bindings (conversation_id TEXT PRIMARY KEY, chat_id TEXT NOT NULL,
            bound_by TEXT NOT NULL, bound_ms INTEGER NOT NULL);
        CREATE TABLE dm_state (conversation_id TEXT PRIMARY KEY, prohibited INTEGER NOT NULL,
            set_by TEXT NOT NULL, set_by_nick TEXT, set_ms INTEGER NOT NULL);
        INSERT INTO bindings VALUES ('cidOld==', 'chatold1', 'Ada (u1)', 1);
        INSERT INTO commands (msg_id, received_ms, conversation_id, conversation_type,
            sender_is_admin, msgtype, status) VALUES ('mOld', 1, 'cidOld==', '2', 0, 'text', 'done');
    ";

    #[test]
    fn a_new_database_reaches_the_latest_version() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        assert_eq!(version(&conn).unwrap(), LATEST);
        // Running again is a no-op.
        migrate(&conn).unwrap();
        assert_eq!(version(&conn).unwrap(), LATEST);
    }

    #[test]
    fn a_database_made_before_versioning_keeps_its_rows_and_is_brought_up_to_date() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(UNVERSIONED_SCHEMA).unwrap();
        assert_eq!(version(&conn).unwrap(), 0);
        migrate(&conn).unwrap();
        assert_eq!(version(&conn).unwrap(), LATEST);
        let chat: String = conn
            .query_row(
                "SELECT chat_id FROM bindings WHERE conversation_id = 'cidOld=='",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(chat, "chatold1");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM commands", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let group_index: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'commands_group'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(group_index, 0, "the per-group index is dropped");
    }

    #[test]
    fn a_step_8_database_keeps_its_rows_and_gains_the_card_tables() {
        let conn = Connection::open_in_memory().unwrap();
        for (i, step) in STEPS.iter().take(8).enumerate() {
            conn.execute_batch(&format!("{step}\nPRAGMA user_version = {};", i + 1))
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO commands (msg_id, received_ms, conversation_id, conversation_type,
                 sender_is_admin, msgtype, status) VALUES ('m8', 1, 'cid8==', '2', 0, 'text', 'accepted');
             INSERT INTO quota_calls VALUES ('2026-12', 'chat_get', 'background', 3);",
        )
        .unwrap();
        assert_eq!(version(&conn).unwrap(), 8);
        migrate(&conn).unwrap();
        assert_eq!(version(&conn).unwrap(), LATEST);
        let kept: (String, i64) = conn
            .query_row(
                "SELECT c.msg_id, q.calls FROM commands c, quota_calls q",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(kept, ("m8".to_owned(), 3));
        let empty: (i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM cards), (SELECT count(*) FROM approvals)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(empty, (0, 0));
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT out_track_id FROM cards
                 WHERE conversation_id = 'c' AND setting = 'dm' AND status = 'done'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("cards_of_setting"), "{plan}");
    }

    #[test]
    fn a_database_from_a_newer_dingops_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {};", LATEST + 1))
            .unwrap();
        let err = migrate(&conn).unwrap_err();
        assert!(err.to_string().contains("newer than this dingops knows"), "{err}");
    }
}
