//! The governance core: every change of a group setting, whoever asks (a chat command, a
//! timed revert, `apply` or reconcile), goes through here (docs/architecture.md).

pub mod desired;
pub mod policy;
pub mod quota;
pub mod reload;
pub mod setting;
