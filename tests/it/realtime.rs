//! AppSync real time through the broker: a raw tokio-tungstenite client (written here, sharing
//! nothing with the implementation) against `/appsync/…/realtime`, the broker relaying to the
//! emulated AppSync's real-time endpoint. OIDC mode and the surface's checks; IAM, limits and
//! lifecycle are in `realtime_iam.rs` and `realtime_lifecycle.rs`.

#![allow(dead_code)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use credbroker_emulators::oidc::TokenSpec;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{Harness, Reply, Tweaks};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub const SUB: &str = "subscription OnCreate { onCreateTodo { id content owner } }";
pub const CREATE: &str =
    "mutation Create($c: String!) { createTodo(content: $c) { id content owner } }";

/// Where the client puts its token.
#[derive(Debug, Clone, Copy)]
pub enum Placement {
    /// `Authorization: <token>` on the upgrade request.
    Header,
    /// `Sec-WebSocket-Protocol: graphql-ws,header-<base64url JSON>` (Amplify v6).
    Subprotocol,
    /// `?header=<standard base64 JSON, unescaped>&payload=e30=` (Amplify before Aug 2024).
    QueryStd,
    /// `?header=<standard base64, percent-encoded>&payload=e30%3D`.
    QueryPercent,
}

pub async fn with_realtime(extra: &str) -> Harness {
    Harness::with(Tweaks {
        appsync: Some(extra.to_owned()),
        ..Tweaks::default()
    })
    .await
}

pub fn ws_url(h: &Harness, path: &str) -> String {
    format!("ws://{}{path}", h.running().container_addr)
}

/// The header JSON as clients build it; `x` forces `+`, `/` and padding into standard base64
/// (a run of six `?` holds an aligned `???` → `Pz8/`, of six `>` an aligned `>>>` → `Pj4+`).
fn header_json(h: &Harness, token: &str) -> String {
    (0..3)
        .map(|pad| {
            json!({
                "Authorization": token,
                "host": h.running().container_addr.to_string(),
                "x": format!("??????>>>>>>{}", ".".repeat(pad)),
            })
            .to_string()
        })
        .find(|j| j.len() % 3 != 0)
        .expect("one of three lengths is not a multiple of 3")
}

/// Connects with `token` placed as `placement`.
pub async fn connect(
    h: &Harness,
    path: &str,
    placement: Placement,
    token: &str,
) -> Result<Ws, tungstenite::Error> {
    let base = ws_url(h, path);
    let (url, protocols, authorization) = match placement {
        Placement::Header => (base, "graphql-ws".to_owned(), Some(token.to_owned())),
        Placement::Subprotocol => {
            let encoded = URL_SAFE_NO_PAD.encode(header_json(h, token));
            (base, format!("graphql-ws,header-{encoded}"), None)
        }
        Placement::QueryStd => {
            let encoded = STANDARD.encode(header_json(h, token));
            assert!(encoded.contains('+') && encoded.contains('/') && encoded.ends_with('='));
            (
                format!("{base}?header={encoded}&payload=e30="),
                "graphql-ws".to_owned(),
                None,
            )
        }
        Placement::QueryPercent => {
            let encoded = STANDARD
                .encode(header_json(h, token))
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D");
            (
                format!("{base}?header={encoded}&payload=e30%3D"),
                "graphql-ws".to_owned(),
                None,
            )
        }
    };
    connect_raw(&url, &protocols, authorization.as_deref()).await
}

pub async fn connect_raw(
    url: &str,
    protocols: &str,
    authorization: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut request = url.into_client_request().expect("request");
    let headers = request.headers_mut();
    if !protocols.is_empty() {
        headers.insert(
            "sec-websocket-protocol",
            protocols.parse().expect("header value"),
        );
    }
    if let Some(a) = authorization {
        headers.insert("authorization", a.parse().expect("header value"));
    }
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("an upgrade answer within 10 s");
    connected.map(|(ws, response)| {
        if !protocols.is_empty() {
            assert_eq!(
                response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.as_bytes()),
                Some(&b"graphql-ws"[..]),
                "only graphql-ws is selected, never the header- entry"
            );
        }
        ws
    })
}

/// The refusal of an upgrade: status and `Code`.
pub fn refusal(result: Result<Ws, tungstenite::Error>) -> (u16, String) {
    match result {
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let json: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
            (
                response.status().as_u16(),
                json["Code"].as_str().unwrap_or_default().to_owned(),
            )
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the upgrade was accepted"),
    }
}

pub async fn send_json(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string()))
        .await
        .expect("send");
}

/// What ends a socket: the close frame's code and reason, or `None` without one.
pub type Closed = Option<(u16, String)>;

/// The next message other than `ka`, or how the socket ended. A 10 s guard turns a hang into
/// a failure (not a timing assertion).
pub async fn next_json(ws: &mut Ws) -> Result<Value, Closed> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s");
        match message {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v["type"] != "ka" {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map(|f: CloseFrame| (u16::from(f.code), f.reason.to_string())));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// The close code the socket ends with next (messages before it skipped).
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match next_json(ws).await {
            Ok(_) => continue,
            Err(closed) => return closed.map(|(code, _)| code),
        }
    }
}

pub async fn init(ws: &mut Ws) -> Value {
    send_json(ws, json!({ "type": "connection_init" })).await;
    next_json(ws).await.expect("an answer to connection_init")
}

pub fn start_message(id: &str, query: &str, extensions: Value) -> Value {
    let data = json!({ "query": query, "variables": {} }).to_string();
    json!({ "id": id, "type": "start", "payload": { "data": data, "extensions": extensions } })
}

/// Starts `query` as `id` (with an Amplify-like authorization the broker must replace) and
/// returns the answer (`start_ack` or `error`).
pub async fn start(ws: &mut Ws, id: &str, query: &str) -> Value {
    let extensions = json!({ "authorization": { "Authorization": "placeholder", "host": "x" } });
    send_json(ws, start_message(id, query, extensions)).await;
    next_json(ws).await.expect("an answer to start")
}

/// A connected, acknowledged client with one subscription `s1` to `onCreateTodo`.
pub async fn subscribed(h: &Harness, path: &str, token: &str) -> Ws {
    let mut ws = connect(h, path, Placement::Subprotocol, token)
        .await
        .expect("upgrade accepted");
    let ack = init(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let started = start(&mut ws, "s1", SUB).await;
    assert_eq!(started, json!({ "type": "start_ack", "id": "s1" }));
    ws
}

/// Creates a todo through the broker's HTTP path.
pub async fn create(h: &Harness, path: &str, token: &str, content: &str) -> Value {
    let body = json!({ "query": CREATE, "variables": { "c": content } }).to_string();
    let reply: Reply = h
        .post(
            path,
            &[
                ("authorization", token),
                ("content-type", "application/json"),
            ],
            &body,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["data"]["createTodo"].clone()
}

/// The `onCreateTodo` of the next message, which must be `data` for `id`.
pub async fn event(ws: &mut Ws, id: &str) -> Value {
    let m = next_json(ws).await.expect("data");
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("data"), Some(id)),
        "{m}"
    );
    m["payload"]["data"]["onCreateTodo"].clone()
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value of a metric series in the broker's exposition.
pub fn metric(h: &Harness, series: &str) -> f64 {
    let text = h.running().broker.render_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn oidc_subscribers_receive_their_events_through_the_broker() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let mut ws = connect(&h, "/appsync/realtime", Placement::Subprotocol, &alice)
        .await
        .expect("upgrade");
    let ack = init(&mut ws).await;
    assert_eq!(
        ack,
        json!({ "type": "connection_ack", "payload": { "connectionTimeoutMs": 300_000 } })
    );
    assert_eq!(
        start(&mut ws, "s1", SUB).await,
        json!({ "type": "start_ack", "id": "s1" })
    );

    let made = create(&h, "/appsync/graphql", &alice, "hello").await;
    let todo = event(&mut ws, "s1").await;
    assert_eq!(todo, made, "the event is the created todo");
    assert_eq!(todo["owner"], "auth0|alice");

    // stop → complete; nothing more arrives for it.
    send_json(&mut ws, json!({ "type": "stop", "id": "s1" })).await;
    assert_eq!(
        next_json(&mut ws).await.expect("complete"),
        json!({ "type": "complete", "id": "s1" })
    );

    let stats = h.appsync().stats();
    assert_eq!((stats.realtime_authorized, stats.realtime_starts), (1, 1));
    assert_eq!(
        h.credential_calls(),
        0,
        "OIDC mode needs no AWS credentials"
    );
    assert_eq!(
        metric(
            &h,
            "credbroker_appsync_realtime_upgrades_total{api=\"oidc\",outcome=\"ok\"}"
        ),
        1.0
    );
    h.stop().await;
}

#[tokio::test]
async fn every_placement_of_the_token_works_on_every_path() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let placements = [
        (Placement::Header, "/appsync/realtime", alice.clone()),
        (
            Placement::Header,
            "/appsync/oidc/realtime",
            format!("Bearer {alice}"),
        ),
        (
            Placement::Subprotocol,
            "/appsync/graphql/realtime",
            alice.clone(),
        ),
        (
            Placement::Subprotocol,
            "/appsync/oidc/graphql/realtime",
            format!("Bearer {alice}"),
        ),
        (Placement::QueryStd, "/appsync/realtime", alice.clone()),
        (
            Placement::QueryPercent,
            "/appsync/oidc/realtime",
            alice.clone(),
        ),
    ];
    for (i, (placement, path, token)) in placements.iter().enumerate() {
        let mut ws = connect(&h, path, *placement, token)
            .await
            .unwrap_or_else(|e| panic!("{placement:?} {path}: {e}"));
        assert_eq!(
            init(&mut ws).await["type"],
            "connection_ack",
            "{placement:?}"
        );
        let id = format!("p{i}");
        assert_eq!(start(&mut ws, &id, SUB).await["type"], "start_ack");
        create(&h, "/appsync/graphql", &alice, &id).await;
        assert_eq!(
            event(&mut ws, &id).await["content"],
            id.as_str(),
            "{placement:?}"
        );
    }
    // What reached AppSync is always the raw token, never "Bearer …".
    // The host is the GraphQL API's, not credbroker's nor the real-time endpoint's.
    let raw = sha256_hex(&alice);
    let api_host = h
        .appsync()
        .url()
        .trim_start_matches("http://")
        .trim_end_matches("/graphql")
        .to_owned();
    let received = h.appsync().received_connect_authorizations();
    assert_eq!(received.len(), placements.len());
    for r in received {
        assert_eq!(r.keys, ["Authorization", "host"]);
        assert_eq!(r.sha256["Authorization"], raw);
        assert_eq!(r.sha256["host"], sha256_hex(&api_host));
    }
    h.stop().await;
}

#[tokio::test]
async fn users_never_see_each_others_events() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let bob = h.issuer.token_for("auth0|bob");
    let mut a = subscribed(&h, "/appsync/realtime", &alice).await;
    let mut b = subscribed(&h, "/appsync/realtime", &bob).await;
    for round in 0..3 {
        // The other user's event first: a leak would arrive before the user's own.
        create(&h, "/appsync/graphql", &bob, &format!("bob {round}")).await;
        create(&h, "/appsync/graphql", &alice, &format!("alice {round}")).await;
        let mine = event(&mut a, "s1").await;
        assert_eq!(mine["content"], format!("alice {round}"));
        assert_eq!(mine["owner"], "auth0|alice");
        let theirs = event(&mut b, "s1").await;
        assert_eq!(theirs["content"], format!("bob {round}"));
    }
    h.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_at_the_upgrade_and_appsync_is_never_contacted() {
    // A margin above tokens.min_token_validity (60 s), so TokenExpiringSoon can be reached.
    let h = with_realtime("token_expiry_margin = \"90s\"").await;
    let now = std::time::SystemTime::now();
    let forged = h.issuer.mint(&TokenSpec {
        tamper_payload: true,
        ..TokenSpec::for_subject("auth0|alice")
    });
    let expired = h.issuer.mint(&TokenSpec {
        issued_at: Some(now - Duration::from_secs(7200)),
        lifetime: Some(Duration::from_secs(3600)),
        ..TokenSpec::for_subject("auth0|alice")
    });
    let expiring = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(75)),
        ..TokenSpec::for_subject("auth0|alice")
    });
    let cases = [
        (Placement::Header, String::new(), 401, "MissingToken"),
        (
            Placement::Subprotocol,
            forged.clone(),
            401,
            "InvalidSignature",
        ),
        (Placement::Header, forged, 401, "InvalidSignature"),
        (Placement::QueryStd, expired.clone(), 401, "TokenExpired"),
        (Placement::Subprotocol, expired, 401, "TokenExpired"),
        (
            Placement::Subprotocol,
            "cbs_".to_owned() + &"A".repeat(43),
            401,
            "InvalidSession",
        ),
        (Placement::Subprotocol, expiring, 401, "TokenExpiringSoon"),
        (
            Placement::Subprotocol,
            "AWS4-HMAC-SHA256 Credential=x/y".to_owned(),
            401,
            "MissingToken",
        ),
    ];
    for (placement, token, status, code) in &cases {
        let refused = refusal(connect(&h, "/appsync/realtime", *placement, token).await);
        assert_eq!(
            refused,
            (*status, (*code).to_owned()),
            "{placement:?} {code}"
        );
    }
    // Malformed sources: 400, never a fall-through to another source.
    let url = ws_url(&h, "/appsync/realtime");
    for protocols in ["graphql-ws,header-%%%", "graphql-ws,header-W10"] {
        let refused = refusal(connect_raw(&url, protocols, None).await);
        assert_eq!(refused, (400, "MalformedRequest".to_owned()), "{protocols}");
    }
    let no_key = URL_SAFE_NO_PAD.encode(r#"{"host":"x"}"#);
    let refused = refusal(connect_raw(&url, &format!("graphql-ws,header-{no_key}"), None).await);
    assert_eq!(refused, (400, "MalformedRequest".to_owned()));
    // Subprotocols without graphql-ws.
    let alice = h.issuer.token_for("auth0|alice");
    let refused = refusal(connect_raw(&url, "graphql-transport-ws", Some(&alice)).await);
    assert_eq!(refused, (400, "UnsupportedSubprotocol".to_owned()));

    let stats = h.appsync().stats();
    assert_eq!(stats.connections, 0, "AppSync was never contacted");
    assert_eq!(
        metric(
            &h,
            "credbroker_appsync_realtime_upgrades_total{api=\"oidc\",outcome=\"unauthenticated\"}"
        ),
        8.0
    );
    h.stop().await;
}

#[tokio::test]
async fn the_routes_refuse_what_is_not_a_realtime_upgrade() {
    let h = with_realtime("").await;
    let base = format!("http://{}", h.running().container_addr);
    let get = h
        .request("GET", &format!("{base}/appsync/realtime"), &[])
        .await;
    assert_eq!(
        (get.status, get.code()),
        (426, "UpgradeRequired".to_owned())
    );
    let post = h.post("/appsync/realtime", &[], "{}").await;
    assert_eq!(
        (post.status, post.code()),
        (405, "MethodNotAllowed".to_owned())
    );
    assert_eq!(post.headers["allow"], "GET");
    let alice = h.issuer.token_for("auth0|alice");
    let unknown = refusal(connect(&h, "/appsync/nope/realtime", Placement::Header, &alice).await);
    assert_eq!(unknown, (404, "NoSuchApi".to_owned()));
    let mut request = ws_url(&h, "/appsync/realtime")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("x-forwarded-for", "10.0.0.1".parse().expect("value"));
    request
        .headers_mut()
        .insert("authorization", alice.parse().expect("value"));
    let forwarded = refusal(
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(ws, _)| ws),
    );
    assert_eq!(forwarded, (400, "ForwardedRequest".to_owned()));
    assert_eq!(h.appsync().stats().connections, 0);
    h.stop().await;
}

#[tokio::test]
async fn a_callers_own_extensions_never_reach_appsync() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let bob = h.issuer.token_for("auth0|bob");
    let mut ws = connect(&h, "/appsync/realtime", Placement::Subprotocol, &alice)
        .await
        .expect("upgrade");
    init(&mut ws).await;
    // On Alice's connection, a start that carries Bob's valid token and extra keys.
    let smuggled = json!({
        "authorization": { "Authorization": bob, "host": "evil.example", "x-api-key": "k" },
        "x-amz-user-agent": "aws-amplify/6",
    });
    send_json(&mut ws, start_message("s1", SUB, smuggled)).await;
    assert_eq!(next_json(&mut ws).await.expect("ack")["type"], "start_ack");

    let received = h.appsync().received_start_authorizations();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].keys,
        ["Authorization", "host"],
        "nothing of the caller's survives"
    );
    assert_eq!(received[0].sha256["Authorization"], sha256_hex(&alice));
    assert_ne!(received[0].sha256["Authorization"], sha256_hex(&bob));
    assert_ne!(received[0].sha256["host"], sha256_hex("evil.example"));

    // The subscription is Alice's: Bob's todo does not reach it, Alice's does.
    create(&h, "/appsync/graphql", &bob, "bob's").await;
    create(&h, "/appsync/graphql", &alice, "alice's").await;
    assert_eq!(event(&mut ws, "s1").await["owner"], "auth0|alice");
    h.stop().await;
}

#[tokio::test]
async fn allowed_operations_is_enforced_per_start() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let mut ws = connect(
        &h,
        "/appsync/readonly/realtime",
        Placement::Subprotocol,
        &alice,
    )
    .await
    .expect("upgrade");
    init(&mut ws).await;
    let refused = start(&mut ws, "s1", SUB).await;
    assert_eq!(
        (&refused["type"], &refused["id"]),
        (&json!("error"), &json!("s1")),
        "{refused}"
    );
    assert_eq!(
        refused["payload"]["errors"][0]["errorType"],
        "OperationNotAllowed"
    );
    let unreadable = start(&mut ws, "s2", "subscription {").await;
    assert_eq!(
        unreadable["payload"]["errors"][0]["errorType"],
        "MalformedRequest"
    );
    let stats = h.appsync().stats();
    assert_eq!(
        (stats.realtime_starts, stats.realtime_starts_refused),
        (0, 0),
        "nothing reached AppSync"
    );
    assert_eq!(
        metric(
            &h,
            "credbroker_appsync_realtime_starts_total{api=\"readonly\",outcome=\"operation_refused\"}"
        ),
        1.0
    );
    h.stop().await;
}

#[tokio::test]
async fn upstream_drops_and_refusals_reach_the_client() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let mut ws = subscribed(&h, "/appsync/realtime", &alice).await;
    h.appsync().faults().drop_realtime();
    assert_eq!(
        close_code(&mut ws).await,
        Some(1011),
        "an upstream drop is a 1011 close"
    );

    let mut ws = subscribed(&h, "/appsync/realtime", &alice).await;
    h.appsync()
        .faults()
        .close_realtime(4000, "closed by AppSync");
    let closed = next_json(&mut ws).await.expect_err("closed");
    assert_eq!(
        closed,
        Some((4000, "closed by AppSync".to_owned())),
        "codes pass through"
    );

    h.appsync().faults().refuse_next_realtime(1);
    let mut ws = connect(&h, "/appsync/realtime", Placement::Subprotocol, &alice)
        .await
        .expect("upgrade");
    send_json(&mut ws, json!({ "type": "connection_init" })).await;
    let answer = next_json(&mut ws).await.expect("connection_error");
    assert_eq!(answer["type"], "connection_error", "{answer}");
    assert_eq!(answer["payload"]["errors"][0]["errorCode"], 401);
    assert_eq!(close_code(&mut ws).await, Some(1000));

    // AppSync gone altogether: a retryable connection_error, then 1011.
    h.appsync().shutdown();
    let mut ws = connect(&h, "/appsync/realtime", Placement::Subprotocol, &alice)
        .await
        .expect("upgrade");
    let answer = next_json(&mut ws).await.expect("connection_error");
    assert_eq!(
        answer["payload"]["errors"][0]["errorType"],
        "UpstreamUnavailable"
    );
    assert_eq!(answer["payload"]["errors"][0]["errorCode"], 502);
    assert_eq!(close_code(&mut ws).await, Some(1011));
    h.stop().await;
}

#[tokio::test]
async fn protocol_misuse_gets_errors_not_disconnects() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let mut ws = subscribed(&h, "/appsync/realtime", &alice).await;
    let kinds = |v: Value| {
        v["payload"]["errors"][0]["errorType"]
            .as_str()
            .map(str::to_owned)
    };
    send_json(&mut ws, json!({ "type": "connection_init" })).await;
    assert_eq!(
        kinds(next_json(&mut ws).await.expect("e")).as_deref(),
        Some("UnsupportedOperation")
    );
    assert_eq!(
        kinds(start(&mut ws, "s1", SUB).await).as_deref(),
        Some("DuplicateSubscriptionId")
    );
    send_json(
        &mut ws,
        json!({ "type": "start", "payload": { "data": "{}" } }),
    )
    .await;
    let no_id = next_json(&mut ws).await.expect("e");
    assert!(no_id.get("id").is_none());
    assert_eq!(kinds(no_id).as_deref(), Some("MalformedRequest"));
    send_json(
        &mut ws,
        json!({ "id": "d", "type": "start", "payload": { "data": {"query": SUB} } }),
    )
    .await;
    assert_eq!(
        kinds(next_json(&mut ws).await.expect("e")).as_deref(),
        Some("MalformedRequest")
    );
    ws.send(Message::text("not json")).await.expect("send");
    assert_eq!(
        kinds(next_json(&mut ws).await.expect("e")).as_deref(),
        Some("UnsupportedOperation")
    );
    // AppSync's own refusal of a start passes through verbatim.
    let upstream = start(&mut ws, "v", "subscription { onDeleteTodo { id } }").await;
    assert_eq!(
        upstream["payload"]["errors"][0]["errorType"],
        "ValidationError"
    );
    // Still subscribed.
    create(&h, "/appsync/graphql", &alice, "still here").await;
    assert_eq!(event(&mut ws, "s1").await["content"], "still here");
    // A binary frame ends the connection with 1003.
    ws.send(Message::binary(vec![1, 2, 3])).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(1003));
    h.stop().await;
}
