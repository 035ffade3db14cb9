//! What went wrong with an API call, classified by what the caller can do about it.
//!
//! See the crate docs ([`crate`]) for the classes and the rules that decide them. The
//! deciding functions here are pure (status, headers, body text, the time) so that every
//! combination is tested without a server.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::Value;

/// The client call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    UploadFile,
    RetrieveFile,
    ListFiles,
    DeleteFile,
    DownloadFile,
    CreateBatch,
    RetrieveBatch,
    ListBatches,
    CancelBatch,
    /// Anthropic's: an ended Message Batch and its results.
    DeleteBatch,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 10] = [
        Operation::UploadFile,
        Operation::RetrieveFile,
        Operation::ListFiles,
        Operation::DeleteFile,
        Operation::DownloadFile,
        Operation::CreateBatch,
        Operation::RetrieveBatch,
        Operation::ListBatches,
        Operation::CancelBatch,
        Operation::DeleteBatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::UploadFile => "upload file",
            Operation::RetrieveFile => "retrieve file",
            Operation::ListFiles => "list files",
            Operation::DeleteFile => "delete file",
            Operation::DownloadFile => "download file",
            Operation::CreateBatch => "create batch",
            Operation::RetrieveBatch => "retrieve batch",
            Operation::ListBatches => "list batches",
            Operation::CancelBatch => "cancel batch",
            Operation::DeleteBatch => "delete batch",
        }
    }

    /// A call on a whole collection (`/files`, `/batches`), which exists whatever objects do:
    /// a 404 there says the route is missing, never that an object is gone.
    pub fn on_collection(self) -> bool {
        matches!(
            self,
            Operation::UploadFile
                | Operation::ListFiles
                | Operation::CreateBatch
                | Operation::ListBatches
        )
    }

    /// Upload and create make a new remote object each time they are carried out, and the API
    /// has no idempotency key: a failure after the request left may hide a success.
    pub fn creates(self) -> bool {
        matches!(self, Operation::UploadFile | Operation::CreateBatch)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed API call. Messages name the operation and what the server said; they never hold
/// the API key (server text is redacted before it gets here).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Worth trying again: the network failed, the server was overloaded or answered garbage,
    /// and nothing was created. `retry_after` is the server's delay, when it gave one.
    #[error("{op}: temporary failure: {detail}")]
    Transient {
        op: Operation,
        status: Option<u16>,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// 429 without a quota code: try again, not before `retry_after` when the server said.
    #[error("{op}: rate limited (429){}: {message}", after_text(.retry_after))]
    RateLimited {
        op: Operation,
        retry_after: Option<Duration>,
        message: String,
    },
    /// The request itself is wrong (400, 422 and other 4xx, or an unexpected redirect):
    /// sending it again gives the same answer.
    #[error("{op}: refused ({status}): {message}")]
    BadRequest {
        op: Operation,
        status: u16,
        message: String,
        /// The error envelope's `type`.
        error_type: Option<String>,
        param: Option<String>,
        code: Option<String>,
    },
    /// 401: the key is wrong, revoked or missing. Stop and alert.
    #[error("{op}: the API key was not accepted (401): {message}")]
    Unauthorized { op: Operation, message: String },
    /// 403: the key is valid but may not do this (project, region, permissions). Stop and alert.
    #[error("{op}: the API key is not allowed to do this (403): {message}")]
    Forbidden { op: Operation, message: String },
    /// 404 with the API's own error body: the object does not exist (old batches vanish).
    #[error("{op}: not found (404): {message}")]
    NotFound { op: Operation, message: String },
    /// 404 for the route itself: a collection route (`POST /files`, `GET /batches`, ...) or any
    /// answer the API words "Invalid URL". The base URL is wrong (`/v1` left out, say) or the
    /// service is not the Batch API: a fault of the configuration, never of a file or a batch.
    #[error("{op}: the API has no such route (404): {message}; is api.base_url right?")]
    RouteMissing { op: Operation, message: String },
    /// 429 with code `insufficient_quota`: billing, not load. Waiting a few seconds won't help.
    #[error("{op}: quota exhausted (429 insufficient_quota): {message}")]
    QuotaExceeded { op: Operation, message: String },
    /// An upload or create may have been carried out: the request left, and no answer that
    /// says otherwise came back. Reconcile (list and match) before creating again.
    #[error("{op}: outcome unknown, the server may have carried it out: {detail}")]
    UnknownOutcome {
        op: Operation,
        status: Option<u16>,
        detail: String,
    },
    /// A local file could not be read (upload) or written (download): the host's fault (a
    /// full disk, a quota, a permission, an I/O error), not the service's.
    #[error("{op}: {}: {source}", .path.display())]
    LocalIo {
        op: Operation,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn after_text(after: &Option<Duration>) -> String {
    match after {
        Some(d) => format!(", retry after {:.3}s", d.as_secs_f64()),
        None => String::new(),
    }
}

impl ApiError {
    /// Whether the API refused a create because the enqueued-token limit was reached:
    /// back-pressure, not a bad request.
    pub fn is_token_limit(&self) -> bool {
        matches!(self, ApiError::BadRequest { code: Some(c), .. } if c == "token_limit_exceeded")
    }

    /// The operation that failed.
    pub fn operation(&self) -> Operation {
        match self {
            ApiError::Transient { op, .. }
            | ApiError::RateLimited { op, .. }
            | ApiError::BadRequest { op, .. }
            | ApiError::Unauthorized { op, .. }
            | ApiError::Forbidden { op, .. }
            | ApiError::NotFound { op, .. }
            | ApiError::RouteMissing { op, .. }
            | ApiError::QuotaExceeded { op, .. }
            | ApiError::UnknownOutcome { op, .. }
            | ApiError::LocalIo { op, .. } => *op,
        }
    }

    /// Trying the same call again later may succeed, and nothing was created.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::Transient { .. } | ApiError::RateLimited { .. }
        )
    }

    /// An upload or create that may have happened; the caller must reconcile.
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, ApiError::UnknownOutcome { .. })
    }

    /// A local file could not be read or written for a reason of the host's (the operating
    /// system refused it: a permission, a full disk, an I/O error), as opposed to a file whose
    /// shape is wrong (shorter than the range to upload). Waiting for the host may cure it.
    pub fn is_host_fault(&self) -> bool {
        matches!(self, ApiError::LocalIo { source, .. } if source.raw_os_error().is_some())
    }

    /// The key was refused (401) or lacks permission (403).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ApiError::Unauthorized { .. } | ApiError::Forbidden { .. }
        )
    }

    /// The delay the server asked for, if it asked.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Transient { retry_after, .. } | ApiError::RateLimited { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The HTTP status the server answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Transient { status, .. } | ApiError::UnknownOutcome { status, .. } => *status,
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded { .. } => Some(429),
            ApiError::BadRequest { status, .. } => Some(*status),
            ApiError::Unauthorized { .. } => Some(401),
            ApiError::Forbidden { .. } => Some(403),
            ApiError::NotFound { .. } | ApiError::RouteMissing { .. } => Some(404),
            ApiError::LocalIo { .. } => None,
        }
    }

    /// The request failed before it could reach the server (no connection, or it could not
    /// be built): always transient, even for a create.
    pub(crate) fn not_sent(op: Operation, detail: String) -> ApiError {
        ApiError::Transient {
            op,
            status: None,
            detail,
            retry_after: None,
        }
    }

    /// The request may have reached the server and nothing usable came back: a reset, a
    /// timeout, a truncated or garbled answer.
    pub fn lost_answer(op: Operation, status: Option<u16>, detail: String) -> ApiError {
        if op.creates() {
            ApiError::UnknownOutcome { op, status, detail }
        } else {
            ApiError::Transient {
                op,
                status,
                detail,
                retry_after: None,
            }
        }
    }

    /// Classifies a transport error from reqwest.
    pub(crate) fn from_transport(op: Operation, err: &reqwest::Error) -> ApiError {
        let detail = batchwatch_core::telemetry::chain(err);
        // is_connect covers DNS, refused connections and the connect timeout: no byte of the
        // request left. A builder error never leaves either.
        if err.is_connect() || err.is_builder() {
            ApiError::not_sent(op, detail)
        } else {
            ApiError::lost_answer(op, None, detail)
        }
    }

    /// Classifies a non-success answer from its raw `body`, the key redacted from its text.
    pub(crate) fn from_answer(
        op: Operation,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        key: &crate::ApiKey,
        now: jiff::Timestamp,
    ) -> ApiError {
        let text = key.redact(&String::from_utf8_lossy(body));
        ApiError::from_response(op, status, headers, &text, now).without_key(key)
    }

    /// The error with the key taken out of every text the server had a hand in. Redacting the
    /// raw body is not enough: JSON can spell the key with escapes (`\u0073k-…`) that only
    /// parsing decodes, and serde_json quotes the value it refuses in its error.
    pub(crate) fn without_key(self, key: &crate::ApiKey) -> ApiError {
        let r = |text: String| key.redact(&text);
        match self {
            ApiError::Transient {
                op,
                status,
                detail,
                retry_after,
            } => ApiError::Transient {
                op,
                status,
                detail: r(detail),
                retry_after,
            },
            ApiError::RateLimited {
                op,
                retry_after,
                message,
            } => ApiError::RateLimited {
                op,
                retry_after,
                message: r(message),
            },
            ApiError::BadRequest {
                op,
                status,
                message,
                error_type,
                param,
                code,
            } => ApiError::BadRequest {
                op,
                status,
                message: r(message),
                error_type: error_type.map(r),
                param: param.map(r),
                code: code.map(r),
            },
            ApiError::Unauthorized { op, message } => ApiError::Unauthorized {
                op,
                message: r(message),
            },
            ApiError::Forbidden { op, message } => ApiError::Forbidden {
                op,
                message: r(message),
            },
            ApiError::NotFound { op, message } => ApiError::NotFound {
                op,
                message: r(message),
            },
            ApiError::RouteMissing { op, message } => ApiError::RouteMissing {
                op,
                message: r(message),
            },
            ApiError::QuotaExceeded { op, message } => ApiError::QuotaExceeded {
                op,
                message: r(message),
            },
            ApiError::UnknownOutcome { op, status, detail } => ApiError::UnknownOutcome {
                op,
                status,
                detail: r(detail),
            },
            // A local path and the system's error: no server text.
            local @ ApiError::LocalIo { .. } => local,
        }
    }

    /// Classifies a non-success answer. `body` is the response text, already redacted.
    pub(crate) fn from_response(
        op: Operation,
        status: StatusCode,
        headers: &HeaderMap,
        body: &str,
        now: jiff::Timestamp,
    ) -> ApiError {
        let envelope = ErrorBody::parse(body);
        let message = match &envelope {
            Some(e) => e
                .message
                .clone()
                .unwrap_or_else(|| "(no message)".to_owned()),
            None => describe_body(headers, body),
        };
        let code = status.as_u16();
        let retry_after = parse_retry_after(headers, now);
        match code {
            401 => ApiError::Unauthorized { op, message },
            403 => ApiError::Forbidden { op, message },
            404 => match envelope {
                _ if op.on_collection() || message.starts_with("Invalid URL") => {
                    ApiError::RouteMissing { op, message }
                }
                Some(_) => ApiError::NotFound { op, message },
                // A 404 page from a proxy or a wrong base URL says nothing about the object;
                // calling it gone would make the daemon give up on a live batch.
                None => ApiError::Transient {
                    op,
                    status: Some(code),
                    detail: format!(
                        "404 without an API error body ({message}); is api.base_url right?"
                    ),
                    retry_after,
                },
            },
            429 => {
                let quota = envelope.as_ref().is_some_and(|e| {
                    e.code.as_deref() == Some("insufficient_quota")
                        || e.error_type.as_deref() == Some("insufficient_quota")
                });
                if quota {
                    ApiError::QuotaExceeded { op, message }
                } else {
                    ApiError::RateLimited {
                        op,
                        retry_after,
                        message,
                    }
                }
            }
            408 | 409 | 500 | 502..=504 | 506..=599 => {
                let detail = format!("{} {message}", status_text(status));
                if op.creates() {
                    ApiError::UnknownOutcome {
                        op,
                        status: Some(code),
                        detail,
                    }
                } else {
                    ApiError::Transient {
                        op,
                        status: Some(code),
                        detail,
                        retry_after,
                    }
                }
            }
            300..=399 => {
                let target = headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("nowhere");
                ApiError::BadRequest {
                    op,
                    status: code,
                    message: format!(
                        "unexpected redirect to {target}; set api.base_url to the final URL"
                    ),
                    error_type: None,
                    param: None,
                    code: None,
                }
            }
            // 501 and 505 (the server cannot do this at all), other 4xx, and anything else.
            _ => {
                let e = envelope.unwrap_or_default();
                ApiError::BadRequest {
                    op,
                    status: code,
                    message,
                    error_type: e.error_type,
                    param: e.param,
                    code: e.code,
                }
            }
        }
    }
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}:", status.as_u16()),
        None => format!("{}:", status.as_u16()),
    }
}

/// The API's error envelope, `{"error": {"message", "type", "param", "code"}}`. Servers that
/// are only OpenAI-compatible vary: a number for `code`, or a bare string for `error`.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ErrorBody {
    pub message: Option<String>,
    pub error_type: Option<String>,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ErrorBody {
    pub(crate) fn parse(body: &str) -> Option<ErrorBody> {
        let value: Value = serde_json::from_str(body).ok()?;
        match value.get("error")? {
            Value::String(message) => Some(ErrorBody {
                message: Some(message.clone()),
                ..ErrorBody::default()
            }),
            Value::Object(fields) => {
                let text = |name: &str| match fields.get(name) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                Some(ErrorBody {
                    message: text("message"),
                    error_type: text("type"),
                    param: text("param"),
                    code: text("code"),
                })
            }
            _ => None,
        }
    }
}

/// A short description of a body that is not the API's error envelope.
fn describe_body(headers: &HeaderMap, body: &str) -> String {
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return "an empty body".to_owned();
    }
    let html = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("html"))
        || trimmed.starts_with('<');
    if html {
        let title = html_title(trimmed);
        return match title {
            Some(t) => format!("an HTML page titled {t:?} ({} bytes)", body.len()),
            None => format!("an HTML page ({} bytes)", body.len()),
        };
    }
    let snippet: String = trimmed
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if snippet.len() < trimmed.len() {
        format!("{snippet:?}... ({} bytes)", body.len())
    } else {
        format!("{snippet:?}")
    }
}

fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<title>")? + "<title>".len();
    let end = start + lower[start..].find("</title>")?;
    let title: String = html[start..end].trim().chars().take(100).collect();
    (!title.is_empty()).then_some(title)
}

/// The delay a server asked for: `retry-after-ms` (milliseconds, OpenAI's precise form) when
/// present, else `Retry-After` as seconds or as an HTTP date (relative to `now`). A date in the
/// past means "now".
pub(crate) fn parse_retry_after(headers: &HeaderMap, now: jiff::Timestamp) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|t| t.parse::<f64>().ok())
        && let Ok(d) = Duration::try_from_secs_f64(ms / 1000.0)
    {
        return Some(d);
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let ahead = when.duration_since(now);
    Some(Duration::try_from(ahead).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn now() -> jiff::Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn envelope(message: &str, error_type: &str, code: Option<&str>) -> String {
        serde_json::json!({"error": {"message": message, "type": error_type, "param": null, "code": code}})
            .to_string()
    }

    fn classify(op: Operation, status: u16, h: &HeaderMap, body: &str) -> ApiError {
        ApiError::from_response(op, StatusCode::from_u16(status).unwrap(), h, body, now())
    }

    const HTML_502: &str =
        "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";

    // Found by fuzzing (fuzz/fuzz_targets/api_answer.rs): only the raw body was redacted, so a
    // key the server spelled with JSON escapes reached the error's message once parsed, and a
    // key in a field of the wrong type reached it through serde_json's error, which quotes it.
    #[test]
    fn the_key_is_in_no_error_however_the_server_spelled_it() {
        const KEY: &str = "sk-test-0123456789abcdef";
        let key = crate::ApiKey::new(KEY).unwrap();
        let escaped = r#"{"error":{"message":"Incorrect API key provided: sk-test-0123456789abcdef","type":"invalid_request_error","param":"sk-test-0123456789abcdef","code":null}}"#;
        let none = HeaderMap::new();
        for (op, status) in [
            (Operation::RetrieveBatch, 401),
            (Operation::RetrieveBatch, 400),
            (Operation::CreateBatch, 500),
            (Operation::RetrieveBatch, 404),
            (Operation::ListBatches, 429),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            let err = ApiError::from_answer(op, status, &none, escaped.as_bytes(), &key, now());
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(KEY), "{shown}");
            assert!(shown.contains("Incorrect API key provided: ***"), "{shown}");
        }
        let wrong_type = format!(r#"{{"id":"file-1","object":"file","deleted":"{KEY}"}}"#);
        for op in [Operation::DeleteFile, Operation::UploadFile] {
            let err = crate::client::decode_success::<crate::FileDeleted>(
                op,
                200,
                wrong_type.as_bytes(),
                &key,
            )
            .unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(KEY), "{shown}");
            assert!(shown.contains("invalid type: string \"***\""), "{shown}");
        }
    }

    #[test]
    fn overload_statuses_are_transient_for_reads_and_cancel() {
        let none = HeaderMap::new();
        for op in [
            Operation::RetrieveBatch,
            Operation::ListBatches,
            Operation::CancelBatch,
            Operation::RetrieveFile,
            Operation::ListFiles,
            Operation::DownloadFile,
            Operation::DeleteFile,
        ] {
            for status in [408, 409, 500, 502, 503, 504, 520] {
                let err = classify(op, status, &none, &envelope("busy", "server_error", None));
                assert!(
                    matches!(err, ApiError::Transient { status: Some(s), .. } if s == status),
                    "{op} {status}: {err:?}"
                );
                assert!(err.is_transient());
            }
        }
    }

    #[test]
    fn overload_statuses_on_create_and_upload_are_unknown_outcomes() {
        let none = HeaderMap::new();
        for op in [Operation::CreateBatch, Operation::UploadFile] {
            for status in [408, 409, 500, 502, 503, 504] {
                let err = classify(op, status, &none, HTML_502);
                assert!(err.is_unknown_outcome(), "{op} {status}: {err:?}");
                assert!(!err.is_transient());
                assert_eq!(err.status(), Some(status));
            }
        }
    }

    #[test]
    fn html_error_page_is_described_by_its_title_not_dumped() {
        let h = headers(&[("content-type", "text/html")]);
        let err = classify(Operation::RetrieveBatch, 502, &h, HTML_502);
        let text = err.to_string();
        assert!(err.is_transient());
        assert!(text.contains("\"502 Bad Gateway\""), "{text}");
        assert!(!text.contains("nginx"), "{text}");
        assert!(
            text.starts_with("retrieve batch: temporary failure: 502 Bad Gateway"),
            "{text}"
        );
    }

    #[test]
    fn rate_limit_429_carries_the_server_delay() {
        let h = headers(&[("retry-after", "7")]);
        let err = classify(
            Operation::RetrieveBatch,
            429,
            &h,
            &envelope(
                "Rate limit reached for requests",
                "requests",
                Some("rate_limit_exceeded"),
            ),
        );
        assert!(matches!(err, ApiError::RateLimited { .. }), "{err:?}");
        assert!(err.is_transient());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            err.to_string(),
            "retrieve batch: rate limited (429), retry after 7.000s: Rate limit reached for requests"
        );
    }

    #[test]
    fn rate_limit_on_create_is_not_an_unknown_outcome() {
        // A 429 is the server refusing before doing anything.
        let err = classify(Operation::CreateBatch, 429, &HeaderMap::new(), "");
        assert!(
            matches!(
                err,
                ApiError::RateLimited {
                    retry_after: None,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn insufficient_quota_429_is_permanent() {
        for (ty, code) in [
            ("insufficient_quota", Some("insufficient_quota")),
            ("insufficient_quota", None),
            ("requests", Some("insufficient_quota")),
        ] {
            let err = classify(
                Operation::CreateBatch,
                429,
                &headers(&[("retry-after", "1")]),
                &envelope("You exceeded your current quota", ty, code),
            );
            assert!(matches!(err, ApiError::QuotaExceeded { .. }), "{err:?}");
            assert!(!err.is_transient());
            assert_eq!(err.retry_after(), None);
        }
    }

    #[test]
    fn unauthorized_and_forbidden_are_distinct_auth_errors() {
        let e401 = classify(
            Operation::ListBatches,
            401,
            &HeaderMap::new(),
            &envelope(
                "Incorrect API key provided",
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
        );
        let e403 = classify(
            Operation::ListBatches,
            403,
            &HeaderMap::new(),
            &envelope(
                "Country not supported",
                "request_forbidden",
                Some("unsupported_country_region_territory"),
            ),
        );
        assert!(matches!(e401, ApiError::Unauthorized { .. }), "{e401:?}");
        assert!(matches!(e403, ApiError::Forbidden { .. }), "{e403:?}");
        assert!(e401.is_auth() && e403.is_auth());
        assert!(!e401.is_transient() && !e403.is_transient());
        assert!(e401.to_string().contains("Incorrect API key provided"));
    }

    #[test]
    fn auth_errors_on_create_are_not_unknown_outcomes() {
        let err = classify(Operation::CreateBatch, 401, &HeaderMap::new(), "");
        assert!(matches!(err, ApiError::Unauthorized { .. }), "{err:?}");
    }

    #[test]
    fn not_found_with_an_api_body_means_the_object_is_gone() {
        let err = classify(
            Operation::RetrieveBatch,
            404,
            &HeaderMap::new(),
            &envelope(
                "No batch found with id 'batch_x'.",
                "invalid_request_error",
                None,
            ),
        );
        assert!(matches!(err, ApiError::NotFound { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "retrieve batch: not found (404): No batch found with id 'batch_x'."
        );
    }

    #[test]
    fn not_found_page_without_an_api_body_is_not_taken_as_gone() {
        let err = classify(
            Operation::RetrieveBatch,
            404,
            &headers(&[("content-type", "text/html")]),
            "<html><title>Not Found</title></html>",
        );
        assert!(
            matches!(
                err,
                ApiError::Transient {
                    status: Some(404),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("api.base_url"), "{err}");
    }

    #[test]
    fn a_404_on_a_collection_route_or_worded_invalid_url_is_a_missing_route() {
        let invalid = |path: &str| {
            envelope(
                &format!("Invalid URL ({path})"),
                "invalid_request_error",
                None,
            )
        };
        let cases = [
            (Operation::UploadFile, invalid("POST /files")),
            (Operation::CreateBatch, invalid("POST /batches")),
            (Operation::ListBatches, invalid("GET /batches")),
            (Operation::ListFiles, "<html>404</html>".to_owned()),
            (Operation::RetrieveBatch, invalid("GET /batches/batch_x")),
        ];
        for (op, body) in cases {
            let err = classify(op, 404, &HeaderMap::new(), &body);
            assert!(
                matches!(err, ApiError::RouteMissing { .. }),
                "{op}: {err:?}"
            );
            assert!(err.to_string().contains("api.base_url"), "{err}");
            assert!(!err.is_transient() && !err.is_unknown_outcome());
        }
    }

    #[test]
    fn bad_request_keeps_message_type_param_and_code() {
        for status in [400, 413, 415, 422] {
            let body = serde_json::json!({"error": {
                "message": "Invalid 'metadata': too many keys",
                "type": "invalid_request_error",
                "param": "metadata",
                "code": "invalid_value"}})
            .to_string();
            let err = classify(Operation::CreateBatch, status, &HeaderMap::new(), &body);
            match &err {
                ApiError::BadRequest {
                    status: s,
                    message,
                    error_type,
                    param,
                    code,
                    ..
                } => {
                    assert_eq!(*s, status);
                    assert_eq!(message, "Invalid 'metadata': too many keys");
                    assert_eq!(error_type.as_deref(), Some("invalid_request_error"));
                    assert_eq!(param.as_deref(), Some("metadata"));
                    assert_eq!(code.as_deref(), Some("invalid_value"));
                }
                other => panic!("{status}: {other:?}"),
            }
            assert!(!err.is_transient() && !err.is_unknown_outcome());
        }
    }

    #[test]
    fn not_implemented_is_permanent_even_on_create() {
        let err = classify(Operation::CreateBatch, 501, &HeaderMap::new(), "");
        assert!(
            matches!(err, ApiError::BadRequest { status: 501, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn redirect_is_refused_with_a_hint_about_the_base_url() {
        let h = headers(&[("location", "https://api.example.com/v1/batches")]);
        let err = classify(Operation::ListBatches, 301, &h, "");
        assert!(
            matches!(err, ApiError::BadRequest { status: 301, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("https://api.example.com/v1/batches")
        );
    }

    #[test]
    fn service_unavailable_keeps_its_retry_after() {
        let h = headers(&[("retry-after", "3")]);
        let err = classify(Operation::RetrieveBatch, 503, &h, "");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn odd_error_bodies_still_yield_their_message_and_code() {
        let numeric = r#"{"error": {"message": "slow down", "code": 429}}"#;
        assert_eq!(
            ErrorBody::parse(numeric).unwrap().code.as_deref(),
            Some("429")
        );
        let bare = r#"{"error": "model overloaded"}"#;
        assert_eq!(
            ErrorBody::parse(bare).unwrap().message.as_deref(),
            Some("model overloaded")
        );
        assert_eq!(ErrorBody::parse("not json"), None);
        assert_eq!(ErrorBody::parse(r#"{"detail": "x"}"#), None);
    }

    #[test]
    fn plain_text_bodies_are_quoted_and_cut_short() {
        let long = "x".repeat(500);
        let err = classify(Operation::RetrieveBatch, 500, &HeaderMap::new(), &long);
        let text = err.to_string();
        assert!(text.contains("... (500 bytes)"), "{text}");
        assert!(text.len() < 300, "{text}");
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "20")]), now()),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "1.5")]), now()),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn retry_after_as_an_http_date_is_relative_to_now() {
        let h = headers(&[("retry-after", "Sun, 01 Mar 2026 12:00:30 GMT")]);
        assert_eq!(parse_retry_after(&h, now()), Some(Duration::from_secs(30)));
        let past = headers(&[("retry-after", "Sun, 01 Mar 2026 11:00:00 GMT")]);
        assert_eq!(parse_retry_after(&past, now()), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "1")]);
        assert_eq!(
            parse_retry_after(&h, now()),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn unparseable_or_negative_retry_after_is_ignored() {
        for bad in ["soon", "-5", "", "NaN"] {
            assert_eq!(
                parse_retry_after(&headers(&[("retry-after", bad)]), now()),
                None,
                "{bad:?}"
            );
        }
        let h = headers(&[("retry-after-ms", "-1"), ("retry-after", "2")]);
        assert_eq!(parse_retry_after(&h, now()), Some(Duration::from_secs(2)));
    }

    #[test]
    fn local_io_error_names_the_operation_and_path() {
        let err = ApiError::LocalIo {
            op: Operation::UploadFile,
            path: "/q/processing/a.jsonl".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(
            err.to_string()
                .starts_with("upload file: /q/processing/a.jsonl: ")
        );
        assert!(!err.is_transient() && !err.is_unknown_outcome());
    }
}
