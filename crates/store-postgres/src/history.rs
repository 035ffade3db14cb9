//! Queries on `status_history`, the append-only record of every observed status change.

use sqlx::PgExecutor;

use super::StoreError;
use batchwatch_core::model::BatchStatus;
pub use batchwatch_store::history::HistoryRow;

/// A submission's history, oldest first.
pub async fn for_batch(
    db: impl PgExecutor<'_>,
    batch_id: i64,
) -> Result<Vec<HistoryRow>, StoreError> {
    Ok(sqlx::query_as!(
        HistoryRow,
        r#"SELECT id, batch_id, observed_at, status AS "status: BatchStatus", request_total,
                  request_completed, request_failed, raw
           FROM status_history WHERE batch_id = $1 ORDER BY id"#,
        batch_id
    )
    .fetch_all(db)
    .await?)
}
