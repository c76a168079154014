//! `cargo bench --bench load`: credbroker's system benchmarks (issue #7). Every figure is printed
//! next to a baseline measured in the same run, because the machines this runs on are shared and
//! noisy: absolute numbers move from run to run, ratios much less.
//!
//! | # | what                 | how                                                                   |
//! |---|----------------------|-----------------------------------------------------------------------|
//! | 1 | hot path             | `wrk` + `bench/wrk.lua` against `credbroker run` and a minimal hyper server (this binary, `child baseline-server`) serving the same body with the same header check, alternating rounds; optional callgrind instructions per request |
//! | 2 | token validation     | criterion (`benches/validation.rs`, run first by `bench/run.sh`); read from `target/criterion` |
//! | 3 | single-flight        | 1,000 concurrent cold requests for one identity; 10,000 identities warmed; emulated Cognito's call counters |
//! | 4 | refresh spread       | child process, in-process Cognito, paused tokio clock (`child spread`) |
//! | 5 | memory               | child process, RSS from /proc/self/statm at 0, 10k, 100k identities (`child memory`) |
//! | 6 | AppSync forwarding   | sequential `POST /appsync/graphql` through the broker vs to the emulated AppSync directly, through a minimal hyper reverse proxy (`child proxy-baseline`, and `child proxy-intask`: the same without the hand-off to a connection task) and through a byte relay (`child tcp-relay`): what any process in the path costs; optional callgrind instructions per forwarded request of both |
//! | 7 | cold start           | exec of `credbroker run` to its first 200, vs exec of `true`          |
//! | 8 | fleet                | 3 in-process replicas × M users with and without the shared tier (a real redis-server): Cognito calls, first-request p50, local-hit p50 ([`fleet`]) |
//! | 9 | real-time            | AppSync subscriptions over WebSocket through `credbroker run` vs to the emulated AppSync directly (the emulators in a child process, `child realtime-upstream`): mutation → `data` frame p50/p99 in OIDC and IAM mode, and RSS per idle subscribed connection of both servers ([`realtime`]) |
//! | 10 | short-lived processes | N processes each getting one user's credentials once: the Rust SDK calling Cognito itself vs aws-config's default chain against the container endpoint (`child direct-cognito`, `child container`): Cognito calls, median start → credentials ([`processes`]) |
//!
//! `cargo bench --bench load -- soak` (`bash bench/soak.sh`) runs the soak instead: an hour of
//! steady load over 1,000 users with Cognito faults injected; see [`soak`].
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does nothing. Environment:
//! `CB_BENCH_QUICK=1` shrinks every phase (a smoke run), `CB_BENCH_ONLY=fleet` runs only the
//! fleet figures, `CB_BENCH_ONLY=realtime` only the real-time ones, `CB_BENCH_ONLY=hotpath`
//! only row 1 (its callgrind profiles are kept as
//! `target/callgrind.{credbroker,baseline}.<requests>.out` for `callgrind_annotate`),
//! `CB_BENCH_ONLY=appsync` only row 6 (profiles kept as
//! `target/callgrind.appsync-{credbroker,proxy}.<requests>.out`),
//! `CB_BENCH_SECONDS` sets the length of
//! one wrk round, `CB_BENCH_CALLGRIND=0` skips the callgrind profile, `CB_BENCH_OUT` is where
//! BENCHMARKS.md goes (default: the repository root).

mod children;
mod fleet;
mod processes;
mod realtime;
mod report;
mod soak;
mod system;
mod util;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return children::main(&args[1..]);
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("load: nothing to do; run `bash bench/run.sh` (or `cargo bench --bench load`)");
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "soak") {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(soak::run());
        return ExitCode::SUCCESS;
    }
    let options = Options::from_env();
    let mut report = report::Report::new(&options);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // `CB_BENCH_ONLY=fleet`: only the fleet figures (they need no quiet machine: call counts
    // and a 40 ms round trip against a cache hit).
    // `CB_BENCH_ONLY=realtime`: only the real-time figures (latencies against a same-run
    // baseline, and RSS).
    match std::env::var("CB_BENCH_ONLY").as_deref() {
        Ok("fleet") => {
            runtime.block_on(fleet::run(&options, &mut report));
            report.finish();
            return ExitCode::SUCCESS;
        }
        Ok("realtime") => {
            runtime.block_on(realtime::run(&options, &mut report));
            report.finish();
            return ExitCode::SUCCESS;
        }
        Ok("processes") => {
            runtime.block_on(processes::run(&options, &mut report));
            report.finish();
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    // `CB_BENCH_ONLY=hotpath`: row 1 alone (wrk rounds and the callgrind profile), for working
    // on the cached path.
    // `CB_BENCH_ONLY=appsync`: row 6 alone (with its callgrind profile), for working on the
    // forwarding path.
    if options.hot_path_only || options.appsync_only {
        runtime.block_on(system::run(&options, &mut report));
        report.finish();
        return ExitCode::SUCCESS;
    }
    report.criterion();
    runtime.block_on(system::run(&options, &mut report));
    runtime.block_on(fleet::run(&options, &mut report));
    runtime.block_on(realtime::run(&options, &mut report));
    runtime.block_on(processes::run(&options, &mut report));
    children::run(&options, &mut report);
    report.finish();
    ExitCode::SUCCESS
}

/// Sizes and switches of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Smoke-test sizes.
    pub quick: bool,
    /// Length of one wrk round.
    pub wrk_seconds: u64,
    /// wrk rounds per server (alternating).
    pub wrk_rounds: usize,
    /// wrk connections.
    pub wrk_connections: usize,
    /// Run the callgrind profile (needs valgrind).
    pub callgrind: bool,
    /// Concurrent cold requests for one identity.
    pub single_flight_requests: usize,
    /// Identities warmed in the second single-flight figure.
    pub warm_identities: usize,
    /// Identities in the refresh-spread simulation.
    pub spread_identities: usize,
    /// Identity counts at which RSS is measured (after 0).
    pub memory_counts: Vec<usize>,
    /// Sequential AppSync requests per path.
    pub appsync_requests: usize,
    /// Cold starts measured.
    pub cold_starts: usize,
    /// `CB_BENCH_ONLY=hotpath`: only row 1 (and the broker start it needs).
    pub hot_path_only: bool,
    /// `CB_BENCH_ONLY=appsync`: only row 6 (and the broker start it needs).
    pub appsync_only: bool,
    /// Real-time events timed per path and auth mode.
    pub realtime_events: usize,
    /// Idle subscribed connections whose memory is measured.
    pub realtime_connections: usize,
}

impl Options {
    fn from_env() -> Self {
        let quick = std::env::var("CB_BENCH_QUICK").is_ok_and(|v| v == "1");
        let wrk_seconds = std::env::var("CB_BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 2 } else { 6 });
        let callgrind = std::env::var("CB_BENCH_CALLGRIND").map_or(true, |v| v != "0");
        let hot_path_only = std::env::var("CB_BENCH_ONLY").is_ok_and(|v| v == "hotpath");
        let appsync_only = std::env::var("CB_BENCH_ONLY").is_ok_and(|v| v == "appsync");
        if quick {
            Self {
                quick,
                wrk_seconds,
                wrk_rounds: 1,
                wrk_connections: 32,
                callgrind,
                single_flight_requests: 200,
                warm_identities: 500,
                spread_identities: 1_000,
                memory_counts: vec![1_000, 10_000],
                appsync_requests: 200,
                cold_starts: 2,
                hot_path_only,
                appsync_only,
                realtime_events: 200,
                realtime_connections: 200,
            }
        } else {
            Self {
                quick,
                wrk_seconds,
                wrk_rounds: 3,
                wrk_connections: 32,
                callgrind,
                single_flight_requests: 1_000,
                warm_identities: 10_000,
                spread_identities: 20_000,
                memory_counts: vec![10_000, 100_000],
                appsync_requests: 2_000,
                cold_starts: 7,
                hot_path_only,
                appsync_only,
                realtime_events: 1_000,
                realtime_connections: 1_000,
            }
        }
    }
}
