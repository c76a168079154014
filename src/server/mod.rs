//! HTTP listeners.
//!
//! Owns: the accept loop shared by every HTTP surface ([`serve`]) and the JSON error replies
//! ([`error_response`]).
//!
//! Promises:
//! - request heads larger than `server.max_header_bytes` are answered 431 by hyper without
//!   reaching a handler; a client has `server.header_read_timeout` to send each request head;
//! - a WebSocket upgrade (AppSync real time, [`realtime`]) hands its socket to its relay and
//!   leaves this accounting once upgraded: real-time connections have their own limits;
//! - at most `server.max_connections` connections are open at once. When all are taken, a new
//!   connection takes the slot of the connection that has waited longest without a complete
//!   request (see [`conn`]): a client that has sent its request never waits behind ones that
//!   have not. When every connection is serving a request, new ones wait in the kernel's backlog;
//! - on shutdown the listener closes at once; connections with nothing of a request received
//!   are closed; every request already received (even partly) is answered, with
//!   `Connection: close`; [`serve`] returns when every connection is done;
//! - listeners given a [`HostPolicy`] refuse other `Host`s with 403 `HostNotAllowed` before
//!   routing;
//! - errors are always a non-200 status with `{"Code","Message"}` (a 200 carrying only
//!   Code/Message crashes botocore), plus `Retry-After` when retrying helps.

pub mod admin;
pub mod appsync;
mod conn;
pub mod container;
mod host;
pub mod imds;
pub mod realtime;
pub mod sessions;

pub use conn::{DirectAnswer, DirectFuture, DirectRoute};
pub use host::HostPolicy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::ErrorReply;
use crate::metrics::Metrics;
use conn::{ConnService, ListenerShared, Slots, TrackedIo};

/// Connection handling limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time to receive a request head.
    pub header_read_timeout: Duration,
    /// Concurrent connections.
    pub max_connections: usize,
}

impl Limits {
    /// The limits configured for the main listener.
    pub fn from_config(c: &crate::config::ServerConfig) -> Self {
        Self {
            max_header_bytes: c.max_header_bytes,
            header_read_timeout: c.header_read_timeout,
            max_connections: c.max_connections,
        }
    }
}

/// How one listener treats its connections and requests.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// The `listener` label of its metrics (`main`, `imds`, `admin`).
    pub name: &'static str,
    /// Connection limits.
    pub limits: Limits,
    /// The `Host` check; `None` answers any `Host` (the admin listener: probes use pod IPs).
    pub hosts: Option<Arc<HostPolicy>>,
    /// Where connection and Host-refusal counts go.
    pub metrics: Option<Metrics>,
    /// A path answered before the router ([`DirectRoute`]).
    pub direct: Option<DirectRoute>,
}

/// The listen backlog: connections the kernel completes before they are accepted. Deeper than
/// tokio's 1,024 so that a burst of reconnects (clients being shed reconnect at once) does not
/// overflow it: a SYN dropped there costs the client TCP's 1 s retransmission timeout. The
/// kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As TcpListener::bind does: a restarted daemon can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `router` on `listener` until `shutdown`, then drains. See the module docs.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ListenerOptions,
    shutdown: CancellationToken,
) {
    serve_with(listener, router, options, shutdown, |_| {}).await;
}

/// [`serve`], calling `on_accept` on each accepted connection before serving it (socket
/// options such as the IMDS hop limit).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    options: ListenerOptions,
    shutdown: CancellationToken,
    on_accept: impl Fn(&tokio::net::TcpStream) + Send + 'static,
) {
    let limits = options.limits;
    let shared = Arc::new(ListenerShared {
        router,
        direct: options.direct,
        hosts: options.hosts,
        name: options.name,
        metrics: options.metrics,
    });
    let slots = Slots::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tasks = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(permit) = slot(&permits, &slots, &shared, &shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        on_accept(&stream);
        let stream = Arc::new(stream);
        let conn = slots.open(stream.clone(), permit);
        let service = ConnService {
            shared: shared.clone(),
            conn: conn.clone(),
        };
        // With upgrades: a WebSocket upgrade (AppSync real time) hands the socket over to its
        // relay, and the connection's slot is freed once it has.
        let connection = builder
            .serve_connection(TokioIo::new(TrackedIo::new(stream, conn.clone())), service)
            .with_upgrades();
        let (slots, shared) = (slots.clone(), shared.clone());
        if let Some(m) = &shared.metrics {
            m.http_connections.with_label_values(&[shared.name]).inc();
        }
        tasks.spawn(async move {
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                },
                // Shed, or idle at shutdown: nothing is owed, close it.
                () = conn.close_requested() => {}
            }
            slots.closed(&conn);
            if let Some(m) = &shared.metrics {
                m.http_connections.with_label_values(&[shared.name]).dec();
            }
        });
    }
    drop(listener);
    slots.drain();
    tasks.close();
    tasks.wait().await;
}

/// A connection slot: a free one, else the slot of the connection that has waited longest
/// without a complete request (taken over at once, while that connection closes), else the
/// first slot a finished connection frees. `None` on shutdown.
async fn slot(
    permits: &Arc<Semaphore>,
    slots: &Slots,
    shared: &ListenerShared,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    loop {
        if let Ok(p) = permits.clone().try_acquire_owned() {
            return Some(p);
        }
        if let Some(slot) = slots.shed_longest_waiting() {
            if let Some(m) = &shared.metrics {
                m.http_connections_shed
                    .with_label_values(&[shared.name])
                    .inc();
            }
            tracing::debug!(
                listener = shared.name,
                "all connection slots taken: closed the connection waiting longest without a \
                 complete request"
            );
            return Some(slot);
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            p = permits.clone().acquire_owned() => return p.ok(),
            // Every connection was serving: one that finishes its response may be shed.
            () = slots.someone_waiting() => {}
        }
    }
}

/// A JSON error response: `{"Code","Message"}` with the reply's status and `Retry-After`.
pub fn error_response(reply: &ErrorReply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "Code": reply.code, "Message": reply.message }).to_string();
    let mut response = json_no_store((status, body).into_response());
    let headers = response.headers_mut();
    if let Some(secs) = reply.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// `response` marked as JSON that no cache may keep (every answer carrying credentials or a
/// refusal).
pub(crate) fn json_no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 405 with `Allow`, in the JSON shape (axum's own 405 has an empty body).
pub fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = client_error(
        405,
        "MethodNotAllowed",
        format!("this path answers {allow} only"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A plain client error (not from the broker).
pub fn client_error(status: u16, code: &'static str, message: impl Into<String>) -> Response {
    error_response(&ErrorReply {
        status,
        code,
        message: message.into(),
        retry_after: None,
    })
}
