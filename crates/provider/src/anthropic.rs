//! Anthropic's Message Batches in batchwatch's words: the `message_batch` object, what its
//! `processing_status` means as a [`BatchStatus`], and the results line a downloaded file is
//! sorted by. The calls themselves are [`Client`](crate::Client)'s, for a client of
//! [`Flavor::Anthropic`](batchwatch_core::config::Flavor::Anthropic) (`x-api-key`,
//! `anthropic-version: 2023-06-01`):
//!
//! | call | request |
//! | --- | --- |
//! | [`create_message_batch`](crate::Client::create_message_batch) | `POST /messages/batches`, `{"requests": [...]}` streamed from a part of the file, never retried |
//! | [`retrieve_message_batch`](crate::Client::retrieve_message_batch) | `GET /messages/batches/{id}` |
//! | [`list_message_batches_page`](crate::Client::list_message_batches_page), [`list_message_batch_pages`](crate::Client::list_message_batch_pages) | `GET /messages/batches?limit&after_id`, newest first |
//! | [`cancel_message_batch`](crate::Client::cancel_message_batch) | `POST /messages/batches/{id}/cancel` |
//! | [`download_message_batch_results`](crate::Client::download_message_batch_results) | `GET /messages/batches/{id}/results`, sorted into two files as it arrives |
//! | [`delete_message_batch`](crate::Client::delete_message_batch) | `DELETE /messages/batches/{id}` (an ended batch) |
//!
//! The results are asked for at the base URL, never at the batch's `results_url`: the URL is
//! the service's claim, and the key goes only where the configuration says. Errors come as
//! `{"type": "error", "error": {"type", "message"}}`, which [`ApiError`](crate::ApiError)
//! classes as it does OpenAI's (529 `overloaded_error` is transient, or an unknown outcome on
//! a create).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use batchwatch_core::batchfile::anthropic::ENDPOINT;
use batchwatch_core::model::BatchStatus;
use batchwatch_core::usage::Tokens;

use crate::types::{Batch, RequestCounts};

/// The `anthropic-version` batchwatch speaks.
pub const VERSION: &str = "2023-06-01";

/// The create body around a part's lines: `{"requests":[` + the lines joined by `,` + `]}`.
pub const BODY_OPEN: &[u8] = b"{\"requests\":[";
pub const BODY_CLOSE: &[u8] = b"]}";

/// A Message Batch (`type: "message_batch"`), with the raw JSON it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(remote = "Self")]
pub struct MessageBatch {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `in_progress`, `canceling` or `ended`.
    pub processing_status: String,
    pub request_counts: MessageCounts,
    #[serde(deserialize_with = "rfc3339")]
    pub created_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "rfc3339")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "rfc3339")]
    pub ended_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "rfc3339")]
    pub cancel_initiated_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "rfc3339")]
    pub archived_at: Option<Timestamp>,
    #[serde(default)]
    pub results_url: Option<String>,
    /// The whole object as received: what the history row records, in Anthropic's terms.
    #[serde(skip)]
    pub raw: Value,
}

impl<'de> Deserialize<'de> for MessageBatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Value::deserialize(d)?;
        let mut batch = MessageBatch::deserialize(&raw).map_err(serde::de::Error::custom)?;
        batch.raw = raw;
        Ok(batch)
    }
}

/// A batch's requests by where they stand. All are `processing` until the batch ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct MessageCounts {
    pub processing: u64,
    pub succeeded: u64,
    pub errored: u64,
    pub canceled: u64,
    pub expired: u64,
}

impl MessageCounts {
    /// Every request the counts hold.
    pub fn total(&self) -> u64 {
        self.processing + self.succeeded + self.errored + self.canceled + self.expired
    }
}

impl MessageBatch {
    /// The batch's status in batchwatch's words:
    ///
    /// | `processing_status` | and | status |
    /// | --- | --- | --- |
    /// | `in_progress` | | `in_progress` |
    /// | `canceling` | | `cancelling` |
    /// | `ended` | `cancel_initiated_at` set | `cancelled` |
    /// | `ended` | requests `expired` | `expired` |
    /// | `ended` | otherwise | `completed` |
    /// | anything else | | as the service wrote it (not an end) |
    ///
    /// A cancel that came too late to stop a request still ends `cancelled`: the operator or
    /// the deadline asked for it, and what did run is in the results either way.
    pub fn status(&self) -> BatchStatus {
        match self.processing_status.as_str() {
            "in_progress" => BatchStatus::InProgress,
            "canceling" => BatchStatus::Cancelling,
            "ended" if self.cancel_initiated_at.is_some() => BatchStatus::Cancelled,
            "ended" if self.request_counts.expired > 0 => BatchStatus::Expired,
            "ended" => BatchStatus::Completed,
            other => BatchStatus::Other(other.to_owned()),
        }
    }
}

impl MessageBatch {
    /// The batch in batchwatch's words, as the daemon tracks every batch:
    ///
    /// | [`Batch`] | from |
    /// | --- | --- |
    /// | `status` | [`MessageBatch::status`] |
    /// | `request_counts` | `total`: every request; `completed`: `succeeded`; `failed`: `errored` (`canceled` and `expired` requests are neither, as an OpenAI batch's unrun requests are not) |
    /// | `created_at`, `in_progress_at` | `created_at` (a Message Batch runs from its create) |
    /// | `expires_at` | `expires_at` |
    /// | `cancelling_at` | `cancel_initiated_at` |
    /// | `completed_at`, `cancelled_at` or `expired_at` | `ended_at`, by the status |
    /// | `output_id` | the batch's own id once `results_url` is set: its results are the batch's, downloaded by [`Client::download_message_batch_results`](crate::Client::download_message_batch_results) |
    /// | `endpoint` | `/v1/messages`, where each of its requests goes |
    /// | `raw` | the object as received |
    ///
    /// It has no upload, no error file (errored requests are in the same results) and no
    /// metadata: nothing on it names a job.
    pub fn into_batch(self) -> Batch {
        let status = self.status();
        let mut batch = Batch::new(&self.id, status.clone());
        batch.object = self.kind;
        batch.endpoint = ENDPOINT.to_owned();
        batch.completion_window = "24h".to_owned();
        batch.created_at = self.created_at;
        batch.in_progress_at = self.created_at;
        batch.expires_at = self.expires_at;
        batch.cancelling_at = self.cancel_initiated_at;
        match status {
            BatchStatus::Completed => batch.completed_at = self.ended_at,
            BatchStatus::Cancelled => batch.cancelled_at = self.ended_at,
            BatchStatus::Expired => batch.expired_at = self.ended_at,
            _ => {}
        }
        let counts = self.request_counts;
        batch.request_counts = Some(RequestCounts {
            total: counts.total(),
            completed: counts.succeeded,
            failed: counts.errored,
        });
        batch.output_id = self.results_url.is_some().then(|| self.id.clone());
        batch.raw = self.raw;
        batch
    }
}

/// What a results download found: the lines by their type (`processing` stays 0), written
/// to the output file (`succeeded`) and the errors file (the others), and the bytes received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultsSorted {
    pub counts: MessageCounts,
    pub bytes: u64,
}

/// What the service answers a delete with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeletedMessageBatch {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// How one results line ended: `succeeded`, `errored`, `canceled` or `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Errored,
    Canceled,
    Expired,
}

/// The `result.type` of one results line (`{"custom_id", "result": {"type", ...}}`), or why
/// the line is not a result.
pub fn outcome_of(line: &[u8]) -> Result<Outcome, String> {
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        result: Kind<'a>,
    }
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
    }
    let line: Line<'_> = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    match line.result.kind {
        "succeeded" => Ok(Outcome::Succeeded),
        "errored" => Ok(Outcome::Errored),
        "canceled" => Ok(Outcome::Canceled),
        "expired" => Ok(Outcome::Expired),
        other => Err(format!("unknown result type {other:?}")),
    }
}

/// The usage the `succeeded` lines of a results file report, summed by model: each line's
/// `result.message.usage` in batchwatch's [`Tokens`]:
///
/// | [`Tokens`] | from `usage` |
/// | --- | --- |
/// | `input` | `input_tokens` + `cache_creation_input_tokens` + `cache_read_input_tokens` (every input token) |
/// | `cached` | `cache_read_input_tokens` |
/// | `output` | `output_tokens` |
/// | `reasoning` | 0 (thinking is billed as output and not told apart) |
///
/// Cache writes are counted, and so priced, as plain input (Anthropic bills them at a premium
/// that `[pricing]` has no field for). A line that is not a result, or reports no usage, adds
/// nothing.
pub fn usage_by_model(reader: impl std::io::BufRead) -> std::io::Result<BTreeMap<String, Tokens>> {
    #[derive(Deserialize)]
    struct Line {
        result: Result,
    }
    #[derive(Deserialize)]
    struct Result {
        #[serde(rename = "type")]
        kind: String,
        message: Option<Message>,
    }
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        model: String,
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct Usage {
        input_tokens: Option<i64>,
        output_tokens: Option<i64>,
        cache_creation_input_tokens: Option<i64>,
        cache_read_input_tokens: Option<i64>,
    }
    let mut by_model: BTreeMap<String, Tokens> = BTreeMap::new();
    for line in reader.lines() {
        let Ok(line) = serde_json::from_str::<Line>(&line?) else {
            continue;
        };
        let Some(message) = line
            .result
            .message
            .filter(|_| line.result.kind == "succeeded")
        else {
            continue;
        };
        let Some(usage) = message.usage else { continue };
        let n = |v: Option<i64>| v.unwrap_or(0).max(0);
        let cached = n(usage.cache_read_input_tokens);
        *by_model.entry(message.model).or_default() += Tokens {
            input: n(usage.input_tokens) + n(usage.cache_creation_input_tokens) + cached,
            cached,
            output: n(usage.output_tokens),
            reasoning: 0,
        };
    }
    Ok(by_model)
}

/// An RFC 3339 timestamp, `None` when null or missing; a value that is not one is refused.
fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "expected an RFC 3339 timestamp, not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(status: &str, cancel: Option<&str>, expired: u64) -> MessageBatch {
        serde_json::from_value(serde_json::json!({
            "id": "msgbatch_01", "type": "message_batch", "processing_status": status,
            "request_counts": {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0,
                               "expired": expired},
            "created_at": "2026-12-07T20:00:00Z", "expires_at": "2026-12-08T20:00:00Z",
            "ended_at": null, "cancel_initiated_at": cancel, "archived_at": null,
            "results_url": null,
        }))
        .unwrap()
    }

    #[test]
    fn statuses_follow_the_table() {
        let cases = [
            ("in_progress", None, 0, BatchStatus::InProgress),
            (
                "canceling",
                Some("2026-12-07T21:00:00Z"),
                0,
                BatchStatus::Cancelling,
            ),
            (
                "ended",
                Some("2026-12-07T21:00:00Z"),
                3,
                BatchStatus::Cancelled,
            ),
            ("ended", None, 3, BatchStatus::Expired),
            ("ended", None, 0, BatchStatus::Completed),
            ("archiving", None, 0, BatchStatus::Other("archiving".into())),
        ];
        for (processing, cancel, expired, status) in cases {
            assert_eq!(
                batch(processing, cancel, expired).status(),
                status,
                "{processing} {cancel:?} {expired}"
            );
        }
        assert_eq!(batch("ended", None, 3).request_counts.total(), 6);
    }

    #[test]
    fn a_batch_with_a_timestamp_that_is_not_one_is_refused() {
        let mut value = serde_json::to_value(serde_json::json!({
            "id": "msgbatch_01", "processing_status": "ended", "request_counts": {},
            "created_at": 1_700_000_000,
        }))
        .unwrap();
        assert!(serde_json::from_value::<MessageBatch>(value.clone()).is_err());
        value["created_at"] = "2023-11-14T22:13:20Z".into();
        let parsed: MessageBatch = serde_json::from_value(value).unwrap();
        assert_eq!(parsed.created_at.unwrap().as_second(), 1_700_000_000);
    }

    #[test]
    fn usage_is_summed_by_model_from_the_succeeded_lines_only() {
        let text = concat!(
            r#"{"custom_id":"a","result":{"type":"succeeded","message":{"model":"m1","usage":{"input_tokens":10,"output_tokens":5,"cache_creation_input_tokens":3,"cache_read_input_tokens":2}}}}"#,
            "\n",
            r#"{"custom_id":"b","result":{"type":"succeeded","message":{"model":"m1","usage":{"input_tokens":1,"output_tokens":1,"cache_creation_input_tokens":null,"cache_read_input_tokens":null}}}}"#,
            "\n",
            r#"{"custom_id":"c","result":{"type":"succeeded","message":{"model":"m2","usage":{"input_tokens":7,"output_tokens":0}}}}"#,
            "\n",
            r#"{"custom_id":"d","result":{"type":"errored","error":{"type":"error"}}}"#,
            "\nnot json\n",
        );
        let by_model = usage_by_model(text.as_bytes()).unwrap();
        let tokens = |input, cached, output| Tokens {
            input,
            cached,
            output,
            reasoning: 0,
        };
        assert_eq!(by_model.len(), 2);
        assert_eq!(by_model["m1"], tokens(16, 2, 6));
        assert_eq!(by_model["m2"], tokens(7, 0, 0));
    }

    #[test]
    fn the_batch_in_batchwatchs_words_follows_the_table() {
        let mut ended = batch("ended", None, 0);
        ended.ended_at = "2026-12-08T10:00:00Z".parse().ok();
        ended.results_url = Some("https://example.invalid/results".into());
        ended.raw = serde_json::json!({"id": "msgbatch_01", "processing_status": "ended"});
        let b = ended.clone().into_batch();
        assert_eq!(b.status, BatchStatus::Completed);
        assert_eq!(b.endpoint, "/v1/messages");
        assert_eq!(b.completed_at, ended.ended_at);
        assert_eq!(
            b.output_id.as_deref(),
            Some("msgbatch_01"),
            "results are the batch's"
        );
        assert_eq!((b.upload_id, b.error_output_id), (None, None));
        let counts = b.request_counts.unwrap();
        assert_eq!((counts.total, counts.completed, counts.failed), (3, 2, 1));
        assert_eq!(b.raw["processing_status"], "ended", "as received");
        let running = batch("in_progress", None, 0).into_batch();
        assert_eq!(running.output_id, None, "no results before the end");
        let cancelled = batch("ended", Some("2026-12-07T21:00:00Z"), 0);
        let b = MessageBatch {
            ended_at: ended.ended_at,
            ..cancelled
        }
        .into_batch();
        assert_eq!(b.status, BatchStatus::Cancelled);
        assert_eq!((b.cancelled_at, b.completed_at), (ended.ended_at, None));
        assert!(b.cancelling_at.is_some());
    }

    #[test]
    fn results_lines_are_sorted_by_their_type() {
        let line = |kind: &str| format!(r#"{{"custom_id":"a","result":{{"type":"{kind}"}}}}"#);
        assert_eq!(
            outcome_of(line("succeeded").as_bytes()),
            Ok(Outcome::Succeeded)
        );
        assert_eq!(outcome_of(line("errored").as_bytes()), Ok(Outcome::Errored));
        assert_eq!(
            outcome_of(line("canceled").as_bytes()),
            Ok(Outcome::Canceled)
        );
        assert_eq!(outcome_of(line("expired").as_bytes()), Ok(Outcome::Expired));
        assert!(outcome_of(line("other").as_bytes()).is_err());
        assert!(outcome_of(b"{\"custom_id\":\"a\"}").is_err());
        assert!(outcome_of(b"not json").is_err());
    }
}
