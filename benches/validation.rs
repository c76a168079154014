//! Micro-benchmarks (criterion) of the token-validation and cached-credentials paths.
//!
//! - `token_validation/first_seen`: a token the validator has not verified before: parse,
//!   claim checks and the RS256 signature check (openidconnect + rsa).
//! - `token_validation/cached`: the same token again: SHA-256 of the token and a lookup in the
//!   verified-token cache (what every request after the first costs).
//! - `hot_path/sha256_token`: the digest alone.
//! - `hot_path/broker_credentials_cached`: `Broker::credentials` for a cached token and a cached
//!   identity, in process (no HTTP): the broker's whole share of a hot-path request.
//!
//! Everything runs against the in-crate emulated issuer (RS256, 2048-bit keys) on loopback.
//! `bench/run.sh` runs this first; the load harness reads criterion's estimates from
//! `target/criterion` and puts them in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker::app::{self, Overrides};
use credbroker::clock::SharedClock;
use credbroker::config::Config;
use credbroker::metrics::{Metrics, Surface};
use credbroker::oidc::Validator;
use credbroker_emulators::cognito::{CognitoEmulator, CognitoOptions, TrustedProvider};
use credbroker_emulators::oidc::{IssuerOptions, OidcIssuer};
use criterion::{Criterion, criterion_group, criterion_main};
use sha2::{Digest, Sha256};

/// Distinct tokens cycled through by the first-seen benchmark. The validator it uses remembers
/// one token, so a token comes round again only after this many others pushed it out.
const COLD_POOL: usize = 256;

fn config(issuer: &OidcIssuer, cognito: &CognitoEmulator, capacity: u64) -> Config {
    Config::from_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
enabled = false

[tokens]
verified_cache_capacity = {capacity}

[providers.bench]
issuer = "{issuer}"
audiences = ["{aud}"]

[cognito]
region = "{region}"
identity_pool_id = "{pool}"
endpoint_url = "{endpoint}"
"#,
        issuer = issuer.issuer(),
        aud = issuer.audience(),
        region = cognito.region(),
        pool = cognito.identity_pool_id(),
        endpoint = cognito.endpoint_url(),
    ))
    .expect("valid benchmark configuration")
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    issuer: OidcIssuer,
    cognito: CognitoEmulator,
    clock: SharedClock,
}

impl Fixture {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let clock = credbroker::clock::system();
        let (issuer, cognito) = rt.block_on(async {
            let issuer = OidcIssuer::start(IssuerOptions::default(), clock.clone())
                .await
                .expect("issuer");
            let cognito = CognitoEmulator::start(
                CognitoOptions::default(),
                vec![TrustedProvider::for_issuer(&issuer)],
                clock.clone(),
            )
            .await
            .expect("cognito");
            (issuer, cognito)
        });
        Self {
            rt,
            issuer,
            cognito,
            clock,
        }
    }

    /// A validator with its keys loaded, remembering at most `capacity` verified tokens.
    fn validator(&self, capacity: u64) -> (Arc<Validator>, Metrics) {
        let c = config(&self.issuer, &self.cognito, capacity);
        let metrics = Metrics::new(&["bench".to_owned()]);
        let v = Arc::new(Validator::new(
            &c.providers,
            &c.tokens,
            credbroker::http::client(c.tokens.oidc_timeout),
            self.clock.clone(),
            metrics.clone(),
        ));
        self.rt.block_on(v.load_all());
        assert!(v.providers()[0].is_ready(), "keys loaded");
        (v, metrics)
    }
}

/// `credbroker_token_validations_total{outcome=...}` from a metrics rendering.
fn validations(metrics: &Metrics, outcome: &str) -> f64 {
    let series = format!("credbroker_token_validations_total{{outcome=\"{outcome}\"");
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn token_validation(c: &mut Criterion) {
    let f = Fixture::new();
    let token = f.issuer.token_for("auth0|bench-user");
    let mut group = c.benchmark_group("token_validation");

    let (cold, cold_metrics) = f.validator(1);
    let pool: Vec<String> = (0..COLD_POOL)
        .map(|i| f.issuer.token_for(&format!("auth0|cold-{i}")))
        .collect();
    let mut next = 0usize;
    group.bench_function("first_seen", |b| {
        b.iter_custom(|iters| {
            f.rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let t = &pool[next % COLD_POOL];
                    next += 1;
                    black_box(cold.validate(t).await.expect("valid"));
                }
                started.elapsed()
            })
        });
    });
    let cached_hits = validations(&cold_metrics, "cached");
    let verified = validations(&cold_metrics, "ok");
    if cached_hits > verified / 100.0 {
        eprintln!(
            "warning: first_seen measured {cached_hits} cache hits for {verified} verifications; \
             the figure understates the cost of a first-seen token"
        );
    }

    let (warm, _) = f.validator(100_000);
    f.rt.block_on(warm.validate(&token)).expect("valid");
    group.bench_function("cached", |b| {
        b.iter_custom(|iters| {
            f.rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(warm.validate(black_box(&token)).await.expect("valid"));
                }
                started.elapsed()
            })
        });
    });
    group.finish();

    let mut group = c.benchmark_group("hot_path");
    group.bench_function("sha256_token", |b| {
        b.iter(|| -> [u8; 32] { Sha256::digest(black_box(token.as_bytes())).into() });
    });
    let running = f.rt.block_on(async {
        let api: Arc<dyn credbroker::cognito::CognitoApi> = Arc::new(f.cognito.clone());
        app::start(
            config(&f.issuer, &f.cognito, 100_000),
            Overrides {
                clock: Some(f.clock.clone()),
                cognito: Some(api),
                ..Overrides::default()
            },
        )
        .await
        .expect("broker starts")
    });
    let broker = running.broker.clone();
    f.rt.block_on(broker.credentials(&token, Surface::Container))
        .expect("credentials");
    group.bench_function("broker_credentials_cached", |b| {
        b.iter_custom(|iters| {
            f.rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(
                        broker
                            .credentials(black_box(&token), Surface::Container)
                            .await
                            .expect("credentials"),
                    );
                }
                started.elapsed()
            })
        });
    });
    group.finish();
    f.rt.block_on(running.stop());
}

fn settings() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = settings();
    targets = token_validation
}
criterion_main!(benches);
