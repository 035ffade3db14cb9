//! Deadlines and cancels, wherever they come from: a job past its deadline is marked for
//! cancel by the daemon (reason `deadline`), and one an operator cancels with `batchwatch
//! cancel` by that command (reason `operator`), both through [`request`]. The daemon then
//! carries the cancel out: submissions that never became a batch are abandoned ([`pending`]),
//! live batches are cancelled ([`send`]) and polled through `cancelling` to their end, and
//! their partial results are collected like any others.

use std::collections::HashSet;

use crate::api::ApiError;
use crate::daemon::ctx::{Ctx, Next, defer};
use crate::daemon::shared::Subject;
use crate::daemon::submit::{self, UNSENT, reconcile};
use crate::daemon::track::observe::observe;
use crate::daemon::track::poll;
use crate::model::SubmissionState;
use crate::store::Store;
use crate::store::jobs::Job;
use crate::store::prelude::*;
use crate::store::progress;

/// Why a job is cancelled; stored in `jobs.cancel_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its deadline passed.
    Deadline,
    /// `batchwatch cancel`.
    Operator,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Deadline => "deadline",
            Reason::Operator => "operator",
        }
    }
}

/// What asking for a cancel did.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    /// False when the job is finished or a cancel was already asked for (the first reason
    /// stands).
    pub asked: bool,
    /// The job as it is now.
    pub job: Job,
}

/// Marks a job for cancel and records why in its events; the daemon carries it out.
pub async fn request(
    store: &Store,
    job_id: &str,
    reason: Reason,
    now: &str,
) -> anyhow::Result<Requested> {
    let message = |job: &Job| match reason {
        Reason::Deadline => format!("deadline {} passed: cancelling", job.deadline_at),
        Reason::Operator => "cancel asked for by an operator".to_owned(),
    };
    let (asked, job) = store
        .request_cancel(job_id, reason.as_str(), message, now)
        .await?;
    let job = job.ok_or_else(|| anyhow::anyhow!("no job {job_id}"))?;
    Ok(Requested { asked, job })
}

/// Marks every job this instance holds past its deadline for cancel (on a shared store, a job
/// nobody holds is marked by the instance that takes it over, within a third of a lease).
pub async fn enforce_deadlines(ctx: &Ctx) -> anyhow::Result<()> {
    let now = ctx.now();
    for job_id in ctx.store.past_deadline(&ctx.lease, &now).await? {
        let done = request(&ctx.store, &job_id, Reason::Deadline, &now).await?;
        if done.asked {
            tracing::warn!(job = %job_id, deadline = %done.job.deadline_at, "deadline passed: cancelling");
        }
    }
    Ok(())
}

/// Moves on the jobs marked for cancel: abandons what never became a batch, and returns the
/// submissions that need a request (a cancel to send, or a create to reconcile first).
pub async fn pending(ctx: &Ctx, in_flight: &HashSet<Subject>) -> anyhow::Result<Vec<i64>> {
    let now = ctx.now();
    let mut need_request = Vec::new();
    for job_id in ctx.store.cancel_pending(&ctx.lease).await? {
        // What was never sent cannot be told before the service was asked.
        if ctx.unverified.contains(&job_id) {
            continue;
        }
        let rows = ctx.store.submissions_of(&job_id).await?;
        let states: Vec<SubmissionState> = rows.iter().map(|r| r.state).collect();
        let mut abandon = Vec::new();
        for row in rows {
            if in_flight.contains(&Subject::Submission(row.id)) || row.state.is_terminal() {
                continue;
            }
            // A held create may have made one of the batches it names: the cancel's reconcile
            // looks, and says so when it gives the submission up.
            let held = submit::is_held(&row);
            let unsent = !held
                && match row.state {
                    SubmissionState::Queued | SubmissionState::Uploading => true,
                    SubmissionState::Creating => row.outcome_unknown_at.is_none(),
                    _ => false,
                };
            if unsent {
                abandon.push(row.id);
                continue;
            }
            let waiting = row.not_before.as_deref().is_some_and(|t| t > now.as_str()) && !held;
            let needs_create_reconciled = row.state == SubmissionState::Creating || held;
            let needs_cancel = row.state == SubmissionState::Active && row.cancel_sent_at.is_none();
            if (needs_create_reconciled || needs_cancel) && !waiting {
                need_request.push(row.id);
            }
        }
        // Write only when something changes: this runs at every round while a cancel is
        // pending.
        let job_state = ctx.store.job(&job_id).await?.map(|j| j.state);
        if abandon.is_empty() && (states.is_empty() || job_state == progress::derive(&states, true))
        {
            continue;
        }
        ctx.store
            .cancel_unsent(&ctx.lease, &job_id, &abandon, UNSENT, "cancelling", &now)
            .await?;
    }
    Ok(need_request)
}

/// Sends the cancel for one submission (after reconciling a create of unknown outcome).
pub async fn send(ctx: Ctx, row_id: i64) -> anyhow::Result<()> {
    let Some(row) = ctx.store.submission(row_id).await? else {
        return Ok(());
    };
    let now = ctx.now();
    if row.state == SubmissionState::Creating || submit::is_held(&row) {
        // A create may have happened: find out before calling the submission abandoned.
        match reconcile::find_created(&ctx, &row).await? {
            Ok(reconcile::Created::Batch(batch)) => return observe(&ctx, &row, &batch).await,
            Ok(reconcile::Created::Nothing) => {
                ctx.store
                    .abandon(&ctx.lease, &row, UNSENT, UNSENT, &now)
                    .await?;
                return Ok(());
            }
            Ok(reconcile::Created::Ambiguous(ids)) => {
                // None of them is provably this create's: none is cancelled.
                let why = format!(
                    "{UNSENT}, or as one of the batches {} (none provably its own, none cancelled)",
                    ids.join(", ")
                );
                ctx.store
                    .abandon(&ctx.lease, &row, &why, &why, &now)
                    .await?;
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
    ctx.store.arm_cancel(&ctx.lease, row.id, &now).await?;
    ctx.may_send()?;
    match ctx.client.cancel_batch(&remote).await {
        Ok(batch) => {
            mark_sent(&ctx, row.id).await?;
            tracing::info!(job = %row.job_id, batch = %remote, "cancel sent");
            observe(&ctx, &row, &batch).await
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

/// Records the cancel sent: the batch is polled at once ([`crate::store::ops::cancel::Cancel::cancel_sent`]).
async fn mark_sent(ctx: &Ctx, row_id: i64) -> anyhow::Result<()> {
    let now = ctx.now();
    ctx.store.cancel_sent(&ctx.lease, row_id, &now).await?;
    if let Some(polls) = ctx.leader_polls() {
        polls.stored(row_id, &now);
    }
    Ok(())
}
