//! Shared set-up of credbroker's fuzz targets (`fuzz_targets/*.rs`, run with `fuzz/run.sh`).
//!
//! Every target drives credbroker's public API as the daemon does, with time frozen at
//! [`t0`] (so committed seed tokens never expire and runs are repeatable) and the emulators
//! in process. The only socket anywhere is the emulated issuer's, read once at start-up to
//! load its discovery document and JWKS; the fuzzed inputs never touch a socket.
//!
//! Placeholders let committed seeds carry values that exist only at run time (the emulated
//! issuer's URL has a random port, tokens are minted at start-up): see each target.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credbroker::clock::{Clock, SharedClock};
use credbroker::config::Config;
use credbroker::metrics::Metrics;
use credbroker::oidc::Validator;
use credbroker_emulators::oidc::{IssuerOptions, OidcIssuer};

pub mod cognito;
pub mod realtime;
pub mod routes;
pub mod shared;
pub mod tokens;

/// 2030-01-01T00:00:00Z in seconds since the epoch: the wall-clock time of every fuzz run.
pub const T0_SECS: u64 = 1_893_456_000;

/// [`T0_SECS`] as a time.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0_SECS)
}

/// A clock that never moves.
#[derive(Debug, Clone, Copy)]
pub struct Frozen(pub SystemTime);

impl Clock for Frozen {
    fn now(&self) -> SystemTime {
        self.0
    }
}

/// The frozen clock at [`t0`], shared.
pub fn frozen() -> SharedClock {
    Arc::new(Frozen(t0()))
}

/// One single-threaded runtime per target: inputs run one after another, deterministically.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// `input` with every occurrence of each `(placeholder, value)` replaced.
pub fn substitute(input: &[u8], pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = input.to_vec();
    for (from, to) in pairs {
        if from.is_empty() {
            continue;
        }
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(from) {
                next.extend_from_slice(to);
                i += from.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

/// Splits `input` at each `sep` byte into at most `n` parts (the last keeps the rest).
pub fn split_n(input: &[u8], sep: u8, n: usize) -> Vec<&[u8]> {
    input.splitn(n, |b| *b == sep).collect()
}

/// The configuration every target shares: one provider (the emulated issuer at `issuer`,
/// RS256 and ES256), a Cognito pool, plus `extra` TOML.
pub fn config_text(
    issuer: &str,
    audience: &str,
    cognito: Option<(&str, &str, &str)>,
    extra: &str,
) -> String {
    let (region, pool, endpoint) = cognito.unwrap_or((
        "us-east-1",
        "us-east-1:00000000-0000-0000-0000-000000000000",
        "",
    ));
    let endpoint = if endpoint.is_empty() {
        String::new()
    } else {
        format!("endpoint_url = \"{endpoint}\"")
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[tokens]
jwks_refetch_interval = "1h"

[providers.test]
issuer = "{issuer}"
audiences = ["{audience}"]
algorithms = ["RS256", "ES256"]

[cognito]
region = "{region}"
identity_pool_id = "{pool}"
{endpoint}

[admin]
enabled = false
{extra}
"#
    )
}

/// The emulated issuer (listening on loopback, frozen clock) and a [`Validator`] that trusts it
/// with its keys loaded, under `config`.
pub async fn issuer_and_validator(
    config_extra: impl Fn(&OidcIssuer) -> String,
    clock: SharedClock,
) -> (OidcIssuer, Config, Arc<Validator>) {
    let issuer = OidcIssuer::start(IssuerOptions::default(), clock.clone())
        .await
        .expect("the emulated issuer starts");
    let text = config_extra(&issuer);
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("fuzz config: {e}\n{text}"));
    let names: Vec<String> = config.providers.iter().map(|p| p.name.clone()).collect();
    let validator = Arc::new(Validator::new(
        &config.providers,
        &config.tokens,
        credbroker::http::client(config.tokens.oidc_timeout),
        clock,
        Metrics::new(&names),
    ));
    validator.load_all().await;
    assert!(
        validator.providers().iter().all(|p| p.is_ready()),
        "the emulated issuer's keys load"
    );
    (issuer, config, validator)
}
