//! The `credbroker` binary: parse the command line, load configuration (exit 64 with every
//! problem listed), install logging, run. Everything else lives in the library.

#![warn(clippy::string_slice, clippy::indexing_slicing)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use credbroker::cli::{self, Cli, Command, DoctorFormat, RunArgs};
#[cfg(feature = "emulators")]
use credbroker::demo;
use credbroker::{app, config, credential_process, doctor, probe, signals, telemetry};

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
    let command = cli.command.unwrap_or(Command::Run(RunArgs::default()));
    match command {
        Command::CheckConfig { file } => {
            match config::load(&cli::sources(file.or(cli.config), env, Vec::new())) {
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
        Command::Run(args) => {
            let sources = cli::sources(cli.config, env, args.overrides());
            let config = match config::load(&sources) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("credbroker: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if let Err(e) = telemetry::init(&config.log, rust_log.as_deref()) {
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
        #[cfg(feature = "emulators")]
        Command::Demo(args) => {
            let log = config::LogConfig {
                level: "warn,credbroker=info,credbroker::audit=warn".to_owned(),
                format: config::LogFormat::Text,
                unsafe_dependency_logs: false,
            };
            let _ = telemetry::init(&log, rust_log.as_deref());
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
        #[cfg(feature = "emulators")]
        Command::Emulators(args) => {
            let log = config::LogConfig {
                level: "warn,credbroker=info".to_owned(),
                format: config::LogFormat::Text,
                unsafe_dependency_logs: false,
            };
            let _ = telemetry::init(&log, rust_log.as_deref());
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
        #[cfg(not(feature = "emulators"))]
        Command::Demo(_) | Command::Emulators(_) => {
            eprintln!("credbroker: {}", cli::WITHOUT_EMULATORS);
            ExitCode::from(EXIT_USAGE)
        }
        Command::Probe { timeout } => {
            match runtime.block_on(probe::probe(Duration::from_secs(timeout))) {
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
        Command::Doctor(args) => {
            let file = args.file.or(cli.config);
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
        Command::GenKey(args) => credbroker::shared::gen_key(args.id.as_deref(), args.naming),
        Command::CredentialProcess(args) => {
            let options = credential_process::Options {
                url: args.url,
                token_file: args.token_file,
                timeout: Duration::from_secs(args.timeout),
            };
            match runtime.block_on(credential_process::run(&options, &env)) {
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
    }
}
