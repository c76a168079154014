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
//!   expired and ended sessions are dropped when looked up and whenever a limit is reached;
//! - a session created with a refresh token ([`SessionKind::RefreshToken`]) lives
//!   `sessions.max_lifetime` from creation and follows the tokens redeemed for it
//!   ([`SessionStore::follow`]), which must be its user's; an ended session
//!   ([`SessionStore::end`]) answers why it ended until it would have expired;
//! - revoking a session ([`SessionStore::revoke`]) wakes every stream watching it
//!   ([`Session::revoked`]).
//!
//! The store knows nothing of credentials: what a session's end means for its identity, and how
//! refresh-token sessions are kept alive, is the broker's ([`crate::broker`]).

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

use crate::clock::{self, SharedClock};
use crate::config::SessionsConfig;
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
        && value.strip_prefix(HANDLE_PREFIX).is_some_and(|rest| {
            rest.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
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
    /// A refresh token was offered to a broker that does not keep sessions alive (only when
    /// credbroker is embedded without [`SessionRefresh`]; the daemon always has it).
    #[error(
        "this credbroker does not keep sessions alive with refresh tokens; create the session \
         with the ID token alone and replace it with UpdateToken before it expires"
    )]
    RefreshTokenUnsupported,
    /// The `client_id` given (or the ID token's `aud`/`azp`) is not an accepted audience.
    #[error(
        "client_id {client_id:?} is not one of providers.{provider}.audiences ({accepted}); the \
         refresh token must belong to an accepted client (omit client_id to use the ID token's \
         azp or aud)"
    )]
    InvalidClientId {
        /// The client id asked for.
        client_id: String,
        /// The provider of the ID token.
        provider: String,
        /// Its accepted audiences.
        accepted: String,
    },
    /// The provider refused the session's refresh token (`invalid_grant`: revoked, expired,
    /// reused); the session ended.
    #[error(
        "the provider refused the session's refresh token (it was revoked, expired or reused); \
         sign in again and create a new session"
    )]
    ReloginRequired,
    /// The refresh token yielded an ID token for a different user than the session's.
    #[error(
        "the refresh token belongs to a different user (issuer and subject) than the ID token; \
         send the refresh token from the same login"
    )]
    RefreshTokenMismatch,
    /// The session's refresh token could not be redeemed for another reason (the client was
    /// refused, the provider returned no or an invalid ID token); the session ended.
    #[error("the session's refresh token could not be redeemed: {0}")]
    RefreshFailed(String),
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
            Self::InvalidClientId { .. } => "InvalidClientId",
            Self::ReloginRequired => "ReloginRequired",
            Self::RefreshTokenMismatch => "RefreshTokenMismatch",
            Self::RefreshFailed(_) => "SessionRefreshFailed",
        }
    }
}

/// How a session stays alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionKind {
    /// Until its ID token expires (callers replace it with `UpdateToken`).
    IdToken,
    /// credbroker redeems a refresh token for new ID tokens; the session lives
    /// `sessions.max_lifetime`.
    RefreshToken,
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
    /// How it stays alive.
    pub kind: SessionKind,
    state: Mutex<SessionState>,
    revoked: CancellationToken,
}

struct SessionState {
    token: Arc<VerifiedToken>,
    expires_at: SystemTime,
    /// Why it ended before expiring (a refresh-token failure); answered to its callers.
    ended: Option<SessionError>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("role", &self.role)
            .field("kind", &self.kind)
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
    /// Cancelled when the session is revoked, ends, or is found expired.
    pub fn revoked(&self) -> &CancellationToken {
        &self.revoked
    }
    /// Why it ended early (a refresh-token failure), if it did.
    pub fn ended(&self) -> Option<SessionError> {
        lock(&self.state).ended.clone()
    }
    /// Whether it can be used at `now`.
    fn live_at(&self, now: SystemTime) -> bool {
        let state = lock(&self.state);
        state.ended.is_none() && state.expires_at > now
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
    /// the caller once and never stored — and the session.
    pub fn create(
        &self,
        token: &Arc<VerifiedToken>,
        role: Option<&str>,
        kind: SessionKind,
    ) -> Result<(SecretString, Arc<Session>), SessionError> {
        let now = self.inner.clock.now();
        let config = &self.inner.config;
        let cap = now + config.max_lifetime;
        let expires_at = match kind {
            SessionKind::IdToken => token.expires_at.min(cap),
            SessionKind::RefreshToken => cap,
        };
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
            kind,
            state: Mutex::new(SessionState {
                token: token.clone(),
                expires_at,
                ended: None,
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
                    sessions.retain(|_, s| s.live_at(now));
                    pruned = true;
                }
            }
        }
        sessions.insert(session.digest, session.clone());
        Ok((handle, session))
    }

    /// The session a handle names, live, ended or expired.
    fn lookup(&self, handle: &str) -> Result<Arc<Session>, SessionError> {
        if !is_handle(handle) {
            return Err(SessionError::Invalid);
        }
        let hash = digest(handle);
        lock(&self.inner.sessions)
            .get(&hash)
            .filter(|s| bool::from(s.digest.ct_eq(&hash)))
            .cloned()
            .ok_or(SessionError::Invalid)
    }

    /// The live session a handle names. An ended session answers why it ended (until it would
    /// have expired); an expired one is dropped.
    pub fn get(&self, handle: &str) -> Result<Arc<Session>, SessionError> {
        let session = self.lookup(handle)?;
        let expires_at = session.expires_at();
        if expires_at <= self.inner.clock.now() {
            self.remove(&session);
            return Err(SessionError::Expired(expires_at));
        }
        if let Some(why) = session.ended() {
            return Err(why);
        }
        Ok(session)
    }

    /// Drops a session and wakes its watchers.
    pub fn remove(&self, session: &Session) {
        lock(&self.inner.sessions).remove(&session.digest);
        session.revoked.cancel();
    }

    /// Ends a session early with `why` (kept as a tombstone that answers `why` until the session
    /// would have expired) and wakes its watchers. Returns false when it had already ended.
    pub fn end(&self, session: &Session, why: SessionError) -> bool {
        let first = {
            let mut state = lock(&session.state);
            let first = state.ended.is_none();
            if first {
                state.ended = Some(why);
            }
            first
        };
        session.revoked.cancel();
        first
    }

    /// Gives a refresh-token session the newest redeemed token (same user; the session's expiry
    /// stays `sessions.max_lifetime` after creation).
    pub fn follow(&self, session: &Session, token: &Arc<VerifiedToken>) {
        if !session.same_user(token) {
            self.end(session, SessionError::RefreshTokenMismatch);
            return;
        }
        let mut state = lock(&session.state);
        if token.expires_at > state.token.expires_at {
            state.token = token.clone();
        }
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
            if session.kind == SessionKind::IdToken {
                state.expires_at = token.expires_at.min(cap);
            }
        }
        let expires_at = state.expires_at;
        drop(state);
        Ok((session, expires_at))
    }

    /// Ends a session (also one that ended early, which drops its tombstone). Returns it, so
    /// the caller can decide about the identity's cache entry.
    pub fn revoke(&self, handle: &str) -> Result<Arc<Session>, SessionError> {
        let session = self.lookup(handle)?;
        let expires_at = session.expires_at();
        self.remove(&session);
        if expires_at <= self.inner.clock.now() {
            return Err(SessionError::Expired(expires_at));
        }
        Ok(session)
    }

    /// How many live sessions `filter` accepts.
    pub fn count_live(&self, filter: impl Fn(&Session) -> bool) -> usize {
        let now = self.inner.clock.now();
        lock(&self.inner.sessions)
            .values()
            .filter(|s| s.live_at(now) && filter(s))
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
        let (h1, _) = store
            .create(&token, None, SessionKind::IdToken)
            .expect("created");
        let (h2, _) = store
            .create(&token, None, SessionKind::IdToken)
            .expect("created");
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
        let (handle, session) = store
            .create(&short, None, SessionKind::IdToken)
            .expect("created");
        assert_eq!(session.expires_at(), short.expires_at);
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
        store
            .create(&a_short, None, SessionKind::IdToken)
            .expect("1");
        store.create(&a, None, SessionKind::IdToken).expect("2");
        let err = store
            .create(&a, None, SessionKind::IdToken)
            .expect_err("per identity");
        assert_eq!(err.code(), "TooManySessions");
        assert!(err.to_string().contains("sessions.max_per_identity"));
        tokio::time::advance(Duration::from_secs(6)).await;
        store
            .create(&a, None, SessionKind::IdToken)
            .expect("the expired one was pruned");
        let b = test_token(
            "https://issuer/",
            "auth0|b",
            clock.now() + Duration::from_secs(600),
        );
        store.create(&b, None, SessionKind::IdToken).expect("3");
        let err = store
            .create(&b, None, SessionKind::IdToken)
            .expect_err("global");
        assert!(err.to_string().contains("sessions.max_sessions"), "{err}");
    }

    #[tokio::test]
    async fn revoke_wakes_watchers_and_forgets_the_handle() {
        let (store, clock) = store(SessionsConfig::default());
        let token = test_token(
            "https://issuer/",
            "auth0|c",
            clock.now() + Duration::from_secs(600),
        );
        let (handle, _) = store
            .create(&token, None, SessionKind::IdToken)
            .expect("created");
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

    #[tokio::test]
    async fn refresh_token_sessions_outlive_their_token_and_answer_why_they_ended() {
        let (store, clock) = store(SessionsConfig {
            max_lifetime: Duration::from_secs(3600),
            max_sessions: 2,
            ..SessionsConfig::default()
        });
        tokio::time::pause();
        let short = test_token(
            "https://issuer/",
            "auth0|d",
            clock.now() + Duration::from_secs(120),
        );
        let (handle, session) = store
            .create(&short, None, SessionKind::RefreshToken)
            .expect("created");
        assert_eq!(
            session.expires_at(),
            session.created_at + Duration::from_secs(3600),
            "the lifetime cap, not the ID token's exp"
        );
        // A redeemed token replaces the session's token; the expiry stays.
        let newer = test_token(
            "https://issuer/",
            "auth0|d",
            clock.now() + Duration::from_secs(240),
        );
        store.follow(&session, &newer);
        assert!(Arc::ptr_eq(&session.token(), &newer));
        assert_eq!(
            session.expires_at(),
            session.created_at + Duration::from_secs(3600)
        );
        tokio::time::advance(Duration::from_secs(600)).await;
        store
            .get(handle.expose_str())
            .expect("live past its ID tokens");

        // Another user's token ends it.
        let other = test_token(
            "https://issuer/",
            "auth0|mallory",
            clock.now() + Duration::from_secs(240),
        );
        store.follow(&session, &other);
        assert!(session.revoked().is_cancelled(), "watchers are woken");
        assert_eq!(
            store.get(handle.expose_str()).expect_err("ended"),
            SessionError::RefreshTokenMismatch
        );
        assert!(
            !store.end(&session, SessionError::ReloginRequired),
            "ends once"
        );
        assert_eq!(session.ended(), Some(SessionError::RefreshTokenMismatch));
        assert_eq!(
            store.count_live(|s| &*s.subject == "auth0|d"),
            0,
            "an ended session holds no identity"
        );
        // Ended sessions do not count towards the limits.
        let fresh = test_token(
            "https://issuer/",
            "auth0|d",
            clock.now() + Duration::from_secs(240),
        );
        store
            .create(&fresh, None, SessionKind::IdToken)
            .expect("one");
        store
            .create(&fresh, None, SessionKind::IdToken)
            .expect("the ended one was pruned");
        let e = SessionError::ReloginRequired;
        assert_eq!(e.code(), "ReloginRequired");
        let e = SessionError::RefreshTokenMismatch;
        assert_eq!(e.code(), "RefreshTokenMismatch");
    }
}
