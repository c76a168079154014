//! Key rotation works; unknown kids cannot make credbroker hammer the issuer; withdrawn keys
//! stop counting.

use std::time::Duration;

use credbroker::emulator::oidc::TokenSpec;

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
