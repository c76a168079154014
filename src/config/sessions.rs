//! `[sessions]`: opaque session handles that stand for a verified ID token.
//!
//! Promises: a session never outlives its ID token (unless a refresh source renews the token)
//! nor `max_lifetime`; at most `max_sessions` exist, at most `max_per_identity` per user.

use std::time::Duration;

use super::Section;

const DEFAULT_MAX_SESSIONS: u64 = 10_000;
const DEFAULT_MAX_PER_IDENTITY: u64 = 32;
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Session limits.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    /// Live sessions, at most; beyond it creating one fails with 429 / RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// Live sessions of one user (issuer + subject), at most, so one user cannot use them all.
    pub max_per_identity: usize,
    /// Absolute session lifetime from creation, whatever tokens it is given later.
    pub max_lifetime: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            max_sessions: DEFAULT_MAX_SESSIONS as usize,
            max_per_identity: DEFAULT_MAX_PER_IDENTITY as usize,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }
}

pub(super) fn build_sessions(s: &Section<'_>) -> Option<SessionsConfig> {
    let max_sessions = s.u64_in("max_sessions", DEFAULT_MAX_SESSIONS, 1, 10_000_000);
    let max_per_identity = s.u64_in("max_per_identity", DEFAULT_MAX_PER_IDENTITY, 1, 100_000);
    if max_per_identity > max_sessions {
        s.error(
            "max_per_identity",
            format!("must not exceed max_sessions ({max_sessions})"),
        );
    }
    Some(SessionsConfig {
        max_sessions: usize::try_from(max_sessions).ok()?,
        max_per_identity: usize::try_from(max_per_identity).ok()?,
        max_lifetime: s.duration_in(
            "max_lifetime",
            DEFAULT_MAX_LIFETIME,
            Duration::from_secs(60),
            Duration::from_secs(90 * 86_400),
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigErrors};

    const MINIMAL: &str = r#"
        [providers.auth0]
        issuer = "https://dev-x.us.auth0.com/"
        audiences = ["client-1"]

        [cognito]
        region = "us-east-1"
        identity_pool_id = "us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211"
    "#;

    #[test]
    fn sessions_have_defaults_and_checked_limits() {
        let c = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.sessions.max_sessions, 10_000);
        assert_eq!(c.sessions.max_per_identity, 32);
        assert_eq!(c.sessions.max_lifetime, Duration::from_secs(86_400));
        let text = format!(
            "{MINIMAL}\n[sessions]\nmax_sessions = 5\nmax_per_identity = 6\nmax_lifetime = \"10s\"\n\
             max_sesions = 1\n"
        );
        let Err(ConfigErrors(errors)) = Config::from_toml(&text) else {
            panic!("invalid")
        };
        let all = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for expected in [
            "sessions.max_per_identity: must not exceed max_sessions (5)",
            "sessions.max_lifetime: 10s is out of range",
            "sessions.max_sesions: unknown setting",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }
}
