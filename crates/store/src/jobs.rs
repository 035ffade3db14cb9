//! A job (one file in the queue), why it ended or waits, its file as recorded, its overview
//! and its events.

use batchwatch_core::model::FileLook;
use batchwatch_core::model::JobState;
use serde::Serialize;

/// A row of `jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: String,
    pub file_name: String,
    pub path: String,
    pub size_bytes: i64,
    pub sha256: Option<String>,
    pub request_count: Option<i64>,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub completion_window: String,
    pub deadline_at: String,
    /// A JSON object.
    #[serde(serialize_with = "crate::json_text")]
    pub metadata: String,
    pub output_expires_after: Option<i64>,
    pub state: JobState,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub reason_line: Option<i64>,
    pub attempts: i64,
    pub cancel_requested_at: Option<String>,
    pub cancel_reason: Option<String>,
    pub results_dir: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// The service its requests go to (`openai`, `azure`, `anthropic`), as recorded at its
    /// claim; `None` for a job claimed before batchwatch recorded it.
    pub provider: Option<String>,
}

/// What is known of a job when its file is claimed.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub file_name: &'a str,
    pub path: &'a str,
    pub size_bytes: i64,
    /// Set by a sidecar or the configuration; `None` until validation takes it from the lines.
    pub endpoint: Option<&'a str>,
    pub completion_window: &'a str,
    pub deadline_at: &'a str,
    /// A JSON object.
    pub metadata: &'a str,
    pub output_expires_after: Option<i64>,
    /// The service its requests go to.
    pub provider: &'a str,
}

/// Why a job ended, or why it waits: a stable code, a message and, for a validation rule, the
/// line at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    pub code: String,
    pub message: String,
    pub line: Option<i64>,
}

impl Why {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Why {
        Why {
            code: code.into(),
            message: message.into(),
            line: None,
        }
    }
}

/// A job's file as recorded at its claim, or when it was last seen changing, and until when
/// its validation waits for it to hold still.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedFile {
    pub size_bytes: i64,
    /// `None` for a job claimed by a version that did not record it.
    pub mtime_ns: Option<i64>,
    pub inode: Option<i64>,
    pub validate_after: Option<String>,
}

impl RecordedFile {
    /// How `now` differs from the recorded file, in words; `None` when it does not.
    pub fn change_to(&self, now: &FileLook) -> Option<String> {
        now.change_since(
            u64::try_from(self.size_bytes).unwrap_or(0),
            self.mtime_ns,
            // The inode's bit pattern is stored as a signed integer.
            self.inode.map(|i| i as u64),
        )
    }
}

/// A row of the `job_overview` view: a job and the progress of its batches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobOverview {
    pub id: String,
    pub file_name: String,
    pub state: JobState,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub request_count: Option<i64>,
    pub remote_status: Option<String>,
    pub remote_ids: Option<String>,
    pub requests_completed: Option<i64>,
    pub requests_failed: Option<i64>,
    pub attempts: i64,
    pub deadline_at: String,
    pub cancel_requested_at: Option<String>,
    pub path: String,
    pub results_dir: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// The last error recorded on the job's latest submissions.
    pub last_error: Option<String>,
    /// The service its requests go to ([`Job::provider`]).
    pub provider: Option<String>,
}

/// A row of `job_events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobEvent {
    pub at: String,
    pub state: JobState,
    pub message: String,
}

/// Which jobs `status` lists: each filter set narrows the list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub state: Option<JobState>,
    /// A glob on the file's name (SQLite's GLOB: `*`, `?`, `[...]`, case-sensitive).
    pub file: Option<String>,
    /// Claimed at or after this time (stored form).
    pub since: Option<String>,
    pub model: Option<String>,
}

/// A job as a page of the jobs list shows it: the essentials of its row, the progress of its
/// latest batches (the last attempt of each part) and their estimated cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobLine {
    pub id: String,
    pub file_name: String,
    pub state: JobState,
    pub model: Option<String>,
    pub request_count: Option<i64>,
    pub requests_completed: Option<i64>,
    pub requests_failed: Option<i64>,
    /// The estimated cost of its batches in US dollars; `None`: none booked or priced.
    pub cost_usd: Option<f64>,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    /// The last error recorded on the job's latest submissions.
    pub last_error: Option<String>,
    pub deadline_at: String,
    pub created_at: String,
    pub finished_at: Option<String>,
}
