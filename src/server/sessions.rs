//! The sessions API on the main listener.
//!
//! Owns: `POST /v1/sessions` (login: ID token → session handle) and
//! `DELETE /v1/sessions/current` (logout).
//!
//! Promises:
//! - `POST /v1/sessions` with JSON `{"id_token", "refresh_token"?, "client_id"?}` answers 201
//!   `{"session_token", "expires_at"}` (`expires_at` as `YYYY-MM-DDTHH:MM:SSZ`) once Cognito
//!   has accepted the login; the handle then works as the `Authorization` value of
//!   `GET /v1/credentials` (write it to the SDK's token file) and on the gRPC API;
//! - with a `refresh_token` credbroker keeps the session alive by redeeming it (as `client_id`,
//!   default the ID token's `azp`/`aud`), so `expires_at` is `sessions.max_lifetime` away; a
//!   refresh token the provider refuses is 401 `ReloginRequired`, another user's is 403
//!   `RefreshTokenMismatch`, a `client_id` that is not an accepted audience 400
//!   `InvalidClientId` (see [`crate::sessions`]);
//! - `DELETE /v1/sessions/current` with `Authorization: <session handle>` revokes it (200
//!   `{"identity_evicted"}`); an unknown or expired handle is 401;
//! - errors are `{"Code","Message"}` like every other endpoint, axum's own rejections included:
//!   request bodies over 64 KiB are 413 `RequestTooLarge`, other methods 405 with `Allow`;
//!   proxied requests are refused (400) as on the container endpoint;
//! - neither handles nor tokens are logged.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde::Deserialize;

use super::container::{bearer_token, forwarded_refusal};
use super::{client_error, error_response, json_no_store, method_not_allowed};
use crate::broker::RefreshLogin;
use crate::broker::{Broker, BrokerError};
use crate::clock;
use crate::metrics::Surface;
use crate::secret::SecretString;

/// Where sessions are created.
pub const SESSIONS_PATH: &str = "/v1/sessions";
/// The caller's own session (logout).
pub const CURRENT_SESSION_PATH: &str = "/v1/sessions/current";
/// Largest request body.
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct AppState {
    broker: Arc<Broker>,
}

/// The session routes, to be merged into the main listener's router.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route(
            SESSIONS_PATH,
            post(create).fallback(|| async { method_not_allowed("POST") }),
        )
        .route(
            CURRENT_SESSION_PATH,
            delete(revoke).fallback(|| async { method_not_allowed("DELETE") }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState { broker })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    id_token: SecretField,
    #[serde(default)]
    refresh_token: Option<SecretField>,
    /// The OAuth client of the refresh token (only with `refresh_token`).
    #[serde(default)]
    client_id: Option<String>,
}

/// A JSON string read straight into a [`SecretString`].
struct SecretField(SecretString);

impl<'de> Deserialize<'de> for SecretField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(SecretString::from(s)))
    }
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let response = match body {
        Ok(body) => create_inner(&state, &headers, &body).await,
        Err(rejection) => body_refusal(&rejection),
    };
    observe(&state.broker, started, &response);
    response
}

async fn create_inner(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(refusal) = forwarded_refusal(headers) {
        return refusal;
    }
    let request: CreateRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            // serde's message names the field and position, never the values.
            return client_error(
                400,
                "MalformedRequest",
                format!(
                    "the body must be JSON {{\"id_token\": \"<ID token>\", \"refresh_token\"?: \
                     \"...\", \"client_id\"?: \"...\"}}: {}",
                    e.classify_message()
                ),
            );
        }
    };
    let refresh = match (request.refresh_token, request.client_id) {
        (Some(token), client_id) => Some(RefreshLogin {
            refresh_token: token.0,
            client_id,
        }),
        (None, Some(_)) => {
            return client_error(
                400,
                "MalformedRequest",
                "client_id is only used with refresh_token",
            );
        }
        (None, None) => None,
    };
    let created = match state
        .broker
        .create_session(request.id_token.0.expose_str(), refresh, None)
        .await
    {
        Ok(c) => c,
        Err(e) => return refused(&e),
    };
    let body = serde_json::json!({
        "session_token": created.handle.expose_str(),
        "expires_at": clock::format_aws_timestamp(created.expires_at),
    })
    .to_string();
    json_no_store((StatusCode::CREATED, body).into_response())
}

async fn revoke(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let response = match forwarded_refusal(&headers) {
        Some(r) => r,
        None => match bearer_token(&headers) {
            Err(e) => e.response(),
            Ok(handle) => match state.broker.revoke_session(handle) {
                Ok(evicted) => json_no_store(
                    (
                        StatusCode::OK,
                        serde_json::json!({ "identity_evicted": evicted }).to_string(),
                    )
                        .into_response(),
                ),
                Err(e) => refused(&e),
            },
        },
    };
    observe(&state.broker, started, &response);
    response
}

/// axum's body rejections (`text/plain`) in the JSON shape.
fn body_refusal(rejection: &BytesRejection) -> Response {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        client_error(
            413,
            "RequestTooLarge",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    } else {
        client_error(
            400,
            "MalformedRequest",
            "the request body could not be read",
        )
    }
}

fn refused(e: &BrokerError) -> Response {
    let reply = e.reply();
    tracing::debug!(
        code = reply.code,
        status = reply.status,
        "session request refused"
    );
    error_response(&reply)
}

fn observe(broker: &Broker, started: Instant, response: &Response) {
    broker.record_request(Surface::Sessions, response.status().as_str(), started);
}

trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    /// The error without echoing input: serde_json's messages quote unknown field names but
    /// never values, except for `invalid type: string "..."`, which is cut off here.
    fn classify_message(&self) -> String {
        let text = self.to_string();
        match text.split_once(": string \"") {
            Some((kept, _quoted)) => {
                format!("{kept} (line {}, column {})", self.line(), self.column())
            }
            None => text,
        }
    }
}
