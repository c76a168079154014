//! One OIDC provider ([`Provider`]): discovery, the JWKS and its reload (periodic, and
//! rate-limited on an unknown `kid`), key withdrawal.

use crate::config::{ProviderConfig, TokenConfig};
use crate::http::{self as http_client, HttpsClient};
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use openidconnect::JsonWebKey;
use openidconnect::core::{CoreJsonWebKeySet, CoreProviderMetadata};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::Document;
use super::error::LoadError;
use super::error::LoadProblem;
use super::{MAX_DOCUMENT_BYTES, seconds_up};

/// A trusted provider and its current keys.
pub struct Provider {
    /// Its configuration.
    pub config: ProviderConfig,
    /// `config.issuer`, shared by every identity key of this provider, so building a key on the
    /// hot path copies a pointer instead of allocating.
    pub(super) issuer: Arc<str>,
    /// `config.audiences`, shared by every verified token's `client_id` (one allocation per
    /// client id, not one per token).
    pub(super) audiences: Vec<Arc<str>>,
    pub(super) keys: ArcSwapOption<KeySet>,
    pub(super) http: HttpsClient,
    pub(super) timeout: Duration,
    pub(super) refetch_interval: Duration,
    /// Serializes fetches (single-flight).
    pub(super) fetch_lock: tokio::sync::Mutex<()>,
    /// When the last fetch started (tokio time, so tests can pause it).
    pub(super) last_fetch: Mutex<Option<tokio::time::Instant>>,
    pub(super) last_error: Mutex<Option<LoadError>>,
    /// Incremented whenever a refetch withdraws a key id: verifications made before no longer
    /// count (a withdrawn key may have been compromised).
    pub(super) withdrawals: AtomicU64,
    pub(super) metrics: Metrics,
}

pub(super) struct KeySet {
    pub(super) jwks: CoreJsonWebKeySet,
    pub(super) kids: BTreeSet<String>,
    pub(super) jwks_uri: openidconnect::JsonWebKeySetUrl,
    /// The discovery document's `token_endpoint` (refresh-token grants).
    pub(super) token_endpoint: Option<String>,
    /// The discovery document's `id_token_signing_alg_values_supported`, as JOSE names.
    pub(super) signing_algs: Vec<String>,
}

/// What discovery told: where the keys are and what the issuer offers. Kept in the
/// [`KeySet`], so later loads fetch only the JWKS.
struct Discovered {
    jwks_uri: openidconnect::JsonWebKeySetUrl,
    token_endpoint: Option<String>,
    signing_algs: Vec<String>,
}

/// The outcome of asking for a refetch after an unknown `kid`.
pub(super) enum Refetch {
    /// The JWKS was fetched now (by this task or one it waited for): the keys held are fresh.
    Fetched,
    /// The refetch was made and failed.
    Failed(LoadError),
    /// Rate-limited: the last fetch started less than `refetch_interval` ago.
    Suppressed {
        /// That fetch's error, if it failed.
        last_failed: Option<LoadError>,
        /// When the next refetch is allowed.
        retry_in: Duration,
    },
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("issuer", &self.config.issuer)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Provider {
    pub(super) fn new(
        config: ProviderConfig,
        tokens: &TokenConfig,
        http: HttpsClient,
        metrics: Metrics,
    ) -> Self {
        Self {
            issuer: config.issuer.as_str().into(),
            audiences: config.audiences.iter().map(|a| a.as_str().into()).collect(),
            config,
            keys: ArcSwapOption::empty(),
            http,
            timeout: tokens.oidc_timeout,
            refetch_interval: tokens.jwks_refetch_interval,
            fetch_lock: tokio::sync::Mutex::new(()),
            last_fetch: Mutex::new(None),
            last_error: Mutex::new(None),
            withdrawals: AtomicU64::new(0),
            metrics,
        }
    }

    /// The issuer (`config.issuer`) as a shared string.
    pub fn issuer(&self) -> &Arc<str> {
        &self.issuer
    }

    /// Whether the provider's keys have been loaded at least once.
    pub fn is_ready(&self) -> bool {
        self.keys.load().is_some()
    }

    /// The discovery document's `token_endpoint`, once discovery succeeded.
    pub fn token_endpoint(&self) -> Option<String> {
        self.keys
            .load()
            .as_ref()
            .and_then(|k| k.token_endpoint.clone())
    }

    /// The last load error, if the last load failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_load_error().map(|e| e.to_string())
    }

    /// The last load error as a value (which document, which URL, what), if the last load
    /// failed.
    pub fn last_load_error(&self) -> Option<LoadError> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `kid`s of the keys currently held (empty before the first load).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .load()
            .as_ref()
            .map(|k| k.kids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The discovery document's `id_token_signing_alg_values_supported` (e.g. `["RS256"]`),
    /// once discovery succeeded.
    pub fn signing_algs(&self) -> Vec<String> {
        self.keys
            .load()
            .as_ref()
            .map(|k| k.signing_algs.clone())
            .unwrap_or_default()
    }

    /// The discovery document's `jwks_uri`, once discovery succeeded.
    pub fn jwks_uri(&self) -> Option<String> {
        self.keys
            .load()
            .as_ref()
            .map(|k| k.jwks_uri.as_str().to_owned())
    }

    /// Where the discovery document is fetched ([`ProviderConfig::discovery_url`]).
    pub fn discovery_url(&self) -> String {
        self.config.discovery_url()
    }

    /// Loads (or reloads) discovery and keys now. Once discovery succeeded, later loads fetch
    /// only the JWKS. The error names the document that failed.
    pub async fn load(&self) -> Result<(), LoadError> {
        let _guard = self.fetch_lock.lock().await;
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now());
        self.fetch_locked().await
    }

    pub(super) async fn fetch_locked(&self) -> Result<(), LoadError> {
        let result = self.fetch_keys().await;
        let name = self.config.name.as_str();
        match result {
            Ok(new) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[name, "ok"])
                    .inc();
                let old = self.keys.load_full();
                if let Some(old) = &old
                    && old.kids != new.kids
                {
                    self.metrics.jwks_rotations.with_label_values(&[name]).inc();
                    if old.kids.difference(&new.kids).next().is_some() {
                        self.withdrawals.fetch_add(1, Ordering::Release);
                    }
                    tracing::info!(
                        target: "credbroker::oidc",
                        provider = name,
                        kids = ?new.kids,
                        previous = ?old.kids,
                        "provider key set changed"
                    );
                }
                if old.is_none() {
                    tracing::info!(target: "credbroker::oidc", provider = name, kids = ?new.kids, "provider keys loaded");
                }
                self.keys.store(Some(Arc::new(new)));
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[name, "error"])
                    .inc();
                tracing::warn!(target: "credbroker::oidc", provider = name, error = %e, "loading provider keys failed");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                Err(e)
            }
        }
    }

    pub(super) fn load_error(
        &self,
        document: Document,
        url: &str,
        problem: LoadProblem,
    ) -> LoadError {
        LoadError {
            provider: self.config.name.clone(),
            document,
            url: url.to_owned(),
            problem,
            issuer: self.config.issuer.clone(),
            after_discovery: false,
        }
    }

    /// GETs one document: its body, or what went wrong with it.
    pub(super) async fn get_document(
        &self,
        document: Document,
        url: &str,
    ) -> Result<Vec<u8>, LoadError> {
        let fail = |problem| self.load_error(document, url, problem);
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| fail(LoadProblem::Transport(format!("invalid URL: {e}"))))?;
        let response = http_client::fetch(&self.http, request, self.timeout, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|e| {
                fail(match e {
                    http_client::FetchError::TooLarge(_) => LoadProblem::TooLarge,
                    http_client::FetchError::Timeout(t) => {
                        LoadProblem::Transport(format!("no answer within {} ms", t.as_millis()))
                    }
                    other => LoadProblem::Transport(other.to_string()),
                })
            })?;
        if response.status() != http::StatusCode::OK {
            return Err(fail(LoadProblem::Status(response.status().as_u16())));
        }
        let accepted: &[&str] = match document {
            Document::Discovery => &["application/json"],
            Document::Jwks => &["application/json", "application/jwk-set+json"],
        };
        if let Some(content_type) = response.headers().get(http::header::CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            if !accepted.iter().any(|a| essence.eq_ignore_ascii_case(a)) {
                return Err(fail(LoadProblem::Invalid(format!(
                    "its Content-Type is {content_type:?}, not application/json"
                ))));
            }
        }
        Ok(response.into_body())
    }

    /// Discovery (first load only: later loads reuse what it told) and the JWKS. A JWKS
    /// failure right after discovery says so ([`LoadError`]'s `after_discovery`).
    pub(super) async fn fetch_keys(&self) -> Result<KeySet, LoadError> {
        let known = self.keys.load().as_ref().map(|k| Discovered {
            jwks_uri: k.jwks_uri.clone(),
            token_endpoint: k.token_endpoint.clone(),
            signing_algs: k.signing_algs.clone(),
        });
        let first_load = known.is_none();
        let discovered = match known {
            Some(known) => known,
            None => self.discover().await?,
        };
        let jwks = self
            .fetch_jwks(&discovered.jwks_uri)
            .await
            .map_err(|e| LoadError {
                after_discovery: first_load,
                ..e
            })?;
        let kids = jwks
            .keys()
            .iter()
            .filter_map(|k| k.key_id().map(|id| id.as_str().to_owned()))
            .collect();
        Ok(KeySet {
            jwks,
            kids,
            jwks_uri: discovered.jwks_uri,
            token_endpoint: discovered.token_endpoint,
            signing_algs: discovered.signing_algs,
        })
    }

    /// Fetches the discovery document and takes what the keys need from it: it must name the
    /// configured issuer byte for byte, and a `jwks_uri` that is https (or loopback http).
    async fn discover(&self) -> Result<Discovered, LoadError> {
        let url = self.discovery_url();
        let fail = |problem| self.load_error(Document::Discovery, &url, problem);
        let body = self.get_document(Document::Discovery, &url).await?;
        let metadata: CoreProviderMetadata =
            serde_json::from_slice(&body).map_err(|e| fail(LoadProblem::Invalid(e.to_string())))?;
        if metadata.issuer().as_str() != self.config.issuer {
            return Err(fail(LoadProblem::IssuerMismatch {
                found: metadata.issuer().as_str().to_owned(),
            }));
        }
        let jwks_uri = metadata.jwks_uri().clone();
        if crate::config::check_http_url(jwks_uri.as_str(), "jwks_uri").is_err() {
            return Err(fail(LoadProblem::InsecureJwksUri(
                jwks_uri.as_str().to_owned(),
            )));
        }
        let signing_algs = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter_map(|a| match serde_json::to_value(a) {
                Ok(Value::String(name)) => Some(name),
                _ => None,
            })
            .collect();
        Ok(Discovered {
            jwks_uri,
            token_endpoint: metadata.token_endpoint().map(|u| u.as_str().to_owned()),
            signing_algs,
        })
    }

    /// Fetches and parses the JWKS at `jwks_uri`.
    async fn fetch_jwks(
        &self,
        jwks_uri: &openidconnect::JsonWebKeySetUrl,
    ) -> Result<CoreJsonWebKeySet, LoadError> {
        let body = self.get_document(Document::Jwks, jwks_uri.as_str()).await?;
        serde_json::from_slice(&body).map_err(|e| {
            self.load_error(
                Document::Jwks,
                jwks_uri.as_str(),
                LoadProblem::Invalid(e.to_string()),
            )
        })
    }

    /// Refetches keys after an unknown `kid`, at most once per `refetch_interval`.
    pub(super) async fn refetch_for_unknown_kid(&self, kid: &str) -> Refetch {
        let _guard = self.fetch_lock.lock().await;
        // Another task may have refetched while we waited: if the kid is known now, done.
        if self
            .keys
            .load()
            .as_ref()
            .is_some_and(|k| k.kids.contains(kid))
        {
            return Refetch::Fetched;
        }
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            if let Some(at) = *last
                && now.duration_since(at) < self.refetch_interval
            {
                self.metrics
                    .jwks_refetch_suppressed
                    .with_label_values(&[self.config.name.as_str()])
                    .inc();
                let retry_in = seconds_up(self.refetch_interval - now.duration_since(at));
                return Refetch::Suppressed {
                    last_failed: self.last_load_error(),
                    retry_in,
                };
            }
            *last = Some(now);
        }
        tracing::debug!(target: "credbroker::oidc", provider = %self.config.name, kid, "unknown kid; refetching JWKS");
        match self.fetch_locked().await {
            Ok(()) => Refetch::Fetched,
            Err(e) => Refetch::Failed(e),
        }
    }

    pub(super) fn algorithms_text(&self) -> String {
        self.config
            .algorithms
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
