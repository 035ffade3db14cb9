//! Finishing: a batch's results collected (or given up, or waiting on a local fault), and the
//! job's end, with the remote files to delete and its resubmission (of what expired, or failed
//! for a reason worth retrying) planned in the same transaction.

use super::Lease;
use crate::batches::Submission;
use crate::jobs::{self};
use crate::progress::add_event;
use crate::progress::refresh_job;
use crate::{Store, StoreError, chain, deletions, notifications, transitions};
use batchwatch_core::usage::Tokens;
pub use batchwatch_store::ops::finish::Ending;
use batchwatch_store::ops::finish::Finish;

impl Finish for Store {
    async fn finish_job(
        &self,
        lease: &Lease,
        ending: &Ending<'_>,
        now: &str,
    ) -> Result<(), StoreError> {
        let job_id = ending.job_id;
        self.unit(lease, async |tx| {
            if let Some(dir) = ending.results_dir {
                jobs::set_results_dir(tx, job_id, dir, now).await?;
            }
            jobs::set_state(tx, job_id, ending.state, ending.why, ending.message, now).await?;
            if let Some(on_disk) = ending.delete_remote {
                deletions::plan_for_job(tx, job_id, on_disk, now).await?;
            }
            if let Some(resubmit) = ending.resubmit
                && resubmit.at_most > 0
                && chain::depth(tx, job_id).await? < resubmit.at_most
            {
                chain::set_resubmit_due(tx, job_id, Some(resubmit.only)).await?;
            }
            notifications::plan(tx, job_id, ending.notify, now).await?;
            Ok(())
        })
        .await
    }

    async fn set_path(
        &self,
        lease: &Lease,
        job_id: &str,
        path: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            jobs::set_path(tx, job_id, path, now).await?;
            Ok(())
        })
        .await
    }

    async fn collected(
        &self,
        lease: &Lease,
        row: &Submission,
        missing: Option<&str>,
        usage: Option<(&Tokens, Option<f64>)>,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::collected(tx, row.id, missing, now).await?;
            if let Some((tokens, cost_usd)) = usage {
                crate::usage::book_from_results(&mut *tx, row.id, tokens, cost_usd, now).await?;
            }
            refresh_job(tx, &row.job_id, None, message, now).await?;
            Ok(())
        })
        .await
    }

    async fn wait_on_local_fault(
        &self,
        lease: &Lease,
        row: &Submission,
        error: &str,
        retry_at: &str,
        message: Option<&str>,
        now: &str,
    ) -> Result<String, StoreError> {
        self.unit(lease, async |tx| {
            let since = transitions::wait_on_local_fault(tx, row.id, error, retry_at, now).await?;
            if let Some(message) = message {
                add_event(tx, &row.job_id, message, now).await?;
            }
            Ok(since)
        })
        .await
    }

    async fn note_collect_failure(
        &self,
        lease: &Lease,
        id: i64,
        now: &str,
    ) -> Result<String, StoreError> {
        self.unit(lease, async |tx| {
            let since = transitions::note_collect_failure(tx, id, now).await?;
            Ok(since)
        })
        .await
    }

    async fn give_up_results(
        &self,
        lease: &Lease,
        row: &Submission,
        why: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::give_up_results(tx, row.id, why, now).await?;
            add_event(tx, &row.job_id, message, now).await?;
            refresh_job(tx, &row.job_id, None, "results given up", now).await?;
            Ok(())
        })
        .await
    }
}
