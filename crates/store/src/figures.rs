//! What `/metrics` reads of the store at a scrape.

use crate::usage::ModelCost;
use batchwatch_core::clock::Timestamp;
use batchwatch_core::model::{BatchStatus, JobState};

/// Everything read from the database for one scrape, from one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub jobs: Vec<(JobState, i64)>,
    /// (provider, state, count): the jobs by the service they ran on (`""` for jobs claimed
    /// before it was recorded).
    pub jobs_by_provider: Vec<(String, JobState, i64)>,
    pub batches: Vec<(BatchStatus, i64)>,
    /// (from, to, count) since schema version 5.
    pub transitions: Vec<(String, String, i64)>,
    /// Jobs a cancel was asked for, by reason (`deadline`, `operator`).
    pub cancels: Vec<(String, i64)>,
    pub oldest_unfinished_job: Option<Timestamp>,
    /// The claim of the oldest job queued or submitting (valid, no running batch yet).
    pub oldest_waiting_job: Option<Timestamp>,
    pub last_poll: Option<Timestamp>,
    pub models: Vec<ModelCost>,
    pub stuck: Vec<StuckBatch>,
    /// Submissions whose results cannot be written here (a local fault) and wait.
    pub waiting_on_local_fault: i64,
    /// Notifications not yet delivered.
    pub undelivered: crate::notifications::Undelivered,
}

/// A batch that has stayed in a status longer than `alerts.stuck_after` allows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StuckBatch {
    pub id: i64,
    pub remote_id: Option<String>,
    pub job_id: String,
    pub status: BatchStatus,
    /// When batchwatch first saw the batch in this status.
    pub since: String,
}
