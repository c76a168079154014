//! # credbroker-emulators
//!
//! Emulators of the services credbroker talks to, as a crate of credbroker's workspace
//! (`emulators/`, package `credbroker-emulators`, library `credbroker_emulators`).
//!
//! Owns: an Auth0-shaped OpenID Connect issuer with a token endpoint ([`oidc::OidcIssuer`],
//! [`grants`]), an Amazon Cognito Identity service ([`cognito::CognitoEmulator`]) and an AWS
//! AppSync GraphQL API with its real-time (WebSocket subscriptions) endpoint
//! ([`appsync::AppSyncEmulator`]), plus the small HTTP server helper, time source ([`clock`])
//! and secret wrapper ([`secret`]) they share; and a guard that runs a real `redis-server` for
//! fleet-mode tests ([`redis_server::RedisServer`]).
//!
//! # What they are for
//!
//! No machine that builds or tests credbroker reaches AWS or Auth0. The emulators let the
//! integration tests, the benchmarks and `credbroker demo` / `credbroker emulators` exercise the
//! whole path — OIDC discovery, JWKS, ID-token validation, refresh-token redemption, `GetId`,
//! `GetCredentialsForIdentity`, AppSync — against real HTTP servers bound to the loopback
//! interface.
//!
//! # How it is used
//!
//! - This crate does **not** depend on credbroker: it speaks only the wire protocols (and the
//!   in-process calls [`cognito::CognitoEmulator::get_id`],
//!   [`cognito::CognitoEmulator::get_credentials_for_identity`] and
//!   [`oidc::OidcIssuer::redeem_refresh_token`]).
//! - credbroker depends on it through its `emulators` cargo feature (on by default). With it,
//!   credbroker compiles `demo`, the `emulators` subcommand, and its `emulated` module: the
//!   emulators as credbroker's in-process `CognitoApi` and `TokenEndpoint` (so paused-time tests
//!   need no sockets), and its clocks as emulator [`clock::Clock`]s. The daemon built with
//!   `--no-default-features` (the Docker image) contains none of this crate.
//! - credbroker's integration tests (`tests/it`) and benchmarks need the feature; this crate's
//!   own unit tests run with `cargo test --workspace`.
//!
//! # How faithful they are
//!
//! - The Cognito emulator speaks the AWS JSON 1.1 protocol closely enough that the unmodified
//!   `aws-sdk-cognitoidentity` client works against it with only its endpoint URL changed
//!   (unit-tested with the real SDK). Error `__type`s, HTTP statuses and messages are those real
//!   Cognito returns for the same mistakes, because the broker maps errors by them.
//! - It validates login tokens the way Cognito does for an OIDC provider: RS256 only, issuer
//!   against the `Logins` key, signature against the provider's published keys, audience (or
//!   `azp`) against the provider's client ids, and expiry against the injected clock. It does so
//!   with its own small JWT code (the private `jwt` module), independent of the broker's
//!   validator, so a bug in one is not silently mirrored by the other.
//! - The OIDC issuer mints tokens that look like Auth0's (trailing-slash issuer, loosely typed
//!   profile claims, `kid`s derived from the key) and publishes discovery and JWKS documents
//!   that parse with the `openidconnect` crate. Its [`oidc::TokenSpec`] can produce every kind
//!   of broken token the broker must reject.
//! - Time comes only from the injected [`clock::Clock`], so paused tokio time moves token and
//!   credential expiry together.
//!
//! # What they deliberately do not do
//!
//! - No TLS, no SigV4 verification of Cognito requests (its two operations are unsigned; the
//!   AppSync emulator does verify SigV4), no persistence: identities, credentials and todos live
//!   in memory for the emulator's lifetime.
//! - The issuer has no login UI, authorization endpoint or userinfo endpoint; the discovery
//!   document advertises them only because the OIDC specification requires them.
//! - The Cognito emulator models one identity pool with OIDC providers only: no unauthenticated
//!   identities, developer identities, role-mapping rules or identity merging across pools.
//! - Credentials are random strings; they are not accepted by anything except the emulators
//!   themselves (see [`cognito::CognitoEmulator::lookup_access_key`]).
//!
//! Every server binds `127.0.0.1:0` by default and stops on `shutdown()` or when the last clone
//! of its handle is dropped.

pub mod appsync;
pub mod clock;
pub mod cognito;
pub mod grants;
mod jwt;
pub mod oidc;
pub mod redis_server;
pub mod secret;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use tokio_util::sync::CancellationToken;

/// A running HTTP server. Clones share the server; it stops on [`ServerHandle::shutdown`] or when
/// the last clone is dropped.
#[derive(Clone)]
pub(crate) struct ServerHandle {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    local_addr: SocketAddr,
    /// Cancelled to ask the server to stop.
    cancel: CancellationToken,
    /// Cancelled by the server task once it has stopped accepting and drained its connections.
    stopped: CancellationToken,
}

impl Drop for ServerInner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.inner.local_addr)
            .field("shut_down", &self.inner.cancel.is_cancelled())
            .finish()
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Asks the server to stop: it stops accepting at once and closes connections as their
    /// in-flight requests finish. Idempotent.
    pub(crate) fn shutdown(&self) {
        self.inner.cancel.cancel();
    }

    /// Resolves once the server has stopped (after [`ServerHandle::shutdown`]).
    pub(crate) async fn stopped(&self) {
        self.inner.stopped.cancelled().await;
    }
}

/// Serves `router` on the already bound `listener` in a background task until shut down.
///
/// Taking a bound listener lets callers learn the port (to put it in URLs the router serves)
/// before the router is built. Must be called inside a tokio runtime.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
) -> std::io::Result<ServerHandle> {
    serve_counting(listener, router, Arc::new(AtomicU64::new(0)))
}

/// Like [`serve`], and counts accepted TCP connections in `connections` (so tests can prove
/// that a client reuses connections).
pub(crate) fn serve_counting(
    listener: tokio::net::TcpListener,
    router: Router,
    connections: Arc<AtomicU64>,
) -> std::io::Result<ServerHandle> {
    use axum::serve::ListenerExt as _;
    let local_addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let stopped = CancellationToken::new();
    let signal = cancel.clone().cancelled_owned();
    let done = stopped.clone();
    let listener = listener.tap_io(move |_| {
        connections.fetch_add(1, Ordering::Relaxed);
    });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::warn!(%local_addr, %error, "emulator server stopped with an error");
        }
        done.cancel();
    });
    Ok(ServerHandle {
        inner: Arc::new(ServerInner {
            local_addr,
            cancel,
            stopped,
        }),
    })
}

/// The default listen address of every emulator: loopback, any free port.
pub(crate) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Helpers shared by the emulators' tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::{HeaderMap, Method, Request, StatusCode};
    use http_body_util::{BodyExt as _, Full};

    use crate::clock::{Clock, SharedClock, from_unix_millis};

    /// A clock that moves only when told to.
    #[derive(Debug)]
    pub(crate) struct ManualClock(Mutex<SystemTime>);

    impl ManualClock {
        /// A clock reading `millis` after the epoch.
        pub(crate) fn at_millis(millis: u64) -> Arc<Self> {
            Arc::new(Self(Mutex::new(from_unix_millis(millis))))
        }

        /// Moves the clock forward.
        pub(crate) fn advance(&self, by: Duration) {
            *self.0.lock().expect("clock lock") += by;
        }

        /// As a [`SharedClock`].
        pub(crate) fn shared(self: &Arc<Self>) -> SharedClock {
            Arc::clone(self) as SharedClock
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            *self.0.lock().expect("clock lock")
        }
    }

    /// A response read whole.
    pub(crate) struct Reply {
        pub(crate) status: StatusCode,
        pub(crate) headers: HeaderMap,
        pub(crate) body: String,
    }

    impl Reply {
        /// A header as text ("" when absent).
        pub(crate) fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        }

        /// The body as JSON.
        pub(crate) fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).expect("JSON body")
        }
    }

    /// Sends one HTTP/1.1 request and reads the whole response.
    pub(crate) async fn send(
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("valid request");
        let response = client.request(request).await.expect("request succeeds");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::time::Duration;

    async fn hello_server() -> ServerHandle {
        let router = Router::new().route("/", get(|| async { "hello" }));
        let listener = tokio::net::TcpListener::bind(default_listen())
            .await
            .expect("bind loopback");
        serve(listener, router).expect("serve")
    }

    #[tokio::test]
    async fn serves_until_shutdown() {
        let server = hello_server().await;
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        tokio::net::TcpStream::connect(addr)
            .await
            .expect("server accepts while running");
        server.shutdown();
        tokio::time::timeout(Duration::from_secs(5), server.stopped())
            .await
            .expect("server stops after shutdown()");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn stops_when_last_clone_is_dropped() {
        let server = hello_server().await;
        let addr = server.local_addr();
        let stopped = server.inner.stopped.clone();
        let clone = server.clone();
        drop(server);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !stopped.is_cancelled(),
            "a remaining clone keeps it running"
        );
        drop(clone);
        tokio::time::timeout(Duration::from_secs(5), stopped.cancelled())
            .await
            .expect("server stops when the last handle is dropped");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
