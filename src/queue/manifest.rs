//! `manifest.json`, in a job's results directory: what is there, and how the job ended. Its
//! keys are a documented format (README, "How it works") that scripts read; they keep the names
//! they had before providers other than OpenAI were thought of (`input_file_id`,
//! `output_file_id`, `error_file_id` for a batch's upload and results).

use std::path::Path;

use serde::Serialize;

use crate::model::{BatchStatus, JobState, SubmissionState};
use crate::store::usage::{BatchUsage, JobCost};

/// The manifest's file name.
pub const FILE: &str = "manifest.json";

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
}

/// One batch of the job, every attempt of every part.
#[derive(Debug, Serialize)]
pub struct Batch<'a> {
    pub batch_id: Option<&'a str>,
    pub part: i64,
    pub attempt: i64,
    pub state: SubmissionState,
    pub status: Option<&'a BatchStatus>,
    pub request_counts: Counts,
    #[serde(rename = "input_file_id")]
    pub upload_id: Option<&'a str>,
    #[serde(rename = "output_file_id")]
    pub output_id: Option<&'a str>,
    #[serde(rename = "error_file_id")]
    pub error_output_id: Option<&'a str>,
    pub last_error: Option<&'a str>,
    pub results_missing: Option<&'a str>,
    pub results_unavailable: Option<&'a str>,
    /// Its tokens and estimated cost, as booked when it ended.
    pub usage: Option<&'a BatchUsage>,
}

/// The whole manifest.
#[derive(Debug, Serialize)]
pub struct Manifest<'a> {
    pub job_id: &'a str,
    pub file: &'a str,
    pub state: JobState,
    pub reason_code: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub sha256: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub model: Option<&'a str>,
    pub requests: Option<i64>,
    pub request_counts: Counts,
    /// The tokens and estimated cost of all its batches (every attempt: each was billed).
    pub usage: Option<&'a JobCost>,
    /// The job whose undone requests this one holds (`batchwatch resubmit`): its results
    /// and this job's together are the results of the original file.
    pub parent_job_id: Option<String>,
    /// Merged output of the latest attempt of every part, relative to this directory.
    pub output_file: Option<String>,
    pub error_file: Option<String>,
    pub batches: Vec<Batch<'a>>,
    pub finished_at: String,
}

/// Whether the manifest in the results directory `dir` names `id` as a batch's `kind`
/// (`output` or `errors`) results.
pub fn names_results(dir: &Path, kind: &str, id: &str) -> bool {
    let Ok(text) = std::fs::read(dir.join(FILE)) else {
        return false;
    };
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return false;
    };
    let key = if kind == "output" {
        "output_file_id"
    } else {
        "error_file_id"
    };
    manifest["batches"]
        .as_array()
        .is_some_and(|b| b.iter().any(|b| b[key].as_str() == Some(id)))
}
