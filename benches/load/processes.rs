//! 10: the comparison users care about (issue 13, item 5). N short-lived processes, each
//! getting one user's AWS credentials once, the way apps do today — the Rust SDK calling
//! Cognito itself (GetId + GetCredentialsForIdentity, as `fromCognitoIdentityPool` does) —
//! against the same N processes using the container endpoint through aws-config's default
//! chain, as an unmodified SDK app pointed at credbroker would. The emulated Cognito answers
//! after 40 ms; the processes run [`CONCURRENCY`] at a time. Figures: Cognito calls, and the
//! median time from a process's start to its credentials (measured inside the process, so the
//! exec itself, the same for both, is left out).

use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use credbroker::app::{self, Overrides};
use credbroker::config::Config;
use credbroker_emulators::cognito::CognitoEmulator;
use futures_util::StreamExt as _;

use crate::Options;
use crate::report::Report;
use crate::util::{self, fmt_duration, quantile};

const COGNITO_LATENCY: Duration = Duration::from_millis(40);
const CONCURRENCY: usize = 4;

/// Child mode `direct-cognito <endpoint> <region> <pool> <logins key> <token>`: GetId, then
/// GetCredentialsForIdentity; prints `RESULT <µs since start>`.
pub fn direct_child(args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let config = aws_sdk_cognitoidentity::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_sdk_cognitoidentity::config::Region::new(arg(1)))
            .endpoint_url(arg(0))
            .http_client(credbroker::http::sdk_client())
            .build();
        let client = aws_sdk_cognitoidentity::Client::from_conf(config);
        let logins = std::collections::HashMap::from([(arg(3), arg(4))]);
        let id = client
            .get_id()
            .identity_pool_id(arg(2))
            .set_logins(Some(logins.clone()))
            .send()
            .await
            .map_err(|e| format!("GetId: {e:?}"))?;
        let creds = client
            .get_credentials_for_identity()
            .identity_id(id.identity_id().unwrap_or_default())
            .set_logins(Some(logins))
            .send()
            .await
            .map_err(|e| format!("GetCredentialsForIdentity: {e:?}"))?;
        if creds
            .credentials()
            .and_then(|c| c.access_key_id())
            .is_none()
        {
            return Err("no credentials in the answer".to_owned());
        }
        println!("RESULT {}", started.elapsed().as_micros());
        Ok(())
    })
}

/// Child mode `container`: aws-config's default chain, which finds
/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN` in the
/// environment; prints `RESULT <µs since start>`.
pub fn container_child() -> Result<(), String> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        use aws_credential_types::provider::ProvideCredentials as _;
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(credbroker::http::sdk_client())
            .load()
            .await;
        let provider = sdk
            .credentials_provider()
            .ok_or("no credentials provider")?;
        provider
            .provide_credentials()
            .await
            .map_err(|e| format!("container credentials: {e:?}"))?;
        println!("RESULT {}", started.elapsed().as_micros());
        Ok(())
    })
}

/// Runs `n` children of `mode` with `env`, [`CONCURRENCY`] at a time; their times.
async fn processes(mode: &str, args: &[String], env: &[(&str, String)], n: usize) -> Vec<Duration> {
    let mut times: Vec<Duration> = futures_util::stream::iter(0..n)
        .map(|_| {
            let mut cmd = util::child_command(mode);
            cmd.args(args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("AWS_CONFIG_FILE", "/nonexistent/credbroker-bench/config")
                .env(
                    "AWS_SHARED_CREDENTIALS_FILE",
                    "/nonexistent/credbroker-bench/creds",
                )
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .stderr(Stdio::inherit());
            for (k, v) in env {
                cmd.env(k, v);
            }
            async move {
                let out = tokio::process::Command::from(cmd).output().await;
                let text = out
                    .as_ref()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                text.lines()
                    .find_map(|l| l.strip_prefix("RESULT "))
                    .and_then(|us| us.trim().parse::<u64>().ok())
                    .map(Duration::from_micros)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|t| async move { t })
        .collect()
        .await;
    times.sort();
    times
}

pub async fn run(options: &Options, report: &mut Report) {
    let n = if options.quick { 20 } else { 100 };
    let (issuer, cognito) = util::issuer_and_cognito(COGNITO_LATENCY).await;
    let token = issuer.token_for("auth0|short-lived");

    let calls = |c: &CognitoEmulator| {
        let s = c.stats();
        s.get_id.calls + s.get_credentials_for_identity.calls
    };
    let before = calls(&cognito);
    let args = [
        cognito.endpoint_url(),
        cognito.region().to_owned(),
        cognito.identity_pool_id().to_owned(),
        issuer.logins_key(),
        token.clone(),
    ];
    let direct = processes("direct-cognito", &args, &[], n).await;
    let direct_calls = calls(&cognito) - before;

    let config = Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [providers.bench]\nissuer = \"{}\"\naudiences = [\"{}\"]\n\
         [cognito]\nregion = \"{}\"\nidentity_pool_id = \"{}\"\nendpoint_url = \"{}\"\n",
        issuer.issuer(),
        issuer.audience(),
        cognito.region(),
        cognito.identity_pool_id(),
        cognito.endpoint_url(),
    ))
    .expect("the bench's config is valid");
    let running = app::start(config, Overrides::default())
        .await
        .expect("credbroker starts");
    let before = calls(&cognito);
    let env = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            running.credentials_url(),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", token),
    ];
    let brokered = processes("container", &[], &env, n).await;
    let brokered_calls = calls(&cognito) - before;
    running.stop().await;
    cognito.shutdown();
    issuer.shutdown();

    if direct.len() != n || brokered.len() != n {
        report.note(format!(
            "short-lived processes: {} of {n} direct and {} of {n} brokered processes got credentials",
            direct.len(),
            brokered.len()
        ));
        return;
    }
    let (d50, b50) = (quantile(&direct, 0.5), quantile(&brokered, 0.5));
    report.row(
        "10 short-lived processes",
        format!(
            "{n} processes ({CONCURRENCY} at a time), one user, each getting credentials once \
             (Cognito answers after {} ms): Cognito calls; median process start → credentials",
            COGNITO_LATENCY.as_millis()
        ),
        format!(
            "container endpoint (aws-config default chain): {brokered_calls} calls; p50 {}",
            fmt_duration(b50)
        ),
        format!(
            "each process calls Cognito (Rust SDK, GetId + GetCredentialsForIdentity): \
             {direct_calls} calls; p50 {}",
            fmt_duration(d50)
        ),
        format!(
            "{:.0}× fewer Cognito calls; time to credentials {:.2}×",
            direct_calls as f64 / brokered_calls.max(1) as f64,
            b50.as_secs_f64() / d50.as_secs_f64().max(1e-9)
        ),
        "",
    );
}
