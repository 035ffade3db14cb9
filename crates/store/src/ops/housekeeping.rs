//! What a deletion's outcome tells the store.

use super::Lease;
use crate::StoreError;
use crate::chain::{NewResubmission, View};
use crate::deletions::{Deletion, Origin};

use crate::deletions::Done;
use crate::notifications::{NewNotification, Notification, Tried};

/// How one try at deleting a remote file ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    Done(Done),
    /// It failed with `error`; it is tried again from `retry_at`.
    Failed {
        error: String,
        retry_at: String,
    },
}

/// What housekeeping asks of the store: retention's marks and deletions, remote files'
/// deletions planned and recorded, notifications planned and their tries recorded, and
/// resubmissions.
pub trait Housekeeping {
    /// Records that job `job_id`'s file (or with `results`, its results directory) was removed
    /// by retention, with `message` as its event.
    async fn mark_pruned(
        &self,
        lease: &Lease,
        job_id: &str,
        results: bool,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Deletes the rows of the finished jobs `ids` (a job not finished is left); returns how
    /// many went.
    async fn delete_jobs(&self, lease: &Lease, ids: &[String]) -> Result<u64, StoreError>;
    /// Plans the deletion of remote file `file_id` (of `kind`, job `job_id` if known) for
    /// `origin`, or finds the one planned; returns it.
    async fn plan_deletion(
        &self,
        lease: &Lease,
        file_id: &str,
        job_id: Option<&str>,
        kind: &str,
        origin: Origin,
        now: &str,
    ) -> Result<Deletion, StoreError>;
    /// Records how a try at deletion `row` ended, with `message` as its job's event; returns
    /// false when another process settled it first (then nothing is written).
    async fn record_deletion(
        &self,
        lease: &Lease,
        row: &Deletion,
        outcome: &Deleted,
        message: Option<&str>,
        now: &str,
    ) -> Result<bool, StoreError>;
    /// Records resubmission `new` of job `job_id` (withdrawing the pending ones `withdrawn`
    /// replaces) with `message` as the job's event, if the job's chain is still as `view`
    /// saw it; `clear_due` clears the daemon's mark that the job is to be resubmitted.
    /// Returns false when the chain changed meanwhile (then nothing is written).
    #[allow(clippy::too_many_arguments)]
    async fn record_resubmission(
        &self,
        lease: &Lease,
        job_id: &str,
        view: &View,
        withdrawn: &[i64],
        new: &NewResubmission<'_>,
        message: &str,
        clear_due: bool,
        now: &str,
    ) -> Result<bool, StoreError>;
    /// Writes notifications `notify` of job `job_id`, each unless its target already has one of
    /// its key; returns how many were written.
    async fn plan_notifications(
        &self,
        lease: &Lease,
        job_id: &str,
        notify: &[NewNotification<'_>],
        now: &str,
    ) -> Result<u64, StoreError>;
    /// Records how a try at delivering notification `row` ended, with `message` as its job's
    /// event; returns false when another process settled it first (then nothing is written).
    async fn record_notification(
        &self,
        lease: &Lease,
        row: &Notification,
        tried: &Tried,
        message: Option<&str>,
        now: &str,
    ) -> Result<bool, StoreError>;
    /// Clears job `job_id`'s mark that it is to be resubmitted, with `message` as its event.
    async fn resubmit_done(
        &self,
        lease: &Lease,
        job_id: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError>;
}
