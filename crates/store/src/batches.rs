//! A submission of a part of a job (a row of `batches`), what is seen of its batch, and the
//! figures polling is planned by.

use batchwatch_core::model::{BatchStatus, SubmissionState};
use serde::Serialize;

/// A row of `batches`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Submission {
    pub id: i64,
    pub job_id: String,
    pub part: i64,
    pub part_start: i64,
    pub part_end: i64,
    pub part_requests: i64,
    pub attempt: i64,
    pub state: SubmissionState,
    pub not_before: Option<String>,
    pub outcome_unknown_at: Option<String>,
    pub resent_at: Option<String>,
    pub remote_id: Option<String>,
    /// The part's upload on the service (column `input_file_id`).
    #[serde(rename = "input_file_id")]
    pub upload_id: Option<String>,
    pub status: Option<BatchStatus>,
    pub request_total: Option<i64>,
    pub request_completed: Option<i64>,
    pub request_failed: Option<i64>,
    pub remote_created_at: Option<String>,
    pub in_progress_at: Option<String>,
    pub expires_at: Option<String>,
    pub finalizing_at: Option<String>,
    pub completed_at: Option<String>,
    pub failed_at: Option<String>,
    pub expired_at: Option<String>,
    pub cancelling_at: Option<String>,
    pub cancelled_at: Option<String>,
    /// Where the service keeps the results of the requests that succeeded (column
    /// `output_file_id`).
    #[serde(rename = "output_file_id")]
    pub output_id: Option<String>,
    /// Where it keeps those of the requests that failed (column `error_file_id`).
    #[serde(rename = "error_file_id")]
    pub error_output_id: Option<String>,
    /// The batch's `errors` (JSON).
    #[serde(serialize_with = "crate::json_text_or_null")]
    pub errors: Option<String>,
    /// The last batch object seen (JSON).
    #[serde(serialize_with = "crate::json_text_or_null")]
    pub raw: Option<String>,
    pub next_poll_at: Option<String>,
    pub last_polled_at: Option<String>,
    pub cancel_requested_at: Option<String>,
    pub cancel_sent_at: Option<String>,
    pub last_error: Option<String>,
    pub results_missing: Option<String>,
    pub collect_failing_since: Option<String>,
    pub results_unavailable: Option<String>,
    pub local_fault_since: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The intent to submit one part of a job.
#[derive(Debug, Clone)]
pub struct NewSubmission<'a> {
    pub job_id: &'a str,
    pub part: i64,
    pub part_start: i64,
    pub part_end: i64,
    pub part_requests: i64,
    pub attempt: i64,
    pub not_before: Option<&'a str>,
}

/// A remote batch as batchwatch saw it at one moment.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub remote_id: String,
    pub upload_id: Option<String>,
    pub status: Option<BatchStatus>,
    pub request_total: Option<i64>,
    pub request_completed: Option<i64>,
    pub request_failed: Option<i64>,
    pub created_at: Option<String>,
    pub in_progress_at: Option<String>,
    pub expires_at: Option<String>,
    pub finalizing_at: Option<String>,
    pub completed_at: Option<String>,
    pub failed_at: Option<String>,
    pub expired_at: Option<String>,
    pub cancelling_at: Option<String>,
    pub cancelled_at: Option<String>,
    pub output_id: Option<String>,
    pub error_output_id: Option<String>,
    /// JSON of the `errors` object.
    pub errors: Option<String>,
    /// JSON of the whole batch object.
    pub raw: String,
}

/// What recording an observation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The status or the request counts changed: a history row was appended.
    Changed,
    /// Nothing that history tracks changed.
    Unchanged,
    /// The stored status is terminal and the observation says otherwise: it was not applied.
    RefusedAfterTerminal {
        stored: BatchStatus,
        seen: BatchStatus,
    },
}

/// An active submission as a list sweep needs it: what was last seen of its batch, and the
/// poll its row plans.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub id: i64,
    pub remote_id: String,
    pub status: Option<BatchStatus>,
    pub request_total: Option<i64>,
    pub request_completed: Option<i64>,
    pub request_failed: Option<i64>,
    /// When the service created the batch.
    pub remote_created_at: Option<String>,
    /// When the submission was made (its age sets the poll interval).
    pub created_at: String,
    pub deadline_at: String,
    pub next_poll_at: Option<String>,
    /// A failed poll's error stands (`last_error`): the next answer clears it.
    pub erred: bool,
}

/// An active submission's stored plan for its next poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPoll {
    pub id: i64,
    pub next_poll_at: Option<String>,
}
