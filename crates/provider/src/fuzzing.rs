//! What the fuzz targets in `fuzz/` call that is not public otherwise: the pure functions
//! behind the client's answers. Built only with the `fuzzing` feature.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use crate::{ApiError, ApiKey, Operation};

/// What the client makes of one answer of the service: the object a success holds, else the
/// error's class, the way [`crate::Client`] decides them.
pub fn answer<T: DeserializeOwned>(
    op: Operation,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: &ApiKey,
    now: jiff::Timestamp,
) -> Result<T, ApiError> {
    if status.is_success() {
        crate::client::decode_success(op, status.as_u16(), body, key)
    } else {
        Err(ApiError::from_answer(op, status, headers, body, key, now))
    }
}
