//! One connection to an API's real-time endpoint.
//!
//! Owns: where an API's real-time endpoint is ([`Target`], [`derive_realtime_url`]), opening
//! an authenticated connection to it and waiting for AppSync's `connection_ack`
//! ([`connect`]).
//!
//! Promises:
//! - the URL is `realtime_url` when configured, else derived as AppSync clients derive it: a
//!   standard API URL (`https://<id>.appsync-api.<region>.amazonaws.com/graphql`) becomes
//!   `wss://<id>.appsync-realtime-api.<region>.amazonaws.com/graphql`, any other (a custom
//!   domain) gets `/realtime` appended; `https` becomes `wss` (`http`, loopback only, `ws`);
//! - authentication goes in the `header-<base64url JSON>` subprotocol next to `graphql-ws`, so
//!   no token or signature is ever part of a URL; AppSync must select `graphql-ws`;
//! - TLS is rustls with the `ring` provider and the OS roots (no ALPN: WebSocket runs over
//!   HTTP/1.1), built once; TCP + TLS + the handshake within `appsync.connect_timeout`, then
//!   `connection_ack` within `appsync.realtime.ack_timeout`;
//! - a `connection_error` before the ack is returned verbatim ([`ConnectError::Refused`]), for
//!   the client to see what AppSync said.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use url::Url;

use super::auth::{self, Credential};
use super::protocol::{self, Envelope};
use crate::config::{AppSyncApiConfig, AppSyncAuth, OperationType};
use crate::http::error_chain;

/// The socket type of an upstream connection.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `connectionTimeoutMs` when AppSync's ack carries none (Amplify's default too).
const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

/// One configured API as the real-time relay sees it.
#[derive(Debug)]
pub struct Target {
    /// The table name (a metric label).
    pub name: String,
    /// The GraphQL URL (what IAM signs, plus `/connect` for the connect).
    pub api_url: String,
    /// The real-time endpoint.
    pub realtime_url: Url,
    /// The GraphQL API's `host[:port]`.
    pub authority: String,
    /// The SigV4 region.
    pub region: String,
    /// How AppSync authenticates.
    pub auth: AppSyncAuth,
    /// `allowed_operations`, checked on every start.
    pub allowed_operations: Option<Vec<OperationType>>,
    /// Whether `/appsync/realtime` serves it.
    pub default: bool,
}

impl Target {
    /// From an API's configuration; `None` when its URL has no host (validation prevents it).
    pub fn new(config: &AppSyncApiConfig) -> Option<Self> {
        let url = &config.url;
        let host = url.host_str()?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let realtime_url = match &config.realtime_url {
            Some(u) => u.clone(),
            None => derive_realtime_url(url)?,
        };
        Some(Self {
            name: config.name.clone(),
            api_url: url.as_str().to_owned(),
            realtime_url,
            authority,
            region: config.region.clone(),
            auth: config.auth,
            allowed_operations: config.allowed_operations.clone(),
            default: config.default,
        })
    }
}

/// Whether `host` is `<26 word characters>.appsync-api.<region>.amazonaws.com[.cn]`.
fn standard_host(host: &str) -> bool {
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let mut labels = host.split('.');
    let (Some(id), Some("appsync-api"), Some(region), Some("amazonaws"), Some("com")) = (
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
    ) else {
        return false;
    };
    let tail_ok = matches!(
        (labels.next(), labels.next()),
        (None, _) | (Some("cn"), None)
    );
    let region_ok = region.split('-').count() >= 3 && region.split('-').all(word);
    id.len() == 26 && word(id) && region_ok && tail_ok
}

/// The real-time URL AppSync clients derive from a GraphQL URL (see the module docs).
pub fn derive_realtime_url(api: &Url) -> Option<Url> {
    let mut url = api.clone();
    let host = api.host_str()?;
    if standard_host(host) && api.path() == "/graphql" {
        let realtime = host.replacen("appsync-api", "appsync-realtime-api", 1);
        url.set_host(Some(&realtime)).ok()?;
    } else {
        let path = format!("{}/realtime", api.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    let scheme = if api.scheme() == "http" { "ws" } else { "wss" };
    url.set_scheme(scheme).ok()?;
    Some(url)
}

/// How the relay opens upstream connections (shared by every relay).
#[derive(Clone)]
pub struct Dialer {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    ack_timeout: Duration,
    config: WebSocketConfig,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .finish()
    }
}

/// The tungstenite settings of both sides: small read buffers (they are allocated up front,
/// per socket), messages written at once, the message cap, and bounded write buffering.
pub fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(max_message_bytes.saturating_mul(2))
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

impl Dialer {
    /// A dialer with the OS root certificates (none found: wss fails, ws on loopback works).
    pub fn new(connect_timeout: Duration, ack_timeout: Duration, max_message_bytes: usize) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!(
                "no OS root certificates found; wss AppSync real-time endpoints will fail"
            );
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let tls = match tls {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the real-time TLS configuration");
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }
        };
        Self {
            tls: Arc::new(tls),
            connect_timeout,
            ack_timeout,
            config: websocket_config(max_message_bytes),
        }
    }
}

impl Dialer {
    /// A connector with the dialer's TLS configuration (for other real-time clients).
    pub fn connector(&self) -> Connector {
        Connector::Rustls(self.tls.clone())
    }
}

/// An acknowledged upstream connection.
pub struct Upstream {
    /// The socket.
    pub socket: Socket,
    /// What it was authenticated with (starts on it are authorized with the same).
    pub credential: Credential,
    /// When it was acknowledged.
    pub connected_at: SystemTime,
    /// AppSync's `connectionTimeoutMs`: the longest it may stay silent.
    pub silence_limit: Duration,
}

/// Why no upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// AppSync answered the connect with `connection_error` (the message, verbatim).
    #[error("AppSync refused the connection")]
    Refused(Utf8Bytes),
    /// No connection or no ack in time.
    #[error("AppSync did not answer within {}ms", .0.as_millis())]
    Timeout(Duration),
    /// The connection failed or AppSync closed it during the handshake.
    #[error("cannot reach AppSync's real-time endpoint: {0}")]
    Unreachable(String),
    /// The authorization could not be built.
    #[error(transparent)]
    Signing(#[from] auth::SigningError),
}

/// Connects to `target` as `credential` at `now`, sends `connection_init` and waits for the ack.
pub async fn connect(
    dialer: &Dialer,
    target: &Target,
    credential: Credential,
    now: SystemTime,
) -> Result<Upstream, ConnectError> {
    let header = auth::connect_header(target, &credential, now)?;
    let protocols = format!(
        "{},header-{}",
        protocol::SUBPROTOCOL,
        protocol::encode_header(&header)
    );
    let mut request = target
        .realtime_url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    let mut value =
        HeaderValue::from_str(&protocols).map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    value.set_sensitive(true);
    request
        .headers_mut()
        .insert("sec-websocket-protocol", value);
    let connector = Connector::Rustls(dialer.tls.clone());
    let handshake = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(dialer.config),
        true,
        Some(connector),
    );
    let (mut socket, response) = match tokio::time::timeout(dialer.connect_timeout, handshake).await
    {
        Err(_) => return Err(ConnectError::Timeout(dialer.connect_timeout)),
        Ok(Err(tungstenite::Error::Http(r))) => {
            return Err(ConnectError::Unreachable(format!(
                "the upgrade was answered {}",
                r.status()
            )));
        }
        Ok(Err(e)) => return Err(ConnectError::Unreachable(error_chain(&e))),
        Ok(Ok(connected)) => connected,
    };
    let selected = response.headers().get("sec-websocket-protocol");
    if selected.map(HeaderValue::as_bytes) != Some(protocol::SUBPROTOCOL.as_bytes()) {
        return Err(ConnectError::Unreachable(
            "AppSync did not select the graphql-ws subprotocol".to_owned(),
        ));
    }
    socket
        .send(Message::text(protocol::connection_init()))
        .await
        .map_err(|e| ConnectError::Unreachable(error_chain(&e)))?;
    let silence_limit = match tokio::time::timeout(dialer.ack_timeout, ack(&mut socket)).await {
        Err(_) => return Err(ConnectError::Timeout(dialer.ack_timeout)),
        Ok(result) => result?,
    };
    Ok(Upstream {
        socket,
        credential,
        connected_at: now,
        silence_limit,
    })
}

/// Waits for `connection_ack` (skipping `ka`s); returns its `connectionTimeoutMs`.
async fn ack(socket: &mut Socket) -> Result<Duration, ConnectError> {
    loop {
        let text = match socket.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => {
                return Err(ConnectError::Unreachable(
                    "AppSync closed the connection before acknowledging it".to_owned(),
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ConnectError::Unreachable(error_chain(&e))),
        };
        let Some(envelope) = Envelope::parse(text.as_str()) else {
            continue;
        };
        match envelope.kind() {
            "connection_ack" => {
                let value: serde_json::Value =
                    serde_json::from_str(text.as_str()).unwrap_or_default();
                let ms = value
                    .pointer("/payload/connectionTimeoutMs")
                    .and_then(serde_json::Value::as_u64);
                return Ok(ms.map_or(DEFAULT_CONNECTION_TIMEOUT, Duration::from_millis));
            }
            "connection_error" => return Err(ConnectError::Refused(text)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_urls_are_derived_as_amplify_derives_them() {
        let derive = |u: &str| {
            derive_realtime_url(&Url::parse(u).expect("url"))
                .expect("derived")
                .to_string()
        };
        assert_eq!(
            derive(
                "https://abcdefghijklmnopqrstuvwxyz.appsync-api.eu-west-1.amazonaws.com/graphql"
            ),
            "wss://abcdefghijklmnopqrstuvwxyz.appsync-realtime-api.eu-west-1.amazonaws.com/graphql"
        );
        assert_eq!(
            derive(
                "https://abcdefghijklmnopqrstuvwxyz.appsync-api.cn-north-1.amazonaws.com.cn/graphql"
            ),
            "wss://abcdefghijklmnopqrstuvwxyz.appsync-realtime-api.cn-north-1.amazonaws.com.cn/graphql"
        );
        assert_eq!(
            derive("https://api.example.com/graphql"),
            "wss://api.example.com/graphql/realtime"
        );
        // Not 26 characters: a custom domain as far as clients can tell.
        assert_eq!(
            derive("https://short.appsync-api.us-east-1.amazonaws.com/graphql"),
            "wss://short.appsync-api.us-east-1.amazonaws.com/graphql/realtime"
        );
        assert_eq!(
            derive("http://127.0.0.1:8900/graphql"),
            "ws://127.0.0.1:8900/graphql/realtime"
        );
    }
}
