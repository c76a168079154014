//! Modes this binary runs in as a child process (`load child <mode> …`), and the parent side
//! that launches them.
//!
//! - `baseline-server <port> <token-file> <body-file>`: the hot path's baseline, a minimal hyper
//!   server that answers `GET` with the body when `Authorization` equals the token (plain
//!   equality), 401 otherwise. Same tokio runtime and HTTP/1 settings as credbroker's
//!   listener; no routing, no validation, no cache.
//! - `proxy-baseline <port> <upstream-url>`: the AppSync row's baseline, a minimal hyper
//!   reverse proxy: it buffers the body, copies the caller's headers (`Authorization` included)
//!   minus `Host`, sends them to `upstream-url` over a pooled keep-alive client and streams the
//!   answer back. The same runtime and HTTP/1 settings; no authentication, no checks — what any
//!   proxy process in the path costs.
//! - `proxy-intask <port> <upstream-url>`: `proxy-baseline` with its upstream connection driven
//!   in the request's own task (hyper's low-level client and a pool of idle connections), not
//!   by a connection task the request hands off to: whether that hand-off is what a proxy
//!   costs.
//! - `tcp-relay <port> <upstream-host:port>`: the floor under that, a byte relay: each accepted
//!   connection gets its own upstream connection and the bytes are copied both ways
//!   (`copy_bidirectional`, no HTTP parsing at all). What a process in the path costs before
//!   it does any work.
//! - `memory <n1,n2,…>`: RSS of a broker holding 0, n1, n2 … identities (a fresh process, so
//!   nothing else has touched the heap).
//! - `spread <identities> <lifetime-min> <simulated-min>`: the refresh-spread simulation under a
//!   paused tokio clock.
//! - `realtime-upstream <dir> <users>`: the emulators of the real-time row in a process of
//!   their own ([`crate::realtime`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use credbroker::app::{self, Overrides};
use credbroker::clock::{SharedClock, TokioClock};
use credbroker::cognito::{CognitoApi, Login, RawCredentials, UpstreamError};
use credbroker::config::Config;
use credbroker::metrics::Surface;
use credbroker::secret::SecretString;
use credbroker_emulators::cognito::{CognitoEmulator, CognitoOptions, TrustedProvider};
use credbroker_emulators::oidc::{IssuerOptions, OidcIssuer, SigningAlg, TokenSpec};
use futures_util::future::BoxFuture;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use crate::Options;
use crate::report::Report;
use crate::util::{self, fmt_duration};

pub fn main(args: &[String]) -> ExitCode {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let result = match arg(0).as_str() {
        "baseline-server" => baseline_server(arg(1).parse().unwrap_or(0), &arg(2), &arg(3)),
        "proxy-baseline" => proxy_baseline(arg(1).parse().unwrap_or(0), &arg(2)),
        "tcp-relay" => tcp_relay(arg(1).parse().unwrap_or(0), &arg(2)),
        "proxy-intask" => proxy_intask(arg(1).parse().unwrap_or(0), &arg(2)),
        "memory" => memory(&arg(1)),
        "spread" => spread(
            arg(1).parse().unwrap_or(1000),
            arg(2).parse().unwrap_or(60),
            arg(3).parse().unwrap_or(120),
        ),
        "direct-cognito" => crate::processes::direct_child(&args[1..]),
        "container" => crate::processes::container_child(),
        "realtime-upstream" => {
            return crate::realtime::upstream_child(&arg(1), arg(2).parse().unwrap_or(1000));
        }
        other => Err(format!("unknown child mode {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load child: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The parent side: memory and refresh-spread children, reported.
pub fn run(options: &Options, report: &mut Report) {
    let counts: Vec<String> = options
        .memory_counts
        .iter()
        .map(ToString::to_string)
        .collect();
    match util::run_child("memory", &[counts.join(",")]) {
        Ok(line) => report_memory(report, &line, None),
        Err(e) => report.note(format!("memory: {e}")),
    }
    // The same with glibc's malloc held to two arenas (it gives each thread its own, up to 8
    // per core, and idle arena space counts in RSS): what `MALLOC_ARENA_MAX=2` buys a sidecar.
    match util::run_child_env("memory", &[counts.join(",")], &[("MALLOC_ARENA_MAX", "2")]) {
        Ok(line) => report_memory(report, &line, Some("MALLOC_ARENA_MAX=2")),
        Err(e) => report.note(format!("memory (MALLOC_ARENA_MAX=2): {e}")),
    }
    let n = options.spread_identities;
    let scenarios: &[(u64, u64)] = if options.quick {
        &[(15, 40)]
    } else {
        &[(60, 150), (15, 60)]
    };
    for &(lifetime, simulated) in scenarios {
        match util::run_child(
            "spread",
            &[n.to_string(), lifetime.to_string(), simulated.to_string()],
        ) {
            Ok(line) => report_spread(report, &line),
            Err(e) => report.note(format!("refresh spread: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The baselines' HTTP/1 server

/// Serves `service(request)` on 127.0.0.1:`port` until SIGTERM, with the runtime credbroker's
/// main builds and the HTTP/1 settings of credbroker's listener (server::serve_with).
fn serve_baseline<F, Fut, B, E>(port: u16, service: F) -> Result<(), String>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size(16 * 1024)
            .keep_alive(true);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        loop {
            let (stream, _) = tokio::select! {
                _ = term.recv() => return Ok(()),
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let _ = stream.set_nodelay(true);
            let conn = builder.serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(service.clone()),
            );
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    })
}

// ---------------------------------------------------------------------------------------------
// baseline-server

fn baseline_server(port: u16, token_file: &str, body_file: &str) -> Result<(), String> {
    let token = std::fs::read(token_file).map_err(|e| format!("{token_file}: {e}"))?;
    let body = Bytes::from(std::fs::read(body_file).map_err(|e| format!("{body_file}: {e}"))?);
    let token: Arc<[u8]> = token.into();
    serve_baseline(port, move |req: Request<Incoming>| {
        // Plain (memcmp) equality, the cheapest check a minimal server would do. A
        // constant-time comparison (subtle) costs ~12k instructions per request for an
        // 850-byte token and would flatter credbroker's ratio.
        let authorized = req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == &token[..]);
        let response = if authorized {
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-store")
                .body(Full::new(body.clone()))
        } else {
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .body(Full::new(Bytes::from_static(b"{}")))
        };
        async move { response }
    })
}

// ---------------------------------------------------------------------------------------------
// proxy-baseline

fn proxy_baseline(port: u16, upstream: &str) -> Result<(), String> {
    let upstream: http::Uri = upstream.parse().map_err(|e| format!("{upstream}: {e}"))?;
    let client = util::client();
    serve_baseline(port, move |req: Request<Incoming>| {
        let client = client.clone();
        let upstream = upstream.clone();
        async move {
            let Some(out) = relayed(req, upstream).await else {
                return Ok(bad_gateway().map(Either::Right));
            };
            Ok::<_, std::convert::Infallible>(match client.request(out).await {
                Ok(r) => r.map(Either::Left),
                Err(_) => bad_gateway().map(Either::Right),
            })
        }
    })
}

/// What both proxies send upstream: the caller's method, buffered body and headers minus
/// `Host`, to `uri`; `None` when the body cannot be read.
async fn relayed(req: Request<Incoming>, uri: http::Uri) -> Option<Request<Full<Bytes>>> {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    let headers = out.headers_mut();
    for (name, value) in &parts.headers {
        if name != header::HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    Some(out)
}

fn bad_gateway() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

// ---------------------------------------------------------------------------------------------
// proxy-intask

/// One idle upstream HTTP/1.1 connection: its request handle and the connection future, which
/// only the request using it polls.
type Upstream = (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    hyper::client::conn::http1::Connection<TokioIo<tokio::net::TcpStream>, Full<Bytes>>,
);

/// `proxy-baseline` without the hand-off: the request's own task drives the upstream
/// connection (hyper's low-level client, a pool of idle connections), so no second task is
/// woken on the way out or back. The answer is buffered (head and body in one write).
fn proxy_intask(port: u16, upstream: &str) -> Result<(), String> {
    use http_body_util::BodyExt as _;
    let uri: http::Uri = upstream.parse().map_err(|e| format!("{upstream}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or(format!("{upstream}: no host"))?
        .to_string();
    let host = header::HeaderValue::from_str(&authority).map_err(|e| e.to_string())?;
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let pool: Arc<std::sync::Mutex<Vec<Upstream>>> = Arc::default();
    serve_baseline(port, move |req: Request<Incoming>| {
        let (pool, path, authority, host) =
            (pool.clone(), path.clone(), authority.clone(), host.clone());
        async move {
            let Some(mut out) = relayed(req, http::Uri::from(path)).await else {
                return Ok(bad_gateway());
            };
            out.headers_mut().insert(header::HOST, host);
            let idle = pool.lock().map(|mut p| p.pop()).unwrap_or(None);
            let (mut send, mut conn) = match idle {
                Some(up) => up,
                None => {
                    let Ok(stream) = tokio::net::TcpStream::connect(&authority).await else {
                        return Ok(bad_gateway());
                    };
                    let _ = stream.set_nodelay(true);
                    match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                        Ok(up) => up,
                        Err(_) => return Ok(bad_gateway()),
                    }
                }
            };
            let answer = tokio::select! {
                biased;
                r = send.send_request(out) => r,
                _ = &mut conn => return Ok(bad_gateway()),
            };
            let Ok(answer) = answer else {
                return Ok(bad_gateway());
            };
            let (parts, body) = answer.into_parts();
            let body = tokio::select! {
                biased;
                b = body.collect() => b,
                _ = &mut conn => return Ok(bad_gateway()),
            };
            let Ok(body) = body else {
                return Ok(bad_gateway());
            };
            if let Ok(mut p) = pool.lock() {
                p.push((send, conn));
            }
            Ok::<_, std::convert::Infallible>(Response::from_parts(
                parts,
                Full::new(body.to_bytes()),
            ))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// tcp-relay

fn tcp_relay(port: u16, upstream: &str) -> Result<(), String> {
    let upstream: SocketAddr = upstream.parse().map_err(|e| format!("{upstream}: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        loop {
            let (mut inbound, _) = tokio::select! {
                _ = term.recv() => return Ok(()),
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}

// ---------------------------------------------------------------------------------------------
// memory

/// A Cognito that stores nothing (the emulator keeps every credential set it issues, which
/// would be counted as the broker's memory) and answers with STS-shaped credentials: 20-char
/// key id, 40-char secret, 1,000-char session token — the sizes the emulator and real Cognito
/// return.
struct StatelessCognito {
    next: AtomicU64,
}

impl CognitoApi for StatelessCognito {
    fn get_id<'a>(
        &'a self,
        _identity_pool_id: &'a str,
        _login: Login<'a>,
    ) -> BoxFuture<'a, Result<String, UpstreamError>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move { Ok(format!("us-east-1:{n:08x}-0000-4000-8000-{n:012x}")) })
    }

    fn get_credentials<'a>(
        &'a self,
        _identity_id: &'a str,
        _login: Login<'a>,
        _custom_role_arn: Option<&'a str>,
    ) -> BoxFuture<'a, Result<RawCredentials, UpstreamError>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let mut session = format!("IQoJb3JpZ2luX2Vj{n:016x}");
            while session.len() < 1000 {
                session.push_str("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo");
            }
            session.truncate(1000);
            Ok(RawCredentials {
                access_key_id: format!("ASIA{n:016X}"),
                secret_key: SecretString::from(format!("{n:040x}").as_str()),
                session_token: SecretString::from(session.as_str()),
                expiration: SystemTime::now() + Duration::from_secs(3600),
            })
        })
    }
}

fn memory(counts: &str) -> Result<(), String> {
    let counts: Vec<usize> = counts
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0) as u64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let clock = credbroker::clock::system();
        let issuer = OidcIssuer::start(IssuerOptions::default(), clock.clone())
            .await
            .map_err(|e| e.to_string())?;
        // Capacities above the largest count, so nothing is evicted while measuring.
        let config = Config::from_toml(&format!(
            r#"
[server]
listen = "127.0.0.1:0"

[admin]
enabled = false

[tokens]
verified_cache_capacity = {cap}

[providers.bench]
issuer = "{issuer}"
audiences = ["{aud}"]
algorithms = ["RS256", "ES256"]

[cognito]
region = "us-east-1"
identity_pool_id = "us-east-1:00000000-0000-4000-8000-000000000000"

[cache]
max_identities = {cap}
"#,
            cap = max * 3 / 2 + 1000,
            issuer = issuer.issuer(),
            aud = issuer.audience(),
        ))
        .map_err(|e| e.to_string())?;
        let running = app::start(
            config,
            Overrides {
                clock: Some(clock.clone()),
                cognito: Some(Arc::new(StatelessCognito {
                    next: AtomicU64::new(1),
                })),
                ..Overrides::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let broker = running.broker.clone();

        // Tokens as large as the issuer's RS256 ones (Auth0-shaped), but signed with ES256:
        // signing 100k RS256 tokens would take minutes. The broker keeps the raw token either
        // way, so only the length matters for memory.
        let rs_len = issuer.token_for("auth0|memory-000000").len();
        let es = |issuer: &OidcIssuer, sub: &str, pad: usize| {
            let mut spec = TokenSpec::for_subject(sub);
            spec.alg = SigningAlg::Es256;
            spec.extra_claims
                .insert("pad".to_owned(), json!("x".repeat(pad)));
            issuer.mint(&spec)
        };
        let mut pad = 0usize;
        for _ in 0..4 {
            let len = es(&issuer, "auth0|memory-000000", pad).len();
            if len >= rs_len {
                break;
            }
            pad += (rs_len - len) * 3 / 4 + 1;
        }
        let token_len = es(&issuer, "auth0|memory-000000", pad).len();

        let settle = || {
            broker.identities.len();
        };
        settle();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut points = vec![(0usize, util::rss_bytes())];
        let mut have = 0usize;
        for &target in &counts {
            // Two tasks on the runtime's workers, where the daemon's requests run, so both
            // cores work; tokens are minted, used and dropped.
            let work = |range: std::ops::Range<usize>| {
                let b = broker.clone();
                let issuer = issuer.clone();
                tokio::spawn(async move {
                    for i in range {
                        let t = es(&issuer, &format!("auth0|memory-{i:06}"), pad);
                        b.credentials(&t, Surface::Container)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                })
            };
            let mid = have + (target - have) / 2;
            let (a, c) = tokio::join!(work(have..mid), work(mid..target));
            a.map_err(|e| e.to_string())??;
            c.map_err(|e| e.to_string())??;
            have = target;
            settle();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let cached = broker.identities.len();
            if cached as usize != target {
                return Err(format!(
                    "expected {target} cached identities, found {cached}"
                ));
            }
            points.push((target, util::rss_bytes()));
        }
        let sample = broker.identities.identities();
        let body_len = sample
            .first()
            .and_then(|i| i.current())
            .map_or(0, |c| c.container_body().len());
        let id_len = sample
            .first()
            .and_then(|i| i.identity_id())
            .map_or(0, |id| id.len());
        // The fixed parts, each behind an `Arc` (two counters) in its own allocation.
        let structs = [
            (
                "Identity",
                std::mem::size_of::<credbroker::identity::Identity>(),
            ),
            (
                "Issued",
                std::mem::size_of::<credbroker::identity::Issued>(),
            ),
            (
                "VerifiedToken",
                std::mem::size_of::<credbroker::oidc::VerifiedToken>(),
            ),
        ];
        running.stop().await;
        println!(
            "RESULT {}",
            json!({
                "points": points,
                "token_bytes": token_len,
                "rs256_token_bytes": rs_len,
                "body_bytes": body_len,
                "identity_id_bytes": id_len,
                "structs": structs.iter().map(|(n, b)| json!([n, b + 16])).collect::<Vec<_>>(),
            })
        );
        Ok(())
    })
}

fn report_memory(report: &mut Report, line: &str, env: Option<&str>) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        report.note(format!("memory: unparseable result {line}"));
        return;
    };
    let points: Vec<(f64, f64)> = v["points"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    if points.len() < 2 {
        report.note(format!("memory: too few points {line}"));
        return;
    }
    let mib = |b: f64| format!("{:.1} MiB", b / (1024.0 * 1024.0));
    let (n0, r0) = points[0];
    let (nl, rl) = points[points.len() - 1];
    let (np, rp) = points[points.len() - 2];
    let marginal = (rl - rp) / (nl - np);
    let average = (rl - r0) / (nl - n0);
    let rss: Vec<String> = points
        .iter()
        .map(|(n, r)| format!("{}: {}", n, mib(*r)))
        .collect();
    report.row(
        "5 memory",
        format!(
            "RSS by cached identities (token {} bytes, credentials body {} bytes; fresh process{})",
            v["token_bytes"],
            v["body_bytes"],
            env.map(|e| format!(", {e}")).unwrap_or_default()
        ),
        rss.join(", "),
        format!("0 identities: {}", mib(r0)),
        format!(
            "{:.0} bytes/identity from {np:.0} to {nl:.0}; {:.0} bytes/identity from 0. {}",
            marginal,
            average,
            memory_parts(&v, marginal)
        ),
        format!(
            "≤ 3 KiB (3072 bytes): {}",
            if marginal <= 3072.0 { "met" } else { "MISSED" }
        ),
    );
}

/// Bytes per identity by part: the token, the body, the identity id and each struct as
/// measured; the rest is the caches' entries (the identity table's slot, the verified-token
/// memo's slot), the renewal queue and the allocator's rounding and headers.
fn memory_parts(v: &serde_json::Value, marginal: f64) -> String {
    let mut parts: Vec<(String, f64)> = vec![
        (
            "ID token".to_owned(),
            v["token_bytes"].as_f64().unwrap_or(0.0),
        ),
        (
            "credentials body".to_owned(),
            v["body_bytes"].as_f64().unwrap_or(0.0),
        ),
        (
            "identity id".to_owned(),
            v["identity_id_bytes"].as_f64().unwrap_or(0.0),
        ),
    ];
    for s in v["structs"].as_array().into_iter().flatten() {
        if let (Some(name), Some(bytes)) = (s[0].as_str(), s[1].as_f64()) {
            parts.push((name.to_owned(), bytes));
        }
    }
    let known: f64 = parts.iter().map(|(_, b)| b).sum();
    parts.push((
        "caches, renewal queue, allocator".to_owned(),
        marginal - known,
    ));
    let listed: Vec<String> = parts.iter().map(|(n, b)| format!("{n} {b:.0}")).collect();
    format!("By part: {}", listed.join(", "))
}

// ---------------------------------------------------------------------------------------------
// spread

fn spread(identities: usize, lifetime_min: u64, simulated_min: u64) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let clock: SharedClock = Arc::new(TokioClock::new());
        let issuer = OidcIssuer::start(IssuerOptions::default(), clock.clone())
            .await
            .map_err(|e| e.to_string())?;
        let cognito = CognitoEmulator::start(
            CognitoOptions {
                credential_lifetime: Duration::from_secs(lifetime_min * 60),
                ..CognitoOptions::default()
            },
            vec![TrustedProvider::for_issuer(&issuer)],
            clock.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
        // Tokens outlive the simulation, so every refresh can use the stored token.
        let token_lifetime = Duration::from_secs((simulated_min + 120) * 60);
        let tokens = mint_rs256(&issuer, identities, token_lifetime);
        let config = Config::from_toml(&format!(
            r#"
[server]
listen = "127.0.0.1:0"

max_pending_exchanges = {cap}

[admin]
enabled = false

[tokens]
jwks_refresh_interval = "7d"
verified_cache_capacity = {cap}

[providers.bench]
issuer = "{issuer}"
audiences = ["{aud}"]

[cognito]
region = "{region}"
identity_pool_id = "{pool}"
endpoint_url = "{endpoint}"

[cache]
max_identities = {cap}
"#,
            cap = identities * 2 + 100,
            issuer = issuer.issuer(),
            aud = issuer.audience(),
            region = cognito.region(),
            pool = cognito.identity_pool_id(),
            endpoint = cognito.endpoint_url(),
        ))
        .map_err(|e| e.to_string())?;
        let budget = config.cache.refresh_rate;
        let running = app::start(
            config,
            Overrides {
                clock: Some(clock.clone()),
                cognito: Some(Arc::new(cognito.clone())),
                ..Overrides::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let broker = running.broker.clone();
        tokio::time::pause();

        // Everyone signs in at the same instant: the worst case for the scheduler.
        let wall = std::time::Instant::now();
        let mut min_remaining = Duration::MAX;
        let mut plan_min = Duration::MAX;
        for t in &tokens {
            let c = broker
                .credentials(t, Surface::Container)
                .await
                .map_err(|e| e.to_string())?;
            min_remaining = min_remaining.min(remaining(&clock, c.expires_at));
            plan_min = plan_min.min(c.plan.min_remaining);
        }
        let warm_calls = cognito.stats().get_credentials_for_identity.calls;

        // Then each identity is asked for every 5 minutes (staggered by identity), and
        // GetCredentialsForIdentity calls are counted per simulated second.
        const CALLER_PERIOD: u64 = 300;
        let mut per_second: Vec<u64> = Vec::new();
        let mut last = warm_calls;
        let mut served = 0u64;
        for sec in 0..simulated_min * 60 {
            let slot = (sec % CALLER_PERIOD) as usize;
            for t in tokens.iter().skip(slot).step_by(CALLER_PERIOD as usize) {
                let c = broker
                    .credentials(t, Surface::Container)
                    .await
                    .map_err(|e| e.to_string())?;
                min_remaining = min_remaining.min(remaining(&clock, c.expires_at));
                served += 1;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = cognito.stats().get_credentials_for_identity.calls;
            per_second.push(now - last);
            last = now;
        }
        let m = broker.metrics.render();
        let metric = |series: &str| -> f64 {
            m.lines()
                .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap_or(0.0)))
                .unwrap_or(0.0)
        };
        let active: Vec<&u64> = per_second.iter().filter(|&&c| c > 0).collect();
        let first = per_second.iter().position(|&c| c > 0).unwrap_or(0);
        let last_active = per_second.iter().rposition(|&c| c > 0).unwrap_or(0);
        let total: u64 = per_second.iter().sum();
        let peak_1s = per_second.iter().copied().max().unwrap_or(0);
        let peak_10s = per_second
            .windows(10)
            .map(|w| w.iter().sum::<u64>() as f64 / 10.0)
            .fold(0.0, f64::max);
        let active_mean = if active.is_empty() {
            0.0
        } else {
            active.iter().copied().sum::<u64>() as f64 / active.len() as f64
        };
        let result = json!({
            "identities": identities,
            "lifetime_min": lifetime_min,
            "simulated_min": simulated_min,
            "budget": budget,
            "warm_calls": warm_calls,
            "refresh_calls": total,
            "peak_1s": peak_1s,
            "peak_10s": peak_10s,
            "mean_active_seconds": active_mean,
            "active_seconds": active.len(),
            "mean_overall": total as f64 / per_second.len().max(1) as f64,
            "first_refresh_s": first,
            "last_refresh_s": last_active,
            "min_remaining_s": min_remaining.as_secs_f64(),
            "effective_min_remaining_s": plan_min.as_secs_f64(),
            "served": served,
            "below_min": metric("credbroker_served_below_min_remaining_total"),
            "ahead_ok": metric("credbroker_refreshes_total{result=\"ok\",trigger=\"ahead\"}"),
            "on_demand_ok": metric("credbroker_refreshes_total{result=\"ok\",trigger=\"on_demand\"}"),
            "wall_s": wall.elapsed().as_secs_f64(),
        });
        running.stop().await;
        println!("RESULT {result}");
        Ok(())
    })
}

fn remaining(clock: &SharedClock, expires_at: SystemTime) -> Duration {
    expires_at
        .duration_since(clock.now())
        .unwrap_or(Duration::ZERO)
}

/// `count` RS256 tokens living `lifetime`, minted on every CPU.
fn mint_rs256(issuer: &OidcIssuer, count: usize, lifetime: Duration) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = count.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t * per..((t + 1) * per).min(count))
                        .map(|i| {
                            issuer.mint(&TokenSpec {
                                lifetime: Some(lifetime),
                                ..TokenSpec::for_subject(format!("auth0|spread-{i:06}"))
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn report_spread(report: &mut Report, line: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        report.note(format!("refresh spread: unparseable result {line}"));
        return;
    };
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let budget = f("budget");
    let min_left = Duration::from_secs_f64(f("min_remaining_s"));
    let effective = Duration::from_secs_f64(f("effective_min_remaining_s"));
    report.row(
        "4 refresh spread",
        format!(
            "{:.0} identities, {:.0}-min credentials, all obtained at t=0, {:.0} simulated min \
             (paused clock; callers every 5 min each)",
            f("identities"),
            f("lifetime_min"),
            f("simulated_min")
        ),
        format!(
            "GetCredentialsForIdentity: peak {:.0}/s (1 s), {:.1}/s (10 s); mean {:.1}/s over \
             the {:.0} s with refreshes; {:.0} refreshes ({:.0} ahead, {:.0} on demand)",
            f("peak_1s"),
            f("peak_10s"),
            f("mean_active_seconds"),
            f("active_seconds"),
            f("refresh_calls"),
            f("ahead_ok"),
            f("on_demand_ok") - f("identities"),
        ),
        format!("cache.refresh_rate = {budget:.0}/s"),
        format!(
            "peak/budget {:.2}; min remaining served {} (effective min_remaining {}); {:.0} of \
             {:.0} served below it",
            f("peak_1s") / budget,
            fmt_duration(min_left),
            fmt_duration(effective),
            f("below_min"),
            f("served") + f("identities"),
        ),
        format!(
            "peak ≤ budget and never below min_remaining: {}",
            if f("peak_1s") <= budget.ceil() && f("below_min") == 0.0 && min_left >= effective {
                "met"
            } else {
                "MISSED"
            }
        ),
    );
    println!("  spread wall time {:.1} s", f("wall_s"));
}
