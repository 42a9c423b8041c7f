//! The two-person rule across a restart: a plan approved by a second admin (the card's
//! Approve, or `/apply <code>` without cards) whose apply is cut short by a kill -9 of the
//! real binary is resumed by the next start, and ends on the card and in the ops group.

use std::time::Duration;

use dingtalk_sim::chat::{CallbackSender, Chat, Member, new_msg_id, text_message};
use dingtalk_sim::{CardPress, Fault, Simulator, api};

use crate::cards::{CARD_SECRET, TEMPLATE, register_at, second_admin};
use crate::helpers::*;

/// The ops group of the two-person rule.
const OPS: &str = OTHER;

/// The environment of a `serve` with a policy that unmutes every group, OTHER as the ops
/// group, two admins and (with `cards`) reply cards.
fn ops_env(dir: &std::path::Path, cards: bool) -> Vec<(&'static str, String)> {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "[[rule]]\ngroups = [\"*\"]\nmute_all = false\n").unwrap();
    let mut env = vec![
        ("DINGOPS_POLICY", policy.display().to_string()),
        ("DINGOPS_OPS_GROUP", OPS.to_owned()),
        ("DINGOPS_ADMINS", "admin01,admin02".to_owned()),
        (
            "DINGOPS_GROUPS",
            format!("{GROUP}={GROUP_CHATID},{OTHER}={OTHER_CHATID}"),
        ),
    ];
    if cards {
        env.push(("DINGOPS_CARD_TEMPLATE_ID", TEMPLATE.to_owned()));
        env.push(("DINGOPS_CARD_CALLBACK_SECRET", CARD_SECRET.to_owned()));
    }
    env
}

/// The code in a plan's text.
fn code_in(text: &str) -> String {
    let start = text.find("/apply ").expect("the plan names its code") + "/apply ".len();
    text[start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

/// Says `text` in `chat` as `who`.
async fn say(sender: &CallbackSender, chat: &Chat, who: &Member, text: &str) {
    let body = text_message(&new_msg_id(), chat, who, text);
    assert_eq!(sender.send(&body).await.unwrap().0, 200);
}

/// The first text message in `cid` after the first `skip` ones that contains `needle`
/// (waits up to `secs`).
async fn text_in(sim: &Simulator, cid: &str, needle: &str, secs: u64) -> Option<String> {
    let mut found = None;
    eventually(Duration::from_secs(secs), || {
        found = sim
            .replies()
            .into_iter()
            .filter(|r| r.open_conversation_id == cid && !r.via.starts_with("card"))
            .map(|r| r.content)
            .find(|c| c.contains(needle));
        found.is_some()
    })
    .await;
    found
}

/// The `im/group/update` calls that unmuted GROUP and were answered (not the hung one).
fn unmutes(sim: &Simulator) -> usize {
    sim.calls(Some(api::GROUP_UPDATE))
        .into_iter()
        .filter(|c| {
            c.answer != -3
                && c.body["chatid"] == GROUP_CHATID
                && c.body.to_string().contains("\"chatBannedType\":0")
        })
        .count()
}

/// A real `serve` of the ops group on a ledger file, with a group whose mute the policy
/// fixes, started again on the same ledger after a kill -9.
struct OpsServe {
    sim: std::sync::Arc<Simulator>,
    sender: CallbackSender,
    port: u16,
    db: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
    first: Reaper,
    _dir: tempfile::TempDir,
}

impl OpsServe {
    async fn start(cards: bool) -> Self {
        let sim = new_sim(Default::default());
        assert!(
            sim.set_option(GROUP, "chatBannedType", 1),
            "drift the policy fixes"
        );
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        let env = ops_env(dir.path(), cards);
        let port = free_port();
        let first = Reaper(spawn_binary(&sim, port, &db, &env));
        wait_healthy(port).await;
        let address = format!("http://127.0.0.1:{port}");
        if cards {
            register_at(&sim, &address).await;
        }
        let sender = CallbackSender::new(&address, sim.config().app_secret.clone().into());
        Self {
            sim,
            sender,
            port,
            db,
            env,
            first,
            _dir: dir,
        }
    }

    /// Waits until the apply's write hangs at DingTalk, kills the process (kill -9) and
    /// starts a new one on the same ledger.
    async fn kill_during_the_hang_and_restart(&mut self) -> Reaper {
        wait_for_calls(&self.sim, "the hang", |c| {
            c.iter().any(|c| c.api == api::GROUP_UPDATE && c.answer == -3)
        })
        .await;
        self.first.0.kill().unwrap();
        self.first.0.wait().unwrap();
        let second = Reaper(spawn_binary(&self.sim, self.port, &self.db, &self.env));
        wait_healthy(self.port).await;
        second
    }
}

#[tokio::test]
async fn an_approved_plan_card_resumes_after_a_kill_during_its_apply_and_ends_done() {
    let mut ops = OpsServe::start(true).await;
    let sim = ops.sim.clone();
    say(&ops.sender, &session_chat(&sim, OPS), &admin(), "/plan").await;
    let card = sim
        .wait_for_cards(1, Duration::from_secs(10))
        .await
        .pop()
        .expect("a plan card");
    assert_eq!(card.params["status"], "pending_approval");

    // The apply's DingTalk write hangs; the process is killed while it does.
    sim.inject(api::GROUP_UPDATE, Fault::Hang);
    let pressed = sim
        .press_card(&CardPress::new(&card.out_track_id, "admin02", "approve"))
        .await
        .unwrap();
    assert_eq!(pressed.status, Some(200));
    let _second = ops.kill_during_the_hang_and_restart().await;
    let done = eventually(Duration::from_secs(30), || {
        sim.card(&card.out_track_id)
            .is_some_and(|c| c.params["status"] == "done")
    })
    .await;
    let shown = sim.card(&card.out_track_id).unwrap();
    assert!(done, "the approved plan never ended: {shown:#?}");
    assert!(
        shown.params["body"].contains("Approved by admin02"),
        "{}",
        shown.params["body"]
    );
    assert!(
        shown.params["body"].contains("resumed after dingops restarted"),
        "{}",
        shown.params["body"]
    );
    assert_eq!(sim.group(GROUP).unwrap().options["chatBannedType"], 0);
    assert_eq!(unmutes(&sim), 1, "applied once after the restart");
    // The code stays used up.
    let chat = session_chat(&sim, OPS);
    say(
        &ops.sender,
        &chat,
        &second_admin(),
        &format!("/apply {}", code_in(&card.params["body"])),
    )
    .await;
    let reused = text_in(&sim, OPS, "works once", 10).await;
    assert!(
        reused.is_some_and(|t| t.starts_with('⛔')),
        "{:#?}",
        sim.replies()
    );
}

#[tokio::test]
async fn an_apply_code_typed_without_cards_resumes_after_a_kill_during_its_apply_and_is_answered() {
    let mut ops = OpsServe::start(false).await;
    let sim = ops.sim.clone();
    let chat = session_chat(&sim, OPS);
    say(&ops.sender, &chat, &admin(), "/plan").await;
    let plan = text_in(&sim, OPS, "/apply ", 10).await.expect("the plan");
    let code = code_in(&plan);

    sim.inject(api::GROUP_UPDATE, Fault::Hang);
    say(&ops.sender, &chat, &second_admin(), &format!("/apply {code}")).await;
    let _second = ops.kill_during_the_hang_and_restart().await;
    let answered = text_in(&sim, OPS, "Approved by Bo (admin02)", 30).await;
    assert!(
        answered.as_deref().is_some_and(|t| t.starts_with('✅')),
        "the approved plan was never answered: {:#?}",
        sim.replies()
    );
    assert_eq!(sim.group(GROUP).unwrap().options["chatBannedType"], 0);
    assert_eq!(unmutes(&sim), 1, "applied once after the restart");
}
