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

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::clock::{self, SharedClock};
use crate::cognito::ErrorKind;
use crate::identity::{FetchError, IdentityCache, Issued};
use crate::metrics::{Metrics, Surface};
use crate::oidc::{TokenError, Validator, VerifiedToken};
use crate::sessions::{self, SessionError, SessionStore};

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

/// A failure as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// HTTP status.
    pub status: u16,
    /// Stable code.
    pub code: &'static str,
    /// What happened and how to fix it.
    pub message: String,
    /// Seconds to wait before retrying, when that helps.
    pub retry_after: Option<u64>,
}

impl BrokerError {
    /// The client-facing form.
    pub fn reply(&self) -> ErrorReply {
        match self {
            Self::Token(e) => {
                let (status, retry) = match e.retry_after() {
                    Some(after) => (503, Some(after.as_secs().max(1))),
                    None => (401, None),
                };
                ErrorReply {
                    status,
                    code: e.code(),
                    message: e.to_string(),
                    retry_after: retry,
                }
            }
            Self::Session(e) => ErrorReply {
                status: e.status(),
                code: e.code(),
                message: e.to_string(),
                retry_after: matches!(e, SessionError::TooMany { .. }).then_some(1),
            },
            Self::Busy => ErrorReply {
                status: 429,
                code: "TooManyRequests",
                message: self.to_string(),
                retry_after: Some(1),
            },
            Self::Timeout => ErrorReply {
                status: 503,
                code: "UpstreamTimeout",
                message: self.to_string(),
                retry_after: Some(1),
            },
            Self::Upstream {
                error,
                provider,
                logins_key,
            } => {
                let (status, code) = match error.kind {
                    ErrorKind::NotAuthorized => (403, "LoginRejected"),
                    ErrorKind::ResourceNotFound => (403, "ResourceNotFound"),
                    ErrorKind::InvalidIdentityPoolConfiguration => {
                        (403, "IdentityPoolMisconfigured")
                    }
                    ErrorKind::InvalidParameter => (403, "InvalidParameter"),
                    ErrorKind::LimitExceeded => (403, "LimitExceeded"),
                    ErrorKind::ResourceConflict => (403, "ResourceConflict"),
                    ErrorKind::TooManyRequests => (503, "UpstreamThrottled"),
                    // An attempt that got no answer in `cognito.attempt_timeout`: the same Code
                    // as a request that outlived `server.request_timeout` waiting for Cognito.
                    ErrorKind::Timeout => (503, "UpstreamTimeout"),
                    ErrorKind::InternalError
                    | ErrorKind::ExternalService
                    | ErrorKind::Unavailable => (503, "UpstreamUnavailable"),
                    _ => (502, "UpstreamError"),
                };
                let retry_after = (status == 503).then(|| {
                    error
                        .retry_after
                        .unwrap_or(Duration::from_secs(1))
                        .as_secs()
                        .max(1)
                });
                let hint = hint(error, provider.as_deref(), logins_key.as_deref());
                let message = match hint {
                    Some(h) => format!("Cognito: {}. {h}", error.message),
                    None => format!("Cognito: {}", error.message),
                };
                ErrorReply {
                    status,
                    code,
                    message,
                    retry_after,
                }
            }
        }
    }
}

/// The likely fix for a Cognito refusal, from its class and message (also used by
/// `credbroker doctor`, so both say the same).
pub fn hint(
    error: &FetchError,
    provider: Option<&str>,
    logins_key: Option<&str>,
) -> Option<String> {
    let m = error.message.as_str();
    let provider = provider.unwrap_or("<name>");
    let key = logins_key.unwrap_or("?");
    Some(match error.kind {
        ErrorKind::NotAuthorized if m.contains("Issuer doesn't match providerName") => format!(
            "credbroker sent the Logins key {key:?} (providers.{provider}.logins_key); it must be \
             the name of the identity pool's OpenID Connect provider, which is the token's iss \
             without \"https://\" and without a trailing slash"
        ),
        ErrorKind::NotAuthorized if m.contains("not from a supported provider") => format!(
            "add the IAM OpenID Connect provider {key:?} to the identity pool's authentication \
             providers, or set providers.{provider}.logins_key to the provider name the pool uses"
        ),
        ErrorKind::NotAuthorized if m.contains("audience") => format!(
            "add the application's client ID to the Audiences of the IAM OpenID Connect provider \
             {key:?} (it must match the token's aud, or azp when present)"
        ),
        ErrorKind::NotAuthorized if m.contains("Token expired") => {
            "the ID token expired by Cognito's clock; sign in again (check this host's clock)"
                .to_owned()
        }
        ErrorKind::NotAuthorized if m.contains("Unauthenticated") => {
            "the Logins map was empty; this is a credbroker bug, please report it".to_owned()
        }
        ErrorKind::NotAuthorized => format!(
            "Cognito refused the login from provider {provider}; check that the identity pool \
             trusts {key:?} and that the token's signing key is published"
        ),
        ErrorKind::ResourceNotFound if m.contains("IdentityPool") => {
            "check cognito.identity_pool_id and cognito.region (the pool must exist in that \
             region)"
                .to_owned()
        }
        ErrorKind::ResourceNotFound => {
            "the identity was not found in the pool; it may have been deleted".to_owned()
        }
        ErrorKind::InvalidIdentityPoolConfiguration => {
            "the pool's authenticated role must trust cognito-identity.amazonaws.com for \
             sts:AssumeRoleWithWebIdentity with the conditions \
             cognito-identity.amazonaws.com:aud = <identity pool id> and \
             cognito-identity.amazonaws.com:amr = \"authenticated\""
                .to_owned()
        }
        ErrorKind::InvalidParameter => {
            "check cognito.custom_role_arn (it must be a role the pool may assume for this user) \
             and cognito.identity_pool_id"
                .to_owned()
        }
        _ => return None,
    })
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
    session_refresh: Option<sessions::SessionRefresh>,
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
    /// them alive (see [`crate::sessions`]).
    pub fn with_session_refresh(mut self, refresh: sessions::SessionRefresh) -> Self {
        self.session_refresh = Some(refresh);
        self
    }

    /// How refresh-token sessions are kept alive, when they are supported.
    pub fn session_refresh(&self) -> Option<&sessions::SessionRefresh> {
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
        if sessions::is_handle(raw_token) {
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

/// A stable, non-reversible label for a subject: the first 16 hex digits of
/// SHA-256(issuer NUL subject). Lets operators correlate audit lines without logging the
/// subject itself.
pub fn subject_hash(issuer: &str, subject: &str) -> String {
    let mut h = Sha256::new();
    h.update(issuer.as_bytes());
    h.update([0]);
    h.update(subject.as_bytes());
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(kind: ErrorKind, message: &str) -> BrokerError {
        BrokerError::Upstream {
            error: FetchError {
                kind,
                message: message.to_owned(),
                retry_after: Some(Duration::from_secs(4)),
            },
            provider: Some("auth0".into()),
            logins_key: Some("dev-x.us.auth0.com/".into()),
        }
    }

    #[test]
    fn cognito_errors_map_to_statuses_codes_and_fixes() {
        let r = upstream(
            ErrorKind::NotAuthorized,
            "GetId: Invalid login token. Issuer doesn't match providerName",
        )
        .reply();
        assert_eq!(
            (r.status, r.code, r.retry_after),
            (403, "LoginRejected", None)
        );
        assert!(
            r.message.contains("providers.auth0.logins_key"),
            "{}",
            r.message
        );
        assert!(
            r.message.contains("without a trailing slash"),
            "{}",
            r.message
        );

        let r = upstream(ErrorKind::TooManyRequests, "Rate exceeded").reply();
        assert_eq!(
            (r.status, r.code, r.retry_after),
            (503, "UpstreamThrottled", Some(4))
        );
        let r = upstream(ErrorKind::Unavailable, "connection refused").reply();
        assert_eq!((r.status, r.code), (503, "UpstreamUnavailable"));
        let r = upstream(ErrorKind::Timeout, "no answer in time").reply();
        assert_eq!(
            (r.status, r.code, r.retry_after),
            (503, "UpstreamTimeout", Some(4))
        );
        assert_eq!(BrokerError::Timeout.reply().code, "UpstreamTimeout");
        let r = upstream(
            ErrorKind::InvalidIdentityPoolConfiguration,
            "Invalid identity pool configuration",
        )
        .reply();
        assert_eq!((r.status, r.code), (403, "IdentityPoolMisconfigured"));
        assert!(r.message.contains("AssumeRoleWithWebIdentity"));
        let r = upstream(ErrorKind::ResourceNotFound, "IdentityPool 'x' not found.").reply();
        assert!(r.message.contains("cognito.identity_pool_id"));
        assert_eq!(BrokerError::Busy.reply().status, 429);
    }

    #[test]
    fn subject_hash_is_stable_and_does_not_contain_the_subject() {
        let a = subject_hash("https://x/", "auth0|alice");
        assert_eq!(a, subject_hash("https://x/", "auth0|alice"));
        assert_ne!(a, subject_hash("https://y/", "auth0|alice"));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("alice"));
    }
}
