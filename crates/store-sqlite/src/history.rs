//! Queries on `status_history`, the append-only record of every observed status change.

use serde::Serialize;
use sqlx::SqliteExecutor;

use super::StoreError;
use batchwatch_core::model::BatchStatus;

/// A row of `status_history`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryRow {
    pub id: i64,
    pub batch_id: i64,
    pub observed_at: String,
    pub status: BatchStatus,
    pub request_total: Option<i64>,
    pub request_completed: Option<i64>,
    pub request_failed: Option<i64>,
    /// The batch object as observed (JSON).
    #[serde(serialize_with = "super::json_text")]
    pub raw: String,
}

/// A submission's history, oldest first.
pub async fn for_batch(
    db: impl SqliteExecutor<'_>,
    batch_id: i64,
) -> Result<Vec<HistoryRow>, StoreError> {
    Ok(sqlx::query_as!(
        HistoryRow,
        r#"SELECT id AS "id!", batch_id, observed_at, status AS "status: BatchStatus", request_total,
                  request_completed, request_failed, raw
           FROM status_history WHERE batch_id = ? ORDER BY id"#,
        batch_id
    )
    .fetch_all(db)
    .await?)
}
