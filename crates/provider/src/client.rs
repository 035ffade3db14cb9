//! The client itself: one [`Client`], cloned cheaply, shared by the whole daemon.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use batchwatch_core::config::{ApiSettings, ConfigError, Flavor, KeySource, LimitSettings};

use crate::anthropic::MessageBatch;
use crate::error::{ApiError, Operation};
use crate::key::ApiKey;
use crate::limit::Limiter;
use crate::observe::{Observer, Unobserved};
use crate::retry::RetryPolicy;
use crate::types::{Batch, CreateBatchRequest, FileDeleted, FileObject, ListPage};

/// Chunks read from disk for an upload; memory in flight is a few of these, whatever the size.
const UPLOAD_CHUNK: usize = 64 * 1024;

mod message_batches;

/// The most of an error body kept for classification; HTML error pages can be large.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// A collection of the API, as [`Client::check_route`] asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Batches,
    Files,
}

/// The Batch API client. Cloning is cheap and clones share the connection pool and limits.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    flavor: Flavor,
    /// Replaced when the key is read again from its source (a rotated key file).
    key: std::sync::RwLock<ApiKey>,
    retry: RetryPolicy,
    limiter: Limiter,
    request_timeout: Duration,
    upload_timeout: Duration,
    download_read_timeout: Duration,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is left out: its own Debug hides it, but nothing here needs it shown.
        f.debug_struct("Inner")
            .field("base", &self.base.as_str())
            .field("flavor", &self.flavor)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `api.base_url` with the key given. Fails only on a base URL that is not
    /// an http(s) URL, or when the TLS stack cannot start.
    pub fn new(
        api: &ApiSettings,
        limits: &LimitSettings,
        key: ApiKey,
    ) -> Result<Client, ConfigError> {
        Self::observed(api, limits, key, Arc::new(Unobserved))
    }

    /// As [`Client::new`], telling `observer` of every request, retry and byte.
    pub fn observed(
        api: &ApiSettings,
        limits: &LimitSettings,
        key: ApiKey,
        observer: Arc<dyn Observer>,
    ) -> Result<Client, ConfigError> {
        Self::with_http(api, limits, key, http_builder(api), observer)
    }

    fn with_http(
        api: &ApiSettings,
        limits: &LimitSettings,
        key: ApiKey,
        http: reqwest::ClientBuilder,
        observer: Arc<dyn Observer>,
    ) -> Result<Client, ConfigError> {
        let base = parse_base_url(&api.base_url)?;
        let http = http.build().map_err(|e| {
            ConfigError::key(
                "api.base_url",
                format!(
                    "cannot set up HTTPS: {} (the system's CA certificates are needed for an \
                     https:// URL: install them, e.g. the ca-certificates package)",
                    batchwatch_core::telemetry::chain(&e)
                ),
            )
        })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                flavor: api.flavor,
                key: std::sync::RwLock::new(key),
                retry: RetryPolicy::from_settings(api),
                limiter: Limiter::new(limits),
                request_timeout: api.request_timeout.get(),
                upload_timeout: api.upload_timeout.get(),
                download_read_timeout: api.download_read_timeout.get(),
                observer,
            }),
        })
    }

    /// Whether this client speaks Anthropic's Message Batches: a batch is created from the
    /// lines themselves (there is no upload), and its results are the batch's own.
    pub fn is_anthropic(&self) -> bool {
        self.inner.flavor == Flavor::Anthropic
    }

    fn key(&self) -> ApiKey {
        self.inner
            .key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `key` is the key in use (compared without printing either).
    pub fn uses_key(&self, key: &ApiKey) -> bool {
        self.key().same_as(key)
    }

    /// Reads the key again from `source` and uses it from the next request on (every clone
    /// of this client does). Returns whether it differs from the key in use; on an error the
    /// key in use stays.
    pub fn reload_key(&self, source: &KeySource) -> Result<bool, ConfigError> {
        let fresh = ApiKey::load(source)?;
        let mut key = self.inner.key.write().unwrap_or_else(|e| e.into_inner());
        let changed = !key.same_as(&fresh);
        *key = fresh;
        Ok(changed)
    }

    /// Uploads `range` of the file at `path` as a batch input file named `filename`. The bytes
    /// are streamed from disk with a known length (so `Content-Length` is sent): memory does not
    /// grow with the file. Never retried; see the module docs.
    pub async fn upload_file(
        &self,
        path: &Path,
        range: Range<u64>,
        filename: &str,
    ) -> Result<FileObject, ApiError> {
        self.upload_file_expiring(path, range, filename, None).await
    }

    /// As [`Client::upload_file`], asking the service to delete the file `expires_after`
    /// seconds after the upload (`expires_after[anchor]=created_at`).
    pub async fn upload_file_expiring(
        &self,
        path: &Path,
        range: Range<u64>,
        filename: &str,
        expires_after: Option<u64>,
    ) -> Result<FileObject, ApiError> {
        let op = Operation::UploadFile;
        let (reader, failure) = open_part(op, path, range.clone()).await?;
        let length = range.end - range.start;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            reader,
            UPLOAD_CHUNK,
        ));
        let part = reqwest::multipart::Part::stream_with_length(body, length)
            .file_name(filename.to_owned())
            .mime_str("application/octet-stream")
            .expect("a constant, valid MIME type");
        let mut form = reqwest::multipart::Form::new().text("purpose", "batch");
        if let Some(seconds) = expires_after {
            form = form
                .text("expires_after[anchor]", "created_at")
                .text("expires_after[seconds]", seconds.to_string());
        }
        let form = form.part("file", part);
        let request = self
            .request(Method::POST, &["files"])
            .multipart(form)
            .timeout(self.inner.upload_timeout);
        let result = self.call_json(op, request).await;
        if result.is_ok() {
            self.inner.observer.uploaded(length);
        }
        read_failure_first(op, path, result, &failure)
    }

    /// A file's metadata.
    pub async fn retrieve_file(&self, file_id: &str) -> Result<FileObject, ApiError> {
        let op = Operation::RetrieveFile;
        self.retrying(|| self.call_json(op, self.json_request(Method::GET, &["files", file_id])))
            .await
    }

    /// Every file (with `purpose`, when given), all pages, newest first.
    pub fn list_files(
        &self,
        purpose: Option<&str>,
    ) -> impl Stream<Item = Result<FileObject, ApiError>> + Send + 'static {
        let query = purpose
            .map(|p| vec![("purpose", p.to_owned())])
            .unwrap_or_default();
        self.paginate(Operation::ListFiles, Listing::FILES, query)
    }

    /// Every file the service keeps for batches: the uploads (purpose `batch`), then the
    /// results (`batch_output`), each newest first.
    pub fn list_batch_files(
        &self,
    ) -> impl Stream<Item = Result<FileObject, ApiError>> + Send + 'static {
        use futures_util::StreamExt;
        self.list_files(Some("batch"))
            .chain(self.list_files(Some("batch_output")))
    }

    /// Deletes a file. Retried when transient, so a delete whose answer was lost may come back
    /// as [`ApiError::NotFound`] on the retry: the file is gone either way.
    /// Deletes a file. On Anthropic the only results "file" is the ended batch itself (its
    /// `output_id`, [`MessageBatch::into_batch`]): deleting it deletes the batch and its
    /// results.
    pub async fn delete_file(&self, file_id: &str) -> Result<FileDeleted, ApiError> {
        if self.is_anthropic() {
            let deleted = self.delete_message_batch(file_id).await?;
            return Ok(FileDeleted {
                deleted: deleted.kind == "message_batch_deleted",
                id: deleted.id,
                object: deleted.kind,
            });
        }
        let op = Operation::DeleteFile;
        self.retrying(|| self.call_json(op, self.json_request(Method::DELETE, &["files", file_id])))
            .await
    }

    /// Downloads a file's content to `dest`: streamed into a temporary file beside it, synced,
    /// checked against the file's `bytes`, then renamed into place. A broken or short download
    /// is retried; nothing partial is ever left at `dest`. Returns the number of bytes.
    pub async fn download_file(&self, file_id: &str, dest: &Path) -> Result<u64, ApiError> {
        let meta = self.retrieve_file(file_id).await?;
        self.retrying(|| self.download_once(file_id, meta.bytes, dest))
            .await
    }

    /// Creates a batch. Never retried; see the module docs.
    pub async fn create_batch(&self, request: &CreateBatchRequest) -> Result<Batch, ApiError> {
        let op = Operation::CreateBatch;
        self.call_json(
            op,
            self.json_request(Method::POST, &["batches"]).json(request),
        )
        .await
    }

    /// A batch; on Anthropic, a Message Batch in batchwatch's words
    /// ([`MessageBatch::into_batch`]), as every call below that gives batches.
    pub async fn retrieve_batch(&self, batch_id: &str) -> Result<Batch, ApiError> {
        if self.is_anthropic() {
            return Ok(self.retrieve_message_batch(batch_id).await?.into_batch());
        }
        let op = Operation::RetrieveBatch;
        self.retrying(|| self.call_json(op, self.json_request(Method::GET, &["batches", batch_id])))
            .await
    }

    /// Every batch, newest first, fetched `limit_per_page` (1 to 100; on Anthropic, 1,000) at
    /// a time as the stream is read: stop reading and no further page is asked for.
    pub fn list_batches(
        &self,
        limit_per_page: u32,
    ) -> impl Stream<Item = Result<Batch, ApiError>> + Send + 'static {
        if self.is_anthropic() {
            let batches = self
                .list_message_batch_pages()
                .map_ok(|page| {
                    futures_util::stream::iter(page.data.into_iter().map(|b| Ok(b.into_batch())))
                })
                .try_flatten();
            return batches.left_stream();
        }
        let limit = limit_per_page.clamp(1, 100).to_string();
        self.paginate(
            Operation::ListBatches,
            Listing::BATCHES,
            vec![("limit", limit)],
        )
        .right_stream()
    }

    /// The batch list a page at a time, newest first, 100 batches a page, each fetched as the
    /// stream is read and retried when transient, as [`Client::list_batches`] fetches them:
    /// for a caller that hands whole pages on (the daemon's start-up check reads the list once
    /// for itself and for its first sweep).
    pub fn list_batch_pages(
        &self,
    ) -> impl Stream<Item = Result<ListPage<Batch>, ApiError>> + Send + 'static {
        if self.is_anthropic() {
            return self
                .list_message_batch_pages()
                .map_ok(|page| page.map(MessageBatch::into_batch))
                .left_stream();
        }
        let query = vec![("limit", "100".to_owned())];
        self.pages(Operation::ListBatches, Listing::BATCHES, query)
            .into_stream()
            .right_stream()
    }

    /// The most batches one page of the list holds: 100 (1,000 on Anthropic).
    pub fn max_page(&self) -> u32 {
        if self.is_anthropic() { 1000 } else { 100 }
    }

    /// One page of the batch list: up to `limit` (1 to [`Client::max_page`]) batches after the
    /// batch `after` (from the start when `None`). Sent once, never retried: a caller walking
    /// the pages decides what a failed page means.
    pub async fn list_batches_page(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> Result<ListPage<Batch>, ApiError> {
        if self.is_anthropic() {
            let page = self.list_message_batches_page(limit, after).await?;
            return Ok(page.map(MessageBatch::into_batch));
        }
        let mut query = vec![("limit", limit.clamp(1, 100).to_string())];
        query.extend(after.map(|a| ("after", a.to_owned())));
        self.call_json(
            Operation::ListBatches,
            self.json_request(Method::GET, &["batches"]).query(&query),
        )
        .await
    }

    /// Asks for a batch to be cancelled; it goes to `cancelling`, then `cancelled`.
    pub async fn cancel_batch(&self, batch_id: &str) -> Result<Batch, ApiError> {
        if self.is_anthropic() {
            return Ok(self.cancel_message_batch(batch_id).await?.into_batch());
        }
        let op = Operation::CancelBatch;
        self.retrying(|| {
            self.call_json(
                op,
                self.json_request(Method::POST, &["batches", batch_id, "cancel"]),
            )
        })
        .await
    }

    /// The collections the daemon reads on this service: batches, and files where batches
    /// are made from uploads.
    pub fn collections(&self) -> Vec<Collection> {
        match self.is_anthropic() {
            true => vec![Collection::Batches],
            false => vec![Collection::Batches, Collection::Files],
        }
    }

    /// The request that checks `collection`, as a person would type it: `GET /batches`.
    pub fn route_of(&self, collection: Collection) -> String {
        format!("GET /{}", self.segments_of(collection).join("/"))
    }

    fn segments_of(&self, collection: Collection) -> &'static [&'static str] {
        match collection {
            Collection::Batches if self.is_anthropic() => Listing::MESSAGE_BATCHES.segments,
            Collection::Batches => Listing::BATCHES.segments,
            Collection::Files => Listing::FILES.segments,
        }
    }

    /// Whether the key is accepted and the routes of [`Client::collections`] answer at the
    /// base URL ([`Client::check_route`] of each).
    pub async fn check_routes(&self) -> Result<(), ApiError> {
        for collection in self.collections() {
            self.check_route(collection).await?;
        }
        Ok(())
    }

    /// Asks for one page of one object of `collection`: whether the key is accepted and the
    /// route answers. Returns the service's clock (its `Date` header), when it gave one. Sent
    /// once, never retried.
    pub async fn check_route(
        &self,
        collection: Collection,
    ) -> Result<Option<jiff::Timestamp>, ApiError> {
        let op = match collection {
            Collection::Batches => Operation::ListBatches,
            Collection::Files => Operation::ListFiles,
        };
        let request = self
            .json_request(Method::GET, self.segments_of(collection))
            .query(&[("limit", "1")]);
        let (response, _permit) = self.send(op, request, None).await?;
        let date = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                jiff::fmt::rfc2822::DateTimeParser::new()
                    .parse_timestamp(v)
                    .ok()
            });
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| ApiError::from_transport(op, &e))?;
        // A page of the list, whatever its items: a server that answers something else at this
        // route is not the Batch API.
        serde_json::from_slice::<ListPage<serde_json::Value>>(&body).map_err(|e| {
            ApiError::lost_answer(
                op,
                Some(status),
                format!("the {status} answer is not a list ({e})"),
            )
        })?;
        Ok(date)
    }

    /// When the base URL lacks a version path: the base URL with `/v1` added, if the API's
    /// routes answer there ([`Client::check_routes`]), as they do when `/v1` was left out.
    pub async fn answers_with_version_path(&self) -> Option<String> {
        let base = self.inner.base.as_str().trim_end_matches('/');
        if base.ends_with("/v1") {
            return None;
        }
        let candidate = format!("{base}/v1");
        let elsewhere = Client {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                base: Url::parse(&candidate).ok()?,
                flavor: self.inner.flavor,
                key: std::sync::RwLock::new(self.key()),
                retry: self.inner.retry,
                limiter: self.inner.limiter.clone(),
                request_timeout: self.inner.request_timeout,
                upload_timeout: self.inner.upload_timeout,
                download_read_timeout: self.inner.download_read_timeout,
                // Not this configuration's calls: they count nowhere.
                observer: Arc::new(Unobserved),
            }),
        };
        elsewhere.check_routes().await.is_ok().then_some(candidate)
    }

    /// Runs a call that is safe to repeat under the retry policy, counting its retries.
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let observer = &self.inner.observer;
        self.inner
            .retry
            .run_observed(call, |err| observer.retry(err.operation()))
            .await
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("the base URL was checked to be an http(s) URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let (name, value) = self.key().header(self.inner.flavor);
        let request = self
            .inner
            .http
            .request(method, self.url(segments))
            .header(name, value);
        match self.inner.flavor {
            Flavor::Anthropic => request.header("anthropic-version", crate::anthropic::VERSION),
            Flavor::Openai | Flavor::Azure => request,
        }
    }

    fn json_request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.request(method, segments)
            .timeout(self.inner.request_timeout)
    }

    /// Sends one request under the limits. A success comes back with the limiter's slot, held
    /// while the body is read; anything else is classified. `head_timeout` bounds the wait for
    /// the answer's head, for requests without an overall timeout.
    async fn send(
        &self,
        op: Operation,
        request: RequestBuilder,
        head_timeout: Option<Duration>,
    ) -> Result<(Response, OwnedSemaphorePermit), ApiError> {
        let request = request
            .build()
            .map_err(|e| ApiError::from_transport(op, &e))?;
        let (method, path) = (request.method().clone(), request.url().path().to_owned());
        let permit = self.inner.limiter.acquire().await;
        let started = Instant::now();
        let execute = self.inner.http.execute(request);
        let outcome = match head_timeout {
            Some(limit) => tokio::time::timeout(limit, execute)
                .await
                .map_err(|_| stalled(op, limit, 0)),
            None => Ok(execute.await),
        };
        let outcome = outcome.and_then(|r| r.map_err(|e| ApiError::from_transport(op, &e)));
        // Method, path, status and time only: never headers, which carry the key.
        let response = match outcome {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(
                    %method,
                    path,
                    elapsed_ms = elapsed_ms(started),
                    error = %err,
                    "api request failed"
                );
                self.inner
                    .observer
                    .request(op, None, started.elapsed(), Some(&err));
                return Err(err);
            }
        };
        let status = response.status();
        tracing::debug!(
            %method,
            path,
            status = status.as_u16(),
            elapsed_ms = elapsed_ms(started),
            "api request"
        );
        let elapsed = started.elapsed();
        if status.is_success() {
            let observer = &self.inner.observer;
            observer.request(op, Some(status.as_u16()), elapsed, None);
            return Ok((response, permit));
        }
        let headers = response.headers().clone();
        let body = read_capped(response, ERROR_BODY_CAP).await;
        let err = ApiError::from_answer(
            op,
            status,
            &headers,
            &body,
            &self.key(),
            jiff::Timestamp::now(),
        );
        let observer = &self.inner.observer;
        observer.request(op, Some(status.as_u16()), elapsed, Some(&err));
        Err(err)
    }

    /// One attempt at a call answered with a JSON object.
    async fn call_json<T: DeserializeOwned>(
        &self,
        op: Operation,
        request: RequestBuilder,
    ) -> Result<T, ApiError> {
        let (response, _permit) = self.send(op, request, None).await?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| ApiError::from_transport(op, &e))?;
        decode_success(op, status, &body, &self.key())
    }

    /// One attempt at a download; see [`Client::download_file`].
    async fn download_once(
        &self,
        file_id: &str,
        expected: Option<u64>,
        dest: &Path,
    ) -> Result<u64, ApiError> {
        let op = Operation::DownloadFile;
        let read_timeout = self.inner.download_read_timeout;
        let mut out = Landing::open(op, dest)?;

        // No overall timeout: a large file may take long. Instead, every wait for bytes (the
        // answer's head, then each chunk) is bounded by the read timeout.
        let request = self.request(Method::GET, &["files", file_id, "content"]);
        let (mut response, _permit) = self.send(op, request, Some(read_timeout)).await?;
        let expected = expected.or(response.content_length());
        let mut written: u64 = 0;
        loop {
            let chunk = tokio::time::timeout(read_timeout, response.chunk())
                .await
                .map_err(|_| stalled(op, read_timeout, written))?
                .map_err(|e| ApiError::from_transport(op, &e))?;
            let Some(chunk) = chunk else { break };
            written += chunk.len() as u64;
            if let Some(expected) = expected
                && written > expected
            {
                return Err(ApiError::lost_answer(
                    op,
                    None,
                    format!("the content is longer than the file's {expected} bytes"),
                ));
            }
            out.write(&chunk).await?;
        }
        if let Some(expected) = expected
            && written != expected
        {
            return Err(ApiError::lost_answer(
                op,
                None,
                format!("the download ended after {written} of {expected} bytes"),
            ));
        }
        out.land().await?;
        self.inner.observer.downloaded(written);
        Ok(written)
    }

    /// A stream over every page of a list, fetching the next page only when it is needed.
    fn paginate<T: Listed>(
        &self,
        op: Operation,
        listing: Listing,
        query: Vec<(&'static str, String)>,
    ) -> impl Stream<Item = Result<T, ApiError>> + Send + 'static {
        let state = (self.pages(op, listing, query), VecDeque::new());
        futures_util::stream::unfold(state, |(mut s, mut pending)| async move {
            loop {
                if let Some(item) = pending.pop_front() {
                    return Some((Ok(item), (s, pending)));
                }
                if s.done {
                    return None;
                }
                match s.next_page().await {
                    Ok(page) => pending = page.data.into(),
                    Err(err) => {
                        s.done = true;
                        return Some((Err(err), (s, pending)));
                    }
                }
            }
        })
    }

    /// A listing from its first page.
    fn pages<T: Listed>(
        &self,
        op: Operation,
        listing: Listing,
        query: Vec<(&'static str, String)>,
    ) -> Pages<T> {
        Pages {
            client: self.clone(),
            op,
            listing,
            query,
            after: None,
            done: false,
            listed: std::marker::PhantomData,
        }
    }
}

/// The object a successful answer's `body` holds; a body that is not that object is an answer
/// lost (an unknown outcome for a create). Pure, so that every body is tested without a server.
pub(crate) fn decode_success<T: DeserializeOwned>(
    op: Operation,
    status: u16,
    body: &[u8],
    key: &ApiKey,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // Redact before cutting, so no cut can leave the start of the key behind.
        let redacted = key.redact(&String::from_utf8_lossy(body));
        let text: String = redacted.chars().take(200).collect();
        ApiError::lost_answer(
            op,
            Some(status),
            format!("the {status} answer is not the expected JSON ({e}): {text:?}"),
        )
        .without_key(key)
    })
}

/// A list route of the service, and the query parameter that names the object a page follows.
#[derive(Debug, Clone, Copy)]
struct Listing {
    segments: &'static [&'static str],
    cursor: &'static str,
}

impl Listing {
    const FILES: Listing = Listing {
        segments: &["files"],
        cursor: "after",
    };
    const BATCHES: Listing = Listing {
        segments: &["batches"],
        cursor: "after",
    };
    const MESSAGE_BATCHES: Listing = Listing {
        segments: &["messages", "batches"],
        cursor: "after_id",
    };
}

/// The state of a paginated listing.
struct Pages<T> {
    client: Client,
    op: Operation,
    listing: Listing,
    query: Vec<(&'static str, String)>,
    after: Option<String>,
    done: bool,
    listed: std::marker::PhantomData<fn() -> T>,
}

impl<T: Listed> Pages<T> {
    /// The pages as a stream, each fetched when the stream is read, up to the first error.
    fn into_stream(self) -> impl Stream<Item = Result<ListPage<T>, ApiError>> + Send + 'static {
        futures_util::stream::unfold(self, |mut s| async move {
            if s.done {
                return None;
            }
            let page = s.next_page().await;
            s.done |= page.is_err();
            Some((page, s))
        })
    }

    /// Fetches the page after `self.after` and moves the cursor past it.
    async fn next_page(&mut self) -> Result<ListPage<T>, ApiError> {
        let client = &self.client;
        let mut query = self.query.clone();
        if let Some(after) = &self.after {
            query.push((self.listing.cursor, after.clone()));
        }
        let page: ListPage<T> = client
            .retrying(|| {
                client.call_json(
                    self.op,
                    client
                        .json_request(Method::GET, self.listing.segments)
                        .query(&query),
                )
            })
            .await?;
        if page.has_more != Some(true) || page.data.is_empty() {
            self.done = true;
            return Ok(page);
        }
        let next = page
            .last_id
            .clone()
            .or_else(|| page.data.last().map(|item| item.id().to_owned()));
        // A server that repeats its cursor would have us loop forever; stopping quietly would
        // hide batches from reconciliation.
        if next.is_none() || next == self.after {
            self.done = true;
            return Err(ApiError::Transient {
                op: self.op,
                status: None,
                detail: format!(
                    "the list claims more pages but its cursor did not advance past {:?}",
                    self.after
                ),
                retry_after: None,
            });
        }
        self.after = next;
        Ok(page)
    }
}

/// Objects that come in lists, identified by id.
trait Listed: DeserializeOwned + Send + 'static {
    fn id(&self) -> &str;
}

impl Listed for Batch {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Listed for FileObject {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Listed for crate::anthropic::MessageBatch {
    fn id(&self) -> &str {
        &self.id
    }
}

fn parse_base_url(text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim())
        .map_err(|e| ConfigError::key("api.base_url", format!("{text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host().is_none() {
        return Err(ConfigError::key(
            "api.base_url",
            format!(
                "{text:?} must be an http:// or https:// URL such as https://api.openai.com/v1"
            ),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::key(
            "api.base_url",
            format!("{text:?} must not have a query or fragment"),
        ));
    }
    Ok(url)
}

/// A builder of HTTP clients with the daemon's TLS: the system's certificates when `https`
/// is to be spoken, none otherwise (the API client's, and the notifications').
pub(crate) fn http_client_builder(https: bool) -> reqwest::ClientBuilder {
    // reqwest is built without a bundled crypto provider; ring is ours. Installing twice is
    // harmless (the second attempt reports the first and is ignored).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = if https {
        reqwest::Client::builder().tls_backend_rustls()
    } else {
        // Plain HTTP (the simulator, a local gateway) needs no certificates: do not load the
        // system's, so the daemon also runs where there are none (a minimal container).
        let no_roots = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        reqwest::Client::builder().tls_backend_preconfigured(no_roots)
    };
    builder
        // Nothing here follows a redirect: one would resend a key, or a signed event, to
        // another host.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("batchwatch/", env!("CARGO_PKG_VERSION")))
}

/// The HTTP client's settings, shared by [`Client::new`] and the TLS test.
fn http_builder(api: &ApiSettings) -> reqwest::ClientBuilder {
    http_client_builder(!api.base_url.trim_start().starts_with("http://"))
        .connect_timeout(api.connect_timeout.get())
}

fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

fn stalled(op: Operation, read_timeout: Duration, written: u64) -> ApiError {
    ApiError::lost_answer(
        op,
        None,
        format!(
            "no data for {:.1}s after {written} bytes (api.download_read_timeout)",
            read_timeout.as_secs_f64()
        ),
    )
}

/// `range` of the file at `path`, opened for sending as a request body: read exactly (see
/// [`ExactReader`]), a read failure kept in the second value for [`read_failure_first`].
async fn open_part(
    op: Operation,
    path: &Path,
    range: Range<u64>,
) -> Result<(ExactReader<tokio::io::Take<tokio::fs::File>>, ReadFailure), ApiError> {
    let local = |source: io::Error| ApiError::LocalIo {
        op,
        path: path.to_owned(),
        source,
    };
    if range.start > range.end {
        return Err(local(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid byte range {}..{}", range.start, range.end),
        )));
    }
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    let size = file.metadata().await.map_err(local)?.len();
    if range.end > size {
        return Err(local(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the file has {size} bytes; the range to send ends at {}",
                range.end
            ),
        )));
    }
    file.seek(io::SeekFrom::Start(range.start))
        .await
        .map_err(local)?;
    let length = range.end - range.start;
    let failure = Arc::new(Mutex::new(None));
    let reader = ExactReader {
        inner: tokio::io::AsyncReadExt::take(file, length),
        remaining: length,
        failure: Arc::clone(&failure),
    };
    Ok((reader, failure))
}

/// A read failure of a request body, kept for after the request.
type ReadFailure = Arc<Mutex<Option<io::Error>>>;

/// A read failure cut the body short, so the server cannot have a complete request: the
/// failure is local, not an unknown outcome.
fn read_failure_first<T>(
    op: Operation,
    path: &Path,
    result: Result<T, ApiError>,
    failure: &ReadFailure,
) -> Result<T, ApiError> {
    match (result, failure.lock().expect("never poisoned").take()) {
        (Err(_), Some(source)) => Err(ApiError::LocalIo {
            op,
            path: path.to_owned(),
            source,
        }),
        (result, _) => result,
    }
}

/// A download landing at `dest`: written to a temporary file beside it, then synced, checked
/// and renamed into place ([`Landing::land`]). Dropped before that, the temporary file goes
/// with it: nothing partial survives a failure.
struct Landing {
    op: Operation,
    dest: PathBuf,
    dir: PathBuf,
    temp: tempfile::NamedTempFile,
    out: tokio::fs::File,
    written: u64,
}

impl Landing {
    fn open(op: Operation, dest: &Path) -> Result<Landing, ApiError> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let temp = batchwatch_core::process::shared_temp_file(&dir, crate::DOWNLOAD_PREFIX, "")
            .map_err(|e| local_io(op, &dir, e))?;
        let out =
            tokio::fs::File::from_std(temp.reopen().map_err(|e| local_io(op, temp.path(), e))?);
        Ok(Landing {
            op,
            dest: dest.to_owned(),
            dir,
            temp,
            out,
            written: 0,
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        self.out
            .write_all(bytes)
            .await
            .map_err(|e| local_io(self.op, self.temp.path(), e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Syncs the file, checks that every byte written reached the disk, renames it into place
    /// and syncs the directory.
    async fn land(self) -> Result<(), ApiError> {
        let Landing {
            op,
            dest,
            dir,
            temp,
            mut out,
            written,
        } = self;
        let local = |path: &Path, e| local_io(op, path, e);
        // tokio's File writes in the background: a failed last write (a full disk) surfaces
        // at the flush, and `sync_all` alone would not report it.
        out.flush().await.map_err(|e| local(temp.path(), e))?;
        out.sync_all().await.map_err(|e| local(temp.path(), e))?;
        drop(out);
        let on_disk = temp
            .as_file()
            .metadata()
            .map_err(|e| local(temp.path(), e))?
            .len();
        if on_disk != written {
            return Err(local(
                temp.path(),
                io::Error::other(format!(
                    "{on_disk} of the {written} bytes received reached the disk"
                )),
            ));
        }
        let target = dest.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
            temp.persist(&target)
                .map_err(|e| local_io(op, &target, e.error))?;
            // The rename is durable only once the directory is synced.
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| local_io(op, &dir, e))
        })
        .await
        .map_err(|e| local(&dest, io::Error::other(e)))?
    }
}

fn local_io(op: Operation, path: &Path, source: io::Error) -> ApiError {
    ApiError::LocalIo {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Reads at most `cap` bytes of a body; the rest is not needed to classify an error.
async fn read_capped(mut response: Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(cap - body.len())]),
            _ => break,
        }
    }
    body
}

/// Reads exactly `remaining` bytes: an early end of file is an error (the file shrank), not
/// a silently short upload. Any read error is also kept in `failure`, so the caller can tell
/// a local failure from a network one.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
    failure: Arc<Mutex<Option<io::Error>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for ExactReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        let read = (buf.filled().len() - before) as u64;
        let result = result.and_then(|()| {
            if read == 0 && buf.remaining() > 0 && self.remaining > 0 {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ended {} bytes early", self.remaining),
                ))
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.remaining -= read;
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                *self.failure.lock().expect("never poisoned") = Some(e);
                Poll::Ready(Err(copy))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchwatch_core::config::Settings;
    use batchwatch_core::model::BatchStatus;
    use tokio::io::AsyncReadExt;

    const KEY: &str = "sk-tls-test-SECRET-0123456789";

    fn settings(base_url: &str) -> Settings {
        let mut s = Settings::load_from(None, []).unwrap();
        s.api.base_url = base_url.to_owned();
        s.api.retry_attempts = 1;
        s
    }

    struct TlsServer {
        port: u16,
        ca: reqwest::Certificate,
        /// The head of the request the server received (empty if the handshake failed).
        request: tokio::task::JoinHandle<String>,
    }

    /// A one-shot HTTPS server on 127.0.0.1 with a certificate from a fresh CA, answering one
    /// request with a batch.
    async fn tls_server() -> TlsServer {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "batchwatch test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let request = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return String::new();
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).await.unwrap() == 1 {
                head.push(byte[0]);
            }
            let body = r#"{"id":"batch_tls","object":"batch","endpoint":"/v1/chat/completions","input_file_id":"file-1","completion_window":"24h","status":"in_progress","created_at":1711471533}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            tls.write_all(answer.as_bytes()).await.unwrap();
            tls.shutdown().await.ok();
            String::from_utf8(head).unwrap()
        });
        TlsServer {
            port,
            ca: reqwest::Certificate::from_der(ca_cert.der()).unwrap(),
            request,
        }
    }

    #[tokio::test]
    async fn https_works_with_the_ring_provider_and_the_platform_verifier() {
        let server = tls_server().await;
        let s = settings(&format!("https://127.0.0.1:{}/v1", server.port));
        // The same builder as Client::new, plus the test CA beside the platform's roots.
        let http = http_builder(&s.api).add_root_certificate(server.ca.clone());
        let client = Client::with_http(
            &s.api,
            &s.limits,
            ApiKey::new(KEY).unwrap(),
            http,
            Arc::new(Unobserved),
        )
        .unwrap();
        let batch = client.retrieve_batch("batch_tls").await.unwrap();
        assert_eq!(batch.id, "batch_tls");
        assert_eq!(batch.status, BatchStatus::InProgress);
        let head = server.request.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get /v1/batches/batch_tls http/1.1"),
            "{head}"
        );
        let bearer = format!("authorization: bearer {}", KEY.to_ascii_lowercase());
        assert!(head.contains(&bearer), "{head}");
    }

    #[tokio::test]
    async fn https_with_an_untrusted_certificate_is_refused_before_any_request() {
        let server = tls_server().await;
        let s = settings(&format!("https://127.0.0.1:{}/v1", server.port));
        let client = Client::new(&s.api, &s.limits, ApiKey::new(KEY).unwrap()).unwrap();
        let err = client.retrieve_batch("batch_tls").await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let text = batchwatch_core::telemetry::chain(&err);
        assert!(text.to_ascii_lowercase().contains("certificate"), "{text}");
        assert!(!text.contains(KEY), "{text}");
        // The handshake failed, so the server never saw a request, nor the key.
        assert_eq!(server.request.await.unwrap(), "");
    }

    /// A plain HTTP server on 127.0.0.1 answering every request with `body` and status 200.
    async fn answering_200_with(body: String) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(answer.as_bytes()).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn garbled_success_is_unknown_for_create_and_transient_for_reads_without_the_key() {
        // A proxy's maintenance page with a 200 status, echoing the key across the 200th byte.
        let page = format!("<html>{}{KEY}</html>", "x".repeat(188));
        let port = answering_200_with(page).await;
        let s = settings(&format!("http://127.0.0.1:{port}/v1"));
        let client = Client::new(&s.api, &s.limits, ApiKey::new(KEY).unwrap()).unwrap();
        let request = CreateBatchRequest {
            input_file_id: "file-1".into(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            metadata: None,
            output_expires_after: None,
        };
        let err = client.create_batch(&request).await.unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::UnknownOutcome {
                    status: Some(200),
                    ..
                }
            ),
            "{err:?}"
        );
        let err = client.retrieve_batch("batch_1").await.unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::Transient {
                    status: Some(200),
                    ..
                }
            ),
            "{err:?}"
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains("sk-tls"), "not even the key's start: {text}");
    }

    #[test]
    fn base_url_must_be_an_http_url_without_query() {
        for bad in [
            "ftp://example.com/v1",
            "not a url",
            "https://example.com/v1?x=1",
            "mailto:a@b",
        ] {
            let err = parse_base_url(bad).unwrap_err();
            assert_eq!(err.key.as_deref(), Some("api.base_url"), "{bad}");
        }
        assert!(parse_base_url("http://127.0.0.1:8089/v1").is_ok());
    }

    #[test]
    fn paths_are_appended_to_the_base_path_with_ids_escaped() {
        let s = settings("https://res.openai.azure.com/openai/v1/");
        let client = Client::new(&s.api, &s.limits, ApiKey::new(KEY).unwrap()).unwrap();
        assert_eq!(
            client.url(&["batches", "batch_1", "cancel"]).as_str(),
            "https://res.openai.azure.com/openai/v1/batches/batch_1/cancel"
        );
        assert_eq!(
            client.url(&["files", "../x?y"]).as_str(),
            "https://res.openai.azure.com/openai/v1/files/..%2Fx%3Fy"
        );
    }
}
