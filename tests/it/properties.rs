//! Property tests: random interleavings of users, ID tokens (new ones for the same user, other
//! users), roles, sessions, logouts, Cognito outages, time passing and clock jumps never hand a
//! caller another user's (or another role's) credentials, and never serve credentials with less
//! than the effective `cache.min_remaining` left.
//!
//! Every served set is checked against the emulated Cognito's own records, never the broker's:
//! which identity the access key was issued to, whose login that identity is, which role, the
//! secret key and session token issued with it, and when it expires.
//!
//! Each case starts a broker, pauses tokio's clock and drives [`Broker::credentials`] and the
//! session API in process against the emulator called in process (no sockets race the paused
//! clock). `cargo test --locked properties` runs [`DEFAULT_CASES`] cases in a few seconds; more
//! with `PROPTEST_CASES=500 cargo test --locked properties`. A failing case is shrunk and saved
//! in `tests/proptest-regressions/properties.txt`: commit that file, proptest replays it first on every run.
//!
//! [`Broker::credentials`]: credbroker::broker::Broker::credentials

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker::broker::BrokerError;
use credbroker::identity::Issued;
use credbroker::metrics::Surface;
use credbroker_emulators::cognito::{CognitoOptions, DEFAULT_ROLE_ARN};
use credbroker_emulators::oidc::TokenSpec;
use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::served;
use crate::support::{Harness, Tweaks};

/// Cases per `cargo test` run unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 24;

/// Users in a case.
const USERS: usize = 3;

/// A second role the pool may assume (`CustomRoleArn`).
const OTHER_ROLE: &str = "arn:aws:iam::123456789012:role/credbroker-props-other";

/// Roles a caller may ask for: the pool's default (no `CustomRoleArn`) or [`OTHER_ROLE`].
const ROLES: [Option<&str>; 2] = [None, Some(OTHER_ROLE)];

/// ID-token lifetimes a login may get.
const TOKEN_LIFETIMES: [Duration; 3] = [
    Duration::from_secs(10 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(12 * 3600),
];

/// Credential lifetimes the emulated pool may hand out. With the default `[cache]` (20 m
/// min_remaining, 30 m refresh_ahead) the hour is served unscaled and the shorter ones with
/// thresholds scaled to their lifetime ([`served::promised_min_remaining`]).
const CREDENTIAL_LIFETIMES: [Duration; 3] = [
    Duration::from_secs(3600),
    Duration::from_secs(15 * 60),
    Duration::from_secs(90),
];

/// `[cache] min_remaining` (the default).
const MIN_REMAINING: Duration = Duration::from_secs(20 * 60);

/// A request made with a token this much from expiry, with Cognito up for at least
/// [`RECOVERED`], must succeed (so a broker that refuses everything fails the property).
const MUST_SERVE_MARGIN: Duration = Duration::from_secs(5 * 60);

/// `cache.failure_backoff_max` (15 s by default) plus a second: after an outage ends, no
/// identity is still backing off.
const RECOVERED: Duration = Duration::from_secs(16);

#[derive(Debug, Clone)]
enum Op {
    /// The user signs in again: a new ID token with `TOKEN_LIFETIMES[lifetime]`.
    Login { user: usize, lifetime: usize },
    /// Credentials for the user's newest (or oldest) token, for `ROLES[role]`.
    Ask {
        user: usize,
        oldest: bool,
        role: usize,
    },
    /// Several asks at once: their awaits interleave.
    Burst(Vec<(usize, usize)>),
    /// Opens a session with the user's newest token, for `ROLES[role]`.
    OpenSession { user: usize, role: usize },
    /// Credentials through a session handle (index modulo the sessions opened).
    AskSession { session: usize },
    /// Logs a session out.
    Logout { session: usize },
    /// Time passes (`per_mille` of the credential lifetime): timers fire at their due times.
    Wait { per_mille: u32 },
    /// The clock jumps (`per_mille` of the credential lifetime): every due timer fires late,
    /// at the new time.
    Jump { per_mille: u32 },
    /// Cognito goes down (true) or comes back (false).
    Outage(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let role = 0..ROLES.len();
    prop_oneof![
        3 => (0..USERS, 0..TOKEN_LIFETIMES.len())
            .prop_map(|(user, lifetime)| Op::Login { user, lifetime }),
        6 => (0..USERS, any::<bool>(), role.clone())
            .prop_map(|(user, oldest, role)| Op::Ask { user, oldest, role }),
        2 => prop::collection::vec((0..USERS, role.clone()), 2..6).prop_map(Op::Burst),
        2 => (0..USERS, role).prop_map(|(user, role)| Op::OpenSession { user, role }),
        3 => (0..8usize).prop_map(|session| Op::AskSession { session }),
        1 => (0..8usize).prop_map(|session| Op::Logout { session }),
        4 => (1..1500u32).prop_map(|per_mille| Op::Wait { per_mille }),
        2 => (1..1500u32).prop_map(|per_mille| Op::Jump { per_mille }),
        2 => any::<bool>().prop_map(Op::Outage),
    ]
}

struct Token {
    raw: String,
    expires_at: SystemTime,
}

struct Session {
    user: usize,
    role: usize,
    handle: String,
    /// The session's ID token's expiry (sessions end with it).
    token_expires_at: SystemTime,
    revoked: bool,
}

/// What the test knows, independently of the broker.
struct Model {
    tokens: Vec<Vec<Token>>,
    sessions: Vec<Session>,
    outage: bool,
    /// When Cognito last came back.
    up_since: SystemTime,
    min_remaining: Duration,
}

impl Model {
    fn cognito_settled(&self, now: SystemTime) -> bool {
        !self.outage && now >= self.up_since + RECOVERED
    }
}

/// Checks one answer for `(user, role)` against Cognito's records. `must_serve`: the request
/// had every reason to succeed.
fn check(
    h: &Harness,
    model: &Model,
    who: (usize, usize),
    answer: &Result<Arc<Issued>, BrokerError>,
    now: SystemTime,
    must_serve: bool,
) -> Result<(), String> {
    let (user, role) = who;
    let issued = match answer {
        Ok(issued) => issued,
        Err(e) if must_serve => {
            let reply = e.reply();
            return Err(format!(
                "user {user} role {role}: refused although servable: {} {}: {}",
                reply.status, reply.code, reply.message
            ));
        }
        Err(_) => return Ok(()),
    };
    let role_arn = ROLES[role].unwrap_or(DEFAULT_ROLE_ARN);
    served::verify(
        h,
        &subject(user),
        role_arn,
        issued,
        now,
        model.min_remaining,
    )
    .map(|_| ())
}

fn subject(user: usize) -> String {
    format!("auth0|props-{user}")
}

fn login(h: &Harness, model: &mut Model, user: usize, lifetime: Duration) {
    let raw = h.issuer.mint(&TokenSpec {
        lifetime: Some(lifetime),
        ..TokenSpec::for_subject(subject(user))
    });
    let expires_at = h.clock.now() + lifetime;
    model.tokens[user].push(Token { raw, expires_at });
}

/// The user's newest (or oldest) token, signing in first when there is none.
fn token_of(h: &Harness, model: &mut Model, user: usize, oldest: bool) -> (String, SystemTime) {
    if model.tokens[user].is_empty() {
        login(h, model, user, TOKEN_LIFETIMES[2]);
    }
    let tokens = &model.tokens[user];
    let t = if oldest {
        tokens.first()
    } else {
        tokens.last()
    };
    let t = t.expect("a token");
    (t.raw.clone(), t.expires_at)
}

async fn ask(
    h: &Harness,
    raw: &str,
    role: usize,
) -> (Result<Arc<Issued>, BrokerError>, SystemTime) {
    let broker = &h.running().broker;
    let answer = match ROLES[role] {
        None => broker.credentials(raw, Surface::Container).await,
        Some(role) => match broker.validator.validate(raw).await {
            Ok(token) => {
                broker
                    .credentials_for_token(&token, Some(role), Surface::Grpc)
                    .await
            }
            Err(e) => Err(e.into()),
        },
    };
    (answer, h.clock.now())
}

async fn run(h: &Harness, ops: &[Op], credential_lifetime: Duration) -> Result<Model, String> {
    let mut model = Model {
        tokens: (0..USERS).map(|_| Vec::new()).collect(),
        sessions: Vec::new(),
        outage: false,
        up_since: h.clock.now() - RECOVERED,
        min_remaining: MIN_REMAINING,
    };
    let broker = h.running().broker.clone();
    for (step, op) in ops.iter().enumerate() {
        let at = |e: String| format!("step {step} ({op:?}): {e}");
        match op {
            Op::Login { user, lifetime } => login(h, &mut model, *user, TOKEN_LIFETIMES[*lifetime]),
            Op::Ask { user, oldest, role } => {
                let (raw, token_exp) = token_of(h, &mut model, *user, *oldest);
                let (answer, now) = ask(h, &raw, *role).await;
                let must = model.cognito_settled(now) && token_exp > now + MUST_SERVE_MARGIN;
                check(h, &model, (*user, *role), &answer, now, must).map_err(at)?;
            }
            Op::Burst(asks) => {
                let mut calls = Vec::new();
                for &(user, role) in asks {
                    let (raw, token_exp) = token_of(h, &mut model, user, false);
                    calls.push(async move {
                        let (answer, now) = ask(h, &raw, role).await;
                        ((user, role), token_exp, answer, now)
                    });
                }
                for (who, token_exp, answer, now) in futures_util::future::join_all(calls).await {
                    let must = model.cognito_settled(now) && token_exp > now + MUST_SERVE_MARGIN;
                    check(h, &model, who, &answer, now, must).map_err(at)?;
                }
            }
            Op::OpenSession { user, role } => {
                let (raw, token_expires_at) = token_of(h, &mut model, *user, false);
                let created = broker.create_session(&raw, None, ROLES[*role]).await;
                let now = h.clock.now();
                let must = model.cognito_settled(now) && token_expires_at > now + MUST_SERVE_MARGIN;
                let answer = created
                    .as_ref()
                    .map(|c| c.issued.clone())
                    .map_err(Clone::clone);
                check(h, &model, (*user, *role), &answer, now, must).map_err(at)?;
                if let Ok(created) = created {
                    model.sessions.push(Session {
                        user: *user,
                        role: *role,
                        handle: created.handle.expose_str().to_owned(),
                        token_expires_at,
                        revoked: false,
                    });
                }
            }
            Op::AskSession { session } => {
                let Some(s) = model.sessions.get(session % model.sessions.len().max(1)) else {
                    continue;
                };
                let (who, handle) = ((s.user, s.role), s.handle.clone());
                let live_until = (!s.revoked).then_some(s.token_expires_at);
                let answer = broker.credentials(&handle, Surface::Container).await;
                let now = h.clock.now();
                let must = model.cognito_settled(now)
                    && live_until.is_some_and(|t| t > now + MUST_SERVE_MARGIN);
                if s.revoked && answer.is_ok() {
                    return Err(at("a logged-out session was served credentials".into()));
                }
                check(h, &model, who, &answer, now, must).map_err(at)?;
            }
            Op::Logout { session } => {
                let count = model.sessions.len();
                if let Some(s) = model.sessions.get_mut(session % count.max(1))
                    && !s.revoked
                {
                    s.revoked = true;
                    // An expired session may already be gone; either answer is fine.
                    let _ = broker.revoke_session(&s.handle);
                }
            }
            Op::Wait { per_mille } => {
                tokio::time::sleep(credential_lifetime * *per_mille / 1000).await;
            }
            Op::Jump { per_mille } => {
                tokio::time::advance(credential_lifetime * *per_mille / 1000).await;
            }
            Op::Outage(down) => {
                if model.outage && !down {
                    model.up_since = h.clock.now();
                }
                model.outage = *down;
                h.cognito.faults().set_outage(*down);
            }
        }
    }
    Ok(model)
}

fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

/// One case on its own runtime: a fresh broker and emulators, then the ops under paused time.
fn run_case(lifetime: usize, ops: &[Op]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let credential_lifetime = CREDENTIAL_LIFETIMES[lifetime];
        let h = Harness::with(Tweaks {
            in_process_cognito: true,
            tokens: "jwks_refresh_interval = \"7d\"".into(),
            // No jitter: a shrunk case replays the same timeline.
            cache: "refresh_jitter = \"0s\"\nidle_timeout = \"30m\"".into(),
            cognito_options: Some(CognitoOptions {
                credential_lifetime,
                allowed_roles: vec![DEFAULT_ROLE_ARN.to_owned(), OTHER_ROLE.to_owned()],
                ..CognitoOptions::default()
            }),
            ..Tweaks::default()
        })
        .await;
        tokio::time::pause();
        let result = run(&h, ops, CREDENTIAL_LIFETIMES[lifetime]).await;
        tokio::time::resume();
        h.stop().await;
        result.map(|_| ())
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_caller_gets_another_users_credentials_or_less_than_min_remaining(
        lifetime in 0..CREDENTIAL_LIFETIMES.len(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run_case(lifetime, &ops).map_err(TestCaseError::fail)?;
    }
}
