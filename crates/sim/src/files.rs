//! The Files endpoints, and the `File` objects they answer with.
//!
//! Uploads are streamed to the data directory chunk by chunk and downloads are streamed back
//! from it, so the simulator's memory does not grow with a file's size.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::watch;
use tokio_util::io::ReaderStream;

use crate::error::{ApiError, PathId};
use crate::lifecycle::RESULTS_PURPOSE;
use crate::model::clock::{ms, secs};
use crate::model::{FileEntry, FileReady, StoredFile};
use crate::state::Shared;

/// Uploads larger than this are refused, as the real service refuses files over 512 MB.
pub(crate) const MAX_UPLOAD_BYTES: usize = 512 * 1024 * 1024;

/// Purposes an upload may have.
const UPLOAD_PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// Input files expire after 30 days unless the upload says otherwise.
const BATCH_FILE_LIFETIME_SECS: i64 = 30 * 24 * 3600;

/// The `File` object of the API.
#[derive(Debug, Serialize)]
pub(crate) struct FileObject {
    id: String,
    object: &'static str,
    bytes: u64,
    created_at: i64,
    expires_at: Option<i64>,
    filename: String,
    purpose: String,
    status: &'static str,
    status_details: Option<String>,
}

impl FileEntry {
    /// The file object, once `bytes` is known.
    fn object(&self, bytes: u64) -> FileObject {
        FileObject {
            id: self.id.clone(),
            object: "file",
            bytes,
            created_at: secs(self.created_at),
            expires_at: self.expires_at.map(secs),
            filename: self.filename.clone(),
            purpose: self.purpose.clone(),
            status: "processed",
            status_details: None,
        }
    }
}

/// Checks an expiry policy (`{anchor: "created_at", seconds}`); returns the seconds.
pub(crate) fn expiry_seconds(
    anchor: Option<&str>,
    seconds: Option<i64>,
    param: &str,
) -> Result<i64, ApiError> {
    if anchor != Some("created_at") {
        return Err(ApiError::invalid(format!(
            "Invalid value for '{param}.anchor': expected 'created_at'."
        ))
        .param(format!("{param}.anchor"))
        .code("invalid_value"));
    }
    let seconds = seconds.ok_or_else(|| {
        ApiError::invalid(format!("Missing required parameter: '{param}.seconds'."))
            .param(format!("{param}.seconds"))
            .code("missing_required_parameter")
    })?;
    if !(3600..=2_592_000).contains(&seconds) {
        let code = if seconds < 3600 {
            "integer_below_min_value"
        } else {
            "integer_above_max_value"
        };
        return Err(ApiError::invalid(format!(
            "Invalid '{param}.seconds': must be between 3600 and 2592000, got {seconds}."
        ))
        .param(format!("{param}.seconds"))
        .code(code));
    }
    Ok(seconds)
}

fn multipart_error(err: MultipartError) -> ApiError {
    let status = err.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            status,
            "invalid_request_error",
            format!("The file is larger than the limit of {MAX_UPLOAD_BYTES} bytes."),
        )
        .code("file_too_large");
    }
    ApiError::new(
        status,
        "invalid_request_error",
        format!("The multipart body could not be read: {}", err.body_text()),
    )
}

fn io_error(err: std::io::Error) -> ApiError {
    ApiError::internal(format!("The simulator could not store the file: {err}"))
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid(format!("Missing required parameter: '{param}'."))
        .param(param)
        .code("missing_required_parameter")
}

/// Streams one multipart field to a new file in the data directory.
async fn save(
    shared: &Shared,
    mut field: Field<'_>,
) -> Result<(StoredFile, String, u64), ApiError> {
    let filename = field.file_name().unwrap_or("upload").to_owned();
    let stored = StoredFile::new(shared.lock().new_path("upload"));
    let file = tokio::fs::File::create(stored.path())
        .await
        .map_err(io_error)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut bytes = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        out.write_all(&chunk).await.map_err(io_error)?;
        bytes += chunk.len() as u64;
    }
    out.flush().await.map_err(io_error)?;
    Ok((stored, filename, bytes))
}

/// `POST /files`: multipart `file` and `purpose`, optionally `expires_after[anchor]` and
/// `expires_after[seconds]`.
pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    // Not a multipart body at all (no boundary, another Content-Type): the API's error shape.
    let mut multipart =
        multipart.map_err(|e| ApiError::new(e.status(), "invalid_request_error", e.body_text()))?;
    let mut upload = None;
    let mut purpose = None;
    let mut anchor = None;
    let mut seconds = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => upload = Some(save(&shared, field).await?),
            "purpose" => purpose = Some(field.text().await.map_err(multipart_error)?),
            "expires_after[anchor]" => anchor = Some(field.text().await.map_err(multipart_error)?),
            "expires_after[seconds]" => {
                let text = field.text().await.map_err(multipart_error)?;
                seconds = Some(text.trim().parse::<i64>().map_err(|_| {
                    ApiError::invalid(format!(
                        "Invalid 'expires_after.seconds': {text:?} is not an integer."
                    ))
                    .param("expires_after.seconds")
                    .code("invalid_type")
                })?);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "Unrecognized request argument supplied: {other}"
                ))
                .param(other)
                .code("unknown_parameter"));
            }
        }
    }
    let (stored, filename, bytes) = upload.ok_or_else(|| missing("file"))?;
    let purpose = purpose.ok_or_else(|| missing("purpose"))?;
    if !UPLOAD_PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(format!(
            "Invalid value: '{purpose}'. Supported values are: {}.",
            UPLOAD_PURPOSES.map(|p| format!("'{p}'")).join(", ")
        ))
        .param("purpose")
        .code("invalid_value"));
    }
    if purpose == "batch" && !filename.ends_with(".jsonl") {
        return Err(ApiError::invalid(format!(
            "Invalid file format for Batch API. Must be .jsonl, got {filename:?}."
        ))
        .param("file")
        .code("invalid_file_format"));
    }
    let lifetime = if anchor.is_some() || seconds.is_some() {
        Some(expiry_seconds(anchor.as_deref(), seconds, "expires_after")?)
    } else {
        (purpose == "batch").then_some(BATCH_FILE_LIFETIME_SECS)
    };

    let mut state = shared.lock();
    let now = state.clock.now();
    let id = state.new_file_id();
    let seq = state.next_seq();
    let (_, ready) = watch::channel(FileReady::Ready { bytes });
    let entry = FileEntry {
        seq,
        id,
        filename,
        purpose,
        created_at: now,
        expires_at: lifetime.map(|s| now + ms(s as f64)),
        data: Arc::new(stored),
        ready,
    };
    let object = entry.object(bytes);
    tracing::debug!(file = %entry.id, bytes, "file uploaded");
    state.add_file(entry);
    Ok(Json(object))
}

/// Waits until a generated file is written; returns its size.
async fn wait_ready(mut ready: watch::Receiver<FileReady>) -> Result<u64, ApiError> {
    let state = ready
        .wait_for(|r| *r != FileReady::Pending)
        .await
        .map_err(|_| ApiError::internal("The file was never written."))?;
    match &*state {
        FileReady::Ready { bytes } => Ok(*bytes),
        other => Err(ApiError::internal(format!(
            "The file could not be written: {other:?}"
        ))),
    }
}

fn no_such_file(id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {id}")).param("id")
}

/// `GET /files/{file_id}`.
pub(crate) async fn retrieve(
    State(shared): State<Arc<Shared>>,
    PathId(id): PathId,
) -> Result<Json<FileObject>, ApiError> {
    let (object, ready) = {
        let state = shared.lock();
        let file = state.client_file(&id).ok_or_else(|| no_such_file(&id))?;
        (file.object(0), file.ready.clone())
    };
    let bytes = wait_ready(ready).await?;
    Ok(Json(FileObject { bytes, ..object }))
}

/// `GET /files/{file_id}/content`, streamed from disk with its Content-Length.
pub(crate) async fn content(
    State(shared): State<Arc<Shared>>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let (data, ready) = {
        let state = shared.lock();
        let file = state.client_file(&id).ok_or_else(|| no_such_file(&id))?;
        (file.data.clone(), file.ready.clone())
    };
    stream(&data, ready, "application/octet-stream").await
}

/// A held file's content as an answer, once written: streamed from disk with its
/// Content-Length (a batch's output for the Files API, a Message Batch's results).
pub(crate) async fn stream(
    data: &StoredFile,
    ready: watch::Receiver<FileReady>,
    content_type: &'static str,
) -> Result<Response, ApiError> {
    let bytes = wait_ready(ready).await?;
    // Once open, the content stays readable even if the file is deleted meanwhile.
    let file = tokio::fs::File::open(data.path()).await.map_err(io_error)?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, bytes)
        .body(Body::from_stream(ReaderStream::with_capacity(
            file,
            64 * 1024,
        )))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `DELETE /files/{file_id}`.
pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    let mut state = shared.lock();
    if state.client_file(&id).is_none() || !state.remove_file(&id) {
        return Err(no_such_file(&id));
    }
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

/// `GET /files?purpose=&limit=&order=&after=`.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = parse_limit(query.get("limit"), 10_000, 10_000)?;
    let descending = match query.get("order").map(String::as_str) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid value: '{other}'. Supported values are: 'asc' and 'desc'."
            ))
            .param("order")
            .code("invalid_value"));
        }
    };
    let purpose = query.get("purpose");
    let pending = {
        let state = shared.lock();
        let mut files: Vec<&FileEntry> = state
            .files
            .iter()
            .filter(|f| f.purpose != RESULTS_PURPOSE && purpose.is_none_or(|p| *p == f.purpose))
            .collect();
        files.sort_by_key(|f| (f.created_at, f.seq));
        if descending {
            files.reverse();
        }
        let start = match query.get("after") {
            Some(after) => files
                .iter()
                .position(|f| f.id == *after)
                .map_or(files.len(), |i| i + 1),
            None => 0,
        };
        let page: Vec<_> = files[start..]
            .iter()
            .take(limit + 1)
            .map(|f| (f.object(0), f.ready.clone()))
            .collect();
        page
    };
    let has_more = pending.len() > limit;
    let mut data = Vec::with_capacity(limit.min(pending.len()));
    for (object, ready) in pending.into_iter().take(limit) {
        let bytes = wait_ready(ready).await?;
        data.push(FileObject { bytes, ..object });
    }
    Ok(Json(json!({
        "object": "list",
        "first_id": data.first().map(|f| f.id.clone()),
        "last_id": data.last().map(|f| f.id.clone()),
        "has_more": has_more,
        "data": data,
    })))
}

/// Parses a `limit` query parameter within `1..=max`.
pub(crate) fn parse_limit(
    value: Option<&String>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(format!(
            "Invalid 'limit': expected an integer between 1 and {max}, got {text:?}."
        ))
        .param("limit")
        .code("invalid_value")),
    }
}
