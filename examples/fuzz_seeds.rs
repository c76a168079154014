//! Writes the committed seed corpora of the fuzz targets under `fuzz/corpus/<target>/`:
//! `cargo run --example fuzz_seeds` (a normal build, unlike the instrumented fuzz crate).
//!
//! Tokens are minted by the emulated issuer and answers recorded from the emulated Cognito and
//! token endpoint over HTTP, exactly as credbroker would receive them; requests, GraphQL
//! documents and configuration files are the ones the README and the tests use. Time is frozen
//! at 2030-01-01, as in the targets. Re-running rewrites the same files (the issuer's port in
//! recorded `iss` values aside).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credbroker::clock::{Clock, SharedClock};

use credbroker_emulators::cognito::{
    CognitoEmulator, CognitoOptions, ErrorType, Operation, TrustedProvider,
};
use credbroker_emulators::oidc::{OidcIssuer, SigningAlg, TokenSpec};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(name), bytes).expect("write seed");
}

/// One HTTP/1.1 exchange over a fresh connection: (status, header lines, body).
async fn exchange(addr: std::net::SocketAddr, request: String) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&answer[..at]).into_owned();
    let mut body = answer[at + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let headers: Vec<&str> = lines
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    if headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers.join("\n"), body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(at) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..at]).unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[at + 2..at + 2 + size]);
        data = &data[at + 2 + size + 2..];
    }
    out
}

/// The fuzz encoding of a status: two bytes, `100 + value % 500`.
fn status_bytes(status: u16) -> [u8; 2] {
    (status - 100).to_be_bytes()
}

/// A seed of the `id_token` target's assembled modes: name, mode, header, claims, signature.
type Structured<'a> = (&'a str, u8, &'a [u8], &'a [u8], &'a [u8]);

fn id_token_seeds(issuer: &OidcIssuer) {
    let spec = |sub: &str| TokenSpec::for_subject(sub);
    let minted = [
        ("raw-rs256", spec("auth0|alice")),
        (
            "raw-es256",
            TokenSpec {
                alg: SigningAlg::Es256,
                ..spec("auth0|alice")
            },
        ),
        (
            "raw-hs256",
            TokenSpec {
                alg: SigningAlg::Hs256 {
                    secret: b"client-secret".to_vec(),
                },
                ..spec("auth0|alice")
            },
        ),
        (
            "raw-hs256-public-key",
            TokenSpec {
                alg: SigningAlg::Hs256WithPublicKey,
                ..spec("auth0|alice")
            },
        ),
        (
            "raw-none",
            TokenSpec {
                alg: SigningAlg::None,
                ..spec("auth0|alice")
            },
        ),
        (
            "raw-unpublished-key",
            TokenSpec {
                alg: SigningAlg::Rs256Unpublished,
                ..spec("auth0|alice")
            },
        ),
        (
            "raw-no-kid",
            TokenSpec {
                omit_kid: true,
                ..spec("auth0|alice")
            },
        ),
        (
            "raw-unknown-kid",
            TokenSpec {
                kid: Some("rotated-away".into()),
                ..spec("auth0|alice")
            },
        ),
        (
            "raw-tampered",
            TokenSpec {
                tamper_payload: true,
                ..spec("auth0|alice")
            },
        ),
        (
            "raw-aud-array-azp",
            TokenSpec {
                aud_as_array: true,
                azp: Some("credbroker-demo-client".into()),
                ..spec("auth0|bob")
            },
        ),
        (
            "raw-no-exp",
            TokenSpec {
                omit_exp: true,
                ..spec("auth0|alice")
            },
        ),
        (
            "raw-no-sub",
            TokenSpec {
                omit_sub: true,
                ..spec("auth0|alice")
            },
        ),
    ];
    for (name, spec) in minted {
        let mut seed = vec![0u8];
        seed.extend_from_slice(issuer.mint(&spec).as_bytes());
        write("id_token", name, &seed);
    }
    let mut jwe = vec![0u8];
    jwe.extend_from_slice(b"eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a2V5.aXY.Y2lwaGVy.dGFn");
    write("id_token", "raw-jwe", &jwe);

    let rs = br#"{"alg":"RS256","typ":"JWT","kid":"@KID@"}"#.as_slice();
    let es = br#"{"alg":"ES256","typ":"JWT","kid":"@ECKID@"}"#.as_slice();
    let auth0 = br#"{"nickname":"alice","name":"alice@example.com","picture":"https://s.gravatar.com/avatar/x.png","updated_at":"2029-12-31T23:00:00.000Z","email":"alice@example.com","email_verified":"true","iss":"@ISS@","aud":"@AUD@","sub":"auth0|alice","iat":@T0@,"exp":@EXP@,"sid":"Xy1","nonce":"n-0S6_WzA2Mj"}"#;
    let structured: [Structured<'_>; 10] = [
        ("rs256-claims", 1, rs, br#"{"iss":"@ISS@","sub":"auth0|alice","aud":"@AUD@","iat":@T0@,"exp":@EXP@}"#, b"not-a-signature"),
        ("es256-signed-auth0-claims", 2, es, auth0, b""),
        ("es256-signed-aud-array-azp", 2, es, br#"{"iss":"@ISS@","sub":"auth0|bob","aud":["@AUD@","https://api.example/"],"azp":"@AUD@","iat":@T0@,"nbf":@T0@,"exp":@EXP@}"#, b""),
        ("es256-signed-fractional-exp", 2, es, br#"{"iss":"@ISS@","sub":"auth0|carol","aud":"@AUD@","iat":1893455999.5,"exp":1.8934596E9}"#, b""),
        ("es256-signed-expired", 2, es, br#"{"iss":"@ISS@","sub":"auth0|alice","aud":"@AUD@","iat":1893450000,"exp":1893451000}"#, b""),
        ("es256-signed-issuer-slash-mismatch", 2, es, br#"{"iss":"@ISS@/","sub":"auth0|alice","aud":"@AUD@","exp":@EXP@}"#, b""),
        ("es256-signed-wrong-audience", 2, es, br#"{"iss":"@ISS@","sub":"auth0|alice","aud":"someone-else","exp":@EXP@}"#, b""),
        ("es256-signed-no-kid", 2, br#"{"alg":"ES256"}"#, br#"{"iss":"@ISS@","sub":"auth0|alice","aud":"@AUD@","exp":@EXP@}"#, b""),
        ("crit-header", 1, br#"{"alg":"RS256","kid":"@KID@","crit":["b64"],"b64":false}"#, br#"{"iss":"@ISS@","sub":"s","aud":"@AUD@","exp":@EXP@}"#, b"sig"),
        ("signature-text", 3, rs, br#"{"iss":"@ISS@","sub":"auth0|alice","aud":"@AUD@","exp":@EXP@}"#, b"c2ln+/=="),
    ];
    for (name, mode, header, claims, sig) in structured {
        let mut seed = vec![mode];
        seed.extend_from_slice(header);
        seed.push(0xFF);
        seed.extend_from_slice(claims);
        if !sig.is_empty() {
            seed.push(0xFF);
            seed.extend_from_slice(sig);
        }
        write("id_token", name, &seed);
    }
}

async fn cognito_seeds(issuer: &OidcIssuer, cognito: &CognitoEmulator) {
    let token = issuer.token_for("auth0|alice");
    let pool = cognito.identity_pool_id().to_owned();
    let logins = json!({ issuer.logins_key(): token });
    let call = |target: &str, body: serde_json::Value| {
        let body = body.to_string();
        format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-amz-json-1.1\r\n\
             X-Amz-Target: AWSCognitoIdentityService.{target}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            cognito.local_addr(),
            body.len()
        )
    };
    let addr = cognito.local_addr();
    let get_id = call("GetId", json!({"IdentityPoolId": pool, "Logins": logins}));
    let (status, head, body) = exchange(addr, get_id.clone()).await;
    let id: serde_json::Value = serde_json::from_slice(&body).expect("GetId JSON");
    let identity_id = id["IdentityId"].as_str().expect("IdentityId").to_owned();
    let record = |name: &str, op: u8, (status, head, body): (u16, String, Vec<u8>)| {
        let mut seed = vec![op];
        seed.extend_from_slice(&status_bytes(status));
        seed.extend_from_slice(head.as_bytes());
        seed.extend_from_slice(b"\n\n");
        seed.extend_from_slice(&body);
        write("cognito_answers", name, &seed);
    };
    record("get-id-ok", 0, (status, head, body));
    let creds = call(
        "GetCredentialsForIdentity",
        json!({"IdentityId": identity_id, "Logins": logins}),
    );
    record("get-credentials-ok", 1, exchange(addr, creds.clone()).await);
    let bad = call(
        "GetId",
        json!({"IdentityPoolId": pool, "Logins": {issuer.logins_key(): "e30.e30.e30"}}),
    );
    record("get-id-not-authorized", 0, exchange(addr, bad).await);
    let unknown = call(
        "GetId",
        json!({"IdentityPoolId": "us-east-1:00000000-0000-0000-0000-000000000000", "Logins": logins}),
    );
    record(
        "get-id-resource-not-found",
        0,
        exchange(addr, unknown).await,
    );
    let invalid = call(
        "GetCredentialsForIdentity",
        json!({"IdentityId": "nope", "Logins": logins}),
    );
    record(
        "get-credentials-invalid-parameter",
        1,
        exchange(addr, invalid).await,
    );
    for (name, error) in [
        ("throttled", ErrorType::TooManyRequests),
        ("internal-error", ErrorType::InternalError),
        ("external-service", ErrorType::ExternalService),
        ("limit-exceeded", ErrorType::LimitExceeded),
        (
            "pool-configuration",
            ErrorType::InvalidIdentityPoolConfiguration,
        ),
    ] {
        cognito
            .faults()
            .fail_next(Operation::GetCredentialsForIdentity, error, 1);
        record(
            &format!("get-credentials-{name}"),
            1,
            exchange(addr, creds.clone()).await,
        );
    }
    cognito.faults().set_outage(true);
    record("get-id-outage", 0, exchange(addr, get_id).await);
    cognito.faults().set_outage(false);
    // What a proxy or a load balancer in between may answer instead.
    let handmade: [(&str, u8, u16, &str, &[u8]); 4] = [
        ("proxy-502-html", 1, 502, "content-type: text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
        ("namespaced-type", 0, 400, "content-type: application/x-amz-json-1.1", br#"{"__type":"com.amazonaws.cognito.identity.model#NotAuthorizedException","message":"Invalid login token. Token expired: 1893452400 >= 1893448800"}"#),
        ("error-type-header-only", 0, 400, "x-amzn-errortype: TooManyRequestsException:http://internal.amazon.com/coral/com.amazonaws.cognito.identity.model/", b""),
        ("expiration-e-notation", 1, 200, "content-type: application/x-amz-json-1.1", br#"{"Credentials":{"AccessKeyId":"ASIAEXAMPLE","Expiration":1.893459600E9,"SecretKey":"secret","SessionToken":"session"},"IdentityId":"us-east-1:5f9b8f2e-0000-4000-8000-000000000001"}"#),
    ];
    for (name, op, status, head, body) in handmade {
        record(name, op, (status, head.to_owned(), body.to_vec()));
    }
}

async fn token_endpoint_seeds(issuer: &OidcIssuer) {
    let addr = issuer.local_addr();
    let grant = |refresh: &str| {
        let body = format!(
            "grant_type=refresh_token&client_id={}&refresh_token={refresh}",
            issuer.audience()
        );
        format!(
            "POST /oauth/token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let refresh = issuer.issue_refresh_token("auth0|alice");
    let record = |name: &str, (status, _head, body): (u16, String, Vec<u8>)| {
        let mut seed = status_bytes(status).to_vec();
        seed.extend_from_slice(&body);
        write("token_endpoint", name, &seed);
    };
    record("grant-rotated", exchange(addr, grant(&refresh)).await);
    record(
        "reused-refresh-token",
        exchange(addr, grant(&refresh)).await,
    );
    record(
        "unknown-refresh-token",
        exchange(addr, grant("v1.unknown")).await,
    );
    let handmade: [(&str, u16, &[u8]); 6] = [
        ("grant-auth0", 200, br#"{"access_token":"eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..x.y.z","id_token":"eyJhbGciOiJSUzI1NiJ9.e30.c2ln","scope":"openid profile email offline_access","expires_in":86400,"token_type":"Bearer"}"#),
        ("invalid-client", 401, br#"{"error":"invalid_client","error_description":"Client authentication failed."}"#),
        ("unauthorized-client", 403, br#"{"error":"unauthorized_client","error_description":"Grant type 'refresh_token' not allowed for the client."}"#),
        ("rate-limited", 429, br#"{"error":"too_many_requests","error_description":"Global limit has been reached"}"#),
        ("server-error-html", 500, b"<!DOCTYPE html><title>Internal Server Error</title>"),
        ("temporarily-unavailable", 503, br#"{"error":"temporarily_unavailable"}"#),
    ];
    for (name, status, body) in handmade {
        record(name, (status, String::new(), body.to_vec()));
    }
}

fn http_routes_seeds() {
    let main: [(&str, &str); 16] = [
        (
            "credentials",
            "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nAuthorization: @TOKEN@\r\nUser-Agent: aws-sdk-rust/1.3.0\r\n\r\n",
        ),
        (
            "credentials-bearer",
            "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nAuthorization: Bearer @BOB@\r\n\r\n",
        ),
        (
            "credentials-session",
            "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nAuthorization: @SESSION@\r\n\r\n",
        ),
        (
            "credentials-no-token",
            "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1:8900\r\n\r\n",
        ),
        (
            "credentials-empty-bearer",
            "GET /v1/credentials HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \r\n\r\n",
        ),
        (
            "credentials-forwarded",
            "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nAuthorization: @TOKEN@\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
        ),
        (
            "credentials-role",
            "GET /v1/credentials?role=arn:aws:iam::123456789012:role/app HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: @TOKEN@\r\n\r\n",
        ),
        (
            "session-create",
            "POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"id_token\":\"@BOB@\"}",
        ),
        (
            "session-create-json",
            "POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nContent-Type: application/json\r\n\r\n{\"id_token\":\"@TOKEN@\",\"refresh_token\":\"v1.refresh\",\"client_id\":\"credbroker-demo-client\"}",
        ),
        (
            "session-logout",
            "DELETE /v1/sessions/current HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nAuthorization: @SESSION@\r\n\r\n",
        ),
        (
            "session-get",
            "GET /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1:8900\r\n\r\n",
        ),
        (
            "session-put-current",
            "PUT /v1/sessions/current HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nAuthorization: @SESSION@\r\n\r\n",
        ),
        (
            "appsync-query",
            "POST /appsync/graphql HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nAuthorization: @TOKEN@\r\nContent-Type: application/json\r\n\r\n{\"query\":\"query { listTodos { id content owner } }\",\"variables\":{}}",
        ),
        (
            "appsync-mutation",
            "POST /appsync/readonly/graphql HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nAuthorization: @SESSION@\r\nContent-Type: application/json\r\n\r\n{\"query\":\"mutation Create($c: String!) { createTodo(content: $c) { id } }\",\"variables\":{\"c\":\"\\u00e9\"}}",
        ),
        (
            "appsync-unknown-api",
            "POST /appsync/nope/graphql HTTP/1.1\r\nHost: 127.0.0.1:8900\r\nAuthorization: @TOKEN@\r\n\r\n{}",
        ),
        (
            "appsync-get",
            "GET /appsync/graphql HTTP/1.1\r\nHost: 127.0.0.1:8900\r\n\r\n",
        ),
    ];
    for (name, request) in main {
        let mut seed = vec![0u8];
        seed.extend_from_slice(request.as_bytes());
        write("http_routes", &format!("main-{name}"), &seed);
    }
    let imds: [(&str, &[u8]); 10] = [
        ("token", b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n"),
        ("token-bad-ttl", b"PUT /latest/api/token HTTP/1.1\r\nHost: 127.0.0.1:8904\r\nX-aws-ec2-metadata-token-ttl-seconds: 0\r\n\r\n"),
        ("role-list", b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 127.0.0.1:8904\r\nX-aws-ec2-metadata-token: @IMDS@\r\n\r\n"),
        ("role-credentials", b"GET /latest/meta-data/iam/security-credentials/credbroker HTTP/1.1\r\nHost: 127.0.0.1:8904\r\nX-aws-ec2-metadata-token: @IMDS@\r\n\r\n"),
        ("role-credentials-no-slash", b"GET /latest/meta-data/iam/security-credentialsXcredbroker HTTP/1.1\r\nHost: 127.0.0.1:8904\r\nX-aws-ec2-metadata-token: @IMDS@\r\n\r\n"),
        ("role-credentials-non-ascii", b"GET /latest/meta-data/iam/security-credentials\xc3\xa9 HTTP/1.1\r\nHost: 127.0.0.1:8904\r\nX-aws-ec2-metadata-token: @IMDS@\r\n\r\n"),
        ("iam-info", b"GET /latest/meta-data/iam/info HTTP/1.1\r\nHost: 127.0.0.1:8904\r\nX-aws-ec2-metadata-token: @IMDS@\r\n\r\n"),
        ("meta-data", b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 127.0.0.1:8904\r\nX-aws-ec2-metadata-token: @IMDS@\r\n\r\n"),
        ("imdsv1", b"GET /latest/meta-data/iam/security-credentials/credbroker HTTP/1.1\r\nHost: 127.0.0.1:8904\r\n\r\n"),
        ("forged-token", b"GET /latest/meta-data/iam/security-credentials/credbroker HTTP/1.1\r\nHost: evil.example\r\nX-aws-ec2-metadata-token: AQAEAExampleTokenExample==\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"),
    ];
    for (name, request) in imds {
        let mut seed = vec![1u8];
        seed.extend_from_slice(request);
        write("http_routes", &format!("imds-{name}"), &seed);
    }
}

fn graphql_seeds() {
    let docs: [(&str, &str); 14] = [
        ("list", "query { listTodos { id content owner } }"),
        (
            "create",
            "mutation Create($c: String!) { createTodo(content: $c) { id content owner } }",
        ),
        ("shorthand", "{ getTodo(id: \"1\") { id } }"),
        (
            "subscription",
            "subscription OnCreate($owner: String) { onCreateTodo(owner: $owner) { id content } }",
        ),
        (
            "amplify-generated",
            "query ListTodos(\n  $filter: ModelTodoFilterInput\n  $limit: Int\n  $nextToken: String\n) {\n  listTodos(filter: $filter, limit: $limit, nextToken: $nextToken) {\n    items {\n      id\n      content\n      owner\n      createdAt\n      updatedAt\n      __typename\n    }\n    nextToken\n    __typename\n  }\n}\n",
        ),
        (
            "fragments",
            "query A { ...F ... on Query { b { ...G } } }\nfragment F on Query { a @include(if: true) }\nfragment G on B { c(x: [1, 2.5e3, \"s\", true, null, ENUM, {k: $v}]) }",
        ),
        (
            "mixed-operations",
            "{ a } query Q { b } mutation M { c } subscription S { d }",
        ),
        (
            "block-strings",
            "mutation { createTodo(content: \"\"\"\n  caf\u{e9} { } \\\"\"\" \"quoted\"\n  \"\"\") { id } }",
        ),
        (
            "unicode-escapes",
            "query { a(s: \"\\u00e9\\u{1F980}\\n\\t\\\"}\") }",
        ),
        (
            "comments",
            "# leading\nquery # name next\nQ # vars\n( $x : Int = 1 # default\n) { a # field\n(y: $x) } # mutation { b }",
        ),
        (
            "type-system",
            "type Query { a: Int }\nextend schema @d { query: Query }",
        ),
        (
            "introspection",
            "query IntrospectionQuery { __schema { queryType { name } mutationType { name } types { ...FullType } } } fragment FullType on __Type { kind name fields(includeDeprecated: true) { name args { name } type { ...TypeRef } } } fragment TypeRef on __Type { kind name ofType { kind name ofType { kind name } } }",
        ),
        (
            "deep",
            &format!("{}{}", "{ a ".repeat(130), "}".repeat(130)),
        ),
        (
            "variables-directives",
            "query Q($a: [Int!]! = [1], $b: In = {x: \"y\"}) @live { f(a: $a, b: $b) @skip(if: false) { ... @defer { g } } }",
        ),
    ];
    for (name, doc) in docs {
        // Query allowed, document wrapped by the harness.
        let mut seed = vec![0x09u8];
        seed.extend_from_slice(doc.as_bytes());
        write("graphql", &format!("doc-{name}"), &seed);
    }
    let bodies: [(&str, &[u8]); 6] = [
        ("body-operation-name", br#"{"query":"query Safe { a } mutation Evil { b }","operationName":"Safe","variables":null}"#),
        ("body-duplicate-query", br#"{"query":"{ a }","query":"mutation { b }"}"#),
        ("body-escaped-key", br#"{"qu\u0065ry":"mutation { b }"}"#),
        ("body-array", br#"[{"query":"{ a }"}]"#),
        ("body-extensions", br#"{"query":"{ a }","extensions":{"persistedQuery":{"version":1,"sha256Hash":"ab"}}}"#),
        ("body-not-a-string", br#"{"query":{"nested":["x"]}}"#),
    ];
    for (name, body) in bodies {
        let mut seed = vec![0x03u8];
        seed.extend_from_slice(body);
        write("graphql", name, &seed);
    }
}

fn config_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/credbroker.example.toml"))
        .expect("the example config");
    write("config", "example", example.as_bytes());
    // Every documented key switched on (some pairs conflict on purpose: both identity sources).
    let all: String = example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest.to_owned()
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    write("config", "example-all-keys", all.as_bytes());
    let emulators =
        std::fs::read_to_string(root.join("config/emulators.toml")).expect("the emulators config");
    write("config", "emulators", emulators.as_bytes());
    let minimal = "[providers.auth0]\nissuer = \"https://dev-example.us.auth0.com/\"\n\
                   audiences = [\"client\"]\n\n[cognito]\nregion = \"us-east-1\"\n\
                   identity_pool_id = \"us-east-1:11111111-2222-3333-4444-555555555555\"\n";
    write("config", "minimal", minimal.as_bytes());
    let mut with_env = minimal.as_bytes().to_vec();
    with_env.push(0);
    with_env.extend_from_slice(
        b"CREDBROKER_SERVER__LISTEN=0.0.0.0:8900\nCREDBROKER_SERVER__ALLOW_NON_LOOPBACK=true\n\
          CREDBROKER_TOKENS__LEEWAY=30s\nCREDBROKER_SERVICE_HOST=10.0.0.1\nCREDBROKER_SERVER_LISTEN=typo\n",
    );
    write("config", "minimal-with-env", &with_env);
}

/// 2030-01-01T00:00:00Z, the fuzz targets' frozen time (`fuzz/src/lib.rs`, `T0_SECS`).
#[derive(Debug)]
struct Frozen;

impl Clock for Frozen {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_893_456_000)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let clock: SharedClock = Arc::new(Frozen);
    let issuer = OidcIssuer::start(Default::default(), clock.clone())
        .await
        .expect("issuer");
    let cognito = CognitoEmulator::start(
        CognitoOptions::default(),
        vec![TrustedProvider::for_issuer(&issuer)],
        clock,
    )
    .await
    .expect("cognito");
    id_token_seeds(&issuer);
    cognito_seeds(&issuer, &cognito).await;
    token_endpoint_seeds(&issuer).await;
    http_routes_seeds();
    graphql_seeds();
    config_seeds();
    println!("seeds written under {}", corpus("").display());
}
