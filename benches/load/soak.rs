//! The soak (`bash bench/soak.sh`, i.e. `cargo bench --bench load -- soak`): not a test.
//!
//! The emulated issuer and Cognito run in this process, `credbroker run` (the release build) as
//! a child, as in the other load figures. A steady load — `CB_SOAK_CONNECTIONS` keep-alive
//! connections, each asking `GET /v1/credentials` as fast as it is answered, cycling through
//! every user's current ID token — runs for `CB_SOAK_SECONDS` (default one hour) over
//! `CB_SOAK_USERS` users (default 1,000), while every 12 s one user signs in again and one new
//! user appears (so every fault meets first exchanges). Cognito faults are injected through the emulators' control endpoints
//! (`POST /_emulator/faults`, `POST /_emulator/keys`) on a fixed schedule scaled to the duration:
//! throttling, InternalErrorException, a JWKS key rotation (every user signs in again with a
//! token signed by the new key, then the old key is withdrawn) and a Cognito outage (10 minutes
//! in the hour).
//!
//! Every `CB_SOAK_SAMPLE_SECONDS` (10) the broker's RSS and open file descriptors (from /proc)
//! and the answers so far are sampled and printed (and written to `target/soak-samples.csv`).
//! Every answer other than 200 is classified: **expected** when it is a 503 (or 429) while a
//! fault is injected or within [`RECOVERY`] of it clearing *and* the user holds no servable
//! credentials (none served with more than `min_remaining` left); **unexpected** otherwise —
//! any 5xx while cached credentials were servable, any 4xx, any transport error. At the end the
//! "Soak" section of BENCHMARKS.md is (re)written with the figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use credbroker::clock::SharedClock;
use credbroker_emulators::cognito::{
    CognitoEmulator, CognitoOptions, CognitoStats, OperationStats, TrustedProvider,
};
use credbroker_emulators::oidc::{IssuerOptions, OidcIssuer};
use rand::Rng as _;

use crate::system::mint_parallel;
use crate::util::{self, HttpClient};

/// `cache.min_remaining` of the soak's broker (the default).
const MIN_REMAINING_SECS: u64 = 20 * 60;

/// After a fault clears, refusals are still expected this long: one failure backoff
/// (`cache.failure_backoff_max`, 15 s) plus one exchange with retries.
const RECOVERY: Duration = Duration::from_secs(30);

/// Users that sign in again, and new users, every minute: one of each every 12 s, so every
/// fault window meets first exchanges.
const RELOGINS_PER_MINUTE: usize = 5;
const NEW_USERS_PER_MINUTE: usize = 5;
const CHURN_EVERY: Duration = Duration::from_secs(60 / NEW_USERS_PER_MINUTE as u64);

/// What the soak is asked to do.
struct SoakOptions {
    duration: Duration,
    users: usize,
    connections: usize,
    sample: Duration,
}

impl SoakOptions {
    fn from_env() -> Self {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        Self {
            duration: Duration::from_secs(var("CB_SOAK_SECONDS", 3600)),
            users: var("CB_SOAK_USERS", 1000) as usize,
            connections: var("CB_SOAK_CONNECTIONS", 32) as usize,
            sample: Duration::from_secs(var("CB_SOAK_SAMPLE_SECONDS", 10)),
        }
    }
}

/// One injected fault.
#[derive(Debug, Clone)]
struct Fault {
    name: &'static str,
    from: Duration,
    to: Duration,
    /// `POST /_emulator/faults` bodies at `from` and `to`, or `None` for the key rotation.
    cognito: Option<(&'static str, &'static str)>,
}

/// The schedule for `duration`: the hour's schedule scaled, the outage 10 minutes at most and a
/// sixth of the run at least.
fn schedule(duration: Duration) -> Vec<Fault> {
    let at = |secs: u64| duration.mul_f64(secs as f64 / 3600.0);
    let outage_from = at(1920);
    let outage = (duration / 6).min(Duration::from_secs(600));
    vec![
        Fault {
            name: "Cognito throttling 50 % (TooManyRequestsException)",
            from: at(300),
            to: at(600),
            cognito: Some((r#"{"throttle_rate": 0.5}"#, r#"{"clear": true}"#)),
        },
        Fault {
            name: "Cognito InternalErrorException (500) on 30 % of calls",
            from: at(720),
            to: at(1020),
            cognito: Some((r#"{"internal_error_rate": 0.3}"#, r#"{"clear": true}"#)),
        },
        Fault {
            name: "JWKS rotation: new signing key, every user signs in again, old key withdrawn",
            from: at(1200),
            to: at(1320),
            cognito: None,
        },
        Fault {
            name: "Cognito outage (ServiceUnavailableException, 503)",
            from: outage_from,
            to: outage_from + outage,
            cognito: Some((r#"{"outage": true}"#, r#"{"clear": true}"#)),
        },
    ]
}

/// Users: their current tokens (index = user) and the latest expiry served to each.
struct Users {
    tokens: ArcSwap<Vec<Arc<str>>>,
    /// Unix seconds of the longest-lasting credentials served to each user (0: none yet).
    served_until: Vec<AtomicU64>,
    next: AtomicUsize,
}

impl Users {
    fn pick(&self) -> (usize, Arc<str>) {
        let tokens = self.tokens.load();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % tokens.len();
        (i, tokens[i].clone())
    }

    fn servable(&self, user: usize, now: u64) -> bool {
        self.served_until[user].load(Ordering::Relaxed) > now + MIN_REMAINING_SECS + 1
    }
}

/// Answers so far.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    expected: AtomicU64,
    unexpected: AtomicU64,
    /// (expected?, "503 UpstreamUnavailable") → count.
    kinds: Mutex<BTreeMap<(bool, String), u64>>,
    /// The first unexpected answers, for the report.
    examples: Mutex<Vec<String>>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
            + self.expected.load(Ordering::Relaxed)
            + self.unexpected.load(Ordering::Relaxed)
    }

    fn refusal(&self, expected: bool, kind: String, at: Duration, user: usize, detail: &str) {
        let counter = if expected {
            &self.expected
        } else {
            &self.unexpected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !expected {
            let mut examples = self.examples.lock().unwrap_or_else(|p| p.into_inner());
            if examples.len() < 10 {
                examples.push(format!(
                    "{:.1} s: user {user}: {kind}: {detail}",
                    at.as_secs_f64()
                ));
            }
        }
        *self
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((expected, kind))
            .or_default() += 1;
    }
}

/// One sample of the broker process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    requests: u64,
    expected: u64,
    unexpected: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds of `"Expiration":"YYYY-MM-DDTHH:MM:SSZ"` in a credentials body.
fn expiration_of(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"Expiration\":\"";
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let text = std::str::from_utf8(body.get(start..start + 20)?).ok()?;
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// `Code` of a `{"Code","Message"}` body, or `-`.
fn code_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["Code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned())
}

/// Whether a fault is injected at `at`, or cleared less than [`RECOVERY`] ago.
fn in_fault(faults: &[Fault], at: Duration) -> bool {
    faults.iter().any(|f| at >= f.from && at < f.to + RECOVERY)
}

struct Broker {
    child: Child,
    url: String,
    metrics_url: String,
    log: PathBuf,
}

fn spawn_broker(dir: &std::path::Path, issuer: &OidcIssuer, cognito: &CognitoEmulator) -> Broker {
    let port = util::free_port();
    let admin = util::free_port();
    let config = format!(
        r#"# Written by the soak (benches/load/soak.rs). Defaults except the listeners.
[server]
listen = "127.0.0.1:{port}"
max_connections = 4096

[admin]
listen = "127.0.0.1:{admin}"

[providers.soak]
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
    );
    let config = util::write(dir, "credbroker.toml", config.as_bytes());
    let log = dir.join("broker.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credbroker"));
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("broker log"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CREDBROKER_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    Broker {
        child: cmd.spawn().expect("spawn credbroker"),
        url: format!("http://127.0.0.1:{port}/v1/credentials"),
        metrics_url: format!("http://127.0.0.1:{admin}/metrics"),
        log,
    }
}

/// One load connection: asks until `stop`, classifying every answer.
async fn load(
    client: HttpClient,
    url: String,
    users: Arc<Users>,
    tally: Arc<Tally>,
    faults: Arc<Vec<Fault>>,
    start: Instant,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let (user, token) = users.pick();
        let answer = util::get(&client, &url, &token).await;
        let now = unix_now();
        match answer {
            Ok((200, body)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(exp) = expiration_of(&body) {
                    users.served_until[user].fetch_max(exp, Ordering::Relaxed);
                }
            }
            Ok((status, body)) => {
                let code = code_of(&body);
                let at = start.elapsed();
                let expected = matches!(status, 503 | 429)
                    && in_fault(&faults, at)
                    && !users.servable(user, now);
                let detail = if users.servable(user, now) {
                    "while its cached credentials were servable"
                } else {
                    "no servable credentials"
                };
                tally.refusal(expected, format!("{status} {code}"), at, user, detail);
            }
            Err(e) => {
                let at = start.elapsed();
                tally.refusal(false, "transport error".to_owned(), at, user, &e);
            }
        }
    }
}

/// Every [`CHURN_EVERY`]: a user signs in again (a new token, same identity), a new user
/// appears (a first exchange).
async fn churn(issuer: OidcIssuer, users: Arc<Users>, capacity: usize, stop: Arc<AtomicBool>) {
    let mut every = tokio::time::interval(CHURN_EVERY);
    every.tick().await;
    while !stop.load(Ordering::Relaxed) {
        every.tick().await;
        let mut tokens: Vec<Arc<str>> = users.tokens.load().as_ref().clone();
        for _ in 0..RELOGINS_PER_MINUTE / NEW_USERS_PER_MINUTE {
            let i = rand::thread_rng().gen_range(0..tokens.len());
            tokens[i] = issuer.token_for(&subject(i)).into();
        }
        if tokens.len() < capacity {
            tokens.push(issuer.token_for(&subject(tokens.len())).into());
        }
        users.tokens.store(Arc::new(tokens));
    }
}

/// What Cognito (and the issuer's JWKS) saw between two snapshots.
fn calls_between(before: &CognitoStats, after: &CognitoStats, jwks: u64) -> String {
    let op = |b: &OperationStats, a: &OperationStats| {
        let errors: Vec<String> = a
            .errors
            .iter()
            .map(|(k, v)| (k, v - b.errors.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let errors = if errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", errors.join(", "))
        };
        format!("{} calls{errors}", a.calls - b.calls)
    };
    format!(
        "GetId {}, GetCredentialsForIdentity {}, JWKS fetches {jwks}",
        op(&before.get_id, &after.get_id),
        op(
            &before.get_credentials_for_identity,
            &after.get_credentials_for_identity
        )
    )
}

fn subject(user: usize) -> String {
    format!("auth0|soak-{user:06}")
}

/// Every user signs in again (with tokens signed by the issuer's current key).
async fn relogin_all(issuer: &OidcIssuer, users: &Users) {
    let count = users.tokens.load().len();
    let fresh = mint_parallel(issuer, "auth0|soak", count).await;
    users
        .tokens
        .store(Arc::new(fresh.into_iter().map(Arc::from).collect()));
}

async fn post(client: &HttpClient, url: &str, body: &str) {
    match util::send(
        client,
        "POST",
        url,
        &[("content-type", "application/json")],
        Bytes::from(body.to_owned()),
    )
    .await
    {
        Ok((200, _)) => {}
        Ok((status, body)) => eprintln!(
            "soak: {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ),
        Err(e) => eprintln!("soak: {url}: {e}"),
    }
}

/// Injects and clears the faults on schedule; records what upstream saw during each in
/// `during` (by fault index).
async fn inject(
    client: HttpClient,
    faults: Arc<Vec<Fault>>,
    cognito: CognitoEmulator,
    issuer: OidcIssuer,
    users: Arc<Users>,
    start: Instant,
    during: Arc<Mutex<Vec<String>>>,
) {
    let keys_url = format!("{}/_emulator/keys", issuer.base_url());
    let faults_url = format!("{}/_emulator/faults", cognito.endpoint_url());
    let mut snapshots = vec![(cognito.stats(), 0); faults.len()];
    let mut events: Vec<(Duration, usize, bool)> = faults
        .iter()
        .enumerate()
        .flat_map(|(i, f)| [(f.from, i, true), (f.to, i, false)])
        .collect();
    events.sort_by_key(|e| e.0);
    for (at, i, begin) in events {
        tokio::time::sleep_until((start + at).into()).await;
        let fault = &faults[i];
        println!(
            "soak: {:>6.0} s: {} {}",
            at.as_secs_f64(),
            if begin { "inject" } else { "clear " },
            fault.name
        );
        if begin {
            snapshots[i] = (cognito.stats(), issuer.stats().jwks_requests);
        } else {
            let (stats, jwks) = &snapshots[i];
            let seen = calls_between(stats, &cognito.stats(), issuer.stats().jwks_requests - jwks);
            during.lock().unwrap_or_else(|p| p.into_inner())[i] = seen;
        }
        match (fault.cognito, begin) {
            (Some((on, _)), true) => post(&client, &faults_url, on).await,
            (Some((_, off)), false) => post(&client, &faults_url, off).await,
            (None, true) => {
                post(&client, &keys_url, r#"{"rotate": true}"#).await;
                relogin_all(&issuer, &users).await;
            }
            (None, false) => post(&client, &keys_url, r#"{"retire_old": true}"#).await,
        }
    }
}

/// A metric's value in a Prometheus text page.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

pub async fn run() {
    let options = SoakOptions::from_env();
    let clock: SharedClock = credbroker::clock::system();
    let issuer = OidcIssuer::start(IssuerOptions::default(), clock.clone())
        .await
        .expect("issuer");
    let cognito = CognitoEmulator::start(
        CognitoOptions::default(),
        vec![TrustedProvider::for_issuer(&issuer)],
        clock,
    )
    .await
    .expect("cognito");
    let dir = util::tempdir("soak");
    let mut broker = spawn_broker(&dir, &issuer, &cognito);
    let pid = broker.child.id();
    let client = util::client();

    let minutes = options.duration.as_secs().div_ceil(60) as usize + 1;
    let capacity = options.users + NEW_USERS_PER_MINUTE * minutes;
    println!(
        "soak: {} users, {} connections, {} s; minting tokens",
        options.users,
        options.connections,
        options.duration.as_secs()
    );
    let tokens: Vec<Arc<str>> = mint_parallel(&issuer, "auth0|soak", options.users)
        .await
        .into_iter()
        .map(Arc::from)
        .collect();
    let users = Arc::new(Users {
        tokens: ArcSwap::from_pointee(tokens),
        served_until: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        next: AtomicUsize::new(0),
    });
    if util::wait_for_200(
        &client,
        &broker.url,
        &users.tokens.load()[0],
        Instant::now(),
        Duration::from_secs(30),
    )
    .await
    .is_none()
    {
        eprintln!(
            "soak: credbroker did not serve within 30 s; see {}",
            broker.log.display()
        );
        util::terminate(&mut broker.child, Duration::from_secs(5));
        return;
    }

    // Warm-up: every user obtains credentials once (not counted), so RSS "start" is the broker
    // with every identity cached.
    let warm = Instant::now();
    let snapshot = users.tokens.load_full();
    let warm_tasks = snapshot.chunks(snapshot.len().div_ceil(64)).map(|chunk| {
        let (client, url) = (client.clone(), broker.url.clone());
        let chunk = chunk.to_vec();
        async move {
            for token in chunk {
                let _ = util::get(&client, &url, &token).await;
            }
        }
    });
    futures_util::future::join_all(warm_tasks).await;
    println!("soak: warm-up took {:.1} s", warm.elapsed().as_secs_f64());

    let faults = Arc::new(schedule(options.duration));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.connections {
        tasks.push(tokio::spawn(load(
            client.clone(),
            broker.url.clone(),
            users.clone(),
            tally.clone(),
            faults.clone(),
            start,
            stop.clone(),
        )));
    }
    let churner = tokio::spawn(churn(issuer.clone(), users.clone(), capacity, stop.clone()));
    let during = Arc::new(Mutex::new(vec![String::new(); faults.len()]));
    let injector = tokio::spawn(inject(
        client.clone(),
        faults.clone(),
        cognito.clone(),
        issuer.clone(),
        users.clone(),
        start,
        during.clone(),
    ));

    let samples_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/soak-samples.csv");
    let mut csv =
        String::from("seconds,rss_kib,open_fds,requests,expected_errors,unexpected_errors\n");
    let mut samples = Vec::new();
    let sample = |at: Duration| Sample {
        at,
        rss_kib: rss_kib(pid),
        fds: open_fds(pid),
        requests: tally.total(),
        expected: tally.expected.load(Ordering::Relaxed),
        unexpected: tally.unexpected.load(Ordering::Relaxed),
    };
    samples.push(sample(Duration::ZERO));
    let mut tick = tokio::time::interval_at((start + options.sample).into(), options.sample);
    let mut last = samples[0];
    while start.elapsed() < options.duration {
        tick.tick().await;
        let s = sample(start.elapsed());
        let rate = (s.requests - last.requests) as f64 / (s.at - last.at).as_secs_f64();
        println!(
            "soak: {:>6.0} s  {:>9.0} req/s  {:>10} requests  errors expected {:>6} unexpected {:>4}  RSS {:>7.1} MiB  fds {:>4}",
            s.at.as_secs_f64(),
            rate,
            s.requests,
            s.expected,
            s.unexpected,
            s.rss_kib as f64 / 1024.0,
            s.fds
        );
        let _ = writeln!(
            csv,
            "{:.0},{},{},{},{},{}",
            s.at.as_secs_f64(),
            s.rss_kib,
            s.fds,
            s.requests,
            s.expected,
            s.unexpected
        );
        samples.push(s);
        last = s;
    }
    stop.store(true, Ordering::Relaxed);
    injector.abort();
    churner.abort();
    futures_util::future::join_all(tasks).await;
    let elapsed = start.elapsed();
    let end = sample(elapsed);
    samples.push(end);
    let _ = std::fs::write(&samples_path, csv);

    let page = util::get(&client, &broker.metrics_url, "")
        .await
        .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let below = metric(&page, "credbroker_served_below_min_remaining_total");
    let stats = cognito.stats();
    let jwks = issuer.stats().jwks_requests;
    util::terminate(&mut broker.child, Duration::from_secs(25));
    let exit = broker.child.wait().ok();
    let users_at_end = users.tokens.load().len();

    let report = Figures {
        options: &options,
        elapsed,
        tally: &tally,
        samples: &samples,
        faults: &faults,
        during: &during.lock().unwrap_or_else(|p| p.into_inner()),
        below_min_remaining: below,
        stats,
        jwks_fetches: jwks,
        users_at_end,
        exit: exit
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".to_owned()),
        samples_path,
    }
    .markdown();
    println!("\n{report}");
    write_section(&report);
    cognito.shutdown();
    issuer.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

struct Figures<'a> {
    options: &'a SoakOptions,
    elapsed: Duration,
    tally: &'a Tally,
    samples: &'a [Sample],
    faults: &'a [Fault],
    /// What upstream saw during each fault.
    during: &'a [String],
    below_min_remaining: Option<f64>,
    stats: credbroker_emulators::cognito::CognitoStats,
    jwks_fetches: u64,
    users_at_end: usize,
    exit: String,
    samples_path: PathBuf,
}

impl Figures<'_> {
    fn markdown(&self) -> String {
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        let first = self.samples.first().copied();
        let last = self.samples.last().copied();
        let max_rss = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let max_fds = self.samples.iter().map(|s| s.fds).max().unwrap_or(0);
        let rates: Vec<f64> = self
            .samples
            .windows(2)
            .filter(|w| w[1].at > w[0].at + Duration::from_secs(1))
            .map(|w| (w[1].requests - w[0].requests) as f64 / (w[1].at - w[0].at).as_secs_f64())
            .collect();
        let requests = self.tally.total();
        let rate = requests as f64 / self.elapsed.as_secs_f64();
        let kinds = self.tally.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let list = |expected: bool| {
            let items: Vec<String> = kinds
                .iter()
                .filter(|((e, _), _)| *e == expected)
                .map(|((_, kind), n)| format!("{kind}: {n}"))
                .collect();
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        let examples = self
            .tally
            .examples
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let op = |o: &credbroker_emulators::cognito::OperationStats| {
            let errors: Vec<String> = o.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            if errors.is_empty() {
                format!("{} calls, {} ok", o.calls, o.ok)
            } else {
                format!(
                    "{} calls, {} ok, errors: {}",
                    o.calls,
                    o.ok,
                    errors.join(", ")
                )
            }
        };
        let mut out = String::new();
        let _ = writeln!(out, "## Soak\n");
        let _ = writeln!(
            out,
            "Produced by `bash bench/soak.sh` (`cargo bench --bench load -- soak`) on {} at commit \
             {}; the broker is the release build, the emulated issuer and Cognito run in the \
             load process. How to read it: README, section \"Benchmarks\".\n",
            chrono_like_now(),
            git_commit()
        );
        let _ = writeln!(out, "| Figure | Value |\n|---|---|");
        let row = |out: &mut String, k: &str, v: String| {
            let _ = writeln!(out, "| {k} | {} |", v.replace('|', "\\|"));
        };
        row(
            &mut out,
            "duration",
            format!(
                "{:.0} s (`CB_SOAK_SECONDS={}`)",
                self.elapsed.as_secs_f64(),
                self.options.duration.as_secs()
            ),
        );
        row(
            &mut out,
            "load",
            format!(
                "{} keep-alive connections, GET /v1/credentials cycling through every user's \
                 token; {} users at the start, {} at the end ({RELOGINS_PER_MINUTE} sign-ins \
                 again and {NEW_USERS_PER_MINUTE} new users a minute, everyone again at the \
                 key rotation); steady, as fast as answered: {} req/s per sample at the least, \
                 {} at the most",
                self.options.connections,
                self.options.users,
                self.users_at_end,
                rates.iter().copied().fold(f64::INFINITY, f64::min).round(),
                rates.iter().copied().fold(0.0, f64::max).round()
            ),
        );
        row(
            &mut out,
            "requests",
            format!(
                "{requests} ({rate:.0} req/s); 200: {}",
                self.tally.ok.load(Ordering::Relaxed)
            ),
        );
        row(
            &mut out,
            "expected errors",
            format!(
                "{} — {} (503/429 during a fault or within {} s of it clearing, for users \
                 without servable credentials)",
                self.tally.expected.load(Ordering::Relaxed),
                list(true),
                RECOVERY.as_secs()
            ),
        );
        row(
            &mut out,
            "unexpected errors",
            format!(
                "{} — {}{}",
                self.tally.unexpected.load(Ordering::Relaxed),
                list(false),
                if examples.is_empty() {
                    String::new()
                } else {
                    format!("; first: {}", examples.join("; "))
                }
            ),
        );
        row(
            &mut out,
            "served below min_remaining",
            self.below_min_remaining
                .map_or("unknown (metrics not scraped)".to_owned(), |v| {
                    format!("{v}")
                }),
        );
        if let (Some(first), Some(last)) = (first, last) {
            row(
                &mut out,
                "RSS (broker)",
                format!(
                    "start {} (every user cached), end {}, max {}",
                    mib(first.rss_kib),
                    mib(last.rss_kib),
                    mib(max_rss)
                ),
            );
            row(
                &mut out,
                "open fds (broker)",
                format!("start {}, end {}, max {max_fds}", first.fds, last.fds),
            );
        }
        row(&mut out, "Cognito GetId", op(&self.stats.get_id));
        row(
            &mut out,
            "Cognito GetCredentialsForIdentity",
            op(&self.stats.get_credentials_for_identity),
        );
        row(&mut out, "JWKS fetches", self.jwks_fetches.to_string());
        for (i, f) in self.faults.iter().enumerate() {
            let seen = self.during.get(i).map_or("", String::as_str);
            row(
                &mut out,
                &format!("fault: {}", f.name),
                format!(
                    "{:.0}–{:.0} s; meanwhile {}",
                    f.from.as_secs_f64(),
                    f.to.as_secs_f64(),
                    if seen.is_empty() {
                        "(not cleared)"
                    } else {
                        seen
                    }
                ),
            );
        }
        row(&mut out, "broker exit", self.exit.clone());
        row(
            &mut out,
            "samples",
            format!(
                "{} every {} s in `{}`",
                self.samples.len(),
                self.options.sample.as_secs(),
                self.samples_path
                    .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                    .unwrap_or(&self.samples_path)
                    .display()
            ),
        );
        out
    }
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn chrono_like_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Replaces (or appends) the "## Soak" section of BENCHMARKS.md, which is always the last one.
fn write_section(section: &str) {
    let out = std::env::var_os("CB_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"));
    let existing = std::fs::read_to_string(&out).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let kept = match existing.find("\n## Soak\n") {
        Some(i) => &existing[..i],
        None => existing.trim_end(),
    };
    let text = format!("{kept}\n\n{section}");
    match std::fs::write(&out, text) {
        Ok(()) => println!("wrote the Soak section of {}", out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
}

/// The "## Soak" section of an existing BENCHMARKS.md (kept when the load figures are rewritten).
pub fn existing_section(text: &str) -> Option<&str> {
    text.find("\n## Soak\n").map(|i| &text[i + 1..])
}
