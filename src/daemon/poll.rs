//! Polling active batches, and recording what is seen.
//!
//! Each active submission has its `next_poll_at`. The interval adapts to the status, within
//! `poll.min_interval` and `poll.max_interval`: short while validating, finalizing or
//! cancelling (those end soon), growing with the batch's age while in progress, and never
//! past the job's deadline. A history row is written only when something changed; a terminal
//! status stays terminal; a 404 makes the submission lost.

use std::time::Duration;

use anyhow::Context;

use super::progress::refresh_job;
use super::{Ctx, Next, defer, gate};
use crate::api::{ApiError, Batch};
use crate::clock::{self, Timestamp};
use crate::model::{BatchStatus, SubmissionState};
use crate::store::batches::{self, NewSubmission, Observation, Recorded, Submission};
use crate::store::jobs::{self, Why};

/// Active submissions whose poll is due.
pub async fn due(ctx: &Ctx) -> anyhow::Result<Vec<i64>> {
    let limit = i64::from(ctx.settings.limits.concurrency) * 4;
    Ok(batches::due_for_poll(ctx.store.reader(), &ctx.now(), limit).await?)
}

/// Polls one submission's batch and records what it says.
pub async fn step(ctx: Ctx, row_id: i64) -> anyhow::Result<()> {
    let Some(row) = batches::get(ctx.store.reader(), row_id).await? else {
        return Ok(());
    };
    if row.state != SubmissionState::Active {
        return Ok(());
    }
    let remote = row
        .remote_id
        .clone()
        .context("an active submission has no batch id")?;
    match ctx.client.retrieve_batch(&remote).await {
        Ok(batch) => observe(&ctx, &row, &batch).await,
        Err(ApiError::NotFound { message, .. }) => lost(&ctx, &row, &message).await,
        Err(e) => {
            defer(&ctx, row.id, &e, Next::Poll).await?;
            Err(e.into())
        }
    }
}

/// Records a batch as seen now, for the submission `row`, and moves the submission on: to
/// active (when it was being created), to collecting (terminal), or to a new attempt (refused
/// for the token limit).
pub async fn observe(ctx: &Ctx, row: &Submission, batch: &Batch) -> anyhow::Result<()> {
    let now_ts = ctx.clock.now();
    let now = clock::format(now_ts);
    let job = jobs::get(ctx.store.reader(), &row.job_id)
        .await?
        .context("the job of a submission vanished")?;
    let mut tx = ctx.store.begin().await?;
    let recorded = batches::record_observation(&mut tx, row.id, &observation(batch), &now).await?;
    if let Recorded::RefusedAfterTerminal { stored, seen } = &recorded {
        tracing::warn!(batch = %batch.id, %stored, %seen, "the API reports a finished batch as unfinished; keeping the final status");
    }
    if matches!(
        row.state,
        SubmissionState::Uploading | SubmissionState::Creating | SubmissionState::Queued
    ) {
        // The batch becomes the submission's: its attempt is counted in the same transaction,
        // so a kill in between can neither lose the count nor make a restart count it again.
        jobs::count_attempt(&mut tx, &row.job_id, &now).await?;
        batches::set_state(&mut tx, row.id, SubmissionState::Active, &now).await?;
        batches::set_outcome_unknown(&mut tx, row.id, None, &now).await?;
        batches::set_not_before(&mut tx, row.id, None, &now).await?;
        batches::set_last_error(&mut tx, row.id, None, &now).await?;
    }
    let status = match &recorded {
        Recorded::RefusedAfterTerminal { stored, .. } => stored.clone(),
        _ => batch.status.clone(),
    };
    let message = format!("batch {} {}", batch.id, status);
    if status.is_terminal() {
        if is_token_limit(batch) && job.cancel_requested_at.is_none() {
            requeue(
                ctx,
                &mut tx,
                row,
                job.model.as_deref().unwrap_or_default(),
                now_ts,
            )
            .await?;
        } else {
            batches::set_state(&mut tx, row.id, SubmissionState::Collecting, &now).await?;
            // A back-off left by a deferred cancel must not delay the download.
            batches::set_not_before(&mut tx, row.id, None, &now).await?;
            refresh_job(&mut tx, &row.job_id, None, &message, &now).await?;
        }
    } else {
        let to_deadline = clock::parse(&job.deadline_at).map(|d| clock::between(now_ts, d));
        let age = clock::parse(&row.created_at)
            .map(|c| clock::between(c, now_ts))
            .unwrap_or_default();
        let delay = next_poll_delay(&status, &ctx.settings.poll, age, to_deadline);
        batches::set_next_poll(
            &mut tx,
            row.id,
            &clock::format(clock::add(now_ts, delay)),
            &now,
        )
        .await?;
        refresh_job(&mut tx, &row.job_id, None, &message, &now).await?;
    }
    tx.commit().await?;
    if recorded == Recorded::Changed {
        tracing::info!(job = %row.job_id, batch = %batch.id, status = %status, counts = ?batch.request_counts, "batch status");
    }
    Ok(())
}

/// Whether the batch failed because the enqueued-token limit was reached: back-pressure.
pub fn is_token_limit(batch: &Batch) -> bool {
    batch.status == BatchStatus::Failed
        && batch
            .error_list()
            .iter()
            .any(|e| e.code.as_deref() == Some("token_limit_exceeded"))
}

/// The submission was refused for the token limit: it is finished, and the next attempt of the
/// same part waits a growing delay, as do the model's other submissions.
async fn requeue(
    ctx: &Ctx,
    tx: &mut sqlx::SqliteConnection,
    row: &Submission,
    model: &str,
    now_ts: Timestamp,
) -> anyhow::Result<()> {
    let now = clock::format(now_ts);
    let b = &ctx.settings.backoff;
    let delay = gate::token_backoff(
        row.attempt,
        b.token_limit_initial.get(),
        b.token_limit_max.get(),
    );
    let until = clock::add(now_ts, delay);
    let until_text = clock::format(until);
    batches::set_state(tx, row.id, SubmissionState::Finished, &now).await?;
    batches::insert(
        tx,
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
        row.remote_id.as_deref().unwrap_or("?"),
        row.attempt + 1
    );
    refresh_job(tx, &row.job_id, Some(&why), &message, &now).await?;
    ctx.gate.hold_model(model, until);
    tracing::warn!(job = %row.job_id, model, delay = %clock::humanize(delay), "enqueued-token limit reached; submitting again later");
    Ok(())
}

/// The batch vanished: the submission is lost, never running.
async fn lost(ctx: &Ctx, row: &Submission, message: &str) -> anyhow::Result<()> {
    let now = ctx.now();
    let text = format!(
        "batch {} no longer exists (404): {message}",
        row.remote_id.as_deref().unwrap_or("?")
    );
    let mut tx = ctx.store.begin().await?;
    batches::set_last_error(&mut tx, row.id, Some(&text), &now).await?;
    batches::set_state(&mut tx, row.id, SubmissionState::Lost, &now).await?;
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

/// How long until the next poll of a batch in `status`, running for `age`, with `to_deadline`
/// left before its job's deadline.
pub fn next_poll_delay(
    status: &BatchStatus,
    poll: &crate::config::PollSettings,
    age: Duration,
    to_deadline: Option<Duration>,
) -> Duration {
    let (min, max) = (poll.min_interval.get(), poll.max_interval.get());
    let base = match status {
        BatchStatus::Validating | BatchStatus::Finalizing | BatchStatus::Cancelling => min,
        BatchStatus::InProgress => age / 20,
        _ => min.saturating_mul(4),
    };
    let base = match to_deadline {
        Some(left) if left < base => left,
        _ => base,
    };
    // A little jitter keeps many batches from being polled in lock-step.
    base.mul_f64(0.9 + fastrand::f64() * 0.2).clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, PollSettings};

    fn poll() -> PollSettings {
        PollSettings {
            min_interval: Dur(Duration::from_secs(5)),
            max_interval: Dur(Duration::from_secs(60)),
        }
    }

    #[test]
    fn the_interval_is_short_at_the_edges_of_a_batch_and_grows_while_it_runs() {
        let p = poll();
        let s = |d: Duration| d.as_secs_f64();
        assert!(
            s(next_poll_delay(
                &BatchStatus::Validating,
                &p,
                Duration::ZERO,
                None
            )) <= 5.5
        );
        assert!(
            s(next_poll_delay(
                &BatchStatus::Finalizing,
                &p,
                Duration::from_secs(9999),
                None
            )) <= 5.5
        );
        assert!(
            s(next_poll_delay(
                &BatchStatus::Cancelling,
                &p,
                Duration::from_secs(9999),
                None
            )) <= 5.5
        );
        let young = next_poll_delay(&BatchStatus::InProgress, &p, Duration::from_secs(60), None);
        let old = next_poll_delay(
            &BatchStatus::InProgress,
            &p,
            Duration::from_secs(3600),
            None,
        );
        assert_eq!(young, Duration::from_secs(5), "clamped to the minimum");
        assert_eq!(old, Duration::from_secs(60), "clamped to the maximum");
        let mid = next_poll_delay(&BatchStatus::InProgress, &p, Duration::from_secs(600), None);
        assert!((27.0..=33.0).contains(&s(mid)), "{mid:?}");
    }

    #[test]
    fn the_interval_never_passes_the_deadline() {
        let p = poll();
        let near = next_poll_delay(
            &BatchStatus::InProgress,
            &p,
            Duration::from_secs(3600),
            Some(Duration::from_secs(12)),
        );
        assert!((10.0..=14.0).contains(&near.as_secs_f64()), "{near:?}");
        let past = next_poll_delay(
            &BatchStatus::InProgress,
            &p,
            Duration::from_secs(3600),
            Some(Duration::ZERO),
        );
        assert_eq!(past, Duration::from_secs(5));
    }
}
