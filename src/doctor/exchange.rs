//! The doctor's real exchange: one `GetId` + `GetCredentialsForIdentity` for the token,
//! through the broker's own path ([`Broker::prepare`]: identity cache, retrying
//! [`Exchanger`]), with every Cognito call recorded so each operation gets its own line, and
//! each refusal the daemon's own fix ([`crate::broker::hint`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::Check;
use crate::broker::{self, Broker, BrokerError};
use crate::clock::{self, SharedClock};
use crate::cognito::{BoxFuture, CognitoApi, Login, Operation, RawCredentials, UpstreamError};
use crate::config::{Config, ProviderConfig};
use crate::identity::{FetchError, IdentityCache, Issued};
use crate::metrics::Metrics;
use crate::oidc::{Validator, VerifiedToken};

/// The broker the doctor exchanges through, and what Cognito answered it.
pub(super) struct Exchange {
    /// Also used by the AppSync checks (its cache then holds the credentials).
    pub broker: Arc<Broker>,
    recorder: Arc<Recorder>,
}

impl Exchange {
    /// A broker like the daemon's, on `api`, recording every call.
    pub fn new(
        config: &Config,
        validator: &Arc<Validator>,
        api: Arc<dyn CognitoApi>,
        metrics: &Metrics,
        clock: &SharedClock,
    ) -> Self {
        let recorder = Arc::new(Recorder {
            inner: api,
            calls: Mutex::new(Vec::new()),
        });
        let identities =
            IdentityCache::from_config(recorder.clone(), config, clock.clone(), metrics.clone());
        let broker = Arc::new(Broker::new(
            validator.clone(),
            identities,
            metrics.clone(),
            clock.clone(),
            crate::broker::Settings::from_config(&config.server),
        ));
        Self { broker, recorder }
    }

    /// `cognito.get_id` and `cognito.get_credentials`. Returns whether credentials were
    /// obtained.
    pub async fn check(
        &self,
        config: &Config,
        token: &Arc<VerifiedToken>,
        checks: &mut Vec<Check>,
    ) -> bool {
        let provider = &token.provider.config;
        let bound = config.server.request_timeout.max(Duration::from_secs(30));
        let result = tokio::time::timeout(bound, self.broker.prepare(token, None)).await;
        let calls = self.recorder.calls();
        let last = |op: Operation| {
            calls
                .iter()
                .rev()
                .find(|c| c.operation == op)
                .map(|c| &c.outcome)
        };
        let get_id = get_id_line(provider, last(Operation::GetId), &result, bound);
        let identified = get_id.holds();
        checks.push(get_id);
        if !identified {
            checks.push(Check::skip(
                "cognito.get_credentials",
                "skipped: GetId failed",
            ));
            return false;
        }
        let get_credentials = self.get_credentials_line(
            config,
            provider,
            last(Operation::GetCredentialsForIdentity),
            &result,
            bound,
        );
        let obtained = get_credentials.holds();
        checks.push(get_credentials);
        obtained
    }

    /// `cognito.get_credentials`, from what the call answered and how the exchange ended.
    fn get_credentials_line(
        &self,
        config: &Config,
        provider: &ProviderConfig,
        outcome: Option<&Outcome>,
        result: &Prepared,
        bound: Duration,
    ) -> Check {
        let role = config
            .cognito
            .custom_role_arn
            .as_deref()
            .unwrap_or("the pool's authenticated role");
        match (outcome, result) {
            (Some(Outcome::Refused(e)), _) => refused(
                provider,
                "cognito.get_credentials",
                "GetCredentialsForIdentity",
                e,
            ),
            (
                Some(Outcome::Credentials {
                    access_key_id,
                    expiration,
                }),
                Ok(Ok(_)),
            ) => {
                let left = clock::saturating_sub(*expiration, self.broker.clock().now());
                Check::ok(
                    "cognito.get_credentials",
                    format!(
                        "GetCredentialsForIdentity answered credentials for {role}: access key \
                         {access_key_id}, expiring {} ({} min)",
                        clock::format_aws_timestamp(*expiration),
                        left.as_secs() / 60
                    ),
                )
            }
            (_, Ok(Err(e))) => Check::fail(
                "cognito.get_credentials",
                e.reply().message,
                "see the message",
            ),
            _ => Check::fail(
                "cognito.get_credentials",
                format!("no answer within {}s", bound.as_secs()),
                "check that Cognito answers (cognito.pool above)",
            ),
        }
    }
}

/// How the exchange through the broker ended: within `bound`, or not.
type Prepared = Result<Result<Arc<Issued>, BrokerError>, tokio::time::error::Elapsed>;

/// `cognito.get_id`, from what the call answered (`outcome`) and how the exchange ended.
fn get_id_line(
    provider: &ProviderConfig,
    outcome: Option<&Outcome>,
    result: &Prepared,
    bound: Duration,
) -> Check {
    match outcome {
        Some(Outcome::IdentityId(identity)) => Check::ok(
            "cognito.get_id",
            format!(
                "GetId with Logins key {:?} answered identity {identity}",
                provider.logins_key
            ),
        ),
        Some(Outcome::Refused(e)) => refused(provider, "cognito.get_id", "GetId", e),
        _ => {
            let why = match result {
                Err(_) => format!("no answer within {}s", bound.as_secs()),
                Ok(Err(e)) => e.reply().message,
                Ok(Ok(_)) => "no GetId call was made".to_owned(),
            };
            Check::fail(
                "cognito.get_id",
                why,
                "see the message; credbroker could not start the exchange",
            )
        }
    }
}

/// The line `id` for a Cognito refusal of the call `what`: the daemon's `Code` and fix for it.
fn refused(provider: &ProviderConfig, id: &str, what: &str, e: &UpstreamError) -> Check {
    let error = fetch_error(e);
    let code = BrokerError::Upstream {
        error: error.clone(),
        provider: Some(provider.name.clone()),
        logins_key: Some(provider.logins_key.clone()),
    }
    .reply()
    .code;
    let fix = broker::hint(&error, Some(&provider.name), Some(&provider.logins_key))
        .unwrap_or_else(|| {
            "Cognito could not answer (see the message); retry when it does".to_owned()
        });
    Check::fail(
        id,
        format!("{what} refused ({}): {}", e.kind.label(), e.message),
        fix,
    )
    .with_code(code)
}

/// A Cognito refusal as the identity cache reports it (what [`broker::hint`] reads).
pub(super) fn fetch_error(e: &UpstreamError) -> FetchError {
    FetchError {
        kind: e.kind,
        message: e.message.clone(),
        retry_after: None,
    }
}

/// What one call answered (no secrets).
enum Outcome {
    IdentityId(String),
    Credentials {
        access_key_id: String,
        expiration: SystemTime,
    },
    Refused(UpstreamError),
}

struct Call {
    operation: Operation,
    outcome: Outcome,
}

/// A [`CognitoApi`] that remembers every call's outcome.
struct Recorder {
    inner: Arc<dyn CognitoApi>,
    calls: Mutex<Vec<Call>>,
}

impl Recorder {
    fn record(&self, operation: Operation, outcome: Outcome) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Call { operation, outcome });
    }

    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl CognitoApi for Recorder {
    fn get_id<'a>(
        &'a self,
        identity_pool_id: &'a str,
        login: Login<'a>,
    ) -> BoxFuture<'a, Result<String, UpstreamError>> {
        Box::pin(async move {
            let result = self.inner.get_id(identity_pool_id, login).await;
            self.record(
                Operation::GetId,
                match &result {
                    Ok(id) => Outcome::IdentityId(id.clone()),
                    Err(e) => Outcome::Refused(e.clone()),
                },
            );
            result
        })
    }

    fn get_credentials<'a>(
        &'a self,
        identity_id: &'a str,
        login: Login<'a>,
        custom_role_arn: Option<&'a str>,
    ) -> BoxFuture<'a, Result<RawCredentials, UpstreamError>> {
        Box::pin(async move {
            let result = self
                .inner
                .get_credentials(identity_id, login, custom_role_arn)
                .await;
            self.record(
                Operation::GetCredentialsForIdentity,
                match &result {
                    Ok(c) => Outcome::Credentials {
                        access_key_id: c.access_key_id.clone(),
                        expiration: c.expiration,
                    },
                    Err(e) => Outcome::Refused(e.clone()),
                },
            );
            result
        })
    }
}
