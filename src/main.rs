//! The `credbroker` binary: parse the command line, load configuration (exit 64 with every
//! problem listed), install logging, run. Everything else lives in the library.

#![warn(clippy::string_slice, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use credbroker::cli::{
    self, Cli, Command, CredentialProcessArgs, DoctorArgs, DoctorFormat, RunArgs, SubscribeArgs,
};
#[cfg(feature = "emulators")]
use credbroker::cli::{DemoArgs, EmulatorsArgs};
use credbroker::config::Sources;
#[cfg(feature = "emulators")]
use credbroker::demo;
use credbroker::{app, config, credential_process, doctor, probe, signals, telemetry};
use tokio::runtime::Runtime;

/// EX_USAGE: the configuration is invalid.
const EXIT_CONFIG: u8 = 64;

/// A command this build does not have (clap's exit code for usage errors).
#[cfg(not(feature = "emulators"))]
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // Before anything can panic: a panic message may quote request data (see telemetry).
    telemetry::install_panic_hook();
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let rust_log = std::env::var("RUST_LOG").ok();
    let rust_log = rust_log.as_deref();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("credbroker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::CheckConfig { file } => {
            check_config(&cli::sources(file.or(cli.config), env, Vec::new()))
        }
        Command::Run(args) => run(
            &runtime,
            &cli::sources(cli.config, env, args.overrides()),
            rust_log,
        ),
        #[cfg(feature = "emulators")]
        Command::Demo(args) => run_demo(&runtime, args, rust_log),
        #[cfg(feature = "emulators")]
        Command::Emulators(args) => run_emulators(&runtime, args, rust_log),
        #[cfg(not(feature = "emulators"))]
        Command::Demo(_) | Command::Emulators(_) => {
            eprintln!("credbroker: {}", cli::WITHOUT_EMULATORS);
            ExitCode::from(EXIT_USAGE)
        }
        Command::Probe { timeout } => run_probe(&runtime, Duration::from_secs(timeout)),
        Command::Doctor(args) => run_doctor(&runtime, args, cli.config, env),
        Command::GenKey(args) => credbroker::shared::gen_key(args.id.as_deref(), args.naming),
        Command::CredentialProcess(args) => run_credential_process(&runtime, args, &env),
        Command::Subscribe(args) => run_subscribe(&runtime, args),
    }
}

/// `check-config`: the configuration printed, or every problem (exit 64).
fn check_config(sources: &Sources) -> ExitCode {
    match config::load(sources) {
        Ok(c) => {
            println!("configuration is valid:\n{c:#?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `run` (the default): load the configuration (exit 64 when invalid), install logging, run
/// the daemon until a shutdown signal.
fn run(runtime: &Runtime, sources: &Sources, rust_log: Option<&str>) -> ExitCode {
    let config = match config::load(sources) {
        Ok(c) => c,
        Err(e) => {
            eprint!("credbroker: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = telemetry::init(&config.log, rust_log) {
        eprintln!("credbroker: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match runtime.block_on(app::run(config, signals::shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "credbroker failed");
            eprintln!("credbroker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Text logs at `level` for the commands that run without a configuration.
#[cfg(feature = "emulators")]
fn init_plain_logs(level: &str, rust_log: Option<&str>) {
    let log = config::LogConfig {
        level: level.to_owned(),
        format: config::LogFormat::Text,
        unsafe_dependency_logs: false,
    };
    let _ = telemetry::init(&log, rust_log);
}

/// `demo`: the whole flow against the built-in emulators.
#[cfg(feature = "emulators")]
fn run_demo(runtime: &Runtime, args: DemoArgs, rust_log: Option<&str>) -> ExitCode {
    init_plain_logs("warn,credbroker=info,credbroker::audit=warn", rust_log);
    let exe = std::env::current_exe().unwrap_or_else(|_| "credbroker".into());
    let options = demo::DemoOptions {
        check: args.check,
        listen: args.listen,
        token_file: args.token_file,
    };
    match runtime.block_on(demo::run(options, &exe, signals::shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credbroker demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `emulators`: only the emulated issuer and Cognito, until a shutdown signal.
#[cfg(feature = "emulators")]
fn run_emulators(runtime: &Runtime, args: EmulatorsArgs, rust_log: Option<&str>) -> ExitCode {
    init_plain_logs("warn,credbroker=info", rust_log);
    let options = demo::EmulatorOptions {
        issuer_listen: args.issuer_listen,
        cognito_listen: args.cognito_listen,
        token_file: args.token_file,
    };
    match runtime.block_on(demo::run_emulators(options, signals::shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credbroker emulators: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `probe`: credentials through the AWS SDK's default chain, printed redacted.
fn run_probe(runtime: &Runtime, timeout: Duration) -> ExitCode {
    match runtime.block_on(probe::probe(timeout)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("credbroker probe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `doctor`: the report on `--file` (else `--config`, else the environment's configuration);
/// its exit code.
fn run_doctor(
    runtime: &Runtime,
    args: DoctorArgs,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
) -> ExitCode {
    let file = args.file.or(config);
    let sources = cli::sources(file.clone(), env, Vec::new());
    let report = runtime.block_on(doctor::run(
        &sources,
        file.as_deref(),
        args.token_file.as_deref(),
    ));
    match args.format {
        DoctorFormat::Text => print!("{}", report.to_text()),
        DoctorFormat::Json => println!("{}", report.to_json()),
    }
    ExitCode::from(report.exit_code())
}

/// `credential-process`: credentials from the running daemon in the AWS CLI's format.
fn run_credential_process(
    runtime: &Runtime,
    args: CredentialProcessArgs,
    env: &[(String, String)],
) -> ExitCode {
    let options = credential_process::Options {
        url: args.url,
        token_file: args.token_file,
        timeout: Duration::from_secs(args.timeout),
    };
    match runtime.block_on(credential_process::run(&options, env)) {
        Ok(credentials) => {
            println!("{}", credentials.to_json());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("credbroker credential-process: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `subscribe`: events of one subscription through credbroker's real-time endpoint.
fn run_subscribe(runtime: &Runtime, args: SubscribeArgs) -> ExitCode {
    let variables = match serde_json::from_str::<serde_json::Value>(&args.variables) {
        Ok(v) if v.is_object() => v,
        _ => {
            eprintln!("credbroker subscribe: --variables must be a JSON object");
            return ExitCode::from(64);
        }
    };
    let options = credbroker::subscribe::Options {
        url: args.url,
        token_file: args.token_file,
        query: args.query,
        variables,
        count: args.count,
        reconnect: args.reconnect,
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(credbroker::subscribe::run(
        &options,
        &mut stdout,
        signals::shutdown(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credbroker subscribe: {e}");
            ExitCode::FAILURE
        }
    }
}
