//! The Cognito Identity exchange (enhanced flow).
//!
//! Owns: the [`CognitoApi`] seam (GetId, GetCredentialsForIdentity), its implementation on
//! `aws-sdk-cognitoidentity` ([`SdkCognito`]), error classification ([`ErrorKind`]) and the
//! retrying [`Exchanger`].
//!
//! Promises:
//! - both operations are sent unsigned (they need no AWS credentials), to `cognito.endpoint_url`
//!   when set (the emulator, a VPC endpoint) and to the regional endpoint otherwise;
//! - Cognito's `SecretKey` becomes `SecretAccessKey` and `SessionToken` becomes `Token` downstream;
//!   the epoch `Expiration` (integer, fractional or E-notation) becomes a `SystemTime`;
//! - errors are classified by `__type` with any namespace prefix removed, never by HTTP status
//!   alone; TooManyRequests, InternalError, ExternalService, timeouts and network failures are
//!   retried up to `cognito.max_attempts` with exponential backoff and full jitter; everything
//!   else is terminal and returned at once;
//! - every attempt is counted (`credbroker_cognito_calls_total`) and timed, and given up after
//!   `cognito.attempt_timeout` (classified as a timeout and retried).
//!
//! The SDK's own retries are disabled so that classification, backoff and metrics live here.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_cognitoidentity::config::{BehaviorVersion, Region};
use aws_sdk_cognitoidentity::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use rand::Rng;

use crate::config::CognitoConfig;
use crate::metrics::Metrics;
use crate::secret::SecretString;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One entry of Cognito's `Logins` map.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// The provider name (e.g. `dev-x.us.auth0.com`).
    pub key: &'a str,
    /// The ID token.
    pub token: &'a SecretString,
}

/// Credentials as Cognito returns them.
#[derive(Debug, Clone)]
pub struct RawCredentials {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretKey` (served as `SecretAccessKey`).
    pub secret_key: SecretString,
    /// `SessionToken` (served as `Token`).
    pub session_token: SecretString,
    /// `Expiration`.
    pub expiration: SystemTime,
}

/// The two operations credbroker uses. Implemented by the SDK client and, in tests, by the
/// emulator called in-process (so paused-time tests need no sockets).
pub trait CognitoApi: Send + Sync + 'static {
    /// `GetId`: the identity id for a login in a pool.
    fn get_id<'a>(
        &'a self,
        identity_pool_id: &'a str,
        login: Login<'a>,
    ) -> BoxFuture<'a, Result<String, UpstreamError>>;

    /// `GetCredentialsForIdentity`.
    fn get_credentials<'a>(
        &'a self,
        identity_id: &'a str,
        login: Login<'a>,
        custom_role_arn: Option<&'a str>,
    ) -> BoxFuture<'a, Result<RawCredentials, UpstreamError>>;
}

/// The class of a Cognito failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `NotAuthorizedException`: the login was refused (terminal).
    NotAuthorized,
    /// `ResourceNotFoundException`: pool or identity unknown (terminal).
    ResourceNotFound,
    /// `InvalidIdentityPoolConfigurationException`: the pool's roles are misconfigured (terminal).
    InvalidIdentityPoolConfiguration,
    /// `InvalidParameterException` (terminal).
    InvalidParameter,
    /// `LimitExceededException` (terminal).
    LimitExceeded,
    /// `ResourceConflictException` (terminal).
    ResourceConflict,
    /// `TooManyRequestsException`: throttled (retried).
    TooManyRequests,
    /// `InternalErrorException` (retried).
    InternalError,
    /// `ExternalServiceException` (retried).
    ExternalService,
    /// No answer in time (retried).
    Timeout,
    /// Connection failure, or a 5xx without a known error type (retried).
    Unavailable,
    /// Anything else: an unknown error type or an unparseable answer (terminal).
    Unexpected,
}

impl ErrorKind {
    /// Classifies an AWS error type (`__type`), with or without a namespace prefix.
    pub fn from_type(error_type: &str) -> Self {
        let name = error_type.rsplit('#').next().unwrap_or(error_type);
        let name = name.split(':').next().unwrap_or(name);
        match name {
            "NotAuthorizedException" => Self::NotAuthorized,
            "ResourceNotFoundException" => Self::ResourceNotFound,
            "InvalidIdentityPoolConfigurationException" => Self::InvalidIdentityPoolConfiguration,
            "InvalidParameterException" => Self::InvalidParameter,
            "LimitExceededException" => Self::LimitExceeded,
            "ResourceConflictException" => Self::ResourceConflict,
            "TooManyRequestsException" | "ThrottlingException" => Self::TooManyRequests,
            "InternalErrorException" => Self::InternalError,
            "ExternalServiceException" => Self::ExternalService,
            "ServiceUnavailableException" | "ServiceUnavailable" => Self::Unavailable,
            _ => Self::Unexpected,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::TooManyRequests
                | Self::InternalError
                | Self::ExternalService
                | Self::Timeout
                | Self::Unavailable
        )
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotAuthorized => "not_authorized",
            Self::ResourceNotFound => "resource_not_found",
            Self::InvalidIdentityPoolConfiguration => "invalid_pool_configuration",
            Self::InvalidParameter => "invalid_parameter",
            Self::LimitExceeded => "limit_exceeded",
            Self::ResourceConflict => "resource_conflict",
            Self::TooManyRequests => "throttled",
            Self::InternalError => "internal_error",
            Self::ExternalService => "external_service",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Unexpected => "unexpected",
        }
    }
}

/// A failed Cognito call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed ({}): {message}", .kind.label())]
pub struct UpstreamError {
    /// Its class.
    pub kind: ErrorKind,
    /// Cognito's message (or the transport error).
    pub message: String,
    /// `GetId` or `GetCredentialsForIdentity`.
    pub operation: Operation,
}

/// A Cognito operation (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// GetId.
    GetId,
    /// GetCredentialsForIdentity.
    GetCredentialsForIdentity,
}

impl Operation {
    /// The operation name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GetId => "GetId",
            Self::GetCredentialsForIdentity => "GetCredentialsForIdentity",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cognito through `aws-sdk-cognitoidentity`.
#[derive(Debug, Clone)]
pub struct SdkCognito {
    client: aws_sdk_cognitoidentity::Client,
}

impl SdkCognito {
    /// Builds the SDK client from configuration. No credentials provider is configured: both
    /// operations are unauthenticated.
    pub fn new(config: &CognitoConfig) -> Self {
        Self::with_http_client(config, crate::http::sdk_client())
    }

    /// [`SdkCognito::new`] over another HTTP client: the fuzz target `cognito_answers` feeds
    /// Cognito's answers (status, headers, body) through the SDK's parsing and this module's
    /// classification with it.
    pub fn with_http_client(
        config: &CognitoConfig,
        http_client: aws_smithy_runtime_api::client::http::SharedHttpClient,
    ) -> Self {
        let mut builder = aws_sdk_cognitoidentity::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .http_client(http_client)
            .sleep_impl(aws_smithy_async::rt::sleep::TokioSleep::new())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_attempt_timeout(config.attempt_timeout)
                    .build(),
            );
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url.as_str().trim_end_matches('/'));
        }
        Self {
            client: aws_sdk_cognitoidentity::Client::from_conf(builder.build()),
        }
    }
}

fn classify<E>(operation: Operation, err: SdkError<E, HttpResponse>) -> UpstreamError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (kind, message) = match &err {
        SdkError::ServiceError(ctx) => {
            let e = ctx.err();
            let kind = e
                .code()
                .map(ErrorKind::from_type)
                .unwrap_or(ErrorKind::Unexpected);
            let kind = if kind == ErrorKind::Unexpected && ctx.raw().status().is_server_error() {
                ErrorKind::Unavailable
            } else {
                kind
            };
            let message = match (e.code(), e.message()) {
                (_, Some(m)) => m.to_owned(),
                (Some(c), None) => c.to_owned(),
                (None, None) => "unknown error".to_owned(),
            };
            (kind, message)
        }
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, "no answer in time".to_owned()),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            (ErrorKind::Timeout, "connecting timed out".to_owned())
        }
        SdkError::DispatchFailure(_) => (ErrorKind::Unavailable, crate::http::error_chain(&err)),
        SdkError::ResponseError(_) => (
            ErrorKind::Unavailable,
            format!("unreadable response: {}", crate::http::error_chain(&err)),
        ),
        _ => (ErrorKind::Unexpected, crate::http::error_chain(&err)),
    };
    UpstreamError {
        kind,
        message,
        operation,
    }
}

impl CognitoApi for SdkCognito {
    fn get_id<'a>(
        &'a self,
        identity_pool_id: &'a str,
        login: Login<'a>,
    ) -> BoxFuture<'a, Result<String, UpstreamError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_id()
                .identity_pool_id(identity_pool_id)
                .logins(login.key, login.token.expose_str())
                .send()
                .await
                .map_err(|e| classify(Operation::GetId, e))?;
            out.identity_id
                .filter(|id| !id.is_empty())
                .ok_or_else(|| UpstreamError {
                    kind: ErrorKind::Unexpected,
                    message: "GetId answered without an IdentityId".to_owned(),
                    operation: Operation::GetId,
                })
        })
    }

    fn get_credentials<'a>(
        &'a self,
        identity_id: &'a str,
        login: Login<'a>,
        custom_role_arn: Option<&'a str>,
    ) -> BoxFuture<'a, Result<RawCredentials, UpstreamError>> {
        Box::pin(async move {
            let op = Operation::GetCredentialsForIdentity;
            let out = self
                .client
                .get_credentials_for_identity()
                .identity_id(identity_id)
                .logins(login.key, login.token.expose_str())
                .set_custom_role_arn(custom_role_arn.map(str::to_owned))
                .send()
                .await
                .map_err(|e| classify(op, e))?;
            let bad = |what: &str| UpstreamError {
                kind: ErrorKind::Unexpected,
                message: format!("GetCredentialsForIdentity answered without {what}"),
                operation: op,
            };
            let c = out.credentials.ok_or_else(|| bad("Credentials"))?;
            let expiration = c
                .expiration
                .and_then(|t| SystemTime::try_from(t).ok())
                .ok_or_else(|| bad("a valid Expiration"))?;
            Ok(RawCredentials {
                access_key_id: c.access_key_id.ok_or_else(|| bad("AccessKeyId"))?,
                secret_key: c.secret_key.ok_or_else(|| bad("SecretKey"))?.into(),
                session_token: c.session_token.ok_or_else(|| bad("SessionToken"))?.into(),
                expiration,
            })
        })
    }
}

/// Retry policy of the [`Exchanger`].
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call (1 = no retry).
    pub max_attempts: u32,
    /// Longest wait for one attempt's answer (`cognito.attempt_timeout`).
    pub attempt_timeout: Duration,
    /// First backoff, doubled per attempt.
    pub base: Duration,
    /// Largest backoff.
    pub max: Duration,
}

impl RetryPolicy {
    /// The policy configured for Cognito.
    pub fn from_config(c: &CognitoConfig) -> Self {
        Self {
            max_attempts: c.max_attempts,
            attempt_timeout: c.attempt_timeout,
            base: c.backoff_base,
            max: c.backoff_max,
        }
    }

    /// The pause before attempt `attempt + 1` (attempt counts from 1): full jitter over
    /// `min(max, base * 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max);
        cap.mul_f64(rng.r#gen::<f64>())
    }
}

/// Whether a caller waits for a Cognito call (a budget decides who goes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A caller is waiting for the answer.
    OnDemand,
    /// A renewal ahead of expiry: nobody waits.
    Background,
}

impl Priority {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::OnDemand => "on_demand",
            Self::Background => "background",
        }
    }
}

/// A limiter asked before every Cognito attempt, retries included (fleet mode's budget). It
/// returns when the attempt may go; it never fails a call.
pub trait Budget: Send + Sync + 'static {
    /// Waits for a slot for `op`.
    fn acquire(&self, op: Operation, priority: Priority) -> BoxFuture<'_, ()>;
}

/// Calls Cognito with retries, backoff and metrics.
#[derive(Clone)]
pub struct Exchanger {
    api: Arc<dyn CognitoApi>,
    identity_pool_id: Arc<str>,
    policy: RetryPolicy,
    metrics: Metrics,
    budget: Option<Arc<dyn Budget>>,
}

impl fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchanger")
            .field("identity_pool_id", &self.identity_pool_id)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Exchanger {
    /// Wraps `api`.
    pub fn new(
        api: Arc<dyn CognitoApi>,
        identity_pool_id: &str,
        policy: RetryPolicy,
        metrics: Metrics,
    ) -> Self {
        Self {
            api,
            identity_pool_id: identity_pool_id.into(),
            policy,
            metrics,
            budget: None,
        }
    }

    /// Asks `budget` before every attempt.
    #[must_use]
    pub fn with_budget(mut self, budget: Option<Arc<dyn Budget>>) -> Self {
        self.budget = budget;
        self
    }

    /// The identity pool.
    pub fn identity_pool_id(&self) -> &Arc<str> {
        &self.identity_pool_id
    }

    /// GetId, retried.
    pub async fn get_id(
        &self,
        login: Login<'_>,
        priority: Priority,
    ) -> Result<String, UpstreamError> {
        self.with_retries(Operation::GetId, priority, || {
            self.api.get_id(&self.identity_pool_id, login)
        })
        .await
    }

    /// GetCredentialsForIdentity, retried.
    pub async fn get_credentials(
        &self,
        identity_id: &str,
        login: Login<'_>,
        custom_role_arn: Option<&str>,
        priority: Priority,
    ) -> Result<RawCredentials, UpstreamError> {
        self.with_retries(Operation::GetCredentialsForIdentity, priority, || {
            self.api
                .get_credentials(identity_id, login, custom_role_arn)
        })
        .await
    }

    async fn with_retries<'a, T>(
        &'a self,
        op: Operation,
        priority: Priority,
        call: impl Fn() -> BoxFuture<'a, Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let latency = self
            .metrics
            .cognito_latency
            .with_label_values(&[op.as_str()]);
        let mut attempt = 1;
        loop {
            if let Some(budget) = &self.budget {
                budget.acquire(op, priority).await;
            }
            let started = Instant::now();
            // The SDK client enforces the same timeout; enforcing it here too makes it hold for
            // every CognitoApi (the in-process emulator of paused-time tests included).
            let result = tokio::time::timeout(self.policy.attempt_timeout, call())
                .await
                .unwrap_or_else(|_| {
                    Err(UpstreamError {
                        kind: ErrorKind::Timeout,
                        message: "no answer in time".to_owned(),
                        operation: op,
                    })
                });
            latency.observe(started.elapsed().as_secs_f64());
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.kind.label(),
            };
            self.metrics
                .cognito_calls
                .with_label_values(&[op.as_str(), outcome])
                .inc();
            match result {
                Err(e) if e.kind.is_retryable() && attempt < self.policy.max_attempts => {
                    let pause = self.policy.backoff(attempt, &mut rand::thread_rng());
                    tracing::debug!(
                        operation = %op,
                        attempt,
                        error = %e,
                        pause_ms = pause.as_millis() as u64,
                        "retrying Cognito call"
                    );
                    self.metrics
                        .cognito_retries
                        .with_label_values(&[op.as_str()])
                        .inc();
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_are_classified_by_name_with_or_without_namespace() {
        assert_eq!(
            ErrorKind::from_type("NotAuthorizedException"),
            ErrorKind::NotAuthorized
        );
        assert_eq!(
            ErrorKind::from_type("com.amazonaws.cognito.identity.model#TooManyRequestsException"),
            ErrorKind::TooManyRequests
        );
        assert_eq!(
            ErrorKind::from_type("InvalidIdentityPoolConfigurationException:http://x/"),
            ErrorKind::InvalidIdentityPoolConfiguration
        );
        assert_eq!(ErrorKind::from_type("SomethingNew"), ErrorKind::Unexpected);
        for retryable in [
            "TooManyRequestsException",
            "InternalErrorException",
            "ExternalServiceException",
        ] {
            assert!(
                ErrorKind::from_type(retryable).is_retryable(),
                "{retryable}"
            );
        }
        for terminal in [
            "NotAuthorizedException",
            "ResourceNotFoundException",
            "InvalidIdentityPoolConfigurationException",
            "InvalidParameterException",
            "LimitExceededException",
            "ResourceConflictException",
        ] {
            assert!(!ErrorKind::from_type(terminal).is_retryable(), "{terminal}");
        }
    }

    /// A Cognito that never answers.
    struct Silent;

    impl CognitoApi for Silent {
        fn get_id<'a>(
            &'a self,
            _identity_pool_id: &'a str,
            _login: Login<'a>,
        ) -> BoxFuture<'a, Result<String, UpstreamError>> {
            Box::pin(std::future::pending())
        }

        fn get_credentials<'a>(
            &'a self,
            _identity_id: &'a str,
            _login: Login<'a>,
            _custom_role_arn: Option<&'a str>,
        ) -> BoxFuture<'a, Result<RawCredentials, UpstreamError>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_without_an_answer_times_out_and_is_retried() {
        let policy = RetryPolicy {
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(3),
            base: Duration::from_millis(100),
            max: Duration::from_millis(200),
        };
        let metrics = Metrics::new(&[]);
        let exchanger = Exchanger::new(Arc::new(Silent), "us-east-1:x", policy, metrics.clone());
        let token = SecretString::new("t".to_owned());
        let started = tokio::time::Instant::now();
        let err = exchanger
            .get_id(
                Login {
                    key: "issuer",
                    token: &token,
                },
                Priority::OnDemand,
            )
            .await
            .expect_err("never answered");
        assert_eq!(err.kind, ErrorKind::Timeout);
        // Three attempts of 3 s plus at most 100 + 200 ms of backoff, in paused time.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(9) && waited <= Duration::from_millis(9300),
            "{waited:?}"
        );
        assert!(
            metrics.render().contains(
                "credbroker_cognito_calls_total{operation=\"GetId\",outcome=\"timeout\"} 3"
            ),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn backoff_is_bounded_exponential_with_jitter() {
        let policy = RetryPolicy {
            max_attempts: 5,
            attempt_timeout: Duration::from_secs(3),
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            assert!(policy.backoff(1, &mut rng) <= Duration::from_millis(100));
            assert!(policy.backoff(2, &mut rng) <= Duration::from_millis(200));
            assert!(policy.backoff(3, &mut rng) <= Duration::from_millis(350));
            assert!(policy.backoff(30, &mut rng) <= Duration::from_millis(350));
        }
        // Jitter: not every pause is the cap.
        let distinct: std::collections::BTreeSet<u128> = (0..50)
            .map(|_| policy.backoff(3, &mut rng).as_micros())
            .collect();
        assert!(distinct.len() > 10);
    }
}
