//! Micro-benchmarks of the callback's hot path, with a raw HMAC-SHA256 of the same input as
//! the floor to compare signature verification against.
//! Run: cargo bench --bench hot_path
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dingops::clock::now_ms;
use dingops::command::Command;
use dingops::ingress::payload::Callback;
use dingops::ingress::signature::Verifier;
use dingtalk_sim::chat::{Chat, Member, text_message};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::SecretString;
use sha2::Sha256;

const SECRET: &str = "demo-app-secret-not-for-production";

fn signature(c: &mut Criterion) {
    let verifier = Verifier::new(SecretString::from(SECRET.to_owned()), 3600);
    let now = now_ms();
    let ts = now.to_string();
    let sign = verifier.sign(&ts);
    let message = format!("{ts}\n{SECRET}");
    c.bench_function(
        "floor: raw HMAC-SHA256 of timestamp+secret (key setup included)",
        |b| {
            b.iter(|| {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(black_box(message.as_bytes()));
                black_box(mac.finalize().into_bytes())
            })
        },
    );
    c.bench_function("verify a valid signature", |b| {
        b.iter(|| verifier.verify_at(Some(black_box(&ts)), Some(black_box(&sign)), now))
    });
    let forged = Verifier::new(SecretString::from("wrong".to_owned()), 3600).sign(&ts);
    c.bench_function("reject a forged signature", |b| {
        b.iter(|| verifier.verify_at(Some(black_box(&ts)), Some(black_box(&forged)), now))
    });
}

fn payload(c: &mut Criterion) {
    let chat = Chat {
        open_conversation_id: "cidBenchGroup0000000==".into(),
        title: "bench group".into(),
        conversation_type: "2".into(),
        session_webhook: "https://oapi.dingtalk.com/robot/sendBySession?session=0123456789abcdef".into(),
        session_expires_ms: now_ms() + 5_400_000,
    };
    let body = text_message(
        "msg0123456789abcdef",
        &chat,
        &Member::new("manager01", "Ada", true),
        "/lock-dm",
    )
    .to_string();
    c.bench_function("parse a callback payload", |b| {
        b.iter(|| Callback::parse(black_box(body.as_bytes())).unwrap())
    });
}

fn commands(c: &mut Criterion) {
    c.bench_function("parse /lock-dm", |b| {
        b.iter(|| Command::parse(black_box(" /lock-dm")))
    });
    c.bench_function("parse /绑定 with a chatid", |b| {
        b.iter(|| Command::parse(black_box("/绑定 chat0123456789abcdef")))
    });
    c.bench_function("parse plain text (not a command)", |b| {
        b.iter(|| Command::parse(black_box("hello, could someone lock this group please")))
    });
}

criterion_group!(benches, signature, payload, commands);
criterion_main!(benches);
