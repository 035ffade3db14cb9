//! The API client's reading of an answer (status, headers, body) on arbitrary input, for every
//! operation and every object it expects (batch, list pages, file, deletion, and Anthropic's
//! Message Batch and its list page, each also turned into the daemon's batch): it never panics;
//! a success is only ever a 2xx; every failure is the class the table in
//! `crates/provider/src/lib.rs` gives its status and operation, with that status and operation;
//! and no error's text or `Debug` holds the API key, wherever in the body the service put it.
//!
//! Input: the operation, the object, the status (two bytes), the `Content-Type`, then the
//! `Retry-After` and `retry-after-ms` values, each ended by a newline (empty: no header), then
//! the body.

#![no_main]

use batchwatch::api::anthropic::MessageBatch;
use batchwatch::api::{ApiError, ApiKey, Batch, FileDeleted, FileObject, ListPage, Operation};
use batchwatch::fuzzing::answer;
use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};

const KEY: &str = "sk-fuzz-0123456789abcdef";

/// A Message Batch read and turned into the daemon's batch (what `into_batch` makes of it),
/// each shown as `Debug` shows it.
#[derive(Debug)]
struct Mapped;

impl<'de> serde::Deserialize<'de> for Mapped {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let read = MessageBatch::deserialize(d)?;
        let mapped = read.clone().into_batch();
        assert_eq!(mapped.id, read.id);
        assert_eq!(mapped.status, read.status());
        drop(format!("{read:?} {mapped:?}"));
        Ok(Mapped)
    }
}

const CONTENT_TYPES: [Option<&str>; 4] = [
    None,
    Some("application/json"),
    Some("text/html; charset=utf-8"),
    Some("text/plain"),
];

/// Reads one answer as the object `T`, and checks the error's class when it fails.
fn read<T>(op: Operation, status: StatusCode, headers: &HeaderMap, body: &[u8])
where
    T: serde::de::DeserializeOwned + std::fmt::Debug,
{
    let key = ApiKey::new(KEY).unwrap();
    let now: jiff::Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
    let err = match answer::<T>(op, status, headers, body, &key, now) {
        Ok(read) => {
            assert!(status.is_success(), "{status} read as a success");
            // What the daemon makes of it must not panic either.
            drop(format!("{read:?}"));
            return;
        }
        Err(err) => err,
    };
    let code = status.as_u16();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(KEY), "the key in an error: {shown}");
    assert_eq!(err.operation(), op);
    assert_eq!(err.status(), Some(code), "{err:?}");
    let lost = if op.creates() {
        matches!(err, ApiError::UnknownOutcome { .. })
    } else {
        matches!(err, ApiError::Transient { .. })
    };
    let class_ok = match code {
        200..=299 => lost,
        401 => matches!(err, ApiError::Unauthorized { .. }),
        403 => matches!(err, ApiError::Forbidden { .. }),
        404 if op.on_collection() => matches!(err, ApiError::RouteMissing { .. }),
        404 => matches!(
            err,
            ApiError::NotFound { .. } | ApiError::RouteMissing { .. } | ApiError::Transient { .. }
        ),
        429 => matches!(
            err,
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded { .. }
        ),
        408 | 409 | 500 | 502..=504 | 506..=599 => lost,
        _ => matches!(err, ApiError::BadRequest { .. }),
    };
    assert!(class_ok, "{code} for {op}: {err:?}");
}

fn header_line(data: &[u8]) -> (Option<HeaderValue>, &[u8]) {
    let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let value = (end > 0)
        .then(|| HeaderValue::from_bytes(&data[..end]).ok())
        .flatten();
    (value, data.get(end + 1..).unwrap_or_default())
}

fuzz_target!(|data: &[u8]| {
    let [op, kind, status_hi, status_lo, content_type, rest @ ..] = data else {
        return;
    };
    let op = Operation::ALL[usize::from(*op) % Operation::ALL.len()];
    let status = 100 + u16::from_be_bytes([*status_hi, *status_lo]) % 500;
    let status = StatusCode::from_u16(status).unwrap();
    let mut headers = HeaderMap::new();
    if let Some(ct) = CONTENT_TYPES[usize::from(*content_type) % CONTENT_TYPES.len()] {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    let (retry_after, rest) = header_line(rest);
    let (retry_after_ms, body) = header_line(rest);
    if let Some(value) = retry_after {
        headers.insert(RETRY_AFTER, value.clone());
        headers.insert(LOCATION, value);
    }
    if let Some(value) = retry_after_ms {
        headers.insert("retry-after-ms", value);
    }
    match kind % 7 {
        0 => read::<Batch>(op, status, &headers, body),
        1 => read::<ListPage<Batch>>(op, status, &headers, body),
        2 => read::<FileObject>(op, status, &headers, body),
        3 => read::<ListPage<FileObject>>(op, status, &headers, body),
        4 => read::<FileDeleted>(op, status, &headers, body),
        5 => read::<Mapped>(op, status, &headers, body),
        _ => read::<ListPage<Mapped>>(op, status, &headers, body),
    }
});
