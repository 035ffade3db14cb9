//! What finishing a job hands the store.

use crate::jobs::Why;
use batchwatch_core::model::JobState;

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
    /// An expired job is resubmitted when fewer than this many resubmissions came before it.
    pub resubmit_at_most: i64,
}
