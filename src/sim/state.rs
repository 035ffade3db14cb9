//! The simulator's state: files, batches, statistics and the fault settings, behind one lock,
//! and the JSON objects the API renders from them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};

use super::clock::{Clock, SimMs, ms, real_unix_ms, secs};
use super::faults::FaultState;
use super::files::StoredFile;
use super::{SimConfig, Stats};
use crate::batchfile::{Limits, Summary, Violation};
use crate::model::BatchStatus;

/// Everything the server's tasks share.
pub(crate) struct Shared {
    pub(crate) api_key: Option<SecretString>,
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
            api_key: config.api_key.clone(),
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
    /// Real unix milliseconds when the simulator recorded it.
    pub real_at_ms: i64,
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
        self.history.push(Transition {
            status: status.as_str().to_owned(),
            at: secs(at),
            real_at_ms: real_unix_ms(),
        });
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
    pub(crate) files: Vec<FileEntry>,
    pub(crate) batches: Vec<Batch>,
    pub(crate) batch_index: HashMap<String, usize>,
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
            batches: Vec::new(),
            batch_index: HashMap::new(),
            next_seq: 0,
            seed,
            initial_faults: config.faults.clone(),
        }
    }

    /// Forgets every file, batch and count; faults return to the configured ones.
    pub(crate) fn reset(&mut self) {
        self.files.clear();
        self.batches.clear();
        self.batch_index.clear();
        self.stats = Counters::default();
        self.rng = fastrand::Rng::with_seed(self.seed);
        self.faults = FaultState::new(self.initial_faults.clone(), fault_seed(self.seed));
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
        self.files.iter().find(|f| f.id == id)
    }

    /// A batch that has not vanished.
    pub(crate) fn batch(&self, id: &str) -> Option<&Batch> {
        self.batch_index
            .get(id)
            .map(|&i| &self.batches[i])
            .filter(|b| !b.vanished)
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
