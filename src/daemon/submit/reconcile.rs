//! Reconciling with the service what the database does not know for sure.
//!
//! The API has no idempotency key, so the only way to know is to look: list the batches
//! (newest first) and pick out the submission's, or list the files and match the name
//! batchwatch gave the upload. Listing stops at objects created well before the request (an
//! hour of slack for clock skew).
//!
//! * An upload or create whose outcome is unknown: only when nothing matches may the request be
//!   sent again ([`find_upload`], [`find_batch`]; where a batch names nothing of its part,
//!   [`find_created`], by size, one such create outstanding at a time).
//! * A database that lags the world (a restored backup, a lost WAL, a copy from another host):
//!   at start every unfinished job is [`Unverified`](crate::daemon::shared::Unverified), as is a file adopted from processing/
//!   without a row. Nothing is uploaded, created or abandoned for such a job until [`verify`]
//!   has listed the service once for all of them and adopted what it found: batches of any
//!   part and attempt (a missing attempt gets its row), and uploads the database did not
//!   record (where batches name nothing of their part, the batches of each unsent part's size:
//!   `match_by_size`). Only then does the job go on as the database says.
//! * A create sent again after reconciliation found nothing may still land late: the re-sent
//!   submissions are watched for a day and their late duplicates cancelled
//!   ([`cancel_duplicates`]).
//!
//! # Which batch is a submission's
//!
//! Every key of the organisation lists the same batches and may tag a batch of its own as it
//! likes, so what a batch claims is not a proof. A batch is taken for a submission's
//! (followed, adopted, or cancelled as its duplicate) only when the provider proves it the
//! part's ([`Batch::is_of`], [`Survey::proves`]; the rules are in the provider's `parts`
//! module): by the upload the database records, or, when it records none (it lags), by the
//! upload the service lists under the part's name and size and the digest of the job's file.
//!
//! Anything else that claims to be a job's is logged as not the job's and left alone: never
//! followed, never cancelled (at start it also gets a line in the job's events). A batch the
//! database records under its id is the job's already; the start-up survey skips it when its
//! claim names the submission that records it. What cannot be proved is not taken: a batch
//! the database does not record whose upload the service no longer lists (deleted, or
//! expired under a short `batch.input_expires_after`) is left alone, and its submission goes
//! on as the database says.

use std::collections::{BTreeSet, HashMap};

use anyhow::Context;
use futures_util::StreamExt;

use crate::api::{ApiError, Attempt, Batch, Claimed, Part, Survey, Surveying};
use crate::clock::{self, Timestamp};
use crate::daemon::ctx::Ctx;
use crate::daemon::track::observe::observe;
use crate::daemon::track::sweep::Feeder;
use crate::metrics::Reconciled;
use crate::model::{BatchStatus, JobId, JobState, SubmissionState};
use crate::store::batches::{NewSubmission, Submission};
use crate::store::jobs::Job;
use crate::store::prelude::*;

/// The attempt submission `row` is, as the provider is asked about it.
pub fn attempt_of(row: &Submission) -> Attempt<'_> {
    Attempt {
        job_id: &row.job_id,
        part: row.part,
        attempt: row.attempt,
        upload_id: row.upload_id.as_deref(),
    }
}

/// Submission `row` of `job`, as the provider is asked about it.
pub fn part_of<'a>(row: &'a Submission, job: &'a Job) -> Part<'a> {
    Part {
        id: attempt_of(row),
        file_name: &job.file_name,
        bytes: u64::try_from(row.part_end - row.part_start).ok(),
        sha256: job.sha256.as_deref(),
    }
}

/// When `row`'s request was armed (kept across restarts): what it made cannot be older.
fn sent_at(row: &Submission) -> Option<Timestamp> {
    clock::parse(row.outcome_unknown_at.as_deref().unwrap_or(&row.created_at))
}

/// The batch a create for `row` made, if it made one.
pub async fn find_batch(ctx: &Ctx, row: &Submission) -> Result<Option<Batch>, ApiError> {
    let found = ctx.client.find_batch(&attempt_of(row), sent_at(row)).await;
    ctx.metrics.reconciliation(Reconciled::Create, &found);
    found
}

/// What a listing found for a create of unknown outcome ([`find_created`]).
#[derive(Debug)]
pub enum Created {
    /// No batch it could have made: the create may be sent again.
    Nothing,
    /// The batch it made.
    Batch(Box<Batch>),
    /// Several batches it could have made, by these ids: which one is unknowable, so none is
    /// taken and the create is never sent again.
    Ambiguous(Vec<String>),
}

/// The batch a create for `row` made, if it made one. Where batches are made from an upload,
/// the upload proves it ([`find_batch`]). Where a batch is made from the lines themselves and
/// names nothing of its part (Anthropic's Message Batches: no metadata, no upload), this is
/// the narrowest rule that is still safe:
///
/// * only one such create is ever outstanding (armed and unanswered, or lost and not yet
///   reconciled): the store arms the next only when none is
///   (`Submit::start_create_from_lines`), so no other create of ours can land unrecorded
///   beside it;
/// * the batches listed as created since the create was armed (less the hour of clock slack)
///   that hold as many requests as the part and that the database records under no
///   submission are what it can have made: none, and the create is sent again; exactly one,
///   and it is taken as the part's; several (another tool's batches share the workspace),
///   and none is taken: [`Created::Ambiguous`].
///
/// What slips through (another tool's batch of the same size, made in the same minutes, while
/// ours was truly lost) is a batch followed that is not ours; operators give batchwatch an
/// Anthropic workspace of its own, where that cannot happen. The outer `Result` is the
/// database's; the inner one the service's.
pub async fn find_created(
    ctx: &Ctx,
    row: &Submission,
) -> anyhow::Result<Result<Created, ApiError>> {
    if !ctx.client.is_anthropic() {
        return Ok(find_batch(ctx, row)
            .await
            .map(|b| b.map_or(Created::Nothing, |b| Created::Batch(Box::new(b)))));
    }
    let requests = u64::try_from(row.part_requests)?;
    let listed = ctx
        .client
        .batches_of_size_since(requests, sent_at(row))
        .await;
    let listed = match listed {
        Ok(listed) => listed,
        Err(e) => {
            ctx.metrics
                .reconciliation(Reconciled::Create, &Err::<Option<()>, _>(&e));
            return Ok(Err(e));
        }
    };
    let mut unknown = Vec::new();
    for batch in listed {
        if ctx
            .store
            .submission_by_remote_id(&batch.id)
            .await?
            .is_none()
        {
            unknown.push(batch);
        }
    }
    let found = match unknown.len() {
        0 => Created::Nothing,
        1 => Created::Batch(Box::new(unknown.remove(0))),
        _ => Created::Ambiguous(unknown.into_iter().map(|b| b.id).collect()),
    };
    let outcome = match &found {
        Created::Nothing => None,
        _ => Some(()),
    };
    ctx.metrics
        .reconciliation(Reconciled::Create, &Ok::<_, ()>(outcome));
    Ok(Ok(found))
}

/// The upload an upload for `row` (of `job`) made, if it made one whole.
pub async fn find_upload(
    ctx: &Ctx,
    row: &Submission,
    job: &Job,
) -> Result<Option<String>, ApiError> {
    let found = ctx
        .client
        .find_upload(&part_of(row, job), sent_at(row))
        .await;
    ctx.metrics.reconciliation(Reconciled::Upload, &found);
    found
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
    let watched = ctx
        .store
        .watched_for_duplicates(&clock::format(since))
        .await?;
    let Some(oldest) = watched
        .iter()
        .filter_map(|r| clock::parse(&r.created_at))
        .min()
    else {
        return Ok(());
    };
    let attempts: Vec<(&Submission, Attempt)> =
        watched.iter().map(|r| (r, attempt_of(r))).collect();
    let mut listed = std::pin::pin!(ctx.client.batches_since(oldest));
    while let Some(batch) = listed.next().await {
        let batch = batch?;
        let duplicate_of = attempts.iter().find(|(r, attempt)| {
            batch.is_of(attempt) && r.remote_id.as_deref() != Some(batch.id.as_str())
        });
        let live = !batch.status.is_terminal() && batch.status != BatchStatus::Cancelling;
        if let Some((row, _)) = duplicate_of
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
        ctx.may_send()?;
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
        .note(&ctx.leader_lease(), job_id, message, &ctx.now())
        .await?;
    Ok(())
}

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

/// Lists the service once for the batches and uploads of the unverified jobs and adopts what
/// the database does not record. A job still being validated waits for the next pass: its
/// submissions do not exist yet. The database is read once for all the jobs and once for all
/// their submissions, whatever their number (a start with 10,000 unfinished jobs checks them
/// all). Each page of the batch list it reads is handed to `feed`'s sweep as well, while that
/// wants pages: a start reads the list once for the check and its first sweep (see
/// [`crate::daemon::track::sweep`]).
pub async fn verify(ctx: Ctx, feed: Option<Feeder>) -> anyhow::Result<()> {
    let ids = ctx.unverified.ids();
    let mut pending = Vec::new();
    let mut found = BTreeSet::new();
    for job in ctx.store.jobs_among(&ids).await? {
        found.insert(job.id.clone());
        match job.state {
            JobState::Validating => {}
            state if state.is_terminal() => ctx.unverified.remove(&job.id),
            _ => pending.push(job),
        }
    }
    for id in ids.iter().filter(|id| !found.contains(*id)) {
        ctx.unverified.remove(id);
    }
    if pending.is_empty() {
        return Ok(());
    }
    let since = pending.iter().filter_map(claimed_at).min();
    let wanted: BTreeSet<&str> = pending.iter().map(|j| j.id.as_str()).collect();

    // A batch the database records for the submission its tags name is known (`adopt` would
    // find it recorded and leave it): only the others are kept (with 10,000 jobs to check,
    // keeping all held some 100 MB).
    let recorded: HashMap<String, (String, i64, i64)> = ctx
        .store
        .recorded_submissions()
        .await?
        .into_iter()
        .map(|(remote, job, part, attempt)| (remote, (job, part, attempt)))
        .collect();
    let known = |batch: &Batch, claim: &crate::api::Claim| {
        recorded
            .get(&batch.id)
            .is_some_and(|(job, part, attempt)| claim.names(job, *part, *attempt))
    };
    let mut surveying = Surveying::new(&wanted, since, known);
    // Where nothing on a batch names its part, every batch the database does not record is
    // kept, to be matched by size (`match_by_size`).
    let mut unrecorded = ctx.client.is_anthropic().then(Vec::new);
    let walked = walk(&ctx, &mut surveying, unrecorded.as_mut(), &recorded, feed).await;
    // A refused key or a missing route closes the gate, as for every other request.
    let mut survey = match walked {
        Ok(()) => surveying.uploads(&ctx.client).await,
        Err(e) => Err(e),
    }
    .inspect_err(|e| {
        ctx.gate.note(e, ctx.clock.now(), ctx.schedule.auth_retry);
    })?;

    // Read after the survey, as one job's were when they were read one at a time: while a job
    // is unverified, nothing else moves the rows `adopt` acts on (no submit, no cancel).
    let pending_ids: Vec<String> = pending.iter().map(|j| j.id.clone()).collect();
    let mut rows_of: HashMap<String, Vec<Submission>> = HashMap::new();
    for row in ctx.store.submissions_of_jobs(&pending_ids).await? {
        rows_of.entry(row.job_id.clone()).or_default().push(row);
    }
    match unrecorded {
        // Nothing on a batch names its part: the survey holds no claims and no uploads, and
        // the batches are matched to the parts by size, all at once.
        Some(unrecorded) => {
            adopt_by_size(&ctx, &pending, &rows_of, unrecorded).await?;
            for job in &pending {
                ctx.unverified.remove(&job.id);
            }
        }
        None => {
            for job in &pending {
                let claimed = survey.take_claimed(&job.id);
                let rows = rows_of.remove(&job.id).unwrap_or_default();
                adopt(&ctx, job, rows, claimed, &survey).await?;
                ctx.unverified.remove(&job.id);
                tracing::debug!(job = %job.id, "checked against the service");
            }
        }
    }
    tracing::info!(jobs = pending.len(), "checked against the service");
    Ok(())
}

/// Reads the batch list, newest first, until `surveying` has enough, handing each page to
/// `feed`'s sweep too while it takes them, and keeping in `unrecorded`, when given, the
/// batches the database does not record (`recorded`). The sweep never holds the walk back for
/// long: it takes each page as it comes or has dropped its end.
async fn walk<K: Fn(&Batch, &crate::api::Claim<'_>) -> bool>(
    ctx: &Ctx,
    surveying: &mut Surveying<'_, K>,
    mut unrecorded: Option<&mut Vec<Batch>>,
    recorded: &HashMap<String, (String, i64, i64)>,
    mut feed: Option<Feeder>,
) -> Result<(), ApiError> {
    let mut pages = std::pin::pin!(ctx.client.list_batch_pages());
    while !surveying.enough() {
        let Some(page) = pages.next().await.transpose()? else {
            break;
        };
        let arrived = ctx.clock.now();
        for batch in &page.data {
            surveying.take(batch);
            if let Some(kept) = unrecorded.as_deref_mut()
                && !recorded.contains_key(&batch.id)
            {
                kept.push(batch.clone());
            }
        }
        if let Some(sweep) = &feed
            && !sweep.give(page, arrived).await
        {
            feed = None;
        }
    }
    Ok(())
}

/// Adopts for one job (its submissions `rows`) the batches and uploads the service has and the
/// database does not record, those provably the job's; the others claimed for it are logged
/// and left alone.
async fn adopt(
    ctx: &Ctx,
    job: &Job,
    mut rows: Vec<Submission>,
    mut found: Vec<Claimed>,
    survey: &Survey,
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
        let recorded = rows.iter().find(|r| r.part == part && r.attempt == attempt);
        let Some(of_part) = recorded.or_else(|| rows.iter().find(|r| r.part == part)) else {
            let why = format!("the job has no part {part}");
            leave_alone(ctx, job, batch, part, attempt, &why).await?;
            continue;
        };
        let mut claimed_part = part_of(of_part, job);
        claimed_part.id.attempt = attempt;
        claimed_part.id.upload_id = recorded.and_then(|r| r.upload_id.as_deref());
        if !survey.proves(batch, &claimed_part) {
            let why = format!(
                "the upload it runs ({}) is not one batchwatch made for it",
                batch.upload_id.as_deref().unwrap_or("none named")
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
                ctx.store
                    .submission_by_attempt(&job.id, part, attempt)
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
        // As this batch left them (a row added, one following it now), for the next.
        rows = ctx.store.submissions_of(&job.id).await?;
    }
    for row in rows {
        let unrecorded = matches!(
            row.state,
            SubmissionState::Queued | SubmissionState::Uploading
        ) && row.upload_id.is_none();
        if !unrecorded {
            continue;
        }
        let Some(upload) = survey.upload_of(&part_of(&row, job)) else {
            continue;
        };
        let now = ctx.now();
        let message = format!(
            "upload {upload} (part {}, attempt {}) was made but not recorded: creating its batch from it",
            row.part, row.attempt
        );
        ctx.store
            .adopt_upload(&ctx.lease, &row, upload, &message, &now)
            .await?;
        tracing::warn!(job = %job.id, "{message}");
    }
    Ok(())
}

/// Which unrecorded batch is which unsent submission's, where nothing on a batch names its
/// part (Anthropic's Message Batches: no metadata, no upload) and the database lags (a
/// restored backup): a batch can be a submission's when it holds as many requests as the part
/// and was created after the job was claimed (less [`CLOCK_SLACK`](crate::api::CLOCK_SLACK)).
/// A submission is given a batch only when that batch is its one candidate and it is that
/// batch's one candidate; one with candidates but no such pair is ambiguous, and held (never
/// sent: it may have made any of them). `candidates[i]` are the batches (by index) submission
/// `i` can be; returns, for each submission, its batch, or whether it is ambiguous.
fn match_by_size(candidates: &[Vec<usize>]) -> Vec<Matched> {
    let mut claimants: HashMap<usize, usize> = HashMap::new();
    for batches in candidates {
        for b in batches {
            *claimants.entry(*b).or_default() += 1;
        }
    }
    candidates
        .iter()
        .map(|batches| match batches.as_slice() {
            [] => Matched::None,
            [b] if claimants[b] == 1 => Matched::Batch(*b),
            _ => Matched::Ambiguous,
        })
        .collect()
}

/// What [`match_by_size`] found for one submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matched {
    /// No batch can be its: nothing was created for it.
    None,
    /// The batch (an index) that is its.
    Batch(usize),
    /// Batches that can be its, and no way to tell which.
    Ambiguous,
}

/// At a start that cannot trust the database, on a service whose batches name nothing of their
/// part: the unsent submissions of `jobs` (queued, or creating with no batch recorded) take up
/// the `unrecorded` batches [`match_by_size`] gives them, and are held when it cannot tell;
/// unless a create is armed (then the database kept its intents, and that create's reconcile
/// is the one to look).
async fn adopt_by_size(
    ctx: &Ctx,
    jobs: &[Job],
    rows_of: &HashMap<String, Vec<Submission>>,
    unrecorded: Vec<Batch>,
) -> anyhow::Result<()> {
    let slack = jiff::SignedDuration::try_from(crate::api::CLOCK_SLACK)?;
    let mut unsent: Vec<(&Job, &Submission)> = Vec::new();
    for job in jobs {
        for row in rows_of.get(&job.id).into_iter().flatten() {
            let waiting = matches!(
                row.state,
                SubmissionState::Queued | SubmissionState::Creating
            );
            if waiting && row.remote_id.is_none() {
                unsent.push((job, row));
            }
        }
    }
    // A create armed and unanswered means the database did not lose its intents: it is the
    // one create that can have been outstanding (one at a time), its own reconcile
    // (`find_created`) finds its batch, and every other unsent part was never sent. Only a
    // database that lost intents (a restored backup) leaves parts unsent with batches made.
    let armed = unsent
        .iter()
        .any(|(_, r)| r.state == SubmissionState::Creating && r.outcome_unknown_at.is_some());
    if armed {
        return Ok(());
    }
    let candidates: Vec<Vec<usize>> = unsent
        .iter()
        .map(|(job, row)| {
            let after = claimed_at(job).and_then(|c| c.checked_sub(slack).ok());
            unrecorded
                .iter()
                .enumerate()
                .filter(|(_, b)| {
                    let total = b.request_counts.map(|c| c.total);
                    let sized =
                        total.and_then(|t| i64::try_from(t).ok()) == Some(row.part_requests);
                    let recent = match (after, b.created_at) {
                        (Some(after), Some(created)) => created >= after,
                        _ => true,
                    };
                    sized && recent
                })
                .map(|(i, _)| i)
                .collect()
        })
        .collect();
    for ((job, row), (matched, candidates)) in unsent
        .iter()
        .zip(match_by_size(&candidates).into_iter().zip(&candidates))
    {
        match matched {
            Matched::None => {}
            Matched::Batch(b) => {
                let batch = &unrecorded[b];
                let message = format!(
                    "batch {} (part {}) exists on the service but not in the database (a restored backup or lost writes?), and is the only one of its size since the claim: following it",
                    batch.id, row.part
                );
                tracing::warn!(job = %job.id, "{message}");
                event(ctx, &job.id, &message).await?;
                observe(ctx, row, batch).await?;
            }
            Matched::Ambiguous => {
                let ids: Vec<String> = candidates
                    .iter()
                    .map(|&b| unrecorded[b].id.clone())
                    .collect();
                crate::daemon::submit::hold(ctx, row, job, &ids).await?;
            }
        }
    }
    Ok(())
}

/// Leaves alone a batch that claims part `part`, attempt `attempt` of `job` without
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
        "batch {} claims to be part {part}, attempt {attempt} of this job, but {why}: not the job's, left alone",
        batch.id
    );
    tracing::warn!(job = %job.id, "{message}");
    event(ctx, &job.id, &message).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_takes_a_batch_only_when_each_is_the_others_one_candidate() {
        let matched = match_by_size(&[
            vec![0],    // batch 0 fits only it, and it only batch 0
            vec![1, 2], // two fit
            vec![3],    // batch 3 fits it and the next
            vec![3],
            vec![], // none fits: nothing was sent for it
        ]);
        assert_eq!(
            matched,
            [
                Matched::Batch(0),
                Matched::Ambiguous,
                Matched::Ambiguous,
                Matched::Ambiguous,
                Matched::None,
            ]
        );
    }
}
