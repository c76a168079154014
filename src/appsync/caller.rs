//! Who is calling: `Authorization` → a verified identity.
//!
//! Owns: the single step every AppSync route uses to authenticate its caller, [`resolve`].
//!
//! Promises:
//! - the caller authenticates exactly as on the container-credentials endpoint: `Authorization:
//!   <ID token>`, a `Bearer ` prefix accepted (it is the *caller's* convention; AppSync never
//!   sees it);
//! - failures carry the broker's stable codes (`MissingToken`, `TokenExpired`, …) so every
//!   surface reports the same problem the same way.
//!
//! Other credentials that stand for an identity (a sessions handle) are meant to be resolved
//! here too: add the lookup in [`resolve`] and every AppSync route accepts it.

use std::sync::Arc;

use axum::http::HeaderMap;

use crate::broker::{Broker, BrokerError, ErrorReply};
use crate::oidc::VerifiedToken;
use crate::server::container::bearer_token;

/// Resolves the caller's `Authorization` header to the identity it proves.
pub async fn resolve(
    broker: &Broker,
    headers: &HeaderMap,
) -> Result<Arc<VerifiedToken>, ErrorReply> {
    let token = bearer_token(headers).map_err(|_| ErrorReply {
        status: 400,
        code: "MalformedRequest",
        message: "the Authorization header is not visible ASCII".to_owned(),
        retry_after: None,
    })?;
    broker
        .validator
        .validate(token)
        .await
        .map_err(|e| BrokerError::Token(e).reply())
}
