//! dingops: a DingTalk chat-ops robot. Group admins @-mention it and type `/lock-dm`; it
//! verifies the callback, checks the sender, calls DingTalk's group API and replies.
//!
//! The binary (`main.rs`) parses the command line and hands each subcommand to [`cli`].

pub mod advice;
pub mod cards;
pub mod cli;
pub mod clock;
pub mod command;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dingtalk;
pub mod domain;
pub mod fleet;
pub mod governance;
pub mod ingress;
pub mod lease;
pub mod ledger;
pub mod ops;
pub mod quota;
pub mod server;
pub mod telemetry;
pub mod worker;
