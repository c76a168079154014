//! `[admin]`: the admin listener (health, readiness, metrics) and its Cognito probe.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{ImdsConfig, Section, ServerConfig};

/// Default listen address of the admin listener (metrics, health probes).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8909";

pub(super) const DEFAULT_ADMIN_COGNITO_PROBE_INTERVAL: Duration = Duration::from_secs(10);

pub(super) const DEFAULT_ADMIN_PROBE_WAIT: Duration = Duration::from_millis(800);

/// The admin listener: `[admin]`. Serves `/metrics`, `/livez` and `/readyz`, never credentials.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Whether the admin listener runs at all.
    pub enabled: bool,
    /// Where it listens. Any address is accepted without `allow_non_loopback`: it serves no
    /// credentials, and kubelet probes and Prometheus reach a pod on its pod IP, not loopback.
    pub listen: SocketAddr,
    /// Least time between two Cognito reachability probes made on behalf of `/readyz` (a probe
    /// is an unsigned GetId with a placeholder login; it is made only while nothing proves
    /// Cognito answers: no recent answer and no servable credentials cached).
    pub cognito_probe_interval: Duration,
    /// How long `/readyz` waits for a probe it started before answering with what it knows
    /// (keep it under the kubelet probe's `timeoutSeconds`, 1 s by default).
    pub probe_wait: Duration,
}

pub(super) fn build_admin(
    s: &Section<'_>,
    server: Option<&ServerConfig>,
    imds: Option<&ImdsConfig>,
) -> Option<AdminConfig> {
    let enabled = s.bool_or("enabled", true);
    let listen = s.socket_addr_or("listen", DEFAULT_ADMIN_LISTEN, true);
    let cognito_probe_interval = s.duration_in(
        "cognito_probe_interval",
        DEFAULT_ADMIN_COGNITO_PROBE_INTERVAL,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let probe_wait = s.duration_in(
        "probe_wait",
        DEFAULT_ADMIN_PROBE_WAIT,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let listen = listen?;
    if enabled && listen.port() != 0 {
        let taken = [
            ("server.listen", server.map(|c| c.listen)),
            ("imds.listen", imds.map(|c| c.listen)),
        ];
        for (name, other) in taken {
            if other.is_some_and(|o| o.port() == listen.port() && overlaps(o.ip(), listen.ip())) {
                s.error(
                    "listen",
                    format!(
                        "{listen} collides with {name}; the admin listener needs its own port \
                         (default {DEFAULT_ADMIN_LISTEN})"
                    ),
                );
            }
        }
    }
    Some(AdminConfig {
        enabled,
        listen,
        cognito_probe_interval,
        probe_wait,
    })
}

/// Whether two bind addresses on the same port would collide.
pub(super) fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}
