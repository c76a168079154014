//! `credbroker.v1.Admin`: cached identities and counters, for operators. Never secrets.
//!
//! Protected by its own bearer token (the contents of `grpc.admin_token_file`, read at start),
//! checked by an interceptor in constant time before the service sees the call.

use std::path::Path;
use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Code, Request, Response, Status};

use super::proto;
use super::service::{WatcherCount, timestamp};
use super::{GrpcStartError, status};
use crate::broker::Broker;
use crate::identity::State;
use crate::secret::SecretString;

/// Shortest admin token accepted.
const MIN_TOKEN_BYTES: usize = 16;

/// Reads the admin token: the file's contents without surrounding whitespace.
pub(super) fn read_token(path: &Path) -> Result<SecretString, GrpcStartError> {
    let err = |message: String| GrpcStartError::AdminToken {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = SecretString::from(text.trim());
    drop(SecretString::from(text));
    if token.len() < MIN_TOKEN_BYTES {
        return Err(err(format!(
            "the token must be at least {MIN_TOKEN_BYTES} characters (e.g. `openssl rand -hex 32`)"
        )));
    }
    Ok(token)
}

/// The interceptor: `authorization: Bearer <admin token>`.
#[derive(Clone)]
pub struct Auth {
    token: Arc<SecretString>,
}

impl Auth {
    /// Accepts `token`.
    pub fn new(token: SecretString) -> Self {
        Self {
            token: Arc::new(token),
        }
    }
}

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split_at_checked(7)
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer "))
                    .map(|(_, token)| token.trim())
            });
        match presented {
            Some(t) if self.token.ct_eq(t) => Ok(request),
            Some(_) => Err(status(
                Code::Unauthenticated,
                "InvalidAdminToken",
                "the admin token does not match grpc.admin_token_file",
            )),
            None => Err(status(
                Code::Unauthenticated,
                "MissingAdminToken",
                "send authorization: Bearer <contents of grpc.admin_token_file>",
            )),
        }
    }
}

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    broker: Arc<Broker>,
    watchers: WatcherCount,
}

impl AdminService {
    /// Over `broker`.
    pub fn new(broker: Arc<Broker>, watchers: WatcherCount) -> Self {
        Self { broker, watchers }
    }
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn list_identities(
        &self,
        _request: Request<proto::ListIdentitiesRequest>,
    ) -> Result<Response<proto::ListIdentitiesResponse>, Status> {
        let identities = self
            .broker
            .cached_identities()
            .into_iter()
            .map(|(i, sessions)| {
                let key = i.key();
                let state = match i.state() {
                    State::Active => proto::IdentityState::Active,
                    State::AwaitingToken => proto::IdentityState::AwaitingToken,
                    State::Failing => proto::IdentityState::Failing,
                };
                proto::IdentityInfo {
                    issuer: key.issuer.to_string(),
                    subject: key.subject.to_string(),
                    identity_id: i.identity_id().map(|s| s.to_string()).unwrap_or_default(),
                    role_arn: key.role.as_deref().unwrap_or_default().to_owned(),
                    credentials_expire_at: i.current().map(|c| timestamp(c.expires_at)),
                    last_refresh: i.last_refresh().map(timestamp),
                    token_expires_at: i.token_expires_at().map(timestamp),
                    state: state as i32,
                    sessions: u32::try_from(sessions).unwrap_or(u32::MAX),
                }
            })
            .collect();
        Ok(Response::new(proto::ListIdentitiesResponse { identities }))
    }

    async fn get_stats(
        &self,
        _request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::Stats>, Status> {
        let stats = self.broker.stats();
        Ok(Response::new(proto::Stats {
            identities_cached: stats.identities_cached,
            sessions: stats.sessions as u64,
            watchers: self.watchers.open() as u64,
            credentials_issued: stats.credentials_issued,
            cognito_get_credentials_calls: stats.get_credentials_calls,
        }))
    }
}
