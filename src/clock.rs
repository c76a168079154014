//! Injected wall-clock time.
//!
//! Owns: the [`Clock`] trait and its two implementations.
//!
//! Promises: no logic in credbroker reads `SystemTime::now()` directly; it asks a [`Clock`].
//! Production uses [`SystemClock`]. Tests use [`TokioClock`], whose wall time is derived from
//! tokio's (pausable) clock, so `tokio::time::pause()` + `advance()` move token expiry, credential
//! expiry and refresh schedules together and hour-long lifetimes are tested in milliseconds.
//!
//! Sleeping always goes through `tokio::time`, which follows the same paused clock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// A clock shared by every component of one broker (and its emulators).
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall time that advances with tokio's clock: `origin_wall + (tokio::Instant::now() - origin)`.
///
/// Under `tokio::time::pause()` it stands still until the test advances time.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin_wall: SystemTime,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that starts at the real current time.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock that starts at `wall` (must be called inside a tokio runtime when paused).
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            origin_wall: wall,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.origin_wall + self.origin.elapsed()
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Seconds since the Unix epoch (negative before 1970, which never happens in practice).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Milliseconds since the Unix epoch, saturating (for atomics).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time `secs` seconds after the Unix epoch (clamped at the epoch).
pub fn from_unix_seconds(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// The time `millis` milliseconds after the Unix epoch.
pub fn from_unix_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// `later - earlier`, or zero when `later` is not later.
pub fn saturating_sub(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SSZ` (UTC, no fraction): the only form every AWS SDK
/// accepts in a credentials `Expiration` field.
pub fn format_aws_timestamp(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_timestamp_format_is_exact() {
        assert_eq!(format_aws_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z, a leap day, with a fraction that must be dropped.
        let t = from_unix_seconds(1_709_210_096) + Duration::from_millis(999);
        assert_eq!(format_aws_timestamp(t), "2024-02-29T12:34:56Z");
        assert_eq!(
            format_aws_timestamp(from_unix_seconds(4_102_444_799)),
            "2099-12-31T23:59:59Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::starting_at(from_unix_seconds(1_000));
        assert_eq!(unix_seconds(clock.now()), 1_000);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(unix_seconds(clock.now()), 4_600);
    }
}
