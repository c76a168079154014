//! Configuration: parsed once, validated once, then trusted.
//!
//! Owns: the typed [`Config`] and the one function that builds it, [`load`].
//!
//! Sources, later ones winning: the TOML file (`--config`), environment variables
//! `CREDBROKER_<SECTION>__<KEY>` (e.g. `CREDBROKER_SERVER__LISTEN`,
//! `CREDBROKER_PROVIDERS__AUTH0__AUDIENCES=a,b`), then command-line flags.
//!
//! Promises:
//! - every problem is reported at once — unknown keys (typos), wrong types and invalid values —
//!   each with its dotted path, so `credbroker check-config` is a complete review;
//! - a [`Config`] that exists is valid: listen addresses are loopback unless explicitly allowed,
//!   issuers and discovery URLs are https (http only on loopback), no symmetric or `none`
//!   algorithms, thresholds are ordered (`min_remaining < refresh_ahead`), durations are typed;
//! - defaults live in this file only, as the `DEFAULT_*` constants, and are mirrored (and
//!   commented) in `config/credbroker.example.toml`.
//!
//! The merged tree is walked with a small reader ([`Section`]) instead of serde's derive,
//! because derive stops at the first error and cannot report the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value};
use url::Url;

mod grpc;
mod sessions;
pub use grpc::GrpcConfig;
pub use sessions::SessionsConfig;

/// Prefix of environment variables that override settings.
pub const ENV_PREFIX: &str = "CREDBROKER";
/// Environment variable naming the config file (read by the CLI, not treated as a setting).
pub const ENV_CONFIG_FILE: &str = "CREDBROKER_CONFIG";

/// Default listen address of the container-credentials endpoint.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8900";
const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
const DEFAULT_MAX_PENDING_EXCHANGES: u64 = 512;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

const DEFAULT_MAX_TOKEN_BYTES: u64 = 8 * 1024;
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
const MAX_LEEWAY: Duration = Duration::from_secs(300);
const DEFAULT_VERIFIED_CACHE_CAPACITY: u64 = 100_000;
const DEFAULT_JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_OIDC_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MIN_TOKEN_VALIDITY: Duration = Duration::from_secs(60);

const DEFAULT_COGNITO_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_COGNITO_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_COGNITO_MAX_ATTEMPTS: u64 = 3;
const DEFAULT_COGNITO_BACKOFF_BASE: Duration = Duration::from_millis(100);
const DEFAULT_COGNITO_BACKOFF_MAX: Duration = Duration::from_secs(2);

const DEFAULT_MAX_IDENTITIES: u64 = 100_000;
const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(20 * 60);
const DEFAULT_REFRESH_AHEAD: Duration = Duration::from_secs(30 * 60);
const DEFAULT_REFRESH_JITTER: Duration = Duration::from_secs(5 * 60);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
const DEFAULT_REFRESH_RATE: f64 = 50.0;
const DEFAULT_REFRESH_CONCURRENCY: u64 = 16;
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
const DEFAULT_FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(15);

const DEFAULT_APPSYNC_MAX_BODY_BYTES: u64 = 1024 * 1024;
const DEFAULT_APPSYNC_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_APPSYNC_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_APPSYNC_TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The container-credentials listener.
    pub server: ServerConfig,
    /// Token validation policy shared by all providers.
    pub tokens: TokenConfig,
    /// Trusted OIDC providers (at least one).
    pub providers: Vec<ProviderConfig>,
    /// The Cognito identity pool credentials come from.
    pub cognito: CognitoConfig,
    /// Identity cache and refresh policy.
    pub cache: CacheConfig,
    /// Logging.
    pub log: LogConfig,
    /// AppSync request forwarding (no APIs when the section is absent).
    pub appsync: AppSyncConfig,
    /// Identities configured in the file (`[identities.<name>]`), warmed from start-up.
    pub identities: Vec<IdentityConfig>,
    /// The IMDSv2-compatible endpoint (`[imds]`), when configured.
    pub imds: Option<ImdsConfig>,
    /// The gRPC API (off unless a transport is configured).
    pub grpc: GrpcConfig,
    /// Sessions (opaque handles standing for a verified ID token).
    pub sessions: SessionsConfig,
    /// The admin listener (`[admin]`): metrics and health probes.
    pub admin: AdminConfig,
}

/// The container-credentials HTTP listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where `GET /v1/credentials` is served. Loopback unless `allow_non_loopback`.
    pub listen: SocketAddr,
    /// Whether a non-loopback `listen` was explicitly allowed.
    pub allow_non_loopback: bool,
    /// Largest request head (request line + headers) accepted; beyond it hyper answers 431.
    pub max_header_bytes: usize,
    /// Time allowed for a client to send its request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Longest time one request may take, including waiting for Cognito.
    pub request_timeout: Duration,
    /// Concurrent connections; further connections wait in the accept backlog.
    pub max_connections: usize,
    /// Concurrent requests waiting on an upstream exchange; beyond it callers get 429.
    pub max_pending_exchanges: usize,
    /// On SIGTERM, how long in-flight requests may take to finish before credbroker exits.
    pub shutdown_grace: Duration,
    /// `Host` names (besides loopback IPs, `localhost` and the listen address) the main
    /// listener answers to (DNS-rebinding guard).
    pub allowed_hosts: Vec<String>,
}

/// How ID tokens are validated.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Longest token accepted (bytes); longer ones are refused before any parsing.
    pub max_token_bytes: usize,
    /// Clock-skew leeway for `nbf` and `iat` (at most 5 minutes). Never applied to `exp`: an
    /// expired token is refused (Cognito would refuse it).
    pub leeway: Duration,
    /// How many verified tokens are remembered (by digest) so repeats skip signature checks.
    pub verified_cache_capacity: u64,
    /// Minimum time between JWKS refetches triggered by an unknown `kid`.
    pub jwks_refetch_interval: Duration,
    /// Period of routine JWKS refreshes.
    pub jwks_refresh_interval: Duration,
    /// Timeout of discovery and JWKS requests.
    pub oidc_timeout: Duration,
    /// A token with less than this left is refused (401 `TokenExpired`), and a stored token is
    /// used for an exchange (a background refresh, a session's) only while it has this much left.
    pub min_token_validity: Duration,
}

/// A JWS algorithm a provider may sign ID tokens with. Symmetric (HS*) and `none` are never
/// accepted: nobody but the issuer could verify them, and Cognito refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (the default, and what Cognito accepts).
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        }
    }

    /// Parses a JOSE name (case-sensitive, as in JWT headers).
    pub fn from_jose(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            _ => return None,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One trusted OIDC provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The table name in `[providers.<name>]`; used in logs and metric labels.
    pub name: String,
    /// The issuer exactly as it appears in tokens' `iss` (Auth0: with the trailing slash).
    pub issuer: String,
    /// Accepted `aud` (or `azp`) values: the application client IDs.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms.
    pub algorithms: Vec<Algorithm>,
    /// The key of this provider in Cognito's `Logins` map.
    pub logins_key: String,
    /// Where the discovery document is fetched instead of
    /// `<issuer>/.well-known/openid-configuration` (a private mirror, an emulator). The
    /// document must still name `issuer` byte for byte.
    pub discovery_url: Option<Url>,
}

impl ProviderConfig {
    /// Where the discovery document is fetched: `discovery_url`, else
    /// `<issuer>/.well-known/openid-configuration` (OIDC Discovery: the issuer's trailing slash
    /// is not doubled).
    pub fn discovery_url(&self) -> String {
        match &self.discovery_url {
            Some(url) => url.as_str().to_owned(),
            None => format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            ),
        }
    }
}

/// The Cognito identity pool.
#[derive(Debug, Clone)]
pub struct CognitoConfig {
    /// AWS region of the pool, e.g. `us-east-1`.
    pub region: String,
    /// `<region>:<uuid>`.
    pub identity_pool_id: String,
    /// Overrides the Cognito endpoint (the emulator, a VPC endpoint).
    pub endpoint_url: Option<Url>,
    /// `CustomRoleArn` sent with every GetCredentialsForIdentity, if set.
    pub custom_role_arn: Option<String>,
    /// Reported as `AccountId` in credentials responses, if set.
    pub account_id: Option<String>,
    /// Timeout of one attempt of one call.
    pub attempt_timeout: Duration,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Attempts per call for retryable errors (throttling, internal, external service, network).
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, with full jitter.
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
}

/// Identity cache and refresh policy. Thresholds scale down for short credential lifetimes.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Most identities kept; least-used beyond it are evicted.
    pub max_identities: u64,
    /// Never serve credentials with less than this left.
    pub min_remaining: Duration,
    /// Start refreshing in the background when this much is left.
    pub refresh_ahead: Duration,
    /// Spread of background refresh times (taken from the window between the two thresholds).
    pub refresh_jitter: Duration,
    /// Identities with no caller for this long are evicted. Before that, a credential set
    /// nobody asked for is not refreshed again unless the identity is watched or held (see
    /// the identity cache's module docs).
    pub idle_timeout: Duration,
    /// Background refreshes started per second, at most (Cognito quota protection).
    pub refresh_rate: f64,
    /// Background refreshes in flight, at most.
    pub refresh_concurrency: usize,
    /// How long a terminal Cognito refusal for a given token is remembered (no upstream call).
    pub negative_ttl: Duration,
    /// Longest pause after consecutive transient failures before an identity is retried.
    pub failure_backoff_max: Duration,
}

/// Log output.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// An `EnvFilter` directive (`RUST_LOG` overrides it).
    pub level: String,
    /// Text or JSON lines.
    pub format: LogFormat,
    /// Let dependencies log at debug/trace. Their output can contain tokens and session
    /// tokens, so this is off by default; turn it on only to debug the dependencies themselves.
    pub unsafe_dependency_logs: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// AppSync request forwarding: `POST /appsync/<name>/graphql` (and `/appsync/graphql` for the
/// default API) on the main listener.
#[derive(Debug, Clone)]
pub struct AppSyncConfig {
    /// The configured APIs, in name order. Empty: the AppSync routes answer 404.
    pub apis: Vec<AppSyncApiConfig>,
    /// Largest request body accepted from a caller; larger ones are answered 413 without
    /// contacting AppSync.
    pub max_body_bytes: usize,
    /// Longest wait for AppSync's response head (AppSync itself gives up after 30 s); then 504.
    pub timeout: Duration,
    /// TCP + TLS connect timeout towards AppSync.
    pub connect_timeout: Duration,
    /// OIDC mode: a caller's ID token must stay valid at least this much longer, or the request
    /// is refused with 401 instead of being forwarded with a dying token.
    pub token_expiry_margin: Duration,
}

/// One AppSync GraphQL API, `[appsync.apis.<name>]`.
#[derive(Debug, Clone)]
pub struct AppSyncApiConfig {
    /// The table name: the `<name>` in `/appsync/<name>/graphql`, and a metric label.
    pub name: String,
    /// The GraphQL endpoint, e.g. `https://<id>.appsync-api.<region>.amazonaws.com/graphql`.
    pub url: Url,
    /// The API's region (the SigV4 scope in IAM mode).
    pub region: String,
    /// How AppSync authenticates forwarded requests.
    pub auth: AppSyncAuth,
    /// Operation types callers may send; `None` forwards every operation unparsed.
    pub allowed_operations: Option<Vec<OperationType>>,
    /// Whether `/appsync/graphql` serves this API.
    pub default: bool,
}

/// How credbroker authenticates to an AppSync API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppSyncAuth {
    /// `OPENID_CONNECT`: the caller's raw ID token as `Authorization` (no `Bearer`).
    Oidc,
    /// `AWS_IAM`: SigV4 with the caller's Cognito credentials.
    Iam,
}

impl AppSyncAuth {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oidc => "oidc",
            Self::Iam => "iam",
        }
    }
}

/// A GraphQL operation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperationType {
    /// `query` (and the `{ ... }` shorthand).
    Query,
    /// `mutation`.
    Mutation,
    /// `subscription`.
    Subscription,
}

impl OperationType {
    /// The GraphQL keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Mutation => "mutation",
            Self::Subscription => "subscription",
        }
    }

    /// Parses the GraphQL keyword.
    pub fn from_keyword(word: &str) -> Option<Self> {
        Some(match word {
            "query" => Self::Query,
            "mutation" => Self::Mutation,
            "subscription" => Self::Subscription,
            _ => return None,
        })
    }
}

/// One configuration problem, with the dotted path of the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path, e.g. `providers.auth0.issuer`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn single(path: &str, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            path: path.to_owned(),
            message: message.into(),
        }])
    }
}

/// Where settings come from. Environment variables are passed in (never read here), so tests
/// never touch the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// TOML text used instead of a file (tests, the demo).
    pub toml: Option<String>,
    /// The process environment (only `CREDBROKER_*` entries are used).
    pub env: Vec<(String, String)>,
    /// Command-line overrides as (dotted key, value).
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// Settings from TOML text only.
    pub fn from_toml(text: impl Into<String>) -> Self {
        Self {
            toml: Some(text.into()),
            ..Self::default()
        }
    }
}

/// Builds the validated configuration from all sources, or reports every problem.
pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
    let tree = merge(sources)?;
    let errors = Mutex::new(Vec::new());
    let root = Section::root(&tree, &errors);
    let config = build(&root);
    root.finish();
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(errors)),
    }
}

impl Config {
    /// Parses TOML text (tests and the demo).
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        load(&Sources::from_toml(text))
    }
}

fn merge(sources: &Sources) -> Result<Map<String, Value>, ConfigErrors> {
    use config::{Environment, File, FileFormat};
    let mut builder = config::Config::builder();
    if let Some(path) = &sources.file {
        builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
    }
    if let Some(text) = &sources.toml {
        builder = builder.add_source(File::from_str(text, FileFormat::Toml));
    }
    let env = setting_env_vars(&sources.env)?;
    builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .source(Some(env)),
    );
    for (key, value) in &sources.overrides {
        builder = builder
            .set_override(key.as_str(), value.as_str())
            .map_err(|e| ConfigErrors::single(key, e.to_string()))?;
    }
    let merged = builder
        .build()
        .map_err(|e| ConfigErrors::single("", format!("cannot read configuration: {e}")))?;
    match merged.try_deserialize::<Value>() {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Ok(Map::new()),
        Err(e) => Err(ConfigErrors::single(
            "",
            format!("cannot read configuration: {e}"),
        )),
    }
}

/// Top-level sections, the only names an environment setting may start with.
const SECTIONS: &[&str] = &[
    "server",
    "tokens",
    "providers",
    "cognito",
    "cache",
    "log",
    "appsync",
    "identities",
    "imds",
    "grpc",
    "sessions",
    "admin",
];

/// Picks the environment variables that are settings: `CREDBROKER_<SECTION>__<KEY>`.
///
/// Other `CREDBROKER_*` variables are not ours to judge and are ignored: Kubernetes injects
/// `CREDBROKER_SERVICE_HOST`, `CREDBROKER_PORT_8900_TCP` and friends into every pod of a
/// namespace with a Service named `credbroker`, and a daemon that refused to start over them
/// would be a trap. A variable that names a section with a single underscore
/// (`CREDBROKER_SERVER_LISTEN`) is a typo, though, and is reported rather than dropped.
fn setting_env_vars(env: &[(String, String)]) -> Result<config::Map<String, String>, ConfigErrors> {
    let prefix = format!("{ENV_PREFIX}_");
    let mut settings = config::Map::new();
    let mut errors = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        if name == ENV_CONFIG_FILE {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        match lower.split_once("__") {
            Some((section, _)) if SECTIONS.contains(&section) => {
                settings.insert(name.clone(), value.clone());
            }
            Some((section, _)) => errors.push(ConfigError {
                path: name.clone(),
                message: format!(
                    "environment setting for unknown section {section:?} (sections: {})",
                    SECTIONS.join(", ")
                ),
            }),
            None => {
                if let Some((section, key)) = SECTIONS.iter().find_map(|s| {
                    lower.strip_prefix(*s)?.strip_prefix('_')?;
                    // `lower` is `rest` with ASCII letters lowered: the same byte offsets.
                    Some((*s, rest.get(s.len() + 1..)?))
                }) {
                    errors.push(ConfigError {
                        path: name.clone(),
                        message: format!(
                            "settings take a double underscore between section and key \
                             (did you mean {prefix}{}__{key}?)",
                            section.to_ascii_uppercase()
                        ),
                    });
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigErrors(errors))
    }
}

// Adding a section? Add it to `SECTIONS` too, or environment settings for it are refused.
fn build(root: &Section<'_>) -> Option<Config> {
    // Each builder reads its section; `finish` then reports what it did not read, even when the
    // builder gave up early on an invalid value.
    fn finished<'a, T>(section: Section<'a>, build: impl FnOnce(&Section<'a>) -> T) -> T {
        let built = build(&section);
        section.finish();
        built
    }
    let server = finished(root.section("server"), build_server);
    let tokens = finished(root.section("tokens"), build_tokens);
    let providers = build_providers(root);
    let cognito = finished(root.section("cognito"), build_cognito);
    let cache = finished(root.section("cache"), build_cache);
    let log = finished(root.section("log"), build_log);
    let appsync = finished(root.section("appsync"), build_appsync);
    let identities = build_identities(root, providers.as_deref());
    let imds = build_imds(root, identities.as_deref(), cognito.as_ref());
    let grpc = finished(root.section("grpc"), grpc::build_grpc);
    let sessions = finished(root.section("sessions"), sessions::build_sessions);
    let admin = finished(root.section("admin"), |s| {
        build_admin(s, server.as_ref(), imds.as_ref().and_then(Option::as_ref))
    });
    Some(Config {
        server: server?,
        tokens: tokens?,
        providers: providers?,
        cognito: cognito?,
        cache: cache?,
        log: log?,
        appsync: appsync?,
        identities: identities?,
        imds: imds?,
        grpc: grpc?,
        sessions: sessions?,
        admin: admin?,
    })
}

fn build_server(s: &Section<'_>) -> Option<ServerConfig> {
    let allow_non_loopback = s.bool_or("allow_non_loopback", false);
    let listen = s.socket_addr_or("listen", DEFAULT_LISTEN, allow_non_loopback);
    let max_header_bytes = s.u64_in("max_header_bytes", DEFAULT_MAX_HEADER_BYTES, 8192, 1 << 20);
    let config = ServerConfig {
        listen: listen?,
        allow_non_loopback,
        max_header_bytes: usize::try_from(max_header_bytes).ok()?,
        header_read_timeout: s.duration_in(
            "header_read_timeout",
            DEFAULT_HEADER_READ_TIMEOUT,
            Duration::from_millis(100),
            Duration::from_secs(300),
        ),
        request_timeout: s.duration_in(
            "request_timeout",
            DEFAULT_REQUEST_TIMEOUT,
            Duration::from_millis(100),
            Duration::from_secs(300),
        ),
        max_connections: usize::try_from(s.u64_in(
            "max_connections",
            DEFAULT_MAX_CONNECTIONS,
            1,
            1 << 20,
        ))
        .ok()?,
        max_pending_exchanges: usize::try_from(s.u64_in(
            "max_pending_exchanges",
            DEFAULT_MAX_PENDING_EXCHANGES,
            1,
            1 << 20,
        ))
        .ok()?,
        shutdown_grace: s.duration_in(
            "shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            Duration::ZERO,
            Duration::from_secs(3600),
        ),
        allowed_hosts: allowed_hosts(s),
    };
    Some(config)
}

/// `allowed_hosts`: host names or IP literals, without scheme, port or wildcard.
fn allowed_hosts(s: &Section<'_>) -> Vec<String> {
    let names = s.str_list("allowed_hosts").unwrap_or_default();
    for name in &names {
        if !is_host_name(name) {
            s.error(
                "allowed_hosts",
                format!(
                    "{name:?} is not a host name or IP address (letters, digits, '-' and '.', \
                     no scheme, port or wildcard)"
                ),
            );
        }
    }
    names
}

/// A DNS name (labels of 1-63 letters, digits and inner hyphens, at most 253 characters,
/// optional trailing dot) or an IP literal.
fn is_host_name(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn build_tokens(s: &Section<'_>) -> Option<TokenConfig> {
    let config = TokenConfig {
        max_token_bytes: usize::try_from(s.u64_in(
            "max_token_bytes",
            DEFAULT_MAX_TOKEN_BYTES,
            256,
            1 << 20,
        ))
        .ok()?,
        leeway: s.duration_in("leeway", DEFAULT_LEEWAY, Duration::ZERO, MAX_LEEWAY),
        verified_cache_capacity: s.u64_in(
            "verified_cache_capacity",
            DEFAULT_VERIFIED_CACHE_CAPACITY,
            1,
            u64::from(u32::MAX),
        ),
        jwks_refetch_interval: s.duration_in(
            "jwks_refetch_interval",
            DEFAULT_JWKS_REFETCH_INTERVAL,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ),
        jwks_refresh_interval: s.duration_in(
            "jwks_refresh_interval",
            DEFAULT_JWKS_REFRESH_INTERVAL,
            Duration::from_secs(60),
            Duration::from_secs(7 * 86_400),
        ),
        oidc_timeout: s.duration_in(
            "oidc_timeout",
            DEFAULT_OIDC_TIMEOUT,
            Duration::from_millis(100),
            Duration::from_secs(120),
        ),
        min_token_validity: s.duration_in(
            "min_token_validity",
            DEFAULT_MIN_TOKEN_VALIDITY,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ),
    };
    Some(config)
}

fn build_providers(root: &Section<'_>) -> Option<Vec<ProviderConfig>> {
    let table = root.section("providers");
    let names = table.keys();
    if names.is_empty() {
        root.error(
            "providers",
            "at least one provider is required, e.g. [providers.auth0] with issuer and audiences",
        );
        return None;
    }
    let mut providers = Vec::new();
    let mut ok = true;
    for name in names {
        let s = table.section(&name);
        match build_provider(&s, &name) {
            Some(p) => providers.push(p),
            None => ok = false,
        }
        s.finish();
    }
    let mut seen = BTreeMap::new();
    for p in &providers {
        if let Some(other) = seen.insert(p.issuer.clone(), p.name.clone()) {
            root.error(
                &format!("providers.{}.issuer", p.name),
                format!(
                    "issuer {:?} is also configured by providers.{other}",
                    p.issuer
                ),
            );
            ok = false;
        }
    }
    table.finish();
    ok.then_some(providers)
}

fn build_provider(s: &Section<'_>, name: &str) -> Option<ProviderConfig> {
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        s.error_here("provider names may contain only letters, digits, '_' and '-'");
    }
    let issuer =
        s.required_str("issuer")
            .and_then(|issuer| match check_http_url(&issuer, "the issuer") {
                Ok(url) => {
                    if url.query().is_some() || url.fragment().is_some() {
                        s.error("issuer", "an issuer has no query or fragment");
                        return None;
                    }
                    Some(issuer)
                }
                Err(msg) => {
                    s.error("issuer", msg);
                    None
                }
            });
    let audiences = match s.str_list("audiences") {
        Some(a) if !a.is_empty() => Some(a),
        Some(_) | None => {
            if !s.has("audiences") {
                s.error(
                    "audiences",
                    "required: the application client IDs tokens are issued to (their `aud`)",
                );
            } else {
                s.error("audiences", "must list at least one client ID");
            }
            None
        }
    };
    let algorithms = match s.str_list("algorithms") {
        None if !s.has("algorithms") => Some(vec![Algorithm::Rs256]),
        None => None,
        Some(names) => {
            let mut algs = Vec::new();
            let mut ok = !names.is_empty();
            if names.is_empty() {
                s.error(
                    "algorithms",
                    "must list at least one algorithm, e.g. [\"RS256\"]",
                );
            }
            for n in names {
                match Algorithm::from_jose(&n) {
                    Some(a) => algs.push(a),
                    None => {
                        ok = false;
                        s.error("algorithms", algorithm_refusal(&n));
                    }
                }
            }
            ok.then_some(algs)
        }
    };
    let logins_key = match s.opt_str("logins_key") {
        Some(key) => {
            if key.contains("://") || key.is_empty() {
                s.error(
                    "logins_key",
                    "the Logins key is the issuer without its scheme, e.g. \"dev-x.us.auth0.com\"",
                );
                None
            } else {
                Some(key)
            }
        }
        None => issuer.as_deref().map(derive_logins_key),
    };
    let discovery_url = match s.opt_str("discovery_url") {
        None => Some(None),
        Some(text) => match check_http_url(&text, "the discovery URL") {
            Ok(url) if url.fragment().is_some() => {
                s.error("discovery_url", "a discovery URL has no fragment");
                None
            }
            Ok(url) => Some(Some(url)),
            Err(msg) => {
                s.error("discovery_url", msg);
                None
            }
        },
    };
    Some(ProviderConfig {
        name: name.to_owned(),
        discovery_url: discovery_url?,
        logins_key: logins_key?,
        issuer: issuer?,
        audiences: audiences?,
        algorithms: algorithms?,
    })
}

/// Why an algorithm name is refused, with the fix.
pub fn algorithm_refusal(name: &str) -> String {
    if name.to_ascii_uppercase().starts_with("HS") {
        format!(
            "{name} is a shared-secret algorithm: tokens signed with it can only be verified by the \
             issuer itself, and Cognito refuses them. In Auth0, switch the application's JWT \
             signature algorithm to RS256 (Application → Settings → Advanced → OAuth)"
        )
    } else if name.eq_ignore_ascii_case("none") {
        "\"none\" means unsigned tokens, which anyone can forge; it is never accepted".to_owned()
    } else {
        format!("unknown algorithm {name:?}; accepted: RS256, RS384, RS512, PS256, ES256, ES384")
    }
}

/// The Cognito Logins key for an issuer: scheme and trailing slash removed.
///
/// `https://dev-x.us.auth0.com/` → `dev-x.us.auth0.com`;
/// `https://cognito-idp.us-east-1.amazonaws.com/us-east-1_abc` →
/// `cognito-idp.us-east-1.amazonaws.com/us-east-1_abc`.
pub fn derive_logins_key(issuer: &str) -> String {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .unwrap_or(issuer);
    rest.strip_suffix('/').unwrap_or(rest).to_owned()
}

/// `text` as a URL that is https, or plain http on a loopback host; else why not.
pub(crate) fn check_http_url(text: &str, what: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{what} {text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if host_is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{what} {text:?} uses plain http on a non-loopback host; use https (http is only \
             allowed for 127.0.0.1, [::1] and localhost)"
        )),
        other => Err(format!("{what} {text:?} has scheme {other:?}; use https")),
    }
}

fn host_is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn build_cognito(s: &Section<'_>) -> Option<CognitoConfig> {
    if !s.exists() {
        s.error_here(
            "the [cognito] section is required: region and identity_pool_id of your identity pool",
        );
        return None;
    }
    let region = s.required_str("region").and_then(|r| {
        if is_region(&r) {
            Some(r)
        } else {
            s.error(
                "region",
                format!("{r:?} is not an AWS region name like \"us-east-1\""),
            );
            None
        }
    });
    let pool = s.required_str("identity_pool_id").and_then(|id| {
        let Some((prefix, uuid)) = id.split_once(':') else {
            s.error(
                "identity_pool_id",
                format!("{id:?} is not an identity pool id; it looks like \"us-east-1:<uuid>\""),
            );
            return None;
        };
        if !is_uuid(uuid) {
            s.error(
                "identity_pool_id",
                format!("{id:?}: the part after ':' must be a UUID"),
            );
            return None;
        }
        if let Some(r) = &region
            && r != prefix
        {
            s.error(
                "identity_pool_id",
                format!("pool {id:?} is in region {prefix:?} but cognito.region is {r:?}"),
            );
            return None;
        }
        Some(id)
    });
    let endpoint_url =
        s.opt_str("endpoint_url")
            .and_then(|u| match check_http_url(&u, "the Cognito endpoint") {
                Ok(url) => Some(url),
                Err(msg) => {
                    s.error("endpoint_url", msg);
                    None
                }
            });
    let endpoint_ok = endpoint_url.is_some() || !s.has("endpoint_url");
    let custom_role_arn = s.opt_str("custom_role_arn");
    let role_ok = match &custom_role_arn {
        Some(arn) if !is_role_arn(arn) => {
            s.error(
                "custom_role_arn",
                format!("{arn:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"),
            );
            false
        }
        _ => true,
    };
    let account_id = s.opt_str("account_id");
    let account_ok = match &account_id {
        Some(a) if !(a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit())) => {
            s.error("account_id", "an AWS account id is 12 digits");
            false
        }
        _ => true,
    };
    let backoff_base = s.duration_in(
        "backoff_base",
        DEFAULT_COGNITO_BACKOFF_BASE,
        Duration::from_millis(1),
        Duration::from_secs(60),
    );
    let backoff_max = s.duration_in(
        "backoff_max",
        DEFAULT_COGNITO_BACKOFF_MAX,
        Duration::from_millis(1),
        Duration::from_secs(300),
    );
    if backoff_max < backoff_base {
        s.error("backoff_max", "must not be smaller than backoff_base");
    }
    let config = CognitoConfig {
        attempt_timeout: s.duration_in(
            "attempt_timeout",
            DEFAULT_COGNITO_ATTEMPT_TIMEOUT,
            Duration::from_millis(50),
            Duration::from_secs(120),
        ),
        connect_timeout: s.duration_in(
            "connect_timeout",
            DEFAULT_COGNITO_CONNECT_TIMEOUT,
            Duration::from_millis(50),
            Duration::from_secs(60),
        ),
        max_attempts: u32::try_from(s.u64_in("max_attempts", DEFAULT_COGNITO_MAX_ATTEMPTS, 1, 10))
            .ok()?,
        backoff_base,
        backoff_max,
        region: region?,
        identity_pool_id: pool?,
        endpoint_url,
        custom_role_arn,
        account_id,
    };
    (endpoint_ok && role_ok && account_ok).then_some(config)
}

fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    let Some((last, words)) = parts.split_last() else {
        return false;
    };
    parts.len() >= 3
        && words
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

fn is_uuid(u: &str) -> bool {
    let groups: Vec<&str> = u.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(crate) fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn, partition, service, _region, account, resource] = parts.as_slice() else {
        return false;
    };
    *arn == "arn"
        && partition.starts_with("aws")
        && *service == "iam"
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty())
}

fn build_cache(s: &Section<'_>) -> Option<CacheConfig> {
    let min_remaining = s.duration_in(
        "min_remaining",
        DEFAULT_MIN_REMAINING,
        Duration::from_secs(1),
        Duration::from_secs(12 * 3600),
    );
    let refresh_ahead = s.duration_in(
        "refresh_ahead",
        DEFAULT_REFRESH_AHEAD,
        Duration::from_secs(1),
        Duration::from_secs(12 * 3600),
    );
    let refresh_jitter = s.duration_in(
        "refresh_jitter",
        DEFAULT_REFRESH_JITTER,
        Duration::ZERO,
        Duration::from_secs(12 * 3600),
    );
    if refresh_ahead <= min_remaining {
        s.error(
            "refresh_ahead",
            format!(
                "must be larger than min_remaining ({}), so a background refresh happens before \
                 credentials become unservable",
                fmt_duration(min_remaining)
            ),
        );
    } else if refresh_jitter > refresh_ahead - min_remaining {
        s.error(
            "refresh_jitter",
            format!(
                "must not exceed refresh_ahead - min_remaining ({})",
                fmt_duration(refresh_ahead - min_remaining)
            ),
        );
    }
    let refresh_rate = s.f64_in("refresh_rate", DEFAULT_REFRESH_RATE, 0.001, 100_000.0);
    let config = CacheConfig {
        max_identities: s.u64_in("max_identities", DEFAULT_MAX_IDENTITIES, 1, 100_000_000),
        min_remaining,
        refresh_ahead,
        refresh_jitter,
        idle_timeout: s.duration_in(
            "idle_timeout",
            DEFAULT_IDLE_TIMEOUT,
            Duration::from_secs(1),
            Duration::from_secs(30 * 86_400),
        ),
        refresh_rate,
        refresh_concurrency: usize::try_from(s.u64_in(
            "refresh_concurrency",
            DEFAULT_REFRESH_CONCURRENCY,
            1,
            4096,
        ))
        .ok()?,
        negative_ttl: s.duration_in(
            "negative_ttl",
            DEFAULT_NEGATIVE_TTL,
            Duration::ZERO,
            Duration::from_secs(3600),
        ),
        failure_backoff_max: s.duration_in(
            "failure_backoff_max",
            DEFAULT_FAILURE_BACKOFF_MAX,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        ),
    };
    Some(config)
}

fn build_log(s: &Section<'_>) -> Option<LogConfig> {
    let level = s.str_or("level", "info");
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        s.error("level", format!("{level:?} is not a log filter: {e}"));
    }
    let format = match s.str_or("format", "text").as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            s.error("format", format!("{other:?} is not \"text\" or \"json\""));
            LogFormat::Text
        }
    };
    let unsafe_dependency_logs = s.bool_or("unsafe_dependency_logs", false);
    Some(LogConfig {
        level,
        format,
        unsafe_dependency_logs,
    })
}

fn build_appsync(s: &Section<'_>) -> Option<AppSyncConfig> {
    let max_body_bytes = s.u64_in(
        "max_body_bytes",
        DEFAULT_APPSYNC_MAX_BODY_BYTES,
        1024,
        64 * 1024 * 1024,
    );
    let timeout = s.duration_in(
        "timeout",
        DEFAULT_APPSYNC_TIMEOUT,
        Duration::from_millis(100),
        Duration::from_secs(300),
    );
    let connect_timeout = s.duration_in(
        "connect_timeout",
        DEFAULT_APPSYNC_CONNECT_TIMEOUT,
        Duration::from_millis(50),
        Duration::from_secs(60),
    );
    let token_expiry_margin = s.duration_in(
        "token_expiry_margin",
        DEFAULT_APPSYNC_TOKEN_EXPIRY_MARGIN,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    let table = s.section("apis");
    let mut apis = Vec::new();
    let mut defaults = Vec::new();
    let mut ok = true;
    for name in table.keys() {
        let api = table.section(&name);
        if api.bool_or("default", false) {
            defaults.push(name.clone());
        }
        match build_appsync_api(&api, &name) {
            Some(a) => apis.push(a),
            None => ok = false,
        }
        api.finish();
    }
    table.finish();
    if defaults.len() > 1 {
        s.error(
            "apis",
            format!(
                "only one API may set default = true (set by: {})",
                defaults.join(", ")
            ),
        );
        ok = false;
    }
    if let [only] = apis.as_mut_slice() {
        // A single API is the default: `/appsync/graphql` needs no extra setting.
        only.default = true;
    }
    let config = AppSyncConfig {
        apis,
        max_body_bytes: usize::try_from(max_body_bytes).ok()?,
        timeout,
        connect_timeout,
        token_expiry_margin,
    };
    ok.then_some(config)
}

fn build_appsync_api(s: &Section<'_>, name: &str) -> Option<AppSyncApiConfig> {
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        s.error_here("API names may contain only letters, digits, '_' and '-' (at most 64)");
    }
    let url = s
        .required_str("url")
        .and_then(|u| match check_http_url(&u, "the AppSync URL") {
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                s.error("url", "the GraphQL URL has no query or fragment");
                None
            }
            Ok(url) => Some(url),
            Err(msg) => {
                s.error("url", msg);
                None
            }
        });
    let region = s.required_str("region").and_then(|r| {
        if is_region(&r) {
            Some(r)
        } else {
            s.error(
                "region",
                format!("{r:?} is not an AWS region name like \"us-east-1\""),
            );
            None
        }
    });
    let auth = match s.required_str("auth").as_deref() {
        Some("oidc") => Some(AppSyncAuth::Oidc),
        Some("iam") => Some(AppSyncAuth::Iam),
        Some(other) => {
            s.error(
                "auth",
                format!(
                    "{other:?} is not \"oidc\" (AppSync OPENID_CONNECT: the caller's ID token is \
                     forwarded) or \"iam\" (AWS_IAM: requests are signed with the caller's \
                     Cognito credentials)"
                ),
            );
            None
        }
        None => None,
    };
    let allowed_operations = match s.str_list("allowed_operations") {
        None if !s.has("allowed_operations") => Some(None),
        None => None,
        Some(words) => {
            let mut types = Vec::new();
            let mut valid = true;
            for w in &words {
                match OperationType::from_keyword(w) {
                    Some(t) => types.push(t),
                    None => {
                        valid = false;
                        s.error(
                            "allowed_operations",
                            format!(
                                "{w:?} is not an operation type; list \"query\", \"mutation\" \
                                 and/or \"subscription\" (operation names are chosen by the \
                                 client and prove nothing; restrict fields with the schema's \
                                 auth rules)"
                            ),
                        );
                    }
                }
            }
            if words.is_empty() {
                valid = false;
                s.error(
                    "allowed_operations",
                    "an empty list would refuse everything; remove the setting to allow all",
                );
            }
            types.sort();
            types.dedup();
            valid.then_some(Some(types))
        }
    };
    let default = s.bool_or("default", false);
    Some(AppSyncApiConfig {
        name: name.to_owned(),
        url: url?,
        region: region?,
        auth: auth?,
        allowed_operations: allowed_operations?,
        default,
    })
    .filter(|_| valid_name)
}

// ---- Configured identities and the IMDS endpoint (issue #3) ----

/// Default listen address of the IMDSv2-compatible endpoint (8901/8902: emulators, 8903: gRPC).
pub const DEFAULT_IMDS_LISTEN: &str = "127.0.0.1:8904";
/// The role name IMDS lists when none is configured and no role ARN gives one.
pub const DEFAULT_IMDS_ROLE_NAME: &str = "credbroker";
const DEFAULT_IMDS_HOP_LIMIT: u64 = 1;
const DEFAULT_IMDS_MAX_SESSION_TOKENS: u64 = 4096;
const DEFAULT_IMDS_MIN_REMAINING: Duration = Duration::from_secs(25 * 60);
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default `refresh_fraction` of refresh-token sources (also used by refresh-token sessions).
pub const DEFAULT_REFRESH_FRACTION: f64 = 0.5;

/// One identity configured in the file: `[identities.<name>]`.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The table name; used in logs, metrics-free (names are not labels) and by `imds.identity`.
    pub name: String,
    /// The `[providers.<name>]` that issues its ID tokens.
    pub provider: String,
    /// `CustomRoleArn` for this identity (else `cognito.custom_role_arn`).
    pub role: Option<String>,
    /// Where its ID tokens come from.
    pub source: SourceConfig,
}

/// Where a configured identity's ID tokens come from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A file something else keeps fresh; polled and reloaded on change.
    IdTokenFile {
        /// The file (the raw ID token, surrounding whitespace ignored).
        path: PathBuf,
        /// How often the file is checked for changes.
        poll_interval: Duration,
    },
    /// An OIDC refresh token redeemed at the provider's token endpoint.
    RefreshToken {
        /// The file holding the current refresh token; rotated tokens are written back to it.
        path: PathBuf,
        /// The OAuth client id the refresh token was issued to.
        client_id: String,
        /// The client secret (confidential clients), read from `client_secret_file`.
        client_secret: Option<crate::secret::SecretString>,
        /// How the client authenticates at the token endpoint.
        auth: ClientAuth,
        /// Redeem after this fraction of an ID token's lifetime (plus up to 10 % jitter).
        refresh_fraction: f64,
    },
}

/// Token endpoint client authentication (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret` in the form body (Auth0's default for regular web apps).
    Post,
    /// HTTP Basic with the url-encoded client id and secret.
    Basic,
}

/// The IMDSv2-compatible endpoint: `[imds]`.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// Where it listens (its own listener; SDKs use root paths). Loopback unless allowed.
    pub listen: SocketAddr,
    /// Whether a non-loopback `listen` was explicitly allowed.
    pub allow_non_loopback: bool,
    /// The configured identity whose credentials it serves.
    pub identity: String,
    /// The role name listed under `security-credentials/`.
    pub role_name: String,
    /// Answer token-less (IMDSv1) GETs. Off by default, as on hardened EC2 instances.
    pub allow_imdsv1: bool,
    /// IP TTL / IPv6 hop limit of accepted connections (EC2's `HttpPutResponseHopLimit`).
    pub hop_limit: u32,
    /// Session tokens kept at once; the oldest is dropped beyond it.
    pub max_session_tokens: usize,
    /// Credentials with less than this left are refreshed before serving when possible
    /// (botocore's IMDS provider keeps using credentials with under 15–25 min left).
    pub min_remaining: Duration,
    /// `Host` names (besides loopback IPs, `localhost` and the listen address) it answers to.
    pub allowed_hosts: Vec<String>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn build_identities(
    root: &Section<'_>,
    providers: Option<&[ProviderConfig]>,
) -> Option<Vec<IdentityConfig>> {
    let table = root.section("identities");
    let mut out = Vec::new();
    let mut ok = true;
    for name in table.keys() {
        let s = table.section(&name);
        match build_identity(&s, &name, providers) {
            Some(i) => out.push(i),
            None => ok = false,
        }
        s.finish();
    }
    table.finish();
    ok.then_some(out)
}

fn build_identity(
    s: &Section<'_>,
    name: &str,
    providers: Option<&[ProviderConfig]>,
) -> Option<IdentityConfig> {
    if !valid_name(name) {
        s.error_here("identity names may contain only letters, digits, '_' and '-'");
    }
    let provider = s.required_str("provider").and_then(|p| {
        // When providers failed to build their own errors are already reported.
        if providers.is_some_and(|all| !all.iter().any(|c| c.name == p)) {
            let known: Vec<&str> = providers
                .unwrap_or_default()
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            s.error(
                "provider",
                format!("no [providers.{p}] is configured (configured: {known:?})"),
            );
            return None;
        }
        Some(p)
    });
    let role = s.opt_str("role").and_then(|r| {
        if is_role_arn(&r) {
            Some(r)
        } else {
            s.error(
                "role",
                format!("{r:?} is not an IAM role ARN like arn:aws:iam::123456789012:role/name"),
            );
            None
        }
    });
    let id_file = s.opt_str("id_token_file");
    let refresh_file = s.opt_str("refresh_token_file");
    let poll_interval = s.duration_in(
        "poll_interval",
        DEFAULT_POLL_INTERVAL,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let client_id = s.opt_str("client_id");
    let secret_file = s.opt_str("client_secret_file");
    let auth_text = s.opt_str("token_endpoint_auth");
    let refresh_fraction = s.f64_in("refresh_fraction", DEFAULT_REFRESH_FRACTION, 0.1, 0.8);
    let source = match (id_file, refresh_file) {
        (Some(_), Some(_)) => {
            s.error_here("set either id_token_file or refresh_token_file, not both");
            None
        }
        (None, None) => {
            s.error_here(
                "a source is required: id_token_file (a file kept fresh by something else) or \
                 refresh_token_file with client_id",
            );
            None
        }
        (Some(path), None) => {
            for (key, present) in [
                ("client_id", client_id.is_some()),
                ("client_secret_file", secret_file.is_some()),
                ("token_endpoint_auth", auth_text.is_some()),
                ("refresh_fraction", s.has("refresh_fraction")),
            ] {
                if present {
                    s.error(key, "only applies with refresh_token_file");
                }
            }
            Some(SourceConfig::IdTokenFile {
                path: path.into(),
                poll_interval,
            })
        }
        (None, Some(path)) => {
            if s.has("poll_interval") {
                s.error("poll_interval", "only applies with id_token_file");
            }
            let client_id = client_id.filter(|c| !c.trim().is_empty());
            if client_id.is_none() {
                s.error(
                    "client_id",
                    "required with refresh_token_file: the OAuth client the refresh token was \
                     issued to",
                );
            }
            let client_secret = secret_file.and_then(|f| match std::fs::read_to_string(&f) {
                Ok(text) if !text.trim().is_empty() => {
                    Some(crate::secret::SecretString::from(text.trim()))
                }
                Ok(_) => {
                    s.error("client_secret_file", format!("{f:?} is empty"));
                    None
                }
                Err(e) => {
                    s.error("client_secret_file", format!("cannot read {f:?}: {e}"));
                    None
                }
            });
            let auth = match auth_text.as_deref() {
                None | Some("client_secret_post") => ClientAuth::Post,
                Some("client_secret_basic") => ClientAuth::Basic,
                Some(other) => {
                    s.error(
                        "token_endpoint_auth",
                        format!(
                            "{other:?} is not \"client_secret_post\" or \"client_secret_basic\""
                        ),
                    );
                    ClientAuth::Post
                }
            };
            client_id.map(|client_id| SourceConfig::RefreshToken {
                path: path.into(),
                client_id,
                client_secret,
                auth,
                refresh_fraction,
            })
        }
    };
    Some(IdentityConfig {
        name: name.to_owned(),
        provider: provider?,
        role,
        source: source?,
    })
}

fn build_imds(
    root: &Section<'_>,
    identities: Option<&[IdentityConfig]>,
    cognito: Option<&CognitoConfig>,
) -> Option<Option<ImdsConfig>> {
    let s = root.section("imds");
    if !s.exists() {
        return Some(None);
    }
    let allow_non_loopback = s.bool_or("allow_non_loopback", false);
    let listen = s.socket_addr_or("listen", DEFAULT_IMDS_LISTEN, allow_non_loopback);
    // Names from the table itself, so the check holds even when an identity has errors.
    let known = root.section("identities").keys();
    let identity = s.required_str("identity").and_then(|name| {
        if !known.contains(&name) {
            s.error(
                "identity",
                format!(
                    "no [identities.{name}] is configured (configured: {known:?}); IMDS serves \
                     one configured identity"
                ),
            );
            return None;
        }
        Some(name)
    });
    let role_arn = identity
        .as_deref()
        .and_then(|n| identities.unwrap_or_default().iter().find(|i| i.name == n))
        .and_then(|i| i.role.clone())
        .or_else(|| cognito.and_then(|c| c.custom_role_arn.clone()));
    let role_name = match s.opt_str("role_name") {
        Some(r) => {
            let ok = !r.is_empty()
                && r.len() <= 64
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
            if !ok {
                s.error(
                    "role_name",
                    format!("{r:?} is not an IAM role name (1-64 of A-Z a-z 0-9 +=,.@_-)"),
                );
            }
            r
        }
        None => role_arn
            .as_deref()
            .and_then(|arn| arn.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_IMDS_ROLE_NAME)
            .to_owned(),
    };
    let allow_imdsv1 = s.bool_or("allow_imdsv1", false);
    let hop_limit = s.u64_in("hop_limit", DEFAULT_IMDS_HOP_LIMIT, 1, 64);
    let max_session_tokens = s.u64_in(
        "max_session_tokens",
        DEFAULT_IMDS_MAX_SESSION_TOKENS,
        1,
        1 << 20,
    );
    let min_remaining = s.duration_in(
        "min_remaining",
        DEFAULT_IMDS_MIN_REMAINING,
        Duration::ZERO,
        Duration::from_secs(55 * 60),
    );
    let allowed_hosts = allowed_hosts(&s);
    s.finish();
    Some(Some(ImdsConfig {
        listen: listen?,
        allow_non_loopback,
        identity: identity?,
        role_name,
        allow_imdsv1,
        hop_limit: u32::try_from(hop_limit).ok()?,
        max_session_tokens: usize::try_from(max_session_tokens).ok()?,
        min_remaining,
        allowed_hosts,
    }))
}

/// Default listen address of the admin listener (metrics, health probes).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8909";
const DEFAULT_ADMIN_COGNITO_PROBE_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_ADMIN_PROBE_WAIT: Duration = Duration::from_millis(800);

/// The admin listener: `[admin]`. Serves `/metrics`, `/livez` and `/readyz`, never credentials.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Whether the admin listener runs at all.
    pub enabled: bool,
    /// Where it listens. Any address is accepted without `allow_non_loopback`: it serves no
    /// credentials, and kubelet probes and Prometheus reach a pod on its pod IP, not loopback.
    pub listen: SocketAddr,
    /// Least time between two Cognito reachability probes made on behalf of `/readyz` (a probe
    /// is an unsigned GetId with a placeholder login; it is made only while nothing proves
    /// Cognito answers: no recent answer and no servable credentials cached).
    pub cognito_probe_interval: Duration,
    /// How long `/readyz` waits for a probe it started before answering with what it knows
    /// (keep it under the kubelet probe's `timeoutSeconds`, 1 s by default).
    pub probe_wait: Duration,
}

fn build_admin(
    s: &Section<'_>,
    server: Option<&ServerConfig>,
    imds: Option<&ImdsConfig>,
) -> Option<AdminConfig> {
    let enabled = s.bool_or("enabled", true);
    let listen = s.socket_addr_or("listen", DEFAULT_ADMIN_LISTEN, true);
    let cognito_probe_interval = s.duration_in(
        "cognito_probe_interval",
        DEFAULT_ADMIN_COGNITO_PROBE_INTERVAL,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let probe_wait = s.duration_in(
        "probe_wait",
        DEFAULT_ADMIN_PROBE_WAIT,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let listen = listen?;
    if enabled && listen.port() != 0 {
        let taken = [
            ("server.listen", server.map(|c| c.listen)),
            ("imds.listen", imds.map(|c| c.listen)),
        ];
        for (name, other) in taken {
            if other.is_some_and(|o| o.port() == listen.port() && overlaps(o.ip(), listen.ip())) {
                s.error(
                    "listen",
                    format!(
                        "{listen} collides with {name}; the admin listener needs its own port \
                         (default {DEFAULT_ADMIN_LISTEN})"
                    ),
                );
            }
        }
    }
    Some(AdminConfig {
        enabled,
        listen,
        cognito_probe_interval,
        probe_wait,
    })
}

/// Whether two bind addresses on the same port would collide.
fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// Parses `90s`, `20m`, `1h30m`, `500ms`, `2d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration like \"90s\", \"20m\" or \"1h30m\""
            ));
        }
        // Both counts are of ASCII bytes, so both splits fall on character boundaries.
        let (number, after) = rest.split_at_checked(digits).unwrap_or((rest, ""));
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at_checked(unit_len).unwrap_or((after, ""));
        rest = after;
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(format!("{text:?}: a unit (ms, s, m, h, d) is required")),
            other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h, d)")),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A table of the merged configuration being read, remembering which keys were used so the
/// rest can be reported as unknown.
pub(crate) struct Section<'a> {
    path: String,
    map: Option<&'a Map<String, Value>>,
    used: Mutex<BTreeSet<String>>,
    errors: &'a Mutex<Vec<ConfigError>>,
}

impl<'a> Section<'a> {
    pub(crate) fn root(map: &'a Map<String, Value>, errors: &'a Mutex<Vec<ConfigError>>) -> Self {
        Self {
            path: String::new(),
            map: Some(map),
            used: Mutex::new(BTreeSet::new()),
            errors,
        }
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn mark(&self, key: &str) {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned());
    }

    pub(crate) fn exists(&self) -> bool {
        self.map.is_some()
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.is_some_and(|m| m.contains_key(key))
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.map
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn error(&self, key: &str, message: impl Into<String>) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ConfigError {
                path: self.child_path(key),
                message: message.into(),
            });
    }

    pub(crate) fn error_here(&self, message: impl Into<String>) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ConfigError {
                path: self.path.clone(),
                message: message.into(),
            });
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.mark(key);
        self.map.and_then(|m| m.get(key))
    }

    /// A sub-table (absent tables read as empty; a non-table value is an error).
    pub(crate) fn section(&self, key: &str) -> Section<'a> {
        let map = match self.get(key) {
            Some(Value::Object(m)) => Some(m),
            Some(Value::Null) | None => None,
            Some(other) => {
                self.error(key, format!("must be a table, found {}", kind(other)));
                None
            }
        };
        Section {
            path: self.child_path(key),
            map,
            used: Mutex::new(BTreeSet::new()),
            errors: self.errors,
        }
    }

    /// Reports keys that were never read.
    pub(crate) fn finish(&self) {
        let Some(map) = self.map else { return };
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let known: Vec<&String> = used.iter().collect();
        for key in map.keys() {
            if !used.contains(key) {
                let hint = known
                    .iter()
                    .find(|k| similar(k, key))
                    .map(|k| format!(" (did you mean {k:?}?)"))
                    .unwrap_or_default();
                self.error(key, format!("unknown setting{hint}"));
            }
        }
    }

    pub(crate) fn opt_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Null => None,
            other => {
                self.error(key, format!("must be a string, found {}", kind(other)));
                None
            }
        }
    }

    pub(crate) fn required_str(&self, key: &str) -> Option<String> {
        let present = self.has(key);
        let value = self.opt_str(key);
        if value.is_none() && !present {
            self.error(key, "required");
        }
        value.filter(|v| {
            if v.trim().is_empty() {
                self.error(key, "must not be empty");
                false
            } else {
                true
            }
        })
    }

    pub(crate) fn str_or(&self, key: &str, default: &str) -> String {
        self.opt_str(key).unwrap_or_else(|| default.to_owned())
    }

    /// A list of strings, given as a TOML array or a comma-separated string (environment).
    pub(crate) fn str_list(&self, key: &str) -> Option<Vec<String>> {
        match self.get(key)? {
            Value::String(s) => Some(
                s.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            Value::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        Value::Number(n) => out.push(n.to_string()),
                        other => {
                            self.error(key, format!("must list strings, found {}", kind(other)));
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    key,
                    format!("must be a list of strings, found {}", kind(other)),
                );
                None
            }
        }
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(other) => {
                self.error(key, format!("must be true or false, found {}", kind(other)));
                default
            }
        }
    }

    pub(crate) fn u64_in(&self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let value = match self.get(key) {
            None | Some(Value::Null) => return default,
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().replace('_', "").parse().ok(),
            Some(_) => None,
        };
        match value {
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.error(key, format!("{v} is out of range {min}..={max}"));
                default
            }
            None => {
                self.error(key, "must be a whole number");
                default
            }
        }
    }

    pub(crate) fn f64_in(&self, key: &str, default: f64, min: f64, max: f64) -> f64 {
        let value = match self.get(key) {
            None | Some(Value::Null) => return default,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        match value {
            Some(v) if v >= min && v <= max => v,
            Some(v) => {
                self.error(key, format!("{v} is out of range {min}..={max}"));
                default
            }
            None => {
                self.error(key, "must be a number");
                default
            }
        }
    }

    pub(crate) fn duration_in(
        &self,
        key: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let parsed = match self.get(key) {
            None | Some(Value::Null) => return default,
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Duration::from_secs)
                .ok_or_else(|| "must be a whole number of seconds or a duration".to_owned()),
            Some(Value::String(s)) => parse_duration(s),
            Some(other) => Err(format!(
                "must be a duration like \"90s\" or \"20m\", found {}",
                kind(other)
            )),
        };
        match parsed {
            Ok(d) if d >= min && d <= max => d,
            Ok(d) => {
                self.error(
                    key,
                    format!(
                        "{} is out of range {}..={}",
                        fmt_duration(d),
                        fmt_duration(min),
                        fmt_duration(max)
                    ),
                );
                default
            }
            Err(msg) => {
                self.error(key, msg);
                default
            }
        }
    }

    pub(crate) fn socket_addr_or(
        &self,
        key: &str,
        default: &str,
        allow_non_loopback: bool,
    ) -> Option<SocketAddr> {
        let text = self.opt_str(key).unwrap_or_else(|| default.to_owned());
        let addr: SocketAddr = match text.parse() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    key,
                    format!("{text:?} is not an address like \"127.0.0.1:8900\" or \"[::1]:8900\""),
                );
                return None;
            }
        };
        if !allow_non_loopback && !is_loopback(addr.ip()) {
            self.error(
                key,
                format!(
                    "{addr} is not a loopback address. credbroker hands AWS credentials to anyone \
                     who can reach it, so it binds loopback only; set allow_non_loopback = true in \
                     the same section to bind {addr} anyway"
                ),
            );
            return None;
        }
        Some(addr)
    }
}

/// Whether an address only accepts connections from this host.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// Whether two keys differ by at most two edits (for "did you mean").
fn similar(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 2 {
        return false;
    }
    // Levenshtein distance, one row at a time: `row[j]` is the distance between the prefix of
    // `a` read so far and `b[..j]`.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for ((cb, diag), up) in b.iter().zip(&prev).zip(prev.iter().skip(1)) {
            let left = cur.last().copied().unwrap_or(usize::MAX);
            cur.push((diag + usize::from(ca != cb)).min(up + 1).min(left + 1));
        }
        prev = cur;
    }
    prev.last().is_some_and(|d| *d <= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [providers.auth0]
        issuer = "https://dev-x.us.auth0.com/"
        audiences = ["client-1"]

        [cognito]
        region = "us-east-1"
        identity_pool_id = "us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211"
    "#;

    fn errors_of(sources: &Sources) -> Vec<String> {
        match load(sources) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.server.listen, "127.0.0.1:8900".parse().expect("addr"));
        assert_eq!(c.providers.len(), 1);
        let p = &c.providers[0];
        assert_eq!(p.issuer, "https://dev-x.us.auth0.com/");
        assert_eq!(p.logins_key, "dev-x.us.auth0.com");
        assert_eq!(p.algorithms, vec![Algorithm::Rs256]);
        assert_eq!(c.cache.min_remaining, Duration::from_secs(1200));
        assert_eq!(c.cache.refresh_ahead, Duration::from_secs(1800));
        assert_eq!(c.tokens.leeway, Duration::from_secs(60));
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn logins_key_derivation_handles_auth0_and_cognito_user_pools() {
        assert_eq!(
            derive_logins_key("https://dev-x.us.auth0.com/"),
            "dev-x.us.auth0.com"
        );
        assert_eq!(
            derive_logins_key("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC"),
            "cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC"
        );
        assert_eq!(
            derive_logins_key("http://127.0.0.1:9000/"),
            "127.0.0.1:9000"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [server]
            listen = "0.0.0.0:8900"
            lisen = "typo"

            [providers.auth0]
            issuer = "http://dev-x.us.auth0.com/"
            audiences = []
            algorithms = ["HS256", "none"]

            [cognito]
            region = "us-east-1"
            identity_pool_id = "eu-west-1:0f1e2d3c-4b5a-4697-8877-665544332211"

            [cache]
            min_remaining = "40m"
            refresh_ahead = "30m"
            idle_timeout = "soon"
        "#;
        let errors = errors_of(&Sources::from_toml(text));
        let joined = errors.join("\n");
        for expected in [
            "server.listen: 0.0.0.0:8900 is not a loopback address",
            "server.lisen: unknown setting (did you mean \"listen\"?)",
            "providers.auth0.issuer: the issuer \"http://dev-x.us.auth0.com/\" uses plain http",
            "providers.auth0.audiences: must list at least one client ID",
            "providers.auth0.algorithms: HS256 is a shared-secret algorithm",
            "switch the application's JWT signature algorithm to RS256",
            "providers.auth0.algorithms: \"none\" means unsigned tokens",
            "cognito.identity_pool_id: pool \"eu-west-1:",
            "cache.refresh_ahead: must be larger than min_remaining (40m)",
            "cache.idle_timeout: \"soon\" is not a duration",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
        assert_eq!(errors.len(), 9, "{joined}");
    }

    #[test]
    fn missing_sections_are_explained() {
        let errors = errors_of(&Sources::from_toml(""));
        let joined = errors.join("\n");
        assert!(
            joined.contains("providers: at least one provider is required"),
            "{joined}"
        );
        assert!(
            joined.contains("cognito: the [cognito] section is required"),
            "{joined}"
        );
    }

    #[test]
    fn environment_and_flags_override_the_file_in_order() {
        let mut sources = Sources::from_toml(MINIMAL);
        sources.env = vec![
            ("CREDBROKER_SERVER__LISTEN".into(), "127.0.0.1:9100".into()),
            (
                "CREDBROKER_PROVIDERS__AUTH0__AUDIENCES".into(),
                "a, b".into(),
            ),
            ("CREDBROKER_CACHE__MIN_REMAINING".into(), "25m".into()),
            ("CREDBROKER_CONFIG".into(), "/etc/ignored.toml".into()),
            ("UNRELATED".into(), "x".into()),
        ];
        let c = load(&sources).expect("valid");
        assert_eq!(c.server.listen.port(), 9100);
        assert_eq!(c.providers[0].audiences, vec!["a", "b"]);
        assert_eq!(c.cache.min_remaining, Duration::from_secs(1500));

        sources.overrides = vec![("server.listen".into(), "[::1]:9200".into())];
        let c = load(&sources).expect("valid");
        assert_eq!(c.server.listen, "[::1]:9200".parse().expect("addr"));
    }

    #[test]
    fn kubernetes_service_links_are_not_settings_but_single_underscore_typos_are_reported() {
        let mut sources = Sources::from_toml(MINIMAL);
        sources.env = vec![
            ("CREDBROKER_SERVICE_HOST".into(), "10.0.0.7".into()),
            ("CREDBROKER_SERVICE_PORT".into(), "8900".into()),
            ("CREDBROKER_PORT".into(), "tcp://10.0.0.7:8900".into()),
            ("CREDBROKER_PORT_8900_TCP_ADDR".into(), "10.0.0.7".into()),
        ];
        let c = load(&sources).expect("service links are ignored");
        assert_eq!(c.server.listen.port(), 8900);

        sources.env = vec![
            ("CREDBROKER_SERVER_LISTEN".into(), "127.0.0.1:9100".into()),
            ("CREDBROKER_SERVR__LISTEN".into(), "127.0.0.1:9100".into()),
            ("CREDBROKER_Tokens_Leeway_é".into(), "1s".into()),
        ];
        let errors = errors_of(&sources).join("\n");
        assert!(
            errors.contains("CREDBROKER_SERVER_LISTEN: settings take a double underscore")
                && errors.contains("did you mean CREDBROKER_SERVER__LISTEN?"),
            "{errors}"
        );
        assert!(
            errors.contains("CREDBROKER_SERVR__LISTEN: environment setting for unknown section"),
            "{errors}"
        );
        // The suggestion keeps the key as written (mixed case, non-ASCII included).
        assert!(
            errors.contains("did you mean CREDBROKER_TOKENS__Leeway_é?"),
            "{errors}"
        );
    }

    #[test]
    fn an_unknown_environment_setting_is_reported() {
        let mut sources = Sources::from_toml(MINIMAL);
        sources.env = vec![("CREDBROKER_CACHE__MIN_REMAINIG".into(), "25m".into())];
        let errors = errors_of(&sources).join("\n");
        assert!(
            errors.contains("cache.min_remainig: unknown setting"),
            "{errors}"
        );
    }

    #[test]
    fn non_loopback_listen_needs_explicit_permission() {
        let text =
            format!("{MINIMAL}\n[server]\nlisten = \"0.0.0.0:8900\"\nallow_non_loopback = true\n");
        let c = Config::from_toml(&text).expect("explicitly allowed");
        assert_eq!(c.server.listen.port(), 8900);
        let ipv6 = format!("{MINIMAL}\n[server]\nlisten = \"[::1]:8900\"\n");
        assert!(Config::from_toml(&ipv6).is_ok());
    }

    #[test]
    fn http_issuer_is_allowed_only_on_loopback() {
        for (issuer, ok) in [
            ("http://127.0.0.1:9000/", true),
            ("http://localhost:9000/", true),
            ("http://[::1]:9000/", true),
            ("http://10.0.0.1/", false),
            ("ftp://x/", false),
            ("not a url", false),
        ] {
            let text = MINIMAL.replace("https://dev-x.us.auth0.com/", issuer);
            assert_eq!(Config::from_toml(&text).is_ok(), ok, "{issuer}");
        }
    }

    #[test]
    fn discovery_url_is_https_or_loopback_http_and_defaults_to_none() {
        let c = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.providers[0].discovery_url, None);
        let pool = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC";
        for (url, ok) in [
            (
                "http://127.0.0.1:9000/.well-known/openid-configuration",
                true,
            ),
            (
                "https://idp-mirror.internal/pool/.well-known/openid-configuration",
                true,
            ),
            (
                "http://idp-mirror.internal/.well-known/openid-configuration",
                false,
            ),
            (
                "https://x.example/.well-known/openid-configuration#frag",
                false,
            ),
            ("file:///etc/openid-configuration", false),
        ] {
            let text = MINIMAL.replace(
                "issuer = \"https://dev-x.us.auth0.com/\"",
                &format!("issuer = \"{pool}\"\ndiscovery_url = \"{url}\""),
            );
            match Config::from_toml(&text) {
                Ok(c) => {
                    assert!(ok, "{url} was accepted");
                    let p = &c.providers[0];
                    assert_eq!(p.discovery_url.as_ref().map(Url::as_str), Some(url));
                    assert_eq!(p.issuer, pool, "the issuer is unchanged");
                    assert_eq!(
                        p.logins_key,
                        "cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC"
                    );
                }
                Err(e) => {
                    assert!(!ok, "{url}: {e}");
                    assert!(
                        e.to_string().contains("providers.auth0.discovery_url"),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("").is_err());
        // Non-ASCII after the digits or inside the unit is refused, never sliced through.
        assert!(
            parse_duration("5é")
                .expect_err("no unit")
                .contains("a unit")
        );
        assert!(
            parse_duration("5mé")
                .expect_err("not a unit")
                .contains("not a duration")
        );
        assert!(
            parse_duration("é5s")
                .expect_err("not a number")
                .contains("not a duration")
        );
        assert_eq!(fmt_duration(Duration::from_secs(1200)), "20m");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn appsync_is_empty_by_default() {
        let c = Config::from_toml(MINIMAL).expect("valid");
        assert!(c.appsync.apis.is_empty());
        assert_eq!(c.appsync.max_body_bytes, 1024 * 1024);
        assert_eq!(c.appsync.timeout, Duration::from_secs(30));
        assert_eq!(c.appsync.token_expiry_margin, Duration::from_secs(30));
    }

    #[test]
    fn appsync_apis_are_validated_and_typed() {
        let text = format!(
            r#"{MINIMAL}
            [appsync]
            max_body_bytes = 4096
            token_expiry_margin = "45s"

            [appsync.apis.todos]
            url = "https://abc.appsync-api.eu-west-1.amazonaws.com/graphql"
            region = "eu-west-1"
            auth = "oidc"
            default = true

            [appsync.apis.admin]
            url = "http://127.0.0.1:9999/graphql"
            region = "us-east-1"
            auth = "iam"
            allowed_operations = ["query"]
            "#
        );
        let c = Config::from_toml(&text).expect("valid");
        let a = &c.appsync;
        assert_eq!(a.max_body_bytes, 4096);
        assert_eq!(a.token_expiry_margin, Duration::from_secs(45));
        assert_eq!(a.apis.len(), 2);
        let admin = a.apis.iter().find(|x| x.name == "admin").expect("admin");
        assert_eq!(admin.auth, AppSyncAuth::Iam);
        assert_eq!(admin.allowed_operations, Some(vec![OperationType::Query]));
        assert!(!admin.default);
        let todos = a.apis.iter().find(|x| x.name == "todos").expect("todos");
        assert_eq!(todos.auth, AppSyncAuth::Oidc);
        assert!(todos.default && todos.allowed_operations.is_none());
    }

    #[test]
    fn a_single_appsync_api_is_the_default() {
        let text = format!(
            "{MINIMAL}\n[appsync.apis.only]\nurl = \"https://x.example/graphql\"\n\
             region = \"us-east-1\"\nauth = \"iam\"\n"
        );
        let c = Config::from_toml(&text).expect("valid");
        assert!(c.appsync.apis[0].default);
    }

    #[test]
    fn every_appsync_problem_is_reported_at_once() {
        let text = format!(
            r#"{MINIMAL}
            [appsync]
            timeout = "forever"
            max_body_byte = 10

            [appsync.apis.a]
            url = "http://10.0.0.1/graphql"
            region = "mars"
            auth = "api_key"
            allowed_operations = ["ListTodos"]
            default = true

            [appsync.apis.b]
            url = "https://x.example/graphql?x=1"
            region = "us-east-1"
            auth = "iam"
            default = true

            [appsync.apis."bad name"]
            region = "us-east-1"
            auth = "oidc"
            "#
        );
        let errors = errors_of(&Sources::from_toml(text));
        let joined = errors.join("\n");
        for expected in [
            "appsync.timeout: \"forever\" is not a duration",
            "appsync.max_body_byte: unknown setting (did you mean \"max_body_bytes\"?)",
            "appsync.apis.a.url: the AppSync URL \"http://10.0.0.1/graphql\" uses plain http",
            "appsync.apis.a.region: \"mars\" is not an AWS region",
            "appsync.apis.a.auth: \"api_key\" is not \"oidc\"",
            "appsync.apis.a.allowed_operations: \"ListTodos\" is not an operation type",
            "appsync.apis.b.url: the GraphQL URL has no query or fragment",
            "appsync.apis.bad name: API names may contain only",
            "appsync.apis.bad name.url: required",
            "appsync.apis: only one API may set default = true (set by: a, b)",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
        assert_eq!(errors.len(), 10, "{joined}");
    }

    #[test]
    fn identities_and_imds_get_documented_defaults() {
        let text = format!(
            "{MINIMAL}\n[identities.alice]\nprovider = \"auth0\"\nid_token_file = \"/run/a\"\n\n\
             [identities.bob]\nprovider = \"auth0\"\nrole = \"arn:aws:iam::123456789012:role/team/bob-role\"\n\
             refresh_token_file = \"/var/lib/b\"\nclient_id = \"app\"\n\n\
             [imds]\nidentity = \"bob\"\n"
        );
        let c = Config::from_toml(&text).expect("valid");
        assert_eq!(c.identities.len(), 2);
        let alice = c
            .identities
            .iter()
            .find(|i| i.name == "alice")
            .expect("alice");
        assert!(matches!(
            &alice.source,
            SourceConfig::IdTokenFile { poll_interval, .. } if *poll_interval == Duration::from_secs(5)
        ));
        let bob = c.identities.iter().find(|i| i.name == "bob").expect("bob");
        assert!(matches!(
            &bob.source,
            SourceConfig::RefreshToken { client_secret: None, auth: ClientAuth::Post, refresh_fraction, .. }
                if (*refresh_fraction - 0.5).abs() < 1e-9
        ));
        let imds = c.imds.expect("imds");
        assert_eq!(imds.listen, "127.0.0.1:8904".parse().expect("addr"));
        assert_eq!(imds.role_name, "bob-role", "derived from the role ARN");
        assert_eq!(imds.hop_limit, 1);
        assert!(!imds.allow_imdsv1);
        assert_eq!(imds.min_remaining, Duration::from_secs(25 * 60));
        assert!(Config::from_toml(MINIMAL).expect("valid").imds.is_none());
    }

    #[test]
    fn identity_and_imds_problems_are_reported_at_once() {
        let text = format!(
            "{MINIMAL}\n[identities.a]\nprovider = \"okta\"\nid_token_file = \"/x\"\nclient_id = \"c\"\n\n\
             [identities.b]\nprovider = \"auth0\"\nrefresh_token_file = \"/y\"\npoll_interval = \"1s\"\n\
             client_secret_file = \"/nonexistent/credbroker/secret\"\ntoken_endpoint_auth = \"private_key_jwt\"\n\n\
             [identities.c]\nprovider = \"auth0\"\nid_token_file = \"/x\"\nrefresh_token_file = \"/y\"\n\n\
             [identities.d]\nprovider = \"auth0\"\n\n\
             [imds]\nidentity = \"zed\"\nlisten = \"0.0.0.0:8904\"\nhop_limit = 0\nrole_name = \"bad/name\"\n"
        );
        let joined = errors_of(&Sources::from_toml(text)).join("\n");
        for expected in [
            "identities.a.provider: no [providers.okta] is configured",
            "identities.a.client_id: only applies with refresh_token_file",
            "identities.b.client_id: required with refresh_token_file",
            "identities.b.poll_interval: only applies with id_token_file",
            "identities.b.client_secret_file: cannot read",
            "identities.b.token_endpoint_auth: \"private_key_jwt\" is not",
            "identities.c: set either id_token_file or refresh_token_file, not both",
            "identities.d: a source is required",
            "imds.identity: no [identities.zed] is configured",
            "imds.listen: 0.0.0.0:8904 is not a loopback address",
            "imds.hop_limit: 0 is out of range 1..=64",
            "imds.role_name: \"bad/name\" is not an IAM role name",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
    }

    #[test]
    fn allowed_hosts_are_names_or_ip_literals() {
        let text = format!(
            "[server]\nallowed_hosts = [\"creds.internal\", \"Metadata.Example.\", \"10.0.0.5\", \"::1\"]\n\
             {MINIMAL}\n[identities.a]\nprovider = \"auth0\"\nid_token_file = \"/x\"\n\
             [imds]\nidentity = \"a\"\nallowed_hosts = \"imds.internal, 169.254.169.254\"\n"
        );
        let c = Config::from_toml(&text).expect("valid");
        assert_eq!(
            c.server.allowed_hosts,
            ["creds.internal", "Metadata.Example.", "10.0.0.5", "::1"]
        );
        let imds = c.imds.expect("imds");
        assert_eq!(imds.allowed_hosts, ["imds.internal", "169.254.169.254"]);
        assert!(
            Config::from_toml(MINIMAL)
                .expect("valid")
                .server
                .allowed_hosts
                .is_empty()
        );

        let text = format!(
            "[server]\nallowed_hosts = [\"http://x\", \"x:80\", \"*.example\", \"\", \"-bad.example\", \"a b\"]\n{MINIMAL}"
        );
        let joined = errors_of(&Sources::from_toml(text)).join("\n");
        for bad in ["http://x", "x:80", "*.example", "-bad.example", "a b"] {
            assert!(
                joined.contains(&format!("server.allowed_hosts: {bad:?} is not a host name")),
                "{bad}: {joined}"
            );
        }
    }

    #[test]
    fn client_secret_is_read_from_its_file_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("credbroker-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret-value\n").expect("write");
        let text = format!(
            "{MINIMAL}\n[identities.a]\nprovider = \"auth0\"\nrefresh_token_file = \"/y\"\n\
             client_id = \"c\"\nclient_secret_file = \"{}\"\ntoken_endpoint_auth = \"client_secret_basic\"\n",
            secret.display()
        );
        let c = Config::from_toml(&text).expect("valid");
        let SourceConfig::RefreshToken {
            client_secret,
            auth,
            ..
        } = &c.identities[0].source
        else {
            panic!("refresh source");
        };
        assert_eq!(
            client_secret.as_ref().expect("secret").expose_str(),
            "s3cret-value"
        );
        assert_eq!(*auth, ClientAuth::Basic);
        assert!(!format!("{c:?}").contains("s3cret"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn validation_of_cognito_identifiers() {
        assert!(is_region("us-east-1") && is_region("us-gov-west-1"));
        assert!(!is_region("useast1") && !is_region("us-east-x"));
        assert!(is_uuid("0f1e2d3c-4b5a-4697-8877-665544332211"));
        assert!(!is_uuid("0f1e2d3c4b5a46978877665544332211"));
        assert!(is_role_arn("arn:aws:iam::123456789012:role/app-users"));
        assert!(!is_role_arn("arn:aws:iam::123:role/x"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:role/") && !is_role_arn("arn:aws:iam"));
        assert!(is_role_arn("arn:aws-cn:iam::123456789012:role/path/é"));
        assert!(!is_region("") && !is_region("us-east-") && !is_region("ü-east-1"));
    }

    #[test]
    fn similar_allows_two_edits_of_any_characters() {
        assert!(similar("listen", "listen") && similar("listen", "lisen"));
        assert!(similar("listen", "listne") && similar("région", "region"));
        assert!(!similar("listen", "audience") && !similar("ab", "abcde"));
        assert!(similar("", "ab") && !similar("", "abc"));
    }

    #[test]
    fn admin_defaults_to_loopback_8909_and_may_bind_any_address() {
        let c = Config::from_toml(MINIMAL).expect("valid");
        assert!(c.admin.enabled);
        assert_eq!(c.admin.listen, "127.0.0.1:8909".parse().expect("addr"));
        assert_eq!(c.admin.cognito_probe_interval, Duration::from_secs(10));
        assert_eq!(c.admin.probe_wait, Duration::from_millis(800));
        // Kubelet probes and Prometheus use the pod IP; the admin listener serves no credentials.
        let c = Config::from_toml(&format!(
            "{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9100\"\ncognito_probe_interval = \"30s\"\n\
             probe_wait = \"0s\"\n"
        ))
        .expect("valid");
        assert_eq!(c.admin.listen, "0.0.0.0:9100".parse().expect("addr"));
        assert_eq!(c.admin.cognito_probe_interval, Duration::from_secs(30));
        assert_eq!(c.admin.probe_wait, Duration::ZERO);
    }

    #[test]
    fn admin_problems_are_reported_at_once() {
        let errors = errors_of(&Sources::from_toml(format!(
            "{MINIMAL}\n[server]\nlisten = \"127.0.0.1:8909\"\n\
             [admin]\nlisten = \"0.0.0.0:8909\"\ncognito_probe_interval = \"1ms\"\n\
             probe_wait = \"soon\"\nenable = false\n"
        )));
        let expected = [
            "admin.listen: 0.0.0.0:8909 collides with server.listen",
            "admin.cognito_probe_interval: 1ms is out of range",
            "admin.probe_wait:",
            "admin.enable: unknown setting (did you mean \"enabled\"?)",
        ];
        for e in expected {
            assert!(
                errors.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        // Port 0 never collides, and a disabled listener is not checked.
        let ok = format!(
            "{MINIMAL}\n[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        );
        assert!(Config::from_toml(&ok).is_ok());
        let off =
            format!("{MINIMAL}\n[server]\nlisten = \"127.0.0.1:8909\"\n[admin]\nenabled = false\n");
        assert!(!Config::from_toml(&off).expect("valid").admin.enabled);
    }
}
