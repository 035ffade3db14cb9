//! Queries on `batches` (one row per submission of a part of a job) and the status history
//! written beside them.

use sqlx::{SqliteConnection, SqliteExecutor};

use super::{Lease, StoreError, json_list};
use batchwatch_core::model::{BatchStatus, SubmissionState};
pub use batchwatch_store::batches::{
    NewSubmission, Observation, Recorded, StoredPoll, Submission, Tracked,
};

/// Records the intent to submit a part; returns the row's id.
pub async fn insert(
    conn: &mut SqliteConnection,
    new: &NewSubmission<'_>,
    now: &str,
) -> Result<i64, StoreError> {
    let state = SubmissionState::Queued;
    let id = sqlx::query!(
        "INSERT INTO batches (job_id, part, part_start, part_end, part_requests, attempt, state, not_before,
                              created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        new.job_id,
        new.part,
        new.part_start,
        new.part_end,
        new.part_requests,
        new.attempt,
        state,
        new.not_before,
        now,
        now,
    )
    .execute(conn)
    .await?
    .last_insert_rowid();
    Ok(id)
}

macro_rules! select_submissions {
    ($tail:literal, $($arg:expr),*) => {
        sqlx::query_as!(
            Submission,
            r#"SELECT id AS "id!", job_id, part, part_start, part_end, part_requests, attempt,
                      state AS "state: SubmissionState", not_before, outcome_unknown_at, resent_at, remote_id, input_file_id AS upload_id,
                      status AS "status: BatchStatus", request_total, request_completed, request_failed,
                      remote_created_at, in_progress_at, expires_at, finalizing_at, completed_at, failed_at,
                      expired_at, cancelling_at, cancelled_at, output_file_id AS output_id,
                      error_file_id AS error_output_id, errors, raw,
                      next_poll_at, last_polled_at, cancel_requested_at, cancel_sent_at, last_error,
                      results_missing, collect_failing_since, results_unavailable, local_fault_since,
                      created_at, updated_at
               FROM batches "# + $tail,
            $($arg),*
        )
    };
}

/// One submission by its local id.
pub async fn get(db: impl SqliteExecutor<'_>, id: i64) -> Result<Option<Submission>, StoreError> {
    Ok(select_submissions!("WHERE id = ?", id)
        .fetch_optional(db)
        .await?)
}

/// One submission by its remote batch id.
pub async fn by_remote_id(
    db: impl SqliteExecutor<'_>,
    remote_id: &str,
) -> Result<Option<Submission>, StoreError> {
    Ok(select_submissions!("WHERE remote_id = ?", remote_id)
        .fetch_optional(db)
        .await?)
}

/// Every remote batch the database records for an unfinished job, with the submission it
/// belongs to: (remote id, job, part, attempt). Finished jobs' batches are left out: they are
/// never checked again, and a long history holds many.
pub async fn recorded(
    db: impl SqliteExecutor<'_>,
) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
    Ok(sqlx::query!(
        r#"SELECT b.remote_id AS "remote_id!", b.job_id, b.part, b.attempt
           FROM batches b JOIN jobs j ON j.id = b.job_id
           WHERE b.remote_id IS NOT NULL AND j.terminal = 0"#
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|r| (r.remote_id, r.job_id, r.part, r.attempt))
    .collect())
}

/// One submission by its job, part and attempt.
pub async fn by_attempt(
    db: impl SqliteExecutor<'_>,
    job_id: &str,
    part: i64,
    attempt: i64,
) -> Result<Option<Submission>, StoreError> {
    Ok(select_submissions!(
        "WHERE job_id = ? AND part = ? AND attempt = ?",
        job_id,
        part,
        attempt
    )
    .fetch_optional(db)
    .await?)
}

/// A submission's state as it is now.
pub async fn state(db: impl SqliteExecutor<'_>, id: i64) -> Result<SubmissionState, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT state AS "state: SubmissionState" FROM batches WHERE id = ?"#,
        id
    )
    .fetch_one(db)
    .await?)
}

/// A job's submissions, in the order they were made.
pub async fn for_job(
    db: impl SqliteExecutor<'_>,
    job_id: &str,
) -> Result<Vec<Submission>, StoreError> {
    Ok(
        select_submissions!("WHERE job_id = ? ORDER BY part, attempt", job_id)
            .fetch_all(db)
            .await?,
    )
}

/// The submissions of the jobs `job_ids`, by job, each job's in the order they were made.
pub async fn for_jobs(
    db: impl SqliteExecutor<'_>,
    job_ids: &[String],
) -> Result<Vec<Submission>, StoreError> {
    let job_ids = json_list(job_ids);
    Ok(select_submissions!(
        "WHERE job_id IN (SELECT value FROM json_each(?)) ORDER BY job_id, part, attempt",
        job_ids
    )
    .fetch_all(db)
    .await?)
}

/// Submissions whose create was sent again since `since`, with their batch: a late duplicate of
/// the earlier request may still appear.
pub async fn watched_for_duplicates(
    db: impl SqliteExecutor<'_>,
    since: &str,
) -> Result<Vec<Submission>, StoreError> {
    Ok(select_submissions!(
        // In the order of the index on resent_at, which spares reading every row.
        "WHERE resent_at >= ? AND remote_id IS NOT NULL ORDER BY resent_at, id",
        since
    )
    .fetch_all(db)
    .await?)
}

/// Records what was seen of the remote batch, and appends a history row when its status or
/// request counts changed. A terminal status is never replaced by another.
pub async fn record_observation(
    conn: &mut SqliteConnection,
    id: i64,
    seen: &Observation,
    observed_at: &str,
) -> Result<Recorded, StoreError> {
    let before = sqlx::query!(
        r#"SELECT status AS "status: BatchStatus", request_total, request_completed, request_failed
           FROM batches WHERE id = ?"#,
        id
    )
    .fetch_one(&mut *conn)
    .await?;
    if let (Some(stored), Some(status)) = (&before.status, &seen.status)
        && stored.is_terminal()
        && stored != status
    {
        return Ok(Recorded::RefusedAfterTerminal {
            stored: stored.clone(),
            seen: status.clone(),
        });
    }
    let changed = seen.status.is_some()
        && (before.status != seen.status
            || before.request_total != seen.request_total
            || before.request_completed != seen.request_completed
            || before.request_failed != seen.request_failed);

    sqlx::query!(
        "UPDATE batches SET
            remote_id = ?, input_file_id = coalesce(?, input_file_id), status = coalesce(?, status),
            request_total = ?, request_completed = ?, request_failed = ?,
            remote_created_at = ?, in_progress_at = ?, expires_at = ?, finalizing_at = ?, completed_at = ?,
            failed_at = ?, expired_at = ?, cancelling_at = ?, cancelled_at = ?,
            output_file_id = ?, error_file_id = ?, errors = ?, raw = ?, last_polled_at = ?, updated_at = ?
         WHERE id = ?",
        seen.remote_id,
        seen.upload_id,
        seen.status,
        seen.request_total,
        seen.request_completed,
        seen.request_failed,
        seen.created_at,
        seen.in_progress_at,
        seen.expires_at,
        seen.finalizing_at,
        seen.completed_at,
        seen.failed_at,
        seen.expired_at,
        seen.cancelling_at,
        seen.cancelled_at,
        seen.output_id,
        seen.error_output_id,
        seen.errors,
        seen.raw,
        observed_at,
        observed_at,
        id,
    )
    .execute(&mut *conn)
    .await?;

    if !changed {
        return Ok(Recorded::Unchanged);
    }
    sqlx::query!(
        "INSERT INTO status_history (batch_id, observed_at, status, request_total, request_completed, request_failed, raw)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        id,
        observed_at,
        seen.status,
        seen.request_total,
        seen.request_completed,
        seen.request_failed,
        seen.raw,
    )
    .execute(conn)
    .await?;
    Ok(Recorded::Changed)
}

/// The number of remote batches in each remote status.
pub async fn status_counts(
    db: impl SqliteExecutor<'_>,
) -> Result<Vec<(BatchStatus, i64)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT status AS "status: BatchStatus", batches AS "batches!: i64" FROM batch_status_counts"#
    )
    .fetch_all(db)
    .await?;
    // A batch the service named without ever telling its status (a row written by hand, say)
    // has none to count under.
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.status?, r.batches)))
        .collect())
}

/// The ids of the submissions in `state` whose next step is due at `now`.
pub async fn due_in_state(
    db: impl SqliteExecutor<'_>,
    _held_by: &Lease,
    state: SubmissionState,
    now: &str,
) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM batches
           WHERE state = ? AND (not_before IS NULL OR not_before <= ?)
           ORDER BY id"#,
        state,
        now
    )
    .fetch_all(db)
    .await?)
}

/// Submissions to upload, create or reconcile whose time has come, oldest first, at most
/// `limit`: those of jobs marked for cancel are left to the cancel step, those of models held
/// for the enqueued-token limit (`held_models`) and of jobs not yet checked against the
/// service (`unverified_jobs`) wait.
pub async fn due_for_submit(
    db: impl SqliteExecutor<'_>,
    _held_by: &Lease,
    now: &str,
    held_models: &[String],
    unverified_jobs: &[String],
    limit: i64,
) -> Result<Vec<i64>, StoreError> {
    let (held_models, unverified_jobs) = (json_list(held_models), json_list(unverified_jobs));
    Ok(sqlx::query_scalar!(
        r#"SELECT b.id AS "id!"
           FROM batches b JOIN jobs j ON j.id = b.job_id
           WHERE b.state IN ('queued', 'uploading', 'creating')
             AND (b.not_before IS NULL OR b.not_before <= ?)
             AND j.cancel_requested_at IS NULL
             AND (j.model IS NULL OR j.model NOT IN (SELECT value FROM json_each(?)))
             AND j.id NOT IN (SELECT value FROM json_each(?))
           ORDER BY b.id LIMIT ?"#,
        now,
        held_models,
        unverified_jobs,
        limit
    )
    .fetch_all(db)
    .await?)
}

/// Every active submission with its batch, for a list sweep.
pub async fn tracked(db: impl SqliteExecutor<'_>) -> Result<Vec<Tracked>, StoreError> {
    Ok(sqlx::query_as!(
        Tracked,
        r#"SELECT b.id AS "id!", b.remote_id AS "remote_id!", b.status AS "status: BatchStatus",
                  b.request_total, b.request_completed, b.request_failed, b.remote_created_at,
                  b.created_at, j.deadline_at, b.next_poll_at,
                  b.last_error IS NOT NULL AS "erred!: bool"
           FROM batches b JOIN jobs j ON j.id = b.job_id
           WHERE b.state = 'active' AND b.remote_id IS NOT NULL"#
    )
    .fetch_all(db)
    .await?)
}

/// The stored poll plans of active submissions: every one, or those planned after `after`
/// and at or before `until` (`between`), found through the `(state, next_poll_at)` index.
pub async fn stored_polls(
    db: impl SqliteExecutor<'_>,
    between: Option<(&str, &str)>,
) -> Result<Vec<StoredPoll>, StoreError> {
    Ok(match between {
        None => {
            sqlx::query_as!(
                StoredPoll,
                r#"SELECT id AS "id!", next_poll_at FROM batches WHERE state = 'active'"#
            )
            .fetch_all(db)
            .await?
        }
        Some((after, until)) => {
            sqlx::query_as!(
                StoredPoll,
                r#"SELECT id AS "id!", next_poll_at FROM batches
               WHERE state = 'active' AND next_poll_at > ? AND next_poll_at <= ?"#,
                after,
                until
            )
            .fetch_all(db)
            .await?
        }
    })
}

/// The earliest stored time at which something becomes due: a back-off's end, a deadline, a
/// file's re-validation, and with `polls_after` the first stored poll plan later than it (the
/// leader's schedule has read those before). The submissions and jobs named in
/// `busy_submissions` and `busy_jobs` (work under way or waiting for a retry) are left out, so
/// their stale times do not wake the daemon for nothing.
pub async fn next_due(
    db: impl SqliteExecutor<'_>,
    _held_by: &Lease,
    busy_submissions: &[i64],
    busy_jobs: &[&str],
    polls_after: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let (busy_submissions, busy_jobs) = (json_list(busy_submissions), json_list(busy_jobs));
    Ok(sqlx::query_scalar!(
        r#"SELECT min(t) AS "t: String" FROM (
               SELECT (SELECT next_poll_at FROM batches
                       WHERE ?3 IS NOT NULL AND state = 'active' AND next_poll_at > ?3
                         AND id NOT IN (SELECT value FROM json_each(?1))
                       ORDER BY next_poll_at LIMIT 1) AS t
               UNION ALL
               SELECT (SELECT not_before FROM batches
                       WHERE terminal = 0 AND not_before IS NOT NULL
                         AND id NOT IN (SELECT value FROM json_each(?1))
                       ORDER BY not_before LIMIT 1)
               UNION ALL
               SELECT (SELECT deadline_at FROM jobs
                       WHERE terminal = 0 AND cancel_requested_at IS NULL
                       ORDER BY deadline_at LIMIT 1)
               UNION ALL
               SELECT (SELECT validate_after FROM jobs
                       WHERE state = 'validating' AND validate_after IS NOT NULL
                         AND id NOT IN (SELECT value FROM json_each(?2))
                       ORDER BY validate_after LIMIT 1)
           )"#,
        busy_submissions,
        busy_jobs,
        polls_after,
    )
    .fetch_one(db)
    .await?)
}

/// Marks every upload or create that was under way as of unknown outcome: after a restart
/// nobody knows whether it reached the server. Returns how many.
pub async fn mark_in_flight_unknown(
    conn: &mut SqliteConnection,
    _held_by: &Lease,
    now: &str,
) -> Result<u64, StoreError> {
    Ok(sqlx::query!(
        "UPDATE batches SET outcome_unknown_at = coalesce(outcome_unknown_at, ?), updated_at = ?
         WHERE state IN ('uploading', 'creating')
           AND NOT (state = 'creating' AND input_file_id IS NULL)",
        now,
        now
    )
    .execute(conn)
    .await?
    .rows_affected())
}

/// Brings the next poll of every active submission forward to `latest` when it is later
/// (a reload shortened `poll.max_interval`). Returns how many moved.
pub async fn poll_by(conn: &mut SqliteConnection, latest: &str) -> Result<u64, StoreError> {
    Ok(sqlx::query!(
        "UPDATE batches SET next_poll_at = ?1 WHERE state = 'active' AND next_poll_at > ?1",
        latest
    )
    .execute(conn)
    .await?
    .rows_affected())
}
