//! The processes of the real-time row: the emulators' child (`child realtime-upstream`) and
//! `credbroker run`, and the open-files limit they need.

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use credbroker_emulators::appsync::{AppSyncEmulator, AppSyncOptions};
use credbroker_emulators::cognito::{CognitoEmulator, CognitoOptions, TrustedProvider};
use credbroker_emulators::oidc::{IssuerOptions, OidcIssuer};
use serde::{Deserialize, Serialize};

use crate::system::mint_parallel;
use crate::util;

/// What the upstream child writes for the parent.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Upstream {
    pub(super) pid: u32,
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) cognito_region: String,
    pub(super) identity_pool_id: String,
    pub(super) cognito_endpoint: String,
    pub(super) appsync_url: String,
    pub(super) appsync_region: String,
    pub(super) realtime_url: String,
    pub(super) tokens: Vec<String>,
}

impl Upstream {
    /// `127.0.0.1:PORT` of the API: the `host` its real-time auth must name.
    pub(super) fn authority(&self) -> &str {
        self.appsync_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
    }
}

/// `load child realtime-upstream <dir> <users>`: issuer, Cognito and AppSync (both auth modes),
/// `<users>` ID tokens, all written to `<dir>/upstream.json`; then serves until SIGTERM or
/// until stdin closes (the parent went away).
pub fn upstream_child(dir: &str, users: usize) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("realtime-upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve_upstream(Path::new(dir), users)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realtime-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_upstream(dir: &Path, users: usize) -> Result<(), String> {
    let clock = credbroker::clock::system();
    let issuer = OidcIssuer::start(IssuerOptions::default(), clock.clone())
        .await
        .map_err(|e| e.to_string())?;
    let cognito = CognitoEmulator::start(
        CognitoOptions::default(),
        vec![TrustedProvider::for_issuer(&issuer)],
        clock.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let appsync = AppSyncEmulator::start(AppSyncOptions::for_emulators(&issuer, &cognito), clock)
        .await
        .map_err(|e| e.to_string())?;
    let upstream = Upstream {
        pid: std::process::id(),
        issuer: issuer.issuer().to_owned(),
        audience: issuer.audience().to_owned(),
        cognito_region: cognito.region().to_owned(),
        identity_pool_id: cognito.identity_pool_id().to_owned(),
        cognito_endpoint: cognito.endpoint_url().to_owned(),
        appsync_url: appsync.url().to_owned(),
        appsync_region: appsync.region().to_owned(),
        realtime_url: appsync.realtime_url(),
        tokens: mint_parallel(&issuer, "auth0|realtime", users).await,
    };
    let text = serde_json::to_vec(&upstream).map_err(|e| e.to_string())?;
    let partial = dir.join("upstream.json.partial");
    std::fs::write(&partial, text).map_err(|e| e.to_string())?;
    std::fs::rename(&partial, dir.join("upstream.json")).map_err(|e| e.to_string())?;
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        let _ = closed_tx.send(());
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = closed_rx => {}
    }
    appsync.shutdown();
    cognito.shutdown();
    issuer.shutdown();
    Ok(())
}

/// The upstream child, running, and what it wrote.
pub(super) struct UpstreamChild {
    pub(super) child: Child,
    pub(super) info: Upstream,
}

pub(super) fn spawn_upstream(dir: &Path, users: usize) -> Result<UpstreamChild, String> {
    let mut child = util::child_command("realtime-upstream")
        .arg(dir)
        .arg(users.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the upstream child: {e}"))?;
    let file = dir.join("upstream.json");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if let Ok(text) = std::fs::read(&file) {
            let info: Upstream = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
            return Ok(UpstreamChild { child, info });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the upstream child exited ({status})"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    util::terminate(&mut child, Duration::from_secs(5));
    Err("the upstream child wrote nothing within 120 s".to_owned())
}

// ---------------------------------------------------------------------------------------------
// The broker

pub(super) fn broker_toml(u: &Upstream, connections: usize) -> String {
    format!(
        r#"# Written by benches/load (row 9, real time).
[server]
max_connections = 4096

[admin]
listen = "127.0.0.1:0"

[providers.bench]
issuer = "{issuer}"
audiences = ["{aud}"]

[cognito]
region = "{region}"
identity_pool_id = "{pool}"
endpoint_url = "{endpoint}"

[appsync.realtime]
max_connections = {max}

[appsync.apis.oidc]
url = "{url}"
region = "{appsync_region}"
auth = "oidc"
default = true

[appsync.apis.iam]
url = "{url}"
region = "{appsync_region}"
auth = "iam"
"#,
        issuer = u.issuer,
        aud = u.audience,
        region = u.cognito_region,
        pool = u.identity_pool_id,
        endpoint = u.cognito_endpoint,
        max = connections + 100,
        url = u.appsync_url,
        appsync_region = u.appsync_region,
    )
}

/// `credbroker --config <dir>/credbroker.toml run --listen 127.0.0.1:<port>`, stderr to
/// `<dir>/<log>`.
pub(super) fn spawn_broker(dir: &Path, port: u16, log: &str) -> Result<Child, String> {
    let config = dir.join("credbroker.toml");
    let log = std::fs::File::create(dir.join(log)).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credbroker"));
    cmd.arg("--config")
        .arg(&config)
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, _) in std::env::vars() {
        if k.starts_with("CREDBROKER_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start credbroker: {e}"))
}

/// The soft limit on open files, raised to the hard limit (with `prlimit`, inherited by the
/// children spawned afterwards) when it is below `needed`.
pub(super) fn ensure_open_files(needed: u64) -> Result<(), String> {
    let soft_hard = || -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut fields = line.split_whitespace().skip(3);
        let parse = |v: Option<&str>| v.and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
        Some((parse(fields.next()), parse(fields.next())))
    };
    let Some((soft, hard)) = soft_hard() else {
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        return Err(format!(
            "needs {needed} open files, the hard limit is {hard} (raise it: ulimit -Hn)"
        ));
    }
    let pid = std::process::id().to_string();
    let limit = format!("--nofile={hard}:{hard}");
    let status = Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .status();
    match (status, soft_hard()) {
        (Ok(s), Some((now, _))) if s.success() && now >= needed => Ok(()),
        _ => Err(format!(
            "needs {needed} open files, the limit is {soft} and prlimit could not raise it \
             (ulimit -n {needed})"
        )),
    }
}
