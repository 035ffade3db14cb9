//! The simulator's state: files, batches, statistics and the fault settings, behind one lock,
//! and the JSON objects the API renders from them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};

use super::clock::{Clock, SimMs, ms, real_unix_ms, secs};
use super::faults::FaultState;
use super::files::StoredFile;
use super::foreign::Foreign;
use super::listing::ListOrder;
use super::{SimConfig, Stats};
use crate::batchfile::{Limits, Summary, Violation};
use crate::model::BatchStatus;

/// Everything the server's tasks share.
pub(crate) struct Shared {
    /// The only key accepted (any non-empty key when `None`); the admin API can change it.
    pub(crate) api_key: Mutex<Option<SecretString>>,
    pub(crate) data_dir: PathBuf,
    pub(crate) limits: Limits,
    pub(crate) state: Mutex<State>,
    /// Wakes the lifecycle ticker early: a validation finished, the clock changed.
    pub(crate) wake: Notify,
    /// The temporary data directory, removed when the simulator is dropped.
    _temp_dir: Option<tempfile::TempDir>,
}

impl Shared {
    pub(crate) fn new(config: &SimConfig) -> anyhow::Result<Shared> {
        let (data_dir, temp_dir) = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("creating data dir {}: {e}", dir.display()))?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("batchwatch-sim-")
                    .tempdir()
                    .map_err(|e| anyhow::anyhow!("creating a temporary data dir: {e}"))?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let mut state = State::new(config, data_dir.clone());
        // A temporary directory is new, so only a configured one can hold a saved state.
        if config.data_dir.is_some() {
            super::persist::load(&mut state, config)?;
        }
        Ok(Shared {
            api_key: Mutex::new(config.api_key.clone()),
            data_dir,
            limits: config.limits,
            state: Mutex::new(state),
            wake: Notify::new(),
            _temp_dir: temp_dir,
        })
    }

    /// Locks the state, first bringing every batch up to the current simulated time.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.advance();
        state
    }
}

/// Simulated durations, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) validating: i64,
    pub(crate) in_progress: i64,
    pub(crate) per_request: f64,
    pub(crate) finalizing: i64,
    pub(crate) cancelling: i64,
    pub(crate) window: i64,
}

/// Whether a generated file has been written yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FileReady {
    Pending,
    Ready { bytes: u64 },
    Failed(String),
}

/// An uploaded or generated file.
#[derive(Debug)]
pub(crate) struct FileEntry {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) filename: String,
    pub(crate) purpose: String,
    pub(crate) created_at: SimMs,
    pub(crate) expires_at: Option<SimMs>,
    pub(crate) data: Arc<StoredFile>,
    pub(crate) ready: watch::Receiver<FileReady>,
}

/// The `File` object of the API.
#[derive(Debug, Serialize)]
pub(crate) struct FileObject {
    pub(crate) id: String,
    pub(crate) object: &'static str,
    pub(crate) bytes: u64,
    pub(crate) created_at: i64,
    pub(crate) expires_at: Option<i64>,
    pub(crate) filename: String,
    pub(crate) purpose: String,
    pub(crate) status: &'static str,
    pub(crate) status_details: Option<String>,
}

impl FileEntry {
    /// The file object, once `bytes` is known.
    pub(crate) fn object(&self, bytes: u64) -> FileObject {
        FileObject {
            id: self.id.clone(),
            object: "file",
            bytes,
            created_at: secs(self.created_at),
            expires_at: self.expires_at.map(secs),
            filename: self.filename.clone(),
            purpose: self.purpose.clone(),
            status: "processed",
            status_details: None,
        }
    }
}

/// Where a batch's input validation stands.
#[derive(Debug, Default)]
pub(crate) enum Validation {
    /// Not finished; also what a batch loaded from a saved state starts with (see `persist`).
    #[default]
    Pending,
    Done(Result<Summary, Violation>),
    /// Its result was turned into a status.
    Used,
}

/// One entry of a batch's `errors.data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BatchErrorEntry {
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
    pub(crate) line: Option<u64>,
}

/// One status a batch took, as the admin stats report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The status, or `vanished` when the batch disappeared.
    pub status: String,
    /// Simulated unix seconds, as the API reports timestamps.
    pub at: i64,
    /// Simulated unix milliseconds: when the change happened, to the millisecond (0 in states
    /// saved before this was recorded).
    #[serde(default)]
    pub at_ms: i64,
    /// Real unix milliseconds when the simulator recorded it.
    pub real_at_ms: i64,
}

impl Transition {
    pub(crate) fn new(status: &str, at: SimMs) -> Transition {
        Transition {
            status: status.to_owned(),
            at: secs(at),
            at_ms: at,
            real_at_ms: real_unix_ms(),
        }
    }
}

/// How often a batch was sent to a client (in a retrieve, a list page or a cancel answer) and
/// the longest stretch it went unseen, in simulated milliseconds: what the admin API's
/// `observations` report. Counted from the batch's creation, or from the last reset.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Served {
    /// Times sent since the last reset.
    pub(crate) count: u64,
    /// When it was last sent (its creation when never).
    pub(crate) last_ms: SimMs,
    /// The longest gap between two sendings that ended since the last reset; a gap that
    /// began before the reset counts whole.
    pub(crate) max_gap_ms: i64,
}

impl Served {
    pub(crate) fn new(created: SimMs) -> Served {
        Served {
            count: 0,
            last_ms: created,
            max_gap_ms: 0,
        }
    }

    pub(crate) fn mark(&mut self, now: SimMs) {
        self.count += 1;
        self.max_gap_ms = self.max_gap_ms.max(now - self.last_ms);
        self.last_ms = now;
    }

    /// The longest gap so far, the one still open at `now` included.
    pub(crate) fn max_gap_until(&self, now: SimMs) -> i64 {
        self.max_gap_ms.max(now - self.last_ms)
    }
}

/// A batch and everything needed to compute its state at any simulated instant; saved whole
/// (see `persist`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub(crate) id: String,
    pub(crate) endpoint: String,
    pub(crate) input_file_id: String,
    #[serde(with = "super::persist::file_name")]
    pub(crate) input: Arc<StoredFile>,
    pub(crate) completion_window: String,
    pub(crate) metadata: Option<Map<String, Value>>,
    pub(crate) output_expires_after: Option<i64>,
    /// Seeds every per-request choice: failures, output order, ids.
    pub(crate) seed: u64,
    pub(crate) failure_rate: f64,
    pub(crate) stuck: bool,
    pub(crate) vanish_at: Option<SimMs>,
    pub(crate) vanished: bool,
    pub(crate) status: BatchStatus,
    pub(crate) created_at: SimMs,
    pub(crate) expires_at: SimMs,
    pub(crate) in_progress_at: Option<SimMs>,
    pub(crate) finalizing_at: Option<SimMs>,
    pub(crate) completed_at: Option<SimMs>,
    pub(crate) failed_at: Option<SimMs>,
    pub(crate) expired_at: Option<SimMs>,
    pub(crate) cancelling_at: Option<SimMs>,
    pub(crate) cancelled_at: Option<SimMs>,
    /// Not saved: a loaded batch that was still validating is validated again.
    #[serde(skip)]
    pub(crate) validation: Validation,
    pub(crate) model: Option<String>,
    pub(crate) total: u64,
    pub(crate) tokens: u64,
    /// Simulated milliseconds `in_progress` lasts.
    pub(crate) run_ms: i64,
    /// Processing positions (see `output`) of the requests that fail, ascending.
    pub(crate) failed_positions: Vec<u32>,
    /// Requests processed when processing stopped (cancel, expiry, completion).
    pub(crate) processed_final: Option<u64>,
    pub(crate) errors: Vec<BatchErrorEntry>,
    pub(crate) output_file_id: Option<String>,
    pub(crate) error_file_id: Option<String>,
    pub(crate) history: Vec<Transition>,
    /// Created by the simulated other tool (see `foreign`), not by a client.
    #[serde(default)]
    pub(crate) foreign: bool,
    #[serde(default)]
    pub(crate) served: Served,
}

impl Batch {
    /// Requests processed by simulated instant `now`.
    pub(crate) fn processed(&self, now: SimMs) -> u64 {
        if let Some(done) = self.processed_final {
            return done;
        }
        match (&self.status, self.in_progress_at) {
            (BatchStatus::InProgress, Some(start)) => {
                if self.run_ms <= 0 {
                    return self.total;
                }
                let elapsed = (now - start).clamp(0, self.run_ms);
                (i128::from(self.total) * i128::from(elapsed) / i128::from(self.run_ms)) as u64
            }
            (BatchStatus::Finalizing | BatchStatus::Completed, _) => self.total,
            _ => 0,
        }
    }

    /// How many of the first `processed` requests failed.
    pub(crate) fn failed_among(&self, processed: u64) -> u64 {
        self.failed_positions
            .partition_point(|&p| u64::from(p) < processed) as u64
    }

    pub(crate) fn record(&mut self, status: BatchStatus, at: SimMs) {
        self.history.push(Transition::new(status.as_str(), at));
        self.status = status;
    }

    pub(crate) fn job_id(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.get("batchwatch_job_id"))
            .and_then(Value::as_str)
    }

    /// The `Batch` object of the API at simulated instant `now`.
    pub(crate) fn object(&self, now: SimMs) -> BatchObject<'_> {
        // Counts and usage exist once the file passed validation, as with the real service.
        let validated = self.in_progress_at.is_some();
        let processed = if validated { self.processed(now) } else { 0 };
        let failed = self.failed_among(processed);
        BatchObject {
            id: &self.id,
            object: "batch",
            endpoint: &self.endpoint,
            model: self.model.as_deref(),
            errors: (!self.errors.is_empty()).then(|| BatchErrors {
                object: "list",
                data: &self.errors,
            }),
            input_file_id: &self.input_file_id,
            completion_window: &self.completion_window,
            status: self.status.as_str(),
            output_file_id: self.output_file_id.as_deref(),
            error_file_id: self.error_file_id.as_deref(),
            created_at: secs(self.created_at),
            in_progress_at: self.in_progress_at.map(secs),
            expires_at: secs(self.expires_at),
            finalizing_at: self.finalizing_at.map(secs),
            completed_at: self.completed_at.map(secs),
            failed_at: self.failed_at.map(secs),
            expired_at: self.expired_at.map(secs),
            cancelling_at: self.cancelling_at.map(secs),
            cancelled_at: self.cancelled_at.map(secs),
            request_counts: RequestCounts {
                total: if validated { self.total } else { 0 },
                completed: processed - failed,
                failed,
            },
            usage: validated.then(|| self.usage(processed)),
            metadata: self.metadata.as_ref(),
        }
    }

    /// Token usage so far: the input share of what was processed, and a fixed count out.
    fn usage(&self, processed: u64) -> Usage {
        let input_tokens = (self.tokens * processed)
            .checked_div(self.total)
            .unwrap_or(0);
        let output_tokens = processed * super::output::COMPLETION_TOKENS;
        Usage {
            input_tokens,
            input_tokens_details: CachedTokens { cached_tokens: 0 },
            output_tokens,
            output_tokens_details: ReasoningTokens {
                reasoning_tokens: 0,
            },
            total_tokens: input_tokens + output_tokens,
        }
    }
}

/// The `Batch` object of the API, every property present as in real responses.
#[derive(Debug, Serialize)]
pub(crate) struct BatchObject<'a> {
    id: &'a str,
    object: &'static str,
    endpoint: &'a str,
    model: Option<&'a str>,
    errors: Option<BatchErrors<'a>>,
    input_file_id: &'a str,
    completion_window: &'a str,
    status: &'a str,
    output_file_id: Option<&'a str>,
    error_file_id: Option<&'a str>,
    created_at: i64,
    in_progress_at: Option<i64>,
    expires_at: i64,
    finalizing_at: Option<i64>,
    completed_at: Option<i64>,
    failed_at: Option<i64>,
    expired_at: Option<i64>,
    cancelling_at: Option<i64>,
    cancelled_at: Option<i64>,
    request_counts: RequestCounts,
    usage: Option<Usage>,
    metadata: Option<&'a Map<String, Value>>,
}

#[derive(Debug, Serialize)]
struct BatchErrors<'a> {
    object: &'static str,
    data: &'a [BatchErrorEntry],
}

#[derive(Debug, Serialize)]
struct RequestCounts {
    total: u64,
    completed: u64,
    failed: u64,
}

#[derive(Debug, Serialize)]
struct Usage {
    input_tokens: u64,
    input_tokens_details: CachedTokens,
    output_tokens: u64,
    output_tokens_details: ReasoningTokens,
    total_tokens: u64,
}

#[derive(Debug, Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(Debug, Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

/// Request and fault counters.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    requests: BTreeMap<String, u64>,
    faults: BTreeMap<String, u64>,
}

impl Counters {
    pub(crate) fn count_request(&mut self, route: &str) {
        *self.requests.entry(route.to_owned()).or_default() += 1;
    }

    pub(crate) fn requests(&self) -> &BTreeMap<String, u64> {
        &self.requests
    }

    pub(crate) fn count_fault(&mut self, name: &str) {
        *self.faults.entry(name.to_owned()).or_default() += 1;
    }
}

/// Everything behind the lock.
pub(crate) struct State {
    pub(crate) clock: Clock,
    pub(crate) timing: Timing,
    pub(crate) faults: FaultState,
    pub(crate) stats: Counters,
    /// Draws ids and per-batch seeds; separate from the fault generator so that faults do not
    /// change which ids and outcomes a run produces.
    pub(crate) rng: fastrand::Rng,
    pub(crate) data_dir: PathBuf,
    /// In upload order, so ascending by `seq`; found by id through `file_index`.
    pub(crate) files: Vec<FileEntry>,
    /// A file's `seq` by its id.
    pub(crate) file_index: HashMap<String, u64>,
    /// In creation order: a batch's index is its place in time.
    pub(crate) batches: Vec<Batch>,
    pub(crate) batch_index: HashMap<String, usize>,
    /// Every batch's next event as (instant, index), earliest first; entries the batch has
    /// moved past since are dropped when they come up (see `lifecycle`).
    pub(crate) events: BinaryHeap<Reverse<(SimMs, usize)>>,
    /// The order of `GET /batches`, and its index when it is not creation order.
    pub(crate) list_order: ListOrder,
    pub(crate) shuffled: BTreeSet<(u64, usize)>,
    /// The other tool's batches (`--foreign-batches`).
    pub(crate) foreign: Foreign,
    /// When the observation counts were last reset (simulated ms).
    pub(crate) observed_since: SimMs,
    pub(crate) next_seq: u64,
    /// What `reset` returns to.
    seed: u64,
    initial_faults: super::Faults,
}

impl State {
    fn new(config: &SimConfig, data_dir: PathBuf) -> State {
        let seed = config.seed.unwrap_or(0);
        let start = config.start_time.map_or_else(real_unix_ms, |s| s * 1000);
        State {
            clock: Clock::new(start, config.time_scale),
            timing: Timing {
                validating: ms(config.validating_secs),
                in_progress: ms(config.in_progress_secs),
                per_request: config.request_secs * 1000.0,
                finalizing: ms(config.finalizing_secs),
                cancelling: ms(config.cancelling_secs),
                window: ms(config.completion_window_secs),
            },
            faults: FaultState::new(config.faults.clone(), fault_seed(seed)),
            stats: Counters::default(),
            rng: fastrand::Rng::with_seed(seed),
            data_dir,
            files: Vec::new(),
            file_index: HashMap::new(),
            batches: Vec::new(),
            batch_index: HashMap::new(),
            events: BinaryHeap::new(),
            list_order: config.list_order,
            shuffled: BTreeSet::new(),
            foreign: Foreign::new(config.foreign_batches, config.foreign_per_create),
            observed_since: start,
            next_seq: 0,
            seed,
            initial_faults: config.faults.clone(),
        }
    }

    /// Forgets every file, batch and count; faults return to the configured ones.
    pub(crate) fn reset(&mut self) {
        self.files.clear();
        self.batches.clear();
        self.reindex();
        self.foreign.reset();
        self.observed_since = self.clock.now();
        self.stats = Counters::default();
        self.rng = fastrand::Rng::with_seed(self.seed);
        self.faults = FaultState::new(self.initial_faults.clone(), fault_seed(self.seed));
    }

    /// The configured seed.
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A fresh path in the data directory.
    pub(crate) fn new_path(&mut self, tag: &str) -> PathBuf {
        let n = self.next_seq();
        self.data_dir.join(format!("{n:08}-{tag}"))
    }

    /// `prefix` then `len` random characters from `alphabet`.
    pub(crate) fn new_id(&mut self, prefix: &str, len: usize, alphabet: &[u8]) -> String {
        let mut id = String::with_capacity(prefix.len() + len);
        id.push_str(prefix);
        for _ in 0..len {
            id.push(alphabet[self.rng.usize(..alphabet.len())] as char);
        }
        id
    }

    pub(crate) fn new_file_id(&mut self) -> String {
        self.new_id(
            "file-",
            22,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        )
    }

    pub(crate) fn file(&self, id: &str) -> Option<&FileEntry> {
        self.file_position(id).map(|i| &self.files[i])
    }

    fn file_position(&self, id: &str) -> Option<usize> {
        let seq = *self.file_index.get(id)?;
        self.files.binary_search_by_key(&seq, |f| f.seq).ok()
    }

    /// Adds a file; its `seq` must be the newest (see `next_seq`).
    pub(crate) fn add_file(&mut self, file: FileEntry) {
        debug_assert!(self.files.last().is_none_or(|last| last.seq < file.seq));
        self.file_index.insert(file.id.clone(), file.seq);
        self.files.push(file);
    }

    /// Forgets a file object (its content stays while a batch still reads it).
    pub(crate) fn remove_file(&mut self, id: &str) -> bool {
        let Some(i) = self.file_position(id) else {
            return false;
        };
        self.files.remove(i);
        self.file_index.remove(id);
        true
    }

    /// Adds a new batch: indexed by id, placed in the list order, its first event scheduled.
    pub(crate) fn add_batch(&mut self, batch: Batch) -> usize {
        let i = self.batches.len();
        self.batch_index.insert(batch.id.clone(), i);
        self.batches.push(batch);
        self.place(i);
        self.schedule(i);
        i
    }

    /// Rebuilds every index from `files` and `batches` (after a load or a reset).
    pub(crate) fn reindex(&mut self) {
        self.file_index = self.files.iter().map(|f| (f.id.clone(), f.seq)).collect();
        self.batch_index = self
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id.clone(), i))
            .collect();
        self.events.clear();
        self.shuffled.clear();
        for i in 0..self.batches.len() {
            self.place(i);
            self.schedule(i);
        }
    }

    /// Records that these batches were sent to a client now.
    pub(crate) fn served(&mut self, batches: &[usize]) {
        let now = self.clock.now();
        for &i in batches {
            self.batches[i].served.mark(now);
        }
    }

    /// The index of a batch that has not vanished.
    pub(crate) fn visible_batch(&self, id: &str) -> Option<usize> {
        self.batch_index
            .get(id)
            .copied()
            .filter(|&i| !self.batches[i].vanished)
    }

    /// The statistics the admin API reports.
    pub(crate) fn stats(&self) -> Stats {
        let mut batches_by_job = BTreeMap::new();
        for batch in &self.batches {
            if let Some(job) = batch.job_id() {
                *batches_by_job.entry(job.to_owned()).or_default() += 1;
            }
        }
        Stats {
            now: secs(self.clock.now()),
            batches_by_job,
            requests: self.stats.requests.clone(),
            faults_injected: self.stats.faults.clone(),
            batches: self
                .batches
                .iter()
                .map(|b| super::BatchStats {
                    id: b.id.clone(),
                    status: b.status.as_str().to_owned(),
                    job_id: b.job_id().map(str::to_owned),
                    foreign: b.foreign,
                    vanished: b.vanished,
                    history: b.history.clone(),
                })
                .collect(),
        }
    }
}

/// The fault generator's seed, kept apart from the id generator's.
fn fault_seed(seed: u64) -> u64 {
    seed ^ 0x9E37_79B9_7F4A_7C15
}
