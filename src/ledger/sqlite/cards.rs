//! The SQLite ledger's statements of cards, clicks and approvals (see `ledger/roles.rs`,
//! `CardStore`). Each write runs in the writer's `BEGIN IMMEDIATE` transaction, so its reads
//! and writes are one step for every connection to the file; a step of several writes runs
//! inside a savepoint, so that a failure leaves none of them in the group commit.

use super::*;
use crate::ledger::CardStore;
use crate::ledger::cards::{
    self, Approval, ApprovalState, ApprovalVerdict, CardAction, CardRow, CardStatus, ClickEntry,
};
use crate::ledger::rows::{approval_from_row, buttons_text, card_from_row};

/// Runs `f` inside a savepoint of the writer's transaction: all of its writes or none.
fn all_or_nothing<T>(
    conn: &Connection,
    op: &'static str,
    f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    conn.execute_batch("SAVEPOINT card_step").map_err(sql(op))?;
    match f(conn) {
        Ok(value) => {
            conn.execute_batch("RELEASE card_step").map_err(sql(op))?;
            Ok(value)
        }
        Err(e) => {
            if let Err(undo) = conn.execute_batch("ROLLBACK TO card_step; RELEASE card_step") {
                tracing::error!(error = %undo, "ledger: cannot undo a failed card write");
            }
            Err(e)
        }
    }
}

/// One card, read on `conn`.
fn card_on(conn: &Connection, out_track_id: &str) -> Result<Option<CardRow>, LedgerError> {
    conn.prepare_cached(concat!(
        "SELECT ",
        card_columns!(),
        " FROM cards WHERE out_track_id = ?1"
    ))
    .and_then(|mut st| {
        st.query_row(params![out_track_id], |r| cells(card_from_row(r)))
            .optional()
    })
    .map_err(sql("read card"))
}

/// One approval, read on `conn`.
fn approval_on(conn: &Connection, code: &str) -> Result<Option<Approval>, LedgerError> {
    conn.prepare_cached(concat!(
        "SELECT ",
        approval_columns!(),
        " FROM approvals WHERE code = ?1"
    ))
    .and_then(|mut st| {
        st.query_row(params![code], |r| cells(approval_from_row(r)))
            .optional()
    })
    .map_err(sql("read approval"))
}

/// The click step of [`CardStore::accept_click`], in the writer's transaction.
fn enter_click(
    conn: &Connection,
    click: &Accepted,
    out_track_id: &str,
    action: CardAction,
    now_ms: u64,
) -> Result<ClickEntry, LedgerError> {
    let known = conn
        .prepare_cached("SELECT count(*) FROM commands WHERE msg_id = ?1")
        .and_then(|mut st| st.query_row(params![click.msg_id], |r| r.get::<_, i64>(0)))
        .map_err(sql("accept click"))?;
    if known > 0 {
        return Ok(ClickEntry::Duplicate);
    }
    let Some(card) = card_on(conn, out_track_id)? else {
        return Ok(ClickEntry::UnknownCard);
    };
    if let Some(refused) = cards::click_refusal(&card, action) {
        return Ok(refused);
    }
    all_or_nothing(conn, "accept click", |conn| {
        insert_accepted(conn, click).map_err(sql("accept click"))?;
        conn.prepare_cached(
            "UPDATE cards SET status = ?2, buttons = '[]', pending_click = ?3, updated_ms = ?4
             WHERE out_track_id = ?1",
        )
        .and_then(|mut st| {
            st.execute(params![
                out_track_id,
                CardStatus::Working.as_str(),
                click.msg_id,
                to_i64(now_ms)
            ])
        })
        .map_err(sql("accept click"))?;
        Ok(ClickEntry::New)
    })
}

impl CardStore for SqliteLedger {
    fn insert_card(&self, card: &CardRow) -> Result<bool, LedgerError> {
        let c = card.clone();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(concat!(
                    "INSERT OR IGNORE INTO cards (",
                    card_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                ))
                .and_then(|mut st| {
                    st.execute(params![
                        c.out_track_id,
                        c.conversation_id,
                        c.msg_id,
                        c.kind.as_str(),
                        c.setting,
                        c.created_by,
                        c.status.as_str(),
                        buttons_text(&c.buttons),
                        c.pending_click,
                        c.data,
                        to_i64(c.created_ms),
                        to_i64(c.updated_ms),
                    ])
                })
                .map_err(sql("insert card"))?;
            Ok(n == 1)
        })
    }

    fn card(&self, out_track_id: &str) -> Result<Option<CardRow>, LedgerError> {
        self.with(|conn| card_on(conn, out_track_id))
    }

    fn cards_of_setting(
        &self,
        conversation_id: &str,
        setting: &str,
        statuses: &[CardStatus],
    ) -> Result<Vec<CardRow>, LedgerError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let statuses = serde_json::to_string(statuses).unwrap_or_else(|_| "[]".to_owned());
        self.with(|conn| {
            conn.prepare_cached(concat!(
                "SELECT ",
                card_columns!(),
                " FROM cards WHERE conversation_id = ?1 AND setting = ?2
                 AND status IN (SELECT value FROM json_each(?3))
                 ORDER BY created_ms DESC, rowid DESC"
            ))
            .and_then(|mut st| {
                st.query_map(params![conversation_id, setting, statuses], |r| {
                    cells(card_from_row(r))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            })
            .map_err(sql("cards of setting"))
        })
    }

    fn set_card_state(
        &self,
        out_track_id: &str,
        expect_status: Option<CardStatus>,
        status: CardStatus,
        buttons: &[CardAction],
        data: &str,
        now_ms: u64,
    ) -> Result<bool, LedgerError> {
        let (out, expect, status, buttons, data) = (
            out_track_id.to_owned(),
            expect_status.map(CardStatus::as_str),
            status.as_str(),
            buttons_text(buttons),
            data.to_owned(),
        );
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE cards SET status = ?3, buttons = ?4, data = ?5, updated_ms = ?6,
                     pending_click = NULL
                     WHERE out_track_id = ?1 AND (?2 IS NULL OR status = ?2)",
                )
                .and_then(|mut st| st.execute(params![out, expect, status, buttons, data, to_i64(now_ms)]))
                .map_err(sql("set card state"))?;
            Ok(n == 1)
        })
    }

    fn accept_click(
        &self,
        click: &Accepted,
        out_track_id: &str,
        action: CardAction,
        now_ms: u64,
    ) -> Result<ClickEntry, LedgerError> {
        let (click, out) = (click.clone(), out_track_id.to_owned());
        self.write(move |conn| enter_click(conn, &click, &out, action, now_ms))
    }

    fn insert_approval(&self, approval: &Approval) -> Result<bool, LedgerError> {
        let a = approval.clone();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(concat!(
                    "INSERT OR IGNORE INTO approvals (",
                    approval_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ))
                .and_then(|mut st| {
                    st.execute(params![
                        a.code,
                        a.conversation_id,
                        a.asked_by,
                        a.asked_by_nick,
                        to_i64(a.asked_ms),
                        to_i64(a.expires_ms),
                        a.out_track_id,
                        a.policy_digest,
                        a.state.as_str(),
                        a.decided_by,
                        a.decided_ms.map(to_i64),
                    ])
                })
                .map_err(sql("insert approval"))?;
            Ok(n == 1)
        })
    }

    fn approval(&self, code: &str) -> Result<Option<Approval>, LedgerError> {
        self.with(|conn| approval_on(conn, code))
    }

    fn decide_approval(
        &self,
        code: &str,
        state: ApprovalState,
        by: &str,
        now_ms: u64,
    ) -> Result<ApprovalVerdict, LedgerError> {
        cards::decision(state)?;
        let (code, by) = (code.to_owned(), by.to_owned());
        self.write(move |conn| {
            let Some(mut approval) = approval_on(conn, &code)? else {
                return Ok(ApprovalVerdict::Unknown);
            };
            if let Some(verdict) = cards::verdict(&approval, state, &by, now_ms) {
                return Ok(verdict);
            }
            conn.prepare_cached(
                "UPDATE approvals SET state = ?2, decided_by = ?3, decided_ms = ?4 WHERE code = ?1",
            )
            .and_then(|mut st| st.execute(params![code, state.as_str(), by, to_i64(now_ms)]))
            .map_err(sql("decide approval"))?;
            approval.state = state;
            approval.decided_by = Some(by);
            approval.decided_ms = Some(now_ms);
            Ok(ApprovalVerdict::Decided(approval))
        })
    }

    fn end_approval(&self, code: &str, state: ApprovalState) -> Result<bool, LedgerError> {
        cards::ending(state)?;
        let code = code.to_owned();
        self.write(move |conn| {
            let n = conn
                .prepare_cached("UPDATE approvals SET state = ?2 WHERE code = ?1 AND state = ?3")
                .and_then(|mut st| {
                    st.execute(params![code, state.as_str(), ApprovalState::Approved.as_str()])
                })
                .map_err(sql("end approval"))?;
            Ok(n == 1)
        })
    }
}
