//! Remote clean-up: deleting from the service the files of jobs that ended.
//!
//! When a job ends with `cleanup.remote_files` on, the transaction that records its end also
//! records the intent to delete its input files and those of its output and error files whose
//! results are on disk ([`crate::store::deletions::plan_for_job`], from what
//! [`super::finish`] found in the job's results directory): nothing is deleted from the service
//! that is not here. This module carries the intents out
//! ([`crate::housekeeping::remote::delete`]): a deletion that fails is tried again after a
//! growing delay, a refused key closes the gate as any request does, none of it changes the
//! job's state, and a stop does not wait for it ([`super::Task::stops_at_once`]).

use crate::clock::{self, Timestamp};
use crate::housekeeping::remote::{self, Outcome};
use crate::store::deletions;

use super::ctx::Ctx;

/// The most deletions one task sends before it hands back to the loop.
const PER_TASK: i64 = 50;

/// When the next pending deletion is due; `now` when one is due already.
pub async fn next_due(ctx: &Ctx, now: Timestamp) -> anyhow::Result<Option<Timestamp>> {
    Ok(deletions::next_due(ctx.store.reader())
        .await?
        .map(|at| clock::parse(&at).unwrap_or(now)))
}

/// Sends the deletions that are due, one after the other, until the gate closes.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let rows = deletions::due(ctx.store.reader(), &ctx.now(), PER_TASK).await?;
    for row in rows {
        if ctx.gate.paused().is_some() {
            break;
        }
        let outcome = remote::delete(
            &ctx.client,
            &ctx.store,
            &ctx.lease,
            &row,
            || ctx.clock.now(),
            ctx.schedule.failed_request,
        )
        .await?;
        match &outcome {
            Outcome::Done(done) => ctx.metrics.remote_file_deleted(done.as_str()),
            Outcome::Failed { error, .. } => {
                ctx.gate
                    .note(error, ctx.clock.now(), ctx.schedule.auth_retry);
                ctx.metrics.remote_file_deleted("failed");
            }
            Outcome::Settled => {}
        }
    }
    Ok(())
}
