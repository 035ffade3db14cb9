//! What a validated file hands the store: its parts.

use super::Lease;
use crate::StoreError;
use crate::jobs::{NewJob, Why};
use crate::notifications::NewNotification;
use batchwatch_core::model::{FileLook, JobState};

/// One part of a validated file: a byte range and the requests in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub start: i64,
    pub end: i64,
    pub requests: i64,
}

/// What validating a file found.
#[derive(Debug, Clone)]
pub struct Validated<'a> {
    pub sha256: &'a str,
    pub requests: i64,
    pub endpoint: &'a str,
    pub model: &'a str,
    /// The parts, each submitted as a batch of its own.
    pub parts: &'a [Part],
    /// The job's event when it is queued.
    pub queued: &'a str,
    /// The job's event when a cancel was asked for while the file was checked.
    pub cancelling: &'a str,
}

/// What intake asks of the store: a file claimed as a job, its validation recorded (its
/// submissions planned) or its rejection, and a validation started again.
pub trait Intake {
    /// Records a claimed file as job `job` (validating), with what its file looked like and the
    /// job it resubmits, if any.
    async fn claim(
        &self,
        lease: &Lease,
        job: &NewJob<'_>,
        look: Option<&FileLook>,
        parent: Option<&str>,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Records that job `job_id`'s file is valid: its parts become queued submissions, and the
    /// job is queued, or cancelling when a cancel was asked for while the file was checked (it
    /// holds; the job is never shown queued). Returns the state the job went to.
    async fn record_valid(
        &self,
        lease: &Lease,
        job_id: &str,
        valid: &Validated<'_>,
        now: &str,
    ) -> Result<JobState, StoreError>;
    /// Rejects job `job_id` for `why`, writing its notifications `notify` in the same
    /// transaction; returns when it was claimed.
    async fn reject(
        &self,
        lease: &Lease,
        job_id: &str,
        why: &Why,
        notify: &[NewNotification<'_>],
        now: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Sends job `job_id`, whose file now looks like `look`, back to validating after
    /// `validate_after`, unless part of it may already have reached the service (`sending` is
    /// the submission its caller was about to upload). Returns whether it was sent back; when
    /// not, nothing changed.
    #[allow(clippy::too_many_arguments)]
    async fn validate_again(
        &self,
        lease: &Lease,
        job_id: &str,
        look: &FileLook,
        sending: Option<i64>,
        validate_after: &str,
        message: &str,
        now: &str,
    ) -> Result<bool, StoreError>;
}
