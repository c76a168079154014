//! Fleet mode against a real redis-server: replicas (each its own broker with its own cache)
//! share identity ids, encrypted credential sets and the Cognito budget.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use credbroker::app::{self, Overrides, Running};
use credbroker::config::Config;
use credbroker_emulators::cognito::CognitoOptions;
use credbroker_emulators::redis_server::{RedisCluster, RedisSentinel};
use futures_util::future::join_all;

use crate::single_flight::metric;
use crate::support::{Harness, Reply, Tweaks, request, tempdir};

/// A redis-server of the test's own (a Unix socket in a temporary directory), stopped on drop.
pub struct RedisServer(credbroker_emulators::redis_server::RedisServer);

impl RedisServer {
    pub fn start() -> Self {
        Self(
            credbroker_emulators::redis_server::RedisServer::start_in(&tempdir().join("redis"))
                .expect("redis-server starts"),
        )
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    pub fn stop(&mut self) {
        self.0.stop();
    }

    /// Starts it again, empty, on the same socket.
    pub fn restart(&mut self) {
        self.0.restart().expect("redis-server restarts");
    }

    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("test client connects")
    }

    /// Every key and its value (strings; other types as empty values).
    pub async fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut c = self.client().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .expect("KEYS");
        let mut out = Vec::new();
        for k in keys {
            let v: redis::Value = redis::cmd("GET")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap_or(redis::Value::Nil);
            let bytes = match v {
                redis::Value::BulkString(b) => b,
                _ => Vec::new(),
            };
            out.push((k, bytes));
        }
        out
    }
}

/// A keys file with a naming line and one encryption key.
fn keys_file(dir: &Path) -> PathBuf {
    let path = dir.join("shared-keys");
    let lines: Vec<String> = ["naming", "k1"]
        .iter()
        .map(|id| credbroker::shared::generate_key_line(id).expect("rng"))
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").expect("keys file");
    path
}

/// `[shared]` with `topology` (e.g. `url = ...`) and `extra` settings.
fn shared_toml(topology: &str, keys: &Path, extra: &str) -> String {
    format!(
        "\n[shared]\n{topology}\nencryption_keys_file = \"{}\"\nlock_wait = \"8s\"\n\
         retry_interval = \"200ms\"\n{extra}\n",
        keys.display()
    )
}

/// The first replica (with the emulators) and `more` replicas on the same configuration.
struct Fleet {
    h: Harness,
    replicas: Vec<Option<Running>>,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Fleet {
    async fn start(redis: &RedisServer, more: usize, shared_extra: &str, t: Tweaks) -> Self {
        let topology = format!("url = \"{}\"", redis.url());
        Self::start_on(&topology, more, shared_extra, t).await
    }

    async fn start_on(topology: &str, more: usize, shared_extra: &str, t: Tweaks) -> Self {
        let dir = tempdir();
        let keys = keys_file(&dir);
        let mut t = t;
        t.server = format!(
            "max_pending_exchanges = 4000\nmax_connections = 4096\n{}",
            t.server
        );
        t.extra = format!("{}{}", t.extra, shared_toml(topology, &keys, shared_extra));
        let h = Harness::with(t).await;
        let mut fleet = Self {
            replicas: Vec::new(),
            http: h.http.clone(),
            h,
        };
        for _ in 0..more {
            let r = fleet.boot().await;
            fleet.replicas.push(Some(r));
        }
        fleet
    }

    async fn boot(&self) -> Running {
        let config = Config::from_toml(&self.h.config_text).expect("valid config");
        app::start(
            config,
            Overrides {
                clock: Some(self.h.clock.clone()),
                ..Overrides::default()
            },
        )
        .await
        .expect("replica starts")
    }

    /// Replica `i` (0 is the harness's).
    fn replica(&self, i: usize) -> &Running {
        match i {
            0 => self.h.running(),
            n => self
                .replicas
                .get(n - 1)
                .and_then(Option::as_ref)
                .expect("replica running"),
        }
    }

    async fn get(&self, i: usize, token: &str) -> Reply {
        let url = self.replica(i).credentials_url();
        request(&self.http, "GET", &url, &[("authorization", token)]).await
    }

    async fn restart(&mut self, i: usize) {
        let slot = self.replicas.get_mut(i - 1).expect("replica");
        if let Some(r) = slot.take() {
            r.stop().await;
        }
        let r = self.boot().await;
        self.replicas[i - 1] = Some(r);
    }

    fn metrics(&self, i: usize) -> String {
        self.replica(i).broker.metrics.render()
    }

    async fn stop(mut self) {
        for r in self.replicas.iter_mut().filter_map(Option::take) {
            r.stop().await;
        }
        self.h.stop().await;
    }
}

fn key_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["AccessKeyId"]
        .as_str()
        .expect("AccessKeyId")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_cost_cognito_what_one_does_and_a_restarted_one_costs_nothing() {
    let redis = RedisServer::start();
    let mut fleet = Fleet::start(&redis, 2, "op_timeout = \"2s\"", Tweaks::default()).await;
    // Slow Cognito, so every replica's first request arrives while the exchange is in flight.
    fleet
        .h
        .cognito
        .faults()
        .set_latency(Duration::from_millis(300));
    let token = fleet.h.issuer.token_for("auth0|popular");
    let fleet_ref = &fleet;
    let replies = join_all((0..1000).map(|i| {
        let token = &token;
        async move { fleet_ref.get(i % 3, token).await }
    }))
    .await;
    let keys: BTreeSet<String> = replies.iter().map(key_of).collect();
    assert_eq!(keys.len(), 1, "every replica serves the one set");
    assert_eq!(fleet.h.get_id_calls(), 1, "one GetId for the fleet");
    assert_eq!(
        fleet.h.credential_calls(),
        1,
        "one GetCredentialsForIdentity for the fleet"
    );

    // 300 users, each asked on every replica at once: one exchange each.
    let users: Vec<String> = (0..300)
        .map(|i| fleet.h.issuer.token_for(&format!("auth0|user-{i}")))
        .collect();
    let replies = join_all(
        users
            .iter()
            .flat_map(|t| (0..3).map(move |r| fleet_ref.get(r, t))),
    )
    .await;
    let errors = |i: usize| {
        let m = fleet_ref.metrics(i);
        m.lines()
            .filter(|l| l.starts_with("credbroker_shared_errors_total") && !l.ends_with(" 0"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    for per_user in replies.chunks(3) {
        let keys: BTreeSet<String> = per_user.iter().map(key_of).collect();
        assert_eq!(
            keys.len(),
            1,
            "one set per user across the fleet; errors: {:?}",
            errors(0)
        );
    }
    assert_eq!(fleet.h.get_id_calls(), 301);
    assert_eq!(fleet.h.credential_calls(), 301);
    let avoided: f64 = (0..3)
        .map(|i| {
            metric(
                &fleet.metrics(i),
                "credbroker_cognito_calls_avoided_total{operation=\"GetCredentialsForIdentity\",reason=\"shared_credentials\"}",
            )
        })
        .sum();
    assert!(avoided >= 2.0 * 300.0, "other replicas adopted: {avoided}");

    // A restarted replica knows nobody locally; the fleet does.
    fleet.restart(2).await;
    let before = (fleet.h.get_id_calls(), fleet.h.credential_calls());
    for t in users.iter().take(50) {
        key_of(&fleet.get(2, t).await);
    }
    assert_eq!(
        (fleet.h.get_id_calls(), fleet.h.credential_calls()),
        before,
        "the restarted replica adopted every set"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_identity_ids_spare_every_get_id_after_the_first() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(&redis, 1, "share = [\"identity_ids\"]", Tweaks::default()).await;
    let users: Vec<String> = (0..20)
        .map(|i| fleet.h.issuer.token_for(&format!("auth0|id-{i}")))
        .collect();
    for t in &users {
        key_of(&fleet.get(0, t).await);
    }
    assert_eq!(
        (fleet.h.get_id_calls(), fleet.h.credential_calls()),
        (20, 20)
    );
    for t in &users {
        key_of(&fleet.get(1, t).await);
    }
    assert_eq!(fleet.h.get_id_calls(), 20, "no GetId on the second replica");
    assert_eq!(
        fleet.h.credential_calls(),
        40,
        "credentials are not shared in this mode"
    );
    assert_eq!(
        metric(
            &fleet.metrics(1),
            "credbroker_cognito_calls_avoided_total{operation=\"GetId\",reason=\"shared_id\"}"
        ),
        20.0
    );
    let dump = redis.dump().await;
    let names: Vec<&str> = dump.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        names
            .iter()
            .all(|k| k.ends_with(":id") || k.contains("budget:")),
        "only ids (and the budget's counters) stored: {names:?}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_changed_in_redis_is_never_served_and_is_exchanged_again() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(&redis, 1, "", Tweaks::default()).await;
    let alice = fleet.h.issuer.token_for("auth0|alice");
    let bob = fleet.h.issuer.token_for("auth0|bob");
    let alice_key = key_of(&fleet.get(0, &alice).await);
    let bob_key = key_of(&fleet.get(0, &bob).await);
    let mut c = redis.client().await;
    let sets: Vec<(String, Vec<u8>)> = redis
        .dump()
        .await
        .into_iter()
        .filter(|(k, _)| k.ends_with(":cr"))
        .collect();
    assert_eq!(sets.len(), 2, "{sets:?}");
    // One set with a flipped ciphertext byte; the other replaced by its neighbour's value.
    let (first, value) = &sets[0];
    let (second, _) = &sets[1];
    let mut flipped = value.clone();
    if let Some(b) = flipped.last_mut() {
        *b ^= 0x01;
    }
    let _: () = redis::cmd("SET")
        .arg(first)
        .arg(&flipped)
        .arg("KEEPTTL")
        .query_async(&mut c)
        .await
        .expect("SET");
    let _: () = redis::cmd("SET")
        .arg(second)
        .arg(value)
        .arg("KEEPTTL")
        .query_async(&mut c)
        .await
        .expect("SET");
    let calls = fleet.h.credential_calls();
    let alice_b = key_of(&fleet.get(1, &alice).await);
    let bob_b = key_of(&fleet.get(1, &bob).await);
    assert_eq!(
        fleet.h.credential_calls(),
        calls + 2,
        "both exchanged again"
    );
    assert_ne!(alice_b, alice_key);
    assert_ne!(bob_b, bob_key);
    assert_ne!(bob_b, alice_key, "bob never gets alice's set");
    assert_ne!(alice_b, bob_key);
    let m = fleet.metrics(1);
    assert_eq!(
        metric(&m, "credbroker_shared_rejected_total{reason=\"decrypt\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "credbroker_shared_available"),
        1.0,
        "bad entries are not an outage"
    );
    // The emulator's records prove what was served is what Cognito issued for each user.
    let owner = |k: &str| {
        fleet
            .h
            .cognito
            .lookup_access_key(k)
            .expect("issued")
            .identity_id
    };
    assert_ne!(owner(&alice_b), owner(&bob_b));
    assert_eq!(owner(&alice_b), owner(&alice_key));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopping_mid_load_fails_no_request_and_sharing_resumes_when_it_returns() {
    let mut redis = RedisServer::start();
    let fleet = Fleet::start(&redis, 1, "op_timeout = \"100ms\"", Tweaks::default()).await;
    let fleet_ref = &fleet;
    let wave = |from: usize, n: usize| {
        join_all((from..from + n).flat_map(|i| {
            let t = fleet_ref.h.issuer.token_for(&format!("auth0|load-{i}"));
            (0..2).map(move |r| {
                let t = t.clone();
                async move { fleet_ref.get(r, &t).await }
            })
        }))
    };
    for r in wave(0, 50).await {
        key_of(&r);
    }
    let load = tokio::spawn({
        let tokens: Vec<String> = (50..250)
            .map(|i| fleet.h.issuer.token_for(&format!("auth0|load-{i}")))
            .collect();
        let urls = [
            fleet.replica(0).credentials_url(),
            fleet.replica(1).credentials_url(),
        ];
        let http = fleet.http.clone();
        async move {
            let mut statuses = Vec::new();
            for (i, t) in tokens.iter().enumerate() {
                let url = &urls[i % 2];
                statuses.push(
                    request(&http, "GET", url, &[("authorization", t)])
                        .await
                        .status,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.stop();
    let statuses = load.await.expect("load");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let m = fleet.metrics(0);
    assert_eq!(metric(&m, "credbroker_shared_available"), 0.0, "{m}");
    let ready = fleet.h.admin_get("/readyz").await;
    assert_eq!(
        ready.status,
        200,
        "an outage of Redis is not unreadiness: {}",
        ready.text()
    );
    assert_eq!(
        ready.json()["shared"]["status"],
        "unavailable",
        "{}",
        ready.text()
    );

    redis.restart();
    // New users until both replicas have found Redis again (each probes on its next exchange).
    for n in 1000..1200 {
        let up = (0..2).all(|i| metric(&fleet.metrics(i), "credbroker_shared_available") == 1.0);
        if up {
            break;
        }
        for r in wave(n, 1).await {
            key_of(&r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = fleet.h.issuer.token_for("auth0|after-outage");
    key_of(&fleet.get(0, &t).await);
    let calls = (fleet.h.get_id_calls(), fleet.h.credential_calls());
    key_of(&fleet.get(1, &t).await);
    assert_eq!(
        (fleet.h.get_id_calls(), fleet.h.credential_calls()),
        calls,
        "sharing resumed"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_no_token_secret_subject_or_issuer() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(&redis, 1, "", Tweaks::default()).await;
    let subject = "auth0|secret-subject-1234";
    let token = fleet.h.issuer.token_for(subject);
    let first = fleet.get(0, &token).await;
    key_of(&first);
    key_of(&fleet.get(1, &token).await);
    // A session too: its handle must not reach Redis either.
    let handle = crate::sessions::create_session(&fleet.h, &token).await;
    let body = first.json();
    let secret = body["SecretAccessKey"].as_str().expect("secret").to_owned();
    let session_token = body["Token"].as_str().expect("token").to_owned();
    let issuer = fleet.h.issuer.issuer().to_owned();
    let dump = redis.dump().await;
    assert!(dump.len() >= 2, "ids and credentials are stored: {dump:?}");
    let mut needles: Vec<(&str, &str)> = vec![
        ("ID token", token.as_str()),
        ("secret key", secret.as_str()),
        ("session token", session_token.as_str()),
        ("subject", subject),
        ("issuer", issuer.as_str()),
        (
            "issuer host",
            issuer.trim_start_matches("http://").trim_end_matches('/'),
        ),
    ];
    needles.push(("session handle", handle.as_str()));
    for (key, value) in &dump {
        for (what, needle) in &needles {
            let n = needle.as_bytes();
            assert!(!key.contains(needle), "{what} in a key name {key}");
            assert!(
                !value
                    .windows(n.len().min(value.len()).max(1))
                    .any(|w| w == n),
                "{what} in the value of {key}"
            );
        }
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_budget_holds_the_fleets_renewals_under_its_rate() {
    const RATE: f64 = 50.0;
    const BURST: f64 = 5.0;
    const USERS: usize = 200;
    let redis = RedisServer::start();
    // 30 s credentials: renewals start 15 s after issue and must land within 5 s (before
    // less than the scaled min_remaining is left). 200 renewals at once would be 200 calls in
    // one second; the budget spreads them over four.
    let tweaks = Tweaks {
        cognito_options: Some(CognitoOptions {
            credential_lifetime: Duration::from_secs(30),
            ..CognitoOptions::default()
        }),
        cache: "refresh_rate = 1000\nrefresh_concurrency = 256\nrefresh_jitter = \"1s\"".into(),
        ..Tweaks::default()
    };
    let budget = format!(
        "[shared.budget]\ncredentials_rate = {RATE}\nget_id_rate = {RATE}\nburst_seconds = {}\n\
         max_wait = \"0s\"",
        BURST / RATE
    );
    let fleet = Fleet::start(&redis, 2, &budget, tweaks).await;
    let tokens: Vec<String> = (0..USERS)
        .map(|i| fleet.h.issuer.token_for(&format!("auth0|budget-{i}")))
        .collect();
    let fleet_ref = &fleet;
    let overruns = || -> f64 {
        (0..3)
            .map(|i| {
                metric(
                    &fleet_ref.metrics(i),
                    "credbroker_budget_requests_total{operation=\"GetCredentialsForIdentity\",\
                     priority=\"on_demand\",result=\"overrun\"}",
                )
            })
            .sum()
    };
    // Every user asked every second, so every set counts as used.
    let started = tokio::time::Instant::now();
    let mut first_wave_done_ms = None;
    let mut overruns_after_first_wave = 0.0;
    while started.elapsed() < Duration::from_secs(24) {
        // Each user on one replica per round, a different one each round, 50 at a time.
        let round = started.elapsed().as_secs() as usize;
        for (n, chunk) in tokens.chunks(50).enumerate() {
            let replies = join_all(
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, t)| fleet_ref.get((round + n + i) % 3, t)),
            )
            .await;
            for r in &replies {
                key_of(r);
            }
        }
        if first_wave_done_ms.is_none() {
            let arrivals = fleet
                .h
                .cognito
                .stats()
                .get_credentials_for_identity
                .arrivals_ms;
            first_wave_done_ms = arrivals.last().copied();
            overruns_after_first_wave = overruns();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let from = first_wave_done_ms.expect("first wave") + 1;
    let renewals: Vec<u64> = fleet
        .h
        .cognito
        .stats()
        .get_credentials_for_identity
        .arrivals_ms
        .into_iter()
        .filter(|t| *t >= from)
        .collect();
    assert!(
        renewals.len() >= USERS,
        "every user was renewed once at least: {} renewals",
        renewals.len()
    );
    assert!(
        renewals.len() <= USERS + USERS / 10,
        "one renewal per user for the fleet: {}",
        renewals.len()
    );
    let peak = renewals
        .iter()
        .map(|&t| renewals.iter().filter(|&&u| u >= t && u < t + 1000).count())
        .max()
        .unwrap_or(0);
    let late = overruns() - overruns_after_first_wave;
    // The limiter grants at most RATE × 1 s + BURST slots in any second; the emulator sees
    // each call a little after its grant (an HTTP round trip on a loaded machine), which can
    // move a call or two across a window's edge: 10 % margin. Unlimited, the 200 renewals
    // would land within the one-second jitter window.
    assert!(
        peak as f64 <= (RATE + BURST) * 1.1 + late,
        "peak {peak} calls in a second over a budget of {RATE}/s + {BURST} ({late} overruns)"
    );
    assert_eq!(
        late, 0.0,
        "renewals landed before anyone needed an on-demand exchange"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_drops_the_shared_set_so_the_next_exchange_anywhere_is_fresh() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(&redis, 1, "", Tweaks::default()).await;
    let token = fleet.h.issuer.token_for("auth0|leaving");
    let handle = crate::sessions::create_session(&fleet.h, &token).await;
    let shared_sets = || async {
        redis
            .dump()
            .await
            .into_iter()
            .filter(|(k, _)| k.ends_with(":cr"))
            .count()
    };
    assert_eq!(shared_sets().await, 1, "the session's set is shared");
    let url = format!(
        "http://{}/v1/sessions/current",
        fleet.replica(0).container_addr
    );
    let out = request(&fleet.http, "DELETE", &url, &[("authorization", &handle)]).await;
    assert_eq!(out.json()["identity_evicted"], true, "{}", out.text());
    for _ in 0..100 {
        if shared_sets().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shared_sets().await, 0, "the logout deleted the shared set");
    let calls = fleet.h.credential_calls();
    key_of(&fleet.get(1, &token).await);
    assert_eq!(
        fleet.h.credential_calls(),
        calls + 1,
        "the other replica exchanged afresh"
    );
    fleet.stop().await;
}

/// Each of `users` asked on every replica in turn: the fleet's Cognito calls.
async fn ask_everywhere(fleet: &Fleet, users: usize, prefix: &str, replicas: usize) -> (u64, u64) {
    let before = (fleet.h.get_id_calls(), fleet.h.credential_calls());
    for i in 0..users {
        let t = fleet.h.issuer.token_for(&format!("auth0|{prefix}-{i}"));
        let keys: BTreeSet<String> = join_all((0..replicas).map(|r| fleet.get(r, &t)))
            .await
            .iter()
            .map(key_of)
            .collect();
        assert_eq!(keys.len(), 1, "one set for the fleet");
    }
    (
        fleet.h.get_id_calls() - before.0,
        fleet.h.credential_calls() - before.1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_shares_as_one_server_does() {
    let cluster = RedisCluster::start_in(&tempdir().join("cluster"), 3).expect("cluster starts");
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let topology = format!("mode = \"cluster\"\nnodes = [{}]", nodes.join(", "));
    let fleet = Fleet::start_on(&topology, 1, "", Tweaks::default()).await;
    assert_eq!(ask_everywhere(&fleet, 40, "cluster", 2).await, (40, 40));
    let adopted: f64 = (0..2)
        .map(|i| {
            let m = fleet.metrics(i);
            assert_eq!(metric(&m, "credbroker_shared_available"), 1.0, "{m}");
            metric(
                &m,
                "credbroker_cognito_calls_avoided_total{operation=\"GetCredentialsForIdentity\",\
                 reason=\"shared_credentials\"}",
            )
        })
        .sum();
    assert_eq!(adopted, 40.0, "one replica adopted each user's set");
    // The sets are spread over the cluster's nodes (keys hash to their slots).
    let with_keys = cluster
        .nodes
        .iter()
        .filter(|n| {
            let port = n.port().expect("tcp").to_string();
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port, "dbsize"])
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).trim() != "0"
        })
        .count();
    assert!(with_keys >= 2, "keys on {with_keys} node(s)");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_mode_uses_the_master_the_sentinels_name() {
    let pair = RedisSentinel::start_in(&tempdir().join("sentinel")).expect("sentinel starts");
    // The url's host is not used: the sentinel names the master.
    let topology = format!(
        "mode = \"sentinel\"\nsentinel_master = \"{}\"\nnodes = [\"{}\"]\nurl = \"redis://unused.invalid/0\"",
        RedisSentinel::MASTER,
        pair.sentinel.url()
    );
    let fleet = Fleet::start_on(&topology, 1, "", Tweaks::default()).await;
    assert_eq!(ask_everywhere(&fleet, 20, "sentinel", 2).await, (20, 20));
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &pair.master.port().expect("tcp").to_string(),
            "dbsize",
        ])
        .output()
        .expect("redis-cli");
    let keys: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count");
    assert!(keys >= 40, "ids and sets are on the master: {keys}");

    // Failover: the master goes; the sentinel promotes the replica; requests never fail and
    // sharing resumes on the new master.
    let mut pair = pair;
    pair.master.stop();
    let mut resumed = false;
    for n in 0..600 {
        let t = fleet.h.issuer.token_for(&format!("auth0|failover-{n}"));
        key_of(&fleet.get(0, &t).await);
        let calls = (fleet.h.get_id_calls(), fleet.h.credential_calls());
        key_of(&fleet.get(1, &t).await);
        if (fleet.h.get_id_calls(), fleet.h.credential_calls()) == calls {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "sharing resumed on the promoted replica");
    let role = std::process::Command::new("redis-cli")
        .args(["-p", &pair.replica.port().expect("tcp").to_string(), "role"])
        .output()
        .expect("redis-cli");
    assert!(
        String::from_utf8_lossy(&role.stdout).starts_with("master"),
        "the replica was promoted"
    );
    fleet.stop().await;
}

/// A CA and a server certificate for 127.0.0.1 (openssl), in `dir`.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=credbroker-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_against_the_configured_ca() {
    let dir = tempdir();
    let (ca, cert, key) = tls_files(&dir);
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let extra: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &path(&cert),
        "--tls-key-file",
        &path(&key),
        "--tls-ca-cert-file",
        &path(&ca),
        "--tls-auth-clients",
        "no",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let server =
        credbroker_emulators::redis_server::RedisServer::start_tcp_in(&dir.join("redis"), &extra)
            .expect("a TLS redis-server starts");
    let url = format!("rediss://127.0.0.1:{}/", server.port().expect("tcp"));

    let trusted = format!("url = \"{url}\"\ntls_ca_file = \"{}\"", ca.display());
    let fleet = Fleet::start_on(&trusted, 1, "", Tweaks::default()).await;
    assert_eq!(
        ask_everywhere(&fleet, 10, "tls", 2).await,
        (10, 10),
        "shared over TLS"
    );
    fleet.stop().await;

    // Without the CA the server's certificate is refused: nothing is shared, nothing fails.
    let untrusted = format!("url = \"{url}\"");
    let fleet = Fleet::start_on(&untrusted, 1, "", Tweaks::default()).await;
    for i in 0..5 {
        let t = fleet.h.issuer.token_for(&format!("auth0|untrusted-{i}"));
        key_of(&fleet.get(0, &t).await);
        key_of(&fleet.get(1, &t).await);
    }
    assert_eq!(
        fleet.h.credential_calls(),
        10,
        "each replica exchanged alone"
    );
    let m = fleet.metrics(0);
    assert_eq!(metric(&m, "credbroker_shared_available"), 0.0, "{m}");
    fleet.stop().await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
