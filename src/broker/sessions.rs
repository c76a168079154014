//! Session operations: what every surface (HTTP, gRPC) does with sessions, on top of the
//! session store ([`crate::sessions`]) and the identity cache.
//!
//! Owns: creating, updating and revoking sessions ([`Broker::create_session`],
//! [`Broker::update_session`], [`Broker::revoke_session`]), keeping refresh-token sessions alive,
//! and the release policy (when a session's end evicts its identity).
//!
//! Promises:
//! - a session created with a refresh token ([`RefreshLogin`]) is kept alive by credbroker: a
//!   [`SourceDriver`] redeems the refresh token (held in a [`MemoryStore`], never on disk, never
//!   logged) ahead of each ID token's expiry, every redeemed token replaces the session's token
//!   and is offered to the identity cache, and the session lives `sessions.max_lifetime` from
//!   creation whatever its ID tokens' lifetimes;
//! - the refresh token must be the same user's: the first redemption happens while the session
//!   is created, and a token of another user (issuer and subject) refuses the session
//!   ([`SessionError::RefreshTokenMismatch`]) before any credentials are obtained for that user;
//! - a refresh token the provider refuses (`invalid_grant`) ends the session
//!   ([`SessionError::ReloginRequired`]); other terminal failures end it too
//!   ([`SessionError::RefreshFailed`]); an ended session answers with that error (401) until it
//!   would have expired, wakes its watchers, and releases its identity like a revocation does;
//!   transient failures back off and the session keeps serving cached credentials;
//! - revoking a session stops its refresh-token redemptions; so does shutdown (the drivers run
//!   on the application's background tasks).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Broker, BrokerError, audit, reply, subject_hash};
use crate::clock::{self, SharedClock};
use crate::config::ClientAuth;
use crate::identity::{EvictionCause, IdentityCache, Issued};
use crate::oidc::VerifiedToken;
use crate::secret::SecretString;
use crate::sessions::{Session, SessionError, SessionKind, SessionStore};
use crate::sources::refresh::{MemoryStore, RefreshTokenSource, TokenEndpoint};
use crate::sources::{SourceDriver, SourceError, SourceErrorKind};

/// A session as created: the handle (shown once), its expiry, and the credentials obtained.
pub struct Created {
    /// The handle. A secret.
    pub handle: SecretString,
    /// When the session expires.
    pub expires_at: SystemTime,
    /// The identity's credentials (not yet recorded as handed out).
    pub issued: Arc<Issued>,
    /// The verified token the session holds.
    pub token: Arc<VerifiedToken>,
}

impl fmt::Debug for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Created")
            .field("handle", &self.handle)
            .field("expires_at", &clock::format_aws_timestamp(self.expires_at))
            .field("issued", &self.issued)
            .finish()
    }
}

/// A refresh token offered at session creation.
#[derive(Debug)]
pub struct RefreshLogin {
    /// The refresh token (from the same login as the ID token). A secret.
    pub refresh_token: SecretString,
    /// The OAuth client it belongs to; default: the ID token's `azp`, else its accepted `aud`.
    /// Must be one of the provider's `audiences`. Sessions redeem as a public client (no
    /// client secret).
    pub client_id: Option<String>,
}

/// What the broker needs to keep refresh-token sessions alive ([`Broker::with_session_refresh`]).
pub struct SessionRefresh {
    /// Where refresh tokens are redeemed (the provider's `token_endpoint` over HTTP).
    pub endpoint: Arc<dyn TokenEndpoint>,
    /// A new ID token is fetched after this fraction of the current one's lifetime (+ jitter).
    pub refresh_fraction: f64,
    /// How often a session's identity is marked as used (half of `cache.idle_timeout`).
    pub keepalive: Duration,
    /// Longest wait for the first redemption while a session is created.
    pub first_redemption_wait: Duration,
    /// Where the drivers run: the application's background tasks, waited for on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled on shutdown: stops every driver.
    pub stop: CancellationToken,
}

impl fmt::Debug for SessionRefresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRefresh")
            .field("refresh_fraction", &self.refresh_fraction)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

/// Ends sessions and applies the release policy (see [`Broker`]'s session operations).
#[derive(Clone)]
struct Release {
    sessions: SessionStore,
    identities: IdentityCache,
}

impl Release {
    /// Evicts the session's identity unless another live session holds it. Returns whether it
    /// was evicted.
    fn identity(&self, session: &Session) -> bool {
        let role = self.identities.role(session.role.as_deref());
        let others = self.sessions.count_live(|s| {
            s.issuer == session.issuer
                && s.subject == session.subject
                && self.identities.role(s.role.as_deref()) == role
        });
        if others > 0 {
            return false;
        }
        let key = self
            .identities
            .key_for(&session.token(), session.role.as_deref());
        self.identities.evict(&key, EvictionCause::Revoked)
    }

    /// Ends a session early because its refresh token failed.
    fn end(&self, session: &Session, why: SessionError) {
        let code = reply::session(&why).code;
        if self.sessions.end(session, why) {
            audit::session_ended(session, code);
            self.identity(session);
        }
    }
}

/// Drops a session whose creation did not complete (its handle never reached the caller),
/// which also stops its driver; disarmed once the handle is returned.
struct Pending {
    sessions: SessionStore,
    session: Option<Arc<Session>>,
}

impl Pending {
    fn disarm(mut self) {
        self.session = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.sessions.remove(&session);
        }
    }
}

/// Runs a refresh-token session's driver until the session is revoked, ends or expires, or
/// credbroker shuts down, following the driver's tokens into the session.
async fn follow(
    release: Release,
    session: Arc<Session>,
    driver: SourceDriver,
    clock: SharedClock,
    stop: CancellationToken,
) {
    let mut status = driver.subscribe();
    let run = driver.run(stop);
    tokio::pin!(run);
    loop {
        let left = clock::saturating_sub(session.expires_at(), clock.now());
        tokio::select! {
            biased;
            () = session.revoked().cancelled() => break,
            () = &mut run => break,
            () = tokio::time::sleep(left) => {
                release.sessions.remove(&session);
                break;
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = status.borrow_and_update().clone();
                if let Some(problem) = current.problem
                    && problem.kind != SourceErrorKind::Transient
                {
                    release.end(&session, ended_by(&problem));
                    break;
                }
                if let Some(token) = current.token {
                    release.sessions.follow(&session, &token);
                }
            }
        }
    }
    // Dropping `run` here stops the driver: no redemption after this point.
}

/// Session operations as every surface (HTTP, gRPC) uses them.
///
/// Revocation policy: revoking a session drops the session at once. The identity's cache entry
/// (its credentials, the ID token held for background refresh, and the refresh schedule) is
/// evicted too, unless another live session holds the same identity (same issuer, subject and
/// effective role) — logging out of one device must not break another. A refresh-token session
/// that ends because its refresh token was refused releases its identity the same way. Callers
/// that use a raw ID token (no session) are not tracked: after a logout their next request
/// simply does a fresh exchange with Cognito. Credentials already handed out stay valid until
/// they expire: AWS has no way to revoke one set of temporary credentials.
impl Broker {
    fn release(&self) -> Release {
        Release {
            sessions: self.sessions.clone(),
            identities: self.identities.clone(),
        }
    }

    /// Validates `raw_id_token`, obtains the identity's credentials (so a login Cognito refuses
    /// never gets a session), and opens a session. With a refresh token, the first redemption
    /// happens before this returns (bounded by [`SessionRefresh::first_redemption_wait`]): a
    /// refresh token that is refused or belongs to someone else refuses the session.
    pub async fn create_session(
        &self,
        raw_id_token: &str,
        refresh: Option<RefreshLogin>,
        role: Option<&str>,
    ) -> Result<Created, BrokerError> {
        self.within_deadline(self.open_session(raw_id_token, refresh, role))
            .await
    }

    async fn open_session(
        &self,
        raw_id_token: &str,
        refresh: Option<RefreshLogin>,
        role: Option<&str>,
    ) -> Result<Created, BrokerError> {
        let keeper = match (&refresh, self.session_refresh.as_ref()) {
            (Some(_), None) => return Err(SessionError::RefreshTokenUnsupported.into()),
            (_, keeper) => keeper,
        };
        let token = self.validator.validate(raw_id_token).await?;
        let client_id = match &refresh {
            None => None,
            Some(login) => Some(client_id_for(&token, login.client_id.as_deref())?),
        };
        let issued = self.prepare(&token, role).await?;
        let kind = match refresh {
            Some(_) => SessionKind::RefreshToken,
            None => SessionKind::IdToken,
        };
        let (handle, session) = self.sessions.create(&token, role, kind)?;
        let pending = Pending {
            sessions: self.sessions.clone(),
            session: Some(session.clone()),
        };
        if let (Some(login), Some(client_id), Some(keeper)) = (refresh, client_id, keeper) {
            self.keep_alive(keeper, &session, &token, login, client_id)
                .await?;
        }
        pending.disarm();
        let expires_at = session.expires_at();
        audit::session_created(
            &token,
            &issued,
            kind == SessionKind::RefreshToken,
            expires_at,
        );
        Ok(Created {
            handle,
            expires_at,
            issued,
            token,
        })
    }

    /// Starts the driver that keeps a refresh-token session alive and waits (up to
    /// [`SessionRefresh::first_redemption_wait`]) for its first redemption: a terminal failure
    /// refuses the session, a slow or transient one is retried in the background.
    async fn keep_alive(
        &self,
        keeper: &SessionRefresh,
        session: &Arc<Session>,
        token: &Arc<VerifiedToken>,
        login: RefreshLogin,
        client_id: String,
    ) -> Result<(), BrokerError> {
        let subject_hash = subject_hash(&token.provider.config.issuer, &token.subject);
        let source = RefreshTokenSource::new(
            keeper.endpoint.clone(),
            client_id,
            None,
            ClientAuth::Post,
            Arc::new(MemoryStore::new(login.refresh_token)),
            keeper.refresh_fraction,
        );
        let driver = SourceDriver::new(
            format!("session {subject_hash}"),
            Arc::new(source),
            token.provider.clone(),
            self.validator.clone(),
            self.identities.clone(),
            session.role.as_deref(),
            self.clock.clone(),
            keeper.keepalive,
        )
        .for_user(&session.issuer, &session.subject);
        let mut status = driver.subscribe();
        keeper.tasks.spawn(follow(
            self.release(),
            session.clone(),
            driver,
            self.clock.clone(),
            keeper.stop.child_token(),
        ));
        let attempted = tokio::time::timeout(
            keeper.first_redemption_wait,
            status.wait_for(|s| s.attempted),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let problem = status.borrow().problem.clone();
        match (attempted, problem) {
            (true, Some(p)) if p.kind != SourceErrorKind::Transient => {
                tracing::info!(
                    target: "credbroker::sessions",
                    subject_hash = %subject_hash,
                    error = %p,
                    "session refused: its refresh token could not be redeemed"
                );
                return Err(ended_by(&p).into());
            }
            (true, None) => {}
            _ => tracing::info!(
                target: "credbroker::sessions",
                subject_hash = %subject_hash,
                "the session's first refresh-token redemption did not succeed yet; retrying \
                 in the background"
            ),
        }
        Ok(())
    }

    /// Gives a session a newer ID token for the same user; returns the session's new expiry.
    /// The token is also offered to the identity, so background refresh uses it.
    pub async fn update_session(
        &self,
        handle: &str,
        raw_id_token: &str,
    ) -> Result<SystemTime, BrokerError> {
        self.within_deadline(async {
            // An unknown session is reported before the token is looked at.
            self.sessions.get(handle)?;
            let token = self.validator.validate(raw_id_token).await?;
            let (session, expires_at) = self.sessions.update_token(handle, &token)?;
            self.identities.entry(&token, session.role.as_deref());
            Ok(expires_at)
        })
        .await
    }

    /// Ends a session (see the policy above), and with it its refresh-token redemptions.
    /// Returns whether the identity was evicted.
    pub fn revoke_session(&self, handle: &str) -> Result<bool, BrokerError> {
        let session = self.sessions.revoke(handle)?;
        audit::session_revoked(&session);
        Ok(self.release().identity(&session))
    }
}

/// The OAuth client a session's refresh token is redeemed as.
fn client_id_for(token: &VerifiedToken, asked: Option<&str>) -> Result<String, SessionError> {
    let provider = &token.provider.config;
    match asked {
        None => Ok(token.client_id.to_string()),
        Some(c) if provider.audiences.iter().any(|a| a == c) => Ok(c.to_owned()),
        Some(c) => Err(SessionError::InvalidClientId {
            client_id: c.to_owned(),
            provider: provider.name.clone(),
            accepted: format!("{:?}", provider.audiences),
        }),
    }
}

/// The session error a terminal refresh-token failure ends a session with.
fn ended_by(e: &SourceError) -> SessionError {
    match e.kind {
        SourceErrorKind::ReloginRequired => SessionError::ReloginRequired,
        SourceErrorKind::IdentityMismatch => SessionError::RefreshTokenMismatch,
        _ => SessionError::RefreshFailed(e.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::oidc::test_token;

    #[test]
    fn the_client_id_defaults_to_the_tokens_and_must_be_an_accepted_audience() {
        let token = test_token(
            "https://issuer/",
            "auth0|e",
            SystemTime::now() + Duration::from_secs(60),
        );
        assert_eq!(client_id_for(&token, None).expect("default"), "client");
        assert_eq!(
            client_id_for(&token, Some("client")).expect("accepted"),
            "client"
        );
        let e = client_id_for(&token, Some("other-app")).expect_err("not accepted");
        let r = super::reply::session(&e);
        assert_eq!((r.code, r.status), ("InvalidClientId", 400));
        assert!(e.to_string().contains("providers.test.audiences"), "{e}");
    }
}
