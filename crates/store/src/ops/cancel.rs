//! Asking for a job's cancel, and carrying it out.

use super::Lease;
use crate::StoreError;
use crate::jobs::Job;

/// What cancelling asks of the store: a cancel asked for, and carried out (an unsent
/// submission abandoned, a live batch's cancel armed and then sent).
pub trait Cancel {
    /// Marks job `job_id` for cancel for `reason`, and records `message(job)` as its event when
    /// this asked for it (not when the job is finished or a cancel was asked for already: the
    /// first reason stands). Returns whether it asked, and the job as it is now. A request, not
    /// a move: the daemon carries it out, so it takes no lease.
    async fn request_cancel(
        &self,
        job_id: &str,
        reason: &str,
        message: impl FnOnce(&Job) -> String,
        now: &str,
    ) -> Result<(bool, Option<Job>), StoreError>;
    /// Abandons the submissions `unsent` of cancelled job `job_id` (they never became
    /// batches), and brings the job in line with `message`.
    async fn cancel_unsent(
        &self,
        lease: &Lease,
        job_id: &str,
        unsent: &[i64],
        why: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Arms the cancel of the live batch of submission `id`: written before it is sent.
    async fn arm_cancel(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError>;
    /// The cancel of submission `id` was sent (or needs no sending): it is polled at once.
    async fn cancel_sent(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError>;
}
