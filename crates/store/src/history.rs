//! A batch's status history, one row per change seen.

use batchwatch_core::model::BatchStatus;
use serde::Serialize;

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
    #[serde(serialize_with = "crate::json_text")]
    pub raw: String,
}
