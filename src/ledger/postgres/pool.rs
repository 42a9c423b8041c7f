//! A small pool of PostgreSQL connections with their prepared statements.
//!
//! A connection that failed, timed out or was closed by the server is dropped rather than
//! returned, and the next caller connects anew: when PostgreSQL comes back, the ledger does
//! too, without a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::super::LedgerError;
use super::{describe, pg};

/// How long a caller waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a connection (TCP, TLS, authentication) may take, unless the URL sets
/// `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One open connection and the statements prepared on it.
pub struct Session {
    pub client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Session {
    /// `sql`, prepared once per connection.
    pub async fn statement(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(sql).await?;
        self.statements.insert(sql, st.clone());
        Ok(st)
    }

    pub async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let st = self.statement(sql).await?;
        self.client.query(&st, params).await
    }

    pub async fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let st = self.statement(sql).await?;
        self.client.query_opt(&st, params).await
    }

    pub async fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let st = self.statement(sql).await?;
        self.client.execute(&st, params).await
    }
}

/// Opens connections to one server.
pub struct Connector {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Connector {
    pub fn new(mut config: tokio_postgres::Config, tls: bool) -> Result<Self, LedgerError> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("dingops");
        }
        let tls = if tls {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config()?))
        } else {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            None
        };
        Ok(Self { config, tls })
    }

    /// Opens a connection; its I/O runs as a task on the current runtime.
    pub async fn connect(&self) -> Result<Session, LedgerError> {
        let client = match &self.tls {
            None => {
                let (client, connection) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(pg("connect"))?;
                tokio::spawn(drive(connection));
                client
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await.map_err(pg("connect"))?;
                tokio::spawn(drive(connection));
                client
            }
        };
        Ok(Session {
            client,
            statements: HashMap::new(),
        })
    }
}

/// Runs a connection's I/O until it closes.
async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %describe(&e), "ledger connection to PostgreSQL ended");
    }
}

/// rustls with the ring provider and the webpki roots, as the DingTalk client uses.
fn tls_config() -> Result<rustls::ClientConfig, LedgerError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| LedgerError::Schema(format!("TLS setup: {e}")))
}

/// At most `size` connections in use at once; idle ones are kept for the next caller.
pub struct Pool {
    connector: Connector,
    idle: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    pub fn new(connector: Connector, size: usize) -> Self {
        Self {
            connector,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
        }
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// A connection for one operation: an idle one that is still open, or a new one.
    pub async fn get(self: &Arc<Self>) -> Result<Lease, LedgerError> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| LedgerError::Timeout("waiting for a PostgreSQL connection"))?
            .map_err(|_| LedgerError::WriterGone)?;
        let reused = loop {
            let next = self.idle.lock().map_err(|_| LedgerError::Poisoned)?.pop();
            match next {
                Some(s) if s.client.is_closed() => continue,
                other => break other,
            }
        };
        let session = match reused {
            Some(s) => s,
            None => self.connector.connect().await?,
        };
        Ok(Lease {
            session,
            pool: Arc::clone(self),
            _permit: permit,
        })
    }
}

/// A connection taken from the [`Pool`]. It goes back only through [`Lease::done`], once the
/// operation ended well: one that failed or was abandoned (a timeout) may have left the
/// connection in any state, and dropping the lease closes it.
pub struct Lease {
    session: Session,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// The operation ended well: the connection may serve the next one.
    pub fn done(self) {
        if !self.session.client.is_closed()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push(self.session);
        }
    }
}

impl std::ops::Deref for Lease {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}
