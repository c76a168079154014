//! `credbroker probe`: resolve credentials the way an application would.
//!
//! Owns: one call through aws-config's default credentials chain (environment, profile, web
//! identity, container, IMDS), using only this process's environment, and a redacted report.
//!
//! Promises: the secret key and session token are never printed (only their lengths); the
//! access key id, expiration and provider name are. Useful to check an app's environment
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`,
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`) against a running credbroker.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials as _;

use crate::clock::format_aws_timestamp;

/// What a probe found (no secrets).
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// Length of the secret key.
    pub secret_len: usize,
    /// Length of the session token.
    pub token_len: usize,
    /// Expiration, if any.
    pub expiration: Option<String>,
    /// `AccountId`, when the source reported one.
    pub account_id: Option<String>,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  AccessKeyId:     {}", self.access_key_id)?;
        writeln!(
            f,
            "  SecretAccessKey: ** redacted ** ({} chars)",
            self.secret_len
        )?;
        writeln!(
            f,
            "  SessionToken:    ** redacted ** ({} chars)",
            self.token_len
        )?;
        writeln!(
            f,
            "  Expiration:      {}",
            self.expiration.as_deref().unwrap_or("(none)")
        )?;
        write!(
            f,
            "  AccountId:       {}",
            self.account_id.as_deref().unwrap_or("(none)")
        )
    }
}

/// Loads credentials through the default chain, within `timeout`.
pub async fn probe(timeout: Duration) -> Result<ProbeReport, String> {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(crate::http::sdk_client())
        .load()
        .await;
    let provider = sdk
        .credentials_provider()
        .ok_or_else(|| "the AWS SDK found no credentials provider".to_owned())?;
    let creds = tokio::time::timeout(timeout, provider.provide_credentials())
        .await
        .map_err(|_| format!("no credentials within {}s", timeout.as_secs()))?
        .map_err(|e| {
            format!(
                "the AWS SDK could not load credentials: {}",
                crate::http::error_chain(&e)
            )
        })?;
    Ok(ProbeReport {
        access_key_id: creds.access_key_id().to_owned(),
        secret_len: creds.secret_access_key().len(),
        token_len: creds.session_token().map_or(0, str::len),
        expiration: creds.expiry().map(format_aws_timestamp),
        account_id: creds.account_id().map(|a| a.as_str().to_owned()),
    })
}
