//! Governing the whole organisation rather than one group at a time: discovering the
//! department groups, planning and applying the policy (read by [`crate::governance::policy`]),
//! and `serve`'s reconcile loop.

pub mod discover;
pub mod lease;
pub mod plan;
pub mod reconcile;
