//! Queries on `batch_usage` (tokens and estimated cost per remote batch) and its views
//! `job_costs` and `model_costs`.

use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use batchwatch_core::usage::Tokens;
pub use batchwatch_store::usage::{BatchUsage, JobCost, ModelCost};

/// Stores the usage a batch reports, unless its cost is booked (then it stays as booked).
pub async fn store(
    conn: &mut PgConnection,
    batch_id: i64,
    t: &Tokens,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO batch_usage (batch_id, input_tokens, cached_tokens, output_tokens, reasoning_tokens, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (batch_id) DO UPDATE SET
             input_tokens = $2, cached_tokens = $3, output_tokens = $4, reasoning_tokens = $5, updated_at = $6
         WHERE batch_usage.booked_at IS NULL",
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
    conn: &mut PgConnection,
    batch_id: i64,
    cost_usd: Option<f64>,
    now: &str,
) -> Result<bool, StoreError> {
    let booked = sqlx::query!(
        "INSERT INTO batch_usage (batch_id, cost_usd, booked_at, updated_at) VALUES ($1, $2, $3, $3)
         ON CONFLICT (batch_id) DO UPDATE SET cost_usd = $2, booked_at = $3, updated_at = $3
         WHERE batch_usage.booked_at IS NULL",
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
    conn: &mut PgConnection,
    batch_id: i64,
    t: &Tokens,
    cost_usd: Option<f64>,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO batch_usage (batch_id, input_tokens, cached_tokens, output_tokens,
                                  reasoning_tokens, cost_usd, booked_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (batch_id) DO UPDATE SET
             input_tokens = $2, cached_tokens = $3, output_tokens = $4, reasoning_tokens = $5,
             cost_usd = $6, booked_at = coalesce(batch_usage.booked_at, $7), updated_at = $7",
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
pub async fn for_job(db: impl PgExecutor<'_>, job_id: &str) -> Result<Vec<BatchUsage>, StoreError> {
    Ok(sqlx::query_as!(
        BatchUsage,
        r#"SELECT u.batch_id AS "batch_id!", u.input_tokens, u.cached_tokens, u.output_tokens,
                  u.reasoning_tokens, u.cost_usd, u.booked_at
           FROM batch_usage u JOIN batches b ON b.id = u.batch_id
           WHERE b.job_id = $1 ORDER BY u.batch_id"#,
        job_id
    )
    .fetch_all(db)
    .await?)
}

/// The tokens and cost of the jobs given, from `job_costs`. (The view's token sums are
/// NUMERIC in PostgreSQL: read as BIGINT.)
pub async fn job_costs(
    db: impl PgExecutor<'_>,
    job_ids: &[&str],
) -> Result<Vec<JobCost>, StoreError> {
    Ok(sqlx::query_as!(
        JobCost,
        r#"SELECT job_id AS "job_id!", input_tokens::BIGINT AS "input_tokens!",
                  cached_tokens::BIGINT AS "cached_tokens!", output_tokens::BIGINT AS "output_tokens!",
                  reasoning_tokens::BIGINT AS "reasoning_tokens!", cost_usd AS "cost_usd?"
           FROM job_costs WHERE job_id = ANY($1)"#,
        job_ids as &[&str]
    )
    .fetch_all(db)
    .await?)
}

/// Every model's tokens and cost so far, from `model_costs`. (The view's token sums are
/// NUMERIC in PostgreSQL: read as BIGINT.)
pub async fn model_costs(db: impl PgExecutor<'_>) -> Result<Vec<ModelCost>, StoreError> {
    Ok(sqlx::query_as!(
        ModelCost,
        r#"SELECT model AS "model!", input_tokens::BIGINT AS "input_tokens!",
                  cached_tokens::BIGINT AS "cached_tokens!", output_tokens::BIGINT AS "output_tokens!",
                  reasoning_tokens::BIGINT AS "reasoning_tokens!", cost_usd AS "cost_usd?"
           FROM model_costs ORDER BY model"#
    )
    .fetch_all(db)
    .await?)
}
