//! AppSync real-time (GraphQL subscriptions over WebSocket), upstream half and relay.
//!
//! Owns: [`Realtime`] (what every relay shares: the APIs as real-time [`Target`]s, limits,
//! the TLS dialer, metrics, the clock, shutdown), the [`CallerAuth`] a surface hands each relay
//! (how the caller authenticates upstream, now and after renewals), the protocol
//! ([`protocol`]), upstream authentication ([`auth`]), upstream connections ([`upstream`]),
//! admission ([`limits`]) and the per-connection relay ([`relay`]).
//!
//! credbroker terminates the client's protocol and originates its own towards AppSync: the
//! client's `connection_ack` and `ka`s are credbroker's, so an upstream connection can be
//! replaced (re-authenticated ahead of expiry) without the client noticing anything but, at
//! most, events in the switch window (README, "AppSync real-time"). Like the HTTP forwarder,
//! this room knows nothing of the broker: the surface ([`crate::server::realtime`]) resolves
//! the caller and implements [`CallerAuth`] with the broker.
//!
//! ```text
//!  client ──GET /appsync/<api>/realtime (Authorization | header- | ?header=)──▶ server::realtime
//!          checks, Broker::authenticate, limits::Admission, IAM: credentials now ─▶ 101 graphql-ws
//!  relay (one task, both sockets):
//!          upstream::connect(header-<base64url(auth::connect_header)>) ────────────▶ AppSync
//!          client start ⇒ checked, extensions.authorization replaced (auth::start_authorization)
//!          AppSync start_ack / data / error / complete ⇒ forwarded verbatim
//!          credbroker's own ka; renewal: a second upstream, every start again, switch
//! ```

pub mod auth;
pub mod limits;
pub mod protocol;
pub mod relay;
pub mod upstream;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

pub use auth::Credential;
pub use upstream::Target;

use crate::clock::SharedClock;
use crate::config::{AppSyncConfig, RealtimeConfig};
use crate::metrics::Metrics;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the caller's upstream authentication could not be had.
#[derive(Debug, Clone)]
pub enum AuthError {
    /// For good: the session was revoked, ended or expired.
    Ended,
    /// For now (Cognito failed, the token is too close to expiry): worth retrying.
    Unavailable(String),
}

/// How one caller authenticates towards AppSync, supplied by the surface per connection.
pub trait CallerAuth: Send + Sync + 'static {
    /// The caller's upstream authentication now (a session's newest token, or the identity's
    /// current credentials).
    fn current(&self) -> BoxFuture<'_, Result<Credential, AuthError>>;
    /// Resolves when the caller can never be authenticated again (a session revoked or
    /// ended); never, for a raw ID token.
    fn lost(&self) -> BoxFuture<'static, ()>;
    /// Whether [`CallerAuth::current`] can later return something newer (a session, or IAM
    /// credentials the identity cache renews).
    fn renewable(&self) -> bool;
    /// A bound no connection outlives: a raw ID token's `exp` (`None` for a session).
    fn hard_expiry(&self) -> Option<SystemTime>;
}

/// What every relay shares.
pub struct Realtime {
    /// `[appsync.realtime]`.
    pub config: RealtimeConfig,
    /// `appsync.token_expiry_margin`: how long before expiry a connection is closed.
    pub token_expiry_margin: Duration,
    /// Open-connection admission.
    pub admission: Arc<limits::Admission>,
    dialer: upstream::Dialer,
    metrics: Metrics,
    clock: SharedClock,
    shutdown: CancellationToken,
    targets: BTreeMap<String, Arc<Target>>,
    default: Option<Arc<Target>>,
}

impl std::fmt::Debug for Realtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realtime")
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Realtime {
    /// From `[appsync]`; relays end (close 1001) when `shutdown` is cancelled.
    pub fn new(
        config: &AppSyncConfig,
        metrics: Metrics,
        clock: SharedClock,
        shutdown: CancellationToken,
    ) -> Self {
        let mut targets = BTreeMap::new();
        let mut default = None;
        for api in &config.apis {
            let Some(target) = Target::new(api) else {
                tracing::error!(api = %api.name, "unusable AppSync URL; real time is disabled");
                continue;
            };
            let target = Arc::new(target);
            if target.default {
                default = Some(target.clone());
            }
            targets.insert(api.name.clone(), target);
        }
        let names: Vec<&str> = targets.keys().map(String::as_str).collect();
        metrics.init_realtime(&names);
        let r = &config.realtime;
        Self {
            admission: limits::Admission::new(r.max_connections, r.max_connections_per_identity),
            dialer: upstream::Dialer::new(
                config.connect_timeout,
                r.ack_timeout,
                r.max_message_bytes,
            ),
            config: r.clone(),
            token_expiry_margin: config.token_expiry_margin,
            metrics,
            clock,
            shutdown,
            targets,
            default,
        }
    }

    /// The API called `name`, or the default one for `None`.
    pub fn target(&self, name: Option<&str>) -> Option<&Arc<Target>> {
        match name {
            Some(n) => self.targets.get(n),
            None => self.default.as_ref(),
        }
    }

    /// The configured API names.
    pub fn names(&self) -> Vec<&str> {
        self.targets.keys().map(String::as_str).collect()
    }

    /// The clock decisions are made by.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
