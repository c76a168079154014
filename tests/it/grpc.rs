//! The gRPC API through a real tonic client against the running broker and emulators.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use credbroker::emulator::cognito::{CognitoOptions, ErrorType, Operation};
use credbroker::emulator::oidc::TokenSpec;
use credbroker::grpc::proto::admin_client::AdminClient;
use credbroker::grpc::proto::broker_client::BrokerClient;
use credbroker::grpc::proto::get_credentials_request::Auth;
use credbroker::grpc::proto::{
    Credentials, ExchangeRequest, GetCredentialsRequest, GetStatsRequest, ListIdentitiesRequest,
    RevokeRequest, UpdateTokenRequest,
};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::single_flight::metric;
use crate::support::{Harness, Tweaks, tempdir};

const GRPC: &str = "listen = \"127.0.0.1:0\"";

fn tcp() -> Tweaks {
    Tweaks {
        grpc: GRPC.into(),
        ..Tweaks::default()
    }
}

/// Credentials that last 6 s: refreshed in the background about 3 s after they are issued.
fn short_lived() -> Tweaks {
    Tweaks {
        cognito_options: Some(CognitoOptions {
            credential_lifetime: Duration::from_secs(6),
            ..CognitoOptions::default()
        }),
        ..tcp()
    }
}

async fn client(h: &Harness) -> BrokerClient<Channel> {
    BrokerClient::new(h.grpc_channel().await)
}

fn by_session(s: &str) -> GetCredentialsRequest {
    GetCredentialsRequest {
        auth: Some(Auth::Session(s.to_owned())),
    }
}

fn by_token(t: &str) -> GetCredentialsRequest {
    GetCredentialsRequest {
        auth: Some(Auth::IdToken(t.to_owned())),
    }
}

fn exchange(token: &str) -> ExchangeRequest {
    ExchangeRequest {
        id_token: token.to_owned(),
        refresh_token: None,
        custom_role_arn: None,
        client_id: None,
    }
}

async fn next(stream: &mut Streaming<Credentials>) -> Result<Credentials, Status> {
    tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("a stream item within 15 s")
        .expect("the stream does not end without a status")
}

fn code_of(s: &Status) -> &str {
    s.metadata()
        .get("credbroker-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn exchange_get_watch_and_revoke_through_a_tonic_client() {
    let h = Harness::with(short_lived()).await;
    let mut c = client(&h).await;
    let token = h.issuer.token_for("auth0|grpc-user");

    let ex = c
        .exchange(exchange(&token))
        .await
        .expect("exchange")
        .into_inner();
    let creds = ex.credentials.expect("credentials");
    let issued = h
        .cognito
        .lookup_access_key(&creds.access_key_id)
        .expect("issued by Cognito");
    assert_eq!(creds.secret_access_key, issued.secret_key.expose_str());
    assert_eq!(creds.session_token, issued.session_token.expose_str());
    assert_eq!(creds.identity_id, issued.identity_id);
    let expiration = creds.expiration.expect("expiration");
    assert!(expiration.seconds > 0);
    assert!(ex.session.starts_with("cbs_"));
    assert!(ex.session_expires_at.is_some());

    // GetCredentials by session and by ID token: the cached set.
    let by_s = c
        .get_credentials(by_session(&ex.session))
        .await
        .expect("get")
        .into_inner();
    let by_t = c
        .get_credentials(by_token(&token))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(by_s.access_key_id, creds.access_key_id);
    assert_eq!(by_t.access_key_id, creds.access_key_id);
    assert_eq!(h.credential_calls(), 1);

    // Watch: the current set at once, then the background refresh.
    let mut watch = c
        .watch_credentials(by_session(&ex.session))
        .await
        .expect("watch")
        .into_inner();
    let first = next(&mut watch).await.expect("current");
    assert_eq!(first.access_key_id, creds.access_key_id);
    let second = next(&mut watch).await.expect("refreshed");
    assert_ne!(second.access_key_id, first.access_key_id);
    assert!(second.expiration.expect("exp").seconds > expiration.seconds);
    assert!(h.cognito.lookup_access_key(&second.access_key_id).is_some());
    assert_eq!(
        h.credential_calls(),
        2,
        "the refresh was the scheduler's, ahead of expiry"
    );

    // UpdateToken with the same user's newer token; a different user is refused.
    let newer = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(11 * 3600)),
        ..TokenSpec::for_subject("auth0|grpc-user")
    });
    let updated = c
        .update_token(UpdateTokenRequest {
            session: ex.session.clone(),
            id_token: newer,
        })
        .await
        .expect("update")
        .into_inner();
    assert!(
        updated.session_expires_at.expect("exp").seconds
            >= ex.session_expires_at.expect("exp").seconds
    );
    let err = c
        .update_token(UpdateTokenRequest {
            session: ex.session.clone(),
            id_token: h.issuer.token_for("auth0|someone-else"),
        })
        .await
        .expect_err("other user");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::PermissionDenied, "IdentityMismatch")
    );

    // Revoke: the watch ends with a clear status, the handle is dead.
    let revoked = c
        .revoke(RevokeRequest {
            session: ex.session.clone(),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(revoked.identity_evicted);
    let end = loop {
        match next(&mut watch).await {
            Ok(_) => continue, // a refresh may have raced the revocation
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unauthenticated);
    assert!(
        end.message().starts_with("SessionRevoked: "),
        "{}",
        end.message()
    );
    assert!(
        watch.next().await.is_none(),
        "nothing after the final status"
    );
    let err = c
        .get_credentials(by_session(&ex.session))
        .await
        .expect_err("revoked");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::Unauthenticated, "InvalidSession")
    );

    let m = h.running().broker.metrics.render();
    assert!(
        metric(
            &m,
            "credbroker_requests_total{status=\"200\",surface=\"grpc\"}"
        ) >= 6.0,
        "{m}"
    );
    assert!(
        metric(&m, "credbroker_credentials_issued_total{surface=\"grpc\"}") >= 2.0,
        "{m}"
    );
    h.stop().await;
}

#[tokio::test]
async fn two_watchers_of_one_identity_share_one_upstream_refresh() {
    let h = Harness::with(short_lived()).await;
    let mut c = client(&h).await;
    let token = h.issuer.token_for("auth0|watched-twice");
    let ex = c
        .exchange(exchange(&token))
        .await
        .expect("exchange")
        .into_inner();
    let mut a = c
        .watch_credentials(by_session(&ex.session))
        .await
        .expect("a")
        .into_inner();
    let mut b = client(&h)
        .await
        .watch_credentials(by_token(&token))
        .await
        .expect("b")
        .into_inner();
    let (a1, b1) = (
        next(&mut a).await.expect("a1"),
        next(&mut b).await.expect("b1"),
    );
    assert_eq!(a1.access_key_id, b1.access_key_id);
    assert_eq!(h.credential_calls(), 1);
    let (a2, b2) = (
        next(&mut a).await.expect("a2"),
        next(&mut b).await.expect("b2"),
    );
    assert_eq!(
        a2.access_key_id, b2.access_key_id,
        "both saw the same refreshed set"
    );
    assert_ne!(a2.access_key_id, a1.access_key_id);
    assert_eq!(
        h.credential_calls(),
        2,
        "one upstream refresh for two watchers"
    );
    assert_eq!(h.get_id_calls(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_watch_ends_with_a_clear_status_when_its_session_expires() {
    // A short-lived token is accepted only with less than the default 60 s min_token_validity.
    let h = Harness::with(Tweaks {
        tokens: "min_token_validity = \"1s\"".into(),
        ..tcp()
    })
    .await;
    let mut c = client(&h).await;
    let token = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(4)),
        ..TokenSpec::for_subject("auth0|expiring-watch")
    });
    let ex = c
        .exchange(exchange(&token))
        .await
        .expect("exchange")
        .into_inner();
    let mut watch = c
        .watch_credentials(by_session(&ex.session))
        .await
        .expect("watch")
        .into_inner();
    next(&mut watch).await.expect("current");
    let end = next(&mut watch).await.expect_err("ends");
    assert_eq!(
        (end.code(), code_of(&end)),
        (Code::Unauthenticated, "SessionExpired")
    );
    h.stop().await;
}

#[tokio::test]
async fn health_is_serving_only_once_ready_and_reflection_lists_the_services() {
    let h = Harness::with(Tweaks {
        issuer_down_at_start: true,
        ..tcp()
    })
    .await;
    let mut health = HealthClient::new(h.grpc_channel().await);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    for service in ["", "credbroker.v1.Broker"] {
        let status = health
            .check(check(service))
            .await
            .expect("check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::NotServing as i32,
            "{service:?} before keys load"
        );
    }
    h.issuer.set_unavailable(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(check(""))
            .await
            .expect("check")
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = health
        .check(check("credbroker.v1.Broker"))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    // Reflection, both versions.
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = h.grpc_channel().await;
    let mut r1 = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = r1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let answer = answers.next().await.expect("an answer").expect("ok");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "credbroker.v1.Broker",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "credbroker.v1.Admin"),
        "no admin without a token file"
    );
    let mut r0 = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "credbroker.v1.Broker".into(),
            ),
        ),
    };
    let answer = r0
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha")
        .into_inner()
        .next()
        .await
        .expect("an answer")
        .expect("ok");
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        answer.message_response
    else {
        panic!("no descriptor");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    h.stop().await;
}

async fn uds_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }),
    )
}

fn my_uid() -> u32 {
    let dir = tempdir();
    let uid = std::fs::metadata(&dir).expect("dir").uid();
    let _ = std::fs::remove_dir_all(dir);
    uid
}

#[tokio::test]
async fn the_unix_socket_has_its_mode_and_admits_only_allowed_uids() {
    let uid = my_uid();
    let dir = tempdir();
    let allowed = dir.join("allowed.sock");
    let h = Harness::with(Tweaks {
        grpc: format!(
            "unix_socket = \"{}\"\nunix_socket_mode = \"0600\"\nallowed_uids = [{uid}]",
            allowed.display()
        ),
        ..Tweaks::default()
    })
    .await;
    let mode = std::fs::metadata(&allowed)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(h.running().grpc.tcp.is_none());
    let mut c = BrokerClient::new(uds_channel(&allowed).await);
    let token = h.issuer.token_for("auth0|uds");
    let creds = c
        .get_credentials(by_token(&token))
        .await
        .expect("allowed uid")
        .into_inner();
    assert!(creds.access_key_id.starts_with("ASIA"));

    let refused = dir.join("refused.sock");
    let other = Harness::with(Tweaks {
        grpc: format!(
            "unix_socket = \"{}\"\nallowed_uids = [{}]",
            refused.display(),
            uid.wrapping_add(1)
        ),
        ..Tweaks::default()
    })
    .await;
    let mode = std::fs::metadata(&refused)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "the default mode");
    let mut c = BrokerClient::new(uds_channel(&refused).await);
    let err = c
        .get_credentials(by_token(&other.issuer.token_for("auth0|uds")))
        .await
        .expect_err("uid not allowed");
    // The connection is closed before the request is read: no answer at all.
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown) && err.metadata().is_empty(),
        "{err:?}"
    );
    assert_eq!(other.credential_calls(), 0);
    other.stop().await;
    assert!(!refused.exists(), "the socket is removed on shutdown");
    h.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A message whose field 1 is a varint, where GetCredentialsRequest has a string.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(uint64, tag = "1")]
    x: u64,
}

#[tokio::test]
async fn malformed_oversized_and_refused_requests_get_the_right_codes() {
    let h = Harness::with(Tweaks {
        grpc: format!("{GRPC}\nmax_watchers = 1"),
        ..Tweaks::default()
    })
    .await;
    let channel = h.grpc_channel().await;
    let mut c = BrokerClient::new(channel.clone());
    let token = h.issuer.token_for("auth0|errors");

    // Oversized (over the 64 KiB default): refused before any handler, connection still fine.
    let err = c
        .exchange(exchange(&"a".repeat(100 * 1024)))
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Malformed protobuf.
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.expect("ready");
    let err = raw
        .unary::<Garbage, Credentials, _>(
            Request::new(Garbage { x: 7 }),
            http::uri::PathAndQuery::from_static("/credbroker.v1.Broker/GetCredentials"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    // Semantic refusals.
    let err = c
        .get_credentials(GetCredentialsRequest { auth: None })
        .await
        .expect_err("no auth");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::InvalidArgument, "MalformedRequest")
    );
    let err = c
        .get_credentials(by_token("not-a-jwt"))
        .await
        .expect_err("bad token");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::Unauthenticated, "MalformedToken")
    );
    assert!(err.message().starts_with("MalformedToken: "));
    let err = c
        .get_credentials(by_session("cbs_nope"))
        .await
        .expect_err("bad session");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::Unauthenticated, "InvalidSession")
    );
    let err = c
        .exchange(ExchangeRequest {
            refresh_token: Some("v1.refresh".into()),
            ..exchange(&token)
        })
        .await
        .expect_err("refresh token");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::Unauthenticated, "ReloginRequired"),
        "the issuer does not know this refresh token"
    );
    let err = c
        .exchange(ExchangeRequest {
            custom_role_arn: Some("admin".into()),
            ..exchange(&token)
        })
        .await
        .expect_err("bad role");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::InvalidArgument, "InvalidRoleArn")
    );
    // Cognito refusal → PERMISSION_DENIED; outage → UNAVAILABLE with a retry hint.
    h.cognito
        .faults()
        .fail_next(Operation::GetId, ErrorType::NotAuthorized, 1);
    let err = c
        .exchange(exchange(&h.issuer.token_for("auth0|refused")))
        .await
        .expect_err("refused");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::PermissionDenied, "LoginRejected")
    );
    h.cognito.faults().set_outage(true);
    let err = c
        .exchange(exchange(&h.issuer.token_for("auth0|outage")))
        .await
        .expect_err("outage");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.metadata().get("grpc-retry-pushback-ms").is_some(),
        "{err:?}"
    );
    h.cognito.faults().set_outage(false);
    // Limits → RESOURCE_EXHAUSTED.
    let mut w1 = c
        .watch_credentials(by_token(&token))
        .await
        .expect("watch")
        .into_inner();
    next(&mut w1).await.expect("current");
    let err = c
        .watch_credentials(by_token(&token))
        .await
        .expect_err("limit");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::ResourceExhausted, "TooManyWatchers")
    );
    drop(w1);
    // Still serving, on the same connection.
    let creds = c
        .get_credentials(by_token(&token))
        .await
        .expect("still serving")
        .into_inner();
    assert!(creds.access_key_id.starts_with("ASIA"));
    h.stop().await;
}

#[tokio::test]
async fn admin_needs_its_token_and_lists_identities_without_secrets() {
    let dir = tempdir();
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, "admin-token-0123456789abcdef\n").expect("write");
    let h = Harness::with(Tweaks {
        grpc: format!("{GRPC}\nadmin_token_file = \"{}\"", token_file.display()),
        ..Tweaks::default()
    })
    .await;
    let channel = h.grpc_channel().await;
    let mut c = BrokerClient::new(channel.clone());
    let token = h.issuer.token_for("auth0|admin-view");
    let ex = c
        .exchange(exchange(&token))
        .await
        .expect("exchange")
        .into_inner();
    let creds = ex.credentials.expect("creds");

    let mut admin = AdminClient::new(channel.clone());
    let err = admin
        .list_identities(ListIdentitiesRequest {})
        .await
        .expect_err("no token");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::Unauthenticated, "MissingAdminToken")
    );
    let mut wrong = Request::new(ListIdentitiesRequest {});
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer admin-token-0123456789abcdeX".parse().expect("v"),
    );
    let err = admin.list_identities(wrong).await.expect_err("wrong token");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::Unauthenticated, "InvalidAdminToken")
    );

    fn authorized<T>(msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            "Bearer admin-token-0123456789abcdef".parse().expect("v"),
        );
        r
    }
    let list = admin
        .list_identities(authorized(ListIdentitiesRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.identities.len(), 1);
    let identity = &list.identities[0];
    assert_eq!(identity.subject, "auth0|admin-view");
    assert_eq!(identity.issuer, h.issuer.issuer());
    assert_eq!(identity.identity_id, creds.identity_id);
    assert_eq!(identity.sessions, 1);
    assert!(identity.credentials_expire_at.is_some() && identity.last_refresh.is_some());
    let printed = format!("{list:?}");
    for secret in [
        &creds.secret_access_key,
        &creds.session_token,
        &ex.session,
        &token,
    ] {
        assert!(!printed.contains(secret.as_str()));
    }
    let mut watch = c
        .watch_credentials(by_session(&ex.session))
        .await
        .expect("watch")
        .into_inner();
    next(&mut watch).await.expect("current");
    let stats = admin
        .get_stats(authorized(GetStatsRequest {}))
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(
        (stats.identities_cached, stats.sessions, stats.watchers),
        (1, 1, 1)
    );
    assert_eq!(stats.credentials_issued.get("grpc"), Some(&1));
    assert_eq!(
        stats.cognito_get_credentials_calls.get("ok"),
        Some(&1),
        "{:?}",
        stats.cognito_get_credentials_calls
    );

    // Shutdown ends open watches at once instead of waiting out the grace period.
    let started = std::time::Instant::now();
    let mut h = h;
    let stopped = h.running.take().expect("running").stop().await;
    assert!(stopped, "drained");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let end = next(&mut watch).await.expect_err("ended");
    assert_eq!(
        (end.code(), code_of(&end)),
        (Code::Unavailable, "ShuttingDown")
    );
    h.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn exchange_with_a_refresh_token_over_the_socket_then_revoke_stops_redemptions() {
    let h = Harness::with(tcp()).await;
    let mut c = client(&h).await;
    let user = "auth0|grpc-refresh";
    let refresh_token = h.issuer.issue_refresh_token(user);
    let created = c
        .exchange(ExchangeRequest {
            refresh_token: Some(refresh_token.clone()),
            ..exchange(&h.issuer.token_for(user))
        })
        .await
        .expect("exchanged")
        .into_inner();
    let expires = created.session_expires_at.expect("expiry").seconds;
    let day_from_now = credbroker::clock::unix_seconds(h.clock.now()) as i64 + 24 * 3600;
    assert!(
        (day_from_now - 5..=day_from_now).contains(&expires),
        "sessions.max_lifetime (24 h), not the ID token's lifetime"
    );
    assert_eq!(h.issuer.token_stats().issued, 1, "redeemed at creation");
    c.get_credentials(by_session(&created.session))
        .await
        .expect("served");
    c.revoke(RevokeRequest {
        session: created.session.clone(),
    })
    .await
    .expect("revoked");
    let at_revoke = h.issuer.token_stats();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.issuer.token_stats(), at_revoke);

    // Someone else's refresh token, a client id the provider does not accept.
    let err = c
        .exchange(ExchangeRequest {
            refresh_token: Some(h.issuer.issue_refresh_token("auth0|someone-else")),
            ..exchange(&h.issuer.token_for(user))
        })
        .await
        .expect_err("another user's");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::PermissionDenied, "RefreshTokenMismatch")
    );
    let err = c
        .exchange(ExchangeRequest {
            refresh_token: Some(h.issuer.issue_refresh_token(user)),
            client_id: Some("not-an-audience".into()),
            ..exchange(&h.issuer.token_for(user))
        })
        .await
        .expect_err("client id");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::InvalidArgument, "InvalidClientId")
    );
    h.stop().await;
}

#[tokio::test]
async fn watchers_of_a_refresh_token_session_are_fed_until_its_family_is_revoked() {
    use credbroker::grpc::proto::broker_server::Broker as _;
    use credbroker::grpc::{BrokerService, Settings};

    // The service is called in process (no socket) so hours can pass under paused time.
    let h = Harness::with(Tweaks {
        in_process_cognito: true,
        in_process_issuer: true,
        issuer_options: Some(credbroker::emulator::oidc::IssuerOptions {
            token_lifetime: Duration::from_secs(120),
            ..Default::default()
        }),
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        ..tcp()
    })
    .await;
    let broker = h.running().broker.clone();
    let service = BrokerService::new(
        broker,
        Settings {
            request_timeout: Duration::from_secs(10),
            max_watchers: 4,
            touch_interval: Duration::from_secs(300),
            min_token_validity: Duration::from_secs(60),
        },
        tokio_util::sync::CancellationToken::new(),
    );
    let user = "auth0|grpc-watcher";
    let refresh_token = h.issuer.issue_refresh_token(user);
    let created = service
        .exchange(Request::new(ExchangeRequest {
            refresh_token: Some(refresh_token.clone()),
            ..exchange(&h.issuer.token_for(user))
        }))
        .await
        .expect("exchanged")
        .into_inner();
    tokio::time::pause();
    let mut stream = service
        .watch_credentials(Request::new(by_session(&created.session)))
        .await
        .expect("watching")
        .into_inner();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    let mut sets = Vec::new();
    while let Ok(item) = rx.try_recv() {
        sets.push(item.expect("credentials while the session lives"));
    }
    // Cognito credentials last 1 h and are refreshed ahead of expiry with the session's newest
    // ID token (each one lives 2 minutes): one set at once, then several refreshed ones.
    assert!(sets.len() >= 3, "{} sets in 3 h", sets.len());
    let keys: std::collections::BTreeSet<_> = sets.iter().map(|c| &c.access_key_id).collect();
    assert_eq!(keys.len(), sets.len(), "each set is new");

    assert!(h.issuer.revoke_refresh_family(&refresh_token));
    tokio::time::sleep(Duration::from_secs(300)).await;
    let end = rx
        .try_recv()
        .expect("the stream ended")
        .expect_err("a status");
    assert_eq!(
        (end.code(), code_of(&end)),
        (Code::Unauthenticated, "ReloginRequired")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        matches!(
            rx.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        ),
        "nothing after the status"
    );
    let err = service
        .get_credentials(Request::new(by_session(&created.session)))
        .await
        .expect_err("ended");
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::Unauthenticated, "ReloginRequired")
    );
    tokio::time::resume();
    h.stop().await;
}

/// A watcher is in use by definition: it is fed every refreshed set although it never asks,
/// with moto's 90-second credentials (background refresh follows use, and watching is use).
#[tokio::test]
async fn a_watcher_of_ninety_second_credentials_is_fed_a_set_every_refresh() {
    use credbroker::grpc::proto::broker_server::Broker as _;
    use credbroker::grpc::{BrokerService, Settings};

    let h = Harness::with(Tweaks {
        in_process_cognito: true,
        cognito_options: Some(CognitoOptions {
            credential_lifetime: Duration::from_secs(90),
            ..CognitoOptions::default()
        }),
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        ..tcp()
    })
    .await;
    let service = BrokerService::new(
        h.running().broker.clone(),
        Settings {
            request_timeout: Duration::from_secs(10),
            max_watchers: 4,
            touch_interval: Duration::from_secs(300),
            min_token_validity: Duration::from_secs(60),
        },
        tokio_util::sync::CancellationToken::new(),
    );
    let token = h.issuer.mint(&TokenSpec {
        lifetime: Some(Duration::from_secs(12 * 3600)),
        ..TokenSpec::for_subject("auth0|moto-watcher")
    });
    tokio::time::pause();
    let mut stream = service
        .watch_credentials(Request::new(by_token(&token)))
        .await
        .expect("watching")
        .into_inner();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let feeder = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let mut sets = Vec::new();
    while let Ok(item) = rx.try_recv() {
        sets.push(item.expect("credentials"));
    }
    // One set at once, then one per refresh (every 45–52.5 s): about 23–27 in 20 minutes.
    assert!(
        (20..=30).contains(&sets.len()),
        "{} sets in 20 minutes",
        sets.len()
    );
    let keys: std::collections::BTreeSet<_> = sets.iter().map(|c| &c.access_key_id).collect();
    assert_eq!(keys.len(), sets.len(), "each set is new");
    feeder.abort();
    tokio::time::resume();
    h.stop().await;
}
