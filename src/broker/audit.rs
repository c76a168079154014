//! The audit trail (log target `credbroker::audit`): credential sets handed out, sessions
//! created, revoked and ended.
//!
//! Owns: every audit line and [`subject_hash`], the label they carry instead of the subject.
//!
//! Promises: audit lines name the surface, provider, a hash of the subject, the Cognito identity
//! id, the access key id and expirations; never a token, secret key, session token or handle.

use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::clock;
use crate::identity::Issued;
use crate::metrics::Surface;
use crate::oidc::VerifiedToken;
use crate::sessions::Session;

/// A credential set was handed out on `surface` for the first time.
pub(super) fn issued(surface: Surface, token: &VerifiedToken, issued: &Issued) {
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

/// A session was created (its handle is on its way to the caller).
pub(super) fn session_created(
    token: &VerifiedToken,
    issued: &Issued,
    refresh_token: bool,
    expires_at: SystemTime,
) {
    tracing::info!(
        target: "credbroker::audit",
        provider = %token.provider.config.name,
        subject_hash = %subject_hash(&token.provider.config.issuer, &token.subject),
        identity_id = %issued.identity_id(),
        refresh_token,
        expires_at = %clock::format_aws_timestamp(expires_at),
        "session created"
    );
}

/// A session was revoked (logout).
pub(super) fn session_revoked(session: &Session) {
    tracing::info!(
        target: "credbroker::audit",
        provider = %session.token().provider.config.name,
        subject_hash = %subject_hash(&session.issuer, &session.subject),
        "session revoked"
    );
}

/// A refresh-token session ended early with `code`.
pub(super) fn session_ended(session: &Session, code: &str) {
    tracing::warn!(
        target: "credbroker::audit",
        subject_hash = %subject_hash(&session.issuer, &session.subject),
        code,
        "session ended: its refresh token can no longer be redeemed"
    );
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

    #[test]
    fn subject_hash_is_stable_and_does_not_contain_the_subject() {
        let a = subject_hash("https://x/", "auth0|alice");
        assert_eq!(a, subject_hash("https://x/", "auth0|alice"));
        assert_ne!(a, subject_hash("https://y/", "auth0|alice"));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("alice"));
    }
}
