//! `GET /metrics`: Prometheus text, from the official client (prometheus-client).
//!
//! Counted in this process: requests by route, method and status, and their durations; claims,
//! worker outcomes by code and job durations of a supervisor running in it. Read from the
//! database at each scrape, so every process reports the same: jobs by state, and the age of
//! the oldest queued job per tenant. Tenant names appear only here, which is why `/metrics` is
//! for operators (see [`crate::api`]).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    claims: Counter,
    cache_hits: Counter,
    outcomes: Family<OutcomeLabels, Counter>,
    job_seconds: Histogram,
    jobs: Family<StateLabels, Gauge>,
    queue_age: Family<TenantLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// One scrape at a time sets the database gauges.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("airlock");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request durations by route (until the response's headers)",
            request_seconds.clone(),
        );
        let claims = Counter::default();
        registry.register("claims", "Jobs claimed by this process", claims.clone());
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Requests authenticated from serve's key cache (no database round trip for the key)",
            cache_hits.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "worker_outcomes",
            "Attempts by outcome: succeeded, rejected, or the failure code",
            outcomes.clone(),
        );
        let job_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register(
            "job_duration_seconds",
            "From claim to recorded result, per attempt",
            job_seconds.clone(),
        );
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register("jobs", "Jobs by state (from the database)", jobs.clone());
        let queue_age = Family::<TenantLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "queue_age_seconds",
            "Age of each tenant's oldest queued job (from the database)",
            queue_age.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            claims,
            cache_hits,
            outcomes,
            job_seconds,
            jobs,
            queue_age,
            scrape: Mutex::new(()),
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn claimed(&self) {
        self.claims.inc();
    }

    /// An attempt ended: `outcome` is succeeded, rejected, or a failure code.
    pub fn outcome(&self, outcome: &str, took: Duration) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
        self.job_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition, with the database gauges as of `counts` and `oldest` (tenant,
    /// oldest queued job's creation, ms) at `now` (ms).
    pub fn render(
        &self,
        counts: &std::collections::BTreeMap<String, i64>,
        oldest: &[(String, i64)],
        now: i64,
    ) -> String {
        let _one = self.scrape.lock();
        self.jobs.clear();
        for state in crate::jobs::JobState::ALL {
            self.jobs
                .get_or_create(&StateLabels {
                    state: state.as_str().to_string(),
                })
                .set(counts.get(state.as_str()).copied().unwrap_or(0));
        }
        self.queue_age.clear();
        for (tenant, created) in oldest {
            self.queue_age
                .get_or_create(&TenantLabels {
                    tenant: tenant.clone(),
                })
                .set((now - created).max(0) as f64 / 1000.0);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
