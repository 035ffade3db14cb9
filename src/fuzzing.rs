//! What the fuzz targets in `fuzz/` call that is not public otherwise: the pure functions
//! behind the API client's answers and the merge of a job's result files. Built only with the
//! `fuzzing` feature.

use std::io;
use std::path::Path;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use crate::api::{ApiError, ApiKey, Operation};

/// What the client makes of one answer of the service: the object a success holds, else the
/// error's class, the way [`crate::api::Client`] decides them.
pub fn answer<T: DeserializeOwned>(
    op: Operation,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: &ApiKey,
    now: jiff::Timestamp,
) -> Result<T, ApiError> {
    if status.is_success() {
        crate::api::decode_success(op, status.as_u16(), body, key)
    } else {
        Err(ApiError::from_answer(op, status, headers, body, key, now))
    }
}

/// Merges the downloaded `BATCH.KIND.jsonl` files of `batches` in `dir` into `KIND.jsonl`, as
/// a job's end does.
pub fn merge_results(dir: &Path, batches: &[String], kind: &str) -> io::Result<Option<String>> {
    crate::daemon::finish::merge(dir, batches, kind)
}
