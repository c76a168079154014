//! The HTTP listeners themselves, on the wire: every refusal credbroker can shape is
//! `{"Code","Message"}` JSON (with `Allow` on 405), on every route of every listener; what hyper
//! answers before routing is exactly what README lists.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::{Harness, RawConn, RawReply, Tweaks};

const SUBJECT: &str = "auth0|listeners";

/// A broker with every HTTP listener: main (credentials, sessions, AppSync), IMDS and admin.
pub fn all_listeners(server: &str) -> Tweaks {
    Tweaks {
        server: server.to_owned(),
        appsync: Some(String::new()),
        setup: Some(Arc::new(|issuer, dir| {
            credbroker::fsutil::write_atomic(
                &dir.join("id-token"),
                issuer.token_for(SUBJECT).as_bytes(),
            )
            .expect("token file");
        })),
        extra: r#"
[identities.me]
provider = "test"
id_token_file = "{dir}/id-token"

[imds]
listen = "127.0.0.1:0"
identity = "me"
"#
        .to_owned(),
        ..Tweaks::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Listener {
    Main,
    Imds,
    Admin,
}

fn addr(h: &Harness, l: Listener) -> SocketAddr {
    let r = h.running();
    match l {
        Listener::Main => r.container_addr,
        Listener::Imds => r.imds_addr.expect("imds"),
        Listener::Admin => r.admin_addr.expect("admin"),
    }
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut conn = RawConn::connect(addr).await;
    conn.send(request).await;
    conn.response()
        .await
        .unwrap_or_else(|| panic!("no answer to {}", String::from_utf8_lossy(request)))
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn assert_json_refusal(reply: &RawReply, status: u16, code: &str, allow: Option<&str>, what: &str) {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, status, "{what}: {body}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{what}: {body}"
    );
    let json = reply.json();
    assert_eq!(json["Code"], code, "{what}: {body}");
    assert!(
        json["Message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    assert_eq!(reply.header("allow"), allow, "{what}: Allow");
}

/// (listener, method, path, extra headers, body, status, Code, Allow)
type Case<'a> = (
    Listener,
    &'a str,
    &'a str,
    &'a str,
    &'a [u8],
    u16,
    &'a str,
    Option<&'a str>,
);

#[tokio::test]
async fn every_refusal_on_every_listener_is_json_in_the_documented_shape() {
    let h = Harness::with(all_listeners("")).await;
    let big = vec![b'x'; 70 * 1024];
    use Listener::*;
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // The sessions API: body limit, methods, body shape.
        (Main, "POST", "/v1/sessions", "content-type: application/json\r\n", &big, 413, "RequestTooLarge", None),
        (Main, "POST", "/v1/sessions", "", b"{", 400, "MalformedRequest", None),
        (Main, "GET", "/v1/sessions", "", b"", 405, "MethodNotAllowed", Some("POST")),
        (Main, "HEAD", "/v1/sessions", "", b"", 405, "MethodNotAllowed", Some("POST")),
        (Main, "PUT", "/v1/sessions/current", "", b"", 405, "MethodNotAllowed", Some("DELETE")),
        (Main, "GET", "/v1/sessions/current", "", b"", 405, "MethodNotAllowed", Some("DELETE")),
        (Main, "DELETE", "/v1/sessions/current", "", b"", 401, "InvalidSession", None),
        (Main, "DELETE", "/v1/sessions/other", "", b"", 404, "NotFound", None),
        // The credentials endpoint.
        (Main, "POST", "/v1/credentials", "", b"", 405, "MethodNotAllowed", Some("GET")),
        (Main, "GET", "/v1/credentials", "", b"", 401, "MissingToken", None),
        (Main, "GET", "/v1/credentials/", "", b"", 404, "NotFound", None),
        (Main, "GET", "/", "", b"", 404, "NotFound", None),
        // AppSync: methods, path parameters that are not UTF-8 once decoded, unknown APIs.
        (Main, "GET", "/appsync/graphql", "", b"", 405, "MethodNotAllowed", Some("POST")),
        (Main, "GET", "/appsync/oidc/graphql", "", b"", 405, "MethodNotAllowed", Some("POST")),
        (Main, "POST", "/appsync/%FF/graphql", "", b"{}", 404, "NoSuchApi", None),
        (Main, "POST", "/appsync/nope/graphql", "", b"{}", 404, "NoSuchApi", None),
        (Main, "POST", "/appsync/oidc/realtime", "", b"", 404, "NotFound", None),
        // IMDS.
        (Imds, "POST", "/latest/api/token", "", b"", 405, "MethodNotAllowed", Some("GET, PUT")),
        (Imds, "GET", "/latest/meta-data/iam/security-credentials/", "", b"", 401, "Unauthorized", None),
        (Imds, "PUT", "/latest/api/token", "", b"", 400, "BadRequest", None),
        // Admin: probes and metrics are GET only.
        (Admin, "POST", "/metrics", "", b"", 405, "MethodNotAllowed", Some("GET")),
        (Admin, "DELETE", "/livez", "", b"", 405, "MethodNotAllowed", Some("GET")),
        (Admin, "PUT", "/readyz", "", b"", 405, "MethodNotAllowed", Some("GET")),
        (Admin, "GET", "/nope", "", b"", 404, "NotFound", None),
    ];
    for (listener, method, path, headers, body, status, code, allow) in cases {
        let a = addr(&h, *listener);
        let reply = exchange(a, &request(a, method, path, headers, body)).await;
        let what = format!("{listener:?} {method} {path}");
        if *method == "HEAD" {
            // No body on HEAD; the status, type and Allow still tell.
            assert_eq!(reply.status, *status, "{what}");
            assert_eq!(
                reply.header("content-type"),
                Some("application/json"),
                "{what}"
            );
            assert_eq!(reply.header("allow"), *allow, "{what}");
            continue;
        }
        assert_json_refusal(&reply, *status, code, *allow, &what);
    }
    h.stop().await;
}

#[tokio::test]
async fn a_streamed_session_body_over_the_limit_is_413_json() {
    let h = Harness::with(all_listeners("")).await;
    let a = addr(&h, Listener::Main);
    let mut conn = RawConn::connect(a).await;
    conn.send(
        format!(
            "POST /v1/sessions HTTP/1.1\r\nhost: {a}\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let chunk = vec![b' '; 8192];
    for _ in 0..9 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        conn.send(&frame).await;
    }
    conn.send(b"0\r\n\r\n").await;
    let reply = conn.response().await.expect("an answer");
    assert_json_refusal(&reply, 413, "RequestTooLarge", None, "chunked 72 KiB");
    h.stop().await;
}

#[tokio::test]
async fn what_hyper_answers_before_routing_is_what_readme_lists() {
    // These refusals happen while hyper parses the request head, before any credbroker code
    // runs, so they cannot carry a JSON body; README lists them. This test pins them down.
    let h = Harness::with(all_listeners("")).await;
    let a = addr(&h, Listener::Main);
    let huge = format!(
        "GET /v1/credentials HTTP/1.1\r\nhost: {a}\r\nx-junk: {}\r\n\r\n",
        "x".repeat(64 * 1024)
    );
    let reply = exchange(a, huge.as_bytes()).await;
    assert_eq!((reply.status, reply.body.len()), (431, 0), "oversized head");
    for bad in [&b"\0"[..], b"\x7f", b"\r"] {
        let mut r =
            format!("GET /v1/credentials HTTP/1.1\r\nhost: {a}\r\nauthorization: ab").into_bytes();
        r.extend_from_slice(bad);
        r.extend_from_slice(b"cd\r\n\r\n");
        let reply = exchange(a, &r).await;
        assert_eq!(
            (reply.status, reply.body.len()),
            (400, 0),
            "{bad:?} in a header value"
        );
    }
    // Still serving afterwards.
    let ok = h.get(&h.issuer.token_for("auth0|after-bad-heads")).await;
    assert_eq!(ok.status, 200);
    h.stop().await;
}
