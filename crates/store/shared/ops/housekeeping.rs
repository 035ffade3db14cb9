//! Housekeeping: retention's pruning, the deletion of the service's copies of files, and
//! resubmissions recorded before their file is published.

use super::Lease;
use crate::chain::{self, NewResubmission, View};
use crate::deletions::{self, Deletion, Origin};
use crate::notifications::{self, NewNotification, Notification, Tried};
use crate::progress::add_event;
use crate::{Store, StoreError, retention};
pub use batchwatch_store::ops::housekeeping::Deleted;
use batchwatch_store::ops::housekeeping::Housekeeping;

impl Housekeeping for Store {
    async fn mark_pruned(
        &self,
        lease: &Lease,
        job_id: &str,
        results: bool,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            retention::mark_pruned(tx, job_id, results, message, now).await?;
            Ok(())
        })
        .await
    }

    async fn delete_jobs(&self, lease: &Lease, ids: &[String]) -> Result<u64, StoreError> {
        self.unit(lease, async |tx| {
            let mut deleted = 0;
            for id in ids {
                deleted += u64::from(retention::delete_job(tx, id).await?);
            }
            Ok(deleted)
        })
        .await
    }

    async fn plan_deletion(
        &self,
        lease: &Lease,
        file_id: &str,
        job_id: Option<&str>,
        kind: &str,
        origin: Origin,
        now: &str,
    ) -> Result<Deletion, StoreError> {
        self.unit(lease, async |tx| {
            let row = deletions::plan_one(tx, file_id, job_id, kind, origin, now).await?;
            Ok(row)
        })
        .await
    }

    async fn record_deletion(
        &self,
        lease: &Lease,
        row: &Deletion,
        outcome: &Deleted,
        message: Option<&str>,
        now: &str,
    ) -> Result<bool, StoreError> {
        self.unit(lease, async |tx| {
            let recorded = match outcome {
                Deleted::Done(done) => deletions::finish(tx, row.id, *done, now).await?,
                Deleted::Failed { error, retry_at } => {
                    deletions::failed(tx, row.id, error, retry_at, now).await? > 0
                }
            };
            if let (true, Some(job_id), Some(message)) = (recorded, &row.job_id, message) {
                add_event(tx, job_id, message, now).await?;
            }
            Ok(recorded)
        })
        .await
    }

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
    ) -> Result<bool, StoreError> {
        self.unit(lease, async |tx| {
            // Recorded before the ones it replaces are withdrawn: a pending resubmission of the
            // same name (another resubmit got there first) refuses it with nothing written.
            if chain::view(tx, job_id).await? != *view
                || !chain::record(tx, new, message, now).await?
            {
                return Ok(false);
            }
            for id in withdrawn {
                chain::withdraw(tx, *id, now).await?;
            }
            if clear_due {
                chain::set_resubmit_due(tx, job_id, None).await?;
            }
            Ok(true)
        })
        .await
    }

    async fn plan_notifications(
        &self,
        lease: &Lease,
        job_id: &str,
        notify: &[NewNotification<'_>],
        now: &str,
    ) -> Result<u64, StoreError> {
        self.unit(lease, async |tx| {
            notifications::plan(tx, job_id, notify, now).await
        })
        .await
    }

    async fn record_notification(
        &self,
        lease: &Lease,
        row: &Notification,
        tried: &Tried,
        message: Option<&str>,
        now: &str,
    ) -> Result<bool, StoreError> {
        self.unit(lease, async |tx| {
            let recorded = notifications::record(tx, row.id, tried, now).await?;
            if recorded && let Some(message) = message {
                add_event(tx, &row.job_id, message, now).await?;
            }
            Ok(recorded)
        })
        .await
    }

    async fn resubmit_done(
        &self,
        lease: &Lease,
        job_id: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            chain::set_resubmit_due(tx, job_id, None).await?;
            add_event(tx, job_id, message, now).await?;
            Ok(())
        })
        .await
    }
}
