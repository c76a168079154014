//! `credbroker demo`: the whole flow on one machine, no AWS account.
//!
//! Owns: starting the emulated OIDC issuer and Cognito, a broker configured for them (through
//! the same config loader as production), a token file for a demo user, and the instructions.
//!
//! Promises:
//! - everything binds loopback; the broker takes `127.0.0.1:8900` when free, else any port, and
//!   prints what it took;
//! - the token file is written atomically, mode 0600, without a trailing newline;
//! - `--check` resolves credentials once through aws-config's default chain in a child process
//!   whose only settings are `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (exactly what an app gets), prints the result with
//!   secrets redacted, stops everything, and reports success or failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::{self, Overrides, Running};
use crate::clock::{self, SharedClock};
use crate::config::{Config, ConfigErrors};
use crate::emulator::cognito::{CognitoEmulator, CognitoOptions, TrustedProvider};
use crate::emulator::oidc::{IssuerOptions, OidcIssuer};

/// The demo's gRPC port (next to the container endpoint's 8900; 8901/8902 are the emulators').
pub const DEMO_GRPC_PORT: u16 = 8903;

/// The demo user's subject.
pub const DEMO_SUBJECT: &str = "auth0|demo-user";

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
) -> Result<Config, ConfigErrors> {
    Config::from_toml(&format!(
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
"#,
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
    ))
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

    let overrides = || Overrides {
        clock: Some(clock.clone()),
        cognito: None,
    };
    let running =
        match app::start(demo_config(options.listen, &issuer, &cognito)?, overrides()).await {
            Ok(r) => r,
            Err(app::StartError::Bind { .. }) if options.listen.port() != 0 => {
                let any = SocketAddr::new(options.listen.ip(), 0);
                eprintln!(
                    "note: {} is taken; using a free port instead",
                    options.listen
                );
                app::start(demo_config(any, &issuer, &cognito)?, overrides()).await?
            }
            Err(e) => return Err(e.into()),
        };

    let token_file = options.token_file.clone().unwrap_or_else(|| {
        std::env::temp_dir()
            .join("credbroker-demo")
            .join("id-token")
    });
    write_token(&token_file, &issuer.token_for(DEMO_SUBJECT))?;
    Ok(Demo {
        issuer,
        cognito,
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
             \x20 demo user:         {DEMO_SUBJECT} (ID token in {file})\n\n\
             Point any AWS SDK at it (the SDK sends the token file's contents as Authorization):\n\n\
             \x20 export AWS_CONTAINER_CREDENTIALS_FULL_URI={url}\n\
             \x20 export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={file}\n\n\
             Try it:\n\n\
             \x20 curl -s -H \"Authorization: $(cat {file})\" {url}\n\
             \x20 aws configure export-credentials --format env   # AWS CLI v2, with the exports above\n\
             \x20 credbroker probe                                # the Rust SDK's default chain, redacted\n\n\
             {grpc}Ctrl-C stops everything.",
            issuer = self.issuer.issuer(),
            cognito = self.cognito.endpoint_url(),
            grpc = self.grpc_instructions(),
        )
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
