//! ID token validation.
//!
//! Owns: trusted providers' discovery documents and key sets, and the decision whether a raw
//! ID token is valid ([`Validator::validate`]).
//!
//! Promises:
//! - a token is accepted only if: it is at most `tokens.max_token_bytes` long; it is a compact
//!   JWS (three segments); its `alg` is one the provider allows (never `none` or HS*, which are
//!   refused with a message that names the fix); its `iss` equals a configured issuer byte for
//!   byte; it is an ID token (not a User Pool access token, `token_use: access`, nor an RFC 9068
//!   `typ: at+jwt` one); it has at least `tokens.min_token_validity` left before `exp` (no
//!   leeway: Cognito refuses an expired token, so none is ever sent to it); `nbf` and `iat`
//!   hold within `tokens.leeway` (clock skew); `aud` contains an accepted client id, and `azp`,
//!   when present, is one; `sub` is present; its header names a `kid` (Cognito and IAM pick the
//!   verification key by `kid`, so a token without one is refused here, not by Cognito); and
//!   its signature verifies with the provider's published key for that `kid`;
//! - each rejection has its own [`TokenError`] variant, code and actionable message;
//! - a token seen before is answered from a memo (`memo.rs`: keyed by a per-process keyed
//!   64-bit hash of the raw token, a hit confirmed by byte equality, at most
//!   `tokens.verified_cache_capacity` tokens) until it has less than
//!   `tokens.min_token_validity` left, so the hot path never repeats signature verification and
//!   the cache never serves a token the checks above would refuse;
//! - an unknown `kid` triggers at most one JWKS refetch per `tokens.jwks_refetch_interval` per
//!   provider (key rotation works; garbage tokens cannot make credbroker hammer the issuer);
//!   keys are also reloaded every `tokens.jwks_refresh_interval` (a JWKS *reload*; "refresh" is
//!   kept only in the config key). `UnknownKeyId` (401) means a
//!   JWKS fetched successfully within that interval lacks the key; when the refetch failed, or
//!   was rate-limited after a failed fetch, the answer is `ProviderUnavailable` (503, with a
//!   retry delay): a rotated-in key during an issuer outage is not a bad token;
//! - a provider whose keys could not be loaded yet answers `ProviderUnavailable` (503), retried
//!   in the background; it never blocks other providers;
//! - a failed load names the document that failed (discovery document or JWKS), its URL and
//!   what went wrong (HTTP status, transport error, invalid content, issuer mismatch):
//!   [`LoadError`]. The discovery document comes from `providers.<name>.discovery_url` when set,
//!   else `<issuer>/.well-known/openid-configuration`; either way it must name the configured
//!   issuer byte for byte, and its `jwks_uri` must be https (or http on loopback).
//!
//! openidconnect parses the discovery document and the JWKS and does the signature
//! cryptography; the two documents are fetched here, one after the other, so a failure names
//! the one that failed. Claims are read here, minimally: providers send loosely typed claims
//! (Auth0's string `updated_at`) that a strict parser would reject although credbroker never
//! needs them.
//!
//! Files: `provider.rs` (discovery, the JWKS and its reload), `validate.rs` (the checks above,
//! in order), `memo.rs` (verified tokens), `error.rs` (what a refusal or a failed load says).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::clock::{self, SharedClock};
use crate::config::{ProviderConfig, TokenConfig};
use crate::http::HttpsClient;
use crate::metrics::Metrics;
use crate::secret::SecretString;

mod error;
mod memo;
mod provider;
mod validate;

pub use error::{Document, LoadError, LoadProblem, TokenError};
pub use provider::Provider;

use memo::Memo;
use validate::remaining_validity;

/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// `d` in whole seconds, rounded up, at least one: a `Retry-After` that comes early is no use.
fn seconds_up(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(Duration::from_secs(1))
}

/// `Retry-After` while a provider's keys were never loaded (the background retry backs off
/// from 1 s up to a minute).
const NOT_LOADED_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The bytes at the end of a token its memo key hashes (within the signature of any JWS: an
/// ES256 signature is 86 characters, RS256 342).
const MEMO_KEY_TAIL: usize = 64;

/// A validated ID token.
pub struct VerifiedToken {
    /// The provider that issued it.
    pub provider: Arc<Provider>,
    /// The `sub` claim.
    pub subject: Arc<str>,
    /// The `exp` claim.
    pub expires_at: SystemTime,
    /// The token itself, for Cognito's `Logins` map.
    pub raw: SecretString,
    /// The OAuth client the token was issued to: `azp` when present, else the first `aud` that
    /// is one of the provider's accepted audiences (the client a refresh token belongs to).
    pub client_id: Arc<str>,
    /// The provider's key-withdrawal generation when this token was verified.
    generation: u64,
    /// What a layer above resolved this token to, opaque here: the identity cache remembers
    /// the token's identity, so a cached request looks up the token only (one lookup, not
    /// two). Weak: the identity holds the token.
    pub resolved: OnceLock<Weak<dyn Any + Send + Sync>>,
}

impl VerifiedToken {
    /// SHA-256 of the raw token, never logged: the identity cache's failure memory and the
    /// real-time relay tell tokens apart by it. Computed when asked (cold paths only), not
    /// held: 32 bytes less per cached identity.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.raw.expose_str().as_bytes()).into()
    }
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("provider", &self.provider.config.name)
            .field("subject", &self.subject)
            .field("expires_at", &clock::format_aws_timestamp(self.expires_at))
            .field("raw", &self.raw)
            .finish()
    }
}

/// What the memo says of a raw token.
enum Memoized {
    /// Decided without a signature check.
    Answer(Result<Arc<VerifiedToken>, TokenError>),
    /// Not verified before: `lookup` is its memo key.
    Unknown { lookup: u64, now: SystemTime },
}

/// Validates ID tokens against the configured providers.
pub struct Validator {
    providers: Vec<Arc<Provider>>,
    by_issuer: HashMap<String, Arc<Provider>>,
    /// Verified tokens by a keyed 64-bit hash of the raw token's length and tail
    /// ([`Validator::memo_key`]). A hit counts only when the stored token is byte-equal to the
    /// presented one, so a collision is a miss (and a re-verification), never a wrong answer.
    verified: Memo,
    /// Seeded at random per process, so nobody can aim collisions at someone else's entry.
    lookup: foldhash::quality::RandomState,
    config: TokenConfig,
    clock: SharedClock,
    metrics: Metrics,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("providers", &self.providers)
            .finish()
    }
}

impl Validator {
    /// Creates a validator for `providers`. Keys are not loaded until [`Validator::load_all`].
    pub fn new(
        providers: &[ProviderConfig],
        tokens: &TokenConfig,
        http: HttpsClient,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Self {
        let providers: Vec<Arc<Provider>> = providers
            .iter()
            .map(|p| {
                Arc::new(Provider::new(
                    p.clone(),
                    tokens,
                    http.clone(),
                    metrics.clone(),
                ))
            })
            .collect();
        let by_issuer = providers
            .iter()
            .map(|p| (p.config.issuer.clone(), p.clone()))
            .collect();
        let verified = Memo::new(tokens.verified_cache_capacity, tokens.min_token_validity);
        Self {
            providers,
            by_issuer,
            verified,
            lookup: foldhash::quality::RandomState::default(),
            config: tokens.clone(),
            clock,
            metrics,
        }
    }

    /// The configured providers.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// `Ok` when `token` still has at least `tokens.min_token_validity` left at `now`: the rule
    /// [`Validator::validate`] applies, for tokens held since (a session's) before they are
    /// sent to Cognito.
    pub fn check_remaining(
        &self,
        token: &VerifiedToken,
        now: SystemTime,
    ) -> Result<(), TokenError> {
        remaining_validity(token.expires_at, now, self.config.min_token_validity)
    }

    /// Loads every provider's discovery document and keys, concurrently. Failures are logged
    /// (each naming the document that failed) and retried by [`Validator::maintain`]; they do
    /// not fail start-up.
    pub async fn load_all(&self) {
        futures_util::future::join_all(self.providers.iter().map(|p| p.load())).await;
    }

    /// Keeps keys fresh until `shutdown`: retries providers that never loaded (backoff up to a
    /// minute) and reloads loaded ones every `tokens.jwks_refresh_interval`.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let tasks = self.providers.iter().cloned().map(|provider| {
            let shutdown = shutdown.clone();
            let refresh = self.config.jwks_refresh_interval;
            async move {
                let mut backoff = Duration::from_secs(1);
                loop {
                    let wait = if provider.is_ready() {
                        refresh
                    } else {
                        backoff
                    };
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    if provider.load().await.is_err() && !provider.is_ready() {
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    } else {
                        backoff = Duration::from_secs(1);
                    }
                }
            }
        });
        futures_util::future::join_all(tasks).await;
    }

    /// Validates a raw ID token. See the module docs for the rules.
    pub async fn validate(&self, raw: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        let (lookup, now) = match self.memoized(raw) {
            Memoized::Answer(answer) => return answer,
            Memoized::Unknown { lookup, now } => (lookup, now),
        };
        let mut provider_name = None;
        let result = self.validate_uncached(raw, now, &mut provider_name).await;
        match result {
            Ok(token) => {
                self.metrics
                    .token_validations
                    .with_label_values(&[token.provider.config.name.as_str(), "ok"])
                    .inc();
                self.verified.insert(lookup, token.clone(), now);
                Ok(token)
            }
            Err(e) => Err(self.count_failure(provider_name.as_deref(), e)),
        }
    }

    /// [`Validator::validate`]'s answer when it needs no signature check: a refusal of the
    /// token's size, or the memo's verdict on a token verified before. `None`: the token must
    /// be verified ([`Validator::validate`]). Never waits.
    pub fn validate_memoized(&self, raw: &str) -> Option<Result<Arc<VerifiedToken>, TokenError>> {
        match self.memoized(raw) {
            Memoized::Answer(answer) => Some(answer),
            Memoized::Unknown { .. } => None,
        }
    }

    fn memoized(&self, raw: &str) -> Memoized {
        if raw.is_empty() {
            return Memoized::Answer(Err(self.count_failure(None, TokenError::Missing)));
        }
        if raw.len() > self.config.max_token_bytes {
            return Memoized::Answer(Err(self.count_failure(
                None,
                TokenError::TooLarge {
                    len: raw.len(),
                    max: self.config.max_token_bytes,
                },
            )));
        }
        let lookup = self.memo_key(raw);
        let now = self.clock.now();
        // Plain equality: only a token with the same keyed hash is ever compared, so the timing
        // cannot be steered towards another caller's token; subtle's constant-time loop cost
        // ~2,500 instructions per cached request (callgrind).
        let Some(token) = self.verified.get(lookup).filter(|t| {
            t.raw.expose_str().as_bytes() == raw.as_bytes()
                && t.generation == t.provider.withdrawals.load(Ordering::Acquire)
        }) else {
            return Memoized::Unknown { lookup, now };
        };
        Memoized::Answer(match self.check_remaining(&token, now) {
            Ok(()) => {
                self.metrics.token_cached(&token.provider.config.name);
                Ok(token)
            }
            Err(e) => {
                self.verified.remove(lookup, &token);
                Err(self.count_failure(Some(&token.provider.config.name), e))
            }
        })
    }

    /// The memo key of `raw`: a keyed hash of its length and its last [`MEMO_KEY_TAIL`] bytes.
    /// A JWT ends with its signature, which differs between any two tokens, so the tail tells
    /// them apart as well as the whole token would, at a fixed cost (hashing all ~850 bytes of
    /// an Auth0 token was ~440 instructions per cached request, callgrind). A collision costs
    /// only a signature check: a hit is confirmed byte for byte, and only verified tokens are
    /// filed.
    fn memo_key(&self, raw: &str) -> u64 {
        let bytes = raw.as_bytes();
        let tail = bytes
            .get(bytes.len().saturating_sub(MEMO_KEY_TAIL)..)
            .unwrap_or(bytes);
        self.lookup.hash_one((bytes.len(), tail))
    }

    fn count_failure(&self, provider: Option<&str>, e: TokenError) -> TokenError {
        self.metrics
            .token_validations
            .with_label_values(&[provider.unwrap_or("unknown"), e.label()])
            .inc();
        e
    }
}

/// A verified token for unit tests elsewhere in the crate (no signature involved).
#[cfg(test)]
pub(crate) fn test_token(
    issuer: &str,
    subject: &str,
    expires_at: SystemTime,
) -> Arc<VerifiedToken> {
    let tokens = TokenConfig {
        max_token_bytes: 8192,
        leeway: Duration::from_secs(60),
        verified_cache_capacity: 16,
        jwks_refetch_interval: Duration::from_secs(30),
        jwks_refresh_interval: Duration::from_secs(3600),
        oidc_timeout: Duration::from_secs(1),
        min_token_validity: Duration::from_secs(60),
    };
    let config = ProviderConfig {
        name: "test".to_owned(),
        issuer: issuer.to_owned(),
        audiences: vec!["client".to_owned()],
        algorithms: vec![crate::config::Algorithm::Rs256],
        logins_key: crate::config::derive_logins_key(issuer),
        discovery_url: None,
    };
    let provider = Arc::new(Provider::new(
        config,
        &tokens,
        crate::http::client(tokens.oidc_timeout),
        Metrics::new(&[]),
    ));
    let raw = format!(
        "test-token-for-{subject}-{}",
        clock::unix_millis(expires_at)
    );
    Arc::new(VerifiedToken {
        provider,
        subject: subject.into(),
        expires_at,
        raw: raw.into(),
        client_id: "client".into(),
        generation: 0,
        resolved: OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::validate::*;
    use super::*;
    use crate::http as http_client;

    fn validator() -> (Validator, Arc<VerifiedToken>) {
        let cached = test_token(
            "https://issuer.test/",
            "auth0|alice",
            SystemTime::now() + Duration::from_secs(3600),
        );
        let tokens = TokenConfig {
            max_token_bytes: 8192,
            leeway: Duration::from_secs(60),
            verified_cache_capacity: 16,
            jwks_refetch_interval: Duration::from_secs(30),
            jwks_refresh_interval: Duration::from_secs(3600),
            oidc_timeout: Duration::from_secs(1),
            min_token_validity: Duration::from_secs(60),
        };
        let validator = Validator::new(
            std::slice::from_ref(&cached.provider.config),
            &tokens,
            http_client::client(tokens.oidc_timeout),
            clock::system(),
            Metrics::new(&[]),
        );
        (validator, cached)
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_token_needs_min_token_validity_left_and_gets_no_leeway_on_exp() {
        let min = Duration::from_secs(60);
        assert!(remaining_validity(at(100), at(40), min).is_ok());
        let soon = remaining_validity(at(100), at(41), min).expect_err("59 s left");
        assert_eq!(soon.code(), "TokenExpired");
        assert_eq!(soon.label(), "expires_soon");
        assert!(
            soon.to_string().contains("tokens.min_token_validity"),
            "{soon}"
        );
        let gone = remaining_validity(at(100), at(101), min).expect_err("expired 1 s ago");
        assert!(matches!(gone, TokenError::Expired { .. }), "{gone:?}");
        assert_eq!(gone.code(), "TokenExpired");
        assert!(remaining_validity(at(100), at(100), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn retry_delays_round_up_to_whole_seconds() {
        assert_eq!(seconds_up(Duration::from_millis(1)), Duration::from_secs(1));
        assert_eq!(
            seconds_up(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(seconds_up(Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(seconds_up(Duration::ZERO), Duration::from_secs(1));
    }

    fn parsed_with(typ: Option<&str>, claims: serde_json::Value) -> Parsed<'static> {
        Parsed {
            alg: "RS256".to_owned(),
            kid: Some("k".to_owned()),
            typ: typ.map(str::to_owned),
            claims: match claims {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            signing_input: "",
            signature: Vec::new(),
        }
    }

    #[test]
    fn access_tokens_are_told_from_id_tokens() {
        use serde_json::json;
        for (typ, claims, id_token) in [
            (Some("JWT"), json!({}), true),
            (None, json!({ "token_use": "id" }), true),
            (Some("JWT"), json!({ "token_use": "access" }), false),
            (Some("at+jwt"), json!({}), false),
            (Some("application/AT+JWT"), json!({}), false),
            (None, json!({ "token_use": 1 }), false),
        ] {
            let result = check_token_use(&parsed_with(typ, claims.clone()));
            assert_eq!(result.is_ok(), id_token, "{typ:?} {claims}");
            if let Err(e) = result {
                assert_eq!(e.code(), "NotAnIdToken");
                assert!(e.to_string().contains("send the ID token"), "{e}");
            }
        }
    }

    #[test]
    fn load_errors_name_the_document_its_url_and_the_problem() {
        let e = |document, problem, after_discovery| LoadError {
            provider: "auth0".to_owned(),
            document,
            url: "https://x.example/doc".to_owned(),
            problem,
            issuer: "https://x.example/".to_owned(),
            after_discovery,
        };
        assert_eq!(
            e(Document::Jwks, LoadProblem::Status(503), true).to_string(),
            "the JWKS at https://x.example/doc answered HTTP 503 Service Unavailable (the \
             discovery document loaded)"
        );
        assert_eq!(
            e(Document::Discovery, LoadProblem::Status(404), false).to_string(),
            "the discovery document at https://x.example/doc answered HTTP 404 Not Found"
        );
        let mismatch = e(
            Document::Discovery,
            LoadProblem::IssuerMismatch {
                found: "https://x.example".to_owned(),
            },
            false,
        )
        .to_string();
        assert!(
            mismatch.contains("names the issuer \"https://x.example\"")
                && mismatch.contains("providers.auth0.issuer is \"https://x.example/\""),
            "{mismatch}"
        );
        let transport = e(
            Document::Jwks,
            LoadProblem::Transport("connection refused".to_owned()),
            false,
        );
        assert_eq!(
            transport.to_string(),
            "the JWKS at https://x.example/doc could not be fetched: connection refused"
        );
    }

    #[test]
    fn the_discovery_url_defaults_to_the_well_known_path_of_the_issuer() {
        let (validator, _) = validator();
        let provider = &validator.providers()[0];
        assert_eq!(
            provider.discovery_url(),
            "https://issuer.test/.well-known/openid-configuration"
        );
        let pool = test_token(
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC",
            "sub",
            SystemTime::now(),
        );
        assert_eq!(
            pool.provider.discovery_url(),
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC/.well-known/openid-configuration"
        );
    }

    #[tokio::test]
    async fn a_cached_token_is_served_only_to_the_byte_equal_token() {
        let (validator, cached) = validator();
        let raw = cached.raw.expose_str().to_owned();
        // Where it belongs: served from the cache (the raw text is no JWT, so only the cache
        // can have answered).
        validator
            .verified
            .insert(validator.memo_key(&raw), cached.clone(), SystemTime::now());
        let hit = validator.validate(&raw).await.expect("cached");
        assert!(Arc::ptr_eq(&hit, &cached));

        // A hash collision, simulated by filing alice's token under another token's hash: the
        // other token must be judged on its own (here: not a JWT), never handed alice's identity.
        let other = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl";
        validator
            .verified
            .insert(validator.memo_key(other), cached.clone(), SystemTime::now());
        let refused = validator.validate(other).await;
        assert!(refused.is_err(), "a colliding token got alice's identity");
    }
}
