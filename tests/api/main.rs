//! Integration tests: the real dingops server on a loopback port against the simulator.

// Test helpers panic on purpose when the system under test misbehaves.
#![allow(clippy::unwrap_used)]

mod alerts;
mod approvals;
mod budget;
mod card_races;
mod card_updates;
mod cards;
mod click_limits;
mod clocks;
mod commands;
mod connections;
mod dashboards;
mod dedupe;
mod discover;
mod exceptions;
mod faults;
mod governance;
mod helpers;
mod hostile;
mod ingress_cards;
mod leases;
mod ledger_files;
mod lifecycle;
mod limits;
mod ops;
mod policy;
mod policy_runs;
mod postgres;
mod quota;
mod replicas;
mod replies;
mod signature;
mod stream;
mod timer;
mod tokens;
mod trust;
mod worker_faults;
