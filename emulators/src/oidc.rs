//! An Auth0-shaped OpenID Connect issuer.
//!
//! Owns: [`OidcIssuer`], an HTTP server that publishes an OIDC discovery document and a JWKS,
//! mints ID tokens ([`OidcIssuer::mint`], [`TokenSpec`]), rotates and retires its signing keys,
//! and can be made unavailable; plus the key material it signs with.
//!
//! Promises:
//! - Tokens look like Auth0's: header `{"alg":"RS256","typ":"JWT","kid":…}`; claims `iss` with a
//!   trailing slash, `aud` a string (an array only when asked for or when there are several),
//!   `sub` such as `auth0|abc`, `iat`, `exp`, no `auth_time`, and Auth0's loosely typed profile
//!   claims (`updated_at` is an RFC 3339 *string*, `email_verified` a boolean, a `sid`).
//! - A key's `kid` is base64url of the first 12 bytes of SHA-256 of its DER (SPKI) public key,
//!   followed by `-g{generation}` for RSA keys, so a key that comes back in the rotation cycle
//!   gets a fresh `kid`.
//! - `/.well-known/openid-configuration` deserializes as `openidconnect`'s
//!   `CoreProviderMetadata` and `/.well-known/jwks.json` as `CoreJsonWebKeySet` (unit-tested).
//! - Keys are embedded PEM files parsed once per process, never generated at run time.
//! - Time comes only from the injected clock. Tokens are never logged.
//!
//! - With [`IssuerOptions::flavor`] = [`Flavor::CognitoUserPool`] it presents itself as a
//!   Cognito User Pool instead: `iss` `https://cognito-idp.<region>.amazonaws.com/<pool id>`
//!   (no trailing slash) in its discovery document and tokens, ID tokens with `token_use: id`,
//!   `aud` = the app client id and `cognito:username`, access tokens
//!   ([`TokenSpec::access_token`]) with `token_use: access` and `client_id` instead of `aud`,
//!   and an RSA-only JWKS. Its documents are still served from the loopback address, so a
//!   broker reaches them through a `discovery_url` override.
//! - Each document can be made to fail on its own ([`OidcIssuer::set_jwks_unavailable`]), and
//!   the discovery document can advertise another `jwks_uri` ([`IssuerOptions::jwks_uri`]).
//!
//! - `POST /oauth/token` (advertised as `token_endpoint`) implements `grant_type=refresh_token`
//!   with rotation and family revocation on reuse ([`crate::grants`]); client authentication by
//!   client_secret_post or client_secret_basic; ID tokens it returns are for the client and live
//!   [`IssuerOptions::token_lifetime`]. The same grant is callable in process through
//!   [`OidcIssuer::redeem_refresh_token`] (credbroker's `TokenEndpoint` for paused-time tests),
//!   which answers the status and body the HTTP endpoint would.
//!
//! - `POST /_emulator/mint` mints a token and `POST /_emulator/keys` rotates or retires keys and
//!   takes the issuer down, for scripts (the soak) that drive the emulator from outside.
//!
//! The router is built in one place (`routes`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng as _;
use rand::distributions::Alphanumeric;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::clock::{Clock, SharedClock, unix_seconds};
use crate::grants::{GrantBook, OAuthError, TokenEndpointStats};
use crate::jwt::{self, Header, Signer};
use crate::secret::SecretString;
use crate::{ServerHandle, default_listen, serve};

/// The audience (client id) tokens carry by default.
pub const DEFAULT_AUDIENCE: &str = "credbroker-demo-client";

/// The `updated_at` claim every default token carries, as Auth0 sends it: a string.
pub const DEFAULT_UPDATED_AT: &str = "2024-05-01T10:00:00.000Z";

/// The `Cache-Control` Auth0 sends on its discovery document and JWKS.
const AUTH0_CACHE_CONTROL: &str =
    "public, max-age=15, stale-while-revalidate=15, stale-if-error=86400";

/// How to start an [`OidcIssuer`].
#[derive(Debug, Clone)]
pub struct IssuerOptions {
    /// Where to listen. Default `127.0.0.1:0` (any free loopback port).
    pub listen: SocketAddr,
    /// The client id minted tokens are for by default. Default [`DEFAULT_AUDIENCE`].
    pub audience: String,
    /// Whether the issuer URL ends with `/`, as Auth0's does. Default `true`.
    pub trailing_slash: bool,
    /// Lifetime of minted tokens unless a [`TokenSpec`] says otherwise, including ID tokens
    /// from the token endpoint. Default 10 hours (Auth0's default ID-token lifetime).
    pub token_lifetime: Duration,
    /// Whether the token endpoint rotates refresh tokens (reuse then revokes the family).
    /// Default `true`.
    pub rotate_refresh_tokens: bool,
    /// Which real issuer to look like. Default [`Flavor::Auth0`].
    pub flavor: Flavor,
    /// The `jwks_uri` the discovery document advertises instead of the issuer's own (a dead
    /// port, to test an unreachable JWKS). Default: its own `/.well-known/jwks.json`.
    pub jwks_uri: Option<String>,
}

/// Which real issuer an [`OidcIssuer`] looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Flavor {
    /// Auth0: issuer `http://127.0.0.1:PORT/`, Auth0's claims. The default.
    #[default]
    Auth0,
    /// A Cognito User Pool: issuer `https://cognito-idp.<region>.amazonaws.com/<pool id>`
    /// (never a trailing slash), User Pool claims. Its documents are served on loopback.
    CognitoUserPool {
        /// The pool's region, e.g. `us-east-1`.
        region: String,
        /// The pool id, e.g. `us-east-1_AbCdEfGhI`.
        pool_id: String,
    },
}

impl Default for IssuerOptions {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            trailing_slash: true,
            token_lifetime: Duration::from_secs(10 * 3600),
            rotate_refresh_tokens: true,
            flavor: Flavor::Auth0,
            jwks_uri: None,
        }
    }
}

/// How a minted token is signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SigningAlg {
    /// RS256 with the current signing key (what Auth0 does). The default.
    #[default]
    Rs256,
    /// ES256 with the embedded P-256 key (published in the JWKS, but Cognito rejects ES256).
    Es256,
    /// HS256 with a shared secret.
    Hs256 {
        /// The HMAC key.
        secret: Vec<u8>,
    },
    /// HS256 keyed with the current RSA public key's PEM text: the classic algorithm-confusion
    /// attack against validators that pick the algorithm from the token header.
    Hs256WithPublicKey,
    /// `alg: none` with an empty signature.
    None,
    /// RS256 with a key that is never published, while claiming the current `kid`.
    Rs256Unpublished,
}

/// Everything about a token to mint. Start from [`TokenSpec::for_subject`] and change fields.
///
/// Default `kid` header: the current RSA key's `kid` for every algorithm except ES256, which
/// uses the EC key's `kid`.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// The `sub` claim, e.g. `auth0|abc`.
    pub sub: String,
    /// The `aud` claim; empty means the issuer's configured audience.
    pub audience: Vec<String>,
    /// Write `aud` as an array even when it has a single value.
    pub aud_as_array: bool,
    /// An `azp` claim, when set.
    pub azp: Option<String>,
    /// Overrides `iss`.
    pub issuer: Option<String>,
    /// Lifetime (`exp - iat`); `None` means the issuer's configured lifetime.
    pub lifetime: Option<Duration>,
    /// `iat`; `None` means the clock's now.
    pub issued_at: Option<SystemTime>,
    /// An `nbf` claim, when set.
    pub not_before: Option<SystemTime>,
    /// Leave out `exp`.
    pub omit_exp: bool,
    /// Leave out `sub`.
    pub omit_sub: bool,
    /// How to sign.
    pub alg: SigningAlg,
    /// Overrides the `kid` header.
    pub kid: Option<String>,
    /// Leave out the `kid` header.
    pub omit_kid: bool,
    /// Change a claim (`sub`, or add one when there is none) after signing, so the signature no
    /// longer matches.
    pub tamper_payload: bool,
    /// Claims added last: they override the defaults.
    pub extra_claims: Map<String, Value>,
    /// Mint an access token instead of an ID token: from a User Pool `token_use: access` with
    /// `client_id` (and no `aud`); otherwise an RFC 9068 one (header `typ: at+jwt`, `client_id`,
    /// `scope`).
    pub access_token: bool,
    /// A `nonce` claim, when set.
    pub nonce: Option<String>,
}

impl TokenSpec {
    /// A valid default token for `sub`.
    pub fn for_subject(sub: impl Into<String>) -> Self {
        Self {
            sub: sub.into(),
            ..Self::default()
        }
    }
}

/// Request counters of an [`OidcIssuer`]. Requests answered 503 while unavailable count too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerStats {
    /// `GET /.well-known/openid-configuration` requests.
    pub discovery_requests: u64,
    /// `GET /.well-known/jwks.json` requests.
    pub jwks_requests: u64,
}

/// A running emulated OIDC issuer. Clones share it; it stops on [`OidcIssuer::shutdown`] or when
/// the last clone is dropped.
#[derive(Clone)]
pub struct OidcIssuer {
    state: Arc<IssuerState>,
    server: ServerHandle,
}

impl fmt::Debug for OidcIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcIssuer")
            .field("issuer", &self.state.issuer)
            .field("audience", &self.state.audience)
            .field("current_kid", &self.current_kid())
            .finish()
    }
}

/// What the token endpoint answered: the HTTP status and body, exactly as `POST /oauth/token`
/// sends them. `Debug` redacts the body (it carries ID and refresh tokens).
#[derive(Debug, Clone)]
pub struct TokenReply {
    /// The HTTP status: 200, an OAuth error's 400/401, or 503 while unavailable.
    pub status: u16,
    /// The JSON body (`id_token`, `refresh_token`, ... or `error`, `error_description`), or
    /// `Service Unavailable` with a 503.
    pub body: SecretString,
}

impl OidcIssuer {
    /// Binds `options.listen` and starts serving discovery, JWKS and the mint endpoint.
    pub async fn start(options: IssuerOptions, clock: impl Clock) -> std::io::Result<OidcIssuer> {
        let listener = tokio::net::TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let issuer = match &options.flavor {
            Flavor::CognitoUserPool { region, pool_id } => {
                format!("https://cognito-idp.{region}.amazonaws.com/{pool_id}")
            }
            Flavor::Auth0 if options.trailing_slash => format!("{base_url}/"),
            Flavor::Auth0 => base_url.clone(),
        };
        let grants = Mutex::new(GrantBook::new(
            &options.audience,
            options.rotate_refresh_tokens,
        ));
        let state = Arc::new(IssuerState {
            issuer,
            user_pool: matches!(options.flavor, Flavor::CognitoUserPool { .. }),
            jwks_uri_override: options.jwks_uri,
            base_url,
            grants,
            audience: options.audience,
            token_lifetime: options.token_lifetime,
            clock: crate::clock::shared(clock),
            keys: Mutex::new(KeyRing::new()),
            unavailable: AtomicBool::new(false),
            jwks_unavailable: AtomicBool::new(false),
            discovery_requests: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
        });
        let server = serve(listener, routes(Arc::clone(&state)))?;
        Ok(OidcIssuer { state, server })
    }

    /// The issuer identifier: `http://127.0.0.1:PORT/` (no trailing slash when
    /// [`IssuerOptions::trailing_slash`] is false), or the User Pool's
    /// `https://cognito-idp.<region>.amazonaws.com/<pool id>`. Minted tokens carry it as `iss`.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// The discovery document's URL (always on loopback, whatever the issuer string).
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.state.base_url)
    }

    /// The JWKS URL (the discovery document's `jwks_uri`; [`IssuerOptions::jwks_uri`] when set).
    pub fn jwks_uri(&self) -> String {
        self.state.jwks_uri()
    }

    /// The key of this provider in a Cognito `Logins` map: the issuer without its scheme and
    /// trailing slash, `127.0.0.1:PORT` (a User Pool's: `cognito-idp.<region>.amazonaws.com/<pool id>`).
    pub fn logins_key(&self) -> String {
        logins_key_of(&self.state.issuer).to_owned()
    }

    /// The default audience (client id) of minted tokens.
    pub fn audience(&self) -> &str {
        &self.state.audience
    }

    /// The address the issuer listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Mints a token as `spec` describes.
    pub fn mint(&self, spec: &TokenSpec) -> String {
        self.state.mint(spec)
    }

    /// A valid token for `sub` with every default.
    pub fn token_for(&self, sub: &str) -> String {
        self.mint(&TokenSpec::for_subject(sub))
    }

    /// Makes the next embedded RSA key (rsa1 → rsa2 → rsa3 → rsa1 …) the signing key and returns
    /// its new `kid`. Previously published keys stay published until
    /// [`OidcIssuer::retire_old_keys`].
    pub fn rotate_keys(&self) -> String {
        self.state.keys().rotate()
    }

    /// Stops publishing every RSA key except the current signing key (the EC key stays).
    pub fn retire_old_keys(&self) {
        self.state.keys().retire_old();
    }

    /// The `kid` of the current RSA signing key.
    pub fn current_kid(&self) -> String {
        self.state.keys().current().kid.clone()
    }

    /// The public key of a published RSA key, by `kid`. Unpublished and EC keys give `None`.
    pub fn verifying_key(&self, kid: &str) -> Option<RsaPublicKey> {
        self.state.verifying_key(kid)
    }

    /// The JWKS document as currently published.
    pub fn jwks_json(&self) -> Value {
        self.state.jwks_json()
    }

    /// The discovery document as served.
    pub fn discovery_json(&self) -> Value {
        self.state.discovery_json()
    }

    /// Request counters.
    pub fn stats(&self) -> IssuerStats {
        IssuerStats {
            discovery_requests: self.state.discovery_requests.load(Ordering::Relaxed),
            jwks_requests: self.state.jwks_requests.load(Ordering::Relaxed),
        }
    }

    /// Registers a client at the token endpoint; with a `secret` it must authenticate
    /// (client_secret_post or client_secret_basic). The default audience is a public client.
    pub fn register_client(&self, client_id: &str, secret: Option<&str>) {
        self.state.grants().register_client(client_id, secret);
    }

    /// Issues the first refresh token of a new family for `sub`, for the default client (what
    /// a login with `offline_access` would return).
    pub fn issue_refresh_token(&self, sub: &str) -> String {
        let client = self.state.audience.clone();
        self.state.grants().issue(sub, &client)
    }

    /// Issues the first refresh token of a new family for `sub` and `client_id`.
    pub fn issue_refresh_token_for(&self, sub: &str, client_id: &str) -> String {
        self.state.grants().issue(sub, client_id)
    }

    /// Revokes the family of `refresh_token` (logout everywhere). False when unknown.
    pub fn revoke_refresh_family(&self, refresh_token: &str) -> bool {
        self.state.grants().revoke_family_of(refresh_token)
    }

    /// Token endpoint counters.
    pub fn token_stats(&self) -> TokenEndpointStats {
        self.state.grants().stats()
    }

    /// The token endpoint's URL (the discovery document's `token_endpoint`).
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth/token", self.state.base_url)
    }

    /// Redeems a refresh token at the token endpoint in process (no socket, so paused-time tests
    /// stay exact): the status and body `POST /oauth/token` would answer to
    /// `grant_type=refresh_token` with client_secret_post, with the same counters, rotation,
    /// reuse detection and unavailability. credbroker's `emulated` module turns this into its
    /// `TokenEndpoint`.
    pub fn redeem_refresh_token(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        refresh_token: &str,
    ) -> TokenReply {
        if self.state.unavailable.load(Ordering::Relaxed) {
            self.state.grants().count_request();
            return TokenReply {
                status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                body: SecretString::from(UNAVAILABLE_BODY),
            };
        }
        let result = self.state.token_grant(
            Some(client_id),
            client_secret,
            Some("refresh_token"),
            Some(refresh_token),
        );
        match result {
            Ok(body) => TokenReply {
                status: StatusCode::OK.as_u16(),
                body: SecretString::from(body.to_string()),
            },
            Err(e) => TokenReply {
                status: e.status,
                body: SecretString::from(oauth_error_body(&e).to_string()),
            },
        }
    }

    /// While `down`, discovery, JWKS and the token endpoint answer `503 Service Unavailable`.
    pub fn set_unavailable(&self, down: bool) {
        self.state.unavailable.store(down, Ordering::Relaxed);
    }

    /// While `down`, only the JWKS answers `503 Service Unavailable` (discovery still works).
    pub fn set_jwks_unavailable(&self, down: bool) {
        self.state.jwks_unavailable.store(down, Ordering::Relaxed);
    }

    /// Stops the HTTP server (minting in process keeps working). Idempotent.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }

    /// Resolves once the HTTP server has stopped (after [`OidcIssuer::shutdown`]).
    pub async fn stopped(&self) {
        self.server.stopped().await;
    }

    /// The state the Cognito emulator validates signatures against, without keeping the HTTP
    /// server alive.
    pub(crate) fn key_source(&self) -> Arc<IssuerState> {
        Arc::clone(&self.state)
    }
}

/// `iss` without `https://` / `http://` and without one trailing slash: the form Cognito uses as
/// a provider name and `Logins` key.
pub(crate) fn logins_key_of(iss: &str) -> &str {
    let rest = iss
        .strip_prefix("https://")
        .or_else(|| iss.strip_prefix("http://"))
        .unwrap_or(iss);
    rest.strip_suffix('/').unwrap_or(rest)
}

/// Shared state of one issuer: what the HTTP handlers and the handles see.
pub(crate) struct IssuerState {
    issuer: String,
    /// Whether it presents itself as a Cognito User Pool ([`Flavor::CognitoUserPool`]).
    user_pool: bool,
    /// [`IssuerOptions::jwks_uri`].
    jwks_uri_override: Option<String>,
    base_url: String,
    audience: String,
    token_lifetime: Duration,
    clock: SharedClock,
    keys: Mutex<KeyRing>,
    unavailable: AtomicBool,
    /// Only the JWKS is down.
    jwks_unavailable: AtomicBool,
    discovery_requests: AtomicU64,
    jwks_requests: AtomicU64,
    /// Clients and refresh-token families of the token endpoint.
    grants: Mutex<GrantBook>,
}

impl IssuerState {
    fn grants(&self) -> MutexGuard<'_, GrantBook> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One `grant_type=refresh_token` request, already client-authenticated by the caller's
    /// transport: the JSON body of a 200, or the OAuth error.
    fn token_grant(
        &self,
        client_id: Option<&str>,
        secret: Option<&str>,
        grant_type: Option<&str>,
        refresh_token: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let mut book = self.grants();
        book.count_request();
        if grant_type != Some("refresh_token") {
            return Err(OAuthError {
                status: 400,
                error: "unsupported_grant_type",
                description: "Only grant_type=refresh_token is emulated.".to_owned(),
            });
        }
        let (Some(client_id), Some(refresh_token)) = (client_id, refresh_token) else {
            return Err(OAuthError {
                status: 400,
                error: "invalid_request",
                description: "Missing required parameter: client_id or refresh_token".to_owned(),
            });
        };
        let granted = book.redeem(client_id, secret, refresh_token)?;
        drop(book);
        let id_token = self.mint(&TokenSpec {
            audience: vec![granted.client_id.clone()],
            ..TokenSpec::for_subject(granted.sub)
        });
        let mut body = json!({
            "access_token": random_sid(),
            "id_token": id_token,
            "scope": "openid profile email offline_access",
            "expires_in": 86400,
            "token_type": "Bearer",
        });
        if let Some(rt) = granted.refresh_token {
            body["refresh_token"] = Value::from(rt);
        }
        Ok(body)
    }

    fn keys(&self) -> MutexGuard<'_, KeyRing> {
        // A panic while holding this lock leaves the ring consistent (every mutation is a
        // single push or retain), so a poisoned lock is safe to reuse.
        self.keys
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn jwks_uri(&self) -> String {
        match &self.jwks_uri_override {
            Some(uri) => uri.clone(),
            None => format!("{}/.well-known/jwks.json", self.base_url),
        }
    }

    /// The public key of a published RSA key, by `kid`.
    pub(crate) fn verifying_key(&self, kid: &str) -> Option<RsaPublicKey> {
        self.keys()
            .published
            .iter()
            .find(|key| key.kid == kid)
            .map(|key| key.material.public.clone())
    }

    fn jwks_json(&self) -> Value {
        let embedded = embedded();
        let mut keys: Vec<Value> = self
            .keys()
            .published
            .iter()
            .map(|key| {
                json!({
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": key.kid,
                    "n": jwt::b64(&key.material.public.n().to_bytes_be()),
                    "e": jwt::b64(&key.material.public.e().to_bytes_be()),
                })
            })
            .collect();
        // User Pools publish RSA keys only.
        if !self.user_pool {
            keys.push(embedded.ec.jwk.clone());
        }
        json!({ "keys": keys })
    }

    fn discovery_json(&self) -> Value {
        let base = &self.base_url;
        if self.user_pool {
            // The shape of a User Pool's `/.well-known/openid-configuration`.
            return json!({
                "authorization_endpoint": format!("{base}/oauth2/authorize"),
                "end_session_endpoint": format!("{base}/logout"),
                "id_token_signing_alg_values_supported": ["RS256"],
                "issuer": self.issuer,
                "jwks_uri": self.jwks_uri(),
                "response_types_supported": ["code", "token"],
                "revocation_endpoint": format!("{base}/oauth2/revoke"),
                "scopes_supported": ["openid", "email", "phone", "profile"],
                "subject_types_supported": ["public"],
                "token_endpoint": format!("{base}/oauth/token"),
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic", "client_secret_post"
                ],
                "userinfo_endpoint": format!("{base}/oauth2/userInfo"),
            });
        }
        json!({
            "issuer": self.issuer,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/oauth/token"),
            "userinfo_endpoint": format!("{base}/userinfo"),
            "jwks_uri": self.jwks_uri(),
            "response_types_supported": ["code", "id_token", "token id_token"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "scopes_supported": [
                "openid", "profile", "offline_access", "name", "given_name", "family_name",
                "nickname", "email", "email_verified", "picture", "created_at", "identities",
                "phone", "address"
            ],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post", "client_secret_basic", "none"
            ],
            "claims_supported": [
                "aud", "auth_time", "created_at", "email", "email_verified", "exp",
                "family_name", "given_name", "iat", "identities", "iss", "name", "nickname",
                "phone_number", "picture", "sub"
            ],
            "code_challenge_methods_supported": ["S256", "plain"],
            "request_uri_parameter_supported": false,
            "request_parameter_supported": false,
        })
    }

    fn mint(&self, spec: &TokenSpec) -> String {
        let embedded = embedded();
        let (current_kid, current) = {
            let ring = self.keys();
            let current = ring.current();
            (current.kid.clone(), current.material)
        };

        let issued_at = spec.issued_at.unwrap_or_else(|| self.clock.now());
        let iat = unix_seconds(issued_at);
        let lifetime = spec.lifetime.unwrap_or(self.token_lifetime);
        let exp = iat.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));

        let mut claims = Map::new();
        claims.insert(
            "iss".into(),
            spec.issuer
                .clone()
                .unwrap_or_else(|| self.issuer.clone())
                .into(),
        );
        if !spec.omit_sub {
            claims.insert("sub".into(), spec.sub.clone().into());
        }
        let audience = if spec.audience.is_empty() {
            vec![self.audience.clone()]
        } else {
            spec.audience.clone()
        };
        let aud = match audience.as_slice() {
            [single] if !spec.aud_as_array => Value::from(single.clone()),
            many => Value::from(many.to_vec()),
        };
        let client_id = audience.first().cloned().unwrap_or_default();
        if spec.access_token && self.user_pool {
            // A User Pool access token names its client in `client_id` and has no `aud`.
            claims.insert("client_id".into(), client_id.clone().into());
        } else {
            claims.insert("aud".into(), aud);
        }
        claims.insert("iat".into(), iat.into());
        if !spec.omit_exp {
            claims.insert("exp".into(), exp.into());
        }
        if let Some(nbf) = spec.not_before {
            claims.insert("nbf".into(), unix_seconds(nbf).into());
        }
        if let Some(azp) = &spec.azp {
            claims.insert("azp".into(), azp.clone().into());
        }
        if let Some(nonce) = &spec.nonce {
            claims.insert("nonce".into(), nonce.clone().into());
        }
        let nickname = spec.sub.rsplit('|').next().unwrap_or_default().to_owned();
        if self.user_pool {
            let token_use = if spec.access_token { "access" } else { "id" };
            claims.insert("token_use".into(), token_use.into());
            claims.insert("auth_time".into(), iat.into());
            claims.insert("jti".into(), random_sid().into());
            claims.insert("origin_jti".into(), random_sid().into());
            claims.insert("event_id".into(), random_sid().into());
            if spec.access_token {
                claims.insert("scope".into(), "openid email".into());
                claims.insert("username".into(), nickname.clone().into());
            } else {
                claims.insert("cognito:username".into(), nickname.clone().into());
                claims.insert("email".into(), format!("{nickname}@example.com").into());
                claims.insert("email_verified".into(), true.into());
            }
        } else {
            if spec.access_token {
                claims.insert("client_id".into(), client_id.into());
                claims.insert("scope".into(), "openid profile".into());
            }
            claims.insert("nickname".into(), nickname.clone().into());
            claims.insert("name".into(), format!("{nickname}@example.com").into());
            claims.insert("email".into(), format!("{nickname}@example.com").into());
            claims.insert("email_verified".into(), true.into());
            claims.insert("updated_at".into(), DEFAULT_UPDATED_AT.into());
            claims.insert("sid".into(), random_sid().into());
        }
        for (name, value) in &spec.extra_claims {
            claims.insert(name.clone(), value.clone());
        }

        let (alg, signer, default_kid) = match &spec.alg {
            SigningAlg::Rs256 => ("RS256", Signer::Rs256(&current.signing), current_kid),
            SigningAlg::Es256 => (
                "ES256",
                Signer::Es256(&embedded.ec.signing),
                embedded.ec.kid.clone(),
            ),
            SigningAlg::Hs256 { secret } => ("HS256", Signer::Hs256(secret), current_kid),
            SigningAlg::Hs256WithPublicKey => (
                "HS256",
                Signer::Hs256(current.public_pem.as_bytes()),
                current_kid,
            ),
            SigningAlg::None => ("none", Signer::None, current_kid),
            SigningAlg::Rs256Unpublished => {
                ("RS256", Signer::Rs256(&embedded.rogue.signing), current_kid)
            }
        };
        let header = Header {
            alg: alg.to_owned(),
            typ: if spec.access_token && !self.user_pool {
                "at+jwt"
            } else {
                "JWT"
            },
            kid: if spec.omit_kid {
                None
            } else {
                Some(spec.kid.clone().unwrap_or(default_kid))
            },
        };

        let input = jwt::signing_input(&header, &claims);
        let signature = jwt::sign(&input, &signer);
        if spec.tamper_payload {
            match claims.get("sub").and_then(Value::as_str) {
                Some(sub) => {
                    let tampered = format!("{sub}-tampered");
                    claims.insert("sub".into(), tampered.into());
                }
                None => {
                    claims.insert("tampered".into(), true.into());
                }
            }
            jwt::assemble(&jwt::signing_input(&header, &claims), &signature)
        } else {
            jwt::assemble(&input, &signature)
        }
    }
}

/// An Auth0-like session id: 32 random alphanumerics.
fn random_sid() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// The RSA keys an issuer publishes, oldest first; the last one signs.
struct KeyRing {
    generation: u64,
    published: Vec<PublishedKey>,
}

struct PublishedKey {
    kid: String,
    material: &'static RsaMaterial,
}

impl KeyRing {
    fn new() -> Self {
        let mut ring = KeyRing {
            generation: 0,
            published: Vec::new(),
        };
        ring.rotate();
        ring
    }

    fn current(&self) -> &PublishedKey {
        // `new` publishes one key and `retire_old` keeps the last, so the ring is never empty.
        self.published
            .last()
            .expect("the key ring always holds the signing key")
    }

    fn rotate(&mut self) -> String {
        self.generation += 1;
        let keys = &embedded().rsa;
        let index = usize::try_from((self.generation - 1) % keys.len() as u64).unwrap_or(0);
        let material = &keys[index];
        let kid = format!("{}-g{}", material.thumbprint, self.generation);
        self.published.push(PublishedKey {
            kid: kid.clone(),
            material,
        });
        kid
    }

    fn retire_old(&mut self) {
        let keep = self.published.len().saturating_sub(1);
        self.published.drain(..keep);
    }
}

/// A parsed embedded RSA key.
struct RsaMaterial {
    signing: rsa::pkcs1v15::SigningKey<Sha256>,
    public: RsaPublicKey,
    /// The `kid` stem: base64url of SHA-256(SPKI DER)[..12].
    thumbprint: String,
    /// The SPKI public key as PEM text (the HMAC key of the algorithm-confusion attack).
    public_pem: String,
}

/// The parsed embedded P-256 key.
struct EcMaterial {
    signing: p256::ecdsa::SigningKey,
    kid: String,
    jwk: Value,
}

/// Every embedded key, parsed once per process.
struct EmbeddedKeys {
    rsa: [RsaMaterial; 3],
    rogue: RsaMaterial,
    ec: EcMaterial,
}

fn embedded() -> &'static EmbeddedKeys {
    static KEYS: OnceLock<EmbeddedKeys> = OnceLock::new();
    KEYS.get_or_init(|| EmbeddedKeys {
        rsa: [
            rsa_material(include_str!("keys/rsa1.pem")),
            rsa_material(include_str!("keys/rsa2.pem")),
            rsa_material(include_str!("keys/rsa3.pem")),
        ],
        rogue: rsa_material(include_str!("keys/rsa_rogue.pem")),
        ec: ec_material(include_str!("keys/ec1.pem")),
    })
}

/// base64url of the first 12 bytes of SHA-256 of `der`.
fn thumbprint(der: &[u8]) -> String {
    jwt::b64(&Sha256::digest(der)[..12])
}

fn rsa_material(pem: &str) -> RsaMaterial {
    let private = RsaPrivateKey::from_pkcs8_pem(pem).expect("embedded RSA keys are valid PKCS#8");
    let public = private.to_public_key();
    let der = public
        .to_public_key_der()
        .expect("an RSA public key always encodes as SPKI");
    let public_pem = public
        .to_public_key_pem(LineEnding::LF)
        .expect("an RSA public key always encodes as PEM");
    RsaMaterial {
        signing: rsa::pkcs1v15::SigningKey::<Sha256>::new(private),
        public,
        thumbprint: thumbprint(der.as_bytes()),
        public_pem,
    }
}

fn ec_material(pem: &str) -> EcMaterial {
    use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
    let signing =
        p256::ecdsa::SigningKey::from_pkcs8_pem(pem).expect("the embedded EC key is valid PKCS#8");
    let verifying = *signing.verifying_key();
    let der = verifying
        .to_public_key_der()
        .expect("a P-256 public key always encodes as SPKI");
    let kid = thumbprint(der.as_bytes());
    let point = verifying.to_encoded_point(false);
    let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| jwt::b64(c)).unwrap_or_default();
    let jwk = json!({
        "kty": "EC",
        "use": "sig",
        "alg": "ES256",
        "crv": "P-256",
        "kid": kid,
        "x": coordinate(point.x()),
        "y": coordinate(point.y()),
    });
    EcMaterial { signing, kid, jwk }
}

/// The issuer's HTTP routes.
fn routes(state: Arc<IssuerState>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/_emulator/mint", post(mint))
        .route("/_emulator/keys", post(keys_control))
        .route("/oauth/token", post(token))
        .with_state(state)
}

/// The body of every `503` the issuer answers while unavailable.
const UNAVAILABLE_BODY: &str = "Service Unavailable";

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        UNAVAILABLE_BODY,
    )
        .into_response()
}

fn cached_json(value: Value) -> Response {
    (
        [(header::CACHE_CONTROL, AUTH0_CACHE_CONTROL)],
        axum::Json(value),
    )
        .into_response()
}

async fn discovery(State(state): State<Arc<IssuerState>>) -> Response {
    state.discovery_requests.fetch_add(1, Ordering::Relaxed);
    if state.unavailable.load(Ordering::Relaxed) {
        return unavailable();
    }
    cached_json(state.discovery_json())
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Response {
    state.jwks_requests.fetch_add(1, Ordering::Relaxed);
    if state.unavailable.load(Ordering::Relaxed) || state.jwks_unavailable.load(Ordering::Relaxed) {
        return unavailable();
    }
    cached_json(state.jwks_json())
}

fn oauth_error(e: &OAuthError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(oauth_error_body(e)),
    )
        .into_response()
}

/// An OAuth 2.0 error response body (RFC 6749 section 5.2).
fn oauth_error_body(e: &OAuthError) -> Value {
    json!({ "error": e.error, "error_description": e.description })
}

/// `POST /oauth/token` (form-encoded), client_secret_post or client_secret_basic.
async fn token(
    State(state): State<Arc<IssuerState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    if state.unavailable.load(Ordering::Relaxed) {
        state.grants().count_request();
        return unavailable();
    }
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim()).ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let dec = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Some((dec(id), dec(secret)))
        });
    let (client_id, secret) = match &basic {
        Some((id, secret)) => (Some(id.as_str()), Some(secret.as_str())),
        None => (
            form.get("client_id").map(String::as_str),
            form.get("client_secret").map(String::as_str),
        ),
    };
    match state.token_grant(
        client_id,
        secret,
        form.get("grant_type").map(String::as_str),
        form.get("refresh_token").map(String::as_str),
    ) {
        Ok(body) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response(),
        Err(e) => oauth_error(&e),
    }
}

/// Body of `POST /_emulator/mint`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    sub: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

async fn mint(State(state): State<Arc<IssuerState>>, body: Bytes) -> Response {
    let request: MintRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            let message =
                format!("expected {{\"sub\": string, \"ttl_seconds\"?: number}}: {error}");
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": "invalid_request", "error_description": message })),
            )
                .into_response();
        }
    };
    let mut spec = TokenSpec::for_subject(request.sub);
    spec.lifetime = request.ttl_seconds.map(Duration::from_secs);
    axum::Json(json!({ "id_token": state.mint(&spec) })).into_response()
}

/// Body of `POST /_emulator/keys`: every field optional, applied in this order.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysRequest {
    /// Sign with the next key ([`OidcIssuer::rotate_keys`]).
    #[serde(default)]
    rotate: bool,
    /// Stop publishing every key but the signing key ([`OidcIssuer::retire_old_keys`]).
    #[serde(default)]
    retire_old: bool,
    /// Make discovery, JWKS and the token endpoint answer 503 ([`OidcIssuer::set_unavailable`]).
    unavailable: Option<bool>,
}

/// `POST /_emulator/keys`: key rotation and availability for scripts (the soak), answering
/// `{"current_kid", "published_kids", "unavailable"}`.
async fn keys_control(State(state): State<Arc<IssuerState>>, body: Bytes) -> Response {
    let request: KeysRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            let message = format!(
                "expected {{\"rotate\"?: bool, \"retire_old\"?: bool, \"unavailable\"?: bool}}: \
                 {error}"
            );
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": "invalid_request", "error_description": message })),
            )
                .into_response();
        }
    };
    if request.rotate {
        state.keys().rotate();
    }
    if request.retire_old {
        state.keys().retire_old();
    }
    if let Some(down) = request.unavailable {
        state.unavailable.store(down, Ordering::Relaxed);
    }
    let published: Vec<Value> = state.jwks_json()["keys"]
        .as_array()
        .map(|keys| keys.iter().filter_map(|k| k.get("kid").cloned()).collect())
        .unwrap_or_default();
    axum::Json(json!({
        "current_kid": state.keys().current().kid.clone(),
        "published_kids": published,
        "unavailable": state.unavailable.load(Ordering::Relaxed),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use http::Method;
    use openidconnect::core::{
        CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
        CoreProviderMetadata,
    };
    use openidconnect::{ClientId, IssuerUrl, JsonWebKey as _, Nonce};

    use super::*;
    use crate::clock::{from_unix_seconds, unix_seconds};
    use crate::testutil::{ManualClock, send};

    const NOW: i64 = 1_700_000_000;

    async fn start(options: IssuerOptions) -> (OidcIssuer, Arc<ManualClock>) {
        let clock = ManualClock::at_millis(1_700_000_000_000);
        let issuer = OidcIssuer::start(options, clock.shared())
            .await
            .expect("issuer starts");
        (issuer, clock)
    }

    fn segment(token: &str, index: usize) -> Value {
        let part = token.split('.').nth(index).expect("segment");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
    }

    fn jwks_of(issuer: &OidcIssuer) -> CoreJsonWebKeySet {
        serde_json::from_value(issuer.jwks_json()).expect("JWKS parses as CoreJsonWebKeySet")
    }

    /// Verifies `token` with the JWKS key named by its `kid`, the way openidconnect would.
    fn verify_with_jwks(issuer: &OidcIssuer, token: &str, alg: CoreJwsSigningAlgorithm) -> bool {
        let kid = segment(token, 0)["kid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (input, signature) = token.rsplit_once('.').expect("three segments");
        let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
        jwks_of(issuer)
            .keys()
            .iter()
            .filter(|key| key.key_id().map(|id| id.as_str()) == Some(kid.as_str()))
            .any(|key| {
                key.verify_signature(&alg, input.as_bytes(), &signature)
                    .is_ok()
            })
    }

    #[tokio::test]
    async fn discovery_parses_as_core_provider_metadata_over_http() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        let reply = send(Method::GET, &issuer.discovery_url(), &[], "").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), "application/json");
        let metadata: CoreProviderMetadata =
            serde_json::from_value(reply.json()).expect("parses as CoreProviderMetadata");
        let base = issuer.base_url();
        assert_eq!(metadata.issuer().as_str(), format!("{base}/"));
        assert_eq!(issuer.issuer(), format!("{base}/"));
        assert_eq!(
            metadata.jwks_uri().as_str(),
            format!("{base}/.well-known/jwks.json")
        );
        assert_eq!(
            metadata.token_endpoint().map(|url| url.as_str().to_owned()),
            Some(format!("{base}/oauth/token"))
        );
        assert_eq!(
            metadata.id_token_signing_alg_values_supported(),
            &vec![
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::EcdsaP256Sha256
            ]
        );
        assert_eq!(issuer.stats().discovery_requests, 1);
        assert_eq!(issuer.stats().jwks_requests, 0);
    }

    #[tokio::test]
    async fn jwks_parses_and_verifies_rs256_and_es256_tokens() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        let reply = send(Method::GET, &issuer.jwks_uri(), &[], "").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), "application/json");
        let jwks: CoreJsonWebKeySet = serde_json::from_str(&reply.body).expect("parses");
        assert_eq!(issuer.stats().jwks_requests, 1);
        let keys = reply.json()["keys"].as_array().expect("keys").clone();
        assert_eq!(keys.len(), 2, "one RSA key and the EC key: {keys:?}");
        assert_eq!(keys[0]["kty"], "RSA");
        assert_eq!(keys[0]["use"], "sig");
        assert_eq!(keys[0]["alg"], "RS256");
        assert_eq!(keys[0]["kid"], issuer.current_kid().as_str());
        assert_eq!(keys[0]["e"], "AQAB");
        assert_eq!(keys[1]["kty"], "EC");
        assert_eq!(keys[1]["crv"], "P-256");
        assert_eq!(keys[1]["alg"], "ES256");
        assert_eq!(jwks.keys().len(), 2);

        let rs = issuer.token_for("auth0|abc");
        assert!(verify_with_jwks(
            &issuer,
            &rs,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256
        ));
        let es = issuer.mint(&TokenSpec {
            alg: SigningAlg::Es256,
            ..TokenSpec::for_subject("auth0|abc")
        });
        assert_eq!(segment(&es, 0)["alg"], "ES256");
        assert!(verify_with_jwks(
            &issuer,
            &es,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256
        ));
        let tampered = issuer.mint(&TokenSpec {
            tamper_payload: true,
            ..TokenSpec::for_subject("auth0|abc")
        });
        assert_eq!(segment(&tampered, 1)["sub"], "auth0|abc-tampered");
        assert!(!verify_with_jwks(
            &issuer,
            &tampered,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256
        ));
    }

    #[tokio::test]
    async fn default_token_is_auth0_shaped() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        let token = issuer.token_for("auth0|abc");
        let header = segment(&token, 0);
        assert_eq!(
            header,
            json!({ "alg": "RS256", "typ": "JWT", "kid": issuer.current_kid() })
        );
        let claims = segment(&token, 1);
        assert_eq!(claims["iss"], issuer.issuer());
        assert!(claims["iss"].as_str().is_some_and(|iss| iss.ends_with('/')));
        assert_eq!(claims["aud"], DEFAULT_AUDIENCE, "a string, not an array");
        assert_eq!(claims["sub"], "auth0|abc");
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["exp"], NOW + 10 * 3600);
        assert_eq!(claims["nickname"], "abc");
        assert_eq!(claims["updated_at"], DEFAULT_UPDATED_AT);
        assert_eq!(claims["email_verified"], true);
        assert!(claims["sid"].as_str().is_some_and(|sid| sid.len() == 32));
        for absent in ["auth_time", "nbf", "azp", "nonce"] {
            assert!(claims.get(absent).is_none(), "{absent} must be absent");
        }

        // A real OIDC library accepts the token, loosely typed claims included.
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(DEFAULT_AUDIENCE.to_owned()),
            IssuerUrl::new(issuer.issuer().to_owned()).expect("issuer URL"),
            jwks_of(&issuer),
        )
        .set_time_fn(|| chrono::DateTime::from_timestamp(NOW + 60, 0).expect("valid timestamp"));
        let id_token = CoreIdToken::from_str(&token).expect("parses as an ID token");
        let verified = id_token
            .claims(&verifier, |_: Option<&Nonce>| Ok(()))
            .expect("openidconnect verifies the token");
        assert_eq!(verified.subject().as_str(), "auth0|abc");
        assert_eq!(verified.email_verified(), Some(true));
        assert!(
            verified.updated_at().is_some(),
            "string updated_at is accepted"
        );
    }

    #[tokio::test]
    async fn token_spec_controls_every_claim() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        let mut extra = Map::new();
        extra.insert("email_verified".into(), "true".into());
        extra.insert("https://example.com/roles".into(), json!(["admin"]));
        let token = issuer.mint(&TokenSpec {
            audience: vec!["a".into(), "b".into()],
            azp: Some("a".into()),
            issuer: Some("https://elsewhere.example.com/".into()),
            lifetime: Some(Duration::from_secs(60)),
            issued_at: Some(from_unix_seconds(NOW - 30)),
            not_before: Some(from_unix_seconds(NOW - 40)),
            omit_sub: true,
            kid: Some("custom-kid".into()),
            extra_claims: extra,
            nonce: Some("n-0S6_WzA2Mj".into()),
            ..TokenSpec::for_subject("auth0|abc")
        });
        assert_eq!(segment(&token, 0)["kid"], "custom-kid");
        let claims = segment(&token, 1);
        assert_eq!(claims["aud"], json!(["a", "b"]));
        assert_eq!(claims["azp"], "a");
        assert_eq!(claims["iss"], "https://elsewhere.example.com/");
        assert_eq!(claims["iat"], NOW - 30);
        assert_eq!(claims["exp"], NOW + 30);
        assert_eq!(claims["nbf"], NOW - 40);
        assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
        assert_eq!(
            claims["email_verified"], "true",
            "extra claims override defaults"
        );
        assert_eq!(claims["https://example.com/roles"], json!(["admin"]));
        assert!(claims.get("sub").is_none());

        let single_array = issuer.mint(&TokenSpec {
            aud_as_array: true,
            omit_exp: true,
            omit_kid: true,
            ..TokenSpec::for_subject("auth0|abc")
        });
        assert_eq!(segment(&single_array, 1)["aud"], json!([DEFAULT_AUDIENCE]));
        assert!(segment(&single_array, 1).get("exp").is_none());
        assert!(segment(&single_array, 0).get("kid").is_none());
    }

    #[tokio::test]
    async fn attack_tokens_are_what_they_claim() {
        use hmac::{Hmac, Mac as _};
        let (issuer, _) = start(IssuerOptions::default()).await;
        let mint = |alg: SigningAlg| {
            issuer.mint(&TokenSpec {
                alg,
                ..TokenSpec::for_subject("auth0|abc")
            })
        };
        let parts = |token: &str| -> (String, Vec<u8>) {
            let (input, signature) = token.rsplit_once('.').expect("three segments");
            (
                input.to_owned(),
                URL_SAFE_NO_PAD.decode(signature).expect("base64url"),
            )
        };

        // HMAC keyed with the published public key's PEM text.
        let confused = mint(SigningAlg::Hs256WithPublicKey);
        assert_eq!(segment(&confused, 0)["alg"], "HS256");
        assert_eq!(segment(&confused, 0)["kid"], issuer.current_kid().as_str());
        let pem = issuer
            .verifying_key(&issuer.current_kid())
            .expect("published")
            .to_public_key_pem(LineEnding::LF)
            .expect("PEM");
        let (input, signature) = parts(&confused);
        let mut mac = Hmac::<Sha256>::new_from_slice(pem.as_bytes()).expect("any key length");
        mac.update(input.as_bytes());
        mac.verify_slice(&signature)
            .expect("HMAC under the public key PEM");

        let hs = mint(SigningAlg::Hs256 {
            secret: b"shared".to_vec(),
        });
        let (input, signature) = parts(&hs);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"shared").expect("any key length");
        mac.update(input.as_bytes());
        mac.verify_slice(&signature).expect("HMAC under the secret");

        let none = mint(SigningAlg::None);
        assert_eq!(segment(&none, 0)["alg"], "none");
        assert!(none.ends_with('.'));

        let rogue = mint(SigningAlg::Rs256Unpublished);
        assert_eq!(segment(&rogue, 0)["kid"], issuer.current_kid().as_str());
        assert!(!verify_with_jwks(
            &issuer,
            &rogue,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256
        ));
        let (input, signature) = parts(&rogue);
        let rogue_key = &embedded().rogue.public;
        assert!(
            jwt::verify_rs256(rogue_key, &input, &signature),
            "really signed"
        );
    }

    #[tokio::test]
    async fn rotation_cycles_keys_with_unique_kids_and_retires_old_ones() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        let first = issuer.current_kid();
        assert!(first.ends_with("-g1"), "{first}");
        let stem = first.trim_end_matches("-g1").to_owned();
        assert_eq!(URL_SAFE_NO_PAD.decode(&stem).expect("base64url").len(), 12);

        let mut kids = vec![first.clone()];
        for _ in 0..3 {
            kids.push(issuer.rotate_keys());
        }
        assert_eq!(issuer.current_kid(), kids[3]);
        let mut unique = kids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4, "kids stay unique: {kids:?}");
        assert_eq!(
            kids[3],
            format!("{stem}-g4"),
            "rsa1 comes back with a new generation"
        );
        assert!(!kids[1].starts_with(&stem), "rsa2 is a different key");
        for kid in &kids {
            assert!(issuer.verifying_key(kid).is_some(), "{kid} still published");
        }
        assert_eq!(jwks_of(&issuer).keys().len(), 5);

        let token = issuer.token_for("auth0|abc");
        assert_eq!(segment(&token, 0)["kid"], kids[3].as_str());
        assert!(verify_with_jwks(
            &issuer,
            &token,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256
        ));

        issuer.retire_old_keys();
        assert!(issuer.verifying_key(&kids[0]).is_none());
        assert!(issuer.verifying_key(&kids[3]).is_some());
        let published: Vec<Value> = issuer.jwks_json()["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|key| key["kid"].clone())
            .collect();
        assert_eq!(published, vec![json!(kids[3]), json!(embedded().ec.kid)]);
        assert!(
            issuer.verifying_key(&embedded().ec.kid).is_none(),
            "EC keys are not RSA"
        );
    }

    /// The in-process redemption credbroker's tests use answers exactly what `POST /oauth/token`
    /// answers, and counts the same.
    #[tokio::test]
    async fn in_process_redemption_answers_like_the_token_endpoint() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        let post = |refresh_token: &str| {
            let body = format!(
                "grant_type=refresh_token&client_id={DEFAULT_AUDIENCE}&refresh_token={refresh_token}"
            );
            let url = issuer.token_endpoint();
            async move {
                let form = [("content-type", "application/x-www-form-urlencoded")];
                send(Method::POST, &url, &form, &body).await
            }
        };
        let first = issuer.issue_refresh_token("auth0|in-process");

        let granted = issuer.redeem_refresh_token(DEFAULT_AUDIENCE, None, &first);
        assert_eq!(granted.status, 200);
        let body: Value = serde_json::from_str(granted.body.expose_str()).expect("JSON body");
        let id_token = body["id_token"].as_str().expect("an ID token");
        assert_eq!(segment(id_token, 1)["sub"], "auth0|in-process");
        let rotated = body["refresh_token"]
            .as_str()
            .expect("a rotated refresh token");
        assert_ne!(rotated, first);

        // Reusing the retired token: refused in process and over HTTP with the same answer.
        let reused = issuer.redeem_refresh_token(DEFAULT_AUDIENCE, None, &first);
        let over_http = post(&first).await;
        assert_eq!((reused.status, over_http.status.as_u16()), (403, 403));
        let reused: Value = serde_json::from_str(reused.body.expose_str()).expect("JSON body");
        assert_eq!(reused, over_http.json());
        assert_eq!(reused["error"], "invalid_grant");

        issuer.set_unavailable(true);
        let down = issuer.redeem_refresh_token(DEFAULT_AUDIENCE, None, rotated);
        let over_http = post(rotated).await;
        assert_eq!((down.status, over_http.status.as_u16()), (503, 503));
        assert_eq!(down.body.expose_str(), over_http.body);
        assert_eq!(issuer.token_stats().requests, 5);
    }

    #[tokio::test]
    async fn unavailable_answers_503_and_counts() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        issuer.set_unavailable(true);
        assert_eq!(
            send(Method::GET, &issuer.discovery_url(), &[], "")
                .await
                .status,
            503
        );
        assert_eq!(
            send(Method::GET, &issuer.jwks_uri(), &[], "").await.status,
            503
        );
        issuer.set_unavailable(false);
        assert_eq!(
            send(Method::GET, &issuer.jwks_uri(), &[], "").await.status,
            200
        );
        assert_eq!(
            issuer.stats(),
            IssuerStats {
                discovery_requests: 1,
                jwks_requests: 2
            }
        );
    }

    #[tokio::test]
    async fn mint_endpoint_issues_tokens_for_scripts() {
        let (issuer, clock) = start(IssuerOptions {
            trailing_slash: false,
            ..IssuerOptions::default()
        })
        .await;
        assert_eq!(issuer.issuer(), issuer.base_url());
        assert_eq!(issuer.logins_key(), issuer.local_addr().to_string());
        clock.advance(Duration::from_secs(5));
        let url = format!("{}/_emulator/mint", issuer.base_url());
        let reply = send(
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            r#"{"sub": "auth0|scripted", "ttl_seconds": 120}"#,
        )
        .await;
        assert_eq!(reply.status, 200);
        let token = reply.json()["id_token"]
            .as_str()
            .expect("id_token")
            .to_owned();
        let claims = segment(&token, 1);
        assert_eq!(claims["sub"], "auth0|scripted");
        assert_eq!(claims["iss"], issuer.base_url());
        assert_eq!(claims["iat"], NOW + 5);
        assert_eq!(claims["exp"], NOW + 125);
        assert_eq!(unix_seconds(clock.now()), NOW + 5);

        let bad = send(Method::POST, &url, &[], r#"{"ttl_seconds": 1}"#).await;
        assert_eq!(bad.status, 400);
        assert_eq!(bad.json()["error"], "invalid_request");
    }

    #[tokio::test]
    async fn keys_endpoint_rotates_retires_and_takes_the_issuer_down_for_scripts() {
        let (issuer, _clock) = start(IssuerOptions::default()).await;
        let url = format!("{}/_emulator/keys", issuer.base_url());
        let old = issuer.current_kid();
        let reply = send(Method::POST, &url, &[], r#"{"rotate": true}"#).await;
        assert_eq!(reply.status, 200);
        let new = issuer.current_kid();
        assert_ne!(new, old);
        assert_eq!(reply.json()["current_kid"], new.as_str());
        let published = reply.json()["published_kids"].clone();
        assert!(
            published
                .as_array()
                .is_some_and(|k| k.contains(&old.as_str().into()))
        );

        let reply = send(Method::POST, &url, &[], r#"{"retire_old": true}"#).await;
        let published = reply.json()["published_kids"].clone();
        assert!(
            !published
                .as_array()
                .is_some_and(|k| k.contains(&old.as_str().into()))
        );
        assert!(
            published
                .as_array()
                .is_some_and(|k| k.contains(&new.as_str().into()))
        );

        let reply = send(Method::POST, &url, &[], r#"{"unavailable": true}"#).await;
        assert_eq!(reply.json()["unavailable"], true);
        let jwks = send(Method::GET, &issuer.jwks_uri(), &[], "").await;
        assert_eq!(jwks.status, 503);
        send(Method::POST, &url, &[], r#"{"unavailable": false}"#).await;
        assert_eq!(
            send(Method::GET, &issuer.jwks_uri(), &[], "").await.status,
            200
        );

        let bad = send(Method::POST, &url, &[], r#"{"spin": true}"#).await;
        assert_eq!(bad.status, 400);
    }

    #[tokio::test]
    async fn shutdown_stops_the_server_but_not_minting() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        let addr = issuer.local_addr();
        issuer.shutdown();
        tokio::time::timeout(Duration::from_secs(5), issuer.stopped())
            .await
            .expect("stops");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        assert!(!issuer.token_for("auth0|abc").is_empty());
    }

    fn user_pool() -> IssuerOptions {
        IssuerOptions {
            audience: "app-client-id".into(),
            flavor: Flavor::CognitoUserPool {
                region: "eu-west-1".into(),
                pool_id: "eu-west-1_AbCdEfGhI".into(),
            },
            ..IssuerOptions::default()
        }
    }

    #[tokio::test]
    async fn a_user_pool_issuer_presents_the_user_pool_issuer_and_claims() {
        let (issuer, _) = start(user_pool()).await;
        let iss = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEfGhI";
        assert_eq!(issuer.issuer(), iss);
        assert_eq!(
            issuer.logins_key(),
            "cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEfGhI"
        );
        // Served on loopback, naming the User Pool issuer.
        let reply = send(Method::GET, &issuer.discovery_url(), &[], "").await;
        assert_eq!(reply.status, 200);
        let metadata: CoreProviderMetadata =
            serde_json::from_value(reply.json()).expect("parses as CoreProviderMetadata");
        assert_eq!(metadata.issuer().as_str(), iss);
        assert_eq!(metadata.jwks_uri().as_str(), issuer.jwks_uri());
        let jwks = issuer.jwks_json();
        let kinds: Vec<&Value> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| &k["kty"])
            .collect();
        assert_eq!(kinds, vec!["RSA"], "User Pools publish RSA keys only");

        let id = segment(&issuer.token_for("4f1c-user"), 1);
        assert_eq!(id["iss"], iss);
        assert_eq!(id["token_use"], "id");
        assert_eq!(id["aud"], "app-client-id");
        assert_eq!(id["cognito:username"], "4f1c-user");
        assert_eq!(id["auth_time"], NOW);
        for absent in ["client_id", "updated_at", "sid", "nickname"] {
            assert!(id.get(absent).is_none(), "{absent} must be absent: {id}");
        }

        let access_token = issuer.mint(&TokenSpec {
            access_token: true,
            ..TokenSpec::for_subject("4f1c-user")
        });
        assert_eq!(segment(&access_token, 0)["typ"], "JWT");
        let access = segment(&access_token, 1);
        assert_eq!(access["token_use"], "access");
        assert_eq!(access["client_id"], "app-client-id");
        assert!(access.get("aud").is_none(), "{access}");
        assert_eq!(access["username"], "4f1c-user");
        assert!(verify_with_jwks(
            &issuer,
            &access_token,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256
        ));
    }

    #[tokio::test]
    async fn an_auth0_access_token_is_an_rfc_9068_one() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        let token = issuer.mint(&TokenSpec {
            access_token: true,
            ..TokenSpec::for_subject("auth0|abc")
        });
        assert_eq!(segment(&token, 0)["typ"], "at+jwt");
        let claims = segment(&token, 1);
        assert_eq!(claims["client_id"], DEFAULT_AUDIENCE);
        assert!(claims.get("token_use").is_none());
    }

    #[tokio::test]
    async fn the_jwks_alone_can_fail_and_jwks_uri_can_be_overridden() {
        let (issuer, _) = start(IssuerOptions::default()).await;
        issuer.set_jwks_unavailable(true);
        let discovery = send(Method::GET, &issuer.discovery_url(), &[], "").await;
        assert_eq!(discovery.status, 200);
        assert_eq!(
            send(Method::GET, &issuer.jwks_uri(), &[], "").await.status,
            503
        );
        issuer.set_jwks_unavailable(false);
        assert_eq!(
            send(Method::GET, &issuer.jwks_uri(), &[], "").await.status,
            200
        );

        let (elsewhere, _) = start(IssuerOptions {
            jwks_uri: Some("http://127.0.0.1:9/keys".into()),
            ..IssuerOptions::default()
        })
        .await;
        assert_eq!(elsewhere.jwks_uri(), "http://127.0.0.1:9/keys");
        assert_eq!(
            elsewhere.discovery_json()["jwks_uri"],
            "http://127.0.0.1:9/keys"
        );
    }

    #[test]
    fn logins_key_strips_scheme_and_one_slash() {
        assert_eq!(
            logins_key_of("https://tenant.auth0.com/"),
            "tenant.auth0.com"
        );
        assert_eq!(logins_key_of("http://127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(logins_key_of("https://x.example.com//"), "x.example.com/");
        assert_eq!(logins_key_of("x.example.com"), "x.example.com");
    }
}
