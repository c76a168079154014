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

/// The checks of one provider, in order; later ones are skipped once one fails.
pub(super) async fn check(http: &HttpsClient, timeout: Duration, p: &ProviderConfig) -> Vec<Check> {
    let id = |what: &str| format!("provider.{}.{what}", p.name);
    let mut checks = Vec::new();
    let skip_rest = |checks: &mut Vec<Check>, from: &[&str], why: &str| {
        for what in from {
            checks.push(Check::skip(id(what), format!("skipped: {why}")));
        }
    };

    // 1. Discovery.
    let url = p.discovery_url();
    let discovery = match get_json(http, &url, timeout).await {
        Ok(doc) => {
            checks.push(Check::ok(id("discovery"), format!("{url} answered 200")));
            doc
        }
        Err(e) => {
            let fix = match e {
                GetError::Status(404) => format!(
                    "providers.{}.issuer must be the issuer itself (the token's iss), whose \
                     discovery document is <issuer>/.well-known/openid-configuration; for Auth0 \
                     that is https://<tenant>.<region>.auth0.com/ or your custom domain, with the \
                     trailing slash",
                    p.name
                ),
                GetError::Status(s) if s >= 500 => {
                    "the issuer is failing; retry later, and check its status page".to_owned()
                }
                _ => format!(
                    "check providers.{}.issuer and that this host reaches it (DNS, proxy, \
                     firewall)",
                    p.name
                ),
            };
            checks.push(Check::fail(
                id("discovery"),
                format!("cannot read the discovery document {url}: {e}"),
                fix,
            ));
            skip_rest(
                &mut checks,
                &["issuer", "jwks", "algorithms"],
                "needs the discovery document",
            );
            return checks;
        }
    };

    // 2. The issuer, byte for byte.
    let configured = p.issuer.as_str();
    match discovery.get("issuer").and_then(Value::as_str) {
        Some(found) if found == configured => checks.push(Check::ok(
            id("issuer"),
            format!(
                "the discovery document names issuer {found:?}, exactly providers.{}.issuer; the \
                 IAM OpenID Connect provider URL for it is {:?} and the Logins key {:?}",
                p.name,
                found.trim_end_matches('/'),
                p.logins_key
            ),
        )),
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
            checks.push(Check::fail(
                id("issuer"),
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
            ));
        }
        None => checks.push(Check::fail(
            id("issuer"),
            format!("the discovery document {url} has no \"issuer\""),
            "this is not an OpenID Connect discovery document: check providers.<name>.issuer",
        )),
    }

    // 3. The JWKS.
    let Some(jwks_uri) = discovery.get("jwks_uri").and_then(Value::as_str) else {
        checks.push(Check::fail(
            id("jwks"),
            format!("the discovery document {url} has no \"jwks_uri\""),
            "the issuer must publish its signing keys (jwks_uri) for credbroker and Cognito to \
             verify tokens",
        ));
        skip_rest(&mut checks, &["algorithms"], "needs the JWKS");
        return checks;
    };
    let jwks = match get_json(http, jwks_uri, timeout).await {
        Ok(jwks) => jwks,
        Err(e) => {
            checks.push(Check::fail(
                id("jwks"),
                format!("cannot read the JWKS {jwks_uri} (the discovery document's jwks_uri): {e}"),
                "the issuer's keys must be reachable from this host (and from AWS: IAM fetches \
                 the same jwks_uri to check tokens for Cognito); check the network path (proxy, \
                 firewall) and the issuer's jwks_uri",
            ));
            skip_rest(&mut checks, &["algorithms"], "needs the JWKS");
            return checks;
        }
    };
    let keys: Vec<&serde_json::Map<String, Value>> = jwks
        .get("keys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let kids: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.get("kid").and_then(Value::as_str))
        .collect();
    if keys.is_empty() {
        checks.push(Check::fail(
            id("jwks"),
            format!("the JWKS {jwks_uri} publishes no keys"),
            "the issuer must publish the public keys it signs ID tokens with",
        ));
        skip_rest(&mut checks, &["algorithms"], "needs keys");
        return checks;
    }
    if kids.len() < keys.len() {
        checks.push(Check::fail(
            id("jwks"),
            format!(
                "{} of the {} keys in {jwks_uri} have no kid",
                keys.len() - kids.len(),
                keys.len()
            ),
            "Cognito and IAM choose the verification key by the token's kid: the issuer must \
             give every key a kid",
        ));
    } else {
        checks.push(Check::ok(
            id("jwks"),
            format!(
                "{jwks_uri} answered 200 with {} key(s), kids {kids:?}",
                keys.len()
            ),
        ));
    }

    // 4. RS256 on offer: in the discovery document and as an RSA key.
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
        checks.push(Check::ok(
            id("algorithms"),
            format!(
                "RS256 is offered (id_token_signing_alg_values_supported {listed}; {rsa_keys} RSA \
                 signing key(s))"
            ),
        ));
    } else {
        let detail = if rs256_listed {
            format!("the JWKS has no RSA signing key for RS256 (signing algorithms: {listed})")
        } else {
            format!(
                "the issuer does not offer RS256 (id_token_signing_alg_values_supported {listed})"
            )
        };
        checks.push(Check::fail(
            id("algorithms"),
            detail,
            "Cognito verifies only RS256-signed ID tokens: have the issuer sign with RS256 (in \
             Auth0: Applications → your app → Settings → Advanced Settings → OAuth → JSON Web \
             Token Signature Algorithm = RS256)",
        ));
    }
    checks
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
