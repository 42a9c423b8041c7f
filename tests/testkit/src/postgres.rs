//! A schema of its own on the test PostgreSQL server for each test, so that tests run in
//! parallel on one server and leave nothing behind.
//!
//! The server is named by `DINGOPS_TEST_DATABASE_URL` (`.ci/postgres start` prints it).
//! Without it, a test that needs PostgreSQL is skipped and says so on stderr, so that
//! `cargo test` passes on a fresh clone; with `DINGOPS_REQUIRE_POSTGRES=1` (which `.ci/run`
//! sets) it fails instead, saying how to start a server: CI never skips these tests.

use std::io::Write as _;

/// The variable naming the test server.
pub const TEST_DATABASE_URL: &str = "DINGOPS_TEST_DATABASE_URL";

/// The variable that, set to `1`, makes a missing test server fail the tests that need it
/// instead of skipping them.
pub const REQUIRE_POSTGRES: &str = "DINGOPS_REQUIRE_POSTGRES";

/// How to get a test server, for the skip line and the failure.
const HOW_TO_RUN: &str = "start one with `eval \"$(.ci/postgres start)\"` (stop it with \
                          `.ci/postgres stop --remove`), or run `.ci/run`, which does both";

/// The test server's URL, or `None` when the calling test, which needs PostgreSQL, is to be
/// skipped: no server is named and `DINGOPS_REQUIRE_POSTGRES` is not `1`. A skip writes one
/// line to stderr (past the test harness's capture, so it shows) naming the test and how to
/// run it. When a server is required and none is named, the test fails saying how to start
/// one. The one place that decides whether a PostgreSQL test runs.
pub fn test_database_url() -> Option<String> {
    let required = match std::env::var(REQUIRE_POSTGRES) {
        Ok(v) if v.trim() == "1" => true,
        Ok(v) if v.trim().is_empty() || v.trim() == "0" => false,
        Err(std::env::VarError::NotPresent) => false,
        Ok(v) => panic!("{REQUIRE_POSTGRES}={v:?}: it is 1 (require PostgreSQL) or 0"),
        Err(e) => panic!("{REQUIRE_POSTGRES}: {e}"),
    };
    match std::env::var(TEST_DATABASE_URL) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if required => panic!(
            "{TEST_DATABASE_URL} is not set and {REQUIRE_POSTGRES}=1: this test needs a \
             PostgreSQL server; {HOW_TO_RUN}"
        ),
        _ => {
            let current = std::thread::current();
            let test = current.name().unwrap_or("a test");
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: it needs PostgreSQL and {TEST_DATABASE_URL} is not set; \
                 {HOW_TO_RUN}"
            );
            None
        }
    }
}

/// A new, empty schema on a PostgreSQL server, dropped with everything in it on drop.
pub struct TestSchema {
    server: String,
    name: String,
    url: String,
}

impl TestSchema {
    /// A schema on the test server, or `None` when the calling test is to be skipped (see
    /// [`test_database_url`]): `let Some(schema) = TestSchema::or_skip() else { return };`.
    pub fn or_skip() -> Option<Self> {
        test_database_url().map(|server| Self::on(&server))
    }

    /// A schema on the server at `server` (a `postgres://` URL without parameters).
    pub fn on(server: &str) -> Self {
        use rand::RngExt as _;
        let name = format!("t_{:016x}", rand::rng().random::<u64>());
        run_sql(server, &format!("CREATE SCHEMA {name}"));
        let url = format!("{server}?options=--search_path%3D{name}");
        Self {
            server: server.to_owned(),
            name,
            url,
        }
    }

    /// The URL of the schema, with the password: what a ledger's `database` setting (or a
    /// child process's `DINGOPS_DATABASE`) is made from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The first column of each row `sql` returns, as text, in this schema.
    pub fn column(&self, sql: &str) -> Vec<Option<String>> {
        query_column(&self.url, sql)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (server, sql) = (
            self.server.clone(),
            format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
        // Best effort: a server a test stopped for good takes its schemas with it.
        let _ = std::thread::spawn(move || {
            let _ = try_query_column(&server, &sql);
        })
        .join();
    }
}

fn run_sql(url: &str, sql: &str) {
    query_column(url, sql);
}

fn query_column(url: &str, sql: &str) -> Vec<Option<String>> {
    let (url, owned) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || try_query_column(&url, &owned))
        .join()
        .unwrap_or_else(|_| panic!("the test query thread panicked"))
        .unwrap_or_else(|e| panic!("test query {sql:?} on the test PostgreSQL server failed: {e}"))
}

/// Runs `sql` on a connection of its own, from a runtime of its own (callable anywhere but
/// inside a runtime's async thread; the callers above give it a thread). The test server
/// takes no TLS (`.ci/postgres` starts it on loopback).
fn try_query_column(url: &str, sql: &str) -> Result<Vec<Option<String>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("the test server's URL is not a PostgreSQL URL ({e})"))?;
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| describe(&e))?;
        tokio::spawn(connection);
        let messages = client.simple_query(sql).await.map_err(|e| describe(&e))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            })
            .collect())
    })
}

/// A client error with the server's message and SQLSTATE, or its chain of causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
