//! What the activities share in memory, held by [`Ctx`](crate::daemon::ctx::Ctx), and the
//! names of the daemon's work ([`Subject`], [`Task`]): below every activity and every other
//! shared module, so none imports another for it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Batches per list page: the most the API gives.
pub const PAGE: u32 = 100;

/// The late duplicates already reported, so each is reported once.
#[derive(Debug, Default)]
pub struct DuplicateWatch {
    reported: Mutex<BTreeSet<String>>,
}

impl DuplicateWatch {
    pub fn is_new(&self, batch_id: &str) -> bool {
        !self.reported.lock().expect("lock").contains(batch_id)
    }

    pub fn reported(&self, batch_id: &str) {
        self.reported
            .lock()
            .expect("lock")
            .insert(batch_id.to_owned());
    }
}

/// Jobs whose remote side the database may not fully know; see the module docs.
#[derive(Debug, Default)]
pub struct Unverified(Mutex<BTreeSet<String>>);

impl Unverified {
    pub fn add(&self, job_id: &str) {
        self.0.lock().expect("lock").insert(job_id.to_owned());
    }

    pub fn contains(&self, job_id: &str) -> bool {
        self.0.lock().expect("lock").contains(job_id)
    }

    /// The jobs not yet checked.
    pub fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("unverified lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().expect("lock").is_empty()
    }

    pub fn remove(&self, job_id: &str) {
        self.0.lock().expect("lock").remove(job_id);
    }
}

/// What the last sweep learned about the cost of the next one.
#[derive(Debug, Default)]
pub struct Sweeps {
    /// Pages the last sweep read (0 before the first).
    pub(crate) last_pages: AtomicU32,
}

impl Sweeps {
    /// How many requests a sweep of `active` submissions is expected to cost.
    pub(crate) fn expected_pages(&self, active: i64) -> i64 {
        match self.last_pages.load(Ordering::Relaxed) {
            0 => (active + i64::from(PAGE) - 1) / i64::from(PAGE),
            n => i64::from(n),
        }
    }
}

/// What a task works on. At most one task per subject runs at a time, whatever it does, so
/// a poll and a cancel of one batch, say, never race each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Job(String),
    Submission(i64),
    Key,
    Duplicates,
    /// The check of unverified jobs against the service.
    Unverified,
    /// The list sweep over every active batch.
    Sweep,
    /// Deleting remote files ([`crate::daemon::housekeeping::remote`]).
    RemoteFiles,
    /// Removing what old finished jobs left ([`crate::daemon::housekeeping::retention`]).
    Retention,
    /// Writing the undone requests of expired jobs ([`crate::daemon::housekeeping::resubmit`]).
    Resubmissions,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Job(id) => write!(f, "job {id}"),
            Subject::Submission(id) => write!(f, "batch {id}"),
            Subject::Key => f.write_str("the API key"),
            Subject::Duplicates => f.write_str("late duplicates"),
            Subject::Unverified => f.write_str("unverified jobs"),
            Subject::Sweep => f.write_str("the batch list"),
            Subject::RemoteFiles => f.write_str("remote files"),
            Subject::Retention => f.write_str("retention"),
            Subject::Resubmissions => f.write_str("resubmissions"),
        }
    }
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum Task {
    Validate,
    Submit,
    Poll,
    Cancel,
    Collect,
    Finish,
    ProbeKey,
    CancelDuplicates,
    Verify,
    Sweep,
    DeleteRemoteFiles,
    Prune,
    Resubmit,
}

impl Task {
    /// Whether the task is dropped at once when the daemon stops, rather than given
    /// `daemon.shutdown_timeout` to finish. Deleting remote files is housekeeping whose intents
    /// are rows: a deletion cut short is sent again at the next start (a repeat meets a 404),
    /// and waiting for a service that does not answer would only hold the stop. The rest
    /// finish what they started (an upload or create whose outcome would otherwise have to be
    /// reconciled, a download, a file's move); retention and resubmission are local and short.
    pub fn stops_at_once(self) -> bool {
        matches!(self, Task::DeleteRemoteFiles)
    }
}
