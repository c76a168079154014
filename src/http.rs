//! Outbound HTTP.
//!
//! Owns: the one pooled HTTPS client credbroker uses for OIDC discovery and JWKS (and that the
//! AppSync forwarder shares), and the HTTP client handed to the AWS SDK.
//!
//! Promises:
//! - TLS is rustls with the `ring` provider and the operating system's root certificates; plain
//!   http is only ever used for URLs that configuration validation allowed (loopback);
//! - keep-alive connections are pooled (HTTP/1.1 and HTTP/2 via ALPN);
//! - every call has a timeout and a body-size cap, so a slow or hostile upstream cannot hold a
//!   task or exhaust memory.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The pooled outbound client.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why an outbound call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The request could not be built (bad URL).
    #[error("invalid request: {0}")]
    Request(String),
    /// Connecting, TLS or the exchange failed.
    #[error("request failed: {0}")]
    Transport(String),
    /// No complete answer within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The body was larger than allowed.
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
}

/// Builds the shared outbound client.
///
/// Root certificates come from the OS store; when none can be loaded (a scratch container
/// without CA certificates) the client still works for loopback http and logs a warning.
pub fn client(connect_timeout: Duration) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "no OS root certificates found; https upstreams will fail");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports rustls' default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(32)
        .build(connector)
}

/// Sends `request` and reads the whole response, within `timeout` and `max_body` bytes.
pub async fn fetch(
    client: &HttpsClient,
    request: http::Request<Vec<u8>>,
    timeout: Duration,
    max_body: usize,
) -> Result<http::Response<Vec<u8>>, FetchError> {
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| FetchError::Transport(error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        let collected = Limited::new(body, max_body).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                FetchError::TooLarge(max_body)
            } else {
                FetchError::Transport(e.to_string())
            }
        })?;
        Ok(http::Response::from_parts(
            parts,
            collected.to_bytes().to_vec(),
        ))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

/// The HTTP client given to the AWS SDK: rustls with `ring`, pooled, timeouts from the SDK config.
pub fn sdk_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Formats an error with its sources, `a: b: c`, for logs and messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
