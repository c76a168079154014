//! `[server]`: the main listener (address, connection and request limits, Host check, shutdown).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Section;

/// Default listen address of the container-credentials endpoint.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8900";

pub(super) const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;

pub(super) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) const DEFAULT_MAX_CONNECTIONS: u64 = 1024;

pub(super) const DEFAULT_MAX_PENDING_EXCHANGES: u64 = 512;

pub(super) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// The container-credentials HTTP listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where `GET /v1/credentials` is served. Loopback unless `allow_non_loopback`.
    pub listen: SocketAddr,
    /// Whether a non-loopback `listen` was explicitly allowed.
    pub allow_non_loopback: bool,
    /// Largest request head (request line + headers) accepted; beyond it hyper answers 431.
    pub max_header_bytes: usize,
    /// Time allowed for a client to send its request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Longest time one request may take, including waiting for Cognito.
    pub request_timeout: Duration,
    /// Concurrent connections; further connections wait in the accept backlog.
    pub max_connections: usize,
    /// Concurrent requests waiting on an upstream exchange; beyond it callers get 429.
    pub max_pending_exchanges: usize,
    /// On SIGTERM, how long in-flight requests may take to finish before credbroker exits.
    pub shutdown_grace: Duration,
    /// `Host` names (besides loopback IPs, `localhost` and the listen address) the main
    /// listener answers to (DNS-rebinding guard).
    pub allowed_hosts: Vec<String>,
}

pub(super) fn build_server(s: &Section<'_>) -> Option<ServerConfig> {
    let allow_non_loopback = s.bool_or("allow_non_loopback", false);
    let listen = s.socket_addr_or("listen", DEFAULT_LISTEN, allow_non_loopback);
    let max_header_bytes = s.u64_in("max_header_bytes", DEFAULT_MAX_HEADER_BYTES, 8192, 1 << 20);
    let config = ServerConfig {
        listen: listen?,
        allow_non_loopback,
        max_header_bytes: usize::try_from(max_header_bytes).ok()?,
        header_read_timeout: s.duration_in(
            "header_read_timeout",
            DEFAULT_HEADER_READ_TIMEOUT,
            Duration::from_millis(100),
            Duration::from_secs(300),
        ),
        request_timeout: s.duration_in(
            "request_timeout",
            DEFAULT_REQUEST_TIMEOUT,
            Duration::from_millis(100),
            Duration::from_secs(300),
        ),
        max_connections: usize::try_from(s.u64_in(
            "max_connections",
            DEFAULT_MAX_CONNECTIONS,
            1,
            1 << 20,
        ))
        .ok()?,
        max_pending_exchanges: usize::try_from(s.u64_in(
            "max_pending_exchanges",
            DEFAULT_MAX_PENDING_EXCHANGES,
            1,
            1 << 20,
        ))
        .ok()?,
        shutdown_grace: s.duration_in(
            "shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            Duration::ZERO,
            Duration::from_secs(3600),
        ),
        allowed_hosts: allowed_hosts(s),
    };
    Some(config)
}

/// `allowed_hosts`: host names or IP literals, without scheme, port or wildcard.
pub(super) fn allowed_hosts(s: &Section<'_>) -> Vec<String> {
    let names = s.str_list("allowed_hosts").unwrap_or_default();
    for name in &names {
        if !is_host_name(name) {
            s.error(
                "allowed_hosts",
                format!(
                    "{name:?} is not a host name or IP address (letters, digits, '-' and '.', \
                     no scheme, port or wildcard)"
                ),
            );
        }
    }
    names
}

/// A DNS name (labels of 1-63 letters, digits and inner hyphens, at most 253 characters,
/// optional trailing dot) or an IP literal.
pub(super) fn is_host_name(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
