//! The binary, run at trace level, never logs a token, secret key or session token: on the
//! container endpoint, in fleet mode (with a Redis outage and a tampered entry) and on real-time
//! subscriptions (OIDC and IAM, refused upgrades, a caller's own authorization). Logs are
//! searched for each secret in clear and as dependencies print bytes: hex, base64, base64url.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use credbroker_emulators::oidc::{SigningAlg, TokenSpec};

use crate::support::{Binary, Harness, Tweaks, config_toml, request, tempdir};

/// `secret` as logs can carry it: in clear, hex, and the base64 / base64url of its whole 3-byte
/// groups at each of the three alignments (so it is found inside any encoded text holding it).
fn forms(secret: &[u8]) -> Vec<(&'static str, String)> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = vec![
        ("in clear", String::from_utf8_lossy(secret).into_owned()),
        ("hex", hex.clone()),
        ("HEX", hex.to_uppercase()),
    ];
    for skip in 0..3 {
        let whole = secret.len().saturating_sub(skip) / 3 * 3;
        let Some(groups) = secret.get(skip..skip + whole).filter(|g| g.len() >= 15) else {
            continue;
        };
        let std = STANDARD_NO_PAD.encode(groups);
        out.push(("base64", std.clone()));
        out.push(("base64url", URL_SAFE_NO_PAD.encode(groups)));
        out.push((
            "percent-encoded base64",
            std.replace('+', "%2B").replace('/', "%2F"),
        ));
    }
    out
}

/// Fails, naming the secret and showing its line redacted, if any form of any secret is in
/// `logs`.
pub fn assert_never_logged(logs: &str, secrets: &[(String, Vec<u8>)]) {
    for (what, secret) in secrets {
        assert!(secret.len() >= 20, "{what} is too short to search for");
        for (form, text) in forms(secret) {
            if let Some(line) = logs.lines().find(|l| l.contains(text.as_str())) {
                let safe: String = line
                    .replace(text.as_str(), "<SECRET>")
                    .chars()
                    .take(400)
                    .collect();
                panic!("{what} ({form}) leaked into the logs: {safe}");
            }
        }
    }
}

/// A secret to search for, by what it is.
pub fn secret(what: impl Into<String>, value: impl AsRef<[u8]>) -> (String, Vec<u8>) {
    (what.into(), value.as_ref().to_vec())
}

/// Stops the binary with SIGTERM and returns everything it logged.
pub async fn stopped(mut bin: Binary) -> String {
    bin.signal("TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), bin.child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    (&mut bin.reader).await.expect("reader");
    bin.logs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_contain_no_secrets_and_one_audit_line_per_issuance() {
    // Emulators in this process; the broker as the real binary, logging at trace.
    let h = Harness::start().await;
    let dir = tempdir();
    let config = dir.join("credbroker.toml");
    std::fs::write(
        &config,
        config_toml(&h.issuer, &h.cognito, &Tweaks::default()),
    )
    .expect("write");

    let mut bin = Binary::spawn(&config, "trace");
    let addr = bin.listen_of("credbroker is serving").await;
    let url = format!("http://{addr}/v1/credentials");

    let alice = h.issuer.token_for("auth0|alice");
    let bob = h.issuer.token_for("auth0|bob");
    let hs = h.issuer.mint(&TokenSpec {
        alg: SigningAlg::Hs256 {
            secret: b"s3cr3t-client-secret".to_vec(),
        },
        ..TokenSpec::for_subject("auth0|mallory")
    });
    let mut secrets = vec![alice.clone(), bob.clone(), hs.clone()];
    for token in [&alice, &alice, &bob, &hs, &alice] {
        let reply = request(&h.http, "GET", &url, &[("authorization", token)]).await;
        if reply.status == 200 {
            let body = reply.json();
            secrets.push(body["SecretAccessKey"].as_str().expect("secret").to_owned());
            secrets.push(body["Token"].as_str().expect("token").to_owned());
        }
    }
    // A token's signature alone must not appear either.
    let signatures: Vec<String> = secrets[..3]
        .iter()
        .filter_map(|t| t.rsplit('.').next().map(str::to_owned))
        .collect();
    secrets.extend(signatures);

    // Graceful stop with SIGTERM.
    bin.signal("TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), bin.child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    (&mut bin.reader).await.expect("reader");

    let logs = bin.logs();
    assert!(
        logs.contains("DEBUG credbroker::identity: credentials obtained")
            && logs.contains("DEBUG credbroker::server::container: credentials refused"),
        "verbose logging is on:\n{logs}"
    );
    for secret in &secrets {
        assert!(secret.len() >= 20);
        if let Some(line) = logs.lines().find(|l| l.contains(secret.as_str())) {
            let at = line.find(secret.as_str()).unwrap_or(0);
            let safe: String = line
                .replace(secret.as_str(), "<SECRET>")
                .chars()
                .take(400)
                .collect();
            panic!("a secret leaked into the logs at byte {at}: {safe}");
        }
    }
    assert!(!logs.contains("s3cr3t-client-secret"));
    let audit: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("credbroker::audit") && l.contains("credentials issued"))
        .collect();
    assert_eq!(
        audit.len(),
        2,
        "one audit line per issued set (alice, bob):\n{}",
        audit.join("\n")
    );
    assert!(
        audit
            .iter()
            .all(|l| l.contains("subject_hash=") && !l.contains("auth0|"))
    );
    // Who, where and until when: every field an auditor needs, none of the secrets above.
    for field in [
        "surface=\"container\"",
        "provider=test",
        "identity_id=",
        "access_key_id=",
        "expiration=",
    ] {
        assert!(
            audit.iter().all(|l| l.contains(field)),
            "{field} missing:\n{}",
            audit.join("\n")
        );
    }
    h.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_binary_reports_a_panic_without_its_message() {
    // `check-config` prints the configuration; with stdout a pipe nobody reads, that print
    // panics ("failed printing to stdout: Broken pipe"). Rust's default hook would print that
    // message; credbroker's prints only where it happened.
    let dir = tempdir();
    let config = dir.join("credbroker.toml");
    std::fs::write(
        &config,
        "[providers.auth0]\nissuer = \"https://dev-x.us.auth0.com/\"\naudiences = [\"c\"]\n\
         [cognito]\nregion = \"us-east-1\"\n\
         identity_pool_id = \"us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211\"\n",
    )
    .expect("write");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credbroker"))
        .args(["check-config", "--file"])
        .arg(&config)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run credbroker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "a panic: {stderr}");
    assert!(
        stderr.contains("credbroker: internal error: panicked at ")
            && stderr.contains("on thread main"),
        "credbroker's hook reported it: {stderr}"
    );
    assert!(stderr.contains("message withheld"), "{stderr}");
    assert!(
        !stderr.contains("failed printing") && !stderr.contains("Broken pipe"),
        "the panic message is not printed: {stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ---- Fleet mode ----

/// A password-protected redis-server on a loopback port (the password in `shared.url`).
struct PasswordRedis {
    server: credbroker_emulators::redis_server::RedisServer,
    password: String,
}

impl PasswordRedis {
    fn start(dir: &std::path::Path) -> Self {
        let line = credbroker::shared::generate_key_line("pw").expect("rng");
        let password = crate::realtime::sha256_hex(&line)[..40].to_owned();
        let server = credbroker_emulators::redis_server::RedisServer::start_tcp_in(
            &dir.join("redis"),
            &["--requirepass".to_owned(), password.clone()],
        )
        .expect("redis-server starts");
        Self { server, password }
    }

    fn url(&self) -> String {
        let port = self.server.port().expect("tcp");
        format!("redis://:{}@127.0.0.1:{port}/", self.password)
    }

    async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("the test's client connects")
    }

    async fn keys(&self) -> std::collections::BTreeSet<String> {
        let mut c = self.client().await;
        redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .expect("KEYS")
    }

    /// Flips the last byte of the value at `key`, keeping its TTL.
    async fn tamper(&self, key: &str) {
        let mut c = self.client().await;
        let mut value: Vec<u8> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .expect("GET");
        if let Some(b) = value.last_mut() {
            *b ^= 0x01;
        }
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("KEEPTTL")
            .query_async(&mut c)
            .await
            .expect("SET");
    }
}

/// A credentials request that must succeed: its `AccessKeyId`, and the secrets of the answer
/// added to `secrets`.
async fn served(
    h: &Harness,
    addr: &str,
    authorization: &str,
    secrets: &mut Vec<(String, Vec<u8>)>,
) -> String {
    let url = format!("http://{addr}/v1/credentials");
    let reply = request(&h.http, "GET", &url, &[("authorization", authorization)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let field = |k: &str| body[k].as_str().expect("field").to_owned();
    secrets.push(secret("a secret access key", field("SecretAccessKey")));
    secrets.push(secret("a session token", field("Token")));
    field("AccessKeyId")
}

/// An ID token for `subject`, added to `secrets` with its signature alone.
fn token(h: &Harness, subject: &str, secrets: &mut Vec<(String, Vec<u8>)>) -> String {
    let t = h.issuer.token_for(subject);
    secrets.push(secret(format!("{subject}'s ID token"), &t));
    if let Some(signature) = t.rsplit('.').next() {
        secrets.push(secret(format!("{subject}'s ID token signature"), signature));
    }
    t
}

/// A session handle for `id_token` on the broker at `addr`.
async fn session(h: &Harness, addr: &str, id_token: &str) -> String {
    let body = serde_json::json!({ "id_token": id_token }).to_string();
    let reply = crate::support::send(
        &h.http,
        "POST",
        &format!("http://{addr}/v1/sessions"),
        &[("content-type", "application/json")],
        bytes::Bytes::from(body),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["session_token"]
        .as_str()
        .expect("session_token")
        .to_owned()
}

/// Waits (30 s guard, not a timing assertion) until `bin` has logged `message`.
async fn logged(bin: &Binary, message: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !bin.logs().contains(message) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {message:?} in:\n{}", bin.logs()));
}

/// The fleet's run: sharing, a session, a tampered entry, an outage and the return of Redis.
/// Returns the secrets it saw.
async fn fleet_run(
    h: &Harness,
    redis: &mut PasswordRedis,
    a: &Binary,
    b: &Binary,
) -> Vec<(String, Vec<u8>)> {
    let mut secrets = Vec::new();
    let (addr_a, addr_b) = (
        a.listen_of("credbroker is serving").await,
        b.listen_of("credbroker is serving").await,
    );
    for user in ["auth0|alice", "auth0|bob"] {
        let t = token(h, user, &mut secrets);
        let on_a = served(h, &addr_a, &t, &mut secrets).await;
        let on_b = served(h, &addr_b, &t, &mut secrets).await;
        assert_eq!(on_a, on_b, "{user}'s set is shared through Redis");
    }
    let carol = token(h, "auth0|carol", &mut secrets);
    let handle = session(h, &addr_a, &carol).await;
    secrets.push(secret("a session handle", &handle));
    served(h, &addr_a, &handle, &mut secrets).await;

    // Erin's identity id and set, changed in Redis: refused by B, which exchanges again.
    let before = redis.keys().await;
    let erin = token(h, "auth0|erin", &mut secrets);
    let on_a = served(h, &addr_a, &erin, &mut secrets).await;
    let planted: Vec<String> = redis.keys().await.difference(&before).cloned().collect();
    assert!(planted.iter().any(|k| k.ends_with(":cr")), "{planted:?}");
    for k in planted
        .iter()
        .filter(|k| k.ends_with(":cr") || k.ends_with(":id"))
    {
        redis.tamper(k).await;
    }
    let on_b = served(h, &addr_b, &erin, &mut secrets).await;
    assert_ne!(on_a, on_b, "the tampered set was not served");
    logged(b, "a shared-tier entry did not verify").await;

    // Redis stops: both replicas serve alone; it returns (empty): sharing resumes.
    redis.server.stop();
    let frank = token(h, "auth0|frank", &mut secrets);
    served(h, &addr_a, &frank, &mut secrets).await;
    served(h, &addr_b, &frank, &mut secrets).await;
    logged(a, "shared tier unavailable").await;
    redis.server.restart().expect("redis-server restarts");
    let mut round = 0;
    while !(a.logs().contains("sharing resumes") && b.logs().contains("sharing resumes")) {
        assert!(round < 200, "sharing did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = token(h, &format!("auth0|after-{round}"), &mut secrets);
        served(h, &addr_a, &t, &mut secrets).await;
        served(h, &addr_b, &t, &mut secrets).await;
        round += 1;
    }
    let gina = token(h, "auth0|gina", &mut secrets);
    let on_a = served(h, &addr_a, &gina, &mut secrets).await;
    assert_eq!(
        on_a,
        served(h, &addr_b, &gina, &mut secrets).await,
        "shared again"
    );
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_trace_logs_hold_no_token_secret_key_encryption_key_or_redis_password() {
    let h = Harness::start().await;
    let dir = tempdir();
    let mut redis = PasswordRedis::start(&dir);
    let keys = dir.join("shared-keys");
    let lines: Vec<String> = ["naming", "k1"]
        .iter()
        .map(|id| credbroker::shared::generate_key_line(id).expect("rng"))
        .collect();
    std::fs::write(&keys, lines.join("\n") + "\n").expect("keys file");
    let config = dir.join("credbroker.toml");
    let shared = format!(
        "\n[shared]\nurl = \"{}\"\nencryption_keys_file = \"{}\"\nretry_interval = \"200ms\"\n",
        redis.url(),
        keys.display()
    );
    std::fs::write(
        &config,
        config_toml(&h.issuer, &h.cognito, &Tweaks::default()) + &shared,
    )
    .expect("write");
    let a = Binary::spawn(&config, "trace");
    let b = Binary::spawn(&config, "trace");
    let mut secrets = fleet_run(&h, &mut redis, &a, &b).await;
    let logs = stopped(a).await + &stopped(b).await;

    assert!(
        logs.contains("DEBUG credbroker::identity: credentials obtained")
            && logs.contains("a shared-tier entry did not verify"),
        "verbose logging is on:\n{logs}"
    );
    secrets.push(secret("the Redis password", &redis.password));
    for line in &lines {
        let (id, key) = line.split_once(':').expect("id:key");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("base64");
        secrets.push(secret(format!("encryption key {id}"), key));
        secrets.push(secret(format!("encryption key {id}'s bytes"), &bytes));
        secrets.push(secret(
            format!("encryption key {id}'s bytes as a list"),
            format!("{bytes:?}"),
        ));
    }
    assert_never_logged(&logs, &secrets);
    drop(redis);
    h.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

// ---- Real time ----

/// What a caller plants as its own authorization in every start.
const INJECTED: &str = "caller-injected-authorization-7c1e5b2a9d";

/// A subscription on `path` of the binary at `addr` authenticated by `protocols` / `header`,
/// a start carrying the caller's own authorization, a todo created through `graphql` and its
/// event, a stop and a close.
async fn subscription(
    h: &Harness,
    addr: &str,
    path: &str,
    (protocols, header): (&str, Option<&str>),
    (graphql, authorization): (&str, &str),
    content: &str,
) {
    use crate::realtime::{SUB, connect_raw, event, init, next_json, send_json, start_message};
    let mut ws = connect_raw(&format!("ws://{addr}{path}"), protocols, header)
        .await
        .expect("upgrade accepted");
    assert_eq!(init(&mut ws).await["type"], "connection_ack");
    let theirs = serde_json::json!({
        "authorization": { "Authorization": INJECTED, "host": "evil.example" },
        "x-api-key": INJECTED,
    });
    send_json(&mut ws, start_message("s1", SUB, theirs)).await;
    assert_eq!(next_json(&mut ws).await.expect("ack")["type"], "start_ack");
    let body =
        serde_json::json!({ "query": crate::realtime::CREATE, "variables": { "c": content } });
    let reply = crate::support::send(
        &h.http,
        "POST",
        &format!("http://{addr}{graphql}"),
        &[
            ("authorization", authorization),
            ("content-type", "application/json"),
        ],
        bytes::Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(event(&mut ws, "s1").await["content"], content);
    send_json(&mut ws, serde_json::json!({ "type": "stop", "id": "s1" })).await;
    assert_eq!(
        next_json(&mut ws).await.expect("complete")["type"],
        "complete"
    );
    let _ = futures_util::SinkExt::close(&mut ws).await;
}

/// The subprotocol list carrying `token` as Amplify v6 sends it.
fn subprotocol(addr: &str, token: &str) -> String {
    let header = serde_json::json!({ "Authorization": token, "host": addr }).to_string();
    format!("graphql-ws,header-{}", URL_SAFE_NO_PAD.encode(header))
}

/// Refused upgrades: a forged token, an expired one, a malformed header.
async fn refused_upgrades(h: &Harness, addr: &str, secrets: &mut Vec<(String, Vec<u8>)>) {
    use crate::realtime::{connect_raw, refusal};
    let forged = h.issuer.mint(&TokenSpec {
        tamper_payload: true,
        ..TokenSpec::for_subject("auth0|mallory")
    });
    let now = std::time::SystemTime::now();
    let expired = h.issuer.mint(&TokenSpec {
        issued_at: Some(now - Duration::from_secs(7200)),
        lifetime: Some(Duration::from_secs(3600)),
        ..TokenSpec::for_subject("auth0|mallory")
    });
    secrets.push(secret("a forged ID token", &forged));
    secrets.push(secret("an expired ID token", &expired));
    let url = format!("ws://{addr}/appsync/realtime");
    let std = base64::engine::general_purpose::STANDARD
        .encode(serde_json::json!({ "Authorization": expired }).to_string());
    for (url, protocols, header, code) in [
        (
            url.clone(),
            subprotocol(addr, &forged),
            None,
            "InvalidSignature",
        ),
        (
            format!("{url}?header={std}&payload=e30="),
            "graphql-ws".to_owned(),
            None,
            "TokenExpired",
        ),
        (
            url.clone(),
            "graphql-ws".to_owned(),
            Some(forged.as_str()),
            "InvalidSignature",
        ),
        (
            url.clone(),
            format!("graphql-ws,header-{INJECTED}"),
            None,
            "MalformedRequest",
        ),
    ] {
        let (_, got) = refusal(connect_raw(&url, &protocols, header).await);
        assert_eq!(got, code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_trace_logs_hold_no_token_credential_handle_or_callers_authorization() {
    let h = Harness::with(Tweaks {
        appsync: Some(String::new()),
        ..Tweaks::default()
    })
    .await;
    let dir = tempdir();
    let config = dir.join("credbroker.toml");
    let text = config_toml(&h.issuer, &h.cognito, &Tweaks::default())
        + &crate::support::appsync_toml(h.appsync(), "");
    std::fs::write(&config, text).expect("write");
    let bin = Binary::spawn(&config, "trace");
    let addr = bin.listen_of("credbroker is serving").await;
    let mut secrets = vec![secret("the caller's injected authorization", INJECTED)];

    // OIDC mode: Alice's ID token in the header- subprotocol.
    let alice = token(&h, "auth0|alice", &mut secrets);
    let oidc = subprotocol(&addr, &alice);
    let graphql = ("/appsync/graphql", alice.as_str());
    subscription(
        &h,
        &addr,
        "/appsync/realtime",
        (&oidc, None),
        graphql,
        "alice's",
    )
    .await;
    // IAM mode: Bob's session handle in Authorization; Carol's ID token in ?header=.
    let bob = token(&h, "auth0|bob", &mut secrets);
    let handle = session(&h, &addr, &bob).await;
    secrets.push(secret("a session handle", &handle));
    let iam = ("/appsync/iam/graphql", handle.as_str());
    let bearer = format!("Bearer {handle}");
    let placed = ("graphql-ws", Some(bearer.as_str()));
    subscription(&h, &addr, "/appsync/iam/realtime", placed, iam, "bob's").await;
    let carol = token(&h, "auth0|carol", &mut secrets);
    let std = base64::engine::general_purpose::STANDARD
        .encode(serde_json::json!({ "Authorization": carol, "host": addr }).to_string());
    let path = format!("/appsync/iam/graphql/realtime?header={std}&payload=e30=");
    let iam = ("/appsync/iam/graphql", carol.as_str());
    subscription(&h, &addr, &path, ("graphql-ws", None), iam, "carol's").await;
    refused_upgrades(&h, &addr, &mut secrets).await;

    // The credentials the relays signed with are the cached sets of Bob and Carol.
    let before = secrets.len();
    served(&h, &addr, &handle, &mut secrets).await;
    served(&h, &addr, &carol, &mut secrets).await;
    let signed: Vec<String> = h
        .appsync()
        .received_connect_authorizations()
        .iter()
        .filter_map(|r| r.sha256.get("x-amz-security-token").cloned())
        .collect();
    for (what, value) in &secrets[before..] {
        if what == "a session token" {
            let digest = crate::realtime::sha256_hex(std::str::from_utf8(value).expect("utf-8"));
            assert!(signed.contains(&digest), "the relay signed with this set");
        }
    }
    let logs = stopped(bin).await;
    assert!(
        logs.contains("DEBUG credbroker::server::realtime: appsync real-time upgrade refused"),
        "verbose logging is on:\n{logs}"
    );
    assert_never_logged(&logs, &secrets);
    h.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
