//! ID token validation.
//!
//! Owns: trusted providers' discovery documents and key sets, and the decision whether a raw
//! ID token is valid ([`Validator::validate`]).
//!
//! Promises:
//! - a token is accepted only if: it is at most `tokens.max_token_bytes` long; it is a compact
//!   JWS (three segments); its `alg` is one the provider allows (never `none` or HS*, which are
//!   refused with a message that names the fix); its `iss` equals a configured issuer byte for
//!   byte; it is an ID token (not a User Pool access token, `token_use: access`, nor an RFC 9068
//!   `typ: at+jwt` one); it has at least `tokens.min_token_validity` left before `exp` (no
//!   leeway: Cognito refuses an expired token, so none is ever sent to it); `nbf` and `iat`
//!   hold within `tokens.leeway` (clock skew); `aud` contains an accepted client id, and `azp`,
//!   when present, is one; `sub` is present; its header names a `kid` (Cognito and IAM pick the
//!   verification key by `kid`, so a token without one is refused here, not by Cognito); and
//!   its signature verifies with the provider's published key for that `kid`;
//! - each rejection has its own [`TokenError`] variant, code and actionable message;
//! - a token seen before is answered from a cache until it has less than
//!   `tokens.min_token_validity` left, so the hot path never repeats signature verification and
//!   the cache never serves a token the checks above would refuse;
//! - an unknown `kid` triggers at most one JWKS refetch per `tokens.jwks_refetch_interval` per
//!   provider (key rotation works; garbage tokens cannot make credbroker hammer the issuer);
//!   keys are also refreshed every `tokens.jwks_refresh_interval`. `UnknownKeyId` (401) means a
//!   JWKS fetched successfully within that interval lacks the key; when the refetch failed, or
//!   was rate-limited after a failed fetch, the answer is `ProviderUnavailable` (503, with a
//!   retry delay): a rotated-in key during an issuer outage is not a bad token;
//! - a provider whose keys could not be loaded yet answers `ProviderUnavailable` (503), retried
//!   in the background; it never blocks other providers;
//! - a failed load names the document that failed (discovery document or JWKS), its URL and
//!   what went wrong (HTTP status, transport error, invalid content, issuer mismatch):
//!   [`LoadError`]. The discovery document comes from `providers.<name>.discovery_url` when set,
//!   else `<issuer>/.well-known/openid-configuration`; either way it must name the configured
//!   issuer byte for byte, and its `jwks_uri` must be https (or http on loopback).
//!
//! openidconnect parses the discovery document and the JWKS and does the signature
//! cryptography; the two documents are fetched here, one after the other, so a failure names
//! the one that failed. Claims are read here, minimally: providers send loosely typed claims (Auth0's string `updated_at`) that a
//! strict parser would reject although credbroker never needs them.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use openidconnect::core::{CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata};
use openidconnect::{JsonWebKey, SignatureVerificationError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::clock::{self, SharedClock};
use crate::config::{Algorithm, ProviderConfig, TokenConfig, algorithm_refusal};
use crate::http::{self as http_client, HttpsClient};
use crate::metrics::Metrics;
use crate::secret::SecretString;

/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// `Retry-After` while a provider's keys were never loaded (the background retry backs off
/// from 1 s up to a minute).
const NOT_LOADED_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A validated ID token.
pub struct VerifiedToken {
    /// The provider that issued it.
    pub provider: Arc<Provider>,
    /// The `sub` claim.
    pub subject: Arc<str>,
    /// The `exp` claim.
    pub expires_at: SystemTime,
    /// The token itself, for Cognito's `Logins` map.
    pub raw: SecretString,
    /// SHA-256 of the raw token (never logged; used as a cache key).
    pub digest: [u8; 32],
    /// The OAuth client the token was issued to: `azp` when present, else the first `aud` that
    /// is one of the provider's accepted audiences (the client a refresh token belongs to).
    pub client_id: Arc<str>,
    /// The provider's key-withdrawal generation when this token was verified.
    generation: u64,
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("provider", &self.provider.config.name)
            .field("subject", &self.subject)
            .field("expires_at", &clock::format_aws_timestamp(self.expires_at))
            .field("raw", &self.raw)
            .finish()
    }
}

/// Why a token was refused. Each variant has a stable [`TokenError::code`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was sent.
    #[error(
        "no ID token: send it as the Authorization header (AWS SDKs do this when \
         AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE names a file holding the token)"
    )]
    Missing,
    /// Longer than `tokens.max_token_bytes`.
    #[error("the token is {len} bytes, more than the {max} allowed (tokens.max_token_bytes)")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a parseable JWT.
    #[error("not a valid JWT: {0}")]
    Malformed(String),
    /// `alg: none`.
    #[error("the token is unsigned (alg \"none\"); only signed ID tokens are accepted")]
    Unsigned,
    /// HS256/384/512.
    #[error("the token is signed with {alg}. {}", symmetric_hint())]
    Symmetric {
        /// The `alg` header.
        alg: String,
    },
    /// An asymmetric algorithm this provider is not configured to accept.
    #[error(
        "the token is signed with {alg}, which providers.{provider}.algorithms does not allow \
         (allowed: {allowed})"
    )]
    AlgorithmNotAllowed {
        /// The `alg` header.
        alg: String,
        /// Provider name.
        provider: String,
        /// Allowed algorithms.
        allowed: String,
    },
    /// No provider has this `iss`.
    #[error("no provider is configured for issuer {iss:?} (configured: {configured})")]
    UnknownIssuer {
        /// The token's `iss`.
        iss: String,
        /// Configured issuers.
        configured: String,
    },
    /// `iss` matches a configured issuer except for a trailing slash.
    #[error(
        "the token's iss {iss:?} differs from providers.{provider}.issuer {configured:?} only by \
         a trailing slash; issuers are compared byte for byte (Auth0's end with '/'), so set \
         the issuer to exactly the token's iss"
    )]
    IssuerMismatch {
        /// The token's `iss`.
        iss: String,
        /// The provider it nearly matched.
        provider: String,
        /// That provider's issuer.
        configured: String,
    },
    /// A required claim is absent or has the wrong type.
    #[error("the token's {claim} claim is {problem}")]
    MissingClaim {
        /// The claim.
        claim: &'static str,
        /// "missing" or the type problem.
        problem: String,
    },
    /// `exp` has passed.
    #[error(
        "the token expired at {} ({} s ago); sign in again or refresh it and rewrite the token \
         file",
        clock::format_aws_timestamp(*.expired_at),
        .ago.as_secs()
    )]
    Expired {
        /// The `exp` claim.
        expired_at: SystemTime,
        /// How long ago.
        ago: Duration,
    },
    /// Less than `tokens.min_token_validity` is left before `exp` (code `TokenExpired`).
    #[error(
        "the token expires at {} (in {} s), and credbroker needs at least {} s left \
         (tokens.min_token_validity) so that Cognito does not refuse it mid-exchange; refresh it \
         and rewrite the token file, or sign in again",
        clock::format_aws_timestamp(*.expires_at),
        .left.as_secs(),
        .min.as_secs()
    )]
    ExpiresSoon {
        /// The `exp` claim.
        expires_at: SystemTime,
        /// How long is left.
        left: Duration,
        /// `tokens.min_token_validity`.
        min: Duration,
    },
    /// Not an ID token: a Cognito User Pool access token or an RFC 9068 access token.
    #[error(
        "this is an access token ({what}), not an ID token; Cognito identity pools accept only \
         ID tokens: send the ID token instead (a User Pool's AuthenticationResult.IdToken, the \
         id_token of an OAuth token response)"
    )]
    NotAnIdToken {
        /// What gave it away: `token_use "access"` or `typ "at+jwt"`.
        what: String,
    },
    /// The header names no `kid`.
    #[error(
        "the token's header has no \"kid\"; Cognito and IAM pick the verification key by kid \
         and would refuse it, so credbroker does too. Configure provider {provider} to put the \
         key id in its ID tokens (Auth0, Okta, Entra ID and Cognito User Pools always do)"
    )]
    MissingKeyId {
        /// Provider name.
        provider: String,
    },
    /// `nbf` or `iat` is in the future beyond the leeway.
    #[error(
        "the token is not valid before {} ({claim}); check the clocks of this host and the \
         issuer",
        clock::format_aws_timestamp(*.valid_from)
    )]
    NotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
        /// When it becomes valid.
        valid_from: SystemTime,
    },
    /// Neither `aud` nor `azp` names an accepted client id.
    #[error(
        "the token was issued to {audience} which is not in providers.{provider}.audiences \
         ({accepted})"
    )]
    AudienceMismatch {
        /// What the token names.
        audience: String,
        /// Provider name.
        provider: String,
        /// Accepted audiences.
        accepted: String,
    },
    /// No published key has the token's `kid`.
    #[error(
        "no key with kid {kid:?} in the JWKS of provider {provider}; if the issuer rotated its \
         keys, credbroker refetches them at most every {} s",
        .refetch_interval.as_secs()
    )]
    UnknownKeyId {
        /// The `kid` header.
        kid: String,
        /// Provider name.
        provider: String,
        /// The refetch rate limit.
        refetch_interval: Duration,
    },
    /// The signature does not verify.
    #[error("the token's signature does not verify with provider {provider}'s key: {detail}")]
    InvalidSignature {
        /// Provider name.
        provider: String,
        /// Why.
        detail: String,
    },
    /// The provider's keys could not be loaded, or a refetch needed to judge the token failed.
    #[error("provider {provider} is unavailable: {reason}")]
    ProviderUnavailable {
        /// Provider name.
        provider: String,
        /// What failed (names the document).
        reason: String,
        /// When a retry can succeed.
        retry_after: Duration,
    },
}

fn symmetric_hint() -> &'static str {
    "Shared-secret (HS*) tokens can only be verified by the issuer itself, and Cognito refuses \
     them. In Auth0, switch the application's JWT signature algorithm to RS256 (Application → \
     Settings → Advanced → OAuth), then sign in again"
}

impl TokenError {
    /// The stable error code (the `Code` field of HTTP error bodies).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "MissingToken",
            Self::TooLarge { .. } => "TokenTooLarge",
            Self::Malformed(_) => "MalformedToken",
            Self::Unsigned => "UnsignedToken",
            Self::Symmetric { .. } => "SymmetricAlgorithm",
            Self::AlgorithmNotAllowed { .. } => "AlgorithmNotAllowed",
            Self::UnknownIssuer { .. } => "UnknownIssuer",
            Self::IssuerMismatch { .. } => "IssuerMismatch",
            Self::MissingClaim { .. } => "MissingClaim",
            Self::Expired { .. } | Self::ExpiresSoon { .. } => "TokenExpired",
            Self::NotAnIdToken { .. } => "NotAnIdToken",
            Self::MissingKeyId { .. } => "MissingKeyId",
            Self::NotYetValid { .. } => "TokenNotYetValid",
            Self::AudienceMismatch { .. } => "AudienceMismatch",
            Self::UnknownKeyId { .. } => "UnknownKeyId",
            Self::InvalidSignature { .. } => "InvalidSignature",
            Self::ProviderUnavailable { .. } => "ProviderUnavailable",
        }
    }

    /// The metric label for this outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::TooLarge { .. } => "too_large",
            Self::Malformed(_) => "malformed",
            Self::Unsigned => "unsigned",
            Self::Symmetric { .. } => "symmetric_algorithm",
            Self::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Self::UnknownIssuer { .. } => "unknown_issuer",
            Self::IssuerMismatch { .. } => "issuer_mismatch",
            Self::MissingClaim { .. } => "missing_claim",
            Self::Expired { .. } => "expired",
            Self::ExpiresSoon { .. } => "expires_soon",
            Self::NotAnIdToken { .. } => "not_an_id_token",
            Self::MissingKeyId { .. } => "missing_kid",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::AudienceMismatch { .. } => "audience_mismatch",
            Self::UnknownKeyId { .. } => "unknown_kid",
            Self::InvalidSignature { .. } => "invalid_signature",
            Self::ProviderUnavailable { .. } => "provider_unavailable",
        }
    }

    /// When retrying can help: only for [`TokenError::ProviderUnavailable`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::ProviderUnavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Which of a provider's two documents failed to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// The OpenID Connect discovery document (`/.well-known/openid-configuration`).
    Discovery,
    /// The JSON Web Key Set its `jwks_uri` names.
    Jwks,
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Discovery => "discovery document",
            Self::Jwks => "JWKS",
        })
    }
}

/// What went wrong with a document.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadProblem {
    /// It answered with this HTTP status instead of 200.
    Status(u16),
    /// No answer: connection refused, DNS, TLS, timeout (the text says which).
    Transport(String),
    /// Larger than credbroker accepts (1 MiB).
    TooLarge,
    /// Not the expected JSON (content type, syntax or fields).
    Invalid(String),
    /// The discovery document names another issuer than the configured one.
    IssuerMismatch {
        /// The `issuer` it names.
        found: String,
    },
    /// The discovery document's `jwks_uri` is plain http on a non-loopback host, or no URL.
    InsecureJwksUri(String),
}

/// Why a provider's keys could not be loaded: the document, its URL and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct LoadError {
    /// The provider (`[providers.<name>]`).
    pub provider: String,
    /// Which document failed.
    pub document: Document,
    /// Its URL.
    pub url: String,
    /// What went wrong.
    pub problem: LoadProblem,
    /// The configured issuer (for the mismatch message).
    issuer: String,
    /// The JWKS failed right after its discovery document loaded (the same attempt).
    after_discovery: bool,
}

impl LoadError {
    fn describe(&self) -> String {
        let what = format!("the {} at {}", self.document, self.url);
        let text = match &self.problem {
            LoadProblem::Status(code) => {
                let reason = http::StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                format!("{what} answered HTTP {code} {reason}")
                    .trim_end()
                    .to_owned()
            }
            LoadProblem::Transport(detail) => format!("{what} could not be fetched: {detail}"),
            LoadProblem::TooLarge => {
                format!("{what} is larger than the {MAX_DOCUMENT_BYTES} bytes accepted")
            }
            LoadProblem::Invalid(detail) => {
                format!("{what} is not a valid {}: {detail}", { self.document })
            }
            LoadProblem::IssuerMismatch { found } => format!(
                "{what} names the issuer {found:?}, but providers.{}.issuer is {:?}; they must be \
                 equal byte for byte (Auth0's issuer ends with '/', a Cognito User Pool's does \
                 not): set the issuer to exactly the one the document names",
                self.provider, self.issuer
            ),
            LoadProblem::InsecureJwksUri(uri) => format!(
                "{what} names the jwks_uri {uri:?}, which is not https (plain http is accepted \
                 only on loopback), so its keys could be forged on the way"
            ),
        };
        if self.after_discovery {
            format!("{text} (the discovery document loaded)")
        } else {
            text
        }
    }
}

/// A trusted provider and its current keys.
pub struct Provider {
    /// Its configuration.
    pub config: ProviderConfig,
    /// `config.issuer`, shared by every identity key of this provider, so building a key on the
    /// hot path copies a pointer instead of allocating.
    issuer: Arc<str>,
    keys: ArcSwapOption<KeySet>,
    http: HttpsClient,
    timeout: Duration,
    refetch_interval: Duration,
    /// Serializes fetches (single-flight).
    fetch_lock: tokio::sync::Mutex<()>,
    /// When the last fetch started (tokio time, so tests can pause it).
    last_fetch: Mutex<Option<tokio::time::Instant>>,
    last_error: Mutex<Option<LoadError>>,
    /// Incremented whenever a refetch withdraws a key id: verifications made before no longer
    /// count (a withdrawn key may have been compromised).
    withdrawals: AtomicU64,
    metrics: Metrics,
}

struct KeySet {
    jwks: CoreJsonWebKeySet,
    kids: BTreeSet<String>,
    jwks_uri: openidconnect::JsonWebKeySetUrl,
    /// The discovery document's `token_endpoint` (refresh-token grants).
    token_endpoint: Option<String>,
    /// The discovery document's `id_token_signing_alg_values_supported`, as JOSE names.
    signing_algs: Vec<String>,
}

/// The outcome of asking for a refetch after an unknown `kid`.
enum Refetch {
    /// The JWKS was fetched now (by this task or one it waited for): the keys held are fresh.
    Fetched,
    /// The refetch was made and failed.
    Failed(LoadError),
    /// Rate-limited: the last fetch started less than `refetch_interval` ago.
    Suppressed {
        /// That fetch's error, if it failed.
        last_failed: Option<LoadError>,
        /// When the next refetch is allowed.
        retry_in: Duration,
    },
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("issuer", &self.config.issuer)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Provider {
    fn new(
        config: ProviderConfig,
        tokens: &TokenConfig,
        http: HttpsClient,
        metrics: Metrics,
    ) -> Self {
        Self {
            issuer: config.issuer.as_str().into(),
            config,
            keys: ArcSwapOption::empty(),
            http,
            timeout: tokens.oidc_timeout,
            refetch_interval: tokens.jwks_refetch_interval,
            fetch_lock: tokio::sync::Mutex::new(()),
            last_fetch: Mutex::new(None),
            last_error: Mutex::new(None),
            withdrawals: AtomicU64::new(0),
            metrics,
        }
    }

    /// The issuer (`config.issuer`) as a shared string.
    pub fn issuer(&self) -> &Arc<str> {
        &self.issuer
    }

    /// Whether the provider's keys have been loaded at least once.
    pub fn is_ready(&self) -> bool {
        self.keys.load().is_some()
    }

    /// The discovery document's `token_endpoint`, once discovery succeeded.
    pub fn token_endpoint(&self) -> Option<String> {
        self.keys
            .load()
            .as_ref()
            .and_then(|k| k.token_endpoint.clone())
    }

    /// The last load error, if the last load failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_load_error().map(|e| e.to_string())
    }

    /// The last load error as a value (which document, which URL, what), if the last load
    /// failed.
    pub fn last_load_error(&self) -> Option<LoadError> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `kid`s of the keys currently held (empty before the first load).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .load()
            .as_ref()
            .map(|k| k.kids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The discovery document's `id_token_signing_alg_values_supported` (e.g. `["RS256"]`),
    /// once discovery succeeded.
    pub fn signing_algs(&self) -> Vec<String> {
        self.keys
            .load()
            .as_ref()
            .map(|k| k.signing_algs.clone())
            .unwrap_or_default()
    }

    /// The discovery document's `jwks_uri`, once discovery succeeded.
    pub fn jwks_uri(&self) -> Option<String> {
        self.keys
            .load()
            .as_ref()
            .map(|k| k.jwks_uri.as_str().to_owned())
    }

    /// Where the discovery document is fetched ([`ProviderConfig::discovery_url`]).
    pub fn discovery_url(&self) -> String {
        self.config.discovery_url()
    }

    /// Loads (or reloads) discovery and keys now. Once discovery succeeded, later loads fetch
    /// only the JWKS. The error names the document that failed.
    pub async fn load(&self) -> Result<(), LoadError> {
        let _guard = self.fetch_lock.lock().await;
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now());
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<(), LoadError> {
        let result = self.fetch_keys().await;
        let name = self.config.name.as_str();
        match result {
            Ok(new) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[name, "ok"])
                    .inc();
                let old = self.keys.load_full();
                if let Some(old) = &old
                    && old.kids != new.kids
                {
                    self.metrics.jwks_rotations.with_label_values(&[name]).inc();
                    if old.kids.difference(&new.kids).next().is_some() {
                        self.withdrawals.fetch_add(1, Ordering::Release);
                    }
                    tracing::info!(
                        provider = name,
                        kids = ?new.kids,
                        previous = ?old.kids,
                        "provider key set changed"
                    );
                }
                if old.is_none() {
                    tracing::info!(provider = name, kids = ?new.kids, "provider keys loaded");
                }
                self.keys.store(Some(Arc::new(new)));
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[name, "error"])
                    .inc();
                tracing::warn!(provider = name, error = %e, "loading provider keys failed");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                Err(e)
            }
        }
    }

    fn load_error(&self, document: Document, url: &str, problem: LoadProblem) -> LoadError {
        LoadError {
            provider: self.config.name.clone(),
            document,
            url: url.to_owned(),
            problem,
            issuer: self.config.issuer.clone(),
            after_discovery: false,
        }
    }

    /// GETs one document: its body, or what went wrong with it.
    async fn get_document(&self, document: Document, url: &str) -> Result<Vec<u8>, LoadError> {
        let fail = |problem| self.load_error(document, url, problem);
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| fail(LoadProblem::Transport(format!("invalid URL: {e}"))))?;
        let response = http_client::fetch(&self.http, request, self.timeout, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|e| {
                fail(match e {
                    http_client::FetchError::TooLarge(_) => LoadProblem::TooLarge,
                    http_client::FetchError::Timeout(t) => {
                        LoadProblem::Transport(format!("no answer within {} ms", t.as_millis()))
                    }
                    other => LoadProblem::Transport(other.to_string()),
                })
            })?;
        if response.status() != http::StatusCode::OK {
            return Err(fail(LoadProblem::Status(response.status().as_u16())));
        }
        let accepted: &[&str] = match document {
            Document::Discovery => &["application/json"],
            Document::Jwks => &["application/json", "application/jwk-set+json"],
        };
        if let Some(content_type) = response.headers().get(http::header::CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            if !accepted.iter().any(|a| essence.eq_ignore_ascii_case(a)) {
                return Err(fail(LoadProblem::Invalid(format!(
                    "its Content-Type is {content_type:?}, not application/json"
                ))));
            }
        }
        Ok(response.into_body())
    }

    async fn fetch_keys(&self) -> Result<KeySet, LoadError> {
        let known = self.keys.load().as_ref().map(|k| {
            (
                k.jwks_uri.clone(),
                k.token_endpoint.clone(),
                k.signing_algs.clone(),
            )
        });
        let first_load = known.is_none();
        let (jwks_uri, token_endpoint, signing_algs) = match known {
            Some(known) => known,
            None => {
                let url = self.discovery_url();
                let body = self.get_document(Document::Discovery, &url).await?;
                let metadata: CoreProviderMetadata =
                    serde_json::from_slice(&body).map_err(|e| {
                        self.load_error(
                            Document::Discovery,
                            &url,
                            LoadProblem::Invalid(e.to_string()),
                        )
                    })?;
                if metadata.issuer().as_str() != self.config.issuer {
                    return Err(self.load_error(
                        Document::Discovery,
                        &url,
                        LoadProblem::IssuerMismatch {
                            found: metadata.issuer().as_str().to_owned(),
                        },
                    ));
                }
                let jwks_uri = metadata.jwks_uri().clone();
                if crate::config::check_http_url(jwks_uri.as_str(), "jwks_uri").is_err() {
                    return Err(self.load_error(
                        Document::Discovery,
                        &url,
                        LoadProblem::InsecureJwksUri(jwks_uri.as_str().to_owned()),
                    ));
                }
                let signing_algs = metadata
                    .id_token_signing_alg_values_supported()
                    .iter()
                    .filter_map(|a| match serde_json::to_value(a) {
                        Ok(Value::String(name)) => Some(name),
                        _ => None,
                    })
                    .collect();
                (
                    jwks_uri,
                    metadata.token_endpoint().map(|u| u.as_str().to_owned()),
                    signing_algs,
                )
            }
        };
        let body = self
            .get_document(Document::Jwks, jwks_uri.as_str())
            .await
            .map_err(|e| LoadError {
                after_discovery: first_load,
                ..e
            })?;
        let jwks: CoreJsonWebKeySet = serde_json::from_slice(&body).map_err(|e| LoadError {
            after_discovery: first_load,
            ..self.load_error(
                Document::Jwks,
                jwks_uri.as_str(),
                LoadProblem::Invalid(e.to_string()),
            )
        })?;
        let kids = jwks
            .keys()
            .iter()
            .filter_map(|k| k.key_id().map(|id| id.as_str().to_owned()))
            .collect();
        Ok(KeySet {
            jwks,
            kids,
            jwks_uri,
            token_endpoint,
            signing_algs,
        })
    }

    /// Refetches keys after an unknown `kid`, at most once per `refetch_interval`.
    async fn refetch_for_unknown_kid(&self, kid: &str) -> Refetch {
        let _guard = self.fetch_lock.lock().await;
        // Another task may have refetched while we waited: if the kid is known now, done.
        if self
            .keys
            .load()
            .as_ref()
            .is_some_and(|k| k.kids.contains(kid))
        {
            return Refetch::Fetched;
        }
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            if let Some(at) = *last
                && now.duration_since(at) < self.refetch_interval
            {
                self.metrics
                    .jwks_refetch_suppressed
                    .with_label_values(&[self.config.name.as_str()])
                    .inc();
                let retry_in = seconds_up(self.refetch_interval - now.duration_since(at));
                return Refetch::Suppressed {
                    last_failed: self.last_load_error(),
                    retry_in,
                };
            }
            *last = Some(now);
        }
        tracing::debug!(provider = %self.config.name, kid, "unknown kid; refetching JWKS");
        match self.fetch_locked().await {
            Ok(()) => Refetch::Fetched,
            Err(e) => Refetch::Failed(e),
        }
    }

    fn algorithms_text(&self) -> String {
        self.config
            .algorithms
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Validates ID tokens against the configured providers.
pub struct Validator {
    providers: Vec<Arc<Provider>>,
    by_issuer: HashMap<String, Arc<Provider>>,
    /// Verified tokens by a keyed 64-bit hash of the raw token. A hit counts only when the
    /// stored token is byte-equal to the presented one, so a collision is a miss (and a
    /// re-verification), never a wrong answer. Cheaper per request than SHA-256: the hash runs
    /// over the whole token on every cached request.
    verified: moka::sync::Cache<u64, Arc<VerifiedToken>>,
    /// Seeded at random per process, so nobody can aim collisions at someone else's entry.
    lookup: foldhash::quality::RandomState,
    config: TokenConfig,
    clock: SharedClock,
    metrics: Metrics,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("providers", &self.providers)
            .finish()
    }
}

/// A verified token leaves the cache when it has less than `min_token_validity` left, the
/// point from which [`Validator::validate`] refuses it.
struct TokenExpiry {
    clock: SharedClock,
    min_token_validity: Duration,
}

impl moka::Expiry<u64, Arc<VerifiedToken>> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &u64,
        value: &Arc<VerifiedToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            clock::saturating_sub(value.expires_at, self.clock.now())
                .saturating_sub(self.min_token_validity),
        )
    }
}

/// The parts of a compact JWS this module reads.
struct Parsed<'a> {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    claims: serde_json::Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn parse(raw: &str) -> Result<Parsed<'_>, TokenError> {
    let segments: Vec<&str> = raw.split('.').collect();
    if segments.len() == 5 {
        return Err(TokenError::Malformed(
            "it is an encrypted JWT (JWE); configure the provider to sign ID tokens without \
             encrypting them"
                .to_owned(),
        ));
    }
    let [header_b64, claims_b64, signature_b64] = segments.as_slice() else {
        return Err(TokenError::Malformed(
            "expected three base64url segments separated by '.' (header.payload.signature)"
                .to_owned(),
        ));
    };
    let decode_json =
        |part: &str, what: &str| -> Result<serde_json::Map<String, Value>, TokenError> {
            let bytes = B64
                .decode(part)
                .map_err(|_| TokenError::Malformed(format!("the {what} is not base64url")))?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(TokenError::Malformed(format!(
                    "the {what} is not a JSON object"
                ))),
            }
        };
    let header = decode_json(header_b64, "header")?;
    let claims = decode_json(claims_b64, "payload")?;
    let signature = B64
        .decode(signature_b64)
        .map_err(|_| TokenError::Malformed("the signature is not base64url".to_owned()))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => {
            return Err(TokenError::Malformed(
                "the header has no \"alg\"".to_owned(),
            ));
        }
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed("\"kid\" is not a string".to_owned())),
    };
    let typ = match header.get("typ") {
        Some(Value::String(t)) => Some(t.clone()),
        _ => None,
    };
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "critical header parameters (\"crit\") are not supported".to_owned(),
        ));
    }
    // header '.' payload: everything before the last '.' (there are exactly two).
    let signing_input = raw.rsplit_once('.').map_or(raw, |(input, _)| input);
    Ok(Parsed {
        alg,
        kid,
        typ,
        claims,
        signing_input,
        signature,
    })
}

fn string_claim(
    claims: &serde_json::Map<String, Value>,
    claim: &'static str,
) -> Result<Option<String>, TokenError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::MissingClaim {
            claim,
            problem: "not a string".to_owned(),
        }),
    }
}

fn time_claim(
    claims: &serde_json::Map<String, Value>,
    claim: &'static str,
) -> Result<Option<SystemTime>, TokenError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            if !secs.is_finite() || !(0.0..=1e11).contains(&secs) {
                return Err(TokenError::MissingClaim {
                    claim,
                    problem: format!("out of range ({n})"),
                });
            }
            Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)))
        }
        Some(_) => Err(TokenError::MissingClaim {
            claim,
            problem: "not a number of seconds since the epoch".to_owned(),
        }),
    }
}

/// Refuses access tokens: a Cognito User Pool's (`token_use` other than `id`) and RFC 9068
/// ones (`typ: at+jwt`). Both would be refused by Cognito, which wants ID tokens.
fn check_token_use(parsed: &Parsed<'_>) -> Result<(), TokenError> {
    if let Some(typ) = &parsed.typ {
        let t = typ.to_ascii_lowercase();
        if t == "at+jwt" || t == "application/at+jwt" {
            return Err(TokenError::NotAnIdToken {
                what: format!("typ {typ:?}"),
            });
        }
    }
    match parsed.claims.get("token_use") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(u)) if u == "id" => Ok(()),
        Some(other) => Err(TokenError::NotAnIdToken {
            what: format!("token_use {other}"),
        }),
    }
}

/// `d` in whole seconds, rounded up, at least one: a `Retry-After` that comes early is no use.
fn seconds_up(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(Duration::from_secs(1))
}

/// `Ok` when a token expiring at `exp` has at least `min` left at `now`.
fn remaining_validity(exp: SystemTime, now: SystemTime, min: Duration) -> Result<(), TokenError> {
    if now >= exp {
        return Err(TokenError::Expired {
            expired_at: exp,
            ago: clock::saturating_sub(now, exp),
        });
    }
    let left = clock::saturating_sub(exp, now);
    if left < min {
        return Err(TokenError::ExpiresSoon {
            expires_at: exp,
            left,
            min,
        });
    }
    Ok(())
}

fn core_alg(alg: Algorithm) -> CoreJwsSigningAlgorithm {
    match alg {
        Algorithm::Rs256 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        Algorithm::Rs384 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
        Algorithm::Rs512 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
        Algorithm::Ps256 => CoreJwsSigningAlgorithm::RsaSsaPssSha256,
        Algorithm::Es256 => CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        Algorithm::Es384 => CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    }
}

impl Validator {
    /// Creates a validator for `providers`. Keys are not loaded until [`Validator::load_all`].
    pub fn new(
        providers: &[ProviderConfig],
        tokens: &TokenConfig,
        http: HttpsClient,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Self {
        let providers: Vec<Arc<Provider>> = providers
            .iter()
            .map(|p| {
                Arc::new(Provider::new(
                    p.clone(),
                    tokens,
                    http.clone(),
                    metrics.clone(),
                ))
            })
            .collect();
        let by_issuer = providers
            .iter()
            .map(|p| (p.config.issuer.clone(), p.clone()))
            .collect();
        let verified = moka::sync::Cache::builder()
            .max_capacity(tokens.verified_cache_capacity)
            .expire_after(TokenExpiry {
                clock: clock.clone(),
                min_token_validity: tokens.min_token_validity,
            })
            .build();
        Self {
            providers,
            by_issuer,
            verified,
            lookup: foldhash::quality::RandomState::default(),
            config: tokens.clone(),
            clock,
            metrics,
        }
    }

    /// The configured providers.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// `Ok` when `token` still has at least `tokens.min_token_validity` left at `now`: the rule
    /// [`Validator::validate`] applies, for tokens held since (a session's) before they are
    /// sent to Cognito.
    pub fn check_remaining(
        &self,
        token: &VerifiedToken,
        now: SystemTime,
    ) -> Result<(), TokenError> {
        remaining_validity(token.expires_at, now, self.config.min_token_validity)
    }

    /// Loads every provider's discovery document and keys, concurrently. Failures are logged
    /// (each naming the document that failed) and retried by [`Validator::maintain`]; they do
    /// not fail start-up.
    pub async fn load_all(&self) {
        futures_util::future::join_all(self.providers.iter().map(|p| p.load())).await;
    }

    /// Keeps keys fresh until `shutdown`: retries providers that never loaded (backoff up to a
    /// minute) and refreshes loaded ones every `tokens.jwks_refresh_interval`.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let tasks = self.providers.iter().cloned().map(|provider| {
            let shutdown = shutdown.clone();
            let refresh = self.config.jwks_refresh_interval;
            async move {
                let mut backoff = Duration::from_secs(1);
                loop {
                    let wait = if provider.is_ready() {
                        refresh
                    } else {
                        backoff
                    };
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    if provider.load().await.is_err() && !provider.is_ready() {
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    } else {
                        backoff = Duration::from_secs(1);
                    }
                }
            }
        });
        futures_util::future::join_all(tasks).await;
    }

    /// Validates a raw ID token. See the module docs for the rules.
    pub async fn validate(&self, raw: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        if raw.is_empty() {
            return Err(self.count_failure(None, TokenError::Missing));
        }
        if raw.len() > self.config.max_token_bytes {
            return Err(self.count_failure(
                None,
                TokenError::TooLarge {
                    len: raw.len(),
                    max: self.config.max_token_bytes,
                },
            ));
        }
        let lookup = self.lookup.hash_one(raw.as_bytes());
        let now = self.clock.now();
        // Plain equality: only a token with the same keyed hash is ever compared, so the timing
        // cannot be steered towards another caller's token; subtle's constant-time loop cost
        // ~2,500 instructions per cached request (callgrind).
        if let Some(token) = self.verified.get(&lookup).filter(|t| {
            t.raw.expose_str().as_bytes() == raw.as_bytes()
                && t.generation == t.provider.withdrawals.load(Ordering::Acquire)
        }) {
            return match self.check_remaining(&token, now) {
                Ok(()) => {
                    self.metrics.token_cached(&token.provider.config.name);
                    Ok(token)
                }
                Err(e) => {
                    self.verified.invalidate(&lookup);
                    Err(self.count_failure(Some(&token.provider.config.name), e))
                }
            };
        }
        let mut provider_name = None;
        let digest: [u8; 32] = Sha256::digest(raw.as_bytes()).into();
        let result = self
            .validate_uncached(raw, digest, now, &mut provider_name)
            .await;
        match result {
            Ok(token) => {
                self.metrics
                    .token_validations
                    .with_label_values(&[token.provider.config.name.as_str(), "ok"])
                    .inc();
                self.verified.insert(lookup, token.clone());
                Ok(token)
            }
            Err(e) => Err(self.count_failure(provider_name.as_deref(), e)),
        }
    }

    fn count_failure(&self, provider: Option<&str>, e: TokenError) -> TokenError {
        self.metrics
            .token_validations
            .with_label_values(&[provider.unwrap_or("unknown"), e.label()])
            .inc();
        e
    }

    async fn validate_uncached(
        &self,
        raw: &str,
        digest: [u8; 32],
        now: SystemTime,
        provider_name: &mut Option<String>,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        let parsed = parse(raw)?;
        if parsed.alg.eq_ignore_ascii_case("none") {
            return Err(TokenError::Unsigned);
        }
        if parsed.alg.to_ascii_uppercase().starts_with("HS") {
            return Err(TokenError::Symmetric {
                alg: parsed.alg.clone(),
            });
        }
        let iss = string_claim(&parsed.claims, "iss")?.ok_or(TokenError::MissingClaim {
            claim: "iss",
            problem: "missing".to_owned(),
        })?;
        let provider = self.provider_for(&iss)?;
        *provider_name = Some(provider.config.name.clone());
        let alg = Algorithm::from_jose(&parsed.alg)
            .filter(|a| provider.config.algorithms.contains(a))
            .ok_or_else(|| {
                if Algorithm::from_jose(&parsed.alg).is_none() {
                    TokenError::Malformed(algorithm_refusal(&parsed.alg))
                } else {
                    TokenError::AlgorithmNotAllowed {
                        alg: parsed.alg.clone(),
                        provider: provider.config.name.clone(),
                        allowed: provider.algorithms_text(),
                    }
                }
            })?;

        let missing = |claim| TokenError::MissingClaim {
            claim,
            problem: "missing".to_owned(),
        };
        check_token_use(&parsed)?;
        let exp = time_claim(&parsed.claims, "exp")?.ok_or_else(|| missing("exp"))?;
        remaining_validity(exp, now, self.config.min_token_validity)?;
        let leeway = self.config.leeway;
        for claim in ["nbf", "iat"] {
            if let Some(t) = time_claim(&parsed.claims, claim)?
                && t > now + leeway
            {
                return Err(TokenError::NotYetValid {
                    claim,
                    valid_from: t,
                });
            }
        }
        let subject = string_claim(&parsed.claims, "sub")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("sub"))?;
        let client_id = self.check_audience(&provider, &parsed.claims)?;
        let generation = provider.withdrawals.load(Ordering::Acquire);
        self.check_signature(&provider, &parsed, alg).await?;

        Ok(Arc::new(VerifiedToken {
            provider,
            subject: subject.into(),
            expires_at: exp,
            raw: SecretString::from(raw),
            digest,
            client_id: client_id.into(),
            generation,
        }))
    }

    fn provider_for(&self, iss: &str) -> Result<Arc<Provider>, TokenError> {
        if let Some(p) = self.by_issuer.get(iss) {
            return Ok(p.clone());
        }
        let trimmed = iss.trim_end_matches('/');
        if let Some(p) = self
            .providers
            .iter()
            .find(|p| p.config.issuer.trim_end_matches('/') == trimmed)
        {
            return Err(TokenError::IssuerMismatch {
                iss: iss.to_owned(),
                provider: p.config.name.clone(),
                configured: p.config.issuer.clone(),
            });
        }
        Err(TokenError::UnknownIssuer {
            iss: iss.to_owned(),
            configured: self
                .providers
                .iter()
                .map(|p| format!("{:?}", p.config.issuer))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Checks `aud`/`azp` against the accepted audiences; returns the accepted client id.
    fn check_audience(
        &self,
        provider: &Provider,
        claims: &serde_json::Map<String, Value>,
    ) -> Result<String, TokenError> {
        let accepted = &provider.config.audiences;
        let audiences: Vec<String> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => {
                return Err(TokenError::MissingClaim {
                    claim: "aud",
                    problem: "not a string or a list of strings".to_owned(),
                });
            }
        };
        let azp = string_claim(claims, "azp")?;
        let client = match &azp {
            Some(azp) => accepted.contains(azp).then(|| azp.clone()),
            None => audiences.iter().find(|a| accepted.contains(a)).cloned(),
        };
        if let Some(client) = client {
            return Ok(client);
        }
        if audiences.is_empty() && azp.is_none() {
            return Err(TokenError::MissingClaim {
                claim: "aud",
                problem: "missing".to_owned(),
            });
        }
        let audience = match azp {
            Some(azp) => format!("azp {azp:?}"),
            None => format!("aud {audiences:?}"),
        };
        Err(TokenError::AudienceMismatch {
            audience,
            provider: provider.config.name.clone(),
            accepted: format!("{accepted:?}"),
        })
    }

    async fn check_signature(
        &self,
        provider: &Provider,
        parsed: &Parsed<'_>,
        alg: Algorithm,
    ) -> Result<(), TokenError> {
        let name = &provider.config.name;
        let Some(kid) = &parsed.kid else {
            return Err(TokenError::MissingKeyId {
                provider: name.clone(),
            });
        };
        let unavailable = || TokenError::ProviderUnavailable {
            provider: name.clone(),
            reason: format!(
                "its keys could not be loaded yet ({}); credbroker keeps retrying",
                provider
                    .last_error()
                    .unwrap_or_else(|| "no attempt finished yet".to_owned())
            ),
            retry_after: NOT_LOADED_RETRY_AFTER,
        };
        let mut keys = provider.keys.load_full().ok_or_else(unavailable)?;
        if !keys.kids.contains(kid) {
            match provider.refetch_for_unknown_kid(kid).await {
                Refetch::Fetched => keys = provider.keys.load_full().ok_or_else(unavailable)?,
                Refetch::Failed(e) => {
                    return Err(TokenError::ProviderUnavailable {
                        provider: name.clone(),
                        reason: format!(
                            "the token's kid {kid:?} is not among the keys credbroker holds, \
                             and refetching the JWKS failed ({e}), so a newly rotated key \
                             cannot be told from a bad token; retry in {} s",
                            seconds_up(provider.refetch_interval).as_secs()
                        ),
                        retry_after: seconds_up(provider.refetch_interval),
                    });
                }
                Refetch::Suppressed {
                    last_failed: Some(e),
                    retry_in,
                } => {
                    return Err(TokenError::ProviderUnavailable {
                        provider: name.clone(),
                        reason: format!(
                            "the token's kid {kid:?} is not among the keys credbroker holds, \
                             and the last JWKS fetch failed ({e}); the next refetch is allowed \
                             in {} s (tokens.jwks_refetch_interval)",
                            retry_in.as_secs()
                        ),
                        retry_after: retry_in,
                    });
                }
                // A JWKS fetched successfully within the interval lacks the key.
                Refetch::Suppressed {
                    last_failed: None, ..
                } => {}
            }
            if !keys.kids.contains(kid) {
                return Err(TokenError::UnknownKeyId {
                    kid: kid.clone(),
                    provider: name.clone(),
                    refetch_interval: provider.refetch_interval,
                });
            }
        }
        let core = core_alg(alg);
        let mut detail = format!("no published key can verify {}", alg.as_str());
        for key in keys.jwks.keys() {
            if key.key_id().map(|k| k.as_str()) != Some(kid.as_str()) {
                continue;
            }
            match key.verify_signature(&core, parsed.signing_input.as_bytes(), &parsed.signature) {
                Ok(()) => return Ok(()),
                Err(SignatureVerificationError::InvalidKey(_)) => {}
                Err(SignatureVerificationError::CryptoError(_)) => {
                    detail = "the signature does not match (the token was altered or signed by \
                              another key)"
                        .to_owned();
                }
                Err(other) => detail = other.to_string(),
            }
        }
        Err(TokenError::InvalidSignature {
            provider: provider.config.name.clone(),
            detail,
        })
    }
}

/// A verified token for unit tests elsewhere in the crate (no signature involved).
#[cfg(test)]
pub(crate) fn test_token(
    issuer: &str,
    subject: &str,
    expires_at: SystemTime,
) -> Arc<VerifiedToken> {
    let tokens = TokenConfig {
        max_token_bytes: 8192,
        leeway: Duration::from_secs(60),
        verified_cache_capacity: 16,
        jwks_refetch_interval: Duration::from_secs(30),
        jwks_refresh_interval: Duration::from_secs(3600),
        oidc_timeout: Duration::from_secs(1),
        min_token_validity: Duration::from_secs(60),
    };
    let config = ProviderConfig {
        name: "test".to_owned(),
        issuer: issuer.to_owned(),
        audiences: vec!["client".to_owned()],
        algorithms: vec![Algorithm::Rs256],
        logins_key: crate::config::derive_logins_key(issuer),
        discovery_url: None,
    };
    let provider = Arc::new(Provider::new(
        config,
        &tokens,
        http_client::client(tokens.oidc_timeout),
        Metrics::new(&[]),
    ));
    let raw = format!(
        "test-token-for-{subject}-{}",
        clock::unix_millis(expires_at)
    );
    Arc::new(VerifiedToken {
        provider,
        subject: subject.into(),
        expires_at,
        digest: Sha256::digest(raw.as_bytes()).into(),
        raw: raw.into(),
        client_id: "client".into(),
        generation: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> (Validator, Arc<VerifiedToken>) {
        let cached = test_token(
            "https://issuer.test/",
            "auth0|alice",
            SystemTime::now() + Duration::from_secs(3600),
        );
        let tokens = TokenConfig {
            max_token_bytes: 8192,
            leeway: Duration::from_secs(60),
            verified_cache_capacity: 16,
            jwks_refetch_interval: Duration::from_secs(30),
            jwks_refresh_interval: Duration::from_secs(3600),
            oidc_timeout: Duration::from_secs(1),
            min_token_validity: Duration::from_secs(60),
        };
        let validator = Validator::new(
            std::slice::from_ref(&cached.provider.config),
            &tokens,
            http_client::client(tokens.oidc_timeout),
            clock::system(),
            Metrics::new(&[]),
        );
        (validator, cached)
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_token_needs_min_token_validity_left_and_gets_no_leeway_on_exp() {
        let min = Duration::from_secs(60);
        assert!(remaining_validity(at(100), at(40), min).is_ok());
        let soon = remaining_validity(at(100), at(41), min).expect_err("59 s left");
        assert_eq!(soon.code(), "TokenExpired");
        assert_eq!(soon.label(), "expires_soon");
        assert!(
            soon.to_string().contains("tokens.min_token_validity"),
            "{soon}"
        );
        let gone = remaining_validity(at(100), at(101), min).expect_err("expired 1 s ago");
        assert!(matches!(gone, TokenError::Expired { .. }), "{gone:?}");
        assert_eq!(gone.code(), "TokenExpired");
        assert!(remaining_validity(at(100), at(100), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn retry_delays_round_up_to_whole_seconds() {
        assert_eq!(seconds_up(Duration::from_millis(1)), Duration::from_secs(1));
        assert_eq!(
            seconds_up(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(seconds_up(Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(seconds_up(Duration::ZERO), Duration::from_secs(1));
    }

    fn parsed_with(typ: Option<&str>, claims: serde_json::Value) -> Parsed<'static> {
        Parsed {
            alg: "RS256".to_owned(),
            kid: Some("k".to_owned()),
            typ: typ.map(str::to_owned),
            claims: match claims {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            signing_input: "",
            signature: Vec::new(),
        }
    }

    #[test]
    fn access_tokens_are_told_from_id_tokens() {
        use serde_json::json;
        for (typ, claims, id_token) in [
            (Some("JWT"), json!({}), true),
            (None, json!({ "token_use": "id" }), true),
            (Some("JWT"), json!({ "token_use": "access" }), false),
            (Some("at+jwt"), json!({}), false),
            (Some("application/AT+JWT"), json!({}), false),
            (None, json!({ "token_use": 1 }), false),
        ] {
            let result = check_token_use(&parsed_with(typ, claims.clone()));
            assert_eq!(result.is_ok(), id_token, "{typ:?} {claims}");
            if let Err(e) = result {
                assert_eq!(e.code(), "NotAnIdToken");
                assert!(e.to_string().contains("send the ID token"), "{e}");
            }
        }
    }

    #[test]
    fn load_errors_name_the_document_its_url_and_the_problem() {
        let e = |document, problem, after_discovery| LoadError {
            provider: "auth0".to_owned(),
            document,
            url: "https://x.example/doc".to_owned(),
            problem,
            issuer: "https://x.example/".to_owned(),
            after_discovery,
        };
        assert_eq!(
            e(Document::Jwks, LoadProblem::Status(503), true).to_string(),
            "the JWKS at https://x.example/doc answered HTTP 503 Service Unavailable (the \
             discovery document loaded)"
        );
        assert_eq!(
            e(Document::Discovery, LoadProblem::Status(404), false).to_string(),
            "the discovery document at https://x.example/doc answered HTTP 404 Not Found"
        );
        let mismatch = e(
            Document::Discovery,
            LoadProblem::IssuerMismatch {
                found: "https://x.example".to_owned(),
            },
            false,
        )
        .to_string();
        assert!(
            mismatch.contains("names the issuer \"https://x.example\"")
                && mismatch.contains("providers.auth0.issuer is \"https://x.example/\""),
            "{mismatch}"
        );
        let transport = e(
            Document::Jwks,
            LoadProblem::Transport("connection refused".to_owned()),
            false,
        );
        assert_eq!(
            transport.to_string(),
            "the JWKS at https://x.example/doc could not be fetched: connection refused"
        );
    }

    #[test]
    fn the_discovery_url_defaults_to_the_well_known_path_of_the_issuer() {
        let (validator, _) = validator();
        let provider = &validator.providers()[0];
        assert_eq!(
            provider.discovery_url(),
            "https://issuer.test/.well-known/openid-configuration"
        );
        let pool = test_token(
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC",
            "sub",
            SystemTime::now(),
        );
        assert_eq!(
            pool.provider.discovery_url(),
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC/.well-known/openid-configuration"
        );
    }

    #[tokio::test]
    async fn a_cached_token_is_served_only_to_the_byte_equal_token() {
        let (validator, cached) = validator();
        let raw = cached.raw.expose_str().to_owned();
        // Where it belongs: served from the cache (the raw text is no JWT, so only the cache
        // can have answered).
        validator
            .verified
            .insert(validator.lookup.hash_one(raw.as_bytes()), cached.clone());
        let hit = validator.validate(&raw).await.expect("cached");
        assert!(Arc::ptr_eq(&hit, &cached));

        // A hash collision, simulated by filing alice's token under another token's hash: the
        // other token must be judged on its own (here: not a JWT), never handed alice's identity.
        let other = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl";
        validator
            .verified
            .insert(validator.lookup.hash_one(other.as_bytes()), cached.clone());
        let refused = validator.validate(other).await;
        assert!(refused.is_err(), "a colliding token got alice's identity");
    }
}
