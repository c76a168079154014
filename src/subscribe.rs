//! `credbroker subscribe`: a small AppSync real-time client, to watch subscription events
//! arrive through credbroker (or any AppSync real-time endpoint that takes an `Authorization`
//! in the `header-` subprotocol) without installing anything.
//!
//! Owns: the command's protocol loop (connect, `connection_init`, one `start`, events, `stop`),
//! its output and its reconnects.
//!
//! Promises:
//! - the token is read from `--token-file` (whitespace around it ignored) on every connect and
//!   reconnect, never from the command line (visible to every user in `ps`), and never printed;
//!   it travels as `{"Authorization": <token>, "host": <URL authority>}` in the
//!   `header-<base64url>` subprotocol, as Amplify sends it;
//! - stderr says `connected (connectionTimeoutMs=…)`, `subscribed`, and how a connection ended
//!   (code and reason); stdout gets each event's `payload.data` as one JSON line;
//! - an `error` for the subscription, a `connection_error` or a refused upgrade end the command
//!   with an error; a server close too, unless `--reconnect` is given and the code says to
//!   reconnect (1001, 1011, 4001, 4002), then it reconnects after one second;
//! - the first Ctrl-C (or SIGTERM) sends `stop`, closes with 1000 and ends successfully, as
//!   does receiving `--count` events.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderValue;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::appsync::realtime::protocol;
use crate::appsync::realtime::upstream::{Dialer, Socket, websocket_config};

/// The subscription `credbroker demo` suggests.
pub const DEFAULT_QUERY: &str = "subscription { onCreateTodo { id content owner } }";

/// Close codes after which `--reconnect` reconnects.
const RECONNECT_CODES: [u16; 4] = [1001, 1011, 4001, 4002];

/// How long to wait for the upgrade, the ack and the start's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// What to subscribe to, and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The real-time URL (`ws://127.0.0.1:8900/appsync/realtime`).
    pub url: String,
    /// The file holding the ID token or session handle.
    pub token_file: PathBuf,
    /// The subscription document.
    pub query: String,
    /// Its variables (a JSON object).
    pub variables: Value,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Reconnect after a close that says to.
    pub reconnect: bool,
}

/// Why the command ended unsuccessfully.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The token file could not be read or is empty.
    #[error("cannot use the token file {path}: {why}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The URL is not a `ws://` or `wss://` URL.
    #[error("--url {0:?} is not a ws:// or wss:// URL")]
    Url(String),
    /// The upgrade was answered with an HTTP error.
    #[error("the upgrade was refused: {status} {code}: {message}")]
    Refused {
        /// The status.
        status: u16,
        /// The body's `Code`.
        code: String,
        /// The body's `Message`.
        message: String,
    },
    /// No connection could be made, or it broke.
    #[error("{0}")]
    Connection(String),
    /// The server answered `connection_error`.
    #[error("the connection was refused: {0}")]
    ConnectionError(String),
    /// The subscription got an `error`.
    #[error("the subscription got an error: {0}")]
    Subscription(String),
    /// The server closed the connection.
    #[error("the connection was closed: {code} {reason}")]
    Closed {
        /// The close code.
        code: u16,
        /// Its reason.
        reason: String,
    },
}

/// A boxed future the loop can poll repeatedly.
type Stop<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Runs until `--count` events, `shutdown`, or an error; events go to `out`.
pub async fn run(
    options: &Options,
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SubscribeError> {
    let mut shutdown: Stop<'_> = Box::pin(shutdown);
    let mut received = 0;
    loop {
        match session(options, out, &mut shutdown, &mut received).await {
            Err(SubscribeError::Closed { code, reason })
                if options.reconnect && RECONNECT_CODES.contains(&code) =>
            {
                eprintln!("closed: {code} {reason}; reconnecting in 1 s");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            other => return other,
        }
    }
}

fn read_token(options: &Options) -> Result<String, SubscribeError> {
    let fail = |why: String| SubscribeError::TokenFile {
        path: options.token_file.clone(),
        why,
    };
    let text = std::fs::read_to_string(&options.token_file).map_err(|e| fail(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    Ok(token.to_owned())
}

/// `{"Authorization", "host"}` for `url`.
fn authorization(url: &url::Url, token: &str) -> Result<Value, SubscribeError> {
    let host = url
        .host_str()
        .ok_or_else(|| SubscribeError::Url(url.to_string()))?;
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok(json!({ "Authorization": token, "host": host }))
}

async fn connect(options: &Options, auth: &Value) -> Result<Socket, SubscribeError> {
    let bad_url = || SubscribeError::Url(options.url.clone());
    let mut request = options
        .url
        .as_str()
        .into_client_request()
        .map_err(|_| bad_url())?;
    let protocols = format!(
        "{},header-{}",
        protocol::SUBPROTOCOL,
        protocol::encode_header(auth)
    );
    let mut value = HeaderValue::from_str(&protocols).map_err(|_| bad_url())?;
    value.set_sensitive(true);
    request
        .headers_mut()
        .insert("sec-websocket-protocol", value);
    let max = 16 * 1024 * 1024;
    let dialer = Dialer::new(ANSWER_TIMEOUT, ANSWER_TIMEOUT, max);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(websocket_config(max)),
        true,
        Some(dialer.connector()),
    );
    match tokio::time::timeout(ANSWER_TIMEOUT, connecting).await {
        Err(_) => Err(SubscribeError::Connection(format!(
            "no answer from {} within {}s",
            options.url,
            ANSWER_TIMEOUT.as_secs()
        ))),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body: Value = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            let text = |k: &str| {
                body.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Err(SubscribeError::Refused {
                status: response.status().as_u16(),
                code: text("Code"),
                message: text("Message"),
            })
        }
        Ok(Err(e)) => Err(SubscribeError::Connection(format!(
            "cannot connect to {}: {e}",
            options.url
        ))),
    }
}

/// The next text message as JSON (`ka`s included); `Err` when the socket ended.
async fn next_message(socket: &mut Socket) -> Result<Value, SubscribeError> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(t))) => {
                return Ok(serde_json::from_str(t.as_str()).unwrap_or_default());
            }
            Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Err(SubscribeError::Connection(format!("connection lost: {e}")));
            }
            None => return Err(SubscribeError::Connection("connection lost".to_owned())),
        }
    }
}

fn closed(frame: Option<CloseFrame>) -> SubscribeError {
    match frame {
        Some(f) => SubscribeError::Closed {
            code: u16::from(f.code),
            reason: f.reason.to_string(),
        },
        None => SubscribeError::Closed {
            code: 1005,
            reason: "(no close frame)".to_owned(),
        },
    }
}

/// A message's `type` (`""` when absent).
fn kind(message: &Value) -> &str {
    message
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn errors_of(message: &Value) -> String {
    message
        .pointer("/payload/errors")
        .map_or_else(|| message.to_string(), Value::to_string)
}

async fn send(socket: &mut Socket, message: String) -> Result<(), SubscribeError> {
    socket
        .send(Message::text(message))
        .await
        .map_err(|e| SubscribeError::Connection(format!("connection lost: {e}")))
}

/// Waits (skipping `ka`s) for the answer to what was just sent.
async fn answer(socket: &mut Socket, what: &str) -> Result<Value, SubscribeError> {
    let waiting = async {
        loop {
            let message = next_message(socket).await?;
            if kind(&message) != "ka" {
                return Ok(message);
            }
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, waiting)
        .await
        .map_err(|_| SubscribeError::Connection(format!("no answer to {what} within 15 s")))?
}

/// One connection: handshake, start, events until the end.
async fn session(
    options: &Options,
    out: &mut (dyn Write + Send),
    shutdown: &mut Stop<'_>,
    received: &mut u64,
) -> Result<(), SubscribeError> {
    let url =
        url::Url::parse(&options.url).map_err(|_| SubscribeError::Url(options.url.clone()))?;
    let auth = authorization(&url, &read_token(options)?)?;
    let mut socket = connect(options, &auth).await?;
    send(&mut socket, protocol::connection_init()).await?;
    let ack = answer(&mut socket, "connection_init").await?;
    match kind(&ack) {
        "connection_ack" => {}
        "connection_error" => return Err(SubscribeError::ConnectionError(errors_of(&ack))),
        _ => {
            return Err(SubscribeError::Connection(format!(
                "unexpected answer: {ack}"
            )));
        }
    }
    let timeout = ack
        .pointer("/payload/connectionTimeoutMs")
        .and_then(Value::as_u64)
        .unwrap_or(300_000);
    eprintln!("connected (connectionTimeoutMs={timeout})");
    let data = json!({ "query": options.query, "variables": options.variables }).to_string();
    send(&mut socket, protocol::start("1", &data, auth)).await?;
    let started = answer(&mut socket, "start").await?;
    match kind(&started) {
        "start_ack" => eprintln!("subscribed"),
        "error" => return Err(SubscribeError::Subscription(errors_of(&started))),
        _ => {
            return Err(SubscribeError::Connection(format!(
                "unexpected answer: {started}"
            )));
        }
    }
    events(
        options,
        &mut socket,
        out,
        shutdown,
        received,
        Duration::from_millis(timeout),
    )
    .await
}

/// Prints events until `--count`, `shutdown`, or the end of the connection.
async fn events(
    options: &Options,
    socket: &mut Socket,
    out: &mut (dyn Write + Send),
    shutdown: &mut Stop<'_>,
    received: &mut u64,
    silence_limit: Duration,
) -> Result<(), SubscribeError> {
    loop {
        if options.count.is_some_and(|n| *received >= n) {
            return finish(socket).await;
        }
        let message = tokio::select! {
            () = &mut *shutdown => return finish(socket).await,
            m = tokio::time::timeout(silence_limit, next_message(socket)) => match m {
                Ok(m) => m?,
                Err(_) => {
                    return Err(SubscribeError::Connection(format!(
                        "no keep-alive within connectionTimeoutMs ({}s)",
                        silence_limit.as_secs()
                    )));
                }
            },
        };
        match kind(&message) {
            "data" => {
                let data = message
                    .pointer("/payload/data")
                    .cloned()
                    .unwrap_or_default();
                writeln!(out, "{data}")
                    .and_then(|()| out.flush())
                    .map_err(|e| SubscribeError::Connection(format!("cannot write: {e}")))?;
                *received += 1;
            }
            "error" => return Err(SubscribeError::Subscription(errors_of(&message))),
            "connection_error" => {
                return Err(SubscribeError::ConnectionError(errors_of(&message)));
            }
            "complete" => return finish(socket).await,
            _ => {}
        }
    }
}

/// `stop`, then close 1000.
async fn finish(socket: &mut Socket) -> Result<(), SubscribeError> {
    let _ = send(socket, protocol::stop("1")).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    Ok(())
}
