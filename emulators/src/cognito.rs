//! An Amazon Cognito Identity service emulator (AWS JSON 1.1).
//!
//! Owns: [`CognitoEmulator`], an HTTP server implementing `GetId` and `GetCredentialsForIdentity`
//! for one identity pool whose authenticated logins come from OIDC providers
//! ([`TrustedProvider`]); the identities and credentials it has issued; its fault injection
//! ([`Faults`]) and counters ([`CognitoStats`]).
//!
//! Promises:
//! - The unmodified `aws-sdk-cognitoidentity` client works against [`CognitoEmulator::endpoint_url`]
//!   (unit-tested), including every [`ExpirationFormat`] real Cognito has been seen to send.
//! - Login tokens are validated as Cognito validates OIDC tokens, in this order, each failure
//!   with Cognito's own `__type` and message: parseable JWT; `alg` RS256; `iss` (scheme and one
//!   trailing slash removed) equal to the `Logins` key; `kid` published and signature valid;
//!   `azp` (when present) or `aud` among the provider's client ids; `exp` present and in the
//!   future of the injected clock; `sub` present.
//! - `IdentityId`s are stable: derived from a hash of (pool, `Logins` key, `sub`), so the same
//!   user gets the same identity across calls and emulator restarts.
//! - Every call is counted, and faults apply in a fixed order: outage, latency, the
//!   [`Faults::fail_next`] queue, random throttling and internal errors, then the real logic.
//! - Secrets are never logged; [`IssuedCredentials`] keeps them in [`SecretString`]s.
//!
//! Deliberately not modelled: unauthenticated identities, developer-authenticated identities,
//! role-mapping rules, identity merging, SigV4 checks on requests, `nbf`/`iat` checks on tokens,
//! and `Content-Type` checks (any request body is read as JSON).
//!
//! Besides the AWS API, `GET /_emulator/stats` returns [`CognitoStats`] as JSON and
//! `POST /_emulator/faults` takes `{"clear"?, "latency_ms"?, "throttle_rate"?,
//! "internal_error_rate"?, "outage"?}` and returns the resulting [`FaultSettings`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::clock::{Clock, SharedClock, from_unix_millis, unix_millis, unix_seconds};
use crate::jwt;
use crate::oidc::{IssuerState, OidcIssuer, logins_key_of};
use crate::secret::SecretString;
use crate::{ServerHandle, default_listen, serve};

/// The identity pool the emulator serves by default.
pub const DEFAULT_IDENTITY_POOL_ID: &str = "us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211";

/// The pool's default authenticated role.
pub const DEFAULT_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/credbroker-demo-authenticated";

/// The `X-Amz-Target` prefix of the Cognito Identity service.
pub const TARGET_PREFIX: &str = "AWSCognitoIdentityService.";

/// The content type of AWS JSON 1.1 requests and responses.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The namespace real Cognito sometimes prefixes to a service error's `__type`.
const ERROR_NAMESPACE: &str = "com.amazonaws.cognito.identity.model";

/// The namespace of protocol-level errors (unknown operation, unparseable body).
const PROTOCOL_ERROR_NAMESPACE: &str = "com.amazon.coral.service";

/// Past this many remembered credentials, expired ones are pruned on the next issue.
const PRUNE_THRESHOLD: usize = 200_000;

/// Cognito's limit on the number of `Logins` entries.
const MAX_LOGINS: usize = 10;

/// Cognito's limit on the length of a login token.
const MAX_TOKEN_LEN: usize = 50_000;

/// How the `Expiration` of issued credentials is written in the JSON response. Real Cognito
/// has sent all three; every AWS SDK must read all three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExpirationFormat {
    /// Whole epoch seconds: `1700003600`. The default.
    #[default]
    Integer,
    /// Epoch seconds with milliseconds: `1700003600.123`.
    Fractional,
    /// Java's `Double.toString` form: `1.7000036E9`.
    Scientific,
}

/// How to start a [`CognitoEmulator`].
#[derive(Debug, Clone)]
pub struct CognitoOptions {
    /// Where to listen. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The region: the prefix of identity ids. Default `us-east-1`.
    pub region: String,
    /// The one identity pool served. Default [`DEFAULT_IDENTITY_POOL_ID`].
    pub identity_pool_id: String,
    /// How long issued credentials last. Default one hour (Cognito's fixed lifetime).
    pub credential_lifetime: Duration,
    /// How `Expiration` is written. Default [`ExpirationFormat::Integer`].
    pub expiration_format: ExpirationFormat,
    /// `false`: `"__type": "NotAuthorizedException"`; `true`:
    /// `"__type": "com.amazonaws.cognito.identity.model#NotAuthorizedException"` (and an
    /// `x-amzn-ErrorType` header with Coral's URL suffix), both forms real Cognito has sent.
    pub namespaced_error_types: bool,
    /// Roles a `CustomRoleArn` may name; the first is the pool's default authenticated role.
    /// Default `[DEFAULT_ROLE_ARN]`.
    pub allowed_roles: Vec<String>,
}

impl Default for CognitoOptions {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            region: "us-east-1".to_owned(),
            identity_pool_id: DEFAULT_IDENTITY_POOL_ID.to_owned(),
            credential_lifetime: Duration::from_secs(3600),
            expiration_format: ExpirationFormat::Integer,
            namespaced_error_types: false,
            allowed_roles: vec![DEFAULT_ROLE_ARN.to_owned()],
        }
    }
}

/// An OIDC provider the identity pool trusts.
#[derive(Debug, Clone)]
pub struct TrustedProvider {
    /// The provider name: the `Logins` key, e.g. `127.0.0.1:PORT`.
    pub name: String,
    /// Accepted audiences (client ids).
    pub client_ids: Vec<String>,
    /// The issuer whose published keys verify signatures, in process (no HTTP). The emulator
    /// keeps only the issuer's keys, so it does not keep the issuer's server running.
    pub issuer: OidcIssuer,
}

impl TrustedProvider {
    /// Trusts `issuer` under its own [`OidcIssuer::logins_key`] for its default audience.
    pub fn for_issuer(issuer: &OidcIssuer) -> Self {
        Self {
            name: issuer.logins_key(),
            client_ids: vec![issuer.audience().to_owned()],
            issuer: issuer.clone(),
        }
    }
}

/// The kinds of error the emulator returns: Cognito's modelled exceptions plus a 503 outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorType {
    /// `NotAuthorizedException` (400).
    NotAuthorized,
    /// `ResourceNotFoundException` (400).
    ResourceNotFound,
    /// `InvalidParameterException` (400).
    InvalidParameter,
    /// `InvalidIdentityPoolConfigurationException` (400).
    InvalidIdentityPoolConfiguration,
    /// `TooManyRequestsException` (400).
    TooManyRequests,
    /// `InternalErrorException` (500).
    InternalError,
    /// `ExternalServiceException` (400).
    ExternalService,
    /// `LimitExceededException` (400).
    LimitExceeded,
    /// `ResourceConflictException` (400).
    ResourceConflict,
    /// `ServiceUnavailableException` (503): an outage.
    ServiceUnavailable,
}

impl ErrorType {
    /// The `__type` name, e.g. `NotAuthorizedException`.
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorType::NotAuthorized => "NotAuthorizedException",
            ErrorType::ResourceNotFound => "ResourceNotFoundException",
            ErrorType::InvalidParameter => "InvalidParameterException",
            ErrorType::InvalidIdentityPoolConfiguration => {
                "InvalidIdentityPoolConfigurationException"
            }
            ErrorType::TooManyRequests => "TooManyRequestsException",
            ErrorType::InternalError => "InternalErrorException",
            ErrorType::ExternalService => "ExternalServiceException",
            ErrorType::LimitExceeded => "LimitExceededException",
            ErrorType::ResourceConflict => "ResourceConflictException",
            ErrorType::ServiceUnavailable => "ServiceUnavailableException",
        }
    }

    /// The HTTP status: 400, except 500 for internal errors and 503 for an outage.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorType::InternalError => 500,
            ErrorType::ServiceUnavailable => 503,
            _ => 400,
        }
    }

    /// The message used when a fault of this type is injected without one.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorType::NotAuthorized => {
                "Invalid login token. Not a valid OpenId Connect identity token."
            }
            ErrorType::ResourceNotFound => "Resource not found.",
            ErrorType::InvalidParameter => "Invalid parameter.",
            ErrorType::InvalidIdentityPoolConfiguration => {
                "Invalid identity pool configuration. Check assigned IAM roles for this pool."
            }
            ErrorType::TooManyRequests => "Rate exceeded",
            ErrorType::InternalError => "An internal error occurred.",
            ErrorType::ExternalService => "An exception was thrown by the external service.",
            ErrorType::LimitExceeded => "Limit exceeded.",
            ErrorType::ResourceConflict => "Resource conflict.",
            ErrorType::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// An error as Cognito would return it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", error_type.type_name())]
pub struct ServiceError {
    /// What kind of error.
    pub error_type: ErrorType,
    /// The human-readable message (Cognito's wording; the broker maps on it).
    pub message: String,
}

impl ServiceError {
    /// An error of `error_type` with `message`.
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        Self {
            error_type,
            message: message.into(),
        }
    }

    /// An error of `error_type` with its [`ErrorType::default_message`].
    pub fn of_type(error_type: ErrorType) -> Self {
        Self::new(error_type, error_type.default_message())
    }

    /// The HTTP status it is returned with.
    pub fn http_status(&self) -> u16 {
        self.error_type.http_status()
    }

    /// The `__type` name, e.g. `NotAuthorizedException`.
    pub fn type_name(&self) -> &'static str {
        self.error_type.type_name()
    }

    fn not_authorized(message: impl Into<String>) -> Self {
        Self::new(ErrorType::NotAuthorized, message)
    }

    fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidParameter, message)
    }
}

/// The operations the emulator implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GetId`.
    GetId,
    /// `GetCredentialsForIdentity`.
    GetCredentialsForIdentity,
}

impl Operation {
    /// The operation's name, as in `X-Amz-Target`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::GetId => "GetId",
            Operation::GetCredentialsForIdentity => "GetCredentialsForIdentity",
        }
    }

    fn from_target(target: &str) -> Option<Self> {
        match target.strip_prefix(TARGET_PREFIX)? {
            "GetId" => Some(Operation::GetId),
            "GetCredentialsForIdentity" => Some(Operation::GetCredentialsForIdentity),
            _ => None,
        }
    }
}

/// Credentials the emulator issued. `Debug` redacts the secrets.
#[derive(Debug, Clone)]
pub struct IssuedCredentials {
    /// The identity they were issued to.
    pub identity_id: String,
    /// `ASIA` + 16 uppercase alphanumerics.
    pub access_key_id: String,
    /// 40 characters of the base64 alphabet.
    pub secret_key: SecretString,
    /// About 1000 characters of base64.
    pub session_token: SecretString,
    /// When they expire, exactly as written in the response.
    pub expiration: SystemTime,
    /// When Cognito issued them (its own clock): `expiration` minus the lifetime, before the
    /// whole-second truncation of [`ExpirationFormat::Integer`].
    pub issued_at: SystemTime,
    /// The role they stand for.
    pub role_arn: String,
}

/// Counters of one operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationStats {
    /// Calls received, whatever their outcome (counted on arrival: a call abandoned by its
    /// caller during injected latency counts here but has no outcome).
    pub calls: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Failed calls by `__type` (e.g. `NotAuthorizedException`, `SerializationException`).
    pub errors: BTreeMap<String, u64>,
    /// When the first [`MAX_ARRIVALS`] calls arrived, in ms of the tokio clock since the
    /// emulator started (rate limit tests count calls per window).
    #[serde(skip)]
    pub arrivals_ms: Vec<u64>,
}

/// Arrival times kept per operation.
pub const MAX_ARRIVALS: usize = 100_000;

/// Counters of a [`CognitoEmulator`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CognitoStats {
    /// `GetId`.
    pub get_id: OperationStats,
    /// `GetCredentialsForIdentity`.
    pub get_credentials_for_identity: OperationStats,
    /// HTTP requests naming no known operation.
    pub unknown_operations: u64,
}

impl CognitoStats {
    /// The counters of `op`.
    pub fn operation(&self, op: Operation) -> &OperationStats {
        match op {
            Operation::GetId => &self.get_id,
            Operation::GetCredentialsForIdentity => &self.get_credentials_for_identity,
        }
    }

    fn operation_mut(&mut self, op: Operation) -> &mut OperationStats {
        match op {
            Operation::GetId => &mut self.get_id,
            Operation::GetCredentialsForIdentity => &mut self.get_credentials_for_identity,
        }
    }
}

/// The current fault settings, as `POST /_emulator/faults` reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultSettings {
    /// Added to every call, in milliseconds.
    pub latency_ms: u64,
    /// Probability that a call fails with `TooManyRequestsException`.
    pub throttle_rate: f64,
    /// Probability that a call fails with `InternalErrorException`.
    pub internal_error_rate: f64,
    /// Whether every call fails with a 503.
    pub outage: bool,
    /// Failures still queued by [`Faults::fail_next`], all operations together.
    pub queued_failures: u64,
}

#[derive(Debug, Default)]
struct FaultState {
    latency: Duration,
    throttle_rate: f64,
    internal_error_rate: f64,
    outage: bool,
    queue: HashMap<Operation, VecDeque<(ServiceError, u32)>>,
}

/// Runtime fault injection. Every setter takes effect on the next call.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<FaultState>,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // Every mutation is a single assignment or queue operation: a poisoned lock holds a
        // consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Delays every call by `latency` (after the outage check).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Fails calls with `TooManyRequestsException` with probability `rate` (clamped to 0..=1).
    pub fn set_throttle_rate(&self, rate: f64) {
        self.lock().throttle_rate = clamp_rate(rate);
    }

    /// Fails calls with `InternalErrorException` with probability `rate` (clamped to 0..=1).
    pub fn set_internal_error_rate(&self, rate: f64) {
        self.lock().internal_error_rate = clamp_rate(rate);
    }

    /// While `down`, every call fails at once with `ServiceUnavailableException` (503).
    pub fn set_outage(&self, down: bool) {
        self.lock().outage = down;
    }

    /// The next `count` calls of `op` fail with `error` and its default message.
    pub fn fail_next(&self, op: Operation, error: ErrorType, count: u32) {
        self.fail_next_with(op, ServiceError::of_type(error), count);
    }

    /// The next `count` calls of `op` fail with exactly `error`.
    pub fn fail_next_with(&self, op: Operation, error: ServiceError, count: u32) {
        if count > 0 {
            self.lock()
                .queue
                .entry(op)
                .or_default()
                .push_back((error, count));
        }
    }

    /// Removes every fault.
    pub fn clear(&self) {
        *self.lock() = FaultState::default();
    }

    /// The current settings.
    pub fn settings(&self) -> FaultSettings {
        let state = self.lock();
        FaultSettings {
            latency_ms: u64::try_from(state.latency.as_millis()).unwrap_or(u64::MAX),
            throttle_rate: state.throttle_rate,
            internal_error_rate: state.internal_error_rate,
            outage: state.outage,
            queued_failures: state
                .queue
                .values()
                .flatten()
                .map(|(_, count)| u64::from(*count))
                .sum(),
        }
    }

    /// Step 1: the outage (returned as an error) or the latency to sleep.
    fn before(&self) -> Result<Duration, ServiceError> {
        let state = self.lock();
        if state.outage {
            return Err(ServiceError::of_type(ErrorType::ServiceUnavailable));
        }
        Ok(state.latency)
    }

    /// Step 2, after the latency: the `fail_next` queue, then the random rates.
    fn after_latency(&self, op: Operation) -> Result<(), ServiceError> {
        let mut state = self.lock();
        if let Some(queue) = state.queue.get_mut(&op)
            && let Some((error, remaining)) = queue.front_mut()
        {
            let error = error.clone();
            *remaining -= 1;
            if *remaining == 0 {
                queue.pop_front();
            }
            return Err(error);
        }
        let mut rng = rand::thread_rng();
        if state.throttle_rate > 0.0 && rng.gen_bool(state.throttle_rate) {
            return Err(ServiceError::of_type(ErrorType::TooManyRequests));
        }
        if state.internal_error_rate > 0.0 && rng.gen_bool(state.internal_error_rate) {
            return Err(ServiceError::of_type(ErrorType::InternalError));
        }
        Ok(())
    }
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

/// A running Cognito Identity emulator. Clones share it; it stops on
/// [`CognitoEmulator::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct CognitoEmulator {
    state: Arc<CognitoState>,
    server: ServerHandle,
}

impl fmt::Debug for CognitoEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CognitoEmulator")
            .field("endpoint_url", &self.state.endpoint_url)
            .field("identity_pool_id", &self.state.identity_pool_id)
            .finish()
    }
}

impl CognitoEmulator {
    /// Binds `options.listen` and starts serving the pool, trusting `providers`.
    pub async fn start(
        options: CognitoOptions,
        providers: Vec<TrustedProvider>,
        clock: impl Clock,
    ) -> std::io::Result<CognitoEmulator> {
        let listener = tokio::net::TcpListener::bind(options.listen).await?;
        let endpoint_url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(CognitoState {
            endpoint_url,
            region: options.region,
            identity_pool_id: options.identity_pool_id,
            credential_lifetime: options.credential_lifetime,
            expiration_format: options.expiration_format,
            namespaced_error_types: options.namespaced_error_types,
            allowed_roles: options.allowed_roles,
            providers: providers
                .into_iter()
                .map(|provider| Provider {
                    name: provider.name,
                    client_ids: provider.client_ids,
                    keys: provider.issuer.key_source(),
                })
                .collect(),
            clock: crate::clock::shared(clock),
            identities: Mutex::new(Identities::default()),
            credentials: Mutex::new(HashMap::new()),
            stats: Mutex::new(CognitoStats::default()),
            faults: Faults::default(),
            started: tokio::time::Instant::now(),
        });
        let server = serve(listener, routes(Arc::clone(&state)))?;
        Ok(CognitoEmulator { state, server })
    }

    /// `http://127.0.0.1:PORT`: the SDK's endpoint URL.
    pub fn endpoint_url(&self) -> String {
        self.state.endpoint_url.clone()
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.state.region
    }

    /// The identity pool served.
    pub fn identity_pool_id(&self) -> &str {
        &self.state.identity_pool_id
    }

    /// The address the emulator listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// `GetId`, in process (faults and counters apply as over HTTP).
    pub async fn get_id(
        &self,
        identity_pool_id: &str,
        logins: &BTreeMap<String, String>,
    ) -> Result<String, ServiceError> {
        self.state.get_id(identity_pool_id, logins).await
    }

    /// `GetCredentialsForIdentity`, in process (faults and counters apply as over HTTP).
    pub async fn get_credentials_for_identity(
        &self,
        identity_id: &str,
        logins: &BTreeMap<String, String>,
        custom_role_arn: Option<&str>,
    ) -> Result<IssuedCredentials, ServiceError> {
        self.state
            .get_credentials_for_identity(identity_id, logins, custom_role_arn)
            .await
    }

    /// Credentials issued under `access_key_id`, expired or not (for emulators that verify
    /// SigV4 requests made with them).
    pub fn lookup_access_key(&self, access_key_id: &str) -> Option<IssuedCredentials> {
        self.state.credentials().get(access_key_id).cloned()
    }

    /// The logins (`Logins` key, `sub`) linked to `identity_id`: the emulator's own record of
    /// whom an identity, and so every access key issued to it, belongs to. Empty when unknown.
    pub fn logins_of(&self, identity_id: &str) -> Vec<(String, String)> {
        self.state
            .identities()
            .logins_of
            .get(identity_id)
            .map(|logins| logins.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The counters.
    pub fn stats(&self) -> CognitoStats {
        self.state.stats().clone()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        *self.state.stats() = CognitoStats::default();
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// Stops the HTTP server (in-process calls keep working). Idempotent.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }

    /// Resolves once the HTTP server has stopped (after [`CognitoEmulator::shutdown`]).
    pub async fn stopped(&self) {
        self.server.stopped().await;
    }
}

/// A trusted provider as the service sees it.
struct Provider {
    name: String,
    client_ids: Vec<String>,
    keys: Arc<IssuerState>,
}

/// Which logins belong to which identity.
#[derive(Default)]
struct Identities {
    /// (`Logins` key, `sub`) → identity id.
    by_login: HashMap<(String, String), String>,
    /// identity id → its logins.
    logins_of: HashMap<String, BTreeSet<(String, String)>>,
}

/// Shared state of one emulator: what the HTTP handlers and the handles see.
struct CognitoState {
    endpoint_url: String,
    region: String,
    identity_pool_id: String,
    credential_lifetime: Duration,
    expiration_format: ExpirationFormat,
    namespaced_error_types: bool,
    allowed_roles: Vec<String>,
    providers: Vec<Provider>,
    clock: SharedClock,
    identities: Mutex<Identities>,
    credentials: Mutex<HashMap<String, IssuedCredentials>>,
    stats: Mutex<CognitoStats>,
    faults: Faults,
    started: tokio::time::Instant,
}

/// Locks a mutex whose data stays consistent across a panic (single inserts and counters).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl CognitoState {
    fn identities(&self) -> MutexGuard<'_, Identities> {
        lock(&self.identities)
    }

    fn credentials(&self) -> MutexGuard<'_, HashMap<String, IssuedCredentials>> {
        lock(&self.credentials)
    }

    fn stats(&self) -> MutexGuard<'_, CognitoStats> {
        lock(&self.stats)
    }

    /// Counts one call of `op` that ended with `outcome` (`None`: success).
    fn record(&self, op: Operation, error: Option<&str>) {
        let mut stats = self.stats();
        let counters = stats.operation_mut(op);
        counters.calls += 1;
        match error {
            None => counters.ok += 1,
            Some(type_name) => *counters.errors.entry(type_name.to_owned()).or_default() += 1,
        }
    }

    /// Applies the faults, runs `logic` and counts the call: on arrival, so a call whose caller
    /// gave up during the injected latency still counts in `calls` (its outcome never does).
    async fn call<T>(
        &self,
        op: Operation,
        logic: impl FnOnce() -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        {
            let since = self.started.elapsed();
            let mut stats = self.stats();
            let counters = stats.operation_mut(op);
            counters.calls += 1;
            if counters.arrivals_ms.len() < MAX_ARRIVALS {
                counters
                    .arrivals_ms
                    .push(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
            }
        }
        let result = match self.faults.before() {
            Err(error) => Err(error),
            Ok(latency) => {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                self.faults.after_latency(op).and_then(|()| logic())
            }
        };
        if let Err(error) = &result {
            // Messages carry ids and claim values at most, never tokens or secrets.
            tracing::debug!(operation = op.name(), %error, "cognito emulator call failed");
        }
        let mut stats = self.stats();
        let counters = stats.operation_mut(op);
        match &result {
            Ok(_) => counters.ok += 1,
            Err(error) => {
                *counters
                    .errors
                    .entry(error.type_name().to_owned())
                    .or_default() += 1
            }
        }
        drop(stats);
        result
    }

    async fn get_id(
        &self,
        identity_pool_id: &str,
        logins: &BTreeMap<String, String>,
    ) -> Result<String, ServiceError> {
        self.call(Operation::GetId, || {
            self.get_id_logic(identity_pool_id, logins)
        })
        .await
    }

    async fn get_credentials_for_identity(
        &self,
        identity_id: &str,
        logins: &BTreeMap<String, String>,
        custom_role_arn: Option<&str>,
    ) -> Result<IssuedCredentials, ServiceError> {
        self.call(Operation::GetCredentialsForIdentity, || {
            self.get_credentials_logic(identity_id, logins, custom_role_arn)
        })
        .await
    }

    fn get_id_logic(
        &self,
        identity_pool_id: &str,
        logins: &BTreeMap<String, String>,
    ) -> Result<String, ServiceError> {
        validate_id("identityPoolId", identity_pool_id)?;
        validate_logins(logins)?;
        if identity_pool_id != self.identity_pool_id {
            return Err(ServiceError::new(
                ErrorType::ResourceNotFound,
                format!("IdentityPool '{identity_pool_id}' not found."),
            ));
        }
        let verified = self.verify_logins(logins)?;

        let mut identities = self.identities();
        let mut linked = verified
            .iter()
            .filter_map(|login| identities.by_login.get(login))
            .cloned()
            .collect::<BTreeSet<String>>()
            .into_iter();
        let identity_id = match (linked.next(), linked.next()) {
            (Some(identity_id), None) => identity_id,
            (Some(_), Some(_)) => {
                return Err(ServiceError::new(
                    ErrorType::ResourceConflict,
                    "Logins are linked to different identities.",
                ));
            }
            (None, _) => match verified.first() {
                Some((key, sub)) => self.derive_identity_id(key, sub),
                None => return Err(unauthenticated()),
            },
        };
        for login in verified {
            identities
                .by_login
                .insert(login.clone(), identity_id.clone());
            identities
                .logins_of
                .entry(identity_id.clone())
                .or_default()
                .insert(login);
        }
        Ok(identity_id)
    }

    fn get_credentials_logic(
        &self,
        identity_id: &str,
        logins: &BTreeMap<String, String>,
        custom_role_arn: Option<&str>,
    ) -> Result<IssuedCredentials, ServiceError> {
        validate_id("identityId", identity_id)?;
        validate_logins(logins)?;
        if let Some(arn) = custom_role_arn
            && !(20..=2048).contains(&arn.len())
        {
            return Err(ServiceError::invalid_parameter(format!(
                "1 validation error detected: Value '{arn}' at 'customRoleArn' failed to \
                 satisfy constraint: Member must have length between 20 and 2048"
            )));
        }
        if !self.identities().logins_of.contains_key(identity_id) {
            return Err(ServiceError::new(
                ErrorType::ResourceNotFound,
                format!("Identity '{identity_id}' not found."),
            ));
        }
        let verified = self.verify_logins(logins)?;
        let matches = {
            let identities = self.identities();
            verified.iter().any(|login| {
                identities.by_login.get(login).map(String::as_str) == Some(identity_id)
            })
        };
        if !matches {
            return Err(ServiceError::not_authorized(
                "Invalid login token. Logins don't match. Please include at least one valid \
                 login for this identity or identity pool.",
            ));
        }
        let role_arn = match custom_role_arn {
            Some(arn) if self.allowed_roles.iter().any(|role| role == arn) => arn.to_owned(),
            Some(arn) => {
                return Err(ServiceError::invalid_parameter(format!(
                    "CustomRoleArn '{arn}' is not a role this identity pool may assume."
                )));
            }
            None => match self.allowed_roles.first() {
                Some(role) => role.clone(),
                None => {
                    return Err(ServiceError::of_type(
                        ErrorType::InvalidIdentityPoolConfiguration,
                    ));
                }
            },
        };
        Ok(self.issue(identity_id, role_arn))
    }

    /// Verifies every login and returns the (`Logins` key, `sub`) of each.
    fn verify_logins(
        &self,
        logins: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, ServiceError> {
        if logins.is_empty() {
            return Err(unauthenticated());
        }
        let now = unix_seconds(self.clock.now());
        logins
            .iter()
            .map(|(key, token)| {
                let provider = self
                    .providers
                    .iter()
                    .find(|provider| &provider.name == key)
                    .ok_or_else(|| {
                        ServiceError::not_authorized(
                            "Token is not from a supported provider of this identity pool.",
                        )
                    })?;
                let sub = verify_token(provider, token, now)?;
                Ok((key.clone(), sub))
            })
            .collect()
    }

    /// `{region}:{uuid}` from a hash of (pool, login key, sub): stable across restarts.
    fn derive_identity_id(&self, key: &str, sub: &str) -> String {
        let mut hasher = Sha256::new();
        for part in [self.identity_pool_id.as_str(), key, sub] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        format!("{}:{}", self.region, uuid_v4_text(bytes))
    }

    fn issue(&self, identity_id: &str, role_arn: String) -> IssuedCredentials {
        let now = self.clock.now();
        let millis = unix_millis(now + self.credential_lifetime);
        let expiration = match self.expiration_format {
            ExpirationFormat::Integer => from_unix_millis(millis - millis % 1000),
            ExpirationFormat::Fractional | ExpirationFormat::Scientific => from_unix_millis(millis),
        };
        let mut credentials = self.credentials();
        if credentials.len() >= PRUNE_THRESHOLD {
            prune_expired(&mut credentials, now);
        }
        let access_key_id = loop {
            let candidate = random_access_key_id();
            if !credentials.contains_key(&candidate) {
                break candidate;
            }
        };
        let issued = IssuedCredentials {
            identity_id: identity_id.to_owned(),
            access_key_id: access_key_id.clone(),
            secret_key: SecretString::new(random_secret_key()),
            session_token: SecretString::new(random_session_token()),
            expiration,
            issued_at: now,
            role_arn,
        };
        credentials.insert(access_key_id, issued.clone());
        issued
    }
}

fn unauthenticated() -> ServiceError {
    ServiceError::not_authorized("Unauthenticated access is not supported for this identity pool.")
}

/// Drops credentials that expired at or before `now`.
fn prune_expired(credentials: &mut HashMap<String, IssuedCredentials>, now: SystemTime) {
    credentials.retain(|_, issued| issued.expiration > now);
}

/// Cognito's constraints on identity-pool and identity ids: 1–55 characters matching
/// `[\w-]+:[0-9a-f-]+`.
fn validate_id(field: &str, value: &str) -> Result<(), ServiceError> {
    let well_formed = (1..=55).contains(&value.len())
        && value.split_once(':').is_some_and(|(region, id)| {
            !region.is_empty()
                && region
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                && !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c) || c == '-')
        });
    if well_formed {
        Ok(())
    } else {
        Err(ServiceError::invalid_parameter(format!(
            "1 validation error detected: Value '{value}' at '{field}' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: [\\w-]+:[0-9a-f-]+"
        )))
    }
}

/// Cognito's constraints on the `Logins` map.
fn validate_logins(logins: &BTreeMap<String, String>) -> Result<(), ServiceError> {
    if logins.len() > MAX_LOGINS {
        return Err(ServiceError::invalid_parameter(
            "1 validation error detected: Value at 'logins' failed to satisfy constraint: \
             Member must have length less than or equal to 10",
        ));
    }
    for (key, token) in logins {
        if !(1..=128).contains(&key.len()) || !(1..=MAX_TOKEN_LEN).contains(&token.len()) {
            return Err(ServiceError::invalid_parameter(
                "1 validation error detected: Value at 'logins' failed to satisfy constraint: \
                 Map keys must have length between 1 and 128 and values between 1 and 50000",
            ));
        }
    }
    Ok(())
}

/// Validates `token` for `provider` as Cognito does (see the module docs) and returns its `sub`.
fn verify_token(provider: &Provider, token: &str, now: i64) -> Result<String, ServiceError> {
    let invalid = || {
        ServiceError::not_authorized(
            "Invalid login token. Not a valid OpenId Connect identity token.",
        )
    };
    let decoded = jwt::decode(token).map_err(|_| invalid())?;
    if decoded.alg() != Some("RS256") {
        return Err(invalid());
    }
    let iss = decoded
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    if logins_key_of(iss) != provider.name {
        return Err(ServiceError::not_authorized(
            "Invalid login token. Issuer doesn't match providerName",
        ));
    }
    let verified = decoded
        .kid()
        .and_then(|kid| provider.keys.verifying_key(kid))
        .is_some_and(|key| jwt::verify_rs256(&key, &decoded.signing_input, &decoded.signature));
    if !verified {
        return Err(ServiceError::not_authorized(
            "Invalid login token. Couldn't verify signed token.",
        ));
    }
    let accepted = |aud: &str| provider.client_ids.iter().any(|id| id == aud);
    let audience_ok = match decoded.claims.get("azp") {
        Some(Value::String(azp)) => accepted(azp),
        _ => match decoded.claims.get("aud") {
            Some(Value::String(aud)) => accepted(aud),
            Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
            _ => false,
        },
    };
    if !audience_ok {
        return Err(ServiceError::not_authorized(
            "Invalid login token. Incorrect token audience.",
        ));
    }
    let exp = match decoded.claims.get("exp") {
        Some(Value::Number(exp)) => exp
            .as_i64()
            .or_else(|| exp.as_f64().map(|exp| exp.floor() as i64))
            .ok_or_else(invalid)?,
        _ => return Err(invalid()),
    };
    if now >= exp {
        return Err(ServiceError::not_authorized(format!(
            "Invalid login token. Token expired: {now} >= {exp}"
        )));
    }
    match decoded.claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => Ok(sub.clone()),
        _ => Err(invalid()),
    }
}

/// Formats 16 bytes as a lowercase version-4 (random), RFC 4122-variant UUID.
fn uuid_v4_text(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect()
}

fn random_access_key_id() -> String {
    format!(
        "ASIA{}",
        random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 16)
    )
}

fn random_secret_key() -> String {
    random_from(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        40,
    )
}

/// A session token shaped like STS's: base64 starting `IQoJb3JpZ2luX2Vj`, 1000 characters.
fn random_session_token() -> String {
    let mut bytes = [0u8; 738];
    rand::thread_rng().fill(&mut bytes[..]);
    format!("IQoJb3JpZ2luX2Vj{}", STANDARD.encode(bytes))
}

/// Writes `t` as a JSON number of epoch seconds in `format`.
fn format_expiration(t: SystemTime, format: ExpirationFormat) -> String {
    let millis = unix_millis(t);
    let (secs, frac) = (millis / 1000, millis % 1000);
    match format {
        ExpirationFormat::Integer => secs.to_string(),
        ExpirationFormat::Fractional => format!("{secs}.{frac:03}"),
        ExpirationFormat::Scientific => {
            let int_digits = secs.to_string();
            let all = format!("{int_digits}{frac:03}");
            let significant = all.trim_end_matches('0');
            let (first, rest) = significant.split_at(significant.len().min(1));
            let first = if first.is_empty() { "0" } else { first };
            let rest = if rest.is_empty() { "0" } else { rest };
            let exponent = int_digits.len().saturating_sub(1);
            format!("{first}.{rest}E{exponent}")
        }
    }
}

/// A random request id in UUID form.
fn request_id() -> String {
    uuid_v4_text(rand::thread_rng().r#gen())
}

/// The emulator's HTTP routes.
fn routes(state: Arc<CognitoState>) -> Router {
    Router::new()
        .route("/", post(handle))
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/faults", post(faults))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetIdRequest {
    identity_pool_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    account_id: Option<String>,
    #[serde(default)]
    logins: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetCredentialsRequest {
    identity_id: Option<String>,
    #[serde(default)]
    logins: Option<BTreeMap<String, String>>,
    #[serde(default)]
    custom_role_arn: Option<String>,
}

fn aws_json(status: StatusCode, body: String, extra: Option<(HeaderName, String)>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(id) = HeaderValue::from_str(&request_id()) {
        headers.insert(HeaderName::from_static("x-amzn-requestid"), id);
    }
    if let Some((name, value)) = extra
        && let Ok(value) = HeaderValue::from_str(&value)
    {
        headers.insert(name, value);
    }
    response
}

/// An error response with `type_name` (namespaced when so configured: Cognito's model namespace
/// for service errors, Coral's for protocol errors) and `message`.
fn error_response(state: &CognitoState, status: u16, type_name: &str, message: &str) -> Response {
    let (body_type, header_type) = if state.namespaced_error_types {
        let namespace = match type_name {
            "UnknownOperationException" | "SerializationException" => PROTOCOL_ERROR_NAMESPACE,
            _ => ERROR_NAMESPACE,
        };
        (
            format!("{namespace}#{type_name}"),
            format!("{type_name}:http://internal.amazon.com/coral/{namespace}/"),
        )
    } else {
        (type_name.to_owned(), type_name.to_owned())
    };
    let body = json!({ "__type": body_type, "message": message }).to_string();
    aws_json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        body,
        Some((HeaderName::from_static("x-amzn-errortype"), header_type)),
    )
}

fn service_error_response(state: &CognitoState, error: &ServiceError) -> Response {
    error_response(
        state,
        error.http_status(),
        error.type_name(),
        &error.message,
    )
}

async fn handle(
    State(state): State<Arc<CognitoState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let Some(op) = Operation::from_target(target) else {
        state.stats().unknown_operations += 1;
        return error_response(&state, 400, "UnknownOperationException", "");
    };
    let serialization_error = |state: &CognitoState, error: serde_json::Error| {
        state.record(op, Some("SerializationException"));
        let message = if error.is_syntax() || error.is_eof() {
            "Start of structure or map found where not expected.".to_owned()
        } else {
            format!("Unexpected request shape: {error}")
        };
        error_response(state, 400, "SerializationException", &message)
    };
    match op {
        Operation::GetId => {
            let request: GetIdRequest = match serde_json::from_slice(&body) {
                Ok(request) => request,
                Err(error) => return serialization_error(&state, error),
            };
            let logins = request.logins.unwrap_or_default();
            let pool = request.identity_pool_id.unwrap_or_default();
            match state.get_id(&pool, &logins).await {
                Ok(identity_id) => aws_json(
                    StatusCode::OK,
                    json!({ "IdentityId": identity_id }).to_string(),
                    None,
                ),
                Err(error) => service_error_response(&state, &error),
            }
        }
        Operation::GetCredentialsForIdentity => {
            let request: GetCredentialsRequest = match serde_json::from_slice(&body) {
                Ok(request) => request,
                Err(error) => return serialization_error(&state, error),
            };
            let logins = request.logins.unwrap_or_default();
            let identity_id = request.identity_id.unwrap_or_default();
            match state
                .get_credentials_for_identity(
                    &identity_id,
                    &logins,
                    request.custom_role_arn.as_deref(),
                )
                .await
            {
                Ok(issued) => aws_json(
                    StatusCode::OK,
                    credentials_body(&issued, state.expiration_format),
                    None,
                ),
                Err(error) => service_error_response(&state, &error),
            }
        }
    }
}

/// The `GetCredentialsForIdentity` response, with `Expiration` written literally.
fn credentials_body(issued: &IssuedCredentials, format: ExpirationFormat) -> String {
    let string = |s: &str| Value::from(s).to_string();
    format!(
        "{{\"Credentials\":{{\"AccessKeyId\":{},\"Expiration\":{},\"SecretKey\":{},\"SessionToken\":{}}},\"IdentityId\":{}}}",
        string(&issued.access_key_id),
        format_expiration(issued.expiration, format),
        string(issued.secret_key.expose_str()),
        string(issued.session_token.expose_str()),
        string(&issued.identity_id),
    )
}

async fn stats(State(state): State<Arc<CognitoState>>) -> Response {
    let stats = state.stats().clone();
    axum::Json(stats).into_response()
}

/// Body of `POST /_emulator/faults`: every field optional; `clear` applies first.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsRequest {
    #[serde(default)]
    clear: bool,
    latency_ms: Option<u64>,
    throttle_rate: Option<f64>,
    internal_error_rate: Option<f64>,
    outage: Option<bool>,
}

async fn faults(State(state): State<Arc<CognitoState>>, body: Bytes) -> Response {
    let request: FaultsRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": error.to_string() })),
            )
                .into_response();
        }
    };
    let faults = &state.faults;
    if request.clear {
        faults.clear();
    }
    if let Some(ms) = request.latency_ms {
        faults.set_latency(Duration::from_millis(ms));
    }
    if let Some(rate) = request.throttle_rate {
        faults.set_throttle_rate(rate);
    }
    if let Some(rate) = request.internal_error_rate {
        faults.set_internal_error_rate(rate);
    }
    if let Some(down) = request.outage {
        faults.set_outage(down);
    }
    axum::Json(faults.settings()).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aws_sdk_cognitoidentity::Client;
    use aws_sdk_cognitoidentity::config::retry::RetryConfig;
    use aws_sdk_cognitoidentity::config::{BehaviorVersion, Region};
    use aws_sdk_cognitoidentity::error::SdkError;
    use http::Method;

    use super::*;
    use crate::clock::from_unix_seconds;
    use crate::oidc::{DEFAULT_AUDIENCE, IssuerOptions, SigningAlg, TokenSpec};
    use crate::testutil::{ManualClock, send};

    /// 2023-11-14T22:13:20.123Z.
    const NOW_MILLIS: u64 = 1_700_000_000_123;
    const NOW: i64 = 1_700_000_000;

    struct Fixture {
        clock: Arc<ManualClock>,
        issuer: OidcIssuer,
        emu: CognitoEmulator,
        client: Client,
    }

    impl Fixture {
        async fn new(options: CognitoOptions) -> Self {
            Self::with_issuer(options, IssuerOptions::default()).await
        }

        async fn with_issuer(options: CognitoOptions, issuer_options: IssuerOptions) -> Self {
            let clock = ManualClock::at_millis(NOW_MILLIS);
            let issuer = OidcIssuer::start(issuer_options, clock.shared())
                .await
                .expect("issuer starts");
            let emu = CognitoEmulator::start(
                options,
                vec![TrustedProvider::for_issuer(&issuer)],
                clock.shared(),
            )
            .await
            .expect("emulator starts");
            let client = sdk_client(&emu);
            Self {
                clock,
                issuer,
                emu,
                client,
            }
        }

        fn logins(&self, token: String) -> HashMap<String, String> {
            HashMap::from([(self.issuer.logins_key(), token)])
        }

        fn logins_for(&self, sub: &str) -> HashMap<String, String> {
            self.logins(self.issuer.token_for(sub))
        }

        fn btree(&self, sub: &str) -> BTreeMap<String, String> {
            self.logins_for(sub).into_iter().collect()
        }

        async fn get_id(&self, logins: HashMap<String, String>) -> Result<String, SdkFailure> {
            self.client
                .get_id()
                .identity_pool_id(self.emu.identity_pool_id())
                .set_logins(Some(logins))
                .send()
                .await
                .map(|out| out.identity_id().unwrap_or_default().to_owned())
                .map_err(SdkFailure::from)
        }
    }

    /// What the SDK reports about a failed call.
    #[derive(Debug, PartialEq)]
    struct SdkFailure {
        status: u16,
        code: String,
        message: String,
    }

    impl<E> From<SdkError<E, aws_smithy_runtime_api::http::Response>> for SdkFailure
    where
        E: aws_sdk_cognitoidentity::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + aws_smithy_runtime_api::client::result::CreateUnhandledError
            + 'static,
    {
        fn from(error: SdkError<E, aws_smithy_runtime_api::http::Response>) -> Self {
            let status = error
                .raw_response()
                .map(|response| response.status().as_u16())
                .unwrap_or_default();
            let service = error.into_service_error();
            SdkFailure {
                status,
                code: service.code().unwrap_or_default().to_owned(),
                message: service.message().unwrap_or_default().to_owned(),
            }
        }
    }

    fn failure(status: u16, code: &str, message: &str) -> SdkFailure {
        SdkFailure {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The real SDK client, pointed at the emulator, without retries.
    fn sdk_client(emu: &CognitoEmulator) -> Client {
        let config = aws_sdk_cognitoidentity::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(emu.endpoint_url())
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .retry_config(RetryConfig::disabled())
            .build();
        Client::from_conf(config)
    }

    fn not_authorized(message: &str) -> SdkFailure {
        failure(400, "NotAuthorizedException", message)
    }

    const INVALID_TOKEN: &str = "Invalid login token. Not a valid OpenId Connect identity token.";

    #[tokio::test]
    async fn sdk_round_trip_for_every_expiration_format() {
        for (format, literal) in [
            (ExpirationFormat::Integer, "1700003600"),
            (ExpirationFormat::Fractional, "1700003600.123"),
            (ExpirationFormat::Scientific, "1.700003600123E9"),
        ] {
            let fx = Fixture::new(CognitoOptions {
                expiration_format: format,
                ..CognitoOptions::default()
            })
            .await;
            let identity_id = fx.get_id(fx.logins_for("auth0|abc")).await.expect("GetId");
            let output = fx
                .client
                .get_credentials_for_identity()
                .identity_id(&identity_id)
                .set_logins(Some(fx.logins_for("auth0|abc")))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{format:?}: {e:?}"));
            assert_eq!(output.identity_id(), Some(identity_id.as_str()));
            let credentials = output.credentials().expect("credentials");
            let expiration = credentials.expiration().expect("expiration");
            assert_eq!(expiration.secs(), NOW + 3600, "{format:?}");

            let access_key_id = credentials.access_key_id().expect("access key");
            let issued = fx.emu.lookup_access_key(access_key_id).expect("remembered");
            assert_eq!(issued.identity_id, identity_id);
            assert_eq!(
                fx.emu.logins_of(&issued.identity_id),
                vec![(fx.issuer.logins_key(), "auth0|abc".to_owned())]
            );
            assert!(fx.emu.logins_of("us-east-1:unknown").is_empty());
            assert_eq!(issued.role_arn, DEFAULT_ROLE_ARN);
            assert_eq!(
                credentials.secret_key(),
                Some(issued.secret_key.expose_str())
            );
            assert_eq!(
                credentials.session_token(),
                Some(issued.session_token.expose_str())
            );
            assert_eq!(format_expiration(issued.expiration, format), literal);
            let stats = fx.emu.stats();
            assert_eq!((stats.get_id.calls, stats.get_id.ok), (1, 1));
            assert_eq!(
                (
                    stats.get_credentials_for_identity.calls,
                    stats.get_credentials_for_identity.ok
                ),
                (1, 1)
            );
        }
    }

    #[tokio::test]
    async fn expiration_is_written_literally_on_the_wire() {
        let fx = Fixture::new(CognitoOptions {
            expiration_format: ExpirationFormat::Scientific,
            ..CognitoOptions::default()
        })
        .await;
        // To the next whole second (…001.000), so the literal has no fraction.
        fx.clock
            .advance(Duration::from_millis(1_000 - (NOW_MILLIS % 1_000)));
        let identity_id = fx
            .emu
            .get_id(fx.emu.identity_pool_id(), &fx.btree("auth0|abc"))
            .await;
        let identity_id = identity_id.expect("GetId");
        let body = json!({ "IdentityId": identity_id, "Logins": fx.btree("auth0|abc") });
        let reply = send(
            Method::POST,
            &fx.emu.endpoint_url(),
            &[
                (
                    "x-amz-target",
                    "AWSCognitoIdentityService.GetCredentialsForIdentity",
                ),
                ("content-type", CONTENT_TYPE),
            ],
            &body.to_string(),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("content-type"), CONTENT_TYPE);
        assert_eq!(reply.header("x-amzn-requestid").len(), 36);
        assert!(
            reply.body.contains(r#""Expiration":1.700003601E9,"#),
            "{}",
            reply.body
        );
        let credentials = &reply.json()["Credentials"];
        let access_key_id = credentials["AccessKeyId"].as_str().expect("AccessKeyId");
        assert!(fx.emu.lookup_access_key(access_key_id).is_some());
    }

    #[test]
    fn expiration_formats() {
        let at = |millis| from_unix_millis(millis);
        let cases = [
            (1_700_003_600_000, ExpirationFormat::Integer, "1700003600"),
            (1_700_003_600_999, ExpirationFormat::Integer, "1700003600"),
            (
                1_700_003_600_123,
                ExpirationFormat::Fractional,
                "1700003600.123",
            ),
            (
                1_700_003_600_000,
                ExpirationFormat::Fractional,
                "1700003600.000",
            ),
            (
                1_700_003_600_000,
                ExpirationFormat::Scientific,
                "1.7000036E9",
            ),
            (1_700_000_000_000, ExpirationFormat::Scientific, "1.7E9"),
            (
                1_700_003_601_500,
                ExpirationFormat::Scientific,
                "1.7000036015E9",
            ),
            (1_000_000_000_000, ExpirationFormat::Scientific, "1.0E9"),
        ];
        for (millis, format, expected) in cases {
            assert_eq!(
                format_expiration(at(millis), format),
                expected,
                "{format:?}"
            );
        }
    }

    #[tokio::test]
    async fn identity_ids_are_stable_and_well_formed() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        let first = fx.get_id(fx.logins_for("auth0|abc")).await.expect("GetId");
        fx.clock.advance(Duration::from_secs(60));
        let again = fx.get_id(fx.logins_for("auth0|abc")).await.expect("GetId");
        let other = fx.get_id(fx.logins_for("auth0|xyz")).await.expect("GetId");
        assert_eq!(first, again);
        assert_ne!(first, other);

        let (region, uuid) = first.split_once(':').expect("region:uuid");
        assert_eq!(region, "us-east-1");
        let groups: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'), "version 4: {uuid}");
        assert!(
            groups[3].starts_with(['8', '9', 'a', 'b']),
            "RFC 4122 variant: {uuid}"
        );
        assert!(
            uuid.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
        );

        // A new emulator for the same pool and provider name gives the same id: it is derived,
        // not stored. (The provider name includes the issuer's port, so reuse the issuer.)
        let twin = CognitoEmulator::start(
            CognitoOptions::default(),
            vec![TrustedProvider::for_issuer(&fx.issuer)],
            fx.clock.shared(),
        )
        .await
        .expect("starts");
        let twin_id = twin
            .get_id(twin.identity_pool_id(), &fx.btree("auth0|abc"))
            .await
            .expect("GetId");
        assert_eq!(twin_id, first);
    }

    #[tokio::test]
    async fn every_token_rule_fails_with_cognitos_type_and_message() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        let spec = |change: &dyn Fn(&mut TokenSpec)| {
            let mut spec = TokenSpec::for_subject("auth0|abc");
            change(&mut spec);
            fx.logins(fx.issuer.mint(&spec))
        };
        let issuer_name = fx.issuer.logins_key();
        let cases: Vec<(&str, HashMap<String, String>, SdkFailure)> = vec![
            (
                "not a JWT",
                fx.logins("not-a-jwt".into()),
                not_authorized(INVALID_TOKEN),
            ),
            (
                "HS256",
                spec(&|s| {
                    s.alg = SigningAlg::Hs256 {
                        secret: b"secret".to_vec(),
                    }
                }),
                not_authorized(INVALID_TOKEN),
            ),
            (
                "HS256 keyed with the public key",
                spec(&|s| s.alg = SigningAlg::Hs256WithPublicKey),
                not_authorized(INVALID_TOKEN),
            ),
            (
                "alg none",
                spec(&|s| s.alg = SigningAlg::None),
                not_authorized(INVALID_TOKEN),
            ),
            (
                "ES256",
                spec(&|s| s.alg = SigningAlg::Es256),
                not_authorized(INVALID_TOKEN),
            ),
            (
                "foreign issuer",
                spec(&|s| s.issuer = Some("https://tenant.auth0.com/".into())),
                not_authorized("Invalid login token. Issuer doesn't match providerName"),
            ),
            (
                "unpublished key",
                spec(&|s| s.alg = SigningAlg::Rs256Unpublished),
                not_authorized("Invalid login token. Couldn't verify signed token."),
            ),
            (
                "unknown kid",
                spec(&|s| s.kid = Some("no-such-kid".into())),
                not_authorized("Invalid login token. Couldn't verify signed token."),
            ),
            (
                "no kid",
                spec(&|s| s.omit_kid = true),
                not_authorized("Invalid login token. Couldn't verify signed token."),
            ),
            (
                "tampered payload",
                spec(&|s| s.tamper_payload = true),
                not_authorized("Invalid login token. Couldn't verify signed token."),
            ),
            (
                "wrong audience",
                spec(&|s| s.audience = vec!["someone-else".into()]),
                not_authorized("Invalid login token. Incorrect token audience."),
            ),
            (
                "azp wins over a right aud",
                spec(&|s| s.azp = Some("someone-else".into())),
                not_authorized("Invalid login token. Incorrect token audience."),
            ),
            (
                "expired",
                spec(&|s| {
                    s.issued_at = Some(from_unix_seconds(NOW - 7200));
                    s.lifetime = Some(Duration::from_secs(3600));
                }),
                not_authorized(&format!(
                    "Invalid login token. Token expired: {NOW} >= {}",
                    NOW - 3600
                )),
            ),
            (
                "expires this very second",
                spec(&|s| s.lifetime = Some(Duration::ZERO)),
                not_authorized(&format!(
                    "Invalid login token. Token expired: {NOW} >= {NOW}"
                )),
            ),
            (
                "no exp",
                spec(&|s| s.omit_exp = true),
                not_authorized(INVALID_TOKEN),
            ),
            (
                "no sub",
                spec(&|s| s.omit_sub = true),
                not_authorized(INVALID_TOKEN),
            ),
            (
                "untrusted provider",
                HashMap::from([("accounts.google.com".to_owned(), fx.issuer.token_for("a"))]),
                not_authorized("Token is not from a supported provider of this identity pool."),
            ),
            (
                "no logins",
                HashMap::new(),
                not_authorized("Unauthenticated access is not supported for this identity pool."),
            ),
        ];
        for (name, logins, expected) in cases {
            let got = fx.get_id(logins).await.expect_err(name);
            assert_eq!(got, expected, "{name}");
        }
        assert_eq!(fx.emu.stats().get_id.ok, 0);
        assert_eq!(
            fx.emu.stats().get_id.errors.get("NotAuthorizedException"),
            Some(&18)
        );

        // Accepted variants.
        let accepted: Vec<(&str, HashMap<String, String>)> = vec![
            (
                "right azp, wrong aud",
                spec(&|s| {
                    s.audience = vec!["someone-else".into()];
                    s.azp = Some(DEFAULT_AUDIENCE.into());
                }),
            ),
            (
                "aud array",
                spec(&|s| {
                    s.audience = vec!["other".into(), DEFAULT_AUDIENCE.into()];
                }),
            ),
            (
                "https issuer",
                spec(&|s| s.issuer = Some(format!("https://{issuer_name}/"))),
            ),
            (
                "issuer without slash",
                spec(&|s| s.issuer = Some(format!("http://{issuer_name}"))),
            ),
            (
                "float exp",
                spec(&|s| {
                    s.extra_claims
                        .insert("exp".into(), json!((NOW + 60) as f64 + 0.5));
                }),
            ),
        ];
        for (name, logins) in accepted {
            fx.get_id(logins)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    #[tokio::test]
    async fn issuer_without_trailing_slash_is_matched_too() {
        let fx = Fixture::with_issuer(
            CognitoOptions::default(),
            IssuerOptions {
                trailing_slash: false,
                ..IssuerOptions::default()
            },
        )
        .await;
        assert!(!fx.issuer.issuer().ends_with('/'));
        fx.get_id(fx.logins_for("auth0|abc"))
            .await
            .expect("accepted");
        let slashed = fx.issuer.mint(&TokenSpec {
            issuer: Some(format!("{}/", fx.issuer.issuer())),
            ..TokenSpec::for_subject("auth0|abc")
        });
        fx.get_id(fx.logins(slashed))
            .await
            .expect("one trailing slash is ignored");
        let wrong_key = HashMap::from([(
            format!("{}/", fx.issuer.logins_key()),
            fx.issuer.token_for("auth0|abc"),
        )]);
        assert_eq!(
            fx.get_id(wrong_key)
                .await
                .expect_err("the Logins key must match exactly"),
            not_authorized("Token is not from a supported provider of this identity pool.")
        );
    }

    #[tokio::test]
    async fn pool_id_errors() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        let call = |pool: &'static str| {
            fx.client
                .get_id()
                .identity_pool_id(pool)
                .set_logins(Some(fx.logins_for("auth0|abc")))
                .send()
        };
        let missing = call("us-east-1:00000000-0000-4000-8000-000000000000")
            .await
            .map_err(SdkFailure::from)
            .expect_err("unknown pool");
        assert_eq!(
            missing,
            failure(
                400,
                "ResourceNotFoundException",
                "IdentityPool 'us-east-1:00000000-0000-4000-8000-000000000000' not found."
            )
        );
        for malformed in ["no-colon", "us-east-1:XYZ", ":abc", "us east 1:abc"] {
            let got = call(malformed)
                .await
                .map_err(SdkFailure::from)
                .expect_err(malformed);
            assert_eq!(got.code, "InvalidParameterException", "{malformed}");
            assert!(got.message.contains("identityPoolId"), "{}", got.message);
        }
    }

    #[tokio::test]
    async fn namespaced_error_types_still_parse_in_the_sdk() {
        let fx = Fixture::new(CognitoOptions {
            namespaced_error_types: true,
            ..CognitoOptions::default()
        })
        .await;
        let got = fx
            .get_id(fx.logins("garbage".into()))
            .await
            .expect_err("invalid token");
        assert_eq!(got, not_authorized(INVALID_TOKEN));

        let reply = send(
            Method::POST,
            &fx.emu.endpoint_url(),
            &[("x-amz-target", "AWSCognitoIdentityService.GetId")],
            &json!({ "IdentityPoolId": fx.emu.identity_pool_id(), "Logins": {} }).to_string(),
        )
        .await;
        assert_eq!(reply.status, 400);
        assert_eq!(
            reply.json()["__type"],
            "com.amazonaws.cognito.identity.model#NotAuthorizedException"
        );
        assert!(
            reply
                .header("x-amzn-errortype")
                .starts_with("NotAuthorizedException:http://internal.amazon.com/coral/")
        );
    }

    #[tokio::test]
    async fn get_credentials_errors() {
        let fx = Fixture::new(CognitoOptions {
            allowed_roles: vec![
                DEFAULT_ROLE_ARN.to_owned(),
                "arn:aws:iam::123456789012:role/credbroker-demo-admin".to_owned(),
            ],
            ..CognitoOptions::default()
        })
        .await;
        let identity_id = fx.get_id(fx.logins_for("auth0|abc")).await.expect("GetId");
        fx.get_id(fx.logins_for("auth0|mallory"))
            .await
            .expect("GetId");
        let call = |identity: &str, logins: HashMap<String, String>, role: Option<&str>| {
            fx.client
                .get_credentials_for_identity()
                .identity_id(identity)
                .set_logins(Some(logins))
                .set_custom_role_arn(role.map(str::to_owned))
                .send()
        };

        let unknown = "us-east-1:00000000-0000-4000-8000-000000000000";
        let error = call(unknown, fx.logins_for("auth0|abc"), None)
            .await
            .expect_err("unknown identity");
        assert!(
            error
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception())
        );
        assert_eq!(
            SdkFailure::from(error),
            failure(
                400,
                "ResourceNotFoundException",
                &format!("Identity '{unknown}' not found.")
            )
        );

        let error = call(&identity_id, fx.logins_for("auth0|mallory"), None)
            .await
            .map_err(SdkFailure::from)
            .expect_err("someone else's token");
        assert_eq!(
            error,
            not_authorized(
                "Invalid login token. Logins don't match. Please include at least one valid \
                 login for this identity or identity pool."
            )
        );

        let expired = fx.issuer.mint(&TokenSpec {
            lifetime: Some(Duration::from_secs(1)),
            issued_at: Some(from_unix_seconds(NOW - 10)),
            ..TokenSpec::for_subject("auth0|abc")
        });
        let error = call(&identity_id, fx.logins(expired), None)
            .await
            .map_err(SdkFailure::from)
            .expect_err("expired token");
        assert!(
            error
                .message
                .starts_with("Invalid login token. Token expired: "),
            "{error:?}"
        );

        let error = call(&identity_id, HashMap::new(), None)
            .await
            .map_err(SdkFailure::from)
            .expect_err("no logins");
        assert_eq!(
            error,
            not_authorized("Unauthenticated access is not supported for this identity pool.")
        );

        let error = call(
            &identity_id,
            fx.logins_for("auth0|abc"),
            Some("arn:aws:iam::123456789012:role/not-allowed"),
        )
        .await
        .map_err(SdkFailure::from)
        .expect_err("role not allowed");
        assert_eq!(error.code, "InvalidParameterException");

        let admin = "arn:aws:iam::123456789012:role/credbroker-demo-admin";
        let output = call(&identity_id, fx.logins_for("auth0|abc"), Some(admin))
            .await
            .expect("allowed custom role");
        let key = output
            .credentials()
            .and_then(|c| c.access_key_id())
            .expect("access key");
        assert_eq!(
            fx.emu.lookup_access_key(key).expect("remembered").role_arn,
            admin
        );

        let stats = fx.emu.stats().get_credentials_for_identity;
        assert_eq!((stats.calls, stats.ok), (6, 1));
        assert_eq!(stats.errors.get("NotAuthorizedException"), Some(&3));
        assert_eq!(stats.errors.get("ResourceNotFoundException"), Some(&1));
        assert_eq!(stats.errors.get("InvalidParameterException"), Some(&1));
    }

    #[tokio::test]
    async fn key_rotation_is_followed() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        let old_token = fx.issuer.token_for("auth0|abc");
        fx.issuer.rotate_keys();
        let new_token = fx.issuer.token_for("auth0|abc");
        fx.get_id(fx.logins(old_token.clone()))
            .await
            .expect("old key still published");
        fx.get_id(fx.logins(new_token.clone()))
            .await
            .expect("new key published");
        fx.issuer.retire_old_keys();
        assert_eq!(
            fx.get_id(fx.logins(old_token))
                .await
                .expect_err("old key retired"),
            not_authorized("Invalid login token. Couldn't verify signed token.")
        );
        fx.get_id(fx.logins(new_token)).await.expect("current key");
    }

    #[tokio::test]
    async fn credentials_look_real_and_are_unique() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        let logins = fx.btree("auth0|abc");
        let identity_id = fx
            .emu
            .get_id(fx.emu.identity_pool_id(), &logins)
            .await
            .expect("GetId");
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            let issued = fx
                .emu
                .get_credentials_for_identity(&identity_id, &logins, None)
                .await
                .expect("credentials");
            let key = &issued.access_key_id;
            assert_eq!(key.len(), 20);
            assert!(key.starts_with("ASIA"));
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            );
            let secret = issued.secret_key.expose_str();
            assert_eq!(secret.len(), 40);
            assert!(
                secret
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
            );
            let token = issued.session_token.expose_str();
            assert!((900..=1300).contains(&token.len()), "{}", token.len());
            assert!(!token.contains(['"', '\\']));
            assert!(STANDARD.decode(token).is_ok(), "session token is base64");
            assert_eq!(issued.expiration, from_unix_seconds(NOW + 3600));
            assert!(
                !format!("{issued:?}").contains(secret),
                "Debug redacts secrets"
            );
            assert!(seen.insert(key.clone()), "unique access keys");
        }
    }

    #[test]
    fn pruning_drops_only_expired_credentials() {
        let issued = |key: &str, expires: i64| IssuedCredentials {
            identity_id: "us-east-1:0".into(),
            access_key_id: key.into(),
            secret_key: "s".into(),
            session_token: "t".into(),
            expiration: from_unix_seconds(expires),
            issued_at: from_unix_seconds(expires - 3600),
            role_arn: DEFAULT_ROLE_ARN.into(),
        };
        let mut map = HashMap::from([
            ("A".to_owned(), issued("A", NOW - 1)),
            ("B".to_owned(), issued("B", NOW)),
            ("C".to_owned(), issued("C", NOW + 1)),
        ]);
        prune_expired(&mut map, from_unix_seconds(NOW));
        assert_eq!(map.keys().collect::<Vec<_>>(), ["C"]);
    }

    #[tokio::test]
    async fn fail_next_is_deterministic_and_per_operation() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        fx.emu
            .faults()
            .fail_next(Operation::GetId, ErrorType::TooManyRequests, 2);
        fx.emu.faults().fail_next_with(
            Operation::GetCredentialsForIdentity,
            ServiceError::new(ErrorType::ExternalService, "upstream said no"),
            1,
        );
        assert_eq!(fx.emu.faults().settings().queued_failures, 3);
        for _ in 0..2 {
            assert_eq!(
                fx.get_id(fx.logins_for("auth0|abc"))
                    .await
                    .expect_err("injected"),
                failure(400, "TooManyRequestsException", "Rate exceeded")
            );
        }
        let identity_id = fx
            .get_id(fx.logins_for("auth0|abc"))
            .await
            .expect("queue drained");
        let logins = fx.btree("auth0|abc");
        let error = fx
            .emu
            .get_credentials_for_identity(&identity_id, &logins, None)
            .await
            .expect_err("injected");
        assert_eq!(
            error,
            ServiceError::new(ErrorType::ExternalService, "upstream said no")
        );
        fx.emu
            .get_credentials_for_identity(&identity_id, &logins, None)
            .await
            .expect("queue drained");
        let stats = fx.emu.stats();
        assert_eq!(stats.get_id.calls, 3);
        assert_eq!(
            stats.get_id.errors.get("TooManyRequestsException"),
            Some(&2)
        );
        fx.emu.reset_stats();
        assert_eq!(fx.emu.stats(), CognitoStats::default());
    }

    #[tokio::test]
    async fn outage_rates_and_clear() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        fx.emu.faults().set_outage(true);
        fx.emu
            .faults()
            .fail_next(Operation::GetId, ErrorType::LimitExceeded, 1);
        assert_eq!(
            fx.get_id(fx.logins_for("auth0|abc"))
                .await
                .expect_err("outage"),
            failure(503, "ServiceUnavailableException", "Service Unavailable")
        );
        assert_eq!(
            fx.emu.faults().settings().queued_failures,
            1,
            "an outage answers before the queue is consulted"
        );
        fx.emu.faults().clear();
        assert_eq!(fx.emu.faults().settings(), FaultSettings::default());

        fx.emu.faults().set_internal_error_rate(1.0);
        assert_eq!(
            fx.get_id(fx.logins_for("auth0|abc"))
                .await
                .expect_err("internal"),
            failure(500, "InternalErrorException", "An internal error occurred.")
        );
        fx.emu.faults().set_throttle_rate(7.0);
        assert_eq!(fx.emu.faults().settings().throttle_rate, 1.0, "clamped");
        assert_eq!(
            fx.get_id(fx.logins_for("auth0|abc"))
                .await
                .expect_err("throttled"),
            failure(400, "TooManyRequestsException", "Rate exceeded")
        );
        fx.emu.faults().clear();
        fx.get_id(fx.logins_for("auth0|abc"))
            .await
            .expect("healthy again");
        assert_eq!(fx.emu.stats().get_id.calls, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_added_before_the_logic() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        fx.emu.faults().set_latency(Duration::from_millis(250));
        let started = tokio::time::Instant::now();
        fx.emu
            .get_id(fx.emu.identity_pool_id(), &fx.btree("auth0|abc"))
            .await
            .expect("GetId");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn protocol_errors_and_emulator_endpoints() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        let url = fx.emu.endpoint_url();
        let unknown = send(
            Method::POST,
            &url,
            &[("x-amz-target", "AWSCognitoIdentityService.DeleteIdentities")],
            "{}",
        )
        .await;
        assert_eq!(unknown.status, 400);
        assert_eq!(unknown.json()["__type"], "UnknownOperationException");
        assert_eq!(
            unknown.header("x-amzn-errortype"),
            "UnknownOperationException"
        );

        let bad_json = send(
            Method::POST,
            &url,
            &[("x-amz-target", "AWSCognitoIdentityService.GetId")],
            "{not json",
        )
        .await;
        assert_eq!(bad_json.status, 400);
        assert_eq!(bad_json.header("content-type"), CONTENT_TYPE);
        assert_eq!(bad_json.json()["__type"], "SerializationException");

        let faults = send(
            Method::POST,
            &format!("{url}/_emulator/faults"),
            &[("content-type", "application/json")],
            r#"{"latency_ms": 5, "throttle_rate": 0.25, "outage": true}"#,
        )
        .await;
        assert_eq!(faults.status, 200);
        assert_eq!(faults.json()["throttle_rate"], 0.25);
        assert!(fx.emu.faults().settings().outage);
        assert_eq!(fx.emu.faults().settings().latency_ms, 5);
        let cleared = send(
            Method::POST,
            &format!("{url}/_emulator/faults"),
            &[],
            r#"{"clear": true}"#,
        )
        .await;
        assert_eq!(cleared.json()["outage"], false);

        let stats = send(Method::GET, &format!("{url}/_emulator/stats"), &[], "").await;
        assert_eq!(stats.status, 200);
        let stats = stats.json();
        assert_eq!(stats["unknown_operations"], 1);
        assert_eq!(stats["get_id"]["calls"], 1);
        assert_eq!(stats["get_id"]["errors"]["SerializationException"], 1);
    }

    #[tokio::test]
    async fn shutdown_stops_http_but_not_in_process_calls() {
        let fx = Fixture::new(CognitoOptions::default()).await;
        let addr = fx.emu.local_addr();
        fx.emu.shutdown();
        tokio::time::timeout(Duration::from_secs(5), fx.emu.stopped())
            .await
            .expect("stops");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        fx.emu
            .get_id(fx.emu.identity_pool_id(), &fx.btree("auth0|abc"))
            .await
            .expect("in-process GetId still works");
    }
}
