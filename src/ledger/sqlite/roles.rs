//! The SQLite ledger's statements, role by role (see `ledger/roles.rs`).

use super::*;

impl CommandLog for SqliteLedger {
    fn accept(&self, c: &Accepted) -> Result<bool, LedgerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.accept_then(
            c.clone(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| LedgerError::WriterGone)?
    }

    fn accept_then(&self, c: Accepted, done: Box<dyn FnOnce(Result<bool, LedgerError>) + Send>) {
        self.submit(done, move |conn| {
            let n = insert_accepted(conn, &c).map_err(sql("accept"))?;
            Ok(n == 1)
        })
    }

    fn record_answer(&self, msg_id: &str, a: &Answer) -> Result<(), LedgerError> {
        self.write(record_answer(msg_id.to_owned(), a.clone()))
    }

    fn record_answer_async(self: Arc<Self>, msg_id: String, answer: Answer) -> LedgerFuture<()> {
        self.write_async(record_answer(msg_id, answer))
    }

    fn finish(
        &self,
        msg_id: &str,
        a: &Answer,
        delivery: &Delivery,
        finished_ms: u64,
    ) -> Result<(), LedgerError> {
        self.write(finish(msg_id.to_owned(), a.clone(), delivery, finished_ms))
    }

    fn finish_async(
        self: Arc<Self>,
        msg_id: String,
        answer: Answer,
        delivery: Delivery,
        finished_ms: u64,
    ) -> LedgerFuture<()> {
        self.write_async(finish(msg_id, answer, &delivery, finished_ms))
    }

    fn open_after(&self, cursor: i64, limit: usize) -> Result<Vec<(i64, Pending)>, LedgerError> {
        self.with(|conn| {
            let mut st = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    pending_columns!("rowid"),
                    " FROM commands WHERE rowid > ?1 AND status != 'done' ORDER BY rowid LIMIT ?2"
                ))
                .map_err(sql("open_after"))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            st.query_map(params![cursor, limit], |r| cells(pending_from_row(r)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(sql("open_after"))
        })
    }

    fn open_in_conversation_after(
        &self,
        conversation_id: &str,
        after: i64,
        through: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Pending)>, LedgerError> {
        self.with(|conn| {
            // A range of rowids, filtered: no per-group index, which would slow every insert.
            let mut st = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    pending_columns!("rowid"),
                    " FROM commands
                     WHERE rowid > ?1 AND rowid <= ?2 AND conversation_id = ?3 AND status != 'done'
                     ORDER BY rowid LIMIT ?4"
                ))
                .map_err(sql("open_in_conversation_after"))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            st.query_map(params![after, through, conversation_id, limit], |r| {
                cells(pending_from_row(r))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql("open_in_conversation_after"))
        })
    }

    fn newest_done_by_group(&self) -> Result<HashMap<String, i64>, LedgerError> {
        self.with(|conn| {
            let oldest_open: Option<i64> = conn
                .query_row(
                    "SELECT min(rowid) FROM commands WHERE status != 'done'",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql("newest_done_by_group"))?;
            let Some(oldest_open) = oldest_open else {
                return Ok(HashMap::new());
            };
            let mut st = conn
                .prepare(
                    "SELECT conversation_id, max(rowid) FROM commands
                     WHERE rowid > ?1 AND status = 'done' GROUP BY conversation_id",
                )
                .map_err(sql("newest_done_by_group"))?;
            st.query_map(params![oldest_open], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<HashMap<_, _>, _>>())
                .map_err(sql("newest_done_by_group"))
        })
    }

    fn open_count(&self) -> Result<u64, LedgerError> {
        self.with(|conn| {
            conn.query_row(OPEN_COUNT_SQL, [], |r| r.get::<_, i64>(0))
                .map(to_u64)
                .map_err(sql("open_count"))
        })
    }

    fn history(
        &self,
        cid: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, LedgerError> {
        self.with(|conn| {
            let mut st = conn
                .prepare(concat!(
                    "SELECT ",
                    audit_columns!(),
                    " FROM commands
                     WHERE (?1 IS NULL OR conversation_id = ?1) AND received_ms >= ?2
                     ORDER BY received_ms DESC, msg_id LIMIT ?3"
                ))
                .map_err(sql("history"))?;
            let rows = st
                .query_map(
                    params![cid, to_i64(since_ms.unwrap_or(0)), to_i64(limit as u64)],
                    |r| cells(audit_from_row(r)),
                )
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(sql("history"))?;
            Ok(rows)
        })
    }

    fn record_own_action(&self, row: &AuditRow) -> Result<(), LedgerError> {
        let r = row.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO commands (msg_id, received_ms, conversation_id, conversation_type,
                 sender_staff_id, sender_nick, sender_is_admin, msgtype, text, status, command, result,
                 errcode, detail, reply, finished_ms)
                 VALUES (?1, ?2, ?3, '2', ?4, ?5, 0, 'timer', ?6, 'done', ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    r.msg_id,
                    to_i64(r.received_ms),
                    r.conversation_id,
                    r.sender_staff_id,
                    r.sender_nick,
                    r.text,
                    r.command,
                    r.result,
                    r.errcode,
                    r.detail,
                    r.reply,
                    r.finished_ms.map(to_i64),
                ])
            })
            .map_err(sql("record own action"))?;
            Ok(())
        })
    }
}

/// The write of [`CommandLog::record_answer`].
fn record_answer(
    msg_id: String,
    a: Answer,
) -> impl FnOnce(&Connection) -> Result<(), LedgerError> + Send + 'static {
    move |conn: &Connection| {
        conn.prepare_cached(
            "UPDATE commands SET status = 'answered', command = ?2, result = ?3, errcode = ?4,
             detail = ?5, answer_text = ?6 WHERE msg_id = ?1",
        )
        .and_then(|mut st| {
            st.execute(params![
                msg_id,
                a.command,
                a.outcome.as_str(),
                a.errcode,
                a.detail,
                a.text
            ])
        })
        .map_err(sql("record_answer"))?;
        Ok(())
    }
}

/// The write of [`CommandLog::finish`].
fn finish(
    msg_id: String,
    a: Answer,
    delivery: &Delivery,
    finished_ms: u64,
) -> impl FnOnce(&Connection) -> Result<(), LedgerError> + Send + 'static {
    let reply = delivery.as_ledger_text();
    move |conn: &Connection| {
        conn.prepare_cached(
            "UPDATE commands SET status = 'done', command = ?2, result = ?3, errcode = ?4,
             detail = ?5, reply = ?6, finished_ms = ?7, session_webhook = NULL, answer_text = NULL
             WHERE msg_id = ?1",
        )
        .and_then(|mut st| {
            st.execute(params![
                msg_id,
                a.command,
                a.outcome.as_str(),
                a.errcode,
                a.detail,
                reply,
                to_i64(finished_ms)
            ])
        })
        .map_err(sql("finish"))?;
        Ok(())
    }
}

impl BindingStore for SqliteLedger {
    fn binding(&self, cid: &str) -> Result<Option<Binding>, LedgerError> {
        self.with(|conn| {
            conn.query_row(
                concat!(
                    "SELECT ",
                    binding_columns!(),
                    " FROM bindings WHERE conversation_id = ?1"
                ),
                params![cid],
                |r| cells(binding_from_row(r)),
            )
            .optional()
            .map_err(sql("binding"))
        })
    }

    fn bind(&self, b: &Binding) -> Result<(), LedgerError> {
        let b = b.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO bindings (conversation_id, chat_id, bound_by, bound_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(conversation_id) DO UPDATE SET chat_id = excluded.chat_id,
                 bound_by = excluded.bound_by, bound_ms = excluded.bound_ms",
                params![
                    b.conversation_id,
                    b.chat_id.as_str(),
                    b.bound_by,
                    to_i64(b.bound_ms)
                ],
            )
            .map_err(sql("bind"))?;
            Ok(())
        })
    }

    fn bindings(&self) -> Result<Vec<Binding>, LedgerError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    binding_columns!(),
                    " FROM bindings ORDER BY conversation_id"
                ))
                .map_err(sql("bindings"))?;
            let rows = stmt
                .query_map([], |r| cells(binding_from_row(r)))
                .map_err(sql("bindings"))?;
            rows.collect::<Result<_, _>>().map_err(sql("bindings"))
        })
    }

    fn departments(&self) -> Result<Vec<Department>, LedgerError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    department_columns!(),
                    " FROM departments ORDER BY dept_id"
                ))
                .map_err(sql("departments"))?;
            let rows = stmt
                .query_map([], |r| cells(department_from_row(r)))
                .map_err(sql("departments"))?;
            rows.collect::<Result<_, _>>().map_err(sql("departments"))
        })
    }

    fn replace_departments(&self, departments: &[Department]) -> Result<(), LedgerError> {
        let departments = departments.to_vec();
        self.write(move |conn| {
            conn.execute("DELETE FROM departments", [])
                .map_err(sql("replace_departments"))?;
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO departments (dept_id, parent_id, name, path, chat_id, open_conversation_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql("replace_departments"))?;
            for d in &departments {
                stmt.execute(params![
                    d.dept_id,
                    d.parent_id,
                    d.name,
                    d.path,
                    d.chat_id.as_ref().map(|c| c.as_str()),
                    d.open_conversation_id
                ])
                .map_err(sql("replace_departments"))?;
            }
            Ok(())
        })
    }
}

impl SettingStore for SqliteLedger {
    fn known_settings(&self, cid: &str) -> Result<Vec<(String, KnownValue)>, LedgerError> {
        self.with(|conn| {
            let mut st = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    known_columns!(),
                    " FROM group_settings WHERE conversation_id = ?1 ORDER BY setting"
                ))
                .map_err(sql("known_settings"))?;
            let rows = st
                .query_map(params![cid], |r| cells(known_from_row(r)))
                .map_err(sql("known_settings"))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql("known_settings"))
        })
    }

    fn record_setting(&self, cid: &str, setting: &str, k: &KnownValue) -> Result<(), LedgerError> {
        let (cid, setting, k) = (cid.to_owned(), setting.to_owned(), k.clone());
        self.write(move |conn| upsert_setting(conn, &cid, &setting, &k))
    }

    fn record_setting_fenced(
        &self,
        cid: &str,
        setting: &str,
        k: &KnownValue,
        fence: &crate::ledger::Fence,
    ) -> Result<bool, LedgerError> {
        let (cid, setting, k, fence) = (cid.to_owned(), setting.to_owned(), k.clone(), fence.clone());
        // In the writer's transaction: no lease changes hands between the check and the write.
        self.write(move |conn| {
            let mut st = conn
                .prepare_cached("SELECT 1 FROM leases WHERE name = ?1 AND holder = ?2")
                .map_err(sql("record_setting fenced"))?;
            for name in &fence.leases {
                if !st
                    .exists(params![name, fence.holder])
                    .map_err(sql("record_setting fenced"))?
                {
                    return Ok(false);
                }
            }
            upsert_setting(conn, &cid, &setting, &k)?;
            Ok(true)
        })
    }

    fn set_policy_in_force(&self, digest: &str, by: &str, set_ms: u64) -> Result<(), LedgerError> {
        let (digest, by) = (digest.to_owned(), by.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO policy_in_force (id, digest, set_by, set_ms) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET digest = excluded.digest, set_by = excluded.set_by,
                 set_ms = excluded.set_ms",
                params![digest, by, to_i64(set_ms)],
            )
            .map_err(sql("set policy in force"))?;
            Ok(())
        })
    }

    fn policy_in_force(&self) -> Result<Option<String>, LedgerError> {
        self.with(|conn| {
            conn.query_row("SELECT digest FROM policy_in_force WHERE id = 1", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(sql("policy in force"))
        })
    }

    fn schedule_revert(&self, job: &RevertJob) -> Result<Option<RevertJob>, LedgerError> {
        let job = job.clone();
        self.write(move |conn| {
            let replaced = pending_revert(conn, &job.conversation_id, &job.setting)?;
            conn.prepare_cached(
                "UPDATE jobs SET state = 'replaced', finished_ms = ?3
                 WHERE conversation_id = ?1 AND setting = ?2 AND state IN ('pending', 'running')",
            )
            .and_then(|mut st| {
                st.execute(params![
                    job.conversation_id,
                    job.setting,
                    to_i64(job.scheduled_ms)
                ])
            })
            .map_err(sql("replace revert"))?;
            conn.prepare_cached(
                "INSERT INTO jobs (conversation_id, chat_id, setting, value, due_ms, scheduled_by,
                 scheduled_command, scheduled_ms, set_value, restore, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending')",
            )
            .and_then(|mut st| {
                st.execute(params![
                    job.conversation_id,
                    job.chat_id.as_str(),
                    job.setting,
                    i64::from(job.value),
                    to_i64(job.due_ms),
                    job.scheduled_by,
                    job.scheduled_command,
                    to_i64(job.scheduled_ms),
                    i64::from(job.set_value),
                    job.restore.as_str(),
                ])
            })
            .map_err(sql("schedule revert"))?;
            Ok(replaced)
        })
    }

    fn cancel_revert(&self, cid: &str, setting: &str) -> Result<Option<RevertJob>, LedgerError> {
        let (cid, setting, now) = (cid.to_owned(), setting.to_owned(), to_i64(self.clock.now_ms()));
        self.write(move |conn| {
            let replaced = pending_revert(conn, &cid, &setting)?;
            conn.prepare_cached(
                "UPDATE jobs SET state = 'replaced', finished_ms = ?3
                 WHERE conversation_id = ?1 AND setting = ?2 AND state IN ('pending', 'running')",
            )
            .and_then(|mut st| st.execute(params![cid, setting, now]))
            .map_err(sql("cancel revert"))?;
            Ok(replaced)
        })
    }

    fn pending_reverts(&self, cid: Option<&str>) -> Result<Vec<RevertJob>, LedgerError> {
        self.with(|conn| {
            let mut st = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE state IN ('pending', 'running') AND (?1 IS NULL OR conversation_id = ?1)
                     ORDER BY due_ms, id"
                ))
                .map_err(sql("pending reverts"))?;
            st.query_map(params![cid], |r| cells(job_from_row(r)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(sql("pending reverts"))
        })
    }

    fn claim_revert(&self, id: i64) -> Result<bool, LedgerError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE jobs SET state = 'running' WHERE id = ?1 AND state IN ('pending', 'running')",
                )
                .and_then(|mut st| st.execute(params![id]))
                .map_err(sql("claim revert"))?;
            Ok(n == 1)
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
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE jobs SET state = ?2, result = ?3, finished_ms = ?4 WHERE id = ?1 AND state = 'running'",
            )
            .and_then(|mut st| st.execute(params![id, state, result, to_i64(finished_ms)]))
            .map_err(sql("finish revert"))?;
            Ok(())
        })
    }
}

impl LeaseStore for SqliteLedger {
    fn try_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError> {
        // The upsert's WHERE leaves a live lease of another holder untouched (no change).
        self.write_leases(
            "try leases",
            "INSERT INTO leases (name, holder, until_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
             WHERE leases.holder = excluded.holder OR leases.until_ms <= ?4",
            names,
            holder,
            ttl_ms,
        )
    }

    fn renew_leases(&self, names: &[String], holder: &str, ttl_ms: u64) -> Result<Vec<String>, LedgerError> {
        self.write_leases(
            "renew leases",
            "UPDATE leases SET until_ms = ?3 WHERE name = ?1 AND holder = ?2 AND until_ms > ?4",
            names,
            holder,
            ttl_ms,
        )
    }

    fn release_leases(&self, names: &[String], holder: &str) -> Result<(), LedgerError> {
        if names.is_empty() {
            return Ok(());
        }
        let (names, holder) = (names.to_vec(), holder.to_owned());
        self.write(move |conn| {
            let mut st = conn
                .prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")
                .map_err(sql("release leases"))?;
            for name in names {
                st.execute(params![name, holder]).map_err(sql("release leases"))?;
            }
            Ok(())
        })
    }

    fn release_holder(&self, holder: &str) -> Result<(), LedgerError> {
        let holder = holder.to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM leases WHERE holder = ?1", params![holder])
                .map_err(sql("release holder"))?;
            Ok(())
        })
    }
}

impl RateBudget for SqliteLedger {
    fn clock_ms(&self) -> Result<u64, LedgerError> {
        Ok(self.clock.now_ms())
    }

    fn clock_is_ours(&self) -> bool {
        self.clock.is_system()
    }

    fn reserve_call(&self, api: &str, max: u32, window_ms: u64) -> Result<Slot, LedgerError> {
        budget_args(max, window_ms)?;
        let (api, clock) = (api.to_owned(), Arc::clone(&self.clock));
        // Runs in the writer's `BEGIN IMMEDIATE` transaction: SQLite's write lock, which
        // every other connection to the file (other processes included) waits for, is held
        // from before the read until after the insert is committed.
        self.write(move |conn| {
            // Read under the lock: waiting for it is not free time.
            let now = clock.now_ms();
            conn.prepare_cached("DELETE FROM call_slots WHERE api = ?1 AND slot_ms <= ?2")
                .and_then(|mut st| st.execute(params![api, to_i64(now.saturating_sub(window_ms))]))
                .map_err(sql("reserve call"))?;
            let max_th_latest: Option<i64> = conn
                .prepare_cached(
                    "SELECT slot_ms FROM call_slots WHERE api = ?1 ORDER BY slot_ms DESC LIMIT 1 OFFSET ?2",
                )
                .and_then(|mut st| {
                    st.query_row(params![api, i64::from(max) - 1], |r| r.get(0))
                        .optional()
                })
                .map_err(sql("reserve call"))?;
            let latest: Option<i64> = conn
                .prepare_cached("SELECT max(slot_ms) FROM call_slots WHERE api = ?1")
                .and_then(|mut st| st.query_row(params![api], |r| r.get(0)))
                .map_err(sql("reserve call"))?;
            let slot = budget_slot(now, latest.map(to_u64), max_th_latest.map(to_u64), window_ms, max);
            conn.prepare_cached("INSERT INTO call_slots (api, slot_ms) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![api, to_i64(slot)]))
                .map_err(sql("reserve call"))?;
            Ok(Slot {
                at_ms: slot,
                now_ms: now,
            })
        })
    }
}

impl Maintenance for SqliteLedger {
    fn ping(&self) -> Result<(), LedgerError> {
        // A real write through the writer, committed like a callback's: it fails when the disk
        // is full, the file is gone or replaced, or the writer is stuck, exactly when callbacks
        // get 503. It touches one row, whatever the size of the ledger.
        let now = to_i64(self.clock.now_ms());
        self.write(move |conn| {
            conn.prepare_cached(READY_PROBE_SQL)
                .and_then(|mut st| st.execute(params![now]))
                .map_err(sql("ping"))?;
            Ok(())
        })
    }

    fn prune_finished(&self, before_ms: u64, after: i64, limit: usize) -> Result<PruneStep, LedgerError> {
        let before = to_i64(before_ms);
        let limit = to_i64(limit.max(1) as u64);
        self.write(move |conn| {
            // The window of the next `limit` commands, by position (the primary key).
            let (count, last, recent): (i64, Option<i64>, Option<i64>) = conn
                .prepare_cached(
                    "SELECT count(*), max(rowid), max(received_ms >= ?3) FROM
                     (SELECT rowid, received_ms FROM commands WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)",
                )
                .and_then(|mut st| {
                    st.query_row(params![after, limit, before], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                })
                .map_err(sql("prune"))?;
            let Some(last) = last else {
                return Ok(PruneStep::default());
            };
            let deleted = conn
                .prepare_cached(
                    "DELETE FROM commands WHERE rowid > ?1 AND rowid <= ?2 AND status = 'done'
                     AND received_ms < ?3 AND coalesce(finished_ms, 0) < ?3",
                )
                .and_then(|mut st| st.execute(params![after, last, before]))
                .map_err(sql("prune"))?;
            // Commands are accepted in time order, so the first recent one ends the pruning.
            let done = recent == Some(1) || count < limit;
            Ok(PruneStep {
                deleted,
                next: (!done).then_some(last),
            })
        })
    }
}

/// Writes what dingops knows of one setting of a group, replacing what it knew.
fn upsert_setting(conn: &Connection, cid: &str, setting: &str, k: &KnownValue) -> Result<(), LedgerError> {
    conn.execute(
        "INSERT INTO group_settings (conversation_id, setting, value, set_by, set_by_nick, via, set_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(conversation_id, setting) DO UPDATE SET value = excluded.value,
         set_by = excluded.set_by, set_by_nick = excluded.set_by_nick, via = excluded.via,
         set_ms = excluded.set_ms",
        params![
            cid,
            setting,
            i64::from(k.value),
            k.set_by,
            k.set_by_nick,
            k.via.as_str(),
            to_i64(k.set_ms)
        ],
    )
    .map_err(sql("record_setting"))?;
    Ok(())
}

// The store-independent tests are in `contract.rs`; these are about SQLite's own locking.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_budget_follows_the_sliding_window_rule() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        crate::ledger::testing::budget_tests::run_all(|clock| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::new(SqliteLedger::open(&dir.path().join(format!("l{i}.db")), clock).unwrap())
        });
    }

    #[test]
    fn reservations_from_two_connections_to_one_file_share_one_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let clock = crate::clock::ManualClock::at(0);
        crate::ledger::testing::budget_tests::two_handles_reserving_at_once_get_the_slots_of_one(
            Arc::new(SqliteLedger::open(&path, clock.clone()).unwrap()),
            Arc::new(SqliteLedger::open(&path, clock.clone()).unwrap()),
            &clock,
        );
    }
}
