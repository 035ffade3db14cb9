//! Reconciling with the service what the database does not know for sure.
//!
//! The API has no idempotency key, so the only way to know is to look: list the batches
//! (newest first) and pick out the submission's, or list the files and match the name
//! batchwatch gave the upload. Listing stops at objects created well before the request (an
//! hour of slack for clock skew).
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
//!
//! # Which batch is a submission's
//!
//! Every key of the organisation lists the same batches and may put any metadata on a batch
//! of its own, so the metadata batchwatch writes (`batchwatch_job_id`, `batchwatch_part`,
//! `batchwatch_attempt`, read once by [`Claim::of`](crate::api::tags::Claim::of)) is a claim, not a proof. A batch is taken
//! for a submission's (followed, adopted, or cancelled as its duplicate) only when its input
//! file is provably the one batchwatch uploaded for that submission:
//!
//! * when the database records the submission's upload, the batch runs that very file, and its
//!   metadata names no other submission ([`is_for`]; a service that drops metadata is still
//!   matched). [`find_batch`], [`cancel_duplicates`] and [`verify`] all match by it;
//! * when it records none (it lags: the upload intent was lost with a restored backup, or the
//!   job's row was made anew from processing/), the service lists the batch's input file under
//!   the submission's upload name ([`upload_name`]) with the part's size in bytes, and the
//!   batch's `batchwatch_sha256` is the digest of the job's file (`proven`, in [`verify`];
//!   the other places only meet submissions whose upload is recorded).
//!
//! Anything else that claims to be a job's is logged as not the job's and left alone: never
//! followed, never cancelled (at start it also gets a line in the job's events). A batch the
//! database records under its id is the job's already; the start-up listing skips it when its
//! claim names the submission that records it. What cannot be proved is not taken: a batch
//! the database does not record whose input file the service no longer lists (deleted, or
//! expired under a short `batch.input_expires_after`) is left alone, and its submission goes
//! on as the database says.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;

use super::ctx::Ctx;
use super::observe::observe;
use crate::api::tags::{Claim, SHA_KEY, parse_upload_name, upload_name};
use crate::api::{ApiError, Batch, FileObject};
use crate::clock::{self, Timestamp};
use crate::metrics::Reconciled;
use crate::model::{BatchStatus, JobId, JobState, SubmissionState};
use crate::store::batches::{self, NewSubmission, Submission};
use crate::store::jobs::{self, Job};

const SKEW: Duration = Duration::from_secs(3600);

/// The size of a submission's upload: its part of the job's file.
fn part_bytes(row: &Submission) -> Option<u64> {
    u64::try_from(row.part_end - row.part_start).ok()
}

/// Whether the service's `file` is the upload named `name` of a part of `bytes` bytes. A file
/// whose size the service does not say is not.
fn is_upload(file: &FileObject, name: &str, bytes: Option<u64>) -> bool {
    file.filename == name && file.bytes.is_some() && file.bytes == bytes
}

/// Whether `batch` is the batch of `row`, a submission whose upload the database records: a
/// batch of that very file whose metadata names no other submission (a service that drops
/// metadata is still matched). A batch that only claims `row` in its metadata is not.
pub fn is_for(batch: &Batch, row: &Submission) -> bool {
    row.input_file_id.as_deref() == Some(batch.input_file_id.as_str())
        && Claim::of(batch).is_none_or(|c| c.names(&row.job_id, row.part, row.attempt))
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
    let bytes = part_bytes(row);
    let mut listed = std::pin::pin!(ctx.client.list_files(Some("batch")));
    while let Some(file) = listed.next().await {
        let file = file?;
        if is_upload(&file, name, bytes) {
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
    ctx.store
        .note(&ctx.lease, job_id, message, &ctx.now())
        .await?;
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
    let known = |claim: &Claim, id: &str| {
        recorded
            .get(id)
            .is_some_and(|(job, part, attempt)| claim.names(job, *part, *attempt))
    };
    let mut found: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
    let mut older = 0;
    let mut listed = std::pin::pin!(ctx.client.list_batches(100));
    // A refused key or a missing route closes the gate, as for every other request.
    let closing = |e: &ApiError| {
        ctx.gate.note(e, ctx.clock.now(), ctx.schedule.auth_retry);
    };
    while let Some(batch) = listed.next().await {
        let batch = batch.inspect_err(closing)?;
        older = older_in_a_row(older, batch.created_at, since);
        if let Some(claim) = Claim::of(&batch)
            && wanted.contains(claim.job_id)
            && !known(&claim, &batch.id)
        {
            let (job, part, attempt) = (claim.job_id.to_owned(), claim.part, claim.attempt);
            found.entry(job).or_default().push(Claimed {
                part,
                attempt,
                batch,
            });
        }
        if older >= OLDER_BEFORE_STOP {
            break;
        }
    }
    let mut uploads = Uploads::new();
    let mut older = 0;
    let mut listed = std::pin::pin!(ctx.client.list_files(Some("batch")));
    while let Some(file) = listed.next().await {
        let file = file.inspect_err(closing)?;
        older = older_in_a_row(older, file.created_at, since);
        if let Some(key) =
            parse_upload_name(&file.filename).filter(|k| wanted.contains(k.0.as_str()))
        {
            uploads.entry(key).or_default().push(file);
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

/// A listed batch that claims to be an unverified job's part and attempt.
struct Claimed {
    part: i64,
    attempt: i64,
    batch: Batch,
}

/// The service's files listed under batchwatch's upload names for the jobs in question, by the
/// job, part and attempt their names give, newest first.
type Uploads = BTreeMap<(String, i64, i64), Vec<FileObject>>;

/// Whether `batch` is provably the batch of part `of_part.part`, attempt `attempt` of `job`:
/// `row` is that submission when the database has it, `of_part` one of the same part (for its
/// size). See the module docs.
fn proven(
    batch: &Batch,
    job: &Job,
    of_part: &Submission,
    attempt: i64,
    row: Option<&Submission>,
    uploads: &Uploads,
) -> bool {
    if let Some(row) = row.filter(|r| r.input_file_id.is_some()) {
        return is_for(batch, row);
    }
    let name = upload_name(&job.id, of_part.part, attempt, &job.file_name);
    let listed = uploads
        .get(&(job.id.clone(), of_part.part, attempt))
        .is_some_and(|files| {
            files
                .iter()
                .any(|f| f.id == batch.input_file_id && is_upload(f, &name, part_bytes(of_part)))
        });
    listed && job.sha256.is_some() && batch.metadata_value(SHA_KEY) == job.sha256.as_deref()
}

/// Adopts for one job the batches and uploads the service has and the database does not
/// record, those provably the job's; the others claimed for it are logged and left alone.
async fn adopt(
    ctx: &Ctx,
    job: &Job,
    mut found: Vec<Claimed>,
    uploads: &Uploads,
) -> anyhow::Result<()> {
    // Attempt by attempt, so a refused earlier attempt queues the next before it is met.
    found.sort_by_key(|c| (c.part, c.attempt));
    for Claimed {
        part,
        attempt,
        batch,
    } in &found
    {
        let (part, attempt) = (*part, *attempt);
        let rows = batches::for_job(ctx.store.reader(), &job.id).await?;
        let recorded = rows.iter().find(|r| r.part == part && r.attempt == attempt);
        let Some(of_part) = recorded.or_else(|| rows.iter().find(|r| r.part == part)) else {
            let why = format!("the job has no part {part}");
            leave_alone(ctx, job, batch, part, attempt, &why).await?;
            continue;
        };
        if !proven(batch, job, of_part, attempt, recorded, uploads) {
            let why = format!(
                "its input file {} is not one batchwatch uploaded for it",
                batch.input_file_id
            );
            leave_alone(ctx, job, batch, part, attempt, &why).await?;
            continue;
        }
        let row = match recorded {
            Some(row) => row.clone(),
            None => {
                let found = NewSubmission {
                    job_id: &job.id,
                    part,
                    part_start: of_part.part_start,
                    part_end: of_part.part_end,
                    part_requests: of_part.part_requests,
                    attempt,
                    not_before: None,
                };
                ctx.store
                    .add_submission(&ctx.lease, &found, &ctx.now())
                    .await?;
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
        if !unrecorded {
            continue;
        }
        let name = upload_name(&job.id, row.part, row.attempt, &job.file_name);
        let Some(file) = uploads
            .get(&(job.id.clone(), row.part, row.attempt))
            .and_then(|files| files.iter().find(|f| is_upload(f, &name, part_bytes(&row))))
        else {
            continue;
        };
        let now = ctx.now();
        let message = format!(
            "file {} (part {}, attempt {}) was uploaded but not recorded: creating its batch from it",
            file.id, row.part, row.attempt
        );
        ctx.store
            .adopt_upload(&ctx.lease, &row, &file.id, &message, &now)
            .await?;
        tracing::warn!(job = %job.id, "{message}");
    }
    Ok(())
}

/// Leaves alone a batch whose metadata claims part `part`, attempt `attempt` of `job` without
/// proof (`why`), with a line in the log and in the job's events: it is not followed, and not
/// cancelled, for it may well be someone else's.
async fn leave_alone(
    ctx: &Ctx,
    job: &Job,
    batch: &Batch,
    part: i64,
    attempt: i64,
    why: &str,
) -> anyhow::Result<()> {
    let message = format!(
        "batch {} claims to be part {part}, attempt {attempt} of this job in its metadata, but {why}: not the job's, left alone",
        batch.id
    );
    tracing::warn!(job = %job.id, "{message}");
    event(ctx, &job.id, &message).await
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::tags::{ATTEMPT_KEY, JOB_KEY, PART_KEY};
    use crate::store::fixtures::{self, submission};

    const SHA: &str = "5f3c";

    fn batch(input: &str, metadata: Value) -> Batch {
        serde_json::from_value(json!({
            "id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions",
            "input_file_id": input, "completion_window": "24h", "status": "in_progress",
            "created_at": 1, "metadata": metadata,
        }))
        .unwrap()
    }

    /// The metadata batchwatch writes for `job_x`'s part 0, `attempt`.
    fn claiming(attempt: &str) -> Value {
        json!({JOB_KEY: "job_x", PART_KEY: "0", ATTEMPT_KEY: attempt, SHA_KEY: SHA})
    }

    fn file(id: &str, name: &str, bytes: Option<u64>) -> FileObject {
        serde_json::from_value(json!({
            "id": id, "object": "file", "bytes": bytes, "created_at": 1,
            "filename": name, "purpose": "batch",
        }))
        .unwrap()
    }

    #[test]
    fn a_batch_is_a_recorded_submissions_only_when_it_runs_the_recorded_upload() {
        let row = Submission {
            input_file_id: Some("file_ours".into()),
            ..submission(0, 1)
        };
        assert!(is_for(&batch("file_ours", claiming("1")), &row));
        assert!(
            is_for(&batch("file_ours", Value::Null), &row),
            "a service that drops metadata"
        );
        assert!(
            !is_for(&batch("file_evil", claiming("1")), &row),
            "the claim alone"
        );
        assert!(
            !is_for(&batch("file_ours", claiming("2")), &row),
            "a claim of another attempt"
        );
        assert!(
            !is_for(&batch("file_ours", claiming("1")), &submission(0, 1)),
            "no upload recorded"
        );
    }

    #[test]
    fn without_a_recorded_upload_the_input_files_name_size_and_the_jobs_digest_prove_a_batch() {
        let job = Job {
            sha256: Some(SHA.into()),
            ..fixtures::job()
        };
        let of_part = submission(0, 1);
        let name = upload_name("job_x", 0, 2, "f.jsonl");
        let listing = |f: FileObject| Uploads::from([(("job_x".to_owned(), 0, 2), vec![f])]);
        let ours = listing(file("file_ours", &name, Some(1)));
        let proves = |b: &Batch, job: &Job, row: Option<&Submission>, uploads: &Uploads| {
            proven(b, job, &of_part, 2, row, uploads)
        };
        let claimed = batch("file_ours", claiming("2"));
        assert!(proves(&claimed, &job, None, &ours));
        assert!(
            !proves(&batch("file_evil", claiming("2")), &job, None, &ours),
            "a batch of another file"
        );
        let mut digest = claiming("2");
        digest[SHA_KEY] = json!("0000");
        assert!(
            !proves(&batch("file_ours", digest), &job, None, &ours),
            "another digest"
        );
        digest = claiming("2");
        digest.as_object_mut().unwrap().remove(SHA_KEY);
        assert!(
            !proves(&batch("file_ours", digest), &job, None, &ours),
            "no digest"
        );
        assert!(
            !proves(&claimed, &fixtures::job(), None, &ours),
            "the job's digest unknown"
        );
        for (name, bytes) in [
            (name.as_str(), Some(2)),
            (name.as_str(), None),
            (&*upload_name("job_x", 0, 2, "g.jsonl"), Some(1)),
        ] {
            let other = listing(file("file_ours", name, bytes));
            assert!(!proves(&claimed, &job, None, &other), "{name} {bytes:?}");
        }
        let recorded = Submission {
            input_file_id: Some("file_recorded".into()),
            ..submission(0, 2)
        };
        assert!(
            !proves(&claimed, &job, Some(&recorded), &ours),
            "a recorded upload is the only proof"
        );
        assert!(proves(
            &batch("file_recorded", claiming("2")),
            &job,
            Some(&recorded),
            &Uploads::new()
        ));
    }
}
