//! batchwatch's side of a batch service. The daemon runs jobs on one today: the OpenAI Batch
//! and Files API, over HTTPS (reqwest with rustls), for OpenAI, Azure OpenAI and any
//! OpenAI-compatible server such as `batchwatch sim`. The same client also speaks Anthropic's
//! Message Batches ([`anthropic`]: create streamed from a file part, retrieve, list, cancel,
//! results sorted into two files, delete), which the daemon does not use yet. The daemon asks for a job's [`Part`]s in its own words
//! ([`parts`]: submit, find what a lost answer made, survey); how batchwatch's objects are named
//! on the service (the metadata keys, upload names) stays in this crate. What the daemon learns
//! of the requests, it learns through an [`Observer`]. No other crate of batchwatch speaks HTTP
//! to the service; the signed webhooks the daemon's notifications send go out through
//! [`webhook`] too.
//!
//! # Flavours
//!
//! `api.base_url` includes the version path (`https://api.openai.com/v1`,
//! `https://RESOURCE.openai.azure.com/openai/v1`, `http://127.0.0.1:8089/v1`); the client
//! appends `/files`, `/batches`, ... to it. OpenAI and compatible servers get
//! `Authorization: Bearer KEY`; Azure gets `api-key: KEY`; Anthropic (`https://api.anthropic.com/v1`)
//! gets `x-api-key: KEY` and `anthropic-version`. Each key header is marked sensitive.
//!
//! # Error classes
//!
//! Every failure is an [`ApiError`], decided as follows:
//!
//! | class | when | caller |
//! | --- | --- | --- |
//! | [`ApiError::Transient`] | no connection, a timeout or reset on a safe call, 408, 409, 500, 502, 503, 504 and other 5xx (not 501/505), an HTML or unparseable body, a short download, a 404 on an object's route without the API's own error body | try again later (safe calls were already retried) |
//! | [`ApiError::RateLimited`] | 429 without a quota code, with `retry-after-ms` or `Retry-After` (seconds or HTTP date) | try again, not before the delay |
//! | [`ApiError::BadRequest`] | 400, 422 and other 4xx, 501, 505, a redirect | permanent: fix the request |
//! | [`ApiError::Unauthorized`] / [`ApiError::Forbidden`] | 401 / 403 | permanent: stop submitting, alert |
//! | [`ApiError::NotFound`] | 404 with the API's error body | the object is gone |
//! | [`ApiError::RouteMissing`] | 404 on a collection route (upload, create, list), or worded "Invalid URL" | the base URL is wrong: the gate closes until the route answers, and no job fails for it |
//! | [`ApiError::QuotaExceeded`] | 429 with code `insufficient_quota` | permanent until billing changes |
//! | [`ApiError::UnknownOutcome`] | upload or create: a timeout, reset or truncated answer after the request left, a 408/409/5xx, an unparseable success body | reconcile before creating again |
//! | [`ApiError::LocalIo`] | the file to upload cannot be read, the download cannot be written (a full disk, a quota, a permission, an I/O error) | the host's fault, not the service's: a download waits for the host however long it takes, and counts towards no give-up; an upload of a file the system refuses to read ([`ApiError::is_host_fault`]) waits too; one of a file shorter than its part fails its job |
//!
//! A connection that could not be opened means nothing was sent, so even a create or upload
//! is then merely transient.
//!
//! # Retries
//!
//! Retrieve, list, cancel, delete and download repeat transient errors by themselves, up to
//! `api.retry_attempts` attempts, with capped exponential backoff and full jitter (a delay
//! drawn uniformly from zero to `min(retry_max_delay, retry_initial_delay * 2^n)`), and never
//! sooner than a delay the server asked for; see [`RetryPolicy`]. Repeating them is harmless: a
//! second cancel of a cancelling batch changes nothing, a second download replaces a temporary
//! file.
//!
//! Upload and create are never repeated by the client. The API has no idempotency key, so a
//! create whose answer was lost may have made a batch, and repeating it could make a second
//! one: two live batches for one job, billed twice (invariant 2). They return the outcome,
//! unknown included, and the caller reconciles ([`Client::find_batch`],
//! [`Client::find_upload`]) before deciding to create again.
//!
//! # Limits
//!
//! All requests of all clones of a [`Client`] share one limiter: a token bucket keeps them
//! under `limits.requests_per_second`, and a semaphore keeps at most `limits.concurrency` in
//! flight.

pub mod anthropic;
mod client;
mod error;
mod key;
mod limit;
mod observe;
pub mod parts;
mod retry;
mod tags;
mod types;
pub mod webhook;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(feature = "testing")]
pub mod testing;
pub use client::{Client, Collection};
pub use error::{ApiError, Operation};
pub use key::{ApiKey, outside_its_service};
pub use observe::Observer;
pub use parts::{
    Attempt, BatchOptions, CLOCK_SLACK, Claimed, Part, Survey, Surveying, results_usage,
};
pub use retry::RetryPolicy;
pub use tags::Claim;
pub use types::{
    Batch, BatchError, BatchErrors, BatchUsage, CreateBatchRequest, ExpiryAnchor, FileDeleted,
    FileObject, InputTokensDetails, ListPage, OutputExpiresAfter, OutputTokensDetails,
    RequestCounts, parse_timestamp,
};

/// How the names of downloads in progress start: the file being written beside its final name,
/// renamed into place when whole. What a crash leaves of one is found by this prefix.
pub const DOWNLOAD_PREFIX: &str = ".batchwatch-download-";
