//! AppSync's real-time protocol as a client: connect with the authorization in the
//! `header-<base64url JSON>` subprotocol (as Amplify v6 sends it), `connection_init`, one
//! `start`; SigV4 authorization objects signed here for the direct IAM client.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderValue;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::upstream::Upstream;
use crate::util::{self, HttpClient};

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SUBSCRIPTION: &str = "subscription OnCreate { onCreateTodo { id content owner } }";
/// Longest wait for any one answer; a hang becomes an error, not a figure.
pub(super) const ANSWER: Duration = Duration::from_secs(30);

/// Opens `url` with `header` in the `header-` subprotocol.
async fn connect(url: &str, header: &Value) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let protocols = format!(
        "graphql-ws,header-{}",
        URL_SAFE_NO_PAD.encode(header.to_string())
    );
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protocols).map_err(|e| e.to_string())?,
    );
    // Small read buffers: this process holds thousands of client sockets (not measured).
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(ANSWER, connecting).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("{url}: upgrade failed: {e}")),
        Err(_) => Err(format!("{url}: no upgrade answer within 30 s")),
    }
}

/// The next message other than `ka`.
pub(super) async fn next_message(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let message = tokio::time::timeout(ANSWER, ws.next())
            .await
            .map_err(|_| "no message within 30 s".to_owned())?;
        match message {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if v["type"] != "ka" {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the socket ended".to_owned()),
        }
    }
}

async fn send(ws: &mut Ws, message: Value) -> Result<(), String> {
    ws.send(Message::text(message.to_string()))
        .await
        .map_err(|e| e.to_string())
}

/// The subscription's `data` string (what an IAM `start` signature covers).
fn start_data() -> String {
    json!({ "query": SUBSCRIPTION, "variables": {} }).to_string()
}

/// `connection_init` → `connection_ack`, then `start` of `s1` → `start_ack`.
async fn subscribe(ws: &mut Ws, authorization: Value) -> Result<(), String> {
    send(ws, json!({ "type": "connection_init" })).await?;
    let ack = next_message(ws).await?;
    if ack["type"] != "connection_ack" {
        return Err(format!("connection_init answered {ack}"));
    }
    let start = json!({
        "id": "s1",
        "type": "start",
        "payload": { "data": start_data(), "extensions": { "authorization": authorization } },
    });
    send(ws, start).await?;
    let answer = next_message(ws).await?;
    if answer != json!({ "type": "start_ack", "id": "s1" }) {
        return Err(format!("start answered {answer}"));
    }
    Ok(())
}

/// How one client connects and subscribes: URL, connect header, start authorization.
pub(super) struct Route {
    pub(super) url: String,
    pub(super) header: Value,
    pub(super) start: Value,
}

impl Route {
    /// A connected, acknowledged client with one live subscription `s1`.
    pub(super) async fn open(&self) -> Result<Ws, String> {
        let mut ws = connect(&self.url, &self.header).await?;
        subscribe(&mut ws, self.start.clone()).await?;
        Ok(ws)
    }
}

/// `{"Authorization": token, "host": host}` for the connect and the start alike: OIDC
/// straight to AppSync, and any client of credbroker (which replaces the start's).
pub(super) fn token_route(url: String, token: &str, host: &str) -> Route {
    let auth = json!({ "Authorization": token, "host": host });
    Route {
        url,
        header: auth.clone(),
        start: auth,
    }
}

/// SigV4 headers for `POST url` with `body` and the `fixed` headers (which are included).
pub(crate) fn sigv4(
    credentials: &Credentials,
    region: &str,
    url: &str,
    fixed: &[(&str, &str)],
    body: &str,
) -> Result<Vec<(String, String)>, String> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("appsync")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = SignableRequest::new(
        "POST",
        url,
        fixed.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let mut out: Vec<(String, String)> = fixed
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for (k, v) in instructions.headers() {
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// An IAM authorization object as Amplify v6 builds it, for `POST url` with `body`.
fn iam_object(u: &Upstream, c: &Credentials, url: &str, body: &str) -> Result<Value, String> {
    let fixed = [
        ("accept", "application/json, text/javascript"),
        ("content-encoding", "amz-1.0"),
        ("content-type", "application/json; charset=UTF-8"),
        ("host", u.authority()),
    ];
    let headers = sigv4(c, &u.appsync_region, url, &fixed, body)?;
    Ok(Value::Object(
        headers.into_iter().map(|(k, v)| (k, json!(v))).collect(),
    ))
}

/// IAM straight to the emulator: the connect signed over `…/graphql/connect` with body `{}`,
/// the start over `/graphql` with its `data`.
pub(super) fn iam_direct_route(u: &Upstream, c: &Credentials) -> Result<Route, String> {
    Ok(Route {
        url: u.realtime_url.clone(),
        header: iam_object(u, c, &format!("{}/connect", u.appsync_url), "{}")?,
        start: iam_object(u, c, &u.appsync_url, &start_data())?,
    })
}

/// The caller's AWS credentials, from the broker's container endpoint.
pub(crate) async fn credentials(
    client: &HttpClient,
    broker: &str,
    token: &str,
) -> Result<Credentials, String> {
    let url = format!("http://{broker}/v1/credentials");
    let (status, body) = util::get(client, &url, token).await?;
    if status != 200 {
        return Err(format!("/v1/credentials answered {status}"));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let text = |k: &str| v[k].as_str().map(str::to_owned).ok_or(format!("no {k}"));
    Ok(Credentials::new(
        text("AccessKeyId")?,
        text("SecretAccessKey")?,
        Some(text("Token")?),
        None,
        "bench",
    ))
}
