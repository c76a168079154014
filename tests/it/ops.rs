//! Operations: the admin listener's metrics and readiness, and the process lifecycle under
//! signals (the real binary).

use std::sync::Arc;
use std::time::Duration;

use credbroker_emulators::oidc::TokenSpec;

use crate::single_flight::metric;
use crate::support::{Binary, Harness, Reply, Tweaks, config_toml, request, settle, tempdir};

const MIN: Duration = Duration::from_secs(60);

async fn scrape(h: &Harness) -> String {
    let reply = h.admin_get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        reply.headers
    );
    reply.text()
}

async fn readyz(h: &Harness) -> (u16, serde_json::Value) {
    let reply = h.admin_get("/readyz").await;
    (reply.status, reply.json())
}

/// Polls `/readyz` until it answers `status` (bounded; the broker retries keys with backoff).
async fn readyz_until(h: &Harness, status: u16) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = readyz(h).await;
        if s == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {status}; last: {s} {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_follow_a_miss_hit_refresh_failure_scenario_over_the_admin_listener() {
    let h = Harness::with(Tweaks {
        in_process_cognito: true,
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        ..Tweaks::default()
    })
    .await;
    let alice = h.issuer.mint(&TokenSpec {
        lifetime: Some(12 * 60 * MIN),
        ..TokenSpec::for_subject("auth0|ops-alice")
    });

    // Miss: one exchange, one issued set.
    assert_eq!(h.get(&alice).await.status, 200);
    let m = scrape(&h).await;
    let series = |m: &str, s: &str| metric(m, &format!("credbroker_{s}"));
    assert_eq!(
        series(&m, "cache_lookups_total{result=\"miss\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(series(&m, "cache_lookups_total{result=\"hit\"}"), 0.0);
    assert_eq!(
        series(
            &m,
            "cognito_calls_total{operation=\"GetId\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        series(
            &m,
            "cognito_calls_total{operation=\"GetCredentialsForIdentity\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        series(
            &m,
            "cognito_call_duration_seconds_count{operation=\"GetId\"}"
        ),
        1.0
    );
    assert_eq!(
        series(&m, "refreshes_total{result=\"ok\",trigger=\"on_demand\"}"),
        1.0
    );
    assert_eq!(
        series(&m, "credentials_issued_total{surface=\"container\"}"),
        1.0
    );
    assert_eq!(
        series(&m, "requests_total{status=\"200\",surface=\"container\"}"),
        1.0
    );
    assert_eq!(
        series(&m, "request_duration_seconds_count{surface=\"container\"}"),
        1.0
    );
    assert_eq!(
        series(
            &m,
            "token_validations_total{outcome=\"ok\",provider=\"test\"}"
        ),
        1.0
    );
    assert_eq!(
        series(&m, "jwks_fetches_total{provider=\"test\",result=\"ok\"}"),
        1.0
    );
    // Gauges are brought up to date by the scrape itself.
    assert_eq!(series(&m, "identities_cached"), 1.0);
    let soonest = series(&m, "soonest_credential_expiry_seconds");
    assert!(
        soonest > 50.0 * 60.0 && soonest <= 3600.0,
        "one-hour credentials: {soonest}"
    );
    let token_expiry = series(&m, "soonest_token_expiry_seconds");
    assert!(token_expiry > 11.0 * 3600.0, "{token_expiry}");
    assert_eq!(series(&m, "ready"), 1.0, "keys loaded and Cognito answered");
    assert_eq!(series(&m, "provider_keys_loaded{provider=\"test\"}"), 1.0);
    assert_eq!(series(&m, "cognito_reachable"), 1.0);
    assert!(m.contains("credbroker_build_info{version=\""), "{m}");

    // Hit: served from cache, no Cognito call, no second audit event for the same set.
    assert_eq!(h.get(&alice).await.status, 200);
    let m = scrape(&h).await;
    assert_eq!(
        series(&m, "cache_lookups_total{result=\"hit\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(series(&m, "cache_lookups_total{result=\"miss\"}"), 1.0);
    assert_eq!(
        series(
            &m,
            "token_validations_total{outcome=\"cached\",provider=\"test\"}"
        ),
        1.0
    );
    assert_eq!(
        series(&m, "requests_total{status=\"200\",surface=\"container\"}"),
        2.0
    );
    assert_eq!(
        series(&m, "credentials_issued_total{surface=\"container\"}"),
        1.0
    );

    // Refresh ahead of expiry: 36 minutes of paused time (refresh_ahead 30m, jitter 5m).
    tokio::time::pause();
    tokio::time::sleep(36 * MIN).await;
    settle().await;
    tokio::time::resume();
    assert_eq!(h.credential_calls(), 2, "refreshed in the background");
    let m = scrape(&h).await;
    assert_eq!(
        series(&m, "refreshes_total{result=\"ok\",trigger=\"ahead\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            "cognito_calls_total{operation=\"GetCredentialsForIdentity\",outcome=\"ok\"}"
        ),
        2.0
    );
    assert_eq!(
        series(
            &m,
            "cognito_calls_total{operation=\"GetId\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert!(series(&m, "soonest_credential_expiry_seconds") > 50.0 * 60.0);
    // The refreshed set is a new issuance the first time it is served.
    assert_eq!(h.get(&alice).await.status, 200);
    let m = scrape(&h).await;
    assert_eq!(series(&m, "cache_lookups_total{result=\"hit\"}"), 2.0);
    assert_eq!(
        series(&m, "credentials_issued_total{surface=\"container\"}"),
        2.0
    );

    // Failure: Cognito is down while a new user asks; every attempt is counted and retried.
    h.cognito.faults().set_outage(true);
    let bob = h.issuer.token_for("auth0|ops-bob");
    let reply = h.get(&bob).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let m = scrape(&h).await;
    assert_eq!(
        series(
            &m,
            "refreshes_total{result=\"failed\",trigger=\"on_demand\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            "cognito_calls_total{operation=\"GetId\",outcome=\"unavailable\"}"
        ),
        3.0,
        "cognito.max_attempts = 3"
    );
    assert_eq!(
        series(&m, "cognito_retries_total{operation=\"GetId\"}"),
        2.0
    );
    assert_eq!(
        series(&m, "requests_total{status=\"503\",surface=\"container\"}"),
        1.0
    );
    assert_eq!(series(&m, "cache_lookups_total{result=\"miss\"}"), 2.0);
    assert_eq!(series(&m, "identities_cached"), 2.0);
    assert_eq!(
        series(&m, "credentials_issued_total{surface=\"container\"}"),
        2.0,
        "bob got none"
    );
    assert_eq!(series(&m, "served_below_min_remaining_total"), 0.0);
    // Alice's credentials are still servable, so the broker stays ready.
    assert_eq!(series(&m, "ready"), 1.0);
    assert_eq!(series(&m, "cognito_reachable"), 0.0);

    // Labels are bounded: no subject, identity id or key id in the exposition.
    for secret_ish in ["ops-alice", "ops-bob", "auth0|", "ASIA"] {
        assert!(!m.contains(secret_ish), "{secret_ish} in the metrics");
    }
    h.stop().await;
}

#[tokio::test]
async fn readyz_is_503_with_the_reason_until_the_issuer_serves_keys() {
    let h = Harness::with(Tweaks {
        setup: Some(Arc::new(|issuer, _| issuer.set_unavailable(true))),
        ..Tweaks::default()
    })
    .await;
    let (status, body) = readyz(&h).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["providers"][0]["name"], "test");
    assert_eq!(body["providers"][0]["keys_loaded"], false);
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("provider test: discovery and JWKS not loaded yet")
            && reasons.contains("503"),
        "the reason names the provider and the issuer's answer: {body:#}"
    );
    // Cognito itself answers (the probe's placeholder login is refused).
    assert_eq!(body["cognito"]["status"], "answered", "{body:#}");
    assert_eq!(metric(&scrape(&h).await, "credbroker_ready"), 0.0);
    // Liveness never depends on upstreams.
    assert_eq!(h.admin_get("/livez").await.status, 200);

    h.issuer.set_unavailable(false);
    let body = readyz_until(&h, 200).await;
    assert_eq!(body["ready"], true);
    assert_eq!(body["reasons"], serde_json::json!([]));
    assert_eq!(body["providers"][0]["keys_loaded"], true);
    assert_eq!(metric(&scrape(&h).await, "credbroker_ready"), 1.0);
    h.stop().await;
}

#[tokio::test]
async fn readyz_is_503_during_a_cognito_outage_with_nothing_cached() {
    let h = Harness::with(Tweaks {
        admin: "cognito_probe_interval = \"100ms\"".into(),
        ..Tweaks::default()
    })
    .await;
    h.cognito.faults().set_outage(true);
    let (status, body) = readyz(&h).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["cognito"]["status"], "failing");
    assert_eq!(body["credentials_cached"], false);
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("cognito: no answer and no cached credentials")
            && reasons.contains("unavailable"),
        "{body:#}"
    );
    assert_eq!(body["providers"][0]["keys_loaded"], true, "keys are fine");
    let m = scrape(&h).await;
    assert!(
        metric(
            &m,
            "credbroker_cognito_probes_total{outcome=\"unavailable\"}"
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "credbroker_ready"), 0.0);
    assert_eq!(h.get(&h.issuer.token_for("auth0|early")).await.status, 503);

    // Cognito comes back: the next probe sees it.
    h.cognito.faults().set_outage(false);
    let body = readyz_until(&h, 200).await;
    assert_eq!(body["cognito"]["status"], "answered", "{body:#}");

    // With credentials cached, a new outage does not make the broker unready: it still serves.
    let alice = h.issuer.token_for("auth0|cached");
    assert_eq!(h.get(&alice).await.status, 200);
    h.cognito.faults().set_outage(true);
    assert_eq!(h.get(&h.issuer.token_for("auth0|late")).await.status, 503);
    let (status, body) = readyz(&h).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["cognito"]["status"], "failing", "the outage was seen");
    assert_eq!(body["credentials_cached"], true);
    assert_eq!(h.get(&alice).await.status, 200, "served from cache");
    h.stop().await;
}

/// Polls the admin `/readyz` until it reports shutting down.
async fn wait_shutting_down(h: &Harness, admin: &str) {
    let url = format!("http://{admin}/readyz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply: Reply = request(&h.http, "GET", &url, &[]).await;
        if reply.status == 503 && reply.json()["shutting_down"] == true {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reported shutting down: {} {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_binary(h: &Harness, server: &str) -> (Binary, String, String, std::path::PathBuf) {
    let dir = tempdir();
    let config = dir.join("credbroker.toml");
    let tweaks = Tweaks {
        server: server.to_owned(),
        ..Tweaks::default()
    };
    std::fs::write(&config, config_toml(&h.issuer, &h.cognito, &tweaks)).expect("write");
    let bin = Binary::spawn(&config, "info");
    let admin = bin.listen_of("admin listener is serving").await;
    let main = bin.listen_of("credbroker is serving").await;
    (bin, main, admin, dir)
}

/// Waits until `n` exchanges are in flight (counted by the broker before it calls Cognito).
async fn wait_in_flight(h: &Harness, admin: &str, n: f64) {
    let url = format!("http://{admin}/metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = request(&h.http, "GET", &url, &[]).await.text();
        if metric(&m, "credbroker_cache_lookups_total{result=\"miss\"}") >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_zero() {
    let h = Harness::start().await;
    let (mut bin, main, admin, dir) =
        start_binary(&h, "shutdown_grace = \"60s\"\nrequest_timeout = \"60s\"").await;
    let url = format!("http://{main}/v1/credentials");
    // Each exchange is GetId + GetCredentialsForIdentity, each answered after 2 s.
    h.cognito.faults().set_latency(Duration::from_secs(2));
    let in_flight: Vec<_> = ["auth0|drain-1", "auth0|drain-2", "auth0|drain-3"]
        .into_iter()
        .map(|sub| {
            let token = h.issuer.token_for(sub);
            let (http, url) = (h.http.clone(), url.clone());
            tokio::spawn(
                async move { request(&http, "GET", &url, &[("authorization", &token)]).await },
            )
        })
        .collect();
    wait_in_flight(&h, &admin, 3.0).await;

    bin.signal("TERM");
    // The drain started: readiness says so while the admin listener keeps answering...
    wait_shutting_down(&h, &admin).await;
    // ...and the credentials listener closes. While its socket is being closed, a connection
    // can still complete the handshake into the backlog and then be reset, so the first
    // failing attempt may be refused or reset; that connection is never served.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(&main).await {
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ),
                    "{e}"
                );
                break;
            }
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still accepting after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Once it is closed, nothing connects any more: no new request can be served.
    for _ in 0..3 {
        let e = tokio::net::TcpStream::connect(&main)
            .await
            .expect_err("the listener stays closed during the drain");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }
    // The requests in flight complete with credentials.
    for r in in_flight {
        let reply = r.await.expect("request task");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.json()["AccessKeyId"].is_string());
    }
    let exit = tokio::time::timeout(Duration::from_secs(60), bin.child.wait())
        .await
        .expect("exits after the drain")
        .expect("wait");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}\n{}", bin.logs());
    let logs = bin.logs.clone();
    let _ = bin.reader.await;
    let logs = logs.lock().expect("lock").clone();
    assert!(logs.contains("signal received; draining"), "{logs}");
    assert!(logs.contains("credbroker stopped"), "{logs}");
    assert!(
        !logs.contains("requests still running after the grace period"),
        "{logs}"
    );
    h.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_without_waiting_for_the_drain() {
    let h = Harness::start().await;
    let (mut bin, main, admin, dir) =
        start_binary(&h, "shutdown_grace = \"10m\"\nrequest_timeout = \"5m\"").await;
    // A request that would keep the drain busy for minutes.
    h.cognito.faults().set_latency(Duration::from_secs(120));
    let token = h.issuer.token_for("auth0|stuck");
    let (http, url) = (h.http.clone(), format!("http://{main}/v1/credentials"));
    let stuck =
        tokio::spawn(
            async move { request(&http, "GET", &url, &[("authorization", &token)]).await },
        );
    wait_in_flight(&h, &admin, 1.0).await;

    bin.signal("INT");
    wait_shutting_down(&h, &admin).await;
    // Second signal (repeated until the process is gone: the handler for it is armed right
    // after the first one was received).
    let exit = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(status) = bin.child.try_wait().expect("try_wait") {
                return status;
            }
            bin.signal("TERM");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a second signal ends the process without waiting for the drain");
    assert_eq!(exit.code(), Some(130), "{exit:?}\n{}", bin.logs());
    stuck.abort();
    h.cognito.faults().clear();
    h.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
