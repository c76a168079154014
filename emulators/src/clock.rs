//! The emulators' time source.
//!
//! Owns: the [`Clock`] trait every emulator reads wall-clock time from, and the epoch
//! conversions the emulators need.
//!
//! Promises: no emulator logic reads `SystemTime::now()` directly; each asks the clock it was
//! started with. credbroker's own clocks are emulator clocks too (its `emulated` module, compiled
//! with the `emulators` feature, implements [`Clock`] for `dyn credbroker::clock::Clock`), so a
//! test hands the same paused `credbroker::clock::TokioClock` to the broker and to the emulators
//! and token expiry, credential expiry and refresh move together.
//!
//! This crate does not depend on credbroker (credbroker depends on it through a feature), so
//! the four epoch conversions below are small copies of `credbroker::clock`'s.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// A clock shared by the emulators of one test or demo.
pub type SharedClock = Arc<dyn Clock>;

/// A shared clock is a clock (so `Arc<dyn credbroker::clock::Clock>` can be handed over as is).
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// `clock` behind an [`Arc`], as the emulators keep it.
pub(crate) fn shared(clock: impl Clock) -> SharedClock {
    Arc::new(clock)
}

/// Seconds since the Unix epoch (negative before 1970).
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Milliseconds since the Unix epoch, saturating (zero before 1970).
pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time `secs` seconds after the Unix epoch (clamped at the epoch).
pub(crate) fn from_unix_seconds(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// The time `millis` milliseconds after the Unix epoch.
pub(crate) fn from_unix_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_conversions_round_trip() {
        let t = from_unix_millis(1_700_000_000_123);
        assert_eq!(unix_millis(t), 1_700_000_000_123);
        assert_eq!(unix_seconds(t), 1_700_000_000);
        assert_eq!(
            from_unix_seconds(1_700_000_000),
            from_unix_millis(1_700_000_000_000)
        );
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), -5);
        assert_eq!(from_unix_seconds(-5), UNIX_EPOCH);
    }

    #[test]
    fn a_shared_clock_reads_the_clock_it_wraps() {
        #[derive(Debug)]
        struct Fixed;
        impl Clock for Fixed {
            fn now(&self) -> SystemTime {
                from_unix_seconds(42)
            }
        }
        let inner: SharedClock = Arc::new(Fixed);
        assert_eq!(unix_seconds(shared(inner).now()), 42);
    }
}
