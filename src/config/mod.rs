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
//! - defaults live beside their section (one file per section: `config/server.rs`, …), as the
//!   `DEFAULT_*` constants, and are mirrored (and commented) in
//!   `config/credbroker.example.toml`.
//!
//! The merged tree is walked with a small reader ([`Section`], `config/read.rs`) instead of
//! serde's derive, because derive stops at the first error and cannot report the rest. This
//! file holds [`Config`], [`load`], the merge of the sources and the order sections are built
//! (and so the order problems are reported) in.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::{Map, Value};

mod admin;
mod appsync;
mod cache;
mod cognito;
mod grpc;
mod identities;
mod imds;
mod log;
mod providers;
mod read;
mod server;
mod sessions;
mod shared;
mod tokens;

pub use admin::{AdminConfig, DEFAULT_ADMIN_LISTEN};
pub use appsync::{AppSyncApiConfig, AppSyncAuth, AppSyncConfig, OperationType, RealtimeConfig};
pub use cache::CacheConfig;
pub use cognito::CognitoConfig;
pub(crate) use cognito::is_role_arn;
pub use grpc::GrpcConfig;
pub use identities::{ClientAuth, DEFAULT_REFRESH_FRACTION, IdentityConfig, SourceConfig};
pub use imds::{DEFAULT_IMDS_LISTEN, DEFAULT_IMDS_ROLE_NAME, ImdsConfig};
pub use log::{LogConfig, LogFormat};
pub use providers::{ProviderConfig, derive_logins_key};
pub(crate) use read::{Section, check_http_url};
pub use read::{fmt_duration, is_loopback, parse_duration};
pub use server::{DEFAULT_LISTEN, ServerConfig};
pub use sessions::SessionsConfig;
pub use shared::{
    BudgetConfig, KeyBytes, NAMING_KEY_ID, SharedConfig, Topology, parse_keys, redacted_url,
};
pub use tokens::{Algorithm, TokenConfig, algorithm_refusal};

use admin::build_admin;
use appsync::build_appsync;
use cache::build_cache;
use cognito::build_cognito;
use identities::build_identities;
use imds::build_imds;
use log::build_log;
use providers::build_providers;
use server::build_server;
use tokens::build_tokens;

/// Prefix of environment variables that override settings.
pub const ENV_PREFIX: &str = "CREDBROKER";

/// Environment variable naming the config file (read by the CLI, not treated as a setting).
pub const ENV_CONFIG_FILE: &str = "CREDBROKER_CONFIG";

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
    /// Fleet mode (`[shared]`): the shared tier in Redis/Valkey, when configured.
    pub shared: Option<SharedConfig>,
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
    "shared",
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
    let shared = finished(root.section("shared"), shared::build_shared);
    if let (Some(Some(sh)), Some(sv)) = (&shared, &server)
        && sh.lock_wait >= sv.request_timeout
    {
        root.error(
            "shared.lock_wait",
            format!(
                "must be shorter than server.request_timeout ({}), or callers time out waiting",
                fmt_duration(sv.request_timeout)
            ),
        );
    }
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
        shared: shared?,
    })
}

#[cfg(test)]
mod tests {
    use super::appsync::*;
    use super::cognito::*;
    use super::identities::*;
    use super::providers::*;
    use super::read::*;
    use super::tokens::*;
    use super::*;
    use std::time::Duration;
    use url::Url;

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
