//! The SQLite ledger's statements of the monthly quota (see `ledger/roles.rs`, `QuotaBook`).

use super::*;
use crate::ledger::{QuotaBook, QuotaCount, QuotaTake};
use crate::quota::Class;

impl QuotaBook for SqliteLedger {
    fn take_quota(
        &self,
        month: &str,
        api: &str,
        class: Class,
        ceiling: Option<u64>,
    ) -> Result<QuotaTake, LedgerError> {
        let (month, api) = (month.to_owned(), api.to_owned());
        // In the writer's `BEGIN IMMEDIATE` transaction: SQLite's write lock, which every
        // other connection to the file waits for, is held from the read to the commit.
        self.write(move |conn| {
            let used: i64 = conn
                .prepare_cached("SELECT coalesce(sum(calls), 0) FROM quota_calls WHERE month = ?1")
                .and_then(|mut st| st.query_row(params![month], |r| r.get(0)))
                .map_err(sql("take quota"))?;
            let used = to_u64(used);
            if ceiling.is_some_and(|c| used >= c) {
                return Ok(QuotaTake { taken: false, used });
            }
            conn.prepare_cached(
                "INSERT INTO quota_calls (month, api, class, calls) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (month, api, class) DO UPDATE SET calls = calls + 1",
            )
            .and_then(|mut st| st.execute(params![month, api, class.as_str()]))
            .map_err(sql("take quota"))?;
            Ok(QuotaTake {
                taken: true,
                used: used + 1,
            })
        })
    }

    fn quota_counts(&self, month: &str) -> Result<Vec<QuotaCount>, LedgerError> {
        self.with(|conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT api, class, calls FROM quota_calls WHERE month = ?1 ORDER BY api, class",
                )
                .map_err(sql("read quota"))?;
            st.query_map(params![month], |r| {
                Ok(QuotaCount {
                    api: r.get(0)?,
                    class: r.get::<_, String>(1)?.parse().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
                    })?,
                    calls: to_u64(r.get(2)?),
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(sql("read quota"))
        })
    }

    fn mark_quota_spent(&self, month: &str, at_ms: u64) -> Result<(), LedgerError> {
        let month = month.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("INSERT OR IGNORE INTO quota_spent (month, marked_ms) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![month, to_i64(at_ms)]))
                .map_err(sql("mark quota spent"))?;
            Ok(())
        })
    }

    fn quota_spent(&self, month: &str) -> Result<bool, LedgerError> {
        self.with(|conn| {
            conn.prepare_cached("SELECT count(*) FROM quota_spent WHERE month = ?1")
                .and_then(|mut st| st.query_row(params![month], |r| r.get::<_, i64>(0)))
                .map(|n| n > 0)
                .map_err(sql("read quota spent"))
        })
    }
}
