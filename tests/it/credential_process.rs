//! `credbroker credential-process`: the real binary, run by aws-config's profile provider from a
//! `credential_process` profile, against a running broker; and every failure's exit code and
//! one-line message.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

use aws_config::profile::ProfileFileCredentialsProvider;
use aws_credential_types::provider::ProvideCredentials as _;
use aws_credential_types::provider::error::CredentialsError;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use credbroker::emulator::cognito::{ErrorType, Operation};
use credbroker::emulator::oidc::TokenSpec;

use crate::sessions::create_session;
use crate::support::{Harness, tempdir};

const BIN: &str = env!("CARGO_BIN_EXE_credbroker");

/// The `credential_process` line for `args`.
fn command(args: &str) -> String {
    format!("{BIN} credential-process {args}")
}

/// aws-config's profile provider reading only a config file with one `credential_process`
/// profile, as an app with `AWS_PROFILE=cb` would.
async fn via_profile(command: &str) -> Result<aws_credential_types::Credentials, CredentialsError> {
    let config = format!("[profile cb]\ncredential_process = {command}\n");
    let files = EnvConfigFiles::builder()
        .include_default_config_file(false)
        .include_default_credentials_file(false)
        .with_contents(EnvConfigFileKind::Config, config)
        .build();
    let provider_config = aws_config::provider_config::ProviderConfig::without_region()
        .with_http_client(credbroker::http::sdk_client());
    ProfileFileCredentialsProvider::builder()
        .configure(&provider_config)
        .profile_files(files)
        .profile_name("cb")
        .build()
        .provide_credentials()
        .await
}

/// Runs the binary with only `env` set.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("credential-process")
        .args(args)
        .env_clear()
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary exits")
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loopback URL nothing listens on.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/v1/credentials")
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn the_sdk_profile_provider_gets_the_brokers_cached_credentials() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|cp-alice");
    // A trailing newline (what `echo` writes) is fine for credential-process.
    let file = h.token_file("id-token", &format!("{token}\n"));
    let cmd = command(&format!("--url {} --token-file {}", h.url(), path(&file)));

    let creds = via_profile(&cmd)
        .await
        .expect("credentials from the process");
    let direct = h.get(&token).await.json();
    assert_eq!(
        creds.access_key_id(),
        direct["AccessKeyId"].as_str().expect("string")
    );
    assert_eq!(
        creds.secret_access_key(),
        direct["SecretAccessKey"].as_str().expect("string")
    );
    assert_eq!(creds.session_token(), direct["Token"].as_str());
    let expiry = creds.expiry().expect("Expiration is passed on");
    assert_eq!(
        credbroker::clock::format_aws_timestamp(expiry),
        direct["Expiration"].as_str().expect("string")
    );
    assert!(expiry > SystemTime::now() + Duration::from_secs(20 * 60));

    // Another process, another run: served from the daemon's cache, no Cognito call.
    let again = via_profile(&cmd).await.expect("credentials again");
    assert_eq!(again.access_key_id(), creds.access_key_id());
    assert_eq!((h.get_id_calls(), h.credential_calls()), (1, 1));
    h.stop().await;
}

#[tokio::test]
async fn a_session_handle_from_the_environment_works_and_the_url_comes_from_the_environment() {
    let h = Harness::start().await;
    let token = h.issuer.token_for("auth0|cp-session");
    let handle = create_session(&h, &token).await;
    let url = h.url();
    let out = run(
        &[],
        &[
            ("CREDBROKER_SESSION", &handle),
            ("CREDBROKER_CREDENTIALS_URL", &url),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let direct = h.get(&token).await.json();
    assert_eq!(json["Version"], 1);
    assert_eq!(json["AccessKeyId"], direct["AccessKeyId"]);
    assert_eq!(json["SecretAccessKey"], direct["SecretAccessKey"]);
    assert_eq!(json["SessionToken"], direct["Token"]);
    assert_eq!(json["Expiration"], direct["Expiration"]);
    assert!(out.stderr.is_empty());

    // A token file from the environment works the same way.
    let file = h.token_file("id-token", &token);
    let out = run(
        &[],
        &[
            ("CREDBROKER_TOKEN_FILE", &path(&file)),
            ("CREDBROKER_CREDENTIALS_URL", &url),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    h.stop().await;
}

#[tokio::test]
async fn a_daemon_that_is_not_running_gives_exit_69_and_says_so() {
    let dir = tempdir();
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    let file = dir.join("id-token");
    std::fs::write(&file, token).expect("token file");
    let url = dead_url();

    let out = run(&["--url", &url, "--token-file", &path(&file)], &[]).await;
    assert_eq!(out.status.code(), Some(69));
    let err = stderr(&out);
    assert!(
        err.starts_with("credbroker credential-process: cannot reach credbroker at "),
        "{err}"
    );
    assert!(err.contains("is `credbroker run` running"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains(token) && out.stdout.is_empty());

    // What the SDK reports: the exit code and that line.
    let e = via_profile(&command(&format!(
        "--url {url} --token-file {}",
        path(&file)
    )))
    .await
    .expect_err("no daemon");
    let text = format!("{e:?}");
    assert!(text.contains("cannot reach credbroker"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn refused_tokens_and_logins_give_exit_77_with_the_daemons_code_and_message() {
    let h = Harness::start().await;
    let expired = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(60)),
        issued_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        ..TokenSpec::for_subject("auth0|cp-expired")
    });
    let file = h.token_file("expired", &expired);
    let args = ["--url", &h.url(), "--token-file", &path(&file)].map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, &[]).await;
    assert_eq!(out.status.code(), Some(77));
    let err = stderr(&out);
    assert!(
        err.contains("credbroker answered 401 TokenExpired: the token expired"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    assert!(!err.contains(&expired) && out.stdout.is_empty());

    // Through the SDK the Code reaches the application's error.
    let e = via_profile(&command(&args.join(" ")))
        .await
        .expect_err("refused");
    assert!(format!("{e:?}").contains("TokenExpired"), "{e:?}");

    // Cognito refusing the login: 403 with the broker's hint.
    h.cognito
        .faults()
        .fail_next(Operation::GetId, ErrorType::NotAuthorized, 1);
    let good = h.token_file("good", &h.issuer.token_for("auth0|cp-refused"));
    let out = run(&["--url", &h.url(), "--token-file", &path(&good)], &[]).await;
    assert_eq!(out.status.code(), Some(77));
    assert!(
        stderr(&out).contains("credbroker answered 403 LoginRejected: Cognito:"),
        "{}",
        stderr(&out)
    );
    h.stop().await;
}

#[tokio::test]
async fn upstream_outages_give_exit_69_with_the_code_and_retry_after() {
    let h = Harness::start().await;
    h.cognito.faults().set_outage(true);
    let file = h.token_file("t", &h.issuer.token_for("auth0|cp-outage"));
    let out = run(&["--url", &h.url(), "--token-file", &path(&file)], &[]).await;
    assert_eq!(out.status.code(), Some(69));
    let err = stderr(&out);
    assert!(
        err.contains("credbroker answered 503 UpstreamUnavailable:"),
        "{err}"
    );
    assert!(err.contains("(retry after "), "{err}");
    h.stop().await;
}

#[tokio::test]
async fn token_files_that_are_missing_or_empty_give_exit_66() {
    let dir = tempdir();
    let url = dead_url();
    let missing = dir.join("missing");
    let out = run(&["--url", &url, "--token-file", &path(&missing)], &[]).await;
    assert_eq!(out.status.code(), Some(66));
    assert!(
        stderr(&out).contains("cannot read the token file"),
        "{}",
        stderr(&out)
    );

    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let out = run(&["--url", &url, "--token-file", &path(&empty)], &[]).await;
    assert_eq!(out.status.code(), Some(66));
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));

    // No token source at all, or a token pasted where the path belongs: usage errors.
    let out = run(&["--url", &url], &[]).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("no token: pass --token-file FILE"));
    let pasted = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    let out = run(&["--url", &url, "--token-file", pasted], &[]).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("visible to every user"));
    assert!(!stderr(&out).contains(pasted));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loopback server that answers every request with `status` and `body`.
async fn fake_daemon(status: u16, body: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::from_u16(status).expect("status"),
            body,
        )
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1/credentials"), task)
}

#[tokio::test]
async fn answers_that_are_not_credbrokers_give_exit_76_without_quoting_secrets() {
    let dir = tempdir();
    let file = dir.join("t");
    std::fs::write(&file, "eyJ.e30.c2ln").expect("write");
    let (url, server) = fake_daemon(
        200,
        r#"{"AccessKeyId":"ASIAX","SecretAccessKey":"top-secret-key"}"#,
    )
    .await;
    let out = run(&["--url", &url, "--token-file", &path(&file)], &[]).await;
    assert_eq!(out.status.code(), Some(76));
    assert!(
        stderr(&out).contains("is not container credentials: Token is missing"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("top-secret-key"));
    server.abort();

    let (url, server) = fake_daemon(404, "<html>nginx</html>").await;
    let out = run(&["--url", &url, "--token-file", &path(&file)], &[]).await;
    assert_eq!(out.status.code(), Some(76));
    assert!(
        stderr(&out).contains("answered HTTP 404 without credbroker's"),
        "{}",
        stderr(&out)
    );
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
