//! Ingest: the writer task that commits acceptances in groups, on a connection of its own,
//! handing out positions in commit order.

use super::*;

/// What the writer task commits in groups, with when it was queued.
pub(super) enum Ingest {
    Accept(
        Box<Accepted>,
        Box<dyn FnOnce(Result<bool, LedgerError>) + Send>,
        Instant,
    ),
    /// `/readyz`'s probe, committed by the same connection and path as callbacks.
    /// The probe's time: a test's clock, or `None` for the server's.
    Ping(
        Option<i64>,
        Box<dyn FnOnce(Result<(), LedgerError>) + Send>,
        Instant,
    ),
}

pub(super) async fn writer_loop(pool: Arc<Pool>, mut jobs: tokio::sync::mpsc::UnboundedReceiver<Ingest>) {
    let mut session: Option<Session> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut accepts = Vec::new();
        let mut accepted_done = Vec::new();
        let mut pings = Vec::new();
        let mut probe_ms = None;
        for job in batch.drain(..) {
            // A job that waited out a whole write timeout behind stuck batches is refused
            // now: its caller (a callback) must hear "retry later" in bounded time.
            match job {
                Ingest::Accept(_, done, queued) if queued.elapsed() > WRITE_TIMEOUT => {
                    done(Err(LedgerError::Timeout("waiting for the group commit")));
                }
                Ingest::Ping(_, done, queued) if queued.elapsed() > WRITE_TIMEOUT => {
                    done(Err(LedgerError::Timeout("waiting for the group commit")));
                }
                Ingest::Accept(cmd, done, _) => {
                    accepts.push(*cmd);
                    accepted_done.push(done);
                }
                Ingest::Ping(ms, done, _) => {
                    probe_ms = probe_ms.max(ms);
                    pings.push(done);
                }
            }
        }
        if accepts.is_empty() && pings.is_empty() {
            continue;
        }
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            write_batch(
                &pool,
                &mut session,
                &accepts,
                (!pings.is_empty()).then_some(probe_ms),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(LedgerError::Timeout("group commit")));
        match written {
            Ok(results) => {
                for (done, result) in accepted_done.into_iter().zip(results) {
                    done(result);
                }
                for done in pings {
                    done(Ok(()));
                }
            }
            Err(e) => {
                // The connection may be broken or mid-statement: the next batch opens another.
                session = None;
                tracing::error!(error = %e, "ledger commit failed");
                let reason = e.to_string();
                for done in accepted_done {
                    done(Err(LedgerError::Commit(reason.clone())));
                }
                for done in pings {
                    done(Err(LedgerError::Commit(reason.clone())));
                }
            }
        }
    }
}

/// Inserts the acceptances unless their msgId is known (one statement), then the probe if
/// asked for; a result per acceptance, `true` for the first of each new msgId.
pub(super) async fn write_batch(
    pool: &Pool,
    session: &mut Option<Session>,
    accepts: &[Accepted],
    probe_ms: Option<Option<i64>>,
) -> Result<Vec<Result<bool, LedgerError>>, LedgerError> {
    if session.as_ref().is_none_or(|s| s.client.is_closed()) {
        *session = Some(pool.connector().connect().await?);
    }
    let Some(s) = session.as_mut() else {
        return Err(LedgerError::WriterGone);
    };
    let results = if accepts.is_empty() {
        Vec::new()
    } else {
        match insert_accepted(s, accepts).await {
            Ok(new) => first_of_each(accepts, new),
            // A row the server refuses (none should be) must not fail the others with it.
            Err(e) if e.as_db_error().is_some() && accepts.len() > 1 => {
                tracing::warn!(error = %describe(&e), "a group commit was refused; inserting its rows one by one");
                let mut results = Vec::with_capacity(accepts.len());
                for cmd in accepts {
                    results.push(match insert_accepted(s, std::slice::from_ref(cmd)).await {
                        Ok(new) => Ok(!new.is_empty()),
                        Err(e) if e.as_db_error().is_some() => Err(pg("accept")(e)),
                        Err(e) => return Err(pg("accept")(e)),
                    });
                }
                results
            }
            Err(e) => return Err(pg("accept")(e)),
        }
    };
    if let Some(ms) = probe_ms {
        s.execute(READY_PROBE_SQL, &[&ms]).await.map_err(pg("ping"))?;
    }
    Ok(results)
}

/// `/readyz`'s probe: a real write of one row, found by its primary key.
pub(super) const READY_PROBE_SQL: &str = concat!(
    "UPDATE health SET probed_ms = ",
    ledger_now!("$1"),
    " WHERE id = 1"
);

/// The acceptances, as arrays unnested in their order: one prepared statement whatever the
/// size of the batch, and positions handed out in that order.
///
/// Positions must also become visible in order, across replicas: a worker reads open
/// commands after the last position it saw, so a batch that took lower positions but
/// committed after a higher one would be passed over. The statement therefore takes a
/// transaction-level advisory lock before its first row gets a position (the lock's row is
/// joined to every inserted row) and holds it until its commit: ingest batches of all
/// replicas take positions and commit one after another.
///
/// A card's click is inserted by this statement too, inside the click's transaction: the
/// lock then lasts until that transaction commits, and the click's position is in order
/// like any acceptance's.
pub(super) const INSERT_ACCEPTED_SQL: &str = concat!(
    "WITH in_order AS (SELECT pg_advisory_xact_lock(7301446012553011))
     INSERT INTO commands (",
    accepted_columns!(),
    ")
     SELECT m, r, c, ct, tt, s, n, a, mt, tx, w, e, 'accepted'
     FROM in_order CROSS JOIN
          unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                 $8::bool[], $9::text[], $10::text[], $11::text[], $12::int8[])
          WITH ORDINALITY AS t(m, r, c, ct, tt, s, n, a, mt, tx, w, e, o)
     ORDER BY o
     ON CONFLICT (msg_id) DO NOTHING
     RETURNING msg_id"
);

/// Inserts `accepts`; the msgIds that were new.
pub(super) async fn insert_accepted(
    s: &mut Session,
    accepts: &[Accepted],
) -> Result<std::collections::HashSet<String>, tokio_postgres::Error> {
    let insert = s.statement(INSERT_ACCEPTED_SQL).await?;
    insert_accepted_with(&s.client, &insert, accepts).await
}

/// Inserts `accepts` with `insert` (the statement [`INSERT_ACCEPTED_SQL`] prepared on the
/// connection of `client`, a connection or a transaction on it); the msgIds that were new.
pub(super) async fn insert_accepted_with(
    client: &(impl tokio_postgres::GenericClient + Sync),
    insert: &tokio_postgres::Statement,
    accepts: &[Accepted],
) -> Result<std::collections::HashSet<String>, tokio_postgres::Error> {
    let col = |f: fn(&Accepted) -> String| accepts.iter().map(f).collect::<Vec<_>>();
    let opt = |f: fn(&Accepted) -> Option<String>| accepts.iter().map(f).collect::<Vec<_>>();
    let msg_id = col(|c| text(&c.msg_id));
    let received: Vec<i64> = accepts.iter().map(|c| to_i64(c.received_ms)).collect();
    let cid = col(|c| text(&c.conversation_id));
    let ctype = col(|c| c.conversation_type.as_wire().to_owned());
    let title = opt(|c| opt_text(&c.conversation_title));
    let staff = opt(|c| opt_text(&c.sender_staff_id));
    let nick = opt(|c| opt_text(&c.sender_nick));
    let admin: Vec<bool> = accepts.iter().map(|c| c.sender_is_admin).collect();
    let msgtype = col(|c| text(&c.msgtype));
    let body = opt(|c| opt_text(&c.text));
    let webhook = col(|c| text(c.session_webhook.expose()));
    let expires: Vec<Option<i64>> = accepts.iter().map(|c| c.session_expires_ms.map(to_i64)).collect();
    let rows = client
        .query(
            insert,
            &[
                &msg_id, &received, &cid, &ctype, &title, &staff, &nick, &admin, &msgtype, &body, &webhook,
                &expires,
            ],
        )
        .await?;
    rows.iter().map(|r| r.try_get::<_, String>(0)).collect()
}

/// `true` for the first acceptance of each msgId in `new`, `false` for the rest (known
/// already, or a second copy within the batch).
pub(super) fn first_of_each(
    accepts: &[Accepted],
    mut new: std::collections::HashSet<String>,
) -> Vec<Result<bool, LedgerError>> {
    accepts.iter().map(|c| Ok(new.remove(&text(&c.msg_id)))).collect()
}
