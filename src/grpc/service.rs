//! `credbroker.v1.Broker`: Exchange, GetCredentials, WatchCredentials, UpdateToken, Revoke.
//!
//! Watch streams subscribe to the identity's published credential sets
//! ([`Identity::subscribe`](crate::identity::Identity::subscribe)), so any number of watchers
//! of one identity share the one background refresh the identity cache schedules; a watcher
//! never triggers an exchange of its own after the first answer. A watcher keeps its identity
//! from being evicted as idle (it counts as a caller).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use super::proto::{self, get_credentials_request::Auth};
use super::{http_equivalent, status, status_of, take_secret};
use crate::broker::{Broker, BrokerError, Caller, RefreshLogin, Subscription};
use crate::clock;
use crate::identity::Issued;
use crate::metrics::Surface;
use crate::secret::SecretString;
use crate::sessions::SessionError;

/// Limits and timings of the service.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Not used by the service any more: the broker bounds every call by
    /// `server.request_timeout` itself. Kept so callers that build `Settings` still compile.
    pub request_timeout: Duration,
    /// Open watch streams, at most.
    pub max_watchers: usize,
    /// How often a quiet watcher marks its identity as used (below `cache.idle_timeout`).
    pub touch_interval: Duration,
    /// A held token is used for a refresh only if valid this much longer.
    pub min_token_validity: Duration,
}

/// The broker service.
#[derive(Clone)]
pub struct BrokerService {
    broker: Arc<Broker>,
    settings: Settings,
    watchers: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for BrokerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerService")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Open watch streams (for the admin counters).
#[derive(Clone, Debug)]
pub struct WatcherCount {
    semaphore: Arc<Semaphore>,
    max: usize,
}

impl WatcherCount {
    /// Streams open now.
    pub fn open(&self) -> usize {
        self.max - self.semaphore.available_permits()
    }
}

impl BrokerService {
    /// A service over `broker`; watch streams end when `shutdown` is cancelled.
    pub fn new(broker: Arc<Broker>, settings: Settings, shutdown: CancellationToken) -> Self {
        Self {
            broker,
            watchers: Arc::new(Semaphore::new(settings.max_watchers)),
            settings,
            shutdown,
        }
    }

    /// The open-watchers counter.
    pub fn watchers(&self) -> WatcherCount {
        WatcherCount {
            semaphore: self.watchers.clone(),
            max: self.settings.max_watchers,
        }
    }

    fn observe<T>(&self, started: Instant, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        self.broker
            .record_request(Surface::Grpc, http_equivalent(code), started);
        if let Err(s) = result {
            tracing::debug!(code = ?s.code(), "gRPC request refused");
        }
    }

    async fn caller(&self, auth: Option<Auth>) -> Result<Caller, Status> {
        match auth {
            None => Err(status(
                Code::InvalidArgument,
                "MalformedRequest",
                "set either session (a handle from Exchange) or id_token",
            )),
            Some(Auth::Session(mut handle)) => {
                let handle = take_secret(&mut handle);
                let session = self.broker.session(handle.expose_str()).map_err(refused)?;
                Ok(Caller {
                    token: session.token(),
                    role: session.role.clone(),
                    session: Some(session),
                })
            }
            Some(Auth::IdToken(mut raw)) => {
                let raw = take_secret(&mut raw);
                let token = self
                    .broker
                    .validate(raw.expose_str())
                    .await
                    .map_err(refused)?;
                Ok(Caller {
                    token,
                    role: None,
                    session: None,
                })
            }
        }
    }
}

/// A broker failure as a gRPC status (the reply table's, mapped).
fn refused(e: BrokerError) -> Status {
    status_of(&e.reply())
}

/// The wire form of a credential set.
pub fn credentials_message(issued: &Issued) -> proto::Credentials {
    proto::Credentials {
        access_key_id: issued.access_key_id().to_owned(),
        secret_access_key: issued.secret_access_key().to_owned(),
        session_token: issued.session_token().to_owned(),
        expiration: Some(timestamp(issued.expires_at)),
        identity_id: issued.identity_id().to_string(),
    }
}

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::Credentials, Status>> + Send>>;

#[tonic::async_trait]
impl proto::broker_server::Broker for BrokerService {
    async fn exchange(
        &self,
        request: Request<proto::ExchangeRequest>,
    ) -> Result<Response<proto::ExchangeResponse>, Status> {
        let started = Instant::now();
        let result = self.exchange_inner(request.into_inner()).await;
        self.observe(started, &result);
        result.map(Response::new)
    }

    async fn get_credentials(
        &self,
        request: Request<proto::GetCredentialsRequest>,
    ) -> Result<Response<proto::Credentials>, Status> {
        let started = Instant::now();
        let result = async {
            let caller = self.caller(request.into_inner().auth).await?;
            let issued = self
                .broker
                .credentials_for_token(&caller.token, caller.role.as_deref(), Surface::Grpc)
                .await
                .map_err(refused)?;
            Ok(credentials_message(&issued))
        }
        .await;
        self.observe(started, &result);
        result.map(Response::new)
    }

    type WatchCredentialsStream = WatchStream;

    async fn watch_credentials(
        &self,
        request: Request<proto::GetCredentialsRequest>,
    ) -> Result<Response<Self::WatchCredentialsStream>, Status> {
        let started = Instant::now();
        let result = self.watch_inner(request.into_inner()).await;
        self.observe(started, &result);
        result.map(Response::new)
    }

    async fn update_token(
        &self,
        request: Request<proto::UpdateTokenRequest>,
    ) -> Result<Response<proto::UpdateTokenResponse>, Status> {
        let started = Instant::now();
        let mut request = request.into_inner();
        let handle = take_secret(&mut request.session);
        let token = take_secret(&mut request.id_token);
        let result = self
            .broker
            .update_session(handle.expose_str(), token.expose_str())
            .await
            .map_err(refused)
            .map(|expires_at| proto::UpdateTokenResponse {
                session_expires_at: Some(timestamp(expires_at)),
            });
        self.observe(started, &result);
        result.map(Response::new)
    }

    async fn revoke(
        &self,
        request: Request<proto::RevokeRequest>,
    ) -> Result<Response<proto::RevokeResponse>, Status> {
        let started = Instant::now();
        let mut request = request.into_inner();
        let handle = take_secret(&mut request.session);
        let result = self
            .broker
            .revoke_session(handle.expose_str())
            .map(|identity_evicted| proto::RevokeResponse { identity_evicted })
            .map_err(refused);
        self.observe(started, &result);
        result.map(Response::new)
    }
}

impl BrokerService {
    async fn exchange_inner(
        &self,
        mut request: proto::ExchangeRequest,
    ) -> Result<proto::ExchangeResponse, Status> {
        let id_token = take_secret(&mut request.id_token);
        let refresh = match (request.refresh_token.take(), request.client_id.take()) {
            (Some(token), client_id) => Some(RefreshLogin {
                refresh_token: SecretString::from(token),
                client_id,
            }),
            (None, Some(_)) => {
                return Err(status(
                    Code::InvalidArgument,
                    "MalformedRequest",
                    "client_id is only used with refresh_token",
                ));
            }
            (None, None) => None,
        };
        if let Some(role) = &request.custom_role_arn
            && !crate::config::is_role_arn(role)
        {
            return Err(status(
                Code::InvalidArgument,
                "InvalidRoleArn",
                format!(
                    "custom_role_arn {role:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
                ),
            ));
        }
        let created = self
            .broker
            .create_session(
                id_token.expose_str(),
                refresh,
                request.custom_role_arn.as_deref(),
            )
            .await
            .map_err(refused)?;
        self.broker
            .handed_out(Surface::Grpc, &created.token, &created.issued);
        Ok(proto::ExchangeResponse {
            credentials: Some(credentials_message(&created.issued)),
            session: created.handle.expose_str().to_owned(),
            session_expires_at: Some(timestamp(created.expires_at)),
        })
    }

    async fn watch_inner(
        &self,
        request: proto::GetCredentialsRequest,
    ) -> Result<WatchStream, Status> {
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            status(
                Code::ResourceExhausted,
                "TooManyWatchers",
                format!(
                    "{} watch streams are open (grpc.max_watchers); close unused ones",
                    self.settings.max_watchers
                ),
            )
        })?;
        let caller = self.caller(request.auth).await?;
        // Subscribe before the first answer, so no refresh can slip in between.
        let subscription = self.broker.subscribe(&caller);
        let first = self
            .broker
            .credentials_for_token(&caller.token, caller.role.as_deref(), Surface::Grpc)
            .await
            .map_err(refused)?;
        let watch = Watch {
            broker: self.broker.clone(),
            settings: self.settings,
            shutdown: self.shutdown.clone(),
            caller,
            subscription,
            last: first.clone(),
            first: Some(first),
            done: false,
            _permit: permit,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            watch,
            |mut w| async move {
                let item = w.next().await?;
                Some((item, w))
            },
        )))
    }
}

/// One watch stream's state.
struct Watch {
    broker: Arc<Broker>,
    settings: Settings,
    shutdown: CancellationToken,
    caller: Caller,
    subscription: Subscription,
    last: Arc<Issued>,
    first: Option<Arc<Issued>>,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl Watch {
    /// The next item: a credential set, or the status the stream ends with; `None` after it.
    async fn next(&mut self) -> Option<Result<proto::Credentials, Status>> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(Ok(credentials_message(&first)));
        }
        loop {
            if let Some(end) = self.ended() {
                self.done = true;
                return Some(Err(end));
            }
            let now = self.broker.clock().now();
            let check_in = clock::saturating_sub(self.deadline(), now)
                .min(self.settings.touch_interval)
                .max(Duration::from_millis(10));
            let revoked = async {
                match &self.caller.session {
                    Some(s) => s.revoked().cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.done = true;
                    return Some(Err(status(
                        Code::Unavailable,
                        "ShuttingDown",
                        "credbroker is shutting down; reconnect and watch again",
                    )));
                }
                () = revoked => {
                    self.done = true;
                    return Some(Err(self.session_gone()));
                }
                changed = self.subscription.updates.changed() => {
                    if changed.is_err() {
                        // The identity was dropped.
                        self.done = true;
                        return Some(Err(self.identity_gone()));
                    }
                    let latest = self.subscription.updates.borrow_and_update().clone();
                    if let Some(issued) = latest
                        && !Arc::ptr_eq(&issued, &self.last)
                        && issued.expires_at > self.last.expires_at
                    {
                        self.touch();
                        self.broker.handed_out(Surface::Grpc, &self.caller.token, &issued);
                        self.last = issued.clone();
                        return Some(Ok(credentials_message(&issued)));
                    }
                }
                () = tokio::time::sleep(check_in) => self.touch(),
            }
        }
    }

    /// When the identity stops being refreshable for this watcher.
    fn deadline(&self) -> SystemTime {
        match &self.caller.session {
            Some(s) => s.expires_at(),
            None => {
                let held = self
                    .subscription
                    .token_expires_at()
                    .unwrap_or(self.caller.token.expires_at);
                held.checked_sub(self.settings.min_token_validity)
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            }
        }
    }

    /// Why the session's stream ends once the session is gone: why it ended (a refused refresh
    /// token), its expiry, or a revocation.
    fn session_gone(&self) -> Status {
        let Some(s) = &self.caller.session else {
            return evicted();
        };
        if let Some(why) = s.ended() {
            return status_of(&BrokerError::from(why).reply());
        }
        if s.expires_at() <= self.broker.clock().now() {
            return status_of(&BrokerError::from(SessionError::Expired(s.expires_at())).reply());
        }
        status(
            Code::Unauthenticated,
            "SessionRevoked",
            "the session was revoked (logout)",
        )
    }

    /// Why the stream ends now that its identity left the cache: a session's revocation (which
    /// cancels the session, then evicts its identity, so a watcher can see both at once) says
    /// why if there was one; else the identity was evicted (a logout by another caller).
    fn identity_gone(&self) -> Status {
        match &self.caller.session {
            Some(s) if s.revoked().is_cancelled() => self.session_gone(),
            _ => evicted(),
        }
    }

    /// Why the stream must end now, if it must.
    fn ended(&self) -> Option<Status> {
        if self
            .caller
            .session
            .as_ref()
            .is_some_and(|s| s.revoked().is_cancelled())
        {
            return Some(self.session_gone());
        }
        if !self.alive() {
            return Some(self.identity_gone());
        }
        let now = self.broker.clock().now();
        if now < self.deadline() {
            return None;
        }
        Some(match &self.caller.session {
            Some(s) => status_of(&BrokerError::from(SessionError::Expired(s.expires_at())).reply()),
            None => status(
                Code::Unauthenticated,
                "TokenExpired",
                "the identity's ID token expires too soon to refresh its credentials again; \
                 the last set sent stays valid until its expiration. Watch again with a fresh \
                 ID token, or use a session and UpdateToken",
            ),
        })
    }

    /// Whether the identity watched is still the one in the cache.
    fn alive(&self) -> bool {
        self.broker.still_cached(&self.subscription)
            && self
                .caller
                .session
                .as_ref()
                .is_none_or(|s| !s.revoked().is_cancelled())
    }

    /// Marks the identity as used (a watcher is a caller) and offers the newest token.
    fn touch(&self) {
        if !self.alive() {
            return;
        }
        let token = match &self.caller.session {
            Some(s) => s.token(),
            None => self.caller.token.clone(),
        };
        self.broker.touch(&token, self.caller.role.as_deref());
    }
}

fn evicted() -> Status {
    status(
        Code::Unauthenticated,
        "IdentityRevoked",
        "the identity's credentials were dropped (a logout); authenticate again",
    )
}
