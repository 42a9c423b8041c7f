//! Governing many groups at once: the policy file, planning and applying it, and `serve`'s
//! reconcile loop.

pub mod plan;
pub mod policy;
pub mod reconcile;
