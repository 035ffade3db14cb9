//! A job's state, derived from its submissions' states: the rule every backend applies in the
//! transaction that moves a submission, so a job and its batches never disagree.

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
