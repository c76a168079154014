//! The token-file source: an ID token in a file that something else keeps fresh.
//!
//! Owns: reading the file and deciding when to read it again.
//!
//! Promises:
//! - the file is read every `poll_interval` (portable: no inotify); the driver validates and
//!   publishes a token only when the contents changed, so an unchanged file costs one read;
//! - surrounding whitespace (a trailing newline from `echo`) is ignored;
//! - a missing or empty file is a transient problem (the writer may not have run yet), retried
//!   at the poll interval; the token itself is never logged.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::{IdentitySource, SourceError, SourceErrorKind};
use crate::oidc::Provider;
use crate::secret::SecretString;

/// Reads an ID token from a file.
#[derive(Debug, Clone)]
pub struct TokenFileSource {
    path: PathBuf,
    poll_interval: Duration,
}

impl TokenFileSource {
    /// Watches `path`, checking every `poll_interval`.
    pub fn new(path: impl Into<PathBuf>, poll_interval: Duration) -> Self {
        Self {
            path: path.into(),
            poll_interval,
        }
    }
}

impl IdentitySource for TokenFileSource {
    fn kind(&self) -> &'static str {
        "id_token_file"
    }

    fn fetch<'a>(
        &'a self,
        _provider: &'a Provider,
    ) -> BoxFuture<'a, Result<SecretString, SourceError>> {
        Box::pin(async move {
            match tokio::fs::read_to_string(&self.path).await {
                Ok(text) if !text.trim().is_empty() => Ok(SecretString::from(text.trim())),
                Ok(_) => Err(SourceError::new(
                    SourceErrorKind::Transient,
                    format!("the token file {} is empty", self.path.display()),
                )),
                Err(e) => Err(SourceError::new(
                    SourceErrorKind::Transient,
                    format!("cannot read the token file {}: {e}", self.path.display()),
                )),
            }
        })
    }

    fn next_fetch(&self, _now: SystemTime, _expires_at: SystemTime) -> Duration {
        self.poll_interval
    }

    fn min_interval(&self) -> Duration {
        self.poll_interval
    }

    fn max_backoff(&self) -> Duration {
        self.poll_interval
    }

    fn retry_after_terminal(&self) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(self.poll_interval))
    }
}
