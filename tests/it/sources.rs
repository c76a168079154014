//! Identity sources against the emulated issuer: refresh tokens with rotation (under paused
//! time, issuer and Cognito called in process), restarts, revocation, outages, and token files.

use std::sync::Arc;
use std::time::Duration;

use credbroker::broker::IdentityError;
use credbroker::identity::Issued;
use credbroker::metrics::Surface;
use credbroker_emulators::oidc::{IssuerOptions, TokenSpec};

use crate::support::{Harness, Tweaks};

const MIN: Duration = Duration::from_secs(60);
const SUBJECT: &str = "auth0|offline-user";

/// Identity `rt` with a refresh token in `{dir}/refresh-token`; ID tokens live 2 minutes.
fn refresh_tweaks(in_process: bool) -> Tweaks {
    Tweaks {
        in_process_cognito: in_process,
        in_process_issuer: in_process,
        issuer_options: Some(IssuerOptions {
            token_lifetime: 2 * MIN,
            ..IssuerOptions::default()
        }),
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        setup: Some(Arc::new(|issuer, dir| {
            let rt = issuer.issue_refresh_token(SUBJECT);
            credbroker::fsutil::write_atomic(&dir.join("refresh-token"), rt.as_bytes())
                .expect("refresh token file");
        })),
        extra: r#"
[identities.rt]
provider = "test"
refresh_token_file = "{dir}/refresh-token"
client_id = "credbroker-demo-client"

[imds]
listen = "127.0.0.1:0"
identity = "rt"
"#
        .into(),
        ..Tweaks::default()
    }
}

async fn creds(h: &Harness) -> Result<Arc<Issued>, IdentityError> {
    let identity = h.running().configured.get("rt").expect("configured");
    identity
        .credentials(
            &h.running().broker,
            Surface::Imds,
            25 * MIN,
            Duration::from_secs(5),
        )
        .await
}

fn remaining(h: &Harness, c: &Issued) -> Duration {
    c.expires_at
        .duration_since(h.clock.now())
        .unwrap_or(Duration::ZERO)
}

fn on_disk(h: &Harness) -> String {
    std::fs::read_to_string(h.dir.join("refresh-token")).expect("refresh token file")
}

#[tokio::test]
async fn a_refresh_token_identity_outlives_its_two_minute_id_tokens() {
    let h = Harness::with(refresh_tweaks(true)).await;
    let initial = h.issuer.token_stats();
    assert_eq!(initial.issued, 1, "warmed at start-up");
    assert_eq!(h.credential_calls(), 1);
    tokio::time::pause();

    let mut keys = std::collections::BTreeSet::new();
    for _ in 0..(3 * 60) {
        tokio::time::sleep(MIN).await;
        let c = creds(&h)
            .await
            .expect("served long after the first ID token expired");
        assert!(remaining(&h, &c) >= 20 * MIN, "{:?}", remaining(&h, &c));
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
        keys.len() >= 5,
        "Cognito credentials kept refreshing: {keys:?}"
    );
    let calls = h.credential_calls();
    assert!(
        (6..=12).contains(&calls),
        "{calls} GetCredentialsForIdentity calls"
    );
    assert_eq!(h.get_id_calls(), 1);
    h.stop().await;
}

#[tokio::test]
async fn the_rotated_refresh_token_is_on_disk_and_a_restart_continues_from_it() {
    let mut h = Harness::with(refresh_tweaks(true)).await;
    let first = on_disk(&h);
    tokio::time::pause();
    tokio::time::sleep(10 * MIN).await;
    let before = creds(&h).await.expect("served");
    let stats = h.issuer.token_stats();
    assert!(stats.issued >= 8, "{stats:?}");
    assert_ne!(on_disk(&h), first, "rotated tokens are written back");

    // Restart: the new broker redeems what is on disk. Had it been any token but the newest,
    // the issuer would see a reuse and revoke the whole family.
    tokio::time::resume();
    h.restart().await;
    tokio::time::pause();
    let after_restart = h.issuer.token_stats();
    assert_eq!(
        after_restart.issued,
        stats.issued + 1,
        "redeemed once at start"
    );
    assert_eq!(after_restart.reuse_detected, 0);
    assert_eq!(after_restart.invalid_grant, 0);
    let c = creds(&h).await.expect("served after restart");
    assert!(remaining(&h, &c) >= 20 * MIN);
    assert_ne!(
        c.access_key_id(),
        before.access_key_id(),
        "a new process, a new exchange"
    );

    tokio::time::sleep(30 * MIN).await;
    creds(&h).await.expect("still served");
    let end = h.issuer.token_stats();
    assert_eq!((end.reuse_detected, end.invalid_grant), (0, 0));
    assert!(end.issued > after_restart.issued + 20);

    h.stop().await;
}

#[tokio::test]
async fn an_old_refresh_token_on_disk_is_detected_as_reuse_and_needs_a_new_login() {
    // The counter-example that makes the restart test meaningful: a broker that relied on a
    // rotated token before persisting it would leave an older token on disk. Restarting from
    // one revokes the family.
    let mut h = Harness::with(refresh_tweaks(true)).await;
    tokio::time::pause();
    tokio::time::sleep(3 * MIN).await;
    let stale = on_disk(&h);
    tokio::time::sleep(3 * MIN).await;
    assert_ne!(on_disk(&h), stale, "rotated since");
    h.stop_broker().await;
    credbroker::fsutil::write_atomic(&h.dir.join("refresh-token"), stale.as_bytes())
        .expect("write");
    tokio::time::resume();
    h.restart().await;
    tokio::time::pause();
    let stats = h.issuer.token_stats();
    assert_eq!(
        (stats.reuse_detected, stats.families_revoked),
        (1, 1),
        "{stats:?}"
    );
    let err = creds(&h).await.expect_err("family revoked");
    let reply = err.reply("rt");
    assert_eq!((reply.status, reply.code), (401, "ReloginRequired"));
    h.stop().await;
}

#[tokio::test]
async fn a_revoked_refresh_token_needs_a_new_login_and_is_not_retried() {
    let h = Harness::with(refresh_tweaks(true)).await;
    assert!(h.issuer.revoke_refresh_family(&on_disk(&h)));
    tokio::time::pause();
    let before = h.issuer.token_stats();
    tokio::time::sleep(3 * 60 * MIN).await;
    let stats = h.issuer.token_stats();
    assert_eq!(
        stats.requests - before.requests,
        1,
        "one refused redemption, no retry loop: {stats:?}"
    );
    assert_eq!(stats.invalid_grant, 1);
    let err = creds(&h).await.expect_err("relogin required");
    let reply = err.reply("rt");
    assert_eq!((reply.status, reply.code), (401, "ReloginRequired"));
    assert!(reply.message.contains("sign in again"), "{}", reply.message);
    assert!(
        reply.message.contains("refresh-token"),
        "names the file: {}",
        reply.message
    );

    // Through the IMDS endpoint too (real time for the socket).
    tokio::time::resume();
    let token = h
        .request(
            "PUT",
            &format!("{}latest/api/token", h.imds_url()),
            &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
        )
        .await
        .text();
    let r = h
        .request(
            "GET",
            &format!(
                "{}latest/meta-data/iam/security-credentials/credbroker",
                h.imds_url()
            ),
            &[("x-aws-ec2-metadata-token", token.as_str())],
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "ReloginRequired".to_owned()));

    // A new login writes a new refresh token: the identity resumes.
    tokio::time::pause();
    let fresh = h.issuer.issue_refresh_token(SUBJECT);
    credbroker::fsutil::write_atomic(&h.dir.join("refresh-token"), fresh.as_bytes())
        .expect("write");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let c = creds(&h).await.expect("resumed after a new login");
    assert!(remaining(&h, &c) >= 20 * MIN);
    h.stop().await;
}

#[tokio::test]
async fn token_endpoint_outages_back_off_and_cached_credentials_stay_served() {
    let h = Harness::with(refresh_tweaks(true)).await;
    let first = creds(&h).await.expect("first");
    tokio::time::pause();
    h.issuer.set_unavailable(true);
    let before = h.issuer.token_stats().requests;
    // The 2-minute ID token expires, but the cached credentials are servable for 40 minutes.
    for _ in 0..35 {
        tokio::time::sleep(MIN).await;
        let c = creds(&h)
            .await
            .expect("cached credentials during the outage");
        assert_eq!(c.access_key_id(), first.access_key_id());
    }
    let attempts = h.issuer.token_stats().requests - before;
    // Backoff 1 s doubling with jitter up to 5 min: about a dozen attempts in 35 min.
    assert!(
        (5..=25).contains(&attempts),
        "{attempts} attempts in 35 min"
    );
    tokio::time::sleep(10 * MIN).await;
    let err = creds(&h).await.expect_err("nothing servable");
    assert_eq!(err.reply("rt").code, "IdentitySourceUnavailable");

    h.issuer.set_unavailable(false);
    tokio::time::sleep(6 * MIN).await;
    let c = creds(&h).await.expect("recovered");
    assert!(remaining(&h, &c) >= 20 * MIN);
    assert_eq!(h.issuer.token_stats().invalid_grant, 0);
    h.stop().await;
}

#[tokio::test]
async fn refresh_tokens_work_over_http_with_a_confidential_client() {
    let mut t = refresh_tweaks(false);
    t.issuer_options = Some(IssuerOptions {
        audience: "web-app".into(),
        token_lifetime: 2 * MIN,
        ..IssuerOptions::default()
    });
    t.setup = Some(Arc::new(|issuer, dir| {
        issuer.register_client("web-app", Some("s3cret"));
        let rt = issuer.issue_refresh_token(SUBJECT);
        credbroker::fsutil::write_atomic(&dir.join("refresh-token"), rt.as_bytes())
            .expect("refresh token file");
        credbroker::fsutil::write_atomic(&dir.join("client-secret"), b"s3cret").expect("secret");
    }));
    t.extra = t.extra.replace(
        "client_id = \"credbroker-demo-client\"",
        "client_id = \"web-app\"\nclient_secret_file = \"{dir}/client-secret\"\n\
         token_endpoint_auth = \"client_secret_basic\"",
    );
    let h = Harness::with(t).await;
    let stats = h.issuer.token_stats();
    assert_eq!((stats.issued, stats.invalid_client), (1, 0), "{stats:?}");
    let token = h
        .request(
            "PUT",
            &format!("{}latest/api/token", h.imds_url()),
            &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
        )
        .await
        .text();
    let r = h
        .request(
            "GET",
            &format!(
                "{}latest/meta-data/iam/security-credentials/credbroker",
                h.imds_url()
            ),
            &[("x-aws-ec2-metadata-token", token.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.credential_calls(), 1, "served from the warm cache");
    h.stop().await;
}

#[tokio::test]
async fn rewriting_the_token_file_is_picked_up() {
    let t = Tweaks::default().configured_identity("auth0|file-a", 10 * 60 * MIN, "100ms");
    let h = Harness::with(t).await;
    let identity = h.running().configured.get("file").expect("configured");
    let broker = &h.running().broker;
    let wait = Duration::from_secs(5);
    let a = identity
        .credentials(broker, Surface::Imds, 25 * MIN, wait)
        .await
        .expect("a");
    assert_eq!(
        identity.status().token.expect("token").subject.as_ref(),
        "auth0|file-a"
    );

    // Same subject, a longer-lived token: the cache holds the new one for its refreshes.
    let longer = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(20 * 3600)),
        ..TokenSpec::for_subject("auth0|file-a")
    });
    h.token_file("id-token", &longer);
    let new_exp = wait_for(|| {
        identity
            .status()
            .token
            .map(|t| t.expires_at)
            .filter(|e| *e > a.expires_at + Duration::from_secs(10 * 3600))
    })
    .await;
    let entry = broker
        .identities
        .identities()
        .into_iter()
        .find(|i| i.key().subject.as_ref() == "auth0|file-a")
        .expect("entry");
    assert_eq!(
        entry
            .token_expires_at()
            .map(credbroker::clock::unix_seconds),
        Some(credbroker::clock::unix_seconds(new_exp))
    );

    // Garbage is refused and the previous token keeps serving.
    h.token_file("id-token", "not-a-jwt");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(identity.status().problem.is_some());
    identity
        .credentials(broker, Surface::Imds, 25 * MIN, wait)
        .await
        .expect("still served");

    // Another user's token: the identity follows the file.
    h.token_file("id-token", &h.issuer.token_for("auth0|file-b"));
    wait_for(|| {
        identity
            .status()
            .token
            .filter(|t| t.subject.as_ref() == "auth0|file-b")
    })
    .await;
    let b = identity
        .credentials(broker, Surface::Imds, 25 * MIN, wait)
        .await
        .expect("b");
    assert_ne!(b.identity_id(), a.identity_id());
    assert_eq!(h.get_id_calls(), 2);
    h.stop().await;
}

async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 5 s");
}
