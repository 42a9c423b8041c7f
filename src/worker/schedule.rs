//! The pool's scheduling decisions, without I/O: which command read from the ledger is
//! loaded, which group's backlog is read next, what a group's runner does next and what is
//! dropped when a lease is lost. The pool ([`super::pool`]) asks, does the reading, writing
//! and spawning the answer says, and tells the schedule what happened. A change to *which*
//! command runs when goes here (with a unit test below); a change to *how* the pool reads
//! or runs goes in the pool.
//!
//! Per group it keeps the commands in memory, in order, and how the group is read:
//! - [`Reading::Current`]: the shared cursor loads the group's commands as it meets them;
//! - [`Reading::Behind`]: some of its open commands were skipped (its share of memory was
//!   full, or it was just taken over): the cursor skips the group and its backlog is read
//!   from its own position ([`Schedule::refills`]) until it has caught up;
//! - [`Reading::Lost`]: its lease was lost: nothing more is loaded, what was queued is
//!   dropped, and the group leaves the schedule once its running command (if any) is done.
//!
//! Invariants (checked by [`Schedule::check`] in the tests): `held` counts the queued
//! commands plus the one running; a group without a runner has an empty queue; a group with
//! nothing held, no runner and nothing to read is not in the schedule; a group is in the
//! schedule or among the skipped ones, not both, unless it is lost.

use std::collections::{HashMap, VecDeque};

/// How a group's commands are read from the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Current,
    Behind,
    Lost,
}

/// One group's commands in memory.
#[derive(Debug)]
struct Group<T> {
    /// Loaded, not started, in ledger order.
    queue: VecDeque<(i64, T)>,
    /// Loaded and not finished: those queued and the one running.
    held: usize,
    /// A runner works through `queue`.
    running: bool,
    /// Position of this group's newest loaded command.
    loaded_upto: i64,
    reading: Reading,
}

impl<T> Group<T> {
    fn new(reading: Reading, loaded_upto: i64) -> Self {
        Self {
            queue: VecDeque::new(),
            held: 0,
            running: false,
            loaded_upto,
            reading,
        }
    }

    /// Nothing in memory, nothing running, nothing left to read: the group may go.
    fn idle(&self) -> bool {
        self.held == 0 && !self.running && self.reading != Reading::Behind
    }
}

/// What the loader does with one command the shared cursor read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Load,
    Skip,
}

/// What loading a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Queued behind a runner already at work.
    Queued,
    /// Queued, and the group has no runner: start one.
    StartRunner,
    /// Not admitted: nothing queued.
    Dropped,
}

/// A group's backlog to read from the ledger: up to `want` open commands after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refill {
    pub cid: String,
    pub after: i64,
    pub want: usize,
}

/// What a group's runner does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// Run this command (position, item).
    Run(i64, T),
    /// Nothing queued (or the group is gone): the runner ends.
    Stop,
}

/// The groups with commands in memory, and those skipped because another replica held
/// them. `T` is what is queued per command (the pool's job and its place in memory).
#[derive(Debug)]
pub struct Schedule<T> {
    groups: HashMap<String, Group<T>>,
    /// Groups with open commands this replica did not load because another replica held
    /// the group (or its lease was lost): the position of the oldest such command. Taking
    /// the group later reads its commands from there.
    skipped: HashMap<String, i64>,
    /// Most commands of one group held in memory.
    per_group: usize,
}

impl<T> Schedule<T> {
    pub fn new(per_group: usize) -> Self {
        Self {
            groups: HashMap::new(),
            skipped: HashMap::new(),
            per_group: per_group.max(1),
        }
    }

    /// Whether the group has commands (or a backlog) in this schedule.
    pub fn has(&self, cid: &str) -> bool {
        self.groups.contains_key(cid)
    }

    fn skip(&mut self, cid: &str, pos: i64) {
        self.skipped
            .entry(cid.to_owned())
            .and_modify(|p| *p = (*p).min(pos))
            .or_insert(pos);
    }

    /// Decides about the command at `rowid` of group `cid`, read by the shared cursor.
    /// `lease` is what the leases say about the group: `None` another replica holds it,
    /// `Some(true)` held without a break since before the read, `Some(false)` taken since.
    pub fn step(&mut self, rowid: i64, cid: &str, lease: Option<bool>) -> Step {
        if let Some(g) = self.groups.get_mut(cid) {
            match g.reading {
                Reading::Lost => {
                    self.skip(cid, rowid);
                    return Step::Skip;
                }
                Reading::Current if g.held >= self.per_group => g.reading = Reading::Behind,
                _ => {}
            }
            return if g.reading == Reading::Behind {
                Step::Skip
            } else {
                Step::Load
            };
        }
        match lease {
            // Held all along since before the read, nothing of it skipped: the row is current.
            Some(true) if !self.skipped.contains_key(cid) => Step::Load,
            // Taken just now (or older commands of it were skipped): its open commands are
            // read again from the oldest that may be waiting.
            Some(_) => {
                let from = self.skipped.remove(cid).map_or(rowid, |p| p.min(rowid));
                self.groups.insert(
                    cid.to_owned(),
                    Group::new(Reading::Behind, from.saturating_sub(1)),
                );
                Step::Skip
            }
            // Another replica holds it and runs it.
            None => {
                self.skip(cid, rowid);
                Step::Skip
            }
        }
    }

    /// Records a command loaded from the ledger (`None`: read but not admitted) and queues it
    /// behind earlier ones of its group.
    pub fn load(&mut self, rowid: i64, cid: &str, item: Option<T>) -> Loaded {
        let g = self
            .groups
            .entry(cid.to_owned())
            .or_insert_with(|| Group::new(Reading::Current, 0));
        g.loaded_upto = g.loaded_upto.max(rowid);
        let Some(item) = item else {
            if g.idle() {
                self.groups.remove(cid);
            }
            return Loaded::Dropped;
        };
        g.held += 1;
        g.queue.push_back((rowid, item));
        if g.running {
            Loaded::Queued
        } else {
            g.running = true;
            Loaded::StartRunner
        }
    }

    /// The next command of a group's runner. `lease_valid`: the group's lease has a good
    /// while to go; when it has not, the group is abandoned first and its runner stops.
    pub fn next(&mut self, cid: &str, lease_valid: bool) -> Next<T> {
        if !lease_valid {
            self.abandon(cid);
        }
        let Some(g) = self.groups.get_mut(cid) else {
            return Next::Stop;
        };
        match g.queue.pop_front() {
            Some((pos, item)) => Next::Run(pos, item),
            None => {
                g.running = false;
                if g.idle() {
                    self.groups.remove(cid);
                }
                Next::Stop
            }
        }
    }

    /// A command of the group finished; `true` when the group's backlog waits in the ledger
    /// and it now has room for half its share (the loader should read it).
    pub fn finished(&mut self, cid: &str) -> bool {
        let per_group = self.per_group;
        self.groups.get_mut(cid).is_some_and(|g| {
            g.held = g.held.saturating_sub(1);
            g.reading == Reading::Behind && g.held * 2 <= per_group
        })
    }

    /// Drops what is queued of a group whose lease is lost (returned, so the caller sees
    /// what went); its commands stay open in the ledger for the group's next holder.
    pub fn abandon(&mut self, cid: &str) -> Vec<(i64, T)> {
        let Some(g) = self.groups.get_mut(cid) else {
            return Vec::new();
        };
        let mut oldest = (g.reading == Reading::Behind).then_some(g.loaded_upto.saturating_add(1));
        let dropped: Vec<(i64, T)> = g.queue.drain(..).collect();
        for (pos, _) in &dropped {
            oldest = Some(oldest.map_or(*pos, |o| o.min(*pos)));
        }
        g.held = g.held.saturating_sub(dropped.len());
        g.reading = Reading::Lost;
        if g.held == 0 && !g.running {
            self.groups.remove(cid);
        }
        if let Some(pos) = oldest {
            self.skip(cid, pos);
        }
        dropped
    }

    /// The skipped groups not in the schedule: their leases are worth asking for.
    pub fn wanted(&self) -> Vec<String> {
        self.skipped
            .keys()
            .filter(|cid| !self.groups.contains_key(*cid))
            .cloned()
            .collect()
    }

    /// Groups taken over: their commands are read from the oldest skipped one.
    pub fn taken(&mut self, cids: impl IntoIterator<Item = String>) {
        for cid in cids {
            if let Some(from) = self.skipped.remove(&cid) {
                self.groups
                    .insert(cid, Group::new(Reading::Behind, from.saturating_sub(1)));
            }
        }
    }

    /// The groups whose backlog is to be read now: behind, with room for half their share
    /// (one read per several commands, not one per command).
    pub fn refills(&self) -> Vec<Refill> {
        self.groups
            .iter()
            .filter(|(_, g)| g.reading == Reading::Behind && g.held * 2 <= self.per_group)
            .map(|(cid, g)| Refill {
                cid: cid.clone(),
                after: g.loaded_upto,
                want: self.per_group - g.held,
            })
            .collect()
    }

    /// A backlog read returned fewer commands than wanted: the group has caught up with the
    /// shared cursor, which loads its commands again.
    pub fn caught_up(&mut self, cid: &str) {
        if let Some(g) = self.groups.get_mut(cid) {
            if g.reading == Reading::Behind {
                g.reading = Reading::Current;
            }
            if g.idle() {
                self.groups.remove(cid);
            }
        }
    }

    /// Panics when an invariant of the module doc does not hold (tests).
    #[cfg(test)]
    fn check(&self) {
        for (cid, g) in &self.groups {
            assert!(g.held >= g.queue.len(), "{cid}: held counts the queue");
            assert!(
                g.held <= g.queue.len() + 1,
                "{cid}: at most one running beyond the queue"
            );
            assert!(g.running || g.queue.is_empty(), "{cid}: a queue has a runner");
            assert!(!g.idle(), "{cid}: an idle group is gone");
            assert!(
                g.reading == Reading::Lost || !self.skipped.contains_key(cid),
                "{cid}: held here and skipped at once"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut Schedule<&'static str>, cid: &str) -> Option<&'static str> {
        let next = match s.next(cid, true) {
            Next::Run(_, item) => Some(item),
            Next::Stop => None,
        };
        s.check();
        next
    }

    #[test]
    fn a_held_groups_commands_load_in_order_and_one_runner_works_through_them() {
        let mut s = Schedule::new(8);
        assert_eq!(s.step(1, "g", Some(true)), Step::Load);
        assert_eq!(s.load(1, "g", Some("a")), Loaded::StartRunner);
        assert_eq!(s.step(2, "g", Some(true)), Step::Load);
        assert_eq!(s.load(2, "g", Some("b")), Loaded::Queued);
        s.check();
        assert_eq!(run(&mut s, "g"), Some("a"));
        assert!(!s.finished("g"));
        assert_eq!(run(&mut s, "g"), Some("b"));
        assert!(!s.finished("g"));
        assert_eq!(run(&mut s, "g"), None);
        assert!(!s.has("g"), "an idle group leaves the schedule");
        // The next command starts a runner again.
        assert_eq!(s.load(3, "g", Some("c")), Loaded::StartRunner);
    }

    #[test]
    fn a_group_over_its_share_falls_behind_and_is_refilled_from_its_own_position() {
        let mut s = Schedule::new(2);
        for pos in 1..=2 {
            assert_eq!(s.step(pos, "g", Some(true)), Step::Load);
            s.load(pos, "g", Some("x"));
        }
        // Its share is full: the cursor skips it from now on, even once there is room.
        assert_eq!(s.step(3, "g", Some(true)), Step::Skip);
        assert_eq!(s.step(4, "other", Some(true)), Step::Load);
        assert!(s.refills().is_empty(), "no room yet");
        assert_eq!(run(&mut s, "g"), Some("x"));
        assert!(s.finished("g"), "room for half its share: read its backlog");
        assert_eq!(s.step(5, "g", Some(true)), Step::Skip);
        assert_eq!(
            s.refills(),
            [Refill {
                cid: "g".into(),
                after: 2,
                want: 1
            }]
        );
        s.load(3, "g", Some("y"));
        s.check();
        // The backlog read found fewer than wanted: the cursor loads the group again.
        s.caught_up("g");
        assert!(s.refills().is_empty());
        assert_eq!(s.step(6, "g", Some(true)), Step::Skip, "its share is full again");
    }

    #[test]
    fn a_group_held_elsewhere_is_skipped_and_read_from_its_oldest_skipped_command_once_taken() {
        let mut s: Schedule<&str> = Schedule::new(8);
        assert_eq!(s.step(7, "g", None), Step::Skip);
        assert_eq!(s.step(5, "g", None), Step::Skip);
        assert_eq!(s.wanted(), ["g"]);
        s.taken(["g".to_owned()]);
        s.check();
        assert!(s.wanted().is_empty());
        assert_eq!(
            s.refills(),
            [Refill {
                cid: "g".into(),
                after: 4,
                want: 8
            }]
        );
        // Taken while the cursor read (or with commands skipped before): read again.
        assert_eq!(s.step(3, "h", None), Step::Skip);
        assert_eq!(s.step(9, "h", Some(false)), Step::Skip);
        assert!(s.refills().iter().any(|r| r.cid == "h" && r.after == 2));
        assert_eq!(s.step(10, "k", Some(false)), Step::Skip);
        assert!(s.refills().iter().any(|r| r.cid == "k" && r.after == 9));
    }

    #[test]
    fn a_lost_group_drops_its_queue_keeps_its_running_command_and_is_skipped_from_its_oldest() {
        let mut s = Schedule::new(8);
        for pos in [4, 6, 9] {
            s.step(pos, "g", Some(true));
            s.load(pos, "g", Some("x"));
        }
        assert_eq!(run(&mut s, "g"), Some("x"));
        let dropped = s.abandon("g");
        assert_eq!(dropped.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [6, 9]);
        s.check();
        assert!(s.has("g"), "its running command is still under way");
        assert_eq!(s.step(12, "g", Some(true)), Step::Skip);
        s.finished("g");
        assert_eq!(s.next("g", true), Next::Stop);
        assert!(!s.has("g"));
        // Taken again, it is read from its oldest dropped command.
        s.taken(["g".to_owned()]);
        assert_eq!(s.refills()[0].after, 5);
    }

    #[test]
    fn a_runner_whose_lease_runs_short_abandons_the_group_and_stops() {
        let mut s = Schedule::new(8);
        s.step(1, "g", Some(true));
        s.load(1, "g", Some("a"));
        s.load(2, "g", Some("b"));
        assert_eq!(s.next("g", false), Next::Stop);
        s.check();
        assert!(!s.has("g"));
        assert_eq!(s.wanted(), ["g"]);
        s.taken(["g".to_owned()]);
        assert_eq!(s.refills()[0].after, 0, "read again from its first command");
    }

    #[test]
    fn a_command_not_admitted_leaves_no_group_behind() {
        let mut s: Schedule<&str> = Schedule::new(8);
        assert_eq!(s.load(1, "g", None), Loaded::Dropped);
        assert!(!s.has("g"));
        // Unless its backlog is still to be read.
        s.step(3, "h", Some(false));
        assert_eq!(s.load(2, "h", None), Loaded::Dropped);
        assert!(s.has("h"));
        s.check();
    }
}
