//! The gRPC API (`proto/credbroker/v1/broker.proto`), served with tonic.
//!
//! Owns: the `credbroker.v1.Broker` and `credbroker.v1.Admin` services, `grpc.health.v1`,
//! server reflection (v1 and v1alpha), and their transports (TCP on loopback, a Unix socket).
//!
//! Promises:
//! - failures carry the same stable codes as the HTTP surface ([`status_of`]): the status
//!   message starts with `<Code>: `, the code is also in the `credbroker-code` metadata, and
//!   retryable failures carry `grpc-retry-pushback-ms` (and `retry-after`, seconds);
//! - request messages over `grpc.max_message_bytes` are refused with RESOURCE_EXHAUSTED
//!   before any handler runs, and the server keeps serving;
//! - health (`""` and `credbroker.v1.Broker`) is NOT_SERVING until every provider's keys are
//!   loaded, then SERVING; NOT_SERVING again on shutdown;
//! - on shutdown, open watch streams end at once with UNAVAILABLE (`ShuttingDown`) so the drain
//!   is not held up by streams that never end;
//! - the Admin service exists only when `grpc.admin_token_file` is set, and answers only calls
//!   with `authorization: Bearer <that token>` (compared in constant time);
//! - on the Unix socket, connections from user ids outside `grpc.allowed_uids` (when set) are
//!   closed before any request is read;
//! - every credential set handed out is recorded through [`Broker::handed_out`] on
//!   [`Surface::Grpc`] (metrics and the audit line); requests are counted in
//!   `credbroker_requests_total{surface="grpc"}` with the HTTP-equivalent status. Tokens,
//!   session handles and secret keys are never logged; generated message types print them as
//!   `** redacted **`.

mod admin;
mod service;
mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::broker::{Broker, ErrorReply};
use crate::config::{Config, GrpcConfig};
use crate::secret::{REDACTED, SecretString};

pub use admin::AdminService;
pub use service::{BrokerService, Settings};

/// Code generated from `proto/credbroker/v1/broker.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("credbroker.v1");

    /// The encoded descriptor set of the API and its imports (for reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/credbroker_v1_descriptor.bin"));
}

/// The fully qualified name of the broker service (also its health-check name).
pub const BROKER_SERVICE: &str = "credbroker.v1.Broker";
/// The fully qualified name of the admin service.
pub const ADMIN_SERVICE: &str = "credbroker.v1.Admin";

/// Where gRPC is served.
#[derive(Debug, Clone, Default)]
pub struct GrpcAddrs {
    /// The TCP address, when configured.
    pub tcp: Option<SocketAddr>,
    /// The Unix socket, when configured.
    pub unix: Option<PathBuf>,
}

/// Why gRPC could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcStartError {
    /// The TCP listener could not be bound.
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Unix socket could not be created.
    #[error("cannot create the gRPC socket {path}: {message}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The admin token file could not be read or is unusable.
    #[error("grpc.admin_token_file {path}: {message}")]
    AdminToken {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Binds the configured transports and spawns their servers (and the health updater) on
/// `tasks`; they stop when `shutdown` is cancelled.
pub async fn start(
    config: &Config,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<GrpcAddrs, GrpcStartError> {
    let grpc = &config.grpc;
    if !grpc.enabled() {
        return Ok(GrpcAddrs::default());
    }
    let admin_token = match &grpc.admin_token_file {
        Some(path) => Some(admin::read_token(path)?),
        None => None,
    };
    let (routes, reporter) = routes(config, &broker, admin_token, &shutdown).await;
    let mut addrs = GrpcAddrs::default();
    if let Some(addr) = grpc.listen {
        addrs.tcp = Some(serve_tcp(addr, routes.clone(), &shutdown, tasks).await?);
    }
    if let Some(path) = &grpc.unix_socket {
        serve_unix(grpc, path, routes, &shutdown, tasks)?;
        addrs.unix = Some(path.clone());
    }
    tasks.spawn(track_readiness(broker, reporter, shutdown));
    Ok(addrs)
}

/// Every service, each refusing request messages over `grpc.max_message_bytes`: the broker,
/// health (NOT_SERVING until [`track_readiness`] says otherwise: the reporter), reflection,
/// and Admin when it has a token.
async fn routes(
    config: &Config,
    broker: &Arc<Broker>,
    admin_token: Option<SecretString>,
    shutdown: &CancellationToken,
) -> (tonic::service::Routes, tonic_health::server::HealthReporter) {
    let limit = config.grpc.max_message_bytes;
    let broker_service = BrokerService::new(
        broker.clone(),
        service::Settings {
            request_timeout: config.server.request_timeout,
            max_watchers: config.grpc.max_watchers,
            touch_interval: (config.cache.idle_timeout / 2).min(Duration::from_secs(300)),
            min_token_validity: config.tokens.min_token_validity,
        },
        shutdown.clone(),
    );
    let watchers = broker_service.watchers();

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(BROKER_SERVICE, tonic_health::ServingStatus::NotServing)
        .await;
    let routes = tonic::service::Routes::new(
        proto::broker_server::BrokerServer::new(broker_service).max_decoding_message_size(limit),
    )
    .add_service(health.max_decoding_message_size(limit));
    let mut routes = with_reflection(routes, admin_token.is_some(), limit);
    if let Some(token) = admin_token {
        let admin =
            proto::admin_server::AdminServer::new(AdminService::new(broker.clone(), watchers))
                .max_decoding_message_size(limit);
        routes = routes.add_service(tonic::service::interceptor::InterceptedService::new(
            admin,
            admin::Auth::new(token),
        ));
    }
    (routes, reporter)
}

/// Adds server reflection (v1 and v1alpha) of the served API ([`served_descriptors`]).
fn with_reflection(
    routes: tonic::service::Routes,
    admin: bool,
    limit: usize,
) -> tonic::service::Routes {
    let api = served_descriptors(admin);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(api.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => routes
            .add_service(v1.max_decoding_message_size(limit))
            .add_service(v1alpha.max_decoding_message_size(limit)),
        (Err(e), _) | (_, Err(e)) => {
            // The descriptor set is compiled in; this cannot fail unless it is corrupt.
            tracing::error!(error = %e, "gRPC reflection is unavailable");
            routes
        }
    }
}

/// Binds `addr` and serves `routes` on it until `shutdown`; the bound address.
async fn serve_tcp(
    addr: SocketAddr,
    routes: tonic::service::Routes,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<SocketAddr, GrpcStartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GrpcStartError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let served = server()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the gRPC TCP server failed");
        }
    });
    Ok(bound)
}

/// Creates the Unix socket at `path` (`grpc.unix_socket_mode`, peers limited to
/// `grpc.allowed_uids`) and serves `routes` on it until `shutdown`, then removes it.
fn serve_unix(
    grpc: &GrpcConfig,
    path: &std::path::Path,
    routes: tonic::service::Routes,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), GrpcStartError> {
    let listener = transport::bind_unix(path, grpc.unix_socket_mode)?;
    let incoming = transport::incoming(listener, grpc.allowed_uids.clone());
    let stop = shutdown.clone();
    let path = path.to_owned();
    tasks.spawn(async move {
        let served = server()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the gRPC Unix-socket server failed");
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

/// The API's descriptors as reflection shows them: without the Admin service when it is off.
fn served_descriptors(admin: bool) -> prost_types::FileDescriptorSet {
    let mut set: prost_types::FileDescriptorSet =
        prost::Message::decode(proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
    if !admin {
        for file in &mut set.file {
            file.service.retain(|s| s.name() != "Admin");
        }
    }
    set
}

type Layered = tower::layer::util::Stack<
    tower::util::MapResponseLayer<
        fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>,
    >,
    tower::layer::util::Identity,
>;

fn server() -> tonic::transport::Server<Layered> {
    tonic::transport::Server::builder()
        .http2_max_header_list_size(16 * 1024)
        .max_concurrent_streams(256)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted as fn(_) -> _,
        ))
}

/// tonic answers a request message over the decode limit with OUT_OF_RANGE; the gRPC spec
/// (and every other gRPC server) says RESOURCE_EXHAUSTED, which clients treat as a limit. The
/// status is in the headers (trailers-only answers) or in the trailers.
fn oversized_is_resource_exhausted(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    use http_body_util::BodyExt as _;
    fn fix(headers: &mut http::HeaderMap) {
        let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
        // The message is percent-encoded on the wire ("too%20large").
        let too_large = headers.get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            m.windows(9).any(|w| w == b"too large") || m.windows(11).any(|w| w == b"too%20large")
        });
        if out_of_range && too_large {
            headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        }
    }
    let (mut parts, body) = response.into_parts();
    fix(&mut parts.headers);
    let body = body.map_frame(|mut frame| {
        if let Some(trailers) = frame.trailers_mut() {
            fix(trailers);
        }
        frame
    });
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

/// Health follows readiness: SERVING once every provider's keys are loaded.
async fn track_readiness(
    broker: Arc<Broker>,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let mut serving = false;
    loop {
        let ready = broker.keys_loaded();
        if ready != serving {
            serving = ready;
            let status = if ready { Serving } else { NotServing };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(BROKER_SERVICE, status).await;
            tracing::debug!(serving, "gRPC health changed");
        }
        let pause = if serving {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    reporter.set_service_status("", NotServing).await;
    reporter
        .set_service_status(BROKER_SERVICE, NotServing)
        .await;
}

/// The gRPC form of a broker failure (see the module docs).
pub fn status_of(reply: &ErrorReply) -> Status {
    let code = match (reply.code, reply.status) {
        ("RefreshTokenUnsupported", _) => Code::Unimplemented,
        (_, 400) => Code::InvalidArgument,
        (_, 401) => Code::Unauthenticated,
        (_, 403) => Code::PermissionDenied,
        (_, 404) => Code::NotFound,
        (_, 429) => Code::ResourceExhausted,
        (_, 503) => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut status = Status::new(code, format!("{}: {}", reply.code, reply.message));
    let meta = status.metadata_mut();
    meta.insert("credbroker-code", MetadataValue::from_static(reply.code));
    if let Some(secs) = reply.retry_after {
        meta.insert(
            "grpc-retry-pushback-ms",
            MetadataValue::from(secs.saturating_mul(1000)),
        );
        meta.insert("retry-after", MetadataValue::from(secs));
    }
    status
}

/// A status with a stable code that does not come from the broker.
pub(crate) fn status(code: Code, stable: &'static str, message: impl std::fmt::Display) -> Status {
    status_with(code, stable, message, None)
}

fn status_with(
    code: Code,
    stable: &'static str,
    message: impl std::fmt::Display,
    retry_after: Option<u64>,
) -> Status {
    let mut s = Status::new(code, format!("{stable}: {message}"));
    s.metadata_mut()
        .insert("credbroker-code", MetadataValue::from_static(stable));
    if let Some(secs) = retry_after {
        s.metadata_mut().insert(
            "grpc-retry-pushback-ms",
            MetadataValue::from(secs.saturating_mul(1000)),
        );
    }
    s
}

/// The HTTP-equivalent status of a gRPC code (the `status` label of request metrics).
pub(crate) fn http_equivalent(code: Code) -> &'static str {
    match code {
        Code::Ok => "200",
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => "400",
        Code::Unauthenticated => "401",
        Code::PermissionDenied => "403",
        Code::NotFound => "404",
        Code::AlreadyExists | Code::Aborted => "409",
        Code::ResourceExhausted => "429",
        Code::Cancelled => "499",
        Code::Unimplemented => "501",
        Code::Unavailable => "503",
        Code::DeadlineExceeded => "504",
        _ => "500",
    }
}

fn redacted(s: &str) -> &'static str {
    if s.is_empty() { "" } else { REDACTED }
}

macro_rules! redacting_debug {
    ($ty:ty { $($plain:ident),* ; $($secret:ident),* }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($plain), &self.$plain))*
                    $(.field(stringify!($secret), &redacted_field(&self.$secret)))*
                    .finish()
            }
        }
    };
}

trait RedactedField {
    fn redacted(&self) -> &'static str;
}
impl RedactedField for String {
    fn redacted(&self) -> &'static str {
        redacted(self)
    }
}
impl RedactedField for Option<String> {
    fn redacted(&self) -> &'static str {
        self.as_deref().map_or("", redacted)
    }
}
fn redacted_field(v: &impl RedactedField) -> &'static str {
    v.redacted()
}

redacting_debug!(proto::ExchangeRequest { custom_role_arn, client_id; id_token, refresh_token });
redacting_debug!(proto::ExchangeResponse { credentials, session_expires_at; session });
redacting_debug!(proto::Credentials { access_key_id, expiration, identity_id; secret_access_key, session_token });
redacting_debug!(proto::UpdateTokenRequest { ; session, id_token });
redacting_debug!(proto::RevokeRequest { ; session });

impl std::fmt::Debug for proto::GetCredentialsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetCredentialsRequest")
            .field("auth", &self.auth)
            .finish()
    }
}

impl std::fmt::Debug for proto::get_credentials_request::Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Session(_) => f.write_str("Session(** redacted **)"),
            Self::IdToken(_) => f.write_str("IdToken(** redacted **)"),
        }
    }
}

/// Reads a secret string field of a request into a [`SecretString`] (and clears the field).
pub(crate) fn take_secret(field: &mut String) -> SecretString {
    SecretString::from(std::mem::take(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_with_secrets_print_redacted() {
        let creds = proto::Credentials {
            access_key_id: "ASIAPUBLIC".into(),
            secret_access_key: "very-secret-key".into(),
            session_token: "very-secret-session".into(),
            expiration: None,
            identity_id: "us-east-1:x".into(),
        };
        let exchange = proto::ExchangeRequest {
            id_token: "eyJsecret.token.sig".into(),
            refresh_token: Some("refresh-secret".into()),
            custom_role_arn: None,
            client_id: Some("public-client".into()),
        };
        let response = proto::ExchangeResponse {
            credentials: Some(creds.clone()),
            session: "cbs_secrethandle".into(),
            session_expires_at: None,
        };
        let get = proto::GetCredentialsRequest {
            auth: Some(proto::get_credentials_request::Auth::Session(
                "cbs_secrethandle".into(),
            )),
        };
        let text = format!("{creds:?} {exchange:?} {response:?} {get:?}");
        for secret in ["very-secret", "eyJsecret", "refresh-secret", "secrethandle"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(
            text.contains("ASIAPUBLIC") && text.contains(REDACTED),
            "{text}"
        );
    }

    #[test]
    fn broker_replies_map_to_grpc_codes_with_retry_hints() {
        let reply = |status, code: &'static str, retry_after| ErrorReply {
            status,
            code,
            message: "m".into(),
            retry_after,
        };
        for (status, code, expected) in [
            (401, "TokenExpired", Code::Unauthenticated),
            (403, "LoginRejected", Code::PermissionDenied),
            (429, "TooManyRequests", Code::ResourceExhausted),
            (503, "UpstreamUnavailable", Code::Unavailable),
            (400, "RefreshTokenUnsupported", Code::Unimplemented),
            (400, "MalformedRequest", Code::InvalidArgument),
            (502, "UpstreamError", Code::Internal),
        ] {
            let s = status_of(&reply(status, code, None));
            assert_eq!(s.code(), expected, "{code}");
            assert!(s.message().starts_with(&format!("{code}: ")));
            assert_eq!(s.metadata().get("credbroker-code").expect("code"), code);
        }
        let s = status_of(&reply(503, "UpstreamThrottled", Some(4)));
        assert_eq!(
            s.metadata()
                .get("grpc-retry-pushback-ms")
                .expect("pushback"),
            "4000"
        );
        assert_eq!(s.metadata().get("retry-after").expect("seconds"), "4");
    }
}
