//! The AppSync real-time routes of the main listener: GraphQL subscriptions over WebSocket.
//!
//! Owns: the upgrade routes, everything checked before a connection is upgraded, and
//! [`BrokerAuth`] (how a relay authenticates the caller upstream, through the broker).
//!
//! | path                                  | what                                         |
//! |---------------------------------------|----------------------------------------------|
//! | `GET /appsync/realtime`               | real time of the default API                 |
//! | `GET /appsync/{api}/realtime`         | real time of `[appsync.apis.{api}]`          |
//! | `GET /appsync/graphql/realtime`       | the same, where Amplify derives it from `/appsync/graphql` |
//! | `GET /appsync/{api}/graphql/realtime` | the same for `/appsync/{api}/graphql`         |
//!
//! Promises:
//! - the caller authenticates exactly as on the HTTP path (an ID token or a session handle,
//!   `Bearer ` accepted), in the first of these that is present: the `Authorization` header of
//!   the upgrade, a `header-<base64url JSON>` subprotocol, a `?header=<base64 JSON>` query
//!   parameter (the JSON's `Authorization`, key matched case-insensitively; `host` and every
//!   other key ignored). A malformed source is 400 `MalformedRequest`, never a fall-through;
//! - checks run before the upgrade, and nothing reaches AppSync unless all pass: 405 (not
//!   GET), 400 (`X-Forwarded-For`/`Forwarded`), 404 `NoSuchApi`, 426 `UpgradeRequired`, 400
//!   (subprotocols offered without `graphql-ws`), 401 (the broker's codes; a raw ID token
//!   within `appsync.token_expiry_margin` of `exp` is `TokenExpiringSoon`), 503 then 429
//!   `TooManyConnections` (`max_connections`, `max_connections_per_identity`), and in IAM mode
//!   the caller's credentials (the broker's codes); refusals are `{"Code","Message","errors"}`;
//! - the upgrade selects `graphql-ws` (never echoes the `header-` entry) and caps messages at
//!   `appsync.realtime.max_message_bytes`; the relay runs on the listeners' task tracker and
//!   ends with a 1001 close when credbroker shuts down;
//! - IAM credentials are handed out on the `appsync` surface (audited like the HTTP path);
//! - header, subprotocol and query values are never logged.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use aws_credential_types::Credentials;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts as _, Path, Request};
use axum::http::{HeaderMap, HeaderValue, Method, header, request::Parts};
use axum::response::Response;
use axum::routing::any;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::appsync::{client_reply, refusal};
use super::container::{NotAscii, bearer_token, forwarded_refusal, strip_bearer};
use crate::appsync::forward::ForwardError;
use crate::appsync::realtime::limits::Full;
use crate::appsync::realtime::protocol::HeaderProblem;
use crate::appsync::realtime::{
    AuthError, BoxFuture, CallerAuth, Credential, Realtime, Target, protocol, relay,
};
use crate::broker::{Broker, Caller, ErrorReply, subject_hash};
use crate::config::{AppSyncAuth, AppSyncConfig};
use crate::identity::Issued;
use crate::metrics::Surface;
use crate::oidc::VerifiedToken;

/// Real time of the default API.
pub const DEFAULT_REALTIME_PATH: &str = "/appsync/realtime";
/// Real time of a named API.
pub const API_REALTIME_PATH: &str = "/appsync/{api}/realtime";

/// Where relays run and what stops them (the main listener's).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Cancelled at shutdown: every relay closes its client with 1001.
    pub shutdown: CancellationToken,
    /// Tracks the relays, so shutdown waits for them (within `server.shutdown_grace`).
    pub tasks: TaskTracker,
}

#[derive(Clone)]
struct AppState {
    broker: Arc<Broker>,
    realtime: Arc<Realtime>,
    tasks: TaskTracker,
}

/// The real-time routes, merged into the main listener's router.
pub fn router(broker: Arc<Broker>, config: &AppSyncConfig, lifecycle: Lifecycle) -> Router {
    let realtime = Arc::new(Realtime::new(
        config,
        broker.metrics.clone(),
        broker.clock().clone(),
        lifecycle.shutdown,
    ));
    let state = AppState {
        broker,
        realtime,
        tasks: lifecycle.tasks,
    };
    Router::new()
        .route(DEFAULT_REALTIME_PATH, any(default_api))
        .route("/appsync/graphql/realtime", any(default_api))
        .route(API_REALTIME_PATH, any(named_api))
        .route("/appsync/{api}/graphql/realtime", any(named_api))
        .with_state(state)
}

async fn default_api(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
) -> Response {
    measured(&state, None, request).await
}

async fn named_api(
    axum::extract::State(state): axum::extract::State<AppState>,
    api: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Response {
    match api {
        Ok(Path(api)) => measured(&state, Some(api), request).await,
        Err(_) => refusal(&client_reply(
            404,
            "NoSuchApi",
            "the API name in the path is not valid UTF-8 once percent-decoded",
        )),
    }
}

async fn measured(state: &AppState, api: Option<String>, request: Request) -> Response {
    let started = Instant::now();
    let (mut parts, _body) = request.into_parts();
    let response = upgrade(state, api.as_deref(), &mut parts).await;
    state
        .broker
        .record_request(Surface::Appsync, response.status().as_str(), started);
    response
}

/// The checks, then the upgrade (see the module docs).
async fn upgrade(state: &AppState, api_name: Option<&str>, parts: &mut Parts) -> Response {
    if parts.method != Method::GET {
        let mut r = refusal(&client_reply(
            405,
            "MethodNotAllowed",
            "open real-time connections with a WebSocket upgrade (GET)",
        ));
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if let Some(refused) = forwarded_refusal(&parts.headers) {
        return refused;
    }
    let Some(target) = state.realtime.target(api_name).cloned() else {
        return no_such_api(&state.realtime, api_name);
    };
    let Ok(ws) = WebSocketUpgrade::from_request_parts(parts, &()).await else {
        return refusal(&client_reply(
            426,
            "UpgradeRequired",
            "this path serves AppSync real time: send a WebSocket upgrade (Connection: \
             Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13) with subprotocol \
             graphql-ws",
        ));
    };
    let answer = admit(state, &target, &ws, parts).await;
    let outcome = match &answer {
        Ok(_) => "ok",
        Err((outcome, _)) => outcome,
    };
    state
        .broker
        .metrics
        .appsync_realtime_upgrades
        .with_label_values(&[&target.name, outcome])
        .inc();
    match answer {
        Ok(params) => accept(state, ws, params),
        Err((_, reply)) => {
            tracing::debug!(api = %target.name, code = reply.code, "appsync real-time upgrade refused");
            let mut response = refusal(&reply);
            if reply.status == 426 {
                response
                    .headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            response
        }
    }
}

/// A refusal with its `upgrades_total` outcome.
type Refusal = (&'static str, ErrorReply);

/// Everything after the upgrade request was recognised: protocol, caller, limits, credentials.
async fn admit(
    state: &AppState,
    target: &Arc<Target>,
    ws: &WebSocketUpgrade,
    parts: &Parts,
) -> Result<relay::Params, Refusal> {
    let offered: Vec<&HeaderValue> = ws.requested_protocols().collect();
    if !offered.is_empty() && !offered.iter().any(|p| *p == protocol::SUBPROTOCOL) {
        let m = "offer the graphql-ws subprotocol (AppSync's real-time protocol)";
        return Err((
            "bad_request",
            client_reply(400, "UnsupportedSubprotocol", m),
        ));
    }
    let token = downstream_token(&parts.headers, ws, parts.uri.query())
        .map_err(|reply| (outcome_of(&reply), reply))?;
    let broker = &state.broker;
    let caller = broker
        .authenticate(&token)
        .await
        .map_err(|e| ("unauthenticated", e.reply()))?;
    let upstream_token = caller.token.clone();
    if caller.session.is_none() || target.auth == AppSyncAuth::Oidc {
        expiring_check(state, &upstream_token)?;
    }
    let key = subject_hash(
        &upstream_token.provider.config.issuer,
        &caller.token.subject,
    );
    let admitted = state.realtime.admission.admit(key).map_err(too_many)?;
    let credential = match target.auth {
        AppSyncAuth::Oidc => id_token_credential(&upstream_token),
        AppSyncAuth::Iam => {
            let issued = broker
                .credentials_for_token(&upstream_token, caller.role.as_deref(), Surface::Appsync)
                .await
                .map_err(|e| ("credentials", e.reply()))?;
            iam_credential(&issued)
        }
    };
    let auth = Arc::new(BrokerAuth {
        broker: broker.clone(),
        caller,
        mode: target.auth,
    });
    Ok(relay::Params {
        target: target.clone(),
        auth,
        credential,
        admitted,
    })
}

fn outcome_of(reply: &ErrorReply) -> &'static str {
    if reply.status == 401 {
        "unauthenticated"
    } else {
        "bad_request"
    }
}

/// A token forwarded (or used for credentials) must outlive `appsync.token_expiry_margin`.
fn expiring_check(state: &AppState, token: &VerifiedToken) -> Result<(), Refusal> {
    let margin = state.realtime.token_expiry_margin;
    let now = state.broker.clock().now();
    let remaining = crate::clock::saturating_sub(token.expires_at, now);
    if remaining <= margin {
        let e = ForwardError::TokenExpiringSoon { remaining, margin };
        return Err(("unauthenticated", e.reply()));
    }
    Ok(())
}

fn too_many(full: Full) -> Refusal {
    let reply = match full {
        Full::Total(n) => ErrorReply {
            status: 503,
            code: "TooManyConnections",
            message: format!(
                "credbroker holds appsync.realtime.max_connections ({n}) real-time connections; \
                 retry shortly"
            ),
            retry_after: Some(1),
        },
        Full::PerIdentity(n) => ErrorReply {
            status: 429,
            code: "TooManyConnections",
            message: format!(
                "this user already holds appsync.realtime.max_connections_per_identity ({n}) \
                 real-time connections; one connection carries up to \
                 max_subscriptions_per_connection subscriptions"
            ),
            retry_after: None,
        },
    };
    ("too_many", reply)
}

/// Completes the upgrade and runs the relay on the listeners' tracker.
fn accept(state: &AppState, ws: WebSocketUpgrade, params: relay::Params) -> Response {
    let max = state.realtime.config.max_message_bytes;
    let shared = state.realtime.clone();
    let tracked = state.tasks.token();
    ws.protocols([protocol::SUBPROTOCOL])
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(max.saturating_mul(2))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            relay::run(shared, socket, params).await;
            drop(tracked);
        })
}

/// 404 `NoSuchApi`, naming the APIs that are configured.
fn no_such_api(realtime: &Realtime, api_name: Option<&str>) -> Response {
    super::appsync::no_such_api_reply(&realtime.names(), api_name, "realtime")
}

// ---- Where the caller's token is ----

/// The caller's token (an ID token or session handle; empty when none was sent, which the
/// broker answers with `MissingToken`).
fn downstream_token(
    headers: &HeaderMap,
    ws: &WebSocketUpgrade,
    query: Option<&str>,
) -> Result<String, ErrorReply> {
    if headers.contains_key(header::AUTHORIZATION) {
        let token = bearer_token(headers).map_err(|NotAscii| {
            client_reply(
                400,
                "MalformedRequest",
                "the Authorization header is not visible ASCII",
            )
        })?;
        return not_a_signature(token).map(str::to_owned);
    }
    let subprotocol = ws
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .find_map(|p| p.strip_prefix("header-"));
    if let Some(encoded) = subprotocol {
        return from_encoded(encoded, "the header- subprotocol");
    }
    let in_query = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("header="));
    if let Some(encoded) = in_query {
        return from_encoded(encoded, "the header query parameter");
    }
    Ok(String::new())
}

/// The `Authorization` of a base64 JSON header object.
fn from_encoded(encoded: &str, source: &str) -> Result<String, ErrorReply> {
    let text = protocol::header_authorization(encoded).map_err(|problem| {
        let what = match problem {
            HeaderProblem::TooLarge => "is larger than 16 KiB",
            HeaderProblem::NotAnObject => "is not base64-encoded JSON (an object)",
            HeaderProblem::NoAuthorization => "has no Authorization",
            HeaderProblem::NotAString => "has an Authorization that is not a string",
        };
        client_reply(
            400,
            "MalformedRequest",
            format!("{source} {what}; send {{\"Authorization\": <ID token or session handle>}}"),
        )
    })?;
    not_a_signature(strip_bearer(text.trim())).map(str::to_owned)
}

/// A SigV4 `Authorization` is AppSync's IAM form, not something credbroker can verify.
fn not_a_signature(token: &str) -> Result<&str, ErrorReply> {
    if token.starts_with("AWS4-HMAC-SHA256") {
        return Err(client_reply(
            401,
            "MissingToken",
            "send your ID token or session handle as Authorization; credbroker signs for \
             AWS_IAM itself",
        ));
    }
    Ok(token)
}

// ---- How a relay authenticates the caller upstream ----

fn id_token_credential(token: &VerifiedToken) -> Credential {
    Credential::IdToken {
        raw: token.raw.clone(),
        digest: token.digest(),
        expires_at: token.expires_at,
    }
}

fn iam_credential(issued: &Issued) -> Credential {
    Credential::Iam(Credentials::new(
        issued.access_key_id(),
        issued.secret_access_key(),
        Some(issued.session_token().to_owned()),
        Some(issued.expires_at),
        "credbroker",
    ))
}

/// [`CallerAuth`] through the broker: a session's newest token, the identity's current
/// credentials (handed out on the `appsync` surface).
struct BrokerAuth {
    broker: Arc<Broker>,
    caller: Caller,
    mode: AppSyncAuth,
}

impl CallerAuth for BrokerAuth {
    fn current(&self) -> BoxFuture<'_, Result<Credential, AuthError>> {
        Box::pin(async move {
            let token = match &self.caller.session {
                None => self.caller.token.clone(),
                Some(session) => {
                    let now = self.broker.clock().now();
                    let over = session.ended().is_some() || session.revoked().is_cancelled();
                    if over || session.expires_at() <= now {
                        return Err(AuthError::Ended);
                    }
                    session.token()
                }
            };
            match self.mode {
                AppSyncAuth::Oidc => Ok(id_token_credential(&token)),
                AppSyncAuth::Iam => self
                    .broker
                    .credentials_for_token(&token, self.caller.role.as_deref(), Surface::Appsync)
                    .await
                    .map(|issued| iam_credential(&issued))
                    .map_err(|e| AuthError::Unavailable(e.to_string())),
            }
        })
    }

    fn lost(&self) -> BoxFuture<'static, ()> {
        match &self.caller.session {
            Some(session) => Box::pin(session.revoked().clone().cancelled_owned()),
            None => Box::pin(std::future::pending()),
        }
    }

    fn renewable(&self) -> bool {
        self.caller.session.is_some() || self.mode == AppSyncAuth::Iam
    }

    fn hard_expiry(&self) -> Option<SystemTime> {
        self.caller
            .session
            .is_none()
            .then_some(self.caller.token.expires_at)
    }
}
