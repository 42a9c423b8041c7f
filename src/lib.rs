//! dingops: a DingTalk chat-ops robot. Group admins @-mention it and type `/lock-dm`; it
//! verifies the callback, checks the sender, calls DingTalk's group API and replies.
//!
//! The binary (`main.rs`) is a thin CLI over these modules.

pub mod callback;
pub mod clock;
pub mod command;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dingtalk;
pub mod ledger;
pub mod ops;
pub mod server;
pub mod telemetry;
pub mod worker;

/// The DingTalk simulator, re-exported under its former path so code written against
/// `dingops::sim` keeps building; new code can name the `dingtalk_sim` crate directly.
#[cfg(feature = "demo")]
pub use dingtalk_sim as sim;
