//! A job's state, derived from its submissions: called in every transaction that changes a
//! submission, so the job and its batches never disagree.

use sqlx::SqliteConnection;

use crate::jobs::{self, Why};
use crate::{StoreError, batches};
use batchwatch_core::model::{JobState, SubmissionState};

/// The state a job in progress is in, given its submissions' states and whether a cancel was
/// asked for. `None` before it has any submission.
pub fn derive(states: &[SubmissionState], cancel_requested: bool) -> Option<JobState> {
    use SubmissionState as S;
    if states.is_empty() {
        return None;
    }
    let any = |s: S| states.contains(&s);
    Some(
        if cancel_requested && states.iter().any(|s| !s.is_terminal()) {
            JobState::Cancelling
        } else if any(S::Active) {
            JobState::Running
        } else if any(S::Uploading) || any(S::Creating) {
            JobState::Submitting
        } else if any(S::Queued) {
            JobState::Queued
        } else {
            // Collecting, or every submission is done with and the job is about to be finished.
            JobState::Collecting
        },
    )
}

/// Brings a job's state in line with its submissions, recording `message` as the event and
/// `why` as the reason when the state changes (or when `why` is given). Finished and
/// still-validating jobs are left alone.
pub async fn refresh_job(
    conn: &mut SqliteConnection,
    job_id: &str,
    why: Option<&Why>,
    message: &str,
    now: &str,
) -> Result<(), StoreError> {
    let Some(job) = jobs::get(&mut *conn, job_id).await? else {
        return Ok(());
    };
    if job.state.is_terminal() || job.state == JobState::Validating {
        return Ok(());
    }
    let states: Vec<SubmissionState> = batches::for_job(&mut *conn, job_id)
        .await?
        .into_iter()
        .map(|s| s.state)
        .collect();
    let Some(target) = derive(&states, job.cancel_requested_at.is_some()) else {
        return Ok(());
    };
    let reason_changes = why.is_some_and(|w| Some(&w.code) != job.reason_code.as_ref());
    if target != job.state || reason_changes {
        jobs::set_state(conn, job_id, target, why, message, now).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubmissionState as S;

    #[test]
    fn the_job_follows_its_most_advanced_live_submission() {
        assert_eq!(derive(&[], false), None);
        assert_eq!(derive(&[S::Queued], false), Some(JobState::Queued));
        assert_eq!(derive(&[S::Uploading], false), Some(JobState::Submitting));
        assert_eq!(
            derive(&[S::Finished, S::Queued], false),
            Some(JobState::Queued),
            "a retry after back-pressure"
        );
        assert_eq!(
            derive(&[S::Active, S::Creating], false),
            Some(JobState::Running)
        );
        assert_eq!(
            derive(&[S::Collecting, S::Finished], false),
            Some(JobState::Collecting)
        );
        assert_eq!(
            derive(&[S::Finished, S::Lost], false),
            Some(JobState::Collecting)
        );
    }

    #[test]
    fn a_cancel_holds_the_job_in_cancelling_until_every_submission_is_done() {
        assert_eq!(derive(&[S::Active], true), Some(JobState::Cancelling));
        assert_eq!(
            derive(&[S::Collecting, S::Abandoned], true),
            Some(JobState::Cancelling)
        );
        assert_eq!(
            derive(&[S::Finished, S::Abandoned], true),
            Some(JobState::Collecting)
        );
    }
}
