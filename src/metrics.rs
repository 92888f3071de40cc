//! Metrics: one registry of counters, gauges and histograms, handed to the services and
//! encoded for `GET /metrics` in the Prometheus text format or OpenMetrics.
//!
//! Label sets are bounded (methods, routes, status codes, configured upstreams and policies,
//! fixed outcome names): never a repository, digest or client. Counting on the request path is
//! an atomic add on a handle taken once; no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds (seconds) of the latency histograms' buckets.
const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// A latency histogram of atomic buckets: observing is three atomic adds, no lock.
#[derive(Clone, Debug, Default)]
pub struct Timing(Arc<TimingInner>);

#[derive(Debug, Default)]
struct TimingInner {
    /// One per bound, then one for what is beyond the last.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    nanos: AtomicU64,
}

impl Timing {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS.partition_point(|b| *b < secs);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Timing {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Timing {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self
            .0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        let sum = self.0.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The HTTP methods counted by name; any other is counted as `other`.
const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "other"];

/// The routes requests are counted under.
pub const ROUTES: [&str; 10] = [
    "base",
    "health",
    "ready",
    "manifest",
    "blob",
    "upload",
    "tags",
    "referrers",
    "signatures",
    "unknown",
];

/// Status codes with a handle of their own; others go through the family's lock.
const CODES: [u16; 23] = [
    200, 201, 202, 204, 206, 304, 307, 400, 401, 403, 404, 405, 408, 409, 413, 416, 429, 431, 500,
    502, 503, 504, 507,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// Requests: counted by method, route and status; timed by route; in flight.
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    handles: Box<[OnceLock<Counter>]>,
    durations: Vec<Timing>,
    in_flight: Gauge,
}

impl HttpMetrics {
    fn new(registry: &mut Registry) -> HttpMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "portcullis_http_requests",
            "Requests answered, by method, route and status code",
            requests.clone(),
        );
        let family = Family::<RouteLabels, Timing>::default();
        registry.register_with_unit(
            "portcullis_http_request_duration",
            "Time from a request's arrival to the end of its response, by route",
            Unit::Seconds,
            family.clone(),
        );
        let durations = ROUTES
            .iter()
            .map(|route| family.get_or_create(&RouteLabels { route }).clone())
            .collect();
        let in_flight = Gauge::default();
        registry.register(
            "portcullis_http_requests_in_flight",
            "Requests being answered now (responses still streaming included)",
            in_flight.clone(),
        );
        HttpMetrics {
            requests,
            handles: (0..METHODS.len() * ROUTES.len() * CODES.len())
                .map(|_| OnceLock::new())
                .collect(),
            durations,
            in_flight,
        }
    }

    /// A request arrived.
    pub fn started(&self) {
        self.in_flight.inc();
    }

    /// A request's response ended (or was dropped), `route` an index into [`ROUTES`].
    pub fn ended(&self, method: &http::Method, route: usize, code: u16, took: Duration) {
        self.in_flight.dec();
        let route = route.min(ROUTES.len() - 1);
        self.durations[route].observe(took);
        let m = METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let labels = || RequestLabels {
            method: METHODS[m],
            route: ROUTES[route],
            code,
        };
        match CODES.iter().position(|c| *c == code) {
            Some(c) => {
                let slot = (m * ROUTES.len() + route) * CODES.len() + c;
                self.handles[slot]
                    .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                    .inc();
            }
            None => {
                self.requests.get_or_create(&labels()).inc();
            }
        }
    }
}

/// What the cache counts: kinds of content and outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Blobs (layers, configs).
    Blob,
    /// Manifests by digest, and the content of manifests by tag.
    Manifest,
    /// Tag resolutions.
    Tag,
}

const KINDS: [&str; 3] = ["blob", "manifest", "tag"];
const OUTCOMES: [&str; 4] = ["hit", "miss", "stale", "revalidated"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

/// The cache: hits, misses and stale serves per kind, bytes served, fills, evictions, space.
pub struct CacheMetrics {
    outcomes: Vec<Counter>,
    served: [Counter; 2],
    /// Blob fills from an upstream in progress.
    pub fills: Gauge,
    /// Blobs evicted.
    pub evictions: Counter,
    /// Bytes evicted.
    pub evicted_bytes: Counter,
    stored: Family<TierLabels, Gauge>,
    free: Family<TierLabels, Gauge>,
}

impl CacheMetrics {
    fn new(registry: &mut Registry) -> CacheMetrics {
        let family = Family::<CacheLabels, Counter>::default();
        registry.register(
            "portcullis_cache_requests",
            "Content asked of the cache, by kind (blob, manifest, tag) and outcome (hit, miss, stale: served because the upstream failed, revalidated: a tag confirmed upstream)",
            family.clone(),
        );
        let outcomes = KINDS
            .iter()
            .flat_map(|kind| OUTCOMES.iter().map(move |outcome| (kind, outcome)))
            .map(|(kind, outcome)| family.get_or_create(&CacheLabels { kind, outcome }).clone())
            .collect();
        let bytes = Family::<SourceLabels, Counter>::default();
        registry.register_with_unit(
            "portcullis_served",
            "Bytes of blobs and manifests sent to clients, by where they came from (cache, upstream)",
            Unit::Bytes,
            bytes.clone(),
        );
        let served = ["cache", "upstream"]
            .map(|source| bytes.get_or_create(&SourceLabels { source }).clone());
        let fills = Gauge::default();
        registry.register(
            "portcullis_cache_fills_in_progress",
            "Blobs being fetched from an upstream into the cache now",
            fills.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "portcullis_cache_evictions",
            "Cached blobs evicted to stay within max_size or min_free",
            evictions.clone(),
        );
        let evicted_bytes = Counter::default();
        registry.register_with_unit(
            "portcullis_cache_evicted",
            "Bytes of cached blobs evicted",
            Unit::Bytes,
            evicted_bytes.clone(),
        );
        let stored = Family::<TierLabels, Gauge>::default();
        registry.register_with_unit(
            "portcullis_storage_stored",
            "Bytes of blobs held, by storage tier",
            Unit::Bytes,
            stored.clone(),
        );
        let free = Family::<TierLabels, Gauge>::default();
        registry.register_with_unit(
            "portcullis_storage_free",
            "Free bytes where a storage tier writes, when it can tell",
            Unit::Bytes,
            free.clone(),
        );
        CacheMetrics {
            outcomes,
            served,
            fills,
            evictions,
            evicted_bytes,
            stored,
            free,
        }
    }

    /// Counts one answer of the cache.
    pub fn outcome(&self, kind: Kind, status: crate::cache::CacheStatus) {
        use crate::cache::CacheStatus;
        let o = match status {
            CacheStatus::Hit => 0,
            CacheStatus::Miss => 1,
            CacheStatus::Stale => 2,
            CacheStatus::Revalidated => 3,
        };
        self.outcomes[kind as usize * OUTCOMES.len() + o].inc();
    }

    /// Counts bytes sent to a client, from the cache or straight from an upstream.
    pub fn served(&self, from_upstream: bool, bytes: u64) {
        self.served[usize::from(from_upstream)].inc_by(bytes);
    }

    /// Sets a tier's stored and free bytes (at each scrape).
    pub fn space(&self, tier: &'static str, stored: u64, free: Option<u64>) {
        let labels = TierLabels { tier };
        self.stored.get_or_create(&labels).set(gauge_value(stored));
        if let Some(free) = free {
            self.free.get_or_create(&labels).set(gauge_value(free));
        }
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// How a request to an upstream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// A 2xx answer.
    Ok,
    /// The upstream does not have it.
    NotFound,
    /// A transport failure or an error answer.
    Error,
    /// No answer in time.
    Timeout,
    /// 429.
    RateLimited,
    /// The upstream refused the proxy (401 after signing in, 403).
    Denied,
    /// Content that did not match its digest.
    DigestMismatch,
}

const UPSTREAM_OUTCOMES: [&str; 7] = [
    "ok",
    "not_found",
    "error",
    "timeout",
    "rate_limited",
    "denied",
    "digest_mismatch",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamNameLabels {
    upstream: String,
}

/// The families of upstream metrics; each upstream takes its handles with [`Metrics::upstream`].
struct UpstreamFamilies {
    requests: Family<UpstreamLabels, Counter>,
    durations: Family<UpstreamNameLabels, Timing>,
    tokens: Family<UpstreamNameLabels, Counter>,
}

/// One upstream's handles: requests by outcome, their latency, token fetches.
#[derive(Clone, Debug, Default)]
pub struct UpstreamMetrics {
    outcomes: Vec<Counter>,
    /// Time to the answer's headers, per request sent.
    pub latency: Timing,
    /// Tokens fetched from the upstream's auth realm.
    pub tokens: Counter,
}

impl UpstreamMetrics {
    /// Counts one request's outcome.
    pub fn outcome(&self, outcome: UpstreamOutcome) {
        if let Some(c) = self.outcomes.get(outcome as usize) {
            c.inc();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Attachments: found per kind, images with none, fetches that failed.
pub struct AttachmentMetrics {
    kinds: [Counter; 4],
    /// Look-ups that found no attachment for an image.
    pub missing: Counter,
    /// Attachment manifests, blobs or referrer lists that could not be fetched.
    pub fetch_errors: Counter,
}

/// The kinds attachments are counted under, in the order of [`crate::attachments::Kind`].
const ATTACHMENT_KINDS: [&str; 4] = ["signature", "attestation", "sbom", "referrer"];

impl AttachmentMetrics {
    fn new(registry: &mut Registry) -> AttachmentMetrics {
        let resolved = Family::<KindLabels, Counter>::default();
        registry.register(
            "portcullis_attachments_resolved",
            "Attachments found next to images, by kind",
            resolved.clone(),
        );
        let kinds =
            ATTACHMENT_KINDS.map(|kind| resolved.get_or_create(&KindLabels { kind }).clone());
        let missing = Counter::default();
        registry.register(
            "portcullis_attachments_missing",
            "Attachment look-ups that found none for an image",
            missing.clone(),
        );
        let fetch_errors = Counter::default();
        registry.register(
            "portcullis_attachment_fetch_errors",
            "Attachment manifests, blobs or referrer lists that could not be fetched",
            fetch_errors.clone(),
        );
        AttachmentMetrics {
            kinds,
            missing,
            fetch_errors,
        }
    }

    /// Counts one attachment found, `kind` a [`crate::attachments::Kind`] as a number.
    pub fn resolved(&self, kind: usize) {
        self.kinds[kind.min(self.kinds.len() - 1)].inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvaluationLabels {
    policy: String,
    decision: &'static str,
    mode: &'static str,
    cached: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    policy: String,
    kind: &'static str,
}

struct PolicyFamilies {
    evaluations: Family<EvaluationLabels, Counter>,
    durations: Family<PolicyLabels, Timing>,
    failures: Family<FailureLabels, Counter>,
}

/// How a policy module can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It trapped (or failed otherwise).
    Trap,
    /// It ran out of its CPU budget.
    Timeout,
    /// It went over its memory cap.
    Memory,
}

const FAILURES: [&str; 3] = ["trap", "timeout", "memory"];

/// One policy's handles, taken when the policy is loaded.
#[derive(Clone, Debug, Default)]
pub struct PolicyMetrics {
    /// By decision (admit, reject), then mode (enforce, warn), then cached (false, true).
    evaluations: Vec<Counter>,
    /// Time of each evaluation that ran the module.
    pub latency: Timing,
    failures: Vec<Counter>,
}

impl PolicyMetrics {
    /// Counts one decision.
    pub fn decided(&self, rejected: bool, warn: bool, cached: bool) {
        let i = (usize::from(rejected) * 2 + usize::from(warn)) * 2 + usize::from(cached);
        if let Some(c) = self.evaluations.get(i) {
            c.inc();
        }
    }

    /// Counts one failure of the module.
    pub fn failed(&self, kind: Failure) {
        if let Some(c) = self.failures.get(kind as usize) {
            c.inc();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    result: &'static str,
    method: &'static str,
}

/// How a verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMethod {
    /// Signatures checked against public keys.
    Key,
    /// Signatures checked against keyless identities (Fulcio certificates).
    Keyless,
    /// Sigstore bundles (cosign v3) among what was checked.
    Bundle,
    /// Attestations asked for.
    Attestation,
}

const METHODS_OF_VERIFICATION: [&str; 4] = ["key", "keyless", "bundle", "attestation"];

/// Verification verdicts by result and method.
pub struct VerifyMetrics {
    verdicts: Vec<Counter>,
}

impl VerifyMetrics {
    fn new(registry: &mut Registry) -> VerifyMetrics {
        let family = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "portcullis_verifications",
            "Signature and attestation verdicts, by result (verified, failed) and method (key, keyless, bundle, attestation)",
            family.clone(),
        );
        let verdicts = ["verified", "failed"]
            .iter()
            .flat_map(|result| {
                METHODS_OF_VERIFICATION
                    .iter()
                    .map(move |method| (result, method))
            })
            .map(|(result, method)| {
                family
                    .get_or_create(&VerdictLabels { result, method })
                    .clone()
            })
            .collect();
        VerifyMetrics { verdicts }
    }

    /// Counts one verdict.
    pub fn verdict(&self, verified: bool, method: VerifyMethod) {
        let i = usize::from(!verified) * METHODS_OF_VERIFICATION.len() + method as usize;
        if let Some(c) = self.verdicts.get(i) {
            c.inc();
        }
    }
}

/// Sign-ins: failed ones, and requests refused because a client failed too often.
pub struct AuthMetrics {
    /// Sign-ins refused (unknown user or wrong password).
    pub failures: Counter,
    /// Requests refused with 429 after too many failures.
    pub rate_limited: Counter,
}

type Sampler = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Requests.
    pub http: HttpMetrics,
    /// The cache.
    pub cache: CacheMetrics,
    upstreams: UpstreamFamilies,
    /// Attachments.
    pub attachments: AttachmentMetrics,
    policies: PolicyFamilies,
    /// Verification.
    pub verify: VerifyMetrics,
    /// Sign-ins.
    pub auth: AuthMetrics,
    resident: Gauge,
    descriptors: Gauge,
    samplers: Mutex<Vec<Sampler>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The `Content-Type` of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    /// Registers every metric, at zero.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let http = HttpMetrics::new(&mut registry);
        let cache = CacheMetrics::new(&mut registry);
        let upstreams = UpstreamFamilies {
            requests: Family::default(),
            durations: Family::default(),
            tokens: Family::default(),
        };
        registry.register(
            "portcullis_upstream_requests",
            "Requests sent to upstreams, by upstream and outcome (ok, not_found, error, timeout, rate_limited, denied, digest_mismatch)",
            upstreams.requests.clone(),
        );
        registry.register_with_unit(
            "portcullis_upstream_request_duration",
            "Time until an upstream's answer began, by upstream",
            Unit::Seconds,
            upstreams.durations.clone(),
        );
        registry.register(
            "portcullis_upstream_token_fetches",
            "Bearer tokens fetched from upstreams' auth realms",
            upstreams.tokens.clone(),
        );
        let attachments = AttachmentMetrics::new(&mut registry);
        let policies = PolicyFamilies {
            evaluations: Family::default(),
            durations: Family::default(),
            failures: Family::default(),
        };
        registry.register(
            "portcullis_policy_evaluations",
            "Policy decisions, by policy, decision (admit or reject, after the verification a verify decision asks for), mode (enforce, warn) and whether the decision came from the cache",
            policies.evaluations.clone(),
        );
        registry.register_with_unit(
            "portcullis_policy_evaluation_duration",
            "Time of policy evaluations that ran their module, by policy",
            Unit::Seconds,
            policies.durations.clone(),
        );
        registry.register(
            "portcullis_policy_failures",
            "Policy modules that failed (trap, timeout: out of CPU budget, memory: over their cap), by policy",
            policies.failures.clone(),
        );
        let verify = VerifyMetrics::new(&mut registry);
        let auth = AuthMetrics {
            failures: Counter::default(),
            rate_limited: Counter::default(),
        };
        registry.register(
            "portcullis_auth_failures",
            "Sign-ins refused: unknown user or wrong password",
            auth.failures.clone(),
        );
        registry.register(
            "portcullis_auth_rate_limited",
            "Requests refused with 429 because their client failed to sign in too often",
            auth.rate_limited.clone(),
        );
        registry.register(
            "portcullis_build",
            "The running version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let resident = Gauge::default();
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the process",
            Unit::Bytes,
            resident.clone(),
        );
        let descriptors = Gauge::default();
        registry.register(
            "process_open_fds",
            "Open file descriptors of the process",
            descriptors.clone(),
        );
        Arc::new(Metrics {
            registry,
            http,
            cache,
            upstreams,
            attachments,
            policies,
            verify,
            auth,
            resident,
            descriptors,
            samplers: Mutex::default(),
        })
    }

    /// The handles of one upstream, by its configured name.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let upstream = || name.to_string();
        UpstreamMetrics {
            outcomes: UPSTREAM_OUTCOMES
                .iter()
                .map(|outcome| {
                    let labels = UpstreamLabels {
                        upstream: upstream(),
                        outcome,
                    };
                    self.upstreams.requests.get_or_create(&labels).clone()
                })
                .collect(),
            latency: self
                .upstreams
                .durations
                .get_or_create(&UpstreamNameLabels {
                    upstream: upstream(),
                })
                .clone(),
            tokens: self
                .upstreams
                .tokens
                .get_or_create(&UpstreamNameLabels {
                    upstream: upstream(),
                })
                .clone(),
        }
    }

    /// The handles of one policy, by its configured name.
    pub fn policy(&self, name: &str) -> PolicyMetrics {
        let policy = || name.to_string();
        let mut evaluations = Vec::new();
        for decision in ["admit", "reject"] {
            for mode in ["enforce", "warn"] {
                for cached in ["false", "true"] {
                    let labels = EvaluationLabels {
                        policy: policy(),
                        decision,
                        mode,
                        cached,
                    };
                    evaluations.push(self.policies.evaluations.get_or_create(&labels).clone());
                }
            }
        }
        PolicyMetrics {
            evaluations,
            latency: self
                .policies
                .durations
                .get_or_create(&PolicyLabels { policy: policy() })
                .clone(),
            failures: FAILURES
                .iter()
                .map(|kind| {
                    let labels = FailureLabels {
                        policy: policy(),
                        kind,
                    };
                    self.policies.failures.get_or_create(&labels).clone()
                })
                .collect(),
        }
    }

    /// Adds work done before each scrape (reading sizes that are not counted as they change).
    pub fn on_scrape(&self, sampler: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.samplers
            .lock()
            .expect("samplers lock")
            .push(Box::new(sampler));
    }

    /// Encodes every metric: OpenMetrics when `openmetrics`, else the Prometheus text format.
    pub fn encode(&self, openmetrics: bool) -> String {
        self.sample();
        let mut out = String::with_capacity(16 << 10);
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        // writing to a String does not fail
        encoded.expect("encoding metrics into a string");
        out
    }

    fn sample(&self) {
        for sampler in self.samplers.lock().expect("samplers lock").iter() {
            sampler(self);
        }
        if let Some(bytes) = resident_bytes() {
            self.resident.set(gauge_value(bytes));
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.descriptors.set(gauge_value(fds.count() as u64));
        }
    }
}

/// Resident memory from `/proc/self/statm` (in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The content type to answer a scrape with, from its `Accept` header.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_fall_in_their_buckets_and_sum_up() {
        let t = Timing::default();
        t.observe(Duration::from_micros(50));
        t.observe(Duration::from_millis(3));
        t.observe(Duration::from_secs(100));
        assert_eq!(t.count(), 3);
        let mut registry = Registry::default();
        registry.register_with_unit("t", "A timing", Unit::Seconds, t);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("t_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"60\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_count 3\n"), "{out}");
        assert!(out.contains("t_seconds_sum 100.00305"), "{out}");
    }

    #[test]
    fn requests_are_counted_by_method_route_and_code() {
        let m = Metrics::new();
        m.http.started();
        m.http
            .ended(&http::Method::GET, 3, 200, Duration::from_millis(1));
        m.http.started();
        m.http
            .ended(&http::Method::GET, 3, 200, Duration::from_millis(1));
        m.http.started();
        m.http.ended(
            &http::Method::from_bytes(b"BREW").unwrap(),
            9,
            418,
            Duration::ZERO,
        );
        let text = m.encode(false);
        assert!(text.contains("portcullis_http_requests_total{method=\"GET\",route=\"manifest\",code=\"200\"} 2\n"), "{text}");
        assert!(text.contains("portcullis_http_requests_total{method=\"other\",route=\"unknown\",code=\"418\"} 1\n"), "{text}");
        assert!(
            text.contains("portcullis_http_requests_in_flight 0\n"),
            "{text}"
        );
        assert!(m.encode(true).ends_with("# EOF\n"));
    }
}
