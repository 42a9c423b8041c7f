//! Logging setup. Secrets never reach a log line: tokens and sessionWebhook URLs are
//! wrapped in redacting types and transport errors are logged without their URL.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: level from `RUST_LOG` (default `info`), output to stderr.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
