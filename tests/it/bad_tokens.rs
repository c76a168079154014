//! Every bad-token class gets 401 with its own code, and the broker keeps serving.

use std::time::{Duration, SystemTime};

use credbroker_emulators::oidc::{SigningAlg, TokenSpec};

use crate::support::{Harness, Tweaks};

fn spec(sub: &str) -> TokenSpec {
    TokenSpec::for_subject(sub)
}

#[tokio::test]
async fn every_bad_token_class_has_its_own_code_and_the_broker_keeps_serving() {
    let h = Harness::start().await;
    let now = SystemTime::now();
    let issuer_no_slash = h.issuer.issuer().trim_end_matches('/').to_owned();

    let cases: Vec<(&str, String, &str)> = vec![
        ("missing", String::new(), "MissingToken"),
        ("garbage", "not-a-jwt".to_owned(), "MalformedToken"),
        ("garbage segments", "a.b.c".to_owned(), "MalformedToken"),
        (
            "oversized",
            format!("{}.e30.sig", "a".repeat(9000)),
            "TokenTooLarge",
        ),
        (
            "expired",
            h.issuer.mint(&TokenSpec {
                issued_at: Some(now - Duration::from_secs(7200)),
                lifetime: Some(Duration::from_secs(3600)),
                ..spec("auth0|expired")
            }),
            "TokenExpired",
        ),
        (
            "not yet valid",
            h.issuer.mint(&TokenSpec {
                not_before: Some(now + Duration::from_secs(3600)),
                ..spec("auth0|nbf")
            }),
            "TokenNotYetValid",
        ),
        (
            "issued in the future",
            h.issuer.mint(&TokenSpec {
                issued_at: Some(now + Duration::from_secs(3600)),
                ..spec("auth0|iat")
            }),
            "TokenNotYetValid",
        ),
        (
            "wrong issuer",
            h.issuer.mint(&TokenSpec {
                issuer: Some("https://evil.example.com/".into()),
                ..spec("auth0|iss")
            }),
            "UnknownIssuer",
        ),
        (
            "issuer slash mismatch",
            h.issuer.mint(&TokenSpec {
                issuer: Some(issuer_no_slash),
                ..spec("auth0|slash")
            }),
            "IssuerMismatch",
        ),
        (
            "wrong audience",
            h.issuer.mint(&TokenSpec {
                audience: vec!["someone-else".into()],
                ..spec("auth0|aud")
            }),
            "AudienceMismatch",
        ),
        (
            "foreign azp",
            h.issuer.mint(&TokenSpec {
                azp: Some("someone-else".into()),
                ..spec("auth0|azp")
            }),
            "AudienceMismatch",
        ),
        (
            "unknown kid",
            h.issuer.mint(&TokenSpec {
                kid: Some("no-such-key".into()),
                ..spec("auth0|kid")
            }),
            "UnknownKeyId",
        ),
        (
            "no kid (Cognito picks the key by kid)",
            h.issuer.mint(&TokenSpec {
                omit_kid: true,
                ..spec("auth0|nokid")
            }),
            "MissingKeyId",
        ),
        (
            "an access token (RFC 9068, typ at+jwt)",
            h.issuer.mint(&TokenSpec {
                access_token: true,
                ..spec("auth0|access")
            }),
            "NotAnIdToken",
        ),
        (
            "wrong key",
            h.issuer.mint(&TokenSpec {
                alg: SigningAlg::Rs256Unpublished,
                ..spec("auth0|wrongkey")
            }),
            "InvalidSignature",
        ),
        (
            "tampered",
            h.issuer.mint(&TokenSpec {
                tamper_payload: true,
                ..spec("auth0|tampered")
            }),
            "InvalidSignature",
        ),
        (
            "HS256",
            h.issuer.mint(&TokenSpec {
                alg: SigningAlg::Hs256 {
                    secret: b"client-secret".to_vec(),
                },
                ..spec("auth0|hs256")
            }),
            "SymmetricAlgorithm",
        ),
        (
            "HS256 keyed with the public key",
            h.issuer.mint(&TokenSpec {
                alg: SigningAlg::Hs256WithPublicKey,
                ..spec("auth0|confusion")
            }),
            "SymmetricAlgorithm",
        ),
        (
            "alg none",
            h.issuer.mint(&TokenSpec {
                alg: SigningAlg::None,
                ..spec("auth0|none")
            }),
            "UnsignedToken",
        ),
        (
            "ES256 not allowed by this provider",
            h.issuer.mint(&TokenSpec {
                alg: SigningAlg::Es256,
                ..spec("auth0|es256")
            }),
            "AlgorithmNotAllowed",
        ),
        (
            "no exp",
            h.issuer.mint(&TokenSpec {
                omit_exp: true,
                ..spec("auth0|noexp")
            }),
            "MissingClaim",
        ),
        (
            "no sub",
            h.issuer.mint(&TokenSpec {
                omit_sub: true,
                ..spec("auth0|nosub")
            }),
            "MissingClaim",
        ),
    ];

    for (name, token, code) in &cases {
        let reply = h.get(token).await;
        assert_eq!(reply.status, 401, "{name}: {}", reply.text());
        assert_eq!(reply.code(), *code, "{name}: {}", reply.text());
        let message = reply.json()["Message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!message.is_empty(), "{name} has a message");
        assert!(
            token.len() < 40 || !message.contains(token.as_str()),
            "{name}: the message must not echo the token"
        );
    }

    // The actionable messages the issue asks for.
    let hs = h
        .get(&cases.iter().find(|c| c.0 == "HS256").expect("case").1)
        .await;
    assert!(
        hs.text()
            .contains("switch the application's JWT signature algorithm to RS256"),
        "{}",
        hs.text()
    );
    let slash = h
        .get(
            &cases
                .iter()
                .find(|c| c.0 == "issuer slash mismatch")
                .expect("case")
                .1,
        )
        .await;
    assert!(slash.text().contains("trailing slash"), "{}", slash.text());
    let no_kid = h
        .get(
            &cases
                .iter()
                .find(|c| c.0.starts_with("no kid"))
                .expect("case")
                .1,
        )
        .await;
    assert!(
        no_kid.text().contains("pick the verification key by kid"),
        "{}",
        no_kid.text()
    );

    // Nothing reached Cognito, and good callers are still served.
    assert_eq!(h.get_id_calls(), 0, "bad tokens never reach Cognito");
    let ok = h.get(&h.issuer.token_for("auth0|good")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    h.stop().await;
}

#[tokio::test]
async fn es256_tokens_pass_when_allowed_but_cognito_refuses_them_with_a_clear_error() {
    let h = Harness::with(Tweaks {
        provider: "algorithms = [\"RS256\", \"ES256\"]".into(),
        ..Tweaks::default()
    })
    .await;
    let token = h.issuer.mint(&TokenSpec {
        alg: SigningAlg::Es256,
        ..TokenSpec::for_subject("auth0|ec")
    });
    let reply = h.get(&token).await;
    // credbroker accepts the signature; the (emulated) Cognito, like the real one, wants RS256.
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.code(), "LoginRejected");
    assert_eq!(h.get_id_calls(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_verified_token_is_not_verified_again() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|cached");
    for _ in 0..5 {
        assert_eq!(h.get(&token).await.status, 200);
    }
    let metrics = h.running().broker.metrics.render();
    assert!(
        metrics.contains("credbroker_token_validations_total{outcome=\"ok\",provider=\"test\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("credbroker_token_validations_total{outcome=\"cached\",provider=\"test\"} 4"),
        "{metrics}"
    );
    h.stop().await;
}

/// README: "401 TokenExpired when less than `tokens.min_token_validity` (60 s) is left". Such a
/// token, and one that expired within the clock-skew leeway, never reaches Cognito.
#[tokio::test]
async fn tokens_with_less_than_min_token_validity_left_are_refused_locally() {
    let h = Harness::start().await; // min_token_validity 60 s, leeway 60 s
    let now = SystemTime::now();
    let with_left = |sub: &str, secs: u64| {
        h.issuer.mint(&TokenSpec {
            lifetime: Some(Duration::from_secs(secs)),
            ..spec(sub)
        })
    };
    for left in [30, 5, 1] {
        let reply = h.get(&with_left(&format!("auth0|left-{left}"), left)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (401, "TokenExpired".to_owned()),
            "{left} s left: {}",
            reply.text()
        );
    }
    let thirty = with_left("auth0|left-30", 30);
    let reply = h.get(&thirty).await;
    assert!(
        reply.text().contains("tokens.min_token_validity"),
        "the message names the setting: {}",
        reply.text()
    );

    // Expired a second ago: inside the leeway, which is for nbf/iat clock skew only.
    let just_expired = h.issuer.mint(&TokenSpec {
        issued_at: Some(now - Duration::from_secs(3600)),
        lifetime: Some(Duration::from_secs(3599)),
        ..spec("auth0|just-expired")
    });
    let reply = h.get(&just_expired).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "TokenExpired".to_owned()),
        "{}",
        reply.text()
    );

    // A 30 s token opens no session either.
    let reply = crate::sessions::post_json(
        &h,
        "/v1/sessions",
        &serde_json::json!({ "id_token": thirty }).to_string(),
    )
    .await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "TokenExpired".to_owned()),
        "{}",
        reply.text()
    );

    assert_eq!(
        (h.get_id_calls(), h.credential_calls()),
        (0, 0),
        "none of them reached Cognito"
    );
    // Not everything is refused: two minutes left is enough.
    let reply = h.get(&with_left("auth0|left-120", 120)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    h.stop().await;
}

/// The verified-token cache forgets a token once less than `min_token_validity` is left, so a
/// token accepted once is refused later instead of being served from the cache.
#[tokio::test]
async fn the_verified_token_cache_stops_serving_a_token_below_min_token_validity() {
    let h = Harness::with(Tweaks {
        tokens: "min_token_validity = \"3s\"".into(),
        ..Tweaks::default()
    })
    .await;
    let token = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(8)),
        ..spec("auth0|cached-then-too-old")
    });
    assert_eq!(h.get(&token).await.status, 200);
    assert_eq!(
        h.get(&token).await.status,
        200,
        "served from the token cache"
    );
    tokio::time::sleep(Duration::from_millis(5500)).await; // at most 2.5 s left now
    let reply = h.get(&token).await;
    assert_eq!(
        (reply.status, reply.code()),
        (401, "TokenExpired".to_owned()),
        "{}",
        reply.text()
    );
    let metrics = h.running().broker.metrics.render();
    assert!(
        metrics.contains(
            "credbroker_token_validations_total{outcome=\"expires_soon\",provider=\"test\"} 1"
        ),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_wrong_audience_is_refused_locally_even_when_cognito_would_accept_it() {
    // The emulated pool trusts "other-app" too, so only credbroker's own audience check stands
    // between this token and credentials.
    let h = Harness::with(Tweaks {
        cognito_extra_audiences: vec!["other-app".into()],
        ..Tweaks::default()
    })
    .await;
    for spec in [
        TokenSpec {
            audience: vec!["other-app".into()],
            ..TokenSpec::for_subject("auth0|other-app")
        },
        TokenSpec {
            audience: vec!["other-app".into(), h.issuer.audience().to_owned()],
            azp: Some("other-app".into()),
            ..TokenSpec::for_subject("auth0|other-app-azp")
        },
    ] {
        let token = h.issuer.mint(&spec);
        let reply = h.get(&token).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (401, "AudienceMismatch"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(
        (h.get_id_calls(), h.credential_calls()),
        (0, 0),
        "refused before any Cognito call"
    );
    // Cognito itself would have accepted the first one: the test above is not vacuous.
    let token = h.issuer.mint(&TokenSpec {
        audience: vec!["other-app".into()],
        ..TokenSpec::for_subject("auth0|other-app")
    });
    let logins = std::collections::BTreeMap::from([(h.issuer.logins_key(), token.clone())]);
    h.cognito
        .get_id(h.cognito.identity_pool_id(), &logins)
        .await
        .expect("the emulated pool trusts other-app");
    h.stop().await;
}
