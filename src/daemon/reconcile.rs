//! Reconciling an upload or create whose outcome is unknown: did it happen after all?
//!
//! The API has no idempotency key, so the only way to know is to look: list the batches
//! (newest first) and match the metadata batchwatch put on the create, or list the files and
//! match the name it gave the upload. Only when nothing matches may the request be sent again.
//! Listing stops at objects created well before the request (an hour of slack for clock skew).

use std::time::Duration;

use futures_util::StreamExt;

use super::Ctx;
use crate::api::{ApiError, Batch, FileObject};
use crate::clock::{self, Timestamp};
use crate::model::{BatchStatus, JobState};
use crate::store::batches::{self, Submission};
use crate::store::jobs;

/// The metadata keys that tie a remote batch to its submission.
pub const JOB_KEY: &str = "batchwatch_job_id";
pub const PART_KEY: &str = "batchwatch_part";
pub const ATTEMPT_KEY: &str = "batchwatch_attempt";
pub const SHA_KEY: &str = "batchwatch_sha256";

const SKEW: Duration = Duration::from_secs(3600);

/// The name a submission's input file is uploaded under; unique per job, part and attempt.
pub fn upload_name(row: &Submission, file_name: &str) -> String {
    let stem = file_name.strip_suffix(".jsonl").unwrap_or(file_name);
    let safe: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    format!("{}-p{}-a{}-{safe}.jsonl", row.job_id, row.part, row.attempt)
}

/// Whether `batch` was created for `row`: by the metadata batchwatch put on it, or by its input
/// file, which was uploaded for this attempt alone (so a service that drops metadata is still
/// matched).
pub fn is_for(batch: &Batch, row: &Submission) -> bool {
    let by_metadata = batch.metadata_value(JOB_KEY) == Some(row.job_id.as_str())
        && batch.metadata_value(PART_KEY) == Some(row.part.to_string().as_str())
        && batch.metadata_value(ATTEMPT_KEY) == Some(row.attempt.to_string().as_str());
    let by_input = row
        .input_file_id
        .as_deref()
        .is_some_and(|id| id == batch.input_file_id);
    by_metadata || by_input
}

/// Objects created before this cannot be the request's: the time the request was armed (kept
/// across restarts), less an hour for clocks that disagree.
fn since(row: &Submission) -> Option<Timestamp> {
    let at = row.outcome_unknown_at.as_deref().unwrap_or(&row.created_at);
    clock::parse(at).and_then(|t| {
        t.checked_sub(jiff::SignedDuration::try_from(SKEW).ok()?)
            .ok()
    })
}

/// The batch a create for `row` made, if it made one.
pub async fn find_batch(ctx: &Ctx, row: &Submission) -> Result<Option<Batch>, ApiError> {
    let since = since(row);
    let mut listed = std::pin::pin!(ctx.client.list_batches(100));
    while let Some(batch) = listed.next().await {
        let batch = batch?;
        if is_for(&batch, row) {
            return Ok(Some(batch));
        }
        if let (Some(created), Some(since)) = (batch.created_at, since)
            && created < since
        {
            break;
        }
    }
    Ok(None)
}

/// The file an upload for `row` made, if it made one whole.
pub async fn find_upload(
    ctx: &Ctx,
    row: &Submission,
    name: &str,
) -> Result<Option<FileObject>, ApiError> {
    let since = since(row);
    let bytes = u64::try_from(row.part_end - row.part_start).ok();
    let mut listed = std::pin::pin!(ctx.client.list_files(Some("batch")));
    while let Some(file) = listed.next().await {
        let file = file?;
        if file.filename == name && (file.bytes.is_none() || file.bytes == bytes) {
            return Ok(Some(file));
        }
        if let (Some(created), Some(since)) = (file.created_at, since)
            && created < since
        {
            break;
        }
    }
    Ok(None)
}

/// Duplicates already reported by this process, so each is reported once.
static REPORTED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// How long a re-sent create is watched for a late duplicate: a request held up longer than
/// this is not coming.
const WATCH: Duration = Duration::from_secs(24 * 3600);

/// Cancels the late duplicates of re-sent creates. When reconciliation found no batch and the
/// create was sent again, the first request may still reach the API afterwards (held up in a
/// proxy, say) and make a second batch for the same submission; without an idempotency key
/// that cannot be prevented, only found. This lists the batches back to the oldest watched
/// submission and cancels any live batch that is a watched submission's but not its own.
pub async fn cancel_duplicates(ctx: Ctx) -> anyhow::Result<()> {
    let now = ctx.clock.now();
    let since = now
        .checked_sub(jiff::SignedDuration::try_from(WATCH)?)
        .unwrap_or(now);
    let watched =
        batches::watched_for_duplicates(ctx.store.reader(), &clock::format(since)).await?;
    let Some(oldest) = watched
        .iter()
        .filter_map(|r| clock::parse(&r.created_at))
        .min()
    else {
        return Ok(());
    };
    let stop_at = oldest
        .checked_sub(jiff::SignedDuration::try_from(SKEW)?)
        .unwrap_or(oldest);
    let mut listed = std::pin::pin!(ctx.client.list_batches(100));
    while let Some(batch) = listed.next().await {
        let batch = batch?;
        let duplicate_of = watched
            .iter()
            .find(|r| is_for(&batch, r) && r.remote_id.as_deref() != Some(batch.id.as_str()));
        let live = !batch.status.is_terminal() && batch.status != BatchStatus::Cancelling;
        if let Some(row) = duplicate_of
            && (live || REPORTED.lock().expect("lock").insert(batch.id.clone()))
        {
            let ours = row.remote_id.as_deref().unwrap_or("?");
            let what = if live {
                ctx.client.cancel_batch(&batch.id).await?;
                REPORTED.lock().expect("lock").insert(batch.id.clone());
                "cancelled it".to_owned()
            } else {
                format!(
                    "it had already ended ({}) when it was found; its results are not collected",
                    batch.status
                )
            };
            let message = format!(
                "batch {} duplicated batch {ours}: the create sent before reconciliation reached the API late; {what}",
                batch.id
            );
            tracing::warn!(job = %row.job_id, duplicate = %batch.id, batch = %ours, "{message}");
            let state = jobs::get(ctx.store.reader(), &row.job_id)
                .await?
                .map_or(JobState::Running, |j| j.state);
            let mut tx = ctx.store.begin().await?;
            jobs::add_event(
                &mut tx,
                &row.job_id,
                state,
                &message,
                &clock::format(ctx.clock.now()),
            )
            .await?;
            tx.commit().await?;
        }
        if batch.created_at.is_some_and(|created| created < stop_at) {
            break;
        }
    }
    Ok(())
}
