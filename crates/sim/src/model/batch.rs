//! A batch: everything needed to compute its state at any simulated instant, and its history.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::clock::{SimMs, real_unix_ms, secs};
use super::file::StoredFile;
use batchwatch_core::batchfile::{Summary, Violation};
use batchwatch_core::model::BatchStatus;

/// Which service's API a batch was created through: they share the lifecycle, each has its
/// own routes, objects, list and result lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Api {
    /// `/v1/batches` on an uploaded input file.
    #[default]
    OpenAi,
    /// `/v1/messages/batches`, the requests in the create body.
    Anthropic,
}

/// What a valid input holds, as the lifecycle needs it to start the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Admission {
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    /// The model of the first request (OpenAI inputs name one model).
    pub(crate) model: String,
    /// The lines (0-based) whose request the service will refuse when it runs it: Anthropic
    /// checks `params` only then, and such a request ends `errored`.
    pub(crate) refused_lines: Vec<u32>,
}

impl From<Summary> for Admission {
    fn from(summary: Summary) -> Admission {
        Admission {
            requests: summary.requests,
            bytes: summary.bytes,
            model: summary.model,
            refused_lines: Vec::new(),
        }
    }
}

/// Where a batch's input validation stands.
#[derive(Debug, Default)]
pub(crate) enum Validation {
    /// Not finished; also what a batch loaded from a saved state starts with (see `persist`).
    #[default]
    Pending,
    Done(Result<Admission, Violation>),
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
    /// Saved states from before a second API was served hold OpenAI batches only.
    #[serde(default)]
    pub(crate) api: Api,
    pub(crate) endpoint: String,
    pub(crate) input_file_id: String,
    #[serde(with = "super::file::file_name")]
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
}
