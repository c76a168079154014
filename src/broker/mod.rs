//! The broker: the one facade every surface (container endpoint, IMDS, sessions API, gRPC,
//! AppSync) calls. Surfaces never reach past it into the rooms below.
//!
//! Owns: everything that combines the core rooms — the path from a raw ID token or session
//! handle to served credentials ([`Broker::credentials`]), session operations ([`sessions`]),
//! the configured identities' credentials ([`ConfiguredIdentity`]), the request deadline, the
//! local limit on requests waiting for Cognito, the mapping of every failure to what clients see
//! ([`ErrorReply`], [`reply`]) and the audit log ([`audit`]).
//!
//! Promises:
//! - the same failure gets the same status and code on every surface (one table, [`reply`];
//!   gRPC maps its replies);
//! - every operation a surface calls finishes within `server.request_timeout`, else it is
//!   [`BrokerError::Timeout`] (an exchange it started goes on, and a retry is served from cache);
//! - cached credentials are served without waiting on anything; at most
//!   `server.max_pending_exchanges` callers wait on upstream exchanges at once, the rest get 429;
//! - one audit line (target `credbroker::audit`) per credential set handed out per surface:
//!   surface, provider, a hash of the subject, identity id, expiration. Never a secret.

mod audit;
mod configured;
mod reply;
mod sessions;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::clock::{self, SharedClock};
use crate::config::{ServerConfig, SessionsConfig};
use crate::identity::{FetchError, Identity, IdentityCache, IdentityKey, Issued};
use crate::metrics::{Metrics, Surface};
use crate::oidc::{TokenError, Validator, VerifiedToken};
use crate::sessions::{Session, SessionError, SessionStore};

pub use audit::subject_hash;
pub use configured::{Configured, ConfiguredIdentity, IdentityError};
pub use reply::{ErrorReply, hint};
pub use sessions::{Created, RefreshLogin, SessionRefresh};

/// Why credentials could not be served.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The caller's token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Cognito refused or failed.
    #[error("{error}")]
    Upstream {
        /// What happened.
        error: FetchError,
        /// The provider of the token (for hints naming the setting to fix).
        provider: Option<String>,
        /// That provider's Logins key.
        logins_key: Option<String>,
    },
    /// Too many callers are already waiting on Cognito.
    #[error("too many requests are waiting for Cognito; retry shortly")]
    Busy,
    /// A session handle was refused, or a session could not be created.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The request did not complete within `server.request_timeout`.
    #[error(
        "timed out waiting for Cognito; the exchange continues and a retry will be served from cache"
    )]
    Timeout,
}

/// The broker's own limits (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Callers that may wait on Cognito at once (`server.max_pending_exchanges`).
    pub max_pending_exchanges: usize,
    /// The deadline of every operation a surface calls (`server.request_timeout`).
    pub request_timeout: Duration,
}

impl Settings {
    /// From `[server]`.
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            max_pending_exchanges: server.max_pending_exchanges,
            request_timeout: server.request_timeout,
        }
    }
}

/// What [`Broker::credentials_now`] could answer without waiting.
#[derive(Debug)]
pub enum Now {
    /// Cached credentials, handed out.
    Served(Arc<Issued>),
    /// Refused without I/O (e.g. an expired token verified before).
    Refused(BrokerError),
    /// Needs waiting (a signature check, an exchange, a session): [`Broker::finish`], with the
    /// token when it was already validated.
    Later(Option<Arc<VerifiedToken>>),
}

/// Who a request speaks for: a verified ID token, the role asked for (`None`: the identity
/// cache's default), and the session it came through, if any.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The verified ID token (a session's newest one).
    pub token: Arc<VerifiedToken>,
    /// The `CustomRoleArn` asked for (a session's), before the default applies.
    pub role: Option<Arc<str>>,
    /// The session, when the caller presented a handle.
    pub session: Option<Arc<Session>>,
}

/// A watcher's view of one cached identity ([`Broker::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    /// Every credential set the identity publishes from now on.
    pub updates: watch::Receiver<Option<Arc<Issued>>>,
    key: IdentityKey,
    identity: Weak<Identity>,
}

impl Subscription {
    /// When the ID token the identity holds for refreshes expires (a watcher's stream cannot
    /// outlive its refreshes).
    pub fn token_expires_at(&self) -> Option<std::time::SystemTime> {
        self.identity.upgrade().and_then(|i| i.token_expires_at())
    }
}

/// Counters for operators ([`Broker::stats`]).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Identities in the cache.
    pub identities_cached: u64,
    /// Sessions held (expired ones not yet pruned included).
    pub sessions: usize,
    /// Credential sets handed out, by surface (surfaces with none left out).
    pub credentials_issued: HashMap<String, u64>,
    /// `GetCredentialsForIdentity` attempts, by outcome.
    pub get_credentials_calls: HashMap<String, u64>,
}

/// The broker. Shared by all surfaces.
///
/// Its rooms are public for tests, benchmarks and diagnostics only: surfaces call the broker's
/// operations and never reach past them.
pub struct Broker {
    /// Token validation.
    pub validator: Arc<Validator>,
    /// The identity cache.
    pub identities: IdentityCache,
    /// Metrics.
    pub metrics: Metrics,
    /// Live sessions: handles usable wherever an ID token is.
    pub sessions: SessionStore,
    clock: SharedClock,
    /// Permits for callers waiting on Cognito (`server.max_pending_exchanges`).
    pending: Semaphore,
    request_timeout: Duration,
    /// Keeps refresh-token sessions alive; `None` refuses refresh tokens.
    session_refresh: Option<SessionRefresh>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("validator", &self.validator)
            .field("identities", &self.identities)
            .finish()
    }
}

impl Broker {
    /// A broker over the core rooms, with the default `[sessions]` limits and no refresh-token
    /// sessions (see [`Broker::with_sessions`], [`Broker::with_session_refresh`]).
    pub fn new(
        validator: Arc<Validator>,
        identities: IdentityCache,
        metrics: Metrics,
        clock: SharedClock,
        settings: Settings,
    ) -> Self {
        Self {
            validator,
            identities,
            metrics,
            sessions: SessionStore::new(&SessionsConfig::default(), clock.clone()),
            clock,
            pending: Semaphore::new(settings.max_pending_exchanges),
            request_timeout: settings.request_timeout,
            session_refresh: None,
        }
    }

    /// Lets sessions be created with a refresh token, which credbroker then redeems to keep
    /// them alive (see [`sessions`]).
    pub fn with_session_refresh(mut self, refresh: SessionRefresh) -> Self {
        self.session_refresh = Some(refresh);
        self
    }

    /// Replaces the session store's limits (`[sessions]`).
    pub fn with_sessions(mut self, config: &SessionsConfig) -> Self {
        self.sessions = SessionStore::new(config, self.clock.clone());
        self
    }

    /// The clock every decision is made by.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// `work`, or [`BrokerError::Timeout`] once `server.request_timeout` has passed.
    async fn within_deadline<T, E: From<BrokerError>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Timeout.into()),
        }
    }

    /// Credentials for the identity a raw ID token, or a live session handle, proves.
    pub async fn credentials(
        &self,
        raw_token: &str,
        surface: Surface,
    ) -> Result<Arc<Issued>, BrokerError> {
        self.within_deadline(async {
            let caller = self.caller(raw_token).await?;
            self.serve(&caller.token, caller.role.as_deref(), surface)
                .await
        })
        .await
    }

    /// [`Broker::credentials`] without waiting: what can be answered at once (the cached path:
    /// a token verified before whose identity holds servable credentials, or a refusal that
    /// needs no I/O), else [`Now::Later`] with what was learnt, for the caller to finish with
    /// [`Broker::finish`]. Same rules, metrics and audit line as [`Broker::credentials`].
    pub fn credentials_now(&self, raw: &str, surface: Surface) -> Now {
        if crate::sessions::is_handle(raw) {
            return Now::Later(None);
        }
        let token = match self.validator.validate_memoized(raw) {
            None => return Now::Later(None),
            Some(Err(e)) => return Now::Refused(e.into()),
            Some(Ok(token)) => token,
        };
        let entry = self.identities.entry(&token, None);
        match self.identities.servable(&entry) {
            Some(issued) => {
                self.handed_out(surface, &token, &issued);
                Now::Served(issued)
            }
            None => Now::Later(Some(token)),
        }
    }

    /// Finishes what [`Broker::credentials_now`] left for later.
    pub async fn finish(
        &self,
        raw: &str,
        token: Option<Arc<VerifiedToken>>,
        surface: Surface,
    ) -> Result<Arc<Issued>, BrokerError> {
        match token {
            Some(token) => self.credentials_for_token(&token, None, surface).await,
            None => self.credentials(raw, surface).await,
        }
    }

    /// Credentials for a validated token, with an optional role (`None`: the identity cache's
    /// default, `cognito.custom_role_arn`).
    pub async fn credentials_for_token(
        &self,
        token: &Arc<VerifiedToken>,
        role: Option<&str>,
        surface: Surface,
    ) -> Result<Arc<Issued>, BrokerError> {
        self.within_deadline(self.serve(token, role, surface)).await
    }

    async fn serve(
        &self,
        token: &Arc<VerifiedToken>,
        role: Option<&str>,
        surface: Surface,
    ) -> Result<Arc<Issued>, BrokerError> {
        let issued = self.prepare(token, role).await?;
        self.handed_out(surface, token, &issued);
        Ok(issued)
    }

    /// Who `raw` (an ID token or a session handle, told apart by shape) speaks for.
    pub async fn authenticate(&self, raw: &str) -> Result<Caller, BrokerError> {
        self.within_deadline(self.caller(raw)).await
    }

    async fn caller(&self, raw: &str) -> Result<Caller, BrokerError> {
        if crate::sessions::is_handle(raw) {
            return self.session(raw).map(|session| Caller {
                token: session.token(),
                role: session.role.clone(),
                session: Some(session),
            });
        }
        let token = self.validator.validate(raw).await?;
        Ok(Caller {
            token,
            role: None,
            session: None,
        })
    }

    /// Validates a raw ID token (never a session handle).
    pub async fn validate(&self, raw: &str) -> Result<Arc<VerifiedToken>, BrokerError> {
        self.within_deadline(async { Ok(self.validator.validate(raw).await?) })
            .await
    }

    /// The live session a handle names.
    pub fn session(&self, handle: &str) -> Result<Arc<Session>, BrokerError> {
        Ok(self.sessions.get(handle)?)
    }

    /// Like [`Broker::credentials_for_token`], without recording a hand-out (the credentials
    /// are obtained but not given to anyone yet, e.g. when a session is created) and without
    /// the request deadline (callers bound it).
    pub async fn prepare(
        &self,
        token: &Arc<VerifiedToken>,
        role: Option<&str>,
    ) -> Result<Arc<Issued>, BrokerError> {
        let entry = self.identities.entry(token, role);
        if let Some(current) = self.identities.servable(&entry) {
            return Ok(current);
        }
        // A token held since it was validated (a session's) may be about to expire: never send
        // Cognito a token it could refuse mid-exchange.
        self.validator.check_remaining(token, self.clock.now())?;
        let _permit = self.pending.try_acquire().map_err(|_| BrokerError::Busy)?;
        self.identities
            .credentials_for(&entry, token)
            .await
            .map_err(|error| BrokerError::upstream(error, token))
    }

    /// Records that `issued` was handed out on `surface`: metrics and, once per set and
    /// surface, the audit line.
    pub fn handed_out(&self, surface: Surface, token: &VerifiedToken, issued: &Issued) {
        let now = self.clock.now();
        if clock::saturating_sub(issued.expires_at, now) < issued.plan.min_remaining {
            self.metrics.served_below_min_remaining.inc();
        }
        if issued.first_served_on(surface) {
            self.metrics
                .issued
                .with_label_values(&[surface.as_str()])
                .inc();
            audit::issued(surface, token, issued);
        }
    }

    /// Subscribes to the credential sets of the caller's identity (creating its cache entry,
    /// which counts as a use), for streams that follow refreshes (gRPC `WatchCredentials`).
    pub fn subscribe(&self, caller: &Caller) -> Subscription {
        let entry = self.identities.entry(&caller.token, caller.role.as_deref());
        Subscription {
            updates: entry.subscribe(),
            key: entry.key().clone(),
            identity: Arc::downgrade(&entry),
        }
    }

    /// Whether the identity `subscription` follows is still the one cached (a logout evicts
    /// it; a later ask creates a new entry that the subscription does not follow).
    pub fn still_cached(&self, subscription: &Subscription) -> bool {
        match (
            subscription.identity.upgrade(),
            self.identities.peek(&subscription.key),
        ) {
            (Some(mine), Some(cached)) => Arc::ptr_eq(&mine, &cached),
            _ => false,
        }
    }

    /// Marks the identity of `token` and `role` as used and offers it `token` (the newest one
    /// is kept for background refresh).
    pub fn touch(&self, token: &Arc<VerifiedToken>, role: Option<&str>) {
        self.identities.entry(token, role);
    }

    /// Every cached identity, with the number of live sessions that hold it.
    pub fn cached_identities(&self) -> Vec<(Arc<Identity>, usize)> {
        self.identities
            .identities()
            .into_iter()
            .map(|identity| {
                let sessions = self.sessions_holding(identity.key());
                (identity, sessions)
            })
            .collect()
    }

    /// Live sessions that use the identity cache entry `key` (same user, same effective role).
    fn sessions_holding(&self, key: &IdentityKey) -> usize {
        self.sessions.count_live(|s| {
            *s.issuer == *key.issuer
                && s.subject == key.subject
                && self.identities.role(s.role.as_deref()) == key.role.as_deref()
        })
    }

    /// Counters for operators.
    pub fn stats(&self) -> Stats {
        Stats {
            identities_cached: self.identities.len(),
            sessions: self.sessions.len(),
            credentials_issued: self.metrics.issued_by_surface(),
            get_credentials_calls: self.metrics.cognito_outcomes("GetCredentialsForIdentity"),
        }
    }

    /// Whether every provider's keys loaded at least once.
    pub fn keys_loaded(&self) -> bool {
        self.validator.providers().iter().all(|p| p.is_ready())
    }

    /// The Prometheus exposition, the cache's gauges brought up to date first.
    pub fn render_metrics(&self) -> String {
        self.identities.update_gauges();
        self.metrics.render()
    }

    /// Records one request a surface answered with `status` (HTTP or HTTP-equivalent).
    #[inline]
    pub fn record_request(&self, surface: Surface, status: &str, started: Instant) {
        self.metrics.record_request(surface, status, started);
    }
}

impl BrokerError {
    /// An exchange for `token` failed.
    fn upstream(error: FetchError, token: &VerifiedToken) -> Self {
        Self::Upstream {
            error,
            provider: Some(token.provider.config.name.clone()),
            logins_key: Some(token.provider.config.logins_key.clone()),
        }
    }
}
