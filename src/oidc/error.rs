//! Why a token was refused ([`TokenError`], each with a stable code and metric label) and why a
//! provider's discovery document or JWKS could not be loaded ([`LoadError`]).

use crate::clock;
use std::fmt;
use std::time::{Duration, SystemTime};

use super::MAX_DOCUMENT_BYTES;

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

pub(super) fn symmetric_hint() -> &'static str {
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
    pub(super) issuer: String,
    /// The JWKS failed right after its discovery document loaded (the same attempt).
    pub(super) after_discovery: bool,
}

impl LoadError {
    pub(super) fn describe(&self) -> String {
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
