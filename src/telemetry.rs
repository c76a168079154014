//! Logging.
//!
//! Owns: the global `tracing` subscriber.
//!
//! Promises: logs go to stderr as text or JSON lines; the filter is `RUST_LOG` when set, else
//! `log.level`. Nothing logged contains a token, secret key or session token: credbroker's own
//! secrets are [`Secret`](crate::secret::Secret) types whose `Debug`/`Display` redact, request
//! headers are never logged, and dependencies that print request and response structures at
//! debug/trace level (the AWS SDK prints the `Logins` map and Cognito's `SessionToken`, which
//! its model does not mark sensitive; sigv4 prints canonical requests; hyper/h2 print frames)
//! are capped at `info` whatever the filter says, unless `log.unsafe_dependency_logs = true`.
//! A test runs the binary with `RUST_LOG=trace` and greps its output for secrets.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Crates whose debug/trace output can contain credentials or tokens.
pub const LEAKY_DEPENDENCIES: &[&str] = &[
    "aws_config",
    "aws_runtime",
    "aws_sdk_cognitoidentity",
    "aws_sdk_sts",
    "aws_sigv4",
    "aws_smithy_http_client",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_types",
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
];

/// The filter directive actually used: the user's, then the caps for [`LEAKY_DEPENDENCIES`].
pub fn effective_filter(log: &LogConfig, rust_log: Option<&str>) -> String {
    let mut directive = rust_log
        .filter(|v| !v.trim().is_empty())
        .unwrap_or(&log.level)
        .to_owned();
    if !log.unsafe_dependency_logs {
        for krate in LEAKY_DEPENDENCIES {
            directive.push_str(&format!(",{krate}=info"));
        }
    }
    directive
}

/// Installs the global subscriber. `rust_log` is the value of `RUST_LOG`, if set.
pub fn init(log: &LogConfig, rust_log: Option<&str>) -> Result<(), String> {
    let directive = effective_filter(log, rust_log);
    let filter = EnvFilter::try_new(&directive)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn log(unsafe_dependency_logs: bool) -> LogConfig {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            unsafe_dependency_logs,
        }
    }

    #[test]
    fn dependency_caps_override_a_trace_filter_unless_opted_out() {
        let f = effective_filter(&log(false), Some("trace,aws_smithy_runtime=trace"));
        assert!(f.starts_with("trace,aws_smithy_runtime=trace,"));
        assert!(f.ends_with("tower=info"));
        let filter = EnvFilter::try_new(&f).expect("valid");
        // The later, equally specific cap wins over the user's directive.
        assert!(
            filter.to_string().contains("aws_smithy_runtime=info"),
            "{filter}"
        );
        assert!(
            !filter.to_string().contains("aws_smithy_runtime=trace"),
            "{filter}"
        );
        assert_eq!(effective_filter(&log(true), Some("trace")), "trace");
        assert!(effective_filter(&log(false), None).starts_with("info,"));
    }
}
