//! Local retention in the daemon: once at start and then once a day, what finished jobs left
//! behind longer ago than `retention.*` allows is removed
//! ([`crate::housekeeping::retention`]). Nothing happens while no `retention.*` is set.

use std::time::Duration;

use crate::housekeeping::retention::prune;

use super::ctx::Ctx;

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
        &ctx.lease,
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
