//! Submitting: the upload and create intents (written before the request, so a crash between
//! the two is found again as an outcome to reconcile), their outcomes, and the submissions a
//! reconcile finds on the service.

use super::Lease;
use crate::batches::{NewSubmission, Submission};
use crate::progress::refresh_job;
use crate::{Store, StoreError, jobs, transitions};
use batchwatch_core::model::JobState;
pub use batchwatch_store::ops::submit::CreateIntent;

impl Store {
    /// Arms the upload of queued submission `row` (its job moves to submitting).
    pub async fn start_upload(
        &self,
        lease: &Lease,
        row: &Submission,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::arm_upload(tx, row.id, now).await?;
            refresh_job(tx, &row.job_id, None, "uploading", now).await?;
            Ok(())
        })
        .await
    }

    /// Records the uploaded `file_id` and arms the create, unless a cancel was asked for
    /// meanwhile (the deadline may have passed during the upload): then no batch is created at
    /// all, and the submission is abandoned as [`Store::abandon`] does with `unsent`.
    pub async fn start_create(
        &self,
        lease: &Lease,
        row: &Submission,
        file_id: &str,
        unsent: &str,
        now: &str,
    ) -> Result<CreateIntent, StoreError> {
        self.unit(lease, async |tx| {
            transitions::arm_create(tx, row.id, file_id, now).await?;
            let cancelled = jobs::get(&mut **tx, &row.job_id)
                .await?
                .is_some_and(|j| j.cancel_requested_at.is_some());
            if cancelled {
                transitions::abandon(tx, row.id, unsent, now).await?;
                refresh_job(tx, &row.job_id, None, unsent, now).await?;
            }
            Ok(if cancelled {
                CreateIntent::Cancelled
            } else {
                CreateIntent::Armed
            })
        })
        .await
    }

    /// Takes up `file_id`, an upload a reconcile found for submission `row`, and arms the create.
    pub async fn adopt_upload(
        &self,
        lease: &Lease,
        row: &Submission,
        file_id: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::adopt_upload(tx, row.id, file_id, now).await?;
            refresh_job(tx, &row.job_id, None, message, now).await?;
            Ok(())
        })
        .await
    }

    /// Notes that the create of submission `id` is sent again: a reconcile found none.
    pub async fn note_resent(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::note_resent(tx, id, now).await?;
            Ok(())
        })
        .await
    }

    /// Puts the next step of submission `id` off until `until`, recording `error` if given.
    pub async fn postpone(
        &self,
        lease: &Lease,
        id: i64,
        until: &str,
        error: Option<&str>,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::postpone(tx, id, until, error, now).await?;
            Ok(())
        })
        .await
    }

    /// Gives submission `row` up (it will not become a batch) with `why`; its job follows, with
    /// `message` as its event.
    pub async fn abandon(
        &self,
        lease: &Lease,
        row: &Submission,
        why: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::abandon(tx, row.id, why, now).await?;
            refresh_job(tx, &row.job_id, None, message, now).await?;
            Ok(())
        })
        .await
    }

    /// The request of submission `row` may or may not have been carried out: nothing is sent
    /// again before a reconcile, from `retry_at`, says which. `message` is the job's event.
    pub async fn await_reconcile(
        &self,
        lease: &Lease,
        row: &Submission,
        error: &str,
        retry_at: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::await_reconcile(tx, row.id, error, retry_at, now).await?;
            jobs::add_event(tx, &row.job_id, JobState::Submitting, message, now).await?;
            Ok(())
        })
        .await
    }

    /// The request of submission `id` was refused: it was not carried out.
    pub async fn not_sent(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::not_sent(tx, id, now).await?;
            Ok(())
        })
        .await
    }

    /// Adds a submission: one a reconcile found on the service that the database lacks.
    pub async fn add_submission(
        &self,
        lease: &Lease,
        submission: &NewSubmission<'_>,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            crate::batches::insert(tx, submission, now).await?;
            Ok(())
        })
        .await
    }

    /// Appends `message` to the story of job `job_id`, in the state the job is in.
    pub async fn note(
        &self,
        lease: &Lease,
        job_id: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            super::add_event(tx, job_id, message, now).await?;
            Ok(())
        })
        .await
    }
}
