//! How credbroker authenticates towards AppSync's real-time endpoint: the connect header and
//! each `start`'s `extensions.authorization`.
//!
//! Owns: [`Credential`] (what one upstream connection is authenticated with) and the two JSON
//! objects built from it.
//!
//! Promises:
//! - OIDC: `{"Authorization": <raw ID token>, "host": <API host>}`, for the connect and for
//!   every start (never `Bearer `);
//! - IAM: SigV4 (service `appsync`, the API's region, the session token included) over
//!   `POST <GraphQL URL>/connect` with body `{}` for the connect, and over `POST <GraphQL URL>`
//!   with the start's `data` as body for each start; signed headers `accept`,
//!   `content-encoding`, `content-type`, `host`, `x-amz-date`, `x-amz-security-token`, as
//!   Amplify signs them; the JSON is those headers and `authorization`;
//! - `host` is always the GraphQL API's host (with a non-default port), never the real-time
//!   host.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde_json::{Map, Value, json};

use super::upstream::Target;
use crate::secret::SecretString;

/// The headers Amplify signs besides `host` (`AWS_APPSYNC_REALTIME_HEADERS`).
const SIGNED_HEADERS: [(&str, &str); 3] = [
    ("accept", "application/json, text/javascript"),
    ("content-encoding", "amz-1.0"),
    ("content-type", "application/json; charset=UTF-8"),
];

/// What one upstream connection authenticates with.
#[derive(Debug, Clone)]
pub enum Credential {
    /// OIDC mode: the caller's raw ID token.
    IdToken {
        /// The JWT.
        raw: SecretString,
        /// SHA-256 of it (tells a renewed token from the same one).
        digest: [u8; 32],
        /// Its `exp`.
        expires_at: SystemTime,
    },
    /// IAM mode: the caller's Cognito credentials (their expiry set).
    Iam(Credentials),
}

impl Credential {
    /// When this authentication stops working upstream.
    pub fn expires_at(&self) -> SystemTime {
        match self {
            Self::IdToken { expires_at, .. } => *expires_at,
            Self::Iam(c) => c.expiry().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// Whether `other` is the same token or access key (a renewal that brings nothing new).
    pub fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::IdToken { digest: a, .. }, Self::IdToken { digest: b, .. }) => a == b,
            (Self::Iam(a), Self::Iam(b)) => a.access_key_id() == b.access_key_id(),
            _ => false,
        }
    }
}

/// Why an authorization object could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign for AppSync: {0}")]
pub struct SigningError(String);

/// The connect header (the `header-` subprotocol's JSON).
pub fn connect_header(
    target: &Target,
    credential: &Credential,
    now: SystemTime,
) -> Result<Value, SigningError> {
    authorization(target, credential, "/connect", b"{}", now)
}

/// A start's `extensions.authorization` for `data`.
pub fn start_authorization(
    target: &Target,
    credential: &Credential,
    data: &str,
    now: SystemTime,
) -> Result<Value, SigningError> {
    authorization(target, credential, "", data.as_bytes(), now)
}

fn authorization(
    target: &Target,
    credential: &Credential,
    suffix: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<Value, SigningError> {
    let credentials = match credential {
        Credential::IdToken { raw, .. } => {
            return Ok(json!({ "Authorization": raw.expose_str(), "host": target.authority }));
        }
        Credential::Iam(c) => c,
    };
    let url = format!("{}{suffix}", target.api_url);
    let host = [("host", target.authority.as_str())];
    let mut out = Map::new();
    for (name, value) in SIGNED_HEADERS.iter().chain(host.iter()) {
        out.insert((*name).to_owned(), json!(value));
    }
    for (name, value) in sigv4(&url, body, credentials, &target.region, now, &host)? {
        out.insert(name, json!(value));
    }
    Ok(Value::Object(out))
}

/// The headers SigV4 adds (`x-amz-date`, `x-amz-security-token`, `authorization`).
fn sigv4(
    url: &str,
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
    host: &[(&str, &str); 1],
) -> Result<Vec<(String, String)>, SigningError> {
    let fail = |e: &dyn std::fmt::Display| SigningError(e.to_string());
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("appsync")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let headers = SIGNED_HEADERS.iter().chain(host.iter()).copied();
    let request = SignableRequest::new("POST", url, headers, SignableBody::Bytes(body))
        .map_err(|e| fail(&e))?;
    let (instructions, _signature) = sign(request, &params).map_err(|e| fail(&e))?.into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect())
}
