//! The PostgreSQL ledger's statements, role by role (see `ledger/roles.rs`).

use super::*;

impl CommandLog for PostgresLedger {
    fn accept(&self, cmd: &Accepted) -> Result<bool, LedgerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.accept_then(
            cmd.clone(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| LedgerError::WriterGone)?
    }

    fn accept_then(&self, cmd: Accepted, done: Box<dyn FnOnce(Result<bool, LedgerError>) + Send>) {
        self.ingest(Ingest::Accept(Box::new(cmd), done, Instant::now()));
    }

    fn record_answer(&self, msg_id: &str, a: &Answer) -> Result<(), LedgerError> {
        self.runtime.block(
            "record_answer",
            self.record_answer_call(msg_id.to_owned(), a.clone()),
        )
    }

    fn record_answer_async(self: Arc<Self>, msg_id: String, answer: Answer) -> LedgerFuture<()> {
        self.record_answer_call(msg_id, answer)
    }

    fn finish(
        &self,
        msg_id: &str,
        a: &Answer,
        delivery: &Delivery,
        finished_ms: u64,
    ) -> Result<(), LedgerError> {
        let reply = delivery.as_ledger_text().into_owned();
        self.runtime.block(
            "finish",
            self.finish_call(msg_id.to_owned(), a.clone(), reply, finished_ms),
        )
    }

    fn finish_async(
        self: Arc<Self>,
        msg_id: String,
        answer: Answer,
        delivery: Delivery,
        finished_ms: u64,
    ) -> LedgerFuture<()> {
        let reply = delivery.as_ledger_text().into_owned();
        self.finish_call(msg_id, answer, reply, finished_ms)
    }

    fn open_after(&self, cursor: i64, limit: usize) -> Result<Vec<(i64, Pending)>, LedgerError> {
        self.runtime
            .block("open_after", self.open_after_call(cursor, limit))
    }

    fn open_after_async(self: Arc<Self>, cursor: i64, limit: usize) -> LedgerFuture<Vec<(i64, Pending)>> {
        self.open_after_call(cursor, limit)
    }

    fn open_in_conversation_after(
        &self,
        conversation_id: &str,
        after: i64,
        through: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Pending)>, LedgerError> {
        self.runtime.block(
            "open_in_conversation_after",
            self.open_in_conversation_call(conversation_id.to_owned(), after, through, limit),
        )
    }

    fn open_in_conversation_after_async(
        self: Arc<Self>,
        conversation_id: String,
        after: i64,
        through: i64,
        limit: usize,
    ) -> LedgerFuture<Vec<(i64, Pending)>> {
        self.open_in_conversation_call(conversation_id, after, through, limit)
    }
    fn newest_done_by_group(&self) -> Result<HashMap<String, i64>, LedgerError> {
        self.with("newest_done_by_group", move |mut c| async move {
            let found = c
                .query(
                    "SELECT conversation_id, max(pos) FROM commands
                     WHERE status = 'done'
                       AND pos > (SELECT min(pos) FROM commands WHERE status <> 'done')
                     GROUP BY conversation_id",
                    &[],
                )
                .await
                .map_err(pg("newest_done_by_group"))?;
            let pairs = rows("newest_done_by_group", &found, |r| {
                Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?))
            })?;
            Ok((pairs.into_iter().collect(), c))
        })
    }

    fn open_count(&self) -> Result<u64, LedgerError> {
        self.with("open_count", move |mut c| async move {
            let found = c.query(OPEN_COUNT_SQL, &[]).await.map_err(pg("open_count"))?;
            let n = rows("open_count", &found, |r| r.try_get::<_, i64>(0))?;
            Ok((n.first().copied().map_or(0, to_u64), c))
        })
    }

    fn history(
        &self,
        conversation_id: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, LedgerError> {
        let cid = conversation_id.map(str::to_owned);
        let since = to_i64(since_ms.unwrap_or(0));
        self.with("history", move |mut c| async move {
            let found = c
                .query(
                    concat!(
                        "SELECT ",
                        audit_columns!(),
                        " FROM commands
                         WHERE ($1::text IS NULL OR conversation_id = $1) AND received_ms >= $2
                         ORDER BY received_ms DESC, msg_id LIMIT $3"
                    ),
                    &[&cid, &since, &limit_of(limit)],
                )
                .await
                .map_err(pg("history"))?;
            let all = mapped("history", &found, audit_from_row)?;
            Ok((all, c))
        })
    }

    fn record_own_action(&self, row: &AuditRow) -> Result<(), LedgerError> {
        let r = row.clone();
        self.with("record own action", move |mut c| async move {
            c.execute(
                "INSERT INTO commands (msg_id, received_ms, conversation_id, conversation_type,
                 sender_staff_id, sender_nick, sender_is_admin, msgtype, text, status, command, result,
                 errcode, detail, reply, finished_ms)
                 VALUES ($1, $2, $3, '2', $4, $5, false, 'timer', $6, 'done', $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (msg_id) DO NOTHING",
                &[
                    &text(&r.msg_id),
                    &to_i64(r.received_ms),
                    &text(&r.conversation_id),
                    &opt_text(&r.sender_staff_id),
                    &opt_text(&r.sender_nick),
                    &opt_text(&r.text),
                    &opt_text(&r.command),
                    &opt_text(&r.result),
                    &r.errcode,
                    &opt_text(&r.detail),
                    &opt_text(&r.reply),
                    &r.finished_ms.map(to_i64),
                ],
            )
            .await
            .map_err(pg("record own action"))?;
            Ok(((), c))
        })
    }
}

impl BindingStore for PostgresLedger {
    fn binding(&self, conversation_id: &str) -> Result<Option<Binding>, LedgerError> {
        let cid = conversation_id.to_owned();
        self.with("binding", move |mut c| async move {
            let found = c
                .query_opt(
                    concat!(
                        "SELECT ",
                        binding_columns!(),
                        " FROM bindings WHERE conversation_id = $1"
                    ),
                    &[&cid],
                )
                .await
                .map_err(pg("binding"))?;
            let found = found
                .as_ref()
                .map(|r| binding_from_row(r).map_err(unmapped("binding")))
                .transpose()?;
            Ok((found, c))
        })
    }

    fn bind(&self, b: &Binding) -> Result<(), LedgerError> {
        let b = b.clone();
        self.with("bind", move |mut c| async move {
            c.execute(
                "INSERT INTO bindings (conversation_id, chat_id, bound_by, bound_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (conversation_id) DO UPDATE SET chat_id = excluded.chat_id,
                 bound_by = excluded.bound_by, bound_ms = excluded.bound_ms",
                &[
                    &text(&b.conversation_id),
                    &b.chat_id.as_str(),
                    &text(&b.bound_by),
                    &to_i64(b.bound_ms),
                ],
            )
            .await
            .map_err(pg("bind"))?;
            Ok(((), c))
        })
    }

    fn bindings(&self) -> Result<Vec<Binding>, LedgerError> {
        self.with("bindings", move |mut c| async move {
            let found = c
                .query(
                    concat!(
                        "SELECT ",
                        binding_columns!(),
                        " FROM bindings ORDER BY conversation_id"
                    ),
                    &[],
                )
                .await
                .map_err(pg("bindings"))?;
            let all = mapped("binding", &found, binding_from_row)?;
            Ok((all, c))
        })
    }

    fn departments(&self) -> Result<Vec<Department>, LedgerError> {
        self.with("departments", move |mut c| async move {
            let found = c
                .query(
                    concat!(
                        "SELECT ",
                        department_columns!(),
                        " FROM departments ORDER BY dept_id"
                    ),
                    &[],
                )
                .await
                .map_err(pg("departments"))?;
            let all = mapped("departments", &found, department_from_row)?;
            Ok((all, c))
        })
    }

    fn replace_departments(&self, departments: &[Department]) -> Result<(), LedgerError> {
        let departments = departments.to_vec();
        self.with("replace_departments", move |mut c| async move {
            let ids: Vec<i64> = departments.iter().map(|d| d.dept_id).collect();
            let parents: Vec<Option<i64>> = departments.iter().map(|d| d.parent_id).collect();
            let names: Vec<String> = departments.iter().map(|d| text(&d.name)).collect();
            let paths: Vec<String> = departments.iter().map(|d| text(&d.path)).collect();
            let chats: Vec<Option<String>> = departments
                .iter()
                .map(|d| d.chat_id.as_ref().map(|c| c.as_str().to_owned()))
                .collect();
            let ocids: Vec<Option<String>> = departments.iter().map(|d| opt_text(&d.open_conversation_id)).collect();
            let tx = c.client.transaction().await.map_err(pg("replace_departments"))?;
            tx.execute("DELETE FROM departments", &[])
                .await
                .map_err(pg("replace_departments"))?;
            tx.execute(
                "INSERT INTO departments (dept_id, parent_id, name, path, chat_id, open_conversation_id)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[])",
                &[&ids, &parents, &names, &paths, &chats, &ocids],
            )
            .await
            .map_err(pg("replace_departments"))?;
            tx.commit().await.map_err(pg("replace_departments"))?;
            Ok(((), c))
        })
    }
}

/// The upsert of a setting's known value (`record_setting`, and `record_setting_fenced` while
/// the change still holds its leases).
const RECORD_SETTING_SQL: &str =
    "INSERT INTO group_settings (conversation_id, setting, value, set_by, set_by_nick, via, set_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (conversation_id, setting) DO UPDATE SET value = excluded.value,
     set_by = excluded.set_by, set_by_nick = excluded.set_by_nick, via = excluded.via,
     set_ms = excluded.set_ms";

impl SettingStore for PostgresLedger {
    fn known_settings(&self, conversation_id: &str) -> Result<Vec<(String, KnownValue)>, LedgerError> {
        let cid = conversation_id.to_owned();
        self.with("known_settings", move |mut c| async move {
            let rows = c
                .query(
                    concat!(
                        "SELECT ",
                        known_columns!(),
                        " FROM group_settings WHERE conversation_id = $1 ORDER BY setting"
                    ),
                    &[&cid],
                )
                .await
                .map_err(pg("known_settings"))?;
            let known = rows
                .iter()
                .map(|r| known_from_row(r).map_err(unmapped("known_settings")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((known, c))
        })
    }

    fn record_setting(
        &self,
        conversation_id: &str,
        setting: &str,
        k: &KnownValue,
    ) -> Result<(), LedgerError> {
        let (cid, setting, k) = (conversation_id.to_owned(), setting.to_owned(), k.clone());
        self.with("record_setting", move |mut c| async move {
            c.execute(
                RECORD_SETTING_SQL,
                &[
                    &text(&cid),
                    &text(&setting),
                    &i16::from(k.value),
                    &text(&k.set_by),
                    &opt_text(&k.set_by_nick),
                    &k.via.as_str(),
                    &to_i64(k.set_ms),
                ],
            )
            .await
            .map_err(pg("record_setting"))?;
            Ok(((), c))
        })
    }

    fn record_setting_fenced(
        &self,
        conversation_id: &str,
        setting: &str,
        k: &KnownValue,
        fence: &crate::ledger::Fence,
    ) -> Result<bool, LedgerError> {
        let (cid, setting, k) = (conversation_id.to_owned(), setting.to_owned(), k.clone());
        let (names, holder) = (
            fence.leases.iter().map(|n| text(n)).collect::<Vec<_>>(),
            text(&fence.holder),
        );
        self.with("record_setting fenced", move |mut c| async move {
            let op = "record_setting fenced";
            let tx = c.client.transaction().await.map_err(pg(op))?;
            // FOR SHARE: a takeover of one of these leases (an UPDATE of its row) waits for
            // this write, or this one sees its new holder.
            let held = tx
                .query(
                    "SELECT name FROM leases WHERE name = ANY($1) AND holder = $2 FOR SHARE",
                    &[&names, &holder],
                )
                .await
                .map_err(pg(op))?
                .len();
            let names_held = held == names.len();
            if names_held {
                tx.execute(
                    RECORD_SETTING_SQL,
                    &[
                        &text(&cid),
                        &text(&setting),
                        &i16::from(k.value),
                        &text(&k.set_by),
                        &opt_text(&k.set_by_nick),
                        &k.via.as_str(),
                        &to_i64(k.set_ms),
                    ],
                )
                .await
                .map_err(pg(op))?;
            }
            tx.commit().await.map_err(pg(op))?;
            Ok((names_held, c))
        })
    }

    fn set_policy_in_force(&self, digest: &str, by: &str, set_ms: u64) -> Result<(), LedgerError> {
        let (digest, by) = (digest.to_owned(), by.to_owned());
        self.with("set policy in force", move |mut c| async move {
            c.execute(
                "INSERT INTO policy_in_force (id, digest, set_by, set_ms) VALUES (1, $1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, set_by = excluded.set_by,
                 set_ms = excluded.set_ms",
                &[&text(&digest), &text(&by), &to_i64(set_ms)],
            )
            .await
            .map_err(pg("set policy in force"))?;
            Ok(((), c))
        })
    }

    fn policy_in_force(&self) -> Result<Option<String>, LedgerError> {
        self.with("policy in force", move |mut c| async move {
            let row = c
                .query_opt("SELECT digest FROM policy_in_force WHERE id = 1", &[])
                .await
                .map_err(pg("policy in force"))?;
            Ok((row.map(|r| r.get::<_, String>(0)), c))
        })
    }

    fn schedule_revert(&self, job: &RevertJob) -> Result<Option<RevertJob>, LedgerError> {
        let job = job.clone();
        self.with("schedule revert", move |mut c| async move {
            let tx = c.client.transaction().await.map_err(pg("schedule revert"))?;
            let replaced = replace_pending(
                &tx,
                &job.conversation_id,
                &job.setting,
                Some(to_i64(job.scheduled_ms)),
            )
            .await?;
            tx.execute(
                "INSERT INTO jobs (conversation_id, chat_id, setting, value, due_ms, scheduled_by,
                 scheduled_command, scheduled_ms, set_value, restore, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending')",
                &[
                    &text(&job.conversation_id),
                    &job.chat_id.as_str(),
                    &text(&job.setting),
                    &i16::from(job.value),
                    &to_i64(job.due_ms),
                    &text(&job.scheduled_by),
                    &text(&job.scheduled_command),
                    &to_i64(job.scheduled_ms),
                    &i16::from(job.set_value),
                    &job.restore.as_str(),
                ],
            )
            .await
            .map_err(pg("schedule revert"))?;
            tx.commit().await.map_err(pg("schedule revert"))?;
            Ok((replaced, c))
        })
    }

    fn cancel_revert(&self, conversation_id: &str, setting: &str) -> Result<Option<RevertJob>, LedgerError> {
        // Finished at the ledger's now: the server's clock, or a test's.
        let (cid, setting, now) = (conversation_id.to_owned(), setting.to_owned(), self.fixed_now());
        self.with("cancel revert", move |mut c| async move {
            let tx = c.client.transaction().await.map_err(pg("cancel revert"))?;
            let replaced = replace_pending(&tx, &cid, &setting, now).await?;
            tx.commit().await.map_err(pg("cancel revert"))?;
            Ok((replaced, c))
        })
    }

    fn pending_reverts(&self, conversation_id: Option<&str>) -> Result<Vec<RevertJob>, LedgerError> {
        let cid = conversation_id.map(str::to_owned);
        self.with("pending reverts", move |mut c| async move {
            let found = c
                .query(
                    concat!(
                        "SELECT ",
                        job_columns!(),
                        " FROM jobs WHERE state IN ('pending', 'running') AND ($1::text IS NULL OR conversation_id = $1)
                         ORDER BY due_ms, id"
                    ),
                    &[&cid],
                )
                .await
                .map_err(pg("pending reverts"))?;
            let all = mapped("read revert", &found, job_from_row)?;
            Ok((all, c))
        })
    }

    fn claim_revert(&self, id: i64) -> Result<bool, LedgerError> {
        self.with("claim revert", move |mut c| async move {
            let n = c
                .execute(
                    "UPDATE jobs SET state = 'running' WHERE id = $1 AND state IN ('pending', 'running')",
                    &[&id],
                )
                .await
                .map_err(pg("claim revert"))?;
            Ok((n == 1, c))
        })
    }

    fn finish_revert(
        &self,
        id: i64,
        state: RevertState,
        result: &str,
        finished_ms: u64,
    ) -> Result<(), LedgerError> {
        let (state, result) = (state.as_str(), result.to_owned());
        self.with("finish revert", move |mut c| async move {
            c.execute(
                "UPDATE jobs SET state = $2, result = $3, finished_ms = $4 WHERE id = $1 AND state = 'running'",
                &[&id, &state, &text(&result), &to_i64(finished_ms)],
            )
            .await
            .map_err(pg("finish revert"))?;
            Ok(((), c))
        })
    }
}

impl LeaseStore for PostgresLedger {
    fn try_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError> {
        // One statement: the upsert's WHERE leaves a live lease of another holder as it is;
        // the server's clock decides what is live and when the new lease ends.
        self.write_leases(
            "try leases",
            concat!(
                "INSERT INTO leases (name, holder, until_ms)
                 SELECT n, $2, c.now + $3 FROM unnest($1::text[]) AS t(n), (SELECT ",
                ledger_now!("$4"),
                " AS now) AS c
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                 WHERE leases.holder = excluded.holder OR leases.until_ms <= excluded.until_ms - $3
                 RETURNING name"
            ),
            names,
            holder,
            ttl_ms,
        )
    }

    fn renew_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError> {
        self.write_leases(
            "renew leases",
            concat!(
                "UPDATE leases SET until_ms = c.now + $3 FROM (SELECT ",
                ledger_now!("$4"),
                " AS now) AS c
                 WHERE leases.name = ANY($1) AND leases.holder = $2 AND leases.until_ms > c.now
                 RETURNING leases.name"
            ),
            names,
            holder,
            ttl_ms,
        )
    }

    fn release_leases(&self, names: &[String], holder: &str) -> Result<(), LedgerError> {
        if names.is_empty() {
            return Ok(());
        }
        let (names, holder) = (names.iter().map(|n| text(n)).collect::<Vec<_>>(), text(holder));
        self.with("release leases", move |mut c| async move {
            c.execute(
                "DELETE FROM leases WHERE name = ANY($1) AND holder = $2",
                &[&names, &holder],
            )
            .await
            .map_err(pg("release leases"))?;
            Ok(((), c))
        })
    }

    fn release_holder(&self, holder: &str) -> Result<(), LedgerError> {
        let holder = text(holder);
        self.with("release holder", move |mut c| async move {
            c.execute("DELETE FROM leases WHERE holder = $1", &[&holder])
                .await
                .map_err(pg("release holder"))?;
            Ok(((), c))
        })
    }
}

impl RateBudget for PostgresLedger {
    fn clock_ms(&self) -> Result<u64, LedgerError> {
        self.runtime.block("read the clock", self.clock_ms_call())
    }

    fn clock_ms_async(self: Arc<Self>) -> LedgerFuture<u64> {
        self.clock_ms_call()
    }

    fn reserve_call(&self, api: &str, max: u32, window_ms: u64) -> Result<Slot, LedgerError> {
        self.runtime.block(
            "reserve call",
            self.reserve_call_call(api.to_owned(), max, window_ms),
        )
    }

    fn reserve_call_async(self: Arc<Self>, api: String, max: u32, window_ms: u64) -> LedgerFuture<Slot> {
        self.reserve_call_call(api, max, window_ms)
    }
}

impl Maintenance for PostgresLedger {
    fn ping(&self) -> Result<(), LedgerError> {
        // A real write committed by the writer, on the connection and path callbacks take: it
        // fails when PostgreSQL is gone, read-only or stuck, exactly when callbacks get 503.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.ingest(Ingest::Ping(
            self.fixed_now(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            Instant::now(),
        ));
        rx.recv().map_err(|_| LedgerError::WriterGone)?
    }

    fn prune_finished(&self, before_ms: u64, after: i64, limit: usize) -> Result<PruneStep, LedgerError> {
        let before = to_i64(before_ms);
        let limit = limit_of(limit.max(1));
        self.with("prune", move |mut c| async move {
            // The window of the next `limit` commands, by position.
            let found = c
                .query(
                    "SELECT count(*), max(pos), bool_or(received_ms >= $3) FROM
                     (SELECT pos, received_ms FROM commands WHERE pos > $1 ORDER BY pos LIMIT $2) w",
                    &[&after, &limit, &before],
                )
                .await
                .map_err(pg("prune"))?;
            let window = rows("prune", &found, |r| {
                Ok((
                    r.try_get::<_, i64>(0)?,
                    r.try_get::<_, Option<i64>>(1)?,
                    r.try_get::<_, Option<bool>>(2)?,
                ))
            })?;
            let Some(&(count, Some(last), recent)) = window.first() else {
                return Ok((PruneStep::default(), c));
            };
            let deleted = c
                .execute(
                    "DELETE FROM commands WHERE pos > $1 AND pos <= $2 AND status = 'done'
                     AND received_ms < $3 AND coalesce(finished_ms, 0) < $3",
                    &[&after, &last, &before],
                )
                .await
                .map_err(pg("prune"))?;
            // Commands are accepted in time order, so the first recent one ends the pruning.
            let finished = recent == Some(true) || count < limit;
            Ok((
                PruneStep {
                    deleted: usize::try_from(deleted).unwrap_or(usize::MAX),
                    next: (!finished).then_some(last),
                },
                c,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn a_client_side_error_is_described_with_its_causes() {
        let Err(e) = "host=127.0.0.1 port=notaport".parse::<tokio_postgres::Config>() else {
            panic!("a port that is not a number parsed");
        };
        assert_eq!(e.to_string(), "invalid connection string");
        assert_eq!(
            describe(&e),
            "invalid connection string: invalid value for option `port`"
        );
    }
}
