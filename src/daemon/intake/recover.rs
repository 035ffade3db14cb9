//! Picking up what a previous run left, and keeping processing/ in order.
//!
//! At start: uploads and creates that were under way are marked as of unknown outcome (the
//! next step reconciles them first), temporary files of downloads a stop cut short are removed,
//! recorded resubmissions a crash left under their temporary names are moved into incoming/
//! (and an hour-old one that a resubmit killed before recording it is removed), and
//! processing/ is swept (the first sweep: the first round does not go through it again). The
//! sweep runs again after a failure and every few minutes, in
//! the main loop after a scan (so it never races a claim), skipping the jobs a task is working
//! on: it adopts a file claimed without a row (a crash between the claim's rename and its row)
//! under the job id its directory carries, removes the directory of a claim that never
//! happened, and finishes the move of a finished job's file that a crash or an error
//! interrupted. One file it cannot handle is logged and left for the next sweep, never fatal.
//!
//! Several daemons on one PostgreSQL database share processing/: a claim is one rename into a
//! directory named by the new job's id, then the job's row, and that id is the row's key, so
//! however two instances race on one directory, one job comes of it. What another live
//! instance may still be doing is left to it for a lease's length (`database.lease`), while
//! another instance is live: a directory with no row yet (its claim may be between the rename
//! and the row), and the file of a job that ended since (its holder moves it on); after that,
//! whoever sweeps repairs it.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;

use crate::clock::{self, Timestamp};

use crate::daemon::ctx::Ctx;
use crate::daemon::file;
use crate::daemon::intake;
use crate::queue::JobDir;
use crate::queue::scan::Kind;
use crate::store::Lease;
use crate::store::jobs::Job;
use crate::store::prelude::*;

/// Picks up what the previous run left: marks uploads and creates that were under way as of
/// unknown outcome, moves recorded resubmissions into place, then sweeps processing/. Returns
/// what that sweep returns ([`sweep`]): it is the loop's first, as a sweep in a round is.
pub async fn recover(ctx: &Ctx) -> anyhow::Result<Option<String>> {
    let now = ctx.now();
    let unknown = ctx.store.mark_in_flight_unknown(&ctx.lease, &now).await?;
    if unknown > 0 {
        tracing::info!(
            submissions = unknown,
            "uploads or creates were under way at the last stop; reconciling them first"
        );
    }
    // Another live instance's downloads are its own, under way.
    let others = jobs_of_others(ctx).await?;
    match ctx
        .queue
        .remove_download_leftovers(|job| others.contains(job))
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            files = n,
            "removed the temporary files of downloads a stop cut short"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot tidy up results/; downloads cut short may have left temporary files")
        }
    }
    let removed =
        crate::daemon::housekeeping::resubmit::pick_up_stages(&ctx.store, &ctx.queue).await?;
    if removed > 0 {
        tracing::info!(
            files = removed,
            "removed the files of resubmissions killed before they were recorded"
        );
    }
    sweep(ctx, |_| false).await
}

/// Goes through processing/: adopts files claimed without a row, moves the files of finished
/// jobs on, and repairs moves a crash interrupted, leaving alone the jobs `busy` names (a task
/// of theirs is running). A file it cannot handle is logged and left for the next sweep.
/// Returns why a file was left (the first, when several were), or `None` when every file was
/// handled (otherwise the next sweep should come soon).
pub async fn sweep(ctx: &Ctx, busy: impl Fn(&str) -> bool) -> anyhow::Result<Option<String>> {
    let mut left = None;
    // One read for all: a job the database holds unfinished needs no row read of its own
    // (with 10,000 jobs in flight, one query each cost about a second).
    // Whoever holds them: their files stay where they are.
    let unfinished_jobs: HashSet<String> = ctx
        .store
        .unfinished_jobs(&Lease::SOLE)
        .await?
        .into_iter()
        .collect();
    let others_wait = match others_live(ctx).await? {
        true => Some(ctx.settings.database.lease.get()),
        false => None,
    };
    for job_dir in ctx.queue.job_dirs().context("listing processing/")? {
        if busy(job_dir.job.as_str()) {
            continue;
        }
        let unfinished = unfinished_jobs.contains(job_dir.job.as_str());
        if let Err(e) = sweep_one(ctx, &job_dir, unfinished, others_wait).await {
            let error = format!("{e:#}");
            tracing::warn!(job = %job_dir.job, error, "cannot move this job's file on yet; trying again at the next scan");
            left.get_or_insert_with(|| {
                format!("cannot move the file of job {} on: {error}", job_dir.job)
            });
        }
    }
    Ok(left)
}

/// `unfinished`: the database held the job unfinished when the sweep began. `others_wait`:
/// on a shared store, how long what another instance may still be doing is left to it.
async fn sweep_one(
    ctx: &Ctx,
    job_dir: &JobDir,
    unfinished: bool,
    others_wait: Option<Duration>,
) -> anyhow::Result<()> {
    if let Some((name, path)) = &job_dir.file {
        ctx.queue.drop_incoming_twin(name, path)?;
        ctx.queue.adopt_sidecar(name, &job_dir.job)?;
    }
    if unfinished {
        // Its file stays until the job ends (a job that ended since moves its file itself).
        return Ok(());
    }
    let job = ctx.store.job(job_dir.job.as_str()).await?;
    if let Some(wait) = others_wait
        && another_may_be_at_it(job.as_ref(), job_dir, wait, ctx.clock.now())
    {
        return Ok(());
    }
    match (job, &job_dir.file) {
        (None, Some((name, path))) => {
            tracing::info!(job = %job_dir.job, file = %name.to_string_lossy(), "adopting a file claimed just before a stop");
            let meta = std::fs::symlink_metadata(path)?;
            let kind = if meta.is_file() && name.to_str().is_some() {
                Kind::File { bytes: meta.len() }
            } else {
                Kind::Unfit {
                    code: "not_a_regular_file",
                    message: "it is not a regular file".into(),
                }
            };
            // The service may have its batches already (the database lost them).
            ctx.unverified.add(job_dir.job.as_str());
            intake::register(ctx, &job_dir.job, name, path, kind, None).await?;
        }
        // A crash between creating the directory and the claim's rename: nothing was claimed.
        (None, None) => std::fs::remove_dir(&job_dir.dir)?,
        (Some(job), Some((name, path))) if job.state.is_terminal() => {
            file::move_file(ctx, &job, name, path).await?
        }
        (Some(job), None) if job.state.is_terminal() => {
            let _ = std::fs::remove_dir(&job_dir.dir);
        }
        (Some(_), _) => {}
    }
    Ok(())
}

/// The unfinished jobs other instances hold (none on a store this daemon writes alone).
async fn jobs_of_others(ctx: &Ctx) -> anyhow::Result<HashSet<String>> {
    if ctx.lease.is_sole() {
        return Ok(HashSet::new());
    }
    let mut all: HashSet<String> = ctx
        .store
        .unfinished_jobs(&Lease::SOLE)
        .await?
        .into_iter()
        .collect();
    for mine in ctx.store.unfinished_jobs(&ctx.lease).await? {
        all.remove(&mine);
    }
    Ok(all)
}

/// Whether another instance shares the store and is live (its lease runs).
async fn others_live(ctx: &Ctx) -> anyhow::Result<bool> {
    if ctx.lease.is_sole() {
        return Ok(false);
    }
    let instances = ctx.store.instances().await?;
    Ok(instances
        .iter()
        .any(|i| i.live && i.epoch != ctx.lease.epoch()))
}

/// Whether another instance may still be at work on `job_dir` (a shared store): the directory
/// has no job yet and is younger than `wait` (a claim between its rename and its row), or its
/// job ended less than `wait` ago (its holder moves the file on).
fn another_may_be_at_it(
    job: Option<&Job>,
    job_dir: &JobDir,
    wait: Duration,
    now: Timestamp,
) -> bool {
    let since = match job {
        None => std::fs::symlink_metadata(&job_dir.dir)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|at| Timestamp::try_from(at).ok()),
        Some(job) if job.state.is_terminal() => job.finished_at.as_deref().and_then(clock::parse),
        Some(_) => return false,
    };
    // A time it cannot tell is recent: the next sweep looks again.
    since.is_none_or(|at| clock::between(at, now) < wait)
}
