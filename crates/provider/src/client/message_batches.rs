//! Anthropic's Message Batches calls of [`Client`]; what they mean is in [`crate::anthropic`].

use std::ops::Range;
use std::path::Path;

use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use tokio::io::AsyncReadExt;

use super::{Client, Landing, Listing, UPLOAD_CHUNK, open_part, read_failure_first, stalled};
use crate::anthropic::{
    BODY_CLOSE, BODY_OPEN, DeletedMessageBatch, MessageBatch, MessageCounts, Outcome,
    ResultsSorted, outcome_of,
};
use crate::error::{ApiError, Operation};
use crate::types::ListPage;

impl Client {
    /// Creates a Message Batch of the requests in `range` of the JSONL file at `path` (whole
    /// lines, as validation cut them): the body `{"requests":[` + the lines joined by `,` +
    /// `]}` is streamed from disk with its `Content-Length`, never held in memory. A newline
    /// only ever ends a line in valid JSONL (a string cannot hold one), so each becomes the
    /// comma, and the range's last is dropped. Never retried: an answer lost may hide a batch
    /// made (see the crate docs).
    pub async fn create_message_batch(
        &self,
        path: &Path,
        range: Range<u64>,
    ) -> Result<MessageBatch, ApiError> {
        let op = Operation::CreateBatch;
        let last_is_newline = if range.end > range.start {
            let (mut last, _) = open_part(op, path, range.end - 1..range.end).await?;
            let mut byte = [0u8; 1];
            last.read_exact(&mut byte)
                .await
                .map_err(|e| super::local_io(op, path, e))?;
            byte[0] == b'\n'
        } else {
            false
        };
        let lines = range.start..range.end - u64::from(last_is_newline);
        let (reader, failure) = open_part(op, path, lines.clone()).await?;
        let length = BODY_OPEN.len() as u64 + (lines.end - lines.start) + BODY_CLOSE.len() as u64;
        let requests =
            tokio_util::io::ReaderStream::with_capacity(reader, UPLOAD_CHUNK).map_ok(|chunk| {
                let mut joined = chunk.to_vec();
                for byte in joined.iter_mut().filter(|b| **b == b'\n') {
                    *byte = b',';
                }
                joined
            });
        let body = futures_util::stream::once(async { Ok(BODY_OPEN.to_vec()) })
            .chain(requests)
            .chain(futures_util::stream::once(async {
                Ok(BODY_CLOSE.to_vec())
            }));
        let request = self
            .request(Method::POST, &["messages", "batches"])
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(body))
            .timeout(self.inner.upload_timeout);
        let result = self.call_json(op, request).await;
        if result.is_ok() {
            self.inner.observer.uploaded(length);
        }
        read_failure_first(op, path, result, &failure)
    }

    /// A Message Batch.
    pub async fn retrieve_message_batch(&self, batch_id: &str) -> Result<MessageBatch, ApiError> {
        let op = Operation::RetrieveBatch;
        self.retrying(|| {
            self.call_json(
                op,
                self.json_request(Method::GET, &["messages", "batches", batch_id]),
            )
        })
        .await
    }

    /// One page of the Message Batch list, newest first: up to `limit` (1 to 1000) batches
    /// after the batch `after_id` (from the newest when `None`). Sent once, never retried.
    pub async fn list_message_batches_page(
        &self,
        limit: u32,
        after_id: Option<&str>,
    ) -> Result<ListPage<MessageBatch>, ApiError> {
        let mut query = vec![("limit", limit.clamp(1, 1000).to_string())];
        query.extend(after_id.map(|a| ("after_id", a.to_owned())));
        self.call_json(
            Operation::ListBatches,
            self.json_request(Method::GET, &["messages", "batches"])
                .query(&query),
        )
        .await
    }

    /// The Message Batch list a page at a time (1,000 a page), newest first, each page fetched
    /// as the stream is read and retried when transient.
    pub fn list_message_batch_pages(
        &self,
    ) -> impl Stream<Item = Result<ListPage<MessageBatch>, ApiError>> + Send + 'static {
        let query = vec![("limit", "1000".to_owned())];
        self.pages(Operation::ListBatches, Listing::MESSAGE_BATCHES, query)
            .into_stream()
    }

    /// Asks for a Message Batch to be cancelled: `canceling`, then `ended`; requests already
    /// running may still finish.
    pub async fn cancel_message_batch(&self, batch_id: &str) -> Result<MessageBatch, ApiError> {
        let op = Operation::CancelBatch;
        self.retrying(|| {
            self.call_json(
                op,
                self.json_request(Method::POST, &["messages", "batches", batch_id, "cancel"]),
            )
        })
        .await
    }

    /// Deletes an ended Message Batch and its results. Retried when transient, so a delete
    /// whose answer was lost may come back as [`ApiError::NotFound`]: gone either way.
    pub async fn delete_message_batch(
        &self,
        batch_id: &str,
    ) -> Result<DeletedMessageBatch, ApiError> {
        let op = Operation::DeleteBatch;
        self.retrying(|| {
            self.call_json(
                op,
                self.json_request(Method::DELETE, &["messages", "batches", batch_id]),
            )
        })
        .await
    }

    /// Downloads an ended batch's results, sorting the lines as they arrive, each unchanged:
    /// `succeeded` ones to `output`, the others to `errors`. Each file lands whole (see
    /// [`Landing`]) and only when it has a line; a broken or unreadable download is retried
    /// from the start, and nothing partial is left at either path.
    pub async fn download_message_batch_results(
        &self,
        batch_id: &str,
        output: &Path,
        errors: &Path,
    ) -> Result<ResultsSorted, ApiError> {
        self.retrying(|| self.results_once(batch_id, output, errors))
            .await
    }

    async fn results_once(
        &self,
        batch_id: &str,
        output: &Path,
        errors: &Path,
    ) -> Result<ResultsSorted, ApiError> {
        let op = Operation::DownloadFile;
        let read_timeout = self.inner.download_read_timeout;
        let mut out = Landing::open(op, output)?;
        let mut err = Landing::open(op, errors)?;
        let request = self.request(Method::GET, &["messages", "batches", batch_id, "results"]);
        let (mut response, _permit) = self.send(op, request, Some(read_timeout)).await?;
        let mut counts = MessageCounts::default();
        let mut received: u64 = 0;
        // The line being read: one line in memory at a time.
        let mut line = Vec::new();
        let mut line_no: u64 = 0;
        loop {
            let chunk = tokio::time::timeout(read_timeout, response.chunk())
                .await
                .map_err(|_| stalled(op, read_timeout, received))?
                .map_err(|e| ApiError::from_transport(op, &e))?;
            let Some(chunk) = chunk else { break };
            received += chunk.len() as u64;
            let mut rest = &chunk[..];
            while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&rest[..=end]);
                rest = &rest[end + 1..];
                line_no += 1;
                sort_line(op, &line, line_no, &mut counts, &mut out, &mut err).await?;
                line.clear();
            }
            line.extend_from_slice(rest);
        }
        // The last line, when the results do not end with a newline (a blank one is skipped).
        if !line.is_empty() {
            line.push(b'\n');
            line_no += 1;
            sort_line(op, &line, line_no, &mut counts, &mut out, &mut err).await?;
        }
        // The errors first: an output file on disk then means both landed.
        for landing in [err, out] {
            if landing.written > 0 {
                landing.land().await?;
            }
        }
        self.inner.observer.downloaded(received);
        Ok(ResultsSorted {
            counts,
            bytes: received,
        })
    }
}

/// Writes one results line (with its newline) to the file its type goes to, and counts it.
async fn sort_line(
    op: Operation,
    line: &[u8],
    line_no: u64,
    counts: &mut MessageCounts,
    output: &mut Landing,
    errors: &mut Landing,
) -> Result<(), ApiError> {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let outcome = outcome_of(text).map_err(|e| {
        ApiError::lost_answer(
            op,
            None,
            format!("line {line_no} of the results is not a result ({e})"),
        )
    })?;
    let (count, file) = match outcome {
        Outcome::Succeeded => (&mut counts.succeeded, output),
        Outcome::Errored => (&mut counts.errored, errors),
        Outcome::Canceled => (&mut counts.canceled, errors),
        Outcome::Expired => (&mut counts.expired, errors),
    };
    *count += 1;
    file.write(line).await
}
