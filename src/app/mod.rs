//! Assembly and lifecycle.
//!
//! Owns: building the broker from a [`Config`] (`app/assemble.rs`: pure wiring, binds
//! nothing), binding its listeners, the background tasks (key maintenance, the renewal
//! scheduler, identity sources, refresh-token sessions) and their orderly shutdown (here).
//!
//! Promises:
//! - [`start`] returns once listeners are bound and every provider's keys were loaded or failed
//!   to load within `tokens.oidc_timeout` (failed ones are retried in the background and answer
//!   503 meanwhile); tests bind port 0 and read the addresses from [`Running`];
//! - [`Running::stop`] (and [`run`] on its shutdown future) stops accepting at once, lets
//!   in-flight requests finish within `server.shutdown_grace`, stops background refresh, and
//!   returns; nothing keeps running afterwards;
//! - the admin listener (`[admin]`: metrics, probes) reports "shutting down" on `/readyz` from
//!   the moment the drain starts, keeps answering during it, and stops last.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, Configured, ConfiguredIdentity};
use crate::clock::SharedClock;
use crate::cognito::CognitoApi;
use crate::config::{Config, ImdsConfig};
use crate::readiness::Readiness;
use crate::server::{self, HostPolicy, Limits, ListenerOptions, admin, container, imds};
use crate::sources::refresh::TokenEndpoint;

mod assemble;

use assemble::{Background, Core};

/// Replacements for production dependencies (tests, the demo).
#[derive(Default)]
pub struct Overrides {
    /// The clock (default: the system clock).
    pub clock: Option<SharedClock>,
    /// The Cognito implementation (default: the AWS SDK client from `[cognito]`).
    pub cognito: Option<Arc<dyn CognitoApi>>,
    /// The OAuth token endpoint for refresh-token sources (default: HTTP to the provider's
    /// discovered `token_endpoint`).
    pub token_endpoint: Option<Arc<dyn TokenEndpoint>>,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC API could not start.
    #[error(transparent)]
    Grpc(#[from] crate::grpc::GrpcStartError),
}

/// A started broker.
pub struct Running {
    /// Where the container-credentials endpoint listens.
    pub container_addr: SocketAddr,
    /// The broker (for in-process inspection).
    pub broker: Arc<Broker>,
    /// Where the IMDSv2-compatible endpoint listens, when `[imds]` is configured.
    pub imds_addr: Option<SocketAddr>,
    /// The identities configured in `[identities.*]`.
    pub configured: Arc<Configured>,
    /// Where gRPC is served (empty when `[grpc]` configures no transport).
    pub grpc: crate::grpc::GrpcAddrs,
    /// Where the admin listener (metrics, probes) listens, when `[admin] enabled`.
    pub admin_addr: Option<SocketAddr>,
    /// What `/readyz` reports.
    pub readiness: Arc<Readiness>,
    admin_shutdown: CancellationToken,
    admin_listener: TaskTracker,
    config: Arc<Config>,
    shutdown: CancellationToken,
    listeners: TaskTracker,
    background: TaskTracker,
    background_stop: CancellationToken,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("container_addr", &self.container_addr)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

/// The listeners, bound before anything is spawned, so a failure leaves nothing running.
struct Bound {
    main: tokio::net::TcpListener,
    imds: Option<tokio::net::TcpListener>,
    admin: Option<tokio::net::TcpListener>,
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    server::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

async fn bind_all(config: &Config) -> Result<Bound, StartError> {
    let main = bind(config.server.listen).await?;
    let imds = match &config.imds {
        Some(c) => Some(bind(c.listen).await?),
        None => None,
    };
    let admin = match config.admin.enabled {
        true => Some(bind(config.admin.listen).await?),
        false => None,
    };
    Ok(Bound { main, imds, admin })
}

/// Builds and starts a broker.
pub async fn start(config: Config, overrides: Overrides) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let background = Background::default();
    let core = assemble::core(&config, overrides, &background);
    core.validator.load_all().await;
    let Core {
        validator,
        identities,
        readiness,
        broker,
        ..
    } = &core;
    let bound = bind_all(&config).await?;
    let shutdown = CancellationToken::new();
    let listeners = TaskTracker::new();

    let container_addr = serve_main(bound.main, &config, broker, &listeners, &shutdown);
    let grpc = match crate::grpc::start(&config, broker.clone(), shutdown.clone(), &listeners).await
    {
        Ok(addrs) => addrs,
        Err(e) => {
            shutdown.cancel();
            return Err(e.into());
        }
    };
    let stop = &background.stop;
    background
        .tasks
        .spawn(validator.clone().maintain(stop.clone()));
    background
        .tasks
        .spawn(identities.clone().run_scheduler(stop.clone()));

    // The admin listener has its own shutdown: it answers "shutting down" during the drain.
    let admin_shutdown = CancellationToken::new();
    let admin_tasks = TaskTracker::new();
    let admin_addr = bound
        .admin
        .map(|listener| serve_admin(listener, &config, &core, &admin_tasks, &admin_shutdown));
    admin_tasks.close();

    // Configured identities: one source driver each, warmed before start returns.
    let configured = Arc::new(assemble::configured(&config, &core, &background));
    futures_util::future::join_all(
        configured
            .iter()
            .map(|c| c.ready(config.server.request_timeout)),
    )
    .await;

    let imds_addr = match (&config.imds, bound.imds) {
        (Some(imds_config), Some(listener)) => {
            configured.get(&imds_config.identity).map(|identity| {
                serve_imds(
                    listener,
                    &config,
                    imds_config,
                    broker,
                    identity,
                    &listeners,
                    &shutdown,
                )
            })
        }
        _ => None,
    };
    listeners.close();
    background.tasks.close();

    serving(&config, container_addr, &grpc);
    Ok(Running {
        container_addr,
        broker: broker.clone(),
        imds_addr,
        configured,
        grpc,
        admin_addr,
        readiness: readiness.clone(),
        admin_shutdown,
        admin_listener: admin_tasks,
        config,
        shutdown,
        listeners,
        background: background.tasks,
        background_stop: background.stop,
    })
}

/// The line operators (and tests) wait for.
fn serving(config: &Config, listen: SocketAddr, grpc: &crate::grpc::GrpcAddrs) {
    tracing::info!(
        listen = %listen,
        grpc = ?grpc.tcp,
        grpc_socket = ?grpc.unix,
        providers = ?config.providers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        identity_pool_id = %config.cognito.identity_pool_id,
        "credbroker is serving"
    );
}

/// Serves the main listener (credentials, AppSync, sessions) until `stop`; returns its address.
fn serve_main(
    listener: tokio::net::TcpListener,
    config: &Config,
    broker: &Arc<Broker>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> SocketAddr {
    let addr = listener.local_addr().unwrap_or(config.server.listen);
    tasks.spawn(server::serve(
        listener,
        assemble::main_router(broker, config, tasks, stop),
        ListenerOptions {
            name: "main",
            limits: Limits::from_config(&config.server),
            hosts: Some(Arc::new(HostPolicy::new(
                &config.server.allowed_hosts,
                addr,
                "server.allowed_hosts",
            ))),
            metrics: Some(broker.metrics.clone()),
            direct: Some(container::direct_route(broker.clone())),
        },
        stop.clone(),
    ));
    addr
}

/// Serves the admin listener (metrics, probes) until `stop`; returns its address.
fn serve_admin(
    listener: tokio::net::TcpListener,
    config: &Config,
    core: &Core,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> SocketAddr {
    let addr = listener.local_addr().unwrap_or(config.admin.listen);
    tasks.spawn(server::serve(
        listener,
        admin::router(core.broker.clone(), core.readiness.clone()),
        ListenerOptions {
            name: "admin",
            limits: Limits::from_config(&config.server),
            // Kubelet probes and Prometheus send the pod IP; it serves no credentials.
            hosts: None,
            metrics: Some(core.broker.metrics.clone()),
            direct: None,
        },
        stop.clone(),
    ));
    tracing::info!(
        listen = %addr,
        metrics = %format!("http://{addr}{}", admin::METRICS_PATH),
        "admin listener is serving"
    );
    addr
}

/// Serves the IMDSv2-compatible endpoint for `identity` until `stop`; returns its address.
fn serve_imds(
    listener: tokio::net::TcpListener,
    config: &Config,
    imds_config: &ImdsConfig,
    broker: &Arc<Broker>,
    identity: Arc<ConfiguredIdentity>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> SocketAddr {
    let bound = listener.local_addr().unwrap_or(imds_config.listen);
    let hops = imds_config.hop_limit;
    tasks.spawn(server::serve_with(
        listener,
        imds::router(broker.clone(), identity, imds_config),
        ListenerOptions {
            name: "imds",
            limits: Limits::from_config(&config.server),
            hosts: Some(Arc::new(HostPolicy::new(
                &imds_config.allowed_hosts,
                bound,
                "imds.allowed_hosts",
            ))),
            metrics: Some(broker.metrics.clone()),
            direct: None,
        },
        stop.clone(),
        move |stream| {
            if let Err(e) = imds::apply_hop_limit(stream, hops) {
                tracing::warn!(error = %e, "cannot set the IMDS hop limit on a connection");
            }
        },
    ));
    tracing::info!(
        listen = %bound,
        identity = %imds_config.identity,
        role_name = %imds_config.role_name,
        "IMDSv2-compatible endpoint is serving"
    );
    bound
}

impl Running {
    /// The URL SDKs use (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
    pub fn credentials_url(&self) -> String {
        format!(
            "http://{}{}",
            self.container_addr,
            container::CREDENTIALS_PATH
        )
    }

    /// The IMDS endpoint for `AWS_EC2_METADATA_SERVICE_ENDPOINT`, when configured.
    pub fn imds_url(&self) -> Option<String> {
        self.imds_addr.map(|a| format!("http://{a}/"))
    }

    /// `http://ADDR/metrics` of the admin listener, when enabled.
    pub fn metrics_url(&self) -> Option<String> {
        self.admin_addr
            .map(|a| format!("http://{a}{}", admin::METRICS_PATH))
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops: no new connections, in-flight requests drain within `server.shutdown_grace`,
    /// background work stops. Returns whether the drain finished in time.
    pub async fn stop(self) -> bool {
        self.readiness.set_draining();
        self.shutdown.cancel();
        let grace = self.config.server.shutdown_grace;
        let drained = tokio::time::timeout(grace, self.listeners.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "requests still running after the grace period"
            );
        }
        self.background_stop.cancel();
        self.background.wait().await;
        self.admin_shutdown.cancel();
        self.admin_listener.wait().await;
        tracing::info!("credbroker stopped");
        drained
    }
}

/// Runs a broker until `shutdown` completes, then stops it.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let running = start(config, Overrides::default()).await?;
    shutdown.await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
