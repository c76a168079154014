//! Logging.
//!
//! Owns: the global `tracing` subscriber.
//!
//! Promises: logs go to stderr as text or JSON lines; the filter is `RUST_LOG` when set, else
//! `log.level`. Nothing logged contains a token, secret key or session token: credbroker's own
//! secrets are [`Secret`](crate::secret::Secret) types whose `Debug`/`Display` redact, request
//! headers are never logged, and dependencies that print request and response structures at
//! debug/trace level (the AWS SDK prints the `Logins` map and Cognito's `SessionToken`, which
//! its model does not mark sensitive; sigv4 prints canonical requests; hyper/h2 print frames;
//! tungstenite prints every WebSocket message and frame payload, and the upgrade request of each
//! real-time connection to AppSync with its `header-` subprotocol: ID tokens, SigV4 session
//! tokens and whatever a caller put in a start's `extensions`) are capped at `info` whatever
//! the filter says, unless `log.unsafe_dependency_logs = true`.
//! A test runs the binary with `RUST_LOG=trace` and greps its output for secrets.
//!
//! Panics: [`install_panic_hook`] (the first thing the binary does) replaces Rust's default
//! hook, which prints the panic message — and a message built with `format!` can quote request
//! data (a slicing panic quotes the string it sliced). The hook reports where the panic
//! happened and on which thread; of the message it keeps only a `panic!("literal")` (text from
//! credbroker's source), never a formatted one, of which it gives the length.

use std::any::Any;

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
    "tokio_tungstenite",
    "tonic",
    "tower",
    "tungstenite",
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

/// Replaces the default panic hook with one that never prints a formatted panic message (see
/// the module docs). Reports go to the log when a subscriber is installed, else to stderr.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| (l.file(), l.line(), l.column()));
        let thread = std::thread::current();
        let report = panic_report(location, thread.name(), info.payload());
        if tracing::dispatcher::has_been_set() {
            tracing::error!(target: "credbroker::panic", "{report}");
        } else {
            eprintln!("credbroker: {report}");
        }
    }));
}

/// The panic report: location, thread, and the message only when it is a string literal.
pub fn panic_report(
    location: Option<(&str, u32, u32)>,
    thread: Option<&str>,
    payload: &(dyn Any + Send),
) -> String {
    let at = match location {
        Some((file, line, column)) => format!("{file}:{line}:{column}"),
        None => "an unknown location".to_owned(),
    };
    let thread = thread.unwrap_or("unnamed");
    // A `&'static str` payload is a `panic!("literal")`: text from the source, not data.
    let message = if let Some(literal) = payload.downcast_ref::<&'static str>() {
        format!("{literal:?}")
    } else if let Some(formatted) = payload.downcast_ref::<String>() {
        format!(
            "message withheld ({} bytes: a formatted panic message can quote request data)",
            formatted.len()
        )
    } else {
        "message withheld (not a string)".to_owned()
    };
    format!("internal error: panicked at {at} on thread {thread}: {message}; please report it")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_reports_keep_the_location_and_drop_formatted_messages() {
        let secret = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2ln";
        let formatted: Box<dyn Any + Send> = Box::new(format!(
            "byte index 1 is not a char boundary; it is inside 'é' of `{secret}`"
        ));
        let report = panic_report(
            Some(("src/server/imds.rs", 231, 29)),
            Some("tokio-runtime-worker"),
            formatted.as_ref(),
        );
        assert!(!report.contains(secret), "{report}");
        assert!(!report.contains("char boundary"), "{report}");
        assert!(report.contains("src/server/imds.rs:231:29"), "{report}");
        assert!(report.contains("tokio-runtime-worker"), "{report}");
        assert!(report.contains("bytes"), "{report}");

        let literal: Box<dyn Any + Send> = Box::new("the scheduler lost its entry");
        let report = panic_report(None, None, literal.as_ref());
        assert!(
            report.contains("\"the scheduler lost its entry\""),
            "{report}"
        );
        assert!(report.contains("unknown location"), "{report}");

        let other: Box<dyn Any + Send> = Box::new(42_u32);
        let report = panic_report(None, Some("main"), other.as_ref());
        assert!(
            report.contains("not a string") && !report.contains("42"),
            "{report}"
        );
    }

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
        assert!(f.ends_with("tower=info,tungstenite=info"));
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
