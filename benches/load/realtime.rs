//! 9: AppSync real time (issue 12). The emulated issuer, Cognito and AppSync run in a child
//! process of their own (`child realtime-upstream`), `credbroker run` in another, and this
//! process holds the WebSocket clients (tokio-tungstenite, AppSync's `graphql-ws` protocol with
//! the authorization in the `header-<base64url JSON>` subprotocol, as Amplify v6 sends it):
//!
//! - **event latency**: a `createTodo` sent over HTTP straight to the emulated AppSync (both
//!   paths, so only the subscription leg differs), timed from sending it to the `data` frame at
//!   a client subscribed to `onCreateTodo` through credbroker's `/appsync/<api>/realtime`, and
//!   at a client subscribed to the emulator's real-time endpoint directly with the auth it
//!   expects there (OIDC: the ID token and host; IAM: SigV4 of the connect and of each start,
//!   signed here with the user's credentials from credbroker). One event per path in turn;
//! - **memory per idle subscribed connection**: RSS (`/proc/<pid>/statm`) of the broker at 0,
//!   N/2 and N connections (each a different user, one `onCreateTodo` subscription each,
//!   OIDC), against, in the same run, the same N connections made to the emulated AppSync
//!   directly (its process's RSS; axum's default WebSocket settings) and N idle keep-alive
//!   HTTP/1.1 connections to a fresh broker (what any connection costs it). Descriptor counts
//!   check that every connection is still open when RSS is read.

use std::path::Path;
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::json;

use crate::Options;
use crate::report::Report;
use crate::system::fmt_signed;
use crate::util::{self, HttpClient, fmt_duration, quantile};
use client::{ANSWER, Ws, credentials, iam_direct_route, next_message, sigv4, token_route};
use upstream::{
    Upstream, UpstreamChild, broker_toml, ensure_open_files, spawn_broker, spawn_upstream,
};

pub(crate) mod client;
mod upstream;

pub use upstream::upstream_child;

const CREATE: &str =
    "mutation Create($c: String!) { createTodo(content: $c) { id content owner } }";
/// Events per path discarded before measuring (connections, caches, allocator warm).
const WARM_UP: usize = 20;
/// Connections being opened at once in the memory phase.
const OPENING: usize = 16;
/// Users with their own token besides the memory phase's: OIDC direct, OIDC through the
/// broker, IAM direct, IAM through the broker.
const LATENCY_USERS: usize = 4;

// ---------------------------------------------------------------------------------------------
// Event latency

/// How a mutation is authorized at the emulated AppSync's `/graphql`.
enum Mutation {
    Token(String),
    Iam(Credentials),
}

/// A subscribed client and how to create a todo it receives.
struct Subscriber {
    ws: Ws,
    mutation: Mutation,
}

/// One `createTodo` straight to the emulator, timed from sending it to its `data` frame at
/// `sub`.
async fn one_event(
    client: &HttpClient,
    u: &Upstream,
    sub: &mut Subscriber,
    content: &str,
) -> Result<Duration, String> {
    let body = json!({ "query": CREATE, "variables": { "c": content } }).to_string();
    let headers = match &sub.mutation {
        Mutation::Token(t) => vec![
            ("authorization".to_owned(), t.clone()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ],
        Mutation::Iam(c) => sigv4(
            c,
            &u.appsync_region,
            &u.appsync_url,
            &[
                ("content-type", "application/json"),
                ("host", u.authority()),
            ],
            &body,
        )?,
    };
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let started = Instant::now();
    let created = util::send(client, "POST", &u.appsync_url, &headers, Bytes::from(body));
    let ws = &mut sub.ws;
    let arrived = async move {
        let m = next_message(ws).await?;
        Ok::<_, String>((started.elapsed(), m))
    };
    let (created, arrived) = tokio::join!(created, arrived);
    match created {
        Ok((200, _)) => {}
        other => return Err(format!("createTodo answered {other:?}")),
    }
    let (elapsed, m) = arrived?;
    if m["type"] != "data" || m["payload"]["data"]["onCreateTodo"]["content"] != content {
        return Err(format!("expected the data frame of {content:?}, got {m}"));
    }
    Ok(elapsed)
}

/// p50 and p99 through the broker and directly, one event per path in turn (which goes first
/// alternates).
struct Latency {
    events: usize,
    broker: (Duration, Duration),
    direct: (Duration, Duration),
}

async fn measure(
    client: &HttpClient,
    u: &Upstream,
    broker: &mut Subscriber,
    direct: &mut Subscriber,
    events: usize,
) -> Result<Latency, String> {
    let mut through = Vec::with_capacity(events);
    let mut straight = Vec::with_capacity(events);
    for i in 0..WARM_UP + events {
        for step in 0..2 {
            let via_broker = (i + step) % 2 == 0;
            let sub = if via_broker {
                &mut *broker
            } else {
                &mut *direct
            };
            let took = one_event(client, u, sub, &format!("event {i}.{step}")).await?;
            if i >= WARM_UP {
                if via_broker {
                    through.push(took);
                } else {
                    straight.push(took);
                }
            }
        }
    }
    through.sort();
    straight.sort();
    let p = |s: &[Duration]| (quantile(s, 0.5), quantile(s, 0.99));
    Ok(Latency {
        events,
        broker: p(&through),
        direct: p(&straight),
    })
}

async fn latency_oidc(
    client: &HttpClient,
    u: &Upstream,
    broker: &str,
    events: usize,
) -> Result<Latency, String> {
    let (td, tb) = (&u.tokens[0], &u.tokens[1]);
    let mut direct = Subscriber {
        ws: token_route(u.realtime_url.clone(), td, u.authority())
            .open()
            .await?,
        mutation: Mutation::Token(td.clone()),
    };
    let url = format!("ws://{broker}/appsync/oidc/realtime");
    let mut through = Subscriber {
        ws: token_route(url, tb, broker).open().await?,
        mutation: Mutation::Token(tb.clone()),
    };
    measure(client, u, &mut through, &mut direct, events).await
}

async fn latency_iam(
    client: &HttpClient,
    u: &Upstream,
    broker: &str,
    events: usize,
) -> Result<Latency, String> {
    let (td, tb) = (&u.tokens[2], &u.tokens[3]);
    let cd = credentials(client, broker, td).await?;
    let cb = credentials(client, broker, tb).await?;
    let mut direct = Subscriber {
        ws: iam_direct_route(u, &cd)?.open().await?,
        mutation: Mutation::Iam(cd),
    };
    // The app sends its ID token; the broker signs the connect and the start upstream.
    let url = format!("ws://{broker}/appsync/iam/realtime");
    let mut through = Subscriber {
        ws: token_route(url, tb, broker).open().await?,
        mutation: Mutation::Iam(cb),
    };
    measure(client, u, &mut through, &mut direct, events).await
}

fn report_latency(report: &mut Report, mode: &str, l: &Latency) {
    let (b50, b99) = l.broker;
    let (d50, d99) = l.direct;
    report.row(
        "9 real-time",
        format!(
            "{mode}: createTodo (HTTP, straight to the emulated AppSync) → data frame at a client \
             subscribed to onCreateTodo, {} events per path, one per path in turn",
            l.events
        ),
        format!(
            "through credbroker: p50 {}, p99 {}",
            fmt_duration(b50),
            fmt_duration(b99)
        ),
        format!(
            "emulated AppSync directly: p50 {}, p99 {}",
            fmt_duration(d50),
            fmt_duration(d99)
        ),
        format!(
            "added p50 {}, p99 {}",
            fmt_signed(b50, d50),
            fmt_signed(b99, d99)
        ),
        "",
    );
}

// ---------------------------------------------------------------------------------------------
// Memory per idle connection

/// RSS and open descriptors of a process at 0, n/2 and n open connections.
struct Points {
    n: [usize; 3],
    rss: [u64; 3],
    fds: [usize; 3],
}

impl Points {
    /// Bytes per connection from 0 to n, and over the second half.
    fn per_connection(&self) -> (f64, f64) {
        let d = |a: usize, b: usize| {
            (self.rss[b] as f64 - self.rss[a] as f64) / (self.n[b] - self.n[a]).max(1) as f64
        };
        (d(0, 2), d(1, 2))
    }

    fn summary(&self) -> String {
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
        let (all, half) = self.per_connection();
        format!(
            "{all:.0} bytes/connection ({} → {}; {half:.0} over the second half)",
            mib(self.rss[0]),
            mib(self.rss[2])
        )
    }
}

/// Open descriptors of `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// RSS of `pid` at 0, n/2 and n connections made by `open(i)`, `fds_each` descriptors each
/// in `pid` (checked: a connection it dropped would flatter the figure). The connections are
/// closed before returning.
async fn rss_points<T, F, Fut>(
    pid: u32,
    n: usize,
    fds_each: usize,
    open: F,
) -> Result<Points, String>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    settle().await;
    let mut points = Points {
        n: [0, n / 2, n],
        rss: [util::rss_of(pid), 0, 0],
        fds: [open_fds(pid), 0, 0],
    };
    let mut held: Vec<T> = Vec::with_capacity(n);
    for slot in 1..3 {
        let opened: Vec<Result<T, String>> = futures_util::stream::iter(held.len()..points.n[slot])
            .map(&open)
            .buffered(OPENING)
            .collect()
            .await;
        for c in opened {
            held.push(c?);
        }
        settle().await;
        points.rss[slot] = util::rss_of(pid);
        points.fds[slot] = open_fds(pid);
        let expected = points.fds[0] + points.n[slot] * fds_each;
        if points.fds[slot] < expected {
            return Err(format!(
                "{} connections open but {} descriptors in process {pid} (expected {expected})",
                points.n[slot], points.fds[slot]
            ));
        }
    }
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(points)
}

/// A keep-alive HTTP/1.1 connection that has been answered one `GET /v1/credentials`
/// (status 200, body read to its `Content-Length`), then left idle.
async fn idle_http(addr: &str, token: &str) -> Result<tokio::net::TcpStream, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let request =
        format!("GET /v1/credentials HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {token}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + ANSWER;
    loop {
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk))
            .await
            .map_err(|_| "no answer within 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("closed before the answer was complete".to_owned());
        }
        buf.extend_from_slice(&chunk[..read]);
        if let Some(done) = complete_response(&buf) {
            return done.map(|()| stream);
        }
    }
}

/// `Some(Ok)` once `buf` holds a whole 200 response, `Some(Err)` for another status, `None`
/// while incomplete.
fn complete_response(buf: &[u8]) -> Option<Result<(), String>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Some(Err(format!(
            "answered {}",
            head.lines().next().unwrap_or("")
        )));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (buf.len() >= end + length).then_some(Ok(()))
}

fn report_memory(report: &mut Report, ws: &Points, direct: &Points, http: &Points) {
    let n = ws.n[2];
    let (per_ws, _) = ws.per_connection();
    let (per_direct, _) = direct.per_connection();
    let (per_http, _) = http.per_connection();
    report.row(
        "9 real-time",
        format!(
            "RSS per idle subscribed connection: {n} WebSockets, each a different user with one \
             onCreateTodo subscription (OIDC), opened {OPENING} at a time; every server a \
             separate process"
        ),
        format!("credbroker: {}", ws.summary()),
        format!(
            "the same {n} to the emulated AppSync directly: {} (axum's default WebSocket \
             settings, a 128 KiB read buffer per socket; credbroker's are 4 KiB); a fresh \
             credbroker with {n} idle keep-alive HTTP/1.1 connections (one cached GET each): {}",
            direct.summary(),
            http.summary()
        ),
        format!(
            "{:.2}× an idle HTTP connection to credbroker, {:.2}× a socket of the emulator; \
             credbroker holds two sockets per subscribed connection (the app's and AppSync's)",
            per_ws / per_http.max(1.0),
            per_ws / per_direct.max(1.0)
        ),
        "",
    );
}

/// The three memory measurements: the emulator directly, then the broker, then a fresh
/// broker's idle HTTP connections.
async fn memory(
    report: &mut Report,
    dir: &Path,
    u: &Upstream,
    broker: (u32, &str),
    n: usize,
) -> Result<(), String> {
    let users = &u.tokens[LATENCY_USERS..];
    let direct = rss_points(u.pid, n, 1, |i| {
        let route = token_route(u.realtime_url.clone(), &users[i], u.authority());
        async move { route.open().await }
    })
    .await?;
    let (pid, addr) = broker;
    let url = format!("ws://{addr}/appsync/oidc/realtime");
    let ws = rss_points(pid, n, 2, |i| {
        let route = token_route(url.clone(), &users[i], addr);
        async move { route.open().await }
    })
    .await?;
    let port = util::free_port();
    let mut fresh = spawn_broker(dir, port, "broker-http.log")?;
    let addr = format!("127.0.0.1:{port}");
    let http = async {
        wait_ready(&addr, &users[0]).await?;
        rss_points(fresh.id(), n, 1, |_| idle_http(&addr, &users[0])).await
    }
    .await;
    util::terminate(&mut fresh, Duration::from_secs(25));
    report_memory(report, &ws, &direct, &http?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The row

/// Waits for the broker at `addr` to serve credentials.
async fn wait_ready(addr: &str, token: &str) -> Result<(), String> {
    let url = format!("http://{addr}/v1/credentials");
    util::wait_for_200(
        &util::client(),
        &url,
        token,
        Instant::now(),
        Duration::from_secs(60),
    )
    .await
    .map(|_| ())
    .ok_or_else(|| format!("credbroker at {addr} did not serve credentials within 60 s"))
}

/// Both phases against the broker `pid` listening on `port`.
async fn phases(
    options: &Options,
    report: &mut Report,
    dir: &Path,
    u: &Upstream,
    (pid, port): (u32, u16),
) -> Result<(), String> {
    let client = util::client();
    let broker = format!("127.0.0.1:{port}");
    wait_ready(&broker, &u.tokens[0]).await?;
    let events = options.realtime_events;
    let oidc = latency_oidc(&client, u, &broker, events).await?;
    report_latency(report, "OIDC", &oidc);
    let iam = latency_iam(&client, u, &broker, events).await?;
    report_latency(report, "IAM", &iam);
    let n = options.realtime_connections;
    memory(report, dir, u, (pid, &broker), n).await
}

pub async fn run(options: &Options, report: &mut Report) {
    let n = options.realtime_connections;
    // The most in one process: 2n (the broker's, and the emulator's once the broker's n are
    // upstream).
    if let Err(e) = ensure_open_files(2 * n as u64 + 512) {
        report.note(format!("real-time figures skipped: {e}"));
        return;
    }
    let dir = util::tempdir("realtime");
    let UpstreamChild {
        child: mut upstream,
        info: u,
    } = match spawn_upstream(&dir, n + LATENCY_USERS) {
        Ok(u) => u,
        Err(e) => {
            report.note(format!("real-time figures skipped: {e}"));
            return;
        }
    };
    util::write(&dir, "credbroker.toml", broker_toml(&u, 2 * n).as_bytes());
    let port = util::free_port();
    let outcome = match spawn_broker(&dir, port, "broker.log") {
        Ok(mut broker) => {
            let outcome = phases(options, report, &dir, &u, (broker.id(), port)).await;
            util::terminate(&mut broker, Duration::from_secs(25));
            outcome
        }
        Err(e) => Err(e),
    };
    util::terminate(&mut upstream, Duration::from_secs(10));
    match outcome {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(e) => report.note(format!("real-time: {e} (logs kept in {})", dir.display())),
    }
}
