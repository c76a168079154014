//! The admin listener: metrics and health probes, on their own port (`[admin] listen`).
//!
//! Owns: the admin [`router`].
//!
//! Promises:
//! - it serves no credentials and reads no caller token; it is never merged with the
//!   credential routers, so it may bind a pod IP for kubelet probes and Prometheus;
//! - `GET /metrics`: the Prometheus text exposition, with the cache gauges and readiness gauges
//!   brought up to date first; no upstream call;
//! - `GET /livez`: 200 `ok` while the process serves HTTP; it never depends on upstreams, so a
//!   Cognito or issuer outage never restarts the broker (and drops its cache);
//! - `GET /readyz`: 200 with the [`Report`](crate::readiness::Report) as JSON when ready, 503
//!   with the same JSON (its `reasons` say why) when not — including while shutting down;
//! - other paths are 404 and other methods 405 (with `Allow: GET`), as `{"Code","Message"}`
//!   JSON like every other listener's refusals;
//! - it keeps answering while the main listeners drain, and stops last.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::broker::Broker;
use crate::readiness::Readiness;

/// `GET /metrics`.
pub const METRICS_PATH: &str = "/metrics";
/// `GET /livez`.
pub const LIVEZ_PATH: &str = "/livez";
/// `GET /readyz`.
pub const READYZ_PATH: &str = "/readyz";

/// The Prometheus text exposition format's content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct AdminState {
    broker: Arc<Broker>,
    readiness: Arc<Readiness>,
}

/// The admin routes.
pub fn router(broker: Arc<Broker>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route(METRICS_PATH, get(metrics).fallback(get_only))
        .route(LIVEZ_PATH, get(livez).fallback(get_only))
        .route(READYZ_PATH, get(readyz).fallback(get_only))
        .fallback(not_found)
        .with_state(AdminState { broker, readiness })
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.readiness.report();
    let body = state.broker.render_metrics();
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn livez() -> Response {
    plain(StatusCode::OK, "ok\n")
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let report = state.readiness.check().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".to_owned());
    let mut response = (status, body + "\n").into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn not_found() -> Response {
    super::client_error(
        404,
        "NotFound",
        "the admin listener serves GET /metrics, /livez and /readyz",
    )
}

async fn get_only() -> Response {
    super::method_not_allowed("GET")
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;
    use crate::cognito::{
        BoxFuture, CognitoApi, ErrorKind, Login, Operation, RawCredentials, UpstreamError,
    };
    use crate::config::Config;
    use crate::identity::IdentityCache;
    use crate::metrics::Metrics;
    use crate::oidc::Validator;
    use crate::readiness::{CognitoWatch, Watched};
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    /// A Cognito that answers every call with one error class, counting calls.
    struct Fake {
        kind: ErrorKind,
        calls: std::sync::atomic::AtomicU32,
    }

    impl Fake {
        fn fail(&self, operation: Operation) -> UpstreamError {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            UpstreamError {
                kind: self.kind,
                message: "from the fake".into(),
                operation,
            }
        }
    }

    impl CognitoApi for Fake {
        fn get_id<'a>(
            &'a self,
            _pool: &'a str,
            _login: Login<'a>,
        ) -> BoxFuture<'a, Result<String, UpstreamError>> {
            Box::pin(async move { Err(self.fail(Operation::GetId)) })
        }

        fn get_credentials<'a>(
            &'a self,
            _identity_id: &'a str,
            _login: Login<'a>,
            _role: Option<&'a str>,
        ) -> BoxFuture<'a, Result<RawCredentials, UpstreamError>> {
            Box::pin(async move { Err(self.fail(Operation::GetCredentialsForIdentity)) })
        }
    }

    /// A router whose provider never loaded keys (nothing is fetched) and whose Cognito
    /// answers `kind`.
    fn admin(kind: ErrorKind) -> (Router, Arc<Readiness>, Arc<Fake>) {
        let config = Config::from_toml(
            r#"
            [providers.auth0]
            issuer = "https://dev-x.us.auth0.com/"
            audiences = ["client-1"]
            [cognito]
            region = "us-east-1"
            identity_pool_id = "us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211"
            [admin]
            probe_wait = "10s"
            "#,
        )
        .expect("valid");
        let clock = clock::system();
        let metrics = Metrics::new(&["auth0".to_owned()]);
        let fake = Arc::new(Fake {
            kind,
            calls: Default::default(),
        });
        let api: Arc<dyn CognitoApi> = fake.clone();
        let validator = Arc::new(Validator::new(
            &config.providers,
            &config.tokens,
            crate::http::client(config.tokens.oidc_timeout),
            clock.clone(),
            metrics.clone(),
        ));
        let watch = Arc::new(CognitoWatch::new(clock.clone()));
        let identities = IdentityCache::from_config(
            Arc::new(Watched::new(api.clone(), watch.clone())),
            &config,
            clock.clone(),
            metrics.clone(),
        );
        let readiness = Arc::new(Readiness::new(
            validator.clone(),
            identities.clone(),
            watch,
            api,
            &config.cognito.identity_pool_id,
            &config.admin,
            clock.clone(),
            metrics.clone(),
        ));
        let broker = Arc::new(Broker::new(
            validator,
            identities,
            metrics,
            clock,
            crate::broker::Settings::from_config(&config.server),
        ));
        (router(broker, readiness.clone()), readiness, fake)
    }

    async fn get(router: &Router, path: &str) -> (StatusCode, String, String) {
        let response = router
            .clone()
            .oneshot(
                axum::http::Request::get(path)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn readyz_says_which_provider_has_no_keys_and_probes_cognito() {
        let (router, _, fake) = admin(ErrorKind::NotAuthorized);
        let (status, content_type, body) = get(&router, READYZ_PATH).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(content_type, "application/json");
        let report: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(report["ready"], false);
        assert_eq!(report["providers"][0]["name"], "auth0");
        assert_eq!(report["providers"][0]["keys_loaded"], false);
        let reasons = report["reasons"].as_array().expect("reasons");
        assert_eq!(reasons.len(), 1, "{body}");
        assert!(
            reasons[0]
                .as_str()
                .is_some_and(|r| r.starts_with("provider auth0: discovery and JWKS not loaded")),
            "{body}"
        );
        // Cognito refused the placeholder login: that proves the endpoint answers.
        assert_eq!(report["cognito"]["status"], "answered", "{body}");
        assert_eq!(fake.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Known to answer: no second probe.
        let _ = get(&router, READYZ_PATH).await;
        assert_eq!(fake.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn readyz_reports_an_unreachable_cognito_and_a_missing_pool() {
        for (kind, expected) in [
            (ErrorKind::Unavailable, "cognito: no answer"),
            (ErrorKind::ResourceNotFound, "cognito.identity_pool_id"),
        ] {
            let (router, _, _) = admin(kind);
            let (status, _, body) = get(&router, READYZ_PATH).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            let report: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(report["cognito"]["status"], "failing", "{body}");
            let reasons = report["reasons"].to_string();
            assert!(reasons.contains(expected), "{kind:?}: {body}");
        }
    }

    #[tokio::test]
    async fn shutting_down_is_a_reason_and_livez_stays_up() {
        let (router, readiness, _) = admin(ErrorKind::NotAuthorized);
        readiness.set_draining();
        let (status, _, body) = get(&router, READYZ_PATH).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
        assert!(body.contains("\"shutting_down\": true"), "{body}");
        let (status, _, body) = get(&router, LIVEZ_PATH).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_with_readiness_gauges() {
        let (router, _, _) = admin(ErrorKind::NotAuthorized);
        let (status, content_type, body) = get(&router, METRICS_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        for line in [
            "credbroker_ready 0",
            "credbroker_provider_keys_loaded{provider=\"auth0\"} 0",
            "credbroker_cognito_reachable 0",
            "credbroker_identities_cached 0",
            "# TYPE credbroker_cache_lookups_total counter",
        ] {
            assert!(
                body.lines().any(|l| l == line || l.starts_with(line)),
                "{line}\n{body}"
            );
        }
        let (status, _, _) = get(&router, "/v1/credentials").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no credentials here");
    }
}
