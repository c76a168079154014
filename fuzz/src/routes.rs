//! The `http_routes` target: HTTP requests through the real axum routers of the main listener
//! (container endpoint, sessions, AppSync) and the IMDS listener, with `tower::ServiceExt::oneshot`
//! (no sockets), the broker assembled as `app::start` does, against the emulated Cognito called
//! in process.
//!
//! Input: one byte choosing the listener (even: main, odd: IMDS), then an HTTP/1.1 request as it
//! arrives on the wire (request line, headers, blank line, body). It is parsed with `httparse`,
//! the parser hyper uses, and with the `http` crate's checks, so what reaches the router is what
//! hyper would hand it; requests hyper would refuse itself are skipped. Placeholders:
//! `@TOKEN@` (a valid ID token for `auth0|alice`), `@BOB@` (one for `auth0|bob`), `@IMDS@` (a
//! valid IMDS session token), `@SESSION@` (a live `cbs_` session handle).
//!
//! The oracle: no panic; no 500 (the routes never fail internally on input); every JSON error
//! answer carries `Code` and `Message`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use credbroker::broker::{Broker, ConfiguredIdentity, SessionRefresh};
use credbroker::cognito::CognitoApi;
use credbroker::identity::IdentityCache;
use credbroker::metrics::Metrics;
use credbroker::server::{appsync, container, imds, sessions};
use credbroker::sources::SourceDriver;
use credbroker::sources::file::TokenFileSource;
use credbroker::sources::refresh::TokenEndpoint;
use credbroker_emulators::cognito::{CognitoEmulator, CognitoOptions, TrustedProvider};
use credbroker_emulators::oidc::{OidcIssuer, TokenSpec};
use http_body_util::BodyExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// The broker's routers, ready for requests.
pub struct RoutesWorld {
    rt: tokio::runtime::Runtime,
    main: Router,
    imds: Router,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    _issuer: OidcIssuer,
    _cognito: CognitoEmulator,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("credbroker-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temporary directory");
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl RoutesWorld {
    /// Assembles the broker (mirrors `credbroker::app::start`, minus listeners and background
    /// refresh) and obtains the placeholder values through the routers themselves.
    pub fn new() -> Self {
        let rt = crate::runtime();
        let dir = tempdir::Dir::new();
        let token_file = dir.0.join("imds-user.id-token");
        let world = rt.block_on(async {
            let clock = crate::frozen();
            let issuer = OidcIssuer::start(Default::default(), clock.clone())
                .await
                .expect("issuer");
            let cognito = CognitoEmulator::start(
                CognitoOptions::default(),
                vec![TrustedProvider::for_issuer(&issuer)],
                clock.clone(),
            )
            .await
            .expect("cognito");
            std::fs::write(&token_file, issuer.token_for("auth0|imds-user")).expect("token file");
            let extra = format!(
                r#"
[sessions]
max_sessions = 256
max_per_identity = 4

[identities.imds-user]
provider = "test"
id_token_file = "{file}"
poll_interval = "1h"

[imds]
listen = "127.0.0.1:0"
identity = "imds-user"
max_session_tokens = 64

[appsync.apis.readonly]
url = "http://127.0.0.1:9/graphql"
region = "us-east-1"
auth = "oidc"
allowed_operations = ["query"]
default = true
"#,
                file = token_file.display()
            );
            let text = crate::config_text(
                issuer.issuer(),
                issuer.audience(),
                Some((
                    cognito.region(),
                    cognito.identity_pool_id(),
                    &cognito.endpoint_url(),
                )),
                &extra,
            );
            let config = credbroker::config::Config::from_toml(&text)
                .unwrap_or_else(|e| panic!("fuzz config: {e}\n{text}"));
            let names: Vec<String> = config.providers.iter().map(|p| p.name.clone()).collect();
            let metrics = Metrics::new(&names);
            let validator = Arc::new(credbroker::oidc::Validator::new(
                &config.providers,
                &config.tokens,
                credbroker::http::client(config.tokens.oidc_timeout),
                clock.clone(),
                metrics.clone(),
            ));
            validator.load_all().await;
            let api: Arc<dyn CognitoApi> = Arc::new(cognito.clone());
            let identities =
                IdentityCache::from_config(api, &config, clock.clone(), metrics.clone());
            let endpoint: Arc<dyn TokenEndpoint> = Arc::new(issuer.clone());
            let background = TaskTracker::new();
            let stop = CancellationToken::new();
            let broker = Arc::new(
                Broker::new(
                    validator.clone(),
                    identities.clone(),
                    metrics,
                    clock.clone(),
                    credbroker::broker::Settings::from_config(&config.server),
                )
                .with_sessions(&config.sessions)
                .with_session_refresh(SessionRefresh {
                    endpoint,
                    refresh_fraction: credbroker::config::DEFAULT_REFRESH_FRACTION,
                    keepalive: config.cache.idle_timeout / 2,
                    first_redemption_wait: config.server.request_timeout / 2,
                    tasks: background.clone(),
                    stop: stop.clone(),
                }),
            );
            let main = container::router(broker.clone())
                .merge(appsync::router(broker.clone(), &config.appsync))
                .merge(sessions::router(broker.clone()));

            let imds_config = config.imds.as_ref().expect("[imds]");
            let ic = &config.identities[0];
            let provider = validator.providers()[0].clone();
            let driver = SourceDriver::new(
                &ic.name,
                Arc::new(TokenFileSource::new(&token_file, Duration::from_secs(3600))),
                provider,
                validator.clone(),
                identities.clone(),
                ic.role.as_deref(),
                clock.clone(),
                config.cache.idle_timeout / 2,
            );
            let identity = Arc::new(ConfiguredIdentity::new(&ic.name, None, driver.subscribe()));
            background.spawn(driver.run(stop.clone()));
            assert!(
                identity.ready(Duration::from_secs(30)).await,
                "the IMDS identity warms"
            );
            let imds = imds::router(broker, identity, imds_config);
            (issuer, cognito, main, imds)
        });
        let (issuer, cognito, main, imds) = world;
        let alice = issuer.mint(&TokenSpec::for_subject("auth0|alice"));
        let bob = issuer.mint(&TokenSpec::for_subject("auth0|bob"));
        let mut this = Self {
            rt,
            main,
            imds,
            pairs: Vec::new(),
            _issuer: issuer,
            _cognito: cognito,
            _dir: dir,
        };
        let imds_token = this.setup_request(
            true,
            http::Request::put("/latest/api/token")
                .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
                .body(Body::empty()),
        );
        let created = this.setup_request(
            false,
            http::Request::post("/v1/sessions")
                .header("content-type", "application/json")
                .body(Body::from(
                    serde_json::json!({ "id_token": alice }).to_string(),
                )),
        );
        let session: serde_json::Value =
            serde_json::from_slice(&created).expect("POST /v1/sessions answers JSON");
        let session = session["session_token"]
            .as_str()
            .expect("a session handle")
            .to_owned();
        this.pairs = vec![
            (b"@TOKEN@".to_vec(), alice.into_bytes()),
            (b"@BOB@".to_vec(), bob.into_bytes()),
            (b"@IMDS@".to_vec(), imds_token.to_vec()),
            (b"@SESSION@".to_vec(), session.into_bytes()),
        ];
        this
    }

    fn setup_request(&self, imds: bool, request: http::Result<http::Request<Body>>) -> Bytes {
        let router = if imds { &self.imds } else { &self.main };
        let request = request.expect("a setup request");
        let what = format!("{} {}", request.method(), request.uri());
        let response = self
            .rt
            .block_on(router.clone().oneshot(request))
            .expect("infallible");
        let status = response.status();
        let body = self
            .rt
            .block_on(response.into_body().collect())
            .expect("body")
            .to_bytes();
        assert!(status.is_success(), "{what}: {status} {body:?}");
        body
    }

    /// The request `input` stands for, as hyper would deliver it to the router.
    pub fn request(&self, input: &[u8]) -> Option<(bool, http::Request<Body>)> {
        let (&which, rest) = input.split_first()?;
        let pairs: Vec<(&[u8], &[u8])> = self
            .pairs
            .iter()
            .map(|(a, b)| (a.as_slice(), b.as_slice()))
            .collect();
        let bytes = crate::substitute(rest, &pairs);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(head_len) = parsed.parse(&bytes).ok()? else {
            return None;
        };
        let method = http::Method::from_bytes(parsed.method?.as_bytes()).ok()?;
        let uri: http::Uri = parsed.path?.parse().ok()?;
        let mut builder = http::Request::builder().method(method).uri(uri);
        for h in parsed.headers.iter() {
            let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            let value = http::HeaderValue::from_bytes(h.value).ok()?;
            builder = builder.header(name, value);
        }
        let body = Bytes::copy_from_slice(bytes.get(head_len..)?);
        Some((which % 2 == 1, builder.body(Body::from(body)).ok()?))
    }

    /// Sends the request of `input` and checks the oracle.
    pub fn run(&self, input: &[u8]) {
        let Some((imds, request)) = self.request(input) else {
            return;
        };
        let router = if imds { &self.imds } else { &self.main };
        let what = format!("{} {}", request.method(), request.uri().path());
        let (status, content_type, body) = self.rt.block_on(async {
            let response = router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            (status, content_type, body)
        });
        let body = body.expect("the body streams");
        assert_ne!(
            status,
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "{what}: {body:?}"
        );
        if status.as_u16() >= 400 && content_type.starts_with("application/json") {
            let json: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body:?}"));
            assert!(
                json["Code"].is_string() && json["Message"].is_string(),
                "{what}: {status} {json}"
            );
        }
    }
}

impl Default for RoutesWorld {
    fn default() -> Self {
        Self::new()
    }
}
