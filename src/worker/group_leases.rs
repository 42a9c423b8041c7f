//! The leases of this replica. Replicas that share one ledger divide the groups between
//! them: a group's commands (and its timed reverts) run only on the replica that holds the
//! group's lease `group:<openConversationId>` in the ledger, so each command runs once and
//! a group's commands run in order whichever replica accepted them. A lease is renewed
//! every third of `claim_lease_secs`; a replica that dies has its groups taken over by
//! another once their leases have run out. See docs/architecture.md.
//!
//! [`Leases`] is this replica's book of the groups it holds. The pool takes, renews and
//! releases them (all from its own task); the timer borrows a group for a revert.
//!
//! A `serve` alone on its ledger (SQLite, under its lock file) keeps the book [`Leases::solo`]:
//! every group is its own without a word to the ledger, so a single replica pays nothing
//! for the fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::RngExt as _;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::ledger::LedgerHandle;

/// The lease name of a group.
pub fn group_lease(conversation_id: &str) -> String {
    format!("group:{conversation_id}")
}

/// The lease name of the replica that runs the timed reverts of groups no replica holds.
pub const TIMER_LEASE: &str = "timer";

/// A name for this process among the replicas: host name, process id and a random suffix
/// (two replicas in one process, as in tests, differ by the suffix).
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect();
    let host = if host.is_empty() { "host".to_owned() } else { host };
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::rng().random::<u32>() & 0xff_ffff
    )
}

/// One group this replica holds.
#[derive(Debug)]
struct Entry {
    /// When it was taken, in the book's order of takes ([`Leases::seq`]).
    seq: u64,
    /// Until when this replica may count on the lease: the lease's length from an instant
    /// taken before the write that took or renewed it (the ledger's clock decided the
    /// lease; this replica's wall clock plays no part). `None`: alone on the ledger, forever.
    until: Option<Instant>,
    /// Reverts of the timer running in it.
    timer_users: usize,
    /// Set by the heartbeat that first found it unused.
    idle: bool,
}

#[derive(Debug, Default)]
struct HeldGroups {
    groups: HashMap<String, Entry>,
    /// Takes so far.
    seq: u64,
}

/// The groups this replica holds, and its name.
pub struct Leases {
    /// Other replicas may share the ledger; `false`: this process is alone on it.
    shared: bool,
    holder: String,
    ttl: Duration,
    ledger: LedgerHandle,
    /// Where `until` is read: the lease's length counts on its monotonic instant.
    clock: Arc<dyn Clock>,
    book: Mutex<HeldGroups>,
    /// This replica's lease writes, one at a time: a release and a take of the same group
    /// (the pool's heartbeat and the timer) never cross in the ledger.
    writes: tokio::sync::Mutex<()>,
    /// Lease writes under way in the ledger, counted inside the blocking call itself: a write
    /// whose caller was cancelled (a task aborted at shutdown) still counts until it is done.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts one lease write in [`Leases::in_flight`] for as long as it exists.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A group the timer borrowed for one revert; given back when dropped.
pub struct Borrowed {
    leases: Arc<Leases>,
    cid: String,
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        if let Some(e) = self.leases.book().groups.get_mut(&self.cid) {
            e.timer_users = e.timer_users.saturating_sub(1);
        }
    }
}

impl Leases {
    /// The leases of a replica that shares `ledger` with others.
    pub fn shared(ledger: LedgerHandle, holder: String, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            shared: true,
            holder,
            ttl: ttl.max(Duration::from_secs(1)),
            ledger,
            clock,
            book: Mutex::default(),
            writes: tokio::sync::Mutex::new(()),
            in_flight: Arc::default(),
        }
    }

    /// The book of a process alone on its ledger: every group it asks for is its own,
    /// nothing is written, nothing is ever lost.
    pub fn solo(ledger: LedgerHandle, holder: String, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            shared: false,
            ..Self::shared(ledger, holder, ttl, clock)
        }
    }

    /// Whether other replicas may share the ledger.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    fn book(&self) -> MutexGuard<'_, HeldGroups> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This replica's name in the ledger's leases.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `e` still has more than a third of a lease to go.
    fn lasts(&self, e: &Entry) -> bool {
        e.until
            .is_none_or(|until| until > self.clock.instant() + self.ttl / 3)
    }

    /// How long a lease lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often leases are renewed ([`crate::lease::renewal_period`]). The pool's
    /// heartbeat renews them, as it also gives back those it no longer uses: the set changes
    /// from one heartbeat to the next, unlike the fixed set [`crate::lease::hold`] renews.
    pub fn heartbeat(&self) -> Duration {
        crate::lease::renewal_period(self.ttl)
    }

    /// The number of takes so far: read before reading commands from the ledger, it tells
    /// [`Leases::taken_before`] whether a group was held all along since.
    pub fn seq(&self) -> u64 {
        self.book().seq
    }

    /// Whether this replica holds the group, and took it no later than the take numbered
    /// `seq` (it has held it without a break since then).
    pub fn taken_before(&self, cid: &str, seq: u64) -> Option<bool> {
        self.book().groups.get(cid).map(|e| e.seq <= seq)
    }

    /// Whether this replica holds the group with at least a third of a lease to go: a
    /// command starts only then, so it cannot outlast the lease unless renewals fail for
    /// that long.
    pub fn valid(&self, cid: &str) -> bool {
        self.book().groups.get(cid).is_some_and(|e| self.lasts(e))
    }

    /// Groups held now.
    pub fn held_count(&self) -> usize {
        self.book().groups.len()
    }

    /// Takes the leases of `cids` that no live replica holds; returns those taken. Errors
    /// are logged and count as not taken.
    pub async fn take(&self, cids: Vec<String>) -> Vec<String> {
        if cids.is_empty() {
            return Vec::new();
        }
        let _w = self.writes.lock().await;
        let (holder, ttl, before) = (self.holder.clone(), self.ttl_ms(), self.clock.instant());
        if !self.shared {
            // Alone: taken at once, and as if held all along (take number 0), since no other
            // process can have run the group's commands meanwhile.
            let mut book = self.book();
            for cid in &cids {
                book.groups
                    .entry(cid.clone())
                    .or_insert(Entry {
                        seq: 0,
                        until: None,
                        timer_users: 0,
                        idle: false,
                    })
                    .idle = false;
            }
            return cids;
        }
        let names: Vec<String> = cids.iter().map(|c| group_lease(c)).collect();
        let taken = match self.write(move |l| l.try_leases(&names, &holder, ttl)).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot take group leases; trying again shortly");
                return Vec::new();
            }
        };
        let mut book = self.book();
        let mut got = Vec::with_capacity(taken.len());
        for name in taken {
            let Some(cid) = name.strip_prefix("group:") else {
                continue;
            };
            book.seq += 1;
            let seq = book.seq;
            let e = book.groups.entry(cid.to_owned()).or_insert(Entry {
                seq,
                until: Some(before),
                timer_users: 0,
                idle: false,
            });
            e.until = Some(before + self.ttl);
            e.idle = false;
            got.push(cid.to_owned());
        }
        got
    }

    /// Renews every lease held, and gives back those unused since the last heartbeat
    /// (`used` says whether the pool has work of a group in memory). Returns the groups whose
    /// lease was lost: it ran out before it could be renewed, so another replica may hold it.
    pub async fn renew(&self, used: impl Fn(&str) -> bool) -> Vec<String> {
        let _w = self.writes.lock().await;
        let cids: Vec<String> = self.book().groups.keys().cloned().collect();
        if cids.is_empty() {
            return Vec::new();
        }
        // Asked before the book is locked: `used` may lock the pool's state.
        let in_use: std::collections::HashSet<String> = cids.iter().filter(|c| used(c)).cloned().collect();
        let names: Vec<String> = cids.iter().map(|c| group_lease(c)).collect();
        let (holder, ttl, before) = (self.holder.clone(), self.ttl_ms(), self.clock.instant());
        let renewed = if self.shared {
            self.write(move |l| l.renew_leases(&names, &holder, ttl)).await
        } else {
            Ok(names)
        };
        let mut lost = Vec::new();
        let mut release = Vec::new();
        {
            let mut book = self.book();
            match renewed {
                Ok(renewed) => {
                    let renewed: std::collections::HashSet<&str> =
                        renewed.iter().filter_map(|n| n.strip_prefix("group:")).collect();
                    let until = self.shared.then(|| before + self.ttl);
                    book.groups.retain(|cid, e| {
                        if renewed.contains(cid.as_str()) {
                            e.until = until;
                            true
                        } else {
                            lost.push(cid.clone());
                            false
                        }
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew group leases; trying again shortly");
                    // Those that ran out meanwhile may have been taken by another replica.
                    let now = self.clock.instant();
                    book.groups.retain(|cid, e| {
                        let live = e.until.is_none_or(|until| until > now);
                        if !live {
                            lost.push(cid.clone());
                        }
                        live
                    });
                }
            }
            // Unused for a whole heartbeat: given back, so that another replica that
            // accepted a command of the group may run it without waiting for this one.
            book.groups.retain(|cid, e| {
                if e.timer_users > 0 || in_use.contains(cid) {
                    e.idle = false;
                    true
                } else if e.idle {
                    release.push(group_lease(cid));
                    false
                } else {
                    e.idle = true;
                    true
                }
            });
        }
        if !lost.is_empty() {
            tracing::warn!(
                groups = lost.len(),
                "group leases lost: another replica may run those groups now"
            );
        }
        if !release.is_empty() && self.shared {
            let holder = self.holder.clone();
            if let Err(e) = self.write(move |l| l.release_leases(&release, &holder)).await {
                // They run out by themselves.
                tracing::warn!(error = %e, "cannot give back idle group leases");
            }
        }
        lost
    }

    /// Borrows a group for one revert of the timer: when this replica holds it, or, with
    /// `may_take`, when no live replica does (then it is taken). `None`: another replica
    /// holds it and runs its reverts.
    pub async fn borrow(self: &Arc<Self>, cid: &str, may_take: bool) -> Option<Borrowed> {
        if self.lend(cid) {
            return Some(self.borrowed(cid));
        }
        if !may_take {
            return None;
        }
        let taken = self.take(vec![cid.to_owned()]).await;
        (taken.iter().any(|c| c == cid) && self.lend(cid)).then(|| self.borrowed(cid))
    }

    fn lend(&self, cid: &str) -> bool {
        let mut book = self.book();
        match book.groups.get_mut(cid) {
            Some(e) if self.lasts(e) => {
                e.timer_users += 1;
                e.idle = false;
                true
            }
            _ => false,
        }
    }

    fn borrowed(self: &Arc<Self>, cid: &str) -> Borrowed {
        Borrowed {
            leases: Arc::clone(self),
            cid: cid.to_owned(),
        }
    }

    /// Whether this replica runs the reverts of groups nobody holds: it holds (or now
    /// takes) the timer lease.
    pub async fn timer_turn(&self) -> bool {
        if !self.shared {
            return true;
        }
        let (holder, ttl) = (self.holder.clone(), self.ttl_ms());
        match self.write(move |l| l.try_lease(TIMER_LEASE, &holder, ttl)).await {
            Ok(mine) => mine,
            Err(e) => {
                tracing::error!(error = %e, "cannot take the timer lease; trying again shortly");
                false
            }
        }
    }

    /// Gives back every lease of this replica (at shutdown, once its commands are done or
    /// abandoned), so that the others take over at once instead of after the lease. Waits
    /// (a few seconds at most) for lease writes still under way, those of tasks aborted at
    /// shutdown included, then removes every lease the ledger has for this replica, not only
    /// those in the book: an aborted take may have written one the book never saw.
    pub async fn release_all(&self) {
        let _w = self.writes.lock().await;
        self.book().groups.clear();
        if !self.shared {
            return;
        }
        let deadline = self.clock.instant() + Duration::from_secs(5);
        while self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 && self.clock.instant() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let holder = self.holder.clone();
        if let Err(e) = self.write(move |l| l.release_holder(&holder)).await {
            tracing::warn!(error = %e, "cannot give back the leases; they run out by themselves");
        }
    }

    /// Runs a lease write in the ledger, counted in `in_flight` until it is done.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn crate::ledger::Ledger) -> Result<T, crate::ledger::LedgerError> + Send + 'static,
    ) -> Result<T, crate::ledger::LedgerError> {
        let counted = InFlight::new(&self.in_flight);
        self.ledger
            .call(move |l| {
                let _counted = counted;
                f(l)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{LeaseStore as _, MemoryLedger};

    fn leases(ledger: &Arc<MemoryLedger>, holder: &str, ttl: Duration) -> Arc<Leases> {
        Arc::new(Leases::shared(
            LedgerHandle::shared(ledger.clone()),
            holder.into(),
            ttl,
            crate::clock::wall_clock(),
        ))
    }

    #[test]
    fn a_replica_id_names_the_host_the_process_and_a_random_suffix() {
        let (a, b) = (replica_id(), replica_id());
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
        assert!(a.chars().all(|c| c.is_ascii_graphic()), "{a}");
    }

    #[tokio::test]
    async fn a_group_is_held_by_one_replica_and_taken_over_once_its_lease_ran_out() {
        let clock = crate::clock::ManualClock::at(1_000_000);
        let ledger = Arc::new(MemoryLedger::with_clock(clock.clone()));
        let a = leases(&ledger, "a", Duration::from_secs(3));
        let b = leases(&ledger, "b", Duration::from_secs(3));
        assert_eq!(a.take(vec!["g".into(), "h".into()]).await, ["g", "h"]);
        assert!(b.take(vec!["g".into()]).await.is_empty());
        assert!(a.valid("g") && !b.valid("g"));
        assert_eq!(a.taken_before("g", a.seq()), Some(true));
        assert_eq!(a.taken_before("g", 0), Some(false));
        // "a" stops renewing (it died): a moment before the lease runs out by the ledger's
        // clock "b" cannot take it; once it ran out "b" takes it, and "a", when it comes
        // back, finds it lost.
        clock.advance(2999);
        assert!(b.take(vec!["g".into()]).await.is_empty());
        clock.advance(1);
        assert_eq!(b.take(vec!["g".into()]).await, ["g"]);
        let lost = a.renew(|_| true).await;
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(!a.valid("g"));
        assert_eq!(a.held_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_not_renewed_stops_starting_commands_a_third_of_a_lease_before_it_runs_out() {
        // The ledger's clock decides who holds the lease; this replica counts its own lease
        // on tokio's clock (paused here), from just before the write that took it.
        let clock = crate::clock::ManualClock::at(1_000_000);
        let ledger = Arc::new(MemoryLedger::with_clock(clock.clone()));
        let a = leases(&ledger, "a", Duration::from_secs(3));
        let b = leases(&ledger, "b", Duration::from_secs(3));
        assert_eq!(a.take(vec!["g".into()]).await, ["g"]);
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(a.valid("g"), "more than a third of the lease to go");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!a.valid("g"), "a third to go: no command starts");
        assert_eq!(a.held_count(), 1, "still held until a renewal says otherwise");
        // Renewed in time, it is good for a whole lease again.
        clock.advance(2000);
        assert!(a.renew(|_| true).await.is_empty());
        assert!(a.valid("g"));
        // Not renewed any more (a stalled replica): once the ledger's clock passes the lease,
        // "b" takes the group over, and "a", when it renews, finds it lost.
        clock.advance(2999);
        assert!(b.take(vec!["g".into()]).await.is_empty());
        clock.advance(1);
        assert_eq!(b.take(vec!["g".into()]).await, ["g"]);
        assert_eq!(a.renew(|_| true).await, ["g"]);
        assert!(!a.valid("g") && b.valid("g"));
    }

    #[tokio::test]
    async fn a_renewed_group_stays_and_an_unused_one_is_given_back_after_a_heartbeat() {
        let ledger = Arc::new(MemoryLedger::new());
        let a = leases(&ledger, "a", Duration::from_secs(30));
        a.take(vec!["busy".into(), "idle".into()]).await;
        assert!(a.renew(|cid| cid == "busy").await.is_empty());
        assert_eq!(a.held_count(), 2, "idle for less than a heartbeat: kept");
        a.renew(|cid| cid == "busy").await;
        assert_eq!(a.held_count(), 1);
        assert!(a.valid("busy") && !a.valid("idle"));
        // Given back in the ledger too: another replica takes it at once.
        assert!(ledger.try_lease("group:idle", "b", 1000).unwrap());
        assert!(!ledger.try_lease("group:busy", "b", 1000).unwrap());
    }

    #[tokio::test]
    async fn a_replica_alone_on_its_ledger_holds_every_group_without_writing_a_lease() {
        let ledger = Arc::new(MemoryLedger::new());
        let solo = Arc::new(Leases::solo(
            LedgerHandle::shared(ledger.clone()),
            "solo".into(),
            Duration::from_secs(30),
            crate::clock::wall_clock(),
        ));
        assert!(!solo.is_shared());
        assert_eq!(solo.take(vec!["g".into()]).await, ["g"]);
        // Held as if all along: what was read before the take is current.
        assert_eq!(solo.taken_before("g", 0), Some(true));
        assert!(solo.valid("g") && solo.timer_turn().await);
        assert!(solo.renew(|_| true).await.is_empty());
        // Nothing in the ledger: another holder is granted the same name.
        assert!(ledger.try_lease("group:g", "other", 1000).unwrap());
        assert!(ledger.try_lease(TIMER_LEASE, "other", 1000).unwrap());
        // Unused groups leave the book after a heartbeat, as in a shared book.
        solo.renew(|_| false).await;
        solo.renew(|_| false).await;
        assert_eq!(solo.held_count(), 0);
    }

    #[tokio::test]
    async fn the_timer_borrows_a_group_only_from_its_own_replica_or_a_free_one() {
        let ledger = Arc::new(MemoryLedger::new());
        let a = leases(&ledger, "a", Duration::from_secs(30));
        let b = leases(&ledger, "b", Duration::from_secs(30));
        a.take(vec!["g".into()]).await;
        assert!(b.borrow("g", true).await.is_none(), "held by a");
        assert!(b.borrow("free", false).await.is_none(), "not b's turn");
        let borrowed = b.borrow("free", true).await;
        assert!(borrowed.is_some());
        // While borrowed it is in use: the heartbeat keeps it.
        b.renew(|_| false).await;
        b.renew(|_| false).await;
        assert!(b.valid("free"));
        drop(borrowed);
        b.renew(|_| false).await;
        assert!(b.valid("free"), "unused for less than a heartbeat");
        b.renew(|_| false).await;
        assert!(!b.valid("free"));
        assert!(b.timer_turn().await);
        assert!(!a.timer_turn().await);
        b.release_all().await;
        assert!(a.timer_turn().await);
    }
}
