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
