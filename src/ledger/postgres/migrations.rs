//! Versioned schema migrations of the PostgreSQL ledger.
//!
//! The one-row table `schema_version` holds the number of steps a database has taken. Each
//! missing step runs in its own transaction together with the new version number, under a
//! transaction-scoped advisory lock, so replicas that start at the same time migrate one
//! after the other and a crash leaves either the old or the new version. A database written
//! by a newer dingops (a higher version) is refused. Steps are only ever appended.

use tokio_postgres::Client;

use super::super::LedgerError;
use super::pg;

/// The steps, in order; step `i` brings a database from version `i` to `i + 1`.
///
/// Text that is compared or sorted (msgIds, openConversationIds) uses the "C" collation:
/// byte order, as SQLite sorts, whatever the server's locale, and cheaper to compare.
const STEPS: &[&str] = &[
    // 1: the schema SQLite reached in four steps. `pos` is the acceptance order (the worker's
    // cursor); `msg_id` decides dedupe. The partial index holds only open commands, so the
    // worker's reads and the open count cost what the backlog costs.
    "CREATE TABLE commands (
    pos                 BIGSERIAL PRIMARY KEY,
    msg_id              TEXT COLLATE \"C\" NOT NULL UNIQUE,
    received_ms         BIGINT NOT NULL,
    conversation_id     TEXT COLLATE \"C\" NOT NULL,
    conversation_type   TEXT NOT NULL,
    conversation_title  TEXT,
    sender_staff_id     TEXT,
    sender_nick         TEXT,
    sender_is_admin     BOOLEAN NOT NULL,
    msgtype             TEXT NOT NULL,
    text                TEXT,
    session_webhook     TEXT,
    session_expires_ms  BIGINT,
    status              TEXT NOT NULL,
    command             TEXT,
    result              TEXT,
    errcode             BIGINT,
    detail              TEXT,
    answer_text         TEXT,
    reply               TEXT,
    finished_ms         BIGINT
);
CREATE INDEX commands_open ON commands (pos) WHERE status <> 'done';
CREATE TABLE bindings (
    conversation_id TEXT COLLATE \"C\" PRIMARY KEY,
    chat_id         TEXT NOT NULL,
    bound_by        TEXT NOT NULL,
    bound_ms        BIGINT NOT NULL
);
CREATE TABLE dm_state (
    conversation_id TEXT COLLATE \"C\" PRIMARY KEY,
    prohibited      BOOLEAN NOT NULL,
    set_by          TEXT NOT NULL,
    set_by_nick     TEXT,
    set_ms          BIGINT NOT NULL
);
CREATE TABLE health (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_ms BIGINT NOT NULL
);
INSERT INTO health (id, probed_ms) VALUES (1, 0);
CREATE TABLE jobs (
    id                BIGSERIAL PRIMARY KEY,
    conversation_id   TEXT COLLATE \"C\" NOT NULL,
    chat_id           TEXT NOT NULL,
    setting           TEXT COLLATE \"C\" NOT NULL,
    value             SMALLINT NOT NULL,
    due_ms            BIGINT NOT NULL,
    scheduled_by      TEXT NOT NULL,
    scheduled_command TEXT NOT NULL,
    scheduled_ms      BIGINT NOT NULL,
    state             TEXT NOT NULL,
    result            TEXT,
    finished_ms       BIGINT
);
CREATE INDEX jobs_pending ON jobs (due_ms) WHERE state IN ('pending', 'running');
CREATE UNIQUE INDEX jobs_one_pending ON jobs (conversation_id, setting) WHERE state = 'pending';
CREATE TABLE departments (
    dept_id              BIGINT PRIMARY KEY,
    parent_id            BIGINT,
    name                 TEXT NOT NULL,
    path                 TEXT NOT NULL,
    chat_id              TEXT,
    open_conversation_id TEXT
);",
    // The shared DingTalk rate budget: the send slots reserved per API.
    "CREATE TABLE call_slots (
    api     TEXT NOT NULL,
    slot_ms BIGINT NOT NULL
);
CREATE INDEX call_slots_by_api ON call_slots (api, slot_ms);",
    // Named leases of replicas sharing this database: a group's commands run on the holder
    // of `group:<openConversationId>` until `until_ms` (wall-clock ms).
    "CREATE TABLE leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);",
    // The governance core: what dingops knows of each of the seven settings of a group (the
    // DM switch's state moves here from `dm_state`), and for each timed command the value it
    // set and whether its end restores the value before it.
    "CREATE TABLE group_settings (
    conversation_id TEXT COLLATE \"C\" NOT NULL,
    setting         TEXT COLLATE \"C\" NOT NULL,
    value           SMALLINT NOT NULL,
    set_by          TEXT NOT NULL,
    set_by_nick     TEXT,
    via             TEXT NOT NULL,
    set_ms          BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, setting)
);
INSERT INTO group_settings (conversation_id, setting, value, set_by, set_by_nick, via, set_ms)
    SELECT conversation_id, 'dm', CASE WHEN prohibited THEN 1 ELSE 0 END, set_by, set_by_nick,
           CASE set_by WHEN 'policy' THEN 'apply' WHEN 'dingops (timer)' THEN 'revert' ELSE 'chat' END,
           set_ms
    FROM dm_state;
DROP TABLE dm_state;
ALTER TABLE jobs ADD COLUMN set_value SMALLINT;
ALTER TABLE jobs ADD COLUMN restore TEXT NOT NULL DEFAULT 'unknown';",
    // 8: the monthly API quota: calls counted per calendar month, API and class by every
    // replica, and the months DingTalk answered 90020 for.
    "CREATE TABLE quota_calls (
    month TEXT COLLATE \"C\" NOT NULL,
    api   TEXT COLLATE \"C\" NOT NULL,
    class TEXT COLLATE \"C\" NOT NULL,
    calls BIGINT NOT NULL,
    PRIMARY KEY (month, api, class)
);
CREATE TABLE quota_spent (
    month     TEXT COLLATE \"C\" PRIMARY KEY,
    marked_ms BIGINT NOT NULL
);",
    // 9: interactive cards (docs/architecture.md, "Buttons"): each card dingops sent, with
    // its status, the buttons it offers (a JSON array) and the click it works on; and the
    // approvals of the two-person rule. A card's clicks are rows of `commands`. `seq` is a
    // card's insertion order.
    "CREATE TABLE cards (
    out_track_id    TEXT COLLATE \"C\" PRIMARY KEY,
    seq             BIGSERIAL NOT NULL,
    conversation_id TEXT COLLATE \"C\" NOT NULL,
    msg_id          TEXT COLLATE \"C\" NOT NULL,
    kind            TEXT NOT NULL,
    setting         TEXT COLLATE \"C\",
    created_by      TEXT NOT NULL,
    status          TEXT COLLATE \"C\" NOT NULL,
    buttons         TEXT NOT NULL,
    pending_click   TEXT,
    data            TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL
);
CREATE INDEX cards_of_setting ON cards (conversation_id, setting, status);
CREATE TABLE approvals (
    code            TEXT COLLATE \"C\" PRIMARY KEY,
    conversation_id TEXT COLLATE \"C\" NOT NULL,
    asked_by        TEXT NOT NULL,
    asked_by_nick   TEXT,
    asked_ms        BIGINT NOT NULL,
    expires_ms      BIGINT NOT NULL,
    out_track_id    TEXT,
    policy_digest   TEXT NOT NULL,
    state           TEXT NOT NULL,
    decided_by      TEXT,
    decided_ms      BIGINT
);",
    // The policy in force for the organisation: the digest of the policy file `serve` loaded
    // last (or `dingops apply` started with).
    "CREATE TABLE policy_in_force (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    digest  TEXT NOT NULL,
    set_by  TEXT NOT NULL,
    set_ms  BIGINT NOT NULL
);",
];

/// The version a database has after all steps.
pub const LATEST: i32 = STEPS.len() as i32;

/// The advisory lock that serializes migrations of one database ("dingops" in ASCII).
const MIGRATION_LOCK: i64 = 0x64_696e_676f_7073;

/// The database's current version (0 for a new one).
#[cfg(test)]
pub async fn version(client: &Client) -> Result<i32, LedgerError> {
    let exists = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .map_err(pg("read schema version"))?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_opt("SELECT version FROM schema_version", &[])
        .await
        .map_err(pg("read schema version"))?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Brings the database to [`LATEST`]. A database from a newer dingops is refused rather than
/// written with an older idea of its schema.
pub async fn migrate(client: &mut Client) -> Result<(), LedgerError> {
    loop {
        let tx = client.transaction().await.map_err(pg("migrate"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg("migrate"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 one     BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
                 version INTEGER NOT NULL
             );
             INSERT INTO schema_version (version) VALUES (0) ON CONFLICT (one) DO NOTHING;",
        )
        .await
        .map_err(pg("migrate"))?;
        let current: i32 = tx
            .query_one("SELECT version FROM schema_version", &[])
            .await
            .map_err(pg("migrate"))?
            .get(0);
        if current > LATEST {
            return Err(LedgerError::Schema(format!(
                "the ledger has schema version {current}, newer than this dingops knows ({LATEST}); \
                 run the dingops that wrote it, or a newer one"
            )));
        }
        let Some(step) = usize::try_from(current).ok().and_then(|i| STEPS.get(i)) else {
            // Up to date: nothing to commit but the version row of a new database.
            tx.commit().await.map_err(pg("migrate"))?;
            return Ok(());
        };
        tx.batch_execute(step).await.map_err(pg("migrate"))?;
        let next = current + 1;
        tx.execute("UPDATE schema_version SET version = $1", &[&next])
            .await
            .map_err(pg("migrate"))?;
        tx.commit().await.map_err(pg("migrate"))?;
        tracing::info!(version = next, "ledger schema migrated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::PostgresLedger;
    use crate::ledger::testing::SchemaUrl as _;
    use dingops_testkit::TestSchema;

    fn stored_version(schema: &TestSchema) -> Vec<Option<String>> {
        schema.column("SELECT version::text FROM schema_version")
    }

    #[test]
    fn a_new_database_reaches_the_latest_version_and_opening_it_again_changes_nothing() {
        let Some(schema) = TestSchema::or_skip() else {
            return;
        };
        drop(PostgresLedger::open(&schema.postgres_url()).unwrap());
        assert_eq!(stored_version(&schema), [Some(LATEST.to_string())]);
        let ledger = PostgresLedger::open(&schema.postgres_url()).unwrap();
        assert_eq!(stored_version(&schema), [Some(LATEST.to_string())]);
        let url = schema.url().to_owned();
        let read = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let config = crate::ledger::PostgresUrl::parse(&url).unwrap().config().unwrap();
                    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
                    tokio::spawn(conn);
                    version(&client).await.unwrap()
                })
        });
        assert_eq!(read.join().unwrap(), LATEST);
        drop(ledger);
    }

    #[test]
    fn a_database_before_the_card_tables_keeps_its_rows_and_gains_them() {
        let Some(schema) = TestSchema::or_skip() else {
            return;
        };
        // The database as the release before the cards left it (SQLite's step 8): every step
        // before the one that makes the card tables.
        let before = STEPS
            .iter()
            .position(|s| s.contains("CREATE TABLE cards"))
            .unwrap() as i32;
        let steps = STEPS[..before as usize].join(";\n");
        schema.column(&format!(
            "{steps};
             CREATE TABLE schema_version (one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
                                          version INTEGER NOT NULL);
             INSERT INTO schema_version (version) VALUES ({before});
             INSERT INTO commands (msg_id, received_ms, conversation_id, conversation_type,
                 sender_is_admin, msgtype, status) VALUES ('m8', 1, 'cid8==', '2', false, 'text', 'accepted');
             INSERT INTO quota_calls VALUES ('2026-12', 'chat_get', 'background', 3);"
        ));
        assert!(schema.column("SELECT to_regclass('cards')::text")[0].is_none());
        drop(PostgresLedger::open(&schema.postgres_url()).unwrap());
        assert_eq!(stored_version(&schema), [Some(LATEST.to_string())]);
        assert_eq!(
            schema.column("SELECT msg_id || ' ' || calls FROM commands, quota_calls"),
            [Some("m8 3".to_owned())]
        );
        assert_eq!(
            schema.column("SELECT (SELECT count(*) FROM cards) + (SELECT count(*) FROM approvals)"),
            [Some("0".to_owned())]
        );
        assert_eq!(
            schema.column(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'cards_of_setting'"
            ),
            [Some(format!(
                "CREATE INDEX cards_of_setting ON {}.cards USING btree (conversation_id, setting, status)",
                schema.column("SELECT current_schema()")[0].clone().unwrap()
            ))]
        );
    }

    #[test]
    fn a_database_from_a_newer_dingops_is_refused_and_left_as_it_is() {
        let Some(schema) = TestSchema::or_skip() else {
            return;
        };
        drop(PostgresLedger::open(&schema.postgres_url()).unwrap());
        schema.column(&format!("UPDATE schema_version SET version = {}", LATEST + 1));
        let err = PostgresLedger::open(&schema.postgres_url())
            .err()
            .expect("a newer schema is refused");
        assert!(err.to_string().contains("newer than this dingops knows"), "{err}");
        assert_eq!(stored_version(&schema), [Some((LATEST + 1).to_string())]);
    }

    #[test]
    fn replicas_opening_a_new_database_at_once_all_start_on_one_schema() {
        let Some(schema) = TestSchema::or_skip() else {
            return;
        };
        let opened: Vec<_> = (0..3)
            .map(|_| {
                let url = schema.postgres_url();
                std::thread::spawn(move || PostgresLedger::open(&url).map(drop).map_err(|e| e.to_string()))
            })
            .collect();
        for handle in opened {
            handle.join().unwrap().unwrap();
        }
        assert_eq!(stored_version(&schema), [Some(LATEST.to_string())]);
        assert_eq!(
            schema.column("SELECT count(*)::text FROM health"),
            [Some("1".to_owned())]
        );
    }
}
