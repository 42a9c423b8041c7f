//! Steering and reading a running simulator: [`Simulator`]'s methods for tests, benchmarks
//! and the demo (groups, departments, reply sessions, faults, the calls and replies it
//! received), and the `/_sim/*` routes that do the same over HTTP (`dingops sim`). The card
//! ones (`/_sim/cards*`) are in `cards/control.rs`.

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::clock::now_ms;
use crate::state::{Session, Shared};
use crate::{
    DepartmentError, Fault, MANAGEMENT_FIELDS, ROOT_DEPT, RecordedCall, RecordedReply, SimDepartment,
    SimGroup, Simulator, random_hex,
};

impl Simulator {
    /// The most calls of `api` it received within any one second.
    pub fn peak_calls_per_second(&self, api: &str) -> usize {
        let times: Vec<u64> = self.calls(Some(api)).iter().map(|c| c.at_ms).collect();
        peak_in_window(times, 1000)
    }

    /// Adds (or replaces) a group.
    pub fn add_group(&self, open_conversation_id: &str, chatid: &str, title: &str) {
        add_group(&self.shared, open_conversation_id, chatid, title);
    }

    /// Adds (or replaces) the department `dept_id` under `parent_id`, with `group` (the
    /// openConversationId of a group made with [`Self::add_group`]) as its department
    /// group. The organisation starts with the root department 1, named "Root" and without
    /// a group; adding department 1 renames it or gives it a group. A replaced department
    /// keeps its place among its siblings and its own sub-departments.
    pub fn add_department(
        &self,
        dept_id: i64,
        parent_id: Option<i64>,
        name: &str,
        group: Option<&str>,
    ) -> Result<(), DepartmentError> {
        add_department(
            &self.shared,
            SimDepartment {
                dept_id,
                parent_id,
                name: name.to_owned(),
                group: group.map(str::to_owned),
            },
        )
    }

    /// Seeds the small organisation `dingops sim` starts with, and its department groups:
    ///
    /// ```text
    /// 1 Demo Corp            group "Demo Corp all hands"
    /// ├── 2 Engineering      group "Engineering"
    /// │   ├── 3 Backend      group "Backend team"
    /// │   └── 4 Frontend     (no group)
    /// └── 5 Sales            group "Sales"
    ///     └── 6 Sales East   (no group)
    /// ```
    pub fn seed_demo_departments(&self) -> Result<(), DepartmentError> {
        for (cid, chatid, title) in DEMO_GROUPS {
            self.add_group(cid, chatid, title);
        }
        let [all, eng, backend, sales] = DEMO_GROUPS.map(|(cid, _, _)| Some(cid));
        self.add_department(ROOT_DEPT, None, "Demo Corp", all)?;
        self.add_department(2, Some(ROOT_DEPT), "Engineering", eng)?;
        self.add_department(3, Some(2), "Backend", backend)?;
        self.add_department(4, Some(2), "Frontend", None)?;
        self.add_department(5, Some(ROOT_DEPT), "Sales", sales)?;
        self.add_department(6, Some(5), "Sales East", None)
    }

    /// The departments, in the order they were added.
    pub fn departments(&self) -> Vec<SimDepartment> {
        self.shared.state().departments.clone()
    }

    /// A group's current state.
    pub fn group(&self, open_conversation_id: &str) -> Option<SimGroup> {
        self.shared
            .state()
            .groups
            .iter()
            .find(|g| g.open_conversation_id == open_conversation_id)
            .cloned()
    }

    /// Changes one switch of a group as its owner would in the DingTalk client, behind
    /// dingops' back; `false` when the group or the field is unknown.
    pub fn set_option(&self, open_conversation_id: &str, field: &str, value: i64) -> bool {
        let mut s = self.shared.state();
        match s
            .groups
            .iter_mut()
            .find(|g| g.open_conversation_id == open_conversation_id)
            .and_then(|g| g.options.get_mut(field))
        {
            Some(v) => {
                *v = value;
                true
            }
            None => false,
        }
    }

    /// Opens a reply session for a group; returns the sessionWebhook and its expiry (ms).
    pub fn open_session(&self, open_conversation_id: &str, ttl: Duration) -> (String, u64) {
        open_session(&self.shared, open_conversation_id, ttl)
    }

    /// How many replies arrived so far.
    pub fn reply_count(&self) -> usize {
        self.shared.state().replies.len()
    }

    /// Calls received, optionally of one API.
    pub fn calls(&self, api: Option<&str>) -> Vec<RecordedCall> {
        self.shared
            .state()
            .calls
            .iter()
            .filter(|c| api.is_none_or(|a| c.api == a))
            .cloned()
            .collect()
    }

    /// Replies received.
    pub fn replies(&self) -> Vec<RecordedReply> {
        self.shared.state().replies.clone()
    }

    /// The replies received since the last call, removed from the records (and from
    /// [`Self::reply_count`]): a long run (a benchmark) keeps the simulator's memory flat by
    /// taking them as they come.
    pub fn take_replies(&self) -> Vec<RecordedReply> {
        std::mem::take(&mut self.shared.state().replies)
    }

    /// The calls received since the last call, removed from the records (see
    /// [`Self::take_replies`]).
    pub fn take_calls(&self) -> Vec<RecordedCall> {
        std::mem::take(&mut self.shared.state().calls)
    }

    /// Waits until at least `n` replies arrived or `timeout` passed; returns them all.
    pub async fn wait_for_replies(&self, n: usize, timeout: Duration) -> Vec<RecordedReply> {
        let end = Instant::now() + timeout;
        loop {
            let replies = self.replies();
            if replies.len() >= n || Instant::now() >= end {
                return replies;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The valid legacy tokens it issued.
    pub fn legacy_tokens(&self) -> Vec<String> {
        self.shared.state().legacy_tokens.keys().cloned().collect()
    }

    /// Every token it ever issued, for tests that prove tokens are never logged.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.state().issued.clone()
    }

    /// Queues a fault for the next call of `api`.
    pub fn inject(&self, api: &str, fault: Fault) {
        self.shared
            .state()
            .faults
            .entry(api.to_owned())
            .or_default()
            .push_back(fault);
    }

    /// Faults injected for `api` that no call has met yet: a call takes its fault when it
    /// arrives, so 0 after one `inject` means a call is in it (a `Delay` under way).
    pub fn faults_pending(&self, api: &str) -> usize {
        self.shared.state().faults.get(api).map_or(0, |f| f.len())
    }

    /// Queues a fault for the next call of `api` that names the group `chatid`
    /// (`friendswitch/update`, `im/group/update`); calls for other groups go on as usual. It
    /// comes before any fault queued for the whole API by [`Self::inject`].
    pub fn inject_for_chat(&self, api: &str, chatid: &str, fault: Fault) {
        self.shared
            .state()
            .chat_faults
            .entry((api.to_owned(), chatid.to_owned()))
            .or_default()
            .push_back(fault);
    }

    /// The monthly quota: its limit, the month it counts and the counted calls served in it
    /// (the month is the one of the last counted call; see [`crate::quota`]).
    pub fn quota(&self) -> crate::quota::Quota {
        self.shared.state().quota.clone()
    }

    /// Sets the monthly quota's limit (0: none) and this month's count, e.g. to start a
    /// test a few calls short of the limit, or with `used = 0` as if the month rolled over.
    pub fn set_quota(&self, limit: u64, used: u64) {
        let mut s = self.shared.state();
        s.quota.limit = limit;
        s.quota.month = crate::quota::month_of(now_ms());
        s.quota.used = used;
    }

    /// Expires every open reply session (sendBySession answers 300001 from now on).
    pub fn expire_sessions(&self) {
        self.shared.state().sessions.clear();
    }

    /// Forgets every issued token, as if DingTalk revoked them.
    pub fn revoke_tokens(&self) {
        let mut s = self.shared.state();
        s.legacy_tokens.clear();
        s.modern_tokens.clear();
    }
}

/// The most of `times` (ms) that fall within any `window_ms`-long span.
fn peak_in_window(mut times: Vec<u64>, window_ms: u64) -> usize {
    times.sort_unstable();
    let mut start = 0;
    let mut peak = 0;
    for (end, t) in times.iter().enumerate() {
        while times[start] + window_ms <= *t {
            start += 1;
        }
        peak = peak.max(end + 1 - start);
    }
    peak
}

fn add_group(shared: &Shared, cid: &str, chatid: &str, title: &str) {
    let mut s = shared.state();
    s.groups
        .retain(|g| g.open_conversation_id != cid && g.chatid != chatid);
    s.groups.push(SimGroup {
        open_conversation_id: cid.to_owned(),
        chatid: chatid.to_owned(),
        title: title.to_owned(),
        dm_prohibited: false,
        options: MANAGEMENT_FIELDS.iter().map(|f| ((*f).to_owned(), 0)).collect(),
        owner: "owner001".to_owned(),
        status: 1,
    });
}

/// The department groups of [`Simulator::seed_demo_departments`]: openConversationId,
/// chatid, title.
pub const DEMO_GROUPS: [(&str, &str, &str); 4] = [
    (
        "cidDemoAllHands000000==",
        "chatdemoallhands",
        "Demo Corp all hands",
    ),
    ("cidDemoEngineering0000==", "chatdemoengineering", "Engineering"),
    ("cidDemoBackend00000000==", "chatdemobackend", "Backend team"),
    ("cidDemoSales0000000000==", "chatdemosales", "Sales"),
];

fn add_department(shared: &Shared, dept: SimDepartment) -> Result<(), DepartmentError> {
    if dept.dept_id <= 0 {
        return Err(DepartmentError::BadId(dept.dept_id));
    }
    let mut s = shared.state();
    match dept.parent_id {
        None if dept.dept_id == ROOT_DEPT => {}
        Some(parent) if dept.dept_id != ROOT_DEPT => {
            // Walk up from the parent: it must exist, and the new department must not be
            // among its ancestors (a loop would hang a naive walk, but DingTalk has none).
            let mut at = Some(parent);
            while let Some(id) = at {
                if id == dept.dept_id {
                    return Err(DepartmentError::Cycle(id));
                }
                at = match s.departments.iter().find(|d| d.dept_id == id) {
                    Some(d) => d.parent_id,
                    None if id == parent => return Err(DepartmentError::UnknownParent(parent)),
                    None => None,
                };
            }
        }
        _ => return Err(DepartmentError::BadParent),
    }
    if let Some(g) = &dept.group
        && !s.groups.iter().any(|x| &x.open_conversation_id == g)
    {
        return Err(DepartmentError::UnknownGroup(g.clone()));
    }
    match s.departments.iter_mut().find(|d| d.dept_id == dept.dept_id) {
        Some(old) => *old = dept,
        None => s.departments.push(dept),
    }
    Ok(())
}

fn open_session(shared: &Shared, cid: &str, ttl: Duration) -> (String, u64) {
    let session = random_hex(32);
    let expires_ms = now_ms() + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
    shared.state().sessions.insert(
        session.clone(),
        Session {
            cid: cid.to_owned(),
            expires_ms,
        },
    );
    (
        format!("{}/robot/sendBySession?session={session}", shared.base_url),
        expires_ms,
    )
}

pub(crate) async fn control_departments(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().departments)
}

pub(crate) async fn control_add_department(
    shared: web::Data<Shared>,
    d: web::Json<SimDepartment>,
) -> HttpResponse {
    match add_department(&shared, d.into_inner()) {
        Ok(()) => HttpResponse::Ok().json(json!({"ok": true})),
        Err(e) => HttpResponse::BadRequest().json(json!({"ok": false, "error": e.to_string()})),
    }
}

pub(crate) async fn control_groups(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().groups)
}

#[derive(Deserialize)]
pub(crate) struct NewGroup {
    open_conversation_id: String,
    chatid: String,
    #[serde(default)]
    title: String,
}

pub(crate) async fn control_add_group(shared: web::Data<Shared>, g: web::Json<NewGroup>) -> HttpResponse {
    add_group(&shared, &g.open_conversation_id, &g.chatid, &g.title);
    HttpResponse::Ok().json(json!({"ok": true}))
}

#[derive(Deserialize)]
pub(crate) struct NewSession {
    open_conversation_id: String,
    #[serde(default = "default_session_ttl")]
    ttl_ms: u64,
}

fn default_session_ttl() -> u64 {
    90 * 60 * 1000
}

pub(crate) async fn control_open_session(
    shared: web::Data<Shared>,
    r: web::Json<NewSession>,
) -> HttpResponse {
    let (url, expires) = open_session(&shared, &r.open_conversation_id, Duration::from_millis(r.ttl_ms));
    HttpResponse::Ok().json(json!({"sessionWebhook": url, "sessionWebhookExpiredTime": expires}))
}

pub(crate) async fn control_calls(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().calls)
}

pub(crate) async fn control_replies(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().replies)
}

#[derive(Deserialize)]
pub(crate) struct NewFault {
    api: String,
    fault: Fault,
    /// Only for the next call that names this group ([`Simulator::inject_for_chat`]).
    #[serde(default)]
    chatid: Option<String>,
}

pub(crate) async fn control_fault(shared: web::Data<Shared>, f: web::Json<NewFault>) -> HttpResponse {
    let f = f.into_inner();
    let mut s = shared.state();
    match f.chatid {
        Some(chatid) => s
            .chat_faults
            .entry((f.api, chatid))
            .or_default()
            .push_back(f.fault),
        None => s.faults.entry(f.api).or_default().push_back(f.fault),
    }
    HttpResponse::Ok().json(json!({"ok": true}))
}

pub(crate) async fn control_quota(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().quota)
}

/// `POST /_sim/quota {"limit": 5000, "used": 4990}`: either field may be left out.
#[derive(Deserialize)]
pub(crate) struct QuotaSetting {
    limit: Option<u64>,
    used: Option<u64>,
}

pub(crate) async fn control_set_quota(
    shared: web::Data<Shared>,
    body: web::Json<QuotaSetting>,
) -> HttpResponse {
    let mut s = shared.state();
    if let Some(limit) = body.limit {
        s.quota.limit = limit;
    }
    if let Some(used) = body.used {
        s.quota.month = crate::quota::month_of(now_ms());
        s.quota.used = used;
    }
    HttpResponse::Ok().json(&s.quota)
}

pub(crate) async fn control_revoke(shared: web::Data<Shared>) -> HttpResponse {
    let mut s = shared.state();
    s.legacy_tokens.clear();
    s.modern_tokens.clear();
    HttpResponse::Ok().json(json!({"ok": true}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_counts_calls_within_any_one_second_span() {
        assert_eq!(super::peak_in_window(vec![], 1000), 0);
        assert_eq!(super::peak_in_window(vec![0, 999, 1000, 1500, 1999], 1000), 3);
        assert_eq!(super::peak_in_window(vec![3000, 0, 1000, 2000], 1000), 1);
    }
}
