//! The PostgreSQL ledger's statements of the monthly quota (see `ledger/roles.rs`,
//! `QuotaBook`): one count shared by every replica.

use super::*;
use crate::ledger::{QuotaBook, QuotaCount, QuotaTake};
use crate::quota::Class;

impl PostgresLedger {
    fn take_quota_call(
        &self,
        month: String,
        api: String,
        class: Class,
        ceiling: Option<u64>,
    ) -> LedgerFuture<QuotaTake> {
        self.with_async("take quota", move |mut c| async move {
            let tx = c.client.transaction().await.map_err(pg("take quota"))?;
            // One lock per month for the transaction: every replica's takes of the month queue
            // here, from before the read until the count is committed.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('dingops quota ' || $1, 0))",
                &[&text(&month)],
            )
            .await
            .map_err(pg("take quota"))?;
            let used: i64 = tx
                .query_one(
                    "SELECT coalesce(sum(calls), 0)::bigint FROM quota_calls WHERE month = $1",
                    &[&text(&month)],
                )
                .await
                .map_err(pg("take quota"))?
                .get(0);
            let used = to_u64(used);
            if ceiling.is_some_and(|c| used >= c) {
                tx.commit().await.map_err(pg("take quota"))?;
                return Ok((QuotaTake { taken: false, used }, c));
            }
            tx.execute(
                "INSERT INTO quota_calls (month, api, class, calls) VALUES ($1, $2, $3, 1)
                 ON CONFLICT (month, api, class) DO UPDATE SET calls = quota_calls.calls + 1",
                &[&text(&month), &text(&api), &class.as_str()],
            )
            .await
            .map_err(pg("take quota"))?;
            tx.commit().await.map_err(pg("take quota"))?;
            Ok((
                QuotaTake {
                    taken: true,
                    used: used + 1,
                },
                c,
            ))
        })
    }
}

impl QuotaBook for PostgresLedger {
    fn take_quota(
        &self,
        month: &str,
        api: &str,
        class: Class,
        ceiling: Option<u64>,
    ) -> Result<QuotaTake, LedgerError> {
        self.runtime.block(
            "take quota",
            self.take_quota_call(month.to_owned(), api.to_owned(), class, ceiling),
        )
    }

    fn take_quota_async(
        self: Arc<Self>,
        month: String,
        api: String,
        class: Class,
        ceiling: Option<u64>,
    ) -> LedgerFuture<QuotaTake> {
        self.take_quota_call(month, api, class, ceiling)
    }

    fn quota_counts(&self, month: &str) -> Result<Vec<QuotaCount>, LedgerError> {
        let month = text(month);
        self.with("read quota", move |mut c| async move {
            let found = c
                .query(
                    "SELECT api, class, calls FROM quota_calls WHERE month = $1 ORDER BY api, class",
                    &[&month],
                )
                .await
                .map_err(pg("read quota"))?;
            let counts = mapped("read quota", &found, |r| {
                Ok(QuotaCount {
                    api: r.try_get(0)?,
                    class: r.try_get::<_, String>(1)?.parse().map_err(RowError::Name)?,
                    calls: to_u64(r.try_get(2)?),
                })
            })?;
            Ok((counts, c))
        })
    }

    fn mark_quota_spent(&self, month: &str, at_ms: u64) -> Result<(), LedgerError> {
        let month = text(month);
        self.with("mark quota spent", move |mut c| async move {
            c.execute(
                "INSERT INTO quota_spent (month, marked_ms) VALUES ($1, $2) ON CONFLICT (month) DO NOTHING",
                &[&month, &to_i64(at_ms)],
            )
            .await
            .map_err(pg("mark quota spent"))?;
            Ok(((), c))
        })
    }

    fn quota_spent(&self, month: &str) -> Result<bool, LedgerError> {
        let month = text(month);
        self.with("read quota spent", move |mut c| async move {
            let row = c
                .query_opt("SELECT 1 FROM quota_spent WHERE month = $1", &[&month])
                .await
                .map_err(pg("read quota spent"))?;
            Ok((row.is_some(), c))
        })
    }
}
