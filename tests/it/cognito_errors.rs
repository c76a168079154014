//! Each Cognito error type reaches the caller as its own status and code; throttling is
//! retried with backoff; failures are remembered instead of hammering Cognito.

use credbroker::broker::BrokerError;
use credbroker::metrics::Surface;
use credbroker_emulators::cognito::{ErrorType, Operation};
use credbroker_emulators::oidc::TokenSpec;

use crate::single_flight::metric;
use crate::support::{Harness, Tweaks};

fn fast_retries() -> Tweaks {
    Tweaks {
        cognito: "backoff_base = \"5ms\"\nbackoff_max = \"20ms\"\nmax_attempts = 3".into(),
        ..Tweaks::default()
    }
}

#[tokio::test]
async fn every_cognito_error_type_maps_to_a_status_and_code() {
    let h = Harness::with(fast_retries()).await;
    let cases = [
        (
            Operation::GetId,
            ErrorType::NotAuthorized,
            1,
            403,
            "LoginRejected",
        ),
        (
            Operation::GetId,
            ErrorType::ResourceNotFound,
            1,
            403,
            "ResourceNotFound",
        ),
        (
            Operation::GetId,
            ErrorType::InvalidParameter,
            1,
            403,
            "InvalidParameter",
        ),
        (
            Operation::GetId,
            ErrorType::LimitExceeded,
            1,
            403,
            "LimitExceeded",
        ),
        (
            Operation::GetId,
            ErrorType::ResourceConflict,
            1,
            403,
            "ResourceConflict",
        ),
        (
            Operation::GetCredentialsForIdentity,
            ErrorType::InvalidIdentityPoolConfiguration,
            1,
            403,
            "IdentityPoolMisconfigured",
        ),
        (
            Operation::GetId,
            ErrorType::TooManyRequests,
            3,
            503,
            "UpstreamThrottled",
        ),
        (
            Operation::GetId,
            ErrorType::InternalError,
            3,
            503,
            "UpstreamUnavailable",
        ),
        (
            Operation::GetCredentialsForIdentity,
            ErrorType::ExternalService,
            3,
            503,
            "UpstreamUnavailable",
        ),
        (
            Operation::GetId,
            ErrorType::ServiceUnavailable,
            3,
            503,
            "UpstreamUnavailable",
        ),
    ];
    for (i, (op, error, count, status, code)) in cases.into_iter().enumerate() {
        h.cognito.faults().clear();
        h.cognito.faults().fail_next(op, error, count);
        let reply = h.get(&h.issuer.token_for(&format!("auth0|err-{i}"))).await;
        assert_eq!(reply.status, status, "{error:?}: {}", reply.text());
        assert_eq!(reply.code(), code, "{error:?}: {}", reply.text());
        if status == 503 {
            let retry: u64 = reply.headers["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!(retry >= 1, "{error:?}");
        } else {
            assert!(!reply.headers.contains_key("retry-after"), "{error:?}");
        }
    }
    // The pool misconfiguration message names the fix.
    h.cognito.faults().clear();
    h.cognito.faults().fail_next(
        Operation::GetCredentialsForIdentity,
        ErrorType::InvalidIdentityPoolConfiguration,
        1,
    );
    let reply = h.get(&h.issuer.token_for("auth0|fix")).await;
    assert!(
        reply.text().contains("AssumeRoleWithWebIdentity"),
        "{}",
        reply.text()
    );
    h.stop().await;
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_until_it_passes() {
    let h = Harness::with(fast_retries()).await;
    h.cognito
        .faults()
        .fail_next(Operation::GetId, ErrorType::TooManyRequests, 2);
    let reply = h.get(&h.issuer.token_for("auth0|throttled")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let stats = h.cognito.stats();
    assert_eq!(
        stats.get_id.calls, 3,
        "two throttled attempts, then success"
    );
    assert_eq!(stats.get_id.ok, 1);
    let metrics = h.running().broker.metrics.render();
    assert_eq!(
        metric(
            &metrics,
            "credbroker_cognito_retries_total{operation=\"GetId\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "credbroker_cognito_calls_total{operation=\"GetId\",outcome=\"throttled\"}"
        ),
        2.0
    );
    h.stop().await;
}

#[tokio::test]
async fn a_refused_token_is_remembered_and_an_outage_is_not_hammered() {
    let h = Harness::with(fast_retries()).await;
    // Terminal refusal: the same token is answered from memory; another user is unaffected.
    h.cognito
        .faults()
        .fail_next(Operation::GetId, ErrorType::NotAuthorized, 1);
    let token = h.issuer.token_for("auth0|refused");
    assert_eq!(h.get(&token).await.status, 403);
    for _ in 0..20 {
        let again = h.get(&token).await;
        assert_eq!(
            (again.status, again.code().as_str()),
            (403, "LoginRejected")
        );
    }
    assert_eq!(h.get_id_calls(), 1, "the refusal was remembered");
    assert_eq!(h.get(&h.issuer.token_for("auth0|other")).await.status, 200);

    // Outage: the first caller's exchange retries, later callers get 503 from memory.
    h.cognito.faults().set_outage(true);
    let down = h.issuer.token_for("auth0|during-outage");
    let before = h.get_id_calls();
    assert_eq!(h.get(&down).await.status, 503);
    let after_first = h.get_id_calls();
    assert_eq!(after_first - before, 3, "max_attempts attempts");
    for _ in 0..20 {
        assert_eq!(h.get(&down).await.status, 503);
    }
    assert_eq!(
        h.get_id_calls(),
        after_first,
        "no further calls during the backoff"
    );
    // Cached identities keep being served during the outage.
    assert_eq!(h.get(&h.issuer.token_for("auth0|other")).await.status, 200);
    h.cognito.faults().set_outage(false);
    h.stop().await;
}

#[tokio::test]
async fn too_many_waiting_callers_get_429() {
    let h = Harness::with(Tweaks {
        server: "max_pending_exchanges = 2".into(),
        ..Tweaks::default()
    })
    .await;
    h.cognito
        .faults()
        .set_latency(std::time::Duration::from_millis(300));
    let tokens: Vec<String> = (0..6)
        .map(|i| h.issuer.token_for(&format!("auth0|busy-{i}")))
        .collect();
    let replies = futures_util::future::join_all(tokens.iter().map(|t| h.get(t))).await;
    let busy = replies.iter().filter(|r| r.status == 429).count();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 2, "two were allowed to wait");
    assert_eq!(busy, 4);
    assert!(
        replies
            .iter()
            .filter(|r| r.status == 429)
            .all(|r| r.code() == "TooManyRequests" && r.headers.contains_key("retry-after"))
    );
    h.stop().await;
}

#[tokio::test]
async fn a_cognito_attempt_timeout_is_503_upstream_timeout() {
    let h = Harness::with(Tweaks {
        cognito: "attempt_timeout = \"200ms\"\nmax_attempts = 1".into(),
        ..Tweaks::default()
    })
    .await;
    // Slower than the attempt timeout, far inside server.request_timeout (10 s).
    h.cognito
        .faults()
        .set_latency(std::time::Duration::from_secs(2));
    let reply = h.get(&h.issuer.token_for("auth0|slow-cognito")).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.code(), "UpstreamTimeout", "{}", reply.text());
    assert!(reply.headers.contains_key("retry-after"));
    let m = h.running().broker.metrics.render();
    assert_eq!(
        metric(
            &m,
            "credbroker_cognito_calls_total{operation=\"GetId\",outcome=\"timeout\"}"
        ),
        1.0,
        "{m}"
    );
    h.cognito.faults().clear();
    h.stop().await;
}

#[tokio::test]
async fn a_refusal_is_remembered_for_that_token_only_so_signing_in_again_works() {
    let h = Harness::with(fast_retries()).await;
    h.cognito
        .faults()
        .fail_next(Operation::GetId, ErrorType::NotAuthorized, 1);
    let refused = h.issuer.token_for("auth0|signs-in-again");
    assert_eq!(h.get(&refused).await.code(), "LoginRejected");
    assert_eq!(h.get(&refused).await.code(), "LoginRejected");
    assert_eq!(
        h.get_id_calls(),
        1,
        "the refused token is answered from memory"
    );

    // The user signs in again: a new token for the same identity is exchanged at once.
    let fresh = h.issuer.mint(&TokenSpec {
        nonce: Some("second-login".into()),
        ..TokenSpec::for_subject("auth0|signs-in-again")
    });
    assert_ne!(fresh, refused);
    let reply = h.get(&fresh).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        (h.get_id_calls(), h.credential_calls()),
        (2, 1),
        "the new token reached Cognito"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_remembered_refusal_expires_after_negative_ttl() {
    let h = Harness::with(Tweaks {
        in_process_cognito: true,
        cache: "negative_ttl = \"30s\"".into(),
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        ..fast_retries()
    })
    .await;
    let token = h.issuer.mint(&TokenSpec {
        lifetime: Some(std::time::Duration::from_secs(12 * 3600)),
        ..TokenSpec::for_subject("auth0|negative-ttl")
    });
    let broker = &h.running().broker;
    tokio::time::pause();
    h.cognito
        .faults()
        .fail_next(Operation::GetId, ErrorType::NotAuthorized, 1);
    let code = |r: Result<_, BrokerError>| r.map(|_| ()).map_err(|e| e.reply().code);
    assert_eq!(
        code(broker.credentials(&token, Surface::Container).await),
        Err("LoginRejected")
    );
    tokio::time::sleep(std::time::Duration::from_secs(29)).await;
    let remembered = broker
        .credentials(&token, Surface::Container)
        .await
        .expect_err("still remembered");
    assert_eq!(remembered.reply().code, "LoginRejected");
    assert_eq!(
        remembered.reply().retry_after,
        None,
        "a refusal is not retryable"
    );
    assert_eq!(h.get_id_calls(), 1, "29 s in: no second call");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        code(broker.credentials(&token, Surface::Container).await),
        Ok(())
    );
    assert_eq!(
        h.get_id_calls(),
        2,
        "31 s in: tried again, and Cognito accepted it"
    );
    let m = broker.metrics.render();
    assert_eq!(
        metric(&m, "credbroker_cache_lookups_total{result=\"negative\"}"),
        1.0,
        "{m}"
    );
    h.stop().await;
}
