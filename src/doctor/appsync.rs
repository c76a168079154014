//! The doctor's AppSync checks: each configured API answers, and with a token a
//! `{ __typename }` query succeeds through credbroker's own forwarder ([`Forwarder`]) in the
//! API's auth mode (the raw ID token for OIDC, SigV4 with the user's credentials for IAM).

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use serde_json::Value;

use super::Check;
use crate::appsync::forward::{Api, ForwardError, Forwarder};
use crate::broker::Broker;
use crate::config::{AppSyncApiConfig, AppSyncAuth, Config};
use crate::http::{self, HttpsClient};
use crate::oidc::VerifiedToken;
use crate::server::appsync::{Refused, forward_as};

/// The query sent: valid on every GraphQL schema, reads no data.
const QUERY: &str = r#"{"query":"{ __typename }"}"#;
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Who the `{ __typename }` query is sent as.
pub(super) struct Caller<'a> {
    /// The validated token.
    pub token: &'a Arc<VerifiedToken>,
    /// The broker that exchanged it.
    pub broker: &'a Arc<Broker>,
    /// Whether it obtained credentials (IAM mode needs them).
    pub credentials: bool,
}

/// The checks of every configured API.
pub(super) async fn check(
    config: &Config,
    http: &HttpsClient,
    caller: Option<&Caller<'_>>,
) -> Vec<Check> {
    let forwarder = Forwarder::new(&config.appsync);
    let mut checks = Vec::new();
    for api in &config.appsync.apis {
        let id = |what: &str| format!("appsync.{}.{what}", api.name);
        if let Some(url_region) = url_region(api)
            && url_region != api.region
        {
            checks.push(Check::fail(
                id("region"),
                format!(
                    "appsync.apis.{}.region is {:?} but the URL is in {url_region:?}",
                    api.name, api.region
                ),
                format!(
                    "set appsync.apis.{}.region = {url_region:?} (IAM signatures are scoped to the \
                     API's region)",
                    api.name
                ),
            ));
        }
        let reachable = reachable(api, http, config.appsync.timeout).await;
        let reached = reachable.status == super::Status::Ok;
        checks.push(reachable);
        let query_id = id("query");
        let Some(caller) = caller else {
            checks.push(Check::skip(query_id, "skipped: needs a valid --token-file"));
            continue;
        };
        if !reached {
            checks.push(Check::skip(query_id, "skipped: the API is not reachable"));
            continue;
        }
        if api.auth == AppSyncAuth::Iam && !caller.credentials {
            checks.push(Check::skip(
                query_id,
                "skipped: IAM mode needs the user's credentials (see cognito.get_credentials)",
            ));
            continue;
        }
        let Some(target) = forwarder.api(Some(&api.name)) else {
            checks.push(Check::fail(
                query_id,
                "credbroker cannot forward to this API's URL",
                format!("check appsync.apis.{}.url", api.name),
            ));
            continue;
        };
        let answer = query(caller, &forwarder, target).await;
        checks.push(match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                judge_query(api, status, &body)
            }
            Err(e) => forward_failure(api, &e),
        });
    }
    checks
}

/// `{ __typename }` through credbroker's own forwarder, as the caller (no role: the default).
async fn query(
    caller: &Caller<'_>,
    forwarder: &Forwarder,
    api: &Api,
) -> Result<::http::Response<hyper::body::Incoming>, Refused> {
    let who = crate::broker::Caller {
        token: caller.token.clone(),
        role: None,
        session: None,
    };
    let body = Bytes::from_static(QUERY.as_bytes());
    forward_as(caller.broker, forwarder, api, &who, &HeaderMap::new(), body).await
}

/// The region in an AppSync URL (`<id>.appsync-api.<region>.amazonaws.com`), if it is one.
fn url_region(api: &AppSyncApiConfig) -> Option<String> {
    let host = api.url.host_str()?;
    let rest = host.split_once(".appsync-api.")?.1;
    let region = rest.strip_suffix(".amazonaws.com")?;
    (!region.is_empty() && !region.contains('.')).then(|| region.to_owned())
}

/// An unauthenticated `{ __typename }`: any AppSync answer (401 included) proves the API is
/// there.
async fn reachable(api: &AppSyncApiConfig, client: &HttpsClient, timeout: Duration) -> Check {
    let id = format!("appsync.{}.reachable", api.name);
    let url = api.url.as_str();
    let request = ::http::Request::post(url)
        .header(::http::header::CONTENT_TYPE, "application/json")
        .body(QUERY.as_bytes().to_vec());
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                id,
                format!("cannot build a request to {url}: {e}"),
                format!("check appsync.apis.{}.url", api.name),
            );
        }
    };
    match http::fetch(client, request, timeout, MAX_ANSWER_BYTES).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let (error_type, _) = appsync_error(response.body());
            match status {
                200 | 401 | 403 => Check::ok(
                    id,
                    format!(
                        "{url} answered {status}{} to a request without credentials: the API is \
                         there",
                        error_type.map(|t| format!(" {t}")).unwrap_or_default()
                    ),
                ),
                404 => Check::fail(
                    id,
                    format!("{url} answered 404"),
                    format!(
                        "appsync.apis.{}.url must be the API's GraphQL endpoint, \
                         https://<api id>.appsync-api.<region>.amazonaws.com/graphql (AppSync → \
                         your API → Settings → API URL)",
                        api.name
                    ),
                ),
                _ => Check::fail(
                    id,
                    format!("{url} answered {status}"),
                    "AppSync is failing or this is not an AppSync URL; check \
                     appsync.apis.<name>.url and retry",
                ),
            }
        }
        Err(e) => Check::fail(
            id,
            format!("cannot reach {url}: {e}"),
            format!(
                "check appsync.apis.{}.url and that this host reaches it (DNS, proxy, firewall)",
                api.name
            ),
        ),
    }
}

/// AppSync's `errors[0]` `errorType` and `message`.
fn appsync_error(body: &[u8]) -> (Option<String>, Option<String>) {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let first = json.get("errors").and_then(|e| e.get(0));
    let field = |name: &str| {
        first
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    (field("errorType"), field("message"))
}

fn judge_query(api: &AppSyncApiConfig, status: u16, body: &[u8]) -> Check {
    let id = format!("appsync.{}.query", api.name);
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let typename = json
        .get("data")
        .and_then(|d| d.get("__typename"))
        .and_then(Value::as_str);
    let (error_type, message) = appsync_error(body);
    match (status, typename, &error_type) {
        (200, Some(t), None) => Check::ok(
            id,
            format!(
                "{{ __typename }} answered {t:?} as the token's user ({} mode, through \
                 credbroker's forwarder)",
                api.auth.as_str()
            ),
        ),
        _ => {
            let error_type = error_type.unwrap_or_else(|| "no error type".to_owned());
            let message = message.unwrap_or_else(|| "no message".to_owned());
            Check::fail(
                id,
                format!(
                    "AppSync answered {status} {error_type}: {message} ({} mode)",
                    api.auth.as_str()
                ),
                query_fix(api, &message),
            )
            .with_code(error_type)
        }
    }
}

/// The console setting behind an AppSync refusal.
fn query_fix(api: &AppSyncApiConfig, message: &str) -> String {
    let name = &api.name;
    let mode = match api.auth {
        AppSyncAuth::Oidc => "OpenID Connect",
        AppSyncAuth::Iam => "AWS IAM",
    };
    if message.contains("invalid issuer") {
        "set the API's OpenID Connect provider domain (AppSync → your API → Settings → \
         Authorization modes → OpenID Connect) to exactly the token's iss, byte for byte (Auth0's \
         trailing slash included)"
            .to_owned()
    } else if message.contains("invalid audience") {
        "set the API's OpenID Connect Client ID to the token's aud (the application's Client \
         ID), or leave it empty"
            .to_owned()
    } else if message.contains("expired") {
        "set the API's OpenID Connect Auth TTL to 0 (Auth0 ID tokens have no auth_time), and \
         sign in again if the token itself expired"
            .to_owned()
    } else if message.contains("Valid authorization header not provided") {
        format!(
            "add {mode} to the API's authorization modes (AppSync → Settings → Authorization \
             modes), or set appsync.apis.{name}.auth to the mode the API uses"
        )
    } else if message.contains("scoped to a valid region") {
        format!("set appsync.apis.{name}.region to the API's region (the one in its URL)")
    } else if api.auth == AppSyncAuth::Iam {
        "the identity pool's authenticated role must allow appsync:GraphQL on this API \
         (arn:aws:appsync:<region>:<account>:apis/<api id>/*)"
            .to_owned()
    } else {
        "see AppSync's message; the API's authorization settings decide".to_owned()
    }
}

fn forward_failure(api: &AppSyncApiConfig, e: &Refused) -> Check {
    let reply = e.reply();
    Check::fail(
        format!("appsync.{}.query", api.name),
        format!(
            "credbroker could not forward the query ({}): {}",
            reply.code, reply.message
        ),
        match e {
            Refused::Forward(ForwardError::Operation(_)) => format!(
                "appsync.apis.{}.allowed_operations must include \"query\" for this check",
                api.name
            ),
            Refused::Forward(ForwardError::TokenExpiringSoon { .. }) => {
                "sign in again for a fresh token".to_owned()
            }
            _ => format!(
                "check appsync.apis.{}.url and that this host reaches it",
                api.name
            ),
        },
    )
    .with_code(reply.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(url: &str, region: &str) -> AppSyncApiConfig {
        AppSyncApiConfig {
            name: "a".to_owned(),
            url: url::Url::parse(url).expect("url"),
            region: region.to_owned(),
            auth: AppSyncAuth::Iam,
            allowed_operations: None,
            default: true,
            realtime_url: None,
        }
    }

    #[test]
    fn the_region_is_read_from_appsync_urls_only() {
        let aws = api(
            "https://abc123.appsync-api.eu-central-1.amazonaws.com/graphql",
            "us-east-1",
        );
        assert_eq!(url_region(&aws).as_deref(), Some("eu-central-1"));
        assert_eq!(
            url_region(&api("http://127.0.0.1:9/graphql", "us-east-1")),
            None
        );
        assert_eq!(
            url_region(&api("https://api.example.com/graphql", "us-east-1")),
            None
        );
    }

    #[test]
    fn appsync_refusals_name_the_console_setting() {
        let oidc = AppSyncApiConfig {
            auth: AppSyncAuth::Oidc,
            ..api("http://127.0.0.1:9/graphql", "us-east-1")
        };
        assert!(query_fix(&oidc, "Token has invalid issuer.").contains("provider domain"));
        assert!(query_fix(&oidc, "Token has expired.").contains("Auth TTL to 0"));
        assert!(
            query_fix(&oidc, "Valid authorization header not provided.")
                .contains("add OpenID Connect to the API's authorization modes")
        );
        let iam = api("http://127.0.0.1:9/graphql", "us-east-1");
        assert!(
            query_fix(&iam, "Credential should be scoped to a valid region").contains("region")
        );
        assert!(query_fix(&iam, "Not authorized").contains("appsync:GraphQL"));
    }
}
