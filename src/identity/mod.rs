//! The identity cache: one entry per (pool, issuer, subject, role), never per token.
//!
//! Owns: cached credentials per identity ([`Issued`]), the single-flight exchange with Cognito,
//! the newest ID token per identity (for background renewal), failure memory, idle eviction
//! and the renewal [`scheduler`](IdentityCache::run_scheduler).
//!
//! Promises:
//! - **single-flight**: concurrent requests for an identity with nothing usable cached share one
//!   exchange (one GetId for the identity's lifetime in the cache, one GetCredentialsForIdentity
//!   per renewal); the exchange runs as its own task, so callers that give up do not cancel it;
//! - **never below `min_remaining`**: credentials are served only while at least the effective
//!   `min_remaining` is left; for short upstream lifetimes every threshold scales to a fraction of
//!   the lifetime (when `refresh_ahead` exceeds half the lifetime, all thresholds shrink by the
//!   same factor), and a renewal that does not extend the expiry backs off instead of looping;
//! - **renew ahead**: a background renewal is scheduled at `refresh_ahead` before expiry minus
//!   a jitter, rate-limited to `cache.refresh_rate` per second with at most
//!   `cache.refresh_concurrency` in flight, using the newest ID token seen for the identity; once
//!   that token is about to expire the identity waits for the next caller's token;
//! - **failures**: a failed renewal keeps serving the previous credentials while they are
//!   servable, and never serves expired ones; a terminal refusal is remembered per token for
//!   `cache.negative_ttl`, transient failures back off up to `cache.failure_backoff_max`, so a
//!   broken identity cannot make credbroker hammer Cognito;
//! - **renewal follows use**: a background renewal replaces a credential set only if the set
//!   was used — asked for since it was issued (the on-demand set counts as asked: its caller got
//!   it) — or the identity is in use by definition: watched (a gRPC `WatchCredentials` stream)
//!   or held ([`IdentityCache::hold`]: configured identities and refresh-token sessions). An
//!   identity nobody asks for costs at most one renewal after its last use, whatever the
//!   credential lifetime (moto's 90 s would otherwise cost ~70 calls an hour until
//!   `idle_timeout`). SDKs cache credentials and ask again only shortly before the set they hold
//!   expires, which is never later than its successor's `refresh_at` (thresholds keep
//!   `refresh_ahead` within half the lifetime), so a caller that keeps asking finds fresh
//!   credentials. A set that was not renewed is still served while servable; the first ask
//!   after its `refresh_at` starts the renewal at once;
//! - **idle eviction**: an identity without callers for `cache.idle_timeout` is not renewed and
//!   is removed at its next scheduled wake-up;
//! - **bounded**: at most `cache.max_identities` entries; a new identity in a full cache evicts
//!   the one asked for least recently, held ones last (`table.rs`); an evicted identity is
//!   not renewed, even while something holds it (its holders find the new entry on their next
//!   ask).
//!
//! Words: *renew* is a new `GetCredentialsForIdentity` ahead of expiry (config keys and metrics
//! keep their `refresh_*` names); *redeem* is a refresh token turned into an ID token
//! (`sources`); *reload* is a provider's JWKS fetched again (`oidc`).
//!
//! All time comes from the injected [`Clock`](crate::clock::Clock) and `tokio::time`, so the
//! whole policy is tested under paused time.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use futures_util::future::{self, BoxFuture};
use tokio::sync::{Notify, watch};

use crate::clock::{self, SharedClock};
use crate::cognito::{CognitoApi, Exchanger, Priority, RetryPolicy};
use crate::config::{CacheConfig, CognitoConfig, Config};
use crate::metrics::Metrics;
use crate::oidc::{Provider, VerifiedToken};
use crate::shared::SharedTier;

mod exchange;
mod issued;
mod scheduler;
mod slots;
mod table;

pub use exchange::FetchError;
pub use issued::{IssueError, Issued, Plan, Policy};

use exchange::Failure;
use scheduler::signed_secs;

/// Refreshes are never scheduled closer together than this for one identity.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// `Identity::usage` bit: asked for since the current set was issued.
const ASKED: u8 = 1;
/// `Identity::usage` bit: a refresh was skipped for lack of use; the next ask starts it.
const PARKED: u8 = 2;

/// Who identifies an identity. Never contains a token.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityKey {
    /// Identity pool id.
    pub pool: Arc<str>,
    /// Token issuer.
    pub issuer: Arc<str>,
    /// Token subject.
    pub subject: Arc<str>,
    /// `CustomRoleArn`, if any.
    pub role: Option<Arc<str>>,
}

impl Hash for IdentityKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pool.hash(state);
        self.issuer.hash(state);
        self.subject.hash(state);
        self.role.hash(state);
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("role", &self.role)
            .finish()
    }
}

/// What an identity is doing (reported by admin surfaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Has, or is getting, credentials.
    Active = 0,
    /// Its newest token expired; waiting for a caller's token.
    AwaitingToken = 1,
    /// The last exchange failed.
    Failing = 2,
}

/// Sends `issued` unless the channel already holds a set that lasts at least as long.
fn publish(tx: &watch::Sender<Option<Arc<Issued>>>, issued: Arc<Issued>) {
    tx.send_if_modified(|held| {
        let newer = held
            .as_ref()
            .is_none_or(|h| issued.expires_at > h.expires_at);
        if newer {
            *held = Some(issued);
        }
        newer
    });
}

type Inflight = future::Shared<BoxFuture<'static, Result<Arc<Issued>, FetchError>>>;

/// One cached identity.
pub struct Identity {
    key: IdentityKey,
    provider: Arc<Provider>,
    identity_id: Mutex<Option<Arc<str>>>,
    current: ArcSwapOption<Issued>,
    /// The newest valid token seen, for background refreshes.
    token: Mutex<Option<Arc<VerifiedToken>>>,
    /// `token`'s expiry in ms, to skip the lock when an offered token is not newer.
    token_exp_ms: AtomicU64,
    inflight: Mutex<Option<Inflight>>,
    /// Boxed: ~100 bytes that most identities never use.
    failure: Mutex<Option<Box<Failure>>>,
    consecutive_failures: AtomicU32,
    last_used_ms: AtomicU64,
    /// [`ASKED`] and [`PARKED`] bits: whether the current set was asked for, and whether a
    /// refresh waits for the next ask.
    usage: AtomicU8,
    /// Live [`Hold`]s: sources that keep this identity in use.
    holds: AtomicU32,
    last_refresh_ms: AtomicU64,
    /// When the renewal slot of the current set comes (ms; 0: none reserved), which may be
    /// before its `refresh_at` when the budget spreads a burst.
    renew_at_ms: AtomicU64,
    /// The current scheduler wake-up; older queue entries are stale.
    wake_seq: AtomicU64,
    state: AtomicU8,
    /// Set when the entry leaves the cache: a token that remembers it must look it up again.
    retired: AtomicBool,
    /// The [`Shared::id`] of the cache that holds it.
    cache_id: u64,
    /// Every new credential set is published here (gRPC watchers). Created by the first
    /// subscriber: a watch channel is ~450 bytes, a fifth of what an identity costs.
    updates: OnceLock<watch::Sender<Option<Arc<Issued>>>>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("key", &self.key)
            .field("state", &self.state())
            .finish()
    }
}

impl Identity {
    fn new(key: IdentityKey, provider: Arc<Provider>, cache_id: u64) -> Self {
        Self {
            retired: AtomicBool::new(false),
            cache_id,
            key,
            provider,
            identity_id: Mutex::new(None),
            current: ArcSwapOption::empty(),
            token: Mutex::new(None),
            token_exp_ms: AtomicU64::new(0),
            inflight: Mutex::new(None),
            failure: Mutex::new(None),
            consecutive_failures: AtomicU32::new(0),
            last_used_ms: AtomicU64::new(0),
            usage: AtomicU8::new(0),
            holds: AtomicU32::new(0),
            last_refresh_ms: AtomicU64::new(0),
            renew_at_ms: AtomicU64::new(0),
            wake_seq: AtomicU64::new(0),
            state: AtomicU8::new(State::Active as u8),
            updates: OnceLock::new(),
        }
    }

    /// The key.
    pub fn key(&self) -> &IdentityKey {
        &self.key
    }
    /// The provider.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }
    /// The Cognito identity id, once known.
    pub fn identity_id(&self) -> Option<Arc<str>> {
        lock(&self.identity_id).clone()
    }
    /// The current credentials, servable or not.
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.current.load_full()
    }
    /// The current credentials if they may be served at `now` (not counted as a cache hit:
    /// callers that serve them use [`IdentityCache::servable`]).
    pub fn servable_at(&self, now: SystemTime) -> Option<Arc<Issued>> {
        self.current.load_full().filter(|c| c.servable_at(now))
    }
    /// The state.
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::AwaitingToken,
            2 => State::Failing,
            _ => State::Active,
        }
    }
    /// When the held token expires, if one is held.
    pub fn token_expires_at(&self) -> Option<SystemTime> {
        match self.token_exp_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(clock::from_unix_millis(ms)),
        }
    }
    /// When a caller last asked for this identity.
    pub fn last_used(&self) -> SystemTime {
        clock::from_unix_millis(self.last_used_ms.load(Ordering::Relaxed))
    }
    /// When credentials were last obtained.
    pub fn last_refresh(&self) -> Option<SystemTime> {
        match self.last_refresh_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(clock::from_unix_millis(ms)),
        }
    }
    /// Subscribes to new credential sets.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Issued>>> {
        let tx = self.updates.get_or_init(|| watch::Sender::new(None));
        // A set published while the channel was being created skipped it: catch up. The
        // receiver starts with that value marked seen, as it would have with an eager channel.
        if let Some(current) = self.current.load_full() {
            publish(tx, current);
        }
        tx.subscribe()
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Whether something follows this identity whether or not anyone asks: a watcher of its
    /// credential sets, or a [`Hold`].
    pub fn is_held(&self) -> bool {
        self.holds.load(Ordering::Relaxed) > 0
            || self.updates.get().is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Records an ask; true when a refresh was parked waiting for one.
    fn mark_asked(&self) -> bool {
        // One load on the hot path: the bits are already `ASKED` while the identity is in use.
        self.usage.load(Ordering::Relaxed) != ASKED
            && self.usage.swap(ASKED, Ordering::AcqRel) & PARKED != 0
    }

    /// Keeps `token` if it expires later than the one held. Returns true if it was kept.
    fn offer_token(&self, token: &Arc<VerifiedToken>) -> bool {
        let exp = clock::unix_millis(token.expires_at);
        if exp <= self.token_exp_ms.load(Ordering::Relaxed) {
            return false;
        }
        let mut held = lock(&self.token);
        if held
            .as_ref()
            .is_some_and(|t| t.expires_at >= token.expires_at)
        {
            return false;
        }
        *held = Some(token.clone());
        self.token_exp_ms.store(exp, Ordering::Relaxed);
        true
    }

    fn held_token(&self) -> Option<Arc<VerifiedToken>> {
        lock(&self.token).clone()
    }

    /// Drops the held token and credentials (logout).
    fn clear(&self) {
        *lock(&self.token) = None;
        self.token_exp_ms.store(0, Ordering::Relaxed);
        self.current.store(None);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What started an exchange (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A caller found nothing servable.
    OnDemand,
    /// The scheduler, ahead of expiry.
    Ahead,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Self::OnDemand => "on_demand",
            Self::Ahead => "ahead",
        }
    }

    /// The budget priority of the Cognito calls this exchange makes.
    fn priority(self) -> Priority {
        match self {
            Self::OnDemand => Priority::OnDemand,
            Self::Ahead => Priority::Background,
        }
    }
}

/// Why an identity left the cache (a metric label).
#[derive(Debug, Clone, Copy)]
pub enum EvictionCause {
    /// No caller for `idle_timeout`.
    Idle,
    /// Logout / revocation.
    Revoked,
}

/// Keeps an identity in use while alive: its credentials are refreshed ahead whether or not
/// anyone asks (see the module docs). Configured identities and refresh-token sessions hold
/// theirs; dropping the hold ends it.
pub struct Hold {
    entry: Arc<Identity>,
}

impl Hold {
    /// The identity held.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.entry
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.entry.holds.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("identity", &self.entry)
            .finish()
    }
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct IdentityCache {
    shared: Arc<Shared>,
}

struct Shared {
    /// Hashed with foldhash (seeded per process), not SipHash: the key is hashed on every
    /// request that brings a token not seen yet, and SipHash over its four strings was ~1,300
    /// instructions (callgrind).
    cache: table::Table,
    exchanger: Exchanger,
    policy: Policy,
    config: CacheConfig,
    min_token_validity: Duration,
    account_id: Option<Arc<str>>,
    /// The role of callers that name none (`cognito.custom_role_arn`).
    default_role: Option<Arc<str>>,
    clock: SharedClock,
    metrics: Metrics,
    /// Fleet mode: consulted on every exchange, never on a local hit.
    tier: Option<Arc<SharedTier>>,
    queue: Mutex<BTreeMap<(tokio::time::Instant, u64), Weak<Identity>>>,
    queue_changed: Notify,
    seq: AtomicU64,
    /// The renewal timetable at `cache.refresh_rate`.
    slots: Mutex<slots::Slots>,
    /// Whether the missing budget was already logged.
    deficit_logged: std::sync::atomic::AtomicBool,
    /// Tells this cache's identities from another's (a token remembers its identity).
    id: u64,
}

/// Source of [`Shared::id`].
static CACHE_IDS: AtomicU64 = AtomicU64::new(1);

impl fmt::Debug for IdentityCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityCache")
            .field("entries", &self.shared.cache.len())
            .finish()
    }
}

impl IdentityCache {
    /// An empty cache exchanging through `api` with the settings of `config` (`[cognito]`,
    /// `[cache]`, `tokens.min_token_validity`): how the daemon, `doctor` and the fuzz targets
    /// build theirs.
    pub fn from_config(
        api: Arc<dyn CognitoApi>,
        config: &Config,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Self {
        Self::from_config_shared(api, config, clock, metrics, None)
    }

    /// [`IdentityCache::from_config`] in fleet mode: exchanges go through `tier` (shared
    /// identity ids and credential sets, cross-replica single-flight, the fleet budget).
    pub fn from_config_shared(
        api: Arc<dyn CognitoApi>,
        config: &Config,
        clock: SharedClock,
        metrics: Metrics,
        tier: Option<Arc<SharedTier>>,
    ) -> Self {
        let exchanger = Exchanger::new(
            api,
            &config.cognito.identity_pool_id,
            RetryPolicy::from_config(&config.cognito),
            metrics.clone(),
        )
        .with_budget(tier.as_ref().map(|t| t.budget()));
        let mut cache = Self::new(
            exchanger,
            &config.cache,
            &config.cognito,
            config.tokens.min_token_validity,
            clock,
            metrics,
        );
        if let Some(shared) = Arc::get_mut(&mut cache.shared) {
            shared.tier = tier;
        }
        cache
    }

    /// An empty cache. `account_id` and `default_role` come from `[cognito]`: the first goes
    /// into every credential set, the second is the role of callers that name none.
    pub fn new(
        exchanger: Exchanger,
        config: &CacheConfig,
        cognito: &CognitoConfig,
        min_token_validity: Duration,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache: table::Table::new(config.max_identities),
                exchanger,
                policy: Policy::from_config(config),
                config: config.clone(),
                min_token_validity,
                account_id: cognito.account_id.as_deref().map(Into::into),
                default_role: cognito.custom_role_arn.as_deref().map(Into::into),
                clock,
                metrics,
                tier: None,
                queue: Mutex::new(BTreeMap::new()),
                queue_changed: Notify::new(),
                seq: AtomicU64::new(1),
                slots: Mutex::new(slots::Slots::new(
                    config.refresh_rate,
                    tokio::time::Instant::now(),
                )),
                deficit_logged: std::sync::atomic::AtomicBool::new(false),
                id: CACHE_IDS.fetch_add(1, Ordering::Relaxed),
            }),
        }
    }

    /// The key for a verified token and the role asked for (`None`: the default role,
    /// `cognito.custom_role_arn`). The only place the default is applied.
    pub fn key_for(&self, token: &VerifiedToken, role: Option<&str>) -> IdentityKey {
        IdentityKey {
            pool: self.shared.exchanger.identity_pool_id().clone(),
            issuer: token.provider.issuer().clone(),
            subject: token.subject.clone(),
            role: match role {
                Some(r) => Some(r.into()),
                None => self.shared.default_role.clone(),
            },
        }
    }

    /// The role credentials are obtained for when `asked` is asked for (the default when none
    /// is), as [`IdentityCache::key_for`] puts it in the key.
    pub fn role<'a>(&'a self, asked: Option<&'a str>) -> Option<&'a str> {
        asked.or(self.shared.default_role.as_deref())
    }

    /// The entry's credentials if they are servable now (counted as a cache hit), else `None`:
    /// the one answer to "serve from cache or exchange?".
    pub fn servable(&self, entry: &Identity) -> Option<Arc<Issued>> {
        self.shared.servable(entry)
    }

    /// Credentials for the identity `token` proves, from cache when servable.
    pub async fn credentials(
        &self,
        token: &Arc<VerifiedToken>,
        role: Option<&str>,
    ) -> Result<Arc<Issued>, FetchError> {
        let entry = self.entry(token, role);
        self.credentials_for(&entry, token).await
    }

    /// The entry for `token`'s identity, created if absent; marks it used and offers the token.
    pub fn entry(&self, token: &Arc<VerifiedToken>, role: Option<&str>) -> Arc<Identity> {
        let s = &self.shared;
        let now = s.clock.now();
        let entry = match role.is_none().then(|| s.remembered(token)).flatten() {
            Some(e) => e,
            None => {
                let key = self.key_for(token, role);
                let entry = match s.cache.get(&key) {
                    Some(e) => e,
                    None => {
                        let (entry, evicted) = s.cache.get_or_insert_with(&key, || {
                            let entry = Identity::new(key.clone(), token.provider.clone(), s.id);
                            // Asked for now: not the least recently used when the table is full.
                            entry
                                .last_used_ms
                                .store(clock::unix_millis(now), Ordering::Relaxed);
                            entry
                        });
                        if evicted > 0 {
                            s.metrics
                                .cache_evictions
                                .with_label_values(&["capacity"])
                                .inc_by(evicted as u64);
                        }
                        entry
                    }
                };
                if role.is_none() {
                    let remembered: Weak<dyn std::any::Any + Send + Sync> =
                        Arc::downgrade(&entry) as Weak<_>;
                    // Kept if the token already remembers one (a retired one: looked up
                    // each time from now on, until the caller's next token).
                    let _ = token.resolved.set(remembered);
                }
                entry
            }
        };
        entry
            .last_used_ms
            .store(clock::unix_millis(now), Ordering::Relaxed);
        let parked = entry.mark_asked();
        if entry.offer_token(token) && entry.state() == State::AwaitingToken {
            // A fresh token revives background refresh.
            entry.set_state(State::Active);
            s.schedule(&entry, now, now);
        } else if parked {
            // A refresh skipped for lack of use: the set served now is past its refresh point.
            s.schedule(&entry, now, now);
        }
        entry
    }

    /// Keeps `entry` in use while the returned [`Hold`] lives (background refresh does not
    /// wait for asks).
    pub fn hold(&self, entry: &Arc<Identity>) -> Hold {
        entry.holds.fetch_add(1, Ordering::Relaxed);
        if entry.usage.fetch_and(!PARKED, Ordering::AcqRel) & PARKED != 0 {
            let now = self.shared.clock.now();
            self.shared.schedule(entry, now, now);
        }
        Hold {
            entry: entry.clone(),
        }
    }

    /// Credentials for an entry, using `token` if an exchange is needed.
    pub async fn credentials_for(
        &self,
        entry: &Arc<Identity>,
        token: &Arc<VerifiedToken>,
    ) -> Result<Arc<Issued>, FetchError> {
        let s = &self.shared;
        if let Some(current) = s.servable(entry) {
            return Ok(current);
        }
        if let Some(err) = s.remembered_failure(entry, token, s.clock.now()) {
            s.metrics
                .cache_lookups
                .with_label_values(&["negative"])
                .inc();
            return Err(err);
        }
        let fetch = s.start_fetch(&self.shared, entry, token.clone(), Trigger::OnDemand, true);
        let result = fetch.await;
        // The caller gets this set (possibly from a background refresh it joined): it is used.
        entry.mark_asked();
        result
    }

    /// Starts (or joins) an exchange for `entry` although its credentials may still be servable,
    /// for surfaces that want more time left than `cache.min_remaining` (IMDS). Single-flight
    /// like any exchange; a remembered failure answers without calling Cognito, and a result
    /// that does not extend the expiry is backed off, so callers cannot make it loop.
    pub async fn refresh(
        &self,
        entry: &Arc<Identity>,
        token: &Arc<VerifiedToken>,
    ) -> Result<Arc<Issued>, FetchError> {
        let s = &self.shared;
        if let Some(err) = s.remembered_failure(entry, token, s.clock.now()) {
            return Err(err);
        }
        let fetch = s.start_fetch(&self.shared, entry, token.clone(), Trigger::OnDemand, false);
        let result = fetch.await;
        entry.mark_asked();
        result
    }

    /// Removes an identity (logout, revocation): its credentials are dropped at once.
    pub fn evict(&self, key: &IdentityKey, cause: EvictionCause) -> bool {
        self.shared.evict(key, cause)
    }

    /// Fleet mode's shared tier, when configured.
    pub fn shared_tier(&self) -> Option<&Arc<SharedTier>> {
        self.shared.tier.as_ref()
    }

    /// Looks up an identity without marking it used.
    pub fn peek(&self, key: &IdentityKey) -> Option<Arc<Identity>> {
        self.shared.cache.get(key)
    }

    /// Every cached identity (for admin listings and gauges).
    pub fn identities(&self) -> Vec<Arc<Identity>> {
        self.shared.cache.all()
    }

    /// Number of cached identities.
    pub fn len(&self) -> u64 {
        u64::try_from(self.shared.cache.len()).unwrap_or(u64::MAX)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Updates the gauges derived from the cache (called at scrape time).
    pub fn update_gauges(&self) {
        let s = &self.shared;
        let now = s.clock.now();
        s.metrics
            .identities_cached
            .set(i64::try_from(self.len()).unwrap_or(i64::MAX));
        let mut soonest_creds = f64::INFINITY;
        let mut soonest_token = f64::INFINITY;
        // Renewals per second the identities held need: each renews once per period from
        // obtaining its set to its `refresh_at`.
        let mut demand = 0.0;
        for identity in self.identities() {
            if let Some(c) = identity.current() {
                soonest_creds = soonest_creds.min(signed_secs(c.expires_at, now));
                let period = signed_secs(c.plan.refresh_at, c.obtained_at);
                if period > 0.0 {
                    demand += 1.0 / period;
                }
            }
            if let Some(t) = identity.token_expires_at() {
                soonest_token = soonest_token.min(signed_secs(t, now));
            }
        }
        s.metrics.soonest_credential_expiry.set(soonest_creds);
        s.metrics.soonest_token_expiry.set(soonest_token);
        s.metrics
            .refresh_budget_deficit
            .set((demand - s.config.refresh_rate).max(0.0));
    }
}

impl Shared {
    /// The identity `token` was last resolved to for the default role, while it is still this
    /// cache's entry (one lookup instead of two on the cached path).
    fn remembered(&self, token: &VerifiedToken) -> Option<Arc<Identity>> {
        let entry = token
            .resolved
            .get()?
            .upgrade()?
            .downcast::<Identity>()
            .ok()?;
        (entry.cache_id == self.id && !entry.retired.load(Ordering::Acquire)).then_some(entry)
    }

    fn servable(&self, entry: &Identity) -> Option<Arc<Issued>> {
        let current = entry.servable_at(self.clock.now())?;
        self.metrics.hot.cache_hit.inc();
        Some(current)
    }

    /// Removes the identity cached for `key` (logout, revocation).
    fn evict(&self, key: &IdentityKey, cause: EvictionCause) -> bool {
        let Some(entry) = self.cache.remove(key) else {
            return false;
        };
        self.retire(&entry, cause);
        true
    }

    /// Removes `entry` if it is still the one cached for its key (idle eviction: a newer
    /// identity for the same key stays).
    fn evict_entry(&self, entry: &Identity, cause: EvictionCause) -> bool {
        if !self.cache.remove_entry(entry) {
            return false;
        }
        self.retire(entry, cause);
        true
    }

    /// What leaving the cache does to an identity: its token and credentials go at once.
    fn retire(&self, entry: &Identity, cause: EvictionCause) {
        let key = &entry.key;
        entry.retired.store(true, Ordering::Release);
        entry.clear();
        entry.wake_seq.store(0, Ordering::Relaxed);
        let label = match cause {
            EvictionCause::Idle => "idle",
            EvictionCause::Revoked => "revoked",
        };
        if let (EvictionCause::Revoked, Some(tier)) = (cause, &self.tier)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // Logout: the next exchange anywhere in the fleet is a fresh one.
            let tier = tier.clone();
            let names = tier.names(&key.pool, &key.issuer, &key.subject, key.role.as_deref());
            rt.spawn(async move { tier.forget(&names).await });
        }
        self.metrics
            .cache_evictions
            .with_label_values(&[label])
            .inc();
        tracing::debug!(issuer = %key.issuer, cause = label, "identity evicted");
    }
}
