//! Cancels: asking for one (the daemon at a deadline, an operator with `batchwatch cancel`),
//! giving up what never became a batch, and the cancel request sent for a live one.

use super::Lease;
use crate::jobs::{self, Job};
use crate::progress::refresh_job;
use crate::{Store, StoreError, transitions};
use batchwatch_store::ops::cancel::Cancel;

impl Cancel for Store {
    async fn request_cancel(
        &self,
        job_id: &str,
        reason: &str,
        message: impl FnOnce(&Job) -> String,
        now: &str,
    ) -> Result<(bool, Option<Job>), StoreError> {
        self.transaction(async |tx| {
            let asked = jobs::request_cancel(tx, job_id, reason, now).await?;
            let job = jobs::get(&mut **tx, job_id).await?;
            if let Some(job) = job.as_ref().filter(|_| asked) {
                jobs::add_event(tx, job_id, job.state, &message(job), now).await?;
            }
            Ok((asked, job))
        })
        .await
    }

    async fn cancel_unsent(
        &self,
        lease: &Lease,
        job_id: &str,
        unsent: &[i64],
        why: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            for id in unsent {
                transitions::abandon(tx, *id, why, now).await?;
                refresh_job(tx, job_id, None, why, now).await?;
            }
            refresh_job(tx, job_id, None, message, now).await?;
            Ok(())
        })
        .await
    }

    async fn arm_cancel(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::arm_cancel(tx, id, now).await?;
            Ok(())
        })
        .await
    }

    async fn cancel_sent(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::cancel_sent(tx, id, now).await?;
            Ok(())
        })
        .await
    }
}
