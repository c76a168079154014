//! The broker: what every surface (container endpoint, IMDS, gRPC, AppSync) calls.
//!
//! Owns: the path from a raw ID token to served credentials, the mapping of every failure to a
//! status, a stable `Code` and an actionable `Message` ([`ErrorReply`]), the local limit on
//! requests waiting for Cognito, and the audit log.
//!
//! Promises:
//! - the same failure gets the same code on every surface (HTTP statuses here; gRPC maps them);
//! - cached credentials are served without waiting on anything; at most
//!   `server.max_pending_exchanges` callers wait on upstream exchanges at once, the rest get 429;
//! - one audit line (target `credbroker::audit`) per credential set handed out per surface:
//!   surface, provider, a hash of the subject, identity id, expiration. Never a secret.

mod audit;
mod configured;
mod reply;
mod sessions;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::clock::{self, SharedClock};
use crate::identity::{FetchError, IdentityCache, Issued};
use crate::metrics::{Metrics, Surface};
use crate::oidc::{TokenError, Validator, VerifiedToken};
use crate::sessions::{SessionError, SessionStore};

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

/// The broker. Shared by all surfaces.
pub struct Broker {
    /// Token validation.
    pub validator: Arc<Validator>,
    /// The identity cache.
    pub identities: IdentityCache,
    /// Metrics.
    pub metrics: Metrics,
    /// Live sessions (handles usable wherever an ID token is).
    pub sessions: SessionStore,
    clock: SharedClock,
    pending: Semaphore,
    default_role: Option<Arc<str>>,
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
    /// Assembles a broker.
    pub fn new(
        validator: Arc<Validator>,
        identities: IdentityCache,
        metrics: Metrics,
        clock: SharedClock,
        max_pending_exchanges: usize,
        default_role: Option<&str>,
    ) -> Self {
        Self {
            validator,
            identities,
            metrics,
            sessions: SessionStore::new(&Default::default(), clock.clone()),
            clock,
            pending: Semaphore::new(max_pending_exchanges),
            default_role: default_role.map(Into::into),
            session_refresh: None,
        }
    }

    /// Lets sessions be created with a refresh token, which credbroker then redeems to keep
    /// them alive (see [`sessions`]).
    pub fn with_session_refresh(mut self, refresh: SessionRefresh) -> Self {
        self.session_refresh = Some(refresh);
        self
    }

    /// How refresh-token sessions are kept alive, when they are supported.
    pub fn session_refresh(&self) -> Option<&SessionRefresh> {
        self.session_refresh.as_ref()
    }

    /// Replaces the session store's limits (`[sessions]`).
    pub fn with_sessions(mut self, config: &crate::config::SessionsConfig) -> Self {
        self.sessions = SessionStore::new(config, self.clock.clone());
        self
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The role used when a caller names none (`cognito.custom_role_arn`).
    pub fn default_role(&self) -> Option<&str> {
        self.default_role.as_deref()
    }

    /// Credentials for the identity a raw ID token, or a live session handle, proves.
    pub async fn credentials(
        &self,
        raw_token: &str,
        surface: Surface,
    ) -> Result<Arc<Issued>, BrokerError> {
        if crate::sessions::is_handle(raw_token) {
            let session = self.sessions.get(raw_token)?;
            let token = session.token();
            return self
                .credentials_for_token(&token, session.role.as_deref(), surface)
                .await;
        }
        let token = self.validator.validate(raw_token).await?;
        self.credentials_for_token(&token, None, surface).await
    }

    /// Credentials for a validated token, with an optional role (else `cognito.custom_role_arn`).
    pub async fn credentials_for_token(
        &self,
        token: &Arc<VerifiedToken>,
        role: Option<&str>,
        surface: Surface,
    ) -> Result<Arc<Issued>, BrokerError> {
        let issued = self.prepare(token, role).await?;
        self.handed_out(surface, token, &issued);
        Ok(issued)
    }

    /// Like [`Broker::credentials_for_token`], without recording a hand-out (the credentials
    /// are obtained but not given to anyone yet, e.g. when a session is created).
    pub async fn prepare(
        &self,
        token: &Arc<VerifiedToken>,
        role: Option<&str>,
    ) -> Result<Arc<Issued>, BrokerError> {
        let role = role.or(self.default_role.as_deref());
        let entry = self.identities.entry(token, role);
        let now = self.clock.now();
        let issued = match entry.current().filter(|c| c.servable_at(now)) {
            Some(current) => {
                self.metrics.hot.cache_hit.inc();
                current
            }
            None => {
                // A token held since it was validated (a session's) may be about to expire:
                // never send Cognito a token it could refuse mid-exchange.
                self.validator.check_remaining(token, now)?;
                let _permit = self.pending.try_acquire().map_err(|_| BrokerError::Busy)?;
                self.identities
                    .credentials_for(&entry, token)
                    .await
                    .map_err(|error| BrokerError::Upstream {
                        error,
                        provider: Some(token.provider.config.name.clone()),
                        logins_key: Some(token.provider.config.logins_key.clone()),
                    })?
            }
        };
        Ok(issued)
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
            tracing::info!(
                target: "credbroker::audit",
                surface = surface.as_str(),
                provider = %token.provider.config.name,
                subject_hash = %subject_hash(&token.provider.config.issuer, &token.subject),
                identity_id = %issued.identity_id(),
                access_key_id = issued.access_key_id(),
                expiration = issued.expiration(),
                "credentials issued"
            );
        }
    }
}
