//! Serving the simulator alone: the `dingtalk-sim` binary and `dingops sim` share these
//! flags and this loop.

use std::net::TcpListener;

use anyhow::Context as _;

use crate::{SimConfig, Simulator};

/// Flags of a simulator served alone.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
    /// AppKey the simulator accepts.
    #[arg(long, default_value = "dingdemo-app-key")]
    pub app_key: String,
    /// AppSecret the simulator accepts.
    #[arg(long, default_value = "demo-app-secret-not-for-production")]
    pub app_secret: String,
    /// A group as openConversationId=chatid (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Start with only the root department, instead of a small demo organisation of six
    /// departments and four department groups (for `dingops discover`).
    #[arg(long)]
    pub no_demo_departments: bool,
    /// Calls per second per API before it answers 90018 (0 = no limit).
    #[arg(long, default_value_t = 20)]
    pub rate_limit: u32,
    /// Counted API calls per calendar month before it answers 90020 (0 = no quota).
    #[arg(long, default_value_t = 0)]
    pub monthly_quota: u64,
    /// Listen address of the Stream gateway (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub stream_listen: String,
    /// Milliseconds the Stream gateway waits for an ACK before pushing a frame again.
    #[arg(long, default_value_t = 5000)]
    pub stream_repush_ms: u64,
}

/// Starts the simulator, prints where it is and how to use it, and serves until Ctrl-C.
pub async fn serve(args: SimArgs) -> anyhow::Result<()> {
    let SimArgs {
        listen,
        app_key,
        app_secret,
        groups,
        no_demo_departments,
        rate_limit,
        monthly_quota,
        stream_listen,
        stream_repush_ms,
    } = args;
    let listener = TcpListener::bind(&listen).with_context(|| format!("cannot listen on {listen}"))?;
    let sim = Simulator::start(
        SimConfig {
            app_key,
            app_secret,
            rate_limit_per_sec: rate_limit,
            monthly_quota,
            stream_listen: stream_listen.clone(),
            stream_repush_after_ms: stream_repush_ms,
            ..SimConfig::default()
        },
        listener,
    )
    .with_context(|| format!("cannot start the simulator (Stream gateway on {stream_listen})"))?;
    for g in &groups {
        let (cid, chatid) = g
            .rsplit_once('=')
            .with_context(|| format!("--group {g}: expected openConversationId=chatid"))?;
        sim.add_group(cid, chatid, cid);
    }
    if !no_demo_departments {
        sim.seed_demo_departments()
            .context("cannot seed the demo departments")?;
    }
    println!("DingTalk simulator on {}", sim.url());
    println!(
        "  point dingops at it: DINGOPS_OAPI_BASE={0} DINGOPS_API_BASE={0} DINGOPS_REPLY_HOSTS={1}",
        sim.url(),
        sim.host_port()
    );
    println!(
        "  Stream gateway on {} (POST {}/v1.0/gateway/connections/open hands out its endpoint)",
        sim.stream().endpoint(),
        sim.url()
    );
    if !no_demo_departments {
        println!(
            "  departments: a demo organisation of {} departments with {} department groups (try `dingops discover`)",
            sim.departments().len(),
            crate::DEMO_GROUPS.len()
        );
    }
    println!(
        "  control: GET/POST /_sim/groups, GET/POST /_sim/departments, POST /_sim/sessions, GET /_sim/calls, GET /_sim/replies, POST /_sim/faults, GET/POST /_sim/quota"
    );
    println!(
        "  cards: GET /_sim/cards, GET /_sim/cards/{{outTrackId}}, POST /_sim/cards/press, POST /_sim/cards/fail, GET /_sim/cards/callbacks"
    );
    tokio::signal::ctrl_c().await?;
    sim.stop().await;
    Ok(())
}
