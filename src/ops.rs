//! `dingops check`: the configuration tried against reality, as a list of items
//! (`crate::cli` prints it).

mod cards;

use std::sync::Arc;
use std::time::Duration;

use crate::advice::advice;
use crate::clock::Clock;
use crate::config::{DingTalkSettings, Settings};
use crate::dingtalk::DingTalk;
use crate::ledger::{Database, LedgerHandle};
use crate::telemetry::Metrics;

/// One line of the `check` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    pub ok: bool,
    pub what: String,
    /// What to do when it failed.
    pub fix: Option<String>,
    /// What the operator should know about it, failed or not.
    pub note: Option<String>,
}

impl CheckItem {
    fn pass(what: impl Into<String>) -> Self {
        Self {
            ok: true,
            what: what.into(),
            fix: None,
            note: None,
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            ok: false,
            what: what.into(),
            fix: Some(fix.into()),
            note: None,
        }
    }

    fn noting(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// `dingops check --register-card-callback <url> [--force]`: the address to register for
/// HTTP card callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRegistration {
    /// The public address of `POST /card-callback`.
    pub url: String,
    /// `forceUpdate`: replace the URL the route key has, if any.
    pub force: bool,
}

/// Checks the configuration against reality: the ledger, both tokens with the real
/// credentials, and every static binding with `convertToOpenConversationId`; with
/// `register`, registers the card callback address too. The one function that takes all
/// of [`Settings`]: checking every section is its job. The ledger and the client read the
/// time from `clock`.
pub async fn check(
    settings: &Settings,
    register: Option<&CardRegistration>,
    clock: Arc<dyn Clock>,
) -> Vec<CheckItem> {
    let mut items = vec![CheckItem::pass(format!(
        "configuration is valid (app_key {}, listen {})",
        settings.dingtalk.app_key, settings.server.listen
    ))];
    if let Some(path) = &settings.fleet.policy {
        items.push(match crate::governance::policy::Policy::load(path) {
            Ok(policy) => CheckItem::pass(format!(
                "policy {} is valid ({} rules)",
                path.display(),
                policy.rules.len()
            )),
            Err(e) => CheckItem::fail(
                e.to_string(),
                "correct the policy file; `serve` refuses to start with it",
            ),
        });
    }
    let (item, ledger) = check_ledger(&settings.ledger.database, clock.clone()).await;
    items.push(item);
    if settings.worker.admins.is_empty() && !settings.worker.trust_is_admin {
        items.push(CheckItem::fail(
            "nobody may run admin commands",
            "list the staffIds of the admins in `admins`",
        ));
    }
    // A running `serve` may share the app's rate budget through the ledger: check's calls
    // draw on it too. Without a ledger they are paced here alone.
    let metrics = Arc::new(Metrics::new());
    let client = match ledger {
        Some(ledger) => DingTalk::with_budget(&settings.dingtalk, metrics, ledger, clock),
        None => DingTalk::new(&settings.dingtalk, metrics, clock),
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            items.push(CheckItem::fail(
                format!("DingTalk client: {e}"),
                "check oapi_base and api_base",
            ));
            return items;
        }
    };
    items.push(match client.quota_usage().await {
        Ok(usage) if usage.spent => CheckItem::fail(
            usage.line(),
            format!(
                "DingTalk refuses counted calls until the month rolls over ({}); see The monthly quota in the README",
                crate::dingtalk::quota::renews_text(&usage.month, client.quota_timezone())
            ),
        ),
        Ok(usage) => CheckItem::pass(usage.line()),
        Err(e) => CheckItem::fail(
            format!("monthly API quota: {e}"),
            "check that the ledger is reachable",
        ),
    });
    let (legacy, modern) = client.check_tokens().await;
    for (name, result) in [
        (
            format!("legacy access token from {}gettoken", settings.dingtalk.oapi_base),
            legacy,
        ),
        (
            format!(
                "new access token from {}v1.0/oauth2/accessToken",
                settings.dingtalk.api_base
            ),
            modern,
        ),
    ] {
        items.push(match result {
            Ok(()) => CheckItem::pass(name),
            Err(e) => CheckItem::fail(format!("{name}: {e}"), advice(&e)),
        });
    }
    items.push(cards::cards_line(settings));
    if settings.stream.mode.stream() {
        items.push(check_stream(&settings.dingtalk, settings.cards.enabled()).await);
    }
    if let Some(register) = register {
        items.push(cards::register(&client, &settings.cards, register).await);
    }
    for (cid, chatid) in &settings.worker.groups {
        let what = format!("binding {cid} → {chatid}");
        items.push(match client.open_conversation_id(chatid).await {
            Ok(found) if &found == cid => CheckItem::pass(what),
            Ok(found) => CheckItem::fail(
                format!("{what}: DingTalk says {chatid} is group {found}"),
                "correct the pair in [groups], or bind the group with /bind in its chat",
            ),
            Err(e) => CheckItem::fail(format!("{what}: {e}"), advice(&e)),
        });
    }
    items
}

/// Opens the ledger and writes to it; the ledger, when it works, paces check's calls.
async fn check_ledger(database: &Database, clock: Arc<dyn Clock>) -> (CheckItem, Option<LedgerHandle>) {
    let opened = match crate::ledger::open(database, clock).await {
        Ok(opened) => opened.call(|l| l.ping()).await.map(|()| opened),
        Err(e) => Err(e),
    };
    match opened {
        Ok(opened) => (
            CheckItem::pass(format!("ledger {database} opens and takes a write")),
            Some(opened),
        ),
        Err(e) => (
            CheckItem::fail(
                format!("ledger {database} does not open: {e}"),
                match database {
                    Database::Sqlite(_) => "check the `database` path, its directory and permissions",
                    Database::Postgres(_) => {
                        "check the `database` URL: host, port, user, password, database name and sslmode"
                    }
                },
            ),
            None,
        ),
    }
}

/// Opens one Stream connection with the real credentials (subscribing what `serve` would:
/// the card topic too with `cards`) and closes it again.
async fn check_stream(dingtalk: &DingTalkSettings, cards: bool) -> CheckItem {
    use crate::ingress::stream::dial::{DialError, Dialer};
    let what = format!(
        "Stream connection through {}v1.0/gateway/connections/open",
        dingtalk.api_base
    );
    let dialer = match Dialer::new(dingtalk) {
        Ok(d) => d.with_cards(cards),
        Err(e) => return CheckItem::fail(format!("{what}: {e}"), "check api_base and proxy"),
    };
    match dialer.dial().await {
        Ok((mut socket, endpoint)) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
            CheckItem::pass(format!(
                "{what}: connected to {}",
                endpoint.host_str().unwrap_or_default()
            ))
        }
        Err(e @ DialError::Refused { .. }) => CheckItem::fail(
            format!("{what}: {e}"),
            "copy the AppKey and AppSecret of the app into `app_key` and `app_secret`, and set the robot's message receiving mode to Stream mode",
        ),
        Err(e @ DialError::Insecure { .. }) => CheckItem::fail(
            format!("{what}: {e}"),
            "point `api_base` at DingTalk (https://api.dingtalk.com), whose connections/open hands out wss:// endpoints",
        ),
        Err(e) => CheckItem::fail(
            format!("{what}: {e}"),
            "allow outbound HTTPS to api.dingtalk.com:443 and wss-open-connection.dingtalk.com:443, or set `proxy`",
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::printable;
    use std::borrow::Cow;

    #[test]
    fn printable_escapes_terminal_controls_and_bidi_overrides_but_keeps_other_text() {
        assert!(matches!(printable("张三 (admin01)"), Cow::Borrowed(_)));
        assert_eq!(printable("\u{1b}[2J\u{1b}[Hroot"), "\\u{1b}[2J\\u{1b}[Hroot");
        assert_eq!(printable("a\u{9b}2Jb\u{7f}"), "a\\u{9b}2Jb\\u{7f}");
        assert_eq!(printable("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(printable("line\nbreak\r"), "line\\u{a}break\\u{d}");
    }
}
