//! Resubmission chains: a job, the jobs that hold its undone requests, and what is pending.

use batchwatch_core::model::JobState;
use serde::Serialize;

/// A job of a chain, as `show` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Link {
    pub id: String,
    pub file_name: String,
    pub state: JobState,
}

/// A job of a chain, with what a resubmission of the chain needs to know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    pub file_name: String,
    /// Where its file is, relative to the queue root.
    pub path: String,
    pub state: JobState,
    pub results_dir: Option<String>,
}

/// A resubmission whose file is not yet claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: i64,
    pub file_name: String,
    pub stage: String,
}

/// A chain as a resubmission of it sees it: its jobs and its resubmissions not yet claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub members: Vec<Member>,
    pub pending: Vec<Pending>,
}

/// A resubmission about to be written into incoming/.
#[derive(Debug, Clone)]
pub struct NewResubmission<'a> {
    pub job_id: &'a str,
    pub file_name: &'a str,
    pub stage: &'a str,
    pub requests: i64,
    pub only: &'a str,
    pub forced: bool,
    pub origin: &'a str,
}
