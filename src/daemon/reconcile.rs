//! Reconciling with the service what the database does not know for sure.
//!
//! The API has no idempotency key, so the only way to know is to look: list the batches
//! (newest first) and match the metadata batchwatch put on the create, or list the files and
//! match the name it gave the upload. Listing stops at objects created well before the request
//! (an hour of slack for clock skew).
//!
//! * An upload or create whose outcome is unknown: only when nothing matches may the request be
//!   sent again ([`find_upload`], [`find_batch`]).
//! * A database that lags the world (a restored backup, a lost WAL, a copy from another host):
//!   at start every unfinished job is [`Unverified`], as is a file adopted from processing/
//!   without a row. Nothing is uploaded, created or abandoned for such a job until [`verify`]
//!   has listed the service once for all of them and adopted what it found: batches of any
//!   part and attempt (a missing attempt gets its row), and uploads the database did not
//!   record. Only then does the job go on as the database says.
//! * A create sent again after reconciliation found nothing may still land late: the re-sent
//!   submissions are watched for a day and their late duplicates cancelled
//!   ([`cancel_duplicates`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;

use super::ctx::Ctx;
use super::observe::observe;
use super::progress::refresh_job;
use crate::api::{ApiError, Batch, FileObject};
use crate::clock::{self, Timestamp};
use crate::metrics::Reconciled;
use crate::model::{BatchStatus, JobId, JobState, SubmissionState};
use crate::store::batches::{self, NewSubmission, Submission};
use crate::store::jobs::{self, Job};
use crate::store::transitions;

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

/// The part and attempt batchwatch put in a batch's metadata, when both are there and read as
/// numbers.
fn part_and_attempt(batch: &Batch) -> Option<(i64, i64)> {
    Some((
        batch.metadata_value(PART_KEY)?.parse().ok()?,
        batch.metadata_value(ATTEMPT_KEY)?.parse().ok()?,
    ))
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
    let found = search_batches(ctx, row).await;
    ctx.metrics.reconciliation(Reconciled::Create, &found);
    found
}

async fn search_batches(ctx: &Ctx, row: &Submission) -> Result<Option<Batch>, ApiError> {
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
    let found = search_files(ctx, row, name).await;
    ctx.metrics.reconciliation(Reconciled::Upload, &found);
    found
}

async fn search_files(
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

/// The late duplicates already reported, so each is reported once.
#[derive(Debug, Default)]
pub struct DuplicateWatch {
    reported: Mutex<BTreeSet<String>>,
}

impl DuplicateWatch {
    fn is_new(&self, batch_id: &str) -> bool {
        !self.reported.lock().expect("lock").contains(batch_id)
    }

    fn reported(&self, batch_id: &str) {
        self.reported
            .lock()
            .expect("lock")
            .insert(batch_id.to_owned());
    }
}

/// Cancels the late duplicates of re-sent creates. When reconciliation found no batch and the
/// create was sent again, the first request may still reach the API afterwards (held up in a
/// proxy, say) and make a second batch for the same submission; without an idempotency key
/// that cannot be prevented, only found. This lists the batches back to the oldest watched
/// submission and cancels any live batch that is a watched submission's but not its own.
pub async fn cancel_duplicates(ctx: Ctx) -> anyhow::Result<()> {
    let now = ctx.clock.now();
    let since = now
        .checked_sub(jiff::SignedDuration::try_from(
            ctx.schedule.duplicate_watch,
        )?)
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
            && (live || ctx.duplicates.is_new(&batch.id))
        {
            cancel_duplicate(
                &ctx,
                row,
                &batch,
                "the create sent before reconciliation reached the API late",
            )
            .await?;
            ctx.duplicates.reported(&batch.id);
        }
        if batch.created_at.is_some_and(|created| created < stop_at) {
            break;
        }
    }
    Ok(())
}

/// A second batch for a submission that has its own (or is over): cancels it when it is live,
/// and records in the job's events what it was and why it came to be.
async fn cancel_duplicate(
    ctx: &Ctx,
    row: &Submission,
    batch: &Batch,
    why: &str,
) -> anyhow::Result<()> {
    let live = !batch.status.is_terminal() && batch.status != BatchStatus::Cancelling;
    let ours = row.remote_id.as_deref().unwrap_or("none");
    let what = if live {
        ctx.client.cancel_batch(&batch.id).await?;
        ctx.metrics.duplicate_cancelled();
        "cancelled it".to_owned()
    } else {
        format!(
            "it had already ended ({}) when it was found; its results are not collected",
            batch.status
        )
    };
    let message = format!("batch {} duplicated batch {ours}: {why}; {what}", batch.id);
    tracing::warn!(job = %row.job_id, duplicate = %batch.id, batch = %ours, "{message}");
    event(ctx, &row.job_id, &message).await
}

/// Appends an event to a job's story, in the job's current state.
async fn event(ctx: &Ctx, job_id: &str, message: &str) -> anyhow::Result<()> {
    let state = jobs::get(ctx.store.reader(), job_id)
        .await?
        .map_or(JobState::Running, |j| j.state);
    let mut tx = ctx.store.begin().await?;
    jobs::add_event(&mut tx, job_id, state, message, &ctx.now()).await?;
    tx.commit().await?;
    Ok(())
}

/// Jobs whose remote side the database may not fully know; see the module docs.
#[derive(Debug, Default)]
pub struct Unverified(Mutex<BTreeSet<String>>);

impl Unverified {
    pub fn add(&self, job_id: &str) {
        self.0.lock().expect("lock").insert(job_id.to_owned());
    }

    pub fn contains(&self, job_id: &str) -> bool {
        self.0.lock().expect("lock").contains(job_id)
    }

    /// The jobs not yet checked.
    pub fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("unverified lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().expect("lock").is_empty()
    }

    fn snapshot(&self) -> Vec<String> {
        self.0.lock().expect("lock").iter().cloned().collect()
    }

    fn remove(&self, job_id: &str) {
        self.0.lock().expect("lock").remove(job_id);
    }
}

/// How many objects older than the oldest job in question a listing reads before it stops:
/// the API lists newest first, and a page of disorder is tolerated.
const OLDER_BEFORE_STOP: usize = 100;

/// When a job's file was claimed: the time its id carries (a row adopted from processing/ was
/// created later than that).
fn claimed_at(job: &Job) -> Option<Timestamp> {
    let from_id = JobId::parse(&job.id)
        .and_then(|id| Timestamp::from_millisecond(i64::try_from(id.unix_ms()).ok()?).ok());
    from_id
        .into_iter()
        .chain(clock::parse(&job.created_at))
        .min()
}

/// Whether a listing that has just read an object created at `created` may stop, given how
/// many older ones it read in a row before.
fn older_in_a_row(older: usize, created: Option<Timestamp>, since: Option<Timestamp>) -> usize {
    match (created, since) {
        (Some(created), Some(since)) if created < since => older + 1,
        _ => 0,
    }
}

/// The job, part and attempt an upload's name says it was made for.
pub fn parse_upload_name(name: &str) -> Option<(String, i64, i64)> {
    let (job, rest) = name.split_at_checked(JobId::PREFIX.len() + 26)?;
    JobId::parse(job)?;
    let mut fields = rest.strip_prefix("-p")?.splitn(3, '-');
    let part = fields.next()?.parse().ok()?;
    let attempt = fields.next()?.strip_prefix('a')?.parse().ok()?;
    Some((job.to_owned(), part, attempt))
}

/// Lists the service once for the batches and uploads of the unverified jobs and adopts what
/// the database does not record. A job still being validated waits for the next pass: its
/// submissions do not exist yet.
pub async fn verify(ctx: Ctx) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for id in ctx.unverified.snapshot() {
        match jobs::get(ctx.store.reader(), &id).await? {
            Some(job) if job.state == JobState::Validating => {}
            Some(job) if !job.state.is_terminal() => pending.push(job),
            _ => ctx.unverified.remove(&id),
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let since = pending.iter().filter_map(claimed_at).min().and_then(|t| {
        t.checked_sub(jiff::SignedDuration::try_from(SKEW).ok()?)
            .ok()
    });
    let wanted: BTreeSet<&str> = pending.iter().map(|j| j.id.as_str()).collect();

    // A batch the database records for the submission its metadata names is known (`adopt`
    // would find it recorded and leave it): only the others are kept (with 10,000 jobs to
    // check, keeping all held some 100 MB).
    let recorded: HashMap<String, (String, i64, i64)> = batches::recorded(ctx.store.reader())
        .await?
        .into_iter()
        .map(|(remote, job, part, attempt)| (remote, (job, part, attempt)))
        .collect();
    let known = |b: &Batch| {
        recorded.get(&b.id).is_some_and(|(job, part, attempt)| {
            b.metadata_value(JOB_KEY) == Some(job.as_str())
                && part_and_attempt(b) == Some((*part, *attempt))
        })
    };
    let mut found: BTreeMap<String, Vec<Batch>> = BTreeMap::new();
    let mut older = 0;
    let mut listed = std::pin::pin!(ctx.client.list_batches(100));
    while let Some(batch) = listed.next().await {
        let batch = batch?;
        older = older_in_a_row(older, batch.created_at, since);
        if let Some(job) = batch.metadata_value(JOB_KEY).filter(|j| wanted.contains(j))
            && !known(&batch)
        {
            found.entry(job.to_owned()).or_default().push(batch);
        }
        if older >= OLDER_BEFORE_STOP {
            break;
        }
    }
    let mut uploads: BTreeMap<(String, i64, i64), FileObject> = BTreeMap::new();
    let mut older = 0;
    let mut listed = std::pin::pin!(ctx.client.list_files(Some("batch")));
    while let Some(file) = listed.next().await {
        let file = file?;
        older = older_in_a_row(older, file.created_at, since);
        if let Some(key) =
            parse_upload_name(&file.filename).filter(|k| wanted.contains(k.0.as_str()))
        {
            uploads.entry(key).or_insert(file);
        }
        if older >= OLDER_BEFORE_STOP {
            break;
        }
    }

    for job in &pending {
        let batches = found.remove(&job.id).unwrap_or_default();
        adopt(&ctx, job, batches, &uploads).await?;
        ctx.unverified.remove(&job.id);
        tracing::info!(job = %job.id, "checked against the service");
    }
    Ok(())
}

/// Adopts for one job the batches and uploads the service has and the database does not
/// record.
async fn adopt(
    ctx: &Ctx,
    job: &Job,
    mut found: Vec<Batch>,
    uploads: &BTreeMap<(String, i64, i64), FileObject>,
) -> anyhow::Result<()> {
    // Attempt by attempt, so a refused earlier attempt queues the next before it is met.
    found.sort_by_key(part_and_attempt);
    for batch in &found {
        let Some((part, attempt)) = part_and_attempt(batch) else {
            tracing::warn!(job = %job.id, batch = %batch.id, "a batch of this job without its part and attempt metadata; left alone");
            continue;
        };
        let row = match batches::by_attempt(ctx.store.reader(), &job.id, part, attempt).await? {
            Some(row) => row,
            None => {
                let Some(base) = batches::for_job(ctx.store.reader(), &job.id)
                    .await?
                    .into_iter()
                    .find(|r| r.part == part)
                else {
                    let message = format!(
                        "batch {} is for part {part}, which this job does not have; it is not followed",
                        batch.id
                    );
                    tracing::warn!(job = %job.id, "{message}");
                    event(ctx, &job.id, &message).await?;
                    continue;
                };
                let mut tx = ctx.store.begin().await?;
                batches::insert(
                    &mut tx,
                    &NewSubmission {
                        job_id: &job.id,
                        part,
                        part_start: base.part_start,
                        part_end: base.part_end,
                        part_requests: base.part_requests,
                        attempt,
                        not_before: None,
                    },
                    &ctx.now(),
                )
                .await?;
                tx.commit().await?;
                batches::by_attempt(ctx.store.reader(), &job.id, part, attempt)
                    .await?
                    .context("a submission just inserted vanished")?
            }
        };
        match row.remote_id.as_deref() {
            Some(id) if id == batch.id => {}
            None if !row.state.is_terminal() => {
                let message = format!(
                    "batch {} (part {part}, attempt {attempt}) exists on the service but not in the database (a restored backup or lost writes?): following it",
                    batch.id
                );
                tracing::warn!(job = %job.id, "{message}");
                event(ctx, &job.id, &message).await?;
                observe(ctx, &row, batch).await?;
            }
            _ => {
                cancel_duplicate(
                    ctx,
                    &row,
                    batch,
                    "found on the service for a submission that has another batch or none",
                )
                .await?
            }
        }
    }
    for row in batches::for_job(ctx.store.reader(), &job.id).await? {
        let unrecorded = matches!(
            row.state,
            SubmissionState::Queued | SubmissionState::Uploading
        ) && row.input_file_id.is_none();
        let Some(file) = uploads
            .get(&(job.id.clone(), row.part, row.attempt))
            .filter(|_| unrecorded)
        else {
            continue;
        };
        let whole = u64::try_from(row.part_end - row.part_start).ok();
        if file.bytes.is_some() && file.bytes != whole {
            continue;
        }
        let now = ctx.now();
        let message = format!(
            "file {} (part {}, attempt {}) was uploaded but not recorded: creating its batch from it",
            file.id, row.part, row.attempt
        );
        let mut tx = ctx.store.begin().await?;
        transitions::adopt_upload(&mut tx, row.id, &file.id, &now).await?;
        refresh_job(&mut tx, &job.id, None, &message, &now).await?;
        tx.commit().await?;
        tracing::warn!(job = %job.id, "{message}");
    }
    Ok(())
}
