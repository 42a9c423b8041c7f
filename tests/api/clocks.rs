//! Replicas whose clocks disagree: leases, the rate budget and revert due times go by the
//! ledger's clock, never a replica's own. The skewed replica is the real binary with its
//! wall clock (`CLOCK_REALTIME`) moved by a small `LD_PRELOAD` library the test builds with
//! the machine's C compiler; its monotonic clock, which tokio's timers use, is left alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{SchemaDatabase as _, TestSchema};
use dingops::ledger::prelude::*;
use dingtalk_sim::chat::{CallbackSender, new_msg_id, text_message};
use dingtalk_sim::{Fault, SimConfig, api};
use secrecy::SecretString;

use crate::helpers::*;

/// A shared library that moves `CLOCK_REALTIME` (and its coarse twin) by `DINGOPS_TEST_SKEW_MS`
/// milliseconds, leaving every other clock as it is.
const SKEW_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) {
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    }
    int r = real_clock_gettime(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        const char *s = getenv("DINGOPS_TEST_SKEW_MS");
        long long skew = s ? atoll(s) : 0;
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + skew * 1000000LL;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return r;
}
"#;

/// Builds the shim in `dir` with the machine's C compiler; its path.
fn build_skew_shim(dir: &Path) -> PathBuf {
    let source = dir.join("skew.c");
    let library = dir.join("skew.so");
    std::fs::write(&source, SKEW_SHIM).unwrap();
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) to build the clock shim");
    assert!(status.success(), "cc failed to build the clock shim");
    library
}

/// Whether a process started with the shim sees its wall clock moved by `skew_ms`: `date`
/// reads `CLOCK_REALTIME` through the same libc call Rust's `SystemTime` makes.
fn shim_moves_the_clock(library: &Path, skew_ms: i64) -> bool {
    let out = std::process::Command::new("date")
        .arg("+%s")
        .env("LD_PRELOAD", library)
        .env("DINGOPS_TEST_SKEW_MS", skew_ms.to_string())
        .output()
        .unwrap();
    let theirs: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let ours = i64::try_from(dingops::clock::now_ms() / 1000).unwrap();
    (theirs - ours - skew_ms / 1000).abs() <= 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_clock_runs_35_s_ahead_never_runs_a_command_another_replica_holds() {
    const LEASE_SECS: u64 = 30;
    const SKEW_MS: i64 = 35_000;
    let Some(schema) = TestSchema::or_skip() else {
        return;
    };
    let schema = Arc::new(schema);
    let dir = tempfile::tempdir().unwrap();
    let shim = build_skew_shim(dir.path());
    assert!(
        shim_moves_the_clock(&shim, SKEW_MS),
        "the clock shim has no effect here; the test would prove nothing"
    );
    let sim = new_sim(SimConfig {
        rate_limit_per_sec: 0,
        ..SimConfig::default()
    });
    let common = vec![
        ("DINGOPS_DATABASE", schema.url().to_owned()),
        ("DINGOPS_CLAIM_LEASE_SECS", LEASE_SECS.to_string()),
        ("DINGOPS_ADMIN_COMMANDS_PER_MINUTE", "0".to_owned()),
        // DingTalk's slow answer is awaited, not retried.
        ("DINGOPS_UPSTREAM_TIMEOUT_MS", "15000".to_owned()),
    ];
    let mut skewed = common.clone();
    skewed.push(("LD_PRELOAD", shim.display().to_string()));
    skewed.push(("DINGOPS_TEST_SKEW_MS", SKEW_MS.to_string()));
    let skewed_log = dir.path().join("skewed.log");
    let ports = [free_port(), free_port()];
    let unused = Path::new("unused.db");
    let children = [
        Reaper(spawn_binary(&sim, ports[0], unused, &common)),
        Reaper(spawn_binary_logging_to(
            &sim,
            ports[1],
            unused,
            &skewed,
            std::fs::File::create(&skewed_log).unwrap().into(),
        )),
    ];
    for port in ports {
        wait_healthy(port).await;
    }

    // DingTalk takes 8 s to answer the group update: the command runs on the replica with
    // the right clock, which holds the group for the lease's 30 s, while the other replica
    // reads the same open command from the ledger. By its own clock that lease ended 5 s
    // before it began.
    sim.inject(api::GROUP_UPDATE, Fault::Delay { ms: 8000 });
    let sender = CallbackSender::new(
        &format!("http://127.0.0.1:{}", ports[0]),
        SecretString::from(sim.config().app_secret.clone()),
    );
    let msg_id = new_msg_id();
    let body = text_message(&msg_id, &session_chat(&sim, GROUP), &admin(), "/searchable on");
    assert_eq!(sender.send(&body).await.unwrap().0, 200);
    let sent = tokio::time::Instant::now();

    let replies = eventually(Duration::from_secs(20), || !sim.replies().is_empty()).await;
    assert!(replies, "no reply: {:#?}", sim.replies());
    // The simulator records a call when it answers it: wait until the slow answer is in,
    // with time for a second run to show itself had the other replica started one.
    tokio::time::sleep_until(sent + Duration::from_secs(12)).await;

    let updates = sim.calls(Some(api::GROUP_UPDATE));
    assert_eq!(
        updates.len(),
        1,
        "the group was updated {} times: {updates:#?}",
        updates.len()
    );
    let replies = sim.replies();
    assert_eq!(replies.len(), 1, "{replies:#?}");
    assert!(replies[0].content.starts_with('✅'), "{replies:#?}");
    assert_eq!(sim.group(GROUP).unwrap().options.get("searchable"), Some(&1));
    let schema_ = schema.clone();
    let (history, open) = tokio::task::spawn_blocking(move || {
        let ledger = dingops::ledger::PostgresLedger::open(&schema_.postgres_url()).unwrap();
        (
            ledger.history(None, None, 10).unwrap(),
            ledger.open_count().unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0].status, "done");
    assert_eq!(open, 0);
    drop(children);
    // The skewed replica said at start that its clock is off.
    let log = std::fs::read_to_string(&skewed_log).unwrap();
    assert!(
        log.contains("this machine's clock differs from the ledger's"),
        "no clock warning in the skewed replica's log:\n{log}"
    );
}
