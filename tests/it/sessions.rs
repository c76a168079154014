//! Sessions over HTTP: login (`POST /v1/sessions`), the handle as the container endpoint's
//! Authorization value through the real aws-config provider, logout, and isolation; sessions
//! kept alive by a refresh token (under paused time).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use credbroker::broker::BrokerError;
use credbroker::identity::Issued;
use credbroker::metrics::Surface;
use credbroker_emulators::oidc::{IssuerOptions, TokenSpec};
use http_body_util::Full;

use crate::support::{Harness, Reply, Tweaks, sdk_container_credentials};

pub async fn post_json(h: &Harness, path: &str, body: &str) -> Reply {
    let url = format!("http://{}{path}", h.running().container_addr);
    let req = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = h.http.request(req).await.expect("answer");
    let (parts, body) = resp.into_parts();
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

pub async fn create_session(h: &Harness, token: &str) -> String {
    let reply = post_json(
        h,
        "/v1/sessions",
        &serde_json::json!({ "id_token": token }).to_string(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["session_token"]
        .as_str()
        .expect("session_token")
        .to_owned()
}

async fn logout(h: &Harness, handle: &str) -> Reply {
    let url = format!("http://{}/v1/sessions/current", h.running().container_addr);
    h.request("DELETE", &url, &[("authorization", handle)])
        .await
}

#[tokio::test]
async fn a_session_serves_the_sdk_until_it_is_revoked() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|session-user");
    let reply = post_json(
        &h,
        "/v1/sessions",
        &serde_json::json!({ "id_token": token }).to_string(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.headers["cache-control"], "no-store");
    let body = reply.json();
    let handle = body["session_token"].as_str().expect("handle").to_owned();
    assert!(handle.starts_with("cbs_") && handle.len() == 47, "{handle}");
    let expires_at = body["expires_at"].as_str().expect("expires_at");
    assert!(
        expires_at.ends_with('Z') && expires_at.len() == 20,
        "{expires_at}"
    );
    assert_eq!(
        h.credential_calls(),
        1,
        "the login was exchanged at creation"
    );

    // The handle is what the app's token file holds.
    let file = h.token_file("session", &handle);
    let creds = sdk_container_credentials(&h.url(), &file)
        .await
        .expect("the SDK gets credentials with a session handle");
    let issued = h
        .cognito
        .lookup_access_key(creds.access_key_id())
        .expect("issued by Cognito");
    assert_eq!(creds.secret_access_key(), issued.secret_key.expose_str());
    assert_eq!(h.credential_calls(), 1, "served from cache");

    // Logout.
    let reply = logout(&h, &handle).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["identity_evicted"], true);
    assert_eq!(
        h.running().broker.identities.len(),
        0,
        "cache entry dropped"
    );

    // The handle is dead everywhere.
    let reply = h.get(&handle).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.code(), "InvalidSession");
    assert!(sdk_container_credentials(&h.url(), &file).await.is_err());
    let reply = logout(&h, &handle).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "InvalidSession".to_owned())
    );
    h.stop().await;
}

/// The cached path remembers each token's identity (one lookup per request): a logout that
/// evicts the identity must make the same raw token find a fresh cache entry, never keep using
/// the evicted one (whose credentials the logout withdrew).
#[tokio::test]
async fn a_token_seen_before_a_logout_gets_a_fresh_cache_entry_after_it() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|remembered");
    assert_eq!(h.get(&token).await.status, 200);
    assert_eq!(h.get(&token).await.status, 200, "remembered");
    let before = h.running().broker.cached_identities();
    assert_eq!(before.len(), 1);
    let handle = create_session(&h, &token).await;
    let reply = logout(&h, &handle).await;
    assert_eq!(reply.json()["identity_evicted"], true, "{}", reply.text());
    assert_eq!(h.running().broker.identities.len(), 0);

    let reply = h.get(&token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let after = h.running().broker.cached_identities();
    assert_eq!(after.len(), 1, "the token's identity is cached again");
    assert!(
        !Arc::ptr_eq(&before[0].0, &after[0].0),
        "a new entry, not the evicted one"
    );
    assert_eq!(h.credential_calls(), 2, "exchanged afresh after the logout");
    // And the fresh entry serves the next request from cache.
    let key = h.get(&token).await.json()["AccessKeyId"].clone();
    assert_eq!(reply.json()["AccessKeyId"], key);
    assert_eq!(h.credential_calls(), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_session_handle_only_ever_yields_its_own_identitys_credentials() {
    let h = Harness::start().await;
    let alice = create_session(&h, &h.issuer.token_for("auth0|alice")).await;
    let bob = create_session(&h, &h.issuer.token_for("auth0|bob")).await;
    let key_of = |reply: &Reply| {
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["AccessKeyId"]
            .as_str()
            .expect("key")
            .to_owned()
    };
    let alice_key = key_of(&h.get(&alice).await);
    let bob_key = key_of(&h.get(&bob).await);
    assert_ne!(alice_key, bob_key);
    let alice_id = h
        .cognito
        .lookup_access_key(&alice_key)
        .expect("a")
        .identity_id;
    let bob_id = h
        .cognito
        .lookup_access_key(&bob_key)
        .expect("b")
        .identity_id;
    assert_ne!(alice_id, bob_id);
    // Alice's raw token gets Alice's cached credentials, Bob's handle Bob's, repeatedly.
    for _ in 0..5 {
        assert_eq!(
            key_of(&h.get(&h.issuer.token_for("auth0|alice")).await),
            alice_key
        );
        assert_eq!(key_of(&h.get(&bob).await), bob_key);
    }
    // A well-formed but unknown handle, and Alice's handle with one character changed.
    let forged = format!("cbs_{}", "A".repeat(43));
    let mut tampered = alice.clone().into_bytes();
    tampered[20] = if tampered[20] == b'x' { b'y' } else { b'x' };
    for handle in [forged, String::from_utf8(tampered).expect("ascii")] {
        let reply = h.get(&handle).await;
        assert_eq!(
            (reply.status, reply.code()),
            (401, "InvalidSession".to_owned())
        );
    }
    // Logging Bob out leaves Alice alone.
    assert_eq!(logout(&h, &bob).await.status, 200);
    assert_eq!(key_of(&h.get(&alice).await), alice_key);
    h.stop().await;
}

#[tokio::test]
async fn revoking_one_of_two_sessions_of_a_user_keeps_the_other_working() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|two-devices");
    let laptop = create_session(&h, &token).await;
    let phone = create_session(&h, &token).await;
    assert_ne!(laptop, phone);
    let reply = logout(&h, &laptop).await;
    assert_eq!(reply.json()["identity_evicted"], false);
    assert_eq!(h.get(&phone).await.status, 200);
    assert_eq!(h.credential_calls(), 1, "the identity stayed cached");
    assert_eq!(h.get(&laptop).await.status, 401);
    h.stop().await;
}

#[tokio::test]
async fn session_requests_are_checked_and_answered_with_codes() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|errors");
    let reply = post_json(
        &h,
        "/v1/sessions",
        &serde_json::json!({ "id_token": token, "refresh_token": "v1.secret-refresh" }).to_string(),
    )
    .await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "ReloginRequired".to_owned()),
        "an unknown refresh token is refused by the issuer"
    );
    assert!(!reply.text().contains("secret-refresh"), "{}", reply.text());
    assert!(
        h.running().broker.sessions.is_empty(),
        "no session was kept"
    );
    let reply = post_json(
        &h,
        "/v1/sessions",
        &serde_json::json!({ "id_token": token, "client_id": "credbroker-demo-client" })
            .to_string(),
    )
    .await;
    assert_eq!(
        (reply.status, reply.code()),
        (400, "MalformedRequest".to_owned()),
        "client_id without refresh_token"
    );
    for body in [
        "not json",
        "{}",
        r#"{"id_token": 5}"#,
        r#"{"id_token":"x","extra":1}"#,
    ] {
        let reply = post_json(&h, "/v1/sessions", body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "MalformedRequest".to_owned()),
            "{body}"
        );
    }
    let reply = post_json(&h, "/v1/sessions", r#"{"id_token":"secret-looking-value"}"#).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "MalformedToken".to_owned())
    );
    assert!(
        !reply.text().contains("secret-looking-value"),
        "{}",
        reply.text()
    );
    let reply = post_json(
        &h,
        "/v1/sessions",
        &format!(r#"{{"id_token":"{}"}}"#, "a".repeat(70_000)),
    )
    .await;
    assert_eq!(reply.status, 413);
    // Logout needs a session handle, not an ID token.
    let reply = logout(&h, &token).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "InvalidSession".to_owned())
    );
    h.stop().await;
}

#[tokio::test]
async fn a_session_ends_when_its_id_token_expires() {
    // A short-lived token is accepted only with less than the default 60 s min_token_validity.
    let h = Harness::with(Tweaks {
        tokens: "min_token_validity = \"1s\"".into(),
        ..Tweaks::default()
    })
    .await;
    let token = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(4)),
        ..TokenSpec::for_subject("auth0|short-lived")
    });
    let handle = create_session(&h, &token).await;
    assert_eq!(h.get(&handle).await.status, 200);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let reply = h.get(&handle).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "SessionExpired".to_owned())
    );
    h.stop().await;
}

// Refresh-token sessions. The issuer's token endpoint and Cognito are called in process, so
// time can be paused (`tokio::time::pause`) and hours pass in milliseconds; the HTTP requests
// (sockets) happen in real time, before pausing or after `tokio::time::resume`.

const MIN: Duration = Duration::from_secs(60);
const USER: &str = "auth0|refreshing-user";

/// ID tokens live 2 minutes; sessions 12 hours.
fn refresh_tweaks() -> Tweaks {
    Tweaks {
        in_process_cognito: true,
        in_process_issuer: true,
        issuer_options: Some(IssuerOptions {
            token_lifetime: 2 * MIN,
            ..IssuerOptions::default()
        }),
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        sessions: "max_lifetime = \"12h\"".into(),
        ..Tweaks::default()
    }
}

async fn post_session(h: &Harness, body: serde_json::Value) -> Reply {
    post_json(h, "/v1/sessions", &body.to_string()).await
}

/// A session for `USER` with a fresh ID token and refresh token; returns the handle and the
/// refresh token (for revoking its family).
async fn refresh_session(h: &Harness) -> (String, String) {
    let refresh_token = h.issuer.issue_refresh_token(USER);
    let reply = post_session(
        h,
        serde_json::json!({
            "id_token": h.issuer.token_for(USER),
            "refresh_token": refresh_token,
        }),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let handle = reply.json()["session_token"]
        .as_str()
        .expect("session_token")
        .to_owned();
    (handle, refresh_token)
}

async fn served(h: &Harness, handle: &str) -> Result<Arc<Issued>, BrokerError> {
    h.running()
        .broker
        .credentials(handle, Surface::Container)
        .await
}

#[tokio::test]
async fn a_refresh_token_session_outlives_its_two_minute_id_tokens() {
    let h = Harness::with(refresh_tweaks()).await;
    let created_at = h.clock.now();
    let id_token = h.issuer.token_for(USER);
    let refresh_token = h.issuer.issue_refresh_token(USER);
    let reply = post_session(
        &h,
        serde_json::json!({ "id_token": id_token, "refresh_token": refresh_token }),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let body = reply.json();
    let handle = body["session_token"].as_str().expect("handle").to_owned();
    let broker = &h.running().broker;
    let session = broker.sessions.get(&handle).expect("live");
    let lifetime = session
        .expires_at()
        .duration_since(created_at)
        .expect("after creation");
    assert!(
        (12 * 60 * MIN..=12 * 60 * MIN + Duration::from_secs(2)).contains(&lifetime),
        "sessions.max_lifetime, not the ID token's 2 minutes: {lifetime:?}"
    );
    assert_eq!(
        body["expires_at"],
        credbroker::clock::format_aws_timestamp(session.expires_at())
    );
    let stats = h.issuer.token_stats();
    assert_eq!(
        stats.issued, 1,
        "redeemed once while the session was created"
    );
    assert!(
        session.token().expires_at > created_at + MIN,
        "the session holds a token"
    );
    let log_safe = format!("{session:?} {:?}", broker.sessions);
    assert!(!log_safe.contains(&refresh_token), "{log_safe}");

    tokio::time::pause();
    let mut keys = std::collections::BTreeSet::new();
    for _ in 0..(3 * 60) {
        tokio::time::sleep(MIN).await;
        let c = served(&h, &handle)
            .await
            .expect("served long after the first ID token expired");
        let now = h.clock.now();
        assert!(c.expires_at > now + 5 * MIN);
        let token = session.token();
        assert!(
            token.expires_at > now,
            "the session's ID token is kept fresh"
        );
        assert_eq!(token.subject.as_ref(), USER);
        keys.insert(c.access_key_id().to_owned());
    }
    let stats = h.issuer.token_stats();
    // One redemption every 60–72 s (50–60 % of 2 minutes) for 3 hours: about 150–180.
    assert!(
        (140..=200).contains(&stats.issued),
        "{} redemptions in 3 h",
        stats.issued
    );
    assert_eq!(
        (stats.invalid_grant, stats.reuse_detected),
        (0, 0),
        "never reused a rotated token"
    );
    assert!(
        keys.len() >= 3,
        "Cognito credentials kept refreshing: {keys:?}"
    );
    assert_eq!(h.get_id_calls(), 1);

    // Through the container endpoint, 3 hours in.
    tokio::time::resume();
    let reply = h.get(&handle).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    h.stop().await;
}

#[tokio::test]
async fn revoking_a_refresh_token_session_stops_its_redemptions() {
    let h = Harness::with(refresh_tweaks()).await;
    let (handle, _) = refresh_session(&h).await;
    tokio::time::pause();
    tokio::time::sleep(10 * MIN).await;
    let running = h.issuer.token_stats().requests;
    assert!(running >= 8, "redeemed while live: {running}");

    tokio::time::resume();
    let url = format!("http://{}/v1/sessions/current", h.running().container_addr);
    let reply = h
        .request("DELETE", &url, &[("authorization", &handle)])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let at_revoke = h.issuer.token_stats().requests;
    tokio::time::pause();
    tokio::time::sleep(3 * 60 * MIN).await;
    assert_eq!(
        h.issuer.token_stats().requests,
        at_revoke,
        "no redemption after the session was revoked"
    );
    assert_eq!(h.running().broker.identities.len(), 0, "identity released");
    tokio::time::resume();
    let reply = h.get(&handle).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "InvalidSession".to_owned())
    );
    h.stop().await;
}

#[tokio::test]
async fn a_revoked_refresh_token_family_ends_the_session_with_relogin_required() {
    let h = Harness::with(refresh_tweaks()).await;
    let (handle, refresh_token) = refresh_session(&h).await;
    // The token sent was rotated at creation; revoking its family kills the current one too
    // (what a logout at the provider does).
    assert!(h.issuer.revoke_refresh_family(&refresh_token));
    tokio::time::pause();
    served(&h, &handle)
        .await
        .expect("served until the next redemption");
    tokio::time::sleep(3 * MIN).await;
    let stats = h.issuer.token_stats();
    assert_eq!(stats.invalid_grant, 1, "{stats:?}");
    let reply = served(&h, &handle).await.expect_err("ended").reply();
    assert_eq!((reply.status, reply.code), (401, "ReloginRequired"));
    assert!(reply.message.contains("sign in again"), "{}", reply.message);
    assert_eq!(h.running().broker.identities.len(), 0, "identity released");
    tokio::time::sleep(3 * 60 * MIN).await;
    assert_eq!(
        h.issuer.token_stats().requests,
        stats.requests,
        "nothing is redeemed once the session ended"
    );

    tokio::time::resume();
    let reply = h.get(&handle).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "ReloginRequired".to_owned())
    );
    // Logging out of an ended session forgets it.
    let url = format!("http://{}/v1/sessions/current", h.running().container_addr);
    let reply = h
        .request("DELETE", &url, &[("authorization", &handle)])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(h.get(&handle).await.code(), "InvalidSession");
    h.stop().await;
}

#[tokio::test]
async fn a_refresh_token_of_another_user_or_client_is_refused() {
    let h = Harness::with(refresh_tweaks()).await;
    let alice = h.issuer.token_for("auth0|alice");
    let mallory_rt = h.issuer.issue_refresh_token("auth0|mallory");
    let reply = post_session(
        &h,
        serde_json::json!({ "id_token": alice, "refresh_token": mallory_rt }),
    )
    .await;
    assert_eq!(
        (reply.status, reply.code()),
        (403, "RefreshTokenMismatch".to_owned()),
        "{}",
        reply.text()
    );
    assert!(h.running().broker.sessions.is_empty());
    assert_eq!(
        h.get_id_calls(),
        1,
        "no credentials were obtained for mallory"
    );
    let stats = h.issuer.token_stats();
    assert_eq!(stats.issued, 1, "redeemed once, to find out whose it is");

    // The client id must be one the provider accepts.
    let alice_rt = h.issuer.issue_refresh_token("auth0|alice");
    let reply = post_session(
        &h,
        serde_json::json!({
            "id_token": alice, "refresh_token": alice_rt, "client_id": "someone-elses-app",
        }),
    )
    .await;
    assert_eq!(
        (reply.status, reply.code()),
        (400, "InvalidClientId".to_owned())
    );
    // A refresh token issued to another client than the ID token's is refused by the issuer.
    h.issuer.register_client("other-app", None);
    let other_client_rt = h.issuer.issue_refresh_token_for("auth0|alice", "other-app");
    let reply = post_session(
        &h,
        serde_json::json!({ "id_token": alice, "refresh_token": other_client_rt }),
    )
    .await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "ReloginRequired".to_owned())
    );
    // Explicitly naming the default client works.
    let reply = post_session(
        &h,
        serde_json::json!({
            "id_token": alice, "refresh_token": alice_rt,
            "client_id": credbroker_emulators::oidc::DEFAULT_AUDIENCE,
        }),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    h.stop().await;
}

#[tokio::test]
async fn token_endpoint_outages_back_off_and_the_session_serves_cached_credentials() {
    let h = Harness::with(refresh_tweaks()).await;
    let (handle, _) = refresh_session(&h).await;
    let first = served(&h, &handle).await.expect("first");
    tokio::time::pause();
    h.issuer.set_unavailable(true);
    let before = h.issuer.token_stats().requests;
    // The 2-minute ID token expires, the cached credentials (1 h) stay servable.
    for _ in 0..30 {
        tokio::time::sleep(MIN).await;
        let c = served(&h, &handle)
            .await
            .expect("cached credentials during the outage");
        assert_eq!(c.access_key_id(), first.access_key_id());
    }
    let attempts = h.issuer.token_stats().requests - before;
    assert!(
        (5..=25).contains(&attempts),
        "backed off: {attempts} attempts in 30 min"
    );
    h.issuer.set_unavailable(false);
    tokio::time::sleep(6 * MIN).await;
    let session = h
        .running()
        .broker
        .sessions
        .get(&handle)
        .expect("still live");
    assert!(
        session.token().expires_at > h.clock.now(),
        "a fresh ID token after the outage"
    );
    served(&h, &handle).await.expect("served after recovery");
    assert_eq!(h.issuer.token_stats().invalid_grant, 0);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_stops_refresh_token_sessions() {
    let mut h = Harness::with(refresh_tweaks()).await;
    let (_handle, _) = refresh_session(&h).await;
    h.stop_broker().await;
    let at_stop = h.issuer.token_stats().requests;
    tokio::time::pause();
    tokio::time::sleep(3 * 60 * MIN).await;
    assert_eq!(h.issuer.token_stats().requests, at_stop);
    h.stop().await;
}

#[tokio::test]
async fn proxied_login_and_logout_are_refused_and_change_nothing() {
    let h = Harness::start().await;
    let main = h.running().container_addr;
    let token = h.issuer.token_for("auth0|proxied-session");
    let body = serde_json::json!({ "id_token": token }).to_string();
    for forwarded in [
        ("x-forwarded-for", "10.0.0.9"),
        ("forwarded", "for=10.0.0.9"),
    ] {
        let reply = h
            .post(
                "/v1/sessions",
                &[("content-type", "application/json"), forwarded],
                &body,
            )
            .await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (400, "ForwardedRequest"),
            "{forwarded:?}: {}",
            reply.text()
        );
        assert!(!reply.text().contains("session_token"));
    }
    assert_eq!(h.get_id_calls(), 0, "a proxied login never reaches Cognito");

    // A proxied logout leaves the session alive.
    let handle = create_session(&h, &token).await;
    let url = format!("http://{main}/v1/sessions/current");
    for forwarded in [
        ("x-forwarded-for", "10.0.0.9"),
        ("forwarded", "for=10.0.0.9"),
    ] {
        let reply = h
            .request("DELETE", &url, &[("authorization", &handle), forwarded])
            .await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (400, "ForwardedRequest"),
            "{forwarded:?}: {}",
            reply.text()
        );
    }
    assert_eq!(h.get(&handle).await.status, 200, "still a live session");
    assert_eq!(logout(&h, &handle).await.status, 200);
    assert_eq!(h.get(&handle).await.code(), "InvalidSession");
    h.stop().await;
}
