//! Governing the whole organisation rather than one group at a time: discovering the
//! department groups, the policy file, planning and applying it, and `serve`'s reconcile loop.

pub mod discover;
pub mod plan;
pub mod policy;
pub mod policy_lease;
pub mod reconcile;
