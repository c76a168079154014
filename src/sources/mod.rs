//! Identity sources: where a long-lived identity's ID tokens come from.
//!
//! Owns: the [`IdentitySource`] abstraction (something that yields a fresh raw ID token on
//! demand: [`refresh::RefreshTokenSource`] redeems an OIDC refresh token,
//! [`file::TokenFileSource`] reads a file something else keeps fresh), the [`SourceDriver`] that
//! runs one source for one identity. They know nothing of the broker: the identities configured
//! in the file are served by [`crate::broker::ConfiguredIdentity`].
//!
//! Promises:
//! - every token a source yields is validated by the [`Validator`] like any caller's token
//!   before it is used, and is then offered to the [`IdentityCache`], so the cache's background
//!   renewal keeps Cognito credentials fresh for as long as the source keeps tokens fresh;
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
//!   runs, so its credentials are renewed ahead whether or not anyone asks and callers are
//!   served from cache;
//! - tokens are never logged; logs name the identity and the provider.
//!
//! Sessions (`POST /v1/sessions`) can plug their own sources into [`SourceDriver`]: a
//! [`refresh::RefreshTokenSource`] with a [`refresh::MemoryStore`] or a file store.

pub mod file;
pub mod refresh;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use rand::Rng as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::identity::{Hold, Identity, IdentityCache};
use crate::oidc::{Provider, TokenError, Validator, VerifiedToken};
use crate::secret::SecretString;

/// A driver never fetches again sooner than this after a success.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(10);

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
    /// A driver for `source`; `role` is the `CustomRoleArn` asked for (`None`: the identity
    /// cache's default); `keepalive` how often the identity is touched in the cache (half of
    /// `cache.idle_timeout`).
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
        if let Some(current) = current
            && current.raw.ct_eq(raw.expose_str())
            && current.expires_at > self.clock.now()
        {
            self.touch(&current);
            return Ok(current);
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

/// Jitter in `[0, 1)`.
pub(crate) fn jitter01() -> f64 {
    rand::thread_rng().r#gen::<f64>()
}
