//! The PostgreSQL ledger's statements of cards, clicks and approvals (see
//! `ledger/roles.rs`, `CardStore`). A click and a decision are each one transaction that
//! locks its card's or approval's row first (`FOR UPDATE`): replicas deciding on one row
//! queue there, and each reads what the one before it committed.

use tokio_postgres::{Statement, Transaction};

use super::ingest::{INSERT_ACCEPTED_SQL, insert_accepted_with};
use super::*;
use crate::ledger::CardStore;
use crate::ledger::cards::{
    self, Approval, ApprovalState, ApprovalVerdict, CardAction, CardRow, CardStatus, ClickEntry,
};
use crate::ledger::rows::{approval_from_row, buttons_text, card_from_row};

const CARD_SQL: &str = concat!("SELECT ", card_columns!(), " FROM cards WHERE out_track_id = $1");

const APPROVAL_SQL: &str = concat!("SELECT ", approval_columns!(), " FROM approvals WHERE code = $1");

/// The click step of [`CardStore::accept_click`], in its transaction; the caller commits
/// when it is [`ClickEntry::New`] and rolls back otherwise.
async fn enter_click(
    tx: &Transaction<'_>,
    insert: &Statement,
    click: &Accepted,
    out_track_id: &str,
    action: CardAction,
    now_ms: u64,
) -> Result<ClickEntry, LedgerError> {
    const OP: &str = "accept click";
    // The card's row first: a second click on it waits here until the first commits, then
    // sees the card working and the first click's command.
    let found = tx
        .query_opt(
            concat!(
                "SELECT ",
                card_columns!(),
                " FROM cards WHERE out_track_id = $1 FOR UPDATE"
            ),
            &[&out_track_id],
        )
        .await
        .map_err(pg(OP))?;
    let known = tx
        .query_opt(
            "SELECT 1 FROM commands WHERE msg_id = $1",
            &[&text(&click.msg_id)],
        )
        .await
        .map_err(pg(OP))?;
    if known.is_some() {
        return Ok(ClickEntry::Duplicate);
    }
    let Some(row) = found else {
        return Ok(ClickEntry::UnknownCard);
    };
    let card = card_from_row(&row).map_err(unmapped(OP))?;
    if let Some(refused) = cards::click_refusal(&card, action) {
        return Ok(refused);
    }
    let new = insert_accepted_with(tx, insert, std::slice::from_ref(click))
        .await
        .map_err(pg(OP))?;
    if new.is_empty() {
        // Its msgId was committed meanwhile by a writer that does not lock cards.
        return Ok(ClickEntry::Duplicate);
    }
    tx.execute(
        "UPDATE cards SET status = $2, buttons = '[]', pending_click = $3, updated_ms = $4
         WHERE out_track_id = $1",
        &[
            &out_track_id,
            &CardStatus::Working.as_str(),
            &text(&click.msg_id),
            &to_i64(now_ms),
        ],
    )
    .await
    .map_err(pg(OP))?;
    Ok(ClickEntry::New)
}

/// The decision step of [`CardStore::decide_approval`], in its transaction.
async fn decide_in(
    tx: &Transaction<'_>,
    code: &str,
    state: ApprovalState,
    by: &str,
    now_ms: u64,
) -> Result<ApprovalVerdict, LedgerError> {
    const OP: &str = "decide approval";
    let found = tx
        .query_opt(
            concat!(
                "SELECT ",
                approval_columns!(),
                " FROM approvals WHERE code = $1 FOR UPDATE"
            ),
            &[&code],
        )
        .await
        .map_err(pg(OP))?;
    let Some(row) = found else {
        return Ok(ApprovalVerdict::Unknown);
    };
    let mut approval = approval_from_row(&row).map_err(unmapped(OP))?;
    if let Some(verdict) = cards::verdict(&approval, state, by, now_ms) {
        return Ok(verdict);
    }
    tx.execute(
        "UPDATE approvals SET state = $2, decided_by = $3, decided_ms = $4 WHERE code = $1",
        &[&code, &state.as_str(), &by, &to_i64(now_ms)],
    )
    .await
    .map_err(pg(OP))?;
    approval.state = state;
    approval.decided_by = Some(by.to_owned());
    approval.decided_ms = Some(now_ms);
    Ok(ApprovalVerdict::Decided(approval))
}

impl CardStore for PostgresLedger {
    fn insert_card(&self, card: &CardRow) -> Result<bool, LedgerError> {
        let c = card.clone();
        self.with("insert card", move |mut s| async move {
            let n = s
                .execute(
                    concat!(
                        "INSERT INTO cards (",
                        card_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                         ON CONFLICT (out_track_id) DO NOTHING"
                    ),
                    &[
                        &text(&c.out_track_id),
                        &text(&c.conversation_id),
                        &text(&c.msg_id),
                        &c.kind.as_str(),
                        &opt_text(&c.setting),
                        &text(&c.created_by),
                        &c.status.as_str(),
                        &buttons_text(&c.buttons),
                        &opt_text(&c.pending_click),
                        &text(&c.data),
                        &to_i64(c.created_ms),
                        &to_i64(c.updated_ms),
                    ],
                )
                .await
                .map_err(pg("insert card"))?;
            Ok((n == 1, s))
        })
    }

    fn card(&self, out_track_id: &str) -> Result<Option<CardRow>, LedgerError> {
        let out = text(out_track_id);
        self.with("read card", move |mut s| async move {
            let found = s.query_opt(CARD_SQL, &[&out]).await.map_err(pg("read card"))?;
            let card = found
                .as_ref()
                .map(|r| card_from_row(r).map_err(unmapped("read card")))
                .transpose()?;
            Ok((card, s))
        })
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
        let (cid, setting) = (text(conversation_id), text(setting));
        let statuses: Vec<&'static str> = statuses.iter().map(|s| s.as_str()).collect();
        self.with("cards of setting", move |mut s| async move {
            let found = s
                .query(
                    concat!(
                        "SELECT ",
                        card_columns!(),
                        " FROM cards WHERE conversation_id = $1 AND setting = $2 AND status = ANY($3::text[])
                         ORDER BY created_ms DESC, seq DESC"
                    ),
                    &[&cid, &setting, &statuses],
                )
                .await
                .map_err(pg("cards of setting"))?;
            Ok((mapped("cards of setting", &found, card_from_row)?, s))
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
            text(out_track_id),
            expect_status.map(CardStatus::as_str),
            status.as_str(),
            buttons_text(buttons),
            text(data),
        );
        self.with("set card state", move |mut s| async move {
            let n = s
                .execute(
                    "UPDATE cards SET status = $3, buttons = $4, data = $5, updated_ms = $6,
                     pending_click = NULL
                     WHERE out_track_id = $1 AND ($2::text IS NULL OR status = $2)",
                    &[&out, &expect, &status, &buttons, &data, &to_i64(now_ms)],
                )
                .await
                .map_err(pg("set card state"))?;
            Ok((n == 1, s))
        })
    }

    fn accept_click(
        &self,
        click: &Accepted,
        out_track_id: &str,
        action: CardAction,
        now_ms: u64,
    ) -> Result<ClickEntry, LedgerError> {
        let (click, out) = (click.clone(), text(out_track_id));
        self.with("accept click", move |mut s| async move {
            let insert = s
                .statement(INSERT_ACCEPTED_SQL)
                .await
                .map_err(pg("accept click"))?;
            let tx = s.client.transaction().await.map_err(pg("accept click"))?;
            let entry = enter_click(&tx, &insert, &click, &out, action, now_ms).await?;
            let ended = if entry == ClickEntry::New {
                tx.commit().await
            } else {
                tx.rollback().await
            };
            ended.map_err(pg("accept click"))?;
            Ok((entry, s))
        })
    }

    fn insert_approval(&self, approval: &Approval) -> Result<bool, LedgerError> {
        let a = approval.clone();
        self.with("insert approval", move |mut s| async move {
            let n = s
                .execute(
                    concat!(
                        "INSERT INTO approvals (",
                        approval_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                         ON CONFLICT (code) DO NOTHING"
                    ),
                    &[
                        &text(&a.code),
                        &text(&a.conversation_id),
                        &text(&a.asked_by),
                        &opt_text(&a.asked_by_nick),
                        &to_i64(a.asked_ms),
                        &to_i64(a.expires_ms),
                        &opt_text(&a.out_track_id),
                        &text(&a.policy_digest),
                        &a.state.as_str(),
                        &opt_text(&a.decided_by),
                        &a.decided_ms.map(to_i64),
                    ],
                )
                .await
                .map_err(pg("insert approval"))?;
            Ok((n == 1, s))
        })
    }

    fn approval(&self, code: &str) -> Result<Option<Approval>, LedgerError> {
        let code = text(code);
        self.with("read approval", move |mut s| async move {
            let found = s
                .query_opt(APPROVAL_SQL, &[&code])
                .await
                .map_err(pg("read approval"))?;
            let approval = found
                .as_ref()
                .map(|r| approval_from_row(r).map_err(unmapped("read approval")))
                .transpose()?;
            Ok((approval, s))
        })
    }

    fn decide_approval(
        &self,
        code: &str,
        state: ApprovalState,
        by: &str,
        now_ms: u64,
    ) -> Result<ApprovalVerdict, LedgerError> {
        cards::decision(state)?;
        let (code, by) = (text(code), text(by));
        self.with("decide approval", move |mut s| async move {
            let tx = s.client.transaction().await.map_err(pg("decide approval"))?;
            let verdict = decide_in(&tx, &code, state, &by, now_ms).await?;
            let ended = if matches!(verdict, ApprovalVerdict::Decided(_)) {
                tx.commit().await
            } else {
                tx.rollback().await
            };
            ended.map_err(pg("decide approval"))?;
            Ok((verdict, s))
        })
    }

    fn end_approval(&self, code: &str, state: ApprovalState) -> Result<bool, LedgerError> {
        cards::ending(state)?;
        let code = text(code);
        self.with("end approval", move |mut s| async move {
            let n = s
                .execute(
                    "UPDATE approvals SET state = $2 WHERE code = $1 AND state = $3",
                    &[&code, &state.as_str(), &ApprovalState::Approved.as_str()],
                )
                .await
                .map_err(pg("end approval"))?;
            Ok((n == 1, s))
        })
    }
}
