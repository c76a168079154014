//! The renewal timetable under paused time: a burst of identities obtained together is spread
//! over the budget so that no caller needs an on-demand exchange while the mean demand fits
//! `cache.refresh_rate`; when it does not fit, the deficit is counted and shown.

use std::time::Duration;

use credbroker::metrics::Surface;
use credbroker_emulators::cognito::CognitoOptions;
use credbroker_emulators::oidc::TokenSpec;

use crate::single_flight::metric;
use crate::support::{Harness, Tweaks};

const LIFETIME: Duration = Duration::from_secs(15 * 60);

/// `users` identities obtained at once, then each asked every 5 minutes for `minutes`:
/// (on-demand renewals after the first exchange, the largest number of
/// GetCredentialsForIdentity calls in any closed one-second interval after it, the metrics).
async fn simulate(users: usize, rate: f64, minutes: u64) -> (f64, usize, String) {
    let h = Harness::with(Tweaks {
        in_process_cognito: true,
        tokens: "jwks_refresh_interval = \"7d\"".into(),
        server: format!("max_pending_exchanges = {}", users * 2),
        cache: format!(
            "refresh_rate = {rate}\nrefresh_concurrency = 64\nmax_identities = {}",
            users * 2
        ),
        cognito_options: Some(CognitoOptions {
            credential_lifetime: LIFETIME,
            ..CognitoOptions::default()
        }),
        ..Tweaks::default()
    })
    .await;
    tokio::time::pause();
    let tokens: Vec<String> = (0..users)
        .map(|i| {
            h.issuer.mint(&TokenSpec {
                lifetime: Some(Duration::from_secs((minutes + 60) * 60)),
                ..TokenSpec::for_subject(format!("auth0|spread-{i}"))
            })
        })
        .collect();
    let broker = &h.running().broker;
    for t in &tokens {
        broker
            .credentials(t, Surface::Container)
            .await
            .expect("first exchange");
    }
    let warm = h
        .cognito
        .stats()
        .get_credentials_for_identity
        .arrivals_ms
        .len();
    let on_demand_at_start = metric(
        &broker.metrics.render(),
        "credbroker_refreshes_total{result=\"ok\",trigger=\"on_demand\"}",
    );
    const PERIOD: usize = 300;
    for sec in 0..(minutes as usize * 60) {
        for t in tokens.iter().skip(sec % PERIOD).step_by(PERIOD) {
            broker
                .credentials(t, Surface::Container)
                .await
                .expect("served");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let arrivals = h.cognito.stats().get_credentials_for_identity.arrivals_ms;
    let later: Vec<u64> = arrivals.get(warm..).unwrap_or_default().to_vec();
    let peak = later
        .iter()
        .map(|&t| later.iter().filter(|&&u| u >= t && u <= t + 1000).count())
        .max()
        .unwrap_or(0);
    broker.identities.update_gauges();
    let m = broker.metrics.render();
    let on_demand = metric(
        &m,
        "credbroker_refreshes_total{result=\"ok\",trigger=\"on_demand\"}",
    ) - on_demand_at_start;
    h.stop().await;
    (on_demand, peak, m)
}

#[tokio::test]
async fn a_burst_larger_than_the_window_is_renewed_ahead_without_on_demand_exchanges() {
    // 400 identities, 15-minute credentials (thresholds scaled: renew 7.5 min before expiry,
    // serve until 5 min before): renewals are due within a 150 s window, which holds 150
    // slots at 1/s; in steady state each identity renews every 7.5 min, 400 / 450 s = 0.89/s,
    // within the budget.
    let (on_demand, peak, m) = simulate(400, 1.0, 45).await;
    let lines: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.starts_with("credbroker_refreshes_total") || l.starts_with("credbroker_refresh_")
        })
        .collect();
    assert_eq!(on_demand, 0.0, "no caller waited for a renewal: {lines:#?}");
    assert!(
        peak <= 1,
        "renewals keep to the budget: peak {peak} calls in one second"
    );
    assert_eq!(metric(&m, "credbroker_refresh_slots_missed_total"), 0.0);
    assert_eq!(metric(&m, "credbroker_refresh_budget_deficit"), 0.0);
}

#[tokio::test]
async fn a_budget_that_cannot_cover_the_identities_says_so() {
    // 600 identities at 0.5/s: they need 600 / 450 s = 1.33 renewals per second.
    let (on_demand, _, m) = simulate(600, 0.5, 20).await;
    assert!(
        metric(&m, "credbroker_refresh_slots_missed_total") > 0.0,
        "{m}"
    );
    let deficit = metric(&m, "credbroker_refresh_budget_deficit");
    assert!(
        (0.5..1.0).contains(&deficit),
        "about 1.33 - 0.5 renewals/s missing: {deficit}"
    );
    assert!(on_demand > 0.0, "callers had to wait: the deficit is real");
}
