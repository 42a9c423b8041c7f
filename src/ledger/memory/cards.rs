//! The memory store's cards, clicks and approvals (see `ledger/roles.rs`, `CardStore`): each
//! call is one step under the store's mutex.

use super::MemoryLedger;
use crate::domain::Accepted;
use crate::ledger::cards::{
    self, Approval, ApprovalState, ApprovalVerdict, CardAction, CardRow, CardStatus, ClickEntry,
};
use crate::ledger::{CardStore, LedgerError};

impl CardStore for MemoryLedger {
    fn insert_card(&self, card: &CardRow) -> Result<bool, LedgerError> {
        let mut s = self.state()?;
        if s.cards.contains_key(&card.out_track_id) {
            return Ok(false);
        }
        s.last_card += 1;
        let n = s.last_card;
        s.cards.insert(card.out_track_id.clone(), (n, card.clone()));
        Ok(true)
    }

    fn card(&self, out_track_id: &str) -> Result<Option<CardRow>, LedgerError> {
        Ok(self.state()?.cards.get(out_track_id).map(|(_, c)| c.clone()))
    }

    fn cards_of_setting(
        &self,
        conversation_id: &str,
        setting: &str,
        statuses: &[CardStatus],
    ) -> Result<Vec<CardRow>, LedgerError> {
        let s = self.state()?;
        let mut found: Vec<&(u64, CardRow)> = s
            .cards
            .values()
            .filter(|(_, c)| {
                c.conversation_id == conversation_id
                    && c.setting.as_deref() == Some(setting)
                    && statuses.contains(&c.status)
            })
            .collect();
        found.sort_by(|(n1, c1), (n2, c2)| c2.created_ms.cmp(&c1.created_ms).then(n2.cmp(n1)));
        Ok(found.into_iter().map(|(_, c)| c.clone()).collect())
    }

    fn set_card_state(
        &self,
        out_track_id: &str,
        expect_status: Option<CardStatus>,
        status: CardStatus,
        buttons: &[CardAction],
        data: &str,
        now_ms: u64,
    ) -> Result<bool, LedgerError> {
        let mut s = self.state()?;
        let Some((_, card)) = s.cards.get_mut(out_track_id) else {
            return Ok(false);
        };
        if expect_status.is_some_and(|e| e != card.status) {
            return Ok(false);
        }
        card.status = status;
        card.buttons = buttons.to_vec();
        card.data = data.to_owned();
        card.updated_ms = now_ms;
        card.pending_click = None;
        Ok(true)
    }

    fn accept_click(
        &self,
        click: &Accepted,
        out_track_id: &str,
        action: CardAction,
        now_ms: u64,
    ) -> Result<ClickEntry, LedgerError> {
        let mut s = self.state()?;
        if s.knows(&click.msg_id) {
            return Ok(ClickEntry::Duplicate);
        }
        let Some((_, card)) = s.cards.get_mut(out_track_id) else {
            return Ok(ClickEntry::UnknownCard);
        };
        if let Some(refused) = cards::click_refusal(card, action) {
            return Ok(refused);
        }
        card.status = CardStatus::Working;
        card.buttons.clear();
        card.pending_click = Some(click.msg_id.clone());
        card.updated_ms = now_ms;
        s.insert_command(click);
        Ok(ClickEntry::New)
    }

    fn insert_approval(&self, approval: &Approval) -> Result<bool, LedgerError> {
        let mut s = self.state()?;
        if s.approvals.contains_key(&approval.code) {
            return Ok(false);
        }
        s.approvals.insert(approval.code.clone(), approval.clone());
        Ok(true)
    }

    fn approval(&self, code: &str) -> Result<Option<Approval>, LedgerError> {
        Ok(self.state()?.approvals.get(code).cloned())
    }

    fn decide_approval(
        &self,
        code: &str,
        state: ApprovalState,
        by: &str,
        now_ms: u64,
    ) -> Result<ApprovalVerdict, LedgerError> {
        cards::decision(state)?;
        let mut s = self.state()?;
        let Some(approval) = s.approvals.get_mut(code) else {
            return Ok(ApprovalVerdict::Unknown);
        };
        if let Some(verdict) = cards::verdict(approval, state, by, now_ms) {
            return Ok(verdict);
        }
        approval.state = state;
        approval.decided_by = Some(by.to_owned());
        approval.decided_ms = Some(now_ms);
        Ok(ApprovalVerdict::Decided(approval.clone()))
    }

    fn end_approval(&self, code: &str, state: ApprovalState) -> Result<bool, LedgerError> {
        cards::ending(state)?;
        let mut s = self.state()?;
        match s.approvals.get_mut(code) {
            Some(a) if a.state == ApprovalState::Approved => {
                a.state = state;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
