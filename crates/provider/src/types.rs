//! The API's objects, field for field as in the reference OpenAPI description (`Batch`,
//! `OpenAIFile`, the list responses, `CreateBatchRequest`, `DeleteFileResponse`).
//!
//! Parsing is tolerant, because Azure and OpenAI-compatible servers differ from the spec and a
//! poll that fails to parse is a poll lost:
//! - unknown fields are ignored;
//! - every field outside `required` may be missing or null (real responses send null);
//! - a malformed optional field becomes `None` instead of failing the whole object;
//! - the status is a [`BatchStatus`]: known names in any case, anything else kept verbatim;
//! - timestamps are integer or fractional unix seconds, numeric strings, or RFC 3339 strings
//!   (Azure samples use strings), with or without an offset (none means UTC).
//!
//! A [`Batch`] keeps the raw JSON it was parsed from, so the store can record exactly what the
//! server said.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use batchwatch_core::model::BatchStatus;

/// A batch, as the API describes it, with the JSON it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub id: String,
    /// Always `batch` from OpenAI; empty when a server leaves it out.
    pub object: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub errors: Option<BatchErrors>,
    /// What the batch was made from: the upload it runs, when the service has an upload step
    /// and names it.
    pub upload_id: Option<String>,
    pub completion_window: String,
    pub status: BatchStatus,
    /// Where the results of the requests that succeeded are, once there are any.
    pub output_id: Option<String>,
    /// Where the results of the requests that failed are, once there are any.
    pub error_output_id: Option<String>,
    /// Required by the spec, but `None` rather than a failed parse if it is unreadable.
    pub created_at: Option<jiff::Timestamp>,
    pub in_progress_at: Option<jiff::Timestamp>,
    pub expires_at: Option<jiff::Timestamp>,
    pub finalizing_at: Option<jiff::Timestamp>,
    pub completed_at: Option<jiff::Timestamp>,
    pub failed_at: Option<jiff::Timestamp>,
    pub expired_at: Option<jiff::Timestamp>,
    pub cancelling_at: Option<jiff::Timestamp>,
    pub cancelled_at: Option<jiff::Timestamp>,
    pub request_counts: Option<RequestCounts>,
    pub usage: Option<BatchUsage>,
    /// The batch's metadata; string values only (a non-string value, not allowed by the spec,
    /// is left out). Read through [`Batch::claim`] and [`Batch::file_digest`].
    pub(crate) metadata: Option<BTreeMap<String, String>>,
    /// The whole object as received.
    pub raw: Value,
}

impl Batch {
    /// A batch known only by its id and status, every other field empty: what a provider
    /// fills in from its own shape.
    pub fn new(id: &str, status: BatchStatus) -> Batch {
        Batch {
            id: id.to_owned(),
            object: String::new(),
            endpoint: String::new(),
            model: None,
            errors: None,
            upload_id: None,
            completion_window: String::new(),
            raw: serde_json::json!({"id": id, "status": status.as_str()}),
            status,
            output_id: None,
            error_output_id: None,
            created_at: None,
            in_progress_at: None,
            expires_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: None,
            usage: None,
            metadata: None,
        }
    }

    /// A metadata value, if the batch has that key.
    pub(crate) fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key).map(String::as_str)
    }

    /// The errors the batch reports, empty when it reports none.
    pub fn error_list(&self) -> &[BatchError] {
        self.errors.as_ref().map_or(&[], |e| e.data.as_slice())
    }
}

/// The typed fields of a batch; [`Batch`] adds the raw JSON.
#[derive(Deserialize)]
struct BatchFields {
    id: String,
    status: BatchStatus,
    #[serde(default, deserialize_with = "text_or_empty")]
    object: String,
    #[serde(default, deserialize_with = "text_or_empty")]
    endpoint: String,
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    errors: Option<BatchErrors>,
    #[serde(default, deserialize_with = "text_or_empty")]
    input_file_id: String,
    #[serde(default, deserialize_with = "text_or_empty")]
    completion_window: String,
    #[serde(default, deserialize_with = "lenient")]
    output_file_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    error_file_id: Option<String>,
    #[serde(default, deserialize_with = "timestamp")]
    created_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    in_progress_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    expires_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    finalizing_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    completed_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    failed_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    expired_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    cancelling_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    cancelled_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "lenient")]
    request_counts: Option<RequestCounts>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<BatchUsage>,
    #[serde(default, deserialize_with = "string_map")]
    metadata: Option<BTreeMap<String, String>>,
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Value::deserialize(d)?;
        let f = BatchFields::deserialize(&raw).map_err(serde::de::Error::custom)?;
        Ok(Batch {
            id: f.id,
            object: f.object,
            endpoint: f.endpoint,
            model: f.model,
            errors: f.errors,
            upload_id: Some(f.input_file_id).filter(|id| !id.is_empty()),
            completion_window: f.completion_window,
            status: f.status,
            output_id: f.output_file_id,
            error_output_id: f.error_file_id,
            created_at: f.created_at,
            in_progress_at: f.in_progress_at,
            expires_at: f.expires_at,
            finalizing_at: f.finalizing_at,
            completed_at: f.completed_at,
            failed_at: f.failed_at,
            expired_at: f.expired_at,
            cancelling_at: f.cancelling_at,
            cancelled_at: f.cancelled_at,
            request_counts: f.request_counts,
            usage: f.usage,
            metadata: f.metadata,
            raw,
        })
    }
}

/// A batch's `errors`: `{object: "list", data: [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BatchErrors {
    #[serde(default, deserialize_with = "lenient")]
    pub object: Option<String>,
    #[serde(default, deserialize_with = "lenient_list")]
    pub data: Vec<BatchError>,
}

/// One error of a batch, such as `token_limit_exceeded`, or an input line that broke a rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BatchError {
    #[serde(default, deserialize_with = "lenient")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub message: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub param: Option<String>,
    /// The input file line the error is about, when it is about one.
    #[serde(default, deserialize_with = "lenient")]
    pub line: Option<u64>,
}

/// `BatchRequestCounts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// A batch's token `usage` (batches created after 2025-09-07).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct BatchUsage {
    pub input_tokens: u64,
    #[serde(default, deserialize_with = "lenient")]
    pub input_tokens_details: Option<InputTokensDetails>,
    pub output_tokens: u64,
    #[serde(default, deserialize_with = "lenient")]
    pub output_tokens_details: Option<OutputTokensDetails>,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct InputTokensDetails {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: u64,
}

/// A file, as the API describes it (`OpenAIFile`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FileObject {
    pub id: String,
    #[serde(default, deserialize_with = "text_or_empty")]
    pub object: String,
    /// The size in bytes. Required by the spec; `None` only from a server that leaves it out,
    /// in which case a download is checked against `Content-Length` instead.
    #[serde(default, deserialize_with = "lenient")]
    pub bytes: Option<u64>,
    #[serde(default, deserialize_with = "timestamp")]
    pub created_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "timestamp")]
    pub expires_at: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "text_or_empty")]
    pub filename: String,
    #[serde(default, deserialize_with = "text_or_empty")]
    pub purpose: String,
    /// Deprecated by the API.
    #[serde(default, deserialize_with = "lenient")]
    pub status: Option<String>,
    /// Deprecated by the API.
    #[serde(default, deserialize_with = "lenient")]
    pub status_details: Option<String>,
}

/// The answer to a file delete (`DeleteFileResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileDeleted {
    pub id: String,
    #[serde(default, deserialize_with = "text_or_empty")]
    pub object: String,
    pub deleted: bool,
}

/// One page of a list (`ListBatchesResponse`, `ListFilesResponse`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ListPage<T> {
    #[serde(default, deserialize_with = "text_or_empty")]
    pub object: String,
    pub data: Vec<T>,
    #[serde(default, deserialize_with = "lenient")]
    pub first_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub last_id: Option<String>,
    /// Missing or null is taken as "no more pages".
    #[serde(default, deserialize_with = "lenient")]
    pub has_more: Option<bool>,
}

impl<T> ListPage<T> {
    /// The same page, each object turned into another shape.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> ListPage<U> {
        ListPage {
            object: self.object,
            data: self.data.into_iter().map(f).collect(),
            first_id: self.first_id,
            last_id: self.last_id,
            has_more: self.has_more,
        }
    }
}

/// The body of `POST /batches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateBatchRequest {
    pub input_file_id: String,
    /// Such as `/v1/chat/completions`.
    pub endpoint: String,
    /// `24h` is the only window OpenAI accepts.
    pub completion_window: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_expires_after: Option<OutputExpiresAfter>,
}

/// When a batch's output and error files expire (`BatchFileExpirationAfter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutputExpiresAfter {
    pub anchor: ExpiryAnchor,
    /// 3600 (1 hour) to 2592000 (30 days).
    pub seconds: u64,
}

impl OutputExpiresAfter {
    /// Expiry `seconds` after each file's creation, the only anchor the API has.
    pub fn after_creation(seconds: u64) -> OutputExpiresAfter {
        OutputExpiresAfter {
            anchor: ExpiryAnchor::CreatedAt,
            seconds,
        }
    }
}

/// The time an expiry counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryAnchor {
    CreatedAt,
}

/// Parses a field as `T`, or `None` when it is missing, null or malformed.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// Parses a list, skipping the items that are malformed.
fn lenient_list<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect(),
        _ => Vec::new(),
    })
}

/// A string field the spec requires: empty when missing, null or not a string.
fn text_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        _ => String::new(),
    })
}

/// A string-to-string map; values of other types are left out.
fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(map) => Some(
            map.into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k, s)),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    })
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<jiff::Timestamp>, D::Error> {
    Ok(parse_timestamp(&Value::deserialize(d)?))
}

/// A timestamp from unix seconds (integer, fractional, or a numeric string) or an RFC 3339
/// string; a string without an offset is taken as UTC. Anything else is `None`.
pub fn parse_timestamp(value: &Value) -> Option<jiff::Timestamp> {
    match value {
        Value::Number(n) => from_unix_seconds(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(secs) = s.parse::<f64>() {
                return from_unix_seconds(secs);
            }
            if let Ok(ts) = s.parse::<jiff::Timestamp>() {
                return Some(ts);
            }
            let civil: jiff::civil::DateTime = s.parse().ok()?;
            civil
                .to_zoned(jiff::tz::TimeZone::UTC)
                .ok()
                .map(|z| z.timestamp())
        }
        _ => None,
    }
}

fn from_unix_seconds(secs: f64) -> Option<jiff::Timestamp> {
    if !secs.is_finite() {
        return None;
    }
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round() as i32;
    // Out-of-range seconds (beyond jiff's years -9999..=9999) are refused by jiff itself.
    jiff::Timestamp::new(whole as i64, nanos.min(999_999_999)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The spec's own example of a Batch object.
    const SPEC_EXAMPLE: &str = r#"{
      "id": "batch_abc123",
      "object": "batch",
      "endpoint": "/v1/completions",
      "model": "gpt-5-2025-08-07",
      "errors": null,
      "input_file_id": "file-abc123",
      "completion_window": "24h",
      "status": "completed",
      "output_file_id": "file-cvaTdG",
      "error_file_id": "file-HOWS94",
      "created_at": 1711471533,
      "in_progress_at": 1711471538,
      "expires_at": 1711557933,
      "finalizing_at": 1711493133,
      "completed_at": 1711493163,
      "failed_at": null,
      "expired_at": null,
      "cancelling_at": null,
      "cancelled_at": null,
      "request_counts": {"total": 100, "completed": 95, "failed": 5},
      "usage": {
        "input_tokens": 1500,
        "input_tokens_details": {"cached_tokens": 1024},
        "output_tokens": 500,
        "output_tokens_details": {"reasoning_tokens": 300},
        "total_tokens": 2000
      },
      "metadata": {"customer_id": "user_123456789", "batch_description": "Nightly eval job"}
    }"#;

    fn ts(secs: i64) -> Option<jiff::Timestamp> {
        Some(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn spec_example_batch_parses_field_for_field() {
        let b: Batch = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        assert_eq!(b.id, "batch_abc123");
        assert_eq!(b.object, "batch");
        assert_eq!(b.endpoint, "/v1/completions");
        assert_eq!(b.model.as_deref(), Some("gpt-5-2025-08-07"));
        assert_eq!(b.errors, None);
        assert_eq!(b.upload_id.as_deref(), Some("file-abc123"));
        assert_eq!(b.completion_window, "24h");
        assert_eq!(b.status, BatchStatus::Completed);
        assert_eq!(b.output_id.as_deref(), Some("file-cvaTdG"));
        assert_eq!(b.error_output_id.as_deref(), Some("file-HOWS94"));
        assert_eq!(b.created_at, ts(1711471533));
        assert_eq!(b.in_progress_at, ts(1711471538));
        assert_eq!(b.expires_at, ts(1711557933));
        assert_eq!(b.finalizing_at, ts(1711493133));
        assert_eq!(b.completed_at, ts(1711493163));
        assert_eq!(b.failed_at, None);
        assert_eq!(b.expired_at, None);
        assert_eq!(b.cancelling_at, None);
        assert_eq!(b.cancelled_at, None);
        assert_eq!(
            b.request_counts,
            Some(RequestCounts {
                total: 100,
                completed: 95,
                failed: 5
            })
        );
        let usage = b.usage.unwrap();
        assert_eq!(usage.total_tokens, 2000);
        assert_eq!(usage.input_tokens_details.unwrap().cached_tokens, 1024);
        assert_eq!(usage.output_tokens_details.unwrap().reasoning_tokens, 300);
        assert_eq!(b.metadata_value("customer_id"), Some("user_123456789"));
        assert_eq!(b.raw["usage"]["input_tokens"], json!(1500));
    }

    #[test]
    fn azure_style_batch_with_capitalised_status_and_string_timestamps_parses() {
        let b: Batch = serde_json::from_value(json!({
            "id": "batch_6d0c", "object": "batch", "endpoint": "/chat/completions",
            "input_file_id": "file-9f3", "completion_window": "24h",
            "status": "Completed",
            "created_at": "2024-07-19T17:13:57.2491382+00:00",
            "in_progress_at": "2024-07-19T17:14:03Z",
            "completed_at": "1721409600",
            "finalizing_at": "2024-07-19 18:00:00",
            "request_counts": {"total": 3, "completed": 3, "failed": 0}
        }))
        .unwrap();
        assert_eq!(b.status, BatchStatus::Completed);
        assert!(b.status.is_terminal());
        let created = b.created_at.unwrap();
        assert_eq!(created.as_second(), 1721409237);
        assert_eq!(created.subsec_nanosecond(), 249_138_200);
        assert_eq!(b.in_progress_at, ts(1721409243));
        assert_eq!(b.completed_at, ts(1721409600));
        assert_eq!(b.finalizing_at, ts(1721412000));
    }

    #[test]
    fn unknown_status_is_kept_verbatim_not_a_parse_failure() {
        let b: Batch = serde_json::from_value(json!({
            "id": "batch_1", "status": "Paused_For_Review", "created_at": 1
        }))
        .unwrap();
        assert_eq!(b.status, BatchStatus::Other("Paused_For_Review".into()));
        assert_eq!(b.status.as_str(), "Paused_For_Review");
    }

    #[test]
    fn unknown_fields_are_ignored_and_kept_in_the_raw_json() {
        let b: Batch = serde_json::from_value(json!({
            "id": "batch_1", "status": "in_progress", "created_at": 1,
            "brand_new_field": {"nested": [1, 2]}, "priority": "high"
        }))
        .unwrap();
        assert_eq!(b.status, BatchStatus::InProgress);
        assert_eq!(b.raw["brand_new_field"]["nested"][1], json!(2));
    }

    #[test]
    fn nulls_and_missing_fields_are_none_or_empty() {
        let b: Batch = serde_json::from_value(json!({
            "id": "batch_1", "status": "validating",
            "object": null, "endpoint": null, "model": null, "errors": null,
            "input_file_id": null, "completion_window": null, "created_at": null,
            "request_counts": null, "usage": null, "metadata": null
        }))
        .unwrap();
        assert_eq!(b.object, "");
        assert_eq!(b.endpoint, "");
        assert_eq!(b.created_at, None);
        assert_eq!(b.request_counts, None);
        assert_eq!(b.metadata, None);
        assert!(b.error_list().is_empty());
    }

    #[test]
    fn malformed_optional_fields_do_not_fail_the_batch() {
        let b: Batch = serde_json::from_value(json!({
            "id": "batch_1", "status": "failed", "created_at": "yesterday-ish",
            "request_counts": {"total": "many"},
            "usage": [1, 2, 3],
            "output_file_id": 42,
            "metadata": {"batchwatch_job_id": "job_01", "count": 3},
            "errors": {"object": "list", "data": [
                {"code": "token_limit_exceeded", "message": "Enqueued token limit reached", "line": null},
                "garbage",
                {"code": "invalid_url", "line": "7"}
            ]}
        }))
        .unwrap();
        assert_eq!(b.created_at, None);
        assert_eq!(b.request_counts, None);
        assert_eq!(b.usage, None);
        assert_eq!(b.output_id, None);
        assert_eq!(b.metadata_value("batchwatch_job_id"), Some("job_01"));
        assert_eq!(b.metadata_value("count"), None);
        let errors = b.error_list();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].code.as_deref(), Some("token_limit_exceeded"));
        assert_eq!(errors[1].code.as_deref(), Some("invalid_url"));
        assert_eq!(errors[1].line, None);
    }

    #[test]
    fn a_batch_without_id_or_status_is_an_error() {
        assert!(serde_json::from_value::<Batch>(json!({"status": "completed"})).is_err());
        assert!(serde_json::from_value::<Batch>(json!({"id": "batch_1"})).is_err());
    }

    #[test]
    fn timestamps_parse_leniently() {
        let cases = [
            (json!(1711471533), ts(1711471533)),
            (
                json!(1711471533.5),
                Some(jiff::Timestamp::new(1711471533, 500_000_000).unwrap()),
            ),
            (json!("1711471533"), ts(1711471533)),
            (json!("2024-03-26T16:45:33Z"), ts(1711471533)),
            (json!("2024-03-26T18:45:33+02:00"), ts(1711471533)),
            (json!("2024-03-26T16:45:33"), ts(1711471533)),
            (json!(null), None),
            (json!("soon"), None),
            (json!(true), None),
            (json!(1e300), None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_timestamp(&value), want, "{value}");
        }
    }

    #[test]
    fn file_object_parses_the_spec_example_and_tolerates_gaps() {
        let f: FileObject = serde_json::from_value(json!({
            "id": "file-abc123", "object": "file", "bytes": 120000,
            "created_at": 1677610602, "expires_at": 1680202602,
            "filename": "salesOverview.pdf", "purpose": "assistants",
        }))
        .unwrap();
        assert_eq!(f.bytes, Some(120000));
        assert_eq!(f.filename, "salesOverview.pdf");
        assert_eq!(f.expires_at, ts(1680202602));
        assert_eq!(f.status, None);
        let sparse: FileObject =
            serde_json::from_value(json!({"id": "file-1", "bytes": null})).unwrap();
        assert_eq!(sparse.bytes, None);
        assert_eq!(sparse.purpose, "");
    }

    #[test]
    fn list_page_parses_with_and_without_cursors() {
        let page: ListPage<FileObject> = serde_json::from_value(json!({
            "object": "list", "data": [{"id": "file-1", "bytes": 3}],
            "first_id": "file-1", "last_id": "file-1", "has_more": false
        }))
        .unwrap();
        assert_eq!(page.data.len(), 1);
        assert_eq!(page.has_more, Some(false));
        let bare: ListPage<Batch> =
            serde_json::from_value(json!({"object": "list", "data": []})).unwrap();
        assert_eq!(bare.has_more, None);
        assert_eq!(bare.last_id, None);
    }

    #[test]
    fn create_request_serialises_like_the_spec_and_omits_absent_options() {
        let bare = CreateBatchRequest {
            input_file_id: "file-1".into(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            metadata: None,
            output_expires_after: None,
        };
        assert_eq!(
            serde_json::to_value(&bare).unwrap(),
            json!({"input_file_id": "file-1", "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        );
        let full = CreateBatchRequest {
            metadata: Some(BTreeMap::from([(
                "batchwatch_job_id".into(),
                "job_1".into(),
            )])),
            output_expires_after: Some(OutputExpiresAfter::after_creation(86_400)),
            ..bare
        };
        let v = serde_json::to_value(&full).unwrap();
        assert_eq!(v["metadata"], json!({"batchwatch_job_id": "job_1"}));
        assert_eq!(
            v["output_expires_after"],
            json!({"anchor": "created_at", "seconds": 86400})
        );
    }
}
