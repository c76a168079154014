//! Every Prometheus metric credbroker exports, in one place.
//!
//! Owns: metric names, help texts, label sets, and the registry they live in.
//!
//! Promises:
//! - label values come from small fixed sets (outcome codes, operation names, configured provider
//!   names, surfaces); never a subject, token, identity id or key;
//! - hot-path counters are resolved to concrete handles once, so serving cached credentials
//!   costs a few atomic increments;
//! - [`Metrics::render`] produces the Prometheus text exposition format (checked with
//!   `promtool check metrics` by `deploy/validate.sh`);
//! - every series of a bounded, known label set starts at 0 (a dashboard or alert never meets
//!   a missing series because the event has not happened yet);
//! - process metrics keep their standard names (`process_cpu_seconds_total`, …, no prefix) so
//!   generic dashboards and alerts apply.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The surfaces credentials are served on (a bounded label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Surface {
    /// The container-credentials endpoint.
    Container,
    /// The IMDSv2-compatible endpoint.
    Imds,
    /// The gRPC API.
    Grpc,
    /// The AppSync forwarder.
    Appsync,
    /// The sessions API.
    Sessions,
}

impl Surface {
    /// Every surface.
    pub const ALL: [Surface; 5] = [
        Self::Container,
        Self::Imds,
        Self::Grpc,
        Self::Appsync,
        Self::Sessions,
    ];

    /// Its position in [`Surface::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Imds => "imds",
            Self::Grpc => "grpc",
            Self::Appsync => "appsync",
            Self::Sessions => "sessions",
        }
    }
}

/// The `listener` label values of the HTTP listeners.
pub const LISTENERS: [&str; 3] = ["main", "imds", "admin"];

/// The registry and every metric in it.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// The metric handles. Fields are public so components record directly.
pub struct Inner {
    registry: Registry,
    /// `process_*` (unprefixed, as every Prometheus client names them).
    process: Registry,
    /// `credbroker_token_validations_total{provider, outcome}`.
    pub token_validations: IntCounterVec,
    /// `credbroker_jwks_fetches_total{provider, result}`.
    pub jwks_fetches: IntCounterVec,
    /// `credbroker_jwks_refetches_suppressed_total{provider}`.
    pub jwks_refetch_suppressed: IntCounterVec,
    /// `credbroker_jwks_key_rotations_total{provider}`.
    pub jwks_rotations: IntCounterVec,
    /// `credbroker_cognito_calls_total{operation, outcome}`.
    pub cognito_calls: IntCounterVec,
    /// `credbroker_cognito_call_duration_seconds{operation}`.
    pub cognito_latency: HistogramVec,
    /// `credbroker_cognito_retries_total{operation}`.
    pub cognito_retries: IntCounterVec,
    /// `credbroker_cache_lookups_total{result}`: hit, miss, joined (single-flight), negative.
    pub cache_lookups: IntCounterVec,
    /// `credbroker_cache_evictions_total{cause}`.
    pub cache_evictions: IntCounterVec,
    /// `credbroker_identities_cached`.
    pub identities_cached: IntGauge,
    /// `credbroker_refreshes_total{trigger, result}`.
    pub refreshes: IntCounterVec,
    /// `credbroker_soonest_credential_expiry_seconds`.
    pub soonest_credential_expiry: Gauge,
    /// `credbroker_soonest_token_expiry_seconds`.
    pub soonest_token_expiry: Gauge,
    /// `credbroker_served_below_min_remaining_total`.
    pub served_below_min_remaining: IntCounter,
    /// `credbroker_refresh_budget_deficit`: renewals per second the identities held need
    /// (each once per obtain → `refresh_at` period) beyond `cache.refresh_rate` (0 when the
    /// budget covers them; set at scrape time).
    pub refresh_budget_deficit: Gauge,
    /// `credbroker_refresh_slots_missed_total`: renewals that found no free slot in their
    /// window (a caller may need an on-demand exchange).
    pub refresh_slots_missed: IntCounter,
    /// `credbroker_requests_total{surface, status}`.
    pub requests: IntCounterVec,
    /// `credbroker_request_duration_seconds{surface}`.
    pub request_latency: HistogramVec,
    /// `credbroker_credentials_issued_total{surface}`: served credential sets (audit events).
    pub issued: IntCounterVec,
    /// `credbroker_appsync_upstream_responses_total{api, outcome}`: 2xx/3xx/4xx/5xx, timeout,
    /// unreachable.
    pub appsync_upstream: IntCounterVec,
    /// `credbroker_appsync_upstream_duration_seconds{api}`: time to AppSync's answer head.
    pub appsync_upstream_latency: HistogramVec,
    /// `credbroker_appsync_realtime_connections{api}`: open real-time client connections.
    pub appsync_realtime_connections: IntGaugeVec,
    /// `credbroker_appsync_realtime_subscriptions{api}`: live subscriptions.
    pub appsync_realtime_subscriptions: IntGaugeVec,
    /// `credbroker_appsync_realtime_upgrades_total{api, outcome}`.
    pub appsync_realtime_upgrades: IntCounterVec,
    /// `credbroker_appsync_realtime_starts_total{api, outcome}`.
    pub appsync_realtime_starts: IntCounterVec,
    /// `credbroker_appsync_realtime_renewals_total{api, outcome}`.
    pub appsync_realtime_renewals: IntCounterVec,
    /// `credbroker_appsync_realtime_renewal_in_progress{api}`.
    pub appsync_realtime_renewal_in_progress: IntGaugeVec,
    /// `credbroker_appsync_realtime_closes_total{api, reason}`.
    pub appsync_realtime_closes: IntCounterVec,
    /// `credbroker_ready`: 1 when `/readyz` would answer 200 (set when readiness is evaluated:
    /// each `/readyz` and each scrape).
    pub ready: IntGauge,
    /// `credbroker_provider_keys_loaded{provider}`: 1 once the provider's JWKS loaded.
    pub provider_keys_loaded: IntGaugeVec,
    /// `credbroker_cognito_reachable`: 1 when Cognito's last answer (call or probe) proves the
    /// endpoint answers.
    pub cognito_reachable: IntGauge,
    /// `credbroker_cognito_probes_total{outcome}`: readiness probes of the Cognito endpoint.
    pub cognito_probes: IntCounterVec,
    /// `credbroker_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// `credbroker_http_connections{listener}`: open HTTP connections.
    pub http_connections: IntGaugeVec,
    /// `credbroker_http_connections_shed_total{listener}`: connections closed to free a slot
    /// (they had not sent a complete request).
    pub http_connections_shed: IntCounterVec,
    /// `credbroker_http_host_refusals_total{listener}`: requests refused for their `Host`.
    pub http_host_refusals: IntCounterVec,
    /// Pre-resolved hot-path handles.
    pub hot: HotPath,
    /// Fleet mode's shared tier (`credbroker_shared_*`, `credbroker_budget_*`).
    pub shared: SharedMetrics,
}

/// The `outcome` values of `credbroker_appsync_upstream_responses_total`.
pub const APPSYNC_OUTCOMES: [&str; 6] = ["2xx", "3xx", "4xx", "5xx", "unreachable", "timeout"];

/// One AppSync API's upstream series ([`Metrics::appsync_api`]).
#[derive(Clone)]
pub struct AppSyncApiMetrics {
    /// `appsync_upstream_duration_seconds{api}`.
    pub latency: Histogram,
    /// `appsync_upstream_responses_total{api, outcome}`, in [`APPSYNC_OUTCOMES`] order.
    pub outcomes: [IntCounter; 6],
}

impl AppSyncApiMetrics {
    /// Counts one answer (or its absence) under `outcome`, one of [`APPSYNC_OUTCOMES`].
    pub fn count(&self, outcome: &str) {
        if let Some(i) = APPSYNC_OUTCOMES.iter().position(|o| *o == outcome)
            && let Some(c) = self.outcomes.get(i)
        {
            c.inc();
        }
    }
}

impl fmt::Debug for AppSyncApiMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppSyncApiMetrics")
    }
}

/// Handles for the cached-credentials path, resolved once.
pub struct HotPath {
    /// `cache_lookups{result="hit"}`.
    pub cache_hit: IntCounter,
    /// `requests{surface,status="200"}`, by [`Surface::index`].
    pub ok: [IntCounter; Surface::ALL.len()],
    /// `request_duration_seconds{surface}`, by [`Surface::index`].
    pub latency: [Histogram; Surface::ALL.len()],
    /// `token_validations{outcome="cached"}` is per provider; resolved lazily per provider.
    pub token_cached: Vec<(String, IntCounter)>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// One metric family: its name (after the `credbroker_` prefix), help text and label names.
struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

// ---- The families, by area ----

// Token validation and the providers' documents.
const TOKEN_VALIDATIONS: Family = Family {
    name: "token_validations_total",
    help: "ID token validations by provider and outcome (ok, cached, or the rejection code).",
    labels: &["provider", "outcome"],
};
const JWKS_FETCHES: Family = Family {
    name: "jwks_fetches_total",
    help: "Discovery + JWKS fetches by provider and result (ok, error).",
    labels: &["provider", "result"],
};
const JWKS_REFETCH_SUPPRESSED: Family = Family {
    name: "jwks_refetches_suppressed_total",
    help: "Unknown-kid JWKS refetches skipped because one happened within \
           tokens.jwks_refetch_interval.",
    labels: &["provider"],
};
const JWKS_ROTATIONS: Family = Family {
    name: "jwks_key_rotations_total",
    help: "JWKS fetches that changed the set of key ids.",
    labels: &["provider"],
};
const PROVIDER_KEYS_LOADED: Family = Family {
    name: "provider_keys_loaded",
    help: "1 once the provider's discovery document and JWKS loaded at least once, else 0.",
    labels: &["provider"],
};

// Cognito Identity calls and readiness probes.
const COGNITO_CALLS: Family = Family {
    name: "cognito_calls_total",
    help: "Cognito Identity calls (each attempt) by operation and outcome.",
    labels: &["operation", "outcome"],
};
const COGNITO_LATENCY: Family = Family {
    name: "cognito_call_duration_seconds",
    help: "Latency of one Cognito Identity call attempt, by operation.",
    labels: &["operation"],
};
const COGNITO_RETRIES: Family = Family {
    name: "cognito_retries_total",
    help: "Cognito Identity attempts that were retries, by operation.",
    labels: &["operation"],
};
const COGNITO_REACHABLE: Family = Family {
    name: "cognito_reachable",
    help: "1 when Cognito's last answer to a call or probe shows the endpoint answers, else 0.",
    labels: &[],
};
const COGNITO_PROBES: Family = Family {
    name: "cognito_probes_total",
    help: "Readiness probes of the Cognito endpoint (unsigned GetId with a placeholder \
           login), by outcome (answered, or the failure class).",
    labels: &["outcome"],
};

// The identity cache and its renewals.
const CACHE_LOOKUPS: Family = Family {
    name: "cache_lookups_total",
    help: "Identity cache lookups: hit (usable credentials cached), miss (upstream exchange \
           started), joined (waited on an exchange already in flight), negative (recent \
           failure remembered, no upstream call).",
    labels: &["result"],
};
const CACHE_EVICTIONS: Family = Family {
    name: "cache_evictions_total",
    help: "Identities removed from the cache, by cause (idle, capacity, revoked, replaced).",
    labels: &["cause"],
};
const IDENTITIES_CACHED: Family = Family {
    name: "identities_cached",
    help: "Identities in the cache.",
    labels: &[],
};
const REFRESHES: Family = Family {
    name: "refreshes_total",
    help: "Credential refreshes by trigger (ahead, on_demand) and result (ok, failed, \
           stale, skipped_token_expired, skipped_unused).",
    labels: &["trigger", "result"],
};
const SOONEST_CREDENTIAL_EXPIRY: Family = Family {
    name: "soonest_credential_expiry_seconds",
    help: "Seconds until the soonest expiry among cached credentials (+Inf when none).",
    labels: &[],
};
const SOONEST_TOKEN_EXPIRY: Family = Family {
    name: "soonest_token_expiry_seconds",
    help: "Seconds until the soonest expiry among ID tokens held for refresh (+Inf when \
           none).",
    labels: &[],
};
const REFRESH_BUDGET_DEFICIT: Family = Family {
    name: "refresh_budget_deficit",
    help: "Renewals per second the cached identities need (each once per period from obtaining \
           its credentials to its renewal point) beyond cache.refresh_rate; 0 when the budget \
           covers them.",
    labels: &[],
};
const REFRESH_SLOTS_MISSED: Family = Family {
    name: "refresh_slots_missed_total",
    help: "Renewals that found no free slot of the renewal budget before their deadline (a \
           caller may need an on-demand exchange).",
    labels: &[],
};
const SERVED_BELOW_MIN_REMAINING: Family = Family {
    name: "served_below_min_remaining_total",
    help: "Credential sets served with less than the effective min_remaining left (should \
           stay 0).",
    labels: &[],
};

// The surfaces' requests and the credential sets they hand out.
const REQUESTS: Family = Family {
    name: "requests_total",
    help: "Requests by surface and HTTP-equivalent status.",
    labels: &["surface", "status"],
};
const REQUEST_LATENCY: Family = Family {
    name: "request_duration_seconds",
    help: "Time to answer a request, by surface.",
    labels: &["surface"],
};
const ISSUED: Family = Family {
    name: "credentials_issued_total",
    help: "Credential sets handed to callers, by surface (one audit log line each).",
    labels: &["surface"],
};

// The AppSync forwarder.
const APPSYNC_UPSTREAM: Family = Family {
    name: "appsync_upstream_responses_total",
    help: "Requests forwarded to AppSync by configured API and outcome (2xx, 3xx, 4xx, \
           5xx, timeout, unreachable).",
    labels: &["api", "outcome"],
};
const APPSYNC_UPSTREAM_LATENCY: Family = Family {
    name: "appsync_upstream_duration_seconds",
    help: "Time from forwarding a request to AppSync's answer head, by configured API.",
    labels: &["api"],
};

// AppSync real time.
const APPSYNC_REALTIME_CONNECTIONS: Family = Family {
    name: "appsync_realtime_connections",
    help: "Open AppSync real-time (WebSocket) client connections, by configured API.",
    labels: &["api"],
};
const APPSYNC_REALTIME_SUBSCRIPTIONS: Family = Family {
    name: "appsync_realtime_subscriptions",
    help: "Live AppSync subscriptions on real-time connections, by configured API.",
    labels: &["api"],
};
const APPSYNC_REALTIME_UPGRADES: Family = Family {
    name: "appsync_realtime_upgrades_total",
    help: "Real-time upgrade requests by API and outcome (ok, unauthenticated, too_many, \
           credentials, bad_request).",
    labels: &["api", "outcome"],
};
const APPSYNC_REALTIME_STARTS: Family = Family {
    name: "appsync_realtime_starts_total",
    help: "Subscription starts by API and outcome (forwarded, or why credbroker refused it: \
           malformed, duplicate, limit, operation_refused, signing_failed).",
    labels: &["api", "outcome"],
};
const APPSYNC_REALTIME_RENEWALS: Family = Family {
    name: "appsync_realtime_renewals_total",
    help: "Upstream re-authentications of real-time connections by API and outcome (ok, \
           unchanged: no newer token or credentials yet, failed).",
    labels: &["api", "outcome"],
};
const APPSYNC_REALTIME_RENEWAL_IN_PROGRESS: Family = Family {
    name: "appsync_realtime_renewal_in_progress",
    help: "Real-time connections re-authenticating upstream right now, by API.",
    labels: &["api"],
};
const APPSYNC_REALTIME_CLOSES: Family = Family {
    name: "appsync_realtime_closes_total",
    help: "Real-time client connections ended, by API and reason.",
    labels: &["api", "reason"],
};

/// The `outcome` values of `appsync_realtime_upgrades_total`.
pub const REALTIME_UPGRADE_OUTCOMES: [&str; 5] = [
    "ok",
    "unauthenticated",
    "too_many",
    "credentials",
    "bad_request",
];
/// The `outcome` values of `appsync_realtime_starts_total`.
pub const REALTIME_START_OUTCOMES: [&str; 6] = [
    "forwarded",
    "malformed",
    "duplicate",
    "limit",
    "operation_refused",
    "signing_failed",
];
/// The `outcome` values of `appsync_realtime_renewals_total`.
pub const REALTIME_RENEWAL_OUTCOMES: [&str; 3] = ["ok", "unchanged", "failed"];
/// The `reason` values of `appsync_realtime_closes_total`.
pub const REALTIME_CLOSE_REASONS: [&str; 14] = [
    "client",
    "client_gone",
    "going_away",
    "token_expiring",
    "renewal_failed",
    "session_ended",
    "upstream_lost",
    "upstream_closed",
    "upstream_refused",
    "upstream_silent",
    "upstream_unavailable",
    "too_big",
    "slow_client",
    "unsupported",
];

// The HTTP listeners.
const HTTP_CONNECTIONS: Family = Family {
    name: "http_connections",
    help: "Open HTTP connections, by listener (main, imds, admin).",
    labels: &["listener"],
};
const HTTP_CONNECTIONS_SHED: Family = Family {
    name: "http_connections_shed_total",
    help: "HTTP connections closed to free a slot for a new one while every slot was \
           taken; only connections without a complete request are shed.",
    labels: &["listener"],
};
const HTTP_HOST_REFUSALS: Family = Family {
    name: "http_host_refusals_total",
    help: "Requests refused with 403 HostNotAllowed (DNS-rebinding guard), by listener.",
    labels: &["listener"],
};

// The process as a whole: readiness and the build.
const READY: Family = Family {
    name: "ready",
    help: "1 when /readyz answers 200 (keys loaded, Cognito answers, not shutting down), else 0.",
    labels: &[],
};
const BUILD_INFO: Family = Family {
    name: "build_info",
    help: "Always 1; the version label says which credbroker build runs.",
    labels: &["version"],
};

/// Creates metrics of a [`Family`] and registers them (names and labels are constants, so
/// neither step can fail but by a programming error).
struct Register<'a>(&'a Registry);

impl Register<'_> {
    fn add<M: Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("unique metric");
        metric
    }

    fn counter(&self, f: &Family) -> IntCounter {
        self.add(IntCounter::new(f.name, f.help).expect("valid metric"))
    }

    fn counter_vec(&self, f: &Family) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(f.name, f.help), f.labels).expect("valid metric"))
    }

    fn gauge(&self, f: &Family) -> Gauge {
        self.add(Gauge::new(f.name, f.help).expect("valid metric"))
    }

    fn int_gauge(&self, f: &Family) -> IntGauge {
        self.add(IntGauge::new(f.name, f.help).expect("valid metric"))
    }

    fn int_gauge_vec(&self, f: &Family) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(f.name, f.help), f.labels).expect("valid metric"))
    }

    /// A latency histogram ([`LATENCY_BUCKETS`]).
    fn histogram_vec(&self, f: &Family) -> HistogramVec {
        let opts = HistogramOpts::new(f.name, f.help).buckets(LATENCY_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, f.labels).expect("valid metric"))
    }
}

/// The `process_*` metrics, in a registry of their own (no `credbroker_` prefix).
fn process_registry() -> Registry {
    let process = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        // A second registration (several brokers in one test process) is harmless to skip.
        let _ = process.register(Box::new(pc));
    }
    process
}

impl HotPath {
    fn resolve(
        providers: &[String],
        token_validations: &IntCounterVec,
        cache_lookups: &IntCounterVec,
        requests: &IntCounterVec,
        request_latency: &HistogramVec,
    ) -> Self {
        Self {
            cache_hit: cache_lookups.with_label_values(&["hit"]),
            ok: Surface::ALL.map(|s| requests.with_label_values(&[s.as_str(), "200"])),
            latency: Surface::ALL.map(|s| request_latency.with_label_values(&[s.as_str()])),
            token_cached: providers
                .iter()
                .map(|p| {
                    (
                        p.clone(),
                        token_validations.with_label_values(&[p.as_str(), "cached"]),
                    )
                })
                .collect(),
        }
    }
}

impl Metrics {
    /// Creates every metric, registered in a fresh registry. `providers` are the configured
    /// provider names (pre-resolved for the hot path).
    pub fn new(providers: &[String]) -> Self {
        let registry = Registry::new_custom(Some("credbroker".to_owned()), None)
            .expect("a constant prefix is valid");
        let r = Register(&registry);
        let token_validations = r.counter_vec(&TOKEN_VALIDATIONS);
        let cache_lookups = r.counter_vec(&CACHE_LOOKUPS);
        let requests = r.counter_vec(&REQUESTS);
        let request_latency = r.histogram_vec(&REQUEST_LATENCY);
        let hot = HotPath::resolve(
            providers,
            &token_validations,
            &cache_lookups,
            &requests,
            &request_latency,
        );
        let shared = SharedMetrics::register(&registry);
        let inner = Inner {
            jwks_fetches: r.counter_vec(&JWKS_FETCHES),
            jwks_refetch_suppressed: r.counter_vec(&JWKS_REFETCH_SUPPRESSED),
            jwks_rotations: r.counter_vec(&JWKS_ROTATIONS),
            provider_keys_loaded: r.int_gauge_vec(&PROVIDER_KEYS_LOADED),
            cognito_calls: r.counter_vec(&COGNITO_CALLS),
            cognito_latency: r.histogram_vec(&COGNITO_LATENCY),
            cognito_retries: r.counter_vec(&COGNITO_RETRIES),
            cognito_reachable: r.int_gauge(&COGNITO_REACHABLE),
            cognito_probes: r.counter_vec(&COGNITO_PROBES),
            cache_evictions: r.counter_vec(&CACHE_EVICTIONS),
            identities_cached: r.int_gauge(&IDENTITIES_CACHED),
            refreshes: r.counter_vec(&REFRESHES),
            soonest_credential_expiry: r.gauge(&SOONEST_CREDENTIAL_EXPIRY),
            soonest_token_expiry: r.gauge(&SOONEST_TOKEN_EXPIRY),
            served_below_min_remaining: r.counter(&SERVED_BELOW_MIN_REMAINING),
            refresh_budget_deficit: r.gauge(&REFRESH_BUDGET_DEFICIT),
            refresh_slots_missed: r.counter(&REFRESH_SLOTS_MISSED),
            issued: r.counter_vec(&ISSUED),
            appsync_upstream: r.counter_vec(&APPSYNC_UPSTREAM),
            appsync_upstream_latency: r.histogram_vec(&APPSYNC_UPSTREAM_LATENCY),
            appsync_realtime_connections: r.int_gauge_vec(&APPSYNC_REALTIME_CONNECTIONS),
            appsync_realtime_subscriptions: r.int_gauge_vec(&APPSYNC_REALTIME_SUBSCRIPTIONS),
            appsync_realtime_upgrades: r.counter_vec(&APPSYNC_REALTIME_UPGRADES),
            appsync_realtime_starts: r.counter_vec(&APPSYNC_REALTIME_STARTS),
            appsync_realtime_renewals: r.counter_vec(&APPSYNC_REALTIME_RENEWALS),
            appsync_realtime_renewal_in_progress: r
                .int_gauge_vec(&APPSYNC_REALTIME_RENEWAL_IN_PROGRESS),
            appsync_realtime_closes: r.counter_vec(&APPSYNC_REALTIME_CLOSES),
            http_connections: r.int_gauge_vec(&HTTP_CONNECTIONS),
            http_connections_shed: r.counter_vec(&HTTP_CONNECTIONS_SHED),
            http_host_refusals: r.counter_vec(&HTTP_HOST_REFUSALS),
            ready: r.int_gauge(&READY),
            build_info: r.int_gauge_vec(&BUILD_INFO),
            token_validations,
            cache_lookups,
            requests,
            request_latency,
            hot,
            shared,
            process: process_registry(),
            registry,
        };
        inner.initialize(providers);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let mut families = self.inner.registry.gather();
        families.extend(self.inner.process.gather());
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Records one request a surface answered: `status` is its HTTP status (gRPC: the HTTP
    /// equivalent of its code) and `started` when it arrived. The one way surfaces count
    /// requests; the container endpoint's successes use pre-resolved handles (no label lookup).
    #[inline]
    pub fn record_request(&self, surface: Surface, status: &str, started: Instant) {
        let m = &self.inner;
        let elapsed = started.elapsed().as_secs_f64();
        match m.hot.ok.get(surface.index()) {
            Some(ok) if status == "200" => ok.inc(),
            _ => m
                .requests
                .with_label_values(&[surface.as_str(), status])
                .inc(),
        }
        if let Some(latency) = m.hot.latency.get(surface.index()) {
            latency.observe(elapsed);
        }
    }

    /// The upstream series of the AppSync API `api`, resolved once by the caller that keeps
    /// them (the forwarder, per API).
    pub fn appsync_api(&self, api: &str) -> AppSyncApiMetrics {
        let m = &self.inner;
        AppSyncApiMetrics {
            latency: m.appsync_upstream_latency.with_label_values(&[api]),
            outcomes: APPSYNC_OUTCOMES.map(|o| m.appsync_upstream.with_label_values(&[api, o])),
        }
    }

    /// Credential sets handed out, by surface (surfaces with none left out).
    pub fn issued_by_surface(&self) -> HashMap<String, u64> {
        Surface::ALL
            .iter()
            .map(|s| {
                let n = self.inner.issued.with_label_values(&[s.as_str()]).get();
                (s.as_str().to_owned(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Cognito calls of `operation`, by outcome.
    pub fn cognito_outcomes(&self, operation: &str) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for family in self.inner.cognito_calls.collect() {
            for metric in family.get_metric() {
                let labels: HashMap<&str, &str> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if labels.get("operation") == Some(&operation) {
                    let outcome = labels.get("outcome").copied().unwrap_or("unknown");
                    // Counter values are whole numbers.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let n = metric.get_counter().get_value() as u64;
                    *out.entry(outcome.to_owned()).or_default() += n;
                }
            }
        }
        out
    }

    /// Creates the real-time series of the configured APIs at 0.
    pub fn init_realtime(&self, apis: &[&str]) {
        let m = &self.inner;
        for &api in apis {
            m.appsync_realtime_connections.with_label_values(&[api]);
            m.appsync_realtime_subscriptions.with_label_values(&[api]);
            m.appsync_realtime_renewal_in_progress
                .with_label_values(&[api]);
            for outcome in REALTIME_UPGRADE_OUTCOMES {
                m.appsync_realtime_upgrades
                    .with_label_values(&[api, outcome]);
            }
            for outcome in REALTIME_START_OUTCOMES {
                m.appsync_realtime_starts.with_label_values(&[api, outcome]);
            }
            for outcome in REALTIME_RENEWAL_OUTCOMES {
                m.appsync_realtime_renewals
                    .with_label_values(&[api, outcome]);
            }
            for reason in REALTIME_CLOSE_REASONS {
                m.appsync_realtime_closes.with_label_values(&[api, reason]);
            }
        }
    }

    /// Counts a token validation that was answered from the verified-token cache.
    pub fn token_cached(&self, provider: &str) {
        match self
            .inner
            .hot
            .token_cached
            .iter()
            .find(|(p, _)| p == provider)
        {
            Some((_, c)) => c.inc(),
            None => self
                .inner
                .token_validations
                .with_label_values(&[provider, "cached"])
                .inc(),
        }
    }
}

impl Inner {
    /// Creates the series of known label values at 0 (`build_info` at 1).
    fn initialize(&self, providers: &[String]) {
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["hit", "miss", "joined", "negative"] {
            self.cache_lookups.with_label_values(&[result]);
        }
        for cause in ["idle", "capacity", "revoked"] {
            self.cache_evictions.with_label_values(&[cause]);
        }
        for trigger in ["ahead", "on_demand"] {
            for result in ["ok", "failed", "adopted"] {
                self.refreshes.with_label_values(&[trigger, result]);
            }
        }
        for op in ["GetId", "GetCredentialsForIdentity"] {
            for outcome in [
                "ok",
                "throttled",
                "not_authorized",
                "unavailable",
                "timeout",
            ] {
                self.cognito_calls.with_label_values(&[op, outcome]);
            }
            self.cognito_retries.with_label_values(&[op]);
            self.cognito_latency.with_label_values(&[op]);
        }
        for p in providers {
            let p = p.as_str();
            self.provider_keys_loaded.with_label_values(&[p]).set(0);
            for outcome in ["ok", "cached"] {
                self.token_validations.with_label_values(&[p, outcome]);
            }
            for result in ["ok", "error"] {
                self.jwks_fetches.with_label_values(&[p, result]);
            }
            self.jwks_rotations.with_label_values(&[p]);
            self.jwks_refetch_suppressed.with_label_values(&[p]);
        }
        self.issued
            .with_label_values(&[Surface::Container.as_str()]);
        self.request_latency
            .with_label_values(&[Surface::Container.as_str()]);
        for outcome in ["answered", "unavailable", "timeout"] {
            self.cognito_probes.with_label_values(&[outcome]);
        }
        for listener in LISTENERS {
            self.http_connections.with_label_values(&[listener]);
            self.http_connections_shed.with_label_values(&[listener]);
        }
        for listener in ["main", "imds"] {
            self.http_host_refusals.with_label_values(&[listener]);
        }
    }
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The shared tier's metrics (registered whether or not `[shared]` is configured, so the
/// series exist at 0 on every replica).
pub struct SharedMetrics {
    /// `credbroker_shared_lookups_total{kind, result}`: identity_id / credentials lookups in
    /// Redis: hit, miss, rejected (did not decrypt or verify), error (Redis failed), skipped
    /// (Redis marked unavailable).
    pub lookups: IntCounterVec,
    /// `credbroker_shared_rejected_total{reason}`: entries dropped instead of served.
    pub rejected: IntCounterVec,
    /// `credbroker_shared_errors_total{op, class}`: failed Redis operations.
    pub errors: IntCounterVec,
    /// `credbroker_shared_op_duration_seconds{op}`.
    pub op_latency: HistogramVec,
    /// `credbroker_shared_available`: 1 while Redis answers, 0 while it is skipped.
    pub available: IntGauge,
    /// `credbroker_shared_lock_total{result}`: exchange locks acquired or contended.
    pub locks: IntCounterVec,
    /// `credbroker_shared_lock_waits_total{outcome}`: waits for another replica's exchange.
    pub lock_waits: IntCounterVec,
    /// `credbroker_cognito_calls_avoided_total{operation, reason}`.
    pub calls_avoided: IntCounterVec,
    /// `credbroker_budget_requests_total{operation, priority, result}`.
    pub budget: IntCounterVec,
    /// `credbroker_budget_wait_seconds{operation}`: time spent waiting for a budget slot.
    pub budget_wait: HistogramVec,
}

fn shared_available(r: &Registry) -> IntGauge {
    let g = IntGauge::new(
        "shared_available",
        "1 while the shared tier (Redis) answers; 0 while this replica skips it and exchanges \
         on its own.",
    )
    .expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl SharedMetrics {
    fn register(r: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let m = Self {
            lookups: counter(
                "shared_lookups_total",
                "Shared-tier lookups by kind (identity_id, credentials) and result (hit, miss, \
                 rejected, error, skipped).",
                &["kind", "result"],
            ),
            rejected: counter(
                "shared_rejected_total",
                "Shared-tier entries dropped instead of used, by reason (decrypt, unknown_key, \
                 malformed, mismatch, bad_mac, wrong_type).",
                &["reason"],
            ),
            errors: counter(
                "shared_errors_total",
                "Failed shared-tier operations by operation and class (timeout, io, server, \
                 protocol).",
                &["op", "class"],
            ),
            op_latency: histogram(
                "shared_op_duration_seconds",
                "Shared-tier operation latency.",
                &["op"],
            ),
            available: shared_available(r),
            locks: counter(
                "shared_lock_total",
                "Cross-replica exchange locks: acquired (this replica exchanges) or contended \
                 (another one does).",
                &["result"],
            ),
            lock_waits: counter(
                "shared_lock_waits_total",
                "Waits for another replica's exchange by outcome: adopted (its set was used), \
                 acquired (it gave up; this replica exchanged), timeout (lock_wait passed).",
                &["outcome"],
            ),
            calls_avoided: counter(
                "cognito_calls_avoided_total",
                "Cognito calls not made thanks to the shared tier, by operation and reason \
                 (shared_id, shared_credentials).",
                &["operation", "reason"],
            ),
            budget: counter(
                "budget_requests_total",
                "Fleet Cognito budget decisions by operation, priority (on_demand, background) \
                 and result (granted, waited, overrun, local).",
                &["operation", "priority", "result"],
            ),
            budget_wait: histogram(
                "budget_wait_seconds",
                "Time Cognito calls waited for a fleet budget slot.",
                &["operation"],
            ),
        };
        m.initialize();
        m
    }

    fn initialize(&self) {
        for kind in ["identity_id", "credentials"] {
            for result in ["hit", "miss", "rejected", "error", "skipped"] {
                self.lookups.with_label_values(&[kind, result]);
            }
        }
        for reason in [
            "decrypt",
            "unknown_key",
            "malformed",
            "mismatch",
            "bad_mac",
            "wrong_type",
        ] {
            self.rejected.with_label_values(&[reason]);
        }
        for result in ["acquired", "contended"] {
            self.locks.with_label_values(&[result]);
        }
        for outcome in ["adopted", "acquired", "timeout"] {
            self.lock_waits.with_label_values(&[outcome]);
        }
        for (op, reason) in [
            ("GetId", "shared_id"),
            ("GetId", "shared_credentials"),
            ("GetCredentialsForIdentity", "shared_credentials"),
        ] {
            self.calls_avoided.with_label_values(&[op, reason]);
        }
        for op in ["GetId", "GetCredentialsForIdentity"] {
            for priority in ["on_demand", "background"] {
                for result in ["granted", "waited", "overrun", "local"] {
                    self.budget.with_label_values(&[op, priority, result]);
                }
            }
            self.budget_wait.with_label_values(&[op]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_series_start_at_zero_and_process_metrics_keep_standard_names() {
        let metrics = Metrics::new(&["auth0".to_owned()]);
        metrics.init_realtime(&["todos"]);
        let text = metrics.render();
        for series in [
            "credbroker_appsync_realtime_connections{api=\"todos\"} 0",
            "credbroker_appsync_realtime_closes_total{api=\"todos\",reason=\"going_away\"} 0",
            "credbroker_appsync_realtime_renewals_total{api=\"todos\",outcome=\"ok\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series}\n{text}");
        }
        for series in [
            "credbroker_cache_lookups_total{result=\"joined\"} 0",
            "credbroker_cache_evictions_total{cause=\"idle\"} 0",
            "credbroker_refreshes_total{result=\"failed\",trigger=\"ahead\"} 0",
            "credbroker_cognito_calls_total{operation=\"GetId\",outcome=\"throttled\"} 0",
            "credbroker_cognito_retries_total{operation=\"GetCredentialsForIdentity\"} 0",
            "credbroker_jwks_key_rotations_total{provider=\"auth0\"} 0",
            "credbroker_served_below_min_remaining_total 0",
            "credbroker_ready 0",
            "credbroker_provider_keys_loaded{provider=\"auth0\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series}\n{text}");
        }
        assert!(text.contains("credbroker_build_info{version=\""));
        if cfg!(target_os = "linux") {
            assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
            assert!(!text.contains("credbroker_process_"), "{text}");
        }
        // Every family has help text.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap_or_default();
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > name.len() + 12),
                "{name} has no help"
            );
        }
    }
}
