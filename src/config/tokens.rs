//! `[tokens]`: ID-token validation (size, leeway, algorithms, the verified-token cache, JWKS timing).

use std::fmt;
use std::time::Duration;

use super::Section;

pub(super) const DEFAULT_MAX_TOKEN_BYTES: u64 = 8 * 1024;

pub(super) const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

pub(super) const MAX_LEEWAY: Duration = Duration::from_secs(300);

pub(super) const DEFAULT_VERIFIED_CACHE_CAPACITY: u64 = 100_000;

pub(super) const DEFAULT_JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

pub(super) const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

pub(super) const DEFAULT_OIDC_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) const DEFAULT_MIN_TOKEN_VALIDITY: Duration = Duration::from_secs(60);

/// How ID tokens are validated.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Longest token accepted (bytes); longer ones are refused before any parsing.
    pub max_token_bytes: usize,
    /// Clock-skew leeway for `nbf` and `iat` (at most 5 minutes). Never applied to `exp`: an
    /// expired token is refused (Cognito would refuse it).
    pub leeway: Duration,
    /// How many verified tokens are remembered (by digest) so repeats skip signature checks.
    pub verified_cache_capacity: u64,
    /// Minimum time between JWKS refetches triggered by an unknown `kid`.
    pub jwks_refetch_interval: Duration,
    /// Period of routine JWKS refreshes.
    pub jwks_refresh_interval: Duration,
    /// Timeout of discovery and JWKS requests.
    pub oidc_timeout: Duration,
    /// A token with less than this left is refused (401 `TokenExpired`), and a stored token is
    /// used for an exchange (a background refresh, a session's) only while it has this much left.
    pub min_token_validity: Duration,
}

/// A JWS algorithm a provider may sign ID tokens with. Symmetric (HS*) and `none` are never
/// accepted: nobody but the issuer could verify them, and Cognito refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (the default, and what Cognito accepts).
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        }
    }

    /// Parses a JOSE name (case-sensitive, as in JWT headers).
    pub fn from_jose(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            _ => return None,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(super) fn build_tokens(s: &Section<'_>) -> Option<TokenConfig> {
    let config = TokenConfig {
        max_token_bytes: usize::try_from(s.u64_in(
            "max_token_bytes",
            DEFAULT_MAX_TOKEN_BYTES,
            256,
            1 << 20,
        ))
        .ok()?,
        leeway: s.duration_in("leeway", DEFAULT_LEEWAY, Duration::ZERO, MAX_LEEWAY),
        verified_cache_capacity: s.u64_in(
            "verified_cache_capacity",
            DEFAULT_VERIFIED_CACHE_CAPACITY,
            1,
            u64::from(u32::MAX),
        ),
        jwks_refetch_interval: s.duration_in(
            "jwks_refetch_interval",
            DEFAULT_JWKS_REFETCH_INTERVAL,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ),
        jwks_refresh_interval: s.duration_in(
            "jwks_refresh_interval",
            DEFAULT_JWKS_REFRESH_INTERVAL,
            Duration::from_secs(60),
            Duration::from_secs(7 * 86_400),
        ),
        oidc_timeout: s.duration_in(
            "oidc_timeout",
            DEFAULT_OIDC_TIMEOUT,
            Duration::from_millis(100),
            Duration::from_secs(120),
        ),
        min_token_validity: s.duration_in(
            "min_token_validity",
            DEFAULT_MIN_TOKEN_VALIDITY,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ),
    };
    Some(config)
}

/// Why an algorithm name is refused, with the fix.
pub fn algorithm_refusal(name: &str) -> String {
    if name.to_ascii_uppercase().starts_with("HS") {
        format!(
            "{name} is a shared-secret algorithm: tokens signed with it can only be verified by the \
             issuer itself, and Cognito refuses them. In Auth0, switch the application's JWT \
             signature algorithm to RS256 (Application → Settings → Advanced → OAuth)"
        )
    } else if name.eq_ignore_ascii_case("none") {
        "\"none\" means unsigned tokens, which anyone can forge; it is never accepted".to_owned()
    } else {
        format!("unknown algorithm {name:?}; accepted: RS256, RS384, RS512, PS256, ES256, ES384")
    }
}
