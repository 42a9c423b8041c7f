//! Property tests: nothing that can arrive from the network panics the verifier, the payload
//! parser or the command parser, and the parsers agree with the command table.

use dingops::command::{COMMANDS, Command, CommandKind, ParseError};
use dingops::ingress::payload::Callback;
use dingops::ingress::signature::{SignatureError, Verifier};
use proptest::prelude::*;
use secrecy::SecretString;

fn verifier(secret: &str, window_secs: u64) -> Verifier {
    Verifier::new(SecretString::from(secret.to_owned()), window_secs)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_verifier_never_panics_on_arbitrary_headers(
        ts in proptest::option::of(".{0,40}"),
        sign in proptest::option::of(".{0,100}"),
        now in any::<u64>(),
    ) {
        let _ = verifier("s", 3600).verify_at(ts.as_deref(), sign.as_deref(), now);
    }

    #[test]
    fn signing_then_verifying_succeeds_inside_the_window(
        secret in "[ -~]{1,64}",
        ts in 1_000_000_000_000u64..4_000_000_000_000,
        skew in -3_600_000i64..=3_600_000,
    ) {
        let v = verifier(&secret, 3600);
        let t = ts.to_string();
        let now = ts.saturating_add_signed(skew);
        prop_assert_eq!(v.verify_at(Some(&t), Some(&v.sign(&t)), now), Ok(()));
    }

    #[test]
    fn signing_then_verifying_fails_outside_the_window(
        ts in 1_000_000_000_000u64..4_000_000_000_000,
        beyond in 1u64..1_000_000_000,
        later in any::<bool>(),
    ) {
        let v = verifier("secret", 3600);
        let t = ts.to_string();
        let now = if later { ts + 3_600_000 + beyond } else { ts - 3_600_000 - beyond };
        prop_assert_eq!(v.verify_at(Some(&t), Some(&v.sign(&t)), now), Err(SignatureError::Stale));
    }

    #[test]
    fn a_signature_from_another_secret_never_verifies(
        a in "[a-z]{8,20}",
        b in "[a-z]{8,20}",
        ts in 1_000_000_000_000u64..4_000_000_000_000,
    ) {
        prop_assume!(a != b);
        let t = ts.to_string();
        let forged = verifier(&b, 3600).sign(&t);
        prop_assert_eq!(verifier(&a, 3600).verify_at(Some(&t), Some(&forged), ts), Err(SignatureError::Mismatch));
    }

    #[test]
    fn the_payload_parser_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Callback::parse(&body);
    }

    #[test]
    fn the_payload_parser_never_panics_on_arbitrary_json(v in arb_json()) {
        let _ = Callback::parse(v.to_string().as_bytes()).map(|cb| cb.text());
    }

    #[test]
    fn the_command_parser_never_panics_and_bounds_what_it_echoes(text in any::<String>()) {
        match Command::parse(&text) {
            Err(ParseError::Unknown(name))
            | Err(ParseError::InvalidChatId(name))
            | Err(ParseError::InvalidCode(name))
            | Err(ParseError::BadChoice { got: name, .. }) => prop_assert!(name.len() <= 64),
            _ => {}
        }
    }

    #[test]
    fn every_name_and_alias_parses_to_its_command_around_any_mentions_and_spacing(
        index in 0..COMMANDS.len(),
        alias in any::<bool>(),
        mentions in proptest::collection::vec("@[^\\s]{1,12}", 0..4),
        lead in "[ \\t\\n]{0,3}",
        trail in "[ \\t\\n]{0,3}",
        chatid in "chat[a-zA-Z0-9]{1,32}",
        code in "[A-Z2-9]{8}",
    ) {
        let spec = &COMMANDS[index];
        let word = if alias { spec.alias } else { spec.name };
        let mut text = format!("{lead}{}", mentions.join(" "));
        text.push(' ');
        text.push_str(word);
        if spec.kind == CommandKind::Bind {
            text.push(' ');
            text.push_str(&chatid);
        }
        if spec.kind == CommandKind::Apply {
            text.push(' ');
            text.push_str(&code);
        }
        if let Some(choice) = spec.choices().first() {
            text.push(' ');
            text.push_str(if alias { choice.zh } else { choice.en });
        }
        text.push_str(&trail);
        let cmd = Command::parse(&text);
        prop_assert!(cmd.is_ok(), "{:?} → {:?}", text, cmd);
        let cmd = cmd.unwrap();
        prop_assert_eq!(cmd.kind(), spec.kind);
        if let Command::Bind { chatid: parsed } = &cmd {
            prop_assert_eq!(parsed.as_str(), chatid.as_str());
        }
        if let Command::Apply { code: parsed } = &cmd {
            prop_assert_eq!(parsed, &code);
        }
    }

    #[test]
    fn control_characters_and_long_arguments_are_refused_not_accepted(
        index in 0..COMMANDS.len(),
        junk in "[\\x00-\\x1f\\u{7f}-\\u{10ffff}]{1,300}".prop_filter("not only spaces", |s| s.chars().any(|c| !c.is_whitespace())),
    ) {
        let spec = &COMMANDS[index];
        let text = format!("{} {junk}x", spec.name);
        // The junk is one or more arguments: commands without arguments refuse them, /bind
        // refuses anything that is not a plain chatid, /apply anything that is not a code.
        prop_assert!(Command::parse(&text).is_err(), "{:?}", text);
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        ".{0,20}".prop_map(serde_json::Value::String),
    ];
    let keys = prop_oneof![
        Just("msgId".to_owned()),
        Just("msgtype".to_owned()),
        Just("conversationId".to_owned()),
        Just("conversationType".to_owned()),
        Just("sessionWebhook".to_owned()),
        Just("sessionWebhookExpiredTime".to_owned()),
        Just("createAt".to_owned()),
        Just("text".to_owned()),
        Just("content".to_owned()),
        Just("isAdmin".to_owned()),
        Just("senderStaffId".to_owned()),
        "[a-zA-Z]{1,8}",
    ];
    leaf.prop_recursive(4, 64, 10, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(keys.clone(), inner, 0..12)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
