//! The identity cache: one entry per (pool, issuer, subject, role), never per token.
//!
//! Owns: cached credentials per identity ([`Issued`]), the single-flight exchange with Cognito,
//! the newest ID token per identity (for background refresh), failure memory, idle eviction
//! and the refresh [`scheduler`](IdentityCache::run_scheduler).
//!
//! Promises:
//! - **single-flight**: concurrent requests for an identity with nothing usable cached share one
//!   exchange (one GetId for the identity's lifetime in the cache, one GetCredentialsForIdentity
//!   per refresh); the exchange runs as its own task, so callers that give up do not cancel it;
//! - **never below `min_remaining`**: credentials are served only while at least the effective
//!   `min_remaining` is left; for short upstream lifetimes every threshold scales to a fraction of
//!   the lifetime (when `refresh_ahead` exceeds half the lifetime, all thresholds shrink by the
//!   same factor), and a refresh that does not extend the expiry backs off instead of looping;
//! - **refresh ahead**: a background refresh is scheduled at `refresh_ahead` before expiry minus
//!   a jitter, rate-limited to `cache.refresh_rate` per second with at most
//!   `cache.refresh_concurrency` in flight, using the newest ID token seen for the identity; once
//!   that token is about to expire the identity waits for the next caller's token;
//! - **failures**: a failed refresh keeps serving the previous credentials while they are
//!   servable, and never serves expired ones; a terminal refusal is remembered per token for
//!   `cache.negative_ttl`, transient failures back off up to `cache.failure_backoff_max`, so a
//!   broken identity cannot make credbroker hammer Cognito;
//! - **refresh follows use**: a background refresh replaces a credential set only if the set
//!   was used — asked for since it was issued (the on-demand set counts as asked: its caller got
//!   it) — or the identity is in use by definition: watched (a gRPC `WatchCredentials` stream)
//!   or held ([`IdentityCache::hold`]: configured identities and refresh-token sessions). An
//!   identity nobody asks for costs at most one refresh after its last use, whatever the
//!   credential lifetime (moto's 90 s would otherwise cost ~70 calls an hour until
//!   `idle_timeout`). SDKs cache credentials and ask again only shortly before the set they hold
//!   expires, which is never later than its successor's `refresh_at` (thresholds keep
//!   `refresh_ahead` within half the lifetime), so a caller that keeps asking finds fresh
//!   credentials. A set that was not refreshed is still served while servable; the first ask
//!   after its `refresh_at` starts the refresh at once;
//! - **idle eviction**: an identity without callers for `cache.idle_timeout` is not refreshed and
//!   is removed at its next scheduled wake-up;
//! - bounded: at most `cache.max_identities` entries.
//!
//! All time comes from the injected [`Clock`](crate::clock::Clock) and `tokio::time`, so the
//! whole policy is tested under paused time.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::{self, BoxFuture};
use rand::Rng;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::{self, SharedClock};
use crate::cognito::{ErrorKind, Exchanger, Login, RawCredentials, UpstreamError};
use crate::config::{CacheConfig, CognitoConfig};
use crate::metrics::{Metrics, Surface};
use crate::oidc::{Provider, VerifiedToken};
use crate::secret::{REDACTED, ZeroizingBytes};

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

/// The effective thresholds for one credential set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Serve until then (expiry minus the effective `min_remaining`).
    pub serve_until: SystemTime,
    /// Refresh in the background from then.
    pub refresh_at: SystemTime,
    /// The effective `min_remaining`.
    pub min_remaining: Duration,
}

/// The refresh policy (from `[cache]`).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Configured `min_remaining`.
    pub min_remaining: Duration,
    /// Configured `refresh_ahead`.
    pub refresh_ahead: Duration,
    /// Configured `refresh_jitter`.
    pub refresh_jitter: Duration,
}

impl Policy {
    /// From configuration.
    pub fn from_config(c: &CacheConfig) -> Self {
        Self {
            min_remaining: c.min_remaining,
            refresh_ahead: c.refresh_ahead,
            refresh_jitter: c.refresh_jitter,
        }
    }

    /// Thresholds for credentials obtained at `obtained` that expire at `expires`; `jitter01`
    /// in `[0, 1)`. `None` when they are already expired.
    pub fn plan(&self, obtained: SystemTime, expires: SystemTime, jitter01: f64) -> Option<Plan> {
        let lifetime = expires.duration_since(obtained).ok()?;
        if lifetime.is_zero() {
            return None;
        }
        // Configured thresholds apply while refresh_ahead fits in half the lifetime; beyond
        // that all three shrink by the same factor (moto's 90 s credentials, short dev pools).
        let scale = if self.refresh_ahead <= lifetime / 2 {
            1.0
        } else {
            (lifetime / 2).as_secs_f64() / self.refresh_ahead.as_secs_f64()
        };
        let min_remaining = self.min_remaining.mul_f64(scale);
        let ahead = self.refresh_ahead.mul_f64(scale);
        let jitter = self
            .refresh_jitter
            .mul_f64(scale)
            .min(ahead.saturating_sub(min_remaining) / 2);
        let refresh_at = (expires - ahead + jitter.mul_f64(jitter01.clamp(0.0, 1.0)))
            .max(obtained + MIN_REFRESH_INTERVAL.min(lifetime / 2));
        Some(Plan {
            serve_until: expires - min_remaining,
            refresh_at,
            min_remaining,
        })
    }
}

/// A credential set as served: the container-credentials JSON body is built once, and the fields
/// are slices of it (one allocation, zeroized when the last reference goes).
pub struct Issued {
    identity_id: Arc<str>,
    body: Bytes,
    access_key_id: Range<usize>,
    secret_access_key: Range<usize>,
    token: Range<usize>,
    expiration: Range<usize>,
    /// When Cognito says they expire.
    pub expires_at: SystemTime,
    /// When credbroker received them.
    pub obtained_at: SystemTime,
    /// Thresholds.
    pub plan: Plan,
    /// Surfaces this set was already handed out on (bit per surface), for the audit log.
    served_on: AtomicU8,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("identity_id", &self.identity_id)
            .field("access_key_id", &self.access_key_id())
            .field("secret_access_key", &REDACTED)
            .field("token", &REDACTED)
            .field("expiration", &self.expiration())
            .finish()
    }
}

/// Why a credential set could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    /// The upstream returned credentials that are already expired.
    #[error("Cognito returned credentials that expired at {0}")]
    AlreadyExpired(String),
    /// A field contains characters that cannot appear in AWS credentials.
    #[error("Cognito returned a malformed {0}")]
    MalformedField(&'static str),
}

impl Issued {
    /// Builds the served form of `raw`.
    pub fn new(
        identity_id: Arc<str>,
        raw: &RawCredentials,
        account_id: Option<&str>,
        obtained_at: SystemTime,
        policy: &Policy,
        jitter01: f64,
    ) -> Result<Self, IssueError> {
        let expiration_text = clock::format_aws_timestamp(raw.expiration);
        let plan = policy
            .plan(obtained_at, raw.expiration, jitter01)
            .ok_or_else(|| IssueError::AlreadyExpired(expiration_text.clone()))?;
        fn plain(value: &str, what: &'static str) -> Result<(), IssueError> {
            if value.is_empty()
                || value
                    .bytes()
                    .any(|b| !(0x21..0x7f).contains(&b) || b == b'"' || b == b'\\')
            {
                Err(IssueError::MalformedField(what))
            } else {
                Ok(())
            }
        }
        plain(&raw.access_key_id, "AccessKeyId")?;
        plain(raw.secret_key.expose_str(), "SecretKey")?;
        plain(raw.session_token.expose_str(), "SessionToken")?;
        if let Some(a) = account_id {
            plain(a, "AccountId")?;
        }
        // Exact enough never to grow: 67 bytes of keys and punctuation, 16 more with AccountId.
        let capacity = 72
            + expiration_text.len()
            + raw.access_key_id.len()
            + raw.secret_key.len()
            + raw.session_token.len()
            + account_id.map_or(0, |a| 16 + a.len());
        let mut body = Vec::with_capacity(capacity);
        let field = |body: &mut Vec<u8>, prefix: &str, value: &str| -> Range<usize> {
            body.extend_from_slice(prefix.as_bytes());
            let start = body.len();
            body.extend_from_slice(value.as_bytes());
            let range = start..body.len();
            body.push(b'"');
            range
        };
        let access_key_id = field(&mut body, "{\"AccessKeyId\":\"", &raw.access_key_id);
        let secret_access_key = field(
            &mut body,
            ",\"SecretAccessKey\":\"",
            raw.secret_key.expose_str(),
        );
        let token = field(&mut body, ",\"Token\":\"", raw.session_token.expose_str());
        let expiration = field(&mut body, ",\"Expiration\":\"", &expiration_text);
        if let Some(a) = account_id {
            field(&mut body, ",\"AccountId\":\"", a);
        }
        body.push(b'}');
        debug_assert!(body.len() <= capacity, "the body outgrew its allocation");
        Ok(Self {
            identity_id,
            body: Bytes::from_owner(ZeroizingBytes(body)),
            access_key_id,
            secret_access_key,
            token,
            expiration,
            expires_at: raw.expiration,
            obtained_at,
            plan,
            served_on: AtomicU8::new(0),
        })
    }

    fn slice(&self, r: &Range<usize>) -> &str {
        self.body
            .get(r.clone())
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// The Cognito identity id.
    pub fn identity_id(&self) -> &Arc<str> {
        &self.identity_id
    }
    /// `AccessKeyId`.
    pub fn access_key_id(&self) -> &str {
        self.slice(&self.access_key_id)
    }
    /// `SecretAccessKey` (Cognito's `SecretKey`). A secret: never log it.
    pub fn secret_access_key(&self) -> &str {
        self.slice(&self.secret_access_key)
    }
    /// `Token` (Cognito's `SessionToken`). A secret: never log it.
    pub fn session_token(&self) -> &str {
        self.slice(&self.token)
    }
    /// `Expiration` as `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn expiration(&self) -> &str {
        self.slice(&self.expiration)
    }
    /// The container-credentials response body (shared, not copied).
    pub fn container_body(&self) -> Bytes {
        self.body.clone()
    }
    /// Whether these credentials may still be served at `now`.
    pub fn servable_at(&self, now: SystemTime) -> bool {
        now < self.plan.serve_until
    }
    /// Marks the set as handed out on `surface`; true the first time (one audit line each).
    pub fn first_served_on(&self, surface: Surface) -> bool {
        let bit = 1u8 << (surface as u8);
        self.served_on.load(Ordering::Relaxed) & bit == 0
            && self.served_on.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }
}

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
    fn from_upstream(e: &UpstreamError) -> Self {
        Self {
            kind: e.kind,
            message: format!("{}: {}", e.operation, e.message),
            retry_after: None,
        }
    }

    fn local(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Unexpected,
            message: message.into(),
            retry_after: None,
        }
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

struct Failure {
    until: SystemTime,
    error: FetchError,
    /// For terminal refusals: only this token's retries are short-circuited.
    token_digest: Option<[u8; 32]>,
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
    failure: Mutex<Option<Failure>>,
    consecutive_failures: AtomicU32,
    last_used_ms: AtomicU64,
    /// [`ASKED`] and [`PARKED`] bits: whether the current set was asked for, and whether a
    /// refresh waits for the next ask.
    usage: AtomicU8,
    /// Live [`Hold`]s: sources that keep this identity in use.
    holds: AtomicU32,
    last_refresh_ms: AtomicU64,
    /// The current scheduler wake-up; older queue entries are stale.
    wake_seq: AtomicU64,
    state: AtomicU8,
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
    fn new(key: IdentityKey, provider: Arc<Provider>) -> Self {
        Self {
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
    cache: moka::sync::Cache<IdentityKey, Arc<Identity>>,
    exchanger: Exchanger,
    policy: Policy,
    config: CacheConfig,
    min_token_validity: Duration,
    account_id: Option<Arc<str>>,
    /// The role of callers that name none (`cognito.custom_role_arn`).
    default_role: Option<Arc<str>>,
    clock: SharedClock,
    metrics: Metrics,
    queue: Mutex<BTreeMap<(tokio::time::Instant, u64), Weak<Identity>>>,
    queue_changed: Notify,
    seq: AtomicU64,
}

impl fmt::Debug for IdentityCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityCache")
            .field("entries", &self.shared.cache.entry_count())
            .finish()
    }
}

impl IdentityCache {
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
        let evictions = metrics.cache_evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.max_identities)
            .eviction_listener(move |_key, _value, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.with_label_values(&["capacity"]).inc();
                }
            })
            .build();
        Self {
            shared: Arc::new(Shared {
                cache,
                exchanger,
                policy: Policy::from_config(config),
                config: config.clone(),
                min_token_validity,
                account_id: cognito.account_id.as_deref().map(Into::into),
                default_role: cognito.custom_role_arn.as_deref().map(Into::into),
                clock,
                metrics,
                queue: Mutex::new(BTreeMap::new()),
                queue_changed: Notify::new(),
                seq: AtomicU64::new(1),
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
        let key = self.key_for(token, role);
        let entry = match s.cache.get(&key) {
            Some(e) => e,
            None => s.cache.get_with(key.clone(), || {
                Arc::new(Identity::new(key, token.provider.clone()))
            }),
        };
        let now = s.clock.now();
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

    /// Looks up an identity without marking it used.
    pub fn peek(&self, key: &IdentityKey) -> Option<Arc<Identity>> {
        self.shared.cache.get(key)
    }

    /// Every cached identity (for admin listings and gauges).
    pub fn identities(&self) -> Vec<Arc<Identity>> {
        self.shared.cache.iter().map(|(_, v)| v).collect()
    }

    /// Number of cached identities (after pending maintenance).
    pub fn len(&self) -> u64 {
        self.shared.cache.run_pending_tasks();
        self.shared.cache.entry_count()
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
        for identity in self.identities() {
            if let Some(c) = identity.current() {
                soonest_creds = soonest_creds.min(signed_secs(c.expires_at, now));
            }
            if let Some(t) = identity.token_expires_at() {
                soonest_token = soonest_token.min(signed_secs(t, now));
            }
        }
        s.metrics.soonest_credential_expiry.set(soonest_creds);
        s.metrics.soonest_token_expiry.set(soonest_token);
    }

    /// Runs background refreshes until `shutdown`. Spawn exactly one per cache.
    pub async fn run_scheduler(self, shutdown: CancellationToken) {
        let s = self.shared.clone();
        let permits = Arc::new(Semaphore::new(s.config.refresh_concurrency));
        let spacing = Duration::from_secs_f64(1.0 / s.config.refresh_rate);
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
                // Rate limit: refresh_rate per second, evenly spaced.
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

fn signed_secs(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

impl Shared {
    fn servable(&self, entry: &Identity) -> Option<Arc<Issued>> {
        let current = entry.servable_at(self.clock.now())?;
        self.metrics.hot.cache_hit.inc();
        Some(current)
    }

    fn evict(&self, key: &IdentityKey, cause: EvictionCause) -> bool {
        let Some(entry) = self.cache.remove(key) else {
            return false;
        };
        entry.clear();
        entry.wake_seq.store(0, Ordering::Relaxed);
        let label = match cause {
            EvictionCause::Idle => "idle",
            EvictionCause::Revoked => "revoked",
        };
        self.metrics
            .cache_evictions
            .with_label_values(&[label])
            .inc();
        tracing::debug!(issuer = %key.issuer, cause = label, "identity evicted");
        true
    }

    fn remembered_failure(
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
            Some(digest) => digest == token.digest,
            None => true,
        };
        applies.then(|| FetchError {
            retry_after: Some(clock::saturating_sub(f.until, now).max(Duration::from_secs(1))),
            ..f.error.clone()
        })
    }

    /// Joins the exchange in flight for `entry`, or starts one with `token`. With
    /// `reuse_servable`, servable credentials published since the caller looked are used instead.
    fn start_fetch(
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
    async fn exchange(
        &self,
        entry: &Arc<Identity>,
        token: &Arc<VerifiedToken>,
        trigger: Trigger,
    ) -> Result<Arc<Issued>, FetchError> {
        let result = self.exchange_inner(entry, token).await;
        let now = self.clock.now();
        let outcome = match &result {
            Ok(issued) => {
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
                    self.schedule(entry, issued.plan.refresh_at, now);
                    tracing::debug!(
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
                        issuer = %entry.key.issuer,
                        "refresh returned credentials that do not extend the expiry; backing off"
                    );
                    "stale"
                }
            }
            Err(e) => {
                let terminal = !e.kind.is_retryable();
                let until = if terminal {
                    now + self.config.negative_ttl
                } else {
                    now + self.backoff(entry)
                };
                *lock(&entry.failure) = Some(Failure {
                    until,
                    error: e.clone(),
                    token_digest: terminal.then_some(token.digest),
                });
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
                    issuer = %entry.key.issuer,
                    trigger = trigger.label(),
                    kind = e.kind.label(),
                    error = %e.message,
                    "credential exchange failed"
                );
                "failed"
            }
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

    async fn exchange_inner(
        &self,
        entry: &Identity,
        token: &VerifiedToken,
    ) -> Result<Arc<Issued>, FetchError> {
        let login = Login {
            key: &entry.provider.config.logins_key,
            token: &token.raw,
        };
        let cached_id = entry.identity_id();
        let identity_id: Arc<str> = match &cached_id {
            Some(id) => id.clone(),
            None => self
                .exchanger
                .get_id(login)
                .await
                .map_err(|e| FetchError::from_upstream(&e))?
                .into(),
        };
        let role = entry.key.role.as_deref();
        let raw = match self
            .exchanger
            .get_credentials(&identity_id, login, role)
            .await
        {
            Ok(raw) => raw,
            // A cached identity id can disappear (identity deleted, pool recreated): ask again once.
            Err(e) if e.kind == ErrorKind::ResourceNotFound && cached_id.is_some() => {
                *lock(&entry.identity_id) = None;
                let fresh: Arc<str> = self
                    .exchanger
                    .get_id(login)
                    .await
                    .map_err(|e| FetchError::from_upstream(&e))?
                    .into();
                *lock(&entry.identity_id) = Some(fresh.clone());
                return self.build(entry, fresh, &token.raw, role).await;
            }
            Err(e) => return Err(FetchError::from_upstream(&e)),
        };
        *lock(&entry.identity_id) = Some(identity_id.clone());
        self.issue(identity_id, &raw)
    }

    async fn build(
        &self,
        entry: &Identity,
        identity_id: Arc<str>,
        token: &crate::secret::SecretString,
        role: Option<&str>,
    ) -> Result<Arc<Issued>, FetchError> {
        let login = Login {
            key: &entry.provider.config.logins_key,
            token,
        };
        let raw = self
            .exchanger
            .get_credentials(&identity_id, login, role)
            .await
            .map_err(|e| FetchError::from_upstream(&e))?;
        self.issue(identity_id, &raw)
    }

    fn issue(
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
    fn backoff(&self, entry: &Identity) -> Duration {
        let n = entry.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        Duration::from_secs(1u64 << n.min(16)).min(self.config.failure_backoff_max)
    }

    fn current_backoff(&self, entry: &Identity) -> Duration {
        let n = entry
            .consecutive_failures
            .load(Ordering::Relaxed)
            .saturating_sub(1);
        Duration::from_secs(1u64 << n.min(16)).min(self.config.failure_backoff_max)
    }

    /// Schedules a wake-up of `entry` at wall time `at` (replacing any earlier one).
    fn schedule(&self, entry: &Arc<Identity>, at: SystemTime, now: SystemTime) {
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

    fn schedule_idle_check(&self, entry: &Arc<Identity>, now: SystemTime) {
        let at = entry.last_used() + self.config.idle_timeout;
        self.schedule(entry, at.max(now), now);
    }

    /// A scheduled wake-up: evict if idle, refresh if due, or re-arm.
    async fn wake(&self, this: &Arc<Shared>, entry: Arc<Identity>) {
        let now = self.clock.now();
        if clock::saturating_sub(now, entry.last_used()) >= self.config.idle_timeout {
            self.evict(&entry.key, EvictionCause::Idle);
            return;
        }
        let Some(current) = entry.current.load_full() else {
            self.schedule_idle_check(&entry, now);
            return;
        };
        if now < current.plan.refresh_at && lock(&entry.failure).is_none() {
            self.schedule(&entry, current.plan.refresh_at, now);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn policy() -> Policy {
        Policy {
            min_remaining: Duration::from_secs(20 * 60),
            refresh_ahead: Duration::from_secs(30 * 60),
            refresh_jitter: Duration::from_secs(5 * 60),
        }
    }

    #[test]
    fn one_hour_credentials_use_configured_thresholds() {
        let p = policy().plan(t(0), t(3600), 0.0).expect("plan");
        assert_eq!(p.serve_until, t(40 * 60));
        assert_eq!(p.refresh_at, t(30 * 60));
        let late = policy().plan(t(0), t(3600), 0.999).expect("plan");
        assert!(late.refresh_at > t(34 * 60) && late.refresh_at < t(35 * 60));
        assert!(late.refresh_at < late.serve_until);
    }

    #[test]
    fn short_lifetimes_scale_thresholds_to_a_fraction() {
        // moto's 90 s credentials.
        let p = policy().plan(t(0), t(90), 0.0).expect("plan");
        assert_eq!(p.min_remaining, Duration::from_secs(30));
        assert_eq!(p.refresh_at, t(45));
        assert!(p.refresh_at < p.serve_until);
        // Even 2 s credentials refresh no sooner than a second later.
        let tiny = policy().plan(t(0), t(2), 0.5).expect("plan");
        assert!(tiny.refresh_at >= t(1) && tiny.refresh_at < tiny.serve_until);
    }

    #[test]
    fn expired_credentials_have_no_plan() {
        assert!(policy().plan(t(10), t(10), 0.0).is_none());
        assert!(policy().plan(t(10), t(5), 0.0).is_none());
    }

    #[test]
    fn issued_body_is_the_exact_container_format_and_debug_redacts() {
        let raw = RawCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_key: "secret/key+1".into(),
            session_token: "session-token-value".into(),
            expiration: t(3600),
        };
        let issued = Issued::new(
            "us-east-1:id".into(),
            &raw,
            Some("123456789012"),
            t(0),
            &policy(),
            0.0,
        )
        .expect("issued");
        let body: serde_json::Value =
            serde_json::from_slice(&issued.container_body()).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "secret/key+1",
                "Token": "session-token-value",
                "Expiration": "2023-11-14T23:13:20Z",
                "AccountId": "123456789012",
            })
        );
        assert_eq!(issued.secret_access_key(), "secret/key+1");
        let debug = format!("{issued:?}");
        assert!(
            !debug.contains("secret/key") && !debug.contains("session-token"),
            "{debug}"
        );
    }

    #[test]
    fn malformed_upstream_fields_are_refused() {
        let raw = RawCredentials {
            access_key_id: "ASIA\"X".into(),
            secret_key: "s".into(),
            session_token: "t".into(),
            expiration: t(3600),
        };
        assert!(Issued::new("id".into(), &raw, None, t(0), &policy(), 0.0).is_err());
    }
}
