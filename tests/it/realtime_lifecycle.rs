//! AppSync real time over time: a raw ID token's connection closes (4001) before the token
//! expires, a session's survives token and credential renewals (re-authenticated upstream,
//! every subscription started again), a revoked session closes (4401), a session that cannot
//! renew closes (4002), and shutdown closes every socket with 1001.
//!
//! Paused time with real sockets: time moves only in `pause(); advance(step); resume();`
//! steps, and socket I/O happens with time running, after the relays settled (see
//! `settled`). Everything timed fires at step boundaries, so a step (5 s) is kept well below
//! the slack between a session's token refresh (50–60 % of a 2-minute token) and the
//! connection's deadline (30 s before `exp`).

use std::time::Duration;

use credbroker_emulators::cognito::CognitoOptions;
use credbroker_emulators::oidc::{IssuerOptions, TokenSpec};
use serde_json::json;

use crate::realtime::{
    Placement, close_code, connect, event, metric, next_json, refusal, subscribed, with_realtime,
};
use crate::support::{Binary, Harness, Tweaks, config_toml, tempdir};

const STEP: Duration = Duration::from_secs(5);

/// Creates a todo on a fresh connection: across a time step the listener closes idle
/// keep-alive connections (header_read_timeout), which a pooled client could reuse.
async fn create_fresh(h: &Harness, path: &str, token: &str, content: &str) -> serde_json::Value {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let body = json!({ "query": crate::realtime::CREATE, "variables": { "c": content } });
    let url = format!("http://{}{path}", h.running().container_addr);
    let reply = crate::support::send(
        &client,
        "POST",
        &url,
        &[
            ("authorization", token),
            ("content-type", "application/json"),
        ],
        bytes::Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["data"]["createTodo"].clone()
}

async fn step(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Waits in real time (bounded) until no renewal is in progress and the emulator holds
/// `open` sockets: every switch has completed.
async fn settled(h: &Harness, open: u64) {
    for _ in 0..1000 {
        let renewing = metric(
            h,
            "credbroker_appsync_realtime_renewal_in_progress{api=\"oidc\"}",
        ) + metric(
            h,
            "credbroker_appsync_realtime_renewal_in_progress{api=\"iam\"}",
        );
        if renewing == 0.0 && h.appsync().stats().realtime_open == open {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let metrics = h.running().broker.render_metrics();
    let realtime: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("credbroker_appsync_realtime") && !l.ends_with(" 0"))
        .collect();
    panic!(
        "relays did not settle: {:?}\n{}",
        h.appsync().stats(),
        realtime.join("\n")
    );
}

/// A session kept alive by a refresh token; ID tokens last 2 minutes, credentials 5.
async fn session_harness() -> (Harness, String) {
    let h = Harness::with(Tweaks {
        appsync: Some(String::new()),
        in_process_cognito: true,
        in_process_issuer: true,
        issuer_options: Some(IssuerOptions {
            token_lifetime: Duration::from_secs(120),
            ..Default::default()
        }),
        cognito_options: Some(CognitoOptions {
            credential_lifetime: Duration::from_secs(300),
            ..Default::default()
        }),
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        ..Tweaks::default()
    })
    .await;
    let user = "auth0|live";
    let reply = crate::sessions::post_json(
        &h,
        "/v1/sessions",
        &json!({
            "id_token": h.issuer.token_for(user),
            "refresh_token": h.issuer.issue_refresh_token(user),
        })
        .to_string(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let handle = reply.json()["session_token"]
        .as_str()
        .expect("handle")
        .to_owned();
    (h, handle)
}

#[tokio::test]
async fn a_session_survives_token_and_credential_renewals_without_missing_an_event() {
    let (h, handle) = session_harness().await;
    let mut oidc = subscribed(&h, "/appsync/realtime", &handle).await;
    let mut iam = subscribed(&h, "/appsync/iam/realtime", &handle).await;
    let mut elapsed = Duration::ZERO;
    let mut round = 0;
    // 10 minutes: five ID-token lifetimes, two credential lifetimes.
    while elapsed < Duration::from_secs(10 * 60) {
        step(STEP).await;
        elapsed += STEP;
        settled(&h, 2).await;
        round += 1;
        // An event created now arrives exactly once on each (a duplicate from the old link
        // would be read here instead of the newer one next round).
        let made = create_fresh(&h, "/appsync/graphql", &handle, &format!("oidc {round}")).await;
        assert_eq!(event(&mut oidc, "s1").await, made, "round {round}");
        let made = create_fresh(&h, "/appsync/iam/graphql", &handle, &format!("iam {round}")).await;
        assert_eq!(event(&mut iam, "s1").await, made, "round {round}");
    }
    let renewed = |api: &str| {
        metric(
            &h,
            &format!("credbroker_appsync_realtime_renewals_total{{api=\"{api}\",outcome=\"ok\"}}"),
        )
    };
    assert!(
        renewed("oidc") >= 7.0,
        "a new ID token about every minute: {}",
        renewed("oidc")
    );
    assert!(
        renewed("iam") >= 3.0,
        "new credentials every 2.5 minutes: {}",
        renewed("iam")
    );
    let stats = h.appsync().stats();
    assert_eq!(
        stats.realtime_expired, 0,
        "AppSync never had to expire a connection"
    );
    assert!(stats.realtime_authorized >= 12, "{stats:?}");
    assert_eq!(
        metric(
            &h,
            "credbroker_appsync_realtime_renewals_total{api=\"oidc\",outcome=\"failed\"}"
        ),
        0.0
    );
    // No client saw a close: both still answer.
    assert_eq!(
        metric(&h, "credbroker_appsync_realtime_connections{api=\"oidc\"}"),
        1.0
    );
    assert_eq!(
        metric(&h, "credbroker_appsync_realtime_connections{api=\"iam\"}"),
        1.0
    );
    drop((oidc, iam));
    h.stop().await;
}

#[tokio::test]
async fn a_raw_id_token_connection_closes_before_the_token_expires() {
    let h = with_realtime("").await;
    let token = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(300)),
        ..TokenSpec::for_subject("auth0|alice")
    });
    let mut oidc = subscribed(&h, "/appsync/realtime", &token).await;
    let mut iam = subscribed(&h, "/appsync/iam/realtime", &token).await;
    // token_expiry_margin (30 s) before exp; AppSync would expire it at exp.
    step(Duration::from_secs(271)).await;
    for ws in [&mut oidc, &mut iam] {
        let closed = loop {
            match next_json(ws).await {
                Ok(_) => continue,
                Err(closed) => break closed,
            }
        };
        assert_eq!(
            closed,
            Some((
                4001,
                "TokenExpiring: reconnect with a fresh ID token".to_owned()
            ))
        );
    }
    let stats = h.appsync().stats();
    assert_eq!(stats.realtime_expired, 0, "credbroker closed first");
    // Reconnecting with the same token is refused (it expires within the margin).
    let again = refusal(connect(&h, "/appsync/realtime", Placement::Header, &token).await);
    assert_eq!(again.0, 401);
    h.stop().await;
}

#[tokio::test]
async fn a_session_that_cannot_renew_closes_with_4002_and_a_revoked_one_with_4401() {
    let h = Harness::with(Tweaks {
        appsync: Some(String::new()),
        in_process_cognito: true,
        issuer_options: Some(IssuerOptions {
            token_lifetime: Duration::from_secs(120),
            ..Default::default()
        }),
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        ..Tweaks::default()
    })
    .await;
    let session = |token: String| {
        let h = &h;
        async move {
            let body = json!({ "id_token": token }).to_string();
            let reply = crate::sessions::post_json(h, "/v1/sessions", &body).await;
            assert_eq!(reply.status, 201, "{}", reply.text());
            reply.json()["session_token"]
                .as_str()
                .expect("handle")
                .to_owned()
        }
    };
    // A session without a refresh token whose token is never replaced.
    let stale = session(h.issuer.token_for("auth0|stale")).await;
    let revoked = session(h.issuer.token_for("auth0|revoked")).await;
    let mut a = subscribed(&h, "/appsync/realtime", &stale).await;
    let mut b = subscribed(&h, "/appsync/realtime", &revoked).await;

    let url = format!("http://{}/v1/sessions/current", h.running().container_addr);
    let deleted = h
        .request("DELETE", &url, &[("authorization", &revoked)])
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(close_code(&mut b).await, Some(4401));
    let again = refusal(connect(&h, "/appsync/realtime", Placement::Header, &revoked).await);
    assert_eq!(again, (401, "InvalidSession".to_owned()));

    let mut elapsed = Duration::ZERO;
    while elapsed < Duration::from_secs(90) {
        step(STEP).await;
        elapsed += STEP;
        settled(&h, 1).await;
    }
    assert_eq!(close_code(&mut a).await, Some(4002));
    assert_eq!(h.appsync().stats().realtime_expired, 0);
    assert!(
        metric(
            &h,
            "credbroker_appsync_realtime_renewals_total{api=\"oidc\",outcome=\"unchanged\"}"
        ) >= 1.0
    );
    h.stop().await;
}

#[tokio::test]
async fn stopping_the_broker_closes_every_socket_with_going_away() {
    let mut h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    let mut a = subscribed(&h, "/appsync/realtime", &alice).await;
    let mut b = subscribed(&h, "/appsync/iam/realtime", &alice).await;
    let running = h.running.take().expect("running");
    let (drained, code_a, code_b) =
        tokio::join!(running.stop(), close_code(&mut a), close_code(&mut b));
    assert_eq!((code_a, code_b), (Some(1001), Some(1001)));
    assert!(drained, "the relays ended within server.shutdown_grace");
    // The upstream connections were closed too.
    for _ in 0..500 {
        if h.appsync().stats().realtime_open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.appsync().stats().realtime_open, 0);
    h.stop().await;
}

/// SIGTERM to the real binary: the subscribed socket gets 1001 and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_going_away() {
    let h = with_realtime("").await;
    let dir = tempdir();
    let config = dir.join("credbroker.toml");
    let mut text = config_toml(&h.issuer, &h.cognito, &Tweaks::default());
    text.push_str(&crate::support::appsync_toml(h.appsync(), ""));
    std::fs::write(&config, text).expect("write");
    let mut bin = Binary::spawn(&config, "info");
    let addr = bin.listen_of("credbroker is serving").await;
    let alice = h.issuer.token_for("auth0|alice");
    let url = format!("ws://{addr}/appsync/realtime");
    let mut ws = crate::realtime::connect_raw(&url, "graphql-ws", Some(&alice))
        .await
        .expect("upgrade");
    assert_eq!(
        crate::realtime::init(&mut ws).await["type"],
        "connection_ack"
    );
    bin.signal("TERM");
    assert_eq!(close_code(&mut ws).await, Some(1001));
    let exit = tokio::time::timeout(Duration::from_secs(30), bin.child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
    h.stop().await;
}
