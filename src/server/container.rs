//! The container-credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
//!
//! Owns: `GET /v1/credentials`.
//!
//! Promises:
//! - the caller authenticates with `Authorization: <ID token>` exactly as AWS SDKs send the
//!   contents of `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (a `Bearer ` prefix is also accepted;
//!   `Bearer` with nothing after it is a missing token);
//! - 200 body exactly `{"AccessKeyId","SecretAccessKey","Token","Expiration"}` (+ `AccountId`
//!   when configured), `Expiration` as `YYYY-MM-DDTHH:MM:SSZ`;
//! - every error is non-200 `{"Code","Message"}`: 400 malformed request, 401 token problems
//!   (Code names which), 403 Cognito refused the login, 429 local limit, 503 upstream
//!   unavailable with `Retry-After`;
//! - requests that carry `X-Forwarded-For` or `Forwarded` are refused (400): they came through a
//!   proxy, and credentials are for local callers only (SSRF through a local proxy);
//! - like every route of the main listener (sessions, AppSync), a request whose `Host` is not a
//!   loopback IP, `localhost`, the listen address or one of `server.allowed_hosts` is 403
//!   `HostNotAllowed` before routing ([`HostPolicy`](super::HostPolicy), DNS-rebinding guard);
//! - a cached answer does no I/O and no signature check.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use axum::routing::any;

use super::{DirectAnswer, DirectRoute, client_error, error_response, json_no_store};
use crate::broker::{Broker, BrokerError, Now};
use crate::identity::Issued;
use crate::metrics::Surface;

/// The path SDKs are pointed at.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";

#[derive(Clone)]
struct AppState {
    broker: Arc<Broker>,
}

/// The router of the main listener.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route(CREDENTIALS_PATH, any(credentials))
        .fallback(not_found)
        .with_state(AppState { broker })
}

/// [`CREDENTIALS_PATH`] answered before the main listener's router (the same handler as the
/// router's route): the cached path is the one every SDK call takes.
pub fn direct_route(broker: Arc<Broker>) -> DirectRoute {
    let state = AppState { broker };
    DirectRoute {
        path: CREDENTIALS_PATH,
        answer: Arc::new(move |request| answer(&state, &request)),
    }
}

async fn not_found() -> Response {
    client_error(
        404,
        "NotFound",
        format!("no such endpoint; credentials are served at GET {CREDENTIALS_PATH}"),
    )
}

/// Refuses requests relayed by a proxy (400, as documented for the main listener).
pub fn forwarded_refusal(headers: &HeaderMap) -> Option<Response> {
    forwarded_refusal_with(headers, 400)
}

/// The headers a proxy adds, as parsed names (a `&str` lookup parses the name every time).
static PROXY_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-for"),
    header::FORWARDED,
];

/// Refuses requests relayed by a proxy with `status`, `ForwardedRequest`.
pub fn forwarded_refusal_with(headers: &HeaderMap, status: u16) -> Option<Response> {
    for name in &PROXY_HEADERS {
        if headers.contains_key(name) {
            return Some(client_error(
                status,
                "ForwardedRequest",
                format!(
                    "the request carries a {name} header, so it was relayed by a proxy; \
                     credbroker serves credentials only to local callers"
                ),
            ));
        }
    }
    None
}

/// The `Authorization` header is not visible ASCII.
#[derive(Debug, Clone, Copy)]
pub struct NotAscii;

impl NotAscii {
    /// The 400 answer.
    pub fn response(self) -> Response {
        client_error(
            400,
            "MalformedRequest",
            "the Authorization header is not visible ASCII",
        )
    }
}

/// The caller's token from `Authorization` (raw, or after `Bearer `); empty when absent or
/// when nothing follows the prefix (so that is `MissingToken`, not `MalformedToken`).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, NotAscii> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok("");
    };
    let text = value.to_str().map_err(|_| NotAscii)?;
    Ok(strip_bearer(text.trim()))
}

/// `text` without a case-insensitive `Bearer` scheme and the blanks after it. A bare `Bearer`
/// is an empty token; `Bearerxyz` is a token, not a prefix.
pub(super) fn strip_bearer(text: &str) -> &str {
    const SCHEME: &str = "bearer";
    let (Some(scheme), Some(rest)) = (text.get(..SCHEME.len()), text.get(SCHEME.len()..)) else {
        return text;
    };
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return text;
    }
    match rest.strip_prefix([' ', '\t']) {
        Some(token) => token.trim_start(),
        None if rest.is_empty() => "",
        None => text,
    }
}

async fn credentials(State(state): State<AppState>, request: Request) -> Response {
    match answer(&state, &request) {
        DirectAnswer::Ready(response) => response,
        DirectAnswer::Later(later) => later.await,
    }
}

/// The answer to `request`: at once when the broker can give it without waiting (the cached
/// path allocates no future), else a future that finishes it. Either way the request is
/// recorded once.
fn answer(state: &AppState, request: &Request) -> DirectAnswer {
    let started = Instant::now();
    let finished = |response: Response| {
        state
            .broker
            .record_request(Surface::Container, response.status().as_str(), started);
        response
    };
    let token = match admit(request.method(), request.headers()) {
        Ok(token) => token,
        Err(refusal) => return DirectAnswer::Ready(finished(*refusal)),
    };
    let later = match state.broker.credentials_now(token, Surface::Container) {
        Now::Served(issued) => return DirectAnswer::Ready(finished(ok_response(&issued))),
        Now::Refused(e) => return DirectAnswer::Ready(finished(refused(&e))),
        Now::Later(validated) => validated,
    };
    let (state, token) = (state.clone(), token.to_owned());
    DirectAnswer::Later(Box::pin(async move {
        let response = match state.broker.finish(&token, later, Surface::Container).await {
            Ok(issued) => ok_response(&issued),
            Err(e) => refused(&e),
        };
        state
            .broker
            .record_request(Surface::Container, response.status().as_str(), started);
        response
    }))
}

/// The caller's token, or the refusal of a request that cannot carry one properly.
/// (The refusal boxed: a `Response` is large, and the accepted path is the common one.)
fn admit<'r>(method: &Method, headers: &'r HeaderMap) -> Result<&'r str, Box<Response>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = client_error(405, "MethodNotAllowed", "use GET");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Err(Box::new(r));
    }
    if let Some(refusal) = forwarded_refusal(headers) {
        return Err(Box::new(refusal));
    }
    bearer_token(headers).map_err(|e| Box::new(e.response()))
}

fn ok_response(issued: &Issued) -> Response {
    json_no_store(Response::new(Body::from(issued.container_body())))
}

fn refused(e: &BrokerError) -> Response {
    let reply = e.reply();
    tracing::debug!(
        code = reply.code,
        status = reply.status,
        "credentials refused"
    );
    error_response(&reply)
}

#[cfg(test)]
mod tests {
    use super::strip_bearer;

    #[test]
    fn bearer_prefix_is_stripped_only_when_it_is_a_prefix() {
        for (value, token) in [
            ("abc.def.ghi", "abc.def.ghi"),
            ("Bearer abc", "abc"),
            ("bearer    abc", "abc"),
            ("BEARER\tabc", "abc"),
            ("Bearer", ""),
            ("bearer", ""),
            ("Bearerabc", "Bearerabc"),
            ("Bear", "Bear"),
            ("", ""),
            ("é", "é"),
            ("Beareré", "Beareré"),
        ] {
            assert_eq!(strip_bearer(value), token, "{value:?}");
        }
    }
}
