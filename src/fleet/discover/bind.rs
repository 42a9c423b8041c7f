//! What discovery means for the bindings: each found department's [`BindState`] against the
//! stored and configured bindings, and `--apply`, which stores the tree and binds the groups
//! not bound yet.

use std::collections::{BTreeMap, HashMap};

use super::{BOUND_BY, Found};
use crate::domain::{Binding, ChatId, Department};
use crate::ledger::{LedgerError, LedgerHandle};

/// Whether dingops can already act in a department's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindState {
    /// The department has no group.
    NoGroup,
    /// The group is not bound.
    NotBound,
    /// The ledger binds the group to this chatid (by `by`).
    Bound { by: String },
    /// The configuration's `groups` binds the group to this chatid.
    Configured,
    /// `--apply` bound it just now.
    NewlyBound,
    /// The group is bound to another chatid (in the ledger by `by`, or in the
    /// configuration); left as it is.
    Conflict { chat_id: ChatId, by: String },
}

impl BindState {
    /// The stable word for `--json`.
    pub fn key(&self) -> &'static str {
        match self {
            BindState::NoGroup => "no-group",
            BindState::NotBound => "not-bound",
            BindState::Bound { .. } | BindState::Configured => "bound",
            BindState::NewlyBound => "newly-bound",
            BindState::Conflict { .. } => "conflict",
        }
    }
}

/// One line of the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub found: Found,
    pub state: BindState,
}

/// What discovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Whether the tree and the new bindings were stored.
    pub applied: bool,
}

/// The counts of a [`Report`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub departments: usize,
    pub with_group: usize,
    /// Bound before this run (ledger or configuration).
    pub already_bound: usize,
    pub newly_bound: usize,
    pub not_bound: usize,
    pub conflicts: usize,
    /// Groups whose name `chat/get` did not give.
    pub names_unreadable: usize,
}

/// `by` of a configured binding in a conflict.
pub const CONFIGURATION: &str = "the configuration";

/// The state of each found department against the stored bindings and the configured ones
/// (a stored binding wins, as it does when a command runs).
pub fn classify(found: Vec<Found>, stored: &[Binding], configured: &BTreeMap<String, ChatId>) -> Vec<Row> {
    let stored: HashMap<&str, &Binding> = stored.iter().map(|b| (b.conversation_id.as_str(), b)).collect();
    found
        .into_iter()
        .map(|f| {
            let state = match &f.group {
                None => BindState::NoGroup,
                Some(g) => match (
                    stored.get(g.open_conversation_id.as_str()),
                    configured.get(&g.open_conversation_id),
                ) {
                    (Some(b), _) if b.chat_id == g.chat_id => BindState::Bound {
                        by: b.bound_by.clone(),
                    },
                    (Some(b), _) => BindState::Conflict {
                        chat_id: b.chat_id.clone(),
                        by: b.bound_by.clone(),
                    },
                    (None, Some(c)) if *c == g.chat_id => BindState::Configured,
                    (None, Some(c)) => BindState::Conflict {
                        chat_id: c.clone(),
                        by: CONFIGURATION.into(),
                    },
                    (None, None) => BindState::NotBound,
                },
            };
            Row { found: f, state }
        })
        .collect()
}

/// The stored form of a found department.
fn department(f: &Found) -> Department {
    Department {
        dept_id: f.dept_id,
        parent_id: f.parent_id,
        name: f.name.clone(),
        path: f.path.clone(),
        chat_id: f.group.as_ref().map(|g| g.chat_id.clone()),
        open_conversation_id: f.group.as_ref().map(|g| g.open_conversation_id.clone()),
    }
}

/// Stores the tree in place of the last one, and binds each group that is not bound (as
/// [`BOUND_BY`], at `now`). A group bound meanwhile (by `/bind` in a running `serve`) is
/// looked at again just before: the same chatid counts as bound, another as a conflict,
/// and neither is written over.
pub async fn apply(ledger: &LedgerHandle, rows: &mut [Row], now: u64) -> Result<(), LedgerError> {
    let departments: Vec<Department> = rows.iter().map(|r| department(&r.found)).collect();
    ledger.call(move |l| l.replace_departments(&departments)).await?;
    let wanted: Vec<(usize, Binding)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.state == BindState::NotBound)
        .filter_map(|(i, r)| r.found.group.as_ref().map(|g| (i, g)))
        .map(|(i, g)| {
            (
                i,
                Binding {
                    conversation_id: g.open_conversation_id.clone(),
                    chat_id: g.chat_id.clone(),
                    bound_by: BOUND_BY.into(),
                    bound_ms: now,
                },
            )
        })
        .collect();
    let states = ledger
        .call(move |l| {
            let mut states = Vec::with_capacity(wanted.len());
            for (i, b) in wanted {
                let state = match l.binding(&b.conversation_id)? {
                    Some(old) if old.chat_id == b.chat_id => BindState::Bound { by: old.bound_by },
                    Some(old) => BindState::Conflict {
                        chat_id: old.chat_id,
                        by: old.bound_by,
                    },
                    None => {
                        l.bind(&b)?;
                        BindState::NewlyBound
                    }
                };
                states.push((i, state));
            }
            Ok(states)
        })
        .await?;
    for (i, state) in states {
        if let Some(row) = rows.get_mut(i) {
            row.state = state;
        }
    }
    Ok(())
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            departments: self.rows.len(),
            ..Summary::default()
        };
        for r in &self.rows {
            if let Some(g) = &r.found.group {
                s.with_group += 1;
                s.names_unreadable += usize::from(g.name.is_err());
            }
            match r.state {
                BindState::NoGroup => {}
                BindState::NotBound => s.not_bound += 1,
                BindState::Bound { .. } | BindState::Configured => s.already_bound += 1,
                BindState::NewlyBound => s.newly_bound += 1,
                BindState::Conflict { .. } => s.conflicts += 1,
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::FoundGroup;
    use super::*;

    fn found(id: i64, chat: Option<&str>) -> Found {
        Found {
            dept_id: id,
            parent_id: (id != 1).then_some(1),
            name: format!("d{id}"),
            path: format!("d{id}"),
            depth: 0,
            group: chat.map(|c| FoundGroup {
                chat_id: ChatId::parse(c).unwrap(),
                open_conversation_id: format!("cid{c}=="),
                name: Ok(c.to_owned()),
            }),
            children: Vec::new(),
        }
    }

    #[test]
    fn classify_tells_bound_not_bound_configured_and_conflicts_apart() {
        let binding = |cid: &str, chat: &str| Binding {
            conversation_id: cid.into(),
            chat_id: ChatId::parse(chat).unwrap(),
            bound_by: "Ada (u1)".into(),
            bound_ms: 1,
        };
        let stored = [binding("cidchata==", "chata"), binding("cidchatb==", "chatother")];
        let configured = BTreeMap::from([
            ("cidchatc==".to_owned(), ChatId::parse("chatc").unwrap()),
            ("cidchatd==".to_owned(), ChatId::parse("chatwrong").unwrap()),
            // A stored binding wins over the configuration.
            ("cidchata==".to_owned(), ChatId::parse("chatwrong").unwrap()),
        ]);
        let rows = classify(
            vec![
                found(1, None),
                found(2, Some("chata")),
                found(3, Some("chatb")),
                found(4, Some("chatc")),
                found(5, Some("chatd")),
                found(6, Some("chate")),
            ],
            &stored,
            &configured,
        );
        let states: Vec<BindState> = rows.into_iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            [
                BindState::NoGroup,
                BindState::Bound {
                    by: "Ada (u1)".into()
                },
                BindState::Conflict {
                    chat_id: ChatId::parse("chatother").unwrap(),
                    by: "Ada (u1)".into()
                },
                BindState::Configured,
                BindState::Conflict {
                    chat_id: ChatId::parse("chatwrong").unwrap(),
                    by: CONFIGURATION.into()
                },
                BindState::NotBound,
            ]
        );
    }

    #[tokio::test]
    async fn apply_stores_the_tree_binds_the_unbound_and_never_overwrites_a_binding() {
        let ledger = crate::ledger::MemoryLedger::new();
        let handle = LedgerHandle::new(ledger);
        // Bound by /bind after the walk read the bindings, to another chatid.
        let late = Binding {
            conversation_id: "cidchatb==".into(),
            chat_id: ChatId::parse("chatlate").unwrap(),
            bound_by: "Ada (u1)".into(),
            bound_ms: 5,
        };
        handle.call(move |l| l.bind(&late)).await.unwrap();
        let mut rows = classify(
            vec![found(1, None), found(2, Some("chata")), found(3, Some("chatb"))],
            &[],
            &BTreeMap::new(),
        );
        apply(&handle, &mut rows, 42).await.unwrap();
        assert_eq!(rows[1].state, BindState::NewlyBound);
        assert!(
            matches!(rows[2].state, BindState::Conflict { .. }),
            "{:?}",
            rows[2].state
        );
        let bindings = handle.call(|l| l.bindings()).await.unwrap();
        assert_eq!(bindings.len(), 2);
        assert_eq!(bindings[0].chat_id.as_str(), "chata");
        assert_eq!(
            (bindings[0].bound_by.as_str(), bindings[0].bound_ms),
            (BOUND_BY, 42)
        );
        assert_eq!(bindings[1].chat_id.as_str(), "chatlate");
        let depts = handle.call(|l| l.departments()).await.unwrap();
        assert_eq!(depts.iter().map(|d| d.dept_id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(depts[1].open_conversation_id.as_deref(), Some("cidchata=="));
    }
}
