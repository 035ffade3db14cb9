//! Queries on `remote_deletions`: the intents to delete files from the service.
//!
//! ```text
//!   pending ──DELETE answered──▶ deleted
//!      │ ▲
//!      │ └── the request failed: failures + 1, tried again after not_before
//!      └─────404 (already gone)──▶ gone
//! ```
//!
//! A row is written before its request is sent and is repeated until the service answers, so
//! a crash anywhere loses no deletion, and a repeat of one already carried out meets a 404.

use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
pub use batchwatch_store::deletions::{Deletion, Done, KnownFile, Origin};

/// Records the intents to delete every file of an ended job: the input file of each of its
/// submissions (the job's file stays in done/ or failed/), and those of its output and error
/// files whose results are on disk, `on_disk` (file ids). Every other result file is left to
/// its expiry: one whose download was given up on (`results_unavailable`), one that could not
/// be written, one gone from the service. A file already recorded is not recorded again.
/// Returns how many were added.
pub async fn plan_for_job(
    conn: &mut PgConnection,
    job_id: &str,
    on_disk: &[String],
    now: &str,
) -> Result<u64, StoreError> {
    // Rows are added in submission order, and for each submission input, output, errors.
    let added = sqlx::query!(
        "INSERT INTO remote_deletions (file_id, job_id, kind, origin, state, created_at, updated_at)
         SELECT f.file_id, $1::text, f.kind, 'cleanup', 'pending', $2::text, $2::text FROM (
             SELECT input_file_id AS file_id, 'input' AS kind, id, 0 AS n FROM batches
             WHERE job_id = $1 AND input_file_id IS NOT NULL
             UNION ALL
             SELECT output_file_id, 'output', id, 1 FROM batches
             WHERE job_id = $1 AND output_file_id = ANY($3)
             UNION ALL
             SELECT error_file_id, 'errors', id, 2 FROM batches
             WHERE job_id = $1 AND error_file_id = ANY($3)
         ) AS f
         ORDER BY f.id, f.n
         ON CONFLICT (file_id) DO NOTHING",
        job_id,
        now,
        on_disk,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(added)
}

/// Records the intent to delete one file for `gc-remote`; returns its row (an existing one
/// when the file was recorded before).
pub async fn plan_one(
    conn: &mut PgConnection,
    file_id: &str,
    job_id: Option<&str>,
    kind: &str,
    origin: Origin,
    now: &str,
) -> Result<Deletion, StoreError> {
    let origin = origin.as_str();
    sqlx::query!(
        "INSERT INTO remote_deletions (file_id, job_id, kind, origin, state, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'pending', $5, $5)
         ON CONFLICT (file_id) DO NOTHING",
        file_id,
        job_id,
        kind,
        origin,
        now,
    )
    .execute(&mut *conn)
    .await?;
    Ok(by_file(&mut *conn, file_id)
        .await?
        .expect("the row was just written"))
}

/// `SELECT` every column of `remote_deletions` as a [`Deletion`], followed by `$tail`.
macro_rules! select_deletions {
    ($tail:literal, $($arg:expr),*) => {
        sqlx::query_as!(
            Deletion,
            "SELECT id, file_id, job_id, kind, origin, state, failures, not_before, last_error,
                    created_at, updated_at, done_at
             FROM remote_deletions " + $tail,
            $($arg),*
        )
    };
}

/// The deletion of one file, if one was recorded.
pub async fn by_file(
    db: impl PgExecutor<'_>,
    file_id: &str,
) -> Result<Option<Deletion>, StoreError> {
    Ok(select_deletions!("WHERE file_id = $1", file_id)
        .fetch_optional(db)
        .await?)
}

/// Pending deletions due at `now`, oldest first, at most `limit`.
pub async fn due(
    db: impl PgExecutor<'_>,
    now: &str,
    limit: i64,
) -> Result<Vec<Deletion>, StoreError> {
    Ok(select_deletions!(
        "WHERE state = 'pending' AND (not_before IS NULL OR not_before <= $1)
         ORDER BY id LIMIT $2",
        now,
        limit
    )
    .fetch_all(db)
    .await?)
}

/// When the next pending deletion is due: "" when one is due now, `None` when none is pending.
pub async fn next_due(db: impl PgExecutor<'_>) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT min(coalesce(not_before, '')) AS "at?"
           FROM remote_deletions WHERE state = 'pending'"#
    )
    .fetch_one(db)
    .await?)
}

/// The deletions of a job, in order.
pub async fn for_job(db: impl PgExecutor<'_>, job_id: &str) -> Result<Vec<Deletion>, StoreError> {
    Ok(select_deletions!("WHERE job_id = $1 ORDER BY id", job_id)
        .fetch_all(db)
        .await?)
}

/// How many deletions are still pending.
pub async fn pending_count(db: impl PgExecutor<'_>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM remote_deletions WHERE state = 'pending'"#
    )
    .fetch_one(db)
    .await?)
}

/// A pending deletion ended as `done`. Returns false when it was not pending (another
/// process, `gc-remote` beside the daemon, finished it first).
pub async fn finish(
    conn: &mut PgConnection,
    id: i64,
    done: Done,
    now: &str,
) -> Result<bool, StoreError> {
    let state = done.as_str();
    let updated = sqlx::query!(
        "UPDATE remote_deletions SET state = $1, done_at = $2, updated_at = $2, not_before = NULL
         WHERE id = $3 AND state = 'pending'",
        state,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// A deletion's request failed: it is tried again at `retry_at`. Returns the failures so far.
pub async fn failed(
    conn: &mut PgConnection,
    id: i64,
    error: &str,
    retry_at: &str,
    now: &str,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"UPDATE remote_deletions
           SET failures = failures + 1, last_error = $1, not_before = $2, updated_at = $3
           WHERE id = $4 AND state = 'pending'
           RETURNING failures AS "failures!""#,
        error,
        retry_at,
        now,
        id
    )
    .fetch_optional(conn)
    .await?
    .unwrap_or(0))
}

/// Every input, output and error file the database records, with its job and whether that job
/// ended: what `gc-remote` matches the service's files against.
pub async fn known_files(db: impl PgExecutor<'_>) -> Result<Vec<KnownFile>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT b.job_id, b.input_file_id, b.output_file_id, b.error_file_id,
                  j.terminal AS "terminal!",
                  b.results_unavailable IS NULL AS "downloaded!"
           FROM batches b JOIN jobs j ON j.id = b.job_id"#
    )
    .fetch_all(db)
    .await?;
    let mut out = Vec::new();
    for row in rows {
        for (kind, id) in [
            ("input", row.input_file_id),
            ("output", row.output_file_id),
            ("errors", row.error_file_id),
        ] {
            if let Some(file_id) = id {
                out.push(KnownFile {
                    file_id,
                    job_id: row.job_id.clone(),
                    kind,
                    job_terminal: row.terminal,
                    downloaded: row.downloaded,
                });
            }
        }
    }
    Ok(out)
}

/// Every job id with whether it ended.
pub async fn job_states(db: impl PgExecutor<'_>) -> Result<Vec<(String, bool)>, StoreError> {
    Ok(
        sqlx::query!(r#"SELECT id, terminal AS "terminal!" FROM jobs"#)
            .fetch_all(db)
            .await?
            .into_iter()
            .map(|r| (r.id, r.terminal))
            .collect(),
    )
}
