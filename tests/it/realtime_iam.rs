//! AppSync real time in IAM mode: the broker signs the connect and every start with the
//! caller's Cognito credentials; the emulated AppSync verifies each signature with its own
//! SigV4 code, and a wrong-secret control shows that verification is real.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::realtime::{
    Placement, SUB, connect, connect_raw, create, event, init, metric, next_json, refusal,
    send_json, start_message, subscribed, with_realtime,
};
use crate::support::Harness;

/// The keys Amplify v6 sends in an IAM authorization object (all lowercase).
const IAM_KEYS: [&str; 7] = [
    "accept",
    "authorization",
    "content-encoding",
    "content-type",
    "host",
    "x-amz-date",
    "x-amz-security-token",
];

#[tokio::test]
async fn iam_subscriptions_are_signed_with_each_callers_credentials() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let bob = h.issuer.token_for("auth0|bob");
    let mut a = subscribed(&h, "/appsync/iam/realtime", &alice).await;
    let mut b = subscribed(&h, "/appsync/iam/graphql/realtime", &bob).await;

    let bobs = create(&h, "/appsync/iam/graphql", &bob, "bob's").await;
    let alices = create(&h, "/appsync/iam/graphql", &alice, "alice's").await;
    let owner = alices["owner"].as_str().expect("owner").to_owned();
    assert!(
        owner.starts_with("us-east-1:"),
        "the owner is the identity id: {owner}"
    );
    assert_eq!(
        event(&mut a, "s1").await,
        alices,
        "Alice gets exactly her own todo"
    );
    assert_eq!(event(&mut b, "s1").await, bobs);

    let stats = h.appsync().stats();
    assert_eq!((stats.realtime_authorized, stats.realtime_starts), (2, 2));
    assert_eq!(stats.oidc_authorized, 0, "no ID token was forwarded");
    for r in h
        .appsync()
        .received_connect_authorizations()
        .iter()
        .chain(h.appsync().received_start_authorizations().iter())
    {
        assert_eq!(r.keys, IAM_KEYS, "SigV4 headers, as Amplify sends them");
    }
    // One credential set per user, handed out on the appsync surface (the HTTP creates reuse
    // them from the cache).
    assert_eq!(h.credential_calls(), 2);
    let metrics = h.running().broker.render_metrics();
    assert!(
        metrics.contains("credbroker_credentials_issued_total{surface=\"appsync\"} 2"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_session_handle_works_in_iam_mode() {
    let h = with_realtime("").await;
    let user = "auth0|iam-session";
    let reply = crate::sessions::post_json(
        &h,
        "/v1/sessions",
        &json!({ "id_token": h.issuer.token_for(user) }).to_string(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let handle = reply.json()["session_token"]
        .as_str()
        .expect("handle")
        .to_owned();
    let mut ws = subscribed(&h, "/appsync/iam/realtime", &handle).await;
    let made = create(&h, "/appsync/iam/graphql", &handle, "via session").await;
    assert_eq!(event(&mut ws, "s1").await, made);
    h.stop().await;
}

/// The caller's credentials, from the broker's container endpoint.
async fn credentials(h: &Harness, token: &str) -> Credentials {
    let reply = h.get(token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let c = reply.json();
    let text = |k: &str| c[k].as_str().expect(k).to_owned();
    Credentials::new(
        text("AccessKeyId"),
        text("SecretAccessKey"),
        Some(text("Token")),
        None,
        "test",
    )
}

/// SigV4 authorization object for `POST <graphql url><suffix>` with `body`, built by the test
/// with aws-sigv4 (not by credbroker).
fn signed(h: &Harness, credentials: &Credentials, suffix: &str, body: &str) -> Value {
    let url = format!("{}{suffix}", h.appsync().url());
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host")
        .to_owned();
    let fixed = [
        ("accept", "application/json, text/javascript"),
        ("content-encoding", "amz-1.0"),
        ("content-type", "application/json; charset=UTF-8"),
        ("host", host.as_str()),
    ];
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(h.appsync().region())
        .name("appsync")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let request = SignableRequest::new(
        "POST",
        &url,
        fixed.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .expect("signable");
    let (instructions, _) = sign(request, &params).expect("signs").into_parts();
    let mut out = serde_json::Map::new();
    for (k, v) in fixed {
        out.insert(k.to_owned(), json!(v));
    }
    for (k, v) in instructions.headers() {
        out.insert(k.to_owned(), json!(v));
    }
    Value::Object(out)
}

async fn connect_direct(h: &Harness, header: &Value) -> crate::realtime::Ws {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string());
    connect_raw(
        &h.appsync().realtime_url(),
        &format!("graphql-ws,header-{encoded}"),
        None,
    )
    .await
    .expect("the emulator accepts the upgrade")
}

#[tokio::test]
async fn the_emulator_verifies_iam_signatures_with_a_wrong_secret_control() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let good = credentials(&h, &alice).await;
    let wrong = Credentials::new(
        good.access_key_id(),
        "wrong-secret-wrong-secret-wrong-secret00",
        good.session_token().map(str::to_owned),
        None,
        "test",
    );

    // Straight to the emulator: the right secret is acknowledged, a wrong one is refused.
    let mut right = connect_direct(&h, &signed(&h, &good, "/connect", "{}")).await;
    assert_eq!(init(&mut right).await["type"], "connection_ack");
    let mut bad = connect_direct(&h, &signed(&h, &wrong, "/connect", "{}")).await;
    let answer = init(&mut bad).await;
    assert_eq!(answer["type"], "connection_error", "{answer}");
    assert_eq!(
        answer["payload"]["errors"][0]["errorType"],
        "InvalidSignatureException"
    );

    // Each start has its own signature over its data.
    let data = json!({ "query": SUB, "variables": {} }).to_string();
    let start = |id: &str, authorization: Value| {
        let mut m = start_message(id, SUB, json!({ "authorization": authorization }));
        m["payload"]["data"] = json!(data);
        m
    };
    send_json(&mut right, start("forged", signed(&h, &wrong, "", &data))).await;
    let refused = next_json(&mut right).await.expect("error");
    assert_eq!(
        refused["payload"]["errors"][0]["errorType"],
        "InvalidSignatureException"
    );
    send_json(&mut right, start("other-body", signed(&h, &good, "", "{}"))).await;
    let refused = next_json(&mut right).await.expect("error");
    assert_eq!(
        refused["payload"]["errors"][0]["errorType"],
        "InvalidSignatureException"
    );
    send_json(&mut right, start("ok", signed(&h, &good, "", &data))).await;
    assert_eq!(
        next_json(&mut right).await.expect("ack")["type"],
        "start_ack"
    );

    // Through the broker, every signature verifies (the same emulator, the same user).
    let before = h.appsync().stats();
    let mut ws = subscribed(&h, "/appsync/iam/realtime", &alice).await;
    let made = create(&h, "/appsync/iam/graphql", &alice, "signed").await;
    assert_eq!(event(&mut ws, "s1").await, made);
    assert_eq!(
        event(&mut right, "ok").await,
        made,
        "the same identity's subscription"
    );
    let after = h.appsync().stats();
    assert_eq!(after.realtime_authorized - before.realtime_authorized, 1);
    assert_eq!(after.realtime_starts - before.realtime_starts, 1);
    assert_eq!(
        after.realtime_starts_refused,
        before.realtime_starts_refused
    );
    h.stop().await;
}

#[tokio::test]
async fn iam_credential_failures_are_refused_at_the_upgrade() {
    use credbroker_emulators::cognito::{ErrorType, Operation};
    let h = with_realtime("").await;
    // Cognito refuses the login: the upgrade gets the broker's own answer, as on every surface,
    // and AppSync is never contacted.
    h.cognito
        .faults()
        .fail_next(Operation::GetId, ErrorType::NotAuthorized, 1);
    let alice = h.issuer.token_for("auth0|alice");
    let refused = refusal(connect(&h, "/appsync/iam/realtime", Placement::Header, &alice).await);
    assert_eq!(refused, (403, "LoginRejected".to_owned()));
    assert_eq!(h.appsync().stats().connections, 0);
    assert_eq!(
        metric(
            &h,
            "credbroker_appsync_realtime_upgrades_total{api=\"iam\",outcome=\"credentials\"}"
        ),
        1.0
    );
    // Once Cognito answers again, upgrades are accepted (another user: the identity cache
    // remembers Alice's refusal for a while, as on every surface).
    let bob = h.issuer.token_for("auth0|bob");
    let mut ws = subscribed(&h, "/appsync/iam/realtime", &bob).await;
    let made = create(&h, "/appsync/iam/graphql", &bob, "after").await;
    assert_eq!(event(&mut ws, "s1").await, made);
    h.stop().await;
}
