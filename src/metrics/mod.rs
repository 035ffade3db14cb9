//! Prometheus metrics: what the daemon counts as it works, and what it reads from the database
//! at each scrape. Served by [`server`] on `metrics.listen`.
//!
//! # Two sources
//!
//! * **Events**, counted in memory by one method each, called where the event happens: API
//!   requests with their latency ([`Observer::request`](crate::api::Observer::request), from the client's one send path),
//!   retries, rate limits and Retry-After waits, bytes moved, token-limit refusals,
//!   reconciliations, duplicates cancelled, and the durations of jobs and batches. They start
//!   from zero in each process, as Prometheus counters do (`rate()` and `increase()` handle the
//!   reset).
//! * **Rows**, read from the database when scraped ([`crate::store::figures`]): jobs by state,
//!   batches by status, state transitions (counted by a trigger), cancels by reason, the oldest
//!   unfinished job, the last answer about a batch, stuck batches, tokens and estimated cost per
//!   model. They are right after a restart and cannot drift from what `status` shows.
//!
//! No label holds a job or batch id: labels are operations, status classes, states, statuses,
//! reasons and models (the models of the request files).
//!
//! # Models
//!
//! Model names come from users' files, so the `model` label is bounded ([`ModelLabels`]): at
//! most `metrics.max_models` models get series of their own, and the others are counted
//! together as `model="other"`. The set is chosen for the life of the process: at start, the
//! models with the most tokens in the database; then, while there is room, the models as they
//! first appear. A model never moves between its own series and `other` while the daemon runs,
//! as `rate()` would read the move as a counter reset. A restart may choose again (its event
//! counters start from zero anyway); validation keeps every name short
//! ([`crate::batchfile::MAX_MODEL_CHARS`]).
//!
//! # Why prometheus-client
//!
//! It is the Prometheus project's own Rust client: typed label sets checked at compile time, a
//! [`Registry`] that is a value handed to whoever needs it (no global recorder), real histogram
//! buckets, and four small dependencies. The alternative, `metrics` with
//! `metrics-exporter-prometheus`, brings about thirty crates and a process-wide recorder.
//! prometheus-client writes only the OpenMetrics text format, which Prometheus asks for and
//! reads; `promtool check metrics` and other readers of the classic text format (0.0.4) reject
//! its counters (their `# HELP` and `# TYPE` name the family without `_total`), so a scraper that
//! does not ask for OpenMetrics gets the same figures in the classic format
//! ([`to_classic_text`]).

pub mod server;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use strum::IntoEnumIterator;

use crate::api::{ApiError, Batch, Observer, Operation};
use crate::clock::{self, Timestamp};
use crate::daemon::gate::Closed;
use crate::model::{BatchStatus, JobState};
use crate::store::figures::Figures;
use crate::store::usage::ModelCost;

/// Seconds from a tenth of a second to a minute: one API request.
const REQUEST_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Seconds from a second to two days: a job, a batch, or a batch's time in one status.
const LIFE_BUCKETS: [f64; 15] = [
    1.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1_800.0, 3_600.0, 7_200.0, 14_400.0, 28_800.0, 43_200.0,
    86_400.0, 129_600.0, 172_800.0,
];
/// Requests in one batch, up to Azure's 100,000.
const SIZE_BUCKETS: [f64; 9] = [
    1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

fn life_histogram() -> Histogram {
    Histogram::new(LIFE_BUCKETS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    operation: &'static str,
    status_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReconcileLabels {
    request: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProviderStateLabel {
    provider: String,
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransitionLabels {
    from: String,
    to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The label of the models that have no series of their own.
pub const OTHER_MODEL: &str = "other";

/// Which models get series of their own: at most `max`, chosen for the life of the process
/// (see the module's documentation).
#[derive(Debug)]
pub struct ModelLabels {
    max: usize,
    own: Mutex<HashSet<String>>,
}

impl ModelLabels {
    /// The first `max` of `models` get series of their own, then models as they appear.
    pub fn new(max: usize, models: impl IntoIterator<Item = String>) -> ModelLabels {
        ModelLabels {
            max,
            own: Mutex::new(models.into_iter().take(max).collect()),
        }
    }

    /// As [`ModelLabels::new`], the models with the most tokens (input and output) in `usage`
    /// first; ties go by name, so the same database gives the same set.
    pub fn busiest_first(max: usize, usage: &[ModelCost]) -> ModelLabels {
        let mut ranked: Vec<&ModelCost> = usage.iter().collect();
        ranked.sort_by(|a, b| {
            let tokens = |m: &ModelCost| m.input_tokens.saturating_add(m.output_tokens);
            tokens(b)
                .cmp(&tokens(a))
                .then_with(|| a.model.cmp(&b.model))
        });
        ModelLabels::new(max, ranked.into_iter().map(|m| m.model.clone()))
    }

    /// The label `model` is counted under: its own while it has a series or there is room for
    /// one, else [`OTHER_MODEL`].
    fn label(&self, model: &str) -> String {
        let mut own = self.own.lock().expect("model labels lock");
        if own.contains(model) {
            return model.to_owned();
        }
        if own.len() < self.max {
            own.insert(model.to_owned());
            return model.to_owned();
        }
        OTHER_MODEL.to_owned()
    }
}

/// Which request a reconciliation checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    Upload,
    Create,
}

/// The daemon's metrics. Cloning is cheap; clones count into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// A registry for a client whose metrics are never served: every model counts as `other`.
impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(ModelLabels::new(0, []))
    }
}

struct Inner {
    registry: Registry,
    models: ModelLabels,
    api_requests: Family<ApiLabels, Counter>,
    api_duration: Histograms<OperationLabel>,
    api_retries: Family<OperationLabel, Counter>,
    api_rate_limits: Family<OperationLabel, Counter>,
    api_key_refusals: Family<OperationLabel, Counter>,
    api_retry_after: Family<OperationLabel, FloatCounter>,
    uploaded: Counter,
    downloaded: Counter,
    token_limit_refusals: Family<ModelLabel, Counter>,
    reconciliations: Family<ReconcileLabels, Counter>,
    duplicates_cancelled: Counter,
    jobs_taken_over: Counter,
    writes_fenced: Counter,
    leader: Gauge,
    rounds: Family<KindLabel, Counter>,
    job_duration: Histograms<StateLabel>,
    batch_duration: Histograms<StatusLabel>,
    status_duration: Histograms<StatusLabel>,
    batch_requests: Histograms<StatusLabel>,
    requests: Family<OutcomeLabel, Counter>,
    remote_files_deleted: Family<OutcomeLabel, Counter>,
    notifications: Family<OutcomeLabel, Counter>,
    pruned: Family<KindLabel, Counter>,
    reloads: Family<OutcomeLabel, Counter>,
    api_last_success: FloatGauge,
    gate_closed: Family<CauseLabel, Gauge>,
    /// Requests gone unanswered in a row, since when, and the last one's error; `None` once
    /// one is answered (`/readyz` reads it).
    unanswered: Mutex<Option<Unanswered>>,
    /// When the API last answered about a batch, in milliseconds since the epoch (0: never).
    answered_ms: std::sync::atomic::AtomicI64,
}

/// API requests unanswered in a row.
#[derive(Debug, Clone)]
struct Unanswered {
    since: Timestamp,
    error: String,
    requests: u32,
}

/// How many requests in a row must go unanswered before `/readyz` says the service does not
/// answer: one lost connection is a blip; two in a row (the start-up check's two, or a request
/// and the next one) is an outage.
pub const UNANSWERED_BEFORE_NOT_READY: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CauseLabel {
    cause: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The client tells the metrics of every request it makes.
impl Observer for Metrics {
    fn request(
        &self,
        op: Operation,
        status: Option<u16>,
        latency: Duration,
        err: Option<&ApiError>,
    ) {
        let operation = operation_label(op);
        let status_class = match status {
            Some(100..=199) => "1xx",
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "none",
        };
        let m = &self.inner;
        {
            let mut unanswered = m.unanswered.lock().expect("metrics lock");
            match (status, err) {
                (Some(_), _) => *unanswered = None,
                (None, Some(err)) => {
                    let (since, requests) = unanswered
                        .as_ref()
                        .map_or_else(|| (Timestamp::now(), 0), |u| (u.since, u.requests));
                    *unanswered = Some(Unanswered {
                        since,
                        error: err.to_string(),
                        requests: requests.saturating_add(1),
                    });
                }
                (None, None) => {}
            }
        }
        m.api_requests
            .get_or_create(&ApiLabels {
                operation,
                status_class,
            })
            .inc();
        if status_class == "2xx" {
            let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
            m.api_last_success.set(now);
        }
        let op_label = OperationLabel { operation };
        m.api_duration
            .get_or_create(&op_label)
            .observe(latency.as_secs_f64());
        if let Some(err) = err {
            if matches!(err, ApiError::RateLimited { .. }) {
                m.api_rate_limits.get_or_create(&op_label).inc();
            }
            if err.is_auth() {
                m.api_key_refusals.get_or_create(&op_label).inc();
            }
            if let Some(wait) = err.retry_after() {
                m.api_retry_after
                    .get_or_create(&op_label)
                    .inc_by(wait.as_secs_f64());
            }
        }
    }

    fn retry(&self, op: Operation) {
        let operation = operation_label(op);
        self.inner
            .api_retries
            .get_or_create(&OperationLabel { operation })
            .inc();
    }

    fn uploaded(&self, bytes: u64) {
        self.inner.uploaded.inc_by(bytes);
    }

    fn downloaded(&self, bytes: u64) {
        self.inner.downloaded.inc_by(bytes);
    }
}

impl Metrics {
    /// A registry with every metric the daemon counts, `models` labelled as given.
    pub fn new(models: ModelLabels) -> Metrics {
        let mut registry = Registry::with_prefix("batchwatch");
        let api_requests = Family::<ApiLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests answered or failed, by operation and HTTP status class (none: no answer)",
            api_requests.clone(),
        );
        let api_duration: Histograms<OperationLabel> =
            Family::new_with_constructor(request_histogram);
        registry.register(
            "api_request_duration_seconds",
            "Time from sending an API request to the head of its answer",
            api_duration.clone(),
        );
        let api_retries = Family::<OperationLabel, Counter>::default();
        registry.register(
            "api_retries",
            "API requests repeated by the client after a transient failure",
            api_retries.clone(),
        );
        let api_rate_limits = Family::<OperationLabel, Counter>::default();
        registry.register(
            "api_rate_limits",
            "API requests refused with 429 rate_limit_exceeded (quota refusals excluded)",
            api_rate_limits.clone(),
        );
        let api_key_refusals = Family::<OperationLabel, Counter>::default();
        registry.register(
            "api_key_refusals",
            "API requests refused for the key (401, 403): all API work stops until it works again",
            api_key_refusals.clone(),
        );
        let api_retry_after = Family::<OperationLabel, FloatCounter>::default();
        registry.register(
            "api_retry_after_seconds",
            "Seconds the API asked to wait before the next request (Retry-After, retry-after-ms)",
            api_retry_after.clone(),
        );
        // From zero for every operation, so the first retry, 429 or refusal shows as an
        // increase (a series that appears at 1 shows none).
        for op in Operation::ALL {
            let labels = OperationLabel {
                operation: operation_label(op),
            };
            for family in [&api_retries, &api_rate_limits, &api_key_refusals] {
                family.get_or_create(&labels).inc_by(0);
            }
            api_retry_after.get_or_create(&labels).inc_by(0.0);
        }
        let uploaded = Counter::default();
        registry.register(
            "api_uploaded_bytes",
            "Bytes of batch input files uploaded",
            uploaded.clone(),
        );
        let downloaded = Counter::default();
        registry.register(
            "api_downloaded_bytes",
            "Bytes of output and error files downloaded",
            downloaded.clone(),
        );
        let token_limit_refusals = Family::<ModelLabel, Counter>::default();
        registry.register(
            "token_limit_refusals",
            "Batches refused for the enqueued-token limit (token_limit_exceeded), by model",
            token_limit_refusals.clone(),
        );
        let reconciliations = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciliations",
            "Uploads and creates of unknown outcome checked against the API, by what was found",
            reconciliations.clone(),
        );
        let duplicates_cancelled = Counter::default();
        registry.register(
            "duplicates_cancelled",
            "Late duplicate batches of re-sent creates found and cancelled",
            duplicates_cancelled.clone(),
        );
        let jobs_taken_over = Counter::default();
        registry.register(
            "jobs_taken_over",
            "Unfinished jobs this instance took over from instances whose lease ran out (several daemons on PostgreSQL)",
            jobs_taken_over.clone(),
        );
        let writes_fenced = Counter::default();
        registry.register(
            "writes_fenced",
            "Tasks whose write the database refused: this instance's lease or term as leader had run out, or another instance holds the job",
            writes_fenced.clone(),
        );
        let rounds = Family::<KindLabel, Counter>::default();
        registry.register(
            "loop_rounds",
            "Rounds of the main loop: full (the database asked for due work) or quiet (nothing changed and nothing came due: incoming/ scanned, nothing else)",
            rounds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance leads (tracks the batches and keeps house for every daemon on its database), else 0",
            leader.clone(),
        );
        let job_duration: Histograms<StateLabel> = Family::new_with_constructor(life_histogram);
        registry.register(
            "job_duration_seconds",
            "Time from a file's claim to its job's end, by final state",
            job_duration.clone(),
        );
        let batch_duration: Histograms<StatusLabel> = Family::new_with_constructor(life_histogram);
        registry.register(
            "batch_duration_seconds",
            "Time from a batch's creation to its end, by final status (the API's timestamps)",
            batch_duration.clone(),
        );
        let status_duration: Histograms<StatusLabel> = Family::new_with_constructor(life_histogram);
        registry.register(
            "batch_status_duration_seconds",
            "Time ended batches spent in each status (the API's timestamps)",
            status_duration.clone(),
        );
        let batch_requests: Histograms<StatusLabel> = Family::new_with_constructor(size_histogram);
        registry.register(
            "batch_requests",
            "Requests per ended batch, by final status",
            batch_requests.clone(),
        );
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests of ended batches, by outcome (completed, failed)",
            requests.clone(),
        );
        let remote_files_deleted = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "remote_files_deleted",
            "Deletions of files on the service, by outcome (deleted, gone: already gone, failed: tried again later)",
            remote_files_deleted.clone(),
        );
        let notifications = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "notifications",
            "Tries at delivering a notification ([[notify]]), by outcome (delivered, pending: failed, tried again later, abandoned: given up after notify.retry_for)",
            notifications.clone(),
        );
        for outcome in ["delivered", "pending", "abandoned"] {
            notifications
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(0);
        }
        let pruned = Family::<KindLabel, Counter>::default();
        registry.register(
            "pruned",
            "What retention removed, by kind (done_files, failed_files, results_dirs, jobs: database rows)",
            pruned.clone(),
        );
        let reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP), by outcome (applied, refused: the file was invalid)",
            reloads.clone(),
        );
        let api_last_success = FloatGauge::default();
        registry.register(
            "api_last_success_timestamp_seconds",
            "Unix time of the last API request of any kind answered with success (2xx); 0 until the first",
            api_last_success.clone(),
        );
        let gate_closed = Family::<CauseLabel, Gauge>::default();
        registry.register(
            "gate_closed",
            "1 while all API work is stopped, by cause (key_refused: 401 or 403; route_missing: a 404 on a collection route of the service, api.base_url is wrong)",
            gate_closed.clone(),
        );
        for cause in Closed::iter() {
            let cause = cause.to_string();
            gate_closed.get_or_create(&CauseLabel { cause }).set(0);
        }
        for outcome in ["deleted", "gone", "failed"] {
            remote_files_deleted
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(0);
        }
        for outcome in ["applied", "refused"] {
            reloads.get_or_create(&OutcomeLabel { outcome }).inc_by(0);
        }
        for outcome in ["completed", "failed"] {
            requests.get_or_create(&OutcomeLabel { outcome }).inc_by(0);
        }
        for request in ["upload", "create"] {
            for outcome in ["found", "not_found", "error"] {
                reconciliations
                    .get_or_create(&ReconcileLabels { request, outcome })
                    .inc_by(0);
            }
        }
        for (kind, _) in crate::daemon::housekeeping::retention::Pruned::default().by_kind() {
            pruned.get_or_create(&KindLabel { kind }).inc_by(0);
        }
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the version label is this build's",
            build,
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                models,
                api_requests,
                api_duration,
                api_retries,
                api_rate_limits,
                api_key_refusals,
                api_retry_after,
                uploaded,
                downloaded,
                token_limit_refusals,
                reconciliations,
                duplicates_cancelled,
                jobs_taken_over,
                writes_fenced,
                leader,
                rounds,
                job_duration,
                batch_duration,
                status_duration,
                batch_requests,
                requests,
                remote_files_deleted,
                notifications,
                pruned,
                reloads,
                api_last_success,
                gate_closed,
                unanswered: Mutex::new(None),
                answered_ms: std::sync::atomic::AtomicI64::new(0),
            }),
        }
    }

    /// The gate closed for `cause`, or (`None`) opened.
    pub fn gate_closed(&self, cause: Option<Closed>) {
        for each in Closed::iter() {
            let closed = i64::from(cause == Some(each));
            let cause = each.to_string();
            self.inner
                .gate_closed
                .get_or_create(&CauseLabel { cause })
                .set(closed);
        }
    }

    /// A deletion of a remote file ended: `deleted`, `gone` (404) or `failed`.
    pub fn remote_file_deleted(&self, outcome: &'static str) {
        self.inner
            .remote_files_deleted
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A try at delivering a notification ended: `delivered`, `pending` (failed, tried again)
    /// or `abandoned`.
    pub fn notification_tried(&self, outcome: &'static str) {
        self.inner
            .notifications
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Retention removed `n` things of `kind`.
    pub fn pruned(&self, kind: &'static str, n: u64) {
        self.inner
            .pruned
            .get_or_create(&KindLabel { kind })
            .inc_by(n);
    }

    /// A configuration reload was `applied` or `refused`.
    pub fn reloaded(&self, outcome: &'static str) {
        self.inner
            .reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Since when API requests have gone unanswered (no connection, a timeout, a reset), with
    /// the last one's error, once [`UNANSWERED_BEFORE_NOT_READY`] in a row did; `None` when
    /// one of the last few was answered, whatever it said.
    pub fn api_unanswered(&self) -> Option<(Timestamp, String)> {
        let unanswered = self.inner.unanswered.lock().expect("metrics lock");
        unanswered
            .as_ref()
            .filter(|u| u.requests >= UNANSWERED_BEFORE_NOT_READY)
            .map(|u| (u.since, u.error.clone()))
    }

    /// A batch (or a create) for `model` was refused for the enqueued-token limit.
    pub fn token_limit_refusal(&self, model: &str) {
        let model = self.inner.models.label(model);
        self.inner
            .token_limit_refusals
            .get_or_create(&ModelLabel { model })
            .inc();
    }

    /// A request of unknown outcome was looked for: `found` it, did not, or the look failed.
    pub fn reconciliation<T, E>(&self, request: Reconciled, found: &Result<Option<T>, E>) {
        let labels = ReconcileLabels {
            request: match request {
                Reconciled::Upload => "upload",
                Reconciled::Create => "create",
            },
            outcome: match found {
                Ok(Some(_)) => "found",
                Ok(None) => "not_found",
                Err(_) => "error",
            },
        };
        self.inner.reconciliations.get_or_create(&labels).inc();
    }

    /// A late duplicate batch was cancelled.
    pub fn duplicate_cancelled(&self) {
        self.inner.duplicates_cancelled.inc();
    }

    /// `jobs` unfinished jobs were taken over from instances whose lease ran out.
    pub fn jobs_taken_over(&self, jobs: usize) {
        self.inner
            .jobs_taken_over
            .inc_by(u64::try_from(jobs).unwrap_or(u64::MAX));
    }

    /// A task's write was refused by the fence.
    pub fn write_fenced(&self) {
        self.inner.writes_fenced.inc();
    }

    /// A round of the main loop ran, `quiet` (it stopped after its scan) or full.
    pub fn round(&self, quiet: bool) {
        let kind = if quiet { "quiet" } else { "full" };
        self.inner.rounds.get_or_create(&KindLabel { kind }).inc();
    }

    /// The API answered about a batch at `at` (a poll, a page of the list, any observation):
    /// kept here, as a quiet answer writes nothing to the database.
    pub fn answered(&self, at: Timestamp) {
        let ms = at.as_millisecond();
        self.inner
            .answered_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this instance leads now.
    pub fn leading(&self, leads: bool) {
        self.inner.leader.set(i64::from(leads));
    }

    /// A job ended in `state`, `claimed_at` (its `created_at`) to `now`.
    pub fn job_finished(&self, state: JobState, claimed_at: &str, now: Timestamp) {
        let Some(claimed) = clock::parse(claimed_at) else {
            return;
        };
        let state = state.to_string();
        self.inner
            .job_duration
            .get_or_create(&StateLabel { state })
            .observe(clock::between(claimed, now).as_secs_f64());
    }

    /// A batch was seen ended for the first time (its cost was booked just now): its
    /// duration, the time it spent in each status, and its requests.
    pub fn batch_ended(&self, batch: &Batch) {
        let m = &self.inner;
        let status = StatusLabel {
            status: batch.status.to_string(),
        };
        let end = [
            batch.completed_at,
            batch.failed_at,
            batch.expired_at,
            batch.cancelled_at,
        ]
        .into_iter()
        .flatten()
        .max();
        let seconds = |from: Option<Timestamp>, to: Option<Timestamp>| {
            from.zip(to)
                .map(|(f, t)| clock::between(f, t).as_secs_f64())
        };
        if let Some(s) = seconds(batch.created_at, end) {
            m.batch_duration.get_or_create(&status).observe(s);
        }
        // Each status lasts until the next one the batch reached.
        let steps = [
            (BatchStatus::Validating, batch.created_at),
            (BatchStatus::InProgress, batch.in_progress_at),
            (BatchStatus::Finalizing, batch.finalizing_at),
            (BatchStatus::Cancelling, batch.cancelling_at),
        ];
        for (i, (name, start)) in steps.iter().enumerate() {
            let Some(start) = start else { continue };
            let next = steps[i + 1..]
                .iter()
                .filter_map(|(_, t)| *t)
                .filter(|t| t >= start)
                .min()
                .or(end);
            if let Some(s) = seconds(Some(*start), next) {
                let label = StatusLabel {
                    status: name.to_string(),
                };
                m.status_duration.get_or_create(&label).observe(s);
            }
        }
        if let Some(c) = batch.request_counts {
            m.batch_requests
                .get_or_create(&status)
                .observe(c.total as f64);
            m.requests
                .get_or_create(&OutcomeLabel {
                    outcome: "completed",
                })
                .inc_by(c.completed);
            m.requests
                .get_or_create(&OutcomeLabel { outcome: "failed" })
                .inc_by(c.failed);
        }
    }

    /// The exposition of every metric: the events counted so far and `figures` (`None` when
    /// the database could not be read), as OpenMetrics text or, with `classic`, the classic
    /// Prometheus text format.
    pub fn render(
        &self,
        figures: Option<&Figures>,
        disks: &[Disk],
        now: Timestamp,
        classic: bool,
    ) -> String {
        let mut out = String::new();
        let answered = self
            .inner
            .answered_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let answered = (answered > 0)
            .then(|| Timestamp::from_millisecond(answered).ok())
            .flatten();
        let mut rows = rows_registry(figures, answered, now, &self.inner.models);
        register_disks(&mut rows, disks);
        prometheus_client::encoding::text::encode_registry(&mut out, &self.inner.registry)
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &rows))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        if classic { to_classic_text(&out) } else { out }
    }
}

fn operation_label(op: Operation) -> &'static str {
    match op {
        Operation::UploadFile => "upload_file",
        Operation::RetrieveFile => "retrieve_file",
        Operation::ListFiles => "list_files",
        Operation::DeleteFile => "delete_file",
        Operation::DownloadFile => "download_file",
        Operation::CreateBatch => "create_batch",
        Operation::RetrieveBatch => "retrieve_batch",
        Operation::ListBatches => "list_batches",
        Operation::CancelBatch => "cancel_batch",
        Operation::DeleteBatch => "delete_batch",
    }
}

/// The filesystem under one of the daemon's directories, as a scrape found it.
#[derive(Debug, Clone)]
pub struct Disk {
    /// `queue` (queue.dir) or `database` (the directory of database.path).
    pub dir: &'static str,
    pub space: crate::process::DiskSpace,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirLabel {
    dir: &'static str,
}

/// The space of `disks`, into the registry of one scrape.
fn register_disks(registry: &mut Registry, disks: &[Disk]) {
    let available = Family::<DirLabel, Gauge>::default();
    let size = Family::<DirLabel, Gauge>::default();
    for disk in disks {
        let label = DirLabel { dir: disk.dir };
        let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        available
            .get_or_create(&label)
            .set(bytes(disk.space.available));
        size.get_or_create(&label).set(bytes(disk.space.size));
    }
    registry.register(
        "filesystem_available_bytes",
        "Bytes free (for a user that is not root) on the filesystem of the queue tree (dir=queue) and of the database (dir=database)",
        available,
    );
    registry.register(
        "filesystem_size_bytes",
        "Size of the filesystem of the queue tree (dir=queue) and of the database (dir=database)",
        size,
    );
}

/// The metrics read from the database, in a registry of their own made for one scrape, with
/// `answered` (this process's last answer about a batch) beside them.
fn rows_registry(
    figures: Option<&Figures>,
    answered: Option<Timestamp>,
    now: Timestamp,
    models: &ModelLabels,
) -> Registry {
    let mut registry = Registry::with_prefix("batchwatch");
    let readable = Gauge::<i64>::default();
    readable.set(i64::from(figures.is_some()));
    registry.register(
        "database_readable",
        "1 when this scrape could read the database; the figures below are missing when 0",
        readable,
    );
    let Some(f) = figures else {
        return registry;
    };

    let jobs = Family::<StateLabel, Gauge>::default();
    for state in JobState::ALL {
        let n = f
            .jobs
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        let state = state.to_string();
        jobs.get_or_create(&StateLabel { state }).set(n);
    }
    registry.register("jobs", "Jobs in each state", jobs);

    let by_provider = Family::<ProviderStateLabel, Gauge>::default();
    for (provider, state, n) in &f.jobs_by_provider {
        let labels = ProviderStateLabel {
            provider: provider.clone(),
            state: state.to_string(),
        };
        by_provider.get_or_create(&labels).set(*n);
    }
    registry.register(
        "jobs_by_provider",
        "Jobs by the service they ran on (openai, azure, anthropic; \"\" for jobs claimed before it was recorded) and state",
        by_provider,
    );

    let batches = Family::<StatusLabel, Gauge>::default();
    for status in BatchStatus::KNOWN {
        let status = status.to_string();
        batches.get_or_create(&StatusLabel { status }).set(0);
    }
    for (status, n) in &f.batches {
        let status = status.to_string();
        batches.get_or_create(&StatusLabel { status }).set(*n);
    }
    registry.register(
        "batches",
        "Remote batches in each status, as last seen",
        batches,
    );

    let transitions = Family::<TransitionLabels, Counter>::default();
    for (from, to, n) in &f.transitions {
        let labels = TransitionLabels {
            from: from.clone(),
            to: to.clone(),
        };
        transitions
            .get_or_create(&labels)
            .inc_by(u64::try_from(*n).unwrap_or(0));
    }
    registry.register(
        "job_transitions",
        "Jobs that moved from one state to another (counted in the database)",
        transitions,
    );

    let cancels = Family::<ReasonLabel, Counter>::default();
    for reason in ["deadline", "operator"] {
        let reason = reason.to_owned();
        cancels.get_or_create(&ReasonLabel { reason }).inc_by(0);
    }
    for (reason, n) in &f.cancels {
        let reason = reason.clone();
        cancels
            .get_or_create(&ReasonLabel { reason })
            .inc_by(u64::try_from(*n).unwrap_or(0));
    }
    registry.register(
        "job_cancels",
        "Jobs a cancel was asked for, by reason (deadline, operator)",
        cancels,
    );

    let oldest = FloatGauge::default();
    if let Some(at) = f.oldest_unfinished_job {
        oldest.set(clock::between(at, now).as_secs_f64());
    }
    registry.register(
        "oldest_unfinished_job_age_seconds",
        "Age of the oldest job not finished yet (0 when every job is finished)",
        oldest,
    );

    let waiting_since = FloatGauge::default();
    if let Some(at) = f.oldest_waiting_job {
        waiting_since.set(clock::between(at, now).as_secs_f64());
    }
    registry.register(
        "oldest_waiting_job_age_seconds",
        "Age (since its claim) of the oldest job queued or submitting: valid, with no running batch yet (0 when none)",
        waiting_since,
    );

    // A quiet answer writes nothing: this process's last one, or the last change recorded
    // (by any instance), whichever is later.
    let last_poll = FloatGauge::default();
    if let Some(at) = f.last_poll.max(answered) {
        last_poll.set(at.as_millisecond() as f64 / 1000.0);
    }
    registry.register(
        "last_successful_poll_timestamp_seconds",
        "Unix time of the last answer the API gave about a batch: this daemon's, or the last change the database recorded (0: none yet)",
        last_poll,
    );

    let stuck = Family::<StatusLabel, Gauge>::default();
    for status in [
        BatchStatus::Validating,
        BatchStatus::Finalizing,
        BatchStatus::Cancelling,
    ] {
        let n = f.stuck.iter().filter(|s| s.status == status).count();
        let status = status.to_string();
        stuck
            .get_or_create(&StatusLabel { status })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register(
        "stuck_batches",
        "Batches in a status longer than alerts.stuck_after allows",
        stuck,
    );

    let waiting = Gauge::<i64>::default();
    waiting.set(f.waiting_on_local_fault);
    registry.register(
        "results_waiting_on_local_fault",
        "Ended batches whose results cannot be written here (a full disk, a quota, a permission): they wait, nothing is given up",
        waiting,
    );

    let undelivered = Gauge::<i64>::default();
    undelivered.set(f.undelivered.count);
    registry.register(
        "notifications_undelivered",
        "Notifications not delivered yet (pending: being tried)",
        undelivered,
    );
    let oldest_undelivered = FloatGauge::default();
    if let Some(at) = f.undelivered.oldest.as_deref().and_then(clock::parse) {
        oldest_undelivered.set(clock::between(at, now).as_secs_f64());
    }
    registry.register(
        "oldest_undelivered_notification_age_seconds",
        "Age of the oldest notification not delivered yet (0 when none is pending)",
        oldest_undelivered,
    );

    let tokens = Family::<TokenLabels, Counter>::default();
    let cost = Family::<ModelLabel, FloatCounter>::default();
    // A model without a series of its own adds to `other`'s.
    for m in &f.models {
        let model = models.label(&m.model);
        for (kind, n) in [
            ("input", m.input_tokens),
            ("cached_input", m.cached_tokens),
            ("output", m.output_tokens),
            ("reasoning", m.reasoning_tokens),
        ] {
            let labels = TokenLabels {
                model: model.clone(),
                kind,
            };
            tokens
                .get_or_create(&labels)
                .inc_by(u64::try_from(n).unwrap_or(0));
        }
        // No price, no estimate: a model without one adds to no cost series, so a dashboard
        // shows no data for it rather than $0.
        if let Some(usd) = m.cost_usd {
            cost.get_or_create(&ModelLabel { model })
                .inc_by(usd.max(0.0));
        }
    }
    registry.register(
        "tokens",
        "Tokens of batches, by model and kind (cached_input is part of input, reasoning of output)",
        tokens,
    );
    registry.register(
        "cost_usd",
        "Estimated cost of ended batches in US dollars, by model, from [pricing]",
        cost,
    );
    registry
}

/// Rewrites OpenMetrics text from prometheus-client as the classic Prometheus text format
/// (0.0.4): a counter's `# HELP` and `# TYPE` name its `_total` series, and the lines the
/// classic format does not have (`# UNIT`, `# EOF`) are left out.
pub fn to_classic_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    let _ = writeln!(out, "{prefix}{name}_total {tail}");
                } else {
                    let _ = writeln!(out, "{line}");
                }
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_unanswering_once_two_requests_in_a_row_go_unanswered() {
        let m = Metrics::default();
        let lost = ApiError::Transient {
            op: Operation::ListBatches,
            status: None,
            detail: "connection refused".into(),
            retry_after: None,
        };
        let fail = || m.request(Operation::ListBatches, None, Duration::ZERO, Some(&lost));
        fail();
        assert_eq!(m.api_unanswered(), None, "one lost connection is a blip");
        fail();
        let (_, error) = m.api_unanswered().expect("two in a row are an outage");
        assert!(error.contains("connection refused"), "{error}");
        m.request(Operation::ListBatches, Some(500), Duration::ZERO, None);
        assert_eq!(m.api_unanswered(), None, "any answer counts");
        fail();
        assert_eq!(m.api_unanswered(), None, "the count starts again");
    }

    #[test]
    fn the_classic_format_names_counters_by_their_total_series_and_drops_openmetrics_lines() {
        let om = "# HELP batchwatch_api_retries Repeats.\n\
                  # TYPE batchwatch_api_retries counter\n\
                  batchwatch_api_retries_total{operation=\"x\"} 2\n\
                  # HELP batchwatch_jobs Jobs.\n\
                  # TYPE batchwatch_jobs gauge\n\
                  # UNIT batchwatch_jobs jobs\n\
                  batchwatch_jobs{state=\"queued\"} 1\n\
                  # EOF\n";
        assert_eq!(
            to_classic_text(om),
            "# HELP batchwatch_api_retries_total Repeats.\n\
             # TYPE batchwatch_api_retries_total counter\n\
             batchwatch_api_retries_total{operation=\"x\"} 2\n\
             # HELP batchwatch_jobs Jobs.\n\
             # TYPE batchwatch_jobs gauge\n\
             batchwatch_jobs{state=\"queued\"} 1\n"
        );
    }

    #[test]
    fn an_unreadable_database_leaves_out_the_row_figures_and_says_so() {
        let m = Metrics::default();
        let now = Timestamp::now();
        let text = m.render(None, &[], now, true);
        assert!(text.contains("batchwatch_database_readable 0"), "{text}");
        assert!(!text.contains("batchwatch_jobs{"), "{text}");
        let text = m.render(Some(&Figures::default()), &[], now, true);
        assert!(text.contains("batchwatch_database_readable 1"), "{text}");
        assert!(
            text.contains("batchwatch_jobs{state=\"queued\"} 0"),
            "{text}"
        );
    }

    fn usage(model: &str, input: i64, output: i64) -> ModelCost {
        ModelCost {
            model: model.to_owned(),
            input_tokens: input,
            cached_tokens: 0,
            output_tokens: output,
            reasoning_tokens: 0,
            cost_usd: Some(0.5),
        }
    }

    #[test]
    fn the_busiest_models_at_start_keep_their_series_and_newcomers_take_what_room_is_left() {
        let at_start = [
            usage("small", 10, 0),
            usage("big", 500, 500),
            usage("middle", 100, 100),
            usage("tied-b", 5, 5),
            usage("tied-a", 5, 5),
        ];
        let labels = ModelLabels::busiest_first(4, &at_start);
        for own in ["big", "middle", "small", "tied-a"] {
            assert_eq!(labels.label(own), own);
        }
        assert_eq!(labels.label("tied-b"), OTHER_MODEL, "ties go by name");

        let labels = ModelLabels::busiest_first(3, &at_start[..2]);
        assert_eq!(labels.label("first-new"), "first-new");
        assert_eq!(labels.label("second-new"), OTHER_MODEL);
        // However busy it becomes, and whatever is asked first: the set is fixed.
        for _ in 0..3 {
            assert_eq!(labels.label("second-new"), OTHER_MODEL);
            assert_eq!(labels.label("first-new"), "first-new");
            assert_eq!(labels.label("small"), "small");
        }
        assert_eq!(
            ModelLabels::new(0, ["a".to_owned()]).label("a"),
            OTHER_MODEL
        );
    }

    #[test]
    fn models_beyond_the_limit_are_summed_as_other_in_tokens_cost_and_refusals() {
        let m = Metrics::new(ModelLabels::new(2, []));
        let figures = Figures {
            models: (0..2_000)
                .map(|i| usage(&format!("model-{i:04}"), 3, 1))
                .collect(),
            ..Figures::default()
        };
        // The first scrape gives the first two models their series (the figures come by name).
        m.render(Some(&figures), &[], Timestamp::now(), true);
        for model in ["model-0000", "model-1999", "model-1998"] {
            m.token_limit_refusal(model);
        }
        let text = m.render(Some(&figures), &[], Timestamp::now(), true);
        let series: Vec<&str> = text.lines().filter(|l| l.contains("model=\"")).collect();
        // Two models and other: four kinds of tokens, cost, and the refusals of two of them.
        assert_eq!(series.len(), 3 * 5 + 2, "{series:#?}");
        for line in [
            "batchwatch_tokens_total{model=\"model-0000\",kind=\"input\"} 3",
            "batchwatch_tokens_total{model=\"model-0001\",kind=\"output\"} 1",
            "batchwatch_tokens_total{model=\"other\",kind=\"input\"} 5994",
            "batchwatch_tokens_total{model=\"other\",kind=\"output\"} 1998",
            "batchwatch_cost_usd_total{model=\"other\"} 999.0",
            "batchwatch_token_limit_refusals_total{model=\"model-0000\"} 1",
            "batchwatch_token_limit_refusals_total{model=\"other\"} 2",
        ] {
            assert!(series.contains(&line), "{line} in:\n{series:#?}");
        }
    }

    #[test]
    fn a_batch_that_ended_counts_its_time_in_each_status_it_reached() {
        let m = Metrics::default();
        let t = |s: i64| Some(Timestamp::from_second(1_800_000_000 + s).unwrap());
        let mut batch = Batch::new("batch_1", crate::model::BatchStatus::Cancelled);
        (batch.created_at, batch.in_progress_at) = (t(0), t(10));
        (batch.cancelling_at, batch.cancelled_at) = (t(100), t(160));
        batch.request_counts = Some(crate::api::RequestCounts {
            total: 10,
            completed: 4,
            failed: 1,
        });
        assert_eq!(batch.cancelled_at, t(160));
        m.batch_ended(&batch);
        let text = m.render(None, &[], Timestamp::now(), true);
        for line in [
            "batchwatch_batch_status_duration_seconds_sum{status=\"validating\"} 10.0",
            "batchwatch_batch_status_duration_seconds_sum{status=\"in_progress\"} 90.0",
            "batchwatch_batch_status_duration_seconds_sum{status=\"cancelling\"} 60.0",
            "batchwatch_batch_duration_seconds_sum{status=\"cancelled\"} 160.0",
            "batchwatch_requests_total{outcome=\"completed\"} 4",
            "batchwatch_requests_total{outcome=\"failed\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
