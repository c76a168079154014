//! Key rotation works; unknown kids cannot make credbroker hammer the issuer; withdrawn keys
//! stop counting.

use std::sync::Arc;
use std::time::Duration;

use credbroker_emulators::oidc::TokenSpec;

use crate::support::{Harness, Tweaks};

fn with_kid(h: &Harness, sub: &str, kid: &str) -> String {
    h.issuer.mint(&TokenSpec {
        kid: Some(kid.to_owned()),
        ..TokenSpec::for_subject(sub)
    })
}

#[tokio::test]
async fn a_flood_of_unknown_kids_does_not_flood_the_issuer() {
    let h = Harness::start().await; // jwks_refetch_interval defaults to 30 s
    let before = h.issuer.stats().jwks_requests;
    for i in 0..200 {
        let reply = h
            .get(&with_kid(
                &h,
                &format!("auth0|flood-{i}"),
                &format!("kid-{i}"),
            ))
            .await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.code(), "UnknownKeyId");
    }
    let fetched = h.issuer.stats().jwks_requests - before;
    assert!(
        fetched <= 1,
        "200 unknown kids caused {fetched} JWKS fetches"
    );
    assert_eq!(
        h.get(&h.issuer.token_for("auth0|still-fine")).await.status,
        200
    );
    h.stop().await;
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_withdrawn_keys_stop_counting() {
    let h = Harness::with(Tweaks {
        tokens: "jwks_refetch_interval = \"1s\"".into(),
        ..Tweaks::default()
    })
    .await;
    let old_token = h.issuer.token_for("auth0|old-key");
    assert_eq!(h.get(&old_token).await.status, 200);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new_kid = h.issuer.rotate_keys();
    h.issuer.retire_old_keys();
    let before = h.issuer.stats().jwks_requests;
    let new_token = h.issuer.token_for("auth0|new-key");
    assert!(new_token.len() > 100);
    let reply = h.get(&new_token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        h.issuer.stats().jwks_requests - before,
        1,
        "one refetch for {new_kid}"
    );

    // The old key was withdrawn: a token verified with it earlier no longer counts.
    let reply = h.get(&old_token).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(reply.code(), "UnknownKeyId");
    let metrics = h.running().broker.metrics.render();
    assert!(
        metrics.contains("credbroker_jwks_key_rotations_total{provider=\"test\"} 1"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_issuer_makes_its_tokens_wait_not_fail_forever() {
    let h = Harness::start().await;
    h.issuer.set_unavailable(true);
    // Keys were loaded at start, so validation keeps working while the issuer is down.
    assert_eq!(
        h.get(&h.issuer.token_for("auth0|issuer-down")).await.status,
        200
    );
    h.issuer.set_unavailable(false);
    h.stop().await;
}

async fn readyz(h: &Harness) -> (u16, serde_json::Value) {
    let reply = h.admin_get("/readyz").await;
    (reply.status, reply.json())
}

fn reasons(body: &serde_json::Value) -> String {
    body["reasons"].to_string()
}

/// A URL on a loopback port nothing listens on (bound, then released).
async fn dead_url(path: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}{path}")
}

#[tokio::test]
async fn when_only_the_jwks_fails_readyz_and_the_503_name_the_jwks_and_its_status() {
    let h = Harness::with(Tweaks {
        setup: Some(Arc::new(|issuer, _| issuer.set_jwks_unavailable(true))),
        ..Tweaks::default()
    })
    .await;
    let jwks = h.issuer.jwks_uri();
    let (status, body) = readyz(&h).await;
    assert_eq!(status, 503, "{body:#}");
    let why = reasons(&body);
    assert!(
        why.contains(&format!(
            "the JWKS at {jwks} answered HTTP 503 Service Unavailable"
        )) && why.contains("the discovery document loaded")
            && !why.contains("discovery failed"),
        "the reason names the JWKS, its URL and its status: {body:#}"
    );
    assert_eq!(h.issuer.stats().discovery_requests, 1, "discovery worked");

    let probes = h.get_id_calls(); // /readyz probed Cognito
    let reply = h.get(&h.issuer.token_for("auth0|jwks-down")).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.code(), "ProviderUnavailable");
    let message = reply.json()["Message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(&format!("the JWKS at {jwks} answered HTTP 503"))
            && message.contains("(the discovery document loaded)")
            && !message.contains("discovery failed"),
        "the caller is told the JWKS failed after discovery succeeded: {message}"
    );
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(h.get_id_calls(), probes, "the token never reached Cognito");

    // Once the JWKS answers, the broker recovers on its own.
    h.issuer.set_jwks_unavailable(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while readyz(&h).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.get(&h.issuer.token_for("auth0|jwks-back")).await.status,
        200
    );
    h.stop().await;
}

#[tokio::test]
async fn a_failing_discovery_document_is_named_with_its_status() {
    let h = Harness::with(Tweaks {
        setup: Some(Arc::new(|issuer, _| issuer.set_unavailable(true))),
        ..Tweaks::default()
    })
    .await;
    let (status, body) = readyz(&h).await;
    assert_eq!(status, 503, "{body:#}");
    let why = reasons(&body);
    assert!(
        why.contains(&format!(
            "the discovery document at {} answered HTTP 503",
            h.issuer.discovery_url()
        )) && !why.contains("JWKS at"),
        "{body:#}"
    );
    assert_eq!(
        h.issuer.stats().jwks_requests,
        0,
        "never got as far as the JWKS"
    );
    h.issuer.set_unavailable(false);
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_jwks_is_named_with_the_transport_error() {
    let jwks_uri = dead_url("/.well-known/jwks.json").await;
    let h = Harness::with(Tweaks {
        issuer_options: Some(credbroker_emulators::oidc::IssuerOptions {
            jwks_uri: Some(jwks_uri.clone()),
            ..Default::default()
        }),
        ..Tweaks::default()
    })
    .await;
    let (status, body) = readyz(&h).await;
    assert_eq!(status, 503, "{body:#}");
    let why = reasons(&body);
    assert!(
        why.contains(&format!("the JWKS at {jwks_uri} could not be fetched"))
            && why.to_lowercase().contains("connect")
            && why.contains("(the discovery document loaded)"),
        "the reason names the JWKS and the transport error, after discovery: {body:#}"
    );
    let reply = h.get(&h.issuer.token_for("auth0|no-jwks")).await;
    assert_eq!(
        (reply.status, reply.code()),
        (503, "ProviderUnavailable".to_owned())
    );
    assert!(
        reply.text().contains("could not be fetched"),
        "{}",
        reply.text()
    );
    h.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_during_a_jwks_outage_is_503_with_retry_after_not_a_bad_token() {
    // 2 s: room for the second request to land inside the rate limit on a busy machine.
    let h = Harness::with(Tweaks {
        tokens: "jwks_refetch_interval = \"2s\"".into(),
        ..Tweaks::default()
    })
    .await;
    assert_eq!(h.get(&h.issuer.token_for("auth0|before")).await.status, 200);
    let calls = h.get_id_calls();

    // The issuer rotates while its JWKS is down; the refetch the new kid allows fails.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let new_kid = h.issuer.rotate_keys();
    h.issuer.set_jwks_unavailable(true);
    let rotated = h.issuer.token_for("auth0|rotated");
    let before = h.issuer.stats().jwks_requests;
    let reply = h.get(&rotated).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.code(), "ProviderUnavailable");
    let message = reply.json()["Message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(&new_kid) && message.contains("refetching the JWKS failed"),
        "{message}"
    );
    assert!(message.contains("HTTP 503"), "{message}");
    assert!(
        !message.contains("the discovery document loaded"),
        "a refetch reuses the discovery of an earlier load: {message}"
    );
    assert!(
        reply.headers.contains_key("retry-after"),
        "{:?}",
        reply.headers
    );
    assert_eq!(h.issuer.stats().jwks_requests - before, 1, "one refetch");

    // Within the rate limit, after a failed fetch: still 503 (with Retry-After), no new fetch.
    let reply = h.get(&rotated).await;
    assert_eq!(
        (reply.status, reply.code()),
        (503, "ProviderUnavailable".to_owned()),
        "{}",
        reply.text()
    );
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        (1..=2).contains(&retry),
        "retry when the next refetch is allowed: {retry}"
    );
    assert!(
        reply.text().contains("the last JWKS fetch failed"),
        "{}",
        reply.text()
    );
    assert_eq!(h.issuer.stats().jwks_requests - before, 1, "rate-limited");
    assert_eq!(h.get_id_calls(), calls, "nothing reached Cognito");

    // The JWKS is back: the rotated key is found at the next allowed refetch.
    h.issuer.set_jwks_unavailable(false);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reply = h.get(&rotated).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A fresh JWKS (fetched just now) that lacks a kid: that is a bad token, 401.
    let reply = h.get(&with_kid(&h, "auth0|unknown", "no-such-kid")).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "UnknownKeyId".to_owned()),
        "{}",
        reply.text()
    );
    // And after the interval, with a successful refetch that still lacks it: 401 as well.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = h.issuer.stats().jwks_requests;
    let reply = h
        .get(&with_kid(&h, "auth0|unknown-2", "no-such-kid-2"))
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "UnknownKeyId".to_owned())
    );
    assert_eq!(h.issuer.stats().jwks_requests - before, 1);
    h.stop().await;
}
