//! `[shared]`: fleet mode, the shared tier in Redis/Valkey (identity ids, encrypted credential
//! sets, the fleet's Cognito budget). Absent: every replica exchanges on its own.
//!
//! Promises: the keys file is read once, here, and its contents only ever live in
//! [`Secret`]s; a URL's password never reaches `Debug` output; every problem of the keys file
//! is reported with the other configuration errors.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use url::Url;

use super::Section;
use crate::secret::Secret;

const DEFAULT_KEY_PREFIX: &str = "credbroker:";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(3);
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_IDENTITY_ID_TTL: Duration = Duration::from_secs(30 * 86_400);
const DEFAULT_GET_ID_RATE: f64 = 20.0;
const DEFAULT_CREDENTIALS_RATE: f64 = 150.0;
const DEFAULT_BURST_SECONDS: f64 = 1.0;
const DEFAULT_BACKGROUND_HEADROOM: f64 = 0.25;
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(2);

/// The id of the keys file line that names Redis keys (never encrypts).
pub const NAMING_KEY_ID: &str = "naming";

/// A 32-byte key from the keys file.
pub type KeyBytes = Secret<Vec<u8>>;

/// How the Redis deployment is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a single-endpoint service) at `url`.
    Standalone,
    /// A Redis Cluster; `nodes` are seed URLs.
    Cluster,
    /// Sentinels (`nodes`) that name the current master of `master`; `url` gives the master's
    /// scheme, user, password and database (its host is not used).
    Sentinel {
        /// The monitored master's name.
        master: String,
    },
}

/// The shared tier.
#[derive(Clone)]
pub struct SharedConfig {
    /// `redis://`, `rediss://` (TLS through rustls), `valkey://`, `valkeys://`, `unix://` or
    /// `redis+unix://`. May carry a password: kept as a secret. Empty in cluster mode.
    pub url: Secret<String>,
    /// Standalone, Cluster or Sentinel.
    pub topology: Topology,
    /// Cluster seeds or sentinels (URLs, may carry passwords).
    pub nodes: Vec<Secret<String>>,
    /// PEM certificates that `rediss://` servers must chain to instead of the system roots
    /// (standalone and cluster mode).
    pub tls_ca: Option<Vec<u8>>,
    /// Prefix of every Redis key and channel.
    pub key_prefix: String,
    /// Share identity ids (GetId results).
    pub share_identity_ids: bool,
    /// Share encrypted credential sets.
    pub share_credentials: bool,
    /// The key that names Redis keys (the `naming:` line).
    pub naming_key: KeyBytes,
    /// Encryption keys, the first encrypts, all decrypt (`<id>:<base64>` lines in file order).
    pub encryption_keys: Vec<(String, KeyBytes)>,
    /// Each connection attempt.
    pub connect_timeout: Duration,
    /// Each operation; beyond it the operation counts as failed and the replica goes on alone.
    pub op_timeout: Duration,
    /// How long a replica waits for another one's exchange before doing its own.
    pub lock_wait: Duration,
    /// After a failure, Redis is skipped this long before one probe (doubling to 60 s).
    pub retry_interval: Duration,
    /// How long an identity id stays in Redis after its last use.
    pub identity_id_ttl: Duration,
    /// The fleet's Cognito budget.
    pub budget: BudgetConfig,
}

impl fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedConfig")
            .field("url", &redacted_url(self.url.expose_str()))
            .field("topology", &self.topology)
            .field(
                "nodes",
                &self
                    .nodes
                    .iter()
                    .map(|n| redacted_url(n.expose_str()))
                    .collect::<Vec<_>>(),
            )
            .field("tls_ca", &self.tls_ca.as_ref().map(|_| "<PEM>"))
            .field("key_prefix", &self.key_prefix)
            .field("share_identity_ids", &self.share_identity_ids)
            .field("share_credentials", &self.share_credentials)
            .field(
                "encryption_keys",
                &self
                    .encryption_keys
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .field("lock_wait", &self.lock_wait)
            .field("retry_interval", &self.retry_interval)
            .field("identity_id_ttl", &self.identity_id_ttl)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// The URL with any password replaced, for display.
pub fn redacted_url(url: &str) -> String {
    if url.is_empty() {
        return String::new();
    }
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable>".to_owned(),
    }
}

/// `[shared.budget]`: Cognito calls per second for the whole fleet, evaluated in Redis.
#[derive(Debug, Clone, Copy)]
pub struct BudgetConfig {
    /// GetId calls per second (AWS default quota: 25 per account and region).
    pub get_id_rate: f64,
    /// GetCredentialsForIdentity calls per second (AWS default quota: 200).
    pub credentials_rate: f64,
    /// Burst, in seconds of the rate.
    pub burst_seconds: f64,
    /// Share of the burst that background renewals may not use (kept for callers).
    pub background_headroom: f64,
    /// Longest an on-demand call waits for a slot; beyond it the call goes ahead anyway.
    pub max_wait: Duration,
    /// Replicas expected: with Redis unreachable each replica keeps to `rate / this`.
    pub expected_replicas: u32,
}

pub(super) fn build_shared(s: &Section<'_>) -> Option<Option<SharedConfig>> {
    if !s.exists() {
        return Some(None);
    }
    let topology = read_topology(s);
    let tls_ca = read_tls_ca(s, topology.as_ref().map(|(t, _, _)| t));
    let key_prefix = s.str_or("key_prefix", DEFAULT_KEY_PREFIX);
    let prefix_ok = !key_prefix.is_empty()
        && key_prefix.len() <= 64
        && key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._-".contains(&b));
    if !prefix_ok {
        s.error(
            "key_prefix",
            "must be 1 to 64 characters of A-Z a-z 0-9 : . _ -",
        );
    }
    let (share_identity_ids, share_credentials) = read_share(s);
    let keys = s
        .required_str("encryption_keys_file")
        .and_then(|path| read_keys_file(s, &path, share_credentials));
    let ms = Duration::from_millis;
    let connect_timeout = s.duration_in(
        "connect_timeout",
        DEFAULT_CONNECT_TIMEOUT,
        ms(50),
        Duration::from_secs(10),
    );
    let op_timeout = s.duration_in(
        "op_timeout",
        DEFAULT_OP_TIMEOUT,
        ms(10),
        Duration::from_secs(5),
    );
    let lock_wait = s.duration_in(
        "lock_wait",
        DEFAULT_LOCK_WAIT,
        ms(100),
        Duration::from_secs(30),
    );
    let retry_interval = s.duration_in(
        "retry_interval",
        DEFAULT_RETRY_INTERVAL,
        ms(100),
        Duration::from_secs(60),
    );
    let identity_id_ttl = s.duration_in(
        "identity_id_ttl",
        DEFAULT_IDENTITY_ID_TTL,
        Duration::from_secs(3600),
        Duration::from_secs(365 * 86_400),
    );
    let budget = build_budget(&s.section("budget"));
    let (naming_key, encryption_keys) = keys?;
    let (topology, url, nodes) = topology?;
    Some(Some(SharedConfig {
        url: Secret::new(url),
        topology,
        nodes,
        tls_ca,
        key_prefix,
        share_identity_ids,
        share_credentials,
        naming_key,
        encryption_keys,
        connect_timeout,
        op_timeout,
        lock_wait,
        retry_interval,
        identity_id_ttl,
        budget: budget?,
    }))
}

/// `tls_ca_file`: PEM certificates, read once.
fn read_tls_ca(s: &Section<'_>, topology: Option<&Topology>) -> Option<Vec<u8>> {
    let path = s.opt_str("tls_ca_file")?;
    if matches!(topology, Some(Topology::Sentinel { .. })) {
        s.error(
            "tls_ca_file",
            "not supported in sentinel mode yet (the master's certificate must chain to the \
             system roots)",
        );
        return None;
    }
    match std::fs::read(&path) {
        Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => Some(pem),
        Ok(_) => {
            s.error("tls_ca_file", format!("{path:?} holds no PEM certificate"));
            None
        }
        Err(e) => {
            s.error("tls_ca_file", format!("cannot read {path:?}: {e}"));
            None
        }
    }
}

/// `mode`, `url`, `nodes` and `sentinel_master`, read together and checked together.
fn read_topology(s: &Section<'_>) -> Option<(Topology, String, Vec<Secret<String>>)> {
    let mode = s.str_or("mode", "standalone");
    let nodes = s.str_list("nodes").unwrap_or_default();
    let master = s.opt_str("sentinel_master").filter(|m| !m.is_empty());
    let url = s.opt_str("url");
    for n in &nodes {
        check_url(s, "nodes", n);
    }
    if let Some(u) = &url {
        check_url(s, "url", u);
    }
    let topology = match (mode.as_str(), master) {
        ("standalone", None) => Topology::Standalone,
        ("cluster", None) => Topology::Cluster,
        ("sentinel", Some(master)) => Topology::Sentinel { master },
        ("sentinel", None) => {
            s.error(
                "sentinel_master",
                "required in sentinel mode (the monitored master's name)",
            );
            return None;
        }
        ("standalone" | "cluster", Some(_)) => {
            s.error("sentinel_master", "only in sentinel mode");
            return None;
        }
        (other, _) => {
            s.error(
                "mode",
                format!("{other:?} is not one of standalone, cluster, sentinel"),
            );
            return None;
        }
    };
    match (&topology, nodes.is_empty(), &url) {
        (Topology::Cluster, _, Some(_)) => {
            s.error("url", "not in cluster mode: list the seed nodes in `nodes`");
            None
        }
        (Topology::Standalone, false, _) => {
            s.error(
                "nodes",
                "only in cluster or sentinel mode (standalone uses `url`)",
            );
            None
        }
        (Topology::Cluster | Topology::Sentinel { .. }, true, _) => {
            s.error("nodes", "required in cluster and sentinel mode");
            None
        }
        (Topology::Standalone | Topology::Sentinel { .. }, _, None) => {
            s.error("url", "required");
            None
        }
        (_, _, url) => Some((
            topology,
            url.clone().unwrap_or_default(),
            nodes.into_iter().map(Secret::new).collect(),
        )),
    }
}

fn check_url(s: &Section<'_>, key: &str, u: &str) {
    const SCHEMES: &[&str] = &[
        "redis",
        "rediss",
        "valkey",
        "valkeys",
        "unix",
        "redis+unix",
        "valkey+unix",
    ];
    match Url::parse(u) {
        Ok(parsed) if SCHEMES.contains(&parsed.scheme()) => {
            // What the client will parse at start-up (no I/O); its message can echo the URL.
            if redis::Client::open(u).is_err() {
                s.error(key, "not a Redis URL the client accepts");
            }
        }
        Ok(parsed) => s.error(
            key,
            format!(
                "scheme {:?} is not one of {}",
                parsed.scheme(),
                SCHEMES.join(", ")
            ),
        ),
        Err(e) => s.error(key, format!("not a URL: {e}")),
    }
}

fn read_share(s: &Section<'_>) -> (bool, bool) {
    let Some(share) = s.str_list("share") else {
        return (true, true);
    };
    let mut ids = false;
    let mut creds = false;
    for item in &share {
        match item.as_str() {
            "identity_ids" => ids = true,
            "credentials" => creds = true,
            other => s.error(
                "share",
                format!("unknown item {other:?} (items: identity_ids, credentials)"),
            ),
        }
    }
    if share.is_empty() {
        s.error(
            "share",
            "must name identity_ids, credentials or both (remove [shared] to share nothing)",
        );
    }
    (ids, creds)
}

/// Reads `<id>:<base64 of 32 bytes>` lines (`#` comments and blank lines aside): the
/// `naming` line and, when credentials are shared, at least one encryption key.
fn read_keys_file(
    s: &Section<'_>,
    path: &str,
    need_encryption: bool,
) -> Option<(KeyBytes, Vec<(String, KeyBytes)>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => Secret::new(t),
        Err(e) => {
            s.error("encryption_keys_file", format!("cannot read {path:?}: {e}"));
            return None;
        }
    };
    match parse_keys(text.expose_str()) {
        Ok((naming, keys)) if need_encryption && keys.is_empty() => {
            drop(naming);
            s.error(
                "encryption_keys_file",
                format!(
                    "{path:?} has no encryption key (credentials are shared: add a line from \
                     `credbroker gen-key`)"
                ),
            );
            None
        }
        Ok(parsed) => Some(parsed),
        Err(problem) => {
            s.error("encryption_keys_file", format!("{path:?}: {problem}"));
            None
        }
    }
}

/// Parses a keys file. Errors name the line, never its contents.
pub fn parse_keys(text: &str) -> Result<(KeyBytes, Vec<(String, KeyBytes)>), String> {
    let mut naming = None;
    let mut keys: Vec<(String, KeyBytes)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = n + 1;
        let Some((id, b64)) = line.split_once(':') else {
            return Err(format!("line {n}: expected <key id>:<base64 key>"));
        };
        let id_ok = !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if !id_ok {
            return Err(format!(
                "line {n}: a key id is 1 to 32 characters of A-Z a-z 0-9 _ -"
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| format!("line {n}: the key is not base64"))?;
        if bytes.len() != 32 {
            return Err(format!(
                "line {n}: a key is 32 bytes, this one is {}",
                bytes.len()
            ));
        }
        let key = Secret::new(bytes);
        if id == NAMING_KEY_ID {
            if naming.replace(key).is_some() {
                return Err(format!("line {n}: a second {NAMING_KEY_ID:?} line"));
            }
        } else if keys.iter().any(|(k, _)| k == id) {
            return Err(format!("line {n}: key id {id:?} appears twice"));
        } else {
            keys.push((id.to_owned(), key));
        }
    }
    let naming = naming.ok_or_else(|| {
        format!(
            "no {NAMING_KEY_ID:?} line (it names Redis keys; `credbroker gen-key --naming` prints one)"
        )
    })?;
    Ok((naming, keys))
}

fn build_budget(s: &Section<'_>) -> Option<BudgetConfig> {
    let rate = |key: &str, default: f64| s.f64_in(key, default, 0.1, 10_000.0);
    let expected = s.u64_in("expected_replicas", 1, 1, 10_000);
    let budget = BudgetConfig {
        get_id_rate: rate("get_id_rate", DEFAULT_GET_ID_RATE),
        credentials_rate: rate("credentials_rate", DEFAULT_CREDENTIALS_RATE),
        burst_seconds: s.f64_in("burst_seconds", DEFAULT_BURST_SECONDS, 0.0, 60.0),
        background_headroom: s.f64_in("background_headroom", DEFAULT_BACKGROUND_HEADROOM, 0.0, 0.9),
        max_wait: s.duration_in(
            "max_wait",
            DEFAULT_MAX_WAIT,
            Duration::ZERO,
            Duration::from_secs(30),
        ),
        expected_replicas: u32::try_from(expected).ok()?,
    };
    s.finish();
    Some(budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigErrors};

    const MINIMAL: &str = r#"
        [providers.auth0]
        issuer = "https://dev-x.us.auth0.com/"
        audiences = ["client-1"]

        [cognito]
        region = "us-east-1"
        identity_pool_id = "us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211"
    "#;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn errors(text: &str) -> String {
        let Err(ConfigErrors(errors)) = Config::from_toml(text) else {
            panic!("expected errors")
        };
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn keys_files_need_a_naming_line_and_well_formed_keys() {
        let (naming, keys) = parse_keys(&format!(
            "# comment\nnaming:{KEY_A}\n\nk1:{KEY_A}\nk0:{KEY_A}\n"
        ))
        .expect("valid");
        assert_eq!(naming.expose().len(), 32);
        let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["k1", "k0"], "file order: the first line encrypts");
        for (text, problem) in [
            (format!("k1:{KEY_A}\n"), "no \"naming\" line"),
            (
                format!("naming:{KEY_A}\nk1:AAAA\n"),
                "line 2: a key is 32 bytes",
            ),
            (format!("naming:{KEY_A}\nk1 {KEY_A}\n"), "line 2: expected"),
            (
                format!("naming:{KEY_A}\nk/1:{KEY_A}\n"),
                "line 2: a key id is",
            ),
            (
                format!("naming:{KEY_A}\nk1:{KEY_A}\nk1:{KEY_A}\n"),
                "appears twice",
            ),
            (format!("naming:{KEY_A}\nk1:not base64!\n"), "not base64"),
        ] {
            let err = parse_keys(&text).map(|_| ()).expect_err(problem);
            assert!(err.contains(problem), "{err:?} lacks {problem:?}");
            assert!(!err.contains(KEY_A), "a key leaked into {err:?}");
        }
    }

    #[test]
    fn the_section_is_validated_once_and_its_password_never_printed() {
        let dir = std::env::temp_dir().join(format!("cb-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let keys = dir.join("keys");
        std::fs::write(&keys, format!("naming:{KEY_A}\nk1:{KEY_A}\n")).expect("write");
        let ok = format!(
            "{MINIMAL}\n[shared]\nurl = \"redis://:hunter2@127.0.0.1:6379/0\"\n\
             encryption_keys_file = {keys:?}\n[shared.budget]\nget_id_rate = 5.0\n"
        );
        let c = Config::from_toml(&ok).expect("valid");
        let shared = c.shared.as_ref().expect("configured");
        assert!(shared.share_identity_ids && shared.share_credentials);
        assert_eq!(shared.budget.get_id_rate, 5.0);
        assert_eq!(shared.lock_wait, Duration::from_secs(3));
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("REDACTED"), "{printed}");

        let only_ids = dir.join("only-naming");
        std::fs::write(&only_ids, format!("naming:{KEY_A}\n")).expect("write");
        let all = errors(&format!(
            "{MINIMAL}\n[shared]\nurl = \"http://x\"\nkey_prefix = \"a{{b}}\"\n\
             share = [\"credentials\", \"tokens\"]\nencryption_keys_file = {only_ids:?}\n\
             op_timeout = \"1ms\"\n[shared.budget]\nget_id_rate = 0.0\nrat = 1\n"
        ));
        for expected in [
            "shared.url: scheme \"http\" is not one of",
            "shared.key_prefix: must be 1 to 64 characters",
            "shared.share: unknown item \"tokens\"",
            "has no encryption key",
            "shared.op_timeout: 1ms is out of range",
            "shared.budget.get_id_rate",
            "shared.budget.rat: unknown setting",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        // Topologies: each mode's keys, and only those.
        for (settings, expected) in [
            (
                "mode = \"cluster\"\nurl = \"redis://a/\"\nnodes = [\"redis://b/\"]",
                "shared.url: not in cluster mode",
            ),
            (
                "mode = \"cluster\"",
                "shared.nodes: required in cluster and sentinel mode",
            ),
            (
                "mode = \"sentinel\"\nurl = \"redis://a/\"\nnodes = [\"redis://b/\"]",
                "shared.sentinel_master: required in sentinel mode",
            ),
            (
                "url = \"redis://a/\"\nnodes = [\"redis://b/\"]",
                "shared.nodes: only in cluster or sentinel mode",
            ),
            (
                "url = \"redis://a/\"\nsentinel_master = \"m\"",
                "shared.sentinel_master: only in sentinel mode",
            ),
            (
                "mode = \"ring\"\nurl = \"redis://a/\"",
                "shared.mode: \"ring\" is not one of",
            ),
            (
                "mode = \"cluster\"\nnodes = [\"http://b/\"]",
                "shared.nodes: scheme \"http\"",
            ),
        ] {
            let all = errors(&format!(
                "{MINIMAL}\n[shared]\n{settings}\nencryption_keys_file = {keys:?}\n"
            ));
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
            assert!(!all.contains("unknown setting"), "{all}");
        }
        let cluster = Config::from_toml(&format!(
            "{MINIMAL}\n[shared]\nmode = \"cluster\"\nnodes = [\"redis://:pw1@a:1/\", \"redis://b:2/\"]\n\
             encryption_keys_file = {keys:?}\n"
        ))
        .expect("valid");
        let shared = cluster.shared.as_ref().expect("configured");
        assert_eq!(shared.topology, Topology::Cluster);
        assert_eq!(shared.nodes.len(), 2);
        assert!(
            !format!("{cluster:?}").contains("pw1"),
            "node passwords are redacted"
        );
        // Identity ids alone need only the naming line.
        let ids = format!(
            "{MINIMAL}\n[shared]\nurl = \"unix:///run/redis.sock\"\nshare = [\"identity_ids\"]\n\
             encryption_keys_file = {only_ids:?}\n"
        );
        let c = Config::from_toml(&ids).expect("valid");
        assert!(!c.shared.as_ref().expect("configured").share_credentials);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
