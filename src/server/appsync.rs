//! The AppSync routes of the main listener.
//!
//! Owns: `POST /appsync/<api>/graphql` and `POST /appsync/graphql` (the default API).
//!
//! Route table (paths are per API, so each API can grow more routes):
//!
//! | path                          | what                                             |
//! |-------------------------------|--------------------------------------------------|
//! | `POST /appsync/graphql`       | GraphQL to the default API                       |
//! | `POST /appsync/{api}/graphql` | GraphQL to the API `[appsync.apis.{api}]`        |
//! | `GET /appsync/{api}/realtime` | WebSocket subscriptions: [`super::realtime`]     |
//!
//! Promises:
//! - the caller authenticates like on the credentials endpoint (`Authorization: <ID token>` or
//!   a session handle, `Bearer ` accepted), resolved by [`crate::broker::Broker::authenticate`];
//! - requests carrying `X-Forwarded-For` or `Forwarded` are refused (400), as on the credentials
//!   endpoint: a proxy in front would make every user's requests come from "local";
//! - a body larger than `appsync.max_body_bytes` is answered 413 without contacting AppSync
//!   (declared `Content-Length` checked first, streamed bodies counted as they arrive);
//! - AppSync's own answers (its 401s, 200s with field-level errors, 5xx) pass through unchanged;
//!   credbroker's refusals are `{"Code","Message"}` plus the same as AppSync-style
//!   `"errors":[{"errorType","message"}]`, so GraphQL clients surface them too.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http_body_util::{BodyExt as _, Limited};

use aws_credential_types::Credentials;
use axum::http::HeaderMap;
use bytes::Bytes;
use hyper::body::Incoming;

use super::container::{bearer_token, forwarded_refusal};
use crate::appsync::forward::{Api, ForwardError, Forwarder, UpstreamAuth, response_headers};
use crate::broker::{Broker, BrokerError, Caller, ErrorReply};
use crate::config::{AppSyncAuth, AppSyncConfig};
use crate::metrics::Surface;

/// GraphQL to the default API.
pub const DEFAULT_GRAPHQL_PATH: &str = "/appsync/graphql";
/// GraphQL to a named API.
pub const API_GRAPHQL_PATH: &str = "/appsync/{api}/graphql";

#[derive(Clone)]
struct AppState {
    broker: Arc<Broker>,
    forwarder: Arc<Forwarder>,
}

/// The AppSync routes, merged into the main listener's router.
pub fn router(broker: Arc<Broker>, config: &AppSyncConfig) -> Router {
    let forwarder = Arc::new(Forwarder::new(config));
    Router::new()
        .route(DEFAULT_GRAPHQL_PATH, any(default_api))
        .route(API_GRAPHQL_PATH, any(named_api))
        .with_state(AppState { broker, forwarder })
}

async fn default_api(State(state): State<AppState>, request: Request) -> Response {
    measured(&state, None, request).await
}

async fn named_api(
    State(state): State<AppState>,
    api: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    match api {
        Ok(Path(api)) => measured(&state, Some(api), request).await,
        // The name did not percent-decode to UTF-8: no configured API is called that.
        Err(_) => {
            let started = Instant::now();
            let response = refusal(&client_reply(
                404,
                "NoSuchApi",
                "the API name in the path is not valid UTF-8 once percent-decoded",
            ));
            observe(&state, started, &response);
            response
        }
    }
}

async fn measured(state: &AppState, api: Option<String>, request: Request) -> Response {
    let started = Instant::now();
    let response = handle(state, api.as_deref(), request).await;
    observe(state, started, &response);
    response
}

fn observe(state: &AppState, started: Instant, response: &Response) {
    state
        .broker
        .record_request(Surface::Appsync, response.status().as_str(), started);
}

/// Who is calling: `Authorization` (an ID token or a session handle, `Bearer ` accepted — the
/// caller's convention; AppSync never sees it) → the identity it proves, with the broker's
/// stable codes on failure.
async fn resolve(broker: &Broker, headers: &HeaderMap) -> Result<Caller, ErrorReply> {
    let token = bearer_token(headers).map_err(|_| {
        client_reply(
            400,
            "MalformedRequest",
            "the Authorization header is not visible ASCII",
        )
    })?;
    broker.authenticate(token).await.map_err(|e| e.reply())
}

/// Why a request was not forwarded.
#[derive(Debug)]
pub enum Refused {
    /// IAM mode: no credentials for the caller.
    Credentials(BrokerError),
    /// The forwarder refused it or AppSync gave no answer.
    Forward(ForwardError),
}

impl Refused {
    /// The client-facing form.
    pub fn reply(&self) -> ErrorReply {
        match self {
            Self::Credentials(e) => e.reply(),
            Self::Forward(e) => e.reply(),
        }
    }

    /// A bounded label for logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Credentials(_) => "no_credentials",
            Self::Forward(e) => e.outcome(),
        }
    }
}

/// Forwards `body` to `api` as `caller`: the document is admitted first, then authenticated
/// as the API's `auth` says (OIDC: the caller's raw ID token; IAM: SigV4 with the caller's
/// credentials from the broker, handed out on [`Surface::Appsync`]).
pub async fn forward_as(
    broker: &Broker,
    forwarder: &Forwarder,
    api: &Api,
    caller: &Caller,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<http::Response<Incoming>, Refused> {
    forwarder.admit(api, &body).map_err(Refused::Forward)?;
    let auth = match api.config.auth {
        AppSyncAuth::Oidc => UpstreamAuth::IdToken {
            raw: caller.token.raw.expose_str(),
            expires_at: caller.token.expires_at,
        },
        AppSyncAuth::Iam => {
            let issued = broker
                .credentials_for_token(&caller.token, caller.role.as_deref(), Surface::Appsync)
                .await
                .map_err(Refused::Credentials)?;
            UpstreamAuth::Credentials(Credentials::new(
                issued.access_key_id(),
                issued.secret_access_key(),
                Some(issued.session_token().to_owned()),
                Some(issued.expires_at),
                "credbroker",
            ))
        }
    };
    let now = broker.clock().now();
    forwarder
        .forward(&broker.metrics, api, auth, headers, body, now)
        .await
        .map_err(Refused::Forward)
}

async fn handle(state: &AppState, api_name: Option<&str>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        return post_only();
    }
    if let Some(refused) = forwarded_refusal(&parts.headers) {
        return refused;
    }
    let forwarder = &state.forwarder;
    let Some(api) = forwarder.api(api_name).cloned() else {
        return no_such_api(forwarder, api_name);
    };

    let max = forwarder.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(max);
    }

    let caller = match resolve(&state.broker, &parts.headers).await {
        Ok(c) => c,
        Err(reply) => {
            tracing::debug!(
                api = api.name(),
                code = reply.code,
                "appsync caller refused"
            );
            return refusal(&reply);
        }
    };

    let body = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(max),
        Err(_) => {
            return refusal(&client_reply(
                400,
                "MalformedRequest",
                "the request body could not be read",
            ));
        }
    };

    match forward_as(
        &state.broker,
        forwarder,
        &api,
        &caller,
        &parts.headers,
        body,
    )
    .await
    {
        Ok(upstream) => {
            let (up, incoming) = upstream.into_parts();
            tracing::debug!(
                api = api.name(),
                status = up.status.as_u16(),
                "appsync answered"
            );
            let mut response = Response::new(Body::new(incoming));
            *response.status_mut() = up.status;
            *response.headers_mut() = response_headers(&up.headers);
            response
        }
        Err(e) => {
            let reply = e.reply();
            tracing::debug!(
                api = api.name(),
                outcome = e.outcome(),
                code = reply.code,
                "appsync request not forwarded"
            );
            refusal(&reply)
        }
    }
}

/// 405 with `Allow: POST`.
fn post_only() -> Response {
    let mut r = refusal(&client_reply(
        405,
        "MethodNotAllowed",
        "send GraphQL requests with POST",
    ));
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

/// 404 `NoSuchApi`, naming the APIs that are configured.
fn no_such_api(forwarder: &Forwarder, api_name: Option<&str>) -> Response {
    no_such_api_reply(&forwarder.names(), api_name, "graphql")
}

/// 404 `NoSuchApi` for the route `/appsync/<name>/<route>`, naming the configured APIs (the
/// HTTP and real-time routes share it).
pub(super) fn no_such_api_reply(names: &[&str], api_name: Option<&str>, route: &str) -> Response {
    let message = match (api_name, names.is_empty()) {
        (_, true) => "no AppSync API is configured ([appsync.apis.<name>])".to_owned(),
        (Some(n), false) => format!(
            "no AppSync API {n:?} is configured (configured: {})",
            names.join(", ")
        ),
        (None, false) => format!(
            "no default AppSync API; use /appsync/<name>/{route} (configured: {}) or set \
             default = true on one",
            names.join(", ")
        ),
    };
    refusal(&client_reply(404, "NoSuchApi", message))
}

fn too_large(max: usize) -> Response {
    refusal(&client_reply(
        413,
        "RequestTooLarge",
        format!("the request body is larger than appsync.max_body_bytes ({max} bytes)"),
    ))
}

pub(super) fn client_reply(
    status: u16,
    code: &'static str,
    message: impl Into<String>,
) -> ErrorReply {
    ErrorReply {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

/// credbroker's own refusal: `{"Code","Message"}` and the same as AppSync-style `errors`.
pub(super) fn refusal(reply: &ErrorReply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({
        "Code": reply.code,
        "Message": reply.message,
        "errors": [ { "errorType": reply.code, "message": reply.message } ],
    })
    .to_string();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = reply.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
