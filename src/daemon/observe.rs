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
use super::poll::{jitter, next_poll_delay};
use super::progress::refresh_job;
use crate::api::Batch;
use crate::clock::{self, Timestamp};
use crate::model::{BatchStatus, SubmissionState};
use sqlx::SqliteConnection;

use crate::store::batches::{self, NewSubmission, Observation, Recorded, Submission};
use crate::store::jobs::{self, Why};
use crate::store::transitions;
use crate::usage;

/// Records `batch` as seen now for the submission `row`, and moves the submission on.
pub async fn observe(ctx: &Ctx, row: &Submission, batch: &Batch) -> anyhow::Result<()> {
    let now = ctx.clock.now();
    if row.state == SubmissionState::Active && unchanged(row.status.as_ref(), counts(row), batch) {
        // The quiet case of a poll: nothing history tracks changed, one statement.
        let deadline = jobs::get(ctx.store.reader(), &row.job_id)
            .await?
            .context("the job of a submission vanished")?
            .deadline_at;
        let at = next_poll_at(
            ctx,
            &batch.status,
            &row.created_at,
            &deadline,
            now,
            Spread::Jittered,
        );
        let polls = serde_json::json!([[row.id, clock::format(at)]]).to_string();
        let mut tx = ctx.store.begin().await?;
        transitions::seen_unchanged(&mut tx, &polls, &clock::format(now)).await?;
        tx.commit().await?;
        return Ok(());
    }
    let mut tx = ctx.store.begin().await?;
    let seen = record(ctx, &mut tx, row, batch, now).await?;
    tx.commit().await?;
    seen.report(ctx);
    Ok(())
}

/// The request counts stored for a submission, in the order [`unchanged`] takes them.
pub fn counts(row: &Submission) -> [Option<i64>; 3] {
    [row.request_total, row.request_completed, row.request_failed]
}

/// Whether `batch` says nothing new against what is stored (status and request counts, the
/// two things history tracks) and is still running: then an observation writes no history and
/// needs no more than its next poll set.
pub fn unchanged(stored: Option<&BatchStatus>, counts: [Option<i64>; 3], batch: &Batch) -> bool {
    let seen = observation_counts(batch);
    stored == Some(&batch.status) && !batch.status.is_terminal() && counts == seen
}

fn observation_counts(batch: &Batch) -> [Option<i64>; 3] {
    let c = batch.request_counts.as_ref();
    let count = |f: fn(&crate::api::RequestCounts) -> u64| c.and_then(|c| i64::try_from(f(c)).ok());
    [
        count(|c| c.total),
        count(|c| c.completed),
        count(|c| c.failed),
    ]
}

/// How a submission's next poll is spread: a batch retrieved on its own is `Jittered` (many
/// batches are not polled in lock-step); one seen by a list sweep is not (the sweep sees them
/// all at once anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    Jittered,
    Exact,
}

/// When an active submission whose batch is in `status` is polled next, from `now`.
pub fn next_poll_at(
    ctx: &Ctx,
    status: &BatchStatus,
    created_at: &str,
    deadline_at: &str,
    now: Timestamp,
    spread: Spread,
) -> Timestamp {
    let poll = &ctx.settings.poll;
    let to_deadline = clock::parse(deadline_at).map(|d| clock::between(now, d));
    let age = clock::parse(created_at)
        .map(|c| clock::between(c, now))
        .unwrap_or_default();
    let delay = next_poll_delay(status, poll, age, to_deadline);
    clock::add(
        now,
        match spread {
            Spread::Jittered => jitter(delay, poll),
            Spread::Exact => delay,
        },
    )
}

/// What is left to do once the transaction that recorded an observation has committed: the
/// metrics and the log line.
#[must_use]
pub struct Seen {
    job: String,
    batch: String,
    status: BatchStatus,
    counts: Option<crate::api::RequestCounts>,
    changed: bool,
    /// The batch, when this observation booked its end (usage and cost).
    ended: Option<Batch>,
}

impl Seen {
    pub fn report(self, ctx: &Ctx) {
        if let Some(batch) = &self.ended {
            ctx.metrics.batch_ended(batch);
        }
        if self.changed {
            tracing::info!(job = %self.job, batch = %self.batch, status = %self.status, counts = ?self.counts, "batch status");
        }
    }
}

/// Records `batch`, seen at `now`, for the submission `row` inside `tx`, and moves the
/// submission on. The caller commits, then calls [`Seen::report`].
pub async fn record(
    ctx: &Ctx,
    tx: &mut SqliteConnection,
    row: &Submission,
    batch: &Batch,
    now_ts: Timestamp,
) -> anyhow::Result<Seen> {
    let now = clock::format(now_ts);
    let job = jobs::get(&mut *tx, &row.job_id)
        .await?
        .context("the job of a submission vanished")?;
    let recorded = batches::record_observation(&mut *tx, row.id, &observation(batch), &now).await?;
    let pricing = &ctx.settings.pricing;
    let booked =
        usage::record(&mut *tx, pricing, row.id, job.model.as_deref(), batch, &now).await?;
    if let Recorded::RefusedAfterTerminal { stored, seen } = &recorded {
        tracing::warn!(batch = %batch.id, %stored, %seen, "the API reports a finished batch as unfinished; keeping the final status");
    }
    let status = match &recorded {
        Recorded::RefusedAfterTerminal { stored, .. } => stored.clone(),
        _ => batch.status.clone(),
    };
    let seen = Seen {
        job: row.job_id.clone(),
        batch: batch.id.clone(),
        status: status.clone(),
        counts: batch.request_counts,
        changed: recorded == Recorded::Changed,
        ended: booked.is_some().then(|| batch.clone()),
    };
    let activated = match batches::state(&mut *tx, row.id).await? {
        SubmissionState::Queued | SubmissionState::Uploading | SubmissionState::Creating => {
            transitions::activate(&mut *tx, row.id, &now).await?;
            true
        }
        SubmissionState::Active => false,
        // Already past following its batch (seen twice, or by a step that read the row
        // before): the observation is recorded, and nothing moves.
        _ => return Ok(seen),
    };
    let message = format!("batch {} {}", batch.id, status);
    if status.is_terminal() && is_token_limit(batch) && job.cancel_requested_at.is_none() {
        // Back-pressure, not a failure: this attempt is over, the next one waits.
        transitions::refused(&mut *tx, row.id, &now).await?;
        let model = job.model.as_deref().unwrap_or_default();
        let (until, delay) = hold_for_token_limit(ctx, row.attempt, model, now_ts);
        let until_text = clock::format(until);
        batches::insert(
            &mut *tx,
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
        refresh_job(&mut *tx, &row.job_id, Some(&why), &message, &now).await?;
        tracing::warn!(job = %row.job_id, model, delay = %clock::humanize(delay), "enqueued-token limit reached; submitting again later");
    } else if status.is_terminal() {
        transitions::to_collecting(&mut *tx, row.id, &now).await?;
        refresh_job(&mut *tx, &row.job_id, None, &message, &now).await?;
    } else {
        let at = next_poll_at(
            ctx,
            &status,
            &row.created_at,
            &job.deadline_at,
            now_ts,
            Spread::Jittered,
        );
        let at = clock::format(at);
        transitions::schedule_poll(&mut *tx, row.id, &at, &now).await?;
        // The job follows its submissions' states; only a new active one can move it.
        if activated {
            refresh_job(&mut *tx, &row.job_id, None, &message, &now).await?;
        }
    }
    Ok(seen)
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
    let [request_total, request_completed, request_failed] = observation_counts(b);
    Observation {
        remote_id: b.id.clone(),
        input_file_id: Some(b.input_file_id.clone()).filter(|s| !s.is_empty()),
        status: Some(b.status.clone()),
        request_total,
        request_completed,
        request_failed,
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
