//! `[cache]`: the identity cache (capacity, renewal thresholds and rate, failure memory, idle eviction).

use std::time::Duration;

use super::{Section, fmt_duration};

pub(super) const DEFAULT_MAX_IDENTITIES: u64 = 100_000;

pub(super) const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(20 * 60);

pub(super) const DEFAULT_REFRESH_AHEAD: Duration = Duration::from_secs(30 * 60);

pub(super) const DEFAULT_REFRESH_JITTER: Duration = Duration::from_secs(5 * 60);

pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

pub(super) const DEFAULT_REFRESH_RATE: f64 = 50.0;

pub(super) const DEFAULT_REFRESH_CONCURRENCY: u64 = 16;

pub(super) const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);

pub(super) const DEFAULT_FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Identity cache and refresh policy. Thresholds scale down for short credential lifetimes.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Most identities kept; least-used beyond it are evicted.
    pub max_identities: u64,
    /// Never serve credentials with less than this left.
    pub min_remaining: Duration,
    /// Start refreshing in the background when this much is left.
    pub refresh_ahead: Duration,
    /// Spread of background refresh times (taken from the window between the two thresholds).
    pub refresh_jitter: Duration,
    /// Identities with no caller for this long are evicted. Before that, a credential set
    /// nobody asked for is not refreshed again unless the identity is watched or held (see
    /// the identity cache's module docs).
    pub idle_timeout: Duration,
    /// Background refreshes started per second, at most (Cognito quota protection).
    pub refresh_rate: f64,
    /// Background refreshes in flight, at most.
    pub refresh_concurrency: usize,
    /// How long a terminal Cognito refusal for a given token is remembered (no upstream call).
    pub negative_ttl: Duration,
    /// Longest pause after consecutive transient failures before an identity is retried.
    pub failure_backoff_max: Duration,
}

pub(super) fn build_cache(s: &Section<'_>) -> Option<CacheConfig> {
    let min_remaining = s.duration_in(
        "min_remaining",
        DEFAULT_MIN_REMAINING,
        Duration::from_secs(1),
        Duration::from_secs(12 * 3600),
    );
    let refresh_ahead = s.duration_in(
        "refresh_ahead",
        DEFAULT_REFRESH_AHEAD,
        Duration::from_secs(1),
        Duration::from_secs(12 * 3600),
    );
    let refresh_jitter = s.duration_in(
        "refresh_jitter",
        DEFAULT_REFRESH_JITTER,
        Duration::ZERO,
        Duration::from_secs(12 * 3600),
    );
    if refresh_ahead <= min_remaining {
        s.error(
            "refresh_ahead",
            format!(
                "must be larger than min_remaining ({}), so a background refresh happens before \
                 credentials become unservable",
                fmt_duration(min_remaining)
            ),
        );
    } else if refresh_jitter > refresh_ahead - min_remaining {
        s.error(
            "refresh_jitter",
            format!(
                "must not exceed refresh_ahead - min_remaining ({})",
                fmt_duration(refresh_ahead - min_remaining)
            ),
        );
    }
    let refresh_rate = s.f64_in("refresh_rate", DEFAULT_REFRESH_RATE, 0.001, 100_000.0);
    let config = CacheConfig {
        max_identities: s.u64_in("max_identities", DEFAULT_MAX_IDENTITIES, 1, 100_000_000),
        min_remaining,
        refresh_ahead,
        refresh_jitter,
        idle_timeout: s.duration_in(
            "idle_timeout",
            DEFAULT_IDLE_TIMEOUT,
            Duration::from_secs(1),
            Duration::from_secs(30 * 86_400),
        ),
        refresh_rate,
        refresh_concurrency: usize::try_from(s.u64_in(
            "refresh_concurrency",
            DEFAULT_REFRESH_CONCURRENCY,
            1,
            4096,
        ))
        .ok()?,
        negative_ttl: s.duration_in(
            "negative_ttl",
            DEFAULT_NEGATIVE_TTL,
            Duration::ZERO,
            Duration::from_secs(3600),
        ),
        failure_backoff_max: s.duration_in(
            "failure_backoff_max",
            DEFAULT_FAILURE_BACKOFF_MAX,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        ),
    };
    Some(config)
}
