//! Assembly: a [`Config`] (and [`Overrides`]) → the core rooms, the broker, the main
//! listener's router and the configured identities. Binds nothing; background work is spawned
//! only onto the [`Background`] tracker it is given, so a caller decides when it runs and stops.

use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Overrides;
use crate::broker::{Broker, Configured, ConfiguredIdentity, SessionRefresh, Settings};
use crate::clock;
use crate::cognito::SdkCognito;
use crate::config::{Config, DEFAULT_REFRESH_FRACTION, IdentityConfig, SourceConfig};
use crate::identity::IdentityCache;
use crate::metrics::Metrics;
use crate::oidc::Validator;
use crate::readiness::{CognitoWatch, Readiness, Watched};
use crate::server::{self, container};
use crate::shared::SharedTier;
use crate::sources::file::TokenFileSource;
use crate::sources::refresh::{FileStore, HttpTokenEndpoint, RefreshTokenSource, TokenEndpoint};
use crate::sources::{IdentitySource, SourceDriver};

/// Where background work runs (key maintenance, the renewal scheduler, identity sources,
/// refresh-token sessions) and the token that stops it.
#[derive(Debug, Clone, Default)]
pub(super) struct Background {
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
}

/// The core rooms and the broker over them.
pub(super) struct Core {
    pub validator: Arc<Validator>,
    pub identities: IdentityCache,
    pub readiness: Arc<Readiness>,
    pub broker: Arc<Broker>,
    pub token_endpoint: Arc<dyn TokenEndpoint>,
}

/// Builds the validator (keys not loaded yet), the identity cache, readiness and the broker.
pub(super) fn core(config: &Config, overrides: Overrides, background: &Background) -> Core {
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
    let api = overrides
        .cognito
        .unwrap_or_else(|| Arc::new(SdkCognito::new(&config.cognito)));
    let cognito_watch = Arc::new(CognitoWatch::new(clock.clone()));
    let tier = config.shared.as_ref().and_then(|shared| {
        SharedTier::new(shared, metrics.clone())
            .inspect_err(|e| tracing::error!(error = %e, "fleet mode off: the shared tier failed"))
            .ok()
            .map(Arc::new)
    });
    let identities = IdentityCache::from_config_shared(
        Arc::new(Watched::new(api.clone(), cognito_watch.clone())),
        config,
        clock.clone(),
        metrics.clone(),
        tier,
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
    let token_endpoint = overrides
        .token_endpoint
        .unwrap_or_else(|| Arc::new(HttpTokenEndpoint::new(http, config.tokens.oidc_timeout)));
    let broker = Arc::new(
        Broker::new(
            validator.clone(),
            identities.clone(),
            metrics,
            clock,
            Settings::from_config(&config.server),
        )
        .with_sessions(&config.sessions)
        .with_session_refresh(SessionRefresh {
            endpoint: token_endpoint.clone(),
            refresh_fraction: DEFAULT_REFRESH_FRACTION,
            keepalive: config.cache.idle_timeout / 2,
            first_redemption_wait: config.server.request_timeout / 2,
            tasks: background.tasks.clone(),
            stop: background.stop.clone(),
        }),
    );
    Core {
        validator,
        identities,
        readiness,
        broker,
        token_endpoint,
    }
}

/// The main listener's routes: credentials, AppSync (GraphQL and real time), sessions.
/// Real-time relays run on `listeners` and close when `shutdown` is cancelled.
pub(super) fn main_router(
    broker: &Arc<Broker>,
    config: &Config,
    listeners: &TaskTracker,
    shutdown: &CancellationToken,
) -> Router {
    let lifecycle = server::realtime::Lifecycle {
        shutdown: shutdown.clone(),
        tasks: listeners.clone(),
    };
    container::router(broker.clone())
        .merge(server::appsync::router(broker.clone(), &config.appsync))
        .merge(server::realtime::router(
            broker.clone(),
            &config.appsync,
            lifecycle,
        ))
        .merge(server::sessions::router(broker.clone()))
}

/// The configured identities (`[identities.*]`), one source driver each, spawned onto
/// `background`.
pub(super) fn configured(config: &Config, core: &Core, background: &Background) -> Configured {
    let mut configured = Configured::default();
    for ic in &config.identities {
        let Some(provider) = core
            .validator
            .providers()
            .iter()
            .find(|p| p.config.name == ic.provider)
            .cloned()
        else {
            continue; // configuration validation guarantees it exists
        };
        let driver = SourceDriver::new(
            &ic.name,
            source(ic, &core.token_endpoint),
            provider,
            core.validator.clone(),
            core.identities.clone(),
            ic.role.as_deref(),
            core.broker.clock().clone(),
            config.cache.idle_timeout / 2,
        );
        configured.insert(ConfiguredIdentity::new(
            &ic.name,
            ic.role.as_deref(),
            driver.subscribe(),
        ));
        background.tasks.spawn(driver.run(background.stop.clone()));
    }
    configured
}

/// The identity source `[identities.<name>]` configures.
fn source(ic: &IdentityConfig, token_endpoint: &Arc<dyn TokenEndpoint>) -> Arc<dyn IdentitySource> {
    match &ic.source {
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
    }
}
