//! Steering and reading the simulator's cards: [`Simulator`]'s card methods, and the
//! `/_sim/cards*` routes that do the same over HTTP.

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::{CardCallbackRoute, CardFailMode, CardPress, CardPressOutcome, SimCard, press};
use crate::Simulator;
use crate::state::Shared;

impl Simulator {
    /// The cards the robot created, in the order it created them, as they stand now.
    pub fn cards(&self) -> Vec<SimCard> {
        self.shared.state().cards.cards.clone()
    }

    /// One card, as it stands now.
    pub fn card(&self, out_track_id: &str) -> Option<SimCard> {
        self.shared
            .state()
            .cards
            .cards
            .iter()
            .find(|c| c.out_track_id == out_track_id)
            .cloned()
    }

    /// Waits until at least `n` cards were created or `timeout` passed; returns them all.
    pub async fn wait_for_cards(&self, n: usize, timeout: Duration) -> Vec<SimCard> {
        let end = Instant::now() + timeout;
        loop {
            let cards = self.cards();
            if cards.len() >= n || Instant::now() >= end {
                return cards;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the card `out_track_id` exists with at least `updates` updates applied,
    /// or `timeout` passed; returns it as it is then.
    pub async fn wait_for_card(
        &self,
        out_track_id: &str,
        updates: u64,
        timeout: Duration,
    ) -> Option<SimCard> {
        let end = Instant::now() + timeout;
        loop {
            let card = self.card(out_track_id);
            if card.as_ref().is_some_and(|c| c.updates >= updates) || Instant::now() >= end {
                return card;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Presses a button on a card as a member would in the DingTalk client, waits (≤ 5 s)
    /// for the robot's answer and applies it to the card; `None` when there is no such card.
    /// See [`CardPress`] and [`CardPressOutcome`].
    pub async fn press_card(&self, press: &CardPress) -> Option<CardPressOutcome> {
        press::press(&self.shared, press).await
    }

    /// Makes the next `times` card calls of `mode` fail (see [`CardFailMode`]).
    pub fn fail_cards(&self, mode: CardFailMode, times: u32) {
        fail(&self.shared, mode, times);
    }

    /// The registered card callback addresses, by route key (secrets left out).
    pub fn card_callbacks(&self) -> Vec<CardCallbackRoute> {
        callbacks(&self.shared)
    }
}

fn fail(shared: &Shared, mode: CardFailMode, times: u32) {
    let mut s = shared.state();
    match mode {
        CardFailMode::Status => s.cards.fail_status = times,
        CardFailMode::Deliver => s.cards.fail_deliver = times,
        CardFailMode::Update => s.cards.fail_update = times,
    }
}

fn callbacks(shared: &Shared) -> Vec<CardCallbackRoute> {
    shared
        .state()
        .cards
        .routes
        .iter()
        .map(|(key, r)| CardCallbackRoute {
            callback_route_key: key.clone(),
            callback_url: r.url.clone(),
        })
        .collect()
}

/// `GET /_sim/cards`.
pub(crate) async fn control_cards(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.state().cards.cards)
}

/// `GET /_sim/cards/{outTrackId}`: 404 for an unknown card.
pub(crate) async fn control_card(shared: web::Data<Shared>, id: web::Path<String>) -> HttpResponse {
    let s = shared.state();
    match s.cards.cards.iter().find(|c| c.out_track_id == *id) {
        Some(card) => HttpResponse::Ok().json(card),
        None => HttpResponse::NotFound().json(json!({"error": "no such card"})),
    }
}

/// `POST /_sim/cards/press`: 404 for an unknown card.
pub(crate) async fn control_press(shared: web::Data<Shared>, p: web::Json<CardPress>) -> HttpResponse {
    match press::press(&shared, &p).await {
        Some(outcome) => HttpResponse::Ok().json(outcome),
        None => HttpResponse::NotFound().json(json!({"error": "no such card"})),
    }
}

#[derive(Deserialize)]
pub(crate) struct Failure {
    mode: CardFailMode,
    times: u32,
}

/// `POST /_sim/cards/fail {"mode": "status"|"deliver"|"update", "times": n}`.
pub(crate) async fn control_fail(shared: web::Data<Shared>, f: web::Json<Failure>) -> HttpResponse {
    fail(&shared, f.mode, f.times);
    HttpResponse::Ok().json(json!({"ok": true}))
}

/// `GET /_sim/cards/callbacks`.
pub(crate) async fn control_callbacks(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(callbacks(&shared))
}
