//! `[imds]`: the IMDSv2-compatible listener and the configured identity it serves.

use std::net::SocketAddr;
use std::time::Duration;

use super::server::allowed_hosts;
use super::{CognitoConfig, IdentityConfig, Section};

/// Default listen address of the IMDSv2-compatible endpoint (8901/8902: emulators, 8903: gRPC).
pub const DEFAULT_IMDS_LISTEN: &str = "127.0.0.1:8904";

/// The role name IMDS lists when none is configured and no role ARN gives one.
pub const DEFAULT_IMDS_ROLE_NAME: &str = "credbroker";

pub(super) const DEFAULT_IMDS_HOP_LIMIT: u64 = 1;

pub(super) const DEFAULT_IMDS_MAX_SESSION_TOKENS: u64 = 4096;

pub(super) const DEFAULT_IMDS_MIN_REMAINING: Duration = Duration::from_secs(25 * 60);

/// The IMDSv2-compatible endpoint: `[imds]`.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// Where it listens (its own listener; SDKs use root paths). Loopback unless allowed.
    pub listen: SocketAddr,
    /// Whether a non-loopback `listen` was explicitly allowed.
    pub allow_non_loopback: bool,
    /// The configured identity whose credentials it serves.
    pub identity: String,
    /// The role name listed under `security-credentials/`.
    pub role_name: String,
    /// Answer token-less (IMDSv1) GETs. Off by default, as on hardened EC2 instances.
    pub allow_imdsv1: bool,
    /// IP TTL / IPv6 hop limit of accepted connections (EC2's `HttpPutResponseHopLimit`).
    pub hop_limit: u32,
    /// Session tokens kept at once; the oldest is dropped beyond it.
    pub max_session_tokens: usize,
    /// Credentials with less than this left are refreshed before serving when possible
    /// (botocore's IMDS provider keeps using credentials with under 15–25 min left).
    pub min_remaining: Duration,
    /// `Host` names (besides loopback IPs, `localhost` and the listen address) it answers to.
    pub allowed_hosts: Vec<String>,
}

pub(super) fn build_imds(
    root: &Section<'_>,
    identities: Option<&[IdentityConfig]>,
    cognito: Option<&CognitoConfig>,
) -> Option<Option<ImdsConfig>> {
    let s = root.section("imds");
    if !s.exists() {
        return Some(None);
    }
    let allow_non_loopback = s.bool_or("allow_non_loopback", false);
    let listen = s.socket_addr_or("listen", DEFAULT_IMDS_LISTEN, allow_non_loopback);
    // Names from the table itself, so the check holds even when an identity has errors.
    let known = root.section("identities").keys();
    let identity = s.required_str("identity").and_then(|name| {
        if !known.contains(&name) {
            s.error(
                "identity",
                format!(
                    "no [identities.{name}] is configured (configured: {known:?}); IMDS serves \
                     one configured identity"
                ),
            );
            return None;
        }
        Some(name)
    });
    let role_arn = identity
        .as_deref()
        .and_then(|n| identities.unwrap_or_default().iter().find(|i| i.name == n))
        .and_then(|i| i.role.clone())
        .or_else(|| cognito.and_then(|c| c.custom_role_arn.clone()));
    let role_name = match s.opt_str("role_name") {
        Some(r) => {
            let ok = !r.is_empty()
                && r.len() <= 64
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
            if !ok {
                s.error(
                    "role_name",
                    format!("{r:?} is not an IAM role name (1-64 of A-Z a-z 0-9 +=,.@_-)"),
                );
            }
            r
        }
        None => role_arn
            .as_deref()
            .and_then(|arn| arn.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_IMDS_ROLE_NAME)
            .to_owned(),
    };
    let allow_imdsv1 = s.bool_or("allow_imdsv1", false);
    let hop_limit = s.u64_in("hop_limit", DEFAULT_IMDS_HOP_LIMIT, 1, 64);
    let max_session_tokens = s.u64_in(
        "max_session_tokens",
        DEFAULT_IMDS_MAX_SESSION_TOKENS,
        1,
        1 << 20,
    );
    let min_remaining = s.duration_in(
        "min_remaining",
        DEFAULT_IMDS_MIN_REMAINING,
        Duration::ZERO,
        Duration::from_secs(55 * 60),
    );
    let allowed_hosts = allowed_hosts(&s);
    s.finish();
    Some(Some(ImdsConfig {
        listen: listen?,
        allow_non_loopback,
        identity: identity?,
        role_name,
        allow_imdsv1,
        hop_limit: u32::try_from(hop_limit).ok()?,
        max_session_tokens: usize::try_from(max_session_tokens).ok()?,
        min_remaining,
        allowed_hosts,
    }))
}
