//! `dingops check`'s card items: whether replies are cards and how their clicks come back,
//! and `--register-card-callback`, which registers the address of `POST /card-callback`
//! with DingTalk (docs/dingtalk.md, "Interactive cards").

use url::Url;

use super::{CardRegistration, CheckItem};
use crate::advice::advice;
use crate::config::{CardSettings, Mode, Settings};
use crate::dingtalk::{ApiError, DingTalk};
use crate::ingress::stream::frame::CARD_TOPIC;

/// One line: cards on (the template, never the secret) or off, and where clicks come in.
pub(super) fn cards_line(settings: &Settings) -> CheckItem {
    let cards = &settings.cards;
    let Some(template) = &cards.template_id else {
        return CheckItem::pass(
            "interactive cards off: replies are text (set card_template_id to send them as cards with buttons)",
        );
    };
    let key = &cards.callback_route_key;
    let how = match settings.stream.mode {
        Mode::Stream => format!("clicks come over Stream (card topic {CARD_TOPIC} subscribed)"),
        Mode::Both => format!(
            "clicks come over Stream (card topic {CARD_TOPIC} subscribed); POST /card-callback is served too (route key `{key}`)"
        ),
        Mode::Http => format!(
            "clicks come to POST /card-callback (route key `{key}`, signed with card_callback_secret)"
        ),
    };
    let ops = match &cards.ops_group {
        Some(group) => format!("; /plan in ops_group {group} asks a second admin to approve"),
        None => String::new(),
    };
    let item = CheckItem::pass(format!("interactive cards on: template {template}; {how}{ops}"));
    match settings.stream.mode {
        Mode::Http => item.noting(
            "register the callback address once: dingops check --register-card-callback https://<public address>/card-callback",
        ),
        _ => item,
    }
}

/// Registers `r.url` for HTTP card callbacks under `card_callback_route_key`, with
/// `card_callback_secret` as the key DingTalk signs them with.
pub(super) async fn register(client: &DingTalk, cards: &CardSettings, r: &CardRegistration) -> CheckItem {
    let what = format!(
        "card callback address {} for route key `{}`",
        r.url, cards.callback_route_key
    );
    if let Err(reason) = check_url(&r.url) {
        return CheckItem::fail(
            format!("{what}: {reason}"),
            "give the public address of POST /card-callback, e.g. https://ops.example.com/card-callback",
        );
    }
    let Some(secret) = &cards.callback_secret else {
        return CheckItem::fail(
            format!("{what}: card_callback_secret is not set"),
            "set `card_callback_secret` (env DINGOPS_CARD_CALLBACK_SECRET) to a long random value: DingTalk signs the callbacks with it and dingops checks them with it; then register again",
        );
    };
    let force = if r.force {
        "--force sent forceUpdate: true, so DingTalk replaced any URL the route key had"
    } else {
        "sent forceUpdate: false: DingTalk refuses to move a route key already registered to another URL; --force replaces it"
    };
    match client
        .register_card_callback(&r.url, &cards.callback_route_key, secret, r.force)
        .await
    {
        Ok(()) => CheckItem::pass(format!(
            "registered {what}: DingTalk now posts the clicks on cards sent with that route key there, signed with card_callback_secret"
        ))
        .noting(force),
        Err(e) => {
            let fix = match &e {
                ApiError::Decode(_) if !r.force => {
                    "DingTalk kept another URL for the route key (or answered unexpectedly); run again with --force to replace it".to_owned()
                }
                e => advice(e),
            };
            CheckItem::fail(format!("registering {what}: {e}"), fix).noting(force)
        }
    }
}

/// An http(s) URL with a host and no credentials.
fn check_url(text: &str) -> Result<(), String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("not an http(s) URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a URL with credentials is refused".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_http_address_with_a_host_and_no_credentials_is_registered() {
        assert_eq!(check_url("https://ops.example.com/card-callback"), Ok(()));
        assert_eq!(check_url("http://127.0.0.1:8080/card-callback"), Ok(()));
        for bad in [
            "ops.example.com/card-callback",
            "ftp://ops.example.com/card-callback",
            "https://user:pw@ops.example.com/card-callback",
            "",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let mut env: std::collections::HashMap<String, String> =
            [("DINGOPS_APP_KEY", "k"), ("DINGOPS_APP_SECRET", "s")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        env.extend(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        Settings::from_sources(None, &env).unwrap()
    }

    #[test]
    fn the_cards_line_shows_the_template_and_the_way_back_but_never_the_secret() {
        let off = cards_line(&settings(&[]));
        assert!(off.ok && off.what.starts_with("interactive cards off"), "{off:?}");
        let secret = ("DINGOPS_CARD_CALLBACK_SECRET", "card-hunter2");
        let template = ("DINGOPS_CARD_TEMPLATE_ID", "tpl-9.schema");
        let http = cards_line(&settings(&[secret, template]));
        assert!(http.what.contains("template tpl-9.schema"), "{http:?}");
        assert!(
            http.what.contains("POST /card-callback (route key `dingops`"),
            "{http:?}"
        );
        assert!(http.note.as_deref().unwrap().contains("--register-card-callback"));
        let stream = cards_line(&settings(&[secret, template, ("DINGOPS_MODE", "stream")]));
        assert!(
            stream
                .what
                .contains("card topic /v1.0/card/instances/callback subscribed"),
            "{stream:?}"
        );
        for item in [http, stream] {
            assert!(!format!("{item:?}").contains("card-hunter2"));
        }
    }
}
