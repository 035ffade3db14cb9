//! Deletions of the service's files: the intents, who asked, how each ended, and the files
//! the database knows.

use serde::Serialize;

/// A row of `remote_deletions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deletion {
    pub id: i64,
    pub file_id: String,
    pub job_id: Option<String>,
    pub kind: String,
    pub origin: String,
    pub state: String,
    pub failures: i64,
    pub not_before: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub done_at: Option<String>,
}

/// Who asked for a deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The daemon, once the job ended (`cleanup.remote_files`).
    Cleanup,
    /// `batchwatch gc-remote --delete`.
    Gc,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Cleanup => "cleanup",
            Origin::Gc => "gc",
        }
    }
}

/// How a deletion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// The service deleted it.
    Deleted,
    /// The service did not have it (404): expired, or deleted before.
    Gone,
}

impl Done {
    pub fn as_str(self) -> &'static str {
        match self {
            Done::Deleted => "deleted",
            Done::Gone => "gone",
        }
    }
}

/// A file of a submission, as the database records it: which job, and which kind of file.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownFile {
    pub file_id: String,
    pub job_id: String,
    pub kind: &'static str,
    pub job_terminal: bool,
    /// For an output or error file: false when its submission gave its results up
    /// (`results_unavailable`), so the service holds the only copy.
    pub downloaded: bool,
}
