//! `[log]`: log level and format.

use super::Section;

/// Log output.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// An `EnvFilter` directive (`RUST_LOG` overrides it).
    pub level: String,
    /// Text or JSON lines.
    pub format: LogFormat,
    /// Let dependencies log at debug/trace. Their output can contain tokens and session
    /// tokens, so this is off by default; turn it on only to debug the dependencies themselves.
    pub unsafe_dependency_logs: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

pub(super) fn build_log(s: &Section<'_>) -> Option<LogConfig> {
    let level = s.str_or("level", "info");
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        s.error("level", format!("{level:?} is not a log filter: {e}"));
    }
    let format = match s.str_or("format", "text").as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            s.error("format", format!("{other:?} is not \"text\" or \"json\""));
            LogFormat::Text
        }
    };
    let unsafe_dependency_logs = s.bool_or("unsafe_dependency_logs", false);
    Some(LogConfig {
        level,
        format,
        unsafe_dependency_logs,
    })
}
