//! Command-line interface.
//!
//! Owns: the `credbroker` commands and flags, and turning flags into configuration overrides.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{DEFAULT_LISTEN, ENV_CONFIG_FILE, Sources};
use crate::credential_process;

/// Per-user temporary AWS credentials for OIDC users, served to any AWS SDK.
#[derive(Debug, Parser)]
#[command(name = "credbroker", version, about, long_about = None)]
pub struct Cli {
    /// The TOML configuration file.
    #[arg(short, long, global = true, env = ENV_CONFIG_FILE, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (the default).
    Run(RunArgs),
    /// Validate the configuration and print it, or every problem found (exit 64).
    CheckConfig {
        /// The file to check (default: --config).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Run the whole flow locally against built-in emulators (no AWS account).
    #[cfg_attr(not(feature = "emulators"), command(hide = true))]
    Demo(DemoArgs),
    /// Run only the emulated issuer and Cognito on fixed loopback ports, for
    /// `credbroker run --config config/emulators.toml` (switching to real Auth0 + Cognito is
    /// then a config change).
    #[cfg_attr(not(feature = "emulators"), command(hide = true))]
    Emulators(EmulatorsArgs),
    /// Resolve credentials through the AWS SDK's default chain, as an app would, and print
    /// them with secrets redacted.
    Probe {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
    },
    /// Check a configuration end to end (issuer documents, Cognito and the identity pool,
    /// AppSync, and with --token-file a real token and one exchange) and say line by line what
    /// holds and what to fix. Exit 0 only when every check holds.
    Doctor(DoctorArgs),
    /// Print AWS credentials from the running credbroker in the `credential_process` format of
    /// ~/.aws/config (never talks to Cognito itself).
    CredentialProcess(CredentialProcessArgs),
    /// Subscribe to an AppSync API through credbroker's real-time endpoint and print each
    /// event as a JSON line (progress on stderr). The token is read from --token-file.
    Subscribe(SubscribeArgs),
    /// Print a new line for the fleet mode keys file (`shared.encryption_keys_file`):
    /// `<key id>:<base64 of 32 random bytes>`. Put a new encryption key first to rotate.
    GenKey(GenKeyArgs),
}

/// Flags of `subscribe`. The token itself is never a flag: command lines are visible to every
/// user (`ps`).
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The real-time endpoint: ws://127.0.0.1:8900/appsync/realtime (the default API) or
    /// …/appsync/<name>/realtime.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The file holding the ID token or session handle (read again on every reconnect).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// The subscription.
    #[arg(long, default_value = crate::subscribe::DEFAULT_QUERY)]
    pub query: String,
    /// Its variables, a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub variables: String,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Reconnect (after 1 s) when the server closes with 1001, 1011, 4001 or 4002.
    #[arg(long)]
    pub reconnect: bool,
}

/// Flags of `gen-key`.
#[derive(Debug, Args)]
pub struct GenKeyArgs {
    /// The key id (default: `k` and today's date, e.g. `k20261201`).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Print the `naming` line too (the key that names Redis keys: one per fleet, kept across
    /// rotations), for a new keys file.
    #[arg(long)]
    pub naming: bool,
}

/// What `demo` and `emulators` say in a build without the `emulators` feature (where they are
/// hidden from `--help`).
pub const WITHOUT_EMULATORS: &str = "this credbroker was built without the emulators \
    (cargo feature `emulators`, e.g. the --no-default-features release image), so `demo` and \
    `emulators` are not available; build with default features (`cargo run --release -- demo`) \
    to use them";

/// Flags of `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The configuration file to check (default: --config).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A file holding a user's ID token: validate it, then exchange it once with Cognito and
    /// query each AppSync API with it. The token is never printed.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DoctorFormat::Text)]
    pub format: DoctorFormat,
}

/// `doctor --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DoctorFormat {
    /// One line per check, with its fix under it.
    Text,
    /// `{"ok", "config_file", "config_valid", "checks": [{"check", "status", "detail", "fix"?,
    /// "code"?}]}`.
    Json,
}

/// Flags of `credential-process`. The token itself is never a flag: command lines are visible
/// to every user (`ps`).
#[derive(Debug, Args)]
pub struct CredentialProcessArgs {
    /// The running credbroker's container endpoint [default: http://127.0.0.1:8900/v1/credentials].
    #[arg(long, value_name = "URL", env = credential_process::ENV_URL)]
    pub url: Option<String>,
    /// The file holding the user's ID token or session handle (whitespace around it, such as a
    /// trailing newline, is ignored). Without it, CREDBROKER_SESSION may hold a session handle.
    #[arg(long, value_name = "FILE", env = credential_process::ENV_TOKEN_FILE)]
    pub token_file: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = credential_process::DEFAULT_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout: u64,
}

/// Flags of `run` (they override the file and the environment).
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Listen address of the container-credentials endpoint.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Log filter (RUST_LOG still wins).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

impl RunArgs {
    /// The flags as dotted-key overrides.
    pub fn overrides(&self) -> Vec<(String, String)> {
        let mut o = Vec::new();
        if let Some(v) = &self.listen {
            o.push(("server.listen".to_owned(), v.clone()));
        }
        if let Some(v) = &self.log_level {
            o.push(("log.level".to_owned(), v.clone()));
        }
        if let Some(v) = &self.log_format {
            o.push(("log.format".to_owned(), v.clone()));
        }
        o
    }
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run the flow once through the AWS SDK, print the result and exit (0 on success).
    #[arg(long)]
    pub check: bool,
    /// Where the broker listens (falls back to a free port when taken).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Where to write the demo user's ID token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Flags of `emulators`.
#[derive(Debug, Args)]
pub struct EmulatorsArgs {
    /// Where the emulated OIDC issuer listens.
    #[arg(long, default_value = "127.0.0.1:8901")]
    pub issuer_listen: SocketAddr,
    /// Where the emulated Cognito Identity service listens.
    #[arg(long, default_value = "127.0.0.1:8902")]
    pub cognito_listen: SocketAddr,
    /// Where to write an ID token for the demo user.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Configuration sources for a file, the process environment and flag overrides.
pub fn sources(
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
    overrides: Vec<(String, String)>,
) -> Sources {
    Sources {
        file,
        toml: None,
        env,
        overrides,
    }
}
