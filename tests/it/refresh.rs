//! The refresh policy under paused time: hours of credential lifetimes in milliseconds.
//!
//! Each test starts the broker in real time (keys load over HTTP), then pauses tokio's clock;
//! from there the broker is driven in-process and Cognito is the emulator called in-process,
//! so no socket I/O races the paused clock.

use std::sync::Arc;
use std::time::Duration;

use credbroker::broker::BrokerError;
use credbroker::identity::{Issued, State};
use credbroker::metrics::Surface;
use credbroker_emulators::cognito::CognitoOptions;
use credbroker_emulators::oidc::TokenSpec;

use crate::single_flight::metric;
use crate::support::{Harness, Tweaks};

const MIN: Duration = Duration::from_secs(60);

async fn paused(mut t: Tweaks) -> Harness {
    t.in_process_cognito = true;
    t.tokens = format!("jwks_refresh_interval = \"7d\"\n{}", t.tokens);
    let h = Harness::with(t).await;
    tokio::time::pause();
    h
}

fn token(h: &Harness, sub: &str, lifetime: Duration) -> String {
    h.issuer.mint(&TokenSpec {
        lifetime: Some(lifetime),
        ..TokenSpec::for_subject(sub)
    })
}

async fn creds(h: &Harness, token: &str) -> Result<Arc<Issued>, BrokerError> {
    h.running()
        .broker
        .credentials(token, Surface::Container)
        .await
}

fn remaining(h: &Harness, c: &Issued) -> Duration {
    c.expires_at
        .duration_since(h.clock.now())
        .unwrap_or(Duration::ZERO)
}

fn metrics(h: &Harness) -> String {
    h.running().broker.metrics.render()
}

#[tokio::test]
async fn one_hour_credentials_are_refreshed_ahead_and_never_served_under_min_remaining() {
    let h = paused(Tweaks::default()).await;
    let t = token(&h, "auth0|steady", Duration::from_secs(12 * 3600));
    let first = creds(&h, &t).await.expect("first");
    assert_eq!(h.credential_calls(), 1);

    // The refresh happens between 30 and 35 minutes in (refresh_ahead 30m, jitter 5m).
    tokio::time::sleep(30 * MIN - Duration::from_secs(1)).await;
    assert_eq!(h.credential_calls(), 1, "no refresh before refresh_ahead");
    tokio::time::sleep(5 * MIN + Duration::from_secs(2)).await;
    assert_eq!(h.credential_calls(), 2, "refreshed in the background");
    let second = creds(&h, &t).await.expect("second");
    assert_ne!(second.access_key_id(), first.access_key_id());

    // Three hours of a caller every minute: always ≥ 20 minutes left, never waiting on Cognito.
    let mut keys = std::collections::BTreeSet::new();
    for _ in 0..180 {
        tokio::time::sleep(MIN).await;
        let c = creds(&h, &t).await.expect("served");
        assert!(
            remaining(&h, &c) >= 20 * MIN,
            "served with {:?} left",
            remaining(&h, &c)
        );
        keys.insert(c.access_key_id().to_owned());
    }
    let calls = h.credential_calls();
    assert!(
        (7..=9).contains(&calls),
        "{calls} GetCredentialsForIdentity calls in 3.6 h"
    );
    assert!(keys.len() >= 6, "credentials rotated: {}", keys.len());
    let m = metrics(&h);
    assert_eq!(
        metric(&m, "credbroker_cache_lookups_total{result=\"miss\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "credbroker_refreshes_total{result=\"ok\",trigger=\"on_demand\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "credbroker_refreshes_total{result=\"ok\",trigger=\"ahead\"}"
        ),
        (calls - 1) as f64
    );
    assert_eq!(
        metric(&m, "credbroker_served_below_min_remaining_total"),
        0.0
    );
    assert_eq!(h.get_id_calls(), 1, "GetId once per identity");
}

#[tokio::test]
async fn ninety_second_credentials_refresh_at_a_fraction_without_looping() {
    let h = paused(Tweaks {
        cognito_options: Some(CognitoOptions {
            credential_lifetime: Duration::from_secs(90),
            ..CognitoOptions::default()
        }),
        ..Tweaks::default()
    })
    .await;
    let t = token(&h, "auth0|moto-like", Duration::from_secs(3600));
    creds(&h, &t).await.expect("first");
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c = creds(&h, &t).await.expect("served");
        // Scaled min_remaining: 20m × (45s / 30m) = 30 s.
        assert!(
            remaining(&h, &c) >= Duration::from_secs(30),
            "{:?}",
            remaining(&h, &c)
        );
    }
    let calls = h.credential_calls();
    // One refresh every 45–52.5 s over 600 s, plus the first: about 12–14, never hundreds.
    assert!((11..=15).contains(&calls), "{calls} calls in 10 minutes");
    let m = metrics(&h);
    assert_eq!(
        metric(
            &m,
            "credbroker_refreshes_total{result=\"ok\",trigger=\"on_demand\"}"
        ),
        1.0,
        "callers never waited: {m}"
    );
}

#[tokio::test]
async fn a_failed_refresh_keeps_serving_valid_credentials_and_never_expired_ones() {
    let h = paused(Tweaks::default()).await;
    let t = token(&h, "auth0|outage", Duration::from_secs(12 * 3600));
    let first = creds(&h, &t).await.expect("first");
    h.cognito.faults().set_outage(true);

    // Until 40 minutes in (expiry − min_remaining) the old credentials are still served.
    for _ in 0..39 {
        tokio::time::sleep(MIN).await;
        let c = creds(&h, &t).await.expect("still served");
        assert_eq!(c.access_key_id(), first.access_key_id());
        assert!(remaining(&h, &c) >= 20 * MIN);
    }
    assert!(
        h.cognito
            .stats()
            .get_credentials_for_identity
            .errors
            .values()
            .sum::<u64>()
            > 0
    );

    // Past that they are not served, expired or not.
    for _ in 0..30 {
        tokio::time::sleep(MIN).await;
        let err = creds(&h, &t).await.expect_err("not servable");
        let reply = err.reply();
        assert_eq!((reply.status, reply.code), (503, "UpstreamUnavailable"));
        assert!(reply.retry_after.is_some());
    }

    // Cognito is back: after the backoff, fresh credentials.
    h.cognito.faults().set_outage(false);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let c = creds(&h, &t).await.expect("recovered");
    assert_ne!(c.access_key_id(), first.access_key_id());
    assert!(remaining(&h, &c) > 55 * MIN);
}

#[tokio::test]
async fn idle_identities_are_evicted_and_not_refreshed() {
    let h = paused(Tweaks {
        cache: "idle_timeout = \"10m\"".into(),
        ..Tweaks::default()
    })
    .await;
    let t = token(&h, "auth0|idle", Duration::from_secs(12 * 3600));
    creds(&h, &t).await.expect("first");
    assert_eq!(h.running().broker.identities.len(), 1);

    tokio::time::sleep(36 * MIN).await;
    assert_eq!(h.credential_calls(), 1, "an idle identity is not refreshed");
    assert_eq!(h.running().broker.identities.len(), 0, "and is evicted");
    let m = metrics(&h);
    assert_eq!(
        metric(&m, "credbroker_cache_evictions_total{cause=\"idle\"}"),
        1.0,
        "{m}"
    );

    // The next caller starts over.
    creds(&h, &t).await.expect("again");
    assert_eq!((h.get_id_calls(), h.credential_calls()), (2, 2));
}

#[tokio::test]
async fn refresh_stops_when_the_token_expires_and_resumes_with_a_callers_new_token() {
    // No jitter, so the timeline is exact: refreshes at 30 and 60 min, servable until 70 min.
    let h = paused(Tweaks {
        cache: "refresh_jitter = \"0s\"".into(),
        ..Tweaks::default()
    })
    .await;
    let short = token(&h, "auth0|expiring", 40 * MIN);
    creds(&h, &short).await.expect("first");

    // 30 min: refreshed with the still-valid token (credentials now last until 90 min).
    tokio::time::sleep(36 * MIN).await;
    assert_eq!(h.credential_calls(), 2);

    // 60 min: the held token expired at 40 min, so the refresh is skipped.
    tokio::time::sleep(29 * MIN).await;
    assert_eq!(h.credential_calls(), 2, "no refresh without a valid token");
    let identity = h
        .running()
        .broker
        .identities
        .identities()
        .pop()
        .expect("identity");
    assert_eq!(identity.state(), State::AwaitingToken);
    let m = metrics(&h);
    assert!(
        metric(
            &m,
            "credbroker_refreshes_total{result=\"skipped_token_expired\",trigger=\"ahead\"}"
        ) >= 1.0,
        "{m}"
    );
    // The expired token itself is refused.
    let err = creds(&h, &short).await.expect_err("expired token");
    assert_eq!(err.reply().code, "TokenExpired");

    // A caller arrives with a new token: served from cache at once, and refresh resumes.
    let fresh = token(&h, "auth0|expiring", 10 * 3600 * Duration::from_secs(1));
    let served = creds(&h, &fresh).await.expect("served from cache");
    assert!(remaining(&h, &served) >= 20 * MIN);
    assert_eq!(h.credential_calls(), 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.credential_calls(),
        3,
        "refresh resumed with the new token"
    );
    assert_eq!(identity.state(), State::Active);
}

fn moto_like(mut t: Tweaks) -> Tweaks {
    t.cognito_options = Some(CognitoOptions {
        credential_lifetime: Duration::from_secs(90),
        ..CognitoOptions::default()
    });
    t
}

fn on_demand(h: &Harness) -> f64 {
    metric(
        &metrics(h),
        "credbroker_refreshes_total{result=\"ok\",trigger=\"on_demand\"}",
    )
}

/// moto's 90-second credentials and the default 2 h `idle_timeout`: an identity asked for once
/// used to be refreshed every ~45 s until evicted (~70 GetCredentialsForIdentity an hour).
#[tokio::test]
async fn an_identity_nobody_asks_for_costs_at_most_one_more_refresh() {
    let h = paused(moto_like(Tweaks::default())).await;
    let t = token(&h, "auth0|asked-once", Duration::from_secs(12 * 3600));
    creds(&h, &t).await.expect("first");
    assert_eq!(h.credential_calls(), 1);

    tokio::time::sleep(3600 * Duration::from_secs(1)).await;
    assert_eq!(
        h.credential_calls(),
        2,
        "the set the caller got was refreshed once, its unused successor not again"
    );
    assert!(
        metric(
            &metrics(&h),
            "credbroker_refreshes_total{result=\"skipped_unused\",trigger=\"ahead\"}"
        ) >= 1.0
    );
    assert_eq!(
        h.running().broker.identities.len(),
        1,
        "still cached (not idle yet)"
    );

    // The caller comes back: the parked set expired long ago, so this one waits once …
    let c = creds(&h, &t).await.expect("again");
    assert!(remaining(&h, &c) >= Duration::from_secs(30));
    assert_eq!((h.credential_calls(), on_demand(&h)), (3, 2.0));
    // … and while it keeps asking, refresh-ahead is back: it never waits again.
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c = creds(&h, &t).await.expect("served");
        assert!(remaining(&h, &c) >= Duration::from_secs(30));
    }
    assert_eq!(on_demand(&h), 2.0, "callers never waited");
    assert!(h.credential_calls() >= 13, "{}", h.credential_calls());
    assert_eq!(h.get_id_calls(), 1, "the identity stayed cached");
}

/// A caller that caches its credentials and asks again only shortly before they expire, like
/// the SDKs (botocore: 15 min before, the Rust SDK: seconds before), always finds the next set
/// ready: each set it holds was asked for, so its successor is refreshed ahead.
#[tokio::test]
async fn an_sdk_that_asks_once_per_set_never_waits_on_cognito() {
    for (lifetime, ask_before, hours) in [
        (None, 15 * MIN, 6),                    // 1 h sets, botocore
        (None, Duration::from_secs(10), 6),     // 1 h sets, the Rust SDK
        (Some(90), Duration::from_secs(10), 1), // moto, the Rust SDK
    ] {
        let mut t = Tweaks::default();
        if let Some(secs) = lifetime {
            t.cognito_options = Some(CognitoOptions {
                credential_lifetime: Duration::from_secs(secs),
                ..CognitoOptions::default()
            });
        }
        let h = paused(t).await;
        let t = token(&h, "auth0|sdk", Duration::from_secs(24 * 3600));
        let end = h.clock.now() + hours * 3600 * Duration::from_secs(1);
        let mut sets = 0;
        while h.clock.now() < end {
            let c = creds(&h, &t).await.expect("served");
            sets += 1;
            let wake = c.expires_at - ask_before;
            tokio::time::sleep(wake.duration_since(h.clock.now()).unwrap_or(MIN)).await;
        }
        assert_eq!(
            on_demand(&h),
            1.0,
            "{lifetime:?}/{ask_before:?}: only the first set was waited for ({sets} sets)"
        );
        assert!(sets > hours as usize, "{sets}");
        h.stop().await;
        // The next harness loads keys over real sockets: time must run while it starts.
        tokio::time::resume();
    }
}

/// Configured identities are in use by definition: their credentials stay fresh with nobody
/// asking, however short Cognito's lifetime.
#[tokio::test]
async fn a_configured_identity_keeps_refreshing_with_nobody_asking() {
    // Re-read (and touched) only hourly: only the hold keeps it in use meanwhile.
    let h = paused(moto_like(Tweaks::default().configured_identity(
        "auth0|configured",
        Duration::from_secs(24 * 3600),
        "1h",
    )))
    .await;
    let start = h.credential_calls();
    assert!(start >= 1, "warmed at start-up");
    tokio::time::sleep(20 * MIN).await;
    let calls = h.credential_calls() - start;
    // One refresh every 45–52.5 s for 20 minutes.
    assert!(
        (20..=30).contains(&calls),
        "{calls} refreshes in 20 minutes"
    );
    let identity = h
        .running()
        .broker
        .identities
        .identities()
        .pop()
        .expect("cached");
    let current = identity.current().expect("credentials");
    assert!(current.servable_at(h.clock.now()), "always fresh");
}

/// An identity evicted for capacity is renewed no more, although its source still holds it:
/// the source finds the identity's new entry on its next ask, and only that one is renewed.
#[tokio::test]
async fn an_identity_evicted_for_capacity_is_not_renewed_although_held() {
    // Re-read (and touched) only hourly: nothing re-creates its entry during the test.
    let h = paused(
        Tweaks {
            cache: "max_identities = 1\nrefresh_jitter = \"0s\"".into(),
            ..Tweaks::default()
        }
        .configured_identity("auth0|configured", Duration::from_secs(24 * 3600), "1h"),
    )
    .await;
    assert_eq!(
        h.credential_calls(),
        1,
        "the configured identity, warmed at start-up"
    );
    let t = token(&h, "auth0|newcomer", Duration::from_secs(12 * 3600));
    creds(&h, &t).await.expect("newcomer");
    assert_eq!(
        h.cached_subjects(),
        ["auth0|newcomer"],
        "the held identity, the only one, made room"
    );
    assert_eq!(
        metric(
            &metrics(&h),
            "credbroker_cache_evictions_total{cause=\"capacity\"}"
        ),
        1.0
    );

    // Both sets were obtained at the start and are due 30 minutes before their expiry.
    tokio::time::sleep(36 * MIN).await;
    assert_eq!(
        h.credential_calls(),
        3,
        "only the newcomer's set was renewed (the evicted identity's renewal would make 4)"
    );
}
