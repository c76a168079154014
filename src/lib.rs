//! # credbroker
//!
//! Per-user temporary AWS credentials for people who signed in with an OIDC provider (Auth0,
//! Okta, Entra ID, Keycloak, Cognito user pools), brokered through an Amazon Cognito identity
//! pool and served to any AWS SDK.
//!
//! ## Data flow
//!
//! ```text
//!  app / AWS SDK ──GET /v1/credentials, Authorization: <ID token>──▶ server::container
//!                                                                        │
//!                                                      broker::Broker ◀──┘  (one facade for
//!                                                        │      │             every surface)
//!            oidc::Validator ◀── validate(raw token) ────┘      │
//!             │  keyed-hash cache hit → done (no RSA)           │
//!             │  else parse → alg/iss/aud/exp/nbf checks         │
//!             │  → key by kid (rate-limited JWKS refetch)        │
//!             │  → signature (openidconnect)                     ▼
//!             │                                   identity::IdentityCache  key = (pool, iss, sub, role)
//!             │                                     │ servable credentials cached → done
//!             │                                     │ else single-flight exchange task:
//!             │                                     ▼
//!             │                          cognito::Exchanger ──▶ GetId (once per identity)
//!             │                            retries + backoff ──▶ GetCredentialsForIdentity
//!             │                                     │
//!             └── discovery + JWKS reload (http)     └── scheduler: renew ahead of expiry,
//!                                                        rate-limited, jittered; idle eviction
//! ```
//!
//! The layers, what each room owns and where new code goes: `ARCHITECTURE.md`.
//!
//! Time is injected ([`clock`]) so expiry and refresh are tested under paused time; secrets are
//! [`secret::Secret`] types that never print; configuration is validated once ([`config`]).
//! The emulators (an OIDC issuer, Cognito Identity and AppSync that validate tokens like the real
//! ones) live in their own crate of the workspace, `credbroker-emulators` (`emulators/`), used by
//! the tests, the benchmarks and `credbroker demo`. credbroker depends on it only through the
//! `emulators` cargo feature (on by default), which compiles [`demo`] and [`emulated`] (the
//! emulators as in-process upstreams); the production build is `--no-default-features`.

// No panics on the request path (issue 16): neither slicing a string at a byte offset that may
// fall inside a character nor indexing that may be out of bounds, in all non-test code.
#![cfg_attr(not(test), warn(clippy::string_slice, clippy::indexing_slicing))]

// The rooms by layer, lowest first: a module imports only modules of lower layers
// (ARCHITECTURE.md; enforced by tests/architecture.rs).

// 0 ground
pub mod clock;
pub mod fsutil;
pub mod secret;
pub mod signals;

// 1 configuration
pub mod config;

// 2 ground+
pub mod http;
pub mod metrics;
pub mod telemetry;

// 3 upstream clients
pub mod appsync;
pub mod cognito;
pub mod probe;
pub mod shared;

// 4 core
#[cfg(feature = "emulators")]
pub mod emulated;
pub mod identity;
pub mod oidc;
pub mod readiness;
pub mod sessions;
pub mod sources;

// 5 facade
pub mod broker;

// 6 surfaces
pub mod grpc;
pub mod server;

// 7 entry points
pub mod app;
pub mod cli;
pub mod credential_process;
#[cfg(feature = "emulators")]
pub mod demo;
pub mod doctor;
pub mod subscribe;
