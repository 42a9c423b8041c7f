//! Interactive cards: a switch command's reply as a card with buttons (Undo, Extend, Revert
//! now), updated in place as its action ends, is reverted or is superseded; and the plan card
//! of the two-person rule. [`Cards`] sends and updates cards and keeps the ledger's record of
//! them; [`gate`] decides what a click gets at once (the acknowledgement); the worker runs
//! the clicks it lets through (`worker::clicks`). See docs/cards.md.

pub mod gate;
pub mod render;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::{CardSettings, Mode};
use crate::dingtalk::cards::{CardCallback, CardSend};
use crate::dingtalk::{ApiError, DingTalk};
use crate::domain::{Accepted, Answer, Outcome, SettingChange};
use crate::ledger::{CardRow, LedgerError, LedgerHandle};

/// The statuses in which a setting card still stands: its revert marks it reverted.
pub const STANDING: [&str; 2] = ["done", "extended"];

/// The statuses a newer change of the setting supersedes: a standing card, and one whose
/// click has not run yet (it will find its card superseded and change nothing).
pub const SUPERSEDABLE: [&str; 3] = ["done", "extended", "working"];

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
            Outcome::Ok => ("done", render::standing_buttons(change)),
            _ => ("failed", Vec::new()),
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
            "setting",
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
        let buttons = vec![render::APPROVE.to_owned(), render::DISCARD.to_owned()];
        let data = CardData {
            change: None,
            code: Some(code.to_owned()),
            params: render::params("Policy plan", &answer.text, "pending_approval", &buttons),
            extends: 0,
        };
        let mut row = self.row(job, "plan", None, "pending_approval", buttons, data);
        row.out_track_id = out_track_id.to_owned();
        self.send(row).await
    }

    /// A new card's row, answering `job`.
    fn row(
        &self,
        job: &Accepted,
        kind: &str,
        setting: Option<String>,
        status: &str,
        buttons: Vec<String>,
        data: CardData,
    ) -> CardRow {
        let now = self.clock.now_ms();
        CardRow {
            out_track_id: self.fresh_id(&job.msg_id),
            conversation_id: job.conversation_id.clone(),
            msg_id: job.msg_id.clone(),
            kind: kind.to_owned(),
            setting,
            created_by: job.sender_staff_id.clone().unwrap_or_default(),
            status: status.to_owned(),
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
                    .call(move |l| l.set_card_state(&id, None, "unsent", &[], &data, now))
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
        status: &str,
        buttons: &[String],
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
        mut data: CardData,
        status: &str,
        buttons: &[String],
        body: &str,
        notice: Option<(&str, &str)>,
    ) -> Result<(), SendError> {
        let title = data.params.get("title").cloned().unwrap_or_default();
        let params = render::params(&title, body, status, buttons);
        data.params = params.clone();
        let (id, json, st, bt, now) = (
            row.out_track_id.clone(),
            data.to_json(),
            status.to_owned(),
            buttons.to_vec(),
            self.clock.now_ms(),
        );
        self.ledger
            .call(move |l| l.set_card_state(&id, None, &st, &bt, &json, now))
            .await?;
        let private = notice.map(|(u, t)| render::notice(u, t)).unwrap_or_default();
        self.dingtalk
            .update_card(&row.out_track_id, &params, &private)
            .await?;
        Ok(())
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
            "superseded",
            &line,
            |row, _| Some(row.out_track_id.as_str()) != keep,
        )
        .await;
    }

    /// Marks the standing card whose timed change ended at `due_ms` reverted, with `text`.
    pub async fn reverted(&self, conversation_id: &str, setting: &str, due_ms: u64, text: &str) {
        self.mark(
            conversation_id,
            setting,
            &STANDING,
            "reverted",
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
        statuses: &'static [&'static str],
        status: &str,
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
                tracing::warn!(error = %e, status, "could not read the cards to mark");
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
                tracing::warn!(error = %e, status, "could not update a card");
            }
        }
    }
}
