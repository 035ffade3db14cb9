//! What the daemon, its housekeeping, the commands and the monitoring endpoint read from the
//! store. Reads take no lease: they move nothing, and a reader sees what was committed. The
//! reads that pick an instance's work (`held_by`) give only the jobs that instance holds
//! ([`crate::ops::lease`]): [`Lease::SOLE`] holds every job.

use batchwatch_core::clock::Timestamp;
use batchwatch_core::config::StuckAfter;
use batchwatch_core::model::{BatchStatus, JobState, SubmissionState};

use crate::StoreError;
use crate::batches::{StoredPoll, Submission, Tracked};
use crate::chain::{Link, Pending, View};
use crate::deletions::{Deletion, KnownFile};
use crate::figures::{Figures, StuckBatch};
use crate::history::HistoryRow;
use crate::jobs::{Filter, Job, JobEvent, JobLine, JobOverview, RecordedFile};
use crate::notifications::Notification;
use crate::ops::Lease;
use crate::retention::Old;
use crate::usage::{BatchUsage, JobCost, ModelCost};

/// The store's reads.
pub trait Reads {
    // Jobs
    /// One job by id.
    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError>;
    /// The jobs among `ids`, by id; an id of no job is left out. One query for them all, where
    /// [`Reads::job`] for each would be one each (10,000 at a start with 10,000 jobs unfinished).
    async fn jobs_among(&self, ids: &[String]) -> Result<Vec<Job>, StoreError>;
    /// Every job in one of `states`, oldest first.
    async fn jobs_in_states(&self, states: &[JobState]) -> Result<Vec<Job>, StoreError>;
    /// The job's file as recorded, and until when its validation waits.
    async fn recorded_file(&self, id: &str) -> Result<Option<RecordedFile>, StoreError>;
    /// A job's events, in order.
    async fn job_events(&self, id: &str) -> Result<Vec<JobEvent>, StoreError>;
    /// Jobs with their progress, newest first, those `filter` lets through, at most `limit`.
    async fn overview(&self, filter: &Filter, limit: i64) -> Result<Vec<JobOverview>, StoreError>;
    /// One page of jobs, newest first: at most `limit` of those `filter` lets through, after
    /// the job `after` (the last of the page before; `None`: from the newest). Keyset paging:
    /// a page deep in a long list costs what the first does, and a job added or removed
    /// meanwhile shifts no other from its page.
    async fn jobs_page(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobLine>, StoreError>;
    /// The jobs of a file, newest first: those whose file had this name, or whose file is at one
    /// of `paths` (relative to queue.dir, as `jobs.path` holds it).
    async fn jobs_of_file(&self, name: &str, paths: &[String]) -> Result<Vec<String>, StoreError>;
    /// The number of jobs in each state.
    async fn job_state_counts(&self) -> Result<Vec<(JobState, i64)>, StoreError>;
    /// Jobs past their deadline that are not finished and not yet marked for cancel.
    async fn past_deadline(&self, held_by: &Lease, now: &str) -> Result<Vec<String>, StoreError>;
    /// The ids of the jobs that are not finished, oldest first.
    async fn unfinished_jobs(&self, held_by: &Lease) -> Result<Vec<String>, StoreError>;
    /// Jobs marked for cancel that are not finished yet.
    async fn cancel_pending(&self, held_by: &Lease) -> Result<Vec<String>, StoreError>;
    /// Up to `limit` claimed jobs waiting for validation, oldest first.
    async fn validating_jobs(
        &self,
        held_by: &Lease,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// Jobs whose every submission is done with (a job in `collecting`, derived from its
    /// submissions, with none left to collect): ready to be finished.
    async fn finishable_jobs(&self, held_by: &Lease) -> Result<Vec<String>, StoreError>;

    // Submissions
    /// One submission by its local id.
    async fn submission(&self, id: i64) -> Result<Option<Submission>, StoreError>;
    /// One submission by its remote batch id.
    async fn submission_by_remote_id(
        &self,
        remote_id: &str,
    ) -> Result<Option<Submission>, StoreError>;
    /// One submission by its job, part and attempt.
    async fn submission_by_attempt(
        &self,
        job_id: &str,
        part: i64,
        attempt: i64,
    ) -> Result<Option<Submission>, StoreError>;
    /// A job's submissions, in the order they were made.
    async fn submissions_of(&self, job_id: &str) -> Result<Vec<Submission>, StoreError>;
    /// The submissions of the jobs `job_ids`, by job, each job's in the order they were made:
    /// [`Reads::submissions_of`] for many jobs in one query.
    async fn submissions_of_jobs(&self, job_ids: &[String]) -> Result<Vec<Submission>, StoreError>;
    /// Every remote batch the database records for an unfinished job, with the submission it
    /// belongs to: (remote id, job, part, attempt). Finished jobs' batches are left out: they are
    /// never checked again, and a long history holds many.
    async fn recorded_submissions(&self) -> Result<Vec<(String, String, i64, i64)>, StoreError>;
    /// Submissions whose create was sent again since `since`, with their batch: a late duplicate of
    /// the earlier request may still appear.
    async fn watched_for_duplicates(&self, since: &str) -> Result<Vec<Submission>, StoreError>;
    /// The number of remote batches in each remote status.
    async fn batch_status_counts(&self) -> Result<Vec<(BatchStatus, i64)>, StoreError>;
    /// The ids of the submissions in `state` whose next step is due at `now`.
    async fn due_in_state(
        &self,
        held_by: &Lease,
        state: SubmissionState,
        now: &str,
    ) -> Result<Vec<i64>, StoreError>;
    /// Submissions to upload, create or reconcile whose time has come, oldest first, at most
    /// `limit`: those of jobs marked for cancel are left to the cancel step, those of models held
    /// for the enqueued-token limit (`held_models`) and of jobs not yet checked against the
    /// service (`unverified_jobs`) wait.
    async fn due_for_submit(
        &self,
        held_by: &Lease,
        now: &str,
        held_models: &[String],
        unverified_jobs: &[String],
        limit: i64,
    ) -> Result<Vec<i64>, StoreError>;
    /// Every active submission with its batch, for a list sweep.
    async fn tracked(&self) -> Result<Vec<Tracked>, StoreError>;
    /// The stored poll plans (`next_poll_at`) of active submissions: every one, or with
    /// `between` `(after, until)` those planned after `after` and at or before `until`.
    async fn stored_polls(
        &self,
        between: Option<(&str, &str)>,
    ) -> Result<Vec<StoredPoll>, StoreError>;
    /// The earliest stored time at which something becomes due: a back-off's end, a deadline,
    /// a file's re-validation, and with `polls_after` a stored poll plan later than it (one the
    /// leader's schedule has not read yet). The submissions and jobs in `busy_submissions` and
    /// `busy_jobs` (work under way or waiting for a retry) are left out, so their stale times
    /// do not wake the daemon for nothing. Only the polls concern jobs not `held_by`.
    async fn next_due(
        &self,
        held_by: &Lease,
        busy_submissions: &[i64],
        busy_jobs: &[&str],
        polls_after: Option<&str>,
    ) -> Result<Option<String>, StoreError>;
    /// A submission's history, oldest first.
    async fn history(&self, batch_id: i64) -> Result<Vec<HistoryRow>, StoreError>;

    // Resubmission chains
    /// The job a job was resubmitted from.
    async fn parent_of(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// How many resubmissions came before job `id` in its chain: 0 for an original file. A
    /// job's end plans its resubmission while this is under the setting's bound
    /// ([`crate::ops::finish::Resubmit`]).
    async fn chain_depth(&self, id: &str) -> Result<i64, StoreError>;
    /// The chain as `show` lists it.
    async fn chain(&self, id: &str) -> Result<Vec<Link>, StoreError>;
    /// The chain `id` belongs to, as a resubmission of it sees it.
    async fn resubmission_view(&self, id: &str) -> Result<View, StoreError>;
    /// Every resubmission not yet claimed, of every chain.
    async fn pending_resubmissions(&self) -> Result<Vec<Pending>, StoreError>;
    /// The jobs whose undone requests are due to be queued again, with what to queue.
    async fn resubmit_due(&self) -> Result<Vec<(String, String)>, StoreError>;

    // Remote deletions
    /// Pending deletions due at `now`, oldest first, at most `limit`.
    async fn deletions_due(&self, now: &str, limit: i64) -> Result<Vec<Deletion>, StoreError>;
    /// When the next pending deletion is due: "" when one is due now, `None` when none is pending.
    async fn next_deletion_due(&self) -> Result<Option<String>, StoreError>;
    /// The deletions of a job, in order.
    async fn deletions_of(&self, job_id: &str) -> Result<Vec<Deletion>, StoreError>;
    /// How many deletions are still pending.
    async fn pending_deletions(&self) -> Result<i64, StoreError>;
    // Notifications
    /// Entry `target`'s pending notifications due at `now`, soonest first, at most `limit`.
    async fn notifications_due(
        &self,
        target: &str,
        now: &str,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError>;
    /// The `[[notify]]` entries with a pending notification due at `now`, by name.
    async fn notification_targets_due(&self, now: &str) -> Result<Vec<String>, StoreError>;
    /// When the next pending notification is due; `None` when none is pending.
    async fn next_notification_due(&self) -> Result<Option<String>, StoreError>;
    /// The notifications of a job, in order.
    async fn notifications_of(&self, job_id: &str) -> Result<Vec<Notification>, StoreError>;

    /// Every input, output and error file the database records, with its job and whether that job
    /// ended: what `gc-remote` matches the service's files against.
    async fn known_files(&self) -> Result<Vec<KnownFile>, StoreError>;
    /// Every job id with whether it ended.
    async fn jobs_ended(&self) -> Result<Vec<(String, bool)>, StoreError>;

    // Figures, retention, usage
    /// Reads the figures of one scrape.
    async fn figures(
        &self,
        stuck_after: &StuckAfter,
        now: Timestamp,
    ) -> Result<Figures, StoreError>;
    /// The batches stuck at `now`: longest stuck first.
    async fn stuck(
        &self,
        after: &StuckAfter,
        now: Timestamp,
    ) -> Result<Vec<StuckBatch>, StoreError>;
    /// Finished jobs in `states` that ended before `before` and still have their file in done/ or
    /// failed/.
    async fn old_with_files(
        &self,
        states: &[JobState],
        before: &str,
    ) -> Result<Vec<Old>, StoreError>;
    /// Finished jobs that ended before `before` and still have a results directory.
    async fn old_with_results(&self, before: &str) -> Result<Vec<Old>, StoreError>;
    /// Finished jobs that ended before `before` whose rows may be deleted: none of their remote
    /// deletions is still pending. At most `limit`, oldest first.
    async fn prunable_jobs(&self, before: &str, limit: i64) -> Result<Vec<String>, StoreError>;
    /// The usage of a job's batches, by local batch number.
    async fn usage_of(&self, job_id: &str) -> Result<Vec<BatchUsage>, StoreError>;
    /// The tokens and cost of the jobs `job_ids`.
    async fn job_costs(&self, job_ids: &[&str]) -> Result<Vec<JobCost>, StoreError>;
    /// Every model's tokens and cost so far.
    async fn model_costs(&self) -> Result<Vec<ModelCost>, StoreError>;
}
