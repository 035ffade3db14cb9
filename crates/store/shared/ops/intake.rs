//! Intake: a file claimed as a job, its validation recorded (the job queued with its parts as
//! submissions, or rejected), and a file that changed sent back to be validated again.

use batchwatch_core::model::{FileLook, JobState};

use super::Lease;
use crate::batches::NewSubmission;
use crate::jobs::{self, NewJob, Why};
use crate::notifications::{self, NewNotification};
use crate::{Store, StoreError, batches, chain};
use batchwatch_store::ops::intake::Intake;
pub use batchwatch_store::ops::intake::{Part, Validated};

impl Intake for Store {
    async fn claim(
        &self,
        lease: &Lease,
        job: &NewJob<'_>,
        look: Option<&FileLook>,
        parent: Option<&str>,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            jobs::insert(tx, job, now).await?;
            if let Some(look) = look {
                jobs::set_file_look(tx, job.id, look, now).await?;
            }
            if let Some(parent) = parent {
                chain::link(tx, job.id, parent, now).await?;
            }
            Ok(())
        })
        .await
    }

    async fn record_valid(
        &self,
        lease: &Lease,
        job_id: &str,
        valid: &Validated<'_>,
        now: &str,
    ) -> Result<JobState, StoreError> {
        self.unit(lease, async |tx| {
            jobs::record_validation(
                tx,
                job_id,
                valid.sha256,
                valid.requests,
                valid.endpoint,
                valid.model,
                now,
            )
            .await?;
            for (part, range) in (0..).zip(valid.parts) {
                batches::insert(
                    tx,
                    &NewSubmission {
                        job_id,
                        part,
                        part_start: range.start,
                        part_end: range.end,
                        part_requests: range.requests,
                        attempt: 1,
                        not_before: None,
                    },
                    now,
                )
                .await?;
            }
            let cancel_asked = jobs::get(&mut **tx, job_id)
                .await?
                .is_some_and(|j| j.cancel_requested_at.is_some());
            let (state, message) = if cancel_asked {
                (JobState::Cancelling, valid.cancelling)
            } else {
                (JobState::Queued, valid.queued)
            };
            jobs::set_state(tx, job_id, state, None, message, now).await?;
            Ok(state)
        })
        .await
    }

    async fn reject(
        &self,
        lease: &Lease,
        job_id: &str,
        why: &Why,
        notify: &[NewNotification<'_>],
        now: &str,
    ) -> Result<Option<String>, StoreError> {
        self.unit(lease, async |tx| {
            let message = format!("rejected: {}", why.message);
            jobs::set_state(tx, job_id, JobState::Rejected, Some(why), &message, now).await?;
            notifications::plan(tx, job_id, notify, now).await?;
            let claimed_at = jobs::get(&mut **tx, job_id).await?.map(|j| j.created_at);
            Ok(claimed_at)
        })
        .await
    }

    async fn validate_again(
        &self,
        lease: &Lease,
        job_id: &str,
        look: &FileLook,
        sending: Option<i64>,
        validate_after: &str,
        message: &str,
        now: &str,
    ) -> Result<bool, StoreError> {
        self.unit(lease, async |tx| {
            jobs::validate_again(tx, job_id, look, sending, validate_after, message, now).await
        })
        .await
    }
}
