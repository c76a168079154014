//! AppSync request forwarding: apps send GraphQL to credbroker with their ID token, credbroker
//! forwards it to a configured AWS AppSync API authenticated as that user.
//!
//! Owns: resolving who the caller is ([`caller`]), deciding whether a GraphQL document may be
//! forwarded ([`operations`]) and the forwarding itself ([`forward`]): authentication towards
//! AppSync (the raw ID token for `OPENID_CONNECT`, SigV4 with the caller's Cognito credentials
//! for `AWS_IAM`), header hygiene, timeouts and the pooled upstream connections. The HTTP routes
//! live in [`crate::server::appsync`].
//!
//! ```text
//!  app ──POST /appsync/<api>/graphql, Authorization: <ID token | cbs_ handle>──▶ server::appsync
//!        caller::resolve (ID token or session → Caller { VerifiedToken, role })
//!        operations::check (allowed_operations, when configured)
//!        forward::Forwarder ──oidc: Authorization: <raw JWT>──────────▶ AppSync
//!                           ──iam:  SigV4(appsync, region) with ───────▶ AppSync
//!                                   Broker::credentials_for_token(Surface::Appsync)
//!  app ◀── AppSync's status, headers (minus hop-by-hop) and body, streamed ──┘
//! ```

pub mod caller;
pub mod forward;
pub mod operations;
