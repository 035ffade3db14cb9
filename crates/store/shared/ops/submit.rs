//! Submitting: the upload and create intents (written before the request, so a crash between
//! the two is found again as an outcome to reconcile), their outcomes, and the submissions a
//! reconcile finds on the service.

use super::Lease;
use crate::batches::{NewSubmission, Submission};
use crate::progress::refresh_job;
use crate::{Store, StoreError, jobs, transitions};
use batchwatch_core::model::JobState;
pub use batchwatch_store::ops::submit::CreateIntent;
use batchwatch_store::ops::submit::Submit;

impl Submit for Store {
    async fn start_upload(
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

    async fn start_create(
        &self,
        lease: &Lease,
        row: &Submission,
        upload_id: &str,
        unsent: &str,
        now: &str,
    ) -> Result<CreateIntent, StoreError> {
        self.unit(lease, async |tx| {
            transitions::arm_create(tx, row.id, upload_id, now).await?;
            unless_cancelled(tx, row, unsent, now).await
        })
        .await
    }

    async fn start_create_from_lines(
        &self,
        lease: &Lease,
        row: &Submission,
        unsent: &str,
        now: &str,
    ) -> Result<CreateIntent, StoreError> {
        self.unit(lease, async |tx| {
            if !transitions::arm_create_from_lines(tx, row.id, now).await? {
                return Ok(CreateIntent::Waiting);
            }
            let intent = unless_cancelled(tx, row, unsent, now).await?;
            if intent == CreateIntent::Armed {
                refresh_job(tx, &row.job_id, None, "creating", now).await?;
            }
            Ok(intent)
        })
        .await
    }

    async fn hold(
        &self,
        lease: &Lease,
        row: &Submission,
        until: &str,
        why: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::hold(tx, row.id, until, why, now).await?;
            crate::progress::add_event(tx, &row.job_id, why, now).await?;
            Ok(())
        })
        .await
    }

    async fn adopt_upload(
        &self,
        lease: &Lease,
        row: &Submission,
        upload_id: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::adopt_upload(tx, row.id, upload_id, now).await?;
            refresh_job(tx, &row.job_id, None, message, now).await?;
            Ok(())
        })
        .await
    }

    async fn note_resent(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::note_resent(tx, id, now).await?;
            Ok(())
        })
        .await
    }

    async fn postpone(
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

    async fn abandon(
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

    async fn await_reconcile(
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

    async fn not_sent(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::not_sent(tx, id, now).await?;
            Ok(())
        })
        .await
    }

    async fn add_submission(
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

    async fn note(
        &self,
        lease: &Lease,
        job_id: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            crate::progress::add_event(tx, job_id, message, now).await?;
            Ok(())
        })
        .await
    }
}

/// What is left of an armed create once a cancel asked for meanwhile is heeded: abandoned with
/// `unsent` when there is one (no batch is created at all), else armed.
async fn unless_cancelled(
    conn: &mut crate::Conn,
    row: &Submission,
    unsent: &str,
    now: &str,
) -> Result<CreateIntent, StoreError> {
    let cancelled = jobs::get(&mut *conn, &row.job_id)
        .await?
        .is_some_and(|j| j.cancel_requested_at.is_some());
    if !cancelled {
        return Ok(CreateIntent::Armed);
    }
    transitions::abandon(conn, row.id, unsent, now).await?;
    refresh_job(conn, &row.job_id, None, unsent, now).await?;
    Ok(CreateIntent::Cancelled)
}
