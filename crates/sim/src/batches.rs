//! The Batch endpoints: create (checking the request, then validating the input file in the
//! background with the daemon's own rules), retrieve, list and cancel; and the `Batch` object
//! they answer with.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{ApiError, PathId};
use crate::files::{expiry_seconds, parse_limit};
use crate::lifecycle::{NewBatch, no_such_batch};
use crate::listing::Cursor;
use crate::model::clock::{SimMs, secs};
use crate::model::{Admission, Api, Batch, BatchErrorEntry, StoredFile};
use crate::output::COMPLETION_TOKENS;
use crate::state::Shared;
use batchwatch_core::batchfile::{self, Expect, Rule, Violation};

/// The endpoints a batch may target (the `endpoint` enum of `CreateBatchRequest`).
const ENDPOINTS: [&str; 8] = [
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
];

const CREATE_PARAMS: [&str; 5] = [
    "input_file_id",
    "endpoint",
    "completion_window",
    "metadata",
    "output_expires_after",
];

const METADATA_MAX_PAIRS: usize = 16;
const METADATA_MAX_KEY: usize = 64;
const METADATA_MAX_VALUE: usize = 512;

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(format!(
        "Invalid type for '{param}': expected {expected}, but got {} instead.",
        type_name(got)
    ))
    .param(param)
    .code("invalid_type")
}

fn required_string(map: &Map<String, Value>, param: &str) -> Result<String, ApiError> {
    match map.get(param) {
        None | Some(Value::Null) => Err(ApiError::invalid(format!(
            "Missing required parameter: '{param}'."
        ))
        .param(param)
        .code("missing_required_parameter")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(invalid_type(param, "a string", other)),
    }
}

fn one_of(param: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    let list = allowed
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(ApiError::invalid(format!(
        "Invalid value: '{value}'. Supported values are: {list}."
    ))
    .param(param)
    .code("invalid_value"))
}

fn check_metadata(value: &Value) -> Result<Option<Map<String, Value>>, ApiError> {
    let map = match value {
        Value::Null => return Ok(None),
        Value::Object(map) => map,
        other => return Err(invalid_type("metadata", "an object", other)),
    };
    if map.len() > METADATA_MAX_PAIRS {
        return Err(ApiError::invalid(format!(
            "Invalid 'metadata': too many properties. Expected an object with at most \
             {METADATA_MAX_PAIRS} properties, but got an object with {} properties instead.",
            map.len()
        ))
        .param("metadata")
        .code("object_above_max_properties"));
    }
    for (key, value) in map {
        if key.chars().count() > METADATA_MAX_KEY {
            return Err(ApiError::invalid(format!(
                "Invalid 'metadata': the key {key:?} is longer than {METADATA_MAX_KEY} characters."
            ))
            .param("metadata")
            .code("string_above_max_length"));
        }
        let param = format!("metadata.{key}");
        let Value::String(text) = value else {
            return Err(invalid_type(&param, "a string", value));
        };
        if text.chars().count() > METADATA_MAX_VALUE {
            return Err(ApiError::invalid(format!(
                "Invalid '{param}': string too long. Expected a string with maximum length \
                 {METADATA_MAX_VALUE}, but got a string with length {} instead.",
                text.chars().count()
            ))
            .param(param)
            .code("string_above_max_length"));
        }
    }
    Ok(Some(map.clone()))
}

impl Batch {
    /// The `Batch` object of the API at simulated instant `now`.
    fn object(&self, now: SimMs) -> BatchObject<'_> {
        // Counts and usage exist once the file passed validation, as with the real service.
        let validated = self.in_progress_at.is_some();
        let processed = if validated { self.processed(now) } else { 0 };
        let failed = self.failed_among(processed);
        BatchObject {
            id: &self.id,
            object: "batch",
            endpoint: &self.endpoint,
            model: self.model.as_deref(),
            errors: (!self.errors.is_empty()).then(|| BatchErrors {
                object: "list",
                data: &self.errors,
            }),
            input_file_id: &self.input_file_id,
            completion_window: &self.completion_window,
            status: self.status.as_str(),
            output_file_id: self.output_file_id.as_deref(),
            error_file_id: self.error_file_id.as_deref(),
            created_at: secs(self.created_at),
            in_progress_at: self.in_progress_at.map(secs),
            expires_at: secs(self.expires_at),
            finalizing_at: self.finalizing_at.map(secs),
            completed_at: self.completed_at.map(secs),
            failed_at: self.failed_at.map(secs),
            expired_at: self.expired_at.map(secs),
            cancelling_at: self.cancelling_at.map(secs),
            cancelled_at: self.cancelled_at.map(secs),
            request_counts: RequestCounts {
                total: if validated { self.total } else { 0 },
                completed: processed - failed,
                failed,
            },
            usage: validated.then(|| self.usage(processed)),
            metadata: self.metadata.as_ref(),
        }
    }

    /// Token usage so far: the input share of what was processed, and a fixed count out.
    fn usage(&self, processed: u64) -> Usage {
        let input_tokens = (self.tokens * processed)
            .checked_div(self.total)
            .unwrap_or(0);
        let output_tokens = processed * COMPLETION_TOKENS;
        Usage {
            input_tokens,
            input_tokens_details: CachedTokens { cached_tokens: 0 },
            output_tokens,
            output_tokens_details: ReasoningTokens {
                reasoning_tokens: 0,
            },
            total_tokens: input_tokens + output_tokens,
        }
    }
}

/// The `Batch` object of the API, every property present as in real responses.
#[derive(Debug, Serialize)]
struct BatchObject<'a> {
    id: &'a str,
    object: &'static str,
    endpoint: &'a str,
    model: Option<&'a str>,
    errors: Option<BatchErrors<'a>>,
    input_file_id: &'a str,
    completion_window: &'a str,
    status: &'a str,
    output_file_id: Option<&'a str>,
    error_file_id: Option<&'a str>,
    created_at: i64,
    in_progress_at: Option<i64>,
    expires_at: i64,
    finalizing_at: Option<i64>,
    completed_at: Option<i64>,
    failed_at: Option<i64>,
    expired_at: Option<i64>,
    cancelling_at: Option<i64>,
    cancelled_at: Option<i64>,
    request_counts: RequestCounts,
    usage: Option<Usage>,
    metadata: Option<&'a Map<String, Value>>,
}

#[derive(Debug, Serialize)]
struct BatchErrors<'a> {
    object: &'static str,
    data: &'a [BatchErrorEntry],
}

#[derive(Debug, Serialize)]
struct RequestCounts {
    total: u64,
    completed: u64,
    failed: u64,
}

#[derive(Debug, Serialize)]
struct Usage {
    input_tokens: u64,
    input_tokens_details: CachedTokens,
    output_tokens: u64,
    output_tokens_details: ReasoningTokens,
    total_tokens: u64,
}

#[derive(Debug, Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(Debug, Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

/// Checks a create request the way the real service does before it accepts the batch.
fn parse_create(body: &[u8]) -> Result<NewBatch, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload: {e})"
        ))
    })?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid("The request body must be a JSON object."));
    };
    if let Some(unknown) = map.keys().find(|k| !CREATE_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!(
            "Unrecognized request argument supplied: {unknown}"
        ))
        .param(unknown.clone())
        .code("unknown_parameter"));
    }
    let input_file_id = required_string(&map, "input_file_id")?;
    let endpoint = required_string(&map, "endpoint")?;
    one_of("endpoint", &endpoint, &ENDPOINTS)?;
    let completion_window = required_string(&map, "completion_window")?;
    one_of("completion_window", &completion_window, &["24h"])?;
    let metadata = map
        .get("metadata")
        .map(check_metadata)
        .transpose()?
        .flatten();
    let output_expires_after = match map.get("output_expires_after") {
        None | Some(Value::Null) => None,
        Some(Value::Object(policy)) => Some(expiry_seconds(
            policy.get("anchor").and_then(Value::as_str),
            policy.get("seconds").and_then(Value::as_i64),
            "output_expires_after",
        )?),
        Some(other) => return Err(invalid_type("output_expires_after", "an object", other)),
    };
    Ok(NewBatch {
        api: Api::OpenAi,
        admission: None,
        input_file_id,
        endpoint,
        completion_window,
        metadata,
        output_expires_after,
    })
}

/// Validates a batch's input file on a blocking thread and hands the result to the lifecycle:
/// an OpenAI file with the daemon's own rules; the requests of an Anthropic batch, checked
/// when it was created, are only summed up again (after a restart, see `persist`).
pub(crate) fn spawn_validation(
    shared: Arc<Shared>,
    id: String,
    api: Api,
    input: Arc<StoredFile>,
    endpoint: String,
) {
    let limits = shared.limits;
    tokio::spawn(async move {
        let result = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(input.path()).map_err(|e| Violation {
                rule: Rule::Unreadable,
                line: None,
                message: format!("the file could not be read: {e}"),
            })?;
            match api {
                Api::OpenAi => batchfile::validate(
                    file,
                    Expect {
                        format: batchfile::Format::OpenAi,
                        endpoint: Some(&endpoint),
                        limits,
                        split: false,
                    },
                )
                .map(Admission::from),
                Api::Anthropic => crate::messages::admission_of(file),
            }
        })
        .await
        .unwrap_or_else(|e| {
            Err(Violation {
                rule: Rule::Unreadable,
                line: None,
                message: format!("the validation stopped: {e}"),
            })
        });
        shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_validation(&id, result);
        shared.wake.notify_one();
    });
}

/// `POST /batches`.
pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = parse_create(&body)?;
    let endpoint = request.endpoint.clone();
    let (id, input, response, foreign) = {
        let mut state = shared.lock();
        let (i, input) = state.create_batch(request)?;
        let now = state.clock.now();
        let batch = &state.batches[i];
        tracing::info!(batch = %batch.id, job = batch.job_id(), "batch created");
        let id = batch.id.clone();
        let response = Json(batch.object(now)).into_response();
        state.served(&[i]);
        (id, input, response, state.create_foreign())
    };
    spawn_validation(shared.clone(), id, Api::OpenAi, input, endpoint);
    for (id, input, endpoint) in foreign {
        spawn_validation(shared.clone(), id, Api::OpenAi, input, endpoint);
    }
    Ok(response)
}

/// `GET /batches/{batch_id}`.
pub(crate) async fn retrieve(
    State(shared): State<Arc<Shared>>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let mut state = shared.lock();
    let i = state
        .visible_batch(Api::OpenAi, &id)
        .ok_or_else(|| no_such_batch(Api::OpenAi, &id))?;
    state.served(&[i]);
    Ok(Json(state.batches[i].object(state.clock.now())).into_response())
}

/// `POST /batches/{batch_id}/cancel`.
pub(crate) async fn cancel(
    State(shared): State<Arc<Shared>>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let mut state = shared.lock();
    let i = state.cancel(Api::OpenAi, &id)?;
    tracing::info!(batch = %id, "batch cancel requested");
    state.served(&[i]);
    Ok(Json(state.batches[i].object(state.clock.now())).into_response())
}

#[derive(Serialize)]
struct BatchPage<'a> {
    object: &'static str,
    data: Vec<BatchObject<'a>>,
    first_id: Option<&'a str>,
    last_id: Option<&'a str>,
    has_more: bool,
}

/// `GET /batches?after=&limit=`, in the configured order (see `listing`).
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = parse_limit(query.get("limit"), 20, 100)?;
    let mut state = shared.lock();
    let cursor = query
        .get("after")
        .map_or(Cursor::Start, |id| Cursor::After(id));
    let (page, has_more) = state.list_page(Api::OpenAi, cursor, limit);
    state.served(&page);
    let now = state.clock.now();
    let page: Vec<_> = page.iter().map(|&i| &state.batches[i]).collect();
    Ok(Json(BatchPage {
        object: "list",
        first_id: page.first().map(|b| b.id.as_str()),
        last_id: page.last().map(|b| b.id.as_str()),
        has_more,
        data: page.iter().map(|b| b.object(now)).collect(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(body: &str) -> (Option<String>, Option<String>) {
        let err = parse_create(body.as_bytes()).unwrap_err();
        (err.param, err.code)
    }

    #[test]
    fn create_requests_are_checked_like_the_real_service() {
        let ok =
            r#"{"input_file_id":"file-1","endpoint":"/v1/embeddings","completion_window":"24h"}"#;
        assert_eq!(
            parse_create(ok.as_bytes()).unwrap().endpoint,
            "/v1/embeddings"
        );
        let cases = [
            (
                r#"{"endpoint":"/v1/embeddings","completion_window":"24h"}"#,
                "input_file_id",
                "missing_required_parameter",
            ),
            (
                r#"{"input_file_id":"f","endpoint":"/v2/x","completion_window":"24h"}"#,
                "endpoint",
                "invalid_value",
            ),
            (
                r#"{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"48h"}"#,
                "completion_window",
                "invalid_value",
            ),
            (
                r#"{"input_file_id":7,"endpoint":"/v1/embeddings","completion_window":"24h"}"#,
                "input_file_id",
                "invalid_type",
            ),
            (
                r#"{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h","extra":1}"#,
                "extra",
                "unknown_parameter",
            ),
            (
                r#"{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h","metadata":{"k":1}}"#,
                "metadata.k",
                "invalid_type",
            ),
            (
                r#"{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h","output_expires_after":{"anchor":"created_at","seconds":60}}"#,
                "output_expires_after.seconds",
                "integer_below_min_value",
            ),
        ];
        for (body, param, code) in cases {
            assert_eq!(
                code_of(body),
                (Some(param.into()), Some(code.into())),
                "{body}"
            );
        }
    }
}
