//! HTTP listeners.
//!
//! Owns: the accept loop shared by every HTTP surface ([`serve`]) and the JSON error replies
//! ([`error_response`]).
//!
//! Promises:
//! - request heads larger than `server.max_header_bytes` are answered 431 by hyper without
//!   reaching a handler; a client has `server.header_read_timeout` to send its head;
//! - at most `server.max_connections` connections are served at once (the rest wait in the
//!   kernel's backlog);
//! - on shutdown the listener closes at once, in-flight requests complete, idle keep-alive
//!   connections are closed, and [`serve`] returns when every connection is done;
//! - errors are always a non-200 status with `{"Code","Message"}` (a 200 carrying only
//!   Code/Message crashes botocore), plus `Retry-After` when retrying helps.

pub mod admin;
pub mod appsync;
pub mod container;
pub mod imds;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::broker::ErrorReply;

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

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `router` on `listener` until `shutdown`, then drains. See the module docs.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    serve_with(listener, router, limits, shutdown, |_| {}).await;
}

/// [`serve`], calling `on_accept` on each accepted connection before serving it (socket
/// options such as the IMDS hop limit).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    on_accept: impl Fn(&tokio::net::TcpStream) + Send + 'static,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
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
        let _ = stream.set_nodelay(true);
        on_accept(&stream);
        let service = TowerToHyperService::new(router.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A JSON error response: `{"Code","Message"}` with the reply's status and `Retry-After`.
pub fn error_response(reply: &ErrorReply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "Code": reply.code, "Message": reply.message }).to_string();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = reply.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
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
