//! The emulated AppSync's real-time endpoint: GraphQL subscriptions over WebSocket.
//!
//! Owns: `GET /graphql/realtime` (what a custom-domain API serves; [`super::AppSyncEmulator::
//! realtime_url`]), AppSync's `graphql-ws` protocol on it, the `onCreateTodo` subscription fed
//! by `createTodo`, and the real-time faults and counters.
//!
//! Promises:
//! - the upgrade must offer the `graphql-ws` subprotocol (else 400); the connect
//!   authorization comes from a `header-<base64url JSON>` subprotocol or `?header=<base64
//!   JSON>&payload=<base64 "{}">` (either base64 alphabet, padded or not, `%XX` decoded);
//! - the authorization JSON is checked like an HTTP request, keys matched case-insensitively:
//!   `host` must name this API (`127.0.0.1:PORT`, never the real-time host); an
//!   `Authorization` starting with `AWS4-HMAC-SHA256 ` is SigV4 verified (by the same
//!   independent verifier as HTTP) over `POST /graphql/connect` with body `{}`, any other is
//!   an OIDC ID token verified as on HTTP. A refused connect is answered (at its first message)
//!   with `connection_error` (`errorType` as on HTTP, `errorCode` 401/403), then close 1000;
//! - `connection_init` gets `connection_ack` (`connectionTimeoutMs` 300000) and an immediate
//!   `ka`, then a `ka` every `realtime_ka_interval`;
//! - each `start` is authorized by its own `extensions.authorization` (IAM: SigV4 over
//!   `POST /graphql` whose body is exactly `payload.data`); its principal owns the
//!   subscription. Only `subscription { onCreateTodo[(owner: …)] { … } }` is served; an
//!   `owner` other than the principal is `Unauthorized`; more than 100 live subscriptions is
//!   `MaxSubscriptionsReachedError`. What each start carried is recorded as key names and
//!   SHA-256 digests ([`ReceivedAuth`]), never values;
//! - every `createTodo` reaches the subscriptions of its owner only, in creation order per
//!   socket (`data` with the subscription's selection of the stored todo);
//! - when the connect authorization expires (the JWT's `exp`, the access key's expiration, on
//!   the injected clock) the socket gets `connection_error` "Token has expired." and close 1000
//!   (AppSync's exact behaviour at expiry is not documented; this is the strict model);
//! - faults ([`super::AppSyncFaults`]): drop every socket without a close frame, delay acks,
//!   expire every connection now, refuse the next connections, close every socket with a code;
//! - the emulator's `shutdown()` closes every socket with 1001.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{
    AppSyncState, Denied, Field, GraphQlRequest, OperationKind, Parser, Todo, lock, project,
    tokenize, verify_jwt_claims, verify_sigv4_key,
};
use crate::clock::{SharedClock, unix_seconds};

/// The path of the real-time endpoint.
pub(super) const PATH: &str = "/graphql/realtime";
/// The one subprotocol AppSync's real-time endpoint speaks.
const SUBPROTOCOL: &str = "graphql-ws";
/// What `connection_ack` advertises.
const CONNECTION_TIMEOUT_MS: u64 = 300_000;
/// Live subscriptions per socket (AppSync's default limit).
pub const MAX_SUBSCRIPTIONS: usize = 100;
/// Todos buffered per socket before it lags.
const EVENT_CAPACITY: usize = 4096;
/// How long a refused socket waits for a first message to answer.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);
/// How long a close waits for the peer's close reply.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A command to every open socket.
#[derive(Debug, Clone)]
pub(super) enum Control {
    Drop,
    Expire,
    Close(u16, String),
}

/// What one authorization object carried: its keys and digests of its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedAuth {
    /// The subscription id (empty for a connect).
    pub id: String,
    /// The keys, as received, sorted.
    pub keys: Vec<String>,
    /// Hex SHA-256 of each string value, by key as received.
    pub sha256: BTreeMap<String, String>,
}

impl ReceivedAuth {
    fn of(id: &str, auth: &Map<String, Value>) -> Self {
        let mut keys: Vec<String> = auth.keys().cloned().collect();
        keys.sort();
        let sha256 = auth
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), sha256_hex(v.as_str()?.as_bytes()))))
            .collect();
        Self {
            id: id.to_owned(),
            keys,
            sha256,
        }
    }
}

/// Hex SHA-256, as [`ReceivedAuth`] records values.
fn sha256_hex(bytes: &[u8]) -> String {
    super::hex(&Sha256::digest(bytes))
}

/// The real-time endpoint's share of the emulator state.
pub(super) struct Realtime {
    pub(super) events: broadcast::Sender<Todo>,
    pub(super) ka_interval: Duration,
    pub(super) received_connect: Mutex<Vec<ReceivedAuth>>,
    pub(super) received_start: Mutex<Vec<ReceivedAuth>>,
    pub(super) open: AtomicU64,
    pub(super) cancel: CancellationToken,
}

impl Realtime {
    pub(super) fn new(ka_interval: Duration) -> Self {
        Self {
            events: broadcast::channel(EVENT_CAPACITY).0,
            ka_interval,
            received_connect: Mutex::new(Vec::new()),
            received_start: Mutex::new(Vec::new()),
            open: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        }
    }
}

/// `GET /graphql/realtime`.
pub(super) async fn upgrade(
    State(state): State<Arc<AppSyncState>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(ws) = ws else {
        return super::error(
            400,
            "BadRequestException",
            "the real-time endpoint needs a WebSocket upgrade",
        );
    };
    let offered: Vec<String> = ws
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .map(str::to_owned)
        .collect();
    if !offered.iter().any(|p| p == SUBPROTOCOL) {
        return super::error(
            400,
            "BadRequestException",
            "the graphql-ws subprotocol is required",
        );
    }
    let header = connect_header(&offered, query.as_deref());
    lock(&state.stats).realtime_connections += 1;
    ws.protocols([SUBPROTOCOL])
        .on_upgrade(move |socket| connection(state, socket, header))
}

/// The connect authorization: the `header-` subprotocol, else `?header=` (with `payload`,
/// which must be `{}` when present).
fn connect_header(offered: &[String], query: Option<&str>) -> Result<Map<String, Value>, Denied> {
    if let Some(encoded) = offered.iter().find_map(|p| p.strip_prefix("header-")) {
        return decode_object(encoded);
    }
    let (mut header, mut payload) = (None, None);
    for pair in query.unwrap_or_default().split('&') {
        if let Some(v) = pair.strip_prefix("header=") {
            header = Some(v);
        } else if let Some(v) = pair.strip_prefix("payload=") {
            payload = Some(v);
        }
    }
    let Some(header) = header else {
        return Err(Denied::unauthorized(
            "Valid authorization header not provided.",
        ));
    };
    if let Some(payload) = payload {
        let empty = decode_b64(payload)
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v == json!({}));
        if !empty {
            return Err(bad_request("The payload query parameter must encode {}."));
        }
    }
    decode_object(header)
}

fn bad_request(message: &str) -> Denied {
    Denied {
        status: 400,
        error_type: "BadRequestException",
        message: message.to_owned(),
    }
}

fn decode_object(encoded: &str) -> Result<Map<String, Value>, Denied> {
    match decode_b64(encoded).and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
        Some(Value::Object(map)) => Ok(map),
        _ => Err(bad_request(
            "The authorization header is not base64-encoded JSON.",
        )),
    }
}

/// base64 or base64url, padded or not, with `%XX` escapes decoded first.
fn decode_b64(text: &str) -> Option<Vec<u8>> {
    let unescaped = percent_decode(text)?;
    let cleaned: String = unescaped
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' | ' ' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(cleaned)
        .ok()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Who an authorization object proved, and until when.
struct Authorized {
    owner: String,
    expires_at: SystemTime,
}

/// Checks one authorization object for `POST <path>` with `body` (see the module docs).
fn authorize(
    state: &AppSyncState,
    auth: &Map<String, Value>,
    path: &'static str,
    body: &[u8],
) -> Result<Authorized, Denied> {
    let get = |name: &str| {
        auth.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    };
    let Some(value) = get("authorization") else {
        return Err(Denied::unauthorized(
            "Valid authorization header not provided.",
        ));
    };
    if get("host") != Some(state.authority.as_str()) {
        return Err(bad_request(
            "The host in the authorization header is not this API's host.",
        ));
    }
    let now = state.clock.now();
    if value.starts_with("AWS4-HMAC-SHA256 ") {
        let Some(lookup) = &state.iam else {
            return Err(Denied::unauthorized(
                "Valid authorization header not provided.",
            ));
        };
        let mut headers = HeaderMap::new();
        for (k, v) in auth {
            let name = HeaderName::from_bytes(k.as_bytes());
            let value = v.as_str().map(HeaderValue::from_str);
            if let (Ok(name), Some(Ok(value))) = (name, value) {
                headers.append(name, value);
            }
        }
        let uri = Uri::from_static(path);
        let key = verify_sigv4_key(
            lookup.as_ref(),
            &state.region,
            now,
            &Method::POST,
            &uri,
            &headers,
            body,
        )?;
        return Ok(Authorized {
            owner: key.identity_id,
            expires_at: key.expiration,
        });
    }
    let Some(trust) = lock(&state.oidc).clone() else {
        return Err(Denied::unauthorized(
            "Valid authorization header not provided.",
        ));
    };
    let (owner, expires_at) = verify_jwt_claims(&trust, value, unix_seconds(now))?;
    Ok(Authorized { owner, expires_at })
}

fn errors(denied: &Denied) -> Value {
    json!([{
        "errorType": denied.error_type,
        "message": denied.message,
        "errorCode": denied.status,
    }])
}

fn text(value: &Value) -> Message {
    Message::Text(value.to_string().into())
}

/// Sends a close frame and waits (briefly) for the peer's reply.
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }
}

/// Counts an open socket for as long as it lives.
struct Open(Arc<AppSyncState>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.realtime.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(
    state: Arc<AppSyncState>,
    mut socket: WebSocket,
    header: Result<Map<String, Value>, Denied>,
) {
    state.realtime.open.fetch_add(1, Ordering::Relaxed);
    let _open = Open(state.clone());
    // Subscribed before anything else, so no todo created after the connect is missed.
    let control = state.faults.realtime.subscribe();
    let events = state.realtime.events.subscribe();
    let authorized = header.and_then(|h| {
        lock(&state.realtime.received_connect).push(ReceivedAuth::of("", &h));
        if state.faults.take_realtime_refusal() {
            return Err(Denied::unauthorized(
                "You are not authorized to make this call.",
            ));
        }
        authorize(&state, &h, "/graphql/connect", b"{}")
    });
    match authorized {
        Ok(auth) => {
            lock(&state.stats).realtime_authorized += 1;
            let conn = Conn {
                clock: state.clock.clone(),
                state,
                socket,
                auth,
                subs: Vec::new(),
                acked: false,
            };
            conn.run(control, events).await;
        }
        Err(denied) => {
            lock(&state.stats).realtime_refused += 1;
            tracing::debug!(
                error_type = denied.error_type,
                "appsync emulator refused a real-time connection"
            );
            let cancel = state.realtime.cancel.clone();
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = tokio::time::timeout(FIRST_MESSAGE_WAIT, socket.recv()) => {}
            }
            let refusal =
                json!({ "type": "connection_error", "payload": { "errors": errors(&denied) } });
            if socket.send(text(&refusal)).await.is_ok() {
                close(&mut socket, 1000, "").await;
            }
        }
    }
}

/// One live subscription.
struct Sub {
    id: String,
    owner: String,
    selection: Vec<Field>,
}

/// One authorized socket.
struct Conn {
    state: Arc<AppSyncState>,
    clock: SharedClock,
    socket: WebSocket,
    auth: Authorized,
    subs: Vec<Sub>,
    acked: bool,
}

/// What the socket's loop does next.
enum Next {
    Continue,
    /// Close with this code and reason.
    Close(u16, String),
    /// Drop the socket without a close frame.
    Abort,
}

/// Resolves once `clock` reads `at` or later (sleeping on tokio's clock, which paused tests
/// move together with the injected one).
async fn until(clock: SharedClock, at: SystemTime) {
    loop {
        match at.duration_since(clock.now()) {
            Ok(left) if !left.is_zero() => tokio::time::sleep(left).await,
            _ => return,
        }
    }
}

impl Conn {
    async fn run(
        mut self,
        mut control: broadcast::Receiver<Control>,
        mut events: broadcast::Receiver<Todo>,
    ) {
        let cancel = self.state.realtime.cancel.clone();
        let expiry = until(self.clock.clone(), self.auth.expires_at);
        tokio::pin!(expiry);
        let mut ka = tokio::time::interval(self.state.realtime.ka_interval);
        ka.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let next = loop {
            // Biased: a todo published before a client message arrived is sent before that
            // message is answered, so per-socket order is deterministic.
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => Next::Close(1001, "going away".to_owned()),
                command = control.recv() => match command {
                    Ok(Control::Drop) | Err(broadcast::error::RecvError::Closed) => Next::Abort,
                    Ok(Control::Expire) => self.expired().await,
                    Ok(Control::Close(code, reason)) => Next::Close(code, reason),
                    Err(broadcast::error::RecvError::Lagged(_)) => Next::Continue,
                },
                () = &mut expiry => self.expired().await,
                todo = events.recv() => match todo {
                    Ok(todo) => self.publish(&todo).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let lost = json!({ "type": "error", "payload": { "errors": [{
                            "errorType": "InternalFailure",
                            "message": "subscription events were lost",
                        }]}});
                        let _ = self.send(&lost).await;
                        Next::Close(1011, "events lost".to_owned())
                    }
                    Err(broadcast::error::RecvError::Closed) => Next::Abort,
                },
                _ = ka.tick(), if self.acked => self.send(&json!({ "type": "ka" })).await,
                message = self.socket.recv() => match message {
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_str(), &mut ka).await,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Next::Abort,
                    Some(Ok(_)) => Next::Continue,
                },
            };
            if !matches!(next, Next::Continue) {
                break next;
            }
        };
        if let Next::Close(code, reason) = next {
            close(&mut self.socket, code, &reason).await;
        }
    }

    async fn send(&mut self, message: &Value) -> Next {
        match self.socket.send(text(message)).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Abort,
        }
    }

    async fn expired(&mut self) -> Next {
        lock(&self.state.stats).realtime_expired += 1;
        let denied = Denied::unauthorized("Token has expired.");
        let message =
            json!({ "type": "connection_error", "payload": { "errors": errors(&denied) } });
        match self.send(&message).await {
            Next::Continue => Next::Close(1000, String::new()),
            other => other,
        }
    }

    fn ack_delay(&self) -> tokio::time::Sleep {
        let delay = self.state.faults.lock().realtime_ack_delay;
        tokio::time::sleep(delay)
    }

    async fn on_text(&mut self, raw: &str, ka: &mut tokio::time::Interval) -> Next {
        let message: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
        match message.get("type").and_then(Value::as_str) {
            Some("connection_init") => {
                self.ack_delay().await;
                let ack = json!({
                    "type": "connection_ack",
                    "payload": { "connectionTimeoutMs": CONNECTION_TIMEOUT_MS },
                });
                if let Next::Abort = self.send(&ack).await {
                    return Next::Abort;
                }
                self.acked = true;
                ka.reset();
                self.send(&json!({ "type": "ka" })).await
            }
            Some("start") => {
                let id = message
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let id = id.to_owned();
                match self.start(&id, &message) {
                    Ok(()) => {
                        lock(&self.state.stats).realtime_starts += 1;
                        self.ack_delay().await;
                        self.send(&json!({ "type": "start_ack", "id": id })).await
                    }
                    Err(denied) => {
                        lock(&self.state.stats).realtime_starts_refused += 1;
                        let error = json!({
                            "type": "error",
                            "id": id,
                            "payload": { "errors": [{
                                "errorType": denied.error_type,
                                "message": denied.message,
                            }]},
                        });
                        self.send(&error).await
                    }
                }
            }
            Some("stop") => {
                let id = message
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let id = id.to_owned();
                self.subs.retain(|s| s.id != id);
                self.send(&json!({ "type": "complete", "id": id })).await
            }
            _ => {
                let error = json!({ "type": "error", "payload": { "errors": [{
                    "errorType": "UnsupportedOperation",
                    "message": "Unsupported message type.",
                }]}});
                self.send(&error).await
            }
        }
    }

    /// Checks and records one `start`.
    fn start(&mut self, id: &str, message: &Value) -> Result<(), Denied> {
        if id.is_empty() {
            return Err(bad_request("A start needs an id."));
        }
        if self.subs.iter().any(|s| s.id == id) {
            return Err(bad_request(
                "A subscription with this id is already started.",
            ));
        }
        let payload = message.get("payload");
        let Some(data) = payload.and_then(|p| p.get("data")).and_then(Value::as_str) else {
            return Err(bad_request("payload.data must be a string."));
        };
        let auth = payload
            .and_then(|p| p.pointer("/extensions/authorization"))
            .and_then(Value::as_object);
        let Some(auth) = auth else {
            return Err(Denied::unauthorized(
                "Valid authorization header not provided.",
            ));
        };
        lock(&self.state.realtime.received_start).push(ReceivedAuth::of(id, auth));
        let owner = authorize(&self.state, auth, "/graphql", data.as_bytes())?.owner;
        let selection = subscription(data, &owner)?;
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(Denied {
                status: 400,
                error_type: "MaxSubscriptionsReachedError",
                message: format!("Max number of {MAX_SUBSCRIPTIONS} subscriptions reached"),
            });
        }
        self.subs.push(Sub {
            id: id.to_owned(),
            owner,
            selection,
        });
        Ok(())
    }

    async fn publish(&mut self, todo: &Todo) -> Next {
        let mut out = Vec::new();
        for sub in self.subs.iter().filter(|s| s.owner == todo.owner) {
            if let Ok(item) = project(todo, &sub.selection) {
                out.push(json!({
                    "type": "data",
                    "id": sub.id,
                    "payload": { "data": { "onCreateTodo": item } },
                }));
            }
        }
        for message in out {
            lock(&self.state.stats).realtime_events += 1;
            if let Next::Abort = self.send(&message).await {
                return Next::Abort;
            }
        }
        Next::Continue
    }
}

/// The selection of `subscription { onCreateTodo[(owner: …)] { … } }`, for `principal`.
fn subscription(data: &str, principal: &str) -> Result<Vec<Field>, Denied> {
    let validation = |message: String| Denied {
        status: 400,
        error_type: "ValidationError",
        message,
    };
    let request: GraphQlRequest = serde_json::from_str(data)
        .map_err(|e| validation(format!("Unable to parse the subscription request: {e}")))?;
    let variables = request.variables.unwrap_or_default();
    let tokens =
        tokenize(&request.query).map_err(|e| validation(format!("Invalid syntax: {e}")))?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        variables: &variables,
    };
    let (kind, fields) = parser
        .operation()
        .map_err(|e| validation(format!("Invalid syntax: {e}")))?;
    if kind != OperationKind::Subscription {
        return Err(validation(
            "Only subscriptions are served over the real-time endpoint.".to_owned(),
        ));
    }
    let [field] = fields.as_slice() else {
        return Err(validation(
            "Exactly one subscription field per start is supported.".to_owned(),
        ));
    };
    if field.name != "onCreateTodo" {
        return Err(validation(format!(
            "Validation error of type FieldUndefined: Field '{}' in type 'Subscription' is \
             undefined",
            field.name
        )));
    }
    match field.arg("owner") {
        None | Some(Value::Null) => {}
        Some(Value::String(o)) if o == principal => {}
        Some(_) => {
            return Err(Denied {
                status: 401,
                error_type: "Unauthorized",
                message: "Not Authorized to access onCreateTodo on type Subscription".to_owned(),
            });
        }
    }
    let sample = Todo {
        id: String::new(),
        content: String::new(),
        owner: String::new(),
    };
    project(&sample, &field.selection).map_err(validation)?;
    Ok(field.selection.clone())
}

#[cfg(test)]
mod tests;
