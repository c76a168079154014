//! An AWS AppSync GraphQL API emulator.
//!
//! Owns: [`AppSyncEmulator`], an HTTP server at `POST /graphql` (and its real-time WebSocket
//! endpoint) that authenticates requests the way AppSync does for its `OPENID_CONNECT` and
//! `AWS_IAM` authorization modes, executes a tiny owner-scoped schema, counts connections and
//! requests ([`AppSyncStats`]) and injects faults ([`AppSyncFaults`]).
//!
//! Promises:
//! - **One API, two auth modes** (as an API with a default and an additional mode): a request
//!   whose `Authorization` starts with `AWS4-HMAC-SHA256 ` is checked as IAM, any other as OIDC.
//!   A mode that was not configured answers 401 `UnauthorizedException`.
//! - **OIDC** ([`OidcTrust`]): the header must be the raw JWT. `Bearer <jwt>` is not a JWT and
//!   gets AppSync's 401 "Unable to parse JWT token."; `iss` must equal the configured issuer byte
//!   for byte (Auth0's trailing slash included); RS256 signature by a key the issuer publishes
//!   (its JWKS, read in process); `exp` in the future of the injected clock; `aud`/`azp` equal
//!   to the client id when one is configured. The owner is the token's `sub`.
//! - **IAM** ([`AccessKeyLookup`]): SigV4 verified from scratch (not with `aws-sigv4`, so a
//!   mistake in the broker's signing is not mirrored here): scope `<date>/<region>/appsync/
//!   aws4_request`, `host` and `x-amz-date` signed, `X-Amz-Date` within 5 minutes of the clock,
//!   the access key known to the lookup (the emulated Cognito issued it), not expired,
//!   `X-Amz-Security-Token` equal to its session token, and the signature recomputed with its
//!   secret over the canonical request (payload hash included). The owner is the Cognito
//!   identity id. Failures answer 403 with AWS's error types (`UnrecognizedClientException`,
//!   `ExpiredTokenException`, `InvalidSignatureException`, `IncompleteSignatureException`).
//! - Error bodies are AppSync's shape: `{"errors":[{"errorType":…,"message":…}]}`.
//! - **Schema**: `type Todo { id: ID!, content: String!, owner: String! }`,
//!   `listTodos: [Todo]`, `getTodo(id: ID!): Todo`, `createTodo(content: String!): Todo`,
//!   `onCreateTodo(owner: String): Todo` (a subscription, real-time only). Each
//!   owner sees only their own todos (`allow.owner()`): `getTodo` of someone else's todo answers
//!   200 with `data.getTodo = null` and a field-level `errorType: "Unauthorized"`, as AppSync does.
//! - Faults apply in order: latency, then the [`AppSyncFaults::fail_next`] queue (5xx with an
//!   AppSync-shaped body), then authentication and execution.
//! - Tokens, signatures and secrets are never logged.
//!
//! - **Real time** (`realtime`): `GET /graphql/realtime` speaks AppSync's `graphql-ws`
//!   protocol with the same authentication rules (the connect and each `start` authorized on
//!   their own), serves `subscription { onCreateTodo { … } }` fed by `createTodo`, each owner
//!   receiving only their own todos, sends `ka`s, closes connections whose authorization
//!   expires, and has its own faults ([`AppSyncFaults::drop_realtime`] and the others).
//!
//! The GraphQL parser is deliberately minimal: one operation per document (`query`/`mutation`/
//! `subscription` keyword optional, variable definitions skipped), fields with optional aliases,
//! arguments that are string/int/boolean/null literals or `$variables`, nested selection sets.
//! No fragments, directives, lists or objects as arguments; a subscription over HTTP, like
//! anything else unsupported, answers a GraphQL validation error. That covers what the tests and
//! the demo send.
//!
//! Besides `/graphql` and `/graphql/realtime`, `GET /_emulator/stats` returns [`AppSyncStats`]
//! as JSON.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::clock::{Clock, SharedClock, unix_seconds};
use crate::cognito::CognitoEmulator;
use crate::jwt;
use crate::oidc::{IssuerState, OidcIssuer};
use crate::secret::SecretString;
use crate::{ServerHandle, default_listen};

mod realtime;
pub use realtime::ReceivedAuth;

/// How far `X-Amz-Date` may be from the emulator's clock.
const MAX_SIGNATURE_SKEW: Duration = Duration::from_secs(5 * 60);

/// The SigV4 service name of AppSync.
pub const SERVICE: &str = "appsync";

/// What the OIDC mode trusts (AppSync's `openIDConnectConfig`).
#[derive(Clone)]
pub struct OidcTrust {
    /// The configured issuer; `iss` must equal it byte for byte.
    pub issuer: String,
    /// When set, `aud` (or `azp`) must equal it (AppSync's optional `clientId`).
    pub client_id: Option<String>,
    keys: Arc<IssuerState>,
}

impl OidcTrust {
    /// Trusts `issuer` exactly as it writes `iss`, any audience.
    pub fn for_issuer(issuer: &OidcIssuer) -> Self {
        Self {
            issuer: issuer.issuer().to_owned(),
            client_id: None,
            keys: issuer.key_source(),
        }
    }
}

impl fmt::Debug for OidcTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcTrust")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// What the emulator knows about an access key: what real AWS looks up to verify SigV4.
#[derive(Debug, Clone)]
pub struct KnownKey {
    /// The secret the signature must be made with.
    pub secret_key: SecretString,
    /// The session token the request must carry as `X-Amz-Security-Token`.
    pub session_token: SecretString,
    /// After this, requests are refused with `ExpiredTokenException`.
    pub expiration: SystemTime,
    /// The Cognito identity id (the owner of todos).
    pub identity_id: String,
}

/// Finds the secret behind an access key id.
pub trait AccessKeyLookup: Send + Sync + 'static {
    /// The key's secret, session token, expiry and identity, if it was issued.
    fn lookup(&self, access_key_id: &str) -> Option<KnownKey>;
}

impl AccessKeyLookup for CognitoEmulator {
    fn lookup(&self, access_key_id: &str) -> Option<KnownKey> {
        self.lookup_access_key(access_key_id).map(|c| KnownKey {
            secret_key: c.secret_key,
            session_token: c.session_token,
            expiration: c.expiration,
            identity_id: c.identity_id,
        })
    }
}

impl<F> AccessKeyLookup for F
where
    F: Fn(&str) -> Option<KnownKey> + Send + Sync + 'static,
{
    fn lookup(&self, access_key_id: &str) -> Option<KnownKey> {
        self(access_key_id)
    }
}

/// How to start an [`AppSyncEmulator`].
#[derive(Clone)]
pub struct AppSyncOptions {
    /// Where to listen. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The API's region (the SigV4 scope). Default `us-east-1`.
    pub region: String,
    /// OIDC mode, when enabled.
    pub oidc: Option<OidcTrust>,
    /// IAM mode, when enabled.
    pub iam: Option<Arc<dyn AccessKeyLookup>>,
    /// How often the real-time endpoint sends `ka` on an acknowledged connection. Default
    /// 60 s.
    pub realtime_ka_interval: Duration,
}

impl Default for AppSyncOptions {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            region: "us-east-1".to_owned(),
            oidc: None,
            iam: None,
            realtime_ka_interval: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for AppSyncOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSyncOptions")
            .field("listen", &self.listen)
            .field("region", &self.region)
            .field("oidc", &self.oidc)
            .field("iam", &self.iam.is_some())
            .field("realtime_ka_interval", &self.realtime_ka_interval)
            .finish()
    }
}

impl AppSyncOptions {
    /// Both modes: OIDC trusting `issuer`, IAM trusting what `cognito` issued.
    pub fn for_emulators(issuer: &OidcIssuer, cognito: &CognitoEmulator) -> Self {
        Self {
            region: cognito.region().to_owned(),
            oidc: Some(OidcTrust::for_issuer(issuer)),
            iam: Some(Arc::new(cognito.clone())),
            ..Self::default()
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSyncStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Requests to `/graphql`, whatever their outcome.
    pub requests: u64,
    /// Requests authenticated with an ID token.
    pub oidc_authorized: u64,
    /// Requests authenticated with SigV4.
    pub iam_authorized: u64,
    /// Requests refused (401/403).
    pub unauthorized: u64,
    /// Injected 5xx answers.
    pub injected_failures: u64,
    /// WebSocket upgrades accepted at `/graphql/realtime`.
    pub realtime_connections: u64,
    /// Real-time connections whose connect authorization verified.
    pub realtime_authorized: u64,
    /// Real-time connections answered with `connection_error` (authorization refused).
    pub realtime_refused: u64,
    /// Subscriptions started (`start_ack` sent).
    pub realtime_starts: u64,
    /// `start`s answered with an `error`.
    pub realtime_starts_refused: u64,
    /// `data` messages sent.
    pub realtime_events: u64,
    /// Real-time connections closed because their connect authorization expired.
    pub realtime_expired: u64,
    /// Real-time sockets open now.
    pub realtime_open: u64,
}

/// Fault injection.
#[derive(Debug)]
pub struct AppSyncFaults {
    state: Mutex<FaultState>,
    /// Commands to every open real-time socket.
    realtime: tokio::sync::broadcast::Sender<realtime::Control>,
}

impl Default for AppSyncFaults {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            realtime: tokio::sync::broadcast::channel(16).0,
        }
    }
}

#[derive(Debug, Default)]
struct FaultState {
    latency: Duration,
    queue: VecDeque<(u16, u32)>,
    /// Delay before each real-time `connection_ack` and `start_ack`.
    realtime_ack_delay: Duration,
    /// Real-time connections still to refuse with `connection_error` 401.
    realtime_refusals: u32,
}

impl AppSyncFaults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delays every `/graphql` answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The next `count` requests answer `status` (a 5xx) with an AppSync-shaped error body.
    pub fn fail_next(&self, status: u16, count: u32) {
        if count > 0 {
            self.lock().queue.push_back((status, count));
        }
    }

    /// Removes every fault.
    pub fn clear(&self) {
        *self.lock() = FaultState::default();
    }

    /// Real-time: aborts every open socket at once, without a close frame (a network drop).
    pub fn drop_realtime(&self) {
        let _ = self.realtime.send(realtime::Control::Drop);
    }

    /// Real-time: delays every `connection_ack` and `start_ack` by `delay`.
    pub fn realtime_ack_delay(&self, delay: Duration) {
        self.lock().realtime_ack_delay = delay;
    }

    /// Real-time: treats the connect authorization of every open socket as expired now
    /// (`connection_error` "Token has expired.", then close 1000).
    pub fn expire_realtime_auth(&self) {
        let _ = self.realtime.send(realtime::Control::Expire);
    }

    /// Real-time: the next `count` connections are refused with `connection_error` 401,
    /// whatever their authorization.
    pub fn refuse_next_realtime(&self, count: u32) {
        self.lock().realtime_refusals += count;
    }

    /// Real-time: closes every open socket with `code` and `reason`.
    pub fn close_realtime(&self, code: u16, reason: &str) {
        let _ = self
            .realtime
            .send(realtime::Control::Close(code, reason.to_owned()));
    }

    fn take_realtime_refusal(&self) -> bool {
        let mut state = self.lock();
        let refuse = state.realtime_refusals > 0;
        state.realtime_refusals = state.realtime_refusals.saturating_sub(1);
        refuse
    }

    fn next_failure(&self) -> Option<u16> {
        let mut state = self.lock();
        let (status, remaining) = state.queue.front_mut()?;
        let status = *status;
        *remaining -= 1;
        if *remaining == 0 {
            state.queue.pop_front();
        }
        Some(status)
    }
}

/// One stored todo.
#[derive(Debug, Clone)]
struct Todo {
    id: String,
    content: String,
    owner: String,
}

struct AppSyncState {
    url: String,
    /// `host:port` the API is served at: the `host` real-time authorizations must name.
    authority: String,
    region: String,
    oidc: Mutex<Option<OidcTrust>>,
    iam: Option<Arc<dyn AccessKeyLookup>>,
    clock: SharedClock,
    todos: Mutex<Vec<Todo>>,
    next_id: AtomicU64,
    connections: Arc<AtomicU64>,
    stats: Mutex<AppSyncStats>,
    faults: AppSyncFaults,
    /// Header names (never values) of the last `/graphql` request.
    last_header_names: Mutex<Vec<String>>,
    /// The real-time endpoint's shared state.
    realtime: realtime::Realtime,
}

/// A running AppSync emulator. Clones share it; it stops on [`AppSyncEmulator::shutdown`] or
/// when the last clone is dropped.
#[derive(Clone)]
pub struct AppSyncEmulator {
    state: Arc<AppSyncState>,
    server: ServerHandle,
    /// Closes the real-time sockets when the last clone is dropped.
    _realtime: Arc<tokio_util::sync::DropGuard>,
}

impl fmt::Debug for AppSyncEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSyncEmulator")
            .field("url", &self.state.url)
            .finish()
    }
}

impl AppSyncEmulator {
    /// Binds `options.listen` and serves `/graphql`.
    pub async fn start(options: AppSyncOptions, clock: impl Clock) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(options.listen).await?;
        let authority = listener.local_addr()?.to_string();
        let url = format!("http://{authority}/graphql");
        let connections = Arc::new(AtomicU64::new(0));
        let realtime = realtime::Realtime::new(options.realtime_ka_interval);
        let guard = Arc::new(realtime.cancel.clone().drop_guard());
        let state = Arc::new(AppSyncState {
            url,
            authority,
            region: options.region,
            oidc: Mutex::new(options.oidc),
            iam: options.iam,
            clock: crate::clock::shared(clock),
            todos: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            connections: connections.clone(),
            stats: Mutex::new(AppSyncStats::default()),
            faults: AppSyncFaults::default(),
            last_header_names: Mutex::new(Vec::new()),
            realtime,
        });
        let server = crate::serve_counting(listener, routes(state.clone()), connections)?;
        Ok(Self {
            state,
            server,
            _realtime: guard,
        })
    }

    /// `ws://127.0.0.1:PORT/graphql/realtime`: the API's real-time endpoint (what credbroker
    /// derives from [`AppSyncEmulator::url`]: a custom domain's `/graphql/realtime`).
    pub fn realtime_url(&self) -> String {
        format!("ws://{}{}", self.state.authority, realtime::PATH)
    }

    /// What each real-time `start` carried in `extensions.authorization`: key names and
    /// SHA-256 digests of the values, never the values.
    pub fn received_start_authorizations(&self) -> Vec<realtime::ReceivedAuth> {
        lock(&self.state.realtime.received_start).clone()
    }

    /// What each real-time connect carried as its header (the `header-` subprotocol or
    /// `?header=`), in the same form.
    pub fn received_connect_authorizations(&self) -> Vec<realtime::ReceivedAuth> {
        lock(&self.state.realtime.received_connect).clone()
    }

    /// `http://127.0.0.1:PORT/graphql`: the API's GraphQL URL.
    pub fn url(&self) -> &str {
        &self.state.url
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.state.region
    }

    /// The counters.
    pub fn stats(&self) -> AppSyncStats {
        self.state.stats()
    }

    /// Fault injection.
    pub fn faults(&self) -> &AppSyncFaults {
        &self.state.faults
    }

    /// Every stored todo's owner (for tests: who wrote what, without asking as that user).
    pub fn owners(&self) -> Vec<String> {
        lock(&self.state.todos)
            .iter()
            .map(|t| t.owner.clone())
            .collect()
    }

    /// Sets the OIDC mode's client id (AppSync's optional `clientId`: `aud`/`azp` must equal
    /// it). No effect when OIDC mode is off.
    pub fn set_oidc_client_id(&self, client_id: Option<&str>) {
        if let Some(trust) = lock(&self.state.oidc).as_mut() {
            trust.client_id = client_id.map(str::to_owned);
        }
    }

    /// The header names (lowercase, never values) of the last `/graphql` request, to check what
    /// a proxy forwarded.
    pub fn last_header_names(&self) -> Vec<String> {
        lock(&self.state.last_header_names).clone()
    }

    /// Stops the HTTP server and closes every real-time socket (1001). Idempotent.
    pub fn shutdown(&self) {
        self.server.shutdown();
        self.state.realtime.cancel.cancel();
    }

    /// Resolves once the HTTP server has stopped.
    pub async fn stopped(&self) {
        self.server.stopped().await;
    }
}

impl AppSyncState {
    fn stats(&self) -> AppSyncStats {
        let mut stats = lock(&self.stats).clone();
        stats.connections = self.connections.load(Ordering::Relaxed);
        stats.realtime_open = self.realtime.open.load(Ordering::Relaxed);
        stats
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn routes(state: Arc<AppSyncState>) -> Router {
    Router::new()
        .route("/graphql", post(graphql))
        .route(realtime::PATH, get(realtime::upgrade))
        .route(
            "/_emulator/stats",
            get(|State(s): State<Arc<AppSyncState>>| async move { axum::Json(s.stats()) }),
        )
        .with_state(state)
}

/// An AppSync-shaped error answer.
fn error(status: u16, error_type: &str, message: &str) -> Response {
    let body = json!({ "errors": [ { "errorType": error_type, "message": message } ] });
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    if let Ok(v) = HeaderValue::from_str(error_type) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

fn json_ok(body: Value) -> Response {
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

/// Who a request was authenticated as.
enum Principal {
    Oidc(String),
    Iam(String),
}

async fn graphql(
    State(state): State<Arc<AppSyncState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lock(&state.stats).requests += 1;
    *lock(&state.last_header_names) = headers.keys().map(|k| k.as_str().to_owned()).collect();
    let latency = state.faults.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = state.faults.next_failure() {
        lock(&state.stats).injected_failures += 1;
        return error(
            status,
            "InternalFailure",
            "An internal failure occurred (injected by the emulator).",
        );
    }
    let principal = match authenticate(&state, &method, &uri, &headers, &body) {
        Ok(p) => p,
        Err(denied) => {
            lock(&state.stats).unauthorized += 1;
            tracing::debug!(
                error_type = denied.error_type,
                "appsync emulator refused a request"
            );
            return error(denied.status, denied.error_type, &denied.message);
        }
    };
    let owner = match principal {
        Principal::Oidc(sub) => {
            lock(&state.stats).oidc_authorized += 1;
            sub
        }
        Principal::Iam(identity) => {
            lock(&state.stats).iam_authorized += 1;
            identity
        }
    };
    json_ok(execute(&state, &owner, &body))
}

/// An authentication failure as AppSync reports it.
#[derive(Debug)]
struct Denied {
    status: u16,
    error_type: &'static str,
    message: String,
}

impl Denied {
    fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: 401,
            error_type: "UnauthorizedException",
            message: message.into(),
        }
    }

    fn forbidden(error_type: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: 403,
            error_type,
            message: message.into(),
        }
    }
}

fn authenticate(
    state: &AppSyncState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Principal, Denied> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Denied::unauthorized("Missing authorization header"));
    };
    let Ok(value) = value.to_str() else {
        return Err(Denied::unauthorized("Unable to parse JWT token."));
    };
    if value.starts_with("AWS4-HMAC-SHA256 ") {
        let Some(lookup) = &state.iam else {
            return Err(Denied::unauthorized(
                "Valid authorization header not provided.",
            ));
        };
        let now = state.clock.now();
        return verify_sigv4(
            lookup.as_ref(),
            &state.region,
            now,
            method,
            uri,
            headers,
            body,
        )
        .map(Principal::Iam);
    }
    let Some(trust) = lock(&state.oidc).clone() else {
        return Err(Denied::unauthorized(
            "Valid authorization header not provided.",
        ));
    };
    verify_jwt(&trust, value, unix_seconds(state.clock.now())).map(Principal::Oidc)
}

/// OIDC: the header value must be the JWT itself.
fn verify_jwt(trust: &OidcTrust, token: &str, now: i64) -> Result<String, Denied> {
    verify_jwt_claims(trust, token, now).map(|(sub, _)| sub)
}

/// [`verify_jwt`], also returning when the token expires.
fn verify_jwt_claims(
    trust: &OidcTrust,
    token: &str,
    now: i64,
) -> Result<(String, SystemTime), Denied> {
    let unparseable = || Denied::unauthorized("Unable to parse JWT token.");
    let decoded = jwt::decode(token).map_err(|_| unparseable())?;
    if decoded.alg() != Some("RS256") {
        return Err(unparseable());
    }
    let iss = decoded.claims.get("iss").and_then(Value::as_str);
    if iss != Some(trust.issuer.as_str()) {
        return Err(Denied::unauthorized("Token has invalid issuer."));
    }
    let verified = decoded
        .kid()
        .and_then(|kid| trust.keys.verifying_key(kid))
        .is_some_and(|key| jwt::verify_rs256(&key, &decoded.signing_input, &decoded.signature));
    if !verified {
        return Err(Denied::unauthorized("Token signature is invalid."));
    }
    let exp = decoded
        .claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or_else(unparseable)?;
    if (now as f64) >= exp {
        return Err(Denied::unauthorized("Token has expired."));
    }
    if let Some(client_id) = &trust.client_id {
        let matches = |v: &Value| v.as_str() == Some(client_id.as_str());
        let ok = match (decoded.claims.get("azp"), decoded.claims.get("aud")) {
            (Some(azp), _) => matches(azp),
            (None, Some(Value::Array(auds))) => auds.iter().any(matches),
            (None, Some(aud)) => matches(aud),
            (None, None) => false,
        };
        if !ok {
            return Err(Denied::unauthorized("Token has invalid audience."));
        }
    }
    // `exp` is a whole number of seconds in practice; a fraction is dropped.
    #[allow(clippy::cast_possible_truncation)]
    let expires_at = crate::clock::from_unix_seconds(exp as i64);
    match decoded.claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => Ok((sub.clone(), expires_at)),
        _ => Err(unparseable()),
    }
}

/// The parts of a SigV4 `Authorization` header.
struct SigV4Header<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_sigv4_header(value: &str) -> Option<SigV4Header<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return None,
        }
    }
    let mut scope = credential?.split('/');
    let header = SigV4Header {
        access_key_id: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    };
    (scope.next()? == "aws4_request" && scope.next().is_none()).then_some(header)
}

/// Parses `YYYYMMDDTHHMMSSZ`.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant), the inverse of credbroker's `clock::format_aws_timestamp`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(crate::clock::from_unix_seconds(secs))
}

/// RFC 3986 percent-encoding of everything but unreserved characters (and `/` when asked).
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies a SigV4-signed request; returns the identity id of the credentials.
fn verify_sigv4(
    lookup: &dyn AccessKeyLookup,
    region: &str,
    now: SystemTime,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Denied> {
    verify_sigv4_key(lookup, region, now, method, uri, headers, body).map(|k| k.identity_id)
}

/// [`verify_sigv4`], returning what is known about the access key that signed.
fn verify_sigv4_key(
    lookup: &dyn AccessKeyLookup,
    region: &str,
    now: SystemTime,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<KnownKey, Denied> {
    let incomplete = |m: &str| Denied::forbidden("IncompleteSignatureException", m);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let parsed = parse_sigv4_header(authorization).ok_or_else(|| {
        incomplete("Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'.")
    })?;
    let amz_date_text = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| incomplete("Authorization header requires existence of an X-Amz-Date."))?;
    let amz_date = parse_amz_date(amz_date_text)
        .ok_or_else(|| incomplete("X-Amz-Date is not in the ISO 8601 basic format."))?;
    if !parsed.signed_headers.contains(&"host") || !parsed.signed_headers.contains(&"x-amz-date") {
        return Err(incomplete("host and x-amz-date must be signed headers."));
    }
    if amz_date_text.get(..8) != Some(parsed.date) {
        return Err(Denied::forbidden(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
             from HTTP.",
        ));
    }
    if parsed.service != SERVICE || parsed.region != region {
        return Err(Denied::forbidden(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid region and service ('{region}', \
                 '{SERVICE}')."
            ),
        ));
    }
    let skew = now
        .duration_since(amz_date)
        .or_else(|_| amz_date.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SIGNATURE_SKEW {
        return Err(Denied::forbidden(
            "InvalidSignatureException",
            "Signature expired: the X-Amz-Date is more than 5 minutes from the server's time.",
        ));
    }
    let invalid_token = || {
        Denied::forbidden(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    };
    let known = lookup
        .lookup(parsed.access_key_id)
        .ok_or_else(invalid_token)?;
    let token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(invalid_token)?;
    if !known.session_token.ct_eq(token) {
        return Err(invalid_token());
    }
    if now >= known.expiration {
        return Err(Denied::forbidden(
            "ExpiredTokenException",
            "The security token included in the request is expired",
        ));
    }
    if !parsed.signed_headers.contains(&"x-amz-security-token") {
        return Err(incomplete("x-amz-security-token must be a signed header."));
    }

    // The canonical request, built from what was received.
    let mut canonical_headers = String::new();
    for name in &parsed.signed_headers {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(incomplete("a signed header is missing from the request."));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let mut query: Vec<(String, String)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(k, false), uri_encode(v, false))
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let payload_hash = hex(&Sha256::digest(body));
    let canonical_request = format!(
        "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed}\n{payload_hash}",
        path = uri_encode(uri.path(), true),
        signed = parsed.signed_headers.join(";"),
    );
    let scope = format!("{}/{region}/{SERVICE}/aws4_request", parsed.date);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date_text}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(
        format!("AWS4{}", known.secret_key.expose_str()).as_bytes(),
        parsed.date.as_bytes(),
    );
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, SERVICE.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let expected = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    if !bool::from(expected.as_bytes().ct_eq(parsed.signature.as_bytes())) {
        return Err(Denied::forbidden(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.",
        ));
    }
    Ok(known)
}

// ---------------------------------------------------------------------------------------------
// The tiny GraphQL engine.

/// A GraphQL validation error answer (HTTP 200, `data: null`), as AppSync sends them.
fn validation_error(message: impl Into<String>) -> Value {
    json!({
        "data": null,
        "errors": [ { "errorType": "ValidationError", "message": message.into() } ]
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Var(String),
    Str(String),
    Int(i64),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() || c == ',' => {
                chars.next();
            }
            '#' => while chars.next().is_some_and(|c| c != '\n') {},
            '{' | '}' | '(' | ')' | ':' | '!' | '[' | ']' | '=' => {
                out.push(Token::Punct(c));
                chars.next();
            }
            '$' => {
                chars.next();
                out.push(Token::Var(take_name(&mut chars)));
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string".to_owned()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(other) => s.push(other),
                            None => return Err("unterminated string".to_owned()),
                        },
                        Some(other) => s.push(other),
                    }
                }
                out.push(Token::Str(s));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let mut s = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_digit() || d == '-' {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Int(
                    s.parse().map_err(|_| format!("bad number {s:?}"))?,
                ));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                out.push(Token::Name(take_name(&mut chars)))
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

fn take_name(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut s = String::new();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' {
            s.push(c);
            chars.next();
        } else {
            break;
        }
    }
    s
}

/// A field in a selection set.
#[derive(Debug, Clone)]
struct Field {
    alias: Option<String>,
    name: String,
    args: Vec<(String, Value)>,
    selection: Vec<Field>,
}

impl Field {
    fn key(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }

    fn arg(&self, name: &str) -> Option<&Value> {
        self.args.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// The operation type of a GraphQL document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OperationKind {
    Query,
    Mutation,
    Subscription,
}

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    variables: &'a Map<String, Value>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        match self.next() {
            Some(Token::Punct(p)) if p == c => Ok(()),
            other => Err(format!("expected '{c}', found {other:?}")),
        }
    }

    /// `[query|mutation|subscription [Name] [(…)]] { … }` → (kind, fields).
    fn operation(&mut self) -> Result<(OperationKind, Vec<Field>), String> {
        let mut kind = OperationKind::Query;
        if let Some(Token::Name(word)) = self.peek() {
            kind = match word.as_str() {
                "query" => OperationKind::Query,
                "mutation" => OperationKind::Mutation,
                "subscription" => OperationKind::Subscription,
                other => return Err(format!("unsupported definition {other:?}")),
            };
            self.pos += 1;
            if let Some(Token::Name(_)) = self.peek() {
                self.pos += 1;
            }
            if self.peek() == Some(&Token::Punct('(')) {
                // Variable definitions: skipped (values come from "variables").
                let mut depth = 0;
                loop {
                    match self.next() {
                        Some(Token::Punct('(')) => depth += 1,
                        Some(Token::Punct(')')) => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        None => return Err("unterminated variable definitions".to_owned()),
                        _ => {}
                    }
                }
            }
        }
        let fields = self.selection_set()?;
        if self.peek().is_some() {
            return Err("only one operation per document is supported".to_owned());
        }
        Ok((kind, fields))
    }

    fn selection_set(&mut self) -> Result<Vec<Field>, String> {
        self.expect('{')?;
        let mut fields = Vec::new();
        loop {
            match self.next() {
                Some(Token::Punct('}')) => break,
                Some(Token::Name(first)) => {
                    let (alias, name) = if self.peek() == Some(&Token::Punct(':')) {
                        self.pos += 1;
                        match self.next() {
                            Some(Token::Name(n)) => (Some(first), n),
                            other => return Err(format!("expected a field name, found {other:?}")),
                        }
                    } else {
                        (None, first)
                    };
                    let mut args = Vec::new();
                    if self.peek() == Some(&Token::Punct('(')) {
                        self.pos += 1;
                        loop {
                            match self.next() {
                                Some(Token::Punct(')')) => break,
                                Some(Token::Name(arg)) => {
                                    self.expect(':')?;
                                    let value = self.value()?;
                                    args.push((arg, value));
                                }
                                other => {
                                    return Err(format!("expected an argument, found {other:?}"));
                                }
                            }
                        }
                    }
                    let selection = if self.peek() == Some(&Token::Punct('{')) {
                        self.selection_set()?
                    } else {
                        Vec::new()
                    };
                    fields.push(Field {
                        alias,
                        name,
                        args,
                        selection,
                    });
                }
                other => return Err(format!("expected a field, found {other:?}")),
            }
        }
        if fields.is_empty() {
            return Err("empty selection set".to_owned());
        }
        Ok(fields)
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Value::String(s)),
            Some(Token::Int(n)) => Ok(Value::from(n)),
            Some(Token::Var(v)) => Ok(self.variables.get(&v).cloned().unwrap_or(Value::Null)),
            Some(Token::Name(n)) if n == "true" => Ok(Value::Bool(true)),
            Some(Token::Name(n)) if n == "false" => Ok(Value::Bool(false)),
            Some(Token::Name(n)) if n == "null" => Ok(Value::Null),
            other => Err(format!("unsupported argument value {other:?}")),
        }
    }
}

#[derive(Deserialize)]
struct GraphQlRequest {
    query: String,
    #[serde(default)]
    variables: Option<Map<String, Value>>,
}

fn execute(state: &AppSyncState, owner: &str, body: &[u8]) -> Value {
    let request: GraphQlRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return validation_error(format!("Unable to parse the request body: {e}")),
    };
    let variables = request.variables.unwrap_or_default();
    let tokens = match tokenize(&request.query) {
        Ok(t) => t,
        Err(e) => return validation_error(format!("Invalid syntax: {e}")),
    };
    let mut parser = Parser {
        tokens,
        pos: 0,
        variables: &variables,
    };
    let (kind, fields) = match parser.operation() {
        Ok(op) => op,
        Err(e) => return validation_error(format!("Invalid syntax: {e}")),
    };
    if kind == OperationKind::Subscription {
        return validation_error(
            "Subscriptions are served over the real-time WebSocket endpoint, not over HTTP.",
        );
    }
    let mutation = kind == OperationKind::Mutation;
    let mut data = Map::new();
    let mut errors = Vec::new();
    for field in &fields {
        let value = match (mutation, field.name.as_str()) {
            (_, "__typename") => Ok(json!(if mutation { "Mutation" } else { "Query" })),
            (false, "listTodos") => {
                let todos = lock(&state.todos);
                let mine: Vec<&Todo> = todos.iter().filter(|t| t.owner == owner).collect();
                mine.into_iter()
                    .map(|t| project(t, &field.selection))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            (false, "getTodo") => {
                let id = field.arg("id").and_then(Value::as_str).unwrap_or_default();
                let todos = lock(&state.todos);
                match todos.iter().find(|t| t.id == id) {
                    None => Ok(Value::Null),
                    Some(t) if t.owner == owner => project(t, &field.selection),
                    Some(_) => {
                        errors.push(json!({
                            "path": [field.key()],
                            "data": null,
                            "errorType": "Unauthorized",
                            "errorInfo": null,
                            "locations": [],
                            "message": "Not Authorized to access getTodo on type Query",
                        }));
                        Ok(Value::Null)
                    }
                }
            }
            (true, "createTodo") => match field.arg("content") {
                Some(Value::String(content)) => {
                    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
                    let todo = Todo {
                        id: format!("todo-{n}"),
                        content: content.clone(),
                        owner: owner.to_owned(),
                    };
                    let value = project(&todo, &field.selection);
                    if value.is_ok() {
                        // Published while the lock is held: subscribers see creation order.
                        let mut todos = lock(&state.todos);
                        let _ = state.realtime.events.send(todo.clone());
                        todos.push(todo);
                    }
                    value
                }
                _ => Err(
                    "Validation error of type WrongType: argument 'content' of createTodo must \
                     be a String!"
                        .to_owned(),
                ),
            },
            (m, name) => Err(format!(
                "Validation error of type FieldUndefined: Field '{name}' in type '{}' is \
                 undefined",
                if m { "Mutation" } else { "Query" }
            )),
        };
        match value {
            Ok(v) => {
                data.insert(field.key().to_owned(), v);
            }
            Err(message) => return validation_error(message),
        }
    }
    if errors.is_empty() {
        json!({ "data": data })
    } else {
        json!({ "data": data, "errors": errors })
    }
}

fn project(todo: &Todo, selection: &[Field]) -> Result<Value, String> {
    if selection.is_empty() {
        return Err(
            "Validation error of type SubselectionRequired: Sub selection required for type Todo"
                .to_owned(),
        );
    }
    let mut out = Map::new();
    for f in selection {
        let v = match f.name.as_str() {
            "id" => json!(todo.id),
            "content" => json!(todo.content),
            "owner" => json!(todo.owner),
            "__typename" => json!("Todo"),
            other => {
                return Err(format!(
                    "Validation error of type FieldUndefined: Field '{other}' in type 'Todo' is \
                     undefined"
                ));
            }
        };
        out.insert(f.key().to_owned(), v);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_parse_to_the_right_instant() {
        let t = parse_amz_date("20240229T123456Z").expect("valid");
        assert_eq!(
            chrono::DateTime::<chrono::Utc>::from(t)
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
            "2024-02-29T12:34:56Z"
        );
        assert!(parse_amz_date("2024-02-29T12:34:56Z").is_none());
        assert!(parse_amz_date("20241329T123456Z").is_none());
    }

    #[test]
    fn sigv4_header_parsing() {
        let h = parse_sigv4_header(
            "AWS4-HMAC-SHA256 Credential=ASIAX/20240101/us-east-1/appsync/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .expect("parses");
        assert_eq!(
            (h.access_key_id, h.date, h.region, h.service, h.signature),
            ("ASIAX", "20240101", "us-east-1", "appsync", "abc")
        );
        assert_eq!(h.signed_headers, ["host", "x-amz-date"]);
        assert!(parse_sigv4_header("AWS4-HMAC-SHA256 Credential=a/b/c").is_none());
    }

    #[test]
    fn parser_reads_the_supported_shapes() {
        let vars = Map::from_iter([("c".to_owned(), json!("from var"))]);
        let parse = |q: &str| {
            Parser {
                tokens: tokenize(q).expect("lexes"),
                pos: 0,
                variables: &vars,
            }
            .operation()
        };
        let (m, f) = parse("{ listTodos { id owner } }").expect("shorthand");
        assert_eq!(m, OperationKind::Query);
        assert_eq!(f[0].name, "listTodos");
        assert_eq!(f[0].selection.len(), 2);
        let (m, f) =
            parse("mutation Create($c: String!) { made: createTodo(content: $c) { id content } }")
                .expect("mutation");
        assert_eq!(m, OperationKind::Mutation);
        assert_eq!(f[0].key(), "made");
        assert_eq!(f[0].arg("content"), Some(&json!("from var")));
        let (m, f) = parse("subscription S { onCreateTodo(owner: \"x\") { id } }").expect("sub");
        assert_eq!(
            (m, f[0].name.as_str()),
            (OperationKind::Subscription, "onCreateTodo")
        );
        assert!(parse("fragment F on Todo { id }").is_err());
        assert!(parse("{ a } { b }").is_err());
    }
}
