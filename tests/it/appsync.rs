//! AppSync forwarding: the broker on 127.0.0.1:0 in front of the emulated AppSync, in both
//! authorization modes, plus the proxy behaviour (body cap, timeout, 5xx, connection reuse).

use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use credbroker_emulators::oidc::TokenSpec;
use serde_json::{Value, json};

use crate::support::{Harness, Reply, Tweaks, send};

const CREATE: &str =
    "mutation Create($c: String!) { createTodo(content: $c) { id content owner } }";
const LIST: &str = "query { listTodos { id content owner } }";

fn gql(query: &str, variables: Value) -> String {
    json!({ "query": query, "variables": variables }).to_string()
}

async fn with_appsync(extra: &str) -> Harness {
    Harness::with(Tweaks {
        appsync: Some(extra.to_owned()),
        ..Tweaks::default()
    })
    .await
}

async fn create(h: &Harness, path: &str, token: &str, content: &str) -> Reply {
    h.post(
        path,
        &[
            ("authorization", token),
            ("content-type", "application/json"),
        ],
        &gql(CREATE, json!({ "c": content })),
    )
    .await
}

async fn list(h: &Harness, path: &str, token: &str) -> Vec<Value> {
    let reply = h
        .post(path, &[("authorization", token)], &gql(LIST, json!({})))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["listTodos"]
        .as_array()
        .expect("a list")
        .clone()
}

fn contents(todos: &[Value]) -> Vec<&str> {
    todos
        .iter()
        .map(|t| t["content"].as_str().expect("content"))
        .collect()
}

#[tokio::test]
async fn oidc_mode_forwards_the_raw_token_and_users_see_only_their_own_todos() {
    let h = with_appsync("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let bob = h.issuer.token_for("auth0|bob");

    // The caller may use a Bearer prefix; AppSync must still get the raw JWT (it would answer
    // 401 "Unable to parse JWT token." otherwise).
    let made = create(
        &h,
        "/appsync/graphql",
        &format!("Bearer {alice}"),
        "alice's",
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.text());
    assert_eq!(made.json()["data"]["createTodo"]["owner"], "auth0|alice");
    let alice_todo = made.json()["data"]["createTodo"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let made = create(&h, "/appsync/oidc/graphql", &bob, "bob's").await;
    assert_eq!(made.status, 200, "{}", made.text());

    let mine = list(&h, "/appsync/graphql", &alice).await;
    assert_eq!(contents(&mine), ["alice's"]);
    assert_eq!(mine[0]["owner"], "auth0|alice");
    let bobs = list(&h, "/appsync/oidc/graphql", &bob).await;
    assert_eq!(contents(&bobs), ["bob's"]);

    // Bob asking for Alice's todo: AppSync's 200 with a field-level error passes through.
    let peek = h
        .post(
            "/appsync/graphql",
            &[("authorization", bob.as_str())],
            &gql(
                "query Get($id: ID!) { getTodo(id: $id) { id content } }",
                json!({ "id": alice_todo }),
            ),
        )
        .await;
    assert_eq!(peek.status, 200);
    let body = peek.json();
    assert_eq!(body["data"]["getTodo"], Value::Null);
    assert_eq!(body["errors"][0]["errorType"], "Unauthorized");

    let stats = h.appsync().stats();
    assert_eq!((stats.oidc_authorized, stats.iam_authorized), (5, 0));
    assert_eq!(
        h.credential_calls(),
        0,
        "OIDC mode needs no AWS credentials"
    );
    h.stop().await;
}

#[tokio::test]
async fn iam_mode_signs_with_each_callers_cognito_credentials() {
    let h = with_appsync("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let bob = h.issuer.token_for("auth0|bob");

    let made = create(&h, "/appsync/iam/graphql", &alice, "alice's").await;
    assert_eq!(made.status, 200, "{}", made.text());
    let alice_owner = made.json()["data"]["createTodo"]["owner"]
        .as_str()
        .expect("owner")
        .to_owned();
    assert!(
        alice_owner.starts_with("us-east-1:"),
        "the owner is the Cognito identity id: {alice_owner}"
    );
    let made = create(&h, "/appsync/iam/graphql", &bob, "bob's").await;
    assert_eq!(made.status, 200, "{}", made.text());
    let bob_owner = made.json()["data"]["createTodo"]["owner"].clone();
    assert_ne!(bob_owner, json!(alice_owner));

    let mine = list(&h, "/appsync/iam/graphql", &alice).await;
    assert_eq!(contents(&mine), ["alice's"]);
    let bobs = list(&h, "/appsync/iam/graphql", &bob).await;
    assert_eq!(contents(&bobs), ["bob's"]);

    let stats = h.appsync().stats();
    assert_eq!(
        (stats.iam_authorized, stats.oidc_authorized),
        (4, 0),
        "every request was SigV4-verified; the caller's token was never forwarded"
    );
    assert_eq!(
        h.credential_calls(),
        2,
        "one credential set per user, then the cache"
    );
    let metrics = h.running().broker.metrics.render();
    assert!(
        metrics.contains("credbroker_credentials_issued_total{surface=\"appsync\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("credbroker_appsync_upstream_responses_total{api=\"iam\",outcome=\"2xx\"} 4"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_bearer_prefixed_token_sent_straight_to_appsync_gets_appsyncs_401() {
    let h = with_appsync("").await;
    let token = h.issuer.token_for("auth0|alice");
    let body = Bytes::from(gql(LIST, json!({})));
    let bearer = format!("Bearer {token}");
    let refused = send(
        &h.http,
        "POST",
        h.appsync().url(),
        &[("authorization", &bearer)],
        body.clone(),
    )
    .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.json(),
        json!({"errors":[{"errorType":"UnauthorizedException","message":"Unable to parse JWT token."}]})
    );
    let raw = send(
        &h.http,
        "POST",
        h.appsync().url(),
        &[("authorization", &token)],
        body,
    )
    .await;
    assert_eq!(raw.status, 200, "the same token without Bearer is accepted");
    h.stop().await;
}

#[tokio::test]
async fn expired_or_nearly_expired_caller_tokens_never_reach_appsync() {
    let h = with_appsync("token_expiry_margin = \"2m\"").await;
    let dying = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(90)),
        ..TokenSpec::for_subject("auth0|alice")
    });
    let reply = create(&h, "/appsync/graphql", &dying, "x").await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(reply.code(), "TokenExpiringSoon");
    assert!(
        reply.json()["Message"]
            .as_str()
            .expect("message")
            .contains("refresh")
    );
    assert_eq!(reply.json()["errors"][0]["errorType"], "TokenExpiringSoon");

    let expired = h.issuer.mint(&TokenSpec {
        issued_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        lifetime: Some(Duration::from_secs(600)),
        ..TokenSpec::for_subject("auth0|alice")
    });
    let reply = create(&h, "/appsync/graphql", &expired, "x").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.code(), "TokenExpired");

    assert_eq!(h.appsync().stats().requests, 0, "AppSync never saw them");

    // A token with plenty of time left goes through (the margin is not refusing everything).
    let fresh = h.issuer.token_for("auth0|alice");
    assert_eq!(
        create(&h, "/appsync/graphql", &fresh, "x").await.status,
        200
    );
    h.stop().await;
}

/// Signs a request to the emulator the way an SDK would, with the given secret.
fn signed_headers(
    url: &str,
    body: &[u8],
    access_key: &str,
    secret: &str,
    session_token: &str,
) -> Vec<(String, String)> {
    let identity = Credentials::new(
        access_key,
        secret,
        Some(session_token.to_owned()),
        None,
        "test",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("appsync")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        [("content-type", "application/json")].into_iter(),
        SignableBody::Bytes(body),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signs").into_parts();
    let mut headers: Vec<(String, String)> = instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    headers.push(("content-type".into(), "application/json".into()));
    headers
}

#[tokio::test]
async fn appsync_rejects_a_forged_signature_so_the_broker_really_signs() {
    let h = with_appsync("").await;
    let creds = h.get(&h.issuer.token_for("auth0|alice")).await.json();
    let key = creds["AccessKeyId"].as_str().expect("key");
    let secret = creds["SecretAccessKey"].as_str().expect("secret");
    let token = creds["Token"].as_str().expect("token");
    let url = h.appsync().url().to_owned();
    let body = gql(LIST, json!({}));

    let post = |headers: Vec<(String, String)>| {
        let h = &h;
        let url = url.clone();
        let body = body.clone();
        async move {
            let refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            send(&h.http, "POST", &url, &refs, Bytes::from(body)).await
        }
    };

    let forged = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let reply = post(signed_headers(&url, body.as_bytes(), key, forged, token)).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(
        reply.json()["errors"][0]["errorType"],
        "InvalidSignatureException"
    );

    let reply = post(signed_headers(
        &url,
        body.as_bytes(),
        key,
        secret,
        "not-the-token",
    ))
    .await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.json()["errors"][0]["errorType"],
        "UnrecognizedClientException"
    );

    // The same request with a tampered body after signing.
    let headers = signed_headers(
        &url,
        b"{\"query\":\"{ listTodos { id } }\"}",
        key,
        secret,
        token,
    );
    let reply = post(headers).await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.json()["errors"][0]["errorType"],
        "InvalidSignatureException"
    );

    let reply = post(signed_headers(&url, body.as_bytes(), key, secret, token)).await;
    assert_eq!(reply.status, 200, "the real secret works: {}", reply.text());
    assert_eq!(h.appsync().stats().iam_authorized, 1);
    h.stop().await;
}

#[tokio::test]
async fn bodies_over_the_cap_get_413_and_never_reach_appsync() {
    let h = with_appsync("max_body_bytes = 1024").await;
    let token = h.issuer.token_for("auth0|alice");
    let big = create(&h, "/appsync/graphql", &token, &"x".repeat(2000)).await;
    assert_eq!(big.status, 413, "{}", big.text());
    assert_eq!(big.code(), "RequestTooLarge");

    // The same without Content-Length (chunked): counted as it streams in.
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..8)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b' '; 200]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let request = http::Request::post(format!(
        "http://{}/appsync/graphql",
        h.running().container_addr
    ))
    .header("authorization", &token)
    .body(body)
    .expect("request");
    let response = client.request(request).await.expect("answer");
    assert_eq!(response.status(), 413);
    let _ = response.into_body().collect().await;

    assert_eq!(h.appsync().stats().requests, 0);
    let small = create(&h, "/appsync/graphql", &token, "fits").await;
    assert_eq!(small.status, 200);
    h.stop().await;
}

#[tokio::test]
async fn a_slow_appsync_gets_504_within_the_timeout() {
    let h = with_appsync("timeout = \"300ms\"").await;
    h.appsync().faults().set_latency(Duration::from_secs(3));
    let token = h.issuer.token_for("auth0|alice");
    let started = Instant::now();
    let reply = create(&h, "/appsync/graphql", &token, "x").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.code(), "UpstreamTimeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    h.stop().await;
}

#[tokio::test]
async fn appsync_5xx_and_401_answers_pass_through_unchanged() {
    let h = with_appsync("").await;
    let token = h.issuer.token_for("auth0|alice");
    h.appsync().faults().fail_next(503, 1);
    let reply = create(&h, "/appsync/graphql", &token, "x").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.json(),
        json!({"errors":[{"errorType":"InternalFailure","message":"An internal failure occurred (injected by the emulator)."}]})
    );
    assert_eq!(reply.headers["x-amzn-errortype"], "InternalFailure");

    // AppSync refusing a token the broker accepts (its clientId differs from the token's aud):
    // AppSync's own 401 body reaches the caller, not a broker error.
    h.appsync().set_oidc_client_id(Some("another-client"));
    let refused = create(&h, "/appsync/graphql", &token, "x").await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.json(),
        json!({"errors":[{"errorType":"UnauthorizedException","message":"Token has invalid audience."}]})
    );
    h.appsync().set_oidc_client_id(None);
    let ok = create(&h, "/appsync/graphql", &token, "x").await;
    assert_eq!(ok.status, 200, "the fault was one-shot");
    assert_eq!(h.appsync().stats().requests, 3);
    h.stop().await;
}

#[tokio::test]
async fn connections_to_appsync_are_pooled_and_reused() {
    let h = with_appsync("").await;
    let token = h.issuer.token_for("auth0|alice");
    for i in 0..5 {
        let reply = create(&h, "/appsync/iam/graphql", &token, &format!("todo {i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let stats = h.appsync().stats();
    assert_eq!(stats.requests, 5);
    assert_eq!(
        stats.connections, 1,
        "one kept-alive connection for all five"
    );
    h.stop().await;
}

#[tokio::test]
async fn proxy_hygiene_forwarded_refusal_hop_by_hop_and_allowed_operations() {
    let h = with_appsync("").await;
    let token = h.issuer.token_for("auth0|alice");

    let relayed = h
        .post(
            "/appsync/graphql",
            &[("authorization", &token), ("x-forwarded-for", "10.0.0.1")],
            &gql(LIST, json!({})),
        )
        .await;
    assert_eq!(relayed.status, 400);
    assert_eq!(relayed.code(), "ForwardedRequest");
    assert_eq!(h.appsync().stats().requests, 0);

    let reply = h
        .post(
            "/appsync/graphql",
            &[
                ("authorization", &token),
                ("connection", "x-hop-secret"),
                ("x-hop-secret", "1"),
                ("te", "trailers"),
                ("x-amz-user-agent", "aws-amplify/6.0"),
                ("cookie", "session=abc"),
            ],
            &gql(LIST, json!({})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let names = h.appsync().last_header_names();
    assert!(names.contains(&"x-amz-user-agent".to_owned()), "{names:?}");
    for dropped in [
        "x-hop-secret",
        "te",
        "cookie",
        "x-forwarded-for",
        "forwarded",
        "via",
    ] {
        assert!(
            !names.contains(&dropped.to_owned()),
            "{dropped} in {names:?}"
        );
    }

    let mutation = create(&h, "/appsync/readonly/graphql", &token, "x").await;
    assert_eq!(mutation.status, 403);
    assert_eq!(mutation.code(), "OperationNotAllowed");
    let query = h
        .post(
            "/appsync/readonly/graphql",
            &[("authorization", &token)],
            &gql(LIST, json!({})),
        )
        .await;
    assert_eq!(query.status, 200);

    let unknown = create(&h, "/appsync/nope/graphql", &token, "x").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.code(), "NoSuchApi");
    let get = h
        .request(
            "GET",
            &format!("http://{}/appsync/graphql", h.running().container_addr),
            &[],
        )
        .await;
    assert_eq!(get.status, 405);
    assert_eq!(h.appsync().stats().requests, 2);
    h.stop().await;
}

#[tokio::test]
async fn session_handles_are_accepted_in_both_modes_with_the_sessions_current_token() {
    let h = Harness::with(Tweaks {
        appsync: Some(String::new()),
        in_process_cognito: true,
        in_process_issuer: true,
        issuer_options: Some(credbroker_emulators::oidc::IssuerOptions {
            token_lifetime: Duration::from_secs(120),
            ..Default::default()
        }),
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        ..Tweaks::default()
    })
    .await;
    let user = "auth0|appsync-session";
    let id_token = h.issuer.token_for(user);
    let reply = crate::sessions::post_json(
        &h,
        "/v1/sessions",
        &json!({ "id_token": id_token, "refresh_token": h.issuer.issue_refresh_token(user) })
            .to_string(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let handle = reply.json()["session_token"]
        .as_str()
        .expect("handle")
        .to_owned();

    // Ten minutes later the ID token the session was created with has expired; the session
    // holds a newer one, redeemed from its refresh token.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(600)).await;
    tokio::time::resume();
    let expired = create(&h, "/appsync/graphql", &id_token, "with the old token").await;
    assert_eq!(
        (expired.status, expired.json()["Code"].as_str()),
        (401, Some("TokenExpired"))
    );

    // OIDC mode: AppSync gets the session's current raw ID token (and verifies it).
    let made = create(&h, "/appsync/graphql", &format!("Bearer {handle}"), "oidc").await;
    assert_eq!(made.status, 200, "{}", made.text());
    assert_eq!(made.json()["data"]["createTodo"]["owner"], user);
    // IAM mode: signed with the session identity's Cognito credentials.
    let made = create(&h, "/appsync/iam/graphql", &handle, "iam").await;
    assert_eq!(made.status, 200, "{}", made.text());
    let owner = made.json()["data"]["createTodo"]["owner"]
        .as_str()
        .expect("owner")
        .to_owned();
    let session = h.running().broker.sessions.get(&handle).expect("live");
    let identity = h
        .running()
        .broker
        .identities
        .identities()
        .into_iter()
        .find(|i| i.key().subject == session.subject)
        .expect("the session's identity");
    assert_eq!(
        Some(owner.as_str()),
        identity.identity_id().as_deref(),
        "the owner is the session's Cognito identity"
    );
    let stats = h.appsync().stats();
    assert_eq!((stats.oidc_authorized, stats.iam_authorized), (1, 1));

    // A revoked handle is refused before anything reaches AppSync.
    let url = format!("http://{}/v1/sessions/current", h.running().container_addr);
    assert_eq!(
        h.request("DELETE", &url, &[("authorization", &handle)])
            .await
            .status,
        200
    );
    for path in ["/appsync/graphql", "/appsync/iam/graphql"] {
        let refused = create(&h, path, &handle, "after logout").await;
        assert_eq!(
            (refused.status, refused.json()["Code"].as_str()),
            (401, Some("InvalidSession")),
            "{path}"
        );
    }
    let stats = h.appsync().stats();
    assert_eq!((stats.oidc_authorized, stats.iam_authorized), (1, 1));
    h.stop().await;
}

/// POSTs `query` (as `{"query": …}`) to `path`; a dropped connection fails the test with a
/// clear message instead of a hyper error.
async fn post_document(h: &Harness, url: &str, token: &str, query: &str) -> Reply {
    let request = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("authorization", token)
        .body(http_body_util::Full::new(Bytes::from(gql(
            query,
            json!({}),
        ))))
        .expect("request");
    let answer = tokio::time::timeout(Duration::from_secs(30), h.http.request(request))
        .await
        .expect("an answer within 30 s");
    let response = match answer {
        Ok(r) => r,
        Err(e) => panic!("the broker dropped the request instead of answering: {e}"),
    };
    let (parts, body) = response.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// Issue 16, defect 2: a non-ASCII character inside a block string made the operation check
/// panic (the connection dropped) and the panic message carried the whole document, secrets
/// included, into stderr. Driven through the real binary, logging at trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_operations_answers_non_ascii_block_strings_and_never_logs_the_document() {
    use crate::support::{Binary, Tweaks, config_toml, tempdir};

    let h = with_appsync("").await;
    let dir = tempdir();
    let config = dir.join("credbroker.toml");
    let mut text = config_toml(&h.issuer, &h.cognito, &Tweaks::default());
    text.push_str(&crate::support::appsync_toml(h.appsync(), ""));
    std::fs::write(&config, text).expect("write");
    let mut bin = Binary::spawn(&config, "trace");
    let addr = bin.listen_of("credbroker is serving").await;
    let url = format!("http://{addr}/appsync/readonly/graphql");
    let token = h.issuer.token_for("auth0|alice");
    let secret = "pässwörd-s3cr3t-0451";

    // A mutation whose argument is a block string with non-ASCII text: refused as a mutation.
    let mutation = format!(
        "mutation {{ createTodo(content: \"\"\"{secret} {{ \"quoted\" }}\"\"\") {{ id }} }}"
    );
    let refused = post_document(&h, &url, &token, &mutation).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.code(), "OperationNotAllowed");
    assert!(
        refused.json()["Message"]
            .as_str()
            .expect("Message")
            .contains("mutation")
    );

    // The same inside a query: the query is allowed, so it reaches AppSync.
    let query = format!(
        "query Q($note: String = \"\"\"{secret} }} mutation {{\"\"\") {{ listTodos {{ id }} }}"
    );
    let forwarded = post_document(&h, &url, &token, &query).await;
    assert_eq!(forwarded.status, 200, "{}", forwarded.text());
    assert_eq!(h.appsync().stats().requests, 1);

    // A document that is not GraphQL: refused in the documented shape, the secret not echoed.
    let broken = format!("query {{ listTodos(filter: \"\"\"{secret} ");
    let unreadable = post_document(&h, &url, &token, &broken).await;
    assert_eq!(unreadable.status, 400, "{}", unreadable.text());
    assert_eq!(unreadable.code(), "MalformedRequest");
    assert!(
        !unreadable.text().contains("s3cr3t"),
        "{}",
        unreadable.text()
    );
    assert_eq!(h.appsync().stats().requests, 1, "never forwarded unchecked");

    // Nesting far past the parser's recursion limit: a refusal, not a stack overflow that
    // would abort the daemon; a document past the token limit: a refusal too.
    let deep = format!("{}{}", "{ a ".repeat(100_000), "}".repeat(100_000));
    let refused = post_document(&h, &url, &token, &deep).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.json()["Message"]
            .as_str()
            .expect("Message")
            .contains("nests deeper than")
    );
    let huge = format!("{{ {} }}", "a ".repeat(200_000));
    let refused = post_document(&h, &url, &token, &huge).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.json()["Message"]
            .as_str()
            .expect("Message")
            .contains("tokens")
    );
    let subscription = "subscription { onCreateTodo { id } }";
    let refused = post_document(&h, &url, &token, subscription).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(h.appsync().stats().requests, 1);
    // Still serving.
    let again = post_document(&h, &url, &token, LIST).await;
    assert_eq!(again.status, 200, "{}", again.text());

    bin.signal("TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), bin.child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    (&mut bin.reader).await.expect("reader");
    let logs = bin.logs();
    assert!(
        logs.contains("appsync request not forwarded"),
        "trace logging is on"
    );
    assert!(!logs.contains("panicked"), "a panic on the request path");
    assert!(!logs.contains("s3cr3t"), "the document reached the logs");
    h.stop().await;
}
