//! Queries on `jobs` and `job_events`.

use sqlx::{SqliteConnection, SqliteExecutor};

use super::{Lease, StoreError, json_list};
use batchwatch_core::model::FileLook;
use batchwatch_core::model::JobState;
pub use batchwatch_store::jobs::{
    Filter, Job, JobEvent, JobLine, JobOverview, NewJob, RecordedFile, Why,
};

/// Records a newly claimed job, in state `validating`, with its first event.
pub async fn insert(
    conn: &mut SqliteConnection,
    job: &NewJob<'_>,
    now: &str,
) -> Result<(), StoreError> {
    let state = JobState::Validating;
    sqlx::query!(
        "INSERT INTO jobs (id, file_name, path, size_bytes, endpoint, completion_window, deadline_at, metadata,
                           output_expires_after, state, created_at, updated_at, provider)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        job.id,
        job.file_name,
        job.path,
        job.size_bytes,
        job.endpoint,
        job.completion_window,
        job.deadline_at,
        job.metadata,
        job.output_expires_after,
        state,
        now,
        now,
        job.provider,
    )
    .execute(&mut *conn)
    .await?;
    add_event(
        conn,
        job.id,
        state,
        &format!("claimed {}", job.file_name),
        now,
    )
    .await
}

/// `query_as!` of whole [`Job`] rows: every column, `FROM jobs`, then `$tail`.
macro_rules! select_jobs {
    ($tail:literal, $($arg:expr),*) => {
        sqlx::query_as!(
            Job,
            r#"SELECT id, file_name, path, size_bytes, sha256, request_count, endpoint, model, completion_window,
                  deadline_at, metadata, output_expires_after, state AS "state: JobState", reason_code, reason,
                  reason_line, attempts, cancel_requested_at, cancel_reason, results_dir, created_at, updated_at,
                  finished_at, provider
           FROM jobs "# + $tail,
            $($arg),*
        )
    };
}

/// One job by id.
pub async fn get(db: impl SqliteExecutor<'_>, id: &str) -> Result<Option<Job>, StoreError> {
    Ok(select_jobs!("WHERE id = ?", id).fetch_optional(db).await?)
}

/// The jobs among `ids`, by id; an id of no job is left out.
pub async fn among(db: impl SqliteExecutor<'_>, ids: &[String]) -> Result<Vec<Job>, StoreError> {
    let ids = json_list(ids);
    Ok(select_jobs!(
        "WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
        ids
    )
    .fetch_all(db)
    .await?)
}

/// Every job in one of `states`, oldest first.
pub async fn in_states(
    db: impl SqliteExecutor<'_>,
    states: &[JobState],
) -> Result<Vec<Job>, StoreError> {
    let wanted = serde_json::to_string(&states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        .expect("strings serialise");
    Ok(select_jobs!(
        "WHERE state IN (SELECT value FROM json_each(?)) ORDER BY id",
        wanted
    )
    .fetch_all(db)
    .await?)
}

/// Moves a job to `state` with `why` (which replaces any earlier reason: the reason always
/// describes the current state), and records an event. Only the edges of the job state machine
/// are taken ([`JobState::sources`]): a terminal job never changes state.
pub async fn set_state(
    conn: &mut SqliteConnection,
    id: &str,
    state: JobState,
    why: Option<&Why>,
    message: &str,
    now: &str,
) -> Result<(), StoreError> {
    let finished_at = state.is_terminal().then_some(now);
    let (code, text, line) = match why {
        Some(w) => (Some(w.code.as_str()), Some(w.message.as_str()), w.line),
        None => (None, None, None),
    };
    let sources = serde_json::to_string(state.sources()).expect("states serialise");
    let updated = sqlx::query!(
        "UPDATE jobs
         SET state = ?, reason_code = ?, reason = ?, reason_line = ?, finished_at = ?, updated_at = ?
         WHERE id = ? AND state IN (SELECT value FROM json_each(?))",
        state,
        code,
        text,
        line,
        finished_at,
        now,
        id,
        sources,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        let found = get(&mut *conn, id).await?.map(|j| j.state);
        return Err(StoreError::job_move_refused(id, found, state));
    }
    add_event(conn, id, state, message, now).await
}

/// Records what the job's file looks like (at its claim).
pub async fn set_file_look(
    conn: &mut SqliteConnection,
    id: &str,
    look: &FileLook,
    now: &str,
) -> Result<(), StoreError> {
    let size = i64::try_from(look.bytes).unwrap_or(i64::MAX);
    // The inode's bit pattern, stored as a signed integer.
    let inode = look.ino as i64;
    sqlx::query!(
        "UPDATE jobs SET size_bytes = ?, file_mtime_ns = ?, file_inode = ?, updated_at = ? WHERE id = ?",
        size,
        look.mtime_ns,
        inode,
        now,
        id,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The job's file as recorded, and until when its validation waits.
pub async fn recorded_file(
    db: impl SqliteExecutor<'_>,
    id: &str,
) -> Result<Option<RecordedFile>, StoreError> {
    Ok(sqlx::query_as!(
        RecordedFile,
        r#"SELECT size_bytes, file_mtime_ns AS "mtime_ns: i64", file_inode AS "inode: i64", validate_after
           FROM jobs WHERE id = ?"#,
        id
    )
    .fetch_optional(db)
    .await?)
}

/// Sends a job whose file changed before any of it reached the service back to `validating`,
/// to be validated again at `validate_after`: records the file as it is now, forgets what the
/// last validation found, drops the job's submissions and records `message` as an event.
///
/// `sending` is a submission whose caller was about to upload it, so nothing of it has been
/// sent. When any other submission has or may have reached the service (an input file, a
/// batch, an upload or create under way, or it is past uploading), or the job is past
/// submitting or being cancelled, nothing changes and the answer is false.
pub async fn validate_again(
    conn: &mut SqliteConnection,
    id: &str,
    look: &FileLook,
    sending: Option<i64>,
    validate_after: &str,
    message: &str,
    now: &str,
) -> Result<bool, StoreError> {
    let sent = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!: i64" FROM batches
           WHERE job_id = ?1 AND id IS NOT ?2
             AND NOT (state IN ('queued', 'uploading') AND input_file_id IS NULL
                      AND remote_id IS NULL AND outcome_unknown_at IS NULL)"#,
        id,
        sending,
    )
    .fetch_one(&mut *conn)
    .await?;
    if sent > 0 {
        return Ok(false);
    }
    let size = i64::try_from(look.bytes).unwrap_or(i64::MAX);
    let inode = look.ino as i64;
    let state = JobState::Validating;
    let sources = serde_json::to_string(state.sources()).expect("states serialise");
    let updated = sqlx::query!(
        "UPDATE jobs
         SET state = ?, size_bytes = ?, file_mtime_ns = ?, file_inode = ?, validate_after = ?,
             sha256 = NULL, request_count = NULL, model = NULL,
             reason_code = NULL, reason = NULL, reason_line = NULL, updated_at = ?
         WHERE id = ? AND state IN (SELECT value FROM json_each(?)) AND cancel_requested_at IS NULL",
        state,
        size,
        look.mtime_ns,
        inode,
        validate_after,
        now,
        id,
        sources,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    sqlx::query!("DELETE FROM batches WHERE job_id = ?", id)
        .execute(&mut *conn)
        .await?;
    add_event(conn, id, state, message, now).await?;
    Ok(true)
}

/// Records what validation found.
pub async fn record_validation(
    conn: &mut SqliteConnection,
    id: &str,
    sha256: &str,
    request_count: i64,
    endpoint: &str,
    model: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET sha256 = ?, request_count = ?, endpoint = ?, model = ?, updated_at = ? WHERE id = ?",
        sha256,
        request_count,
        endpoint,
        model,
        now,
        id,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records where the file is now, relative to the queue root.
pub async fn set_path(
    conn: &mut SqliteConnection,
    id: &str,
    path: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET path = ?, updated_at = ? WHERE id = ?",
        path,
        now,
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records where the results are, relative to the queue root.
pub async fn set_results_dir(
    conn: &mut SqliteConnection,
    id: &str,
    dir: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET results_dir = ?, updated_at = ? WHERE id = ?",
        dir,
        now,
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts one more remote batch for the job.
pub async fn count_attempt(
    conn: &mut SqliteConnection,
    id: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET attempts = attempts + 1, updated_at = ? WHERE id = ?",
        now,
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Asks for a job to be cancelled. Returns false when the job is finished or a cancel was
/// already asked for (the first reason stands).
pub async fn request_cancel(
    conn: &mut SqliteConnection,
    id: &str,
    reason: &str,
    now: &str,
) -> Result<bool, StoreError> {
    let updated = sqlx::query!(
        "UPDATE jobs SET cancel_requested_at = ?, cancel_reason = ?, updated_at = ?
         WHERE id = ? AND cancel_requested_at IS NULL
           AND terminal = 0",
        now,
        reason,
        now,
        id,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Appends an event to a job's story without changing its state.
pub async fn add_event(
    conn: &mut SqliteConnection,
    id: &str,
    state: JobState,
    message: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO job_events (job_id, at, state, message) VALUES (?, ?, ?, ?)",
        id,
        now,
        state,
        message
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A job's events, in order.
pub async fn events(db: impl SqliteExecutor<'_>, id: &str) -> Result<Vec<JobEvent>, StoreError> {
    Ok(sqlx::query_as!(
        JobEvent,
        r#"SELECT at, state AS "state: JobState", message FROM job_events WHERE job_id = ? ORDER BY id"#,
        id
    )
    .fetch_all(db)
    .await?)
}

/// Jobs with their progress, newest first, those `filter` lets through, at most `limit`.
pub async fn overview(
    db: impl SqliteExecutor<'_>,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<JobOverview>, StoreError> {
    Ok(sqlx::query_as!(
        JobOverview,
        r#"SELECT id AS "id!", file_name AS "file_name!", state AS "state!: JobState", reason_code, reason,
                  request_count, remote_status AS "remote_status: String", remote_ids AS "remote_ids: String",
                  requests_completed AS "requests_completed: i64", requests_failed AS "requests_failed: i64",
                  attempts AS "attempts!", deadline_at AS "deadline_at!", cancel_requested_at, path AS "path!",
                  results_dir, created_at AS "created_at!", updated_at AS "updated_at!", finished_at,
                  last_error AS "last_error: String", provider AS "provider: String"
           FROM job_overview o
           WHERE (?1 IS NULL OR state = ?1)
             AND (?2 IS NULL OR file_name GLOB ?2)
             AND (?3 IS NULL OR created_at >= ?3)
             AND (?4 IS NULL OR EXISTS (SELECT 1 FROM jobs j WHERE j.id = o.id AND j.model = ?4))
           ORDER BY id DESC
           LIMIT ?5"#,
        filter.state,
        filter.file,
        filter.since,
        filter.model,
        limit,
    )
    .fetch_all(db)
    .await?)
}

/// One page of jobs, newest first: at most `limit` of those `filter` lets through, after the
/// job `after` (keyset paging on the id, never an offset).
pub async fn page(
    db: impl SqliteExecutor<'_>,
    filter: &Filter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<JobLine>, StoreError> {
    Ok(sqlx::query_as!(
        JobLine,
        r#"WITH page AS (
               SELECT id FROM jobs
               WHERE (?1 IS NULL OR state = ?1)
                 AND (?2 IS NULL OR file_name GLOB ?2)
                 AND (?3 IS NULL OR created_at >= ?3)
                 AND (?4 IS NULL OR model = ?4)
                 AND (?5 IS NULL OR id < ?5)
               ORDER BY id DESC
               LIMIT ?6
           ),
           latest AS (
               SELECT b.job_id, b.request_completed, b.request_failed, b.last_error, b.updated_at, b.id
               FROM batches b JOIN page p ON p.id = b.job_id
               WHERE b.attempt = (SELECT max(x.attempt) FROM batches x
                                  WHERE x.job_id = b.job_id AND x.part = b.part)
           )
           SELECT j.id AS "id!", j.file_name AS "file_name!", j.state AS "state!: JobState", j.model,
                  j.request_count,
                  (SELECT sum(l.request_completed) FROM latest l WHERE l.job_id = j.id) AS "requests_completed: i64",
                  (SELECT sum(l.request_failed) FROM latest l WHERE l.job_id = j.id) AS "requests_failed: i64",
                  (SELECT sum(u.cost_usd) FROM batch_usage u JOIN batches b ON b.id = u.batch_id
                   WHERE b.job_id = j.id) AS "cost_usd: f64",
                  j.reason_code, j.reason,
                  (SELECT l.last_error FROM latest l WHERE l.job_id = j.id AND l.last_error IS NOT NULL
                   ORDER BY l.updated_at DESC, l.id DESC LIMIT 1) AS "last_error: String",
                  j.deadline_at AS "deadline_at!", j.created_at AS "created_at!", j.finished_at
           FROM page p JOIN jobs j ON j.id = p.id
           ORDER BY j.id DESC"#,
        filter.state,
        filter.file,
        filter.since,
        filter.model,
        after,
        limit,
    )
    .fetch_all(db)
    .await?)
}

/// The jobs of a file, newest first: those whose file had this name, or whose file is at one
/// of `paths` (relative to queue.dir, as `jobs.path` holds it).
pub async fn of_file(
    db: impl SqliteExecutor<'_>,
    name: &str,
    paths: &[String],
) -> Result<Vec<String>, StoreError> {
    let paths = serde_json::to_string(paths).expect("strings serialise");
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs
           WHERE file_name = ?1 OR path IN (SELECT value FROM json_each(?2))
           ORDER BY id DESC"#,
        name,
        paths
    )
    .fetch_all(db)
    .await?)
}

/// The number of jobs in each state.
pub async fn state_counts(db: impl SqliteExecutor<'_>) -> Result<Vec<(JobState, i64)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT state AS "state!: JobState", jobs AS "jobs!: i64" FROM job_state_counts"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.jobs)).collect())
}

/// Jobs past their deadline that are not finished and not yet marked for cancel.
pub async fn past_deadline(
    db: impl SqliteExecutor<'_>,
    _held_by: &Lease,
    now: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs
           WHERE deadline_at <= ? AND cancel_requested_at IS NULL
             AND terminal = 0
           ORDER BY id"#,
        now
    )
    .fetch_all(db)
    .await?)
}

/// The ids of the jobs that are not finished, oldest first.
pub async fn unfinished(
    db: impl SqliteExecutor<'_>,
    _held_by: &Lease,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs
           WHERE terminal = 0
           ORDER BY id"#
    )
    .fetch_all(db)
    .await?)
}

/// Jobs marked for cancel that are not finished yet.
pub async fn cancel_pending(
    db: impl SqliteExecutor<'_>,
    _held_by: &Lease,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs
           WHERE cancel_requested_at IS NOT NULL
             AND terminal = 0"#
    )
    .fetch_all(db)
    .await?)
}

/// Up to `limit` claimed jobs waiting for validation, oldest first.
pub async fn validating(
    db: impl SqliteExecutor<'_>,
    _held_by: &Lease,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs WHERE state = 'validating' ORDER BY id LIMIT ?"#,
        limit
    )
    .fetch_all(db)
    .await?)
}

/// Jobs whose every submission is done with (a job in `collecting`, derived from its
/// submissions, with none left to collect): ready to be finished.
pub async fn finishable(
    db: impl SqliteExecutor<'_>,
    _held_by: &Lease,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT j.id AS "id!" FROM jobs j
           WHERE j.state = 'collecting'
             AND EXISTS (SELECT 1 FROM batches b WHERE b.job_id = j.id)
             AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.job_id = j.id
                             AND b.terminal = 0)
           ORDER BY j.id"#
    )
    .fetch_all(db)
    .await?)
}
