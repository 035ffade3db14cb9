//! Fault injection: the middleware in front of every `/v1` and `/openai/v1` request (Anthropic's
//! `/v1/messages/batches` included). It counts
//! the request, checks the API key, then applies the fault planned for it
//! ([`FaultState::plan`](crate::model::FaultState::plan)): an error answer, a dropped
//! connection, a late answer, a download cut short, or added latency.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use secrecy::ExposeSecret;

use crate::conn::ConnKill;
use crate::error::ApiError;
use crate::files::MAX_UPLOAD_BYTES;
use crate::model::{FaultKind, RetryAfter};
use crate::state::Shared;

/// Checks the API key, records the request, and applies the planned fault.
pub(crate) async fn middleware(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| path.clone(), |m| m.as_str().to_owned());
    let route = format!("{method} {template}");

    let plan = {
        let mut state = shared.lock();
        state.stats.count_request(&route);
        if let Err(refusal) = check_key(&shared, request.headers()) {
            return refusal.into_response();
        }
        let plan = state.faults.plan(&method, &path, &template);
        if let Some(fault) = &plan.fault {
            state.stats.count_fault(fault.name());
            tracing::info!(%route, fault = fault.name(), "injecting a fault");
        }
        if !plan.latency.is_zero() {
            state.stats.count_fault("latency");
        }
        plan
    };
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    let Some(fault) = plan.fault else {
        return next.run(request).await;
    };
    match fault {
        // After `kill` every write fails, so these responses are never sent: the client sees
        // the connection close.
        FaultKind::DropBefore => {
            conn.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        FaultKind::DropAfter => {
            let _carried_out = next.run(request).await;
            conn.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        FaultKind::CarriedOutLate { ms } => {
            // The body is read now: the connection it would stream from is about to be cut.
            let (parts, body) = request.into_parts();
            if let Ok(body) = axum::body::to_bytes(body, MAX_UPLOAD_BYTES + (1 << 20)).await {
                let request = Request::from_parts(parts, Body::from(body));
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let _carried_out = next.run(request).await;
                });
            }
            conn.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        FaultKind::LateAnswer { ms } => {
            let response = next.run(request).await;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            response
        }
        FaultKind::BrokenDownload => cut_short(next.run(request).await),
        FaultKind::Latency { .. } => next.run(request).await,
        FaultKind::RateLimit { retry_after } => rate_limited(retry_after),
        FaultKind::Quota => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details (simulated).",
        )
        .code("insufficient_quota")
        .into_response(),
        FaultKind::ServerError => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error while processing your request (simulated). Sorry about that!",
        )
        .into_response(),
        FaultKind::Status { status } => {
            let status = status.status();
            let kind = if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            };
            let reason = status.canonical_reason().unwrap_or("error");
            ApiError::new(status, kind, format!("{reason} (simulated).")).into_response()
        }
        FaultKind::BadGateway => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            BAD_GATEWAY_HTML,
        )
            .into_response(),
        FaultKind::Unauthorized => invalid_key().into_response(),
        FaultKind::Forbidden => ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "You have insufficient permissions for this operation (simulated).",
        )
        .into_response(),
    }
}

/// Refuses a request without an acceptable key: any non-empty key, or exactly one of the
/// organisation's keys.
fn check_key(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let azure = headers.get("api-key").and_then(|v| v.to_str().ok());
    let anthropic = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let Some(key) = bearer
        .or(azure)
        .or(anthropic)
        .map(str::trim)
        .filter(|k| !k.is_empty())
    else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an Authorization \
             header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), as the api-key \
             header, or (Anthropic) as the x-api-key header.",
        ));
    };
    match &*shared.api_keys.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(keys) if !keys.iter().any(|k| k.expose_secret() == key) => Err(invalid_key()),
        _ => Ok(()),
    }
}

fn invalid_key() -> ApiError {
    // The real message quotes the key's ends; a simulator has no reason to echo any of it.
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
    )
    .code("invalid_api_key")
}

const BAD_GATEWAY_HTML: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n";

fn rate_limited(retry_after: RetryAfter) -> Response {
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "requests",
        "Rate limit reached for requests (simulated). Please try again later.",
    )
    .code("rate_limit_exceeded");
    if let Some((name, value)) = retry_after_header(retry_after) {
        err = err.header(name, value);
    }
    err.into_response()
}

fn retry_after_header(form: RetryAfter) -> Option<(header::HeaderName, HeaderValue)> {
    let retry_after_ms = header::HeaderName::from_static("retry-after-ms");
    match form {
        RetryAfter::None => None,
        RetryAfter::Seconds(n) => Some((header::RETRY_AFTER, HeaderValue::from(n))),
        RetryAfter::Millis(n) => Some((retry_after_ms, HeaderValue::from(n))),
        RetryAfter::HttpDate(n) => {
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(n as i64 + 1);
            let date = at.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
            HeaderValue::from_str(&date)
                .ok()
                .map(|v| (header::RETRY_AFTER, v))
        }
    }
}

/// Keeps the response's headers (its Content-Length included) but ends the body with an error
/// after half of it, so the client sees a download that broke off.
fn cut_short(response: Response) -> Response {
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let (parts, body) = response.into_parts();
    let stream = truncate(body.into_data_stream(), declared / 2);
    Response::from_parts(parts, Body::from_stream(stream))
}

fn truncate(
    stream: impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static,
    keep: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let broken = || std::io::Error::other("download cut off by fault injection");
    futures_util::stream::unfold(
        (Box::pin(stream), keep, false),
        move |(mut stream, left, done)| async move {
            if done {
                return None;
            }
            if left == 0 {
                // Give the part already sent time to reach the client before the connection
                // breaks; an immediate error would make hyper drop it unsent.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Some((Err(broken()), (stream, 0, true)));
            }
            match stream.next().await {
                Some(Ok(chunk)) => {
                    let take = (chunk.len() as u64).min(left);
                    let rest = left - take;
                    Some((Ok(chunk.slice(..take as usize)), (stream, rest, false)))
                }
                Some(Err(e)) => Some((Err(std::io::Error::other(e)), (stream, 0, true))),
                None => Some((Err(broken()), (stream, 0, true))),
            }
        },
    )
}
