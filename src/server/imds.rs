//! The IMDSv2-compatible endpoint (`AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:8904/`).
//!
//! Owns: the EC2 instance-metadata paths AWS SDKs use to load credentials, on their own
//! listener at root paths (the JS SDK drops any path from the endpoint), serving one configured
//! identity ([`crate::broker::ConfiguredIdentity`]).
//!
//! Promises:
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..=21600` answers a
//!   session token and echoes that header (aws-config fails without it); a missing or
//!   out-of-range TTL is 400. Other PUTs are never answered 404/405 (botocore and the JS SDK
//!   would silently fall back to IMDSv1): any other PUT path is 400;
//! - session tokens are 256-bit random, stored only as SHA-256 digests, expire after their TTL
//!   (by the injected clock), and at most `imds.max_session_tokens` exist (the oldest is
//!   dropped);
//! - `GET /latest/meta-data/iam/security-credentials` (with or without `/`) answers the role
//!   name without a trailing newline; `…/security-credentials/<role>` answers
//!   `{"Code":"Success","LastUpdated","Type":"AWS-HMAC","AccessKeyId","SecretAccessKey","Token",
//!   "Expiration"}`; another role is 404;
//! - a GET with an unknown or expired token is 401; without a token it is 401 unless
//!   `imds.allow_imdsv1`;
//! - any request carrying `X-Forwarded-For` or `Forwarded` is 403 `ForwardedRequest`, as EC2
//!   answers a proxied token PUT: a proxied request never gets a session token or credentials
//!   (an SDK that falls back to IMDSv1 on that 403 gets 401 or 403 again);
//! - a request whose `Host` is not a loopback IP, `localhost`, the listen address or one of
//!   `imds.allowed_hosts` is 403 `HostNotAllowed` before it reaches this router (the listener's
//!   [`HostPolicy`](super::HostPolicy)): DNS rebinding cannot get a session token;
//! - accepted connections get IP TTL / IPv6 hop limit `imds.hop_limit` (EC2's
//!   `HttpPutResponseHopLimit`, default 1: a container behind a bridge cannot read the answer);
//! - credentials are served with at least `imds.min_remaining` left when a refresh can provide
//!   that (botocore's IMDS provider keeps signing with credentials that have under 15 min left);
//! - every request is counted under `surface="imds"`; credential sets are audited through
//!   [`Broker::handed_out`](crate::broker::Broker::handed_out). Session tokens and credentials
//!   are never logged.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use super::container::forwarded_refusal_with;
use super::{client_error, error_response};
use crate::broker::Broker;
use crate::broker::ConfiguredIdentity;
use crate::clock;
use crate::config::ImdsConfig;
use crate::metrics::Surface;
use crate::secret::ZeroizingBytes;

/// The session-token path.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The credentials listing path (without its trailing slash).
pub const CREDENTIALS_PREFIX: &str = "/latest/meta-data/iam/security-credentials";
/// Requested TTL header (echoed in the answer).
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Session token header.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Largest TTL EC2 accepts.
pub const MAX_TTL_SECONDS: u64 = 21_600;

/// Issued session tokens, by digest. Bounded; oldest dropped first.
struct SessionTokens {
    max: usize,
    inner: Mutex<TokensInner>,
}

#[derive(Default)]
struct TokensInner {
    expiry: HashMap<[u8; 32], SystemTime>,
    order: VecDeque<[u8; 32]>,
}

impl SessionTokens {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            inner: Mutex::new(TokensInner::default()),
        }
    }

    fn issue(&self, ttl: Duration, now: SystemTime) -> String {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while inner.order.len() >= self.max {
            if let Some(old) = inner.order.pop_front() {
                inner.expiry.remove(&old);
            }
        }
        inner.order.push_back(digest);
        inner.expiry.insert(digest, now + ttl);
        token
    }

    /// Whether `token` was issued and has not expired. Looks up its digest, so the comparison
    /// does not depend on the token's bytes.
    fn valid(&self, token: &[u8], now: SystemTime) -> bool {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.expiry.get(&digest) {
            Some(exp) if now < *exp => true,
            Some(_) => {
                inner.expiry.remove(&digest);
                false
            }
            None => false,
        }
    }
}

#[derive(Clone)]
struct AppState {
    broker: Arc<Broker>,
    identity: Arc<ConfiguredIdentity>,
    tokens: Arc<SessionTokens>,
    role_name: Arc<str>,
    allow_v1: bool,
    min_remaining: Duration,
}

/// The router of the IMDS listener.
pub fn router(
    broker: Arc<Broker>,
    identity: Arc<ConfiguredIdentity>,
    config: &ImdsConfig,
) -> Router {
    Router::new().fallback(handle).with_state(AppState {
        broker,
        identity,
        tokens: Arc::new(SessionTokens::new(config.max_session_tokens)),
        role_name: config.role_name.as_str().into(),
        allow_v1: config.allow_imdsv1,
        min_remaining: config.min_remaining,
    })
}

/// Sets the IP TTL (IPv4, and IPv4-mapped on dual-stack sockets) and the IPv6 unicast hop
/// limit of an accepted connection.
pub fn apply_hop_limit(stream: &tokio::net::TcpStream, hops: u32) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    match stream.local_addr()? {
        std::net::SocketAddr::V4(_) => socket.set_ttl_v4(hops),
        std::net::SocketAddr::V6(_) => {
            socket.set_unicast_hops_v6(hops)?;
            // Dual-stack sockets carry IPv4-mapped peers too; not every OS allows it.
            let _ = socket.set_ttl_v4(hops);
            Ok(())
        }
    }
}

async fn handle(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let response = answer(&state, &method, uri.path(), &headers).await;
    state
        .broker
        .record_request(Surface::Imds, response.status().as_str(), started);
    response
}

fn text(body: impl Into<Bytes>) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body.into(),
    )
        .into_response()
}

async fn answer(state: &AppState, method: &Method, path: &str, headers: &HeaderMap) -> Response {
    // EC2 answers a proxied token PUT 403; GETs get the same (no SDK falls back on a GET).
    if let Some(refusal) = forwarded_refusal_with(headers, 403) {
        return refusal;
    }
    if method == Method::PUT {
        return put_token(state, path, headers);
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = client_error(405, "MethodNotAllowed", "use GET (or PUT for a token)");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, PUT"));
        return r;
    }
    let now = state.broker.clock().now();
    match headers.get(TOKEN_HEADER) {
        Some(token) => {
            if !state.tokens.valid(token.as_bytes(), now) {
                return client_error(
                    401,
                    "Unauthorized",
                    "the session token is unknown or expired; get a new one with PUT \
                     /latest/api/token",
                );
            }
        }
        None if state.allow_v1 => {}
        None => {
            return client_error(
                401,
                "Unauthorized",
                "IMDSv1 is disabled: get a session token with PUT /latest/api/token and send it \
                 as X-aws-ec2-metadata-token (or set imds.allow_imdsv1 = true)",
            );
        }
    }
    match credentials_path(path, &state.role_name) {
        CredentialsPath::Listing => text(state.role_name.to_string()),
        CredentialsPath::Role => credentials(state).await,
        CredentialsPath::OtherRole => client_error(404, "NotFound", "no such role"),
        CredentialsPath::Other => client_error(404, "NotFound", "not found"),
    }
}

/// What a GET path names. Paths match exactly, segment by segment (no slicing by index).
#[derive(Debug, PartialEq, Eq)]
enum CredentialsPath {
    /// `…/security-credentials` or `…/security-credentials/`.
    Listing,
    /// `…/security-credentials/<role_name>`.
    Role,
    /// `…/security-credentials/<another name>`.
    OtherRole,
    /// Anything else, including `…/security-credentialsX`.
    Other,
}

fn credentials_path(path: &str, role_name: &str) -> CredentialsPath {
    let Some(rest) = path.strip_prefix(CREDENTIALS_PREFIX) else {
        return CredentialsPath::Other;
    };
    match rest.strip_prefix('/') {
        None if rest.is_empty() => CredentialsPath::Listing,
        None => CredentialsPath::Other,
        Some("") => CredentialsPath::Listing,
        Some(role) if role == role_name => CredentialsPath::Role,
        Some(_) => CredentialsPath::OtherRole,
    }
}

fn put_token(state: &AppState, path: &str, headers: &HeaderMap) -> Response {
    if path != TOKEN_PATH {
        return client_error(
            400,
            "BadRequest",
            format!("session tokens are issued at PUT {TOKEN_PATH}"),
        );
    }
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|t| (1..=MAX_TTL_SECONDS).contains(t));
    let Some(ttl) = ttl else {
        return client_error(
            400,
            "BadRequest",
            format!("{TTL_HEADER} must be a number of seconds from 1 to {MAX_TTL_SECONDS}"),
        );
    };
    let token = state
        .tokens
        .issue(Duration::from_secs(ttl), state.broker.clock().now());
    let mut response = text(token);
    response
        .headers_mut()
        .insert(TTL_HEADER, HeaderValue::from(ttl));
    response
}

async fn credentials(state: &AppState) -> Response {
    let result = state
        .broker
        .configured_credentials(&state.identity, Surface::Imds, state.min_remaining)
        .await;
    match result {
        Ok(issued) => {
            let mut body = Vec::with_capacity(issued.container_body().len() + 96);
            body.extend_from_slice(b"{\"Code\":\"Success\",\"LastUpdated\":\"");
            body.extend_from_slice(clock::format_aws_timestamp(issued.obtained_at).as_bytes());
            body.extend_from_slice(b"\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"");
            body.extend_from_slice(issued.access_key_id().as_bytes());
            body.extend_from_slice(b"\",\"SecretAccessKey\":\"");
            body.extend_from_slice(issued.secret_access_key().as_bytes());
            body.extend_from_slice(b"\",\"Token\":\"");
            body.extend_from_slice(issued.session_token().as_bytes());
            body.extend_from_slice(b"\",\"Expiration\":\"");
            body.extend_from_slice(issued.expiration().as_bytes());
            body.extend_from_slice(b"\"}");
            (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
                Bytes::from_owner(ZeroizingBytes(body)),
            )
                .into_response()
        }
        Err(e) => {
            let reply = e.reply(&state.identity.name);
            tracing::debug!(
                code = reply.code,
                status = reply.status,
                "IMDS credentials refused"
            );
            error_response(&reply)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn session_tokens_expire_are_bounded_and_stored_hashed() {
        let tokens = SessionTokens::new(2);
        let a = tokens.issue(Duration::from_secs(10), t(0));
        assert!(a.len() >= 43, "256 bits: {a}");
        assert!(tokens.valid(a.as_bytes(), t(9)));
        assert!(!tokens.valid(a.as_bytes(), t(10)), "expired at its TTL");
        assert!(!tokens.valid(b"guess", t(0)));
        let b = tokens.issue(Duration::from_secs(100), t(0));
        let c = tokens.issue(Duration::from_secs(100), t(0));
        let d = tokens.issue(Duration::from_secs(100), t(0));
        assert!(!tokens.valid(b.as_bytes(), t(1)), "oldest dropped");
        assert!(tokens.valid(c.as_bytes(), t(1)) && tokens.valid(d.as_bytes(), t(1)));
        let inner = tokens.inner.lock().expect("lock");
        assert!(inner.order.len() <= 2);
        assert!(
            !inner
                .expiry
                .keys()
                .any(|k| k.as_slice() == c.as_bytes() || k.as_slice() == d.as_bytes()),
            "only digests are stored"
        );
    }

    #[test]
    fn credentials_paths_match_exactly() {
        use CredentialsPath::*;
        let p = |s: &str| credentials_path(s, "app-role");
        assert_eq!(p(CREDENTIALS_PREFIX), Listing);
        assert_eq!(p(&format!("{CREDENTIALS_PREFIX}/")), Listing);
        assert_eq!(p(&format!("{CREDENTIALS_PREFIX}/app-role")), Role);
        assert_eq!(p(&format!("{CREDENTIALS_PREFIX}/other")), OtherRole);
        assert_eq!(p(&format!("{CREDENTIALS_PREFIX}/app-role/")), OtherRole);
        assert_eq!(p(&format!("{CREDENTIALS_PREFIX}Xapp-role")), Other);
        assert_eq!(p(&format!("{CREDENTIALS_PREFIX}app-role")), Other);
        assert_eq!(p(&format!("{CREDENTIALS_PREFIX}\u{e9}")), Other);
        assert_eq!(p(&format!("{CREDENTIALS_PREFIX}/\u{e9}")), OtherRole);
        assert_eq!(p("/latest/meta-data/"), Other);
    }

    #[tokio::test]
    async fn hop_limit_is_applied_to_accepted_connections() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = tokio::net::TcpListener::bind(addr).await else {
                continue; // no IPv6 on this host
            };
            let local = listener.local_addr().expect("addr");
            let client = tokio::net::TcpStream::connect(local);
            let (accepted, _) = tokio::join!(listener.accept(), client);
            let (stream, _) = accepted.expect("accepted");
            apply_hop_limit(&stream, 1).expect("set");
            let sock = socket2::SockRef::from(&stream);
            let read_back = if local.is_ipv4() {
                sock.ttl_v4()
            } else {
                sock.unicast_hops_v6()
            };
            assert_eq!(read_back.expect("getsockopt"), 1, "{addr}");
            apply_hop_limit(&stream, 2).expect("set");
            let read_back = if local.is_ipv4() {
                sock.ttl_v4()
            } else {
                sock.unicast_hops_v6()
            };
            assert_eq!(read_back.expect("getsockopt"), 2, "{addr}");
        }
    }
}
