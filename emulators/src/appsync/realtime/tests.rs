//! The real-time endpoint driven by a real WebSocket client (tokio-tungstenite) and requests
//! signed by the AWS SDK's own SigV4 signer (aws-sigv4).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use http::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::appsync::{AppSyncEmulator, AppSyncOptions, KnownKey, OidcTrust};
use crate::clock::Clock;
use crate::oidc::{IssuerOptions, OidcIssuer, TokenSpec};
use crate::secret::SecretString;
use crate::testutil::send;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const ACCESS_KEY: &str = "ASIATESTREALTIME0001";
const SECRET: &str = "realtime-secret-key-0000000000000000000";
const SESSION_TOKEN: &str = "realtime-session-token";
const IDENTITY: &str = "us-east-1:realtime-identity";
const SUB: &str = "subscription { onCreateTodo { id content owner } }";
const CREATE: &str = "mutation C($c: String!) { createTodo(content: $c) { id } }";

/// Wall-clock time that follows tokio's clock (so paused tests move expiry).
#[derive(Debug)]
struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

struct Setup {
    issuer: OidcIssuer,
    appsync: AppSyncEmulator,
    clock: Arc<TokioClock>,
    key_expires: SystemTime,
}

impl Setup {
    async fn start() -> Self {
        let clock = Arc::new(TokioClock {
            base: SystemTime::now(),
            start: tokio::time::Instant::now(),
        });
        let issuer = OidcIssuer::start(IssuerOptions::default(), clock.clone())
            .await
            .expect("issuer");
        let key_expires = clock.now() + Duration::from_secs(3600);
        let lookup = move |id: &str| {
            (id == ACCESS_KEY).then(|| KnownKey {
                secret_key: SecretString::new(SECRET.to_owned()),
                session_token: SecretString::new(SESSION_TOKEN.to_owned()),
                expiration: key_expires,
                identity_id: IDENTITY.to_owned(),
            })
        };
        let options = AppSyncOptions {
            oidc: Some(OidcTrust::for_issuer(&issuer)),
            iam: Some(Arc::new(lookup)),
            ..AppSyncOptions::default()
        };
        let appsync = AppSyncEmulator::start(options, clock.clone())
            .await
            .expect("appsync");
        Self {
            issuer,
            appsync,
            clock,
            key_expires,
        }
    }

    fn host(&self) -> String {
        self.appsync.state.authority.clone()
    }

    fn oidc_header(&self, token: &str) -> Value {
        json!({ "Authorization": token, "host": self.host() })
    }

    /// The SigV4 headers of `POST <graphql url><suffix>` with `body`, as Amplify builds them.
    fn iam_header(&self, suffix: &str, body: &str, secret: &str) -> Value {
        let url = format!("{}{suffix}", self.appsync.url());
        let host = self.host();
        let fixed = [
            ("accept", "application/json, text/javascript"),
            ("content-encoding", "amz-1.0"),
            ("content-type", "application/json; charset=UTF-8"),
            ("host", host.as_str()),
        ];
        let mut out = serde_json::Map::new();
        for (k, v) in fixed {
            out.insert(k.to_owned(), json!(v));
        }
        for (k, v) in sigv4(&url, &fixed, body, secret, self.clock.now()) {
            out.insert(k, json!(v));
        }
        Value::Object(out)
    }

    async fn connect(&self, header: &Value) -> Ws {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string());
        connect_with(
            &self.appsync.realtime_url(),
            &format!("graphql-ws,header-{encoded}"),
        )
        .await
        .expect("upgrade accepted")
    }

    async fn create_oidc(&self, token: &str, content: &str) {
        let body = json!({ "query": CREATE, "variables": { "c": content } }).to_string();
        let r = send(
            Method::POST,
            self.appsync.url(),
            &[("authorization", token)],
            &body,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    async fn create_iam(&self, content: &str) {
        let body = json!({ "query": CREATE, "variables": { "c": content } }).to_string();
        let host = self.host();
        let fixed = [
            ("host", host.as_str()),
            ("content-type", "application/json"),
        ];
        let signed = sigv4(self.appsync.url(), &fixed, &body, SECRET, self.clock.now());
        let mut headers: Vec<(&str, &str)> = fixed.to_vec();
        headers.extend(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let r = send(Method::POST, self.appsync.url(), &headers, &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    async fn stop(self) {
        self.appsync.shutdown();
        self.issuer.shutdown();
    }
}

/// SigV4 headers (`x-amz-date`, `x-amz-security-token`, `authorization`) by aws-sigv4.
fn sigv4(
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    secret: &str,
    now: SystemTime,
) -> Vec<(String, String)> {
    let identity =
        Credentials::new(ACCESS_KEY, secret, Some(SESSION_TOKEN.into()), None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("appsync")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let request = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .expect("signable");
    let (instructions, _) = sign(request, &params).expect("signs").into_parts();
    instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn connect_with(url: &str, protocols: &str) -> Result<Ws, tungstenite::Error> {
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        protocols.parse().expect("header value"),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, response)| {
            assert_eq!(
                response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.as_bytes()),
                Some(&b"graphql-ws"[..]),
                "only graphql-ws is selected"
            );
            ws
        })
}

async fn send_json(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string()))
        .await
        .expect("send");
}

/// The next message that is not a `ka`; `Err` with the close frame (or error) when the socket
/// ends instead.
async fn next(ws: &mut Ws) -> Result<Value, Option<CloseFrame>> {
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
            Some(Ok(Message::Close(frame))) => return Err(frame),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

async fn init(ws: &mut Ws) -> Value {
    send_json(ws, json!({ "type": "connection_init" })).await;
    next(ws).await.expect("an answer to connection_init")
}

fn start_message(id: &str, query: &str, authorization: Value) -> Value {
    let data = json!({ "query": query, "variables": {} }).to_string();
    json!({ "id": id, "type": "start", "payload": {
        "data": data, "extensions": { "authorization": authorization } } })
}

#[tokio::test]
async fn oidc_subscribers_get_their_own_todos_in_order() {
    let s = Setup::start().await;
    let alice = s.issuer.token_for("auth0|alice");
    let bob = s.issuer.token_for("auth0|bob");

    let mut ws = s.connect(&s.oidc_header(&alice)).await;
    let ack = init(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack");
    assert_eq!(ack["payload"]["connectionTimeoutMs"], 300_000);
    send_json(&mut ws, start_message("s1", SUB, s.oidc_header(&alice))).await;
    assert_eq!(
        next(&mut ws).await.expect("start_ack"),
        json!({ "type": "start_ack", "id": "s1" })
    );

    // Bob's todo first: if it leaked, it would arrive before Alice's.
    s.create_oidc(&bob, "bob's").await;
    s.create_oidc(&alice, "alice's").await;
    let data = next(&mut ws).await.expect("data");
    assert_eq!(data["type"], "data");
    assert_eq!(data["id"], "s1");
    let todo = &data["payload"]["data"]["onCreateTodo"];
    assert_eq!(
        (&todo["content"], &todo["owner"]),
        (&json!("alice's"), &json!("auth0|alice"))
    );

    send_json(&mut ws, json!({ "type": "stop", "id": "s1" })).await;
    assert_eq!(
        next(&mut ws).await.expect("complete"),
        json!({ "type": "complete", "id": "s1" })
    );
    s.create_oidc(&alice, "after stop").await;
    // Nothing more for s1: the next answer is the one to this bad message.
    send_json(&mut ws, json!({ "type": "nonsense" })).await;
    assert_eq!(
        next(&mut ws).await.expect("error")["payload"]["errors"][0]["errorType"],
        "UnsupportedOperation"
    );

    let stats = s.appsync.stats();
    assert_eq!(
        (
            stats.realtime_connections,
            stats.realtime_authorized,
            stats.realtime_starts
        ),
        (1, 1, 1)
    );
    assert_eq!((stats.realtime_events, stats.realtime_open), (1, 1));
    let received = s.appsync.received_start_authorizations();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].keys, ["Authorization", "host"]);
    assert_eq!(
        received[0].sha256["Authorization"],
        super::sha256_hex(alice.as_bytes())
    );
    s.stop().await;
}

#[tokio::test]
async fn connect_authorization_is_checked_in_both_placements() {
    let s = Setup::start().await;
    let alice = s.issuer.token_for("auth0|alice");
    let url = s.appsync.realtime_url();

    // Older Amplify: standard base64 with padding, pasted unescaped into the query.
    let header = s.oidc_header(&alice).to_string();
    let std = base64::engine::general_purpose::STANDARD.encode(&header);
    let mut ws = connect_with(&format!("{url}?header={std}&payload=e30="), "graphql-ws")
        .await
        .expect("upgrade");
    assert_eq!(init(&mut ws).await["type"], "connection_ack");

    // No graphql-ws: refused at the upgrade.
    match connect_with(&url, "graphql-transport-ws").await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }

    let refused = |ws_header: Value, error_type: &'static str, code: u16| {
        let s = &s;
        async move {
            let mut ws = s.connect(&ws_header).await;
            let answer = init(&mut ws).await;
            assert_eq!(answer["type"], "connection_error", "{answer}");
            let e = &answer["payload"]["errors"][0];
            assert_eq!(
                (&e["errorType"], &e["errorCode"]),
                (&json!(error_type), &json!(code))
            );
            assert_eq!(
                next(&mut ws)
                    .await
                    .expect_err("closed")
                    .map(|f| u16::from(f.code)),
                Some(1000)
            );
            e["message"].as_str().unwrap_or_default().to_owned()
        }
    };
    let forged = s.issuer.mint(&TokenSpec {
        tamper_payload: true,
        ..TokenSpec::for_subject("auth0|alice")
    });
    assert_eq!(
        refused(s.oidc_header(&forged), "UnauthorizedException", 401).await,
        "Token signature is invalid."
    );
    assert_eq!(
        refused(
            s.oidc_header(&format!("Bearer {alice}")),
            "UnauthorizedException",
            401
        )
        .await,
        "Unable to parse JWT token."
    );
    // The realtime host is not the API host.
    let wrong_host = json!({ "Authorization": alice, "host": "realtime.example" });
    refused(wrong_host, "BadRequestException", 400).await;
    refused(json!({ "host": s.host() }), "UnauthorizedException", 401).await;

    let stats = s.appsync.stats();
    assert_eq!((stats.realtime_authorized, stats.realtime_refused), (1, 4));
    s.stop().await;
}

#[tokio::test]
async fn iam_connect_and_each_start_are_sigv4_verified() {
    let s = Setup::start().await;
    let mut ws = s.connect(&s.iam_header("/connect", "{}", SECRET)).await;
    assert_eq!(init(&mut ws).await["type"], "connection_ack");
    let keys = &s.appsync.received_connect_authorizations()[0].keys;
    assert_eq!(
        keys,
        &[
            "accept",
            "authorization",
            "content-encoding",
            "content-type",
            "host",
            "x-amz-date",
            "x-amz-security-token"
        ]
    );

    // The control: the same request signed with another secret.
    let mut bad = s
        .connect(&s.iam_header("/connect", "{}", "not-the-secret"))
        .await;
    let answer = init(&mut bad).await;
    assert_eq!(answer["type"], "connection_error");
    assert_eq!(
        answer["payload"]["errors"][0]["errorType"],
        "InvalidSignatureException"
    );
    assert_eq!(answer["payload"]["errors"][0]["errorCode"], 403);
    // Signed for the start URL instead of /connect: refused too.
    let mut wrong_uri = s.connect(&s.iam_header("", "{}", SECRET)).await;
    assert_eq!(init(&mut wrong_uri).await["type"], "connection_error");

    let data = json!({ "query": SUB, "variables": {} }).to_string();
    let start = |id: &str, auth: Value| {
        json!({ "id": id, "type": "start", "payload": {
            "data": data, "extensions": { "authorization": auth } } })
    };
    send_json(&mut ws, start("good", s.iam_header("", &data, SECRET))).await;
    assert_eq!(next(&mut ws).await.expect("ack")["type"], "start_ack");
    send_json(&mut ws, start("forged", s.iam_header("", &data, "wrong"))).await;
    let e = next(&mut ws).await.expect("error");
    assert_eq!((&e["type"], &e["id"]), (&json!("error"), &json!("forged")));
    assert_eq!(
        e["payload"]["errors"][0]["errorType"],
        "InvalidSignatureException"
    );
    // Signed over another body than the start's data.
    send_json(&mut ws, start("other-body", s.iam_header("", "{}", SECRET))).await;
    let e = next(&mut ws).await.expect("error");
    assert_eq!(
        e["payload"]["errors"][0]["errorType"],
        "InvalidSignatureException"
    );

    s.create_iam("signed").await;
    let event = next(&mut ws).await.expect("data");
    assert_eq!(event["id"], "good");
    assert_eq!(event["payload"]["data"]["onCreateTodo"]["owner"], IDENTITY);
    let stats = s.appsync.stats();
    assert_eq!(
        (stats.realtime_starts, stats.realtime_starts_refused),
        (1, 2)
    );
    s.stop().await;
}

#[tokio::test]
async fn starts_are_validated_and_capped() {
    let s = Setup::start().await;
    let alice = s.issuer.token_for("auth0|alice");
    let mut ws = s.connect(&s.oidc_header(&alice)).await;
    init(&mut ws).await;
    let error_type = |v: Value| v["payload"]["errors"][0]["errorType"].clone();

    let other = "subscription { onCreateTodo(owner: \"auth0|bob\") { id } }";
    send_json(&mut ws, start_message("x", other, s.oidc_header(&alice))).await;
    assert_eq!(error_type(next(&mut ws).await.expect("e")), "Unauthorized");
    let query = "query { listTodos { id } }";
    send_json(&mut ws, start_message("q", query, s.oidc_header(&alice))).await;
    assert_eq!(
        error_type(next(&mut ws).await.expect("e")),
        "ValidationError"
    );
    let unknown = "subscription { onDeleteTodo { id } }";
    send_json(&mut ws, start_message("u", unknown, s.oidc_header(&alice))).await;
    assert_eq!(
        error_type(next(&mut ws).await.expect("e")),
        "ValidationError"
    );
    let mut no_auth = start_message("n", SUB, json!({}));
    no_auth["payload"]["extensions"] = json!({});
    send_json(&mut ws, no_auth).await;
    assert_eq!(
        error_type(next(&mut ws).await.expect("e")),
        "UnauthorizedException"
    );

    let mine = "subscription { onCreateTodo(owner: \"auth0|alice\") { id } }";
    for i in 0..super::MAX_SUBSCRIPTIONS {
        send_json(
            &mut ws,
            start_message(&format!("s{i}"), mine, s.oidc_header(&alice)),
        )
        .await;
        assert_eq!(next(&mut ws).await.expect("ack")["type"], "start_ack");
    }
    send_json(
        &mut ws,
        start_message("one-too-many", SUB, s.oidc_header(&alice)),
    )
    .await;
    let e = next(&mut ws).await.expect("e");
    assert_eq!(error_type(e.clone()), "MaxSubscriptionsReachedError");
    assert_eq!(
        e["payload"]["errors"][0]["message"],
        "Max number of 100 subscriptions reached"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_connection_is_closed_when_its_authorization_expires() {
    let s = Setup::start().await;
    let token = s.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(120)),
        ..TokenSpec::for_subject("auth0|alice")
    });
    let mut ws = s.connect(&s.oidc_header(&token)).await;
    init(&mut ws).await;
    let mut iam = s.connect(&s.iam_header("/connect", "{}", SECRET)).await;
    init(&mut iam).await;

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(121)).await;
    tokio::time::resume();
    let answer = next(&mut ws).await.expect("connection_error");
    assert_eq!(answer["type"], "connection_error");
    assert_eq!(
        answer["payload"]["errors"][0]["message"],
        "Token has expired."
    );
    assert_eq!(
        next(&mut ws)
            .await
            .expect_err("closed")
            .map(|f| u16::from(f.code)),
        Some(1000)
    );
    assert_eq!(
        s.appsync.stats().realtime_expired,
        1,
        "the IAM key lives on"
    );

    tokio::time::pause();
    let left = s.key_expires.duration_since(s.clock.now()).expect("later");
    tokio::time::advance(left + Duration::from_secs(1)).await;
    tokio::time::resume();
    assert_eq!(
        next(&mut iam).await.expect("error")["type"],
        "connection_error"
    );
    assert_eq!(s.appsync.stats().realtime_expired, 2);
    s.stop().await;
}

#[tokio::test]
async fn faults_drop_close_refuse_expire_and_delay() {
    let s = Setup::start().await;
    let alice = s.issuer.token_for("auth0|alice");

    let mut a = s.connect(&s.oidc_header(&alice)).await;
    init(&mut a).await;
    s.appsync
        .faults()
        .close_realtime(4000, "closed by the test");
    let frame = next(&mut a)
        .await
        .expect_err("closed")
        .expect("a close frame");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4000, "closed by the test")
    );

    let mut b = s.connect(&s.oidc_header(&alice)).await;
    init(&mut b).await;
    s.appsync.faults().drop_realtime();
    assert_eq!(
        next(&mut b).await.expect_err("dropped"),
        None,
        "no close frame"
    );

    s.appsync.faults().refuse_next_realtime(1);
    let mut c = s.connect(&s.oidc_header(&alice)).await;
    let answer = init(&mut c).await;
    assert_eq!(
        (
            &answer["type"],
            &answer["payload"]["errors"][0]["errorCode"]
        ),
        (&json!("connection_error"), &json!(401))
    );
    let mut d = s.connect(&s.oidc_header(&alice)).await;
    assert_eq!(
        init(&mut d).await["type"],
        "connection_ack",
        "only one refused"
    );

    s.appsync.faults().expire_realtime_auth();
    let answer = next(&mut d).await.expect("connection_error");
    assert_eq!(
        answer["payload"]["errors"][0]["message"],
        "Token has expired."
    );

    // Slow acks, measured on tokio's paused clock (virtual time, not a timing assertion).
    s.appsync
        .faults()
        .realtime_ack_delay(Duration::from_secs(7));
    let mut e = s.connect(&s.oidc_header(&alice)).await;
    tokio::time::pause();
    let before = tokio::time::Instant::now();
    send_json(&mut e, json!({ "type": "connection_init" })).await;
    let ack = next(&mut e).await.expect("ack");
    assert_eq!(ack["type"], "connection_ack");
    assert!(
        before.elapsed() >= Duration::from_secs(7),
        "the ack waited for the delay"
    );
    tokio::time::resume();

    // Shutdown closes what is left with 1001.
    s.appsync.faults().clear();
    s.appsync.shutdown();
    let frame = next(&mut e).await.expect_err("closed").expect("frame");
    assert_eq!(u16::from(frame.code), 1001);
    drop((a, b, c, d, e));
    for _ in 0..500 {
        if s.appsync.stats().realtime_open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.appsync.stats().realtime_open,
        0,
        "every socket task ended"
    );
    s.stop().await;
}
