//! The one table from failures to what clients see.
//!
//! Owns: [`ErrorReply`] and the mapping of every domain error the surfaces answer with.
//!
//! Promises: the same failure gets the same status, `Code`, message and `Retry-After` on every
//! surface (HTTP here; gRPC maps the reply, [`crate::grpc::status_of`]).

use std::time::Duration;

use super::BrokerError;
use super::configured::IdentityError;
use crate::appsync::forward::ForwardError;
use crate::appsync::operations::OperationError;
use crate::cognito::ErrorKind;
use crate::identity::FetchError;
use crate::sessions::SessionError;
use crate::sources::{SourceError, SourceErrorKind};

/// A failure as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// HTTP status.
    pub status: u16,
    /// Stable code.
    pub code: &'static str,
    /// What happened and how to fix it.
    pub message: String,
    /// Seconds to wait before retrying, when that helps.
    pub retry_after: Option<u64>,
}

impl BrokerError {
    /// The client-facing form.
    pub fn reply(&self) -> ErrorReply {
        match self {
            Self::Token(e) => {
                let (status, retry) = match e.retry_after() {
                    Some(after) => (503, Some(after.as_secs().max(1))),
                    None => (401, None),
                };
                ErrorReply {
                    status,
                    code: e.code(),
                    message: e.to_string(),
                    retry_after: retry,
                }
            }
            Self::Session(e) => session(e),
            Self::Busy => ErrorReply {
                status: 429,
                code: "TooManyRequests",
                message: self.to_string(),
                retry_after: Some(1),
            },
            Self::Timeout => ErrorReply {
                status: 503,
                code: "UpstreamTimeout",
                message: self.to_string(),
                retry_after: Some(1),
            },
            Self::Upstream {
                error,
                provider,
                logins_key,
            } => {
                let (status, code) = match error.kind {
                    ErrorKind::NotAuthorized => (403, "LoginRejected"),
                    ErrorKind::ResourceNotFound => (403, "ResourceNotFound"),
                    ErrorKind::InvalidIdentityPoolConfiguration => {
                        (403, "IdentityPoolMisconfigured")
                    }
                    ErrorKind::InvalidParameter => (403, "InvalidParameter"),
                    ErrorKind::LimitExceeded => (403, "LimitExceeded"),
                    ErrorKind::ResourceConflict => (403, "ResourceConflict"),
                    ErrorKind::TooManyRequests => (503, "UpstreamThrottled"),
                    // An attempt that got no answer in `cognito.attempt_timeout`: the same Code
                    // as a request that outlived `server.request_timeout` waiting for Cognito.
                    ErrorKind::Timeout => (503, "UpstreamTimeout"),
                    ErrorKind::InternalError
                    | ErrorKind::ExternalService
                    | ErrorKind::Unavailable => (503, "UpstreamUnavailable"),
                    _ => (502, "UpstreamError"),
                };
                let retry_after = (status == 503).then(|| {
                    error
                        .retry_after
                        .unwrap_or(Duration::from_secs(1))
                        .as_secs()
                        .max(1)
                });
                let hint = hint(error, provider.as_deref(), logins_key.as_deref());
                let message = match hint {
                    Some(h) => format!("Cognito: {}. {h}", error.message),
                    None => format!("Cognito: {}", error.message),
                };
                ErrorReply {
                    status,
                    code,
                    message,
                    retry_after,
                }
            }
        }
    }
}

/// The likely fix for a Cognito refusal, from its class and message (also used by
/// `credbroker doctor`, so both say the same).
pub fn hint(
    error: &FetchError,
    provider: Option<&str>,
    logins_key: Option<&str>,
) -> Option<String> {
    let m = error.message.as_str();
    let provider = provider.unwrap_or("<name>");
    let key = logins_key.unwrap_or("?");
    Some(match error.kind {
        ErrorKind::NotAuthorized if m.contains("Issuer doesn't match providerName") => format!(
            "credbroker sent the Logins key {key:?} (providers.{provider}.logins_key); it must be \
             the name of the identity pool's OpenID Connect provider, which is the token's iss \
             without \"https://\" and without a trailing slash"
        ),
        ErrorKind::NotAuthorized if m.contains("not from a supported provider") => format!(
            "add the IAM OpenID Connect provider {key:?} to the identity pool's authentication \
             providers, or set providers.{provider}.logins_key to the provider name the pool uses"
        ),
        ErrorKind::NotAuthorized if m.contains("audience") => format!(
            "add the application's client ID to the Audiences of the IAM OpenID Connect provider \
             {key:?} (it must match the token's aud, or azp when present)"
        ),
        ErrorKind::NotAuthorized if m.contains("Token expired") => {
            "the ID token expired by Cognito's clock; sign in again (check this host's clock)"
                .to_owned()
        }
        ErrorKind::NotAuthorized if m.contains("Unauthenticated") => {
            "the Logins map was empty; this is a credbroker bug, please report it".to_owned()
        }
        ErrorKind::NotAuthorized => format!(
            "Cognito refused the login from provider {provider}; check that the identity pool \
             trusts {key:?} and that the token's signing key is published"
        ),
        ErrorKind::ResourceNotFound if m.contains("IdentityPool") => {
            "check cognito.identity_pool_id and cognito.region (the pool must exist in that \
             region)"
                .to_owned()
        }
        ErrorKind::ResourceNotFound => {
            "the identity was not found in the pool; it may have been deleted".to_owned()
        }
        ErrorKind::InvalidIdentityPoolConfiguration => {
            "the pool's authenticated role must trust cognito-identity.amazonaws.com for \
             sts:AssumeRoleWithWebIdentity with the conditions \
             cognito-identity.amazonaws.com:aud = <identity pool id> and \
             cognito-identity.amazonaws.com:amr = \"authenticated\""
                .to_owned()
        }
        ErrorKind::InvalidParameter => {
            "check cognito.custom_role_arn (it must be a role the pool may assume for this user) \
             and cognito.identity_pool_id"
                .to_owned()
        }
        _ => return None,
    })
}

/// The client-facing form of a session failure.
pub(super) fn session(e: &SessionError) -> ErrorReply {
    let status = match e {
        SessionError::Invalid
        | SessionError::Expired(_)
        | SessionError::ReloginRequired
        | SessionError::RefreshFailed(_) => 401,
        SessionError::TooMany { .. } => 429,
        SessionError::IdentityMismatch | SessionError::RefreshTokenMismatch => 403,
        SessionError::RefreshTokenUnsupported | SessionError::InvalidClientId { .. } => 400,
    };
    ErrorReply {
        status,
        code: e.code(),
        message: e.to_string(),
        retry_after: matches!(e, SessionError::TooMany { .. }).then_some(1),
    }
}

/// The client-facing form of a source failure of the identity `identity`.
fn source(e: &SourceError, identity: &str) -> ErrorReply {
    let (status, code, retry_after) = match e.kind {
        SourceErrorKind::ReloginRequired => (401, "ReloginRequired", None),
        SourceErrorKind::Misconfigured => (500, "IdentitySourceMisconfigured", None),
        SourceErrorKind::Transient => (503, "IdentitySourceUnavailable", Some(5)),
        SourceErrorKind::InvalidToken(code) => (401, code, None),
        SourceErrorKind::NotReady => (503, "IdentityNotReady", Some(1)),
        SourceErrorKind::IdentityMismatch => (403, "RefreshTokenMismatch", None),
    };
    ErrorReply {
        status,
        code,
        message: format!("identity {identity}: {}", e.message),
        retry_after,
    }
}

impl IdentityError {
    /// The client-facing form.
    pub fn reply(&self, identity: &str) -> ErrorReply {
        match self {
            Self::Source(e) => source(e, identity),
            Self::Broker(e) => e.reply(),
        }
    }
}

impl ForwardError {
    /// The client-facing form.
    pub fn reply(&self) -> ErrorReply {
        let (status, code, retry_after) = match self {
            Self::TokenExpiringSoon { .. } => (401, "TokenExpiringSoon", None),
            Self::Operation(OperationError::NotAllowed { .. }) => {
                (403, "OperationNotAllowed", None)
            }
            Self::Operation(_) => (400, "MalformedRequest", None),
            Self::Signing(_) => (500, "SigningFailed", None),
            Self::Timeout(_) => (504, "UpstreamTimeout", Some(1)),
            Self::Unreachable(_) => (502, "UpstreamUnavailable", Some(1)),
        };
        ErrorReply {
            status,
            code,
            message: self.to_string(),
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(kind: ErrorKind, message: &str) -> BrokerError {
        BrokerError::Upstream {
            error: FetchError {
                kind,
                message: message.to_owned(),
                retry_after: Some(Duration::from_secs(4)),
            },
            provider: Some("auth0".into()),
            logins_key: Some("dev-x.us.auth0.com/".into()),
        }
    }

    #[test]
    fn cognito_errors_map_to_statuses_codes_and_fixes() {
        let r = upstream(
            ErrorKind::NotAuthorized,
            "GetId: Invalid login token. Issuer doesn't match providerName",
        )
        .reply();
        assert_eq!(
            (r.status, r.code, r.retry_after),
            (403, "LoginRejected", None)
        );
        assert!(
            r.message.contains("providers.auth0.logins_key"),
            "{}",
            r.message
        );
        assert!(
            r.message.contains("without a trailing slash"),
            "{}",
            r.message
        );

        let r = upstream(ErrorKind::TooManyRequests, "Rate exceeded").reply();
        assert_eq!(
            (r.status, r.code, r.retry_after),
            (503, "UpstreamThrottled", Some(4))
        );
        let r = upstream(ErrorKind::Unavailable, "connection refused").reply();
        assert_eq!((r.status, r.code), (503, "UpstreamUnavailable"));
        let r = upstream(ErrorKind::Timeout, "no answer in time").reply();
        assert_eq!(
            (r.status, r.code, r.retry_after),
            (503, "UpstreamTimeout", Some(4))
        );
        assert_eq!(BrokerError::Timeout.reply().code, "UpstreamTimeout");
        let r = upstream(
            ErrorKind::InvalidIdentityPoolConfiguration,
            "Invalid identity pool configuration",
        )
        .reply();
        assert_eq!((r.status, r.code), (403, "IdentityPoolMisconfigured"));
        assert!(r.message.contains("AssumeRoleWithWebIdentity"));
        let r = upstream(ErrorKind::ResourceNotFound, "IdentityPool 'x' not found.").reply();
        assert!(r.message.contains("cognito.identity_pool_id"));
        assert_eq!(BrokerError::Busy.reply().status, 429);
    }
}
