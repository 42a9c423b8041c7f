//! What a card shows: the parameters the template binds (`title`, `body`, `status`,
//! `buttons`, and the private `notice`), decided without any I/O. See docs/cards.md.

use std::collections::BTreeMap;

use crate::domain::SettingChange;
use crate::governance::Setting;

/// The action ids a click carries, as the template's buttons name them.
pub const UNDO: &str = "undo";
pub const EXTEND: &str = "extend";
pub const REVERT_NOW: &str = "revert_now";
pub const APPROVE: &str = "approve";
pub const DISCARD: &str = "discard";

/// Every action id dingops knows.
pub const ACTIONS: [&str; 5] = [UNDO, EXTEND, REVERT_NOW, APPROVE, DISCARD];

/// The buttons of a setting card that stands: Undo, and on a timed one Extend and Revert now.
pub fn standing_buttons(change: &SettingChange) -> Vec<String> {
    let mut buttons = vec![UNDO.to_owned()];
    if change.until_ms.is_some() {
        buttons.extend([EXTEND.to_owned(), REVERT_NOW.to_owned()]);
    }
    buttons
}

/// The card's public parameters: every value a string, `buttons` a JSON array as a string.
pub fn params(title: &str, body: &str, status: &str, buttons: &[String]) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("title".to_owned(), title.to_owned()),
        ("body".to_owned(), body.to_owned()),
        ("status".to_owned(), status.to_owned()),
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
        BTreeMap::from([("notice".to_owned(), text.to_owned())]),
    )])
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
pub fn status_after(action: &str) -> &'static str {
    match action {
        UNDO => "undone",
        EXTEND => "extended",
        REVERT_NOW => "reverted",
        APPROVE => "approved",
        DISCARD => "discarded",
        _ => "done",
    }
}

/// The buttons a card offers, read back from its parameters as last sent.
pub fn buttons_of(params: &BTreeMap<String, String>) -> Vec<String> {
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
        assert_eq!(standing_buttons(&mute(Some(5))), ["undo", "extend", "revert_now"]);
        assert_eq!(standing_buttons(&mute(None)), ["undo"]);
    }

    #[test]
    fn every_parameter_is_a_string_and_buttons_are_a_json_array_in_one() {
        let p = params("t", "b", "done", &["undo".to_owned()]);
        assert_eq!(p["buttons"], r#"["undo"]"#);
        assert_eq!(p["status"], "done");
        assert_eq!(buttons_of(&p), ["undo"]);
        assert_eq!(params("t", "b", "done", &[])["buttons"], "[]");
    }

    #[test]
    fn the_title_names_the_setting_and_the_value_set() {
        assert_eq!(setting_title(&mute(None)), "Whole-group mute: on");
    }
}
