//! 8: fleet mode (issue 11). N in-process replicas × M users against one emulated Cognito that
//! answers after 40 ms, each user's first request made on every replica in turn: Cognito calls
//! and the p50 of a first request on the replicas after the first, with the shared tier (a real
//! redis-server) and without it, in the same run; and the p50 of a local cache hit in both
//! modes (local hits never touch Redis, so it must not change).

use std::time::{Duration, Instant};

use credbroker::app::{self, Overrides, Running};
use credbroker::config::Config;
use credbroker_emulators::cognito::CognitoEmulator;
use credbroker_emulators::oidc::OidcIssuer;
use credbroker_emulators::redis_server::RedisServer;
use futures_util::StreamExt as _;

use crate::Options;
use crate::report::Report;
use crate::system::mint_parallel;
use crate::util::{self, HttpClient, fmt_duration, quantile};

const REPLICAS: usize = 3;
const COGNITO_LATENCY: Duration = Duration::from_millis(40);

struct Outcome {
    get_id: u64,
    credentials: u64,
    first_p50: Duration,
    later_p50: Duration,
    hit_p50: Duration,
}

fn config(issuer: &OidcIssuer, cognito: &CognitoEmulator, shared: Option<(&str, &str)>) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_pending_exchanges = 4000\nmax_connections = 4096\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[providers.bench]\nissuer = \"{}\"\naudiences = [\"{}\"]\n\
         [cognito]\nregion = \"{}\"\nidentity_pool_id = \"{}\"\nendpoint_url = \"{}\"\n",
        issuer.issuer(),
        issuer.audience(),
        cognito.region(),
        cognito.identity_pool_id(),
        cognito.endpoint_url(),
    );
    if let Some((url, keys)) = shared {
        text.push_str(&format!(
            "[shared]\nurl = \"{url}\"\nencryption_keys_file = \"{keys}\"\n\
             [shared.budget]\nget_id_rate = 10000\ncredentials_rate = 10000\n"
        ));
    }
    text
}

async fn timed_get(client: &HttpClient, url: &str, token: &str) -> Duration {
    let started = Instant::now();
    match util::get(client, url, token).await {
        Ok((200, _)) => started.elapsed(),
        other => panic!("fleet bench: {url} answered {other:?}"),
    }
}

/// Every user's first request on replica 0, then 1, …; 16 users at a time.
async fn round(
    replicas: &[Running],
    cognito: &CognitoEmulator,
    tokens: &[String],
    client: &HttpClient,
) -> Outcome {
    let before = cognito.stats();
    let urls: Vec<String> = replicas.iter().map(Running::credentials_url).collect();
    let urls = &urls;
    let timings: Vec<Vec<Duration>> = futures_util::stream::iter(tokens)
        .map(|t| async move {
            let mut per_replica = Vec::new();
            for url in urls {
                per_replica.push(timed_get(client, url, t).await);
            }
            per_replica
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let after = cognito.stats();
    let mut first: Vec<Duration> = timings.iter().filter_map(|t| t.first().copied()).collect();
    let mut later: Vec<Duration> = timings
        .iter()
        .flat_map(|t| t.iter().skip(1).copied())
        .collect();
    first.sort();
    later.sort();
    let hit_url = urls.get(1).map_or("", String::as_str);
    let token = tokens.first().map_or("", String::as_str);
    let mut hits = Vec::new();
    for _ in 0..2_000 {
        hits.push(timed_get(client, hit_url, token).await);
    }
    hits.sort();
    Outcome {
        get_id: after.get_id.calls - before.get_id.calls,
        credentials: after.get_credentials_for_identity.calls
            - before.get_credentials_for_identity.calls,
        first_p50: quantile(&first, 0.5),
        later_p50: quantile(&later, 0.5),
        hit_p50: quantile(&hits, 0.5),
    }
}

async fn start_replicas(text: &str) -> Vec<Running> {
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        let config = Config::from_toml(text).expect("the bench's fleet config is valid");
        replicas.push(
            app::start(config, Overrides::default())
                .await
                .expect("a replica starts"),
        );
    }
    replicas
}

pub async fn run(options: &Options, report: &mut Report) {
    let dir = util::tempdir("fleet");
    let redis = match RedisServer::start_in(&dir.join("redis")) {
        Ok(r) => r,
        Err(e) => {
            report.note(format!("fleet figures skipped: {e}"));
            return;
        }
    };
    let (issuer, cognito) = util::issuer_and_cognito(COGNITO_LATENCY).await;
    let users = if options.quick { 100 } else { 1_000 };
    let lines: Vec<String> = ["naming", "k1"]
        .iter()
        .filter_map(|id| credbroker::shared::generate_key_line(id))
        .collect();
    let keys = util::write(&dir, "keys", lines.join("\n").as_bytes());
    let keys = keys.to_string_lossy().into_owned();
    let client = util::client();
    let mut outcomes = Vec::new();
    for shared in [false, true] {
        let tokens = mint_parallel(
            &issuer,
            if shared {
                "auth0|fleet-on"
            } else {
                "auth0|fleet-off"
            },
            users,
        )
        .await;
        let redis_url = redis.url();
        let text = config(
            &issuer,
            &cognito,
            shared.then_some((redis_url.as_str(), keys.as_str())),
        );
        let replicas = start_replicas(&text).await;
        outcomes.push(round(&replicas, &cognito, &tokens, &client).await);
        for r in replicas {
            r.stop().await;
        }
    }
    let (Some(off), Some(on)) = (outcomes.first(), outcomes.get(1)) else {
        return;
    };
    let per_user = |calls: u64| calls as f64 / users as f64;
    report.row(
        "8 fleet",
        format!(
            "{REPLICAS} replicas × {users} users, each user's first request on every replica \
             (Cognito answers after {} ms): Cognito calls",
            COGNITO_LATENCY.as_millis()
        ),
        format!(
            "shared tier: GetId {:.2}/user, GetCredentialsForIdentity {:.2}/user",
            per_user(on.get_id),
            per_user(on.credentials)
        ),
        format!(
            "alone: GetId {:.2}/user, GetCredentialsForIdentity {:.2}/user",
            per_user(off.get_id),
            per_user(off.credentials)
        ),
        format!(
            "{:.1}× fewer calls",
            (off.get_id + off.credentials) as f64 / (on.get_id + on.credentials).max(1) as f64
        ),
        format!(
            "1 + 1 per user whatever the replica count: {}",
            if on.get_id as usize == users && on.credentials as usize == users {
                "met"
            } else {
                "MISSED"
            }
        ),
    );
    report.row(
        "8 fleet",
        "p50 of a user's first request on the replicas after the first",
        format!("shared tier: {}", fmt_duration(on.later_p50)),
        format!("alone: {}", fmt_duration(off.later_p50)),
        format!(
            "{:.2}× (the first replica: {} shared, {} alone)",
            on.later_p50.as_secs_f64() / off.later_p50.as_secs_f64().max(1e-9),
            fmt_duration(on.first_p50),
            fmt_duration(off.first_p50)
        ),
        "no Cognito round trip after the first replica",
    );
    report.row(
        "8 fleet",
        "p50 of a local cache hit (sequential GETs on one replica)",
        format!("shared tier: {}", fmt_duration(on.hit_p50)),
        format!("alone: {}", fmt_duration(off.hit_p50)),
        format!(
            "{:.2}×",
            on.hit_p50.as_secs_f64() / off.hit_p50.as_secs_f64().max(1e-9)
        ),
        "local hits never touch Redis (the ratio is noise)",
    );
    cognito.shutdown();
    issuer.shutdown();
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
