//! The port's reads, answered by the query modules on the read pool.
//!
//! Shared by the backends: each includes this file as its `reads` module, and `crate::` is the
//! backend (its query modules and its `Store`, whose `read` pool the reads use).

use batchwatch_core::clock::Timestamp;
use batchwatch_core::config::StuckAfter;
use batchwatch_core::model::{BatchStatus, JobState, SubmissionState};
use batchwatch_store::Reads;

use crate::batches::{StoredPoll, Submission, Tracked};
use crate::chain::{Link, Pending, View};
use crate::deletions::{Deletion, KnownFile};
use crate::figures::{Figures, StuckBatch};
use crate::history::HistoryRow;
use crate::jobs::{Filter, Job, JobEvent, JobLine, JobOverview, RecordedFile};
use crate::notifications::Notification;
use crate::retention::Old;
use crate::usage::{BatchUsage, JobCost, ModelCost};
use crate::{
    Lease, Store, StoreError, batches, chain, deletions, figures, history, jobs, notifications,
    retention, usage,
};

impl Reads for Store {
    // Jobs
    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        jobs::get(&self.read, id).await
    }
    async fn jobs_among(&self, ids: &[String]) -> Result<Vec<Job>, StoreError> {
        jobs::among(&self.read, ids).await
    }
    async fn jobs_in_states(&self, states: &[JobState]) -> Result<Vec<Job>, StoreError> {
        jobs::in_states(&self.read, states).await
    }
    async fn recorded_file(&self, id: &str) -> Result<Option<RecordedFile>, StoreError> {
        jobs::recorded_file(&self.read, id).await
    }
    async fn job_events(&self, id: &str) -> Result<Vec<JobEvent>, StoreError> {
        jobs::events(&self.read, id).await
    }
    async fn overview(&self, filter: &Filter, limit: i64) -> Result<Vec<JobOverview>, StoreError> {
        jobs::overview(&self.read, filter, limit).await
    }
    async fn jobs_page(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobLine>, StoreError> {
        jobs::page(&self.read, filter, after, limit).await
    }
    async fn jobs_of_file(&self, name: &str, paths: &[String]) -> Result<Vec<String>, StoreError> {
        jobs::of_file(&self.read, name, paths).await
    }
    async fn job_state_counts(&self) -> Result<Vec<(JobState, i64)>, StoreError> {
        jobs::state_counts(&self.read).await
    }
    async fn past_deadline(&self, held_by: &Lease, now: &str) -> Result<Vec<String>, StoreError> {
        jobs::past_deadline(&self.read, held_by, now).await
    }
    async fn unfinished_jobs(&self, held_by: &Lease) -> Result<Vec<String>, StoreError> {
        jobs::unfinished(&self.read, held_by).await
    }
    async fn cancel_pending(&self, held_by: &Lease) -> Result<Vec<String>, StoreError> {
        jobs::cancel_pending(&self.read, held_by).await
    }
    async fn validating_jobs(
        &self,
        held_by: &Lease,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        jobs::validating(&self.read, held_by, limit).await
    }
    async fn finishable_jobs(&self, held_by: &Lease) -> Result<Vec<String>, StoreError> {
        jobs::finishable(&self.read, held_by).await
    }

    // Submissions
    async fn submission(&self, id: i64) -> Result<Option<Submission>, StoreError> {
        batches::get(&self.read, id).await
    }
    async fn submission_by_remote_id(
        &self,
        remote_id: &str,
    ) -> Result<Option<Submission>, StoreError> {
        batches::by_remote_id(&self.read, remote_id).await
    }
    async fn submission_by_attempt(
        &self,
        job_id: &str,
        part: i64,
        attempt: i64,
    ) -> Result<Option<Submission>, StoreError> {
        batches::by_attempt(&self.read, job_id, part, attempt).await
    }
    async fn submissions_of(&self, job_id: &str) -> Result<Vec<Submission>, StoreError> {
        batches::for_job(&self.read, job_id).await
    }
    async fn submissions_of_jobs(&self, job_ids: &[String]) -> Result<Vec<Submission>, StoreError> {
        batches::for_jobs(&self.read, job_ids).await
    }
    async fn recorded_submissions(&self) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        batches::recorded(&self.read).await
    }
    async fn watched_for_duplicates(&self, since: &str) -> Result<Vec<Submission>, StoreError> {
        batches::watched_for_duplicates(&self.read, since).await
    }
    async fn batch_status_counts(&self) -> Result<Vec<(BatchStatus, i64)>, StoreError> {
        batches::status_counts(&self.read).await
    }
    async fn due_in_state(
        &self,
        held_by: &Lease,
        state: SubmissionState,
        now: &str,
    ) -> Result<Vec<i64>, StoreError> {
        batches::due_in_state(&self.read, held_by, state, now).await
    }
    async fn due_for_submit(
        &self,
        held_by: &Lease,
        now: &str,
        held_models: &[String],
        unverified_jobs: &[String],
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        batches::due_for_submit(
            &self.read,
            held_by,
            now,
            held_models,
            unverified_jobs,
            limit,
        )
        .await
    }
    async fn tracked(&self) -> Result<Vec<Tracked>, StoreError> {
        batches::tracked(&self.read).await
    }
    async fn stored_polls(
        &self,
        between: Option<(&str, &str)>,
    ) -> Result<Vec<StoredPoll>, StoreError> {
        batches::stored_polls(&self.read, between).await
    }
    async fn next_due(
        &self,
        held_by: &Lease,
        busy_submissions: &[i64],
        busy_jobs: &[&str],
        polls_after: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        batches::next_due(
            &self.read,
            held_by,
            busy_submissions,
            busy_jobs,
            polls_after,
        )
        .await
    }
    async fn history(&self, batch_id: i64) -> Result<Vec<HistoryRow>, StoreError> {
        history::for_batch(&self.read, batch_id).await
    }

    // Resubmission chains
    async fn parent_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        chain::parent_of(&self.read, id).await
    }
    async fn chain_depth(&self, id: &str) -> Result<i64, StoreError> {
        chain::depth(&mut *self.read.acquire().await?, id).await
    }
    async fn chain(&self, id: &str) -> Result<Vec<Link>, StoreError> {
        chain::chain(&self.read, id).await
    }
    async fn resubmission_view(&self, id: &str) -> Result<View, StoreError> {
        chain::view(&mut *self.read.acquire().await?, id).await
    }
    async fn pending_resubmissions(&self) -> Result<Vec<Pending>, StoreError> {
        chain::all_pending(&self.read).await
    }
    async fn resubmit_due(&self) -> Result<Vec<(String, String)>, StoreError> {
        chain::resubmit_due(&self.read).await
    }

    // Remote deletions
    async fn deletions_due(&self, now: &str, limit: i64) -> Result<Vec<Deletion>, StoreError> {
        deletions::due(&self.read, now, limit).await
    }
    async fn next_deletion_due(&self) -> Result<Option<String>, StoreError> {
        deletions::next_due(&self.read).await
    }
    async fn deletions_of(&self, job_id: &str) -> Result<Vec<Deletion>, StoreError> {
        deletions::for_job(&self.read, job_id).await
    }
    async fn pending_deletions(&self) -> Result<i64, StoreError> {
        deletions::pending_count(&self.read).await
    }
    async fn notifications_due(
        &self,
        target: &str,
        now: &str,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        notifications::due(&self.read, target, now, limit).await
    }
    async fn notification_targets_due(&self, now: &str) -> Result<Vec<String>, StoreError> {
        notifications::targets_due(&self.read, now).await
    }
    async fn next_notification_due(&self) -> Result<Option<String>, StoreError> {
        notifications::next_due(&self.read).await
    }
    async fn notifications_of(&self, job_id: &str) -> Result<Vec<Notification>, StoreError> {
        notifications::for_job(&self.read, job_id).await
    }
    async fn known_files(&self) -> Result<Vec<KnownFile>, StoreError> {
        deletions::known_files(&self.read).await
    }
    async fn jobs_ended(&self) -> Result<Vec<(String, bool)>, StoreError> {
        deletions::job_states(&self.read).await
    }

    // Figures, retention, usage
    async fn figures(
        &self,
        stuck_after: &StuckAfter,
        now: Timestamp,
    ) -> Result<Figures, StoreError> {
        figures::read(&self.read, stuck_after, now).await
    }
    async fn stuck(
        &self,
        after: &StuckAfter,
        now: Timestamp,
    ) -> Result<Vec<StuckBatch>, StoreError> {
        figures::stuck(&self.read, after, now).await
    }
    async fn old_with_files(
        &self,
        states: &[JobState],
        before: &str,
    ) -> Result<Vec<Old>, StoreError> {
        retention::with_files(&self.read, states, before).await
    }
    async fn old_with_results(&self, before: &str) -> Result<Vec<Old>, StoreError> {
        retention::with_results(&self.read, before).await
    }
    async fn prunable_jobs(&self, before: &str, limit: i64) -> Result<Vec<String>, StoreError> {
        retention::rows_due(&self.read, before, limit).await
    }
    async fn usage_of(&self, job_id: &str) -> Result<Vec<BatchUsage>, StoreError> {
        usage::for_job(&self.read, job_id).await
    }
    async fn job_costs(&self, job_ids: &[&str]) -> Result<Vec<JobCost>, StoreError> {
        usage::job_costs(&self.read, job_ids).await
    }
    async fn model_costs(&self) -> Result<Vec<ModelCost>, StoreError> {
        usage::model_costs(&self.read).await
    }
}
