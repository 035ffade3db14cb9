//! The job's file in the queue, which several activities look at and move: the limits its
//! size is held to (for a reason's hint), whether it changed since its claim or since it was
//! sent, and its last move from processing/ to done/ or failed/ (or finding where it went).

use std::ffi::OsStr;
use std::path::Path;

use anyhow::Context;

use crate::batchfile;
use crate::clock;
use crate::daemon::ctx::Ctx;
use crate::failpoint;
use crate::model::{JobId, JobState};
use crate::queue::{self, Destination, FileLook, JobDir, Reason};
use crate::store::batches::Submission;
use crate::store::jobs::Job;
use crate::store::prelude::*;

/// The settings that decide a size limit, for the reason of a file (or a batch) over it: the
/// operator's fix is in them.
pub fn limit_hint(code: &str) -> Option<&'static str> {
    match code {
        "too_many_requests" => Some(
            "batch.max_requests sets the most requests a batch may have (the service's limit: \
             50,000 on OpenAI), and batch.split_oversized = true runs a bigger file as several \
             batches of one job",
        ),
        "file_too_large" => Some(
            "batch.max_bytes sets the largest batch (the service's limit: 200 MB on OpenAI), and \
             batch.split_oversized = true runs a bigger file as several batches of one job",
        ),
        _ => None,
    }
}

/// How the job's file differs from what was recorded at its claim (it is gone, or a writer
/// changed it), with how it looks now; `None` when it is as claimed.
pub async fn file_changed(
    ctx: &Ctx,
    job: &Job,
) -> anyhow::Result<Option<(Option<FileLook>, String)>> {
    let recorded = ctx
        .store
        .recorded_file(&job.id)
        .await?
        .context("a job vanished")?;
    let path = ctx.queue.root().join(&job.path);
    Ok(match std::fs::metadata(&path) {
        Ok(meta) => {
            let look = FileLook::of(&meta);
            recorded.change_to(&look).map(|change| (Some(look), change))
        }
        Err(e) => Some((None, format!("it cannot be looked at: {e}"))),
    })
}

/// How the job's file differs from the one that was validated and sent (its size and SHA-256
/// as recorded at validation), in words, once part of it reached the service (`rows`, the
/// job's submissions). `None` when it is the same, when nothing was sent, or when it cannot be
/// read now: a missing file is the sweep's to find ([`crate::daemon::file::relocate`]), and a local
/// fault is logged, never a reason to end a job differently.
pub async fn changed_since_sent(
    ctx: &Ctx,
    job: &Job,
    rows: &[Submission],
) -> anyhow::Result<Option<String>> {
    let sent = rows.iter().any(|r| r.upload_id.is_some());
    let Some(sha) = job.sha256.clone().filter(|_| sent) else {
        return Ok(None);
    };
    let path = ctx.queue.root().join(&job.path);
    let read = tokio::task::spawn_blocking(move || batchfile::sha256_of(&path)).await?;
    let size = u64::try_from(job.size_bytes).unwrap_or(0);
    let change = match read {
        Ok((bytes, _)) if bytes != size => format!("{size} bytes then, {bytes} now"),
        Ok((_, now)) if now != sha => format!("{size} bytes, but not the same bytes"),
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::warn!(job = %job.id, path = %job.path, error = %e, "cannot read the file to compare it with what was sent");
            return Ok(None);
        }
    };
    tracing::warn!(job = %job.id, change, "the file changed after it was submitted");
    Ok(Some(change))
}

/// Sends a job whose file changed back to `validating`, to be validated again once the file
/// held still for `queue.settle_time`. `sending` is the submission its caller was about to
/// upload. Returns false when part of the job may already have reached the service: then the
/// change cannot be undone, and nothing was changed.
pub async fn wait_for_file(
    ctx: &Ctx,
    job_id: &str,
    look: &FileLook,
    sending: Option<i64>,
    change: &str,
) -> anyhow::Result<bool> {
    let now_ts = ctx.clock.now();
    let settle = ctx.settings.queue.settle_time.get();
    let after = clock::format(clock::add(now_ts, settle));
    let message = format!(
        "the file changed after it was claimed ({change}); it is validated again once it has held still for queue.settle_time"
    );
    let sent_back = ctx
        .store
        .validate_again(
            &ctx.lease,
            job_id,
            look,
            sending,
            &after,
            &message,
            &clock::format(now_ts),
        )
        .await?;
    if sent_back {
        tracing::warn!(job = %job_id, change, "the file changed after it was claimed; validating it again once it holds still");
    }
    Ok(sent_back)
}

/// Moves a finished job's file on: from processing/ when it is there, else finds where it went
/// (see [`relocate`]).
pub async fn move_on(ctx: &Ctx, job_id: &str) -> anyhow::Result<()> {
    let job = ctx
        .store
        .job(job_id)
        .await?
        .context("a finished job vanished")?;
    let id = JobId::parse(&job.id).context("a job id in the database is malformed")?;
    match ctx.queue.job_dir_of(&id)? {
        Some(JobDir {
            file: Some((name, from)),
            ..
        }) => move_file(ctx, &job, &name, &from).await,
        Some(JobDir {
            dir, file: None, ..
        }) => {
            let _ = std::fs::remove_dir(dir);
            relocate(ctx, &job).await
        }
        None => relocate(ctx, &job).await,
    }
}

/// Moves a finished job's file from processing/ to done/ or failed/ (with its reason file). The
/// destination is chosen once and recorded before anything moves, so a repeat after a crash
/// finishes the same move.
pub async fn move_file(ctx: &Ctx, job: &Job, name: &OsStr, from: &Path) -> anyhow::Result<()> {
    let id = JobId::parse(&job.id).context("a job id in the database is malformed")?;
    let dest = if job.state == JobState::Completed {
        Destination::Done
    } else {
        Destination::Failed
    };
    let recorded = [
        ctx.queue.plain_final(dest, name),
        ctx.queue.own_final(dest, &id, name),
    ]
    .into_iter()
    .find(|p| ctx.queue.relative(p) == job.path);
    let to = match recorded {
        Some(to) => {
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir)?;
            }
            to
        }
        None => {
            let to = ctx.queue.choose_final(dest, &id, name)?;
            record_path(ctx, &job.id, &to).await?;
            to
        }
    };
    let reason = (dest == Destination::Failed).then(|| Reason {
        job_id: job.id.clone(),
        file: job.file_name.clone(),
        state: job.state.to_string(),
        code: job
            .reason_code
            .clone()
            .unwrap_or_else(|| job.state.to_string()),
        line: job.reason_line.and_then(|l| u64::try_from(l).ok()),
        message: job.reason.clone().unwrap_or_default(),
        results_dir: job.results_dir.clone(),
        manifest: job
            .results_dir
            .as_ref()
            .map(|dir| format!("{dir}/{}", queue::MANIFEST_FILE)),
        at: job.finished_at.clone().unwrap_or_else(|| ctx.now()),
    });
    failpoint::hit("settle:before-move");
    let moved_to = match ctx.queue.finish(from, &to, reason.as_ref()) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Something took the name after it was chosen: the job's own directory cannot clash.
            let own = ctx.queue.own_final(dest, &id, name);
            std::fs::create_dir_all(own.parent().expect("has a parent"))?;
            record_path(ctx, &job.id, &own).await?;
            ctx.queue.finish(from, &own, reason.as_ref())?;
            own
        }
        other => {
            other.with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
            to
        }
    };
    tracing::info!(job = %job.id, state = %job.state, to = %ctx.queue.relative(&moved_to), "file moved");
    Ok(())
}

/// Finds a finished job's file when it is not where the database says: a restored database
/// may predate the file's final move. The file in done/ or failed/ with the job's name, size
/// and checksum is recorded as the job's.
pub async fn relocate(ctx: &Ctx, job: &Job) -> anyhow::Result<()> {
    if ctx.queue.root().join(&job.path).symlink_metadata().is_ok() {
        return Ok(());
    }
    let Some(id) = JobId::parse(&job.id) else {
        return Ok(());
    };
    let name = OsStr::new(&job.file_name);
    let candidates: Vec<_> = [Destination::Done, Destination::Failed]
        .into_iter()
        .flat_map(|d| {
            [
                ctx.queue.plain_final(d, name),
                ctx.queue.own_final(d, &id, name),
            ]
        })
        .collect();
    let (size, sha) = (job.size_bytes, job.sha256.clone());
    let found = tokio::task::spawn_blocking(move || {
        candidates
            .into_iter()
            .find(|p| is_the_file(p, size, sha.as_deref()))
    })
    .await?;
    match found {
        Some(path) => {
            record_path(ctx, &job.id, &path).await?;
            tracing::info!(job = %job.id, path = %ctx.queue.relative(&path), "the file had moved on before the database's last record; found it");
        }
        None => {
            tracing::warn!(job = %job.id, path = %job.path, "the file of this job is neither where the database says nor in done/ or failed/")
        }
    }
    Ok(())
}

/// Whether `path` is a regular file of `size` bytes whose SHA-256 is `sha` (when known).
fn is_the_file(path: &Path, size: i64, sha: Option<&str>) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || i64::try_from(meta.len()).ok() != Some(size) {
        return false;
    }
    let Some(sha) = sha else { return true };
    batchfile::sha256_of(path).is_ok_and(|(_, hex)| hex == sha)
}

async fn record_path(ctx: &Ctx, job_id: &str, to: &Path) -> anyhow::Result<()> {
    ctx.store
        .set_path(&ctx.lease, job_id, &ctx.queue.relative(to), &ctx.now())
        .await?;
    Ok(())
}
