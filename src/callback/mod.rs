//! The robot callback: signature, payload, and the HTTP route that ties them to the ledger.

pub mod payload;
pub mod route;
pub mod signature;
