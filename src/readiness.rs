//! Readiness: whether this broker can hand out credentials now, and if not, why.
//!
//! Owns: the record of Cognito's last answer ([`CognitoWatch`], fed by every call through
//! [`Watched`]), the on-demand Cognito reachability probe, the "shutting down" flag, and the
//! [`Report`] that `/readyz` serves and the `credbroker_ready` gauges mirror.
//!
//! Promises:
//! - ready means: not shutting down, every provider's keys loaded at least once, and Cognito
//!   answers — proven by servable credentials in the cache, by Cognito's last answer to a real
//!   call, or by a probe;
//! - a Cognito *answer* is a success or any modelled Cognito error (NotAuthorized, throttling,
//!   …: the endpoint is there and talking); timeouts, connection failures, 5xx and unparseable
//!   answers are not;
//! - the probe is an unsigned `GetId` with a placeholder login (Cognito refuses it, which proves
//!   it answers; a missing identity pool is reported as not ready). It runs only when `/readyz`
//!   is asked and nothing else proves Cognito answers, at most once per
//!   `admin.cognito_probe_interval`, and `/readyz` waits for it at most `admin.probe_wait`;
//!   scrapes ([`Readiness::report`]) never call upstream;
//! - a provider without keys is reported with the document that failed (its discovery document
//!   or its JWKS), that document's URL and its HTTP status or transport error
//!   ([`crate::oidc::LoadError`]), never a generic "discovery failed";
//! - the report names providers and error classes only: never a token, subject or identity id.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::clock::{self, SharedClock};
use crate::cognito::{BoxFuture, CognitoApi, ErrorKind, Login, RawCredentials, UpstreamError};
use crate::config::AdminConfig;
use crate::identity::IdentityCache;
use crate::metrics::Metrics;
use crate::oidc::Validator;
use crate::secret::SecretString;

/// The placeholder token the probe sends. Not a JWT: Cognito refuses it without further work.
const PROBE_TOKEN: &str = "credbroker-readiness-probe";
/// Upper bound of one probe, whatever the SDK's own timeouts.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest Cognito message kept in the report.
const MAX_DETAIL: usize = 200;

/// What Cognito's last answer says about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CognitoStatus {
    /// Nothing has been sent to Cognito yet.
    Unknown,
    /// Cognito answered (success or a modelled error).
    Answered,
    /// The last attempt got no usable answer (timeout, network, 5xx, garbage), or the probe
    /// found no identity pool.
    Failing,
}

#[derive(Debug, Clone)]
struct Contact {
    status: CognitoStatus,
    detail: String,
    at: Option<SystemTime>,
}

/// The last thing Cognito said. Shared by [`Watched`] and [`Readiness`].
#[derive(Debug)]
pub struct CognitoWatch {
    last: Mutex<Contact>,
    clock: SharedClock,
}

impl CognitoWatch {
    /// Nothing seen yet.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            last: Mutex::new(Contact {
                status: CognitoStatus::Unknown,
                detail: "no call made yet".to_owned(),
                at: None,
            }),
            clock,
        }
    }

    fn record(&self, status: CognitoStatus, detail: String) {
        let mut detail = detail;
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Contact {
            status,
            detail,
            at: Some(self.clock.now()),
        };
    }

    fn observe(&self, result: Result<(), &UpstreamError>) {
        match result {
            Ok(()) => self.record(CognitoStatus::Answered, "last call succeeded".to_owned()),
            Err(e) if answered(e.kind) => self.record(
                CognitoStatus::Answered,
                format!("last call answered {}", e.kind.label()),
            ),
            Err(e) => self.record(CognitoStatus::Failing, e.to_string()),
        }
    }

    /// The current status.
    pub fn status(&self) -> CognitoStatus {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).status
    }

    fn snapshot(&self) -> Contact {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Whether an error class means the endpoint is there and talking.
fn answered(kind: ErrorKind) -> bool {
    !matches!(
        kind,
        ErrorKind::InternalError
            | ErrorKind::ExternalService
            | ErrorKind::Timeout
            | ErrorKind::Unavailable
            | ErrorKind::Unexpected
    )
}

/// A [`CognitoApi`] that records every outcome in a [`CognitoWatch`].
pub struct Watched {
    inner: Arc<dyn CognitoApi>,
    watch: Arc<CognitoWatch>,
}

impl Watched {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn CognitoApi>, watch: Arc<CognitoWatch>) -> Self {
        Self { inner, watch }
    }
}

impl CognitoApi for Watched {
    fn get_id<'a>(
        &'a self,
        identity_pool_id: &'a str,
        login: Login<'a>,
    ) -> BoxFuture<'a, Result<String, UpstreamError>> {
        Box::pin(async move {
            let result = self.inner.get_id(identity_pool_id, login).await;
            self.watch.observe(result.as_ref().map(|_| ()));
            result
        })
    }

    fn get_credentials<'a>(
        &'a self,
        identity_id: &'a str,
        login: Login<'a>,
        custom_role_arn: Option<&'a str>,
    ) -> BoxFuture<'a, Result<RawCredentials, UpstreamError>> {
        Box::pin(async move {
            let result = self
                .inner
                .get_credentials(identity_id, login, custom_role_arn)
                .await;
            self.watch.observe(result.as_ref().map(|_| ()));
            result
        })
    }
}

/// One provider in the [`Report`].
#[derive(Debug, Clone, Serialize)]
pub struct ProviderReport {
    /// The configured name.
    pub name: String,
    /// Whether discovery and JWKS loaded at least once.
    pub keys_loaded: bool,
    /// The last load error, if the last load failed: which document (discovery document or
    /// JWKS), its URL, and its HTTP status or transport error.
    pub last_error: Option<String>,
}

/// Cognito in the [`Report`].
#[derive(Debug, Clone, Serialize)]
pub struct CognitoReport {
    /// What the last answer says.
    pub status: CognitoStatus,
    /// A short description of the last answer.
    pub detail: String,
    /// Seconds since the last answer or failure, when there was one.
    pub seconds_since_last_contact: Option<u64>,
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether the broker is ready.
    pub ready: bool,
    /// Why not, one sentence each (empty when ready).
    pub reasons: Vec<String>,
    /// Whether a shutdown is draining requests.
    pub shutting_down: bool,
    /// Every configured provider.
    pub providers: Vec<ProviderReport>,
    /// Cognito.
    pub cognito: CognitoReport,
    /// Whether any cached credentials are servable (they prove Cognito answered recently).
    pub credentials_cached: bool,
    /// Fleet mode's shared tier, when configured. Its outage never makes the broker unready
    /// (the replica exchanges on its own): it shows here and in `warnings`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedReport>,
    /// What works in a degraded way without making the broker unready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The shared tier's state.
#[derive(Debug, Clone, Serialize)]
pub struct SharedReport {
    /// `ok`, or `unavailable` while Redis is skipped.
    pub status: &'static str,
    /// Seconds since it stopped answering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_for_seconds: Option<u64>,
    /// How it failed (timeout, io, server, protocol).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
}

/// What one Cognito probe found.
#[derive(Debug, Clone)]
pub enum ProbeAnswer {
    /// Cognito answered: `None` if it accepted the placeholder (it should not), else its
    /// modelled refusal (NotAuthorized, throttling, …). The endpoint is there and the pool exists.
    Answered(Option<UpstreamError>),
    /// Cognito answered that the identity pool does not exist (in the region asked).
    PoolNotFound(UpstreamError),
    /// No usable answer: connection failure, 5xx, an unparseable answer.
    Failing(UpstreamError),
    /// No answer within this long.
    TimedOut(Duration),
}

/// The probe: an unsigned `GetId` for `identity_pool_id` with a placeholder token (not a JWT)
/// under `logins_key`, bounded by [`PROBE_TIMEOUT`]. Cognito refuses it; the refusal's type
/// tells a reachable pool from a missing one. Shared by `/readyz` and `credbroker doctor`.
pub async fn probe_cognito(
    api: &dyn CognitoApi,
    identity_pool_id: &str,
    logins_key: &str,
) -> ProbeAnswer {
    let token = SecretString::new(PROBE_TOKEN.to_owned());
    let login = Login {
        key: logins_key,
        token: &token,
    };
    match tokio::time::timeout(PROBE_TIMEOUT, api.get_id(identity_pool_id, login)).await {
        Ok(Ok(_)) => ProbeAnswer::Answered(None),
        Ok(Err(e)) if e.kind == ErrorKind::ResourceNotFound => ProbeAnswer::PoolNotFound(e),
        Ok(Err(e)) if answered(e.kind) => ProbeAnswer::Answered(Some(e)),
        Ok(Err(e)) => ProbeAnswer::Failing(e),
        Err(_) => ProbeAnswer::TimedOut(PROBE_TIMEOUT),
    }
}

/// Readiness of one broker.
pub struct Readiness {
    validator: Arc<Validator>,
    identities: IdentityCache,
    watch: Arc<CognitoWatch>,
    /// The unwatched API, so probe outcomes are classified here (a missing pool is "failing").
    api: Arc<dyn CognitoApi>,
    identity_pool_id: String,
    /// The `Logins` key the probe uses (the first provider's).
    probe_logins_key: Option<String>,
    probe_interval: Duration,
    probe_wait: Duration,
    /// Serializes probes; holds when the last one started.
    probe_last: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    draining: AtomicBool,
    clock: SharedClock,
    metrics: Metrics,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("cognito", &self.watch.status())
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Readiness {
    /// Assembles readiness for a broker. `api` is the unwatched Cognito API.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        validator: Arc<Validator>,
        identities: IdentityCache,
        watch: Arc<CognitoWatch>,
        api: Arc<dyn CognitoApi>,
        identity_pool_id: &str,
        admin: &AdminConfig,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Self {
        let probe_logins_key = validator
            .providers()
            .first()
            .map(|p| p.config.logins_key.clone());
        Self {
            validator,
            identities,
            watch,
            api,
            identity_pool_id: identity_pool_id.to_owned(),
            probe_logins_key,
            probe_interval: admin.cognito_probe_interval,
            probe_wait: admin.probe_wait,
            probe_last: tokio::sync::Mutex::new(None),
            draining: AtomicBool::new(false),
            clock,
            metrics,
        }
    }

    /// From now on the broker reports "shutting down" (not ready).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.report();
    }

    /// Whether a shutdown started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The report for `/readyz`: probes Cognito first (bounded by `admin.probe_wait`) when
    /// nothing else shows it answers.
    pub async fn check(self: &Arc<Self>) -> Report {
        if !self.is_draining()
            && self.watch.status() != CognitoStatus::Answered
            && !self.credentials_cached()
        {
            let this = self.clone();
            let probe = tokio::spawn(async move { this.probe_if_due().await });
            // On timeout the probe goes on in the background and a later check sees its result.
            let _ = tokio::time::timeout(self.probe_wait, probe).await;
        }
        self.report()
    }

    /// The report from what is known now, without calling anything; updates the gauges.
    pub fn report(&self) -> Report {
        let shutting_down = self.is_draining();
        let mut reasons = Vec::new();
        if shutting_down {
            reasons.push("shutting down: draining in-flight requests".to_owned());
        }
        let providers: Vec<ProviderReport> = self
            .validator
            .providers()
            .iter()
            .map(|p| {
                let keys_loaded = p.is_ready();
                let last_error = p.last_error();
                self.metrics
                    .provider_keys_loaded
                    .with_label_values(&[p.config.name.as_str()])
                    .set(i64::from(keys_loaded));
                if !keys_loaded {
                    reasons.push(format!(
                        "provider {}: discovery and JWKS not loaded yet: {}",
                        p.config.name,
                        last_error.as_deref().unwrap_or("no attempt finished")
                    ));
                }
                ProviderReport {
                    name: p.config.name.clone(),
                    keys_loaded,
                    last_error,
                }
            })
            .collect();
        let contact = self.watch.snapshot();
        let credentials_cached = self.credentials_cached();
        self.metrics
            .cognito_reachable
            .set(i64::from(contact.status == CognitoStatus::Answered));
        if contact.status != CognitoStatus::Answered && !credentials_cached {
            reasons.push(match contact.status {
                CognitoStatus::Unknown => "cognito: not contacted yet".to_owned(),
                _ => format!(
                    "cognito: no answer and no cached credentials ({})",
                    contact.detail
                ),
            });
        }
        let now = self.clock.now();
        let ready = reasons.is_empty();
        self.metrics.ready.set(i64::from(ready));
        let mut warnings = Vec::new();
        let shared = self.shared_report(&mut warnings);
        Report {
            ready,
            reasons,
            shutting_down,
            providers,
            cognito: CognitoReport {
                status: contact.status,
                detail: contact.detail,
                seconds_since_last_contact: contact
                    .at
                    .map(|at| clock::saturating_sub(now, at).as_secs()),
            },
            credentials_cached,
            shared,
            warnings,
        }
    }

    /// The shared tier's state (read from its breaker, never by calling Redis); an outage is a
    /// warning, not a reason.
    fn shared_report(&self, warnings: &mut Vec<String>) -> Option<SharedReport> {
        self.identities
            .shared_tier()
            .map(|tier| match tier.outage() {
                None => SharedReport {
                    status: "ok",
                    unavailable_for_seconds: None,
                    detail: None,
                },
                Some((since, class)) => {
                    let secs = SystemTime::now()
                        .duration_since(since)
                        .unwrap_or_default()
                        .as_secs();
                    warnings.push(format!(
                        "shared tier unavailable for {secs} s ({class}): exchanging without the \
                     fleet; sharing resumes when Redis answers"
                    ));
                    SharedReport {
                        status: "unavailable",
                        unavailable_for_seconds: Some(secs),
                        detail: Some(class),
                    }
                }
            })
    }

    fn credentials_cached(&self) -> bool {
        let now = self.clock.now();
        self.identities
            .identities()
            .iter()
            .any(|i| i.servable_at(now).is_some())
    }

    async fn probe_if_due(&self) {
        let mut last = self.probe_last.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.probe_interval) {
            return;
        }
        *last = Some(tokio::time::Instant::now());
        let Some(key) = self.probe_logins_key.as_deref() else {
            return;
        };
        let answer = probe_cognito(self.api.as_ref(), &self.identity_pool_id, key).await;
        let (outcome, status, detail) = match answer {
            ProbeAnswer::Answered(None) => (
                "answered",
                CognitoStatus::Answered,
                "probe: GetId answered".to_owned(),
            ),
            ProbeAnswer::PoolNotFound(e) => (
                e.kind.label(),
                CognitoStatus::Failing,
                format!(
                    "probe: the identity pool was not found, check cognito.identity_pool_id: {}",
                    e.message
                ),
            ),
            ProbeAnswer::Answered(Some(e)) => (
                "answered",
                CognitoStatus::Answered,
                format!("probe: Cognito answered {}", e.kind.label()),
            ),
            ProbeAnswer::Failing(e) => (
                e.kind.label(),
                CognitoStatus::Failing,
                format!("probe: {e}"),
            ),
            ProbeAnswer::TimedOut(limit) => (
                "timeout",
                CognitoStatus::Failing,
                format!("probe: no answer within {}s", limit.as_secs()),
            ),
        };
        self.metrics
            .cognito_probes
            .with_label_values(&[outcome])
            .inc();
        if status == CognitoStatus::Failing {
            tracing::warn!(detail = %detail, "Cognito readiness probe failed");
        } else {
            tracing::debug!(detail = %detail, "Cognito readiness probe answered");
        }
        self.watch.record(status, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cognito::Operation;

    #[test]
    fn only_modelled_cognito_errors_count_as_answers() {
        for kind in [
            ErrorKind::NotAuthorized,
            ErrorKind::TooManyRequests,
            ErrorKind::InvalidParameter,
            ErrorKind::ResourceNotFound,
        ] {
            assert!(answered(kind), "{kind:?}");
        }
        for kind in [
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::InternalError,
            ErrorKind::Unexpected,
        ] {
            assert!(!answered(kind), "{kind:?}");
        }
    }

    #[test]
    fn the_watch_keeps_the_last_outcome_with_a_bounded_detail() {
        let watch = CognitoWatch::new(clock::system());
        assert_eq!(watch.status(), CognitoStatus::Unknown);
        let down = UpstreamError {
            kind: ErrorKind::Unavailable,
            message: "x".repeat(1000),
            operation: Operation::GetId,
        };
        watch.observe(Err(&down));
        assert_eq!(watch.status(), CognitoStatus::Failing);
        assert!(watch.snapshot().detail.len() <= MAX_DETAIL + '…'.len_utf8());
        let refused = UpstreamError {
            kind: ErrorKind::NotAuthorized,
            message: "Invalid login token.".into(),
            operation: Operation::GetId,
        };
        watch.observe(Err(&refused));
        assert_eq!(watch.status(), CognitoStatus::Answered);
        assert_eq!(watch.snapshot().detail, "last call answered not_authorized");
    }
}
