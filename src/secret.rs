//! Secrets as types.
//!
//! Owns: [`Secret`], the wrapper every ID token, refresh token, AWS secret key and session token
//! lives in while credbroker holds it.
//!
//! Promises:
//! - `Debug` and `Display` print `** redacted **`, never the value, so a secret that reaches a
//!   log line, a panic message or an error chain does not leak (unit-tested below);
//! - the value is zeroized when dropped;
//! - the only way to read it is [`Secret::expose`], which makes every use greppable;
//! - [`Secret::ct_eq`] compares in constant time (for caller-supplied handles and passwords).

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// The text printed instead of a secret value.
pub const REDACTED: &str = "** redacted **";

/// A value that must never be logged. See the module docs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

/// The common case: a secret string (tokens, keys).
pub type SecretString = Secret<String>;

impl<T: Zeroize> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Reads the value. Call this only where the value is used, never to log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl Secret<String> {
    /// Reads the value as `&str`.
    pub fn expose_str(&self) -> &str {
        &self.0
    }

    /// Compares with `other` in time that does not depend on where they differ.
    ///
    /// Lengths are not secret here (they are public properties of the token format), so a length
    /// mismatch returns early.
    pub fn ct_eq(&self, other: &str) -> bool {
        self.0.as_bytes().ct_eq(other.as_bytes()).into()
    }

    /// The length in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A byte buffer that is zeroized when the last reference to it is dropped.
///
/// Used as the owner of [`bytes::Bytes`] response bodies that contain credentials, so the
/// precomputed bodies served on the hot path do not linger in freed memory.
pub struct ZeroizingBytes(pub Vec<u8>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for ZeroizingBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for ZeroizingBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let secret = SecretString::from("eyJhbGciOiJSUzI1NiJ9.payload.sig");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&secret)), format!("Some({REDACTED})"));
        assert_eq!(secret.expose_str(), "eyJhbGciOiJSUzI1NiJ9.payload.sig");
    }

    #[test]
    fn redaction_survives_nesting_in_derived_debug() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: SecretString,
        }
        let text = format!(
            "{:?}",
            Holder {
                token: "abc-very-secret".into()
            }
        );
        assert!(!text.contains("abc-very-secret"), "{text}");
    }

    #[test]
    fn constant_time_eq_matches_plain_eq() {
        let secret = SecretString::from("handle-1");
        assert!(secret.ct_eq("handle-1"));
        assert!(!secret.ct_eq("handle-2"));
        assert!(!secret.ct_eq("handle-10"));
        assert!(!secret.ct_eq(""));
    }

    #[test]
    fn zeroizing_bytes_debug_is_redacted() {
        let bytes = ZeroizingBytes(b"SecretAccessKey".to_vec());
        assert_eq!(format!("{bytes:?}"), REDACTED);
    }
}
