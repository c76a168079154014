//! `[providers.<name>]`: the OIDC providers whose ID tokens are accepted.

use std::collections::BTreeMap;

use url::Url;

use super::{Algorithm, Section, algorithm_refusal, check_http_url};

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

pub(super) fn build_providers(root: &Section<'_>) -> Option<Vec<ProviderConfig>> {
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

pub(super) fn build_provider(s: &Section<'_>, name: &str) -> Option<ProviderConfig> {
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        s.error_here("provider names may contain only letters, digits, '_' and '-'");
    }
    let issuer = issuer(s);
    let audiences = audiences(s);
    let algorithms = algorithms(s);
    let logins_key = logins_key(s, issuer.as_deref());
    let discovery_url = discovery_url(s);
    Some(ProviderConfig {
        name: name.to_owned(),
        discovery_url: discovery_url?,
        logins_key: logins_key?,
        issuer: issuer?,
        audiences: audiences?,
        algorithms: algorithms?,
    })
}

/// `issuer`: required, an https (or loopback http) URL without query or fragment.
fn issuer(s: &Section<'_>) -> Option<String> {
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
        })
}

/// `audiences`: required, at least one client ID.
fn audiences(s: &Section<'_>) -> Option<Vec<String>> {
    match s.str_list("audiences") {
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
    }
}

/// `algorithms`: RS256 when absent; else a non-empty list of known JOSE names.
fn algorithms(s: &Section<'_>) -> Option<Vec<Algorithm>> {
    match s.str_list("algorithms") {
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
    }
}

/// `logins_key`: as set (a host and path, no scheme), else derived from the issuer.
fn logins_key(s: &Section<'_>, issuer: Option<&str>) -> Option<String> {
    match s.opt_str("logins_key") {
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
        None => issuer.map(derive_logins_key),
    }
}

/// `discovery_url`: `Some(None)` when absent, `None` when invalid (the error reported).
fn discovery_url(s: &Section<'_>) -> Option<Option<Url>> {
    match s.opt_str("discovery_url") {
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
