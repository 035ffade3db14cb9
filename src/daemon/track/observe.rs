//! Recording what the API says about a batch, whichever step asked (a poll, a create, a
//! cancel, a reconciliation): one history row per change of status or counts, a terminal
//! status kept terminal, and the submission moved on: to active when its batch is new to it,
//! to collecting when the batch ended, to a new attempt after a back-off when the batch was
//! refused for the enqueued-token limit, or to lost when the batch vanished. A submission
//! already past active (collecting, finished) only gets the observation recorded.

use std::time::Duration;

use anyhow::Context;

use crate::api::Batch;
use crate::clock::{self, Timestamp};
use crate::daemon::ctx::Ctx;
use crate::daemon::gate;
use crate::daemon::track::poll::{jitter, next_poll_delay};
use crate::model::{BatchStatus, SubmissionState};
use crate::store::batches::{Observation, Recorded, Submission};
use crate::store::jobs::{Job, Why};
use crate::store::ops::track::{Next, Observed, Plan, Sighting};
use crate::store::prelude::*;
use crate::usage;

/// Records `batch` as seen now for the submission `row`, and moves the submission on.
pub async fn observe(ctx: &Ctx, row: &Submission, batch: &Batch) -> anyhow::Result<()> {
    let now = ctx.clock.now();
    if row.state == SubmissionState::Active && unchanged(row.status.as_ref(), counts(row), batch) {
        // The quiet case of a poll: nothing history tracks changed, nothing is written (but a
        // failed poll's error, which no longer stands); the next poll is planned in memory.
        ctx.metrics.answered(now);
        if let Some(polls) = ctx.leader_polls() {
            let deadline = ctx
                .store
                .job(&row.job_id)
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
            polls.seen(row.id, row.next_poll_at.as_deref(), at);
        }
        if row.last_error.is_some() {
            ctx.store
                .seen_unchanged(&ctx.leader_lease(), &[row.id], &clock::format(now))
                .await?;
        }
        return Ok(());
    }
    let observation = observation(batch);
    let observed = ctx
        .store
        .observe(
            &ctx.leader_lease(),
            &sighting(row.id, batch, &observation),
            |job, row, status| plan(ctx, batch, job, row, status, now),
            &clock::format(now),
        )
        .await?;
    seen(ctx, batch, observed, now).report(ctx);
    Ok(())
}

/// `batch`, reported for submission `id`, as the store records it.
pub fn sighting<'a>(id: i64, batch: &'a Batch, observation: &'a Observation) -> Sighting<'a> {
    Sighting {
        id,
        status: &batch.status,
        observation,
        tokens: usage::tokens_of(batch),
    }
}

/// What `batch`, seen at `now`, means for submission `row` of `job`, given the status that
/// stands: the price its cost is booked at, and where the submission goes next.
pub fn plan(
    ctx: &Ctx,
    batch: &Batch,
    job: &Job,
    row: &Submission,
    status: &BatchStatus,
    now: Timestamp,
) -> Plan {
    let price = job
        .model
        .as_deref()
        .and_then(|m| ctx.settings.pricing.get(m))
        .copied();
    let message = format!("batch {} {}", batch.id, status);
    let next = if status.is_terminal() && is_token_limit(batch) && job.cancel_requested_at.is_none()
    {
        // Back-pressure, not a failure: this attempt is over, the next one waits.
        let model = job.model.as_deref().unwrap_or_default();
        let until = clock::format(clock::add(now, token_limit_delay(ctx, row.attempt)));
        Next::Retry {
            why: Why::new(
                "token_limit_exceeded",
                format!(
                    "the enqueued-token limit for {model} was reached; submitting again at {until}"
                ),
            ),
            message: format!(
                "batch {} refused for the token limit; attempt {} at {until}",
                batch.id,
                row.attempt + 1
            ),
            until,
        }
    } else if status.is_terminal() {
        Next::Collect { message }
    } else {
        let at = next_poll_at(
            ctx,
            status,
            &row.created_at,
            &job.deadline_at,
            now,
            Spread::Jittered,
        );
        Next::Poll {
            at: clock::format(at),
            message,
        }
    };
    Plan { price, next }
}

/// What is left to do once `batch`'s observation is committed: a refusal for the token limit
/// holds the model's submissions; the metrics and the log line follow ([`Seen::report`]).
pub fn seen(ctx: &Ctx, batch: &Batch, observed: Observed, now: Timestamp) -> Seen {
    ctx.metrics.answered(now);
    if let Some(polls) = ctx.leader_polls() {
        match &observed.moved {
            Some(Next::Poll { at, .. }) => polls.stored(observed.id, at),
            _ => polls.remove(observed.id),
        }
    }
    if let Recorded::RefusedAfterTerminal { stored, seen } = &observed.recorded {
        tracing::warn!(batch = %batch.id, %stored, %seen, "the API reports a finished batch as unfinished; keeping the final status");
    }
    if let Some(Next::Retry { until, .. }) = &observed.moved {
        let model = observed.job.model.as_deref().unwrap_or_default();
        let until = clock::parse(until).unwrap_or(now);
        hold_model(ctx, model, until);
        tracing::warn!(job = %observed.job.id, model, delay = %clock::humanize(clock::between(now, until)), "enqueued-token limit reached; submitting again later");
    }
    Seen {
        job: observed.job.id,
        batch: batch.id.clone(),
        status: observed.status,
        counts: batch.request_counts,
        changed: observed.recorded == Recorded::Changed,
        ended: observed.booked.then(|| batch.clone()),
    }
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
            let counts = self.counts;
            tracing::info!(
                job = %self.job,
                batch = %self.batch,
                status = %self.status,
                completed = counts.map(|c| c.completed),
                failed = counts.map(|c| c.failed),
                total = counts.map(|c| c.total),
                "batch status"
            );
        }
    }
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
    let delay = token_limit_delay(ctx, attempt);
    let until = clock::add(now, delay);
    hold_model(ctx, model, until);
    (until, delay)
}

/// How long the submissions of a model wait after attempt `attempt` hit the token limit.
fn token_limit_delay(ctx: &Ctx, attempt: i64) -> Duration {
    let b = &ctx.settings.backoff;
    gate::token_backoff(
        attempt,
        b.token_limit_initial.get(),
        b.token_limit_max.get(),
    )
}

/// Holds the submissions of `model` until `until`, and counts the refusal.
fn hold_model(ctx: &Ctx, model: &str, until: Timestamp) {
    if !model.is_empty() {
        ctx.gate.hold_model(model, until);
    }
    ctx.metrics.token_limit_refusal(model);
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
    ctx.store
        .lose(&ctx.leader_lease(), row, &text, &now)
        .await?;
    ctx.polls.remove(row.id);
    tracing::warn!(job = %row.job_id, "{text}");
    Ok(())
}

/// The stored view of a batch.
pub fn observation(b: &Batch) -> Observation {
    let ts = |t: &Option<Timestamp>| t.map(clock::format);
    let [request_total, request_completed, request_failed] = observation_counts(b);
    Observation {
        remote_id: b.id.clone(),
        upload_id: b.upload_id.clone(),
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
        output_id: b.output_id.clone(),
        error_output_id: b.error_output_id.clone(),
        errors: b
            .raw
            .get("errors")
            .filter(|e| !e.is_null())
            .map(|e| e.to_string()),
        raw: b.raw.to_string(),
    }
}
