//! The shipped configuration files: both load, and switching between the emulators and a
//! real deployment is a matter of configuration only.

use std::path::PathBuf;
use std::time::Duration;

use credbroker::app::{self, Overrides};
use credbroker::clock;
use credbroker::config::{self, Sources};
use credbroker::demo::{EmulatorOptions, Emulators};

use crate::support::{sdk_container_credentials, tempdir};

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[test]
fn the_auth0_example_is_valid_and_derives_the_logins_key() {
    let c = config::load(&Sources {
        file: Some(shipped("credbroker.example.toml")),
        ..Sources::default()
    })
    .expect("the example is valid");
    assert_eq!(c.server.listen, "127.0.0.1:8900".parse().expect("addr"));
    assert_eq!(c.providers.len(), 1);
    let auth0 = &c.providers[0];
    assert_eq!(auth0.issuer, "https://dev-example.us.auth0.com/");
    assert_eq!(auth0.logins_key, "dev-example.us.auth0.com");
    assert_eq!(c.cognito.endpoint_url, None);
    // The commented defaults in the example are the real defaults.
    assert_eq!(c.cache.min_remaining, Duration::from_secs(20 * 60));
    assert_eq!(c.cache.refresh_ahead, Duration::from_secs(30 * 60));
    assert_eq!(c.tokens.leeway, Duration::from_secs(60));
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(20));
}

/// `credbroker emulators` + `config/emulators.toml`, with only the ports changed (the
/// emulators take free ports here), gets credentials through the AWS SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulators_file_drives_a_broker_against_credbroker_emulators() {
    let dir = tempdir();
    let emulators = Emulators::start(
        &EmulatorOptions {
            issuer_listen: "127.0.0.1:0".parse().expect("addr"),
            cognito_listen: "127.0.0.1:0".parse().expect("addr"),
            token_file: Some(dir.join("id-token")),
        },
        clock::system(),
    )
    .await
    .expect("emulators start");

    let env = vec![
        (
            "CREDBROKER_PROVIDERS__AUTH0__ISSUER".to_owned(),
            emulators.issuer.issuer().to_owned(),
        ),
        (
            "CREDBROKER_COGNITO__ENDPOINT_URL".to_owned(),
            emulators.cognito.endpoint_url(),
        ),
        (
            "CREDBROKER_SERVER__LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "CREDBROKER_ADMIN__LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
    ];
    let c = config::load(&Sources {
        file: Some(shipped("emulators.toml")),
        env,
        ..Sources::default()
    })
    .expect("emulators.toml is valid");
    assert_eq!(
        c.cognito.identity_pool_id,
        emulators.cognito.identity_pool_id()
    );
    assert_eq!(c.providers[0].audiences, vec![emulators.issuer.audience()]);

    let running = app::start(c, Overrides::default()).await.expect("broker");
    let creds = sdk_container_credentials(&running.credentials_url(), &emulators.token_file)
        .await
        .expect("credentials through the SDK");
    assert!(
        emulators
            .cognito
            .lookup_access_key(creds.access_key_id())
            .is_some(),
        "the credentials were issued by the emulated Cognito"
    );
    assert_eq!(emulators.cognito.stats().get_id.calls, 1);
    running.stop().await;
    emulators.stop();
}

/// Uncommenting every documented key of the example (except files that must exist) still gives
/// a valid configuration: the example documents real keys with valid values.
#[test]
fn every_key_documented_in_the_example_is_a_real_key() {
    let text = std::fs::read_to_string(shipped("credbroker.example.toml")).expect("example");
    // The shared tier's keys file must exist: a fresh one from the documented generator.
    let dir = crate::support::tempdir();
    let keys = dir.join("keys");
    let lines: Vec<String> = ["naming", "k1"]
        .iter()
        .map(|id| credbroker::shared::generate_key_line(id).expect("rng"))
        .collect();
    std::fs::write(&keys, lines.join("\n")).expect("keys file");
    let mut uncommented = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return line.to_owned();
            };
            let is_table = rest.starts_with('[')
                && rest.ends_with(']')
                && !rest.contains(' ')
                && !rest.contains('<');
            let is_key = rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
            if rest.starts_with("encryption_keys_file") {
                uncommented += 1;
                format!("encryption_keys_file = {:?}", keys.display().to_string())
            } else if (is_table || is_key)
                && !rest.starts_with("client_secret_file")
                && !rest.starts_with("tls_ca_file")
            {
                uncommented += 1;
                rest.to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(uncommented > 60, "only {uncommented} documented keys found");
    let c = config::load(&Sources::from_toml(lines.join("\n")))
        .unwrap_or_else(|e| panic!("the fully uncommented example is invalid:\n{e}"));
    assert_eq!(c.providers.len(), 2, "auth0 and the user pool example");
    let pool = c
        .providers
        .iter()
        .find(|p| p.issuer.starts_with("https://cognito-idp."))
        .expect("user pool provider");
    assert_eq!(
        pool.logins_key,
        "cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEfGhI"
    );
    assert!(c.imds.is_some());
    assert_eq!(c.appsync.apis.len(), 2);
    assert!(c.shared.is_some_and(|s| s.share_credentials));
    let _ = std::fs::remove_dir_all(&dir);
}
