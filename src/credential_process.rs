//! `credbroker credential-process`: AWS credentials for the `credential_process` setting of
//! `~/.aws/config`, from the running credbroker.
//!
//! Owns: reading the caller's token (a token file, or a session handle from the environment),
//! one `GET /v1/credentials` to the running daemon, and turning its answer into the
//! `credential_process` JSON ([`ProcessCredentials`]) or a [`Failure`] (one line for stderr and
//! a sysexits exit code).
//!
//! Promises:
//! - never talks to Cognito: the daemon validates, exchanges and caches, so every process of the
//!   user shares one identity and one set of credentials;
//! - the token never comes from the command line (every local user can read it with `ps`): it is
//!   read from a file (`--token-file`, `CREDBROKER_TOKEN_FILE`; whitespace around it, such as a
//!   trailing newline, is stripped) or, for a session handle, from `CREDBROKER_SESSION`; a
//!   `--token-file` value that looks like a token itself is refused without being echoed;
//! - the token, the secret key and the session token appear nowhere but in the JSON printed on
//!   success: no failure message carries them, nor the daemon's answer body;
//! - only plain `http` to a loopback host (where credbroker listens; an ID token must not travel
//!   anywhere else in clear), one request, bounded by the timeout, the answer by 64 KiB;
//! - every failure is a [`Failure`] whose [`Failure::exit_code`] is non-zero: 64 usage, 66 token
//!   missing or unreadable, 69 daemon unreachable, timed out, busy or failing upstream (5xx,
//!   429), 76 an answer that is not credbroker's, 77 the token or login was refused (401/403;
//!   the message carries the daemon's `Code` and `Message`).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::secret::SecretString;
use crate::sessions;

/// The daemon's container endpoint (flag `--url`).
pub const ENV_URL: &str = "CREDBROKER_CREDENTIALS_URL";
/// The file holding the ID token or session handle (flag `--token-file`).
pub const ENV_TOKEN_FILE: &str = "CREDBROKER_TOKEN_FILE";
/// A session handle (`cbs_…`) given through the environment.
pub const ENV_SESSION: &str = "CREDBROKER_SESSION";
/// Where `credbroker run` listens by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8900/v1/credentials";
/// Default bound on the whole request, above the daemon's own `server.request_timeout` (10 s)
/// so that its `UpstreamTimeout` answer arrives rather than a local timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest token file read (the daemon refuses tokens above `tokens.max_token_bytes` anyway).
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest daemon message repeated on stderr.
const MAX_MESSAGE_CHARS: usize = 600;

/// What to do, from flags and the environment.
#[derive(Debug, Clone)]
pub struct Options {
    /// The container endpoint (`--url`, `CREDBROKER_CREDENTIALS_URL`); `None`: [`DEFAULT_URL`].
    pub url: Option<String>,
    /// The token file (`--token-file`, `CREDBROKER_TOKEN_FILE`).
    pub token_file: Option<PathBuf>,
    /// Bound on the whole exchange with the daemon.
    pub timeout: Duration,
}

/// Why no credentials were printed. `Display` is the one line for stderr; it never carries a
/// token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// Flags or environment are unusable (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The token file is missing, unreadable or empty (exit 66).
    #[error("{0}")]
    NoInput(String),
    /// The daemon is not running, did not answer in time, or answered 429/5xx (exit 69).
    #[error("{0}")]
    Unavailable(String),
    /// The answer is not credbroker's (exit 76).
    #[error("{0}")]
    Protocol(String),
    /// The daemon refused the token or Cognito refused the login: 401/403 (exit 77).
    #[error("{0}")]
    Refused(String),
}

impl Failure {
    /// The process exit code (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 64,
            Self::NoInput(_) => 66,
            Self::Unavailable(_) => 69,
            Self::Protocol(_) => 76,
            Self::Refused(_) => 77,
        }
    }
}

/// The `credential_process` answer (AWS CLI / SDK "sourcing credentials with an external
/// process", version 1).
#[derive(Debug)]
pub struct ProcessCredentials {
    /// Always 1.
    pub version: u8,
    /// `ASIA…`.
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: SecretString,
    /// The session token (the container protocol's `Token`).
    pub session_token: SecretString,
    /// RFC 3339, as the daemon sent it.
    pub expiration: String,
    /// The account, when the daemon knows it (`cognito.account_id`).
    pub account_id: Option<String>,
}

impl ProcessCredentials {
    /// The JSON line printed on stdout.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::json!({
            "Version": self.version,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key.expose_str(),
            "SessionToken": self.session_token.expose_str(),
            "Expiration": self.expiration,
        });
        if let (Some(account), Some(fields)) = (&self.account_id, json.as_object_mut()) {
            fields.insert("AccountId".to_owned(), account.as_str().into());
        }
        json.to_string()
    }
}

/// Reads the token, asks the daemon, and returns the credentials to print.
pub async fn run(
    options: &Options,
    env: &[(String, String)],
) -> Result<ProcessCredentials, Failure> {
    let url = endpoint(options.url.as_deref().unwrap_or(DEFAULT_URL))?;
    let token = token(options.token_file.as_deref(), env_value(env, ENV_SESSION))?;
    fetch(&url, &token, options.timeout).await
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The container endpoint as a URI: `http` on a loopback host, `/v1/credentials` when no path.
fn endpoint(text: &str) -> Result<http::Uri, Failure> {
    let usage = |why: &str| {
        Failure::Usage(format!(
            "--url / {ENV_URL} {text:?} {why}; expected the credbroker container endpoint, e.g. \
             {DEFAULT_URL}"
        ))
    };
    let full = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let mut url = url::Url::parse(&full).map_err(|e| usage(&format!("is not a URL ({e})")))?;
    if url.scheme() != "http" {
        return Err(usage(
            "does not use http: credbroker serves credentials over plain http on loopback",
        ));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if !loopback {
        return Err(usage(
            "is not on a loopback host (127.0.0.1, [::1], localhost): the ID token would travel \
             in clear",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(usage("carries user information"));
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(crate::server::container::CREDENTIALS_PATH);
    }
    url.as_str()
        .parse()
        .map_err(|e| usage(&format!("is not a usable URI ({e})")))
}

/// The ID token or session handle to send.
fn token(file: Option<&Path>, session: Option<&str>) -> Result<SecretString, Failure> {
    match (file, session) {
        (Some(_), Some(_)) => Err(Failure::Usage(format!(
            "both a token file (--token-file / {ENV_TOKEN_FILE}) and {ENV_SESSION} are set; \
             use one"
        ))),
        (Some(path), None) => read_token_file(path).map(|f| f.token),
        (None, Some(handle)) => {
            let handle = handle.trim();
            if sessions::is_handle(handle) {
                Ok(SecretString::from(handle))
            } else {
                Err(Failure::Usage(format!(
                    "{ENV_SESSION} must hold a session handle (cbs_…, from POST /v1/sessions); ID \
                     tokens expire within hours, so put them in a file that is rewritten on \
                     refresh and pass --token-file"
                )))
            }
        }
        (None, None) => Err(Failure::Usage(format!(
            "no token: pass --token-file FILE (or set {ENV_TOKEN_FILE}) naming the file that \
             holds the user's ID token or session handle, or set {ENV_SESSION} to a session \
             handle"
        ))),
    }
}

/// Whether a `--token-file` value is a token or handle pasted in place of a path.
fn looks_like_a_secret(value: &str) -> bool {
    value.starts_with("eyJ") || value.starts_with("cbs_")
}

/// A token file's contents.
#[derive(Debug)]
pub struct TokenFile {
    /// The token or handle, without surrounding whitespace.
    pub token: SecretString,
    /// Whether whitespace (a trailing newline, typically) was stripped: AWS SDKs reading the
    /// same file as `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` send it as is, and fail.
    pub had_whitespace: bool,
}

/// Reads a token file: at most 64 KiB of text, whitespace around it stripped, not empty, only
/// characters an HTTP header can carry. Failures name the file, never its contents.
pub fn read_token_file(path: &Path) -> Result<TokenFile, Failure> {
    let shown = path.display();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            if e.kind() == std::io::ErrorKind::NotFound
                && looks_like_a_secret(&path.to_string_lossy())
            {
                return Err(Failure::Usage(
                    "--token-file takes the path of a file, and its value looks like a token or \
                     session handle itself. Command lines are visible to every user on this host \
                     (ps): write the token to a file only you can read (mode 0600) and pass its \
                     path"
                        .to_owned(),
                ));
            }
            return Err(Failure::NoInput(format!(
                "cannot read the token file {shown}: {e}"
            )));
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::NoInput(format!("cannot read the token file {shown}: {e}")))?;
    let bytes = crate::secret::ZeroizingBytes(bytes);
    if bytes.0.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(Failure::NoInput(format!(
            "the token file {shown} is larger than {MAX_TOKEN_FILE_BYTES} bytes; it must hold \
             only the raw ID token or session handle"
        )));
    }
    let text = std::str::from_utf8(&bytes.0).map_err(|_| {
        Failure::NoInput(format!(
            "the token file {shown} is not text; it must hold only the raw ID token or session \
             handle"
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::NoInput(format!(
            "the token file {shown} is empty; whatever signs the user in must write the ID token \
             (or session handle) there"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(Failure::NoInput(format!(
            "the token file {shown} holds characters that cannot be sent in an HTTP header; it \
             must hold only the raw ID token or session handle"
        )));
    }
    Ok(TokenFile {
        had_whitespace: token.len() != text.len(),
        token: SecretString::from(token),
    })
}

/// The daemon's 200 body.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerCredentials {
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    token: Option<String>,
    expiration: Option<String>,
    account_id: Option<String>,
}

/// The daemon's error body.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: String,
    message: String,
}

/// `GET url` with the token as `Authorization` (marked sensitive).
fn request(url: &http::Uri, token: &SecretString) -> Result<http::Request<Empty<Bytes>>, Failure> {
    let mut authorization = http::HeaderValue::from_str(token.expose_str()).map_err(|_| {
        Failure::NoInput("the token holds characters that cannot be sent in an HTTP header".into())
    })?;
    authorization.set_sensitive(true);
    http::Request::get(url.clone())
        .header(http::header::AUTHORIZATION, authorization)
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("credbroker-credential-process/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| Failure::Usage(format!("cannot build the request to {url}: {e}")))
}

async fn fetch(
    url: &http::Uri,
    token: &SecretString,
    timeout: Duration,
) -> Result<ProcessCredentials, Failure> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let request = request(url, token)?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let detail = crate::http::error_chain(&e);
            let hint = if e.is_connect() {
                format!(
                    "; is `credbroker run` running and listening there? (point --url or {ENV_URL} \
                     at its server.listen)"
                )
            } else {
                String::new()
            };
            Failure::Unavailable(format!("cannot reach credbroker at {url}: {detail}{hint}"))
        })?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                Failure::Protocol(format!("cannot read credbroker's answer from {url}: {e}"))
            })?
            .to_bytes();
        Ok((parts, body))
    };
    let (parts, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            Failure::Unavailable(format!(
                "credbroker at {url} did not answer within {}s (--timeout)",
                timeout.as_secs_f64()
            ))
        })??;
    let status = parts.status.as_u16();
    if status == 200 {
        return credentials(url, &body);
    }
    let Ok(error) = serde_json::from_slice::<ErrorBody>(&body) else {
        return Err(Failure::Protocol(format!(
            "{url} answered HTTP {status} without credbroker's {{\"Code\",\"Message\"}} body; is \
             credbroker listening there?"
        )));
    };
    let retry = parts
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(|s| format!(" (retry after {s} s)"))
        .unwrap_or_default();
    let text = format!(
        "credbroker answered {status} {}: {}{retry}",
        one_line(&error.code),
        one_line(&error.message)
    );
    Err(match status {
        401 | 403 => Failure::Refused(text),
        429 | 500..=599 => Failure::Unavailable(text),
        _ => Failure::Protocol(text),
    })
}

fn credentials(url: &http::Uri, body: &[u8]) -> Result<ProcessCredentials, Failure> {
    // Never quote the body: it holds secrets.
    let malformed = |what: &str| {
        Failure::Protocol(format!(
            "the 200 answer from {url} is not container credentials: {what}"
        ))
    };
    let c: ContainerCredentials =
        serde_json::from_slice(body).map_err(|_| malformed("not the expected JSON object"))?;
    let present = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(&format!("{name} is missing")))
    };
    let access_key_id = present(c.access_key_id, "AccessKeyId")?;
    let secret_access_key = SecretString::new(present(c.secret_access_key, "SecretAccessKey")?);
    let session_token = SecretString::new(present(c.token, "Token")?);
    let expiration = present(c.expiration, "Expiration")?;
    if chrono::DateTime::parse_from_rfc3339(&expiration).is_err() {
        return Err(malformed("Expiration is not an RFC 3339 time"));
    }
    Ok(ProcessCredentials {
        version: 1,
        access_key_id,
        secret_access_key,
        session_token,
        expiration,
        account_id: c.account_id.filter(|a| !a.is_empty()),
    })
}

/// `text` on one line (control characters become spaces), at most [`MAX_MESSAGE_CHARS`].
fn one_line(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if text.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_on_loopback_with_the_credentials_path_by_default() {
        let ok = |t: &str| endpoint(t).expect(t).to_string();
        assert_eq!(ok("127.0.0.1:8900"), "http://127.0.0.1:8900/v1/credentials");
        assert_eq!(ok("http://[::1]:9/"), "http://[::1]:9/v1/credentials");
        assert_eq!(ok("http://localhost:1/x"), "http://localhost:1/x");
        for bad in [
            "https://127.0.0.1:8900/v1/credentials",
            "http://10.0.0.1:8900/v1/credentials",
            "http://example.com/v1/credentials",
            "http://u:p@127.0.0.1:8900/",
        ] {
            assert_eq!(endpoint(bad).map_err(|e| e.exit_code()), Err(64), "{bad}");
        }
    }

    #[test]
    fn the_token_comes_from_one_source_and_is_never_echoed() {
        let dir = std::env::temp_dir().join(format!("cb-cp-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln\r\n").expect("write");
        let t = token(Some(&file), None).expect("read");
        assert_eq!(t.expose_str(), "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");

        std::fs::write(&file, "\n").expect("write");
        assert_eq!(
            token(Some(&file), None).map_err(|e| e.exit_code()).err(),
            Some(66)
        );
        let missing = dir.join("missing");
        assert_eq!(
            token(Some(&missing), None).map_err(|e| e.exit_code()).err(),
            Some(66)
        );

        // A token pasted in place of a path: refused, and not repeated.
        let pasted = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let e = token(Some(Path::new(pasted)), None).expect_err("refused");
        assert_eq!(e.exit_code(), 64);
        assert!(!e.to_string().contains(pasted), "{e}");

        let handle = format!("cbs_{}", "A".repeat(43));
        assert_eq!(
            token(None, Some(&handle)).expect("handle").expose_str(),
            handle
        );
        let e = token(None, Some("eyJ.not.handle")).expect_err("not a handle");
        assert!(!e.to_string().contains("eyJ.not.handle"));
        assert_eq!(
            token(Some(&file), Some(&handle))
                .map_err(|e| e.exit_code())
                .err(),
            Some(64)
        );
        assert_eq!(token(None, None).map_err(|e| e.exit_code()).err(), Some(64));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_malformed_answer_is_refused_without_quoting_it() {
        let url: http::Uri = DEFAULT_URL.parse().expect("uri");
        let body = br#"{"AccessKeyId":"ASIA1","SecretAccessKey":"very-secret","Expiration":"2030-01-01T00:00:00Z"}"#;
        let e = credentials(&url, body).expect_err("no Token");
        assert_eq!(e.exit_code(), 76);
        assert!(e.to_string().contains("Token is missing"), "{e}");
        assert!(!e.to_string().contains("very-secret"));
        let body =
            br#"{"AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"soon"}"#;
        assert!(credentials(&url, body).is_err());
        let body = br#"{"AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-01T00:00:00Z"}"#;
        let c = credentials(&url, body).expect("valid");
        let json: serde_json::Value = serde_json::from_str(&c.to_json()).expect("json");
        assert_eq!(json["Version"], 1);
        assert_eq!(json["SessionToken"], "t");
        assert!(json.get("AccountId").is_none());
        assert!(!format!("{c:?}").contains("\"s\""));
    }

    #[test]
    fn daemon_messages_are_one_line() {
        assert_eq!(one_line("a\nb\tc"), "a b c");
        let long = "é".repeat(MAX_MESSAGE_CHARS + 5);
        assert_eq!(one_line(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
