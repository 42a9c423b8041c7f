//! The statements shared by several calls, and the hot path's calls (open commands, answers,
//! finishing, the rate budget), started on the ledger's runtime: the synchronous role methods
//! wait for them, their async forms return them.

use super::*;

pub(super) const OPEN_AFTER_SQL: &str = concat!(
    "SELECT ",
    pending_columns!("pos"),
    " FROM commands WHERE pos > $1 AND status <> 'done' ORDER BY pos LIMIT $2"
);

/// A range of positions, filtered: no per-group index, which would slow every insert.
pub(super) const OPEN_IN_CONVERSATION_SQL: &str = concat!(
    "SELECT ",
    pending_columns!("pos"),
    " FROM commands WHERE pos > $1 AND pos <= $2 AND status <> 'done' AND conversation_id = $3
     ORDER BY pos LIMIT $4"
);

/// `dingops_open_commands`: counted on the partial index of open commands.
pub(super) const OPEN_COUNT_SQL: &str = "SELECT count(*) FROM commands WHERE status <> 'done'";

pub(super) fn rows<T>(
    op: &'static str,
    rows: &[Row],
    f: impl Fn(&Row) -> Result<T, tokio_postgres::Error>,
) -> Result<Vec<T>, LedgerError> {
    rows.iter().map(f).collect::<Result<_, _>>().map_err(pg(op))
}

/// Marks the pending (or running) revert of a setting `replaced`, returning it; within a
/// transaction that holds the setting's advisory lock.
pub(super) async fn replace_pending(
    tx: &tokio_postgres::Transaction<'_>,
    cid: &str,
    setting: &str,
    now_ms: Option<i64>,
) -> Result<Option<RevertJob>, LedgerError> {
    // One writer per setting of a group at a time, across connections and replicas: the
    // unique index allows one pending job, and two transactions that both replaced the old
    // one would both insert.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))",
        &[&cid, &setting],
    )
    .await
    .map_err(pg("replace revert"))?;
    let replaced = tx
        .query_opt(
            concat!(
                "UPDATE jobs SET state = 'replaced', finished_ms = ",
                ledger_now!("$3"),
                "
                 WHERE conversation_id = $1 AND setting = $2 AND state IN ('pending', 'running')
                 RETURNING ",
                job_columns!()
            ),
            &[&cid, &setting, &now_ms],
        )
        .await
        .map_err(pg("replace revert"))?;
    replaced
        .as_ref()
        .map(|r| job_from_row(r).map_err(unmapped("read revert")))
        .transpose()
}

/// The hot path's calls, started on the ledger's runtime: the synchronous role methods wait
/// for them, their async forms return them.
impl PostgresLedger {
    pub(super) fn record_answer_call(&self, msg_id: String, a: Answer) -> LedgerFuture<()> {
        self.with_async("record_answer", move |mut c| async move {
            c.execute(
                "UPDATE commands SET status = 'answered', command = $2, result = $3, errcode = $4,
                 detail = $5, answer_text = $6 WHERE msg_id = $1",
                &[
                    &text(&msg_id),
                    &text(&a.command),
                    &a.outcome.as_str(),
                    &a.errcode,
                    &text(&a.detail),
                    &text(&a.text),
                ],
            )
            .await
            .map_err(pg("record_answer"))?;
            Ok(((), c))
        })
    }

    pub(super) fn finish_call(
        &self,
        msg_id: String,
        a: Answer,
        reply: String,
        finished_ms: u64,
    ) -> LedgerFuture<()> {
        self.with_async("finish", move |mut c| async move {
            c.execute(
                "UPDATE commands SET status = 'done', command = $2, result = $3, errcode = $4,
                 detail = $5, reply = $6, finished_ms = $7, session_webhook = NULL, answer_text = NULL
                 WHERE msg_id = $1",
                &[
                    &text(&msg_id),
                    &text(&a.command),
                    &a.outcome.as_str(),
                    &a.errcode,
                    &text(&a.detail),
                    &text(&reply),
                    &to_i64(finished_ms),
                ],
            )
            .await
            .map_err(pg("finish"))?;
            Ok(((), c))
        })
    }

    pub(super) fn open_after_call(&self, cursor: i64, limit: usize) -> LedgerFuture<Vec<(i64, Pending)>> {
        self.with_async("open_after", move |mut c| async move {
            let found = c
                .query(OPEN_AFTER_SQL, &[&cursor, &limit_of(limit)])
                .await
                .map_err(pg("open_after"))?;
            Ok((mapped("open_after", &found, pending_from_row)?, c))
        })
    }

    pub(super) fn open_in_conversation_call(
        &self,
        cid: String,
        after: i64,
        through: i64,
        limit: usize,
    ) -> LedgerFuture<Vec<(i64, Pending)>> {
        self.with_async("open_in_conversation_after", move |mut c| async move {
            let found = c
                .query(
                    OPEN_IN_CONVERSATION_SQL,
                    &[&after, &through, &cid, &limit_of(limit)],
                )
                .await
                .map_err(pg("open_in_conversation_after"))?;
            Ok((mapped("open_in_conversation_after", &found, pending_from_row)?, c))
        })
    }

    pub(super) fn clock_ms_call(&self) -> LedgerFuture<u64> {
        let fixed = self.fixed_now();
        self.with_async("read the clock", move |mut c| async move {
            let row = c
                .query_opt(concat!("SELECT ", ledger_now!("$1")), &[&fixed])
                .await
                .map_err(pg("read the clock"))?
                .ok_or(LedgerError::Invalid("the server did not tell its clock"))?;
            Ok((to_u64(row.get(0)), c))
        })
    }

    pub(super) fn reserve_call_call(&self, api: String, max: u32, window_ms: u64) -> LedgerFuture<Slot> {
        if let Err(e) = crate::ledger::budget_args(max, window_ms) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let fixed = self.fixed_now();
        self.with_async("reserve call", move |mut c| async move {
            let tx = c.client.transaction().await.map_err(pg("reserve call"))?;
            // One lock per API for the transaction: every replica's reservations of that API
            // queue here, from before the read until the insert is committed.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('dingops call budget ' || $1, 0))",
                &[&text(&api)],
            )
            .await
            .map_err(pg("reserve call"))?;
            // The clock is read under the lock (waiting for it is not free time), from the
            // server's clock; slots too old to share a window with this one go in the same
            // round trip.
            let now: i64 = tx
                .query_one(
                    concat!(
                        "WITH c AS (SELECT ",
                        ledger_now!("$3"),
                        " AS now), gone AS (DELETE FROM call_slots WHERE api = $1 AND slot_ms <= (SELECT now FROM c) - $2)
                         SELECT now FROM c"
                    ),
                    &[&text(&api), &to_i64(window_ms), &fixed],
                )
                .await
                .map_err(pg("reserve call"))?
                .get(0);
            let now = to_u64(now);
            let max_th_latest: Option<i64> = tx
                .query_opt(
                    "SELECT slot_ms FROM call_slots WHERE api = $1 ORDER BY slot_ms DESC LIMIT 1 OFFSET $2",
                    &[&text(&api), &(i64::from(max) - 1)],
                )
                .await
                .map_err(pg("reserve call"))?
                .map(|r| r.get(0));
            let latest: Option<i64> = tx
                .query_one(
                    "SELECT max(slot_ms) FROM call_slots WHERE api = $1",
                    &[&text(&api)],
                )
                .await
                .map_err(pg("reserve call"))?
                .get(0);
            let slot = crate::ledger::budget_slot(now, latest.map(to_u64), max_th_latest.map(to_u64), window_ms, max);
            tx.execute(
                "INSERT INTO call_slots (api, slot_ms) VALUES ($1, $2)",
                &[&text(&api), &to_i64(slot)],
            )
            .await
            .map_err(pg("reserve call"))?;
            tx.commit().await.map_err(pg("reserve call"))?;
            Ok((
                Slot {
                    at_ms: slot,
                    now_ms: now,
                },
                c,
            ))
        })
    }
}
