//! Forwarding one GraphQL request to AppSync as the caller.
//!
//! Owns: [`Forwarder`] — the configured APIs, the pooled upstream client, and the rules for what
//! leaves credbroker.
//!
//! Promises:
//! - **OIDC mode** sends `Authorization: <raw ID token>`, never with `Bearer ` (AppSync answers
//!   that with 401 "Unable to parse JWT token."), and never a token that expires within
//!   `appsync.token_expiry_margin` (the caller gets 401 `TokenExpiringSoon` and refreshes);
//! - **IAM mode** signs with SigV4 (service `appsync`, the API's region, `X-Amz-Security-Token`
//!   included) using the caller's own Cognito credentials, which the surface obtains from the
//!   broker ([`UpstreamAuth::Credentials`]), at the time it is given. The caller's
//!   `Authorization` is replaced, never forwarded;
//! - the forwarder knows nothing of the broker: the surface hands it the upstream
//!   authentication ([`UpstreamAuth`]) after [`Forwarder::admit`] accepted the document;
//! - hop-by-hop headers (and those named in `Connection`), `Host`, `Content-Length`, caller
//!   supplied `X-Amz-Date` / `X-Amz-Security-Token` / `X-Amz-Content-Sha256` / `X-Api-Key`,
//!   and cookies are dropped; nothing is added but authentication (no `X-Forwarded-For`);
//! - the request body is buffered (at most `appsync.max_body_bytes`; SigV4 signs its hash);
//!   AppSync's answer is streamed back with its status, headers (minus hop-by-hop) and body
//!   unchanged, errors included;
//! - connections are pooled and kept alive (HTTP/1.1, or HTTP/2 when TLS negotiates `h2`);
//!   no answer head within `appsync.timeout` → 504 `UpstreamTimeout`;
//! - tokens, secrets and signatures are never logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;

use super::operations::{self, OperationError};
use crate::clock;
use crate::config::{AppSyncApiConfig, AppSyncConfig};
use crate::http::{HttpsClient, error_chain};
use crate::metrics::{AppSyncApiMetrics, Metrics};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// proxy-era ones clients still send.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Caller headers never forwarded: replaced by credbroker, or meaningless or unsafe upstream.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "x-api-key",
    "cookie",
    "expect",
];

/// One configured API, ready to forward to.
#[derive(Debug)]
pub struct Api {
    /// Its configuration.
    pub config: AppSyncApiConfig,
    uri: http::Uri,
    /// `host[:port]` as the `Host` header (and SigV4's canonical host) carries it.
    authority: HeaderValue,
    /// Its upstream series, resolved on its first request.
    metrics: std::sync::OnceLock<AppSyncApiMetrics>,
}

impl Api {
    fn new(config: &AppSyncApiConfig) -> Option<Self> {
        let url = &config.url;
        let host = url.host_str()?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Some(Self {
            uri: url.as_str().parse().ok()?,
            authority: HeaderValue::from_str(&authority).ok()?,
            config: config.clone(),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// The table name.
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// Why a request was not forwarded (or got no answer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// OIDC mode: the caller's token is about to expire.
    #[error(
        "the ID token expires in {}s, within appsync.token_expiry_margin ({}s), so AppSync could \
         refuse it mid-request; refresh the ID token (sign in again or use the refresh token) \
         and retry",
        remaining.as_secs(),
        margin.as_secs()
    )]
    TokenExpiringSoon {
        /// Time the token has left.
        remaining: Duration,
        /// The configured margin.
        margin: Duration,
    },
    /// `allowed_operations` refused the document.
    #[error(transparent)]
    Operation(#[from] OperationError),
    /// SigV4 signing failed (a bug or an unusable credential).
    #[error("cannot sign the request: {0}")]
    Signing(String),
    /// No answer head from AppSync in time.
    #[error("AppSync did not answer within {}ms (appsync.timeout)", .0.as_millis())]
    Timeout(Duration),
    /// Connecting or talking to AppSync failed.
    #[error("cannot reach AppSync: {0}")]
    Unreachable(String),
}

impl ForwardError {
    /// A bounded label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::TokenExpiringSoon { .. } => "token_expiring",
            Self::Operation(_) => "operation_refused",
            Self::Signing(_) => "signing_failed",
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
        }
    }
}

/// The forwarder shared by every AppSync route.
pub struct Forwarder {
    client: HttpsClient,
    apis: BTreeMap<String, Arc<Api>>,
    default: Option<Arc<Api>>,
    /// Largest request body.
    pub max_body_bytes: usize,
    timeout: Duration,
    token_expiry_margin: Duration,
}

/// How one request authenticates towards AppSync (the API's `auth` decides which; the surface
/// supplies it).
#[derive(Debug)]
pub enum UpstreamAuth<'a> {
    /// OIDC mode: the caller's raw ID token, sent as `Authorization`, and when it expires.
    IdToken {
        /// The raw JWT.
        raw: &'a str,
        /// Its `exp`.
        expires_at: SystemTime,
    },
    /// IAM mode: the caller's Cognito credentials, for SigV4.
    Credentials(Credentials),
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("apis", &self.apis.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Forwarder {
    /// Builds the forwarder and its connection pool (no connection is opened yet).
    pub fn new(config: &AppSyncConfig) -> Self {
        let mut apis = BTreeMap::new();
        let mut default = None;
        for c in &config.apis {
            // Validated URLs always have a host; skip defensively rather than panic.
            let Some(api) = Api::new(c) else {
                tracing::error!(api = %c.name, "unusable AppSync URL; the API is disabled");
                continue;
            };
            let api = Arc::new(api);
            if c.default {
                default = Some(api.clone());
            }
            apis.insert(c.name.clone(), api);
        }
        Self {
            client: crate::http::client(config.connect_timeout),
            apis,
            default,
            max_body_bytes: config.max_body_bytes,
            timeout: config.timeout,
            token_expiry_margin: config.token_expiry_margin,
        }
    }

    /// The API called `name`, or the default API for `None`.
    pub fn api(&self, name: Option<&str>) -> Option<&Arc<Api>> {
        match name {
            Some(n) => self.apis.get(n),
            None => self.default.as_ref(),
        }
    }

    /// The configured API names.
    pub fn names(&self) -> Vec<&str> {
        self.apis.keys().map(String::as_str).collect()
    }

    /// Whether `api` accepts the GraphQL document `body` (`allowed_operations`); checked before
    /// the surface obtains the upstream authentication.
    pub fn admit(&self, api: &Api, body: &[u8]) -> Result<(), ForwardError> {
        if let Some(allowed) = &api.config.allowed_operations {
            operations::check(body, allowed)?;
        }
        Ok(())
    }

    /// Forwards one admitted request with `auth` at `now`, and returns AppSync's answer (body
    /// not yet read).
    pub async fn forward(
        &self,
        metrics: &Metrics,
        api: &Api,
        auth: UpstreamAuth<'_>,
        headers: &HeaderMap,
        body: Bytes,
        now: SystemTime,
    ) -> Result<http::Response<Incoming>, ForwardError> {
        let mut request = http::Request::builder()
            .method(Method::POST)
            .uri(api.uri.clone())
            .body(Full::new(body.clone()))
            .map_err(|e| ForwardError::Signing(e.to_string()))?;
        let out = request.headers_mut();
        copy_request_headers(headers, out);
        out.insert(header::HOST, api.authority.clone());
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if !out.contains_key(header::CONTENT_TYPE) {
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }

        match auth {
            UpstreamAuth::IdToken { raw, expires_at } => {
                let remaining = clock::saturating_sub(expires_at, now);
                if remaining <= self.token_expiry_margin {
                    return Err(ForwardError::TokenExpiringSoon {
                        remaining,
                        margin: self.token_expiry_margin,
                    });
                }
                let mut value =
                    HeaderValue::from_str(raw).map_err(|e| ForwardError::Signing(e.to_string()))?;
                value.set_sensitive(true);
                request.headers_mut().insert(header::AUTHORIZATION, value);
            }
            UpstreamAuth::Credentials(credentials) => {
                sign_request(&mut request, &body, credentials, &api.config.region, now)
                    .map_err(ForwardError::Signing)?;
            }
        }

        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.client.request(request)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let series = api.metrics.get_or_init(|| metrics.appsync_api(api.name()));
        series.latency.observe(elapsed);
        series.count(match &result {
            Ok(Ok(r)) => status_class(r.status().as_u16()),
            Ok(Err(_)) => "unreachable",
            Err(_) => "timeout",
        });
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(ForwardError::Unreachable(error_chain(&e))),
            Err(_) => Err(ForwardError::Timeout(self.timeout)),
        }
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Names listed in `Connection` (they are hop-by-hop too).
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let listed = connection_listed(from);
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || DROPPED_REQUEST_HEADERS.contains(&n)
            || listed.iter().any(|l| l == n)
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// AppSync's response headers minus hop-by-hop ones.
pub fn response_headers(from: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(from);
    let mut to = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || listed.iter().any(|l| l == n) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    to
}

/// Signs `request` with SigV4 for AppSync. Signs `host`, `content-type` and the headers SigV4
/// adds (`x-amz-date`, `x-amz-security-token`); other forwarded headers ride unsigned, so a
/// hop that normalises them cannot break the signature.
fn sign_request(
    request: &mut http::Request<Full<Bytes>>,
    body: &[u8],
    credentials: Credentials,
    region: &str,
    now: SystemTime,
) -> Result<(), String> {
    let identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("appsync")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signed: Vec<(HeaderName, String)> = [header::HOST, header::CONTENT_TYPE]
        .into_iter()
        .filter_map(|name| {
            let value = request.headers().get(&name)?.to_str().ok()?.to_owned();
            Some((name, value))
        })
        .collect();
    let uri = request.uri().to_string();
    let signable = SignableRequest::new(
        request.method().as_str(),
        &uri,
        signed.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    if let Some(v) = request.headers_mut().get_mut(header::AUTHORIZATION) {
        v.set_sensitive(true);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_auth_headers_are_not_forwarded() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("authorization", "Bearer caller-token"),
            ("x-amz-security-token", "caller-supplied"),
            ("x-amz-date", "20000101T000000Z"),
            ("cookie", "session=1"),
            ("host", "127.0.0.1:8900"),
            ("content-length", "10"),
            ("content-type", "application/json"),
            ("x-amz-user-agent", "aws-amplify/6"),
            ("accept", "application/json"),
        ] {
            from.append(k, HeaderValue::from_static(v));
        }
        let mut to = HeaderMap::new();
        copy_request_headers(&from, &mut to);
        let mut names: Vec<&str> = to.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["accept", "content-type", "x-amz-user-agent"]);

        let mut resp = HeaderMap::new();
        resp.insert("connection", HeaderValue::from_static("close"));
        resp.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        resp.insert("x-amzn-requestid", HeaderValue::from_static("r-1"));
        let out = response_headers(&resp);
        assert_eq!(out.len(), 1);
        assert_eq!(out["x-amzn-requestid"], "r-1");
    }
}
