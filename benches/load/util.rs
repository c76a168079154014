//! Small helpers shared by the load benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive HTTP/1 client.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector)
}

/// One HTTP exchange: status and body.
pub async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// GET `url` with `Authorization: token`.
pub async fn get(client: &HttpClient, url: &str, token: &str) -> Result<(u16, Bytes), String> {
    send(
        client,
        "GET",
        url,
        &[("authorization", token), ("accept", "application/json")],
        Bytes::new(),
    )
    .await
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `url` until it answers 200 (or `limit` passes). Returns the time it took from `since`.
pub async fn wait_for_200(
    client: &HttpClient,
    url: &str,
    token: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    while since.elapsed() < limit {
        if let Ok((200, _)) = get(client, url, token).await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// Resident set size of this process, in bytes (from /proc/self/statm).
pub fn rss_bytes() -> u64 {
    rss_from("/proc/self/statm")
}

/// Resident set size of process `pid`, in bytes (from /proc/<pid>/statm; 0 when it is gone).
pub fn rss_of(pid: u32) -> u64 {
    rss_from(&format!("/proc/{pid}/statm"))
}

fn rss_from(path: &str) -> u64 {
    let statm = std::fs::read_to_string(path).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(4096)
}

/// The value at quantile `q` (0..=1) of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The median of unsorted values.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// This benchmark binary, re-executed for a child mode.
pub fn child_command(mode: &str) -> Command {
    let exe = std::env::current_exe().expect("own executable");
    let mut c = Command::new(exe);
    c.arg("child").arg(mode);
    c
}

/// Runs a child mode to completion and returns its last stdout line starting with `RESULT `.
pub fn run_child(mode: &str, args: &[String]) -> Result<String, String> {
    run_child_env(mode, args, &[])
}

/// [`run_child`] with extra environment variables.
pub fn run_child_env(mode: &str, args: &[String], env: &[(&str, &str)]) -> Result<String, String> {
    let output = child_command(mode)
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run child {mode}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("child {mode} failed ({}): {stdout}", output.status));
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT ").map(str::to_owned))
        .ok_or_else(|| format!("child {mode} printed no result: {stdout}"))
}

/// Asks a child to stop with SIGTERM (by its pid) and waits up to `grace`, then kills it.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A fresh temporary directory for this run.
pub fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("credbroker-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a benchmark file");
    path
}

/// Formats a duration in the most readable unit.
pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// An emulated issuer and an emulated Cognito trusting it, answering after `latency`, on the
/// system clock (the rows that count Cognito calls against a round trip).
pub async fn issuer_and_cognito(
    latency: Duration,
) -> (
    credbroker_emulators::oidc::OidcIssuer,
    credbroker_emulators::cognito::CognitoEmulator,
) {
    use credbroker_emulators::cognito::{CognitoEmulator, CognitoOptions, TrustedProvider};
    use credbroker_emulators::oidc::{IssuerOptions, OidcIssuer};
    let clock = credbroker::clock::system();
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
    cognito.faults().set_latency(latency);
    (issuer, cognito)
}
