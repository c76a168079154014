//! Assembly and lifecycle.
//!
//! Owns: building the broker from a [`Config`], binding its listeners, the background tasks
//! (key maintenance, refresh scheduler, identity sources, refresh-token sessions) and their
//! orderly shutdown.
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

use crate::broker::Broker;
use crate::broker::{Configured, ConfiguredIdentity, SessionRefresh};
use crate::clock::{self, SharedClock};
use crate::cognito::{CognitoApi, Exchanger, RetryPolicy, SdkCognito};
use crate::config::{Config, SourceConfig};
use crate::identity::IdentityCache;
use crate::metrics::Metrics;
use crate::oidc::Validator;
use crate::readiness::{CognitoWatch, Readiness, Watched};
use crate::server::{self, HostPolicy, Limits, ListenerOptions, admin, container, imds};
use crate::sources::file::TokenFileSource;
use crate::sources::refresh::{FileStore, HttpTokenEndpoint, RefreshTokenSource, TokenEndpoint};
use crate::sources::{IdentitySource, SourceDriver};

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

/// Builds and starts a broker.
pub async fn start(config: Config, overrides: Overrides) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let clock = overrides.clock.unwrap_or_else(clock::system);
    let provider_names: Vec<String> = config.providers.iter().map(|p| p.name.clone()).collect();
    let metrics = Metrics::new(&provider_names);
    let http = crate::http::client(config.tokens.oidc_timeout);

    let validator = Arc::new(Validator::new(
        &config.providers,
        &config.tokens,
        http.clone(),
        clock.clone(),
        metrics.clone(),
    ));
    validator.load_all().await;

    let api = overrides
        .cognito
        .unwrap_or_else(|| Arc::new(SdkCognito::new(&config.cognito)));
    let cognito_watch = Arc::new(CognitoWatch::new(clock.clone()));
    let exchanger = Exchanger::new(
        Arc::new(Watched::new(api.clone(), cognito_watch.clone())),
        &config.cognito.identity_pool_id,
        RetryPolicy::from_config(&config.cognito),
        metrics.clone(),
    );
    let identities = IdentityCache::new(
        exchanger,
        &config.cache,
        &config.cognito,
        config.tokens.min_token_validity,
        clock.clone(),
        metrics.clone(),
    );
    let readiness = Arc::new(Readiness::new(
        validator.clone(),
        identities.clone(),
        cognito_watch,
        api,
        &config.cognito.identity_pool_id,
        &config.admin,
        clock.clone(),
        metrics.clone(),
    ));
    let shutdown = CancellationToken::new();
    let background_stop = CancellationToken::new();
    let listeners = TaskTracker::new();
    let background = TaskTracker::new();
    let token_endpoint = overrides.token_endpoint.unwrap_or_else(|| {
        Arc::new(HttpTokenEndpoint::new(
            http.clone(),
            config.tokens.oidc_timeout,
        ))
    });
    let broker = Arc::new(
        Broker::new(
            validator.clone(),
            identities.clone(),
            metrics,
            clock,
            crate::broker::Settings::from_config(&config.server),
        )
        .with_sessions(&config.sessions)
        .with_session_refresh(SessionRefresh {
            endpoint: token_endpoint.clone(),
            refresh_fraction: crate::config::DEFAULT_REFRESH_FRACTION,
            keepalive: config.cache.idle_timeout / 2,
            first_redemption_wait: config.server.request_timeout / 2,
            tasks: background.clone(),
            stop: background_stop.clone(),
        }),
    );

    let addr = config.server.listen;
    let listener = server::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let container_addr = listener.local_addr().unwrap_or(addr);
    // Bound before anything is spawned, so a failure leaves nothing running.
    let imds_listener = match &config.imds {
        Some(c) => Some(
            server::bind(c.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: c.listen,
                    source,
                })?,
        ),
        None => None,
    };
    let admin_listener =
        match config.admin.enabled {
            true => Some(server::bind(config.admin.listen).await.map_err(|source| {
                StartError::Bind {
                    addr: config.admin.listen,
                    source,
                }
            })?),
            false => None,
        };

    listeners.spawn(server::serve(
        listener,
        container::router(broker.clone())
            .merge(server::appsync::router(broker.clone(), &config.appsync))
            .merge(server::sessions::router(broker.clone())),
        ListenerOptions {
            name: "main",
            limits: Limits::from_config(&config.server),
            hosts: Some(Arc::new(HostPolicy::new(
                &config.server.allowed_hosts,
                container_addr,
                "server.allowed_hosts",
            ))),
            metrics: Some(broker.metrics.clone()),
        },
        shutdown.clone(),
    ));
    let grpc = match crate::grpc::start(&config, broker.clone(), shutdown.clone(), &listeners).await
    {
        Ok(addrs) => addrs,
        Err(e) => {
            shutdown.cancel();
            return Err(e.into());
        }
    };
    background.spawn(validator.clone().maintain(background_stop.clone()));
    background.spawn(identities.clone().run_scheduler(background_stop.clone()));

    // The admin listener has its own shutdown: it answers "shutting down" during the drain.
    let admin_shutdown = CancellationToken::new();
    let admin_tasks = TaskTracker::new();
    let mut admin_addr = None;
    if let Some(listener) = admin_listener {
        let addr = listener.local_addr().unwrap_or(config.admin.listen);
        admin_addr = Some(addr);
        admin_tasks.spawn(server::serve(
            listener,
            admin::router(broker.clone(), readiness.clone()),
            ListenerOptions {
                name: "admin",
                limits: Limits::from_config(&config.server),
                // Kubelet probes and Prometheus send the pod IP; it serves no credentials.
                hosts: None,
                metrics: Some(broker.metrics.clone()),
            },
            admin_shutdown.clone(),
        ));
        tracing::info!(
            listen = %addr,
            metrics = %format!("http://{addr}{}", admin::METRICS_PATH),
            "admin listener is serving"
        );
    }
    admin_tasks.close();

    // Configured identities: one source driver each, warmed before start returns.
    let mut configured = Configured::default();
    for ic in &config.identities {
        let Some(provider) = validator
            .providers()
            .iter()
            .find(|p| p.config.name == ic.provider)
            .cloned()
        else {
            continue; // configuration validation guarantees it exists
        };
        let source: Arc<dyn IdentitySource> = match &ic.source {
            SourceConfig::IdTokenFile {
                path,
                poll_interval,
            } => Arc::new(TokenFileSource::new(path, *poll_interval)),
            SourceConfig::RefreshToken {
                path,
                client_id,
                client_secret,
                auth,
                refresh_fraction,
            } => Arc::new(RefreshTokenSource::new(
                token_endpoint.clone(),
                client_id,
                client_secret.clone(),
                *auth,
                Arc::new(FileStore::new(path)),
                *refresh_fraction,
            )),
        };
        let driver = SourceDriver::new(
            &ic.name,
            source,
            provider,
            validator.clone(),
            identities.clone(),
            ic.role.as_deref(),
            broker.clock().clone(),
            config.cache.idle_timeout / 2,
        );
        configured.insert(ConfiguredIdentity::new(
            &ic.name,
            ic.role.as_deref(),
            driver.subscribe(),
        ));
        background.spawn(driver.run(background_stop.clone()));
    }
    let configured = Arc::new(configured);
    futures_util::future::join_all(
        configured
            .iter()
            .map(|c| c.ready(config.server.request_timeout)),
    )
    .await;

    let mut imds_addr = None;
    if let Some(imds_config) = &config.imds
        && let Some(identity) = configured.get(&imds_config.identity)
        && let Some(listener) = imds_listener
    {
        let addr = imds_config.listen;
        let bound = listener.local_addr().unwrap_or(addr);
        imds_addr = Some(bound);
        let hops = imds_config.hop_limit;
        listeners.spawn(server::serve_with(
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
            },
            shutdown.clone(),
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
    }
    listeners.close();
    background.close();

    tracing::info!(
        listen = %container_addr,
        grpc = ?grpc.tcp,
        grpc_socket = ?grpc.unix,
        providers = ?provider_names,
        identity_pool_id = %config.cognito.identity_pool_id,
        "credbroker is serving"
    );
    Ok(Running {
        container_addr,
        broker,
        imds_addr,
        configured,
        grpc,
        admin_addr,
        readiness,
        admin_shutdown,
        admin_listener: admin_tasks,
        config,
        shutdown,
        listeners,
        background,
        background_stop,
    })
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
