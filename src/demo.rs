//! `credbroker demo`: the whole flow on one machine, no AWS account (feature `emulators`).
//!
//! Owns: starting the emulated OIDC issuer, Cognito and AppSync, a broker configured for them
//! (through the same config loader as production), a token file for a demo user, and the
//! instructions.
//!
//! Promises:
//! - everything binds loopback; the broker takes `127.0.0.1:8900` (and `127.0.0.1:8904` for
//!   IMDS, `127.0.0.1:8909` for the admin listener) when free, else any ports, and prints what
//!   it took, including the `/metrics` URL;
//! - the demo user is also a configured identity whose refresh token (minted by the emulated
//!   issuer, next to the token file) the broker redeems and rotates; the IMDS endpoint serves it
//!   and the instructions print `AWS_EC2_METADATA_SERVICE_ENDPOINT`;
//! - the token file is written atomically, mode 0600, without a trailing newline;
//! - `--check` resolves credentials once through aws-config's default chain in a child process
//!   whose only settings are `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (exactly what an app gets), prints the result with
//!   secrets redacted, stops everything, and reports success or failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use credbroker_emulators::appsync::{AppSyncEmulator, AppSyncOptions};
use credbroker_emulators::cognito::{CognitoEmulator, CognitoOptions, TrustedProvider};
use credbroker_emulators::oidc::{IssuerOptions, OidcIssuer};

use crate::app::{self, Overrides, Running};
use crate::clock::{self, SharedClock};
use crate::config::{Config, ConfigErrors};

/// The demo's gRPC port (next to the container endpoint's 8900; 8901/8902 are the emulators').
pub const DEMO_GRPC_PORT: u16 = 8903;

/// The demo user's subject.
pub const DEMO_SUBJECT: &str = "auth0|demo-user";

/// The GraphQL body the printed `curl` sends to create a todo.
pub const DEMO_CREATE_TODO: &str = r#"{"query":"mutation { createTodo(content: \"hello from credbroker\") { id content owner } }"}"#;

/// The GraphQL body the printed `curl` sends to list the demo user's todos.
pub const DEMO_LIST_TODOS: &str = r#"{"query":"{ listTodos { id content owner } }"}"#;
/// The port the demo's IMDS endpoint prefers (8901/8902: emulators, 8903: gRPC).
pub const DEMO_IMDS_PORT: u16 = 8904;
/// The port the demo's admin listener (metrics, probes) prefers: the `[admin]` default.
pub const DEMO_ADMIN_PORT: u16 = 8909;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Run the SDK check once and exit.
    pub check: bool,
    /// Preferred broker address (falls back to a free port when taken).
    pub listen: SocketAddr,
    /// Where to write the token (default: `<tmp>/credbroker-demo/id-token`).
    pub token_file: Option<PathBuf>,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// An emulator could not start.
    #[error("cannot start an emulator: {0}")]
    Emulator(std::io::Error),
    /// The generated configuration was refused (a bug).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The broker could not start.
    #[error(transparent)]
    Start(#[from] app::StartError),
    /// The token file could not be written.
    #[error("cannot write the token file {path}: {source}")]
    TokenFile {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `--check` did not get credentials.
    #[error("check failed: {0}")]
    Check(String),
}

/// A running demo: emulators, broker and token file.
pub struct Demo {
    /// The emulated issuer.
    pub issuer: OidcIssuer,
    /// The emulated Cognito.
    pub cognito: CognitoEmulator,
    /// The emulated AppSync API (OIDC and IAM modes).
    pub appsync: AppSyncEmulator,
    /// The broker.
    pub running: Running,
    /// The demo user's token file.
    pub token_file: PathBuf,
}

/// The configuration the demo runs the broker with (also what `config/emulators.toml` shows).
pub fn demo_config(
    listen: SocketAddr,
    issuer: &OidcIssuer,
    cognito: &CognitoEmulator,
    appsync: &AppSyncEmulator,
) -> Result<Config, ConfigErrors> {
    Config::from_toml(&demo_toml(listen, issuer, cognito, appsync))
}

/// The demo configuration plus a configured identity for the demo user, redeeming the
/// refresh token in `refresh_token_file`, served on the IMDS endpoint at `imds_listen`.
pub fn demo_config_with_imds(
    listen: SocketAddr,
    imds_listen: SocketAddr,
    refresh_token_file: &Path,
    issuer: &OidcIssuer,
    cognito: &CognitoEmulator,
    appsync: &AppSyncEmulator,
) -> Result<Config, ConfigErrors> {
    let mut text = demo_toml(listen, issuer, cognito, appsync);
    text.push_str(&format!(
        r#"
[identities.demo-user]
provider = "demo"
refresh_token_file = {file:?}
client_id = "{audience}"

[imds]
listen = "{imds_listen}"
identity = "demo-user"
"#,
        file = refresh_token_file.display().to_string(),
        audience = issuer.audience(),
    ));
    Config::from_toml(&text)
}

fn demo_toml(
    listen: SocketAddr,
    issuer: &OidcIssuer,
    cognito: &CognitoEmulator,
    appsync: &AppSyncEmulator,
) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[grpc]
listen = "{grpc}"

[providers.demo]
issuer = "{issuer}"
audiences = ["{audience}"]

[cognito]
region = "{region}"
identity_pool_id = "{pool}"
endpoint_url = "{endpoint}"

[appsync.apis.todos]
url = "{appsync}"
region = "{appsync_region}"
auth = "oidc"
default = true

[appsync.apis.todos-iam]
url = "{appsync}"
region = "{appsync_region}"
auth = "iam"
"#,
        appsync = appsync.url(),
        appsync_region = appsync.region(),
        // Port 0 for the container endpoint means "any free port" for gRPC too.
        grpc = SocketAddr::new(
            listen.ip(),
            if listen.port() == 0 {
                0
            } else {
                DEMO_GRPC_PORT
            }
        ),
        issuer = issuer.issuer(),
        audience = issuer.audience(),
        region = cognito.region(),
        pool = cognito.identity_pool_id(),
        endpoint = cognito.endpoint_url(),
    )
}

/// Starts emulators and broker and writes the token file.
pub async fn start(options: &DemoOptions, clock: SharedClock) -> Result<Demo, DemoError> {
    let issuer = OidcIssuer::start(IssuerOptions::default(), clock.clone())
        .await
        .map_err(DemoError::Emulator)?;
    let cognito = CognitoEmulator::start(
        CognitoOptions::default(),
        vec![TrustedProvider::for_issuer(&issuer)],
        clock.clone(),
    )
    .await
    .map_err(DemoError::Emulator)?;
    let appsync = AppSyncEmulator::start(
        AppSyncOptions::for_emulators(&issuer, &cognito),
        clock.clone(),
    )
    .await
    .map_err(DemoError::Emulator)?;

    let overrides = || Overrides {
        clock: Some(clock.clone()),
        cognito: None,
        ..Overrides::default()
    };
    let token_file = options.token_file.clone().unwrap_or_else(|| {
        std::env::temp_dir()
            .join("credbroker-demo")
            .join("id-token")
    });
    // The IMDS endpoint serves the demo user through a refresh token, as a long-running
    // workload would; written before start so the identity is warm at once.
    let refresh_token_file = token_file.with_file_name("refresh-token");
    write_token(
        &refresh_token_file,
        &issuer.issue_refresh_token(DEMO_SUBJECT),
    )?;
    let config = |listen: SocketAddr, imds| {
        demo_config_with_imds(
            listen,
            imds,
            &refresh_token_file,
            &issuer,
            &cognito,
            &appsync,
        )
        .map(|mut c| {
            // The admin listener follows the broker: its default port, or any when it took any.
            let port = if listen.port() == 0 {
                0
            } else {
                DEMO_ADMIN_PORT
            };
            c.admin.listen = SocketAddr::new(listen.ip(), port);
            c
        })
    };
    let imds_port = if options.listen.port() == 0 {
        0
    } else {
        DEMO_IMDS_PORT
    };
    let imds = SocketAddr::new(options.listen.ip(), imds_port);
    let running = match app::start(config(options.listen, imds)?, overrides()).await {
        Ok(r) => r,
        Err(app::StartError::Bind { addr, .. }) if options.listen.port() != 0 => {
            let any = SocketAddr::new(options.listen.ip(), 0);
            eprintln!("note: {addr} is taken; using free ports instead");
            app::start(config(any, any)?, overrides()).await?
        }
        Err(e) => return Err(e.into()),
    };
    write_token(&token_file, &issuer.token_for(DEMO_SUBJECT))?;
    Ok(Demo {
        issuer,
        cognito,
        appsync,
        running,
        token_file,
    })
}

fn write_token(path: &Path, token: &str) -> Result<(), DemoError> {
    let err = |source| DemoError::TokenFile {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    crate::fsutil::write_atomic(path, token.as_bytes()).map_err(err)
}

impl Demo {
    /// The instructions printed at start.
    pub fn instructions(&self) -> String {
        let url = self.running.credentials_url();
        let file = self.token_file.display();
        format!(
            "credbroker demo: an emulated Auth0 issuer and Cognito identity pool on this machine, \
             no AWS account needed.\n\n\
             \x20 issuer (OIDC):     {issuer}\n\
             \x20 Cognito Identity:  {cognito}\n\
             \x20 credentials:       {url}\n\
             \x20 metrics:           {metrics} (also /livez, /readyz)\n\
             \x20 demo user:         {DEMO_SUBJECT} (ID token in {file})\n\n\
             Point any AWS SDK at it (the SDK sends the token file's contents as Authorization):\n\n\
             \x20 export AWS_CONTAINER_CREDENTIALS_FULL_URI={url}\n\
             \x20 export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={file}\n\n\
             Or through the IMDSv2-compatible endpoint (no token file; the broker keeps the demo \
             user's refresh token in {refresh}):\n\n\
             \x20 export AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}\n\n\
             Try it:\n\n\
             \x20 curl -s -H \"Authorization: $(cat {file})\" {url}\n\
             \x20 T=$(curl -s -X PUT -H \"X-aws-ec2-metadata-token-ttl-seconds: 300\" \
             {imds}latest/api/token)\n\
             \x20 curl -s -H \"X-aws-ec2-metadata-token: $T\" \
             {imds}latest/meta-data/iam/security-credentials/credbroker\n\
             \x20 aws configure export-credentials --format env   # AWS CLI v2, with the exports above\n\
             \x20 credbroker probe                                # the Rust SDK's default chain, redacted\n\n\
             GraphQL through the broker to the emulated AppSync ({appsync}), as the demo user\n\
             (/appsync/graphql uses the ID token; /appsync/todos-iam/graphql signs with SigV4):\n\n\
             \x20 curl -s -H \"Authorization: $(cat {file})\" -H 'Content-Type: application/json' \\\n\
             \x20   -d '{create}' {graphql}\n\
             \x20 curl -s -H \"Authorization: $(cat {file})\" -H 'Content-Type: application/json' \\\n\
             \x20   -d '{list}' {graphql}\n\n\
             Live updates (GraphQL subscriptions over WebSocket, through the broker's real-time \
             endpoint): in one terminal\n\n\
             \x20 credbroker subscribe --url {realtime} --token-file {file}\n\n\
             (IAM mode: --url {realtime_iam}); in another, run the createTodo curl above: the \
             event appears in the first.\n\n\
             {grpc}Ctrl-C stops everything.",
            issuer = self.issuer.issuer(),
            cognito = self.cognito.endpoint_url(),
            imds = self.running.imds_url().unwrap_or_default(),
            metrics = self.running.metrics_url().unwrap_or_default(),
            refresh = self.token_file.with_file_name("refresh-token").display(),
            appsync = self.appsync.url(),
            graphql = self.graphql_url(),
            create = DEMO_CREATE_TODO,
            list = DEMO_LIST_TODOS,
            realtime = self.realtime_url(None),
            realtime_iam = self.realtime_url(Some("todos-iam")),
            grpc = self.grpc_instructions(),
        )
    }

    /// The broker's GraphQL URL for the default AppSync API.
    pub fn graphql_url(&self) -> String {
        format!(
            "http://{}{}",
            self.running.container_addr,
            crate::server::appsync::DEFAULT_GRAPHQL_PATH
        )
    }

    /// The broker's real-time URL for the default AppSync API, or the one called `api`.
    pub fn realtime_url(&self, api: Option<&str>) -> String {
        let addr = self.running.container_addr;
        match api {
            None => format!(
                "ws://{addr}{}",
                crate::server::realtime::DEFAULT_REALTIME_PATH
            ),
            Some(api) => format!("ws://{addr}/appsync/{api}/realtime"),
        }
    }

    /// The gRPC part of the instructions (empty when gRPC is off).
    fn grpc_instructions(&self) -> String {
        let Some(addr) = self.running.grpc.tcp else {
            return String::new();
        };
        let file = self.token_file.display();
        let exchange = format!(
            r#"grpcurl -plaintext -d "{{\"id_token\": \"$(cat {file})\"}}" {addr} credbroker.v1.Broker/Exchange"#
        );
        format!(
            "The gRPC API (credbroker.v1.Broker, with health and reflection) is at \
             grpc://{addr}:\n\n\
             \x20 grpcurl -plaintext {addr} list\n\
             \x20 {exchange}\n\n"
        )
    }

    /// Stops the broker and the emulators.
    pub async fn stop(self) {
        self.running.stop().await;
        self.appsync.shutdown();
        self.cognito.shutdown();
        self.issuer.shutdown();
    }
}

/// Runs `credbroker probe` as a child process that sees only the two container variables.
pub async fn check(demo: &Demo, exe: &Path) -> Result<String, DemoError> {
    let output = tokio::process::Command::new(exe)
        .arg("probe")
        .env_clear()
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            demo.running.credentials_url(),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &demo.token_file)
        .env("AWS_CONFIG_FILE", "/nonexistent/credbroker-demo/config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/credbroker-demo/credentials",
        )
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .map_err(|_| DemoError::Check("the probe did not finish within 60 s".to_owned()))?
        .map_err(|e| DemoError::Check(format!("cannot run {}: {e}", exe.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(DemoError::Check(format!(
            "{}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// `credbroker demo`: runs until `shutdown`, or once with `--check`.
pub async fn run(
    options: DemoOptions,
    exe: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    let demo = start(&options, clock::system()).await?;
    if options.check {
        let result = check(&demo, exe).await;
        let stats = demo.cognito.stats();
        demo.stop().await;
        let report = result?;
        println!(
            "credbroker demo --check: the AWS SDK's default credentials chain got credentials"
        );
        println!("for {DEMO_SUBJECT} through the container-credentials endpoint:\n");
        println!("{}", report.trim_end());
        println!(
            "\nCognito calls: GetId {}, GetCredentialsForIdentity {}",
            stats.get_id.calls, stats.get_credentials_for_identity.calls
        );
        return Ok(());
    }
    println!("{}", demo.instructions());
    shutdown.await;
    demo.stop().await;
    Ok(())
}

/// Settings of `credbroker emulators`.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The emulated issuer's address (`config/emulators.toml` expects `127.0.0.1:8901`).
    pub issuer_listen: SocketAddr,
    /// The emulated Cognito's address (`config/emulators.toml` expects `127.0.0.1:8902`).
    pub cognito_listen: SocketAddr,
    /// Where to write the demo user's token (default: `<tmp>/credbroker-demo/id-token`).
    pub token_file: Option<PathBuf>,
}

/// The emulators alone, on fixed addresses, for a broker started from a config file.
pub struct Emulators {
    /// The emulated issuer.
    pub issuer: OidcIssuer,
    /// The emulated Cognito.
    pub cognito: CognitoEmulator,
    /// The demo user's token file.
    pub token_file: PathBuf,
}

impl Emulators {
    /// Starts both emulators and writes a token for [`DEMO_SUBJECT`].
    pub async fn start(options: &EmulatorOptions, clock: SharedClock) -> Result<Self, DemoError> {
        let issuer = OidcIssuer::start(
            IssuerOptions {
                listen: options.issuer_listen,
                ..IssuerOptions::default()
            },
            clock.clone(),
        )
        .await
        .map_err(DemoError::Emulator)?;
        let cognito = CognitoEmulator::start(
            CognitoOptions {
                listen: options.cognito_listen,
                ..CognitoOptions::default()
            },
            vec![TrustedProvider::for_issuer(&issuer)],
            clock,
        )
        .await
        .map_err(DemoError::Emulator)?;
        let token_file = options.token_file.clone().unwrap_or_else(|| {
            std::env::temp_dir()
                .join("credbroker-demo")
                .join("id-token")
        });
        write_token(&token_file, &issuer.token_for(DEMO_SUBJECT))?;
        Ok(Self {
            issuer,
            cognito,
            token_file,
        })
    }

    /// What to do next.
    pub fn instructions(&self) -> String {
        format!(
            "credbroker emulators:\n\n\
             \x20 issuer (OIDC):     {issuer}   (Logins key {logins}, audience {audience})\n\
             \x20 Cognito Identity:  {cognito}   (region {region}, pool {pool})\n\
             \x20 demo user token:   {file}\n\n\
             Run the broker against them from a config file:\n\n\
             \x20 credbroker run --config config/emulators.toml\n\n\
             Mint a token for any user (ttl_seconds optional):\n\n\
             \x20 curl -s -X POST {mint} -d '{{\"sub\":\"auth0|alice\"}}'\n\n\
             Ctrl-C stops them.",
            issuer = self.issuer.issuer(),
            logins = self.issuer.logins_key(),
            audience = self.issuer.audience(),
            cognito = self.cognito.endpoint_url(),
            region = self.cognito.region(),
            pool = self.cognito.identity_pool_id(),
            file = self.token_file.display(),
            mint = format_args!("{}_emulator/mint", self.issuer.issuer()),
        )
    }

    /// Stops both.
    pub fn stop(self) {
        self.cognito.shutdown();
        self.issuer.shutdown();
    }
}

/// `credbroker emulators`: serves until `shutdown`.
pub async fn run_emulators(
    options: EmulatorOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    let emulators = Emulators::start(&options, clock::system()).await?;
    println!("{}", emulators.instructions());
    shutdown.await;
    emulators.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the printed curl commands do, done with an HTTP client.
    #[tokio::test]
    async fn the_printed_graphql_requests_create_and_list_a_todo() {
        let dir = std::env::temp_dir().join(format!(
            "credbroker-demo-test-graphql-{}",
            std::process::id()
        ));
        let options = DemoOptions {
            check: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_file: Some(dir.join("id-token")),
        };
        let demo = start(&options, clock::system()).await.expect("demo starts");
        let instructions = demo.instructions();
        assert!(instructions.contains(&demo.graphql_url()), "{instructions}");
        assert!(instructions.contains(DEMO_CREATE_TODO), "{instructions}");
        let token = std::fs::read_to_string(&demo.token_file).expect("token file");
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let mut answers = Vec::new();
        for body in [DEMO_CREATE_TODO, DEMO_LIST_TODOS] {
            let request = http::Request::post(demo.graphql_url())
                .header("authorization", &token)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .expect("request");
            let response = client.request(request).await.expect("answer");
            assert_eq!(response.status(), 200);
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("body")
                .to_bytes();
            answers.push(serde_json::from_slice::<serde_json::Value>(&bytes).expect("json"));
        }
        assert_eq!(answers[0]["data"]["createTodo"]["owner"], DEMO_SUBJECT);
        assert_eq!(
            answers[1]["data"]["listTodos"][0]["content"],
            "hello from credbroker"
        );
        demo.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What the printed `credbroker subscribe` command does (run in process), while the
    /// printed createTodo request is sent.
    #[tokio::test]
    async fn the_printed_subscribe_command_shows_the_created_todo() {
        let dir = std::env::temp_dir().join(format!(
            "credbroker-demo-test-subscribe-{}",
            std::process::id()
        ));
        let options = DemoOptions {
            check: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_file: Some(dir.join("id-token")),
        };
        let demo = start(&options, clock::system()).await.expect("demo starts");
        let text = demo.instructions();
        let command = format!(
            "credbroker subscribe --url {} --token-file {}",
            demo.realtime_url(None),
            demo.token_file.display()
        );
        assert!(text.contains(&command), "{text}");
        let subscribe = crate::subscribe::Options {
            url: demo.realtime_url(None),
            token_file: demo.token_file.clone(),
            query: crate::subscribe::DEFAULT_QUERY.to_owned(),
            variables: serde_json::json!({}),
            count: Some(1),
            reconnect: false,
        };
        let mut out = Vec::new();
        let subscriber = crate::subscribe::run(&subscribe, &mut out, std::future::pending());
        let creator = async {
            while demo.appsync.stats().realtime_starts == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let token = std::fs::read_to_string(&demo.token_file).expect("token file");
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let request = http::Request::post(demo.graphql_url())
                .header("authorization", &token)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    DEMO_CREATE_TODO,
                )))
                .expect("request");
            let response = client.request(request).await.expect("answer");
            assert_eq!(response.status(), 200);
        };
        let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(subscriber, creator)
        })
        .await
        .expect("done within 30 s");
        result.expect("subscribed and received one event");
        let line: serde_json::Value = serde_json::from_slice(&out).expect("one JSON line");
        assert_eq!(line["onCreateTodo"]["content"], "hello from credbroker");
        assert_eq!(line["onCreateTodo"]["owner"], DEMO_SUBJECT);
        demo.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn the_demo_serves_imds_for_the_demo_user_and_says_how_to_use_it() {
        let dir =
            std::env::temp_dir().join(format!("credbroker-demo-test-imds-{}", std::process::id()));
        let options = DemoOptions {
            check: false,
            listen: "127.0.0.1:0".parse().expect("addr"),
            token_file: Some(dir.join("id-token")),
        };
        let demo = start(&options, clock::system()).await.expect("demo starts");
        let imds = demo.running.imds_url().expect("IMDS is served");
        let text = demo.instructions();
        assert!(
            text.contains(&format!("export AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}")),
            "{text}"
        );
        let identity = demo
            .running
            .configured
            .get("demo-user")
            .expect("configured");
        let status = identity.status();
        assert!(status.problem.is_none(), "{:?}", status.problem);
        assert_eq!(
            status.token.expect("redeemed at start").subject.as_ref(),
            DEMO_SUBJECT
        );
        assert_eq!(demo.issuer.token_stats().issued, 1);
        demo.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
