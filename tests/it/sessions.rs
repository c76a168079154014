//! Sessions over HTTP: login (`POST /v1/sessions`), the handle as the container endpoint's
//! Authorization value through the real aws-config provider, logout, and isolation.

use std::time::Duration;

use bytes::Bytes;
use credbroker::emulator::oidc::TokenSpec;
use http_body_util::Full;

use crate::support::{Harness, Reply, sdk_container_credentials};

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
        (400, "RefreshTokenUnsupported".to_owned())
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
    let h = Harness::start().await;
    let token = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(2)),
        ..TokenSpec::for_subject("auth0|short-lived")
    });
    let handle = create_session(&h, &token).await;
    assert_eq!(h.get(&handle).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reply = h.get(&handle).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "SessionExpired".to_owned())
    );
    h.stop().await;
}
