//! Local retention: what finished jobs leave on disk and in the database, removed once they
//! ended longer ago than `retention.*` allows (unset: kept for ever).
//!
//! * `retention.done`: a completed job's file in done/ (with its sidecar);
//! * `retention.failed`: the file in failed/ of a job that did not complete (with its sidecar
//!   and reason file);
//! * `retention.results`: its `results/JOBID/` directory;
//! * `retention.history`: its rows: the job, its batches, their status history and usage, its
//!   events and remote deletions (not while a deletion is pending); then the database gives
//!   the space back ([`crate::store::Store::give_space_back`]).
//!
//! Each removal happens before it is recorded (`files_pruned_at`, `results_pruned_at`, with an
//! event), so a crash in between only makes the next run find nothing left to remove. Only
//! jobs in a final state are ever considered, and only their own paths in done/, failed/ and
//! results/.
//!
//! # In the daemon
//!
//! Once at start and then once a day ([`EVERY`]), what finished jobs left behind longer ago
//! than `retention.*` allows is removed ([`run`]). Nothing happens while no `retention.*` is
//! set.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::clock::{self, Timestamp};
use crate::config::RetentionSettings;
use crate::daemon::ctx::Ctx;
use crate::model::JobState;
use crate::queue::{self, Queue};
use crate::store::prelude::*;
use crate::store::{Lease, Store};

/// Rows deleted per transaction, so the writer is never held long.
const JOBS_PER_TX: i64 = 200;

/// What a prune removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pruned {
    pub dry_run: bool,
    /// Input files removed from done/.
    pub done_files: u64,
    /// Input files removed from failed/ (with their reason files).
    pub failed_files: u64,
    /// results/JOBID/ directories removed.
    pub results_dirs: u64,
    /// Jobs whose rows were deleted.
    pub jobs: u64,
    /// The database file's size before and after giving the space back (0 when it was not).
    pub database_bytes_before: u64,
    pub database_bytes_after: u64,
}

impl Pruned {
    /// How many things of each kind it removed, by the kind's name.
    pub fn by_kind(&self) -> [(&'static str, u64); 4] {
        [
            ("done_files", self.done_files),
            ("failed_files", self.failed_files),
            ("results_dirs", self.results_dirs),
            ("jobs", self.jobs),
        ]
    }
}

/// The cut-off for a retention period: jobs that ended before it go.
fn cutoff(now: Timestamp, keep: std::time::Duration) -> String {
    let keep = jiff::SignedDuration::try_from(keep).unwrap_or(jiff::SignedDuration::MAX);
    clock::format(now.checked_sub(keep).unwrap_or(Timestamp::MIN))
}

/// Applies `settings` at `now`; with `dry_run`, only counts.
pub async fn prune(
    store: &Store,
    lease: &Lease,
    queue: &Queue,
    settings: &RetentionSettings,
    now: Timestamp,
    dry_run: bool,
) -> anyhow::Result<Pruned> {
    let mut pruned = Pruned {
        dry_run,
        ..Pruned::default()
    };
    let stamp = clock::format(now);
    let sets = [
        (
            settings.done,
            "done/",
            &[JobState::Completed][..],
            "retention.done",
        ),
        (
            settings.failed,
            "failed/",
            &[
                JobState::Rejected,
                JobState::Failed,
                JobState::Expired,
                JobState::Cancelled,
            ][..],
            "retention.failed",
        ),
    ];
    for (keep, dir, states, key) in sets {
        let Some(keep) = keep else { continue };
        for job in store
            .old_with_files(states, &cutoff(now, keep.get()))
            .await?
        {
            // Only the job's own file where a finished file belongs; one still on its way
            // (in processing/) is left for the next run.
            if !job.path.starts_with(dir) {
                continue;
            }
            let file = queue.root().join(&job.path);
            let there = file.symlink_metadata().is_ok();
            if dry_run {
                pruned.done_files += u64::from(there && dir == "done/");
                pruned.failed_files += u64::from(there && dir == "failed/");
                continue;
            }
            remove_job_file(queue, &file, dir == "failed/")?;
            let message = format!("{} removed ({key} = {keep})", job.path);
            store
                .mark_pruned(lease, &job.id, false, &message, &stamp)
                .await?;
            if there {
                if dir == "done/" {
                    pruned.done_files += 1;
                } else {
                    pruned.failed_files += 1;
                }
            }
        }
    }
    if let Some(keep) = settings.results {
        for job in store.old_with_results(&cutoff(now, keep.get())).await? {
            let Some(rel) = job
                .results_dir
                .as_deref()
                .filter(|r| r.starts_with("results/"))
            else {
                continue;
            };
            let dir = queue.root().join(rel);
            let there = dir.is_dir();
            if dry_run {
                pruned.results_dirs += u64::from(there);
                continue;
            }
            if there {
                std::fs::remove_dir_all(&dir)?;
            }
            let message = format!("{rel} removed (retention.results = {keep})");
            store
                .mark_pruned(lease, &job.id, true, &message, &stamp)
                .await?;
            pruned.results_dirs += u64::from(there);
        }
    }
    if let Some(keep) = settings.history {
        let before = cutoff(now, keep.get());
        if dry_run {
            pruned.jobs = store.prunable_jobs(&before, i64::MAX).await?.len() as u64;
        } else {
            loop {
                let due = store.prunable_jobs(&before, JOBS_PER_TX).await?;
                if due.is_empty() {
                    break;
                }
                pruned.jobs += store.delete_jobs(lease, &due).await?;
                if (due.len() as i64) < JOBS_PER_TX {
                    break;
                }
            }
            if pruned.jobs > 0 {
                let (before, after) = store.give_space_back().await?;
                pruned.database_bytes_before = before;
                pruned.database_bytes_after = after;
            }
        }
    }
    Ok(pruned)
}

/// Removes a finished job's file with its sidecar (and reason file, from failed/), and its
/// own directory (`done/JOBID/`) when that is left empty. Gone already is fine.
fn remove_job_file(queue: &Queue, file: &Path, with_reason: bool) -> std::io::Result<()> {
    let mut paths = vec![file.to_owned()];
    paths.extend(queue::sidecar_path(file));
    if with_reason {
        paths.push(queue::reason_path(file));
    }
    for path in paths {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    if let Some(parent) = file.parent()
        && parent.parent().is_some_and(|p| {
            p == queue.root().join("done").as_path() || p == queue.root().join("failed").as_path()
        })
    {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

/// How often the daemon prunes.
pub const EVERY: Duration = Duration::from_secs(24 * 3600);

/// One prune with the settings in effect now.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let settings = &ctx.settings.retention;
    if !settings.any() {
        return Ok(());
    }
    let pruned = prune(
        &ctx.store,
        &ctx.leader_lease(),
        &ctx.queue,
        settings,
        ctx.clock.now(),
        false,
    )
    .await?;
    for (kind, n) in pruned.by_kind() {
        ctx.metrics.pruned(kind, n);
    }
    tracing::info!(
        done_files = pruned.done_files,
        failed_files = pruned.failed_files,
        results_dirs = pruned.results_dirs,
        jobs = pruned.jobs,
        database_bytes_before = pruned.database_bytes_before,
        database_bytes_after = pruned.database_bytes_after,
        "retention applied"
    );
    Ok(())
}
