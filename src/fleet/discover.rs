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
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::config::Settings;
use crate::dingtalk::advice;
use crate::dingtalk::{ApiError, DepartmentInfo, DingTalk, ErrorClass};
use crate::domain::{Binding, ChatId, Department};
use crate::domain::{printable, printable_json, table_cell, table_cell_tail};
use crate::ledger::{LedgerError, LedgerHandle};
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
                department_advice(e)
            } else {
                advice(e)
            },
            errcode: e.errcode(),
        }
    }
}

/// What to do about a failed department API call.
fn department_advice(e: &ApiError) -> String {
    let permission = match e {
        ApiError::Code { errcode, .. } => *errcode == 60011,
        ApiError::Status { status, code, .. } => {
            (*status == 403 && e.class() == ErrorClass::Permanent) || code.contains("PermissionDenied")
        }
        _ => false,
    };
    if permission {
        "the app lacks permission qyapi_get_department_list (read the organisation's departments); add it in the DingTalk developer console".into()
    } else if e.errcode() == Some(60003) {
        "DingTalk no longer knows this department (changed during the walk?); run discover again".into()
    } else {
        advice(e)
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
    children: Vec<i64>,
}

/// How the walk is going, for a progress bar or lines on stderr.
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

/// A progress bar on stderr.
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn update(&self, done: usize, pending: usize) {
        self.0.set_length((done + pending) as u64);
        self.0.set_position(done as u64);
    }

    fn finish(&self, _: usize) {
        self.0.finish_and_clear();
    }
}

/// A plain line on stderr every few seconds, for logs and pipes.
struct Lines {
    last: Mutex<Option<Instant>>,
}

impl Progress for Lines {
    fn update(&self, done: usize, pending: usize) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            *last = Some(Instant::now());
            eprintln!(
                "discover: {done} of {} departments known so far read",
                done + pending
            );
        }
    }

    fn finish(&self, done: usize) {
        eprintln!("discover: done, {done} departments read");
    }
}

/// A progress bar when stderr is a terminal, plain lines otherwise.
pub fn stderr_progress() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(1);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "discovering departments [{bar:30}] {pos}/{len} ({elapsed})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Box::new(Bar(bar))
    } else {
        Box::new(Lines {
            last: Mutex::new(None),
        })
    }
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
const CONFIGURATION: &str = "the configuration";

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

/// Discovers the organisation of `settings`' app and, with `apply`, stores it. Opens the
/// ledger without the `serve` lock, so it can run beside a running `serve`, which sees the
/// new bindings at its next command.
pub async fn run(
    settings: &Settings,
    apply_changes: bool,
    progress: &dyn Progress,
) -> Result<Report, DiscoverError> {
    let ledger = crate::ledger::open(&settings.ledger.database)
        .await
        .map_err(|source| DiscoverError::LedgerOpen {
            path: settings.ledger.database.to_string(),
            source,
        })?;
    // Paced by the budget every process on this ledger shares, a running `serve` included.
    let client = DingTalk::with_budget(&settings.dingtalk, Arc::new(Metrics::new()), ledger.clone())
        .map_err(DiscoverError::Client)?;
    let found = walk(&client, progress).await?;
    let stored = ledger.call(|l| l.bindings()).await?;
    let mut rows = classify(found, &stored, &settings.worker.groups);
    if apply_changes {
        apply(&ledger, &mut rows, now_ms()).await?;
    }
    Ok(Report {
        rows,
        applied: apply_changes,
    })
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

    /// The table on stdout: one line per department, then the summary.
    pub fn table(&self) -> String {
        let mut lines =
            vec![["department", "group", "chatid", "openConversationId", "bound"].map(str::to_owned)];
        for r in &self.rows {
            let (group, chat, cid) = match &r.found.group {
                None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
                Some(g) => (
                    match &g.name {
                        Ok(n) => table_cell(n).into_owned(),
                        Err(_) => "(name unreadable)".to_owned(),
                    },
                    g.chat_id.to_string(),
                    table_cell(&g.open_conversation_id).into_owned(),
                ),
            };
            let bound = match &r.state {
                BindState::NoGroup => "-".to_owned(),
                BindState::NotBound => "no".to_owned(),
                BindState::Bound { by } => format!("yes (by {})", table_cell(by)),
                BindState::Configured => "yes (configuration)".to_owned(),
                BindState::NewlyBound => "newly bound".to_owned(),
                BindState::Conflict { chat_id, .. } => format!("CONFLICT: bound to {chat_id}"),
            };
            lines.push([
                table_cell_tail(&r.found.path).into_owned(),
                group,
                chat,
                cid,
                bound,
            ]);
        }
        let mut out = aligned(&lines);
        out.push('\n');
        out.push_str(&self.summary_text());
        out
    }

    /// The summary sentences under the table.
    pub fn summary_text(&self) -> String {
        let s = self.summary();
        let mut out = format!(
            "{} departments, {} with a department group: {} already bound",
            s.departments, s.with_group, s.already_bound
        );
        if self.applied {
            out.push_str(&format!(", {} newly bound", s.newly_bound));
        } else {
            out.push_str(&format!(", {} not bound", s.not_bound));
        }
        out.push_str(&format!(", {} conflicts.\n", s.conflicts));
        if self.applied {
            out.push_str("Stored the department tree in the ledger.\n");
        } else if s.not_bound > 0 {
            out.push_str("Run `dingops discover --apply` to bind the groups not bound yet.\n");
        }
        for r in &self.rows {
            if let (Some(g), BindState::Conflict { chat_id, by }) = (&r.found.group, &r.state) {
                out.push_str(&format!(
                    "Conflict: group {} ({}) is bound to chatid {chat_id} by {}, but its department group is {}; left as it is. Check which is right, then run /bind <chatid> in that group.\n",
                    printable(&g.open_conversation_id),
                    printable(&r.found.path),
                    printable(by),
                    g.chat_id,
                ));
            }
        }
        if let Some(why) = self
            .rows
            .iter()
            .find_map(|r| r.found.group.as_ref().and_then(|g| g.name.as_ref().err()))
        {
            out.push_str(&format!(
                "{} group names could not be read with chat/get (first error: {}); the app may lack permission qyapi_chat_read. Binding does not need them.\n",
                s.names_unreadable,
                printable(why)
            ));
        }
        out
    }

    /// The whole result as one JSON document.
    pub fn json(&self) -> Value {
        let s = self.summary();
        let departments: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let g = r.found.group.as_ref();
                let (bound_chat_id, bound_by) = match &r.state {
                    BindState::Bound { by } => (g.map(|g| g.chat_id.to_string()), Some(by.clone())),
                    BindState::Configured => {
                        (g.map(|g| g.chat_id.to_string()), Some(CONFIGURATION.to_owned()))
                    }
                    BindState::NewlyBound => (g.map(|g| g.chat_id.to_string()), Some(BOUND_BY.to_owned())),
                    BindState::Conflict { chat_id, by } => (Some(chat_id.to_string()), Some(by.clone())),
                    BindState::NoGroup | BindState::NotBound => (None, None),
                };
                json!({
                    "dept_id": r.found.dept_id,
                    "parent_id": r.found.parent_id,
                    "name": r.found.name,
                    "path": r.found.path,
                    "chat_id": g.map(|g| g.chat_id.to_string()),
                    "open_conversation_id": g.map(|g| g.open_conversation_id.clone()),
                    "group_name": g.and_then(|g| g.name.as_ref().ok()),
                    "group_name_error": g.and_then(|g| g.name.as_ref().err()),
                    "binding": r.state.key(),
                    "bound_chat_id": bound_chat_id,
                    "bound_by": bound_by,
                })
            })
            .collect();
        json!({
            "applied": self.applied,
            "departments": departments,
            "summary": {
                "departments": s.departments,
                "with_group": s.with_group,
                "already_bound": s.already_bound,
                "newly_bound": s.newly_bound,
                "not_bound": s.not_bound,
                "conflicts": s.conflicts,
                "names_unreadable": s.names_unreadable,
            },
        })
    }

    /// [`Report::json`] as text, with terminal controls escaped (still the same JSON).
    pub fn json_text(&self) -> String {
        let text = serde_json::to_string_pretty(&self.json()).unwrap_or_default();
        format!("{}\n", printable_json(&text))
    }
}

/// Cells in columns two spaces apart.
fn aligned<const N: usize>(lines: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dingtalk::error::code;
    use crate::domain::steers_terminal;

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
        assert!(report.table().contains("(name unreadable)"));
        assert!(report.table().contains("qyapi_chat_read"));
    }

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
        let ledger = crate::ledger::MemoryLedger::default();
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

    #[test]
    fn names_are_clipped_and_json_text_escapes_terminal_controls() {
        let long = "名".repeat(300);
        assert_eq!(clip(&long).chars().count(), MAX_NAME_CHARS + 1);
        assert_eq!(clip("Eng"), "Eng");
        let mut f = found(1, None);
        f.path = "\u{1b}[2J\u{202e}x".into();
        let report = Report {
            rows: classify(vec![f], &[], &BTreeMap::new()),
            applied: false,
        };
        let text = report.json_text();
        assert!(!text.chars().any(|c| steers_terminal(c) && c != '\n'), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["departments"][0]["path"], "\u{1b}[2J\u{202e}x");
        assert!(!report.table().contains('\u{1b}'));
    }
}
