//! Queries on `batch_usage` (tokens and estimated cost per remote batch) and its views
//! `job_costs` and `model_costs`.

use sqlx::{SqliteConnection, SqliteExecutor};

use super::StoreError;
use batchwatch_core::usage::Tokens;
pub use batchwatch_store::usage::{BatchUsage, JobCost, ModelCost};

/// Stores the usage a batch reports, unless its cost is booked (then it stays as booked).
pub async fn store(
    conn: &mut SqliteConnection,
    batch_id: i64,
    t: &Tokens,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO batch_usage (batch_id, input_tokens, cached_tokens, output_tokens, reasoning_tokens, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (batch_id) DO UPDATE SET
             input_tokens = ?2, cached_tokens = ?3, output_tokens = ?4, reasoning_tokens = ?5, updated_at = ?6
         WHERE booked_at IS NULL",
        batch_id,
        t.input,
        t.cached,
        t.output,
        t.reasoning,
        now,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Books a batch's cost, once: returns false when it was booked before.
pub async fn book(
    conn: &mut SqliteConnection,
    batch_id: i64,
    cost_usd: Option<f64>,
    now: &str,
) -> Result<bool, StoreError> {
    let booked = sqlx::query!(
        "INSERT INTO batch_usage (batch_id, cost_usd, booked_at, updated_at) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (batch_id) DO UPDATE SET cost_usd = ?2, booked_at = ?3, updated_at = ?3
         WHERE booked_at IS NULL",
        batch_id,
        cost_usd,
        now,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(booked == 1)
}

/// Books a batch's usage counted from its results (a service that reports it per request, in
/// the results, not on the batch): the tokens and their cost, replacing the empty booking its
/// end made. Repeating it with the same figures changes nothing.
pub async fn book_from_results(
    conn: &mut SqliteConnection,
    batch_id: i64,
    t: &Tokens,
    cost_usd: Option<f64>,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO batch_usage (batch_id, input_tokens, cached_tokens, output_tokens,
                                  reasoning_tokens, cost_usd, booked_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
         ON CONFLICT (batch_id) DO UPDATE SET
             input_tokens = ?2, cached_tokens = ?3, output_tokens = ?4, reasoning_tokens = ?5,
             cost_usd = ?6, booked_at = coalesce(booked_at, ?7), updated_at = ?7",
        batch_id,
        t.input,
        t.cached,
        t.output,
        t.reasoning,
        cost_usd,
        now,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The usage of a job's batches, by local batch number.
pub async fn for_job(
    db: impl SqliteExecutor<'_>,
    job_id: &str,
) -> Result<Vec<BatchUsage>, StoreError> {
    Ok(sqlx::query_as!(
        BatchUsage,
        r#"SELECT u.batch_id AS "batch_id!", u.input_tokens, u.cached_tokens, u.output_tokens,
                  u.reasoning_tokens, u.cost_usd, u.booked_at
           FROM batch_usage u JOIN batches b ON b.id = u.batch_id
           WHERE b.job_id = ? ORDER BY u.batch_id"#,
        job_id
    )
    .fetch_all(db)
    .await?)
}

/// The tokens and cost of the jobs given, as the `job_costs` view sums them. Summed here for
/// those jobs alone: SQLite does not push a filter into the view's GROUP BY, so reading the
/// view for one job summed every job's batches (145 ms a job page at 100,000 jobs).
pub async fn job_costs(
    db: impl SqliteExecutor<'_>,
    job_ids: &[&str],
) -> Result<Vec<JobCost>, StoreError> {
    let wanted = serde_json::to_string(job_ids).expect("strings serialise");
    Ok(sqlx::query_as!(
        JobCost,
        r#"SELECT j.id AS "job_id!",
                  coalesce(sum(u.input_tokens), 0) AS "input_tokens!: i64",
                  coalesce(sum(u.cached_tokens), 0) AS "cached_tokens!: i64",
                  coalesce(sum(u.output_tokens), 0) AS "output_tokens!: i64",
                  coalesce(sum(u.reasoning_tokens), 0) AS "reasoning_tokens!: i64",
                  sum(u.cost_usd) AS "cost_usd: f64"
           FROM jobs j
           LEFT JOIN batches b ON b.job_id = j.id
           LEFT JOIN batch_usage u ON u.batch_id = b.id
           WHERE j.id IN (SELECT value FROM json_each(?))
           GROUP BY j.id"#,
        wanted
    )
    .fetch_all(db)
    .await?)
}

/// Every model's tokens and cost so far, from `model_costs`.
pub async fn model_costs(db: impl SqliteExecutor<'_>) -> Result<Vec<ModelCost>, StoreError> {
    Ok(sqlx::query_as!(
        ModelCost,
        r#"SELECT model AS "model!", input_tokens AS "input_tokens!: i64",
                  cached_tokens AS "cached_tokens!: i64", output_tokens AS "output_tokens!: i64",
                  reasoning_tokens AS "reasoning_tokens!: i64", cost_usd AS "cost_usd: f64"
           FROM model_costs ORDER BY model"#
    )
    .fetch_all(db)
    .await?)
}
