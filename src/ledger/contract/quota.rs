//! The monthly quota's part of the ledger's contract (`QuotaBook`), run against every store.

use super::{Memory, Postgres, Sqlite, Store};
use crate::quota::Class;

contract!(
    the_quota_counts_per_api_and_class_up_to_a_ceiling_on_the_months_total,
    two_handles_taking_the_quota_at_once_never_pass_the_ceiling,
    a_month_marked_spent_is_seen_by_every_handle_and_only_for_that_month,
);

fn the_quota_counts_per_api_and_class_up_to_a_ceiling_on_the_months_total(store: &dyn Store) {
    use crate::ledger::{QuotaCount, QuotaTake};
    let l = store.open();
    let take = |api: &str, class: &str, ceiling| {
        l.take_quota("2026-12", api, class.parse().unwrap(), ceiling)
            .unwrap()
    };
    assert_eq!(
        take("chat_get", "background", Some(3)),
        QuotaTake { taken: true, used: 1 }
    );
    assert_eq!(
        take("chat_get", "background", Some(3)),
        QuotaTake { taken: true, used: 2 }
    );
    assert_eq!(
        take("im_group_update", "interactive", Some(5)),
        QuotaTake { taken: true, used: 3 }
    );
    // The ceiling is on the month's total, every class together.
    assert_eq!(
        take("chat_get", "background", Some(3)),
        QuotaTake {
            taken: false,
            used: 3
        }
    );
    assert_eq!(
        take("chat_get", "interactive", Some(4)),
        QuotaTake { taken: true, used: 4 }
    );
    assert_eq!(
        take("chat_get", "interactive", None),
        QuotaTake { taken: true, used: 5 }
    );
    // Another month counts from zero.
    assert_eq!(
        l.take_quota("2027-01", "chat_get", Class::Background, Some(1))
            .unwrap(),
        QuotaTake { taken: true, used: 1 }
    );
    let count = |api: &str, class: &str, calls| QuotaCount {
        api: api.into(),
        class: class.parse().unwrap(),
        calls,
    };
    // Another handle (a restart, another process) reads the same counts.
    assert_eq!(
        store.open().quota_counts("2026-12").unwrap(),
        [
            count("chat_get", "background", 2),
            count("chat_get", "interactive", 2),
            count("im_group_update", "interactive", 1),
        ]
    );
    assert!(l.quota_counts("2026-11").unwrap().is_empty());
}

fn two_handles_taking_the_quota_at_once_never_pass_the_ceiling(store: &dyn Store) {
    let handles = [store.open(), store.open()];
    let taken: usize = std::thread::scope(|s| {
        let runs: Vec<_> = handles
            .iter()
            .map(|l| {
                s.spawn(move || {
                    (0..40)
                        .filter(|_| {
                            l.take_quota("2026-12", "chat_get", Class::Background, Some(50))
                                .unwrap()
                                .taken
                        })
                        .count()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).sum()
    });
    assert_eq!(taken, 50);
    let counted: u64 = handles[0]
        .quota_counts("2026-12")
        .unwrap()
        .iter()
        .map(|c| c.calls)
        .sum();
    assert_eq!(counted, 50);
}

fn a_month_marked_spent_is_seen_by_every_handle_and_only_for_that_month(store: &dyn Store) {
    let (a, b) = (store.open(), store.open());
    assert!(!b.quota_spent("2026-12").unwrap());
    a.mark_quota_spent("2026-12", 1000).unwrap();
    a.mark_quota_spent("2026-12", 2000).unwrap();
    assert!(b.quota_spent("2026-12").unwrap());
    assert!(!b.quota_spent("2027-01").unwrap());
}
