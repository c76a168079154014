//! The audit trail: who got credentials, sessions created, revoked and ended.
//!
//! Owns: [`subject_hash`], the label audit lines carry instead of the subject.

use sha2::{Digest, Sha256};

/// A stable, non-reversible label for a subject: the first 16 hex digits of
/// SHA-256(issuer NUL subject). Lets operators correlate audit lines without logging the
/// subject itself.
pub fn subject_hash(issuer: &str, subject: &str) -> String {
    let mut h = Sha256::new();
    h.update(issuer.as_bytes());
    h.update([0]);
    h.update(subject.as_bytes());
    h.finalize()[..8]
        .iter()
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
