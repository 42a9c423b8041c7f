//! Checks shared by the stores' tests: the lease contract and the rate-budget rule, each
//! run against every store by `contract.rs`.

use super::PostgresUrl;
#[allow(unused_imports)]
use super::{LeaseStore, Ledger};

/// A test schema on the PostgreSQL test server (`dingops-testkit`, which knows no dingops
/// types) as the store's address.
pub(crate) trait SchemaUrl {
    fn postgres_url(&self) -> PostgresUrl;
}

impl SchemaUrl for dingops_testkit::TestSchema {
    fn postgres_url(&self) -> PostgresUrl {
        PostgresUrl::parse(self.url()).unwrap_or_else(|e| panic!("the test schema's URL {e}"))
    }
}

/// The lease contract every backend keeps (see [`LeaseStore::try_leases`]); each backend's
/// tests run it on a store that reads `clock`, which the check moves.
pub(crate) fn check_lease_contract(l: &dyn Ledger, clock: &crate::clock::ManualClock) {
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    // A free lease is granted; a live one of another holder is not.
    clock.set(10_000);
    assert_eq!(
        l.try_leases(&names(&["a", "b"]), "r1", 1000).unwrap(),
        names(&["a", "b"])
    );
    clock.set(10_500);
    assert!(l.try_leases(&names(&["a", "b"]), "r2", 1000).unwrap().is_empty());
    clock.set(10_999);
    assert!(!l.try_lease("a", "r2", 1000).unwrap(), "live until 11 000");
    // The holder renews: "a" now lasts until 11 900, "b" still ends at 11 000.
    clock.set(10_900);
    assert_eq!(l.renew_leases(&names(&["a"]), "r1", 1000).unwrap(), names(&["a"]));
    // Another holder cannot renew what it does not hold.
    assert!(
        l.renew_leases(&names(&["a", "b"]), "r2", 1000)
            .unwrap()
            .is_empty()
    );
    // At its end a lease is expired: another holder takes "b", not the renewed "a".
    clock.set(11_000);
    assert_eq!(
        l.try_leases(&names(&["a", "b"]), "r2", 1000).unwrap(),
        names(&["b"])
    );
    // The former holder of "b" cannot renew it (it may have been replaced), nor take it.
    clock.set(11_001);
    assert!(l.renew_leases(&names(&["b"]), "r1", 1000).unwrap().is_empty());
    assert!(!l.try_lease("b", "r1", 1000).unwrap());
    // An expired lease is not renewed even by its holder, and nobody else took it: the
    // holder may take it again with try_leases.
    clock.set(11_900);
    assert!(l.renew_leases(&names(&["a"]), "r1", 1000).unwrap().is_empty());
    assert!(l.try_lease("a", "r1", 1000).unwrap());
    // Releasing a lease of another holder changes nothing; the holder's release frees it at once.
    clock.set(12_000);
    l.release_leases(&names(&["a", "b"]), "r2").unwrap();
    assert!(!l.try_lease("a", "r2", 1000).unwrap(), "r1 still holds a");
    l.release_lease("a", "r1").unwrap();
    assert!(l.try_lease("a", "r2", 1000).unwrap());
    assert!(l.try_leases(&[], "r1", 1000).unwrap().is_empty());
    // A stopping replica gives up all its leases at once, and only its own.
    clock.set(100_000);
    assert!(l.try_lease("h1", "stopping", 60_000).unwrap());
    assert!(l.try_lease("h2", "stopping", 60_000).unwrap());
    assert!(l.try_lease("h3", "staying", 60_000).unwrap());
    l.release_holder("stopping").unwrap();
    clock.set(100_001);
    assert!(l.try_lease("h1", "next", 60_000).unwrap());
    assert!(l.try_lease("h2", "next", 60_000).unwrap());
    assert!(!l.try_lease("h3", "next", 60_000).unwrap());
    // The store tells its clock.
    assert_eq!(l.clock_ms().unwrap(), 100_001);
}

/// The rate-budget rule, checked the same way against every store, on a store that reads
/// the clock the checks move.
pub(crate) mod budget_tests {
    use super::super::{Ledger, LedgerError, Slot};
    use crate::clock::ManualClock;

    /// Where the checks' clock starts; any time would do, the store reads only this clock.
    const BASE: u64 = 1_700_000_000_000;

    /// The slot granted to a reservation made when the clock shows `t`.
    fn at(l: &dyn Ledger, clock: &ManualClock, api: &str, max: u32, window: u64, t: u64) -> u64 {
        clock.set(t);
        l.reserve_call(api, max, window).unwrap().at_ms
    }

    /// Whether no half-open `[t, t + window)` holds more than `max` of `slots`.
    fn within_rule(slots: &[u64], max: usize, window: u64) -> bool {
        let mut sorted = slots.to_vec();
        sorted.sort_unstable();
        sorted
            .iter()
            .enumerate()
            .all(|(i, &t)| sorted[i..].iter().take_while(|&&s| s < t + window).count() <= max)
    }

    pub(crate) fn a_full_window_pushes_the_next_slot_to_the_oldest_plus_the_window(
        l: &dyn Ledger,
        clock: &ManualClock,
    ) {
        let b = BASE;
        let got: Vec<u64> = (0..7).map(|_| at(l, clock, "friendswitch", 3, 1000, b)).collect();
        // Within a window, each slot a least gap (1000 / 6) after the one before.
        let expected: Vec<u64> = [0, 166, 332, 1000, 1166, 1332, 2000]
            .iter()
            .map(|d| b + d)
            .collect();
        assert_eq!(got, expected);
        // Another API has a budget of its own.
        assert_eq!(at(l, clock, "chat_get", 3, 1000, b), b);
        // Once the window has passed, a call goes at once again.
        assert_eq!(at(l, clock, "friendswitch", 3, 1000, b + 5000), b + 5000);
    }

    pub(crate) fn a_call_waits_only_for_the_slot_its_windows_oldest_call_frees(
        l: &dyn Ledger,
        clock: &ManualClock,
    ) {
        let b = BASE;
        for t in [0, 500, 999] {
            assert_eq!(at(l, clock, "api", 3, 1000, b + t), b + t);
        }
        // The window of 0 frees a slot at 1000, but the least gap after 999 is later.
        assert_eq!(at(l, clock, "api", 3, 1000, b + 999), b + 999 + 166);
        // 500, 999, 1165 fill a window: the next waits for 500 + 1000.
        assert_eq!(at(l, clock, "api", 3, 1000, b + 1000), b + 1500);
    }

    pub(crate) fn a_slot_comes_with_the_ledgers_clock_and_the_wait_between_them(
        l: &dyn Ledger,
        clock: &ManualClock,
    ) {
        clock.set(BASE);
        let first = l.reserve_call("api", 5, 1000).unwrap();
        assert_eq!(
            first,
            Slot {
                at_ms: BASE,
                now_ms: BASE
            }
        );
        assert_eq!(first.wait(), std::time::Duration::ZERO);
        // The next one a least gap (1000 / 10) later, said as a wait from the same now.
        let second = l.reserve_call("api", 5, 1000).unwrap();
        assert_eq!(
            second,
            Slot {
                at_ms: BASE + 100,
                now_ms: BASE
            }
        );
        assert_eq!(second.wait(), std::time::Duration::from_millis(100));
    }

    pub(crate) fn bad_arguments_are_refused_and_record_nothing(l: &dyn Ledger, clock: &ManualClock) {
        clock.set(BASE);
        for (max, window) in [(0, 1000), (2, 0)] {
            let err = l.reserve_call("api", max, window).unwrap_err();
            assert!(matches!(err, LedgerError::Invalid(_)), "{err}");
        }
        // Nothing was recorded: a budget of one call still has its slot free.
        assert_eq!(at(l, clock, "api", 1, 1000, BASE), BASE);
        assert_eq!(at(l, clock, "api", 1, 1000, BASE), BASE + 1000);
    }

    pub(crate) fn random_requests_never_break_the_window_rule(l: &dyn Ledger, clock: &ManualClock) {
        let b = BASE;
        let (max, window) = (19, 1050);
        // A fixed pseudo-random walk of request times, bursts and pauses mixed.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut t = b;
        let mut slots = Vec::new();
        for _ in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += match x % 10 {
                0 => 700 + x % 900,
                1..=3 => x % 60,
                _ => 0,
            };
            let slot = at(l, clock, "api", max, window, t);
            assert!(slot >= t, "a slot before its request: {slot} < {t}");
            slots.push(slot);
        }
        assert!(within_rule(&slots, max as usize, window));
        // And the rule is tight: a burst is not paced slower than it allows.
        let burst: Vec<u64> = (0..40).map(|_| at(l, clock, "tight", max, window, b)).collect();
        // A burst goes out as ramps: 19 slots a least gap apart, then the next window.
        let gap = super::super::budget_gap(window, max);
        let ramps: Vec<u64> = (0..40u64)
            .map(|i| b + (i / 19) * window + (i % 19) * gap)
            .collect();
        assert_eq!(burst, ramps);
    }

    /// Two handles on one store (two processes, two replicas) reserving 200 slots at once,
    /// from eight threads, while the clock stands: exactly the slots one process alone gets,
    /// ramps of 19 slots a least gap apart, one ramp per window.
    pub(crate) fn two_handles_reserving_at_once_get_the_slots_of_one(
        a: std::sync::Arc<dyn Ledger>,
        b: std::sync::Arc<dyn Ledger>,
        clock: &ManualClock,
    ) {
        clock.set(BASE);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let l = if i % 2 == 0 { a.clone() } else { b.clone() };
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| l.reserve_call("friendswitch_update", 19, 1050).unwrap().at_ms)
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        // Calls per slot, by the slot's distance from the clock.
        let mut per_slot = std::collections::BTreeMap::<u64, usize>::new();
        for slot in threads.into_iter().flat_map(|t| t.join().unwrap()) {
            *per_slot.entry(slot - BASE).or_default() += 1;
        }
        let gap = super::super::budget_gap(1050, 19);
        let expected: std::collections::BTreeMap<u64, usize> = (0..200u64)
            .map(|i| ((i / 19) * 1050 + (i % 19) * gap, 1))
            .collect();
        assert_eq!(per_slot, expected);
    }

    /// Runs every check above on fresh ledgers made by `open`, each reading the clock it
    /// is given.
    pub(crate) fn run_all(open: impl Fn(std::sync::Arc<ManualClock>) -> Box<dyn Ledger>) {
        let checks: [fn(&dyn Ledger, &ManualClock); 5] = [
            a_full_window_pushes_the_next_slot_to_the_oldest_plus_the_window,
            a_call_waits_only_for_the_slot_its_windows_oldest_call_frees,
            a_slot_comes_with_the_ledgers_clock_and_the_wait_between_them,
            bad_arguments_are_refused_and_record_nothing,
            random_requests_never_break_the_window_rule,
        ];
        for check in checks {
            let clock = ManualClock::at(BASE);
            check(open(clock.clone()).as_ref(), &clock);
        }
    }

    #[test]
    fn the_rule_checker_itself_catches_a_crowded_window() {
        assert!(within_rule(&[0, 10, 1000], 2, 1000));
        assert!(!within_rule(&[0, 10, 999], 2, 1000));
    }
}
