//! Shared test setup: emulated issuer + Cognito + a broker on 127.0.0.1:0, an HTTP client,
//! and the real aws-config credentials chain pointed at the broker.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials as _;
use aws_types::os_shim_internal::{Env, Fs};
use bytes::Bytes;
use credbroker::app::{self, Overrides, Running};
use credbroker::clock::{SharedClock, TokioClock};
use credbroker::cognito::CognitoApi;
use credbroker::config::Config;
use credbroker::sources::refresh::TokenEndpoint;
use credbroker_emulators::appsync::{AppSyncEmulator, AppSyncOptions};
use credbroker_emulators::cognito::{CognitoEmulator, CognitoOptions, TrustedProvider};
use credbroker_emulators::oidc::{IssuerOptions, OidcIssuer};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Extra TOML per section, inserted into the generated configuration.
#[derive(Default, Clone)]
pub struct Tweaks {
    pub server: String,
    pub tokens: String,
    pub cache: String,
    pub cognito: String,
    /// Extra `[providers.test]` TOML; `{discovery_url}` is replaced with the emulated issuer's
    /// discovery URL (for issuers whose `iss` is not where they are served, like a User Pool's).
    pub provider: String,
    /// `[grpc]` and `[sessions]` settings.
    pub grpc: String,
    pub sessions: String,
    /// Start with the issuer unreachable (the provider is not ready at start).
    pub issuer_down_at_start: bool,
    /// Extra `[admin]` TOML (the admin listener always binds 127.0.0.1:0 here).
    pub admin: String,
    /// Use the emulator in-process instead of the SDK over HTTP (paused-time tests).
    pub in_process_cognito: bool,
    pub cognito_options: Option<CognitoOptions>,
    pub issuer_options: Option<IssuerOptions>,
    /// Start an emulated AppSync (both auth modes) and configure it as APIs `oidc` (default),
    /// `iam` and `readonly` (oidc, queries only); the string is extra `[appsync]` TOML.
    pub appsync: Option<String>,
    /// How often the emulated AppSync's real-time endpoint sends `ka` (its default: 60 s).
    pub appsync_ka_interval: Option<Duration>,
    /// Raw TOML appended to the configuration (`[identities.*]`, `[imds]`); `{dir}` is
    /// replaced with the harness's temporary directory.
    pub extra: String,
    /// Call the emulated issuer's token endpoint in process (paused-time tests).
    pub in_process_issuer: bool,
    /// Runs after the emulators start and before the broker does (write token files).
    pub setup: Option<Setup>,
    /// Client ids the emulated identity pool trusts besides the issuer's audience (so a
    /// refusal of such a token can only come from credbroker's own checks).
    pub cognito_extra_audiences: Vec<String>,
}

/// See [`Tweaks::setup`].
pub type Setup = Arc<dyn Fn(&OidcIssuer, &Path) + Send + Sync>;

impl Tweaks {
    /// Adds the configured identity `[identities.file]`: an ID token for `subject` valid for
    /// `lifetime`, written to `{dir}/id-token` at setup and re-read every `poll_interval` (a
    /// TOML duration). Replaces [`Tweaks::setup`].
    pub fn configured_identity(
        mut self,
        subject: &'static str,
        lifetime: Duration,
        poll_interval: &str,
    ) -> Self {
        self.setup = Some(Arc::new(move |issuer, dir| {
            let token = issuer.mint(&credbroker_emulators::oidc::TokenSpec {
                lifetime: Some(lifetime),
                ..credbroker_emulators::oidc::TokenSpec::for_subject(subject)
            });
            credbroker::fsutil::write_atomic(&dir.join("id-token"), token.as_bytes())
                .expect("token file");
        }));
        self.extra.push_str(&format!(
            "\n[identities.file]\nprovider = \"test\"\nid_token_file = \"{{dir}}/id-token\"\n\
             poll_interval = \"{poll_interval}\"\n"
        ));
        self
    }
}

pub struct Harness {
    pub issuer: OidcIssuer,
    pub cognito: CognitoEmulator,
    pub appsync: Option<AppSyncEmulator>,
    pub running: Option<Running>,
    pub clock: SharedClock,
    pub http: Client<HttpConnector, Full<Bytes>>,
    pub dir: PathBuf,
    /// The configuration text, for [`Harness::restart`].
    pub config_text: String,
    tweaks: Tweaks,
}

pub fn config_toml(issuer: &OidcIssuer, cognito: &CognitoEmulator, t: &Tweaks) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server}

[tokens]
{tokens}

[providers.test]
issuer = "{issuer}"
audiences = ["{aud}"]
{provider}

[cognito]
region = "{region}"
identity_pool_id = "{pool}"
endpoint_url = "{endpoint}"
{cognito_extra}

[cache]
{cache}

[grpc]
{grpc}

[sessions]
{sessions}
[admin]
listen = "127.0.0.1:0"
{admin}
"#,
        server = t.server,
        tokens = t.tokens,
        issuer = issuer.issuer(),
        aud = issuer.audience(),
        provider = t
            .provider
            .replace("{discovery_url}", &issuer.discovery_url()),
        region = cognito.region(),
        pool = cognito.identity_pool_id(),
        endpoint = cognito.endpoint_url(),
        cognito_extra = t.cognito,
        cache = t.cache,
        grpc = t.grpc,
        sessions = t.sessions,
        admin = t.admin,
    )
}

/// `[appsync]` with three APIs on the emulated AppSync.
pub fn appsync_toml(emu: &AppSyncEmulator, extra: &str) -> String {
    format!(
        r#"
[appsync]
{extra}

[appsync.apis.oidc]
url = "{url}"
region = "{region}"
auth = "oidc"
default = true

[appsync.apis.iam]
url = "{url}"
region = "{region}"
auth = "iam"

[appsync.apis.readonly]
url = "{url}"
region = "{region}"
auth = "oidc"
allowed_operations = ["query"]
"#,
        url = emu.url(),
        region = emu.region(),
    )
}

impl Harness {
    pub async fn start() -> Self {
        Self::with(Tweaks::default()).await
    }

    /// Starts everything. The clock follows tokio's clock, so a test may `tokio::time::pause()`
    /// after start-up and drive expiry with `tokio::time::sleep`.
    pub async fn with(t: Tweaks) -> Self {
        let clock: SharedClock = Arc::new(TokioClock::new());
        let issuer = OidcIssuer::start(t.issuer_options.clone().unwrap_or_default(), clock.clone())
            .await
            .expect("issuer");
        let mut trusted = TrustedProvider::for_issuer(&issuer);
        trusted
            .client_ids
            .extend(t.cognito_extra_audiences.iter().cloned());
        let cognito = CognitoEmulator::start(
            t.cognito_options.clone().unwrap_or_default(),
            vec![trusted],
            clock.clone(),
        )
        .await
        .expect("cognito");
        issuer.set_unavailable(t.issuer_down_at_start);
        let appsync = match &t.appsync {
            Some(_) => {
                let mut options = AppSyncOptions::for_emulators(&issuer, &cognito);
                if let Some(ka) = t.appsync_ka_interval {
                    options.realtime_ka_interval = ka;
                }
                Some(
                    AppSyncEmulator::start(options, clock.clone())
                        .await
                        .expect("appsync"),
                )
            }
            None => None,
        };
        let dir = tempdir();
        if let Some(setup) = &t.setup {
            setup(&issuer, &dir);
        }
        let mut config_text = config_toml(&issuer, &cognito, &t);
        if let (Some(extra), Some(emu)) = (&t.appsync, &appsync) {
            config_text.push_str(&appsync_toml(emu, extra));
        }
        config_text.push_str(&t.extra.replace("{dir}", &dir.to_string_lossy()));
        let mut h = Self {
            issuer,
            cognito,
            appsync,
            running: None,
            clock,
            http: Client::builder(TokioExecutor::new()).build_http(),
            dir,
            config_text,
            tweaks: t,
        };
        h.boot().await;
        h
    }

    async fn boot(&mut self) {
        let config = Config::from_toml(&self.config_text).expect("valid config");
        let api: Option<Arc<dyn CognitoApi>> = if self.tweaks.in_process_cognito {
            Some(Arc::new(self.cognito.clone()))
        } else {
            None
        };
        let token_endpoint: Option<Arc<dyn TokenEndpoint>> = if self.tweaks.in_process_issuer {
            Some(Arc::new(self.issuer.clone()))
        } else {
            None
        };
        let running = app::start(
            config,
            Overrides {
                clock: Some(self.clock.clone()),
                cognito: api,
                token_endpoint,
            },
        )
        .await
        .expect("broker starts");
        self.running = Some(running);
    }

    /// Stops the broker only (emulators and files stay).
    pub async fn stop_broker(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Stops the broker and starts a new one with the same configuration, files and emulators.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.boot().await;
    }

    /// `http://127.0.0.1:PORT/` of the IMDS endpoint.
    pub fn imds_url(&self) -> String {
        self.running().imds_url().expect("[imds] configured")
    }

    /// The subjects of the cached identities, sorted.
    pub fn cached_subjects(&self) -> Vec<String> {
        let mut subjects: Vec<String> = self
            .running()
            .broker
            .identities
            .identities()
            .iter()
            .map(|i| i.key().subject.to_string())
            .collect();
        subjects.sort();
        subjects
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn url(&self) -> String {
        self.running().credentials_url()
    }

    /// GET `path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        let addr = self.running().admin_addr.expect("admin listener enabled");
        self.request("GET", &format!("http://{addr}{path}"), &[])
            .await
    }

    /// GET the credentials endpoint with `Authorization: token` (none when empty).
    pub async fn get(&self, token: &str) -> Reply {
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            vec![]
        } else {
            vec![("authorization", token)]
        };
        self.request("GET", &self.url(), &headers).await
    }

    pub async fn request(&self, method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
        request(&self.http, method, url, headers).await
    }

    /// POST `body` to `path` on the broker's listener.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let url = format!("http://{}{path}", self.running().container_addr);
        send(
            &self.http,
            "POST",
            &url,
            headers,
            Bytes::from(body.to_owned()),
        )
        .await
    }

    pub fn appsync(&self) -> &AppSyncEmulator {
        self.appsync.as_ref().expect("started with Tweaks::appsync")
    }

    /// Writes a token file (atomically, no newline) and returns its path.
    pub fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(name);
        credbroker::fsutil::write_atomic(&path, token.as_bytes()).expect("token file");
        path
    }

    /// A gRPC channel to the broker's TCP gRPC listener.
    pub async fn grpc_channel(&self) -> tonic::transport::Channel {
        let addr = self.running().grpc.tcp.expect("grpc.listen is configured");
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("gRPC connects")
    }

    pub fn get_id_calls(&self) -> u64 {
        self.cognito.stats().get_id.calls
    }

    pub fn credential_calls(&self) -> u64 {
        self.cognito.stats().get_credentials_for_identity.calls
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.cognito.shutdown();
        self.issuer.shutdown();
        if let Some(a) = &self.appsync {
            a.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn code(&self) -> String {
        self.json()["Code"].as_str().unwrap_or_default().to_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn request(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send(client, method, url, headers, Bytes::new()).await
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(Full::new(body)).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answer within 30 s")
        .expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// Loads credentials through aws-config's default chain with only the container variables set,
/// exactly as an application would.
pub async fn sdk_container_credentials(
    url: &str,
    token_file: &Path,
) -> Result<
    aws_credential_types::Credentials,
    aws_credential_types::provider::error::CredentialsError,
> {
    let token_file = token_file.to_string_lossy().into_owned();
    let env = Env::from_slice(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.as_str(),
        ),
        ("AWS_CONFIG_FILE", "/nonexistent/credbroker-test/config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/credbroker-test/credentials",
        ),
    ]);
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .env(env)
        .fs(Fs::real())
        .http_client(credbroker::http::sdk_client())
        .load()
        .await;
    sdk.credentials_provider()
        .expect("a provider")
        .provide_credentials()
        .await
}

pub fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "credbroker-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

/// Lets spawned tasks run without advancing time.
pub async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// The real binary, its stderr collected.
pub struct Binary {
    pub child: tokio::process::Child,
    pub logs: Arc<std::sync::Mutex<String>>,
    pub reader: tokio::task::JoinHandle<()>,
}

impl Binary {
    pub fn spawn(config: &Path, rust_log: &str) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_credbroker"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn credbroker");
        let logs = Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        let reader = tokio::spawn(async move {
            let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = sink.lock().expect("lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self {
            child,
            logs,
            reader,
        }
    }

    /// The `listen=` field of the first log line containing `message`.
    pub async fn listen_of(&self, message: &str) -> String {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(addr) = self
                    .logs
                    .lock()
                    .expect("lock")
                    .lines()
                    .find(|l| l.contains(message))
                    .and_then(|l| l.split("listen=").nth(1))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned)
                {
                    return addr;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {message:?} line:\n{}", self.logs()))
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("lock").clone()
    }
}

/// One HTTP/1.1 connection driven byte by byte (requests hyper's client would not send, partial
/// heads, keep-alive behaviour).
pub struct RawConn {
    pub stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// A response read by [`RawConn`].
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn code(&self) -> String {
        self.json()["Code"].as_str().unwrap_or_default().to_owned()
    }
}

impl RawConn {
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads one response; `None` when the server closed (or reset) the connection before
    /// sending a complete head. Bounded by 30 s so a hang fails instead of blocking the suite.
    pub async fn response(&mut self) -> Option<RawReply> {
        tokio::time::timeout(Duration::from_secs(30), self.read_response())
            .await
            .expect("an answer or a close within 30 s")
    }

    async fn read_response(&mut self) -> Option<RawReply> {
        use tokio::io::AsyncReadExt as _;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        self.buf.drain(..head_end);
        while self.buf.len() < length {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = self.buf.drain(..length.min(self.buf.len())).collect();
        Some(RawReply {
            status,
            headers,
            body,
        })
    }

    /// Whether the server closed the connection: EOF or reset on the next read (bounded).
    pub async fn closed_by_server(&mut self) -> bool {
        use tokio::io::AsyncReadExt as _;
        let mut chunk = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

/// A minimal GET request head (`Host` is the address it is sent to).
pub fn raw_get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}
