//! Test support for dingops' integration tests, its ledger's unit tests and the bench; no
//! part of the product: [`TestSchema`], a schema of its own on the test PostgreSQL server
//! for each test, and [`test_database_url`], which decides whether a test that needs
//! PostgreSQL runs, is skipped, or fails.
//!
//! It depends on nothing of dingops, so dingops' own unit tests can use it as a
//! dev-dependency without a cycle: callers build their `Database` or `PostgresUrl` from
//! [`TestSchema::url`] (see docs/architecture.md, "Test support").

mod postgres;

pub use postgres::{REQUIRE_POSTGRES, TEST_DATABASE_URL, TestSchema, test_database_url};
