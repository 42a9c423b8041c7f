//! The card benchmark's last part: what each step of a card's life calls at DingTalk,
//! counted from the simulator's records against a dingops in this process (HTTP mode, the
//! card callback registered, a minute of a timed revert lasting 2 s). See
//! docs/performance.md, "Card callbacks".

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dingtalk_sim::chat::{CallbackSender, Chat, Member, new_msg_id, text_message};
use dingtalk_sim::{CardPress, SimCard, SimConfig, Simulator, api};
use secrecy::SecretString;

use crate::bench::group_chat;
use crate::card_setup::{ADMINS, CARD_SECRET, TEMPLATE};

/// The DingTalk calls of one step of a card's life.
#[derive(Debug, Clone)]
pub struct Step {
    pub what: &'static str,
    pub creates: usize,
    pub updates: usize,
    /// Other calls by API (tokens aside).
    pub other: BTreeMap<String, usize>,
}

/// The APIs that fetch an access token (not counted as a card's cost).
const TOKEN_APIS: [&str; 2] = [api::GET_TOKEN, api::ACCESS_TOKEN];

const COST_GROUP: &str = "cidCardCost00000==";
const COST_CHAT: &str = "chatcardcost00000";

/// A dingops in this process (HTTP mode, cards on, a minute of a timed revert lasting
/// 2 s) with its callback URL registered; the steps of a card's life, each counted.
pub(crate) async fn lifetime(dir: &Path) -> anyhow::Result<Vec<Step>> {
    let sim = Simulator::start(SimConfig::default(), TcpListener::bind("127.0.0.1:0")?)?;
    sim.add_group(COST_GROUP, COST_CHAT, "card costs");
    let mut env: HashMap<String, String> = sim
        .dingops_env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    for (k, v) in [
        ("DINGOPS_ADMINS", "admin01,admin02"),
        ("DINGOPS_GROUPS", &format!("{COST_GROUP}={COST_CHAT}")),
        ("DINGOPS_CARD_TEMPLATE_ID", TEMPLATE),
        ("DINGOPS_CARD_CALLBACK_SECRET", CARD_SECRET),
        ("DINGOPS_DATABASE", &dir.join("costs.db").display().to_string()),
    ] {
        env.insert(k.to_owned(), v.to_owned());
    }
    let mut settings = dingops::config::Settings::from_sources(None, &env)?;
    settings.worker.revert_minute = Duration::from_secs(2);
    let app = dingops::server::Application::build_with_listener(
        settings.clone(),
        TcpListener::bind("127.0.0.1:0")?,
        dingops::server::RunOptions {
            handle_signals: false,
            http_workers: 1,
        },
    )
    .await?;
    let url = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let task = tokio::spawn(app.run_until_stopped());
    let client = dingops::dingtalk::DingTalk::new(
        &settings.dingtalk,
        Arc::new(dingops::telemetry::Metrics::new()),
        std::sync::Arc::new(dingops::clock::SystemClock),
    )?;
    let registered = client
        .register_card_callback(
            &format!("{url}/card-callback"),
            &settings.cards.callback_route_key,
            &SecretString::from(CARD_SECRET),
            true,
        )
        .await;
    let steps = match registered {
        Ok(()) => Life::new(&sim, &url).steps().await,
        Err(e) => Err(anyhow::anyhow!(
            "the card callback was not registered: {}",
            e.short()
        )),
    };
    handle.stop(true).await;
    let _ = task.await;
    sim.stop().await;
    steps
}

/// Plays a card's life against the simulator.
struct Life<'a> {
    sim: &'a Simulator,
    sender: CallbackSender,
    chat: Chat,
}

impl<'a> Life<'a> {
    fn new(sim: &'a Simulator, url: &str) -> Self {
        Self {
            sim,
            sender: CallbackSender::new(url, sim.config().app_secret.clone().into()),
            chat: group_chat(sim, COST_GROUP),
        }
    }

    async fn steps(&self) -> anyhow::Result<Vec<Step>> {
        let mut steps = Vec::new();
        let timed = self
            .typed(
                "a switch command with a duration (`/mute-all 1m`)",
                "/mute-all 1m",
                &mut steps,
            )
            .await?;
        self.waited("its timed revert", &timed, "reverted", &mut steps)
            .await?;
        let dm = self
            .typed("a switch command (`/lock-dm`)", "/lock-dm", &mut steps)
            .await?;
        self.pressed(
            "Undo (its change stands)",
            &dm,
            ADMINS[1],
            "undo",
            "undone",
            &mut steps,
        )
        .await?;
        let hour = self.typed("`/mute-all 1h`", "/mute-all 1h", &mut steps).await?;
        self.pressed("Extend", &hour, ADMINS[0], "extend", "extended", &mut steps)
            .await?;
        self.pressed(
            "Revert now",
            &hour,
            ADMINS[1],
            "revert_now",
            "reverted",
            &mut steps,
        )
        .await?;
        let mute = self.typed("`/mute-all`", "/mute-all", &mut steps).await?;
        self.pressed(
            "a click by a member (refused privately)",
            &mute,
            "member01",
            "undo",
            "done",
            &mut steps,
        )
        .await?;
        self.typed(
            "a newer command on the same setting (`/unmute-all`: the older card is superseded)",
            "/unmute-all",
            &mut steps,
        )
        .await?;
        self.shows(&mute, "superseded").await?;
        Ok(steps)
    }

    /// Types `text` as admin01; the card it makes.
    async fn typed(&self, what: &'static str, text: &str, steps: &mut Vec<Step>) -> anyhow::Result<SimCard> {
        let mark = self.sim.calls(None).len();
        let before = self.sim.cards().len();
        let body = text_message(
            &new_msg_id(),
            &self.chat,
            &Member::new(ADMINS[0], "Ada", false),
            text,
        );
        let (status, _) = self.sender.send(&body).await?;
        anyhow::ensure!(status == 200, "{text}: HTTP {status}");
        let cards = self.sim.wait_for_cards(before + 1, Duration::from_secs(10)).await;
        let card = cards
            .get(before)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{text}: no card"))?;
        steps.push(self.counted(what, mark).await);
        Ok(card)
    }

    /// Presses `action` as `user` and waits until the card shows `status`.
    #[allow(clippy::too_many_arguments)]
    async fn pressed(
        &self,
        what: &'static str,
        card: &SimCard,
        user: &str,
        action: &str,
        status: &str,
        steps: &mut Vec<Step>,
    ) -> anyhow::Result<()> {
        let mark = self.sim.calls(None).len();
        let pressed = self
            .sim
            .press_card(&CardPress::new(&card.out_track_id, user, action))
            .await;
        anyhow::ensure!(
            pressed.as_ref().and_then(|p| p.status) == Some(200),
            "{what}: the click was not answered 200: {pressed:?}"
        );
        self.shows(card, status).await?;
        steps.push(self.counted(what, mark).await);
        Ok(())
    }

    /// Waits until the card shows `status` (the timer's revert, a supersede).
    async fn waited(
        &self,
        what: &'static str,
        card: &SimCard,
        status: &str,
        steps: &mut Vec<Step>,
    ) -> anyhow::Result<()> {
        let mark = self.sim.calls(None).len();
        self.shows(card, status).await?;
        steps.push(self.counted(what, mark).await);
        Ok(())
    }

    async fn shows(&self, card: &SimCard, status: &str) -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.sim.card(&card.out_track_id);
            if now
                .as_ref()
                .and_then(|c| c.params.get("status"))
                .map(String::as_str)
                == Some(status)
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < end, "the card never showed {status}: {now:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The calls since `mark`, once none came for 300 ms.
    async fn counted(&self, what: &'static str, mark: usize) -> Step {
        let mut seen = self.sim.calls(None).len();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.sim.calls(None).len();
            if now == seen {
                break;
            }
            seen = now;
        }
        let calls = self.sim.calls(None);
        let mut step = Step {
            what,
            creates: 0,
            updates: 0,
            other: BTreeMap::new(),
        };
        for c in calls.iter().skip(mark) {
            match c.api.as_str() {
                api::CARD_CREATE => step.creates += 1,
                api::CARD_UPDATE => step.updates += 1,
                a if TOKEN_APIS.contains(&a) => {}
                a => *step.other.entry(a.to_owned()).or_default() += 1,
            }
        }
        step
    }
}

/// An API as DingTalk's documentation names it.
fn shown(api: &str) -> &str {
    match api {
        api::GROUP_UPDATE => "im/group/update",
        api::FRIEND_SWITCH => "friendswitch/update",
        api::CHAT_GET => "chat/get",
        api::GROUP_MESSAGE => "robot/groupMessages/send",
        api::SEND_BY_SESSION => "sessionWebhook",
        other => other,
    }
}

pub(crate) fn print_steps(steps: &[Step], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "| step of a card's life | createAndDeliver | card/instances updates | other DingTalk calls |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for s in steps {
        let other = if s.other.is_empty() {
            "—".to_owned()
        } else {
            s.other
                .iter()
                .map(|(api, n)| format!("{} ×{n}", shown(api)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(out, "| {} | {} | {} | {other} |", s.what, s.creates, s.updates)?;
    }
    Ok(())
}
