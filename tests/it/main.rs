//! Integration tests: the real broker on 127.0.0.1:0 against the in-repo emulators, driven by
//! real clients (aws-config's credentials chain, an HTTP client, the binary itself).

mod bad_tokens;
mod cognito_errors;
mod container;
mod grpc;
mod jwks;
mod logs;
mod refresh;
mod sessions;
mod single_flight;
mod support;
