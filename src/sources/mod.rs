//! Identity sources: where a long-lived identity's ID tokens come from.
//!
//! Owns: the [`IdentitySource`] abstraction (something that yields a fresh raw ID token on
//! demand: [`refresh::RefreshTokenSource`] redeems an OIDC refresh token,
//! [`file::TokenFileSource`] reads a file something else keeps fresh), the [`SourceDriver`] that
//! runs one source for one identity, and the identities configured in the file
//! ([`ConfiguredIdentity`], [`Configured`]).
//!
//! Promises:
//! - every token a source yields is validated by the [`Validator`] like any caller's token
//!   before it is used, and is then offered to the [`IdentityCache`], so the cache's background
//!   refresh keeps Cognito credentials fresh for as long as the source keeps tokens fresh;
//! - the driver fetches again before the token expires (the source decides when: a fraction of
//!   the token's lifetime with jitter for refresh tokens, a poll interval for files), never
//!   sooner than the source's `min_interval` ([`MIN_FETCH_INTERVAL`] for refresh tokens) after
//!   a success, so it cannot loop;
//! - transient failures (network, 5xx, timeouts, provider keys unavailable) back off
//!   exponentially with jitter, up to the source's cap; a terminal failure (`invalid_grant`:
//!   the identity needs a new login; misconfiguration) is surfaced in [`Status`] and logged
//!   once, and nothing is retried until the source says its input changed;
//! - the identity stays in the cache while it is configured (touched every half
//!   `cache.idle_timeout`) and is held in use ([`crate::identity::Hold`]) while the driver
//!   runs, so its credentials are refreshed ahead whether or not anyone asks and callers are
//!   served from cache;
//! - tokens are never logged; logs name the identity and the provider.
//!
//! Sessions (`POST /v1/sessions`) can plug their own sources into [`SourceDriver`]: a
//! [`refresh::RefreshTokenSource`] with a [`refresh::MemoryStore`] or a file store.

pub mod file;
pub mod refresh;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use rand::Rng as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, ErrorReply};
use crate::clock::{self, SharedClock};
use crate::identity::{Hold, Identity, IdentityCache, Issued};
use crate::metrics::Surface;
use crate::oidc::{Provider, TokenError, Validator, VerifiedToken};
use crate::secret::SecretString;

/// A driver never fetches again sooner than this after a success.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(10);

/// IMDS-style callers trigger at most one early refresh per identity per this interval.
const MIN_EARLY_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// First backoff after a transient failure (doubles, with jitter).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Something that yields a fresh raw ID token for one identity.
pub trait IdentitySource: Send + Sync + 'static {
    /// A short label for logs: `refresh_token`, `id_token_file`.
    fn kind(&self) -> &'static str;

    /// Obtains a raw ID token now (redeems a refresh token, reads a file). `provider` is the
    /// identity's provider (its discovery metadata names the token endpoint).
    fn fetch<'a>(
        &'a self,
        provider: &'a Provider,
    ) -> BoxFuture<'a, Result<SecretString, SourceError>>;

    /// How long after a successful fetch at `now` of a token valid until `expires_at` to fetch
    /// again (the driver enforces [`MIN_FETCH_INTERVAL`]).
    fn next_fetch(&self, now: SystemTime, expires_at: SystemTime) -> Duration;

    /// The shortest time between successful fetches (default [`MIN_FETCH_INTERVAL`]).
    fn min_interval(&self) -> Duration {
        MIN_FETCH_INTERVAL
    }

    /// The longest backoff after transient failures.
    fn max_backoff(&self) -> Duration {
        Duration::from_secs(300)
    }

    /// Resolves when retrying after a terminal failure makes sense (e.g. its file changed).
    fn retry_after_terminal(&self) -> BoxFuture<'_, ()>;
}

/// What went wrong with a source.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceErrorKind {
    /// The refresh token was refused (`invalid_grant`: revoked, expired, reused): a person must
    /// sign in again and provide a new refresh token.
    ReloginRequired,
    /// The configuration is wrong (unknown client, missing file, no `id_token` returned).
    Misconfigured,
    /// Worth retrying: network, 5xx, timeouts, provider keys not loaded.
    Transient,
    /// The source yielded a token the validator refused (code of the [`TokenError`]).
    InvalidToken(&'static str),
    /// No token yet (start-up did not finish within the request timeout).
    NotReady,
    /// The source yielded a valid token for a different user than the one it must serve (a
    /// session's refresh token from another login). Terminal.
    IdentityMismatch,
}

/// Why a source has no usable token. Messages never contain a token or secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// The class.
    pub kind: SourceErrorKind,
    /// What happened and how to fix it.
    pub message: String,
}

impl SourceError {
    /// A new error.
    pub fn new(kind: SourceErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self.kind, SourceErrorKind::Transient)
    }

    fn from_token(e: TokenError) -> Self {
        match e {
            TokenError::ProviderUnavailable { .. } | TokenError::UnknownKeyId { .. } => {
                Self::new(SourceErrorKind::Transient, e.to_string())
            }
            other => Self::new(
                SourceErrorKind::InvalidToken(other.code()),
                other.to_string(),
            ),
        }
    }

    /// The client-facing form.
    pub fn reply(&self, identity: &str) -> ErrorReply {
        let (status, code, retry_after) = match self.kind {
            SourceErrorKind::ReloginRequired => (401, "ReloginRequired", None),
            SourceErrorKind::Misconfigured => (500, "IdentitySourceMisconfigured", None),
            SourceErrorKind::Transient => (503, "IdentitySourceUnavailable", Some(5)),
            SourceErrorKind::InvalidToken(code) => (401, code, None),
            SourceErrorKind::NotReady => (503, "IdentityNotReady", Some(1)),
            SourceErrorKind::IdentityMismatch => (403, "RefreshTokenMismatch", None),
        };
        ErrorReply {
            status,
            code,
            message: format!("identity {identity}: {}", self.message),
            retry_after,
        }
    }
}

/// What a source currently provides.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The newest valid token (kept across later failures, also once expired: it names the
    /// identity whose cached credentials may still be served).
    pub token: Option<Arc<VerifiedToken>>,
    /// The last failure, cleared by a success.
    pub problem: Option<SourceError>,
    /// Whether the first attempt finished.
    pub attempted: bool,
}

/// Runs one [`IdentitySource`] for one identity. See the module docs.
pub struct SourceDriver {
    name: String,
    source: Arc<dyn IdentitySource>,
    provider: Arc<Provider>,
    validator: Arc<Validator>,
    identities: IdentityCache,
    role: Option<Arc<str>>,
    clock: SharedClock,
    keepalive: Duration,
    status: watch::Sender<Status>,
    /// When set, the only user (issuer, subject) whose tokens are accepted (see
    /// [`SourceDriver::for_user`]).
    user: Option<(Arc<str>, Arc<str>)>,
    /// Keeps the identity in use while the driver runs (dropped with it).
    hold: std::sync::Mutex<Option<Hold>>,
}

impl SourceDriver {
    /// A driver for `source`; `role` is the effective `CustomRoleArn`; `keepalive` how often the
    /// identity is touched in the cache (half of `cache.idle_timeout`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<String>,
        source: Arc<dyn IdentitySource>,
        provider: Arc<Provider>,
        validator: Arc<Validator>,
        identities: IdentityCache,
        role: Option<&str>,
        clock: SharedClock,
        keepalive: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            source,
            provider,
            validator,
            identities,
            role: role.map(Into::into),
            clock,
            keepalive: keepalive.max(Duration::from_secs(1)),
            status: watch::Sender::new(Status::default()),
            user: None,
            hold: std::sync::Mutex::new(None),
        }
    }

    /// Accepts only tokens of this user (issuer and subject): any other user's token is a
    /// terminal [`SourceErrorKind::IdentityMismatch`], checked before the token is offered to
    /// the cache (so no credentials are obtained for the other user). Sessions use this: their
    /// refresh token must belong to the user of their ID token.
    pub fn for_user(mut self, issuer: &str, subject: &str) -> Self {
        self.user = Some((issuer.into(), subject.into()));
        self
    }

    /// Follows the driver's [`Status`].
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Fetch, validate, offer to the cache and warm credentials. Returns the token's expiry.
    async fn attempt(&self) -> Result<Arc<VerifiedToken>, SourceError> {
        let raw = self.source.fetch(&self.provider).await?;
        let current = self.status.borrow().token.clone();
        if let Some(current) = current {
            let digest: [u8; 32] =
                <sha2::Sha256 as sha2::Digest>::digest(raw.expose_str().as_bytes()).into();
            if digest == current.digest && current.expires_at > self.clock.now() {
                self.touch(&current);
                return Ok(current);
            }
        }
        let token = self
            .validator
            .validate(raw.expose_str())
            .await
            .map_err(SourceError::from_token)?;
        if !Arc::ptr_eq(&token.provider, &self.provider) {
            return Err(SourceError::new(
                SourceErrorKind::Misconfigured,
                format!(
                    "the token was issued by provider {}, not {}",
                    token.provider.config.name, self.provider.config.name
                ),
            ));
        }
        if let Some((issuer, subject)) = &self.user
            && (**issuer != *token.provider.config.issuer || *subject != token.subject)
        {
            return Err(SourceError::new(
                SourceErrorKind::IdentityMismatch,
                "the refresh token belongs to a different user (issuer and subject) than the \
                 ID token; send the refresh token from the same login",
            ));
        }
        // Offer the token (background refresh uses the newest one) and warm the credentials;
        // Cognito failures are the cache's to remember and report to callers.
        self.status.send_modify(|s| {
            s.token = Some(token.clone());
            s.problem = None;
        });
        let entry = self.identities.entry(&token, self.role.as_deref());
        self.keep(&entry);
        if let Err(e) = self.identities.credentials_for(&entry, &token).await {
            tracing::debug!(identity = %self.name, error = %e, "warming credentials failed");
        }
        Ok(token)
    }

    fn touch(&self, token: &Arc<VerifiedToken>) {
        let entry = self.identities.entry(token, self.role.as_deref());
        self.keep(&entry);
    }

    /// Holds `entry` (replacing a hold on an identity that was since evicted or replaced).
    fn keep(&self, entry: &Arc<Identity>) {
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        if hold
            .as_ref()
            .is_none_or(|h| !Arc::ptr_eq(h.identity(), entry))
        {
            *hold = Some(self.identities.hold(entry));
        }
    }

    fn record_failure(&self, e: &SourceError) {
        let repeated = self
            .status
            .borrow()
            .problem
            .as_ref()
            .is_some_and(|p| p.kind == e.kind && p.message == e.message);
        self.status.send_modify(|s| {
            s.problem = Some(e.clone());
            s.attempted = true;
        });
        if repeated {
            tracing::debug!(identity = %self.name, error = %e, "identity source still failing");
        } else if e.kind == SourceErrorKind::ReloginRequired {
            tracing::warn!(
                identity = %self.name,
                provider = %self.provider.config.name,
                source = self.source.kind(),
                error = %e,
                "the identity needs a new login; not retrying until its refresh token file changes"
            );
        } else {
            tracing::warn!(
                identity = %self.name,
                provider = %self.provider.config.name,
                source = self.source.kind(),
                error = %e,
                "identity source failed"
            );
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let wait = match self.attempt().await {
                Ok(token) => {
                    backoff = FIRST_BACKOFF;
                    self.status.send_modify(|s| s.attempted = true);
                    let now = self.clock.now();
                    self.source
                        .next_fetch(now, token.expires_at)
                        .max(self.source.min_interval())
                }
                Err(e) if e.is_transient() => {
                    self.record_failure(&e);
                    let jittered = backoff.mul_f64(1.0 + rand::thread_rng().r#gen::<f64>() * 0.5);
                    backoff = (backoff * 2).min(self.source.max_backoff());
                    jittered.min(self.source.max_backoff())
                }
                Err(e) => {
                    self.record_failure(&e);
                    backoff = FIRST_BACKOFF;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = self.source.retry_after_terminal() => {}
                    }
                    continue;
                }
            };
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let next = deadline.min(tokio::time::Instant::now() + self.keepalive);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(next) => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let token = self.status.borrow().token.clone();
                if let Some(t) = token {
                    self.touch(&t);
                }
            }
        }
    }
}

/// An identity configured in the file, as the surfaces see it.
pub struct ConfiguredIdentity {
    /// `[identities.<name>]`.
    pub name: String,
    /// Its `CustomRoleArn` (`role`, else `cognito.custom_role_arn`).
    pub role: Option<Arc<str>>,
    status: watch::Receiver<Status>,
}

impl std::fmt::Debug for ConfiguredIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredIdentity")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish()
    }
}

/// Why a configured identity's credentials could not be served.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The source has no usable token.
    #[error(transparent)]
    Source(SourceError),
    /// The broker failed (Cognito, limits).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl ConfiguredIdentity {
    /// Follows the source's status.
    pub fn new(
        name: impl Into<String>,
        role: Option<&str>,
        status: watch::Receiver<Status>,
    ) -> Self {
        Self {
            name: name.into(),
            role: role.map(Into::into),
            status,
        }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits (up to `wait`) for the first attempt to finish.
    pub async fn ready(&self, wait: Duration) -> bool {
        let mut rx = self.status.clone();
        tokio::time::timeout(wait, rx.wait_for(|s| s.attempted))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The newest token and, when it is not usable (expired), why. Waits up to `wait` while
    /// the source is starting. A refresh token that needs a new login is an error even while
    /// the last ID token is valid: the login was revoked.
    async fn newest(
        &self,
        clock: &SharedClock,
        wait: Duration,
    ) -> Result<(Arc<VerifiedToken>, Option<SourceError>), SourceError> {
        let mut rx = self.status.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let status = rx.borrow_and_update().clone();
            if let Some(p) = &status.problem
                && p.kind == SourceErrorKind::ReloginRequired
            {
                return Err(p.clone());
            }
            if let Some(t) = status.token {
                if t.expires_at > clock.now() {
                    return Ok((t, None));
                }
                let why = status.problem.unwrap_or_else(|| {
                    SourceError::new(
                        SourceErrorKind::Transient,
                        "the ID token expired and the source has not provided a newer one yet",
                    )
                });
                return Ok((t, Some(why)));
            }
            if let Some(p) = status.problem {
                return Err(p);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(SourceError::new(
                        SourceErrorKind::NotReady,
                        "the identity source has not provided a token yet",
                    ));
                }
            }
        }
    }

    /// The current usable (unexpired) token, waiting up to `wait` while the source is starting.
    pub async fn token(
        &self,
        clock: &SharedClock,
        wait: Duration,
    ) -> Result<Arc<VerifiedToken>, SourceError> {
        match self.newest(clock, wait).await? {
            (token, None) => Ok(token),
            (_, Some(why)) => Err(why),
        }
    }

    /// Credentials for this identity on `surface`, with at least `min_remaining` left when a
    /// refresh can provide that (at most one early refresh per identity per minute, and only
    /// when Cognito's lifetimes are long enough for it to help).
    pub async fn credentials(
        &self,
        broker: &Broker,
        surface: Surface,
        min_remaining: Duration,
        wait: Duration,
    ) -> Result<Arc<Issued>, IdentityError> {
        let (token, unusable) = self
            .newest(broker.clock(), wait)
            .await
            .map_err(IdentityError::Source)?;
        let role = self.role.as_deref().or(broker.default_role());
        let entry = broker.identities.entry(&token, role);
        let now = broker.clock().now();
        // Cached credentials stay servable while the source is failing (an IdP outage).
        if let Some(current) = entry.current().filter(|c| c.servable_at(now)) {
            let left = clock::saturating_sub(current.expires_at, now);
            let lifetime = clock::saturating_sub(current.expires_at, current.obtained_at);
            let age = clock::saturating_sub(now, current.obtained_at);
            let issued = if unusable.is_none()
                && left < min_remaining
                && lifetime > min_remaining
                && age >= MIN_EARLY_REFRESH_INTERVAL
            {
                match broker.identities.refresh(&entry, &token).await {
                    Ok(fresh) if fresh.expires_at > current.expires_at => fresh,
                    _ => current,
                }
            } else {
                current
            };
            broker.metrics.hot.cache_hit.inc();
            broker.handed_out(surface, &token, &issued);
            return Ok(issued);
        }
        if let Some(why) = unusable {
            return Err(IdentityError::Source(why));
        }
        Ok(broker
            .credentials_for_token(&token, self.role.as_deref(), surface)
            .await?)
    }
}

impl IdentityError {
    /// The client-facing form.
    pub fn reply(&self, identity: &str) -> ErrorReply {
        match self {
            Self::Source(e) => e.reply(identity),
            Self::Broker(e) => e.reply(),
        }
    }
}

/// The configured identities, by name.
#[derive(Debug, Default)]
pub struct Configured {
    by_name: BTreeMap<String, Arc<ConfiguredIdentity>>,
}

impl Configured {
    /// Adds one.
    pub fn insert(&mut self, identity: ConfiguredIdentity) {
        self.by_name
            .insert(identity.name.clone(), Arc::new(identity));
    }

    /// By name.
    pub fn get(&self, name: &str) -> Option<Arc<ConfiguredIdentity>> {
        self.by_name.get(name).cloned()
    }

    /// All of them.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ConfiguredIdentity>> {
        self.by_name.values()
    }
}

/// Jitter in `[0, 1)`.
pub(crate) fn jitter01() -> f64 {
    rand::thread_rng().r#gen::<f64>()
}
