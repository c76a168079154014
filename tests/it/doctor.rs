//! `credbroker doctor`: the real binary against the emulators, a correct setup first, then one
//! misconfiguration at a time, each of which must give its own line and fix.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use credbroker::clock::{SharedClock, TokioClock};
use credbroker::emulator::appsync::{AppSyncEmulator, AppSyncOptions};
use credbroker::emulator::cognito::{CognitoEmulator, CognitoOptions, TrustedProvider};
use credbroker::emulator::oidc::{Flavor, IssuerOptions, OidcIssuer, SigningAlg, TokenSpec};
use serde_json::Value;

use crate::support::{appsync_toml, tempdir};

const BIN: &str = env!("CARGO_BIN_EXE_credbroker");

/// The emulators a doctor run looks at.
struct World {
    issuer: OidcIssuer,
    cognito: CognitoEmulator,
    appsync: Option<AppSyncEmulator>,
    dir: PathBuf,
}

/// Which providers the identity pool trusts, given the issuer.
type Trusted = Box<dyn FnOnce(&OidcIssuer) -> Vec<TrustedProvider>>;

/// How the world differs from a correct setup.
#[derive(Default)]
struct Setup {
    /// The providers the identity pool trusts (default: the issuer, its default audience).
    trusted: Option<Trusted>,
    cognito: Option<CognitoOptions>,
    appsync: bool,
    /// The issuer's options (default: an Auth0-shaped issuer).
    issuer: Option<IssuerOptions>,
}

/// What the configuration says.
#[derive(Default)]
struct Conf {
    /// `providers.test.issuer` (default: exactly the issuer's).
    issuer: Option<String>,
    /// Extra `[providers.test]` lines.
    provider: String,
    region: Option<String>,
    pool: Option<String>,
    /// `cognito.endpoint_url` (default: the emulator).
    endpoint: Option<String>,
}

impl World {
    async fn start(setup: Setup) -> Self {
        let clock: SharedClock = std::sync::Arc::new(TokioClock::new());
        let issuer = OidcIssuer::start(setup.issuer.unwrap_or_default(), clock.clone())
            .await
            .expect("issuer");
        let trusted = match setup.trusted {
            Some(f) => f(&issuer),
            None => vec![TrustedProvider::for_issuer(&issuer)],
        };
        let cognito =
            CognitoEmulator::start(setup.cognito.unwrap_or_default(), trusted, clock.clone())
                .await
                .expect("cognito");
        let appsync = match setup.appsync {
            true => Some(
                AppSyncEmulator::start(
                    AppSyncOptions::for_emulators(&issuer, &cognito),
                    clock.clone(),
                )
                .await
                .expect("appsync"),
            ),
            false => None,
        };
        Self {
            issuer,
            cognito,
            appsync,
            dir: tempdir(),
        }
    }

    fn config(&self, c: Conf) -> PathBuf {
        let mut text = format!(
            r#"
[providers.test]
issuer = "{issuer}"
audiences = ["{aud}"]
{provider}

[cognito]
region = "{region}"
identity_pool_id = "{pool}"
endpoint_url = "{endpoint}"
"#,
            issuer = c.issuer.as_deref().unwrap_or(self.issuer.issuer()),
            aud = self.issuer.audience(),
            provider = c.provider,
            region = c.region.as_deref().unwrap_or(self.cognito.region()),
            pool = c.pool.as_deref().unwrap_or(self.cognito.identity_pool_id()),
            endpoint = c.endpoint.unwrap_or_else(|| self.cognito.endpoint_url()),
        );
        if let Some(appsync) = &self.appsync {
            text.push_str(&appsync_toml(appsync, ""));
        }
        let path = self.dir.join("credbroker.toml");
        std::fs::write(&path, text).expect("config");
        path
    }

    fn token_file(&self, token: &str) -> PathBuf {
        let path = self.dir.join("id-token");
        std::fs::write(&path, token).expect("token file");
        path
    }

    async fn stop(self) {
        self.issuer.shutdown();
        self.cognito.shutdown();
        if let Some(a) = &self.appsync {
            a.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn run_doctor(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("doctor").args(args).env_clear().kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("doctor exits")
        .expect("doctor runs")
}

/// One `--format json` run.
struct Doctor {
    code: Option<i32>,
    json: Value,
    stdout: String,
}

impl Doctor {
    async fn run(config: &Path, token: Option<&Path>) -> Self {
        let config = config.to_string_lossy().into_owned();
        let mut args = vec!["--config", &config, "--format", "json"];
        let token = token.map(|t| t.to_string_lossy().into_owned());
        if let Some(t) = &token {
            args.extend(["--token-file", t]);
        }
        let out = run_doctor(&args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        Self {
            code: out.status.code(),
            json,
            stdout,
        }
    }

    fn check(&self, id: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["check"] == id))
            .unwrap_or_else(|| panic!("no check {id}: {}", self.stdout))
    }

    fn status(&self, id: &str) -> &str {
        self.check(id)["status"].as_str().unwrap_or_default()
    }

    /// Asserts `id` failed with a detail and a fix containing the given texts; returns it.
    fn failed(&self, id: &str, detail: &str, fix: &str) -> &Value {
        let c = self.check(id);
        assert_eq!(c["status"], "fail", "{id}: {}", self.stdout);
        let d = c["detail"].as_str().unwrap_or_default();
        let f = c["fix"].as_str().unwrap_or_default();
        assert!(d.contains(detail), "{id} detail {d:?} lacks {detail:?}");
        assert!(f.contains(fix), "{id} fix {f:?} lacks {fix:?}");
        c
    }

    /// The ids of the failed checks.
    fn failures(&self) -> Vec<&str> {
        self.json["checks"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["status"] == "fail")
                    .filter_map(|c| c["check"].as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn a_correct_setup_passes_every_check_through_one_exchange() {
    let w = World::start(Setup {
        appsync: true,
        ..Setup::default()
    })
    .await;
    let token = w.issuer.token_for("auth0|doctor-ok");
    let d = Doctor::run(&w.config(Conf::default()), Some(&w.token_file(&token))).await;
    assert_eq!(d.code, Some(0), "{}", d.stdout);
    assert_eq!(d.json["ok"], true);
    let statuses: Vec<(&str, &str)> = d.json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap_or_default(),
                c["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for id in [
        "config",
        "provider.test.discovery",
        "provider.test.issuer",
        "provider.test.jwks",
        "provider.test.algorithms",
        "provider.test.keys",
        "cognito.pool",
        "token.file",
        "token.validation",
        "cognito.get_id",
        "cognito.get_credentials",
        "appsync.oidc.reachable",
        "appsync.oidc.query",
        "appsync.iam.query",
        "appsync.readonly.query",
    ] {
        assert!(statuses.contains(&(id, "ok")), "{id} not ok: {}", d.stdout);
    }
    assert!(statuses.iter().all(|(_, s)| *s == "ok"), "{}", d.stdout);
    assert!(
        d.check("provider.test.issuer")["detail"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("Logins key {:?}", w.issuer.logins_key()))),
        "the three strings are shown"
    );
    assert!(
        d.check("appsync.iam.query")["detail"]
            .as_str()
            .is_some_and(|t| t.contains("answered \"Query\"")),
        "{}",
        d.stdout
    );
    // One real exchange: the probe's GetId was refused, the token's succeeded, and the IAM query
    // signed with the cached credentials instead of a second GetCredentialsForIdentity.
    let stats = w.cognito.stats();
    assert_eq!(stats.get_id.ok, 1);
    assert_eq!(stats.get_credentials_for_identity.calls, 1);
    let appsync = w.appsync.as_ref().expect("appsync").stats();
    assert_eq!((appsync.oidc_authorized, appsync.iam_authorized), (2, 1));
    // Nothing secret on stdout.
    assert!(!d.stdout.contains(&token));
    assert!(!d.stdout.contains(&token[token.len() - 40..]));
    w.stop().await;
}

#[tokio::test]
async fn the_text_report_has_one_line_per_check_and_its_fix() {
    let w = World::start(Setup::default()).await;
    let config = w.config(Conf {
        issuer: Some(w.issuer.issuer().trim_end_matches('/').to_owned()),
        ..Conf::default()
    });
    let out = run_doctor(&["--config", &config.to_string_lossy()]).await;
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("credbroker doctor: "), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok   provider.test.discovery: ")),
        "{text}"
    );
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL provider.test.issuer: "))
        .unwrap_or_else(|| panic!("no FAIL line: {text}"));
    assert!(
        lines[at + 1].starts_with(&format!(
            "     fix: set providers.test.issuer = {:?}",
            w.issuer.issuer()
        )),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("skip token.validation: ")),
        "{text}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("1 failed") && l.contains("fix the FAIL lines")),
        "{text}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_wrong_pool_is_found_by_the_unsigned_probe() {
    let w = World::start(Setup::default()).await;
    let pool = "us-east-1:00000000-0000-4000-8000-000000000000";
    let token = w.issuer.token_for("auth0|doctor-pool");
    let d = Doctor::run(
        &w.config(Conf {
            pool: Some(pool.to_owned()),
            ..Conf::default()
        }),
        Some(&w.token_file(&token)),
    )
    .await;
    assert_eq!(d.code, Some(1));
    let c = d.failed(
        "cognito.pool",
        &format!("identity pool {pool} does not exist in us-east-1"),
        "copy the Identity pool ID from the Cognito console",
    );
    assert_eq!(c["code"], "ResourceNotFound");
    assert_eq!(d.failures(), ["cognito.pool"]);
    assert_eq!(d.status("cognito.get_id"), "skip");
    assert_eq!(w.cognito.stats().get_id.ok, 0);
    w.stop().await;
}

#[tokio::test]
async fn a_wrong_region_is_named_whether_or_not_the_pool_id_agrees_with_it() {
    let w = World::start(Setup::default()).await;
    // The region disagrees with the pool id's prefix: the configuration itself is refused.
    let d = Doctor::run(
        &w.config(Conf {
            region: Some("eu-west-1".to_owned()),
            ..Conf::default()
        }),
        None,
    )
    .await;
    assert_eq!(d.code, Some(64));
    assert_eq!(d.json["config_valid"], false);
    d.failed(
        "config",
        "is in region \"us-east-1\" but cognito.region is \"eu-west-1\"",
        "set cognito.region to the region of the pool",
    );

    // Region and prefix agree, but the pool is not in that region.
    let (_, uuid) = w
        .cognito
        .identity_pool_id()
        .split_once(':')
        .expect("pool id");
    let pool = format!("eu-west-1:{uuid}");
    let d = Doctor::run(
        &w.config(Conf {
            region: Some("eu-west-1".to_owned()),
            pool: Some(pool.clone()),
            ..Conf::default()
        }),
        None,
    )
    .await;
    assert_eq!(d.code, Some(1));
    d.failed(
        "cognito.pool",
        &format!("identity pool {pool} does not exist in eu-west-1"),
        "set cognito.region to the region the console shows it in",
    );
    w.stop().await;
}

#[tokio::test]
async fn a_logins_key_that_is_not_the_iam_provider_name_is_translated() {
    // The IAM provider was created with a trailing slash, and logins_key follows it: Cognito
    // finds the provider but the token's iss does not match its name.
    let w = World::start(Setup {
        trusted: Some(Box::new(|issuer: &OidcIssuer| {
            vec![TrustedProvider {
                name: format!("{}/", issuer.logins_key()),
                ..TrustedProvider::for_issuer(issuer)
            }]
        })),
        ..Setup::default()
    })
    .await;
    let key = format!("{}/", w.issuer.logins_key());
    let token = w.issuer.token_for("auth0|doctor-key");
    let d = Doctor::run(
        &w.config(Conf {
            provider: format!("logins_key = \"{key}\""),
            ..Conf::default()
        }),
        Some(&w.token_file(&token)),
    )
    .await;
    assert_eq!(d.code, Some(1));
    let c = d.failed(
        "cognito.get_id",
        "Issuer doesn't match providerName",
        &format!(
            "credbroker sent the Logins key {key:?} (providers.test.logins_key); it must be the \
             name of the identity pool's OpenID Connect provider"
        ),
    );
    assert_eq!(c["code"], "LoginRejected");
    assert_eq!(d.failures(), ["cognito.get_id"]);
    assert_eq!(d.status("cognito.get_credentials"), "skip");
    w.stop().await;
}

#[tokio::test]
async fn a_provider_not_attached_to_the_pool_is_found_before_any_token_is_sent() {
    let w = World::start(Setup {
        trusted: Some(Box::new(|_: &OidcIssuer| Vec::new())),
        ..Setup::default()
    })
    .await;
    let token = w.issuer.token_for("auth0|doctor-unattached");
    let d = Doctor::run(&w.config(Conf::default()), Some(&w.token_file(&token))).await;
    assert_eq!(d.code, Some(1));
    d.failed(
        "provider.test.pool_trust",
        &format!(
            "Logins key {:?} is not a provider of identity pool",
            w.issuer.logins_key()
        ),
        "to the identity pool's authentication providers",
    );
    assert_eq!(d.status("cognito.pool"), "ok");
    assert_eq!(d.failures(), ["provider.test.pool_trust"]);
    assert_eq!(d.status("cognito.get_id"), "skip");
    // Only the probe reached Cognito.
    assert_eq!(w.cognito.stats().get_id.calls, 1);
    w.stop().await;
}

#[tokio::test]
async fn an_hs256_token_is_refused_locally_with_the_auth0_fix_and_never_sent() {
    let w = World::start(Setup::default()).await;
    let token = w.issuer.mint(&TokenSpec {
        alg: SigningAlg::Hs256 {
            secret: b"auth0-client-secret".to_vec(),
        },
        ..TokenSpec::for_subject("auth0|doctor-hs256")
    });
    let d = Doctor::run(&w.config(Conf::default()), Some(&w.token_file(&token))).await;
    assert_eq!(d.code, Some(1));
    let c = d.failed(
        "token.validation",
        "SymmetricAlgorithm",
        "switch the Auth0 application to RS256",
    );
    assert_eq!(c["code"], "SymmetricAlgorithm");
    assert_eq!(d.failures(), ["token.validation"]);
    assert_eq!(d.status("cognito.get_id"), "skip");
    assert_eq!(w.cognito.stats().get_id.calls, 1, "only the probe");
    assert!(!d.stdout.contains(&token));
    w.stop().await;
}

#[tokio::test]
async fn a_wrong_audience_is_told_apart_locally_and_at_the_iam_provider() {
    // The token is for a client credbroker does not accept.
    let w = World::start(Setup::default()).await;
    let token = w.issuer.mint(&TokenSpec {
        audience: vec!["another-app".to_owned()],
        ..TokenSpec::for_subject("auth0|doctor-aud")
    });
    let d = Doctor::run(&w.config(Conf::default()), Some(&w.token_file(&token))).await;
    let c = d.failed(
        "token.validation",
        "aud [\"another-app\"]",
        "add the application's Client ID (the token's aud [\"another-app\"]) to \
         providers.test.audiences",
    );
    assert_eq!(c["code"], "AudienceMismatch");
    w.stop().await;

    // credbroker accepts the client, the IAM OIDC provider does not list it.
    let w = World::start(Setup {
        trusted: Some(Box::new(|issuer: &OidcIssuer| {
            vec![TrustedProvider {
                client_ids: vec!["some-other-client".to_owned()],
                ..TrustedProvider::for_issuer(issuer)
            }]
        })),
        ..Setup::default()
    })
    .await;
    let token = w.issuer.token_for("auth0|doctor-iam-aud");
    let d = Doctor::run(&w.config(Conf::default()), Some(&w.token_file(&token))).await;
    assert_eq!(d.code, Some(1));
    assert_eq!(d.status("token.validation"), "ok");
    d.failed(
        "cognito.get_id",
        "Incorrect token audience",
        "add the application's client ID to the Audiences of the IAM OpenID Connect provider",
    );
    assert_eq!(d.failures(), ["cognito.get_id"]);
    w.stop().await;
}

#[tokio::test]
async fn an_issuer_without_the_trailing_slash_is_caught_in_discovery_and_in_the_token() {
    let w = World::start(Setup::default()).await;
    let slashless = w.issuer.issuer().trim_end_matches('/').to_owned();
    let token = w.issuer.token_for("auth0|doctor-slash");
    let d = Doctor::run(
        &w.config(Conf {
            issuer: Some(slashless.clone()),
            ..Conf::default()
        }),
        Some(&w.token_file(&token)),
    )
    .await;
    assert_eq!(d.code, Some(1));
    d.failed(
        "provider.test.issuer",
        &format!(
            "names issuer {:?} but providers.test.issuer is {slashless:?} (the discovery \
             document's has a trailing slash",
            w.issuer.issuer()
        ),
        &format!("set providers.test.issuer = {:?}", w.issuer.issuer()),
    );
    let c = d.failed(
        "token.validation",
        "IssuerMismatch",
        &format!("set providers.test.issuer = {:?}", w.issuer.issuer()),
    );
    assert_eq!(c["code"], "IssuerMismatch");
    // The loader's verdict is not a second failure for the same cause.
    assert_eq!(d.status("provider.test.keys"), "skip");
    assert_eq!(d.failures(), ["provider.test.issuer", "token.validation"]);
    w.stop().await;
}

#[tokio::test]
async fn an_unreachable_jwks_gets_its_own_line() {
    // An issuer whose discovery document is fine but whose jwks_uri nobody serves.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let jwks_uri = format!(
        "http://{}/.well-known/jwks.json",
        dead.local_addr().expect("addr")
    );
    drop(dead);
    let discovery = serde_json::json!({
        "issuer": format!("{base}/"),
        "authorization_endpoint": format!("{base}/authorize"),
        "jwks_uri": jwks_uri,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
    .to_string();
    let app = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(
            move || async move { ([("content-type", "application/json")], discovery) },
        ),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // The pool trusts this issuer (its keys do not matter: no token is sent).
    let key = base.trim_start_matches("http://").to_owned();
    let w = World::start(Setup {
        trusted: Some(Box::new(move |issuer: &OidcIssuer| {
            vec![TrustedProvider {
                name: key,
                ..TrustedProvider::for_issuer(issuer)
            }]
        })),
        ..Setup::default()
    })
    .await;
    let d = Doctor::run(
        &w.config(Conf {
            issuer: Some(format!("{base}/")),
            ..Conf::default()
        }),
        None,
    )
    .await;
    assert_eq!(d.code, Some(1));
    assert_eq!(d.status("provider.test.discovery"), "ok");
    assert_eq!(d.status("provider.test.issuer"), "ok");
    d.failed(
        "provider.test.jwks",
        &format!("cannot read the JWKS {jwks_uri} (the discovery document's jwks_uri)"),
        "the issuer's keys must be reachable from this host",
    );
    assert_eq!(d.status("provider.test.algorithms"), "skip");
    assert_eq!(d.status("provider.test.keys"), "skip");
    assert_eq!(d.failures(), ["provider.test.jwks"]);
    server.abort();
    w.stop().await;
}

#[tokio::test]
async fn a_role_the_pool_cannot_assume_is_translated_into_the_trust_policy() {
    let w = World::start(Setup {
        cognito: Some(CognitoOptions {
            allowed_roles: Vec::new(),
            ..CognitoOptions::default()
        }),
        ..Setup::default()
    })
    .await;
    let token = w.issuer.token_for("auth0|doctor-role");
    let d = Doctor::run(&w.config(Conf::default()), Some(&w.token_file(&token))).await;
    assert_eq!(d.code, Some(1));
    assert_eq!(d.status("cognito.get_id"), "ok");
    let c = d.failed(
        "cognito.get_credentials",
        "Invalid identity pool configuration",
        "must trust cognito-identity.amazonaws.com for sts:AssumeRoleWithWebIdentity",
    );
    assert_eq!(c["code"], "IdentityPoolMisconfigured");
    assert_eq!(d.failures(), ["cognito.get_credentials"]);
    w.stop().await;
}

#[tokio::test]
async fn unreachable_cognito_and_an_appsync_client_id_mismatch_are_named() {
    let w = World::start(Setup {
        appsync: true,
        ..Setup::default()
    })
    .await;
    w.appsync
        .as_ref()
        .expect("appsync")
        .set_oidc_client_id(Some("the-web-app"));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let token = w.issuer.token_for("auth0|doctor-appsync");
    let d = Doctor::run(
        &w.config(Conf {
            endpoint: Some(endpoint.clone()),
            ..Conf::default()
        }),
        Some(&w.token_file(&token)),
    )
    .await;
    assert_eq!(d.code, Some(1));
    d.failed(
        "cognito.pool",
        &format!("no usable answer from Cognito at {endpoint}"),
        "check that this host reaches the endpoint",
    );
    assert_eq!(d.status("cognito.get_id"), "skip");
    // OIDC mode needs no Cognito: the query still runs, and AppSync's refusal is translated.
    let c = d.failed(
        "appsync.oidc.query",
        "UnauthorizedException: Token has invalid audience.",
        "set the API's OpenID Connect Client ID to the token's aud",
    );
    assert_eq!(c["code"], "UnauthorizedException");
    assert_eq!(d.status("appsync.oidc.reachable"), "ok");
    assert_eq!(d.status("appsync.iam.query"), "skip");
    w.stop().await;
}

#[tokio::test]
async fn a_user_pool_issuer_is_checked_at_its_discovery_url_and_its_access_token_is_named() {
    let w = World::start(Setup {
        issuer: Some(IssuerOptions {
            audience: "4s9ltg1o4m3j1n0qk3v2example".into(),
            flavor: Flavor::CognitoUserPool {
                region: "us-east-1".into(),
                pool_id: "us-east-1_AbCdEfGhI".into(),
            },
            ..IssuerOptions::default()
        }),
        ..Setup::default()
    })
    .await;
    // The issuer string is a User Pool's (https://cognito-idp.…/<pool>), which this machine
    // cannot reach: only providers.<name>.discovery_url leads to the documents.
    let config = w.config(Conf {
        provider: format!("discovery_url = \"{}\"", w.issuer.discovery_url()),
        ..Conf::default()
    });
    let access = w.issuer.mint(&TokenSpec {
        access_token: true,
        ..TokenSpec::for_subject("7d8e6f2a-user-pool-sub")
    });
    let d = Doctor::run(&config, Some(&w.token_file(&access))).await;
    assert_eq!(d.code, Some(1), "{}", d.stdout);
    let discovery = d.check("provider.test.discovery");
    assert_eq!(discovery["status"], "ok", "{}", d.stdout);
    assert!(
        discovery["detail"]
            .as_str()
            .is_some_and(|t| t.contains(&w.issuer.discovery_url())),
        "read from the configured discovery_url: {}",
        d.stdout
    );
    assert_eq!(d.status("provider.test.issuer"), "ok", "{}", d.stdout);
    let refused = d.failed(
        "token.validation",
        "access token",
        "write the ID token to the file, not the access token",
    );
    assert_eq!(refused["code"], "NotAnIdToken");
    assert_eq!(w.cognito.stats().get_id.ok, 0, "never sent to Cognito");

    // The ID token of the same login passes every check.
    let id_token = w.issuer.token_for("7d8e6f2a-user-pool-sub");
    let d = Doctor::run(&config, Some(&w.token_file(&id_token))).await;
    assert_eq!(d.code, Some(0), "{}", d.stdout);
    w.stop().await;
}
