//! The fleet's Cognito budget: a GCRA limiter per operation evaluated in Redis (on Redis time,
//! so replica clocks do not matter), with a local fallback at `rate / expected_replicas`.
//!
//! Promises:
//! - over any window, the fleet's calls of one operation stay within `rate × window + burst`
//!   (while Redis answers);
//! - on-demand calls (a caller waits) may use the whole burst and wait up to
//!   `budget.max_wait` for a slot, then go ahead anyway (counted `overrun`): failing a caller
//!   is worse than a throttled call, which the exchanger retries; background renewals may not
//!   use the last `background_headroom` of the burst and wait as long as it takes;
//! - with Redis unavailable each replica applies the same limiter alone (counted `local`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::cognito::{Budget, Operation, Priority};
use crate::config::BudgetConfig;
use crate::metrics::Metrics;

use super::store::Store;

/// The longest a background call sleeps before asking again.
const BACKGROUND_RECHECK: Duration = Duration::from_secs(1);

/// One limiter's parameters.
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Time per call.
    period: Duration,
    /// Calls that may go at once.
    burst: f64,
}

impl Rate {
    fn new(per_second: f64, burst_seconds: f64) -> Self {
        Self {
            period: Duration::from_secs_f64(1.0 / per_second),
            burst: (per_second * burst_seconds).max(1.0),
        }
    }

    /// GCRA tolerance for `priority` (how far ahead of the schedule it may run).
    fn tolerance(&self, priority: Priority, headroom: f64) -> Duration {
        let slots = match priority {
            Priority::OnDemand => self.burst - 1.0,
            Priority::Background => (self.burst * (1.0 - headroom) - 1.0).max(0.0),
        };
        self.period.mul_f64(slots.max(0.0))
    }
}

/// The in-process limiter: the same GCRA on `tokio::time`.
#[derive(Debug, Default)]
pub struct LocalGcra {
    tat: Option<tokio::time::Instant>,
}

impl LocalGcra {
    /// `(granted, wait)` as the Redis script answers.
    pub fn take(
        &mut self,
        period: Duration,
        tolerance: Duration,
        max_wait: Duration,
    ) -> (bool, Duration) {
        let now = tokio::time::Instant::now();
        let tat = self.tat.map_or(now, |t| t.max(now));
        let wait = tat.saturating_duration_since(now).saturating_sub(tolerance);
        if wait > max_wait {
            return (false, wait);
        }
        self.tat = Some(tat + period);
        (true, wait)
    }
}

/// The budget the exchanger asks before every Cognito attempt.
pub struct FleetBudget {
    store: Arc<Store>,
    prefix: String,
    config: BudgetConfig,
    get_id: Rate,
    credentials: Rate,
    local: Mutex<[LocalGcra; 2]>,
    metrics: Metrics,
}

impl FleetBudget {
    pub(super) fn new(
        store: Arc<Store>,
        prefix: &str,
        config: BudgetConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            prefix: prefix.to_owned(),
            get_id: Rate::new(config.get_id_rate, config.burst_seconds),
            credentials: Rate::new(config.credentials_rate, config.burst_seconds),
            config,
            local: Mutex::new([LocalGcra::default(), LocalGcra::default()]),
            metrics,
        }
    }

    fn count(&self, op: Operation, priority: Priority, result: &str) {
        self.metrics
            .shared
            .budget
            .with_label_values(&[op.as_str(), priority.label(), result])
            .inc();
    }

    async fn wait_for_slot(&self, op: Operation, priority: Priority) {
        let (rate, bucket, index) = match op {
            Operation::GetId => (self.get_id, "get_id", 0),
            Operation::GetCredentialsForIdentity => (self.credentials, "credentials", 1),
        };
        let key = format!("{}budget:{bucket}", self.prefix);
        let tolerance = rate.tolerance(priority, self.config.background_headroom);
        let max_wait = match priority {
            Priority::OnDemand => self.config.max_wait,
            Priority::Background => Duration::ZERO,
        };
        let started = tokio::time::Instant::now();
        loop {
            let (decision, local) = match self
                .store
                .gcra(&key, rate.period, tolerance, max_wait)
                .await
            {
                Ok(d) => (d, false),
                Err(_) => {
                    let period = rate.period * self.config.expected_replicas;
                    let mut all = self.local.lock().unwrap_or_else(|p| p.into_inner());
                    let d = all.get_mut(index).map_or((true, Duration::ZERO), |l| {
                        l.take(period, tolerance, max_wait)
                    });
                    (d, true)
                }
            };
            match decision {
                (true, wait) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    let result = match (local, wait.is_zero() && started.elapsed().is_zero()) {
                        (true, _) => "local",
                        (false, true) => "granted",
                        (false, false) => "waited",
                    };
                    self.count(op, priority, result);
                    break;
                }
                (false, _) if priority == Priority::OnDemand => {
                    self.count(op, priority, "overrun");
                    break;
                }
                (false, wait) => tokio::time::sleep(wait.min(BACKGROUND_RECHECK)).await,
            }
        }
        self.metrics
            .shared
            .budget_wait
            .with_label_values(&[op.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Budget for FleetBudget {
    fn acquire(&self, op: Operation, priority: Priority) -> BoxFuture<'_, ()> {
        Box::pin(self.wait_for_slot(op, priority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_local_limiter_keeps_rate_and_burst_and_leaves_background_headroom() {
        let rate = Rate::new(10.0, 1.0);
        let on_demand = rate.tolerance(Priority::OnDemand, 0.3);
        let background = rate.tolerance(Priority::Background, 0.3);
        let mut g = LocalGcra::default();
        // Background may use 10 × 0.7 = 7 slots of the burst of 10 at once.
        let granted = (0..10)
            .take_while(|_| g.take(rate.period, background, Duration::ZERO).0)
            .count();
        assert_eq!(granted, 7);
        // On demand takes the rest of the burst at once, then waits for reserved slots.
        for _ in 0..3 {
            assert_eq!(
                g.take(rate.period, on_demand, Duration::ZERO),
                (true, Duration::ZERO)
            );
        }
        let (ok, wait) = g.take(rate.period, on_demand, Duration::from_secs(1));
        assert!(ok);
        assert_eq!(wait, Duration::from_millis(100));
        let (ok, wait) = g.take(rate.period, on_demand, Duration::from_millis(150));
        assert!(!ok, "a wait of {wait:?} is beyond max_wait");
        // A second later ten more slots have accrued.
        tokio::time::advance(Duration::from_secs(2)).await;
        let granted = (0..20)
            .take_while(|_| g.take(rate.period, on_demand, Duration::ZERO).0)
            .count();
        assert_eq!(granted, 10);
    }
}
