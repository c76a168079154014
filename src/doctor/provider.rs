//! The doctor's look at one OIDC provider's documents: discovery answers, its `issuer` is the
//! configured one byte for byte, the JWKS answers with `kid`s, RS256 is offered.
//!
//! These are read here, document by document, only to say precisely which one is wrong;
//! whether credbroker accepts them is then decided by its own loader ([`crate::oidc`]).

use std::time::Duration;

use serde_json::Value;

use super::Check;
use crate::config::ProviderConfig;
use crate::http::{self, HttpsClient};

/// Largest document read (as the daemon's loader).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// A JWKS key, as read.
type Key = serde_json::Map<String, Value>;

/// The checks of one provider, in order; later ones are skipped once one fails.
pub(super) async fn check(http: &HttpsClient, timeout: Duration, p: &ProviderConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    let skip_rest = |checks: &mut Vec<Check>, from: &[&str], why: &str| {
        for what in from {
            checks.push(Check::skip(id(p, what), format!("skipped: {why}")));
        }
    };

    // 1. Discovery.
    let url = p.discovery_url();
    let discovery = match get_json(http, &url, timeout).await {
        Ok(doc) => {
            checks.push(Check::ok(id(p, "discovery"), format!("{url} answered 200")));
            doc
        }
        Err(e) => {
            checks.push(discovery_failed(p, &url, &e));
            skip_rest(
                &mut checks,
                &["issuer", "jwks", "algorithms"],
                "needs the discovery document",
            );
            return checks;
        }
    };

    // 2. The issuer, byte for byte.
    checks.push(issuer(p, &url, &discovery));

    // 3. The JWKS.
    let (line, keys) = jwks(http, timeout, p, &url, &discovery).await;
    checks.push(line);
    let keys = match keys {
        Ok(keys) => keys,
        Err(why) => {
            skip_rest(&mut checks, &["algorithms"], why);
            return checks;
        }
    };

    // 4. RS256 on offer: in the discovery document and as an RSA key.
    checks.push(algorithms(p, &discovery, &keys));
    checks
}

/// The id of the line `what` of provider `p`: `provider.<name>.<what>`.
fn id(p: &ProviderConfig, what: &str) -> String {
    format!("provider.{}.{what}", p.name)
}

/// `discovery` failed: what to change depends on how.
fn discovery_failed(p: &ProviderConfig, url: &str, e: &GetError) -> Check {
    let fix = match e {
        GetError::Status(404) => format!(
            "providers.{}.issuer must be the issuer itself (the token's iss), whose \
             discovery document is <issuer>/.well-known/openid-configuration; for Auth0 \
             that is https://<tenant>.<region>.auth0.com/ or your custom domain, with the \
             trailing slash",
            p.name
        ),
        GetError::Status(s) if *s >= 500 => {
            "the issuer is failing; retry later, and check its status page".to_owned()
        }
        _ => format!(
            "check providers.{}.issuer and that this host reaches it (DNS, proxy, \
             firewall)",
            p.name
        ),
    };
    Check::fail(
        id(p, "discovery"),
        format!("cannot read the discovery document {url}: {e}"),
        fix,
    )
}

/// `issuer`: the discovery document names exactly the configured issuer.
fn issuer(p: &ProviderConfig, url: &str, discovery: &Key) -> Check {
    let configured = p.issuer.as_str();
    match discovery.get("issuer").and_then(Value::as_str) {
        Some(found) if found == configured => Check::ok(
            id(p, "issuer"),
            format!(
                "the discovery document names issuer {found:?}, exactly providers.{}.issuer; the \
                 IAM OpenID Connect provider URL for it is {:?} and the Logins key {:?}",
                p.name,
                found.trim_end_matches('/'),
                p.logins_key
            ),
        ),
        Some(found) => {
            let slash = if found.trim_end_matches('/') == configured.trim_end_matches('/') {
                if found.ends_with('/') {
                    " (the discovery document's has a trailing slash, the configured one not)"
                } else {
                    " (the configured one has a trailing slash, the discovery document's not)"
                }
            } else {
                ""
            };
            Check::fail(
                id(p, "issuer"),
                format!(
                    "the discovery document names issuer {found:?} but providers.{}.issuer is \
                     {configured:?}{slash}",
                    p.name
                ),
                format!(
                    "set providers.{}.issuer = {found:?}, exactly: tokens carry it as iss, and \
                     credbroker, Cognito and AppSync compare it byte for byte (Auth0's ends with \
                     '/')",
                    p.name
                ),
            )
        }
        None => Check::fail(
            id(p, "issuer"),
            format!("the discovery document {url} has no \"issuer\""),
            "this is not an OpenID Connect discovery document: check providers.<name>.issuer",
        ),
    }
}

/// `jwks`: the discovery document's `jwks_uri` answers with keys, each with a `kid`. The line,
/// and the keys, or why the algorithms cannot be checked.
async fn jwks(
    http: &HttpsClient,
    timeout: Duration,
    p: &ProviderConfig,
    url: &str,
    discovery: &Key,
) -> (Check, Result<Vec<Key>, &'static str>) {
    let Some(jwks_uri) = discovery.get("jwks_uri").and_then(Value::as_str) else {
        let line = Check::fail(
            id(p, "jwks"),
            format!("the discovery document {url} has no \"jwks_uri\""),
            "the issuer must publish its signing keys (jwks_uri) for credbroker and Cognito to \
             verify tokens",
        );
        return (line, Err("needs the JWKS"));
    };
    let mut jwks = match get_json(http, jwks_uri, timeout).await {
        Ok(jwks) => jwks,
        Err(e) => {
            let line = Check::fail(
                id(p, "jwks"),
                format!("cannot read the JWKS {jwks_uri} (the discovery document's jwks_uri): {e}"),
                "the issuer's keys must be reachable from this host (and from AWS: IAM fetches \
                 the same jwks_uri to check tokens for Cognito); check the network path (proxy, \
                 firewall) and the issuer's jwks_uri",
            );
            return (line, Err("needs the JWKS"));
        }
    };
    let keys: Vec<Key> = match jwks.remove("keys") {
        Some(Value::Array(keys)) => keys
            .into_iter()
            .filter_map(|k| match k {
                Value::Object(k) => Some(k),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let kids: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.get("kid").and_then(Value::as_str))
        .collect();
    if keys.is_empty() {
        let line = Check::fail(
            id(p, "jwks"),
            format!("the JWKS {jwks_uri} publishes no keys"),
            "the issuer must publish the public keys it signs ID tokens with",
        );
        return (line, Err("needs keys"));
    }
    let line = if kids.len() < keys.len() {
        Check::fail(
            id(p, "jwks"),
            format!(
                "{} of the {} keys in {jwks_uri} have no kid",
                keys.len() - kids.len(),
                keys.len()
            ),
            "Cognito and IAM choose the verification key by the token's kid: the issuer must \
             give every key a kid",
        )
    } else {
        Check::ok(
            id(p, "jwks"),
            format!(
                "{jwks_uri} answered 200 with {} key(s), kids {kids:?}",
                keys.len()
            ),
        )
    };
    (line, Ok(keys))
}

/// `algorithms`: RS256 is offered, in the discovery document and as an RSA signing key.
fn algorithms(p: &ProviderConfig, discovery: &Key, keys: &[Key]) -> Check {
    let offered: Option<Vec<&str>> = discovery
        .get("id_token_signing_alg_values_supported")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    let rsa_keys = keys
        .iter()
        .filter(|k| {
            k.get("kty").and_then(Value::as_str) == Some("RSA")
                && k.get("alg")
                    .and_then(Value::as_str)
                    .is_none_or(|a| a == "RS256")
                && k.get("use")
                    .and_then(Value::as_str)
                    .is_none_or(|u| u == "sig")
        })
        .count();
    let rs256_listed = offered.as_ref().is_none_or(|o| o.contains(&"RS256"));
    let listed = offered
        .as_ref()
        .map_or("not listed".to_owned(), |o| format!("{o:?}"));
    if rs256_listed && rsa_keys > 0 {
        return Check::ok(
            id(p, "algorithms"),
            format!(
                "RS256 is offered (id_token_signing_alg_values_supported {listed}; {rsa_keys} RSA \
                 signing key(s))"
            ),
        );
    }
    let detail = if rs256_listed {
        format!("the JWKS has no RSA signing key for RS256 (signing algorithms: {listed})")
    } else {
        format!("the issuer does not offer RS256 (id_token_signing_alg_values_supported {listed})")
    };
    Check::fail(
        id(p, "algorithms"),
        detail,
        "Cognito verifies only RS256-signed ID tokens: have the issuer sign with RS256 (in \
         Auth0: Applications → your app → Settings → Advanced Settings → OAuth → JSON Web \
         Token Signature Algorithm = RS256)",
    )
}

/// Why a document could not be read.
#[derive(Debug)]
enum GetError {
    Fetch(http::FetchError),
    Status(u16),
    NotJson,
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fetch(e) => write!(f, "{e}"),
            Self::Status(s) => write!(f, "it answered HTTP {s}"),
            Self::NotJson => f.write_str("the answer is not a JSON object"),
        }
    }
}

async fn get_json(
    client: &HttpsClient,
    url: &str,
    timeout: Duration,
) -> Result<serde_json::Map<String, Value>, GetError> {
    let request = ::http::Request::get(url)
        .header(::http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| GetError::Fetch(http::FetchError::Request(e.to_string())))?;
    let response = http::fetch(client, request, timeout, MAX_DOCUMENT_BYTES)
        .await
        .map_err(GetError::Fetch)?;
    if response.status() != ::http::StatusCode::OK {
        return Err(GetError::Status(response.status().as_u16()));
    }
    match serde_json::from_slice(response.body()) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(GetError::NotJson),
    }
}
