//! The container-credentials protocol, driven by the real aws-config credentials chain.

use std::time::{Duration, SystemTime};

use credbroker_emulators::oidc::TokenSpec;

use crate::support::{Harness, Tweaks, sdk_container_credentials};

#[tokio::test]
async fn aws_config_gets_credentials_and_a_rewritten_token_file_costs_no_cognito_call() {
    let h = Harness::start().await;
    let first = h.issuer.token_for("auth0|alice");
    let file = h.token_file("id-token", &first);

    let creds = sdk_container_credentials(&h.url(), &file)
        .await
        .expect("the SDK gets credentials");
    assert!(creds.access_key_id().starts_with("ASIA"));
    let issued = h
        .cognito
        .lookup_access_key(creds.access_key_id())
        .expect("credentials the emulated Cognito issued");
    assert_eq!(creds.secret_access_key(), issued.secret_key.expose_str());
    assert_eq!(
        creds.session_token(),
        Some(issued.session_token.expose_str())
    );
    let expiry = creds.expiry().expect("expiry");
    let left = expiry
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(
        left > Duration::from_secs(50 * 60),
        "about an hour left: {left:?}"
    );
    assert_eq!((h.get_id_calls(), h.credential_calls()), (1, 1));

    // The app's helper rewrites the file with a newer token for the same user.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a different iat → a different token
    let second = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(11 * 3600)),
        ..TokenSpec::for_subject("auth0|alice")
    });
    assert_ne!(first, second);
    credbroker::fsutil::write_atomic(&file, second.as_bytes()).expect("rewrite");
    let again = sdk_container_credentials(&h.url(), &file)
        .await
        .expect("again");
    assert_eq!(
        again.access_key_id(),
        creds.access_key_id(),
        "same cached credentials"
    );
    assert_eq!(
        (h.get_id_calls(), h.credential_calls()),
        (1, 1),
        "no new Cognito call"
    );

    // The newer token is now the one kept for background refresh.
    let entry = h
        .running()
        .broker
        .identities
        .identities()
        .into_iter()
        .next()
        .expect("one identity");
    let token_exp = entry.token_expires_at().expect("a token is held");
    assert!(token_exp > SystemTime::now() + Duration::from_secs(10 * 3600 + 1800));
    h.stop().await;
}

#[tokio::test]
async fn response_is_exactly_the_container_format() {
    let h = Harness::start().await;
    let reply = h.get(&h.issuer.token_for("auth0|format")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    let body = reply.json();
    let keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 4, "{body}");
    for k in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
        assert!(body[k].is_string(), "{k} in {body}");
    }
    let exp = body["Expiration"].as_str().expect("exp");
    assert_eq!(exp.len(), 20, "{exp}");
    assert!(exp.ends_with('Z') && exp.as_bytes()[10] == b'T', "{exp}");
    h.stop().await;
}

#[tokio::test]
async fn account_id_is_included_when_configured() {
    let h = Harness::with(Tweaks {
        cognito: "account_id = \"123456789012\"".into(),
        ..Tweaks::default()
    })
    .await;
    let file = h.token_file("t", &h.issuer.token_for("auth0|acct"));
    let creds = sdk_container_credentials(&h.url(), &file)
        .await
        .expect("creds");
    assert_eq!(creds.account_id().map(|a| a.as_str()), Some("123456789012"));
    h.stop().await;
}

#[tokio::test]
async fn bearer_prefix_is_accepted() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|bearer");
    let raw = h.get(&token).await;
    let bearer = h.get(&format!("Bearer {token}")).await;
    assert_eq!(bearer.status, 200, "{}", bearer.text());
    assert_eq!(raw.json()["AccessKeyId"], bearer.json()["AccessKeyId"]);
    h.stop().await;
}

#[tokio::test]
async fn proxied_requests_are_refused() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|proxied");
    for header in ["x-forwarded-for", "forwarded"] {
        let reply = h
            .request(
                "GET",
                &h.url(),
                &[("authorization", &token), (header, "10.0.0.1")],
            )
            .await;
        assert_eq!(reply.status, 400, "{header}");
        assert_eq!(reply.code(), "ForwardedRequest");
    }
    assert_eq!(h.get_id_calls(), 0);
    h.stop().await;
}

#[tokio::test]
async fn huge_headers_get_431_and_the_server_keeps_serving() {
    let h = Harness::start().await;
    let huge = "x".repeat(64 * 1024);
    let reply = h.request("GET", &h.url(), &[("x-junk", &huge)]).await;
    assert_eq!(reply.status, 431);
    let ok = h.get(&h.issuer.token_for("auth0|after-huge")).await;
    assert_eq!(ok.status, 200);
    h.stop().await;
}

#[tokio::test]
async fn wrong_method_and_path_get_json_errors() {
    let h = Harness::start().await;
    let reply = h.request("POST", &h.url(), &[]).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.code(), "MethodNotAllowed");
    assert_eq!(reply.headers["allow"], "GET");
    let base = h.url().replace("/v1/credentials", "/v2/other");
    let reply = h.request("GET", &base, &[]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.code(), "NotFound");
    h.stop().await;
}

#[tokio::test]
async fn ipv6_loopback_works_with_the_sdk() {
    let h = Harness::with(Tweaks {
        server: String::new(),
        ..Tweaks::default()
    })
    .await;
    // Restart the broker on [::1].
    let toml = crate::support::config_toml(&h.issuer, &h.cognito, &Tweaks::default())
        .replace("127.0.0.1:0", "[::1]:0");
    let config = credbroker::config::Config::from_toml(&toml).expect("config");
    let running = credbroker::app::start(config, credbroker::app::Overrides::default())
        .await
        .expect("start on ::1");
    assert!(running.container_addr.is_ipv6());
    let file = h.token_file("t6", &h.issuer.token_for("auth0|v6"));
    let creds = sdk_container_credentials(&running.credentials_url(), &file)
        .await
        .expect("creds over IPv6");
    assert!(creds.access_key_id().starts_with("ASIA"));
    running.stop().await;
    h.stop().await;
}

#[tokio::test]
async fn identity_keys_share_the_providers_issuer_instead_of_copying_it() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|keyed");
    let broker = &h.running().broker;
    let verified = broker.validator.validate(&token).await.expect("valid");
    let key = broker.identities.key_for(&verified, None);
    assert_eq!(&*key.issuer, h.issuer.issuer());
    assert!(
        std::sync::Arc::ptr_eq(&key.issuer, verified.provider.issuer()),
        "the hot path builds keys without allocating the issuer"
    );
    assert_eq!(key, broker.identities.key_for(&verified, None));
    h.stop().await;
}

#[tokio::test]
async fn an_empty_bearer_is_missing_token_on_credentials_and_appsync() {
    let h = Harness::with(Tweaks {
        appsync: Some(String::new()),
        ..Tweaks::default()
    })
    .await;
    for value in ["Bearer ", "bearer", "BEARER    ", "Bearer\t"] {
        let reply = h.get(value).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (401, "MissingToken"),
            "{value:?}: {}",
            reply.text()
        );
        let reply = h
            .post("/appsync/graphql", &[("authorization", value)], "{}")
            .await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (401, "MissingToken"),
            "appsync {value:?}: {}",
            reply.text()
        );
    }
    // A token after the prefix is still read (and this one is not a JWT).
    let reply = h.get("Bearer abc").await;
    assert_eq!(reply.code(), "MalformedToken", "{}", reply.text());
    // A value that merely starts like the prefix is a token, not a prefix.
    let reply = h.get("Bearerabc").await;
    assert_eq!(reply.code(), "MalformedToken", "{}", reply.text());
    assert_eq!(h.get_id_calls(), 0);
    h.stop().await;
}
