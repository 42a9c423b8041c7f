//! Interactive cards: a switch command's reply as a card with buttons (Undo, Extend, Revert
//! now), updated in place as its action ends, is reverted or is superseded; and the plan card
//! of the two-person rule. [`Cards`] sends and updates cards and keeps the ledger's record of
//! them; [`gate`] decides what a click gets at once (the acknowledgement); the worker runs
//! the clicks it lets through (`worker::clicks`). See docs/cards.md.

pub mod gate;
pub mod render;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::{CardSettings, Mode};
use crate::dingtalk::cards::{CardCallback, CardSend};
use crate::dingtalk::{ApiError, DingTalk};
use crate::domain::{Accepted, Answer, Outcome, SettingChange};
use crate::ledger::{CardAction, CardKind, CardRow, CardStatus, LedgerError, LedgerHandle};

/// The statuses a newer change of the setting supersedes, and its timed revert ends: a
/// standing card, and one whose click has not run yet (it finds its card moved on and
/// leaves it as it is).
pub const SUPERSEDABLE: [CardStatus; 3] = [CardStatus::Done, CardStatus::Extended, CardStatus::Working];

/// A card update DingTalk did not take is sent again (the card as the ledger has it) this
/// long after, doubling each time up to [`RESEND_MAX_GAP`], at most [`RESEND_ATTEMPTS`]
/// times. The group was told in text when it failed first.
pub const RESEND_FIRST_GAP: Duration = Duration::from_secs(1);
pub const RESEND_MAX_GAP: Duration = Duration::from_secs(300);
pub const RESEND_ATTEMPTS: u32 = 12;

/// A card whose last update DingTalk did not take.
#[derive(Debug, Clone, Copy)]
struct Resend {
    /// Sends tried again so far.
    attempts: u32,
    /// When (ms, the injected clock) to try again.
    next_ms: u64,
}

/// The msgtype of a click entered as a command; its text is `<action> <outTrackId>`.
pub const CLICK_MSGTYPE: &str = "cardAction";

/// What the ledger keeps of a card besides its columns (the row's `data`, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardData {
    /// What a setting card's command changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<SettingChange>,
    /// The plan card's approval code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The public parameters as last sent.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// How many times Extend worked on this card (at most [`gate::MAX_EXTENDS`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub extends: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl CardData {
    pub fn of(row: &CardRow) -> Self {
        serde_json::from_str(&row.data).unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Why a card was not sent (the reply falls back to text).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    DingTalk(#[from] ApiError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Sends and updates cards, and keeps their record in the ledger.
pub struct Cards {
    template_id: String,
    callback: CardCallback,
    ledger: LedgerHandle,
    dingtalk: Arc<DingTalk>,
    clock: Arc<dyn Clock>,
    next: AtomicU64,
    /// The cards whose last update DingTalk did not take, by `outTrackId`.
    resend: Mutex<BTreeMap<String, Resend>>,
}

impl Cards {
    /// The cards of a dingops whose `card_template_id` is set (`None` without one: replies
    /// stay text). Cards call back the way dingops listens: Stream when it dials DingTalk,
    /// else HTTP with the route key.
    pub fn new(
        settings: &CardSettings,
        mode: Mode,
        ledger: LedgerHandle,
        dingtalk: Arc<DingTalk>,
        clock: Arc<dyn Clock>,
    ) -> Option<Self> {
        let template_id = settings.template_id.clone()?;
        let callback = if mode.stream() {
            CardCallback::Stream
        } else {
            CardCallback::Http {
                route_key: settings.callback_route_key.clone(),
            }
        };
        Some(Self {
            template_id,
            callback,
            ledger,
            dingtalk,
            clock,
            next: AtomicU64::new(0),
            resend: Mutex::default(),
        })
    }

    /// A fresh `outTrackId`: never reused, across restarts and replicas.
    pub fn fresh_id(&self, msg_id: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(msg_id.as_bytes());
        h.update(self.clock.now_ms().to_be_bytes());
        h.update(n.to_be_bytes());
        h.update(std::process::id().to_be_bytes());
        h.update(rand::random::<u64>().to_be_bytes());
        let digest = h.finalize();
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        format!("dingops-{hex}")
    }

    /// Sends a switch command's answer as a card, recorded in the ledger with its command.
    /// `Err`: it could not be sent, and the caller replies with text.
    pub async fn send_answer(
        &self,
        job: &Accepted,
        answer: &Answer,
        change: &SettingChange,
    ) -> Result<String, SendError> {
        let (status, buttons) = match answer.outcome {
            Outcome::Ok => (CardStatus::Done, render::standing_buttons(change)),
            _ => (CardStatus::Failed, Vec::new()),
        };
        let title = render::setting_title(change);
        let body = render::setting_body(&answer.text, change);
        let data = CardData {
            change: Some(change.clone()),
            code: None,
            params: render::params(&title, &body, status, &buttons),
            extends: 0,
        };
        let row = self.row(
            job,
            CardKind::Setting,
            Some(change.setting.clone()),
            status,
            buttons,
            data,
        );
        self.send(row).await
    }

    /// Sends a policy plan as a card with Approve and Discard (the two-person rule).
    pub async fn send_plan(
        &self,
        job: &Accepted,
        answer: &Answer,
        code: &str,
        out_track_id: &str,
    ) -> Result<String, SendError> {
        let buttons = vec![CardAction::Approve, CardAction::Discard];
        let data = CardData {
            change: None,
            code: Some(code.to_owned()),
            params: render::params("Policy plan", &answer.text, CardStatus::PendingApproval, &buttons),
            extends: 0,
        };
        let mut row = self.row(
            job,
            CardKind::Plan,
            None,
            CardStatus::PendingApproval,
            buttons,
            data,
        );
        row.out_track_id = out_track_id.to_owned();
        self.send(row).await
    }

    /// A new card's row, answering `job`.
    fn row(
        &self,
        job: &Accepted,
        kind: CardKind,
        setting: Option<String>,
        status: CardStatus,
        buttons: Vec<CardAction>,
        data: CardData,
    ) -> CardRow {
        let now = self.clock.now_ms();
        CardRow {
            out_track_id: self.fresh_id(&job.msg_id),
            conversation_id: job.conversation_id.clone(),
            msg_id: job.msg_id.clone(),
            kind,
            setting,
            created_by: job.sender_staff_id.clone().unwrap_or_default(),
            status,
            buttons,
            pending_click: None,
            data: data.to_json(),
            created_ms: now,
            updated_ms: now,
        }
    }

    /// Records `row` and sends it with the parameters in its data; a card DingTalk did not
    /// take is recorded `unsent`. Returns its `outTrackId`.
    pub async fn send(&self, row: CardRow) -> Result<String, SendError> {
        let params = CardData::of(&row).params;
        let stored = row.clone();
        self.ledger.call(move |l| l.insert_card(&stored)).await?;
        let card = CardSend {
            template_id: self.template_id.clone(),
            out_track_id: row.out_track_id.clone(),
            conversation_id: row.conversation_id.clone(),
            callback: self.callback.clone(),
            params,
            private: BTreeMap::new(),
        };
        match self.dingtalk.create_card(&card).await {
            Ok(()) => Ok(row.out_track_id),
            Err(e) => {
                tracing::warn!(error = %e.short(), "a card was not sent; replying with text");
                let (id, data, now) = (row.out_track_id.clone(), row.data.clone(), self.clock.now_ms());
                if let Err(le) = self
                    .ledger
                    .call(move |l| l.set_card_state(&id, None, CardStatus::Unsent, &[], &data, now))
                    .await
                {
                    tracing::warn!(error = %le, "could not record that a card was not sent");
                }
                Err(e.into())
            }
        }
    }

    /// Shows `status`, `buttons` and `body` on a card (merged by key: the title stays), and
    /// records them; `notice` goes to one user only.
    pub async fn update(
        &self,
        row: &CardRow,
        status: CardStatus,
        buttons: &[CardAction],
        body: &str,
        notice: Option<(&str, &str)>,
    ) -> Result<(), SendError> {
        self.update_data(row, CardData::of(row), status, buttons, body, notice)
            .await
    }

    /// [`Cards::update`] with the card's facts as `data` (a changed end time, a plan's
    /// progress) rather than as recorded.
    pub async fn update_data(
        &self,
        row: &CardRow,
        data: CardData,
        status: CardStatus,
        buttons: &[CardAction],
        body: &str,
        notice: Option<(&str, &str)>,
    ) -> Result<(), SendError> {
        self.update_from(row, None, data, status, buttons, body, notice)
            .await
            .map(|_| ())
    }

    /// Ends a click on a card: [`Cards::update_data`], only while the card still works on
    /// a click. `Ok(false)`: the card moved on meanwhile (the timer's revert or a newer
    /// change ended it), so its public state is left as it is and only `notice` is sent.
    pub async fn end_click(
        &self,
        row: &CardRow,
        data: CardData,
        status: CardStatus,
        buttons: &[CardAction],
        body: &str,
        notice: Option<(&str, &str)>,
    ) -> Result<bool, SendError> {
        self.update_from(
            row,
            Some(CardStatus::Working),
            data,
            status,
            buttons,
            body,
            notice,
        )
        .await
    }

    /// Records and sends a card's new state when its status is `expect` (any, for `None`);
    /// `Ok(false)`: it was not, and only `notice` went out.
    #[allow(clippy::too_many_arguments)]
    async fn update_from(
        &self,
        row: &CardRow,
        expect: Option<CardStatus>,
        mut data: CardData,
        status: CardStatus,
        buttons: &[CardAction],
        body: &str,
        notice: Option<(&str, &str)>,
    ) -> Result<bool, SendError> {
        let title = data.params.get("title").cloned().unwrap_or_default();
        let params = render::params(&title, body, status, buttons);
        data.params = params.clone();
        let (id, json, bt, now) = (
            row.out_track_id.clone(),
            data.to_json(),
            buttons.to_vec(),
            self.clock.now_ms(),
        );
        let changed = self
            .ledger
            .call(move |l| l.set_card_state(&id, expect, status, &bt, &json, now))
            .await?;
        let private = notice.map(|(u, t)| render::notice(u, t)).unwrap_or_default();
        if !changed {
            self.dingtalk
                .update_card(&row.out_track_id, &BTreeMap::new(), &private)
                .await?;
            return Ok(false);
        }
        self.push(row, &params, &private).await?;
        Ok(true)
    }

    /// Sends a card's public parameters (all of them: a card shows the newest state sent)
    /// and `private`. When DingTalk does not take them, the card is sent again later
    /// ([`Cards::resend_due`]) and its group is told in text what it would show.
    async fn push(
        &self,
        row: &CardRow,
        params: &BTreeMap<String, String>,
        private: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<(), ApiError> {
        match self
            .dingtalk
            .update_card(&row.out_track_id, params, private)
            .await
        {
            Ok(()) => {
                self.resends().remove(&row.out_track_id);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e.short(), "DingTalk did not take a card update; it is sent again later and the group told");
                let first = {
                    let mut resend = self.resends();
                    let first = !resend.contains_key(&row.out_track_id);
                    resend.insert(
                        row.out_track_id.clone(),
                        Resend {
                            attempts: 0,
                            next_ms: self.clock.now_ms().saturating_add(gap_ms(0)),
                        },
                    );
                    first
                };
                if first {
                    self.tell_group(row, params, &e).await;
                }
                Err(e)
            }
        }
    }

    /// Tells a card's group in text what the card would show, as it could not be updated.
    async fn tell_group(&self, row: &CardRow, params: &BTreeMap<String, String>, e: &ApiError) {
        let title = params.get("title").map_or("", String::as_str);
        let status = params.get("status").map_or("", String::as_str);
        let newest = params
            .get("body")
            .and_then(|b| b.rsplit("\n\n").next())
            .unwrap_or_default();
        let text = format!(
            "⚠️ dingops could not update its card \"{title}\" ({}), so here is what it shows: {status}. {newest}\ndingops tries the card again.",
            e.short()
        );
        if let Err(e) = self
            .dingtalk
            .send_group_message(&row.conversation_id, &text)
            .await
        {
            tracing::warn!(error = %e.short(), "could not tell a group that its card was not updated");
        }
    }

    fn resends(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Resend>> {
        self.resend.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends again the cards whose last update DingTalk did not take and whose time came
    /// (by the injected clock): each as the ledger has it now. Called by the timer's tick.
    pub async fn resend_due(&self) {
        let now = self.clock.now_ms();
        let due: Vec<(String, Resend)> = self
            .resends()
            .iter()
            .filter(|(_, r)| r.next_ms <= now)
            .map(|(id, r)| (id.clone(), *r))
            .collect();
        for (id, resend) in due {
            let key = id.clone();
            let row = match self.ledger.call(move |l| l.card(&key)).await {
                Ok(Some(row)) => row,
                Ok(None) => {
                    self.resends().remove(&id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read a card to send again");
                    continue;
                }
            };
            let params = CardData::of(&row).params;
            match self.dingtalk.update_card(&id, &params, &BTreeMap::new()).await {
                Ok(()) => {
                    tracing::info!("a card DingTalk had not taken was updated");
                    self.resends().remove(&id);
                }
                Err(e) => {
                    let attempts = resend.attempts.saturating_add(1);
                    let mut resends = self.resends();
                    if attempts >= RESEND_ATTEMPTS {
                        tracing::warn!(error = %e.short(), attempts, "gave up sending a card again");
                        resends.remove(&id);
                    } else if let Some(r) = resends.get_mut(&id) {
                        *r = Resend {
                            attempts,
                            next_ms: self.clock.now_ms().saturating_add(gap_ms(attempts)),
                        };
                    }
                }
            }
        }
    }

    /// Marks the standing cards of a setting superseded by a newer change (buttons gone, the
    /// body says by whom), except `keep` (the newer change's own card).
    pub async fn supersede(
        &self,
        conversation_id: &str,
        setting: &str,
        keep: Option<&str>,
        by: &str,
        command: &str,
    ) {
        let line = format!("Superseded by {by} with `{command}`.");
        self.mark(
            conversation_id,
            setting,
            &SUPERSEDABLE,
            CardStatus::Superseded,
            &line,
            |row, _| Some(row.out_track_id.as_str()) != keep,
        )
        .await;
    }

    /// Marks the card whose timed change ended at `due_ms` reverted, with `text`: a standing
    /// one, or one whose click (Revert now racing the timer) has not ended yet.
    pub async fn reverted(&self, conversation_id: &str, setting: &str, due_ms: u64, text: &str) {
        self.mark(
            conversation_id,
            setting,
            &SUPERSEDABLE,
            CardStatus::Reverted,
            text,
            |_, data| data.change.as_ref().and_then(|c| c.until_ms) == Some(due_ms),
        )
        .await;
    }

    /// Ends the cards of a setting whose status is one of `statuses` and that `which` picks:
    /// `status`, no buttons, `line` added to the body. Best effort: a failure is logged.
    async fn mark(
        &self,
        conversation_id: &str,
        setting: &str,
        statuses: &'static [CardStatus],
        status: CardStatus,
        line: &str,
        which: impl Fn(&CardRow, &CardData) -> bool,
    ) {
        let (cid, s) = (conversation_id.to_owned(), setting.to_owned());
        let rows = match self
            .ledger
            .call(move |l| l.cards_of_setting(&cid, &s, statuses))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, %status, "could not read the cards to mark");
                return;
            }
        };
        for row in rows {
            let data = CardData::of(&row);
            if !which(&row, &data) {
                continue;
            }
            let body = format!(
                "{}\n\n{line}",
                data.params.get("body").cloned().unwrap_or_default()
            );
            if let Err(e) = self.update(&row, status, &[], &body, None).await {
                tracing::warn!(error = %e, %status, "could not update a card");
            }
        }
    }
}

/// The wait before sending a card again after `attempts` sends failed.
fn gap_ms(attempts: u32) -> u64 {
    let gap = RESEND_FIRST_GAP.saturating_mul(1u32 << attempts.min(16));
    u64::try_from(gap.min(RESEND_MAX_GAP).as_millis()).unwrap_or(u64::MAX)
}
