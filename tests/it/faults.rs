//! The fault matrix: for each upstream fault — Cognito throttling at 50 %, InternalErrorException,
//! an outage longer than the servable window, Cognito slower than `cognito.attempt_timeout`, a
//! JWKS outage, key rotation at the issuer, clock skew — callers are served cached credentials
//! while those are servable and never expired ones, service recovers within one backoff period
//! after the fault clears, and upstream calls stay within a bound derived from the backoff
//! policy, whatever the number of callers.
//!
//! Everything runs under paused tokio time (the broker's clock follows it), with the emulated
//! Cognito called in process; "within one backoff period" is measured in that virtual time,
//! never on the wall clock. Served credentials are checked against the emulator's records
//! ([`served::verify`]), upstream calls with the emulators' counters.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker::broker::BrokerError;
use credbroker::clock::{Clock, SharedClock};
use credbroker::cognito::ErrorKind;
use credbroker::identity::Issued;
use credbroker::metrics::Surface;
use credbroker_emulators::cognito::{DEFAULT_ROLE_ARN, Faults, IssuedCredentials};
use credbroker_emulators::oidc::TokenSpec;
use tokio::time::Instant;

use crate::served;
use crate::support::{Harness, Tweaks};

const MIN: Duration = Duration::from_secs(60);

// The policy under test, as configured by `tweaks()` (the defaults, written out).
/// `cache.min_remaining`.
const MIN_REMAINING: Duration = Duration::from_secs(20 * 60);
/// `cache.failure_backoff_max`: the longest pause between two exchanges of a failing identity.
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(15);
/// `cognito.max_attempts`.
const MAX_ATTEMPTS: u32 = 3;
/// `cognito.attempt_timeout`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// `cognito.backoff_max`.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The emulated pool's credential lifetime (Cognito's one hour).
const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(3600);

/// The longest one exchange can take: every attempt timing out, every retry pause at its cap.
const EXCHANGE_BUDGET: Duration = Duration::from_secs(
    MAX_ATTEMPTS as u64 * ATTEMPT_TIMEOUT.as_secs()
        + (MAX_ATTEMPTS as u64 - 1) * RETRY_BACKOFF_MAX.as_secs(),
);

/// Users, and callers per user (each with its own ID token).
const USERS: usize = 3;
const CALLERS_PER_USER: usize = 2;

/// Every caller asks this often.
const STEP: Duration = Duration::from_secs(5);

/// After a fault clears, every user is served fresh credentials within this much virtual
/// time: one failure backoff, one exchange, one caller step.
const RECOVERY: Duration =
    Duration::from_secs(FAILURE_BACKOFF_MAX.as_secs() + EXCHANGE_BUDGET.as_secs() + STEP.as_secs());

fn tweaks() -> Tweaks {
    Tweaks {
        in_process_cognito: true,
        tokens: "jwks_refresh_interval = \"7d\"\njwks_refetch_interval = \"30s\"".into(),
        // No jitter: refreshes happen exactly at expiry − refresh_ahead (30 min in).
        cache: "refresh_jitter = \"0s\"\nmin_remaining = \"20m\"\nfailure_backoff_max = \"15s\""
            .into(),
        cognito: "max_attempts = 3\nattempt_timeout = \"3s\"\nbackoff_base = \"100ms\"\n\
                  backoff_max = \"2s\""
            .into(),
        ..Tweaks::default()
    }
}

/// The broker and emulators started in real time (keys load over HTTP), then time paused.
async fn paused(t: Tweaks) -> Harness {
    let h = Harness::with(t).await;
    tokio::time::pause();
    h
}

/// How many exchanges one identity can start within `window` while every one fails: the first,
/// then one after each failure backoff (1 s doubling up to `cache.failure_backoff_max`).
fn failing_exchanges_within(window: Duration) -> u64 {
    let (mut exchanges, mut elapsed, mut backoff) = (1, Duration::ZERO, Duration::from_secs(1));
    loop {
        elapsed += backoff;
        if elapsed > window {
            return exchanges;
        }
        exchanges += 1;
        backoff = (backoff * 2).min(FAILURE_BACKOFF_MAX);
    }
}

/// The most GetCredentialsForIdentity calls `identities` identities may make within `window`
/// of a fault: each failing exchange makes at most `max_attempts` calls, plus one successful
/// exchange each.
fn call_bound(identities: usize, window: Duration) -> u64 {
    identities as u64 * (u64::from(MAX_ATTEMPTS) * failing_exchanges_within(window) + 1)
}

fn subject(user: usize) -> String {
    format!("auth0|fault-{user}")
}

fn mint(h: &Harness, sub: &str) -> String {
    h.issuer.mint(&TokenSpec {
        lifetime: Some(12 * 60 * MIN),
        ..TokenSpec::for_subject(sub)
    })
}

async fn ask(h: &Harness, token: &str) -> Result<Arc<Issued>, BrokerError> {
    h.running()
        .broker
        .credentials(token, Surface::Container)
        .await
}

/// The kind of upstream failure behind a refusal, if it was one.
fn upstream_kind(e: &BrokerError) -> Option<ErrorKind> {
    match e {
        BrokerError::Upstream { error, .. } => Some(error.kind),
        _ => None,
    }
}

struct Refusal {
    at: Duration,
    user: usize,
    error: BrokerError,
}

/// Callers asking every [`STEP`] and what they were answered.
struct Callers {
    h: Harness,
    /// The clock Cognito and the issuer run on (the broker's, unless skewed).
    truth: SharedClock,
    start: Instant,
    /// (user, ID token).
    callers: Vec<(usize, String)>,
    /// The longest-lasting credentials each user was served so far (Cognito's record).
    newest: Vec<Option<IssuedCredentials>>,
    /// (when, user, when Cognito issued the set): every answer that served credentials.
    served: Vec<(Duration, usize, SystemTime)>,
    refusals: Vec<Refusal>,
}

impl Callers {
    fn new(h: Harness, users: usize) -> Self {
        let callers = (0..users)
            .flat_map(|user| (0..CALLERS_PER_USER).map(move |_| user))
            .map(|user| (user, mint(&h, &subject(user))))
            .collect();
        Self {
            truth: h.clock.clone(),
            h,
            start: Instant::now(),
            callers,
            newest: vec![None; users],
            served: Vec::new(),
            refusals: Vec::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Every caller asks at once. A caller whose user holds servable credentials (by Cognito's
    /// record of what was served) must be answered with credentials at once, without waiting
    /// on Cognito; every answer with credentials must pass [`served::verify`].
    async fn tick(&mut self) {
        let (h, truth) = (&self.h, &self.truth);
        let asks = self.callers.iter().map(|(user, token)| async move {
            let before = truth.now();
            let answer = ask(h, token).await;
            (*user, before, answer, truth.now())
        });
        let answers = futures_util::future::join_all(asks).await;
        let at = self.elapsed();
        for (user, before, answer, after) in answers {
            let servable = self.newest[user]
                .as_ref()
                .filter(|c| served::remaining(c, before) > MIN_REMAINING)
                .map(|c| served::remaining(c, before));
            match answer {
                Ok(issued) => {
                    let record = served::verify(
                        &self.h,
                        &subject(user),
                        DEFAULT_ROLE_ARN,
                        &issued,
                        after,
                        MIN_REMAINING,
                    )
                    .unwrap_or_else(|e| panic!("at {at:?}: {e}"));
                    if let Some(left) = servable {
                        assert_eq!(
                            before, after,
                            "at {at:?}: user {user} had credentials with {left:?} left but \
                             waited on Cognito"
                        );
                    }
                    self.served
                        .push((at, user, record.expiration - CREDENTIAL_LIFETIME));
                    if self.newest[user]
                        .as_ref()
                        .is_none_or(|n| record.expiration > n.expiration)
                    {
                        self.newest[user] = Some(record);
                    }
                }
                Err(error) => {
                    if let Some(left) = servable {
                        panic!(
                            "at {at:?}: user {user} was refused ({}: {}) although credentials \
                             with {left:?} left were cached",
                            error.reply().code,
                            error.reply().message
                        );
                    }
                    self.refusals.push(Refusal { at, user, error });
                }
            }
        }
    }

    /// Ticks every [`STEP`] until `until` (virtual time since the start).
    async fn run_until(&mut self, until: Duration) {
        let mut next = self.start + self.elapsed();
        while self.elapsed() < until {
            self.tick().await;
            next += STEP;
            tokio::time::sleep_until(next).await;
        }
    }

    /// When, at or after `from`, `user` was first served credentials Cognito issued at or
    /// after `issued_after`.
    fn first_fresh(
        &self,
        user: usize,
        from: Duration,
        issued_after: SystemTime,
    ) -> Option<Duration> {
        self.served
            .iter()
            .find(|(at, u, issued)| *u == user && *at >= from && *issued >= issued_after)
            .map(|(at, ..)| *at)
    }
}

/// One Cognito fault of the matrix.
struct Row {
    name: &'static str,
    inject: fn(&Faults),
    /// When it starts and clears (virtual time since the first credentials were obtained at
    /// t = 0; they are refreshed at 30 min and servable until 40 min).
    from: Duration,
    to: Duration,
    /// `None`: nobody may be refused. `Some(kind)`: the fault outlasts the servable window, so
    /// callers are refused once nothing servable is left, with an upstream error of `kind`.
    refused_with: Option<ErrorKind>,
}

const THROTTLING: Row = Row {
    name: "TooManyRequestsException on 50 % of calls for 20 min",
    inject: |f| f.set_throttle_rate(0.5),
    from: Duration::from_secs(25 * 60),
    to: Duration::from_secs(45 * 60),
    refused_with: None,
};

const INTERNAL_ERRORS: Row = Row {
    name: "InternalErrorException (500) on every call for 5 min, across the refresh",
    inject: |f| f.set_internal_error_rate(1.0),
    from: Duration::from_secs(28 * 60),
    to: Duration::from_secs(33 * 60),
    refused_with: None,
};

const LONG_OUTAGE: Row = Row {
    name: "a 30 min outage (503), longer than the 20 min servable window",
    inject: |f| f.set_outage(true),
    from: Duration::from_secs(25 * 60),
    to: Duration::from_secs(55 * 60),
    refused_with: Some(ErrorKind::Unavailable),
};

const SLOW: Row = Row {
    name: "Cognito answering after 10 s, beyond attempt_timeout (3 s), for 30 min",
    inject: |f| f.set_latency(Duration::from_secs(10)),
    from: Duration::from_secs(25 * 60),
    to: Duration::from_secs(55 * 60),
    refused_with: Some(ErrorKind::Timeout),
};

async fn cognito_fault(row: &Row) {
    let name = row.name;
    let h = paused(tweaks()).await;
    let mut run = Callers::new(h, USERS);
    run.run_until(row.from).await;
    let truth_at_fault = run.truth.now();
    let before = run.h.cognito.stats();
    (row.inject)(run.h.cognito.faults());
    run.run_until(row.to).await;
    let during = run.h.cognito.stats();
    run.h.cognito.faults().clear();
    run.run_until(row.to + 10 * MIN).await;

    // Upstream calls during the fault: bounded by the backoff policy, not by the callers.
    let calls =
        during.get_credentials_for_identity.calls - before.get_credentials_for_identity.calls;
    let bound = call_bound(USERS, row.to - row.from);
    assert!(
        calls <= bound,
        "{name}: {calls} GetCredentialsForIdentity calls during the fault, bound {bound}"
    );
    assert!(calls > 0, "{name}: the fault was never met");
    assert_eq!(
        run.h.get_id_calls(),
        USERS as u64,
        "{name}: GetId once per identity"
    );

    // Refusals: only when nothing servable was left (checked per answer), of the fault's
    // kind, retryable (503 + Retry-After), and over within RECOVERY of the fault clearing.
    match row.refused_with {
        None => assert!(
            run.refusals.is_empty(),
            "{name}: {} refusals, first {:?} at {:?}",
            run.refusals.len(),
            run.refusals[0].error.reply(),
            run.refusals[0].at
        ),
        Some(kind) => {
            assert!(!run.refusals.is_empty(), "{name}: nobody was ever refused");
            for r in &run.refusals {
                let reply = r.error.reply();
                assert_eq!(upstream_kind(&r.error), Some(kind), "{name}: {reply:?}");
                assert_eq!(reply.status, 503, "{name}: {reply:?}");
                assert!(
                    reply.retry_after.is_some_and(|s| s >= 1),
                    "{name}: {reply:?}"
                );
                assert!(
                    r.at <= row.to + RECOVERY,
                    "{name}: user {} still refused at {:?}, the fault cleared at {:?}",
                    r.user,
                    r.at,
                    row.to
                );
            }
        }
    }

    // Recovery: within RECOVERY of the fault clearing, every user has been served credentials
    // obtained since the fault began (their previous set was not refreshed during it, or it
    // was and that counts as well).
    for user in 0..USERS {
        let fresh = run.first_fresh(user, Duration::ZERO, truth_at_fault);
        assert!(
            fresh.is_some_and(|at| at <= row.to + RECOVERY),
            "{name}: user {user} first served fresh credentials at {fresh:?}; the fault cleared \
             at {:?}",
            row.to
        );
    }
    run.h.stop().await;
}

#[tokio::test]
async fn throttling_at_50_percent_is_absorbed_by_retries_and_the_cache() {
    cognito_fault(&THROTTLING).await;
}

#[tokio::test]
async fn internal_errors_during_the_refresh_keep_the_cached_credentials_served() {
    cognito_fault(&INTERNAL_ERRORS).await;
}

#[tokio::test]
async fn an_outage_past_the_servable_window_refuses_only_then_and_recovers_within_a_backoff() {
    cognito_fault(&LONG_OUTAGE).await;
}

#[tokio::test]
async fn cognito_slower_than_the_attempt_timeout_never_holds_callers_with_cached_credentials() {
    cognito_fault(&SLOW).await;
}

#[test]
fn the_call_bound_follows_the_backoff_policy() {
    // 1 + 2 + 4 + 8 s, then every 15 s: exchanges at 0, 1, 3, 7, 15, 30, 45, 60 s.
    assert_eq!(failing_exchanges_within(Duration::from_secs(60)), 8);
    assert_eq!(failing_exchanges_within(Duration::from_secs(600)), 44);
    assert_eq!(call_bound(1, Duration::from_secs(600)), 133);
}

/// Runs `f` with tokio's clock running: for calls that may fetch the issuer's JWKS over HTTP,
/// which must not race the paused clock. Virtual time advances by the few real milliseconds.
async fn unpaused<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::resume();
    let out = f.await;
    tokio::time::pause();
    out
}

/// One user's caller: asks, checks, and returns the access key served.
async fn served_key(h: &Harness, sub: &str, token: &str) -> String {
    let issued = ask(h, token)
        .await
        .unwrap_or_else(|e| panic!("{sub}: {:?}", e.reply()));
    served::verify(
        h,
        sub,
        DEFAULT_ROLE_ARN,
        &issued,
        h.clock.now(),
        MIN_REMAINING,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    issued.access_key_id().to_owned()
}

#[tokio::test]
async fn a_jwks_outage_keeps_known_keys_working_bounds_refetches_and_recovers_within_one_interval()
{
    const REFETCH_INTERVAL: Duration = Duration::from_secs(30); // tokens.jwks_refetch_interval
    let h = paused(tweaks()).await;
    let start = Instant::now();
    let alice = mint(&h, "auth0|jwks-alice");
    let first = served_key(&h, "auth0|jwks-alice", &alice).await;

    // The issuer goes down and, meanwhile, starts signing with a new key.
    tokio::time::sleep(MIN).await;
    let carol = mint(&h, "auth0|jwks-carol"); // signed with the old key, first used later
    h.issuer.set_unavailable(true);
    h.issuer.rotate_keys();
    let bob = mint(&h, "auth0|jwks-bob"); // signed with the new key: its kid is unknown
    let fetches_before = h.issuer.stats().jwks_requests;
    let get_id_before = h.get_id_calls();
    let outage_ends = 45 * MIN;
    let mut bob_refusals = 0;
    let mut alice_keys = std::collections::BTreeSet::from([first]);
    while start.elapsed() < outage_ends {
        // Tokens with known keys: validated, exchanged and refreshed as if nothing happened,
        // past the first set's servable window (40 min).
        alice_keys.insert(served_key(&h, "auth0|jwks-alice", &alice).await);
        if start.elapsed() >= 10 * MIN {
            served_key(&h, "auth0|jwks-carol", &carol).await;
        }
        // A token whose key cannot be fetched is never served, and never reaches Cognito.
        let answer = unpaused(ask(&h, &bob)).await;
        let error = answer.expect_err("a token whose key could not be fetched was served");
        // Retryable: the key may well exist, credbroker could not look.
        let reply = error.reply();
        assert_eq!(
            (reply.status, reply.code),
            (503, "ProviderUnavailable"),
            "{reply:?}"
        );
        assert!(reply.retry_after.is_some(), "{reply:?}");
        bob_refusals += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    assert!(
        alice_keys.len() >= 2,
        "alice's credentials were refreshed during the outage"
    );
    assert_eq!(
        h.get_id_calls() - get_id_before,
        1,
        "only carol reached Cognito's GetId"
    );
    let fetches = h.issuer.stats().jwks_requests - fetches_before;
    let bound = (outage_ends - MIN).as_secs() / REFETCH_INTERVAL.as_secs() + 1;
    assert!(
        fetches <= bound && bob_refusals > 2 * bound,
        "{bob_refusals} unknown-kid requests made {fetches} JWKS fetches; bound {bound}"
    );

    // The issuer is back: bob is served within one refetch interval (plus one ask).
    h.issuer.set_unavailable(false);
    let back = start.elapsed();
    let served_at = loop {
        if unpaused(ask(&h, &bob)).await.is_ok() {
            break start.elapsed();
        }
        assert!(start.elapsed() < back + 10 * MIN, "bob never served");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        served_at <= back + REFETCH_INTERVAL + Duration::from_secs(1),
        "served {:?} after the issuer came back",
        served_at - back
    );
    served_key(&h, "auth0|jwks-bob", &bob).await;
    h.stop().await;
}

#[tokio::test]
async fn key_rotation_is_followed_at_first_sight_and_withdrawn_keys_stop_counting() {
    let h = paused(tweaks()).await;
    let alice_old = mint(&h, "auth0|rot-alice");
    let first = served_key(&h, "auth0|rot-alice", &alice_old).await;
    let fetches = || h.issuer.stats().jwks_requests;

    // A new signing key; the old one stays published for a while (Auth0's rotation).
    tokio::time::sleep(5 * MIN).await;
    let before = fetches();
    h.issuer.rotate_keys();
    let carol = mint(&h, "auth0|rot-carol");
    unpaused(async { served_key(&h, "auth0|rot-carol", &carol).await }).await;
    assert_eq!(fetches() - before, 1, "one refetch for the new kid");
    assert_eq!(served_key(&h, "auth0|rot-alice", &alice_old).await, first);

    // Another rotation, and every older key withdrawn: noticed at the next refetch.
    tokio::time::sleep(5 * MIN).await;
    h.issuer.rotate_keys();
    h.issuer.retire_old_keys();
    let dave = mint(&h, "auth0|rot-dave");
    unpaused(async { served_key(&h, "auth0|rot-dave", &dave).await }).await;
    assert_eq!(fetches() - before, 2, "one refetch per rotation");
    let calls = h.credential_calls();
    for (sub, token) in [("alice", &alice_old), ("carol", &carol)] {
        let error = unpaused(ask(&h, token))
            .await
            .expect_err("a token signed by a withdrawn key was served");
        assert_eq!(error.reply().code, "UnknownKeyId", "{sub}");
    }
    assert_eq!(
        h.credential_calls(),
        calls,
        "refused tokens never reach Cognito"
    );

    // Alice signs in again: her cached credentials are still servable and served as they are.
    let alice_new = mint(&h, "auth0|rot-alice");
    assert_eq!(served_key(&h, "auth0|rot-alice", &alice_new).await, first);
    assert_eq!(h.credential_calls(), calls);

    // The refresh at 30 min uses her newest token (the old one's key is gone), and she is
    // served past the first set's servable window.
    let mut last = first.clone();
    for _ in 0..40 {
        tokio::time::sleep(MIN).await;
        last = served_key(&h, "auth0|rot-alice", &alice_new).await;
    }
    assert_ne!(
        last, first,
        "refreshed with the token signed by the current key"
    );
    h.stop().await;
}

/// A token whose `iat` and `nbf` lie `ahead` in the future of the issuer's (and broker's) clock.
fn from_the_future(h: &Harness, sub: &str, ahead: Duration) -> String {
    let at = h.clock.now() + ahead;
    h.issuer.mint(&TokenSpec {
        issued_at: Some(at),
        not_before: Some(at),
        lifetime: Some(12 * 60 * MIN),
        ..TokenSpec::for_subject(sub)
    })
}

#[tokio::test]
async fn tokens_from_a_skewed_issuer_clock_are_accepted_within_the_leeway_only() {
    // tokens.leeway is 60 s.
    let h = paused(tweaks()).await;
    let within = from_the_future(&h, "auth0|skew-within", Duration::from_secs(30));
    served_key(&h, "auth0|skew-within", &within).await;

    let beyond = from_the_future(&h, "auth0|skew-beyond", 5 * MIN);
    let calls = (h.get_id_calls(), h.credential_calls());
    let error = ask(&h, &beyond).await.expect_err("iat/nbf 5 min ahead");
    assert_eq!(error.reply().code, "TokenNotYetValid");
    assert_eq!(
        (h.get_id_calls(), h.credential_calls()),
        calls,
        "not sent to Cognito"
    );
    // Once the clocks agree within the leeway, the same token is accepted.
    tokio::time::sleep(4 * MIN - Duration::from_secs(1)).await;
    assert_eq!(
        ask(&h, &beyond)
            .await
            .expect_err("still 61 s ahead")
            .reply()
            .code,
        "TokenNotYetValid"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    served_key(&h, "auth0|skew-beyond", &beyond).await;
    h.stop().await;
}

/// The broker's clock, `by` ahead of everyone else's.
#[derive(Debug)]
struct Ahead {
    base: SharedClock,
    by: Duration,
}

impl Clock for Ahead {
    fn now(&self) -> SystemTime {
        self.base.now() + self.by
    }
}

#[tokio::test]
async fn a_broker_clock_ahead_of_cognitos_still_serves_min_remaining_by_cognitos_clock() {
    let mut h = Harness::with(tweaks()).await;
    let truth = h.clock.clone();
    h.stop_broker().await;
    h.clock = Arc::new(Ahead {
        base: truth.clone(),
        by: 10 * MIN,
    });
    h.restart().await;
    tokio::time::pause();

    // The broker sees one-hour credentials as 50-minute ones: it scales its thresholds
    // (min_remaining 16 m 40 s, refresh 25 min after obtaining) and, by Cognito's clock, always
    // serves at least the configured 20 minutes.
    let token = mint(&h, "auth0|skew-broker");
    let mut keys = std::collections::BTreeSet::new();
    for minute in 0..180 {
        let issued = ask(&h, &token)
            .await
            .unwrap_or_else(|e| panic!("minute {minute}: {:?}", e.reply()));
        served::verify(
            &h,
            "auth0|skew-broker",
            DEFAULT_ROLE_ARN,
            &issued,
            truth.now(),
            MIN_REMAINING,
        )
        .unwrap_or_else(|e| panic!("minute {minute}: {e}"));
        keys.insert(issued.access_key_id().to_owned());
        tokio::time::sleep(MIN).await;
    }
    // One refresh every 25 minutes over 3 hours, plus the first exchange: no loop.
    let calls = h.credential_calls();
    assert!(
        (7..=9).contains(&calls),
        "{calls} GetCredentialsForIdentity calls in 3 h"
    );
    assert_eq!(keys.len() as u64, calls);
    h.stop().await;
}
