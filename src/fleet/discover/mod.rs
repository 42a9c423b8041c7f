//! `dingops discover`: walks DingTalk's department tree, finds every department group, and
//! shows which of them dingops can already act in; with `--apply` it stores the tree and
//! binds the groups that are not bound yet, so admins need no `/bind` in them.
//!
//! The walk is breadth-first from the root department, with a few departments read at once
//! so that each DingTalk API runs at the client's pace (see docs/dingtalk.md). A department
//! costs two calls (`department/get`, `department/listsubid`), a department group two more
//! (`convertToOpenConversationId`, `chat/get` for its name). Nothing is stored unless the
//! whole walk succeeded.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt as _};

use crate::advice::{Needs, advice, advice_for};
use crate::clock::Clock;
use crate::config::{Database, DingTalkSettings};
use crate::dingtalk::{ApiError, DepartmentInfo, DingTalk};
use crate::domain::{ChatId, printable};
use crate::ledger::LedgerError;
use crate::telemetry::Metrics;

/// The root department: the whole organisation.
pub const ROOT_DEPT: i64 = 1;
/// The most departments a walk reads before it stops with an error.
pub const MAX_DEPARTMENTS: usize = 100_000;
/// The deepest department (the root is depth 0) a walk accepts.
pub const MAX_DEPTH: usize = 64;
/// Departments read at once. Each read calls two APIs, and the client paces each API on
/// its own, so a few in flight keep both at their limit.
pub const IN_FLIGHT: usize = 8;
/// Longer department and group names are cut (with `…`), so paths stay bounded.
const MAX_NAME_CHARS: usize = 128;
/// `bound_by` of the bindings `--apply` stores.
pub const BOUND_BY: &str = "discovered";

mod bind;
pub use bind::{BindState, CONFIGURATION, Report, Row, Summary, apply, classify};

/// What discovery asks DingTalk. [`DingTalk`] is the real one; tests use a tree in memory.
pub trait Directory {
    /// The ids of the direct sub-departments of `dept_id`.
    fn sub_departments(&self, dept_id: i64) -> impl Future<Output = Result<Vec<i64>, ApiError>>;
    /// A department's name and the chatid of its group.
    fn department(&self, dept_id: i64) -> impl Future<Output = Result<DepartmentInfo, ApiError>>;
    /// The openConversationId of a group.
    fn open_conversation_id(&self, chatid: &ChatId) -> impl Future<Output = Result<String, ApiError>>;
    /// The name of a group.
    fn group_name(&self, chatid: &ChatId) -> impl Future<Output = Result<String, ApiError>>;
}

impl Directory for DingTalk {
    fn sub_departments(&self, dept_id: i64) -> impl Future<Output = Result<Vec<i64>, ApiError>> {
        DingTalk::sub_departments(self, dept_id)
    }

    fn department(&self, dept_id: i64) -> impl Future<Output = Result<DepartmentInfo, ApiError>> {
        DingTalk::department(self, dept_id)
    }

    fn open_conversation_id(&self, chatid: &ChatId) -> impl Future<Output = Result<String, ApiError>> {
        DingTalk::open_conversation_id(self, chatid)
    }

    async fn group_name(&self, chatid: &ChatId) -> Result<String, ApiError> {
        self.chat_get(chatid).await.map(|g| g.name)
    }
}

/// Why discovery stopped. Texts from DingTalk (names, error messages) are escaped.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A DingTalk call about one department failed.
    #[error("department {dept_id} ({place}): {step} failed: {detail}. Fix: {fix}")]
    Api {
        dept_id: i64,
        /// Its path, or "under <parent's path>" when its name is not known yet.
        place: String,
        /// The API and what it was asked.
        step: String,
        detail: String,
        fix: String,
        /// DingTalk's errcode, when it gave one.
        errcode: Option<i64>,
    },
    #[error(
        "department {dept_id} ({place}) listed sub-department {child}, which is not a department id (ids are positive)"
    )]
    BadChild { dept_id: i64, place: String, child: i64 },
    #[error(
        "the department tree has more than {MAX_DEPARTMENTS} departments; discovery stops rather than hold an unbounded tree"
    )]
    TooMany,
    #[error(
        "department {dept_id} ({place}) is more than {MAX_DEPTH} levels below the root; discovery stops rather than build unbounded paths"
    )]
    TooDeep { dept_id: i64, place: String },
    #[error("cannot open the ledger {path}: {source}")]
    LedgerOpen { path: String, source: LedgerError },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("DingTalk client: {0}")]
    Client(ApiError),
}

impl DiscoverError {
    fn api(dept_id: i64, place: &str, step: String, e: &ApiError, department_api: bool) -> Self {
        Self::Api {
            dept_id,
            place: place.to_owned(),
            step,
            detail: printable(&e.to_string()).into_owned(),
            fix: if department_api {
                advice_for(e, Needs::Departments)
            } else {
                advice(e)
            },
            errcode: e.errcode(),
        }
    }
}

/// A department group as discovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundGroup {
    pub chat_id: ChatId,
    pub open_conversation_id: String,
    /// The group's name from `chat/get`, or why it could not be read. The name is only
    /// shown: discovery and binding go on without it (chat/get needs permission
    /// qyapi_chat_read, which discovery does not otherwise need).
    pub name: Result<String, String>,
}

/// A department as discovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub dept_id: i64,
    /// The department whose listing led to this one; `None` for the root.
    pub parent_id: Option<i64>,
    pub name: String,
    /// Names from the root down, joined with " / ".
    pub path: String,
    /// The root is 0.
    pub depth: usize,
    pub group: Option<FoundGroup>,
    /// Sub-departments as DingTalk listed them.
    pub(crate) children: Vec<i64>,
}

/// How the walk is going: `crate::cli` shows it as a progress bar or lines on stderr.
pub trait Progress: Send + Sync {
    /// `done` departments read, `pending` more known but not read yet.
    fn update(&self, done: usize, pending: usize);
    /// The walk ended (with or without success).
    fn finish(&self, done: usize);
}

/// Shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _: usize, _: usize) {}
    fn finish(&self, _: usize) {}
}

/// A department to read: its id, where its listing came from, and that parent's path.
struct Visit {
    dept_id: i64,
    parent_id: Option<i64>,
    parent_path: Option<String>,
    depth: usize,
}

/// `name` without characters past [`MAX_NAME_CHARS`].
fn clip(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_CHARS) {
        Some((end, _)) => format!("{}…", &name[..end]),
        None => name.to_owned(),
    }
}

/// Reads one department: its name and group, its sub-departments, and its group's
/// openConversationId and name.
async fn visit<D: Directory>(dir: &D, v: Visit) -> Result<Found, DiscoverError> {
    let id = v.dept_id;
    let (info, children) = futures_util::join!(dir.department(id), dir.sub_departments(id));
    let info = info.map_err(|e| {
        let place = match &v.parent_path {
            Some(p) => format!("under {}", printable(p)),
            None => "the root".to_owned(),
        };
        DiscoverError::api(id, &place, format!("department/get of {id}"), &e, true)
    })?;
    let name = clip(&info.name);
    let path = match &v.parent_path {
        Some(p) => format!("{p} / {name}"),
        None => name.clone(),
    };
    let place = printable(&path).into_owned();
    let children = children
        .map_err(|e| DiscoverError::api(id, &place, format!("department/listsubid of {id}"), &e, true))?;
    let group = match info.group {
        None => None,
        Some(chat_id) => {
            let (cid, name) =
                futures_util::join!(dir.open_conversation_id(&chat_id), dir.group_name(&chat_id));
            let open_conversation_id = cid.map_err(|e| {
                DiscoverError::api(
                    id,
                    &place,
                    format!("convertToOpenConversationId of its group {chat_id}"),
                    &e,
                    false,
                )
            })?;
            Some(FoundGroup {
                chat_id,
                open_conversation_id,
                name: name.map(|n| clip(&n)).map_err(|e| e.short()),
            })
        }
    };
    Ok(Found {
        dept_id: id,
        parent_id: v.parent_id,
        name,
        path,
        depth: v.depth,
        group,
        children,
    })
}

/// Walks the tree from the root, at most [`IN_FLIGHT`] departments at once. Each
/// department is read once, however often it is listed (so a loop in DingTalk's answers
/// ends). The result is in tree order: each department before its sub-departments, siblings
/// in the order DingTalk listed them. The first failure ends the walk.
pub async fn walk<D: Directory>(dir: &D, progress: &dyn Progress) -> Result<Vec<Found>, DiscoverError> {
    let mut seen = HashSet::from([ROOT_DEPT]);
    let mut queue = VecDeque::from([Visit {
        dept_id: ROOT_DEPT,
        parent_id: None,
        parent_path: None,
        depth: 0,
    }]);
    let mut running = FuturesUnordered::new();
    let mut found: HashMap<i64, Found> = HashMap::new();
    let result = loop {
        while running.len() < IN_FLIGHT
            && let Some(v) = queue.pop_front()
        {
            running.push(visit(dir, v));
        }
        let Some(done) = running.next().await else {
            break Ok(());
        };
        let dept = match done {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        let mut stop = None;
        for &child in &dept.children {
            if child <= 0 {
                stop = Some(DiscoverError::BadChild {
                    dept_id: dept.dept_id,
                    place: printable(&dept.path).into_owned(),
                    child,
                });
                break;
            }
            if !seen.insert(child) {
                continue;
            }
            if seen.len() > MAX_DEPARTMENTS {
                stop = Some(DiscoverError::TooMany);
                break;
            }
            if dept.depth + 1 > MAX_DEPTH {
                stop = Some(DiscoverError::TooDeep {
                    dept_id: child,
                    place: format!("under {}", printable(&dept.path)),
                });
                break;
            }
            queue.push_back(Visit {
                dept_id: child,
                parent_id: Some(dept.dept_id),
                parent_path: Some(dept.path.clone()),
                depth: dept.depth + 1,
            });
        }
        if let Some(e) = stop {
            break Err(e);
        }
        found.insert(dept.dept_id, dept);
        progress.update(found.len(), queue.len() + running.len());
    };
    progress.finish(found.len());
    result?;
    Ok(tree_order(found))
}

/// The departments from the root down, depth first, siblings in DingTalk's order; a
/// department listed under several parents comes under the one whose listing was read
/// first.
fn tree_order(mut found: HashMap<i64, Found>) -> Vec<Found> {
    let mut out = Vec::with_capacity(found.len());
    let mut stack = vec![ROOT_DEPT];
    while let Some(id) = stack.pop() {
        let Some(dept) = found.remove(&id) else {
            continue;
        };
        for child in dept.children.iter().rev() {
            if found.get(child).is_some_and(|c| c.parent_id == Some(id)) {
                stack.push(*child);
            }
        }
        out.push(dept);
    }
    out
}

/// Discovers the organisation of the app of `dingtalk` and, with `apply`, stores it in the
/// ledger at `database`; `configured` are the configuration's static bindings. Opens the
/// ledger without the `serve` lock, so it can run beside a running `serve`, which sees the
/// new bindings at its next command. The time is read from `clock`.
pub async fn run(
    dingtalk: &DingTalkSettings,
    database: &Database,
    configured: &BTreeMap<String, ChatId>,
    apply_changes: bool,
    progress: &dyn Progress,
    clock: Arc<dyn Clock>,
) -> Result<Report, DiscoverError> {
    let ledger = crate::ledger::open(database, clock.clone())
        .await
        .map_err(|source| DiscoverError::LedgerOpen {
            path: database.to_string(),
            source,
        })?;
    // Paced by the budget every process on this ledger shares, a running `serve` included.
    // Background work: it never spends the interactive reserve of the monthly budget.
    let client = DingTalk::with_budget(dingtalk, Arc::new(Metrics::new()), ledger.clone(), clock.clone())
        .map_err(DiscoverError::Client)?
        .for_class(crate::quota::Class::Background);
    let found = walk(&client, progress).await?;
    let stored = ledger.call(|l| l.bindings()).await?;
    let mut rows = classify(found, &stored, configured);
    if apply_changes {
        apply(&ledger, &mut rows, clock.now_ms()).await?;
    }
    Ok(Report {
        rows,
        applied: apply_changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dingtalk::error::code;
    use std::time::Duration;

    /// A tree in memory: id → (name, group chatid, children), with calls counted.
    #[derive(Default)]
    struct Tree {
        depts: HashMap<i64, (String, Option<&'static str>, Vec<i64>)>,
        fail_get: Option<(i64, ApiError)>,
        unreadable_names: bool,
        in_flight: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    impl Tree {
        fn add(&mut self, id: i64, name: &str, group: Option<&'static str>, children: &[i64]) -> &mut Self {
            self.depts.insert(id, (name.into(), group, children.to_vec()));
            self
        }

        async fn tick(&self) {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.peak.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.in_flight.fetch_sub(1, SeqCst);
        }
    }

    impl Directory for Tree {
        async fn sub_departments(&self, dept_id: i64) -> Result<Vec<i64>, ApiError> {
            self.tick().await;
            self.depts.get(&dept_id).map(|d| d.2.clone()).ok_or(code(60003))
        }

        async fn department(&self, dept_id: i64) -> Result<DepartmentInfo, ApiError> {
            self.tick().await;
            if let Some((id, e)) = &self.fail_get
                && *id == dept_id
            {
                return Err(e.clone());
            }
            let d = self.depts.get(&dept_id).ok_or(code(60003))?;
            Ok(DepartmentInfo {
                name: d.0.clone(),
                group: d.1.map(|c| ChatId::parse(c).unwrap()),
            })
        }

        async fn open_conversation_id(&self, chatid: &ChatId) -> Result<String, ApiError> {
            Ok(format!("cid{chatid}=="))
        }

        async fn group_name(&self, chatid: &ChatId) -> Result<String, ApiError> {
            if self.unreadable_names {
                Err(code(60011))
            } else {
                Ok(format!("group {chatid}"))
            }
        }
    }

    async fn paths(tree: &Tree) -> Vec<String> {
        walk(tree, &NoProgress)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect()
    }

    #[tokio::test]
    async fn the_walk_lists_the_tree_depth_first_in_dingtalks_order_with_paths() {
        let mut t = Tree::default();
        t.add(1, "Root", Some("chatroot"), &[5, 2])
            .add(2, "Eng", None, &[3, 4])
            .add(3, "Backend", Some("chatbe"), &[])
            .add(4, "Frontend", None, &[])
            .add(5, "Sales", Some("chatsales"), &[]);
        assert_eq!(
            paths(&t).await,
            [
                "Root",
                "Root / Sales",
                "Root / Eng",
                "Root / Eng / Backend",
                "Root / Eng / Frontend"
            ]
        );
        let found = walk(&t, &NoProgress).await.unwrap();
        let backend = &found[3];
        assert_eq!(
            (backend.dept_id, backend.parent_id, backend.depth),
            (3, Some(2), 2)
        );
        let g = backend.group.as_ref().unwrap();
        assert_eq!(g.open_conversation_id, "cidchatbe==");
        assert_eq!(g.name.as_deref(), Ok("group chatbe"));
    }

    #[tokio::test]
    async fn a_department_listed_twice_or_in_a_loop_is_read_once() {
        let mut t = Tree::default();
        t.add(1, "Root", None, &[2, 3])
            .add(2, "A", None, &[3, 1])
            .add(3, "B", None, &[2]);
        assert_eq!(paths(&t).await, ["Root", "Root / A", "Root / B"]);
    }

    #[tokio::test]
    async fn several_departments_are_read_at_once_but_no_more_than_the_bound() {
        let mut t = Tree::default();
        let children: Vec<i64> = (2..60).collect();
        t.add(1, "Root", None, &children);
        for c in &children {
            t.add(*c, &format!("d{c}"), None, &[]);
        }
        assert_eq!(paths(&t).await.len(), 59);
        let peak = t.peak.load(std::sync::atomic::Ordering::SeqCst);
        // Two calls per department in flight.
        assert!(peak > 2 && peak <= 2 * IN_FLIGHT, "peak {peak}");
    }

    #[tokio::test]
    async fn a_failed_department_call_ends_the_walk_naming_the_department_and_the_fix() {
        let mut t = Tree::default();
        t.add(1, "Root", None, &[2])
            .add(2, "Eng", None, &[3])
            .add(3, "Backend", None, &[]);
        t.fail_get = Some((3, code(60011)));
        let e = walk(&t, &NoProgress).await.unwrap_err();
        assert!(
            matches!(
                e,
                DiscoverError::Api {
                    dept_id: 3,
                    errcode: Some(60011),
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.contains("department 3 (under Root / Eng)"), "{text}");
        assert!(text.contains("qyapi_get_department_list"), "{text}");
    }

    #[tokio::test]
    async fn a_tree_deeper_than_the_bound_and_a_non_positive_id_are_clear_errors() {
        let mut t = Tree::default();
        for id in 1..=(MAX_DEPTH as i64 + 2) {
            t.add(id, "d", None, &[id + 1]);
        }
        let e = walk(&t, &NoProgress).await.unwrap_err();
        assert!(matches!(e, DiscoverError::TooDeep { .. }), "{e:?}");
        let mut t = Tree::default();
        t.add(1, "Root", None, &[0]);
        let e = walk(&t, &NoProgress).await.unwrap_err();
        assert!(e.to_string().contains("sub-department 0"), "{e}");
    }

    #[tokio::test]
    async fn unreadable_group_names_do_not_stop_the_walk_and_are_counted() {
        let mut t = Tree::default();
        t.add(1, "Root", Some("chatroot"), &[]);
        t.unreadable_names = true;
        let found = walk(&t, &NoProgress).await.unwrap();
        assert_eq!(found[0].group.as_ref().unwrap().name, Err("60011".to_owned()));
        let report = Report {
            rows: classify(found, &[], &BTreeMap::new()),
            applied: false,
        };
        assert_eq!(report.summary().names_unreadable, 1);
        // The table's words for it: crate::cli::discover's tests.
    }

    #[test]
    fn names_are_clipped() {
        let long = "名".repeat(300);
        assert_eq!(clip(&long).chars().count(), MAX_NAME_CHARS + 1);
        assert_eq!(clip("Eng"), "Eng");
    }
}
