//! What a card shows: the parameters the template binds (`title`, `body`, `status`,
//! `buttons`, and the private `notice`), decided without any I/O. See docs/cards.md.

use std::collections::BTreeMap;

use crate::domain::SettingChange;
use crate::governance::Setting;
use crate::ledger::{CardAction, CardStatus};

/// The buttons of a setting card that stands: Undo, and on a timed one Extend and Revert now.
pub fn standing_buttons(change: &SettingChange) -> Vec<CardAction> {
    let mut buttons = vec![CardAction::Undo];
    if change.until_ms.is_some() {
        buttons.extend([CardAction::Extend, CardAction::RevertNow]);
    }
    buttons
}

/// The most bytes DingTalk takes in one `cardParamMap` value (docs/cards.md): every value
/// dingops sends is cut to fit.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The card's public parameters: every value a string, `buttons` a JSON array as a string,
/// each within [`MAX_VALUE_BYTES`] (the body as [`fit_body`] keeps it).
pub fn params(
    title: &str,
    body: &str,
    status: CardStatus,
    buttons: &[CardAction],
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("title".to_owned(), cut(title, MAX_VALUE_BYTES)),
        ("body".to_owned(), fit_body(body)),
        ("status".to_owned(), status.as_str().to_owned()),
        (
            "buttons".to_owned(),
            serde_json::to_string(buttons).unwrap_or_else(|_| "[]".to_owned()),
        ),
    ])
}

/// The private `notice` of one clicker.
pub fn notice(user_id: &str, text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    BTreeMap::from([(
        user_id.to_owned(),
        BTreeMap::from([("notice".to_owned(), cut(text, MAX_VALUE_BYTES))]),
    )])
}

/// `text` cut to at most `max` bytes at a character boundary, `…` marking the cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let room = max.saturating_sub('…'.len_utf8());
    let end = (0..=room).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}…", &text[..end])
}

/// The line standing for `n` updates left out of a card's body.
fn left_out(n: usize) -> String {
    format!("(… {n} earlier updates not shown)")
}

/// How many updates a [`left_out`] line stands for, when `line` is one.
fn left_out_count(line: &str) -> Option<usize> {
    line.strip_prefix("(… ")?
        .strip_suffix(" earlier updates not shown)")?
        .parse()
        .ok()
}

/// The paragraphs a card's body always starts with: the command's reply and who ran it.
const HEAD: usize = 2;

/// A card's body within [`MAX_VALUE_BYTES`]. A body is paragraphs: the command's reply and
/// who ran it first, then one per update (a click's result, a revert, a supersession). When
/// it is too long, those two and the newest updates that fit are kept and the ones between
/// are counted in one line; a start too long by itself is cut.
pub fn fit_body(body: &str) -> String {
    if body.len() <= MAX_VALUE_BYTES {
        return body.to_owned();
    }
    let parts: Vec<&str> = body.split("\n\n").collect();
    let (head, rest) = parts.split_at(HEAD.min(parts.len()));
    let first = head.join("\n\n");
    let first = first.as_str();
    let mut rest = rest.to_vec();
    let mut hidden = 0;
    if let Some(n) = rest.first().and_then(|p| left_out_count(p)) {
        hidden = n;
        rest.remove(0);
    }
    let assemble = |first: &str, hidden: usize, kept: &[&str]| {
        let mut out = first.to_owned();
        if hidden > 0 {
            out.push_str("\n\n");
            out.push_str(&left_out(hidden));
        }
        for p in kept {
            out.push_str("\n\n");
            out.push_str(p);
        }
        out
    };
    while rest.len() > 1 && assemble(first, hidden, &rest).len() > MAX_VALUE_BYTES {
        rest.remove(0);
        hidden += 1;
    }
    let whole = assemble(first, hidden, &rest);
    if whole.len() <= MAX_VALUE_BYTES {
        return whole;
    }
    // The reply alone is too long: it is cut, the rest kept.
    let reply = head.first().copied().unwrap_or_default();
    let others = &whole[reply.len()..];
    let room = MAX_VALUE_BYTES
        .saturating_sub(others.len())
        .max(MAX_VALUE_BYTES / 4);
    cut(&format!("{}{others}", cut(reply, room)), MAX_VALUE_BYTES)
}

/// A setting card's title: the setting and the value the command set, e.g. `Mute all: on`.
pub fn setting_title(change: &SettingChange) -> String {
    match Setting::from_stored(&change.setting) {
        // The value's first words only ("on", not "on: only the owner and admins can speak").
        Some(s) => format!(
            "{}: {}",
            s.label(),
            s.describe(change.value).split(':').next().unwrap_or_default()
        ),
        None => change.setting.clone(),
    }
}

/// A setting card's body: the reply's text, then who ran what.
pub fn setting_body(text: &str, change: &SettingChange) -> String {
    format!("{text}\n\n{} ran `{}`.", change.by, change.command)
}

/// The status a successful click leaves its card in.
pub fn status_after(action: CardAction) -> CardStatus {
    match action {
        CardAction::Undo => CardStatus::Undone,
        CardAction::Extend => CardStatus::Extended,
        CardAction::RevertNow => CardStatus::Reverted,
        CardAction::Approve => CardStatus::Approved,
        CardAction::Discard => CardStatus::Discarded,
    }
}

/// The buttons a card offers, read back from its parameters as last sent.
pub fn buttons_of(params: &BTreeMap<String, String>) -> Vec<CardAction> {
    params
        .get("buttons")
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mute(until_ms: Option<u64>) -> SettingChange {
        SettingChange {
            chat_id: "chatg1".into(),
            setting: "chatBannedType".into(),
            value: 1,
            before: Some(0),
            duration_ms: until_ms.map(|_| 60_000),
            until_ms,
            by: "Ada (boss)".into(),
            command: "/mute-all 1m".into(),
        }
    }

    #[test]
    fn a_timed_change_offers_undo_extend_and_revert_now_and_an_untimed_one_undo_only() {
        let names = |b: Vec<CardAction>| b.iter().map(|a| a.as_str()).collect::<Vec<_>>();
        assert_eq!(
            names(standing_buttons(&mute(Some(5)))),
            ["undo", "extend", "revert_now"]
        );
        assert_eq!(names(standing_buttons(&mute(None))), ["undo"]);
    }

    #[test]
    fn every_parameter_is_a_string_and_buttons_are_a_json_array_in_one() {
        let p = params("t", "b", CardStatus::Done, &[CardAction::Undo]);
        assert_eq!(p["buttons"], r#"["undo"]"#);
        assert_eq!(p["status"], "done");
        assert_eq!(buttons_of(&p), [CardAction::Undo]);
        assert_eq!(params("t", "b", CardStatus::Done, &[])["buttons"], "[]");
    }

    #[test]
    fn a_long_body_keeps_its_first_and_newest_paragraphs_within_the_limit_and_counts_the_rest() {
        let mut body = "The command's reply.\n\nAda ran `/mute-all 30m`.".to_owned();
        for n in 0..40 {
            body = fit_body(&format!("{body}\n\nUpdate {n}: {}", "x".repeat(100)));
            assert!(body.len() <= MAX_VALUE_BYTES, "{} bytes after {n}", body.len());
        }
        assert!(
            body.starts_with("The command's reply.\n\nAda ran `/mute-all 30m`.\n\n(… "),
            "{body}"
        );
        assert!(
            body.ends_with(&format!("Update 39: {}", "x".repeat(100))),
            "{body}"
        );
        let hidden = body.split("\n\n").nth(2).and_then(left_out_count).unwrap();
        let shown = body.split("\n\n").count() - 3;
        assert_eq!(hidden + shown, 40, "every update is shown or counted: {body}");
        // A first paragraph too long by itself is cut, and the newest update still shows.
        let huge = fit_body(&format!("{}\n\nthe newest", "é".repeat(2000)));
        assert!(
            huge.len() <= MAX_VALUE_BYTES && huge.ends_with("the newest"),
            "{huge}"
        );
        assert_eq!(fit_body("short"), "short");
        assert_eq!(cut("ééé", 5), "é…");
    }

    #[test]
    fn the_title_names_the_setting_and_the_value_set() {
        assert_eq!(setting_title(&mute(None)), "Whole-group mute: on");
    }
}
