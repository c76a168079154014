//! Who is calling: `Authorization` → a verified identity.
//!
//! Owns: the single step every AppSync route uses to authenticate its caller, [`resolve`].
//!
//! Promises:
//! - the caller authenticates exactly as on the container-credentials endpoint: `Authorization:
//!   <ID token>` or `Authorization: <session handle>` (`cbs_…`, from `POST /v1/sessions` or
//!   gRPC `Exchange`), a `Bearer ` prefix accepted (it is the *caller's* convention; AppSync
//!   never sees it);
//! - a session stands for its current ID token (for a refresh-token session, the newest one
//!   credbroker redeemed) and its role: OIDC mode forwards that raw ID token, IAM mode signs
//!   with the credentials of the session's identity (its `CustomRoleArn` included);
//! - failures carry the broker's stable codes (`MissingToken`, `TokenExpired`,
//!   `InvalidSession`, `ReloginRequired`, …) so every surface reports the same problem the
//!   same way.

use std::sync::Arc;

use axum::http::HeaderMap;

use crate::broker::{Broker, BrokerError, ErrorReply};
use crate::oidc::VerifiedToken;
use crate::server::container::bearer_token;
use crate::sessions;

/// A resolved caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The verified ID token the caller stands for.
    pub token: Arc<VerifiedToken>,
    /// The role its credentials are for (a session's `CustomRoleArn`); `None`: the configured
    /// default.
    pub role: Option<Arc<str>>,
}

/// Resolves the caller's `Authorization` header to the identity it proves.
pub async fn resolve(broker: &Broker, headers: &HeaderMap) -> Result<Caller, ErrorReply> {
    let token = bearer_token(headers).map_err(|_| ErrorReply {
        status: 400,
        code: "MalformedRequest",
        message: "the Authorization header is not visible ASCII".to_owned(),
        retry_after: None,
    })?;
    if sessions::is_handle(token) {
        let session = broker
            .sessions
            .get(token)
            .map_err(|e| BrokerError::Session(e).reply())?;
        return Ok(Caller {
            token: session.token(),
            role: session.role.clone(),
        });
    }
    let token = broker
        .validator
        .validate(token)
        .await
        .map_err(|e| BrokerError::Token(e).reply())?;
    Ok(Caller { token, role: None })
}
