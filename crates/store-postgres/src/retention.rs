//! Queries for local retention: the finished jobs old enough to lose their files or rows, and
//! the deletion of a finished job's rows. Every query here requires `terminal`: nothing of an
//! unfinished job is ever touched.

use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use batchwatch_core::model::JobState;
pub use batchwatch_store::retention::Old;

/// Finished jobs in `states` that ended before `before` and still have their file in done/ or
/// failed/.
pub async fn with_files(
    db: impl PgExecutor<'_>,
    states: &[JobState],
    before: &str,
) -> Result<Vec<Old>, StoreError> {
    let wanted: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    Ok(sqlx::query_as!(
        Old,
        r#"SELECT id, state AS "state: JobState", path, results_dir FROM jobs
           WHERE terminal AND finished_at < $1 AND files_pruned_at IS NULL
                 AND state = ANY($2)
           ORDER BY finished_at"#,
        before,
        &wanted[..] as &[&str]
    )
    .fetch_all(db)
    .await?)
}

/// Finished jobs that ended before `before` and still have a results directory.
pub async fn with_results(db: impl PgExecutor<'_>, before: &str) -> Result<Vec<Old>, StoreError> {
    Ok(sqlx::query_as!(
        Old,
        r#"SELECT id, state AS "state: JobState", path, results_dir FROM jobs
           WHERE terminal AND finished_at < $1 AND results_pruned_at IS NULL
                 AND results_dir IS NOT NULL
           ORDER BY finished_at"#,
        before
    )
    .fetch_all(db)
    .await?)
}

/// Records that a finished job's file (or results) were removed, with an event.
pub async fn mark_pruned(
    conn: &mut PgConnection,
    id: &str,
    results: bool,
    message: &str,
    now: &str,
) -> Result<(), StoreError> {
    let state = if results {
        sqlx::query_scalar!(
            r#"UPDATE jobs SET results_pruned_at = $1, updated_at = $1 WHERE id = $2 AND terminal
               RETURNING state AS "state: JobState""#,
            now,
            id
        )
        .fetch_optional(&mut *conn)
        .await?
    } else {
        sqlx::query_scalar!(
            r#"UPDATE jobs SET files_pruned_at = $1, updated_at = $1 WHERE id = $2 AND terminal
               RETURNING state AS "state: JobState""#,
            now,
            id
        )
        .fetch_optional(&mut *conn)
        .await?
    };
    if let Some(state) = state {
        super::jobs::add_event(conn, id, state, message, now).await?;
    }
    Ok(())
}

/// Finished jobs that ended before `before` whose rows may be deleted: none of their remote
/// deletions is still pending. At most `limit`, oldest first.
pub async fn rows_due(
    db: impl PgExecutor<'_>,
    before: &str,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs j
           WHERE terminal AND finished_at < $1
                 AND NOT EXISTS (SELECT 1 FROM remote_deletions d
                                 WHERE d.job_id = j.id AND d.state = 'pending')
                 AND NOT EXISTS (SELECT 1 FROM notifications n
                                 WHERE n.job_id = j.id AND n.state = 'pending')
           ORDER BY finished_at LIMIT $2"#,
        before,
        limit
    )
    .fetch_all(db)
    .await?)
}

/// Deletes every row of one finished job: its deletions, usage, status history, batches,
/// events, resubmissions and the job itself. Returns false (and deletes nothing) when the job
/// is not finished.
pub async fn delete_job(conn: &mut PgConnection, id: &str) -> Result<bool, StoreError> {
    let finished = sqlx::query_scalar!(
        r#"SELECT terminal AS "terminal!" FROM jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(false);
    if !finished {
        return Ok(false);
    }
    sqlx::query!("DELETE FROM notifications WHERE job_id = $1", id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM remote_deletions WHERE job_id = $1", id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!(
        "DELETE FROM batch_usage WHERE batch_id IN (SELECT id FROM batches WHERE job_id = $1)",
        id
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "DELETE FROM status_history WHERE batch_id IN (SELECT id FROM batches WHERE job_id = $1)",
        id
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!("DELETE FROM batches WHERE job_id = $1", id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM job_events WHERE job_id = $1", id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM resubmissions WHERE job_id = $1", id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM jobs WHERE id = $1 AND terminal", id)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}
