//! The phases that run `credbroker run` as a separate process against emulators hosted here:
//! cold start (7), hot path (1), AppSync forwarding (6) and single-flight (3).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use credbroker::clock::SharedClock;
use credbroker_emulators::appsync::{AppSyncEmulator, AppSyncOptions};
use credbroker_emulators::cognito::CognitoEmulator;
use credbroker_emulators::oidc::OidcIssuer;
use futures_util::StreamExt as _;

use crate::Options;
use crate::report::Report;
use crate::util::{self, HttpClient, fmt_duration, median, quantile};

/// The GraphQL request of the AppSync figure.
const LIST_TODOS: &str = r#"{"query":"{ listTodos { id content owner } }"}"#;

/// Emulators, the broker's configuration and a token, shared by the phases.
struct Env {
    issuer: OidcIssuer,
    cognito: CognitoEmulator,
    appsync: AppSyncEmulator,
    dir: PathBuf,
    config: PathBuf,
    token: String,
    client: HttpClient,
}

impl Env {
    async fn start() -> Self {
        let (issuer, cognito) = util::issuer_and_cognito(Duration::ZERO).await;
        let clock: SharedClock = credbroker::clock::system();
        let appsync =
            AppSyncEmulator::start(AppSyncOptions::for_emulators(&issuer, &cognito), clock)
                .await
                .expect("appsync");
        let dir = util::tempdir("system");
        let config = util::write(
            &dir,
            "credbroker.toml",
            broker_toml(&issuer, &cognito, &appsync).as_bytes(),
        );
        let token = issuer.token_for("auth0|bench-hot");
        Self {
            issuer,
            cognito,
            appsync,
            dir,
            config,
            token,
            client: util::client(),
        }
    }

    /// `credbroker -c <config> run --listen 127.0.0.1:<port>`, optionally under `wrapper`.
    fn spawn_broker(&self, port: u16, wrapper: &[String]) -> Child {
        let exe = env!("CARGO_BIN_EXE_credbroker");
        let log = std::fs::File::create(self.dir.join(format!("broker-{port}.log")))
            .expect("broker log file");
        let mut argv: Vec<String> = wrapper.to_vec();
        argv.extend([
            exe.to_owned(),
            "--config".to_owned(),
            self.config.to_string_lossy().into_owned(),
            "run".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("CREDBROKER_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.spawn().expect("spawn credbroker")
    }

    /// The minimal reverse proxy in front of the emulated AppSync (`child proxy-baseline`).
    fn spawn_proxy(&self, port: u16, wrapper: &[String]) -> Child {
        self.spawn_hop("proxy-baseline", port, self.appsync.url(), wrapper)
    }

    /// The byte relay in front of the emulated AppSync (`child tcp-relay`).
    fn spawn_relay(&self, port: u16) -> Option<Child> {
        let upstream: http::Uri = self.appsync.url().parse().ok()?;
        Some(self.spawn_hop("tcp-relay", port, upstream.authority()?.as_str(), &[]))
    }

    /// A baseline process between the harness and the emulated AppSync.
    fn spawn_hop(&self, mode: &str, port: u16, upstream: &str, wrapper: &[String]) -> Child {
        let exe = std::env::current_exe().expect("own executable");
        let mut argv: Vec<String> = wrapper.to_vec();
        argv.extend([
            exe.to_string_lossy().into_owned(),
            "child".to_owned(),
            mode.to_owned(),
            port.to_string(),
            upstream.to_owned(),
        ]);
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a baseline hop")
    }

    /// The static baseline server (this binary, `child baseline-server`).
    fn spawn_baseline(&self, port: u16, body: &Path, wrapper: &[String]) -> Child {
        let token_file = util::write(&self.dir, "token", self.token.as_bytes());
        let exe = std::env::current_exe().expect("own executable");
        let mut argv: Vec<String> = wrapper.to_vec();
        argv.extend([
            exe.to_string_lossy().into_owned(),
            "child".to_owned(),
            "baseline-server".to_owned(),
            port.to_string(),
            token_file.to_string_lossy().into_owned(),
            body.to_string_lossy().into_owned(),
        ]);
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the baseline server")
    }
}

fn broker_toml(
    issuer: &OidcIssuer,
    cognito: &CognitoEmulator,
    appsync: &AppSyncEmulator,
) -> String {
    format!(
        r#"# Written by benches/load (credbroker's benchmarks). Defaults except the limits the
# single-flight figure needs (1,000 concurrent callers).
[server]
max_pending_exchanges = 2000
max_connections = 4096

# Several brokers run at once (hot path + callgrind): none may hold the default admin port.
[admin]
listen = "127.0.0.1:0"

[providers.bench]
issuer = "{issuer}"
audiences = ["{aud}"]

[cognito]
region = "{region}"
identity_pool_id = "{pool}"
endpoint_url = "{endpoint}"

[appsync.apis.bench]
url = "{appsync_url}"
region = "{appsync_region}"
auth = "oidc"
default = true

[appsync.apis.bench-iam]
url = "{appsync_url}"
region = "{appsync_region}"
auth = "iam"
"#,
        issuer = issuer.issuer(),
        aud = issuer.audience(),
        region = cognito.region(),
        pool = cognito.identity_pool_id(),
        endpoint = cognito.endpoint_url(),
        appsync_url = appsync.url(),
        appsync_region = appsync.region(),
    )
}

pub async fn run(options: &Options, report: &mut Report) {
    let env = Env::start().await;

    if !options.hot_path_only && !options.appsync_only {
        cold_start(options, report, &env).await;
    }

    let port = util::free_port();
    let mut broker = env.spawn_broker(port, &[]);
    let url = format!("http://127.0.0.1:{port}/v1/credentials");
    if util::wait_for_200(
        &env.client,
        &url,
        &env.token,
        Instant::now(),
        Duration::from_secs(30),
    )
    .await
    .is_none()
    {
        report.note("credbroker did not serve credentials within 30 s; system figures skipped");
        util::terminate(&mut broker, Duration::from_secs(5));
        return;
    }

    if !options.appsync_only {
        hot_path(options, report, &env, &url).await;
        if options.callgrind {
            callgrind(options, report, &env).await;
        }
    }
    if !options.hot_path_only {
        appsync(options, report, &env, port).await;
        appsync_iam(options, report, &env, port).await;
        if options.callgrind {
            callgrind_appsync(options, report, &env).await;
        }
    }
    if !options.hot_path_only && !options.appsync_only {
        single_flight(options, report, &env, &url).await;
    }

    util::terminate(&mut broker, Duration::from_secs(25));
    env.cognito.shutdown();
    env.appsync.shutdown();
    env.issuer.shutdown();
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// 7: exec → first 200, against exec of `true`.
async fn cold_start(options: &Options, report: &mut Report, env: &Env) {
    let mut listening = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..options.cold_starts {
        let port = util::free_port();
        let url = format!("http://127.0.0.1:{port}/v1/credentials");
        let started = Instant::now();
        let mut child = env.spawn_broker(port, &[]);
        // Any answer (401: no token) means keys are loaded and the listener is bound.
        let mut first_answer = None;
        while started.elapsed() < Duration::from_secs(30) {
            if util::get(&env.client, &url, "").await.is_ok() {
                first_answer = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let first_200 = util::wait_for_200(
            &env.client,
            &url,
            &env.token,
            started,
            Duration::from_secs(30),
        )
        .await;
        util::terminate(&mut child, Duration::from_secs(25));
        if let (Some(a), Some(b)) = (first_answer, first_200) {
            listening.push(a.as_secs_f64());
            ready.push(b.as_secs_f64());
        }
    }
    let mut trivial = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let _ = Command::new("true").status();
        trivial.push(started.elapsed().as_secs_f64());
    }
    if ready.is_empty() {
        report.note("cold start: credbroker never became ready");
        return;
    }
    let (l, r, t) = (median(&listening), median(&ready), median(&trivial));
    report.row(
        "7 cold start",
        format!(
            "exec `credbroker run` → first 200 on /v1/credentials (median of {}; includes OIDC \
             discovery + JWKS, one RS256 check, GetId + GetCredentialsForIdentity)",
            ready.len()
        ),
        fmt_duration(Duration::from_secs_f64(r)),
        format!("exec `true`: {}", fmt_duration(Duration::from_secs_f64(t))),
        format!(
            "{:.0}x; listening (first 401) after {}",
            r / t,
            fmt_duration(Duration::from_secs_f64(l))
        ),
        "",
    );
}

/// One wrk result.
#[derive(Debug, Clone, Copy)]
struct WrkResult {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    failed: u64,
}

fn wrk(options: &Options, url: &str, token: &str, seconds: u64) -> Option<WrkResult> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/wrk.lua");
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", options.wrk_connections),
            &format!("-d{seconds}s"),
            "--timeout",
            "2s",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .env("CB_TOKEN", token)
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("CBRESULT "))?;
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let requests = field("requests");
    let duration_us = field("duration_us");
    Some(WrkResult {
        rps: requests / (duration_us / 1e6),
        p50_us: field("p50_us"),
        p99_us: field("p99_us"),
        failed: (field("non2xx") + field("errors")) as u64,
    })
}

/// 1: the cached path against a static hyper server, alternating wrk rounds.
async fn hot_path(options: &Options, report: &mut Report, env: &Env, url: &str) {
    if Command::new("wrk").arg("-v").output().is_err() {
        report.note("wrk is not installed; hot-path figures skipped (bench/run.sh installs it)");
        return;
    }
    // The baseline serves exactly the bytes the broker serves.
    let body = match util::get(&env.client, url, &env.token).await {
        Ok((200, body)) => body,
        other => {
            report.note(format!("hot path: unexpected warm-up answer {other:?}"));
            return;
        }
    };
    let body_file = util::write(&env.dir, "body.json", &body);
    let base_port = util::free_port();
    let mut baseline = env.spawn_baseline(base_port, &body_file, &[]);
    let base_url = format!("http://127.0.0.1:{base_port}/v1/credentials");
    if util::wait_for_200(
        &env.client,
        &base_url,
        &env.token,
        Instant::now(),
        Duration::from_secs(10),
    )
    .await
    .is_none()
    {
        report.note("hot path: the baseline server did not start");
        util::terminate(&mut baseline, Duration::from_secs(2));
        return;
    }
    let seconds = options.wrk_seconds;
    let rounds = options.wrk_rounds;
    let (url_b, url_s, token) = (url.to_owned(), base_url.clone(), env.token.clone());
    let o = options.clone();
    let results = tokio::task::spawn_blocking(move || {
        // Warm both (connections, caches, CPU frequency).
        let _ = wrk(&o, &url_b, &token, 1);
        let _ = wrk(&o, &url_s, &token, 1);
        let mut pairs = Vec::new();
        for round in 0..rounds {
            // Alternate which goes first, so drift in the machine's load hits both alike.
            let (b, s) = if round % 2 == 0 {
                let b = wrk(&o, &url_b, &token, seconds);
                (b, wrk(&o, &url_s, &token, seconds))
            } else {
                let s = wrk(&o, &url_s, &token, seconds);
                (wrk(&o, &url_b, &token, seconds), s)
            };
            if let (Some(b), Some(s)) = (b, s) {
                println!("  hot path round {round}: credbroker {b:?} / baseline {s:?}");
                pairs.push((b, s));
            }
        }
        pairs
    })
    .await
    .unwrap_or_default();
    util::terminate(&mut baseline, Duration::from_secs(2));
    if results.is_empty() {
        report.note("hot path: wrk produced no results");
        return;
    }
    let ratios: Vec<f64> = results.iter().map(|(b, s)| b.rps / s.rps).collect();
    let ratio = median(&ratios);
    let pick = |f: fn(&WrkResult) -> f64, broker: bool| -> f64 {
        let v: Vec<f64> = results
            .iter()
            .map(|(b, s)| if broker { f(b) } else { f(s) })
            .collect();
        median(&v)
    };
    let failed: u64 = results.iter().map(|(b, s)| b.failed + s.failed).sum();
    report.row(
        "1 hot path",
        format!(
            "GET /v1/credentials, cached token, keep-alive, wrk -t1 -c{} ({} × {} s rounds, \
             alternating; {}-byte body)",
            options.wrk_connections,
            results.len(),
            seconds,
            body.len()
        ),
        format!(
            "{:.0} req/s, p50 {:.0} µs, p99 {:.0} µs",
            pick(|r| r.rps, true),
            pick(|r| r.p50_us, true),
            pick(|r| r.p99_us, true)
        ),
        format!(
            "static hyper server: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs",
            pick(|r| r.rps, false),
            pick(|r| r.p50_us, false),
            pick(|r| r.p99_us, false)
        ),
        format!(
            "ratio {ratio:.2} (rounds: {})",
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("≥ 0.90: {}", if ratio >= 0.9 { "met" } else { "MISSED" }),
    );
    if failed > 0 {
        report.note(format!(
            "hot path: {failed} wrk requests failed or were not 2xx"
        ));
    }
}

/// 1 (profile): instructions per request under callgrind, broker vs baseline. Each server runs
/// twice, answering `small` and then `large` requests after its first 200; the difference of the
/// two totals divided by `large - small` cancels start-up and the first exchange.
async fn callgrind(options: &Options, report: &mut Report, env: &Env) {
    let body_file = env.dir.join("body.json");
    if !body_file.exists() {
        report.note("callgrind: no response body recorded by the hot-path phase; skipped");
        return;
    }
    let (small, large) = callgrind_sizes(options);
    let Some((b, s)) = compare_instructions(
        options,
        report,
        env,
        ["credbroker", "baseline"],
        |target, port, wrapper| {
            let child = if target == "credbroker" {
                env.spawn_broker(port, wrapper)
            } else {
                env.spawn_baseline(port, &body_file, wrapper)
            };
            let url = format!("http://127.0.0.1:{port}/v1/credentials");
            (child, Probe::Get(url))
        },
    )
    .await
    else {
        return;
    };
    report.row(
        "1 hot path",
        format!(
            "callgrind: instructions per cached request, sequential keep-alive ({}−{} requests)",
            large, small
        ),
        format!("{b:.0} instr/request"),
        format!("static hyper server: {s:.0} instr/request"),
        format!(
            "{:.2}x the baseline's instructions; inverse {:.2}",
            b / s,
            s / b
        ),
        "",
    );
}

/// Instructions per request of two targets under callgrind ([`instructions_per_request`]),
/// or `None` with a note saying why not (no valgrind, a failed run).
async fn compare_instructions(
    options: &Options,
    report: &mut Report,
    env: &Env,
    targets: [&str; 2],
    spawn: impl Fn(&str, u16, &[String]) -> (Child, Probe),
) -> Option<(f64, f64)> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        report.note("valgrind not found; callgrind profile skipped");
        return None;
    }
    let sizes = callgrind_sizes(options);
    let mut per_request = Vec::new();
    for target in targets {
        match instructions_per_request(env, target, sizes, |port, wrapper| {
            spawn(target, port, wrapper)
        })
        .await
        {
            Ok(v) => per_request.push(v),
            Err(e) => {
                report.note(e);
                return None;
            }
        }
    }
    Some((per_request[0], per_request[1]))
}

fn callgrind_sizes(options: &Options) -> (usize, usize) {
    if options.quick {
        (50, 250)
    } else {
        (200, 1200)
    }
}

/// What a callgrind run sends: `GET` with the token, or the AppSync `POST`.
enum Probe {
    Get(String),
    Graphql(String),
}

impl Probe {
    async fn send(&self, client: &HttpClient, token: &str) -> Result<(u16, Bytes), String> {
        match self {
            Self::Get(url) => util::get(client, url, token).await,
            Self::Graphql(url) => {
                let headers = [
                    ("authorization", token),
                    ("content-type", "application/json"),
                ];
                util::send(
                    client,
                    "POST",
                    url,
                    &headers,
                    Bytes::from_static(LIST_TODOS.as_bytes()),
                )
                .await
            }
        }
    }
}

/// Instructions one request costs `target` under callgrind: the difference between a run of
/// `large` and one of `small` sequential keep-alive requests, divided by the difference (start
/// and shutdown cancel out). `spawn` starts the target under the valgrind `wrapper` on `port`.
async fn instructions_per_request(
    env: &Env,
    target: &str,
    (small, large): (usize, usize),
    spawn: impl Fn(u16, &[String]) -> (Child, Probe),
) -> Result<f64, String> {
    let mut totals = Vec::new();
    for n in [small, large] {
        let out = env.dir.join(format!("callgrind.{target}.{n}.out"));
        let wrapper = vec![
            "valgrind".to_owned(),
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
            "--quiet".to_owned(),
        ];
        let port = util::free_port();
        let (mut child, probe) = spawn(port, &wrapper);
        // A dedicated client: one keep-alive connection, no pooled state from elsewhere.
        let client = util::client();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut ok = false;
        while Instant::now() < deadline {
            if let Ok((200, _)) = probe.send(&client, &env.token).await {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut answered = 0;
        if ok {
            for _ in 0..n {
                if let Ok((200, _)) = probe.send(&client, &env.token).await {
                    answered += 1;
                }
            }
        }
        drop(client);
        tokio::task::spawn_blocking(move || util::terminate(&mut child, Duration::from_secs(60)))
            .await
            .ok();
        let total = std::fs::read_to_string(&out).ok().and_then(|t| {
            t.lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        keep_profile(&out, target, n);
        match (ok && answered == n, total) {
            (true, Some(t)) => totals.push(t),
            _ => return Err(format!("callgrind: {target} run with {n} requests failed")),
        }
    }
    Ok((totals[1] - totals[0]) / (large - small) as f64)
}

/// 6 (profile): instructions per forwarded request, credbroker against the minimal proxy.
async fn callgrind_appsync(options: &Options, report: &mut Report, env: &Env) {
    let sizes = callgrind_sizes(options);
    let Some((b, p)) = compare_instructions(
        options,
        report,
        env,
        ["appsync-credbroker", "appsync-proxy"],
        |target, port, wrapper| {
            if target == "appsync-credbroker" {
                let url = format!("http://127.0.0.1:{port}/appsync/graphql");
                (env.spawn_broker(port, wrapper), Probe::Graphql(url))
            } else {
                let url = format!("http://127.0.0.1:{port}/graphql");
                (env.spawn_proxy(port, wrapper), Probe::Graphql(url))
            }
        },
    )
    .await
    else {
        return;
    };
    report.row(
        "6 AppSync",
        format!(
            "callgrind: instructions per forwarded request (OIDC mode), sequential keep-alive \
             ({}−{} requests)",
            sizes.1, sizes.0
        ),
        format!("{b:.0} instr/request"),
        format!("minimal hyper proxy: {p:.0} instr/request"),
        format!("{:.2}x the proxy's instructions", b / p),
        "",
    );
}

/// Keeps each run's profile as `target/callgrind.<target>.<requests>.out`, for
/// `callgrind_annotate` (per-function costs per request: the difference of the two runs).
fn keep_profile(out: &Path, target: &str, requests: usize) {
    let kept = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/callgrind.{target}.{requests}.out"));
    if let Err(e) = std::fs::copy(out, &kept) {
        eprintln!("callgrind: could not keep {}: {e}", kept.display());
    }
}

/// 6: p50/p99 added by forwarding through the broker, by a minimal proxy process (pooled client,
/// and the same with its upstream connection driven in the request's task) and by a byte relay
/// process.
async fn appsync(options: &Options, report: &mut Report, env: &Env, port: u16) {
    let proxy_port = util::free_port();
    let relay_port = util::free_port();
    let intask_port = util::free_port();
    let mut hops: Vec<Child> = vec![env.spawn_proxy(proxy_port, &[])];
    hops.extend(env.spawn_relay(relay_port));
    hops.push(env.spawn_hop("proxy-intask", intask_port, env.appsync.url(), &[]));
    let stop = |hops: &mut Vec<Child>| {
        for hop in hops.iter_mut() {
            util::terminate(hop, Duration::from_secs(5));
        }
    };
    let urls = [
        env.appsync.url().to_owned(),
        format!("http://127.0.0.1:{port}/appsync/graphql"),
        format!("http://127.0.0.1:{proxy_port}/graphql"),
        format!("http://127.0.0.1:{relay_port}/graphql"),
        format!("http://127.0.0.1:{intask_port}/graphql"),
    ];
    let headers = [
        ("authorization", env.token.as_str()),
        ("content-type", "application/json"),
    ];
    let body = Bytes::from_static(LIST_TODOS.as_bytes());
    let started = Instant::now();
    for (i, url) in urls.iter().enumerate() {
        loop {
            match util::send(&env.client, "POST", url, &headers, body.clone()).await {
                Ok((200, _)) => break,
                // The baseline hops may still be starting.
                _ if i >= 2 && started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => {
                    report.note(format!("appsync: {url} answered {other:?}; figure skipped"));
                    stop(&mut hops);
                    return;
                }
            }
        }
    }
    // direct, through credbroker, through the proxy, through the relay, through the in-task proxy
    let mut samples: [Vec<Duration>; 5] = Default::default();
    let chunk = 100.min(options.appsync_requests);
    let mut done = 0;
    while done < options.appsync_requests {
        for (url, samples) in urls.iter().zip(samples.iter_mut()) {
            for _ in 0..chunk {
                let started = Instant::now();
                let r = util::send(&env.client, "POST", url, &headers, body.clone()).await;
                if matches!(r, Ok((200, _))) {
                    samples.push(started.elapsed());
                }
            }
        }
        done += chunk;
    }
    stop(&mut hops);
    for s in &mut samples {
        s.sort();
    }
    let [d, f, p, r, t] = samples
        .each_ref()
        .map(|s| (quantile(s, 0.5), quantile(s, 0.99)));
    report.row(
        "6 AppSync",
        format!(
            "POST /appsync/graphql (OIDC mode, listTodos), sequential keep-alive, {} requests each, \
             interleaved in chunks of {chunk}",
            samples.iter().map(Vec::len).min().unwrap_or(0)
        ),
        format!("through credbroker: p50 {}, p99 {}", fmt_duration(f.0), fmt_duration(f.1)),
        format!(
            "emulated AppSync directly: p50 {}, p99 {}; through a minimal hyper proxy: p50 {}, \
             p99 {}; through the same proxy driving its upstream connection in the request's \
             task: p50 {}, p99 {}; through a byte relay: p50 {}, p99 {}",
            fmt_duration(d.0),
            fmt_duration(d.1),
            fmt_duration(p.0),
            fmt_duration(p.1),
            fmt_duration(t.0),
            fmt_duration(t.1),
            fmt_duration(r.0),
            fmt_duration(r.1)
        ),
        format!(
            "added p50 {}, p99 {} (the minimal proxy adds p50 {}, p99 {}; in-task p50 {}, p99 \
             {}; the byte relay p50 {}, p99 {})",
            fmt_signed(f.0, d.0),
            fmt_signed(f.1, d.1),
            fmt_signed(p.0, d.0),
            fmt_signed(p.1, d.1),
            fmt_signed(t.0, d.0),
            fmt_signed(t.1, d.1),
            fmt_signed(r.0, d.0),
            fmt_signed(r.1, d.1)
        ),
        "",
    );
}

/// 6 (IAM mode): credbroker signs with the caller's credentials, against the app signing
/// each request itself (SigV4 with the same credentials, from the container endpoint) and
/// sending it to the emulated AppSync directly.
async fn appsync_iam(options: &Options, report: &mut Report, env: &Env, port: u16) {
    let broker = format!("127.0.0.1:{port}");
    let direct_url = env.appsync.url().to_owned();
    let broker_url = format!("http://{broker}/appsync/bench-iam/graphql");
    let Ok(authority) = direct_url
        .parse::<http::Uri>()
        .map_err(|e| e.to_string())
        .and_then(|u| {
            u.authority()
                .map(|a| a.to_string())
                .ok_or("no host".to_owned())
        })
    else {
        report.note("appsync (IAM): the emulator URL has no host; figure skipped");
        return;
    };
    let credentials =
        match crate::realtime::client::credentials(&env.client, &broker, &env.token).await {
            Ok(c) => c,
            Err(e) => {
                report.note(format!(
                    "appsync (IAM): no credentials: {e}; figure skipped"
                ));
                return;
            }
        };
    let region = env.appsync.region().to_owned();
    let token_headers = [
        ("authorization", env.token.as_str()),
        ("content-type", "application/json"),
    ];
    let signed = || {
        crate::realtime::client::sigv4(
            &credentials,
            &region,
            &direct_url,
            &[
                ("content-type", "application/json"),
                ("host", authority.as_str()),
            ],
            LIST_TODOS,
        )
    };
    let body = Bytes::from_static(LIST_TODOS.as_bytes());
    let mut direct = Vec::new();
    let mut forwarded = Vec::new();
    let chunk = 100.min(options.appsync_requests);
    let mut done = 0;
    while done < options.appsync_requests {
        for _ in 0..chunk {
            let started = Instant::now();
            let Ok(headers) = signed() else { continue };
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = util::send(&env.client, "POST", &direct_url, &headers, body.clone()).await;
            if matches!(r, Ok((200, _))) {
                direct.push(started.elapsed());
            }
        }
        for _ in 0..chunk {
            let started = Instant::now();
            let r = util::send(
                &env.client,
                "POST",
                &broker_url,
                &token_headers,
                body.clone(),
            )
            .await;
            if matches!(r, Ok((200, _))) {
                forwarded.push(started.elapsed());
            }
        }
        done += chunk;
    }
    if direct.len() < options.appsync_requests / 2 || forwarded.len() < options.appsync_requests / 2
    {
        report.note(format!(
            "appsync (IAM): only {} direct and {} forwarded requests answered 200; figure skipped",
            direct.len(),
            forwarded.len()
        ));
        return;
    }
    direct.sort();
    forwarded.sort();
    let (d50, d99) = (quantile(&direct, 0.5), quantile(&direct, 0.99));
    let (f50, f99) = (quantile(&forwarded, 0.5), quantile(&forwarded, 0.99));
    report.row(
        "6 AppSync",
        format!(
            "POST /appsync/bench-iam/graphql (IAM mode: credbroker signs SigV4 with the caller's \
             credentials), {} requests each, interleaved in chunks of {chunk}",
            direct.len().min(forwarded.len())
        ),
        format!(
            "through credbroker: p50 {}, p99 {}",
            fmt_duration(f50),
            fmt_duration(f99)
        ),
        format!(
            "the app signing itself, to the emulated AppSync directly: p50 {}, p99 {}",
            fmt_duration(d50),
            fmt_duration(d99)
        ),
        format!(
            "added p50 {}, p99 {}",
            fmt_signed(f50, d50),
            fmt_signed(f99, d99)
        ),
        "",
    );
}

/// `+d` or `−d`: how much `a` exceeds `b`.
pub fn fmt_signed(a: Duration, b: Duration) -> String {
    if a >= b {
        format!("+{}", fmt_duration(a - b))
    } else {
        format!("−{}", fmt_duration(b - a))
    }
}

/// 3: upstream calls for concurrent cold requests and for many identities.
async fn single_flight(options: &Options, report: &mut Report, env: &Env, url: &str) {
    let before = env.cognito.stats();
    env.cognito.faults().set_latency(Duration::from_millis(300));
    let token = env.issuer.token_for("auth0|bench-popular");
    let n = options.single_flight_requests;
    let replies =
        futures_util::future::join_all((0..n).map(|_| util::get(&env.client, url, &token))).await;
    env.cognito.faults().set_latency(Duration::ZERO);
    let after = env.cognito.stats();
    let ok = replies.iter().filter(|r| matches!(r, Ok((200, _)))).count();
    let keys: std::collections::BTreeSet<String> = replies
        .iter()
        .filter_map(|r| {
            let (_, body) = r.as_ref().ok()?;
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            Some(v["AccessKeyId"].as_str()?.to_owned())
        })
        .collect();
    let get_id = after.get_id.calls - before.get_id.calls;
    let gcfi = after.get_credentials_for_identity.calls - before.get_credentials_for_identity.calls;
    report.row(
        "3 single-flight",
        format!("{n} concurrent cold GETs for one identity (Cognito answers after 300 ms)"),
        format!("GetId {get_id}, GetCredentialsForIdentity {gcfi}"),
        format!(
            "{n} requests; {ok} answered 200 with {} distinct key(s)",
            keys.len()
        ),
        format!(
            "{:.4} upstream calls per request",
            (get_id + gcfi) as f64 / n as f64
        ),
        format!(
            "1 + 1: {}",
            if get_id == 1 && gcfi == 1 && ok == n {
                "met"
            } else {
                "MISSED"
            }
        ),
    );

    // Many identities: each asked for by 3 concurrent callers, 64 identities at a time.
    let count = options.warm_identities;
    let minted = Instant::now();
    let tokens = mint_parallel(&env.issuer, "auth0|warm", count).await;
    let mint_time = minted.elapsed();
    let before = env.cognito.stats();
    let started = Instant::now();
    let client = &env.client;
    let oks: usize = futures_util::stream::iter(tokens.iter())
        .map(|t| async move {
            let (a, b, c) = tokio::join!(
                util::get(client, url, t),
                util::get(client, url, t),
                util::get(client, url, t)
            );
            [a, b, c]
                .iter()
                .filter(|r| matches!(r, Ok((200, _))))
                .count()
        })
        .buffer_unordered(64)
        .fold(0, |acc, n| async move { acc + n })
        .await;
    let elapsed = started.elapsed();
    let after = env.cognito.stats();
    let get_id = after.get_id.calls - before.get_id.calls;
    let gcfi = after.get_credentials_for_identity.calls - before.get_credentials_for_identity.calls;
    report.row(
        "3 single-flight",
        format!("{count} identities warmed, 3 concurrent GETs each, 64 identities in flight"),
        format!(
            "GetId {:.3}/identity, GetCredentialsForIdentity {:.3}/identity",
            get_id as f64 / count as f64,
            gcfi as f64 / count as f64
        ),
        format!("{} requests, {oks} answered 200", 3 * count),
        format!(
            "{:.0} cold identities/s over HTTP (tokens minted beforehand in {})",
            count as f64 / elapsed.as_secs_f64(),
            fmt_duration(mint_time)
        ),
        format!(
            "1 + 1 per identity: {}",
            if get_id as usize == count && gcfi as usize == count && oks == 3 * count {
                "met"
            } else {
                "MISSED"
            }
        ),
    );
}

/// `count` RS256 tokens for subjects `prefix-<i>`, minted on blocking threads.
pub async fn mint_parallel(issuer: &OidcIssuer, prefix: &str, count: usize) -> Vec<String> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(1);
    let per = count.div_ceil(threads);
    let issuer = Arc::new(issuer.clone());
    let tasks = (0..threads).map(|t| {
        let issuer = issuer.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            (t * per..((t + 1) * per).min(count))
                .map(|i| issuer.token_for(&format!("{prefix}-{i:06}")))
                .collect::<Vec<_>>()
        })
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap_or_default())
        .collect()
}
