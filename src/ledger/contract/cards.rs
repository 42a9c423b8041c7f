//! The interactive cards' part of the ledger's contract (`CardStore`), run against every
//! store: cards, clicks entered once as commands, and approvals of the two-person rule.

use std::sync::{Arc, Barrier};

use super::{Memory, Postgres, Sqlite, Store, accepted, unfinished};
use crate::domain::{Accepted, Answer, Delivery, Outcome, Pending, SessionWebhook};
use crate::ledger::{
    Approval, ApprovalState, ApprovalVerdict, CardAction, CardKind, CardRow, CardStatus, ClickEntry, Ledger,
    LedgerError,
};

contract!(
    a_card_is_recorded_once_and_read_back_as_written,
    the_cards_of_one_setting_of_a_group_are_listed_newest_first_by_status,
    a_cards_state_is_set_and_with_an_expected_status_only_from_that_status,
    a_click_on_an_offered_button_is_entered_as_a_command_and_the_card_works_on_it,
    a_click_pushed_again_is_a_duplicate_even_when_its_card_is_unknown,
    a_click_on_an_unknown_card_records_nothing,
    a_click_while_the_card_works_on_another_is_busy_and_records_nothing,
    a_click_on_a_button_the_card_does_not_offer_records_nothing,
    two_clicks_racing_on_one_card_enter_exactly_one,
    an_approval_is_recorded_once_and_read_back_as_written,
    an_approval_is_decided_once_by_a_second_admin_before_it_expires,
    the_checks_on_deciding_an_approval_come_in_the_documented_order,
    two_admins_racing_to_decide_an_approval_decide_it_once,
    an_approved_plans_run_ends_once_and_only_from_approved,
    pruning_leaves_cards_and_approvals_alone,
);

fn card(out_track_id: &str, setting: Option<&str>, status: &str, created_ms: u64) -> CardRow {
    CardRow {
        out_track_id: out_track_id.into(),
        conversation_id: "cid1==".into(),
        msg_id: format!("cmd-{out_track_id}"),
        kind: if setting.is_some() {
            CardKind::Setting
        } else {
            CardKind::Plan
        },
        setting: setting.map(str::to_owned),
        created_by: "u1".into(),
        status: status.parse().unwrap(),
        buttons: vec![CardAction::Undo, CardAction::Extend],
        pending_click: None,
        data: r#"{"value":1,"minutes":30}"#.into(),
        created_ms,
        updated_ms: created_ms,
    }
}

/// A click as the ingress records it: a command of the clicker in the card's group.
fn click(msg_id: &str) -> Accepted {
    Accepted {
        msg_id: msg_id.into(),
        received_ms: 50,
        conversation_id: "cid1==".into(),
        conversation_type: crate::domain::ConversationType::Group,
        conversation_title: None,
        sender_staff_id: Some("u2".into()),
        sender_nick: None,
        sender_is_admin: false,
        msgtype: "card".into(),
        text: Some("undo".into()),
        session_webhook: SessionWebhook::new(""),
        session_expires_ms: None,
    }
}

fn approval(code: &str, expires_ms: u64) -> Approval {
    Approval {
        code: code.into(),
        conversation_id: "cidOps==".into(),
        asked_by: "u1".into(),
        asked_by_nick: Some("Ada".into()),
        asked_ms: 100,
        expires_ms,
        out_track_id: Some(format!("plan-{code}")),
        policy_digest: "sha256:abc".into(),
        state: ap("open"),
        decided_by: None,
        decided_ms: None,
    }
}

fn st(name: &str) -> CardStatus {
    name.parse().unwrap()
}

fn ap(name: &str) -> ApprovalState {
    name.parse().unwrap()
}

fn act(name: &str) -> CardAction {
    name.parse().unwrap()
}

fn acts(names: &[&str]) -> Vec<CardAction> {
    names.iter().map(|n| act(n)).collect()
}

fn a_card_is_recorded_once_and_read_back_as_written(store: &dyn Store) {
    let l = store.open();
    let mut plan = card("t-plan", None, "pending_approval", 5);
    plan.buttons = Vec::new();
    plan.data = "{}".into();
    assert!(l.insert_card(&card("t1", Some("dm"), "done", 10)).unwrap());
    assert!(l.insert_card(&plan).unwrap());
    let mut other = card("t1", Some("searchable"), "failed", 11);
    other.msg_id = "another".into();
    assert!(!l.insert_card(&other).unwrap(), "a known outTrackId");
    // Another handle (a restart, another replica) reads what was written.
    let again = store.open();
    assert_eq!(
        again.card("t1").unwrap(),
        Some(card("t1", Some("dm"), "done", 10))
    );
    assert_eq!(again.card("t-plan").unwrap(), Some(plan));
    assert_eq!(again.card("nope").unwrap(), None);
}

fn the_cards_of_one_setting_of_a_group_are_listed_newest_first_by_status(store: &dyn Store) {
    let l = store.open();
    let mut elsewhere = card("t-other-group", Some("dm"), "done", 40);
    elsewhere.conversation_id = "cid2==".into();
    for c in [
        card("t-old", Some("dm"), "done", 10),
        card("t-b", Some("dm"), "done", 30),
        // Created in the same millisecond: the later insertion is the newer.
        card("t-c", Some("dm"), "working", 30),
        card("t-new", Some("dm"), "extended", 35),
        card("t-superseded", Some("dm"), "superseded", 50),
        card("t-searchable", Some("searchable"), "done", 60),
        card("t-plan", None, "done", 70),
        elsewhere,
    ] {
        assert!(l.insert_card(&c).unwrap());
    }
    let listed = |statuses: &[&str]| -> Vec<String> {
        let statuses: Vec<CardStatus> = statuses.iter().map(|s| st(s)).collect();
        l.cards_of_setting("cid1==", "dm", &statuses)
            .unwrap()
            .into_iter()
            .map(|c| c.out_track_id)
            .collect()
    };
    assert_eq!(
        listed(&["done", "working", "extended"]),
        ["t-new", "t-c", "t-b", "t-old"]
    );
    assert_eq!(listed(&["done"]), ["t-b", "t-old"]);
    assert_eq!(listed(&["superseded"]), ["t-superseded"]);
    assert!(listed(&["failed"]).is_empty());
    assert!(listed(&[]).is_empty());
    assert!(
        l.cards_of_setting("cid3==", "dm", &[CardStatus::Done])
            .unwrap()
            .is_empty()
    );
    // The rows come back whole.
    assert_eq!(
        l.cards_of_setting("cid1==", "searchable", &[CardStatus::Done])
            .unwrap(),
        [card("t-searchable", Some("searchable"), "done", 60)]
    );
}

fn a_cards_state_is_set_and_with_an_expected_status_only_from_that_status(store: &dyn Store) {
    let l = store.open();
    l.insert_card(&card("t1", Some("dm"), "done", 10)).unwrap();
    assert_eq!(
        l.accept_click(&click("card:m1"), "t1", act("undo"), 20).unwrap(),
        ClickEntry::New
    );
    let none: Vec<CardAction> = Vec::new();
    // The click's job finished: the card shows the result and offers nothing.
    assert!(
        l.set_card_state(
            "t1",
            Some(st("working")),
            st("undone"),
            &none,
            r#"{"undone":true}"#,
            30
        )
        .unwrap()
    );
    let expected = CardRow {
        status: st("undone"),
        buttons: Vec::new(),
        pending_click: None,
        data: r#"{"undone":true}"#.into(),
        updated_ms: 30,
        ..card("t1", Some("dm"), "done", 10)
    };
    assert_eq!(l.card("t1").unwrap(), Some(expected.clone()));
    // A compare-and-set from a status the card no longer has changes nothing.
    assert!(
        !l.set_card_state("t1", Some(st("working")), st("superseded"), &none, "{}", 40)
            .unwrap()
    );
    assert!(
        !l.set_card_state("t1", Some(st("done")), st("superseded"), &none, "{}", 40)
            .unwrap()
    );
    assert_eq!(l.card("t1").unwrap(), Some(expected));
    // Without an expected status it is set whatever the status.
    let buttons = acts(&["revert_now"]);
    assert!(
        l.set_card_state("t1", None, st("extended"), &buttons, "{}", 50)
            .unwrap()
    );
    let now = l.card("t1").unwrap().unwrap();
    assert_eq!(
        (
            now.status.as_str(),
            now.buttons,
            now.data.as_str(),
            now.updated_ms
        ),
        ("extended", buttons.clone(), "{}", 50)
    );
    assert_eq!(now.created_ms, 10, "the creation time stays");
    // An unknown card is not changed either way.
    assert!(
        !l.set_card_state("nope", None, st("done"), &buttons, "{}", 60)
            .unwrap()
    );
    assert!(
        !l.set_card_state("nope", Some(st("done")), st("done"), &buttons, "{}", 60)
            .unwrap()
    );
    assert_eq!(l.card("nope").unwrap(), None);
}

fn a_click_on_an_offered_button_is_entered_as_a_command_and_the_card_works_on_it(store: &dyn Store) {
    let l = store.open();
    l.insert_card(&card("t1", Some("dm"), "done", 10)).unwrap();
    l.accept(&accepted("m-before")).unwrap();
    assert_eq!(
        l.accept_click(&click("card:m1"), "t1", act("extend"), 20)
            .unwrap(),
        ClickEntry::New
    );
    assert_eq!(
        l.card("t1").unwrap(),
        Some(CardRow {
            status: st("working"),
            buttons: Vec::new(),
            pending_click: Some("card:m1".into()),
            updated_ms: 20,
            ..card("t1", Some("dm"), "done", 10)
        })
    );
    // The click is a command like any other: open, after the one before it, read back as
    // accepted, with no stored reply URL worth keeping.
    assert_eq!(
        unfinished(l.as_ref()),
        [
            Pending {
                accepted: accepted("m-before"),
                answer: None
            },
            Pending {
                accepted: click("card:m1"),
                answer: None
            }
        ]
    );
    assert_eq!(l.open_count().unwrap(), 2);
    assert!(!l.accept(&click("card:m1")).unwrap(), "its msgId is known");
    let in_group = l.open_in_conversation_after("cid1==", 0, i64::MAX, 10).unwrap();
    assert_eq!(in_group.len(), 2);
    let audit = l.history(Some("cid1=="), Some(50), 10).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].msg_id.as_str(), audit[0].status.as_str()),
        ("card:m1", "accepted")
    );
    // Finished like any command: the newest finished of its group.
    let answer = Answer::new("/dm", Outcome::Ok, "extended", "");
    l.finish("card:m1", &answer, &Delivery::Session, 60).unwrap();
    let click_pos = in_group[1].0;
    assert_eq!(
        l.newest_done_by_group().unwrap(),
        std::collections::HashMap::from([("cid1==".to_owned(), click_pos)])
    );
    assert_eq!(l.history(Some("cid1=="), Some(50), 10).unwrap()[0].status, "done");
}

fn a_click_pushed_again_is_a_duplicate_even_when_its_card_is_unknown(store: &dyn Store) {
    let l = store.open();
    l.insert_card(&card("t1", Some("dm"), "done", 10)).unwrap();
    assert_eq!(
        l.accept_click(&click("card:m1"), "t1", act("undo"), 20).unwrap(),
        ClickEntry::New
    );
    let working = l.card("t1").unwrap();
    // Pushed again while the card works on it.
    assert_eq!(
        l.accept_click(&click("card:m1"), "t1", act("undo"), 21).unwrap(),
        ClickEntry::Duplicate
    );
    assert_eq!(l.card("t1").unwrap(), working, "nothing changed");
    // Pushed again once the card offers the button again.
    let buttons = acts(&["undo"]);
    assert!(
        l.set_card_state("t1", None, st("done"), &buttons, "{}", 30)
            .unwrap()
    );
    assert_eq!(
        l.accept_click(&click("card:m1"), "t1", act("undo"), 31).unwrap(),
        ClickEntry::Duplicate
    );
    assert_eq!(l.card("t1").unwrap().unwrap().status.as_str(), "done");
    // The msgId decides before the card: a known one is a duplicate whatever the card.
    assert_eq!(
        l.accept_click(&click("card:m1"), "gone", act("undo"), 32)
            .unwrap(),
        ClickEntry::Duplicate
    );
    l.accept(&accepted("m-text")).unwrap();
    assert_eq!(
        l.accept_click(&click("m-text"), "t1", act("undo"), 33).unwrap(),
        ClickEntry::Duplicate
    );
    assert_eq!(l.open_count().unwrap(), 2);
    assert_eq!(l.card("t1").unwrap().unwrap().status.as_str(), "done");
}

fn a_click_on_an_unknown_card_records_nothing(store: &dyn Store) {
    let l = store.open();
    l.insert_card(&card("t1", Some("dm"), "done", 10)).unwrap();
    assert_eq!(
        l.accept_click(&click("card:m1"), "nope", act("undo"), 20)
            .unwrap(),
        ClickEntry::UnknownCard
    );
    assert_eq!(l.open_count().unwrap(), 0);
    assert!(l.history(None, None, 10).unwrap().is_empty());
    assert_eq!(l.card("nope").unwrap(), None);
    assert_eq!(l.card("t1").unwrap(), Some(card("t1", Some("dm"), "done", 10)));
    // The msgId was not taken: the same click on a known card is new.
    assert_eq!(
        l.accept_click(&click("card:m1"), "t1", act("undo"), 21).unwrap(),
        ClickEntry::New
    );
}

fn a_click_while_the_card_works_on_another_is_busy_and_records_nothing(store: &dyn Store) {
    let l = store.open();
    l.insert_card(&card("t1", Some("dm"), "done", 10)).unwrap();
    assert_eq!(
        l.accept_click(&click("card:m1"), "t1", act("undo"), 20).unwrap(),
        ClickEntry::New
    );
    let working = l.card("t1").unwrap();
    // A card stored as working (sent so) is busy whatever its buttons.
    let mut sent_working = card("t2", Some("searchable"), "working", 10);
    sent_working.buttons = acts(&["undo"]);
    l.insert_card(&sent_working).unwrap();
    for (msg_id, out_track_id) in [("card:m2", "t1"), ("card:m3", "t2")] {
        assert_eq!(
            l.accept_click(&click(msg_id), out_track_id, act("undo"), 21)
                .unwrap(),
            ClickEntry::Busy
        );
    }
    assert_eq!(l.card("t1").unwrap(), working);
    assert_eq!(l.card("t2").unwrap(), Some(sent_working));
    assert_eq!(ids(l.as_ref()), ["card:m1"]);
    // Nothing was recorded for the refused clicks: their msgIds are still free.
    assert!(l.accept(&click("card:m2")).unwrap());
}

fn a_click_on_a_button_the_card_does_not_offer_records_nothing(store: &dyn Store) {
    let l = store.open();
    l.insert_card(&card("t1", Some("dm"), "done", 10)).unwrap();
    let mut bare = card("t2", Some("dm"), "undone", 11);
    bare.buttons = Vec::new();
    l.insert_card(&bare).unwrap();
    // (An action id dingops does not know never reaches the store: the gate refuses it.)
    for (msg_id, out_track_id, action) in [
        ("card:m1", "t1", CardAction::RevertNow),
        ("card:m3", "t2", CardAction::Undo),
    ] {
        assert_eq!(
            l.accept_click(&click(msg_id), out_track_id, action, 20).unwrap(),
            ClickEntry::NotOffered,
            "{action} on {out_track_id}"
        );
    }
    assert_eq!(l.card("t1").unwrap(), Some(card("t1", Some("dm"), "done", 10)));
    assert_eq!(l.card("t2").unwrap(), Some(bare));
    assert_eq!(l.open_count().unwrap(), 0);
}

/// The open commands' msgIds, oldest first.
fn ids(l: &dyn Ledger) -> Vec<String> {
    unfinished(l).into_iter().map(|p| p.accepted.msg_id).collect()
}

fn two_clicks_racing_on_one_card_enter_exactly_one(store: &dyn Store) {
    let handles = [store.open(), store.open()];
    for round in 0..20 {
        let t = format!("t{round}");
        handles[0]
            .insert_card(&card(&t, Some("dm"), "done", round))
            .unwrap();
        let start = Barrier::new(2);
        let entries: Vec<(String, ClickEntry)> = std::thread::scope(|s| {
            let runs: Vec<_> = handles
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let (start, t) = (&start, &t);
                    s.spawn(move || {
                        let msg_id = format!("card:r{round}-{i}");
                        start.wait();
                        let entry = l.accept_click(&click(&msg_id), t, act("undo"), 100).unwrap();
                        (msg_id, entry)
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let new: Vec<&String> = entries
            .iter()
            .filter(|(_, e)| *e == ClickEntry::New)
            .map(|(m, _)| m)
            .collect();
        let busy = entries.iter().filter(|(_, e)| *e == ClickEntry::Busy).count();
        assert_eq!((new.len(), busy), (1, 1), "round {round}: {entries:?}");
        assert_eq!(
            handles[1].card(&t).unwrap().unwrap().pending_click.as_ref(),
            Some(new[0])
        );
    }
    // One command per round, and only the winners'.
    let recorded = ids(handles[0].as_ref());
    assert_eq!(recorded.len(), 20);
    for round in 0..20u64 {
        let pending = handles[0]
            .card(&format!("t{round}"))
            .unwrap()
            .unwrap()
            .pending_click;
        assert_eq!(recorded[round as usize], pending.unwrap());
    }
}

fn an_approval_is_recorded_once_and_read_back_as_written(store: &dyn Store) {
    let l = store.open();
    let bare = Approval {
        asked_by_nick: None,
        out_track_id: None,
        ..approval("B7", 900)
    };
    assert!(l.insert_approval(&approval("A1", 1000)).unwrap());
    assert!(l.insert_approval(&bare).unwrap());
    let mut other = approval("A1", 5000);
    other.asked_by = "u9".into();
    assert!(!l.insert_approval(&other).unwrap(), "a known code");
    let again = store.open();
    assert_eq!(again.approval("A1").unwrap(), Some(approval("A1", 1000)));
    assert_eq!(again.approval("B7").unwrap(), Some(bare));
    assert_eq!(again.approval("a1").unwrap(), None, "codes are compared exactly");
}

fn an_approval_is_decided_once_by_a_second_admin_before_it_expires(store: &dyn Store) {
    let l = store.open();
    l.insert_approval(&approval("A1", 1000)).unwrap();
    assert_eq!(
        l.decide_approval("nope", ap("approved"), "u2", 500).unwrap(),
        ApprovalVerdict::Unknown
    );
    // The admin who asked cannot approve it; nothing changes.
    assert_eq!(
        l.decide_approval("A1", ap("approved"), "u1", 500).unwrap(),
        ApprovalVerdict::SameAdmin(approval("A1", 1000))
    );
    assert_eq!(l.approval("A1").unwrap(), Some(approval("A1", 1000)));
    // A second admin can, until the last millisecond before it expires.
    let approved = Approval {
        state: ap("approved"),
        decided_by: Some("u2".into()),
        decided_ms: Some(999),
        ..approval("A1", 1000)
    };
    assert_eq!(
        l.decide_approval("A1", ap("approved"), "u2", 999).unwrap(),
        ApprovalVerdict::Decided(approved.clone())
    );
    assert_eq!(store.open().approval("A1").unwrap(), Some(approved.clone()));
    // Once only, whoever asks next and however.
    for (state, by) in [("approved", "u3"), ("discarded", "u2"), ("discarded", "u1")] {
        assert_eq!(
            l.decide_approval("A1", ap(state), by, 999).unwrap(),
            ApprovalVerdict::AlreadyDecided(approved.clone())
        );
    }
    // At its expiry time it no longer works.
    l.insert_approval(&approval("E1", 1000)).unwrap();
    assert_eq!(
        l.decide_approval("E1", ap("approved"), "u2", 1000).unwrap(),
        ApprovalVerdict::Expired(approval("E1", 1000))
    );
    assert_eq!(l.approval("E1").unwrap(), Some(approval("E1", 1000)));
    // The admin who asked may discard it.
    l.insert_approval(&approval("D1", 1000)).unwrap();
    assert_eq!(
        l.decide_approval("D1", ap("discarded"), "u1", 10).unwrap(),
        ApprovalVerdict::Decided(Approval {
            state: ap("discarded"),
            decided_by: Some("u1".into()),
            decided_ms: Some(10),
            ..approval("D1", 1000)
        })
    );
    // A state other than approved or discarded is refused and writes nothing.
    l.insert_approval(&approval("X1", 1000)).unwrap();
    assert!(matches!(
        l.decide_approval("X1", ap("open"), "u2", 10),
        Err(LedgerError::Invalid(_))
    ));
    assert_eq!(l.approval("X1").unwrap(), Some(approval("X1", 1000)));
}

fn the_checks_on_deciding_an_approval_come_in_the_documented_order(store: &dyn Store) {
    let l = store.open();
    // Decided and expired: already decided comes first.
    l.insert_approval(&approval("A1", 1000)).unwrap();
    let ApprovalVerdict::Decided(discarded) = l.decide_approval("A1", ap("discarded"), "u2", 10).unwrap()
    else {
        panic!("an open approval is decided");
    };
    assert_eq!(
        l.decide_approval("A1", ap("approved"), "u1", 5000).unwrap(),
        ApprovalVerdict::AlreadyDecided(discarded)
    );
    // Expired and approved by the admin who asked: expired comes first.
    l.insert_approval(&approval("B1", 1000)).unwrap();
    assert_eq!(
        l.decide_approval("B1", ap("approved"), "u1", 1000).unwrap(),
        ApprovalVerdict::Expired(approval("B1", 1000))
    );
    // A stored state other than open counts as decided.
    let odd = Approval {
        state: ap("approved"),
        ..approval("C1", 1000)
    };
    l.insert_approval(&odd).unwrap();
    assert_eq!(
        l.decide_approval("C1", ap("approved"), "u2", 10).unwrap(),
        ApprovalVerdict::AlreadyDecided(odd)
    );
}

fn an_approved_plans_run_ends_once_and_only_from_approved(store: &dyn Store) {
    let l = store.open();
    l.insert_approval(&approval("A1", 1000)).unwrap();
    // An open approval has no run to end.
    assert!(!l.end_approval("A1", ap("applied")).unwrap());
    assert!(!l.end_approval("nope", ap("applied")).unwrap());
    let ApprovalVerdict::Decided(approved) = l.decide_approval("A1", ap("approved"), "u2", 10).unwrap()
    else {
        panic!("an open approval is decided");
    };
    // Still approved, its run is not ended: read back as such (a restart resumes it).
    assert_eq!(store.open().approval("A1").unwrap(), Some(approved.clone()));
    assert!(l.end_approval("A1", ap("applied")).unwrap());
    let applied = Approval {
        state: ap("applied"),
        ..approved
    };
    assert_eq!(store.open().approval("A1").unwrap(), Some(applied.clone()));
    // Once: an ended run stays as it ended.
    assert!(!l.end_approval("A1", ap("failed")).unwrap());
    assert_eq!(l.approval("A1").unwrap(), Some(applied.clone()));
    // And the code stays used up.
    assert_eq!(
        l.decide_approval("A1", ap("approved"), "u3", 20).unwrap(),
        ApprovalVerdict::AlreadyDecided(applied)
    );
    // A discarded plan has no run; a state other than applied or failed is refused.
    l.insert_approval(&approval("D1", 1000)).unwrap();
    l.decide_approval("D1", ap("discarded"), "u1", 10).unwrap();
    assert!(!l.end_approval("D1", ap("failed")).unwrap());
    l.insert_approval(&approval("X1", 1000)).unwrap();
    l.decide_approval("X1", ap("approved"), "u2", 10).unwrap();
    assert!(matches!(
        l.end_approval("X1", ap("open")),
        Err(LedgerError::Invalid(_))
    ));
    assert_eq!(l.approval("X1").unwrap().unwrap().state.as_str(), "approved");
}

fn two_admins_racing_to_decide_an_approval_decide_it_once(store: &dyn Store) {
    let handles = [store.open(), store.open()];
    for round in 0..20 {
        let code = format!("R{round}");
        handles[0].insert_approval(&approval(&code, 10_000)).unwrap();
        let start = Barrier::new(2);
        let verdicts: Vec<ApprovalVerdict> = std::thread::scope(|s| {
            let runs: Vec<_> = handles
                .iter()
                .zip(["u2", "u3"])
                .map(|(l, by)| {
                    let (start, code) = (&start, &code);
                    s.spawn(move || {
                        start.wait();
                        l.decide_approval(code, ap("approved"), by, 500).unwrap()
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let decided: Vec<&Approval> = verdicts
            .iter()
            .filter_map(|v| match v {
                ApprovalVerdict::Decided(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(decided.len(), 1, "round {round}: {verdicts:?}");
        let winner = decided[0].clone();
        assert!(
            verdicts.contains(&ApprovalVerdict::AlreadyDecided(winner.clone())),
            "round {round}: {verdicts:?}"
        );
        assert_eq!(handles[1].approval(&code).unwrap(), Some(winner));
    }
}

fn pruning_leaves_cards_and_approvals_alone(store: &dyn Store) {
    let l: Arc<dyn Ledger> = store.open();
    l.insert_card(&card("t1", Some("dm"), "done", 1)).unwrap();
    l.insert_approval(&approval("A1", 2)).unwrap();
    let mut old_click = click("card:m1");
    old_click.received_ms = 3;
    assert_eq!(
        l.accept_click(&old_click, "t1", act("undo"), 3).unwrap(),
        ClickEntry::New
    );
    let answer = Answer::new("/dm", Outcome::Ok, "undone", "");
    l.finish("card:m1", &answer, &Delivery::Session, 4).unwrap();
    let none: Vec<CardAction> = Vec::new();
    l.set_card_state("t1", Some(st("working")), st("undone"), &none, "{}", 4)
        .unwrap();
    let step = l.prune_finished(1_000, 0, 100).unwrap();
    assert_eq!(step.deleted, 1, "the finished click is pruned like any command");
    assert!(l.history(None, None, 10).unwrap().is_empty());
    let kept = l.card("t1").unwrap().unwrap();
    assert_eq!((kept.status.as_str(), kept.created_ms), ("undone", 1));
    assert_eq!(l.approval("A1").unwrap(), Some(approval("A1", 2)));
}
