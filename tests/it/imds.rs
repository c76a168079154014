//! The IMDSv2-compatible endpoint, driven by aws-config's IMDS credentials provider and by a
//! plain HTTP client for each edge case SDKs depend on.

use std::sync::Arc;
use std::time::Duration;

use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::ProvideCredentials as _;
use credbroker::metrics::Surface;

use crate::single_flight::metric;
use crate::support::{Harness, Reply, Tweaks};

const SUBJECT: &str = "auth0|imds-user";
const ROLE: &str = "app-role";

/// A broker whose `[imds]` serves identity `me`, whose ID token sits in `{dir}/id-token`.
fn tweaks(imds_extra: &str) -> Tweaks {
    Tweaks {
        setup: Some(Arc::new(|issuer, dir| {
            credbroker::fsutil::write_atomic(
                &dir.join("id-token"),
                issuer.token_for(SUBJECT).as_bytes(),
            )
            .expect("token file");
        })),
        extra: format!(
            r#"
[identities.me]
provider = "test"
id_token_file = "{{dir}}/id-token"

[imds]
listen = "127.0.0.1:0"
identity = "me"
role_name = "{ROLE}"
{imds_extra}
"#
        ),
        ..Tweaks::default()
    }
}

async fn start() -> Harness {
    Harness::with(tweaks("")).await
}

impl Harness {
    async fn imds(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let url = format!("{}{}", self.imds_url(), path.trim_start_matches('/'));
        self.request(method, &url, headers).await
    }

    async fn imds_token(&self, ttl: &str) -> String {
        let r = self
            .imds(
                "PUT",
                "/latest/api/token",
                &[("x-aws-ec2-metadata-token-ttl-seconds", ttl)],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }
}

const LISTING: &str = "/latest/meta-data/iam/security-credentials/";

#[tokio::test]
async fn aws_config_imds_provider_gets_the_configured_identitys_credentials() {
    let h = start().await;
    // Warmed at start-up: the exchange already happened.
    assert_eq!(h.credential_calls(), 1, "configured identities are warmed");

    let client = aws_config::imds::Client::builder()
        .configure(&ProviderConfig::empty().with_http_client(credbroker::http::sdk_client()))
        .endpoint(h.imds_url())
        .expect("endpoint")
        .build();
    let provider = ImdsCredentialsProvider::builder()
        .imds_client(client)
        .build();
    let creds = provider.provide_credentials().await.expect("credentials");

    // The same identity as the token file's user, served from cache.
    let token = std::fs::read_to_string(h.dir.join("id-token")).expect("token");
    let container = h.get(&token).await;
    assert_eq!(container.status, 200);
    assert_eq!(
        creds.access_key_id(),
        container.json()["AccessKeyId"].as_str().expect("key")
    );
    assert_eq!(creds.session_token(), container.json()["Token"].as_str());
    assert_eq!(h.credential_calls(), 1, "no exchange for the IMDS request");
    let left = creds
        .expiry()
        .expect("expiry")
        .duration_since(std::time::SystemTime::now())
        .expect("in the future");
    assert!(left >= Duration::from_secs(25 * 60), "{left:?} left");

    let m = h.running().broker.metrics.render();
    assert_eq!(
        metric(&m, "credbroker_credentials_issued_total{surface=\"imds\"}"),
        1.0,
        "audited once: {m}"
    );
    assert!(
        metric(
            &m,
            "credbroker_requests_total{status=\"200\",surface=\"imds\"}"
        ) >= 3.0
    );
    h.stop().await;
}

#[tokio::test]
async fn token_ttl_must_be_1_to_21600_and_is_echoed() {
    let h = start().await;
    let ttl = "x-aws-ec2-metadata-token-ttl-seconds";
    for bad in [
        None,
        Some("0"),
        Some("21601"),
        Some("-1"),
        Some("ten"),
        Some(""),
    ] {
        let headers: Vec<(&str, &str)> = bad.map(|v| (ttl, v)).into_iter().collect();
        let r = h.imds("PUT", "/latest/api/token", &headers).await;
        assert_eq!(r.status, 400, "TTL {bad:?}: {}", r.text());
    }
    for good in ["1", "21600", "300"] {
        let r = h.imds("PUT", "/latest/api/token", &[(ttl, good)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers.get(ttl).and_then(|v| v.to_str().ok()),
            Some(good),
            "the TTL header is echoed"
        );
        assert!(r.text().len() >= 43, "a high-entropy token");
    }
    h.stop().await;
}

#[tokio::test]
async fn put_never_answers_403_404_or_405() {
    let h = start().await;
    let ttl = ("x-aws-ec2-metadata-token-ttl-seconds", "21600");
    for path in [
        "/latest/api/token",
        "/latest/api/token/",
        "/",
        "/latest/meta-data/",
        "/nope",
    ] {
        for headers in [vec![], vec![ttl]] {
            let r = h.imds("PUT", path, &headers).await;
            assert!(
                ![403, 404, 405].contains(&r.status),
                "PUT {path} answered {}",
                r.status
            );
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn forwarded_requests_are_403_like_ec2_and_never_get_a_session_token() {
    let h = start().await;
    let token = h.imds_token("60").await;
    for forwarded in [
        ("x-forwarded-for", "10.0.0.7"),
        ("forwarded", "for=10.0.0.7"),
    ] {
        // EC2 refuses a token PUT that came through a proxy with 403.
        let r = h
            .imds(
                "PUT",
                "/latest/api/token",
                &[("x-aws-ec2-metadata-token-ttl-seconds", "60"), forwarded],
            )
            .await;
        assert_eq!(r.status, 403, "{forwarded:?}: {}", r.text());
        assert_eq!(r.code(), "ForwardedRequest");
        assert!(
            !r.headers
                .contains_key("x-aws-ec2-metadata-token-ttl-seconds")
        );
        // A GET with a valid token that came through a proxy gets nothing either.
        for path in [LISTING.to_owned(), format!("{LISTING}{ROLE}")] {
            let r = h
                .imds(
                    "GET",
                    &path,
                    &[("x-aws-ec2-metadata-token", token.as_str()), forwarded],
                )
                .await;
            assert_eq!(r.status, 403, "{forwarded:?} {path}: {}", r.text());
            assert_eq!(r.code(), "ForwardedRequest");
            assert!(!r.text().contains("SecretAccessKey"));
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn listing_with_and_without_slash_has_no_newline_and_unknown_role_is_404() {
    let h = start().await;
    let token = h.imds_token("60").await;
    let auth = [("x-aws-ec2-metadata-token", token.as_str())];
    for path in [LISTING, LISTING.trim_end_matches('/')] {
        let r = h.imds("GET", path, &auth).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), ROLE, "exactly the role name for {path}");
    }
    let r = h.imds("GET", &format!("{LISTING}{ROLE}"), &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["Code"], "Success");
    assert_eq!(body["Type"], "AWS-HMAC");
    for field in ["AccessKeyId", "SecretAccessKey", "Token"] {
        assert!(
            body[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}"
        );
    }
    for field in ["LastUpdated", "Expiration"] {
        let v = body[field].as_str().expect(field);
        assert_eq!(v.len(), 20, "{field} {v}");
        assert!(v.ends_with('Z') && v.as_bytes()[10] == b'T', "{field} {v}");
    }
    let r = h.imds("GET", &format!("{LISTING}other-role"), &auth).await;
    assert_eq!(r.status, 404);
    h.stop().await;
}

#[tokio::test]
async fn unknown_and_expired_session_tokens_are_401() {
    let h = start().await;
    let r = h
        .imds("GET", LISTING, &[("x-aws-ec2-metadata-token", "forged")])
        .await;
    assert_eq!(r.status, 401);
    let token = h.imds_token("1").await;
    let auth = [("x-aws-ec2-metadata-token", token.as_str())];
    assert_eq!(h.imds("GET", LISTING, &auth).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        h.imds("GET", LISTING, &auth).await.status,
        401,
        "expired after its TTL"
    );
    h.stop().await;
}

#[tokio::test]
async fn imdsv1_is_refused_by_default() {
    let h = start().await;
    assert_eq!(h.imds("GET", LISTING, &[]).await.status, 401);
    let r = h.imds("GET", &format!("{LISTING}{ROLE}"), &[]).await;
    assert_eq!(r.status, 401);
    assert!(!r.text().contains("SecretAccessKey"));
    h.stop().await;
}

#[tokio::test]
async fn imdsv1_is_served_when_allowed() {
    let h = Harness::with(tweaks("allow_imdsv1 = true")).await;
    let r = h.imds("GET", LISTING, &[]).await;
    assert_eq!((r.status, r.text()), (200, ROLE.to_owned()));
    let r = h.imds("GET", &format!("{LISTING}{ROLE}"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["Code"], "Success");
    // A token that is sent must still be valid.
    let r = h
        .imds("GET", LISTING, &[("x-aws-ec2-metadata-token", "forged")])
        .await;
    assert_eq!(r.status, 401);
    h.stop().await;
}

#[tokio::test]
async fn imds_serves_at_least_its_min_remaining_by_refreshing_early() {
    // The cache would refresh at 21 min left and serve down to 20; IMDS wants 25.
    let mut t = tweaks("min_remaining = \"25m\"");
    t.in_process_cognito = true;
    t.cache = "min_remaining = \"20m\"\nrefresh_ahead = \"21m\"\nrefresh_jitter = \"0s\"".into();
    t.tokens = "jwks_refresh_interval = \"7d\"".into();
    let h = Harness::with(t).await;
    tokio::time::pause();
    let identity = h.running().configured.get("me").expect("configured");
    let broker = &h.running().broker;
    let first = identity
        .credentials(
            broker,
            Surface::Imds,
            Duration::from_secs(25 * 60),
            Duration::from_secs(5),
        )
        .await
        .expect("first");

    // 36 minutes in: 24 minutes left, still servable for the container surface.
    tokio::time::sleep(Duration::from_secs(36 * 60)).await;
    let token = std::fs::read_to_string(h.dir.join("id-token")).expect("token");
    let container = broker
        .credentials(&token, Surface::Container)
        .await
        .expect("container");
    assert_eq!(container.access_key_id(), first.access_key_id());
    assert_eq!(h.credential_calls(), 1);

    let imds = identity
        .credentials(
            broker,
            Surface::Imds,
            Duration::from_secs(25 * 60),
            Duration::from_secs(5),
        )
        .await
        .expect("imds");
    assert_ne!(
        imds.access_key_id(),
        first.access_key_id(),
        "refreshed early"
    );
    let left = imds
        .expires_at
        .duration_since(h.clock.now())
        .expect("future");
    assert!(left >= Duration::from_secs(25 * 60), "{left:?}");
    assert_eq!(h.credential_calls(), 2);

    // Asking again does not refresh again.
    identity
        .credentials(
            broker,
            Surface::Imds,
            Duration::from_secs(25 * 60),
            Duration::from_secs(5),
        )
        .await
        .expect("again");
    assert_eq!(h.credential_calls(), 2);
    h.stop().await;
}

#[tokio::test]
async fn credential_paths_match_exactly_and_non_ascii_bytes_are_a_plain_404() {
    let h = start().await;
    let token = h.imds_token("60").await;
    let addr = h.running().imds_addr.expect("imds");
    let auth = [("x-aws-ec2-metadata-token", token.as_str())];
    let prefix = LISTING.trim_end_matches('/');
    // Raw bytes on the wire: a UTF-8 `é`, a lone continuation byte, a multi-byte character
    // right after the slash.
    let paths: [Vec<u8>; 6] = [
        [prefix.as_bytes(), "é".as_bytes()].concat(),
        [prefix.as_bytes(), b"\xc3"].concat(),
        [prefix.as_bytes(), "/é".as_bytes()].concat(),
        [
            prefix.as_bytes(),
            "/".as_bytes(),
            ROLE.as_bytes(),
            "é".as_bytes(),
        ]
        .concat(),
        format!("{prefix}X{ROLE}").into_bytes(),
        format!("{prefix}{ROLE}").into_bytes(),
    ];
    for path in paths {
        let mut conn = crate::support::RawConn::connect(addr).await;
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(&path);
        request.extend_from_slice(
            format!(
                " HTTP/1.1\r\nhost: {addr}\r\n{}: {}\r\n\r\n",
                auth[0].0, auth[0].1
            )
            .as_bytes(),
        );
        conn.send(&request).await;
        let shown = String::from_utf8_lossy(&path).into_owned();
        let reply = conn
            .response()
            .await
            .unwrap_or_else(|| panic!("{shown}: connection dropped without an answer"));
        assert!(
            reply.status == 404 || reply.status == 400,
            "{shown}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("SecretAccessKey"),
            "{shown}"
        );
        if reply.status == 404 {
            assert_eq!(reply.code(), "NotFound", "{shown}");
        }
    }
    // The exact paths still work.
    let r = h.imds("GET", &format!("{LISTING}{ROLE}"), &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    h.stop().await;
}
