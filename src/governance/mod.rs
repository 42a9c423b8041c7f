//! The governance core: every change of a group setting, whoever asks (a chat command, the
//! end of a timed command, `apply` or reconcile), goes through [`Governor::change`]; what a
//! setting should be is decided in [`desired`] from the policy ([`policy`], kept in force
//! and reloaded by [`reload`]) and the exceptions timed commands make. The monthly API
//! quota's arithmetic is in [`crate::quota`]. See docs/architecture.md, "The governance core".
//!
//! Below `worker/` and `fleet/`, above `dingtalk/` and `ledger/`: nothing here calls up.

mod core;
pub mod desired;
pub mod directory;
pub mod policy;
pub mod record;
pub mod reload;
pub mod setting;

pub use core::{Actor, Change, ChangeError, Governor, Group, Via, Written};
pub use desired::{Ask, Decision, Desired, Exception, Held, PolicyWant, Restore};
pub use directory::Directory;
pub use record::Recorder;
pub use reload::{PolicyCell, Reload};
pub use setting::Setting;
