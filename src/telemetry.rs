//! Logging.
//!
//! Owns: the global `tracing` subscriber.
//!
//! Promises: logs go to stderr as text or JSON lines; the filter is `RUST_LOG` when set, else
//! `log.level`. Nothing credbroker logs contains a token, secret key or session token (secrets
//! are [`Secret`](crate::secret::Secret) types whose `Debug`/`Display` redact, and request
//! headers are never logged); a test runs the binary at `trace` and greps its output.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `rust_log` is the value of `RUST_LOG`, if set.
pub fn init(log: &LogConfig, rust_log: Option<&str>) -> Result<(), String> {
    let directive = rust_log
        .filter(|v| !v.trim().is_empty())
        .unwrap_or(&log.level);
    let filter = EnvFilter::try_new(directive)
        .map_err(|e| format!("invalid log filter {directive:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match log.format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
