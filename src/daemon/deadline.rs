//! Deadlines and cancels. A job past its deadline is marked for cancel (reason `deadline`), as
//! is one an operator cancels with `batchwatch cancel` (reason `operator`); the daemon then
//! carries the cancel out: submissions that never became a batch are abandoned, live batches
//! are cancelled and polled through `cancelling` to their end, and their partial results are
//! collected like any others.

use std::collections::HashSet;

use super::progress::{self, refresh_job};
use super::{Ctx, Next, Subject, defer, poll, reconcile};
use crate::api::ApiError;
use crate::model::{JobState, SubmissionState};
use crate::store::{batches, jobs};

/// Marks every job past its deadline for cancel.
pub async fn enforce(ctx: &Ctx) -> anyhow::Result<()> {
    let now = ctx.now();
    for job_id in jobs::past_deadline(ctx.store.reader(), &now).await? {
        let mut tx = ctx.store.begin().await?;
        if jobs::request_cancel(&mut tx, &job_id, "deadline", &now).await? {
            let job = jobs::get(&mut *tx, &job_id).await?;
            let (deadline, state) = job.map_or((String::new(), JobState::Queued), |j| {
                (j.deadline_at, j.state)
            });
            jobs::add_event(
                &mut tx,
                &job_id,
                state,
                &format!("deadline {deadline} passed: cancelling"),
                &now,
            )
            .await?;
            tracing::warn!(job = %job_id, deadline = %deadline, "deadline passed: cancelling");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Moves on the jobs marked for cancel: abandons what never became a batch, and returns the
/// submissions that need a request (a cancel to send, or a create to reconcile first).
pub async fn pending_cancels(ctx: &Ctx, in_flight: &HashSet<Subject>) -> anyhow::Result<Vec<i64>> {
    let now = ctx.now();
    let mut need_request = Vec::new();
    for job_id in jobs::cancel_pending(ctx.store.reader()).await? {
        // What was never sent cannot be told before the service was asked.
        if ctx.unverified.contains(&job_id) {
            continue;
        }
        let rows = batches::for_job(ctx.store.reader(), &job_id).await?;
        let states: Vec<SubmissionState> = rows.iter().map(|r| r.state).collect();
        let mut abandon = Vec::new();
        for row in rows {
            if in_flight.contains(&Subject::Submission(row.id)) || row.state.is_terminal() {
                continue;
            }
            let unsent = match row.state {
                SubmissionState::Queued | SubmissionState::Uploading => true,
                SubmissionState::Creating => row.outcome_unknown_at.is_none(),
                _ => false,
            };
            if unsent {
                abandon.push(row.id);
                continue;
            }
            let waiting = row.not_before.as_deref().is_some_and(|t| t > now.as_str());
            let needs_create_reconciled = row.state == SubmissionState::Creating;
            let needs_cancel = row.state == SubmissionState::Active && row.cancel_sent_at.is_none();
            if (needs_create_reconciled || needs_cancel) && !waiting {
                need_request.push(row.id);
            }
        }
        // Write only when something changes: this runs at every tick while a cancel is pending.
        let job_state = jobs::get(ctx.store.reader(), &job_id)
            .await?
            .map(|j| j.state);
        if abandon.is_empty() && (states.is_empty() || job_state == progress::derive(&states, true))
        {
            continue;
        }
        let mut tx = ctx.store.begin().await?;
        for id in abandon {
            batches::set_state(&mut tx, id, SubmissionState::Abandoned, &now).await?;
        }
        refresh_job(&mut tx, &job_id, None, "cancelling", &now).await?;
        tx.commit().await?;
    }
    Ok(need_request)
}

/// Sends the cancel for one submission (after reconciling a create of unknown outcome).
pub async fn cancel(ctx: Ctx, row_id: i64) -> anyhow::Result<()> {
    let Some(row) = batches::get(ctx.store.reader(), row_id).await? else {
        return Ok(());
    };
    let now = ctx.now();
    if row.state == SubmissionState::Creating {
        // A create may have happened: find out before calling the submission abandoned.
        match reconcile::find_batch(&ctx, &row).await {
            Ok(Some(batch)) => return poll::observe(&ctx, &row, &batch).await,
            Ok(None) => {
                let mut tx = ctx.store.begin().await?;
                batches::set_state(&mut tx, row.id, SubmissionState::Abandoned, &now).await?;
                refresh_job(&mut tx, &row.job_id, None, "cancelling", &now).await?;
                tx.commit().await?;
                return Ok(());
            }
            Err(e) => {
                defer(&ctx, row.id, &e, Next::Step).await?;
                return Err(e.into());
            }
        }
    }
    if row.state != SubmissionState::Active || row.cancel_sent_at.is_some() {
        return Ok(());
    }
    let Some(remote) = row.remote_id.clone() else {
        return Ok(());
    };
    let mut tx = ctx.store.begin().await?;
    batches::set_cancel(&mut tx, row.id, Some(&now), None, &now).await?;
    tx.commit().await?;
    match ctx.client.cancel_batch(&remote).await {
        Ok(batch) => {
            mark_sent(&ctx, row.id).await?;
            tracing::info!(job = %row.job_id, batch = %remote, "cancel sent");
            poll::observe(&ctx, &row, &batch).await
        }
        Err(ApiError::BadRequest { message, .. }) => {
            // Typically: the batch finished meanwhile. Stop asking; the next poll says how it ended.
            tracing::info!(job = %row.job_id, batch = %remote, %message, "the cancel was refused; following the batch to its end");
            mark_sent(&ctx, row.id).await
        }
        Err(ApiError::NotFound { .. }) => {
            mark_sent(&ctx, row.id).await?;
            poll::step(ctx, row.id).await
        }
        Err(e) => {
            defer(&ctx, row.id, &e, Next::Step).await?;
            Err(e.into())
        }
    }
}

async fn mark_sent(ctx: &Ctx, row_id: i64) -> anyhow::Result<()> {
    let now = ctx.now();
    let mut tx = ctx.store.begin().await?;
    batches::set_cancel(&mut tx, row_id, None, Some(&now), &now).await?;
    batches::set_next_poll(&mut tx, row_id, &now, &now).await?;
    tx.commit().await?;
    Ok(())
}
