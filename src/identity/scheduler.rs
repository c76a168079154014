//! The renewal scheduler: the wake-up queue, [`IdentityCache::run_scheduler`] (rate limit and
//! concurrency), what a wake-up does (renew ahead of expiry, or evict an idle identity).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::clock;

use super::{
    ASKED, EvictionCause, Identity, IdentityCache, PARKED, Plan, Shared, State, Trigger, lock,
};

pub(super) fn signed_secs(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

impl IdentityCache {
    /// Runs background refreshes until `shutdown`. Spawn exactly one per cache.
    pub async fn run_scheduler(self, shutdown: CancellationToken) {
        let s = self.shared.clone();
        let permits = Arc::new(Semaphore::new(s.config.refresh_concurrency));
        let spacing = super::slots::spacing(s.config.refresh_rate);
        let mut next_slot = tokio::time::Instant::now();
        loop {
            let next = lock(&s.queue).keys().next().map(|(t, _)| *t);
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = s.queue_changed.notified() => continue,
                () = sleep => {}
            }
            loop {
                let now = tokio::time::Instant::now();
                let due = {
                    let mut q = lock(&s.queue);
                    match q.first_key_value() {
                        Some((&(t, seq), _)) if t <= now => q.remove(&(t, seq)).map(|w| (seq, w)),
                        _ => None,
                    }
                };
                let Some((seq, weak)) = due else { break };
                let Some(entry) = weak.upgrade() else {
                    continue;
                };
                if entry.wake_seq.load(Ordering::Relaxed) != seq {
                    continue;
                }
                // Rate limit: at most refresh_rate in any second, evenly spaced.
                let slot = next_slot.max(now);
                next_slot = slot + spacing;
                if slot > now {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(slot) => {}
                    }
                }
                let permit = tokio::select! {
                    () = shutdown.cancelled() => return,
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                };
                let s2 = s.clone();
                tokio::spawn(async move {
                    s2.wake(&s2, entry).await;
                    drop(permit);
                });
            }
        }
    }
}

impl Shared {
    /// Schedules a wake-up of `entry` at wall time `at` (replacing any earlier one).
    pub(super) fn schedule(&self, entry: &Arc<Identity>, at: SystemTime, now: SystemTime) {
        let when = tokio::time::Instant::now() + clock::saturating_sub(at, now);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        entry.wake_seq.store(seq, Ordering::Relaxed);
        let earliest = {
            let mut q = lock(&self.queue);
            q.insert((when, seq), Arc::downgrade(entry));
            q.keys().next() == Some(&(when, seq))
        };
        if earliest {
            self.queue_changed.notify_one();
        }
    }

    /// Schedules the renewal of a new set in the free slot of the timetable nearest its
    /// `refresh_at`, before a tenth of its window is left (room for retries). With no slot
    /// free the budget cannot cover the identities held: counted, logged once, and the renewal
    /// keeps its planned time.
    pub(super) fn schedule_renewal(&self, entry: &Arc<Identity>, plan: &Plan, now: SystemTime) {
        let base = tokio::time::Instant::now();
        let at = |t: SystemTime| base + clock::saturating_sub(t, now);
        let window = clock::saturating_sub(plan.serve_until, plan.refresh_at);
        let deadline = plan.serve_until - window / 10;
        let slot = lock(&self.slots).reserve(base, at(plan.refresh_at), at(deadline));
        let when = match slot {
            Some(t) => now + t.saturating_duration_since(base),
            None => {
                self.metrics.refresh_slots_missed.inc();
                if !self.deficit_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        target: "credbroker::identity",
                        refresh_rate = self.config.refresh_rate,
                        "the renewal budget (cache.refresh_rate) cannot renew every identity \
                         held within its window: some callers will wait for an on-demand \
                         exchange; raise cache.refresh_rate or add replicas \
                         (credbroker_refresh_budget_deficit says by how much)"
                    );
                }
                plan.refresh_at
            }
        };
        entry
            .renew_at_ms
            .store(clock::unix_millis(when), Ordering::Relaxed);
        self.schedule(entry, when, now);
    }

    pub(super) fn schedule_idle_check(&self, entry: &Arc<Identity>, now: SystemTime) {
        let at = entry.last_used() + self.config.idle_timeout;
        self.schedule(entry, at.max(now), now);
    }

    /// A scheduled wake-up: evict if idle, refresh if due, or re-arm.
    pub(super) async fn wake(&self, this: &Arc<Shared>, entry: Arc<Identity>) {
        if entry.retired.load(Ordering::Acquire) {
            // Out of the cache (evicted for capacity while something held it): its holders
            // find the identity's new entry on their next ask, and only that one is renewed.
            return;
        }
        let now = self.clock.now();
        if clock::saturating_sub(now, entry.last_used()) >= self.config.idle_timeout {
            self.evict_entry(&entry, EvictionCause::Idle);
            return;
        }
        let Some(current) = entry.current.load_full() else {
            self.schedule_idle_check(&entry, now);
            return;
        };
        // The reserved slot may come before `refresh_at` (a burst spread by the budget).
        let renew_at = match entry.renew_at_ms.load(Ordering::Relaxed) {
            0 => current.plan.refresh_at,
            ms => clock::from_unix_millis(ms).min(current.plan.refresh_at),
        };
        if now < renew_at && lock(&entry.failure).is_none() {
            self.schedule(&entry, renew_at, now);
            return;
        }
        let usable_token = entry
            .held_token()
            .filter(|t| t.expires_at > now + self.min_token_validity);
        let Some(token) = usable_token else {
            entry.set_state(State::AwaitingToken);
            self.metrics
                .refreshes
                .with_label_values(&[Trigger::Ahead.label(), "skipped_token_expired"])
                .inc();
            tracing::debug!(
                target: "credbroker::identity",
                issuer = %entry.key.issuer,
                "the identity's ID token expires too soon to refresh; waiting for a caller"
            );
            self.schedule_idle_check(&entry, now);
            return;
        };
        if !entry.is_held() && entry.usage.load(Ordering::Acquire) & ASKED == 0 {
            // Nobody asked for the current set: refresh on the next ask, not now. An ask that
            // raced with this check undoes the parking and the refresh goes ahead.
            if entry.usage.fetch_or(PARKED, Ordering::AcqRel) & ASKED == 0 {
                self.metrics
                    .refreshes
                    .with_label_values(&[Trigger::Ahead.label(), "skipped_unused"])
                    .inc();
                tracing::debug!(
                    target: "credbroker::identity",
                    issuer = %entry.key.issuer,
                    "nobody asked for the identity's current credentials; refreshing on the next ask"
                );
                self.schedule_idle_check(&entry, now);
                return;
            }
            entry.usage.fetch_and(!PARKED, Ordering::AcqRel);
        }
        let _ = self
            .start_fetch(this, &entry, token, Trigger::Ahead, false)
            .await;
    }
}
