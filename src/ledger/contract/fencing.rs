//! The fence of a setting's record and the policy in force (`SettingStore`), run against
//! every store.

use super::{Memory, Postgres, Sqlite, Store};
use crate::domain::KnownValue;
use crate::ledger::Fence;

contract!(
    a_fenced_record_lands_while_its_holder_keeps_the_lease_and_is_refused_once_another_took_it,
    a_fenced_record_of_a_lease_given_back_is_refused,
    the_policy_in_force_is_none_until_recorded_and_the_last_record_wins,
);

fn known(value: u8, via: &str) -> KnownValue {
    KnownValue {
        value,
        set_by: "tester".into(),
        set_by_nick: None,
        via: via.parse().unwrap(),
        set_ms: 1_000,
    }
}

fn fence(holder: &str) -> Fence {
    Fence {
        leases: vec!["setting:g:searchable".into(), "setting:g:dm".into()],
        holder: holder.into(),
    }
}

fn a_fenced_record_lands_while_its_holder_keeps_the_lease_and_is_refused_once_another_took_it(
    store: &dyn Store,
) {
    let clock = crate::clock::ManualClock::at(1_000_000);
    let l = store.open_with_clock(clock.clone());
    let names = fence("apply#1").leases;
    assert_eq!(l.try_leases(&names, "apply#1", 6_000).unwrap(), names);
    assert!(
        l.record_setting_fenced("g", "searchable", &known(1, "apply"), &fence("apply#1"))
            .unwrap()
    );
    assert_eq!(l.known_setting("g", "searchable").unwrap().unwrap().value, 1);
    // Past its end, but nobody took it: the holder is still the last one, its record lands.
    clock.advance(6_000);
    assert!(
        l.record_setting_fenced("g", "searchable", &known(1, "apply"), &fence("apply#1"))
            .unwrap()
    );
    // Another writer takes one of the two leases (it ran out) and records its value.
    assert_eq!(l.try_leases(&names[..1], "chat#7", 6_000).unwrap(), &names[..1]);
    assert!(
        l.record_setting_fenced("g", "searchable", &known(0, "chat"), &{
            let mut f = fence("chat#7");
            f.leases.truncate(1);
            f
        })
        .unwrap()
    );
    // The stale holder's record is refused, and changes nothing.
    assert!(
        !l.record_setting_fenced("g", "searchable", &known(1, "apply"), &fence("apply#1"))
            .unwrap()
    );
    let k = l.known_setting("g", "searchable").unwrap().unwrap();
    assert_eq!((k.value, k.via.as_str()), (0, "chat"));
}

fn a_fenced_record_of_a_lease_given_back_is_refused(store: &dyn Store) {
    let l = store.open();
    let names = fence("apply#2").leases;
    assert_eq!(l.try_leases(&names, "apply#2", 6_000).unwrap(), names);
    l.release_leases(&names, "apply#2").unwrap();
    assert!(
        !l.record_setting_fenced("g", "dm", &known(1, "apply"), &fence("apply#2"))
            .unwrap()
    );
    assert!(l.known_setting("g", "dm").unwrap().is_none());
}

fn the_policy_in_force_is_none_until_recorded_and_the_last_record_wins(store: &dyn Store) {
    let l = store.open();
    assert_eq!(l.policy_in_force().unwrap(), None);
    l.set_policy_in_force("aaaa", "serve", 1_000).unwrap();
    assert_eq!(l.policy_in_force().unwrap().as_deref(), Some("aaaa"));
    l.set_policy_in_force("bbbb", "apply-x", 2_000).unwrap();
    // Another handle (a restart, another process) reads the same.
    let again = store.open();
    assert_eq!(again.policy_in_force().unwrap().as_deref(), Some("bbbb"));
}
