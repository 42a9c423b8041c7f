//! The PostgreSQL store's address: a `postgres://` URL whose password stays a secret.

use secrecy::SecretString;
use url::Url;

/// A PostgreSQL connection URL, checked when read. The password (in the user part or a
/// `password` parameter) is kept as a secret: [`PostgresUrl::redacted`] is what may be
/// printed.
#[derive(Clone)]
pub struct PostgresUrl {
    /// The URL without `sslmode`, which [`PostgresUrl::tls`] replaces.
    url: SecretString,
    redacted: String,
    tls: bool,
}

impl PartialEq for PostgresUrl {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret as _;
        self.url.expose_secret() == other.url.expose_secret() && self.tls == other.tls
    }
}

impl Eq for PostgresUrl {}

/// URL parameters whose value may be printed; any other's is shown as `***`.
const PRINTABLE_PARAMS: &[&str] = &["host", "port", "dbname", "user", "sslmode", "application_name"];

/// Why a text is not a [`PostgresUrl`]. No variant holds the URL (it may hold a password)
/// but [`PostgresUrlError::Config`], which holds it redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostgresUrlError {
    #[error("is not a valid URL ({0})")]
    NotUrl(url::ParseError),
    #[error(
        "sslmode must be disable, require or verify-full (TLS certificates are always verified against the webpki roots)"
    )]
    SslMode,
    #[error("is not a valid PostgreSQL URL ({0})")]
    NotPostgres(String),
    #[error("names no PostgreSQL host")]
    NoHost,
    #[error("names no PostgreSQL user")]
    NoUser,
    #[error("{redacted}: not a valid PostgreSQL URL ({reason})")]
    Config { redacted: String, reason: String },
}

impl PostgresUrl {
    pub fn parse(text: &str) -> Result<Self, PostgresUrlError> {
        let mut url = Url::parse(text.trim()).map_err(PostgresUrlError::NotUrl)?;
        let mut tls = false;
        let mut kept = Vec::new();
        for (key, value) in url.query_pairs() {
            if key == "sslmode" {
                tls = match value.as_ref() {
                    "disable" => false,
                    // rustls always verifies the server's certificate and name, so `require`
                    // is as strict as `verify-full`.
                    "require" | "verify-full" => true,
                    _ => return Err(PostgresUrlError::SslMode),
                };
            } else {
                kept.push((key.into_owned(), value.into_owned()));
            }
        }
        let mut shown = url.clone();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(&kept);
        }
        let config: tokio_postgres::Config = url
            .as_str()
            .parse()
            .map_err(|e: tokio_postgres::Error| PostgresUrlError::NotPostgres(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(PostgresUrlError::NoHost);
        }
        if config.get_user().is_none() {
            return Err(PostgresUrlError::NoUser);
        }
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        let printable: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(k, v)| {
                let v = if PRINTABLE_PARAMS.contains(&k.as_ref()) {
                    v.into_owned()
                } else {
                    "***".to_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        if !printable.is_empty() {
            shown.query_pairs_mut().clear().extend_pairs(&printable);
        }
        Ok(Self {
            url: SecretString::from(url.as_str().to_owned()),
            redacted: shown.to_string(),
            tls,
        })
    }

    /// The URL with its password replaced by `***`: for logs and messages.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Whether the connection must use TLS (`sslmode=require` or `verify-full`).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The client configuration (without TLS, which the caller sets from [`Self::tls`]).
    pub fn config(&self) -> Result<tokio_postgres::Config, PostgresUrlError> {
        use secrecy::ExposeSecret as _;
        self.url
            .expose_secret()
            .parse()
            .map_err(|e: tokio_postgres::Error| PostgresUrlError::Config {
                redacted: self.redacted.clone(),
                reason: e.to_string(),
            })
    }
}
