//! The renewal timetable: one slot per `1 / cache.refresh_rate` seconds, each slot renews at
//! most one identity. A renewal takes the free slot nearest its plan (the earliest at or after
//! `refresh_at` up to its deadline, else the latest before `refresh_at`), so identities
//! obtained together spread over their window instead of piling up at its start, and a burst
//! larger than the window holds starts early instead of leaving callers an on-demand
//! exchange. When no slot is free between now and the deadline, the budget cannot cover the
//! identities held: the caller says so.
//!
//! The budget is strict: no closed one-second interval holds more than `cache.refresh_rate`
//! renewals ([`spacing`]), so Cognito never sees one over it in any second, however its
//! seconds fall.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// Taken slots as merged runs `start → end` (inclusive), so a search is a lookup, not a scan.
#[derive(Debug)]
pub(super) struct Slots {
    epoch: Instant,
    spacing: Duration,
    taken: BTreeMap<u64, u64>,
}

/// The gap between two renewals at `rate_per_second`: a thousandth over `1 / rate`, so that
/// renewal `k + rate` falls after the end of the second that starts at renewal `k` (tokio's
/// timers round up to the millisecond, which only widens the gap). It costs 0.1 % of the
/// budget. The one place the rate becomes a gap: the timetable and the scheduler's limiter
/// both use it.
pub(super) fn spacing(rate_per_second: f64) -> Duration {
    Duration::from_secs_f64(1.001 / rate_per_second)
}

impl Slots {
    pub(super) fn new(rate_per_second: f64, epoch: Instant) -> Self {
        Self {
            epoch,
            spacing: spacing(rate_per_second),
            taken: BTreeMap::new(),
        }
    }

    /// The first slot at or after `t`.
    fn index(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.epoch);
        let n = since.as_nanos().div_ceil(self.spacing.as_nanos().max(1));
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The last slot at or before `t` (the first slot when `t` is before it).
    fn index_before(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.epoch);
        let n = since.as_nanos() / self.spacing.as_nanos().max(1);
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    fn time(&self, k: u64) -> Instant {
        self.epoch
            + self
                .spacing
                .saturating_mul(u32::try_from(k).unwrap_or(u32::MAX))
    }

    /// The run holding `k`, if taken.
    fn run(&self, k: u64) -> Option<(u64, u64)> {
        self.taken
            .range(..=k)
            .next_back()
            .filter(|(_, end)| **end >= k)
            .map(|(s, e)| (*s, *e))
    }

    fn take(&mut self, k: u64) {
        let before = k.checked_sub(1).and_then(|p| self.run(p));
        let after = k
            .checked_add(1)
            .and_then(|n| self.taken.get(&n).map(|e| (n, *e)));
        let start = before.map_or(k, |(s, _)| s);
        let end = after.map_or(k, |(n, e)| {
            self.taken.remove(&n);
            e
        });
        self.taken.insert(start, end);
    }

    /// Forgets runs that ended before `now`.
    fn prune(&mut self, now: u64) {
        while let Some((&start, &end)) = self.taken.first_key_value() {
            if end >= now {
                break;
            }
            self.taken.remove(&start);
        }
    }

    /// Reserves the free slot nearest `want` within `[now, deadline]` (see the module docs);
    /// `None` when every slot there is taken.
    pub(super) fn reserve(
        &mut self,
        now: Instant,
        want: Instant,
        deadline: Instant,
    ) -> Option<Instant> {
        let first = self.index(now);
        self.prune(first);
        let last = self.index_before(deadline).max(first);
        let want = self.index(want).clamp(first, last);
        let later = match self.run(want) {
            Some((_, end)) => end.saturating_add(1),
            None => want,
        };
        let k = if later <= last {
            later
        } else {
            match self.run(want) {
                Some((start, _)) if start > first => start - 1,
                Some(_) => return None,
                None => want,
            }
        };
        self.take(k);
        Some(self.time(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_fills_its_window_then_starts_early_and_never_doubles_up() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let gap = spacing(10.0);
        let mut slots = Slots::new(10.0, t0);
        // 30 renewals that all want t0+10 s with a deadline at t0+11 s: the 10 slots from
        // 10 s to 11 s, then the latest ones before 10 s.
        let mut got: Vec<Duration> = (0..30)
            .map(|_| {
                slots
                    .reserve(t0, t0 + s(10), t0 + s(11))
                    .expect("a slot")
                    .duration_since(t0)
            })
            .collect();
        got.sort();
        assert!(
            got.windows(2).all(|w| w[1] - w[0] == gap),
            "one renewal per slot, none skipped: {got:?}"
        );
        let last = *got.last().expect("30");
        assert!(
            last <= s(11) && s(11) - last < gap,
            "the window is used to its deadline and not past it: {last:?}"
        );
        assert_eq!(
            got.iter().filter(|&&t| t >= s(10)).count(),
            10,
            "10 in their window"
        );
        assert_eq!(
            got.iter().filter(|&&t| t < s(10)).count(),
            20,
            "20 start early"
        );
        // No one-second interval holds more than the rate.
        assert_eq!(got[10] - got[0], gap * 10);
        assert!(got[10] - got[0] > s(1));
        // Nothing is free between the first and the deadline any more; an earlier window
        // still fits.
        assert_eq!(
            slots.reserve(t0 + got[0], t0 + s(10), t0 + s(11)),
            None,
            "no slot left: the budget cannot cover it"
        );
        assert!(slots.reserve(t0, t0 + s(2), t0 + s(3)).is_some());
    }
}
