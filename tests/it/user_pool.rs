//! Cognito User Pool issuers end to end: the emulated issuer presents a User Pool's issuer
//! string (`https://cognito-idp.<region>.amazonaws.com/<pool id>`, no trailing slash) and
//! claims, served from loopback and reached through `providers.<name>.discovery_url`; Cognito
//! trusts the provider under the Logins key `cognito-idp.<region>.amazonaws.com/<pool id>`.

use std::collections::BTreeMap;

use credbroker::emulator::oidc::{Flavor, IssuerOptions, TokenSpec};

use crate::support::{Harness, Tweaks, sdk_container_credentials};

const POOL: &str = "us-east-1_AbCdEfGhI";
const APP_CLIENT: &str = "4s9ltg1o4m3j1n0qk3v2example";
const LOGINS_KEY: &str = "cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEfGhI";

async fn user_pool() -> Harness {
    Harness::with(Tweaks {
        issuer_options: Some(IssuerOptions {
            audience: APP_CLIENT.into(),
            flavor: Flavor::CognitoUserPool {
                region: "us-east-1".into(),
                pool_id: POOL.into(),
            },
            ..IssuerOptions::default()
        }),
        provider: "discovery_url = \"{discovery_url}\"".into(),
        ..Tweaks::default()
    })
    .await
}

#[tokio::test]
async fn a_user_pool_id_token_gets_credentials_through_the_container_endpoint() {
    let h = user_pool().await;
    assert_eq!(
        h.issuer.issuer(),
        format!("https://cognito-idp.us-east-1.amazonaws.com/{POOL}")
    );
    let provider = &h.running().broker.validator.providers()[0];
    assert_eq!(
        provider.config.logins_key, LOGINS_KEY,
        "derived from the issuer"
    );
    assert!(
        provider.is_ready(),
        "discovery and JWKS loaded from the discovery_url"
    );
    // What `doctor`-style checks read from a loaded provider.
    assert_eq!(provider.discovery_url(), h.issuer.discovery_url());
    assert_eq!(provider.jwks_uri(), Some(h.issuer.jwks_uri()));
    assert_eq!(provider.key_ids(), vec![h.issuer.current_kid()]);
    assert_eq!(provider.signing_algs(), vec!["RS256".to_owned()]);

    let id_token = h.issuer.token_for("7d8e6f2a-user-pool-sub");
    let file = h.token_file("id-token", &id_token);
    let creds = sdk_container_credentials(&h.url(), &file)
        .await
        .expect("the SDK gets credentials for a User Pool ID token");
    assert!(creds.access_key_id().starts_with("ASIA"));
    assert_eq!(h.get_id_calls(), 1);

    // Cognito issued them to the identity of the User Pool login: the same identity id that
    // GetId gives for that Logins key.
    let issued = h
        .cognito
        .lookup_access_key(creds.access_key_id())
        .expect("issued by the emulated Cognito");
    let logins = BTreeMap::from([(LOGINS_KEY.to_owned(), id_token)]);
    let identity = h
        .cognito
        .get_id(h.cognito.identity_pool_id(), &logins)
        .await
        .expect("the pool trusts the User Pool provider");
    assert_eq!(issued.identity_id, identity);
    h.stop().await;
}

#[tokio::test]
async fn a_user_pool_access_token_is_refused_locally_with_a_pointer_to_the_id_token() {
    let h = user_pool().await;
    let access = h.issuer.mint(&TokenSpec {
        access_token: true,
        ..TokenSpec::for_subject("7d8e6f2a-user-pool-sub")
    });
    let reply = h.get(&access).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(reply.code(), "NotAnIdToken");
    let message = reply.json()["Message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("token_use \"access\"") && message.contains("send the ID token"),
        "{message}"
    );
    assert_eq!(h.get_id_calls(), 0, "Cognito never saw it");

    // The ID token of the same login works.
    let reply = h.get(&h.issuer.token_for("7d8e6f2a-user-pool-sub")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    h.stop().await;
}
