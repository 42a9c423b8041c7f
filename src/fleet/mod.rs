//! Governing the whole organisation rather than one group at a time.

pub mod discover;
