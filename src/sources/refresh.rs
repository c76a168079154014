//! The refresh-token source: redeems an OIDC refresh token for fresh ID tokens.
//!
//! Owns: the `grant_type=refresh_token` exchange with the provider's discovered
//! `token_endpoint` ([`TokenEndpoint`], over HTTP by [`HttpTokenEndpoint`]), where the current
//! refresh token lives ([`RefreshTokenStore`]: a file, or memory), and [`RefreshTokenSource`].
//!
//! Promises:
//! - **rotation**: when the provider returns a new refresh token it is written to the store
//!   (for files: temp file + fsync + rename, mode 0600) before anything else happens, and a token
//!   that could not be written is never redeemed: the next redemption first retries the write.
//!   Reusing an old token revokes the whole family at Auth0, so a restart always resumes from
//!   the newest token, which is the one on disk;
//! - redemptions of one source never overlap;
//! - failures are classified by the OAuth `error` code, not the status (Auth0 answers
//!   `invalid_grant` with 403): `invalid_grant` → [`SourceErrorKind::ReloginRequired`];
//!   `invalid_client`/`unauthorized_client` and other refusals → misconfigured; 5xx, 429,
//!   timeouts and network errors → transient (the driver backs off);
//! - after a terminal failure nothing is redeemed until the store's contents change (an
//!   operator or a login flow wrote a new refresh token);
//! - the token endpoint must be https, or http on a loopback host (the emulator);
//! - refresh tokens, client secrets and ID tokens are never logged, and provider messages are
//!   truncated before they reach logs or clients.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use sha2::{Digest as _, Sha256};

use super::{IdentitySource, SourceError, SourceErrorKind, jitter01};
use crate::clock;
use crate::config::ClientAuth;
use crate::http::{self, HttpsClient};
use crate::oidc::Provider;
use crate::secret::SecretString;

/// Largest token endpoint response read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// How often a store is checked for a new token after a terminal failure.
const STORE_POLL: Duration = Duration::from_secs(5);

/// One refresh-token grant.
#[derive(Debug, Clone, Copy)]
pub struct RefreshRequest<'a> {
    /// The provider's `token_endpoint`.
    pub token_endpoint: &'a str,
    /// The OAuth client.
    pub client_id: &'a str,
    /// Its secret (confidential clients).
    pub client_secret: Option<&'a SecretString>,
    /// How the client authenticates.
    pub auth: ClientAuth,
    /// The refresh token to redeem.
    pub refresh_token: &'a SecretString,
}

/// The parts of a token response used here.
#[derive(Debug, Default)]
pub struct TokenResponse {
    /// The new ID token.
    pub id_token: Option<SecretString>,
    /// The rotated refresh token, when the provider rotates.
    pub refresh_token: Option<SecretString>,
}

/// How a grant failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantErrorKind {
    /// `invalid_grant`: revoked, expired, reused or unknown refresh token.
    InvalidGrant,
    /// `invalid_client` / `unauthorized_client`: wrong client id, secret or auth method.
    InvalidClient,
    /// Any other OAuth refusal (`invalid_request`, `unsupported_grant_type`, …).
    Rejected,
    /// 5xx, 429, timeouts, network: retry later.
    Unavailable,
}

/// Why a grant failed. Never contains a token or secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GrantError {
    /// The class.
    pub kind: GrantErrorKind,
    /// The provider's `error: error_description`, or the transport problem.
    pub message: String,
}

/// Redeems refresh tokens. Production: [`HttpTokenEndpoint`]; tests: the emulated issuer
/// in process.
pub trait TokenEndpoint: Send + Sync + 'static {
    /// Performs one `grant_type=refresh_token` request.
    fn refresh<'a>(
        &'a self,
        request: RefreshRequest<'a>,
    ) -> BoxFuture<'a, Result<TokenResponse, GrantError>>;
}

/// The token endpoint over HTTP(S): a form POST.
#[derive(Clone)]
pub struct HttpTokenEndpoint {
    http: HttpsClient,
    timeout: Duration,
}

impl std::fmt::Debug for HttpTokenEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTokenEndpoint")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpTokenEndpoint {
    /// Uses the shared client; `timeout` bounds each request.
    pub fn new(http: HttpsClient, timeout: Duration) -> Self {
        Self { http, timeout }
    }
}

/// The form body and optional `Authorization` header of a grant request.
pub fn grant_form(request: &RefreshRequest<'_>) -> (String, Option<String>) {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "refresh_token");
    form.append_pair("refresh_token", request.refresh_token.expose_str());
    let mut authorization = None;
    match (request.client_secret, request.auth) {
        (Some(secret), ClientAuth::Basic) => {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(request.client_id), enc(secret.expose_str()));
            authorization = Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ));
        }
        (Some(secret), ClientAuth::Post) => {
            form.append_pair("client_id", request.client_id);
            form.append_pair("client_secret", secret.expose_str());
        }
        (None, _) => {
            form.append_pair("client_id", request.client_id);
        }
    }
    (form.finish(), authorization)
}

fn endpoint_allowed(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("token_endpoint {url:?}: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "token_endpoint {url:?} is not https; refresh tokens are only sent over TLS (plain \
             http only to loopback)"
        )),
    }
}

fn truncated(text: &str) -> String {
    let mut t: String = text.chars().take(200).collect();
    if t.len() < text.len() {
        t.push('…');
    }
    t
}

/// Interprets a token endpoint response.
pub fn parse_token_response(status: u16, body: &[u8]) -> Result<TokenResponse, GrantError> {
    #[derive(serde::Deserialize)]
    struct Ok200 {
        id_token: Option<String>,
        refresh_token: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Refusal {
        error: String,
        error_description: Option<String>,
    }
    if status == 200 {
        return match serde_json::from_slice::<Ok200>(body) {
            Ok(r) => Ok(TokenResponse {
                id_token: r.id_token.map(SecretString::from),
                refresh_token: r.refresh_token.map(SecretString::from),
            }),
            // Not `{e}`: serde's message quotes the offending value, which can be a token, and
            // is unbounded.
            Err(e) => Err(GrantError {
                kind: GrantErrorKind::Unavailable,
                message: format!(
                    "the token endpoint answered 200 with a body that is not a token response \
                     (JSON {} at line {}, column {})",
                    match e.classify() {
                        serde_json::error::Category::Data => "of the wrong shape",
                        _ => "syntax error",
                    },
                    e.line(),
                    e.column()
                ),
            }),
        };
    }
    let refusal = serde_json::from_slice::<Refusal>(body).ok();
    let kind = match refusal.as_ref().map(|r| r.error.as_str()) {
        Some("invalid_grant") => GrantErrorKind::InvalidGrant,
        Some("invalid_client" | "unauthorized_client") => GrantErrorKind::InvalidClient,
        _ if status >= 500 || status == 429 => GrantErrorKind::Unavailable,
        Some("temporarily_unavailable" | "server_error") => GrantErrorKind::Unavailable,
        _ => GrantErrorKind::Rejected,
    };
    let message = match refusal {
        Some(r) => match r.error_description {
            Some(d) => format!("HTTP {status} {}: {}", truncated(&r.error), truncated(&d)),
            None => format!("HTTP {status} {}", truncated(&r.error)),
        },
        None => format!("HTTP {status}"),
    };
    Err(GrantError { kind, message })
}

impl TokenEndpoint for HttpTokenEndpoint {
    fn refresh<'a>(
        &'a self,
        request: RefreshRequest<'a>,
    ) -> BoxFuture<'a, Result<TokenResponse, GrantError>> {
        Box::pin(async move {
            endpoint_allowed(request.token_endpoint).map_err(|message| GrantError {
                kind: GrantErrorKind::Rejected,
                message,
            })?;
            let (body, authorization) = grant_form(&request);
            let mut builder = ::http::Request::builder()
                .method(::http::Method::POST)
                .uri(request.token_endpoint)
                .header(
                    ::http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header(::http::header::ACCEPT, "application/json");
            if let Some(a) = authorization {
                builder = builder.header(::http::header::AUTHORIZATION, a);
            }
            let req = builder.body(body.into_bytes()).map_err(|e| GrantError {
                kind: GrantErrorKind::Rejected,
                message: format!("cannot build the token request: {e}"),
            })?;
            let response = http::fetch(&self.http, req, self.timeout, MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| GrantError {
                    kind: GrantErrorKind::Unavailable,
                    message: format!("token endpoint: {e}"),
                })?;
            parse_token_response(response.status().as_u16(), response.body())
        })
    }
}

/// Where the current refresh token lives.
pub trait RefreshTokenStore: Send + Sync + 'static {
    /// The current refresh token.
    fn load(&self) -> Result<SecretString, SourceError>;
    /// Replaces it durably (returns only once a restart would read `token`).
    fn save(&self, token: &SecretString) -> std::io::Result<()>;
    /// A digest of the stored contents (to notice a new token after a terminal failure).
    fn fingerprint(&self) -> Option<[u8; 32]>;
    /// For messages: where it lives (never the token).
    fn describe(&self) -> String;
}

/// A refresh token in a file (no trailing newline is written; surrounding whitespace is
/// ignored when reading).
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl RefreshTokenStore for FileStore {
    fn load(&self) -> Result<SecretString, SourceError> {
        let relogin = || {
            SourceError::new(
                SourceErrorKind::ReloginRequired,
                format!(
                    "no refresh token in {}: sign in (with the offline_access scope) and write \
                     the refresh token there",
                    self.path.display()
                ),
            )
        };
        match std::fs::read_to_string(&self.path) {
            Ok(text) if text.trim().is_empty() => Err(relogin()),
            Ok(text) => Ok(SecretString::from(text.trim())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(relogin()),
            Err(e) => Err(SourceError::new(
                SourceErrorKind::Misconfigured,
                format!("cannot read {}: {e}", self.path.display()),
            )),
        }
    }

    fn save(&self, token: &SecretString) -> std::io::Result<()> {
        crate::fsutil::write_atomic(&self.path, token.expose_str().as_bytes())
    }

    fn fingerprint(&self) -> Option<[u8; 32]> {
        std::fs::read(&self.path)
            .ok()
            .map(|b| Sha256::digest(&b).into())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A refresh token held in memory only (sessions that must not touch disk).
#[derive(Debug)]
pub struct MemoryStore {
    token: Mutex<SecretString>,
}

impl MemoryStore {
    /// Holds `token`.
    pub fn new(token: SecretString) -> Self {
        Self {
            token: Mutex::new(token),
        }
    }
}

impl RefreshTokenStore for MemoryStore {
    fn load(&self) -> Result<SecretString, SourceError> {
        Ok(lock(&self.token).clone())
    }
    fn save(&self, token: &SecretString) -> std::io::Result<()> {
        *lock(&self.token) = token.clone();
        Ok(())
    }
    fn fingerprint(&self) -> Option<[u8; 32]> {
        Some(Sha256::digest(lock(&self.token).expose_str().as_bytes()).into())
    }
    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Redeems a refresh token for ID tokens. See the module docs.
pub struct RefreshTokenSource {
    endpoint: Arc<dyn TokenEndpoint>,
    client_id: String,
    client_secret: Option<SecretString>,
    auth: ClientAuth,
    store: Arc<dyn RefreshTokenStore>,
    refresh_fraction: f64,
    /// A rotated token the store refused; written before the next redemption.
    unsaved: Mutex<Option<SecretString>>,
    /// Serializes redemptions: a refresh token is never redeemed twice.
    redeeming: tokio::sync::Mutex<()>,
    /// The store's fingerprint when a terminal failure happened.
    failed_fingerprint: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for RefreshTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshTokenSource")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("store", &self.store.describe())
            .finish()
    }
}

impl RefreshTokenSource {
    /// A source redeeming the token in `store` as `client_id`.
    pub fn new(
        endpoint: Arc<dyn TokenEndpoint>,
        client_id: impl Into<String>,
        client_secret: Option<SecretString>,
        auth: ClientAuth,
        store: Arc<dyn RefreshTokenStore>,
        refresh_fraction: f64,
    ) -> Self {
        Self {
            endpoint,
            client_id: client_id.into(),
            client_secret,
            auth,
            store,
            refresh_fraction: refresh_fraction.clamp(0.05, 0.9),
            unsaved: Mutex::new(None),
            redeeming: tokio::sync::Mutex::new(()),
            failed_fingerprint: Mutex::new(None),
        }
    }

    fn classify(&self, e: GrantError) -> SourceError {
        let store = self.store.describe();
        match e.kind {
            GrantErrorKind::InvalidGrant => SourceError::new(
                SourceErrorKind::ReloginRequired,
                format!(
                    "the provider refused the refresh token ({}); sign in again (with the \
                     offline_access scope) and write the new refresh token to {store}",
                    e.message
                ),
            ),
            GrantErrorKind::InvalidClient => SourceError::new(
                SourceErrorKind::Misconfigured,
                format!(
                    "the provider refused the client ({}); check client_id, client_secret_file \
                     and token_endpoint_auth",
                    e.message
                ),
            ),
            GrantErrorKind::Rejected => SourceError::new(
                SourceErrorKind::Misconfigured,
                format!("the token endpoint refused the request: {}", e.message),
            ),
            _ => SourceError::new(SourceErrorKind::Transient, e.message),
        }
    }

    async fn redeem(&self, provider: &Provider) -> Result<SecretString, SourceError> {
        let _one_at_a_time = self.redeeming.lock().await;
        let unsaved = lock(&self.unsaved).clone();
        if let Some(token) = unsaved {
            self.store.save(&token).map_err(|e| {
                SourceError::new(
                    SourceErrorKind::Transient,
                    format!(
                        "cannot persist the rotated refresh token to {}: {e}; it is not redeemed \
                         until it is stored",
                        self.store.describe()
                    ),
                )
            })?;
            *lock(&self.unsaved) = None;
        }
        let token_endpoint = provider.token_endpoint().ok_or_else(|| {
            if provider.is_ready() {
                SourceError::new(
                    SourceErrorKind::Misconfigured,
                    format!(
                        "provider {}'s discovery document names no token_endpoint",
                        provider.config.name
                    ),
                )
            } else {
                SourceError::new(
                    SourceErrorKind::Transient,
                    format!("provider {} is not loaded yet", provider.config.name),
                )
            }
        })?;
        let fingerprint = self.store.fingerprint();
        let refresh_token = self.store.load()?;
        let result = self
            .endpoint
            .refresh(RefreshRequest {
                token_endpoint: &token_endpoint,
                client_id: &self.client_id,
                client_secret: self.client_secret.as_ref(),
                auth: self.auth,
                refresh_token: &refresh_token,
            })
            .await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                let e = self.classify(e);
                if !e.is_transient() {
                    *lock(&self.failed_fingerprint) = fingerprint;
                }
                return Err(e);
            }
        };
        if let Some(rotated) = response
            .refresh_token
            .filter(|new| !new.is_empty() && !new.ct_eq(refresh_token.expose_str()))
        {
            // Persist first: the old token is dead from now on (reusing it revokes the family).
            if let Err(e) = self.store.save(&rotated) {
                tracing::error!(
                    store = %self.store.describe(),
                    error = %e,
                    "cannot persist the rotated refresh token; retrying before the next \
                     redemption (a restart before then needs a new login)"
                );
                *lock(&self.unsaved) = Some(rotated);
            } else {
                tracing::debug!(store = %self.store.describe(), "rotated refresh token stored");
            }
        }
        response.id_token.filter(|t| !t.is_empty()).ok_or_else(|| {
            SourceError::new(
                SourceErrorKind::Misconfigured,
                "the token endpoint returned no id_token; the refresh token must come from a \
                 login with the openid scope",
            )
        })
    }
}

impl IdentitySource for RefreshTokenSource {
    fn kind(&self) -> &'static str {
        "refresh_token"
    }

    fn fetch<'a>(
        &'a self,
        provider: &'a Provider,
    ) -> BoxFuture<'a, Result<SecretString, SourceError>> {
        Box::pin(self.redeem(provider))
    }

    fn next_fetch(&self, now: SystemTime, expires_at: SystemTime) -> Duration {
        clock::saturating_sub(expires_at, now).mul_f64(self.refresh_fraction + 0.1 * jitter01())
    }

    fn retry_after_terminal(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let failed = *lock(&self.failed_fingerprint);
            loop {
                tokio::time::sleep(STORE_POLL).await;
                if self.store.fingerprint() != failed {
                    tracing::info!(store = %self.store.describe(), "a new refresh token was stored; resuming");
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        secret: Option<&'a SecretString>,
        auth: ClientAuth,
        token: &'a SecretString,
    ) -> RefreshRequest<'a> {
        RefreshRequest {
            token_endpoint: "https://x/oauth/token",
            client_id: "client 1",
            client_secret: secret,
            auth,
            refresh_token: token,
        }
    }

    #[test]
    fn grant_forms_for_public_post_and_basic_clients() {
        let token = SecretString::from("rt+/=");
        let secret = SecretString::from("s3cr:t");
        let (body, auth) = grant_form(&request(None, ClientAuth::Post, &token));
        assert_eq!(
            body,
            "grant_type=refresh_token&refresh_token=rt%2B%2F%3D&client_id=client+1"
        );
        assert!(auth.is_none());
        let (body, auth) = grant_form(&request(Some(&secret), ClientAuth::Post, &token));
        assert!(
            body.ends_with("&client_id=client+1&client_secret=s3cr%3At"),
            "{body}"
        );
        assert!(auth.is_none());
        let (body, auth) = grant_form(&request(Some(&secret), ClientAuth::Basic, &token));
        assert!(!body.contains("client_secret"), "{body}");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.expect("basic").trim_start_matches("Basic "))
            .expect("b64");
        assert_eq!(decoded, b"client+1:s3cr%3At");
    }

    #[test]
    fn responses_are_classified_by_oauth_error_not_status() {
        let ok = parse_token_response(
            200,
            br#"{"id_token":"a.b.c","refresh_token":"r2","access_token":"x","expires_in":86400}"#,
        )
        .expect("ok");
        assert_eq!(ok.id_token.expect("id").expose_str(), "a.b.c");
        assert_eq!(ok.refresh_token.expect("rt").expose_str(), "r2");
        // Auth0 answers a revoked refresh token with 403 invalid_grant.
        let e = parse_token_response(
            403,
            br#"{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}"#,
        )
        .expect_err("refused");
        assert_eq!(e.kind, GrantErrorKind::InvalidGrant);
        assert!(e.message.contains("Unknown or invalid"), "{}", e.message);
        let e = parse_token_response(401, br#"{"error":"invalid_client"}"#).expect_err("client");
        assert_eq!(e.kind, GrantErrorKind::InvalidClient);
        for status in [500, 502, 503, 429] {
            let e = parse_token_response(status, b"<html>busy</html>").expect_err("5xx");
            assert_eq!(e.kind, GrantErrorKind::Unavailable, "{status}");
        }
        let e = parse_token_response(400, br#"{"error":"invalid_request"}"#).expect_err("400");
        assert_eq!(e.kind, GrantErrorKind::Rejected);
    }

    /// Found by the `token_endpoint` fuzz target: serde's message for an unreadable 200 body
    /// quoted the body (unbounded, and possibly a token) into the refusal, which is logged.
    #[test]
    fn an_unreadable_200_is_refused_without_quoting_the_body() {
        // The fuzzer's input: two bytes of status (200), then the body.
        let crash =
            &include_bytes!("../../fuzz/corpus/token_endpoint/regression-200-unreadable-quoted")
                [2..];
        for body in [
            crash,
            br#""v1.s3cr3t-refresh-token""#,
            br#"{"id_token":["eyJ.s3cr3t.sig"]}"#,
            br#"{"refresh_token":"v1.s3cr3t""#,
        ] {
            let e = parse_token_response(200, body).expect_err("not a token response");
            assert_eq!(e.kind, GrantErrorKind::Unavailable);
            assert!(e.message.contains("not a token response"), "{}", e.message);
            assert!(
                !e.message.contains("s3cr3t") && !e.message.contains(">>>"),
                "{}",
                e.message
            );
            assert!(e.message.len() < 200, "{}", e.message);
        }
    }

    #[test]
    fn only_tls_or_loopback_token_endpoints() {
        assert!(endpoint_allowed("https://tenant.auth0.com/oauth/token").is_ok());
        assert!(endpoint_allowed("http://127.0.0.1:9/oauth/token").is_ok());
        assert!(endpoint_allowed("http://localhost:9/oauth/token").is_ok());
        assert!(endpoint_allowed("http://10.0.0.1/oauth/token").is_err());
    }

    #[test]
    fn file_store_round_trip_and_debug_redacts() {
        let dir = std::env::temp_dir().join(format!("credbroker-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("rt");
        let store = FileStore::new(&path);
        assert_eq!(
            store.load().expect_err("missing").kind,
            SourceErrorKind::ReloginRequired
        );
        std::fs::write(&path, "first-token\n").expect("write");
        assert_eq!(store.load().expect("load").expose_str(), "first-token");
        let before = store.fingerprint();
        store.save(&SecretString::from("second")).expect("save");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        assert_ne!(before, store.fingerprint());
        let source = RefreshTokenSource::new(
            Arc::new(HttpTokenEndpoint::new(
                crate::http::client(Duration::from_secs(1)),
                Duration::from_secs(1),
            )),
            "client",
            Some(SecretString::from("very-secret")),
            ClientAuth::Post,
            Arc::new(store),
            0.5,
        );
        assert!(!format!("{source:?}").contains("very-secret"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
