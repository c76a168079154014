//! One upstream exchange per identity, however many callers; identities never mix.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::future::join_all;

use crate::support::{Harness, Tweaks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_first_requests_make_one_get_id_and_one_get_credentials() {
    let h = Harness::with(Tweaks {
        server: "max_pending_exchanges = 2000\nmax_connections = 4096".into(),
        ..Tweaks::default()
    })
    .await;
    // Slow Cognito, so every request arrives while the exchange is in flight.
    h.cognito.faults().set_latency(Duration::from_millis(300));
    let token = h.issuer.token_for("auth0|popular");
    let replies = join_all((0..1000).map(|_| h.get(&token))).await;
    let keys: BTreeSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["AccessKeyId"].as_str().expect("key").to_owned()
        })
        .collect();
    assert_eq!(keys.len(), 1, "everyone got the same credentials");
    assert_eq!(h.get_id_calls(), 1, "one GetId");
    assert_eq!(h.credential_calls(), 1, "one GetCredentialsForIdentity");
    let metrics = h.running().broker.metrics.render();
    let joined = metric(
        &metrics,
        "credbroker_cache_lookups_total{result=\"joined\"}",
    );
    let misses = metric(&metrics, "credbroker_cache_lookups_total{result=\"miss\"}");
    assert_eq!(misses, 1.0, "{metrics}");
    assert!(joined > 0.0, "callers joined the in-flight exchange");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identities_never_receive_each_others_credentials() {
    let h = Harness::with(Tweaks {
        server: "max_pending_exchanges = 2000".into(),
        ..Tweaks::default()
    })
    .await;
    h.cognito.faults().set_latency(Duration::from_millis(50));
    let users: Vec<String> = (0..40).map(|i| format!("auth0|user-{i}")).collect();
    let tokens: Vec<(String, String)> = users
        .iter()
        .map(|u| (u.clone(), h.issuer.token_for(u)))
        .collect();
    let h = &h;
    let calls = tokens.iter().flat_map(|(user, token)| {
        (0..10).map(move |_| async move { (user.clone(), h.get(token).await) })
    });
    let replies = join_all(calls).await;
    let mut by_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (user, reply) in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let key = reply.json()["AccessKeyId"]
            .as_str()
            .expect("key")
            .to_owned();
        by_user.entry(user.clone()).or_default().insert(key);
    }
    let mut identity_ids = BTreeSet::new();
    let mut all_keys = BTreeSet::new();
    for (user, keys) in &by_user {
        assert_eq!(keys.len(), 1, "{user} got one credential set");
        let key = keys.iter().next().expect("key");
        assert!(
            all_keys.insert(key.clone()),
            "{user}'s key is nobody else's"
        );
        let issued = h.cognito.lookup_access_key(key).expect("issued by Cognito");
        identity_ids.insert(issued.identity_id);
    }
    assert_eq!(
        identity_ids.len(),
        users.len(),
        "one Cognito identity per user"
    );
    assert_eq!(h.get_id_calls(), users.len() as u64);
    assert_eq!(h.credential_calls(), users.len() as u64);
}

pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse().unwrap_or(f64::NAN))
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_evicts_the_identity_asked_for_least_recently_and_keeps_held_ones() {
    // A configured identity: held (renewed whether or not anyone asks), so never the victim
    // while an identity nothing holds is cached. Polled once an hour: no re-read makes it the
    // most recently asked during the test.
    let h = Harness::with(
        Tweaks {
            cache: "max_identities = 3".into(),
            ..Tweaks::default()
        }
        .configured_identity("auth0|configured", Duration::from_secs(10 * 3600), "1h"),
    )
    .await;
    let cached = || h.cached_subjects();
    let warm = || {
        h.running()
            .broker
            .identities
            .identities()
            .iter()
            .any(|i| i.current().is_some())
    };
    for _ in 0..200 {
        if warm() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cached(), ["auth0|configured"]);
    assert!(warm(), "the configured identity has its credentials");
    let tokens: BTreeMap<&str, String> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|u| (u, h.issuer.token_for(&format!("auth0|{u}"))))
        .collect();
    let ask = |u: &'static str| {
        let (h, token) = (&h, tokens[u].clone());
        async move {
            // Distinct milliseconds: recency is kept per millisecond.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let r = h.get(&token).await;
            assert_eq!(r.status, 200, "{u}: {}", r.text());
        }
    };
    let capacity_evictions = || {
        metric(
            &h.running().broker.metrics.render(),
            "credbroker_cache_evictions_total{cause=\"capacity\"}",
        )
    };

    ask("a").await;
    ask("b").await;
    ask("a").await; // a cache hit, and now the most recent
    assert_eq!(capacity_evictions(), 0.0);
    ask("c").await;
    assert_eq!(
        cached(),
        ["auth0|a", "auth0|c", "auth0|configured"],
        "b was asked least recently; the configured identity, older still, is held"
    );
    ask("d").await;
    assert_eq!(cached(), ["auth0|c", "auth0|configured", "auth0|d"]);
    assert_eq!(capacity_evictions(), 2.0);
    assert_eq!(h.get_id_calls(), 5, "the configured identity, a, b, c, d");

    // Cached identities cost Cognito nothing; an evicted one starts over.
    let credentials = h.credential_calls();
    ask("c").await;
    ask("d").await;
    assert_eq!((h.get_id_calls(), h.credential_calls()), (5, credentials));
    ask("b").await;
    assert_eq!(h.get_id_calls(), 6, "b was evicted: a new exchange");
    assert_eq!(cached(), ["auth0|b", "auth0|configured", "auth0|d"]);
    assert_eq!(capacity_evictions(), 3.0);
    assert_eq!(h.running().broker.identities.len(), 3);
    h.stop().await;
}
