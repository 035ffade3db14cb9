//! Anthropic's Message Batches endpoints, under `/v1/messages/batches`: create (the requests in
//! the body, checked at once), retrieve, list (newest first, `before_id` / `after_id`), cancel,
//! results (JSONL, a line for every request) and delete; the `message_batch` object; and the
//! middleware that gives every error of these routes Anthropic's shape.
//!
//! The batches run through the same lifecycle as OpenAI's (`lifecycle`), so faults, the clock,
//! the step and vanish admin calls and the observations work on them alike. What Anthropic calls
//! them, by the lifecycle's status:
//!
//! | lifecycle | `processing_status` | `request_counts` |
//! | --- | --- | --- |
//! | `validating`, `in_progress`, `finalizing` | `in_progress` | every request `processing` |
//! | `cancelling` | `canceling` | every request `processing` |
//! | `completed` | `ended` | `succeeded`, `errored` (the failure rate) |
//! | `cancelled` | `ended` | as completed, the rest `canceled` |
//! | `expired` | `ended` | as completed, the rest `expired` |
//!
//! An Anthropic batch has no validating stage: its requests are checked with the create (the
//! 1 to 100,000 requests, each `custom_id` against `^[a-zA-Z0-9_-]{1,64}$` and unique, `params`
//! an object) and it starts at once. As Anthropic checks the rest of `params` only when a
//! request runs, a request without a string `model`, a `max_tokens` of at least 1 or a
//! non-empty `messages` ends `errored` (`invalid_request_error`, naming the field). The
//! requests are kept as a JSONL file, one `{"custom_id", "params"}` a line, which the results
//! are made from.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::error::{ApiError, PathId};
use crate::files::{self, parse_limit};
use crate::lifecycle::{NewBatch, no_such_batch};
use crate::listing::Cursor;
use crate::model::clock::SimMs;
use crate::model::{Admission, Api, Batch, StoredFile, Transition};
use crate::output::params_refusal;
use crate::state::Shared;
use batchwatch_core::batchfile::{Rule, Violation};
use batchwatch_core::model::BatchStatus;

/// Most requests in one Message Batch.
pub(crate) const MAX_REQUESTS: usize = 100_000;
/// Most bytes of a create request's body (256 MB).
pub(crate) const MAX_BODY_BYTES: usize = 256_000_000;
/// Whether an `anthropic-version` header names a version (a date, `2023-06-01`): the API keeps
/// several, so any date is taken.
fn is_version(value: &[u8]) -> bool {
    value.len() == 10
        && value.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

/// Whether `id` is a `custom_id` Anthropic accepts: `^[a-zA-Z0-9_-]{1,64}$`.
fn custom_id_ok(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn invalid_at(index: usize, field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("requests.{index}.{field}: {message}"))
}

/// The requests of a create body, checked, as JSONL lines; and what the lifecycle needs.
fn parse_create(body: &[u8]) -> Result<(Vec<u8>, Admission), ApiError> {
    let fields: HashMap<String, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("The request body is not valid JSON: {e}")))?;
    if let Some(extra) = fields.keys().find(|k| *k != "requests") {
        return Err(ApiError::invalid(format!(
            "{extra}: Extra inputs are not permitted"
        )));
    }
    let requests = fields
        .get("requests")
        .ok_or_else(|| ApiError::invalid("requests: Field required"))?;
    let requests: Vec<&RawValue> = serde_json::from_str(requests.get())
        .map_err(|_| ApiError::invalid("requests: Input should be a valid list"))?;
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        return Err(ApiError::invalid(format!(
            "requests: List should have at least 1 item and at most {MAX_REQUESTS} items, \
             not {}",
            requests.len()
        )));
    }
    let mut lines = Vec::with_capacity(body.len());
    let mut ids = HashSet::with_capacity(requests.len());
    let mut admission = Admission::default();
    for (index, request) in requests.iter().enumerate() {
        let request: HashMap<String, &RawValue> = serde_json::from_str(request.get())
            .map_err(|_| invalid_at(index, "", "Input should be a valid dictionary"))?;
        if let Some(extra) = request.keys().find(|k| *k != "custom_id" && *k != "params") {
            return Err(invalid_at(index, extra, "Extra inputs are not permitted"));
        }
        let custom_id: String = request
            .get("custom_id")
            .ok_or_else(|| invalid_at(index, "custom_id", "Field required"))
            .and_then(|raw| {
                serde_json::from_str(raw.get())
                    .map_err(|_| invalid_at(index, "custom_id", "Input should be a valid string"))
            })?;
        if !custom_id_ok(&custom_id) {
            return Err(invalid_at(
                index,
                "custom_id",
                "String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
            ));
        }
        if !ids.insert(custom_id.clone()) {
            return Err(invalid_at(
                index,
                "custom_id",
                format!("Duplicate custom_id {custom_id:?}: each must be unique in the batch"),
            ));
        }
        let params = request
            .get("params")
            .ok_or_else(|| invalid_at(index, "params", "Field required"))?;
        let params: serde_json::Map<String, Value> = serde_json::from_str(params.get())
            .map_err(|_| invalid_at(index, "params", "Input should be a valid dictionary"))?;
        let params = Value::Object(params);
        let start = lines.len();
        // One line a request, whatever whitespace the client put between the fields.
        serde_json::to_writer(
            &mut lines,
            &json!({"custom_id": custom_id, "params": &params}),
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
        lines.push(b'\n');
        count_request(&mut admission, &params, (lines.len() - start) as u64);
    }
    Ok((lines, admission))
}

/// Adds one stored request line of `bytes` (its newline included) to `admission`: the first
/// names the model, and a request whose `params` the service will refuse is noted.
fn count_request(admission: &mut Admission, params: &Value, bytes: u64) {
    if admission.requests == 0 {
        admission.model = params["model"].as_str().unwrap_or("unknown").to_owned();
    }
    if params_refusal(params).is_some() {
        admission.refused_lines.push(admission.requests as u32);
    }
    admission.requests += 1;
    admission.bytes += bytes;
}

/// Sums up a stored requests file again (a batch saved before it started, see `persist`).
pub(crate) fn admission_of(file: std::fs::File) -> Result<Admission, Violation> {
    let unreadable = |e: std::io::Error| Violation {
        rule: Rule::Unreadable,
        line: None,
        message: format!("the requests could not be read: {e}"),
    };
    let mut admission = Admission::default();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(unreadable)?;
        let request = serde_json::from_str::<Value>(&line).unwrap_or_default();
        count_request(&mut admission, &request["params"], line.len() as u64 + 1);
    }
    Ok(admission)
}

/// RFC 3339, as Anthropic writes its timestamps.
fn rfc3339(at: SimMs) -> String {
    jiff::Timestamp::from_millisecond(at).map_or_else(|_| String::new(), |t| t.to_string())
}

#[derive(Debug, Serialize)]
struct RequestCounts {
    processing: u64,
    succeeded: u64,
    errored: u64,
    canceled: u64,
    expired: u64,
}

/// The `message_batch` object, every property present as in real responses.
#[derive(Debug, Serialize)]
struct MessageBatch<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    processing_status: &'static str,
    request_counts: RequestCounts,
    ended_at: Option<String>,
    created_at: String,
    expires_at: String,
    archived_at: Option<String>,
    cancel_initiated_at: Option<String>,
    results_url: Option<String>,
}

impl Batch {
    fn ended_at(&self) -> Option<SimMs> {
        self.completed_at
            .or(self.expired_at)
            .or(self.cancelled_at)
            .or(self.failed_at)
    }

    /// The `message_batch` object; `origin` (`http://HOST`) makes the results URL.
    fn message_batch(&self, origin: &str) -> MessageBatch<'_> {
        let processing_status = match self.status {
            BatchStatus::Validating | BatchStatus::InProgress | BatchStatus::Finalizing => {
                "in_progress"
            }
            BatchStatus::Cancelling => "canceling",
            BatchStatus::Completed
            | BatchStatus::Failed
            | BatchStatus::Expired
            | BatchStatus::Cancelled
            | BatchStatus::Other(_) => "ended",
        };
        let ended = processing_status == "ended";
        let processed = self.processed_final.unwrap_or(0);
        let failed = self.failed_among(processed);
        let unprocessed = self.total - processed.min(self.total);
        let request_counts = if ended {
            RequestCounts {
                processing: 0,
                succeeded: processed - failed,
                errored: failed,
                canceled: if self.status == BatchStatus::Cancelled {
                    unprocessed
                } else {
                    0
                },
                expired: if self.status == BatchStatus::Expired {
                    unprocessed
                } else {
                    0
                },
            }
        } else {
            RequestCounts {
                processing: self.total,
                succeeded: 0,
                errored: 0,
                canceled: 0,
                expired: 0,
            }
        };
        MessageBatch {
            id: &self.id,
            kind: "message_batch",
            processing_status,
            request_counts,
            ended_at: self.ended_at().map(rfc3339),
            created_at: rfc3339(self.created_at),
            expires_at: rfc3339(self.expires_at),
            archived_at: None,
            cancel_initiated_at: self.cancelling_at.map(rfc3339),
            results_url: ended.then(|| format!("{origin}/v1/messages/batches/{}/results", self.id)),
        }
    }
}

/// `http://HOST` as the client addressed the simulator.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// `POST /v1/messages/batches`.
pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Checked and converted off the runtime: up to 256 MB of JSON.
    let (lines, admission) = tokio::task::spawn_blocking(move || parse_create(&body))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let path = shared.lock().new_path("msgbatch-requests.jsonl");
    let input = Arc::new(StoredFile::new(path));
    let written = {
        let path = input.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&lines)?;
            file.sync_data()
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    };
    written.map_err(|e| ApiError::internal(format!("The requests could not be stored: {e}")))?;
    let request = NewBatch {
        api: Api::Anthropic,
        admission: Some(admission),
        input_file_id: String::new(),
        endpoint: "/v1/messages".into(),
        completion_window: "24h".into(),
        metadata: None,
        output_expires_after: None,
    };
    let mut state = shared.lock();
    let i = state.insert_batch(request, input, false);
    tracing::info!(batch = %state.batches[i].id, "message batch created");
    state.served(&[i]);
    shared.wake.notify_one();
    Ok(Json(state.batches[i].message_batch(&origin(&headers))).into_response())
}

/// `GET /v1/messages/batches/{id}`.
pub(crate) async fn retrieve(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let mut state = shared.lock();
    let i = state
        .visible_batch(Api::Anthropic, &id)
        .ok_or_else(|| no_such_batch(Api::Anthropic, &id))?;
    state.served(&[i]);
    Ok(Json(state.batches[i].message_batch(&origin(&headers))).into_response())
}

/// `POST /v1/messages/batches/{id}/cancel`.
pub(crate) async fn cancel(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let mut state = shared.lock();
    let i = state.cancel(Api::Anthropic, &id)?;
    tracing::info!(batch = %id, "message batch cancel requested");
    state.served(&[i]);
    Ok(Json(state.batches[i].message_batch(&origin(&headers))).into_response())
}

#[derive(Serialize)]
struct Page<'a> {
    data: Vec<MessageBatch<'a>>,
    has_more: bool,
    first_id: Option<&'a str>,
    last_id: Option<&'a str>,
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<String>,
    before_id: Option<String>,
    after_id: Option<String>,
}

/// `GET /v1/messages/batches?limit=&before_id=&after_id=`: newest first in the default order.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = parse_limit(query.limit.as_ref(), 20, 1000)?;
    let cursor = match (&query.before_id, &query.after_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "Only one of before_id and after_id may be given.",
            ));
        }
        (Some(before), None) => Cursor::Before(before),
        (None, Some(after)) => Cursor::After(after),
        (None, None) => Cursor::Start,
    };
    let origin = origin(&headers);
    let mut state = shared.lock();
    let (page, has_more) = state.list_page(Api::Anthropic, cursor, limit);
    state.served(&page);
    let page: Vec<&Batch> = page.iter().map(|&i| &state.batches[i]).collect();
    Ok(Json(Page {
        first_id: page.first().map(|b| b.id.as_str()),
        last_id: page.last().map(|b| b.id.as_str()),
        has_more,
        data: page.iter().map(|b| b.message_batch(&origin)).collect(),
    })
    .into_response())
}

fn not_ended(id: &str, doing: &str) -> ApiError {
    ApiError::invalid(format!(
        "Message Batch {id} has not ended yet; {doing} once its processing_status is 'ended'."
    ))
}

/// `GET /v1/messages/batches/{id}/results`: streamed from disk with its Content-Length.
pub(crate) async fn results(
    State(shared): State<Arc<Shared>>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let (data, ready) = {
        let state = shared.lock();
        let i = state
            .visible_batch(Api::Anthropic, &id)
            .ok_or_else(|| no_such_batch(Api::Anthropic, &id))?;
        let batch = &state.batches[i];
        if batch.ended_at().is_none() {
            return Err(not_ended(&id, "results are available"));
        }
        let file = batch
            .output_file_id
            .as_deref()
            .and_then(|f| state.file(f))
            .ok_or_else(|| ApiError::not_found(format!("No results for Message Batch {id}.")))?;
        (file.data.clone(), file.ready.clone())
    };
    files::stream(&data, ready, "application/binary").await
}

/// `DELETE /v1/messages/batches/{id}`: only an ended batch; its results go with it.
pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    let mut state = shared.lock();
    let i = state
        .visible_batch(Api::Anthropic, &id)
        .ok_or_else(|| no_such_batch(Api::Anthropic, &id))?;
    if state.batches[i].ended_at().is_none() {
        return Err(not_ended(&id, "it can be deleted"));
    }
    let now = state.clock.now();
    let batch = &mut state.batches[i];
    batch.vanished = true;
    batch.history.push(Transition::new("deleted", now));
    if let Some(results) = batch.output_file_id.clone() {
        state.remove_file(&results);
    }
    tracing::info!(batch = %id, "message batch deleted");
    Ok(Json(json!({"id": id, "type": "message_batch_deleted"})))
}

/// Anthropic's error `type` for an answer's status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    }
}

/// Wraps the Message Batches routes: refuses a request without `anthropic-version`, and gives
/// every JSON error (the routes', the key check's, the injected faults') Anthropic's shape,
/// `{"type": "error", "error": {"type", "message"}}`, its headers (`retry-after`) kept. A
/// fault's HTML page stays HTML, as a proxy's would.
pub(crate) async fn anthropic_shape(request: Request, next: Next) -> Response {
    let response = match request.headers().get("anthropic-version") {
        Some(v) if is_version(v.as_bytes()) => next.run(request).await,
        Some(v) => ApiError::invalid(format!(
            "anthropic-version: {:?} is not a version (a date such as 2023-06-01)",
            String::from_utf8_lossy(v.as_bytes())
        ))
        .into_response(),
        None => ApiError::invalid("anthropic-version: header is required").into_response(),
    };
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (parts.status, parts.headers, "").into_response();
    };
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = json!({"type": "error", "error": {"type": error_type(status), "message": message}});
    (parts, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &Value) -> String {
        parse_create(body.to_string().as_bytes())
            .unwrap_err()
            .message
    }

    #[test]
    fn custom_ids_follow_anthropics_pattern() {
        for ok in ["a", "A-b_9", &"x".repeat(64)] {
            assert!(custom_id_ok(ok), "{ok}");
        }
        for bad in ["", "a b", "a.b", "é", &"x".repeat(65)] {
            assert!(!custom_id_ok(bad), "{bad}");
        }
    }

    #[test]
    fn a_create_is_checked_before_a_batch_exists() {
        let params = json!({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let ok = json!({"requests": [{"custom_id": "a", "params": params},
                                     {"custom_id": "b", "params": {"model": "other"}}]});
        let (lines, admission) = parse_create(ok.to_string().as_bytes()).unwrap();
        assert_eq!(admission.requests, 2);
        assert_eq!(admission.model, "claude-x");
        assert_eq!(admission.refused_lines, [1], "no max_tokens, no messages");
        assert_eq!(admission.bytes, lines.len() as u64);
        assert_eq!(lines.iter().filter(|&&b| b == b'\n').count(), 2);
        let cases = [
            (json!({}), "requests: Field required"),
            (json!({"requests": []}), "at least 1 item"),
            (json!({"requests": [], "x": 1}), "x: Extra inputs"),
            (
                json!({"requests": [{"custom_id": "a b", "params": {}}]}),
                "requests.0.custom_id: String should match pattern",
            ),
            (
                json!({"requests": [{"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}]}),
                "requests.1.custom_id: Duplicate",
            ),
            (
                json!({"requests": [{"custom_id": "a"}]}),
                "requests.0.params: Field required",
            ),
            (
                json!({"requests": [{"custom_id": "a", "params": 3}]}),
                "requests.0.params: Input should be a valid dictionary",
            ),
        ];
        for (body, expected) in cases {
            let message = refusal(&body);
            assert!(message.contains(expected), "{body}: {message}");
        }
    }
}
