//! The single-flight exchange with Cognito (one task per identity, shared by every waiting
//! caller), the failure memory (terminal refusals per token for `cache.negative_ttl`) and the
//! backoff of transient failures.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use rand::Rng;

use crate::clock;
use crate::cognito::{ErrorKind, Login, Priority, RawCredentials, UpstreamError};
use crate::oidc::VerifiedToken;
use crate::shared::{Adopted, Names, POLL_INTERVAL, SetRef, SharedTier, Turn};

use super::{ASKED, Identity, Inflight, Issued, Shared, State, Trigger, lock, publish};

/// Why credentials could not be obtained (cloneable: shared by every waiting caller).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// The upstream class, or `Unexpected` for local problems.
    pub kind: ErrorKind,
    /// What happened (Cognito's message when it gave one).
    pub message: String,
    /// When a retry makes sense (transient failures).
    pub retry_after: Option<Duration>,
}

impl FetchError {
    pub(super) fn from_upstream(e: &UpstreamError) -> Self {
        Self {
            kind: e.kind,
            message: format!("{}: {}", e.operation, e.message),
            retry_after: None,
        }
    }

    pub(super) fn local(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Unexpected,
            message: message.into(),
            retry_after: None,
        }
    }
}

pub(super) struct Failure {
    until: SystemTime,
    error: FetchError,
    /// For terminal refusals: only this token's retries are short-circuited.
    token_digest: Option<[u8; 32]>,
}

impl Shared {
    pub(super) fn remembered_failure(
        &self,
        entry: &Identity,
        token: &VerifiedToken,
        now: SystemTime,
    ) -> Option<FetchError> {
        let failure = lock(&entry.failure);
        let f = failure.as_ref()?;
        if now >= f.until {
            return None;
        }
        let applies = match f.token_digest {
            Some(digest) => digest == token.digest(),
            None => true,
        };
        applies.then(|| FetchError {
            retry_after: Some(clock::saturating_sub(f.until, now).max(Duration::from_secs(1))),
            ..f.error.clone()
        })
    }

    /// Joins the exchange in flight for `entry`, or starts one with `token`. With
    /// `reuse_servable`, servable credentials published since the caller looked are used instead.
    pub(super) fn start_fetch(
        &self,
        this: &Arc<Shared>,
        entry: &Arc<Identity>,
        token: Arc<VerifiedToken>,
        trigger: Trigger,
        reuse_servable: bool,
    ) -> Inflight {
        let mut slot = lock(&entry.inflight);
        if reuse_servable && let Some(current) = self.servable(entry) {
            // An exchange finished between the caller's cache check and this lock (exchanges
            // publish before they release the slot): use it rather than start a second one.
            let ready: BoxFuture<'static, Result<Arc<Issued>, FetchError>> =
                Box::pin(std::future::ready(Ok(current)));
            return ready.shared();
        }
        if let Some(f) = slot.as_ref() {
            if trigger == Trigger::OnDemand {
                self.metrics
                    .cache_lookups
                    .with_label_values(&["joined"])
                    .inc();
            }
            return f.clone();
        }
        if trigger == Trigger::OnDemand {
            self.metrics
                .cache_lookups
                .with_label_values(&["miss"])
                .inc();
        }
        let shared = this.clone();
        let task_entry = entry.clone();
        let handle = tokio::spawn(async move {
            let result = shared.exchange(&task_entry, &token, trigger).await;
            lock(&task_entry.inflight).take();
            result
        });
        let fut: BoxFuture<'static, Result<Arc<Issued>, FetchError>> = Box::pin(async move {
            handle
                .await
                .unwrap_or_else(|e| Err(FetchError::local(format!("exchange task failed: {e}"))))
        });
        let fut = fut.shared();
        *slot = Some(fut.clone());
        fut
    }

    /// GetId (once) + GetCredentialsForIdentity, then store, publish and schedule.
    pub(super) async fn exchange(
        &self,
        entry: &Arc<Identity>,
        token: &Arc<VerifiedToken>,
        trigger: Trigger,
    ) -> Result<Arc<Issued>, FetchError> {
        let (result, adopted) = match &self.tier {
            Some(tier) => self.exchange_shared(tier, entry, token, trigger).await,
            None => (
                self.exchange_inner(entry, token, None, trigger.priority())
                    .await,
                false,
            ),
        };
        let now = self.clock.now();
        let outcome = match &result {
            Ok(issued) => match self.obtained(entry, issued, trigger, now) {
                "ok" if adopted => "adopted",
                other => other,
            },
            Err(e) => self.failed(entry, token, e, trigger, now),
        };
        self.metrics
            .refreshes
            .with_label_values(&[trigger.label(), outcome])
            .inc();
        match result {
            Ok(issued) => Ok(entry.current.load_full().unwrap_or(issued)),
            Err(e) => Err(FetchError {
                retry_after: (e.kind.is_retryable()).then(|| self.current_backoff(entry)),
                ..e
            }),
        }
    }

    /// Stores, publishes and schedules a successful exchange's credentials (unless they do
    /// not extend what is held); returns the outcome label.
    fn obtained(
        &self,
        entry: &Arc<Identity>,
        issued: &Arc<Issued>,
        trigger: Trigger,
        now: SystemTime,
    ) -> &'static str {
        let previous = entry.current.load_full();
        let extends = previous
            .as_ref()
            .is_none_or(|p| issued.expires_at > p.expires_at);
        if extends {
            if trigger == Trigger::Ahead {
                // Nobody has this set yet: it counts as used once someone asks. Cleared
                // before the store, so an ask racing with it counts for the new set.
                entry.usage.fetch_and(!ASKED, Ordering::AcqRel);
            }
            entry.current.store(Some(issued.clone()));
            *lock(&entry.failure) = None;
            entry.consecutive_failures.store(0, Ordering::Relaxed);
            entry
                .last_refresh_ms
                .store(clock::unix_millis(now), Ordering::Relaxed);
            entry.set_state(State::Active);
            if let Some(tx) = entry.updates.get() {
                publish(tx, issued.clone());
            }
            self.schedule_renewal(entry, &issued.plan, now);
            tracing::debug!(
                target: "credbroker::identity",
                issuer = %entry.key.issuer,
                trigger = trigger.label(),
                expiration = issued.expiration(),
                "credentials obtained"
            );
            "ok"
        } else {
            // The upstream handed back credentials that expire no later than what we
            // hold (moto does this): keep ours and back off instead of looping.
            let pause = self.backoff(entry);
            self.schedule(entry, now + pause, now);
            tracing::warn!(
                target: "credbroker::identity",
                issuer = %entry.key.issuer,
                "refresh returned credentials that do not extend the expiry; backing off"
            );
            "stale"
        }
    }

    /// Remembers a failed exchange (per token when terminal) and schedules the next attempt or
    /// the idle check; returns the outcome label.
    fn failed(
        &self,
        entry: &Arc<Identity>,
        token: &VerifiedToken,
        e: &FetchError,
        trigger: Trigger,
        now: SystemTime,
    ) -> &'static str {
        let terminal = !e.kind.is_retryable();
        let until = if terminal {
            now + self.config.negative_ttl
        } else {
            now + self.backoff(entry)
        };
        *lock(&entry.failure) = Some(Box::new(Failure {
            until,
            error: e.clone(),
            token_digest: terminal.then(|| token.digest()),
        }));
        entry.set_state(State::Failing);
        let servable = entry
            .current
            .load()
            .as_ref()
            .is_some_and(|c| c.servable_at(now));
        if servable {
            // Keep serving; try again after the backoff.
            self.schedule(entry, until, now);
        } else {
            self.schedule_idle_check(entry, now);
        }
        tracing::warn!(
            target: "credbroker::identity",
            issuer = %entry.key.issuer,
            trigger = trigger.label(),
            kind = e.kind.label(),
            error = %e.message,
            "credential exchange failed"
        );
        "failed"
    }

    /// The exchange in fleet mode: adopt a set another replica shared, or take the fleet's
    /// lock, exchange and share; while another replica holds the lock, wait for its set up to
    /// `shared.lock_wait`, then exchange alone. Returns whether the set was adopted.
    async fn exchange_shared(
        &self,
        tier: &SharedTier,
        entry: &Arc<Identity>,
        token: &Arc<VerifiedToken>,
        trigger: Trigger,
    ) -> (Result<Arc<Issued>, FetchError>, bool) {
        let k = &entry.key;
        let names = tier.names(&k.pool, &k.issuer, &k.subject, k.role.as_deref());
        let current = entry.current();
        let newer_than = current.as_ref().map(|c| c.expires_at);
        // A renewal nobody waits for may wait for the holder as long as the current set lasts.
        let wait = match (&current, trigger) {
            (Some(c), Trigger::Ahead) => tier
                .lock_wait()
                .max(clock::saturating_sub(c.plan.serve_until, self.clock.now())),
            _ => tier.lock_wait(),
        };
        let deadline = tokio::time::Instant::now() + wait;
        let waits = &self.metrics.shared.lock_waits;
        let mut waited = false;
        loop {
            match tier.acquire(&names, newer_than).await {
                Turn::Adopt(set) => match self.adopt(entry, tier, set) {
                    Some(issued) => {
                        if waited {
                            waits.with_label_values(&["adopted"]).inc();
                        }
                        return (Ok(issued), true);
                    }
                    None => break,
                },
                Turn::Exchange(held) => {
                    if waited {
                        waits.with_label_values(&["acquired"]).inc();
                    }
                    let result = self
                        .exchange_inner(entry, token, Some(&names), trigger.priority())
                        .await;
                    match &result {
                        Ok(issued) => self.share(tier, &names, issued, Some(held)).await,
                        Err(_) => tier.release(&names, held).await,
                    }
                    return (result, false);
                }
                Turn::Wait if tokio::time::Instant::now() < deadline => {
                    waited = true;
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Turn::Wait => {
                    waits.with_label_values(&["timeout"]).inc();
                    break;
                }
                Turn::Alone => break,
            }
        }
        let result = self
            .exchange_inner(entry, token, Some(&names), trigger.priority())
            .await;
        if let Ok(issued) = &result {
            self.share(tier, &names, issued, None).await;
        }
        (result, false)
    }

    /// Another replica's set as this replica serves it, if it is servable here and now.
    fn adopt(&self, entry: &Identity, tier: &SharedTier, set: Adopted) -> Option<Arc<Issued>> {
        let identity_id: Arc<str> = set.identity_id.into();
        let issued = Issued::new(
            identity_id.clone(),
            &set.raw,
            self.account_id.as_deref(),
            set.obtained_at,
            &self.policy,
            rand::thread_rng().r#gen::<f64>(),
        )
        .ok()
        .filter(|i| i.servable_at(self.clock.now()))?;
        let mut known = lock(&entry.identity_id);
        if known.is_none() {
            tier.avoided("GetId", "shared_credentials");
        }
        *known = Some(identity_id);
        tier.avoided("GetCredentialsForIdentity", "shared_credentials");
        Some(Arc::new(issued))
    }

    async fn share(
        &self,
        tier: &SharedTier,
        names: &Names,
        issued: &Issued,
        held: Option<crate::shared::Lock>,
    ) {
        let set = SetRef {
            identity_id: issued.identity_id(),
            access_key_id: issued.access_key_id(),
            secret_access_key: issued.secret_access_key(),
            session_token: issued.session_token(),
            expires_at: issued.expires_at,
            obtained_at: issued.obtained_at,
            serve_until: issued.plan.serve_until,
        };
        tier.publish(names, &set, self.clock.now(), held).await;
    }

    /// The identity id: known locally, else known to the fleet, else GetId (then shared).
    async fn identity_id_for(
        &self,
        entry: &Identity,
        login: Login<'_>,
        names: Option<&Names>,
        priority: Priority,
    ) -> Result<(Arc<str>, bool), FetchError> {
        if let Some(id) = entry.identity_id() {
            return Ok((id, true));
        }
        if let (Some(tier), Some(names)) = (&self.tier, names)
            && let Some(id) = tier.identity_id(names).await
        {
            return Ok((id.into(), true));
        }
        let id = self.get_id(login, names, priority).await?;
        Ok((id, false))
    }

    /// GetId, shared with the fleet when it succeeds.
    async fn get_id(
        &self,
        login: Login<'_>,
        names: Option<&Names>,
        priority: Priority,
    ) -> Result<Arc<str>, FetchError> {
        let id: Arc<str> = self
            .exchanger
            .get_id(login, priority)
            .await
            .map_err(|e| FetchError::from_upstream(&e))?
            .into();
        if let (Some(tier), Some(names)) = (&self.tier, names) {
            tier.store_identity_id(names, &id).await;
        }
        Ok(id)
    }

    pub(super) async fn exchange_inner(
        &self,
        entry: &Identity,
        token: &VerifiedToken,
        names: Option<&Names>,
        priority: Priority,
    ) -> Result<Arc<Issued>, FetchError> {
        let login = Login {
            key: &entry.provider.config.logins_key,
            token: &token.raw,
        };
        let (identity_id, known) = self.identity_id_for(entry, login, names, priority).await?;
        let role = entry.key.role.as_deref();
        let raw = match self
            .exchanger
            .get_credentials(&identity_id, login, role, priority)
            .await
        {
            Ok(raw) => raw,
            // A known identity id can disappear (identity deleted, pool recreated): ask again once.
            Err(e) if e.kind == ErrorKind::ResourceNotFound && known => {
                *lock(&entry.identity_id) = None;
                let fresh = self.get_id(login, names, priority).await?;
                *lock(&entry.identity_id) = Some(fresh.clone());
                let raw = self
                    .exchanger
                    .get_credentials(&fresh, login, role, priority)
                    .await
                    .map_err(|e| FetchError::from_upstream(&e))?;
                return self.issue(fresh, &raw);
            }
            Err(e) => return Err(FetchError::from_upstream(&e)),
        };
        *lock(&entry.identity_id) = Some(identity_id.clone());
        self.issue(identity_id, &raw)
    }

    pub(super) fn issue(
        &self,
        identity_id: Arc<str>,
        raw: &RawCredentials,
    ) -> Result<Arc<Issued>, FetchError> {
        let now = self.clock.now();
        Issued::new(
            identity_id,
            raw,
            self.account_id.as_deref(),
            now,
            &self.policy,
            rand::thread_rng().r#gen::<f64>(),
        )
        .map(Arc::new)
        .map_err(|e| FetchError::local(e.to_string()))
    }

    /// Next backoff for consecutive failures: 1 s doubling, capped.
    pub(super) fn backoff(&self, entry: &Identity) -> Duration {
        let n = entry.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        Duration::from_secs(1u64 << n.min(16)).min(self.config.failure_backoff_max)
    }

    pub(super) fn current_backoff(&self, entry: &Identity) -> Duration {
        let n = entry
            .consecutive_failures
            .load(Ordering::Relaxed)
            .saturating_sub(1);
        Duration::from_secs(1u64 << n.min(16)).min(self.config.failure_backoff_max)
    }
}
