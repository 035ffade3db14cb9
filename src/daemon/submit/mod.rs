//! Submitting a part of a job: upload its bytes, then create the batch; or, on a service that
//! takes the lines in the create itself (Anthropic's Message Batches), create the batch at
//! once (queued → creating), one such create outstanding at a time (see
//! [`reconcile::find_created`]).
//!
//! Each request is armed before it goes out: the transaction that moves the submission to
//! `uploading` or `creating` also sets `outcome_unknown_at`, and only the transaction that records
//! the result clears it. Whatever happens in between (an answer lost, a crash, a database write
//! that fails), the next attempt finds the mark and reconciles
//! ([`crate::daemon::submit::reconcile`]) before it may send the request again. A failure that
//! shows the request was not carried out (no connection, a refusal) clears the mark.

pub mod reconcile;

use std::collections::BTreeMap;

use anyhow::Context;

use crate::api::{ApiError, BatchOptions};
use crate::clock;
use crate::daemon::ctx::{Ctx, Next, defer};
use crate::daemon::file;
use crate::daemon::track::observe::{hold_for_token_limit, observe};
use crate::failpoint;
use crate::model::SubmissionState;
use crate::store::batches::Submission;
use crate::store::jobs::Job;
use crate::store::ops::submit::CreateIntent;
use crate::store::prelude::*;
use reconcile::Created;

/// Why a submission of a cancelled job that never became a batch is given up.
pub const UNSENT: &str = "cancelled before its batch was created";

/// Submissions whose next upload, create or reconcile step is due, except while submissions
/// are held (exhausted quota) or their model is (the enqueued-token limit), and those of jobs
/// not yet checked against the service ([`crate::daemon::shared::Unverified`]).
pub async fn due(ctx: &Ctx, limit: usize) -> anyhow::Result<Vec<i64>> {
    let now = ctx.clock.now();
    if ctx.gate.submissions_held_until(now).is_some() {
        return Ok(Vec::new());
    }
    let held = ctx.gate.held_models(now);
    let unverified = ctx.unverified.ids();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let now = clock::format(now);
    Ok(ctx
        .store
        .due_for_submit(&ctx.lease, &now, &held, &unverified, limit)
        .await?)
}

/// Takes a submission as far as it goes now: upload, then create.
pub async fn step(ctx: Ctx, row_id: i64) -> anyhow::Result<()> {
    let Some(mut row) = ctx.store.submission(row_id).await? else {
        return Ok(());
    };
    let job = ctx
        .store
        .job(&row.job_id)
        .await?
        .context("the job of a submission vanished")?;
    if job.cancel_requested_at.is_some() || is_held(&row) {
        return Ok(());
    }
    // Whether this call armed the request itself: then it cannot have been sent before.
    let mut fresh = false;
    // What arming the create found, when this call armed it.
    let mut armed = None;
    let unarmed = match row.state {
        SubmissionState::Queued => true,
        // Its last create was not carried out (refused, or it never left).
        SubmissionState::Creating => row.outcome_unknown_at.is_none(),
        _ => false,
    };
    if unarmed && ctx.client.is_anthropic() {
        // The lines go in the create itself: no upload, the create is armed at once, and
        // again before each time it is sent, so that one is outstanding at a time.
        let now = ctx.now();
        armed = Some(
            ctx.store
                .start_create_from_lines(&ctx.lease, &row, UNSENT, &now)
                .await?,
        );
    } else {
        if row.state == SubmissionState::Queued {
            let now = ctx.now();
            ctx.store.start_upload(&ctx.lease, &row, &now).await?;
            failpoint::hit("submit:after-upload-intent");
            row.state = SubmissionState::Uploading;
            fresh = true;
        }
        if row.state == SubmissionState::Uploading {
            let Some(upload_id) = upload(&ctx, &row, &job, fresh).await? else {
                return Ok(());
            };
            let now = ctx.now();
            // The deadline may have passed during the upload: then no batch is created at all.
            armed = Some(
                ctx.store
                    .start_create(&ctx.lease, &row, &upload_id, UNSENT, &now)
                    .await?,
            );
        }
    }
    match armed {
        None => {}
        Some(CreateIntent::Cancelled) => return Ok(()),
        Some(CreateIntent::Waiting) => {
            let now = ctx.clock.now();
            let later = clock::format(clock::add(now, CREATE_TURN));
            ctx.store
                .postpone(&ctx.lease, row.id, &later, None, &clock::format(now))
                .await?;
            return Ok(());
        }
        Some(CreateIntent::Armed) => {
            failpoint::hit("submit:after-create-intent");
            row = ctx
                .store
                .submission(row_id)
                .await?
                .context("a submission vanished")?;
            fresh = true;
        }
    }
    if row.state == SubmissionState::Creating {
        create(&ctx, &row, &job, fresh).await?;
    }
    Ok(())
}

/// Uploads the part (or finds the upload an earlier attempt made). Returns the upload's id,
/// or `None` when the step must wait or the submission was given up.
async fn upload(
    ctx: &Ctx,
    row: &Submission,
    job: &Job,
    fresh: bool,
) -> anyhow::Result<Option<String>> {
    if !fresh && row.outcome_unknown_at.is_some() {
        match reconcile::find_upload(ctx, row, job).await {
            Ok(Some(upload)) => {
                tracing::info!(job = %row.job_id, file = %upload, "an interrupted upload had arrived; using it");
                return Ok(Some(upload));
            }
            Ok(None) => {}
            Err(e) => {
                defer(ctx, row.id, &e, Next::Step).await?;
                return Err(e.into());
            }
        }
    }
    let path = ctx.queue.root().join(&job.path);
    if !validated_bytes(ctx, row, job).await? {
        return Ok(None);
    }
    let range = u64::try_from(row.part_start)?..u64::try_from(row.part_end)?;
    let expires_after = ctx
        .settings
        .batch
        .input_expires_after
        .map(|d| d.get().as_secs());
    let part = reconcile::part_of(row, job);
    ctx.may_send()?;
    match ctx
        .client
        .upload_part(&part, &path, range, expires_after)
        .await
    {
        Ok(upload) => {
            failpoint::hit("submit:after-upload");
            tracing::info!(job = %row.job_id, part = row.part, file = %upload, "uploaded");
            Ok(Some(upload))
        }
        Err(e) => {
            handle_failure(ctx, row, e).await?;
            Ok(None)
        }
    }
}

/// How long a create from lines waits for its turn while another one's outcome is unknown.
const CREATE_TURN: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the job's file still holds the bytes validated: a file written to after its claim
/// is validated again while nothing of the job was sent, and never sent as it is (the
/// submission is given up when the job cannot go back to validation).
async fn validated_bytes(ctx: &Ctx, row: &Submission, job: &Job) -> anyhow::Result<bool> {
    let Some((look, change)) = file::file_changed(ctx, job).await? else {
        return Ok(true);
    };
    let sent_back = match &look {
        Some(look) => file::wait_for_file(ctx, &job.id, look, Some(row.id), &change).await?,
        None => false,
    };
    if !sent_back {
        abandon(
            ctx,
            row,
            &format!("the file changed after it was validated ({change})"),
        )
        .await?;
    }
    Ok(false)
}

/// Creates the batch (or finds the one an earlier attempt made).
async fn create(ctx: &Ctx, row: &Submission, job: &Job, fresh: bool) -> anyhow::Result<()> {
    if !fresh && row.outcome_unknown_at.is_some() {
        match reconcile::find_created(ctx, row).await? {
            Ok(Created::Batch(batch)) => {
                tracing::info!(job = %row.job_id, batch = %batch.id, "an interrupted create had made a batch; following it");
                return observe(ctx, row, &batch).await;
            }
            Ok(Created::Nothing) => {
                tracing::info!(job = %row.job_id, "an interrupted create made no batch; creating it now");
                ctx.store
                    .note_resent(&ctx.lease, row.id, &ctx.now())
                    .await?;
            }
            Ok(Created::Ambiguous(ids)) => return hold(ctx, row, job, &ids).await,
            Err(e) => {
                defer(ctx, row.id, &e, Next::Step).await?;
                return Err(e.into());
            }
        }
    }
    let now = ctx.clock.now();
    let held = job
        .model
        .as_deref()
        .and_then(|m| ctx.gate.model_held_until(m, now));
    if let Some(until) = held.or(ctx.gate.submissions_held_until(now)) {
        ctx.store
            .postpone(
                &ctx.lease,
                row.id,
                &clock::format(until),
                None,
                &clock::format(now),
            )
            .await?;
        return Ok(());
    }
    let created = if ctx.client.is_anthropic() {
        // The lines are read now: they must still be the ones validated.
        if !validated_bytes(ctx, row, job).await? {
            return Ok(());
        }
        let path = ctx.queue.root().join(&job.path);
        let range = u64::try_from(row.part_start)?..u64::try_from(row.part_end)?;
        ctx.may_send()?;
        ctx.client.create_batch_from_lines(&path, range).await
    } else {
        let upload = row
            .upload_id
            .as_deref()
            .context("creating a batch without an upload")?;
        let part = reconcile::part_of(row, job);
        ctx.may_send()?;
        ctx.client
            .create_batch_of(&part, upload, batch_options(job)?)
            .await
    };
    match created {
        Ok(batch) => {
            failpoint::hit("submit:after-create");
            tracing::info!(job = %row.job_id, part = row.part, attempt = row.attempt, batch = %batch.id, "batch created");
            observe(ctx, row, &batch).await
        }
        Err(e) => handle_failure(ctx, row, e).await,
    }
}

/// How the last error of a held submission ([`hold`]) begins.
const HELD: &str = "held: ";

/// Whether submission `row` is held ([`hold`]): never sent again; its wait is for an operator
/// or the deadline, and a cancel need not sit it out.
pub fn is_held(row: &Submission) -> bool {
    row.last_error
        .as_deref()
        .is_some_and(|e| e.starts_with(HELD))
}

/// A create that may have been sent (its answer lost, or the database lagging) could have made
/// any of the batches `ids`: none is taken, and the create is never sent again. The
/// submission is held until the job's deadline (which then cancels it) or an operator's
/// cancel; its last error says why, and so `status` does. Nothing of it counts as under way
/// any more, so other files' creates go on.
pub async fn hold(ctx: &Ctx, row: &Submission, job: &Job, ids: &[String]) -> anyhow::Result<()> {
    let why = format!(
        "{HELD}a create may have been sent and {} batches it could have made are listed ({}); \
         none is taken and it is not sent again (give batchwatch a workspace of its own); \
         cancel the job to end it",
        ids.len(),
        ids.join(", ")
    );
    let now = ctx.now();
    ctx.store
        .hold(&ctx.lease, row, &job.deadline_at, &why, &now)
        .await?;
    tracing::error!(job = %row.job_id, candidates = %ids.join(", "), "a lost create is ambiguous: holding the job");
    Ok(())
}

/// What the batch of a part of `job` is made with: the job's endpoint, window, metadata and
/// results' expiry.
fn batch_options(job: &Job) -> anyhow::Result<BatchOptions<'_>> {
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(&job.metadata).context("a job's metadata is not a JSON object")?;
    Ok(BatchOptions {
        endpoint: job
            .endpoint
            .as_deref()
            .context("creating a batch without an endpoint")?,
        completion_window: &job.completion_window,
        metadata,
        results_expire_after: job.output_expires_after.and_then(|s| u64::try_from(s).ok()),
    })
}

/// Gives a submission up: it will not become a batch, and its job fails with `message`.
async fn abandon(ctx: &Ctx, row: &Submission, message: &str) -> anyhow::Result<()> {
    let now = ctx.now();
    let event = format!("given up: {message}");
    ctx.store
        .abandon(&ctx.lease, row, message, &event, &now)
        .await?;
    tracing::error!(job = %row.job_id, reason = message, "a submission was given up");
    Ok(())
}

/// Decides what a failed upload or create means for the submission.
async fn handle_failure(ctx: &Ctx, row: &Submission, err: ApiError) -> anyhow::Result<()> {
    let now_ts = ctx.clock.now();
    let now = clock::format(now_ts);
    if err.is_unknown_outcome() {
        // The mark stays: nothing is sent again before the listing shows what happened. A
        // request we gave up on may still be on its way for as long as we would have waited
        // for it, so the listing waits that long too.
        tracing::warn!(job = %row.job_id, error = %err, "outcome unknown; reconciling before anything is sent again");
        let later = clock::format(clock::add(now_ts, ctx.settings.api.request_timeout.get()));
        let event = format!("{err}; reconciling");
        ctx.store
            .await_reconcile(&ctx.lease, row, &err.to_string(), &later, &event, &now)
            .await?;
        failpoint::hit("submit:after-unknown-outcome");
        return Ok(());
    }
    // Every other failure shows the request was not carried out.
    ctx.store.not_sent(&ctx.lease, row.id, &now).await?;
    if err.is_token_limit() {
        let model = ctx
            .store
            .job(&row.job_id)
            .await?
            .and_then(|j| j.model)
            .unwrap_or_default();
        let (until, delay) = hold_for_token_limit(ctx, row.attempt, &model, now_ts);
        ctx.store
            .postpone(
                &ctx.lease,
                row.id,
                &clock::format(until),
                Some(&err.to_string()),
                &now,
            )
            .await?;
        tracing::warn!(job = %row.job_id, delay = %clock::humanize(delay), "create refused for the enqueued-token limit; trying again later");
        return Ok(());
    }
    if err.is_host_fault() {
        // The host's fault, not the file's: the submission waits for it, like a download.
        tracing::error!(job = %row.job_id, error = %err, "the file cannot be read for its upload; waiting for the host");
        defer(ctx, row.id, &err, Next::Step).await?;
        return Err(err.into());
    }
    match &err {
        ApiError::BadRequest { .. } | ApiError::LocalIo { .. } => {
            abandon(ctx, row, &format!("refused: {err}")).await
        }
        _ => {
            defer(ctx, row.id, &err, Next::Step).await?;
            Err(err.into())
        }
    }
}
