//! The AppSync client side: deciding whether a GraphQL document may be forwarded
//! ([`operations`]) and forwarding it to a configured AWS AppSync API with a given upstream
//! authentication ([`forward`]): the raw ID token for `OPENID_CONNECT`, SigV4 with Cognito
//! credentials for `AWS_IAM`, header hygiene, timeouts and the pooled upstream connections;
//! and relaying real-time subscriptions over WebSocket ([`realtime`]).
//!
//! Owns: the upstream half only. It knows nothing of the broker: who the caller is and which
//! credentials they get is the AppSync surface's business ([`crate::server::appsync`]).
//!
//! ```text
//!  app ──POST /appsync/<api>/graphql, Authorization: <ID token | cbs_ handle>──▶ server::appsync
//!        Broker::authenticate (ID token or session → Caller { VerifiedToken, role })
//!        Forwarder::admit (allowed_operations, when configured)
//!        Forwarder::forward ──oidc: Authorization: <raw JWT>──────────▶ AppSync
//!                           ──iam:  SigV4(appsync, region) with ───────▶ AppSync
//!                                   Broker::credentials_for_token(Surface::Appsync)
//!  app ◀── AppSync's status, headers (minus hop-by-hop) and body, streamed ──┘
//! ```

pub mod forward;
pub mod operations;
pub mod realtime;
