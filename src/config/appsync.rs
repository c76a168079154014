//! `[appsync]` and `[appsync.apis.<name>]`: the AppSync APIs GraphQL is forwarded to.

use std::time::Duration;

use url::Url;

use super::cognito::required_region;
use super::{Section, check_http_url};

pub(super) const DEFAULT_APPSYNC_MAX_BODY_BYTES: u64 = 1024 * 1024;

pub(super) const DEFAULT_APPSYNC_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) const DEFAULT_APPSYNC_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) const DEFAULT_APPSYNC_TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(30);

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
    /// is refused with 401 instead of being forwarded with a dying token. Real time: the
    /// connection of a raw ID token is closed (4001) this long before the token expires.
    pub token_expiry_margin: Duration,
    /// `[appsync.realtime]`: the WebSocket subscription relay.
    pub realtime: RealtimeConfig,
}

/// `[appsync.realtime]`: limits and timing of `GET /appsync/<name>/realtime`.
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// Open real-time connections, all callers together (then 503).
    pub max_connections: usize,
    /// Open real-time connections per user (issuer and subject; then 429).
    pub max_connections_per_identity: usize,
    /// Live subscriptions on one connection (then `MaxSubscriptionsReachedError`).
    pub max_subscriptions_per_connection: usize,
    /// Largest WebSocket message, either direction (then close 1009).
    pub max_message_bytes: usize,
    /// How often credbroker sends the client a `ka`.
    pub keepalive_interval: Duration,
    /// What `connection_ack` advertises as `connectionTimeoutMs`.
    pub connection_timeout: Duration,
    /// Longest wait for AppSync's `connection_ack` (and for its `start_ack`s during a renewal).
    pub ack_timeout: Duration,
    /// How far ahead of expiry a renewable connection re-authenticates upstream (at most half
    /// of what was left of the authentication's lifetime when its connection was made).
    pub renew_ahead: Duration,
    /// Longest a message to the client may take to send (then the client is dropped as too
    /// slow).
    pub send_timeout: Duration,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_identity: 16,
            max_subscriptions_per_connection: 100,
            max_message_bytes: 240 * 1024,
            keepalive_interval: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(300),
            ack_timeout: Duration::from_secs(10),
            renew_ahead: Duration::from_secs(300),
            send_timeout: Duration::from_secs(10),
        }
    }
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
    /// The real-time endpoint; `None` derives it from `url` as AppSync clients do.
    pub realtime_url: Option<Url>,
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

pub(super) fn build_appsync(s: &Section<'_>) -> Option<AppSyncConfig> {
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
    let realtime = {
        let section = s.section("realtime");
        let built = build_realtime(&section);
        section.finish();
        built
    };
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
        realtime,
    };
    ok.then_some(config)
}

fn usize_in(s: &Section<'_>, key: &str, default: usize, min: u64, max: u64) -> usize {
    let n = s.u64_in(key, default as u64, min, max);
    usize::try_from(n).unwrap_or(default)
}

/// `[appsync.realtime]`.
fn build_realtime(s: &Section<'_>) -> RealtimeConfig {
    let d = RealtimeConfig::default();
    let secs = Duration::from_secs;
    RealtimeConfig {
        max_connections: usize_in(s, "max_connections", d.max_connections, 1, 1_000_000),
        max_connections_per_identity: usize_in(
            s,
            "max_connections_per_identity",
            d.max_connections_per_identity,
            1,
            100_000,
        ),
        max_subscriptions_per_connection: usize_in(
            s,
            "max_subscriptions_per_connection",
            d.max_subscriptions_per_connection,
            1,
            10_000,
        ),
        max_message_bytes: usize_in(
            s,
            "max_message_bytes",
            d.max_message_bytes,
            1024,
            16 * 1024 * 1024,
        ),
        keepalive_interval: s.duration_in(
            "keepalive_interval",
            d.keepalive_interval,
            secs(1),
            secs(600),
        ),
        connection_timeout: s.duration_in(
            "connection_timeout",
            d.connection_timeout,
            secs(10),
            secs(3600),
        ),
        ack_timeout: s.duration_in("ack_timeout", d.ack_timeout, secs(1), secs(120)),
        renew_ahead: s.duration_in("renew_ahead", d.renew_ahead, secs(10), secs(3600)),
        send_timeout: s.duration_in("send_timeout", d.send_timeout, secs(1), secs(300)),
    }
}

pub(super) fn build_appsync_api(s: &Section<'_>, name: &str) -> Option<AppSyncApiConfig> {
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        s.error_here("API names may contain only letters, digits, '_' and '-' (at most 64)");
    }
    let url = graphql_url(s);
    let region = required_region(s);
    let auth = auth(s);
    let allowed_operations = allowed_operations(s);
    let default = s.bool_or("default", false);
    let realtime_url = realtime_url(s);
    Some(AppSyncApiConfig {
        name: name.to_owned(),
        url: url?,
        region: region?,
        auth: auth?,
        allowed_operations: allowed_operations?,
        default,
        realtime_url: realtime_url?,
    })
    .filter(|_| valid_name)
}

/// `realtime_url`: optional; wss, or ws on loopback; no fragment.
fn realtime_url(s: &Section<'_>) -> Option<Option<Url>> {
    let Some(text) = s.opt_str("realtime_url") else {
        return (!s.has("realtime_url")).then_some(None);
    };
    let parsed = Url::parse(&text);
    let problem = match &parsed {
        Err(e) => Some(format!("{text:?} is not a URL: {e}")),
        Ok(u) if u.fragment().is_some() => Some("the real-time URL has no fragment".to_owned()),
        Ok(u) if u.scheme() == "wss" => None,
        Ok(u) if u.scheme() == "ws" && super::read::host_is_loopback(u) => None,
        Ok(u) if u.scheme() == "ws" => Some(format!(
            "{text:?} uses plain ws on a non-loopback host; use wss (ws is only allowed for \
             127.0.0.1, [::1] and localhost)"
        )),
        Ok(u) => Some(format!("{text:?} has scheme {:?}; use wss", u.scheme())),
    };
    match (problem, parsed) {
        (None, Ok(url)) => Some(Some(url)),
        (Some(problem), _) => {
            s.error("realtime_url", problem);
            None
        }
        (None, Err(_)) => None,
    }
}

/// `url`: required, the GraphQL endpoint (https, or http on loopback; no query or fragment).
fn graphql_url(s: &Section<'_>) -> Option<Url> {
    s.required_str("url")
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
        })
}

/// `auth`: required, `oidc` or `iam`.
fn auth(s: &Section<'_>) -> Option<AppSyncAuth> {
    match s.required_str("auth").as_deref() {
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
    }
}

/// `allowed_operations`: `Some(None)` when absent (everything is forwarded), else the
/// operation types, sorted and deduplicated; `None` when invalid (the errors reported).
fn allowed_operations(s: &Section<'_>) -> Option<Option<Vec<OperationType>>> {
    let words = match s.str_list("allowed_operations") {
        None if !s.has("allowed_operations") => return Some(None),
        None => return None,
        Some(words) => words,
    };
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

// ---- Configured identities and the IMDS endpoint (issue #3) ----

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::time::Duration;

    const BASE: &str = r#"
        [providers.auth0]
        issuer = "https://dev-x.us.auth0.com/"
        audiences = ["client-1"]

        [cognito]
        region = "us-east-1"
        identity_pool_id = "us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211"
    "#;

    #[test]
    fn realtime_settings_have_appsyncs_defaults_and_are_validated() {
        let c = Config::from_toml(BASE).expect("valid");
        let r = &c.appsync.realtime;
        assert_eq!(
            (r.max_connections, r.max_connections_per_identity),
            (4096, 16)
        );
        assert_eq!(
            (r.max_subscriptions_per_connection, r.max_message_bytes),
            (100, 240 * 1024)
        );
        assert_eq!(r.keepalive_interval, Duration::from_secs(30));
        assert_eq!(r.connection_timeout, Duration::from_secs(300));
        let text = format!(
            r#"{BASE}
            [appsync.realtime]
            max_connections = 10
            renew_ahead = "2m"
            [appsync.apis.a]
            url = "https://api.example.com/graphql"
            region = "us-east-1"
            auth = "oidc"
            realtime_url = "wss://rt.example.com/graphql"
            "#
        );
        let c = Config::from_toml(&text).expect("valid");
        assert_eq!(c.appsync.realtime.max_connections, 10);
        assert_eq!(c.appsync.realtime.renew_ahead, Duration::from_secs(120));
        assert_eq!(
            c.appsync.apis[0]
                .realtime_url
                .as_ref()
                .map(url::Url::as_str),
            Some("wss://rt.example.com/graphql")
        );
        for (value, problem) in [
            (
                "ws://rt.example.com/graphql",
                "plain ws on a non-loopback host",
            ),
            ("https://rt.example.com/graphql", "use wss"),
            ("not a url", "is not a URL"),
        ] {
            let text = format!(
                "{BASE}\n[appsync.apis.a]\nurl = \"https://api.example.com/graphql\"\n\
                 region = \"us-east-1\"\nauth = \"oidc\"\nrealtime_url = \"{value}\"\n"
            );
            let e = Config::from_toml(&text).expect_err("refused").to_string();
            assert!(
                e.contains("appsync.apis.a.realtime_url") && e.contains(problem),
                "{e}"
            );
        }
        let e = Config::from_toml(&format!(
            "{BASE}\n[appsync.realtime]\nmax_subscription = 5\nsend_timeout = \"0s\"\n"
        ))
        .expect_err("refused")
        .to_string();
        assert!(
            e.contains("appsync.realtime.max_subscription: unknown setting"),
            "{e}"
        );
        assert!(e.contains("appsync.realtime.send_timeout"), "{e}");
    }
}
