//! Integration tests: the real broker on 127.0.0.1:0 against the in-repo emulators, driven by
//! real clients (aws-config's credentials chain, an HTTP client, the binary itself).

mod appsync;
mod bad_tokens;
mod cognito_errors;
mod config_files;
mod container;
mod credential_process;
mod doctor;
mod faults;
mod fleet;
mod grpc;
mod imds;
mod jwks;
mod listeners;
mod logs;
mod ops;
mod properties;
mod realtime;
mod realtime_iam;
mod realtime_lifecycle;
mod realtime_limits;
mod realtime_subscribe;
mod refresh;
mod served;
mod sessions;
mod single_flight;
mod sources;
mod spread;
mod support;
mod user_pool;
