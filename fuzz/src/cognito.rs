//! The `cognito_answers` target: Cognito's answers (status, headers, body) through the real
//! `aws-sdk-cognitoidentity` client of [`SdkCognito`] over a replaying HTTP client, so the SDK's
//! AWS JSON 1.1 parsing and credbroker's classification of the result both see them.
//!
//! Input: one byte choosing the operation (even: GetId, odd: GetCredentialsForIdentity), two
//! bytes of status (mapped into 100..=599), then the response head as header lines
//! (`name: value\n`, up to a blank line) and the body.
//!
//! The oracle: no panic; success only from a 2xx answer, with a non-empty identity id; a
//! failure in hand is never classified as a timeout.

use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use credbroker::cognito::{CognitoApi, ErrorKind, Login, SdkCognito};
use credbroker::secret::SecretString;

/// Answers every request with the response set for the current input.
#[derive(Debug, Clone, Default)]
struct Replay(Arc<Mutex<Option<HttpResponse>>>);

impl HttpConnector for Replay {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let response = self.0.lock().expect("lock").take();
        match response {
            Some(r) => HttpConnectorFuture::ready(Ok(r)),
            None => HttpConnectorFuture::ready(Ok(HttpResponse::new(
                500u16.try_into().expect("status"),
                SdkBody::from("{}"),
            ))),
        }
    }
}

impl HttpClient for Replay {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

/// The SDK client over [`Replay`].
pub struct CognitoWorld {
    rt: tokio::runtime::Runtime,
    replay: Replay,
    api: SdkCognito,
    token: SecretString,
}

impl CognitoWorld {
    /// Builds the client once; each input only swaps the answer.
    pub fn new() -> Self {
        let rt = crate::runtime();
        let text = crate::config_text("https://issuer.example/", "client", None, "");
        let config = credbroker::config::Config::from_toml(&text).expect("fuzz config");
        let replay = Replay::default();
        let api = {
            let _guard = rt.enter();
            SdkCognito::with_http_client(&config.cognito, SharedHttpClient::new(replay.clone()))
        };
        Self {
            rt,
            replay,
            api,
            token: SecretString::from("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        }
    }

    /// The answer `input` stands for.
    pub fn answer(input: &[u8]) -> Option<(bool, HttpResponse)> {
        let (&op, rest) = input.split_first()?;
        let (status, rest) = rest.split_at_checked(2)?;
        let status = 100 + u16::from_be_bytes([status[0], status[1]]) % 500;
        let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
            Some(at) => (&rest[..at], &rest[at + 2..]),
            None => (&rest[..0], rest),
        };
        let mut builder = http::Response::builder().status(status);
        for line in head.split(|b| *b == b'\n') {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(&line[..colon]),
                http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
            ) else {
                continue;
            };
            builder = builder.header(name, value);
        }
        let response = builder.body(SdkBody::from(body.to_vec())).ok()?;
        Some((op % 2 == 1, HttpResponse::try_from(response).ok()?))
    }

    /// Runs one call with the answer of `input` and checks the oracle.
    pub fn run(&self, input: &[u8]) {
        let Some((credentials, response)) = Self::answer(input) else {
            return;
        };
        let status = response.status().as_u16();
        *self.replay.0.lock().expect("lock") = Some(response);
        let login = Login {
            key: "issuer.example",
            token: &self.token,
        };
        let kind = if credentials {
            let result = self.rt.block_on(self.api.get_credentials(
                "us-east-1:00000000-0000-0000-0000-000000000000",
                login,
                None,
            ));
            match result {
                Ok(_) => {
                    assert!(
                        (200..300).contains(&status),
                        "success from a {status} answer"
                    );
                    None
                }
                Err(e) => Some(e.kind),
            }
        } else {
            let result = self.rt.block_on(
                self.api
                    .get_id("us-east-1:00000000-0000-0000-0000-000000000000", login),
            );
            match result {
                Ok(id) => {
                    assert!(!id.is_empty(), "GetId answered an empty IdentityId");
                    assert!(
                        (200..300).contains(&status),
                        "success from a {status} answer"
                    );
                    None
                }
                Err(e) => Some(e.kind),
            }
        };
        if let Some(kind) = kind {
            assert_ne!(
                kind,
                ErrorKind::Timeout,
                "an answer in hand is never a timeout (status {status})"
            );
        }
    }
}

impl Default for CognitoWorld {
    fn default() -> Self {
        Self::new()
    }
}
