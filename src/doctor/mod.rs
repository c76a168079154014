//! `credbroker doctor`: checks a configuration end to end and says, line by line, what holds
//! and what to fix.
//!
//! Owns: the order of the checks, the [`Check`] lines and the [`Report`] (text for people,
//! JSON for scripts, an exit code).
//!
//! Promises:
//! - **what is checked**, in order: the configuration is valid; per provider, its discovery
//!   document answers, names exactly the configured `issuer`, its JWKS answers with `kid`s and
//!   RS256 is offered, and credbroker's own loader ([`crate::oidc::Validator`]) loads the keys;
//!   Cognito answers and the identity pool exists in `cognito.region` (the unsigned probe of
//!   [`crate::readiness::probe_cognito`]); with a token file, the token passes credbroker's own
//!   validation and one real `GetId` + `GetCredentialsForIdentity` succeeds through the broker's
//!   own exchange ([`crate::broker::Broker::prepare`]); each AppSync API answers and, with a
//!   token, a `{ __typename }` query succeeds through credbroker's forwarder in its auth mode;
//! - every failing line carries a fix naming the setting or console field to change; Cognito's
//!   refusals get the same fix the daemon gives ([`crate::broker::hint`]); a check that cannot
//!   run because an earlier one failed is `skip`, never a second failure for the same cause;
//! - nothing secret is printed: never a token, refresh token, secret key or session token
//!   (access key ids and identity ids are, as in the audit log);
//! - exit 0 only when no line failed; 1 when one did; 64 when the configuration is invalid
//!   (nothing else can be checked then);
//! - a token Cognito would refuse is never sent to it, as in the daemon; no refresh token is
//!   redeemed and no listener is opened.

mod appsync;
mod exchange;
mod provider;
mod token;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::clock;
use crate::cognito::{CognitoApi, SdkCognito, UpstreamError};
use crate::config::{self, Config, ConfigError, Sources};
use crate::metrics::Metrics;
use crate::oidc::Validator;
use crate::readiness::{self, ProbeAnswer};

/// Exit code when a check failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the configuration is invalid (as `check-config`).
pub const EXIT_CONFIG: u8 = 64;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It holds.
    Ok,
    /// It holds, but something is likely to bite later.
    Warn,
    /// It does not hold: the `fix` says what to change.
    Fail,
    /// Not checked (an earlier check failed, or it needs `--token-file`).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok  ",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// A stable id: `config`, `provider.<name>.discovery`, `cognito.pool`, `token.validation`,
    /// `appsync.<name>.query`, … (scripts match on it).
    pub check: String,
    /// Whether it holds.
    pub status: Status,
    /// What holds, or what is wrong (never a secret).
    pub detail: String,
    /// What to change (failures and warnings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The `Code` the daemon answers for this problem, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl Check {
    fn new(check: impl Into<String>, status: Status, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status,
            detail: detail.into(),
            fix: None,
            code: None,
        }
    }

    /// A check that holds.
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Ok, detail)
    }

    /// A failed check and its fix.
    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            fix: Some(fix.into()),
            ..Self::new(check, Status::Fail, detail)
        }
    }

    /// A warning and what to do about it.
    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            fix: Some(fix.into()),
            ..Self::new(check, Status::Warn, detail)
        }
    }

    /// A check that was not made, and why.
    pub fn skip(check: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(check, Status::Skip, why)
    }

    /// Adds the daemon's `Code` for this problem.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    fn holds(&self) -> bool {
        self.status == Status::Ok
    }
}

/// Everything the doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether every check held (no `fail`).
    pub ok: bool,
    /// The configuration file, when one was given.
    pub config_file: Option<String>,
    /// Whether the configuration was valid (otherwise nothing else was checked).
    pub config_valid: bool,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Report {
    fn new(config_file: Option<&Path>, config_valid: bool, checks: Vec<Check>) -> Self {
        Self {
            ok: checks.iter().all(|c| c.status != Status::Fail),
            config_file: config_file.map(|p| p.display().to_string()),
            config_valid,
            checks,
        }
    }

    /// The process exit code: 0, [`EXIT_FAILED`] or [`EXIT_CONFIG`].
    pub fn exit_code(&self) -> u8 {
        match (self.config_valid, self.ok) {
            (false, _) => EXIT_CONFIG,
            (true, false) => EXIT_FAILED,
            (true, true) => 0,
        }
    }

    /// The first check with this id.
    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.check == id)
    }

    /// `--format json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The text report: one line per check, its fix under it, and a summary.
    pub fn to_text(&self) -> String {
        let mut out = match &self.config_file {
            Some(f) => format!("credbroker doctor: {f}\n"),
            None => "credbroker doctor: configuration from the environment\n".to_owned(),
        };
        for c in &self.checks {
            out.push_str(&format!("{} {}: {}\n", c.status.label(), c.check, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("     fix: {fix}\n"));
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "{} ok, {} failed, {} warnings, {} skipped",
            count(Status::Ok),
            count(Status::Fail),
            count(Status::Warn),
            count(Status::Skip)
        ));
        out.push_str(if self.ok {
            ": everything checked holds\n"
        } else {
            ": fix the FAIL lines (top first), then run credbroker doctor again\n"
        });
        out
    }
}

/// Runs every check on the configuration from `sources` (with `config_file` as its file, for
/// the report) and, when given, the ID token in `token_file`.
pub async fn run(
    sources: &Sources,
    config_file: Option<&Path>,
    token_file: Option<&Path>,
) -> Report {
    let config = match config::load(sources) {
        Ok(c) => c,
        Err(errors) => {
            let checks = errors.0.iter().map(config_failure).collect();
            return Report::new(config_file, false, checks);
        }
    };
    let mut checks = vec![Check::ok("config", config_summary(&config))];
    checks.extend(diagnose(&config, token_file).await);
    Report::new(config_file, true, checks)
}

/// The checks after a valid configuration.
async fn diagnose(config: &Config, token_file: Option<&Path>) -> Vec<Check> {
    let mut checks = Vec::new();
    let clock = clock::system();
    let names: Vec<String> = config.providers.iter().map(|p| p.name.clone()).collect();
    let metrics = Metrics::new(&names);
    let http = crate::http::client(config.tokens.oidc_timeout);

    // Providers: the documents as the doctor reads them, then credbroker's own loader.
    let validator = providers(config, &http, &clock, &metrics, &mut checks).await;

    // Cognito: reachable, the pool exists, and each provider's Logins key is not refused.
    let api: Arc<dyn CognitoApi> = Arc::new(SdkCognito::new(&config.cognito));
    let (pool_ok, untrusted) = cognito_probe(config, api.as_ref(), &mut checks).await;

    // The token: locally, then one real exchange through the broker's own path.
    let token = token::check(config, &validator, &clock, token_file, &mut checks).await;
    let exchange = token
        .as_ref()
        .map(|_| exchange::Exchange::new(config, &validator, api.clone(), &metrics, &clock));
    let mut credentials = false;
    match (&token, &exchange) {
        (Some(token), _) if untrusted.contains(&token.provider.config.name) => skip_exchange(
            &mut checks,
            &format!(
                "skipped: fix provider.{}.pool_trust first",
                token.provider.config.name
            ),
        ),
        (Some(token), Some(exchange)) if pool_ok => {
            credentials = exchange.check(config, token, &mut checks).await;
        }
        (Some(_), _) => skip_exchange(&mut checks, "skipped: fix cognito.pool first"),
        (None, _) => skip_exchange(
            &mut checks,
            match token_file {
                Some(_) => {
                    "skipped: the token is not valid (credbroker never sends Cognito a token it \
                     refuses)"
                }
                None => "skipped: needs --token-file (an ID token of a user)",
            },
        ),
    }

    // AppSync: reachable; with a token, `{ __typename }` in the API's auth mode.
    if !config.appsync.apis.is_empty() {
        let caller = match (&token, &exchange) {
            (Some(token), Some(exchange)) => Some(appsync::Caller {
                token,
                broker: &exchange.broker,
                credentials,
            }),
            _ => None,
        };
        checks.extend(appsync::check(config, &http, caller.as_ref()).await);
    }
    checks
}

/// Per provider, its documents (`provider.<name>.discovery`, `.issuer`, `.jwks`,
/// `.algorithms`), then `provider.<name>.keys`: whether credbroker's own loader loads them.
/// The validator, with whatever keys it loaded.
async fn providers(
    config: &Config,
    http: &crate::http::HttpsClient,
    clock: &clock::SharedClock,
    metrics: &Metrics,
    checks: &mut Vec<Check>,
) -> Arc<Validator> {
    let mut documents_ok = Vec::new();
    for p in &config.providers {
        let found = provider::check(http, config.tokens.oidc_timeout, p).await;
        documents_ok.push(found.iter().all(Check::holds));
        checks.extend(found);
    }
    let validator = Arc::new(Validator::new(
        &config.providers,
        &config.tokens,
        http.clone(),
        clock.clone(),
        metrics.clone(),
    ));
    validator.load_all().await;
    for (p, documents_ok) in validator.providers().iter().zip(&documents_ok) {
        let id = format!("provider.{}.keys", p.config.name);
        checks.push(match (p.is_ready(), documents_ok) {
            (true, _) => Check::ok(
                id,
                "credbroker's own loader loaded the discovery document and the keys",
            ),
            (false, true) => Check::fail(
                id,
                format!(
                    "credbroker could not load the keys: {}",
                    p.last_error().unwrap_or_default()
                ),
                "the documents above looked right to the doctor but credbroker's loader refused \
                 them; the message says why",
            ),
            (false, false) => Check::skip(id, "skipped: fix the lines above first"),
        });
    }
    validator
}

fn skip_exchange(checks: &mut Vec<Check>, why: &str) {
    checks.push(Check::skip("cognito.get_id", why));
    checks.push(Check::skip("cognito.get_credentials", why));
}

fn config_summary(config: &Config) -> String {
    let names = |v: Vec<&str>| v.join(", ");
    let apis = &config.appsync.apis;
    format!(
        "valid: {} provider(s) ({}), identity pool {} in {}{}, {} AppSync API(s){}",
        config.providers.len(),
        names(config.providers.iter().map(|p| p.name.as_str()).collect()),
        config.cognito.identity_pool_id,
        config.cognito.region,
        match &config.cognito.endpoint_url {
            Some(url) => format!(" (endpoint {url})"),
            None => String::new(),
        },
        apis.len(),
        if apis.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                names(apis.iter().map(|a| a.name.as_str()).collect())
            )
        }
    )
}

/// One configuration problem as a failed `config` line.
fn config_failure(e: &ConfigError) -> Check {
    let where_ = if e.path.is_empty() {
        String::new()
    } else {
        format!("{}: ", e.path)
    };
    let fix = if e.path == "cognito.identity_pool_id" && e.message.contains("is in region") {
        "an identity pool lives in one region and its id starts with that region: set \
         cognito.region to the region of the pool (the id's prefix; the Cognito console shows the \
         pool under that region), or copy the id of the pool that is in cognito.region"
            .to_owned()
    } else if e.path.is_empty() {
        "fix the configuration file (credbroker check-config --file FILE lists every problem)"
            .to_owned()
    } else {
        format!(
            "change {} as the message says (credbroker check-config --file FILE lists every \
             problem)",
            e.path
        )
    };
    Check::fail("config", format!("{where_}{}", e.message), fix)
}

/// `cognito.pool`, and `provider.<name>.pool_trust` when the probe shows a provider is not
/// one of the pool's. Returns whether the pool answered, and the providers it refused.
async fn cognito_probe(
    config: &Config,
    api: &dyn CognitoApi,
    checks: &mut Vec<Check>,
) -> (bool, Vec<String>) {
    let mut untrusted = Vec::new();
    let pool = &config.cognito.identity_pool_id;
    let region = &config.cognito.region;
    let endpoint = config
        .cognito
        .endpoint_url
        .as_ref()
        .map(|u| u.to_string())
        .unwrap_or_else(|| format!("https://cognito-identity.{region}.amazonaws.com"));
    let mut pool_line = None;
    for p in &config.providers {
        let answer = readiness::probe_cognito(api, pool, &p.logins_key).await;
        match answer {
            ProbeAnswer::Answered(refusal) => {
                let not_supported = refusal
                    .as_ref()
                    .is_some_and(|e| e.message.contains("not from a supported provider"));
                if not_supported && let Some(e) = &refusal {
                    untrusted.push(p.name.clone());
                    checks.push(pool_trust_refused(p, pool, e));
                }
                pool_line.get_or_insert_with(|| {
                    Check::ok(
                        "cognito.pool",
                        format!(
                            "Cognito at {endpoint} answered the unsigned probe ({}): it is \
                             reachable and identity pool {pool} exists in {region}",
                            refusal
                                .as_ref()
                                .map_or("GetId answered", |e| e.kind.label())
                        ),
                    )
                });
            }
            ProbeAnswer::PoolNotFound(e) => {
                pool_line = Some(pool_not_found(&endpoint, pool, region, &e));
                break;
            }
            ProbeAnswer::Failing(e) => {
                pool_line = Some(cognito_unreachable(&endpoint, &e.to_string()));
                break;
            }
            ProbeAnswer::TimedOut(limit) => {
                pool_line = Some(cognito_unreachable(
                    &endpoint,
                    &format!("no answer within {}s", limit.as_secs()),
                ));
                break;
            }
        }
    }
    let line = pool_line.unwrap_or_else(|| Check::skip("cognito.pool", "no provider configured"));
    let ok = line.holds();
    // The pool line goes before any provider line it explains.
    let at = checks
        .iter()
        .position(|c| c.check.ends_with(".pool_trust"))
        .unwrap_or(checks.len());
    checks.insert(at, line);
    (ok, untrusted)
}

/// `provider.<name>.pool_trust`: the pool refused the provider's Logins key as not one of its
/// providers; the daemon's fix for that refusal.
fn pool_trust_refused(p: &config::ProviderConfig, pool: &str, e: &UpstreamError) -> Check {
    let fetch = exchange::fetch_error(e);
    Check::fail(
        format!("provider.{}.pool_trust", p.name),
        format!(
            "Cognito says Logins key {:?} is not a provider of identity pool {pool}: {}",
            p.logins_key, e.message
        ),
        crate::broker::hint(&fetch, Some(&p.name), Some(&p.logins_key)).unwrap_or_default(),
    )
    .with_code("LoginRejected")
}

/// `cognito.pool` when Cognito answers that the pool does not exist in `region`.
fn pool_not_found(endpoint: &str, pool: &str, region: &str, e: &UpstreamError) -> Check {
    Check::fail(
        "cognito.pool",
        format!(
            "Cognito at {endpoint} answers, but identity pool {pool} does not exist in \
             {region}: {}",
            e.message
        ),
        format!(
            "copy the Identity pool ID from the Cognito console (Identity pools → your pool → \
             Identity pool ID) into cognito.identity_pool_id, and set cognito.region to the \
             region the console shows it in (the id starts with it); {pool} is not a pool of \
             this account in {region}"
        ),
    )
    .with_code("ResourceNotFound")
}

fn cognito_unreachable(endpoint: &str, why: &str) -> Check {
    Check::fail(
        "cognito.pool",
        format!("no usable answer from Cognito at {endpoint}: {why}"),
        "check that this host reaches the endpoint (DNS, proxy, firewall, VPC endpoint) and, if \
         set, cognito.endpoint_url; cognito.region picks the regional endpoint otherwise",
    )
    .with_code("UpstreamUnavailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_and_the_summary_follow_the_failed_lines() {
        let holds = Report::new(
            None,
            true,
            vec![Check::ok("a", "fine"), Check::skip("b", "skipped: later")],
        );
        assert_eq!((holds.ok, holds.exit_code()), (true, 0));
        assert!(holds.to_text().ends_with("everything checked holds\n"));

        let warned = Report::new(None, true, vec![Check::warn("a", "newline", "drop it")]);
        assert_eq!(warned.exit_code(), 0, "a warning is not a failure");

        let failed = Report::new(
            Some(Path::new("c.toml")),
            true,
            vec![
                Check::ok("a", "fine"),
                Check::fail("b", "wrong", "change it").with_code("Code"),
            ],
        );
        assert_eq!((failed.ok, failed.exit_code()), (false, EXIT_FAILED));
        let text = failed.to_text();
        assert!(
            text.starts_with(
                "credbroker doctor: c.toml\nok   a: fine\nFAIL b: wrong\n     fix: change it\n"
            ),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&failed.to_json()).expect("json");
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["code"], "Code");
        assert!(json["checks"][0].get("fix").is_none());

        let invalid = Report::new(None, false, vec![Check::fail("config", "x", "y")]);
        assert_eq!(invalid.exit_code(), EXIT_CONFIG);
    }

    #[test]
    fn every_configuration_problem_is_its_own_line() {
        let text = r#"
[providers.a]
issuer = "https://tenant.auth0.com/"
audiences = ["client"]
[cognito]
region = "eu-west-1"
identity_pool_id = "us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211"
[cache]
min_remaining = "forever"
"#;
        let report = block_on(run(&Sources::from_toml(text), None, None));
        assert_eq!(report.exit_code(), EXIT_CONFIG);
        assert!(report.checks.len() >= 2, "{report:?}");
        assert!(report.checks.iter().all(|c| c.check == "config"));
        let region = report
            .checks
            .iter()
            .find(|c| c.detail.starts_with("cognito.identity_pool_id: "))
            .expect("the region line");
        assert!(
            region
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("set cognito.region"))
        );
        assert!(
            report
                .checks
                .iter()
                .any(|c| c.detail.starts_with("cache.min_remaining: "))
        );
    }

    /// Runs a future that completes without I/O (configuration errors stop before any).
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }
}
