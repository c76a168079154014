//! The emulators as credbroker's own upstreams, in process (feature `emulators`).
//!
//! Owns: the adapters between the `credbroker-emulators` crate (which knows nothing of
//! credbroker) and credbroker's traits:
//! - [`CognitoApi`] for [`CognitoEmulator`]: `GetId` and `GetCredentialsForIdentity` called
//!   without a socket, with the emulator's validation, faults and counters;
//! - [`TokenEndpoint`] for [`OidcIssuer`]: refresh-token redemption without a socket, its answer
//!   read by [`parse_token_response`] exactly as an HTTP answer would be;
//! - the emulators' [`Clock`](credbroker_emulators::clock::Clock) for credbroker's clocks, so a
//!   test hands the same [`SharedClock`](crate::clock::SharedClock) (e.g. a paused [`crate::clock::TokioClock`]) to the
//!   broker and to every emulator.
//!
//! Promises: no socket and no timer of its own, so paused-time tests stay exact; errors keep
//! the emulator's `__type` and message (mapped by [`ErrorKind::from_type`] like the SDK's).
//!
//! Compiled only with the `emulators` feature (on by default); the production build has none
//! of it. Used by the integration tests, the benchmarks and [`crate::demo`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use credbroker_emulators::cognito::{CognitoEmulator, ServiceError};
use credbroker_emulators::oidc::OidcIssuer;

use crate::clock::Clock;
use crate::cognito::{
    BoxFuture, CognitoApi, ErrorKind, Login, Operation, RawCredentials, UpstreamError,
};
use crate::secret::SecretString;
use crate::sources::refresh::{
    GrantError, RefreshRequest, TokenEndpoint, TokenResponse, parse_token_response,
};

/// credbroker's clocks are emulator clocks: `OidcIssuer::start(options, clock.clone())` takes a
/// [`SharedClock`](crate::clock::SharedClock) as it is.
impl credbroker_emulators::clock::Clock for dyn Clock {
    fn now(&self) -> SystemTime {
        Clock::now(self)
    }
}

/// The emulator called in process as the broker's Cognito: same validation, same counters, no
/// sockets (so paused-time tests do not depend on I/O readiness).
impl CognitoApi for CognitoEmulator {
    fn get_id<'a>(
        &'a self,
        identity_pool_id: &'a str,
        login: Login<'a>,
    ) -> BoxFuture<'a, Result<String, UpstreamError>> {
        Box::pin(async move {
            CognitoEmulator::get_id(self, identity_pool_id, &logins(login))
                .await
                .map_err(|e| upstream(e, Operation::GetId))
        })
    }

    fn get_credentials<'a>(
        &'a self,
        identity_id: &'a str,
        login: Login<'a>,
        custom_role_arn: Option<&'a str>,
    ) -> BoxFuture<'a, Result<RawCredentials, UpstreamError>> {
        Box::pin(async move {
            let c = self
                .get_credentials_for_identity(identity_id, &logins(login), custom_role_arn)
                .await
                .map_err(|e| upstream(e, Operation::GetCredentialsForIdentity))?;
            Ok(RawCredentials {
                access_key_id: c.access_key_id,
                secret_key: SecretString::from(c.secret_key.expose_str()),
                session_token: SecretString::from(c.session_token.expose_str()),
                expiration: c.expiration,
            })
        })
    }
}

/// The `Logins` map of one login, as the emulator takes it.
fn logins(login: Login<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([(login.key.to_owned(), login.token.expose_str().to_owned())])
}

fn upstream(e: ServiceError, operation: Operation) -> UpstreamError {
    UpstreamError {
        kind: ErrorKind::from_type(e.type_name()),
        message: e.message,
        operation,
    }
}

/// The issuer's token endpoint called in process (no socket), so paused-time tests stay exact.
impl TokenEndpoint for OidcIssuer {
    fn refresh<'a>(
        &'a self,
        request: RefreshRequest<'a>,
    ) -> BoxFuture<'a, Result<TokenResponse, GrantError>> {
        Box::pin(async move {
            let reply = self.redeem_refresh_token(
                request.client_id,
                request.client_secret.map(SecretString::expose_str),
                request.refresh_token.expose_str(),
            );
            parse_token_response(reply.status, reply.body.expose_str().as_bytes())
        })
    }
}
