//! Recording what the API says about a batch, whichever step asked (a poll, a create, a
//! cancel, a reconciliation): one history row per change of status or counts, a terminal
//! status kept terminal, and the submission moved on: to active when its batch is new to it,
//! to collecting when the batch ended, to a new attempt after a back-off when the batch was
//! refused for the enqueued-token limit, or to lost when the batch vanished. A submission
//! already past active (collecting, finished) only gets the observation recorded.

use std::time::Duration;

use anyhow::Context;

use super::ctx::Ctx;
use super::gate;
use super::poll::next_poll_delay;
use super::progress::refresh_job;
use crate::api::Batch;
use crate::clock::{self, Timestamp};
use crate::model::{BatchStatus, SubmissionState};
use crate::store::batches::{self, NewSubmission, Observation, Recorded, Submission};
use crate::store::jobs::{self, Why};
use crate::store::transitions;
use crate::usage;

/// Records `batch` as seen now for the submission `row`, and moves the submission on.
pub async fn observe(ctx: &Ctx, row: &Submission, batch: &Batch) -> anyhow::Result<()> {
    let now_ts = ctx.clock.now();
    let now = clock::format(now_ts);
    let job = jobs::get(ctx.store.reader(), &row.job_id)
        .await?
        .context("the job of a submission vanished")?;
    let mut tx = ctx.store.begin().await?;
    let recorded = batches::record_observation(&mut tx, row.id, &observation(batch), &now).await?;
    let pricing = &ctx.settings.pricing;
    let booked = usage::record(&mut tx, pricing, row.id, job.model.as_deref(), batch, &now).await?;
    if let Recorded::RefusedAfterTerminal { stored, seen } = &recorded {
        tracing::warn!(batch = %batch.id, %stored, %seen, "the API reports a finished batch as unfinished; keeping the final status");
    }
    match batches::state(&mut *tx, row.id).await? {
        SubmissionState::Queued | SubmissionState::Uploading | SubmissionState::Creating => {
            transitions::activate(&mut tx, row.id, &now).await?
        }
        SubmissionState::Active => {}
        // Already past following its batch (seen twice, or by a step that read the row
        // before): the observation is recorded, and nothing moves.
        _ => {
            tx.commit().await?;
            return Ok(());
        }
    }
    let status = match &recorded {
        Recorded::RefusedAfterTerminal { stored, .. } => stored.clone(),
        _ => batch.status.clone(),
    };
    let message = format!("batch {} {}", batch.id, status);
    if status.is_terminal() && is_token_limit(batch) && job.cancel_requested_at.is_none() {
        // Back-pressure, not a failure: this attempt is over, the next one waits.
        transitions::refused(&mut tx, row.id, &now).await?;
        let model = job.model.as_deref().unwrap_or_default();
        let (until, delay) = hold_for_token_limit(ctx, row.attempt, model, now_ts);
        let until_text = clock::format(until);
        batches::insert(
            &mut tx,
            &NewSubmission {
                job_id: &row.job_id,
                part: row.part,
                part_start: row.part_start,
                part_end: row.part_end,
                part_requests: row.part_requests,
                attempt: row.attempt + 1,
                not_before: Some(&until_text),
            },
            &now,
        )
        .await?;
        let why = Why::new(
            "token_limit_exceeded",
            format!(
                "the enqueued-token limit for {model} was reached; submitting again at {until_text}"
            ),
        );
        let message = format!(
            "batch {} refused for the token limit; attempt {} at {until_text}",
            batch.id,
            row.attempt + 1
        );
        refresh_job(&mut tx, &row.job_id, Some(&why), &message, &now).await?;
        tracing::warn!(job = %row.job_id, model, delay = %clock::humanize(delay), "enqueued-token limit reached; submitting again later");
    } else if status.is_terminal() {
        transitions::to_collecting(&mut tx, row.id, &now).await?;
        refresh_job(&mut tx, &row.job_id, None, &message, &now).await?;
    } else {
        let to_deadline = clock::parse(&job.deadline_at).map(|d| clock::between(now_ts, d));
        let age = clock::parse(&row.created_at)
            .map(|c| clock::between(c, now_ts))
            .unwrap_or_default();
        let delay = next_poll_delay(&status, &ctx.settings.poll, age, to_deadline);
        let at = clock::format(clock::add(now_ts, delay));
        transitions::schedule_poll(&mut tx, row.id, &at, &now).await?;
        refresh_job(&mut tx, &row.job_id, None, &message, &now).await?;
    }
    tx.commit().await?;
    if booked.is_some() {
        ctx.metrics.batch_ended(batch);
    }
    if recorded == Recorded::Changed {
        tracing::info!(job = %row.job_id, batch = %batch.id, status = %status, counts = ?batch.request_counts, "batch status");
    }
    Ok(())
}

/// The enqueued-token limit was reached for `model` by attempt `attempt` (its batch failed, or
/// its create was refused): every submission of the model waits a back-off that grows with the
/// attempt. Returns when they may go again, and the delay.
pub fn hold_for_token_limit(
    ctx: &Ctx,
    attempt: i64,
    model: &str,
    now: Timestamp,
) -> (Timestamp, Duration) {
    let b = &ctx.settings.backoff;
    let delay = gate::token_backoff(
        attempt,
        b.token_limit_initial.get(),
        b.token_limit_max.get(),
    );
    let until = clock::add(now, delay);
    if !model.is_empty() {
        ctx.gate.hold_model(model, until);
    }
    ctx.metrics.token_limit_refusal(model);
    (until, delay)
}

/// Whether the batch failed because the enqueued-token limit was reached: back-pressure.
pub fn is_token_limit(batch: &Batch) -> bool {
    batch.status == BatchStatus::Failed
        && batch
            .error_list()
            .iter()
            .any(|e| e.code.as_deref() == Some("token_limit_exceeded"))
}

/// The batch vanished (404): the submission is lost, never running.
pub async fn lost(ctx: &Ctx, row: &Submission, message: &str) -> anyhow::Result<()> {
    let now = ctx.now();
    let text = format!(
        "batch {} no longer exists (404): {message}",
        row.remote_id.as_deref().unwrap_or("?")
    );
    let mut tx = ctx.store.begin().await?;
    transitions::lose(&mut tx, row.id, &text, &now).await?;
    refresh_job(&mut tx, &row.job_id, None, &text, &now).await?;
    tx.commit().await?;
    tracing::warn!(job = %row.job_id, "{text}");
    Ok(())
}

/// The stored view of a batch.
pub fn observation(b: &Batch) -> Observation {
    let ts = |t: &Option<Timestamp>| t.map(clock::format);
    let counts = b.request_counts.as_ref();
    let count =
        |f: fn(&crate::api::RequestCounts) -> u64| counts.and_then(|c| i64::try_from(f(c)).ok());
    Observation {
        remote_id: b.id.clone(),
        input_file_id: Some(b.input_file_id.clone()).filter(|s| !s.is_empty()),
        status: Some(b.status.clone()),
        request_total: count(|c| c.total),
        request_completed: count(|c| c.completed),
        request_failed: count(|c| c.failed),
        created_at: ts(&b.created_at),
        in_progress_at: ts(&b.in_progress_at),
        expires_at: ts(&b.expires_at),
        finalizing_at: ts(&b.finalizing_at),
        completed_at: ts(&b.completed_at),
        failed_at: ts(&b.failed_at),
        expired_at: ts(&b.expired_at),
        cancelling_at: ts(&b.cancelling_at),
        cancelled_at: ts(&b.cancelled_at),
        output_file_id: b.output_file_id.clone(),
        error_file_id: b.error_file_id.clone(),
        errors: b
            .raw
            .get("errors")
            .filter(|e| !e.is_null())
            .map(|e| e.to_string()),
        raw: b.raw.to_string(),
    }
}
