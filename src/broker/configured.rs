//! The identities configured in the file (`[identities.<name>]`), as the surfaces serve them.
//!
//! Owns: [`ConfiguredIdentity`] (one identity's source status and its credentials),
//! [`Configured`] (all of them, by name) and [`IdentityError`].
//!
//! Promises:
//! - cached credentials stay servable while the identity's source is failing (an IdP outage);
//! - a caller that asks for more time left than `cache.min_remaining` (IMDS) gets at most one
//!   early renewal per identity per minute, and only when Cognito's lifetimes are long enough
//!   for it to help;
//! - a refresh token that needs a new login is an error even while the last ID token is valid.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Broker, BrokerError};
use crate::clock::{self, SharedClock};
use crate::identity::Issued;
use crate::metrics::Surface;
use crate::oidc::VerifiedToken;
use crate::sources::{SourceError, SourceErrorKind, Status};

/// IMDS-style callers trigger at most one early refresh per identity per this interval.
const MIN_EARLY_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// An identity configured in the file, as the surfaces see it.
pub struct ConfiguredIdentity {
    /// `[identities.<name>]`.
    pub name: String,
    /// Its `role` as configured: the `CustomRoleArn` asked for, `None` for the identity
    /// cache's default (`cognito.custom_role_arn`).
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
    /// when Cognito's lifetimes are long enough for it to help). Waits up to `wait` for a
    /// starting source; the whole call ends within the broker's deadline.
    pub async fn credentials(
        &self,
        broker: &Broker,
        surface: Surface,
        min_remaining: Duration,
        wait: Duration,
    ) -> Result<Arc<Issued>, IdentityError> {
        broker
            .within_deadline(self.serve(broker, surface, min_remaining, wait))
            .await
    }

    async fn serve(
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
        let entry = broker.identities.entry(&token, self.role.as_deref());
        // Cached credentials stay servable while the source is failing (an IdP outage).
        if let Some(current) = broker.identities.servable(&entry) {
            let now = broker.clock().now();
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
            broker.handed_out(surface, &token, &issued);
            return Ok(issued);
        }
        if let Some(why) = unusable {
            return Err(IdentityError::Source(why));
        }
        Ok(broker.serve(&token, self.role.as_deref(), surface).await?)
    }
}

impl Broker {
    /// Credentials for a configured identity on `surface` (IMDS), with at least
    /// `min_remaining` left when a refresh can provide that, within the request deadline (which
    /// is also how long a starting source is waited for).
    pub async fn configured_credentials(
        &self,
        identity: &ConfiguredIdentity,
        surface: Surface,
        min_remaining: Duration,
    ) -> Result<Arc<Issued>, IdentityError> {
        identity
            .credentials(self, surface, min_remaining, self.request_timeout)
            .await
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
