//! AppSync real time: relay hygiene. Message and subscription caps, connection limits per user
//! and in total, keep-alives both ways, and the metrics that count them.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::realtime::{
    Placement, SUB, Ws, close_code, connect, create, event, init, metric, next_json, refusal,
    send_json, start, start_message, subscribed, with_realtime,
};
use crate::support::{Harness, Tweaks};

fn error_type(v: &Value) -> &str {
    v["payload"]["errors"][0]["errorType"]
        .as_str()
        .unwrap_or_default()
}

/// Waits (bounded, in real time) until `series` reads `value`: relays end asynchronously.
async fn settles(h: &Harness, series: &str, value: f64) {
    for _ in 0..500 {
        if metric(h, series) == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(h, series), value, "{series}");
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let h = with_realtime("[appsync.realtime]\nmax_subscriptions_per_connection = 2").await;
    let alice = h.issuer.token_for("auth0|alice");
    let mut ws = subscribed(&h, "/appsync/realtime", &alice).await;
    assert_eq!(start(&mut ws, "s2", SUB).await["type"], "start_ack");
    let third = start(&mut ws, "s3", SUB).await;
    assert_eq!(
        error_type(&third),
        "MaxSubscriptionsReachedError",
        "{third}"
    );
    assert_eq!(
        third["payload"]["errors"][0]["message"],
        "Max number of 2 subscriptions reached"
    );
    assert_eq!(
        h.appsync().stats().realtime_starts,
        2,
        "the third never reached AppSync"
    );
    assert_eq!(
        metric(
            &h,
            "credbroker_appsync_realtime_subscriptions{api=\"oidc\"}"
        ),
        2.0
    );
    // A stop frees a place.
    send_json(&mut ws, json!({ "type": "stop", "id": "s2" })).await;
    assert_eq!(
        next_json(&mut ws).await.expect("complete")["type"],
        "complete"
    );
    assert_eq!(start(&mut ws, "s3", SUB).await["type"], "start_ack");
    create(&h, "/appsync/graphql", &alice, "two subscriptions").await;
    let mut ids = vec![
        next_json(&mut ws).await.expect("data")["id"].clone(),
        next_json(&mut ws).await.expect("data")["id"].clone(),
    ];
    ids.sort_by_key(|v| v.to_string());
    assert_eq!(ids, [json!("s1"), json!("s3")]);
    h.stop().await;
}

#[tokio::test]
async fn messages_over_the_cap_close_with_1009_either_way() {
    let h = with_realtime("[appsync.realtime]\nmax_message_bytes = 245760").await;
    let alice = h.issuer.token_for("auth0|alice");
    // From the client: a 300 KB start.
    let mut ws = subscribed(&h, "/appsync/realtime", &alice).await;
    let huge = format!(
        "subscription {{ onCreateTodo {{ id {} }} }}",
        "a ".repeat(150_000)
    );
    send_json(&mut ws, start_message("big", &huge, json!({}))).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));
    assert_eq!(
        h.appsync().stats().realtime_starts,
        1,
        "only s1 reached AppSync"
    );

    // From AppSync: an event larger than the cap (a 250 KB todo).
    let mut ws = subscribed(&h, "/appsync/realtime", &alice).await;
    create(&h, "/appsync/graphql", &alice, &"x".repeat(250 * 1024)).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));
    settles(
        &h,
        "credbroker_appsync_realtime_closes_total{api=\"oidc\",reason=\"too_big\"}",
        2.0,
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn connections_are_limited_per_user_and_in_total() {
    let h =
        with_realtime("[appsync.realtime]\nmax_connections = 3\nmax_connections_per_identity = 2")
            .await;
    let alice = h.issuer.token_for("auth0|alice");
    let bob = h.issuer.token_for("auth0|bob");
    let carol = h.issuer.token_for("auth0|carol");
    let a1 = subscribed(&h, "/appsync/realtime", &alice).await;
    let _a2 = subscribed(&h, "/appsync/oidc/realtime", &alice).await;
    let refused = refusal(connect(&h, "/appsync/realtime", Placement::Header, &alice).await);
    assert_eq!(refused, (429, "TooManyConnections".to_owned()), "per user");
    let _b1 = subscribed(&h, "/appsync/iam/realtime", &bob).await;
    let full = connect(&h, "/appsync/realtime", Placement::Header, &carol).await;
    match &full {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.headers()["retry-after"], "1")
        }
        _ => panic!("expected a refusal"),
    }
    assert_eq!(
        refusal(full),
        (503, "TooManyConnections".to_owned()),
        "in total"
    );
    assert_eq!(
        h.appsync().stats().realtime_connections,
        3,
        "refused upgrades never reach AppSync"
    );
    assert_eq!(
        metric(&h, "credbroker_appsync_realtime_connections{api=\"oidc\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &h,
            "credbroker_appsync_realtime_upgrades_total{api=\"oidc\",outcome=\"too_many\"}"
        ),
        2.0
    );

    // Closing one frees its place.
    drop(a1);
    settles(
        &h,
        "credbroker_appsync_realtime_connections{api=\"oidc\"}",
        1.0,
    )
    .await;
    let mut c = subscribed(&h, "/appsync/realtime", &carol).await;
    create(&h, "/appsync/graphql", &carol, "admitted").await;
    assert_eq!(event(&mut c, "s1").await["content"], "admitted");
    h.stop().await;
}

/// Reads raw messages until a `ka` arrives (so `ka`s are seen, not skipped).
async fn ka(ws: &mut Ws) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s");
        match m {
            Some(Ok(Message::Text(t))) if t.as_str() == r#"{"type":"ka"}"# => return,
            Some(Ok(Message::Text(_))) => {}
            other => panic!("expected a ka, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn keep_alives_flow_to_the_client_and_a_silent_appsync_is_given_up() {
    // AppSync sends no ka within its connectionTimeoutMs (300 s).
    let h = Harness::with(Tweaks {
        appsync: Some("[appsync.realtime]\nkeepalive_interval = \"20s\"".to_owned()),
        appsync_ka_interval: Some(Duration::from_secs(3600)),
        ..Tweaks::default()
    })
    .await;
    let alice = h.issuer.token_for("auth0|alice");
    let mut ws = connect(&h, "/appsync/realtime", Placement::Subprotocol, &alice)
        .await
        .expect("upgrade");
    let ack = init(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack");
    ka(&mut ws).await; // the one right after the ack
    // credbroker's own ka every keepalive_interval, whatever AppSync does.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(21)).await;
    tokio::time::resume();
    ka(&mut ws).await;
    // AppSync silent past its connectionTimeoutMs: the client is told to reconnect.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(300)).await;
    tokio::time::resume();
    loop {
        match next_json(&mut ws).await {
            Ok(_) => continue,
            Err(closed) => {
                assert_eq!(
                    closed,
                    Some((1011, "AppSync stopped sending keep-alives".to_owned()))
                );
                break;
            }
        }
    }
    settles(
        &h,
        "credbroker_appsync_realtime_closes_total{api=\"oidc\",reason=\"upstream_silent\"}",
        1.0,
    )
    .await;
    h.stop().await;
}

/// The soft limit on open files of this process.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribed_sockets_each_get_exactly_their_users_events() {
    const USERS: usize = 50;
    const PER_USER: usize = 20;
    // Four descriptors per socket in this process: the client's, the broker's two, AppSync's.
    let limit = open_files_limit();
    assert!(
        limit >= 4500,
        "this test opens about 4,000 file descriptors; raise the limit (ulimit -n, now {limit})"
    );
    let h = with_realtime("[appsync.realtime]\nmax_connections_per_identity = 20").await;
    let tokens: Vec<String> = (0..USERS)
        .map(|u| h.issuer.token_for(&format!("auth0|user-{u}")))
        .collect();
    let mut sockets: Vec<(usize, Ws)> = Vec::with_capacity(USERS * PER_USER);
    for (u, token) in tokens.iter().enumerate() {
        let batch = (0..PER_USER).map(|_| subscribed(&h, "/appsync/realtime", token));
        for ws in futures_util::future::join_all(batch).await {
            sockets.push((u, ws));
        }
    }
    assert_eq!(h.appsync().stats().realtime_open, (USERS * PER_USER) as u64);
    assert_eq!(
        metric(&h, "credbroker_appsync_realtime_connections{api=\"oidc\"}"),
        (USERS * PER_USER) as f64
    );
    for round in ["first", "second"] {
        for (u, token) in tokens.iter().enumerate() {
            create(&h, "/appsync/graphql", token, &format!("{round} of {u}")).await;
        }
        // Every socket's next message is its own user's todo: any other user's (created
        // earlier or later) would arrive in its place.
        for (u, ws) in &mut sockets {
            let todo = event(ws, "s1").await;
            assert_eq!(todo["content"], format!("{round} of {u}"));
            assert_eq!(todo["owner"], format!("auth0|user-{u}"));
        }
    }
    drop(sockets);
    h.stop().await;
}
