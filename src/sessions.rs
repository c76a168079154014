//! Sessions: opaque handles that stand for a verified ID token, shared by HTTP and gRPC.
//!
//! Owns: [`SessionStore`], the live sessions, their limits and expiry.
//!
//! Promises:
//! - a handle is `cbs_` + 43 characters of URL-safe base64 (no padding) of 32 bytes from the
//!   OS random number generator: 256 bits, unguessable, valid as an HTTP header value and in a
//!   token file;
//! - the store keeps only SHA-256(handle): a memory dump or a debug print of the store does not
//!   reveal a usable handle. Lookup is by hash, confirmed with a constant-time comparison;
//! - a session expires at its ID token's `exp`, and never later than `sessions.max_lifetime`
//!   after it was created; [`SessionStore::update_token`] accepts a newer token only for the
//!   same user (issuer and subject), which extends the session up to that cap;
//! - at most `sessions.max_sessions` live sessions, and `sessions.max_per_identity` per user;
//!   expired sessions are dropped when looked up and whenever a limit is reached;
//! - revoking a session ([`SessionStore::revoke`]) wakes every stream watching it
//!   ([`Session::revoked`]).
//!
//! Extension point for refresh tokens: a session holds its identity and the newest ID token.
//! A refresh source (refresh-token grant) would own the refresh token next to the session, get a
//! new ID token ahead of [`Session::expires_at`], and hand it to [`SessionStore::update_token`];
//! nothing else has to change. Until then, a refresh token offered at creation is refused with
//! [`SessionError::RefreshTokenUnsupported`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, subject_hash};
use crate::clock::{self, SharedClock};
use crate::config::SessionsConfig;
use crate::identity::{EvictionCause, Issued};
use crate::oidc::VerifiedToken;
use crate::secret::SecretString;

/// Every session handle starts with this (recognisable in a leaked-secret scan, and how the
/// container endpoint tells a handle from an ID token).
pub const HANDLE_PREFIX: &str = "cbs_";
/// Random bytes per handle.
const HANDLE_BYTES: usize = 32;
/// Length of a handle: the prefix and 43 base64 characters.
pub const HANDLE_LEN: usize = HANDLE_PREFIX.len() + 43;

/// Whether `value` has the shape of a session handle (not whether it is a live one).
pub fn is_handle(value: &str) -> bool {
    value.len() == HANDLE_LEN
        && value.starts_with(HANDLE_PREFIX)
        && value[HANDLE_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn digest(handle: &str) -> [u8; 32] {
    Sha256::digest(handle.as_bytes()).into()
}

/// Why a session operation failed. Each variant has a stable [`SessionError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Unknown handle (never issued, revoked, or forgotten after a restart).
    #[error(
        "the session is unknown: it was revoked, or credbroker restarted; create a new one with \
         the ID token"
    )]
    Invalid,
    /// The session's ID token (or `sessions.max_lifetime`) ran out.
    #[error(
        "the session expired at {}; create a new one with a fresh ID token (or replace the \
         token before it expires with UpdateToken)",
        clock::format_aws_timestamp(*.0)
    )]
    Expired(SystemTime),
    /// Too many live sessions.
    #[error("too many live sessions ({limit}, {setting}); revoke unused ones or retry later")]
    TooMany {
        /// The limit.
        limit: usize,
        /// The setting naming it.
        setting: &'static str,
    },
    /// `update_token` with a token for someone else.
    #[error(
        "the ID token is for a different user than the session's; a session keeps its user \
         (issuer and subject) for life"
    )]
    IdentityMismatch,
    /// A refresh token was offered.
    #[error(
        "refresh tokens are not supported yet; create the session with the ID token alone and \
         replace it with UpdateToken (or a new session) before it expires"
    )]
    RefreshTokenUnsupported,
}

impl SessionError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid => "InvalidSession",
            Self::Expired(_) => "SessionExpired",
            Self::TooMany { .. } => "TooManySessions",
            Self::IdentityMismatch => "IdentityMismatch",
            Self::RefreshTokenUnsupported => "RefreshTokenUnsupported",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid | Self::Expired(_) => 401,
            Self::TooMany { .. } => 429,
            Self::IdentityMismatch => 403,
            Self::RefreshTokenUnsupported => 400,
        }
    }
}

/// One live session. Holds no handle, only its hash.
pub struct Session {
    digest: [u8; 32],
    /// The issuer of its tokens.
    pub issuer: Arc<str>,
    /// The subject of its tokens.
    pub subject: Arc<str>,
    /// The role asked for at creation (`CustomRoleArn`), if any.
    pub role: Option<Arc<str>>,
    /// When it was created.
    pub created_at: SystemTime,
    state: Mutex<SessionState>,
    revoked: CancellationToken,
}

struct SessionState {
    token: Arc<VerifiedToken>,
    expires_at: SystemTime,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("role", &self.role)
            .field(
                "expires_at",
                &clock::format_aws_timestamp(self.expires_at()),
            )
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The newest ID token it holds.
    pub fn token(&self) -> Arc<VerifiedToken> {
        lock(&self.state).token.clone()
    }
    /// When it expires.
    pub fn expires_at(&self) -> SystemTime {
        lock(&self.state).expires_at
    }
    /// Cancelled when the session is revoked.
    pub fn revoked(&self) -> &CancellationToken {
        &self.revoked
    }
    /// Whether it belongs to the same user as `token`.
    pub fn same_user(&self, token: &VerifiedToken) -> bool {
        *self.issuer == *token.provider.config.issuer && self.subject == token.subject
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: Mutex<HashMap<[u8; 32], Arc<Session>>>,
    config: SessionsConfig,
    clock: SharedClock,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("sessions", &lock(&self.inner.sessions).len())
            .finish()
    }
}

impl SessionStore {
    /// An empty store.
    pub fn new(config: &SessionsConfig, clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions: Mutex::new(HashMap::new()),
                config: config.clone(),
                clock,
            }),
        }
    }

    /// Opens a session for a verified token (and optional role). Returns the handle — shown to
    /// the caller once and never stored — and the session's expiry.
    pub fn create(
        &self,
        token: &Arc<VerifiedToken>,
        role: Option<&str>,
        refresh_token: Option<&SecretString>,
    ) -> Result<(SecretString, SystemTime), SessionError> {
        if refresh_token.is_some() {
            return Err(SessionError::RefreshTokenUnsupported);
        }
        let now = self.inner.clock.now();
        let config = &self.inner.config;
        let expires_at = token.expires_at.min(now + config.max_lifetime);
        if expires_at <= now {
            return Err(SessionError::Expired(expires_at));
        }
        let mut bytes = [0u8; HANDLE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let handle =
            SecretString::from(format!("{HANDLE_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)));
        zeroize::Zeroize::zeroize(&mut bytes);
        let session = Arc::new(Session {
            digest: digest(handle.expose_str()),
            issuer: token.provider.config.issuer.as_str().into(),
            subject: token.subject.clone(),
            role: role.map(Into::into),
            created_at: now,
            state: Mutex::new(SessionState {
                token: token.clone(),
                expires_at,
            }),
            revoked: CancellationToken::new(),
        });
        let mut sessions = lock(&self.inner.sessions);
        let mut pruned = false;
        loop {
            let mine = sessions
                .values()
                .filter(|s| s.issuer == session.issuer && s.subject == session.subject)
                .count();
            let refusal = if sessions.len() >= config.max_sessions {
                Some(SessionError::TooMany {
                    limit: config.max_sessions,
                    setting: "sessions.max_sessions",
                })
            } else if mine >= config.max_per_identity {
                Some(SessionError::TooMany {
                    limit: config.max_per_identity,
                    setting: "sessions.max_per_identity",
                })
            } else {
                None
            };
            match refusal {
                None => break,
                Some(e) if pruned => return Err(e),
                Some(_) => {
                    sessions.retain(|_, s| s.expires_at() > now);
                    pruned = true;
                }
            }
        }
        sessions.insert(session.digest, session);
        Ok((handle, expires_at))
    }

    /// The live session a handle names.
    pub fn get(&self, handle: &str) -> Result<Arc<Session>, SessionError> {
        if !is_handle(handle) {
            return Err(SessionError::Invalid);
        }
        let hash = digest(handle);
        let mut sessions = lock(&self.inner.sessions);
        let session = sessions
            .get(&hash)
            .filter(|s| bool::from(s.digest.ct_eq(&hash)))
            .cloned()
            .ok_or(SessionError::Invalid)?;
        let expires_at = session.expires_at();
        if expires_at <= self.inner.clock.now() {
            sessions.remove(&hash);
            session.revoked.cancel();
            return Err(SessionError::Expired(expires_at));
        }
        Ok(session)
    }

    /// Gives a session a newer ID token for the same user. Returns the new expiry.
    pub fn update_token(
        &self,
        handle: &str,
        token: &Arc<VerifiedToken>,
    ) -> Result<(Arc<Session>, SystemTime), SessionError> {
        let session = self.get(handle)?;
        if !session.same_user(token) {
            return Err(SessionError::IdentityMismatch);
        }
        let cap = session.created_at + self.inner.config.max_lifetime;
        let mut state = lock(&session.state);
        if token.expires_at > state.token.expires_at {
            state.token = token.clone();
            state.expires_at = token.expires_at.min(cap);
        }
        let expires_at = state.expires_at;
        drop(state);
        Ok((session, expires_at))
    }

    /// Ends a session. Returns it, so the caller can decide about the identity's cache entry.
    pub fn revoke(&self, handle: &str) -> Result<Arc<Session>, SessionError> {
        let session = self.get(handle)?;
        lock(&self.inner.sessions).remove(&session.digest);
        session.revoked.cancel();
        Ok(session)
    }

    /// Live sessions of a user with a role (`default_role` standing in for sessions that
    /// named none), i.e. the sessions that use one identity cache entry.
    pub fn count_for(
        &self,
        issuer: &str,
        subject: &str,
        role: Option<&str>,
        default_role: Option<&str>,
    ) -> usize {
        let now = self.inner.clock.now();
        let role = role.or(default_role);
        lock(&self.inner.sessions)
            .values()
            .filter(|s| {
                &*s.issuer == issuer
                    && &*s.subject == subject
                    && s.role.as_deref().or(default_role) == role
                    && s.expires_at() > now
            })
            .count()
    }

    /// Number of sessions held (expired ones not yet pruned included).
    pub fn len(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn stored_digests(&self) -> Vec<[u8; 32]> {
        lock(&self.inner.sessions).keys().copied().collect()
    }
}

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

/// Session operations as every surface (HTTP, gRPC) uses them.
///
/// Revocation policy: revoking a session drops the session at once. The identity's cache entry
/// (its credentials, the ID token held for background refresh, and the refresh schedule) is
/// evicted too, unless another live session holds the same identity (same issuer, subject and
/// effective role) — logging out of one device must not break another. Callers that use a raw
/// ID token (no session) are not tracked: after a logout their next request simply does a fresh
/// exchange with Cognito. Credentials already handed out stay valid until they expire: AWS has
/// no way to revoke one set of temporary credentials.
impl Broker {
    /// Validates `raw_id_token`, obtains the identity's credentials (so a login Cognito refuses
    /// never gets a session), and opens a session.
    pub async fn create_session(
        &self,
        raw_id_token: &str,
        refresh_token: Option<&SecretString>,
        role: Option<&str>,
    ) -> Result<Created, BrokerError> {
        if refresh_token.is_some() {
            return Err(SessionError::RefreshTokenUnsupported.into());
        }
        let token = self.validator.validate(raw_id_token).await?;
        let issued = self.prepare(&token, role).await?;
        let (handle, expires_at) = self.sessions.create(&token, role, None)?;
        tracing::info!(
            target: "credbroker::audit",
            provider = %token.provider.config.name,
            subject_hash = %subject_hash(&token.provider.config.issuer, &token.subject),
            identity_id = %issued.identity_id(),
            expires_at = %clock::format_aws_timestamp(expires_at),
            "session created"
        );
        Ok(Created {
            handle,
            expires_at,
            issued,
            token,
        })
    }

    /// Gives a session a newer ID token for the same user; returns the session's new expiry.
    /// The token is also offered to the identity, so background refresh uses it.
    pub async fn update_session(
        &self,
        handle: &str,
        raw_id_token: &str,
    ) -> Result<SystemTime, BrokerError> {
        // An unknown session is reported before the token is looked at.
        self.sessions.get(handle)?;
        let token = self.validator.validate(raw_id_token).await?;
        let (session, expires_at) = self.sessions.update_token(handle, &token)?;
        self.identities
            .entry(&token, session.role.as_deref().or(self.default_role()));
        Ok(expires_at)
    }

    /// Ends a session (see the policy above). Returns whether the identity was evicted.
    pub fn revoke_session(&self, handle: &str) -> Result<bool, BrokerError> {
        let session = self.sessions.revoke(handle)?;
        let token = session.token();
        tracing::info!(
            target: "credbroker::audit",
            provider = %token.provider.config.name,
            subject_hash = %subject_hash(&session.issuer, &session.subject),
            "session revoked"
        );
        let others = self.sessions.count_for(
            &session.issuer,
            &session.subject,
            session.role.as_deref(),
            self.default_role(),
        );
        if others > 0 {
            return Ok(false);
        }
        let key = self
            .identities
            .key_for(&token, session.role.as_deref().or(self.default_role()));
        Ok(self.identities.evict(&key, EvictionCause::Revoked))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::oidc::test_token;

    fn store(config: SessionsConfig) -> (SessionStore, SharedClock) {
        let clock: SharedClock = Arc::new(crate::clock::TokioClock::new());
        (SessionStore::new(&config, clock.clone()), clock)
    }

    #[tokio::test]
    async fn handles_are_random_prefixed_and_stored_only_as_hashes() {
        let (store, clock) = store(SessionsConfig::default());
        let token = test_token(
            "https://issuer/",
            "auth0|a",
            clock.now() + Duration::from_secs(600),
        );
        let (h1, _) = store.create(&token, None, None).expect("created");
        let (h2, _) = store.create(&token, None, None).expect("created");
        let (h1, h2) = (h1.expose_str().to_owned(), h2.expose_str().to_owned());
        assert_ne!(h1, h2);
        assert!(is_handle(&h1) && h1.len() == HANDLE_LEN, "{h1}");
        let decoded = URL_SAFE_NO_PAD
            .decode(&h1[HANDLE_PREFIX.len()..])
            .expect("base64");
        assert_eq!(decoded.len(), 32, "256 bits");

        let stored = store.stored_digests();
        assert_eq!(stored.len(), 2);
        assert!(stored.contains(&digest(&h1)) && stored.contains(&digest(&h2)));
        // Nothing the store holds or prints contains the handle.
        for d in &stored {
            assert!(!d.windows(decoded.len()).any(|w| w == decoded.as_slice()));
        }
        let session = store.get(&h1).expect("live");
        let printed = format!("{store:?} {session:?}");
        assert!(!printed.contains(&h1[4..]), "{printed}");
        assert_eq!(session.digest, digest(&h1));
        // A handle that differs in one character is unknown.
        let mut wrong = h1.clone().into_bytes();
        wrong[10] = if wrong[10] == b'A' { b'B' } else { b'A' };
        let wrong = String::from_utf8(wrong).expect("ascii");
        assert_eq!(
            store.get(&wrong).expect_err("unknown"),
            SessionError::Invalid
        );
    }

    #[tokio::test]
    async fn sessions_expire_with_their_token_and_the_lifetime_cap() {
        let (store, clock) = store(SessionsConfig {
            max_lifetime: Duration::from_secs(3600),
            ..SessionsConfig::default()
        });
        tokio::time::pause();
        let short = test_token(
            "https://issuer/",
            "auth0|b",
            clock.now() + Duration::from_secs(60),
        );
        let (handle, expires) = store.create(&short, None, None).expect("created");
        assert_eq!(expires, short.expires_at);
        let long = test_token(
            "https://issuer/",
            "auth0|b",
            clock.now() + Duration::from_secs(9000),
        );
        let (_, extended) = store
            .update_token(handle.expose_str(), &long)
            .expect("updated");
        assert_eq!(
            extended,
            store.get(handle.expose_str()).expect("live").created_at + Duration::from_secs(3600)
        );
        let other = test_token(
            "https://issuer/",
            "auth0|mallory",
            clock.now() + Duration::from_secs(9000),
        );
        assert_eq!(
            store
                .update_token(handle.expose_str(), &other)
                .expect_err("refused"),
            SessionError::IdentityMismatch
        );
        let other_issuer = test_token(
            "https://other/",
            "auth0|b",
            clock.now() + Duration::from_secs(9000),
        );
        assert_eq!(
            store
                .update_token(handle.expose_str(), &other_issuer)
                .expect_err("refused"),
            SessionError::IdentityMismatch
        );
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(matches!(
            store.get(handle.expose_str()),
            Err(SessionError::Expired(_))
        ));
        assert!(
            store.is_empty(),
            "an expired session is dropped when looked up"
        );
    }

    #[tokio::test]
    async fn limits_refuse_new_sessions_after_pruning_expired_ones() {
        let (store, clock) = store(SessionsConfig {
            max_sessions: 3,
            max_per_identity: 2,
            ..SessionsConfig::default()
        });
        tokio::time::pause();
        let a = test_token(
            "https://issuer/",
            "auth0|a",
            clock.now() + Duration::from_secs(600),
        );
        let a_short = test_token(
            "https://issuer/",
            "auth0|a",
            clock.now() + Duration::from_secs(5),
        );
        store.create(&a_short, None, None).expect("1");
        store.create(&a, None, None).expect("2");
        let err = store.create(&a, None, None).expect_err("per identity");
        assert_eq!(err.code(), "TooManySessions");
        assert!(err.to_string().contains("sessions.max_per_identity"));
        tokio::time::advance(Duration::from_secs(6)).await;
        store
            .create(&a, None, None)
            .expect("the expired one was pruned");
        let b = test_token(
            "https://issuer/",
            "auth0|b",
            clock.now() + Duration::from_secs(600),
        );
        store.create(&b, None, None).expect("3");
        let err = store.create(&b, None, None).expect_err("global");
        assert!(err.to_string().contains("sessions.max_sessions"), "{err}");
        assert_eq!(err.status(), 429);
    }

    #[tokio::test]
    async fn refresh_tokens_are_refused_until_supported_and_revoke_wakes_watchers() {
        let (store, clock) = store(SessionsConfig::default());
        let token = test_token(
            "https://issuer/",
            "auth0|c",
            clock.now() + Duration::from_secs(600),
        );
        let refresh = SecretString::from("v1.refresh");
        let err = store
            .create(&token, None, Some(&refresh))
            .expect_err("unsupported");
        assert_eq!((err.code(), err.status()), ("RefreshTokenUnsupported", 400));
        let (handle, _) = store.create(&token, None, None).expect("created");
        let session = store.get(handle.expose_str()).expect("live");
        assert!(!session.revoked().is_cancelled());
        store.revoke(handle.expose_str()).expect("revoked");
        assert!(session.revoked().is_cancelled());
        assert_eq!(
            store.get(handle.expose_str()).expect_err("gone"),
            SessionError::Invalid
        );
        assert_eq!(
            store.revoke(handle.expose_str()).expect_err("gone"),
            SessionError::Invalid
        );
        assert_eq!(
            store.get("eyJhbGciOi.x.y").expect_err("not a handle"),
            SessionError::Invalid
        );
    }
}
