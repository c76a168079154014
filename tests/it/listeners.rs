//! The HTTP listeners themselves, on the wire: every refusal credbroker can shape is
//! `{"Code","Message"}` JSON (with `Allow` on 405), on every route of every listener; what hyper
//! answers before routing is exactly what README lists.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::{Harness, RawConn, RawReply, Reply, Tweaks, raw_get};

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
        (Main, "POST", "/appsync/oidc/realtime", "", b"", 405, "MethodNotAllowed", Some("GET")),
        (Main, "GET", "/appsync/oidc/realtime", "", b"", 426, "UpgradeRequired", None),
        (Main, "GET", "/appsync/nope/realtime", "", b"", 404, "NoSuchApi", None),
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

/// The open connections of `listener`, as the admin listener reports them.
async fn open_connections(h: &Harness, listener: &str) -> f64 {
    let m = h.admin_get("/metrics").await.text();
    crate::single_flight::metric(
        &m,
        &format!("credbroker_http_connections{{listener=\"{listener}\"}}"),
    )
}

/// Waits (bounded) until `listener` has `n` open connections.
async fn wait_open_connections(h: &Harness, listener: &str, n: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open = open_connections(h, listener).await;
        if open == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{listener}: {open} open connections, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until the broker has started `n` Cognito exchanges.
async fn wait_misses(h: &Harness, n: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = h.admin_get("/metrics").await.text();
        if crate::single_flight::metric(&m, "credbroker_cache_lookups_total{result=\"miss\"}") >= n
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GET on a new connection of its own (no pool), as a well-behaved SDK's first request.
async fn fresh_get(url: &str, token: Option<&str>) -> Reply {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let headers: Vec<(&str, &str)> = token.map(|t| ("authorization", t)).into_iter().collect();
    crate::support::request(&client, "GET", url, &headers).await
}

/// Whether the server has closed `conn` (EOF or reset queued), without waiting.
fn closed_now(conn: &RawConn) -> bool {
    let mut byte = [0u8; 1];
    match conn.stream.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test]
async fn a_complete_request_is_served_while_slow_clients_hold_every_slot() {
    // Four slots, and a head timeout so long that without shedding the good client below
    // would wait for the whole test (its request would fail after the 30 s guard).
    let h = Harness::with(Tweaks {
        server: "max_connections = 4\nheader_read_timeout = \"300s\"".into(),
        ..Tweaks::default()
    })
    .await;
    let main = h.running().container_addr;
    let token = h.issuer.token_for("auth0|patient");

    // Slow clients in every slot: one served once and now sending its next head byte by byte,
    // two that sent part of a head, one that sent nothing at all.
    let mut slow = Vec::new();
    let mut kept = RawConn::connect(main).await;
    kept.send(&raw_get(
        main,
        "/v1/credentials",
        &[("authorization", &token)],
    ))
    .await;
    assert_eq!(kept.response().await.expect("answered").status, 200);
    kept.send(b"GET /v1/cred").await;
    slow.push(kept);
    for partial in [&b"GET /v1/credentials HTTP/1.1\r\nhost: 127"[..], b"G", b""] {
        let mut c = RawConn::connect(main).await;
        c.send(partial).await;
        slow.push(c);
    }
    wait_open_connections(&h, "main", 4.0).await;

    // Well-behaved clients, each on a new connection with a complete request, are served.
    for _ in 0..3 {
        let reply = fresh_get(&h.url(), Some(&token)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.json()["AccessKeyId"].is_string());
    }
    let m = h.admin_get("/metrics").await.text();
    let shed = crate::single_flight::metric(
        &m,
        "credbroker_http_connections_shed_total{listener=\"main\"}",
    );
    assert!(shed >= 1.0, "{m}");
    let closed = slow.iter().filter(|c| closed_now(c)).count();
    assert!(closed >= 1, "a slow connection was closed to make room");
    assert!(closed <= 3, "not every slow client needed to go");
    h.stop().await;
}

#[tokio::test]
async fn a_connection_serving_a_request_is_never_shed() {
    let h = Harness::with(Tweaks {
        server: "max_connections = 2\nheader_read_timeout = \"300s\"".into(),
        ..Tweaks::default()
    })
    .await;
    let main = h.running().container_addr;
    // Every exchange takes a while, so requests that need one stay in the serving state.
    h.cognito.faults().set_latency(Duration::from_millis(700));
    let url = h.url();
    let slow_request = |sub: &str| {
        let (url, token) = (url.clone(), h.issuer.token_for(sub));
        tokio::spawn(async move { fresh_get(&url, Some(&token)).await })
    };

    // One slot serves a request waiting on Cognito, the other holds a slow client.
    let serving = slow_request("auth0|serving-1");
    wait_misses(&h, 1.0).await;
    let mut partial = RawConn::connect(main).await;
    partial.send(b"GET /v1/credentials HTTP/1.1\r\n").await;
    wait_open_connections(&h, "main", 2.0).await;
    // A new client takes the slow client's slot, not the serving one's.
    let reply = fresh_get(&url, None).await;
    assert_eq!((reply.status, reply.code().as_str()), (401, "MissingToken"));
    assert!(partial.closed_by_server().await);
    let reply = serving.await.expect("task");
    assert_eq!(
        reply.status,
        200,
        "the serving request completed: {}",
        reply.text()
    );

    // Both slots serving: a new client waits until one of them is done, then is served.
    let first = slow_request("auth0|serving-2");
    let second = slow_request("auth0|serving-3");
    wait_misses(&h, 3.0).await;
    let third = fresh_get(&url, None).await;
    assert_eq!((third.status, third.code().as_str()), (401, "MissingToken"));
    for r in [first, second] {
        let reply = r.await.expect("task");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    h.cognito.faults().clear();
    h.stop().await;
}

#[tokio::test]
async fn only_loopback_localhost_and_configured_hosts_get_credentials_or_imds_tokens() {
    let mut t = all_listeners("allowed_hosts = [\"creds.internal\"]");
    t.extra
        .push_str("allowed_hosts = [\"metadata.internal\"]\n");
    let h = Harness::with(t).await;
    let main = addr(&h, Listener::Main);
    let imds = addr(&h, Listener::Imds);
    let token = h.issuer.token_for(SUBJECT);
    let auth = format!("authorization: {token}\r\n");
    let ttl = "x-aws-ec2-metadata-token-ttl-seconds: 60\r\n";
    let session_body = serde_json::json!({ "id_token": token }).to_string();
    let port = main.port();

    let with_host = |a: SocketAddr,
                     method: &str,
                     target: &str,
                     host: Option<&str>,
                     extra: &str,
                     body: &[u8]| {
        let mut r = format!("{method} {target} HTTP/1.1\r\n");
        if let Some(host) = host {
            r.push_str(&format!("host: {host}\r\n"));
        }
        r.push_str(&format!("content-length: {}\r\n{extra}\r\n", body.len()));
        let mut r = r.into_bytes();
        r.extend_from_slice(body);
        (a, r)
    };

    let allowed = [
        format!("127.0.0.1:{port}"),
        "127.0.0.2".to_owned(),
        "[::1]:80".to_owned(),
        format!("localhost:{port}"),
        "LOCALHOST".to_owned(),
        "localhost.".to_owned(),
        "creds.internal:8900".to_owned(),
    ];
    for host in &allowed {
        let (a, r) = with_host(main, "GET", "/v1/credentials", Some(host), &auth, b"");
        let reply = exchange(a, &r).await;
        assert_eq!(
            reply.status,
            200,
            "Host {host}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let refused = [
        Some("evil.example"),
        Some("evil.example:8900"),
        Some("localhost.evil.example"),
        Some("127.0.0.1.nip.io"),
        Some("10.0.0.1"),
        Some("[::2]:80"),
        Some("localhost:http"),
        None,
    ];
    let before = (h.get_id_calls(), h.credential_calls());
    for host in refused {
        for (a, r) in [
            with_host(main, "GET", "/v1/credentials", host, &auth, b""),
            with_host(
                main,
                "POST",
                "/v1/sessions",
                host,
                "content-type: application/json\r\n",
                session_body.as_bytes(),
            ),
            with_host(
                main,
                "POST",
                "/appsync/graphql",
                host,
                &auth,
                br#"{"query":"{ __typename }"}"#,
            ),
            with_host(main, "GET", "/no/such/path", host, "", b""),
            with_host(imds, "PUT", "/latest/api/token", host, ttl, b""),
        ] {
            let reply = exchange(a, &r).await;
            let what = format!(
                "Host {host:?}: {}",
                String::from_utf8_lossy(&r[..r.len().min(40)])
            );
            assert_json_refusal(&reply, 403, "HostNotAllowed", None, &what);
            assert!(
                reply
                    .header("x-aws-ec2-metadata-token-ttl-seconds")
                    .is_none(),
                "{what}"
            );
        }
    }
    // Repeated Host headers, and an absolute-form target naming another host.
    let r = format!(
        "GET /v1/credentials HTTP/1.1\r\nhost: 127.0.0.1\r\nhost: evil.example\r\n{auth}\r\n"
    );
    assert_json_refusal(
        &exchange(main, r.as_bytes()).await,
        403,
        "HostNotAllowed",
        None,
        "two Hosts",
    );
    let r =
        format!("GET http://evil.example/v1/credentials HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}\r\n");
    assert_json_refusal(
        &exchange(main, r.as_bytes()).await,
        403,
        "HostNotAllowed",
        None,
        "absolute form",
    );
    assert_eq!(
        (h.get_id_calls(), h.credential_calls()),
        before,
        "no refused request reached Cognito"
    );
    assert_eq!(h.appsync().stats().requests, 0, "nor AppSync");

    // Each listener has its own names: IMDS's is refused on the main listener and vice versa.
    let (a, r) = with_host(
        main,
        "GET",
        "/v1/credentials",
        Some("metadata.internal"),
        &auth,
        b"",
    );
    assert_json_refusal(
        &exchange(a, &r).await,
        403,
        "HostNotAllowed",
        None,
        "IMDS name on main",
    );
    for (host, status) in [
        ("metadata.internal", 200),
        ("localhost", 200),
        ("creds.internal", 403),
    ] {
        let (a, r) = with_host(imds, "PUT", "/latest/api/token", Some(host), ttl, b"");
        assert_eq!(exchange(a, &r).await.status, status, "IMDS Host {host}");
    }
    // The admin listener answers any Host: kubelet and Prometheus send the pod IP.
    let admin = addr(&h, Listener::Admin);
    let (a, r) = with_host(admin, "GET", "/livez", Some("10.1.2.3:8909"), "", b"");
    assert_eq!(exchange(a, &r).await.status, 200);
    let m = h.admin_get("/metrics").await.text();
    assert!(
        crate::single_flight::metric(&m, "credbroker_http_host_refusals_total{listener=\"main\"}")
            == 35.0,
        "{m}"
    );
    h.stop().await;
}

#[tokio::test]
async fn sdks_pointed_at_localhost_keep_working() {
    let h = Harness::start().await;
    let url = h.url().replace("127.0.0.1", "localhost");
    let file = h.token_file("t", &h.issuer.token_for("auth0|via-localhost"));
    let creds = crate::support::sdk_container_credentials(&url, &file)
        .await
        .expect("aws-config's container provider sends Host: localhost:PORT");
    assert!(creds.access_key_id().starts_with("ASIA"));
    h.stop().await;
}

#[tokio::test]
async fn a_request_received_before_shutdown_is_answered_with_connection_close() {
    let mut h = Harness::start().await;
    let main = h.running().container_addr;
    let token = h.issuer.token_for("auth0|draining");
    let get = raw_get(main, "/v1/credentials", &[("authorization", &token)]);
    let served_once = |mut c: RawConn| {
        let get = get.clone();
        async move {
            c.send(&get).await;
            let r = c.response().await.expect("answered");
            assert_eq!(r.status, 200);
            assert_ne!(r.header("connection"), Some("close"));
            c
        }
    };
    // A: keep-alive; half of its next request arrives before the shutdown, half after.
    let mut a = served_once(RawConn::connect(main).await).await;
    let (head, tail) = get.split_at(24);
    a.send(head).await;
    // B: keep-alive and idle: nothing of a next request.
    let mut b = served_once(RawConn::connect(main).await).await;
    // C: keep-alive; its whole next request is sent right before the shutdown.
    let mut c = served_once(RawConn::connect(main).await).await;
    c.send(&get).await;

    let running = h.running.take().expect("running");
    let stopping = tokio::spawn(running.stop());
    // The listener closes...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(main).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...the idle connection is closed (nothing was owed to it)...
    assert!(
        b.closed_by_server().await,
        "idle keep-alive connection closed"
    );
    // ...the request received just before the shutdown is answered, then the connection closes...
    let r = c.response().await.expect("C's request was answered");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server().await);
    // ...and so is the one whose head was still arriving.
    a.send(tail).await;
    let r = a.response().await.expect("A's request was answered");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(a.closed_by_server().await);
    assert!(
        stopping.await.expect("stop"),
        "drained within the grace period"
    );
    h.stop().await;
}
