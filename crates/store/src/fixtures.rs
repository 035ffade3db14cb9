//! Rows for unit tests of decisions over a job and its submissions, without a database.

use crate::batches::Submission;
use crate::jobs::Job;
use batchwatch_core::model::{JobState, SubmissionState};

/// A running job `job_x` of one file, `f.jsonl`, of two requests.
pub fn job() -> Job {
    Job {
        id: "job_x".into(),
        file_name: "f.jsonl".into(),
        path: "processing/x".into(),
        size_bytes: 1,
        sha256: None,
        request_count: Some(2),
        endpoint: None,
        model: None,
        completion_window: "24h".into(),
        deadline_at: "2026-11-22T12:00:00.000Z".into(),
        metadata: "{}".into(),
        output_expires_after: None,
        state: JobState::Running,
        reason_code: None,
        reason: None,
        reason_line: None,
        attempts: 1,
        cancel_requested_at: None,
        cancel_reason: None,
        results_dir: None,
        created_at: "t".into(),
        updated_at: "t".into(),
        finished_at: None,
        provider: Some("openai".into()),
    }
}

/// A queued submission of [`job`], one byte long: part `part`, attempt `attempt`.
pub fn submission(part: i64, attempt: i64) -> Submission {
    Submission {
        id: part * 10 + attempt,
        job_id: "job_x".into(),
        part,
        part_start: 0,
        part_end: 1,
        part_requests: 1,
        attempt,
        state: SubmissionState::Queued,
        not_before: None,
        outcome_unknown_at: None,
        resent_at: None,
        remote_id: None,
        upload_id: None,
        status: None,
        request_total: None,
        request_completed: None,
        request_failed: None,
        remote_created_at: None,
        in_progress_at: None,
        expires_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        output_id: None,
        error_output_id: None,
        errors: None,
        raw: None,
        next_poll_at: None,
        last_polled_at: None,
        cancel_requested_at: None,
        cancel_sent_at: None,
        last_error: None,
        results_missing: None,
        collect_failing_since: None,
        results_unavailable: None,
        local_fault_since: None,
        created_at: "t".into(),
        updated_at: "t".into(),
    }
}
