//! What finishing a job hands the store.

use super::Lease;
use crate::StoreError;
use crate::batches::Submission;

use crate::jobs::Why;
use crate::notifications::NewNotification;
use batchwatch_core::model::JobState;
use batchwatch_core::usage::Tokens;

/// How a job ends.
#[derive(Debug, Clone)]
pub struct Ending<'a> {
    pub job_id: &'a str,
    pub state: JobState,
    pub why: Option<&'a Why>,
    /// The job's event.
    pub message: &'a str,
    /// Where its results are, relative to the queue.
    pub results_dir: Option<&'a str>,
    /// When the service's copies of its files are to be deleted: the result files on disk
    /// (the others are deleted at once).
    pub delete_remote: Option<&'a [String]>,
    /// What of the job to resubmit, if anything.
    pub resubmit: Option<Resubmit<'a>>,
    /// Who is to be told of its end.
    pub notify: &'a [NewNotification<'a>],
}

/// A resubmission to plan for a job that ends: its `only` requests (`expired`, `transient`:
/// [`crate::chain`]'s `resubmit_due`), when fewer than `at_most` resubmissions came before it
/// in its chain.
#[derive(Debug, Clone, Copy)]
pub struct Resubmit<'a> {
    pub only: &'a str,
    pub at_most: i64,
}

/// What finishing asks of the store: a submission's results collected, waited for or given up
/// on, and the job's end.
pub trait Finish {
    /// Ends a job as `ending` says: one transaction, so an ended job always has its remote
    /// deletions recorded, its resubmission planned and its notifications written.
    async fn finish_job(
        &self,
        lease: &Lease,
        ending: &Ending<'_>,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Records that job `job_id`'s file is now at `path` (relative to the queue).
    async fn set_path(
        &self,
        lease: &Lease,
        job_id: &str,
        path: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// The results of submission `row` are collected (`missing` names those the service did not
    /// have), with the usage counted from them when the service reports it there (the tokens,
    /// and their cost when priced); its job follows with `message`.
    async fn collected(
        &self,
        lease: &Lease,
        row: &Submission,
        missing: Option<&str>,
        usage: Option<(&Tokens, Option<f64>)>,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// The results of submission `row` cannot be written here (a local fault): it
    /// waits until `retry_at`, and `message`, when given, becomes the job's event. Returns
    /// since when it has been waiting.
    async fn wait_on_local_fault(
        &self,
        lease: &Lease,
        row: &Submission,
        error: &str,
        retry_at: &str,
        message: Option<&str>,
        now: &str,
    ) -> Result<String, StoreError>;
    /// A download of submission `id`'s results failed on the service's side; returns since
    /// when they have been failing.
    async fn note_collect_failure(
        &self,
        lease: &Lease,
        id: i64,
        now: &str,
    ) -> Result<String, StoreError>;
    /// Gives up the results of submission `row` for `why`, with `message` as its job's event;
    /// the job follows.
    async fn give_up_results(
        &self,
        lease: &Lease,
        row: &Submission,
        why: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError>;
}
