//! What retention may remove of finished jobs.

use batchwatch_core::model::JobState;

/// A finished job whose files or results may go.
#[derive(Debug, Clone, PartialEq)]
pub struct Old {
    pub id: String,
    pub state: JobState,
    /// Where its file is, relative to the queue root.
    pub path: String,
    pub results_dir: Option<String>,
}
