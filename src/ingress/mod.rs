//! Ingresses: how robot messages reach dingops. Each ingress authenticates and parses on its
//! own transport, then hands the pipeline one [`Inbound`]: the accepted message plus how to
//! acknowledge it. Everything after that (ledger, worker, replies) is shared, so the HTTP
//! callback and a Stream-mode connection are two small modules that call the same
//! [`Pipeline::accept`] and know nothing of each other (see docs/architecture.md).

pub mod card;
pub mod card_callback;
pub mod card_http;
pub mod http;
pub mod payload;
pub mod probes;
pub mod signature;
pub mod stream;

use std::sync::Arc;

use crate::clock::Clock;
use crate::domain::Accepted;
use crate::ledger::CommandHandle;
use crate::worker::Intake;

/// What the pipeline made of a message; the ingress turns it into its transport's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Recorded in the ledger; the worker will run it.
    New,
    /// Its msgId is already in the ledger: nothing more happens.
    Duplicate,
    /// The ledger could not record it; nothing was recorded, so a redelivery can run.
    Unavailable,
}

/// How an ingress acknowledges a message on its own transport, once the ledger has decided.
pub trait Acknowledge {
    /// What acknowledging produces (an HTTP response, or nothing for a frame sent on a socket).
    type Output;
    fn acknowledge(self, admission: Admission) -> Self::Output;
}

/// What an ingress hands to the pipeline.
pub struct Inbound<A> {
    pub message: Accepted,
    pub ack: A,
}

/// The shared entry of every ingress: ledger first (dedupe by msgId), then wake the worker,
/// then acknowledge. The acknowledgement never waits for DingTalk.
#[derive(Clone)]
pub struct Pipeline {
    ledger: CommandHandle,
    intake: Intake,
    /// Where the ingresses read the time: a message's arrival, signature windows,
    /// keepalives and acknowledgement latency.
    clock: Arc<dyn Clock>,
    /// Where card clicks are decided, when cards are on.
    cards: Option<crate::cards::gate::Gate>,
}

impl Pipeline {
    pub fn new(ledger: impl Into<CommandHandle>, intake: Intake, clock: Arc<dyn Clock>) -> Self {
        Self {
            ledger: ledger.into(),
            intake,
            clock,
            cards: None,
        }
    }

    /// This pipeline with card clicks entered through `gate`.
    pub fn with_cards(mut self, gate: crate::cards::gate::Gate) -> Self {
        self.cards = Some(gate);
        self
    }

    /// The clock every ingress reads the time by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Records the message unless its msgId is known, wakes the worker for a new one, and
    /// acknowledges it the ingress's way.
    pub async fn accept<A: Acknowledge>(&self, inbound: Inbound<A>) -> A::Output {
        let admission = self.admit(inbound.message).await;
        inbound.ack.acknowledge(admission)
    }

    async fn admit(&self, message: Accepted) -> Admission {
        match self.ledger.accept(message).await {
            Ok(true) => {
                self.intake.wake();
                tracing::debug!("message accepted");
                Admission::New
            }
            Ok(false) => {
                tracing::debug!("duplicate message ignored");
                Admission::Duplicate
            }
            Err(e) => {
                tracing::error!(error = %e, "ledger unavailable; message refused");
                Admission::Unavailable
            }
        }
    }
}
