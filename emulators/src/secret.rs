//! Secrets the emulators issue and check.
//!
//! Owns: [`SecretString`], the wrapper the emulated AWS secret keys, session tokens and token
//! endpoint bodies live in.
//!
//! Promises: `Debug` and `Display` print `** redacted **`, never the value (unit-tested); the
//! only way to read it is [`SecretString::expose_str`]; [`SecretString::ct_eq`] compares in
//! constant time. Unlike credbroker's `secret::Secret` it does not zeroize on drop: every value
//! here is a fake minted by an emulator.

use std::fmt;

use subtle::ConstantTimeEq as _;

/// The text printed instead of a secret value (the same as credbroker's).
pub const REDACTED: &str = "** redacted **";

/// A string that must never be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// Reads the value. Call this only where the value is used, never to log it.
    pub fn expose_str(&self) -> &str {
        &self.0
    }

    /// Compares with `other` in time that does not depend on where they differ (lengths are
    /// not secret).
    pub fn ct_eq(&self, other: &str) -> bool {
        self.0.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = SecretString::from("wJalrXUtnFEMI/K7MDENG");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&s)), format!("Some({REDACTED})"));
        assert_eq!(s.expose_str(), "wJalrXUtnFEMI/K7MDENG");
        assert!(s.ct_eq("wJalrXUtnFEMI/K7MDENG"));
        assert!(!s.ct_eq("wJalrXUtnFEMI/K7MDENH"));
        assert!(!s.ct_eq("wJalrXUtnFEMI"));
    }
}
