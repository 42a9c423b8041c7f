//! The configuration's contract: defaults, precedence, and errors that name the key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::domain::{ChatId, ReplyHost, ReplyHosts};
use secrecy::ExposeSecret;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const MINIMAL: &str = "app_key = \"k\"\napp_secret = \"s\"\n";

#[test]
fn defaults_fill_every_optional_key() {
    let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.dingtalk.oapi_base.as_str(), "https://oapi.dingtalk.com/");
    assert_eq!(s.dingtalk.api_base.as_str(), "https://api.dingtalk.com/");
    assert!(
        !s.worker.trust_is_admin,
        "the payload's isAdmin is not trusted by default"
    );
    assert_eq!(
        s.worker.reply_hosts,
        ReplyHosts::new(vec![ReplyHost::parse("oapi.dingtalk.com").unwrap()])
    );
    assert_eq!(s.server.signature_window_secs, 3600);
    assert_eq!(s.ledger.database, Database::Sqlite(PathBuf::from("dingops.db")));
    assert_eq!(s.ledger.retention_days, 180);
    assert_eq!(s.server.request_timeout_ms, 10_000);
    assert_eq!(s.server.max_connections, 10_000);
    assert!(s.worker.admins.is_empty() && s.worker.groups.is_empty());
    assert_eq!(s.worker.claim_lease, Duration::from_secs(30));
}

#[test]
fn the_claim_lease_is_whole_seconds_from_one_to_an_hour() {
    let s = Settings::from_sources(
        Some("app_key = \"k\"\napp_secret = \"s\"\nclaim_lease_secs = 2\n"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(s.worker.claim_lease, Duration::from_secs(2));
    for bad in ["0", "3601", "soon"] {
        let err =
            Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_CLAIM_LEASE_SECS", bad)])).unwrap_err();
        assert!(err.to_string().contains("`claim_lease_secs`"), "{bad}: {err}");
    }
}

#[test]
fn environment_wins_over_the_file() {
    let s = Settings::from_sources(
        Some("app_key = \"file\"\napp_secret = \"s\"\nadmins = [\"a\"]\n"),
        &env(&[("DINGOPS_APP_KEY", "env"), ("DINGOPS_ADMINS", "x, y,")]),
    )
    .unwrap();
    assert_eq!(s.dingtalk.app_key, "env");
    assert_eq!(s.worker.admins, vec!["x", "y"]);
}

#[test]
fn a_missing_secret_names_the_key_and_its_variable() {
    let err = Settings::from_sources(Some("app_key = \"k\""), &env(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "configuration key `app_secret` (env DINGOPS_APP_SECRET) is required"
    );
}

#[test]
fn a_bad_value_names_the_key() {
    let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_SIGNATURE_WINDOW_SECS", "soon")]))
        .unwrap_err();
    assert!(err.to_string().contains("`signature_window_secs`"), "{err}");
    let err =
        Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_TRUST_IS_ADMIN", "maybe")])).unwrap_err();
    assert!(err.to_string().contains("`trust_is_admin`"), "{err}");
}

#[test]
fn an_unknown_file_key_is_refused() {
    let err = Settings::from_sources(Some("app_key=\"k\"\napp_secert=\"s\""), &env(&[])).unwrap_err();
    assert!(err.to_string().contains("unknown key `app_secert`"), "{err}");
}

#[test]
fn groups_from_the_environment_split_at_the_last_equals_sign() {
    let s = Settings::from_sources(
        Some(MINIMAL),
        &env(&[("DINGOPS_GROUPS", "cidAAA===chat1, cidBB=chat2")]),
    )
    .unwrap();
    assert_eq!(s.worker.groups.get("cidAAA==").map(ChatId::as_str), Some("chat1"));
    assert_eq!(s.worker.groups.get("cidBB").map(ChatId::as_str), Some("chat2"));
}

#[test]
fn groups_from_the_file_are_a_table() {
    let s = Settings::from_sources(
        Some("app_key=\"k\"\napp_secret=\"s\"\n[groups]\n\"cidX==\" = \"chatX\"\n"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(s.worker.groups.get("cidX==").map(ChatId::as_str), Some("chatX"));
}

#[test]
fn debug_output_redacts_the_secret() {
    let s = Settings::from_sources(Some("app_key=\"k\"\napp_secret=\"hunter2-secret\""), &env(&[])).unwrap();
    assert_eq!(s.dingtalk.app_secret.expose_secret(), "hunter2-secret");
    assert!(!format!("{s:?}").contains("hunter2-secret"));
}

#[test]
fn the_known_keys_are_every_documented_key_once() {
    let keys = Settings::known_keys();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "a key is read twice: {keys:?}");
    for key in [
        "listen",
        "app_key",
        "app_secret",
        "reply_hosts",
        "groups",
        "database",
        "robot_code",
        "timezone",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert_eq!(keys.len(), 41);
}

#[test]
fn a_postgres_url_selects_postgresql_and_never_shows_its_password() {
    for url in [
        "postgres://dingops:hunter2-pw@db.internal:5433/ops",
        "postgresql://dingops:hunter2-pw@db.internal:5433/ops?sslmode=disable",
    ] {
        let s = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_DATABASE", url)])).unwrap();
        let Database::Postgres(pg) = &s.ledger.database else {
            panic!("{url} is not read as PostgreSQL");
        };
        assert!(!pg.tls());
        assert_eq!(s.ledger.database.sqlite_path(), None);
        let config = pg.config().unwrap();
        assert_eq!(config.get_password(), Some(&b"hunter2-pw"[..]));
        assert_eq!(config.get_ports(), [5433]);
        assert_eq!(config.get_dbname(), Some("ops"));
        for shown in [
            s.ledger.database.to_string(),
            format!("{:?}", s.ledger.database),
            format!("{s:?}"),
        ] {
            assert!(!shown.contains("hunter2-pw"), "{shown}");
        }
        assert!(
            s.ledger.database.to_string().starts_with(&format!(
                "{}://dingops:***@db.internal:5433/ops",
                &url[..url.find(':').unwrap()]
            )),
            "{}",
            s.ledger.database
        );
    }
    let with_param = Database::parse("postgres://u@h/db?password=hunter2-pw&sslmode=require").unwrap();
    let Database::Postgres(pg) = &with_param else {
        panic!("not PostgreSQL");
    };
    assert!(pg.tls(), "sslmode=require asks for TLS");
    assert!(!with_param.to_string().contains("hunter2-pw"), "{with_param}");
    assert_eq!(
        Database::parse(" ledger.db ").unwrap(),
        Database::Sqlite(PathBuf::from("ledger.db"))
    );
}

#[test]
fn a_bad_database_value_is_refused_without_repeating_it() {
    for bad in [
        "postgres://u:hunter2-pw@h/db?sslmode=prefer",
        "postgres://u:hunter2-pw@h:notaport/db",
        "postgres://u:hunter2-pw@h/db?bogus_option=1",
        "postgres://:hunter2-pw@/db",
        "mysql://u:hunter2-pw@h/db",
        "  ",
    ] {
        let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_DATABASE", bad)])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`database`"), "{bad}: {text}");
        assert!(!text.contains("hunter2-pw"), "{bad}: {text}");
    }
}

#[test]
fn the_timezone_defaults_to_shanghai_and_refuses_unknown_names() {
    let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
    assert_eq!(s.worker.timezone.iana_name(), Some("Asia/Shanghai"));
    let s = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_TIMEZONE", "Europe/Berlin")])).unwrap();
    assert_eq!(s.worker.timezone.iana_name(), Some("Europe/Berlin"));
    let e = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_TIMEZONE", "Mars/Olympus")])).unwrap_err();
    assert!(e.to_string().contains("timezone"), "{e}");
}

#[test]
fn stream_mode_is_off_unless_asked_for() {
    let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
    assert_eq!(s.stream.mode, Mode::Http);
    assert_eq!((s.stream.connections, s.stream.keepalive_secs), (1, 30));
    assert_eq!(s.dingtalk.proxy, None);
    let s = Settings::from_sources(
        Some("app_key=\"k\"\napp_secret=\"s\"\nmode=\"both\"\nstream_connections=3\n"),
        &env(&[("DINGOPS_MODE", "Stream"), ("DINGOPS_STREAM_KEEPALIVE_SECS", "2")]),
    )
    .unwrap();
    assert_eq!(s.stream.mode, Mode::Stream);
    assert_eq!((s.stream.connections, s.stream.keepalive_secs), (3, 2));
    let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_MODE", "websocket")])).unwrap_err();
    assert!(err.to_string().contains("`mode`"), "{err}");
}

#[test]
fn reconciling_is_off_by_default_and_needs_a_policy_and_a_duration() {
    let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
    assert_eq!(s.fleet.policy, None);
    assert_eq!(s.fleet.reconcile_every, None);
    assert_eq!(s.fleet.dm_reapply_hours, 24);
    let s = Settings::from_sources(
        Some("app_key=\"k\"\napp_secret=\"s\"\npolicy=\"fleet.toml\"\nreconcile_every=\"90m\"\n"),
        &env(&[("DINGOPS_DM_REAPPLY_HOURS", "6")]),
    )
    .unwrap();
    assert_eq!(s.fleet.policy, Some(PathBuf::from("fleet.toml")));
    assert_eq!(s.fleet.reconcile_every, Some(Duration::from_secs(90 * 60)));
    assert_eq!(s.fleet.dm_reapply_hours, 6);
    let off = Settings::from_sources(
        Some("app_key=\"k\"\napp_secret=\"s\"\npolicy=\"p.toml\"\nreconcile_every=\"off\"\n"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(off.fleet.reconcile_every, None);
    for (vars, key) in [
        (vec![("DINGOPS_RECONCILE_EVERY", "1h")], "`reconcile_every`"),
        (
            vec![("DINGOPS_POLICY", "p.toml"), ("DINGOPS_RECONCILE_EVERY", "soon")],
            "`reconcile_every`",
        ),
        (
            vec![("DINGOPS_POLICY", "p.toml"), ("DINGOPS_RECONCILE_EVERY", "10ms")],
            "`reconcile_every`",
        ),
        (vec![("DINGOPS_DM_REAPPLY_HOURS", "0")], "`dm_reapply_hours`"),
    ] {
        let err = Settings::from_sources(Some(MINIMAL), &env(&vars)).unwrap_err();
        assert!(err.to_string().contains(key), "{vars:?}: {err}");
    }
}

#[test]
fn a_proxy_is_an_http_host_and_port_without_credentials() {
    let s =
        Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_PROXY", "http://10.0.0.1:3128")])).unwrap();
    let proxy = s.dingtalk.proxy.unwrap();
    assert_eq!((proxy.host.as_str(), proxy.port), ("10.0.0.1", 3128));
    assert_eq!(ProxyAddr::parse("http://proxy.corp").unwrap().port, 80);
    assert_eq!(
        ProxyAddr::parse("http://[::1]:8080").unwrap().authority(),
        "[::1]:8080"
    );
    for bad in [
        "https://p:1",
        "http://u:pw@p:1",
        "http://p:1/path",
        "socks5://p:1",
        "p:1",
    ] {
        let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_PROXY", bad)])).unwrap_err();
        assert!(err.to_string().contains("`proxy`"), "{bad}: {err}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }
}

#[test]
fn a_variable_is_text_and_a_file_value_keeps_its_toml_type() {
    let s = Settings::from_sources(
        Some(MINIMAL),
        &env(&[("DINGOPS_APP_KEY", "0123"), ("DINGOPS_TRUST_IS_ADMIN", "yes")]),
    )
    .unwrap();
    assert_eq!(s.dingtalk.app_key, "0123");
    assert!(s.worker.trust_is_admin);
    for (file, message) in [
        ("trust_is_admin = \"yes\"", "expected true or false, found string"),
        (
            "signature_window_secs = \"60\"",
            "expected a whole number from 1 to 86400",
        ),
        (
            "robot_code = 1979-05-27T07:32:00Z",
            "expected a string, found datetime",
        ),
        ("admins = [1]", "list items must be strings, found integer"),
    ] {
        let err = Settings::from_sources(Some(&format!("{MINIMAL}{file}\n")), &env(&[])).unwrap_err();
        assert!(err.to_string().contains(message), "{file}: {err}");
    }
}

#[test]
fn the_monthly_budget_is_off_by_default_and_keeps_a_fifth_for_interactive_calls() {
    use crate::quota::{Budget, Reserve};
    let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
    assert_eq!(s.dingtalk.quota, Budget::default());
    let s = Settings::from_sources(
        Some(&format!("{MINIMAL}monthly_call_budget = 5000\n")),
        &env(&[("DINGOPS_INTERACTIVE_RESERVE", "750")]),
    )
    .unwrap();
    assert_eq!(s.dingtalk.quota.monthly, Some(5000));
    assert_eq!(s.dingtalk.quota.reserve, Reserve::Calls(750));
    let s = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_MONTHLY_CALL_BUDGET", "5000")])).unwrap();
    assert_eq!(s.dingtalk.quota.reserve_calls(), 1000);
    for bad in ["0", "lots", "-5"] {
        let e =
            Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_MONTHLY_CALL_BUDGET", bad)])).unwrap_err();
        assert!(e.to_string().contains("monthly_call_budget"), "{e}");
    }
    let e =
        Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_INTERACTIVE_RESERVE", "120%")])).unwrap_err();
    assert!(e.to_string().contains("interactive_reserve"), "{e}");
}

#[test]
fn reconcile_every_auto_needs_a_monthly_budget() {
    let policy = "policy = \"fleet.toml\"\nreconcile_every = \"auto\"\n";
    let e = Settings::from_sources(Some(&format!("{MINIMAL}{policy}")), &env(&[])).unwrap_err();
    assert!(e.to_string().contains("monthly_call_budget"), "{e}");
    let s = Settings::from_sources(
        Some(&format!("{MINIMAL}{policy}monthly_call_budget = \"5000\"\n")),
        &env(&[]),
    )
    .unwrap();
    assert!(s.fleet.reconcile_auto);
    assert_eq!(s.fleet.reconcile_every, None);
}

#[test]
fn cards_are_off_by_default_and_their_route_key_is_dingops() {
    let s = Settings::from_sources(Some(MINIMAL), &env(&[])).unwrap();
    assert!(!s.cards.enabled());
    assert_eq!(s.cards.template_id, None);
    assert!(s.cards.callback_secret.is_none());
    assert_eq!(s.cards.callback_route_key, "dingops");
    assert_eq!(s.cards.callback_window_secs, 60);
    assert_eq!(s.cards.ops_group, None);
    // The example file's empty strings mean "not set".
    let s = Settings::from_sources(
        Some("app_key=\"k\"\napp_secret=\"s\"\ncard_template_id=\"\"\ncard_callback_secret=\"\"\nops_group=\" \"\n"),
        &env(&[]),
    )
    .unwrap();
    assert!(!s.cards.enabled() && s.cards.callback_secret.is_none() && s.cards.ops_group.is_none());
}

#[test]
fn card_keys_come_from_the_environment_and_the_secret_is_never_shown() {
    let s = Settings::from_sources(
        Some(MINIMAL),
        &env(&[
            ("DINGOPS_CARD_TEMPLATE_ID", " 1a2b3c-4d5e.schema "),
            ("DINGOPS_CARD_CALLBACK_SECRET", "card-hunter2"),
            ("DINGOPS_CARD_CALLBACK_ROUTE_KEY", "ops_cards-1.prod"),
            ("DINGOPS_OPS_GROUP", "cidOpsGroup0000000=="),
        ]),
    )
    .unwrap();
    assert!(s.cards.enabled());
    assert_eq!(s.cards.template_id.as_deref(), Some("1a2b3c-4d5e.schema"));
    assert_eq!(
        s.cards.callback_secret.as_ref().map(|x| x.expose_secret()),
        Some("card-hunter2")
    );
    assert_eq!(s.cards.callback_route_key, "ops_cards-1.prod");
    assert_eq!(s.cards.ops_group.as_deref(), Some("cidOpsGroup0000000=="));
    assert!(!format!("{s:?}").contains("card-hunter2"));
}

#[test]
fn a_card_template_in_http_or_both_mode_needs_the_callback_secret() {
    for mode in ["http", "both"] {
        let err = Settings::from_sources(
            Some(MINIMAL),
            &env(&[("DINGOPS_CARD_TEMPLATE_ID", "t.schema"), ("DINGOPS_MODE", mode)]),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "configuration key `card_callback_secret` (env DINGOPS_CARD_CALLBACK_SECRET): is required with `card_template_id`"
            ),
            "{mode}: {err}"
        );
    }
    let s = Settings::from_sources(
        Some(MINIMAL),
        &env(&[
            ("DINGOPS_CARD_TEMPLATE_ID", "t.schema"),
            ("DINGOPS_MODE", "stream"),
        ]),
    )
    .unwrap();
    assert!(s.cards.enabled() && s.cards.callback_secret.is_none());
    // A secret without a template is harmless: cards stay off.
    let s = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_CARD_CALLBACK_SECRET", "x")])).unwrap();
    assert!(!s.cards.enabled());
}

#[test]
fn the_ops_group_must_be_an_open_conversation_id() {
    for bad in ["chat0123456789abcdef", "Ops group", "cid with space=="] {
        let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_OPS_GROUP", bad)])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("configuration key `ops_group` (env DINGOPS_OPS_GROUP): expected the group's openConversationId"),
            "{bad}: {err}"
        );
    }
    let long = format!("cid{}", "a".repeat(300));
    assert!(Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_OPS_GROUP", &long)])).is_err());
}

#[test]
fn a_bad_template_id_or_route_key_names_its_key() {
    for (key, var, bad) in [
        ("card_template_id", "DINGOPS_CARD_TEMPLATE_ID", "two words"),
        (
            "card_callback_route_key",
            "DINGOPS_CARD_CALLBACK_ROUTE_KEY",
            "a/b",
        ),
        (
            "card_callback_route_key",
            "DINGOPS_CARD_CALLBACK_ROUTE_KEY",
            &"k".repeat(65),
        ),
    ] {
        let err = Settings::from_sources(
            Some(MINIMAL),
            &env(&[(var, bad), ("DINGOPS_CARD_CALLBACK_SECRET", "x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains(&format!("`{key}`")), "{bad}: {err}");
    }
    let err = Settings::from_sources(
        Some("app_key=\"k\"\napp_secret=\"s\"\ncard_template_id=5\n"),
        &env(&[]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "configuration key `card_template_id` (env DINGOPS_CARD_TEMPLATE_ID): expected a string, found integer"
    );
}

#[test]
fn the_card_callback_window_is_one_to_six_hundred_seconds() {
    let s = Settings::from_sources(
        Some("app_key=\"k\"\napp_secret=\"s\"\ncard_callback_window_secs=30\n"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(s.cards.callback_window_secs, 30);
    let s = Settings::from_sources(
        Some(MINIMAL),
        &env(&[("DINGOPS_CARD_CALLBACK_WINDOW_SECS", "600")]),
    )
    .unwrap();
    assert_eq!(s.cards.callback_window_secs, 600);
    for bad in ["0", "601", "3600", "a minute"] {
        let err = Settings::from_sources(Some(MINIMAL), &env(&[("DINGOPS_CARD_CALLBACK_WINDOW_SECS", bad)]))
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "configuration key `card_callback_window_secs` (env DINGOPS_CARD_CALLBACK_WINDOW_SECS):"
            ),
            "{bad}: {err}"
        );
    }
}
