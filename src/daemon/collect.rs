//! Results: downloading the files of a batch that ended.
//!
//! Each batch's files are downloaded as `results/JOB/BATCH.output.jsonl` and
//! `BATCH.errors.jsonl` (complete or not at all: the client writes a temporary file, checks its
//! length on disk and renames it). A file gone from the service is noted as missing; a download
//! that fails is tried again until `collect.give_up_after`, or until the job is cancelled.
//! Once every submission of a job is done with, [`super::finish`] finishes the job. Every step
//! can be repeated after a crash.

use std::time::Duration;

use anyhow::Context;

use super::ctx::{Ctx, Next, defer};
use super::progress::refresh_job;
use crate::api::ApiError;
use crate::clock;
use crate::failpoint;
use crate::model::SubmissionState;
use crate::store::batches::{self, Submission};
use crate::store::{jobs, transitions};

/// Submissions whose batch ended and whose files are due to be downloaded.
pub async fn due(ctx: &Ctx) -> anyhow::Result<Vec<i64>> {
    Ok(batches::due_in_state(ctx.store.reader(), SubmissionState::Collecting, &ctx.now()).await?)
}

/// Downloads the output and error files of one ended batch.
pub async fn collect(ctx: Ctx, row_id: i64) -> anyhow::Result<()> {
    let Some(row) = batches::get(ctx.store.reader(), row_id).await? else {
        return Ok(());
    };
    if row.state != SubmissionState::Collecting {
        return Ok(());
    }
    let remote = row
        .remote_id
        .clone()
        .context("a collecting submission has no batch id")?;
    let dir = ctx.queue.results_dir(&row.job_id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut missing = Vec::new();
    let mut failed = None;
    for (kind, file_id) in [
        ("output", &row.output_file_id),
        ("errors", &row.error_file_id),
    ] {
        let Some(file_id) = file_id else { continue };
        let dest = dir.join(format!("{remote}.{kind}.jsonl"));
        if dest.exists() {
            continue;
        }
        match ctx.client.download_file(file_id, &dest).await {
            Ok(bytes) => {
                tracing::info!(job = %row.job_id, batch = %remote, file = %file_id, bytes, "downloaded {kind}")
            }
            Err(ApiError::NotFound { .. }) if merged_before(&dir, file_id, kind) => {
                // A database restored from before the job's end: the file was downloaded,
                // merged, and then deleted from the service (cleanup.remote_files).
                tracing::info!(job = %row.job_id, batch = %remote, file = %file_id, "{kind} already downloaded and merged before; the service no longer has it");
            }
            Err(ApiError::NotFound { .. }) => {
                missing.push(format!("the {kind} file {file_id} no longer exists"))
            }
            Err(e) => failed = failed.or(Some((kind, file_id, e))),
        }
    }
    if let Some((kind, file_id, err)) = failed {
        return download_failed(&ctx, &row, kind, file_id, err).await;
    }
    failpoint::hit("collect:after-download");
    let now = ctx.now();
    let mut tx = ctx.store.begin().await?;
    // The job's outcome reads it: a completed batch with results missing is not a completed
    // job.
    let missing = (!missing.is_empty()).then(|| missing.join("; "));
    transitions::collected(&mut tx, row.id, missing.as_deref(), &now).await?;
    refresh_job(
        &mut tx,
        &row.job_id,
        None,
        &format!("results of batch {remote} collected"),
        &now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether the job's results directory already holds `file_id` merged: its `manifest.json`
/// names the file, and the merged `KIND.jsonl` is there.
fn merged_before(dir: &std::path::Path, file_id: &str, kind: &str) -> bool {
    let Ok(text) = std::fs::read(dir.join("manifest.json")) else {
        return false;
    };
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return false;
    };
    let field = if kind == "output" {
        "output_file_id"
    } else {
        "error_file_id"
    };
    let named = manifest["batches"]
        .as_array()
        .is_some_and(|b| b.iter().any(|b| b[field].as_str() == Some(file_id)));
    named && dir.join(format!("{kind}.jsonl")).is_file()
}

/// A download failed. It is tried again later, until `collect.give_up_after` has passed since
/// the first failure in a row, or until the job is cancelled (deadline or operator): then the
/// submission is done with, its results unavailable, and what was downloaded is kept.
async fn download_failed(
    ctx: &Ctx,
    row: &Submission,
    kind: &str,
    file_id: &str,
    err: ApiError,
) -> anyhow::Result<()> {
    let now_ts = ctx.clock.now();
    let now = clock::format(now_ts);
    let mut tx = ctx.store.begin().await?;
    let since = transitions::note_collect_failure(&mut tx, row.id, &now).await?;
    tx.commit().await?;
    let job = jobs::get(ctx.store.reader(), &row.job_id)
        .await?
        .context("the job of a submission vanished")?;
    let failing_for = clock::parse(&since).map_or(Duration::ZERO, |s| clock::between(s, now_ts));
    let limit = ctx.settings.collect.give_up_after.get();
    if job.cancel_requested_at.is_none() && failing_for < limit {
        defer(ctx, row.id, &err, Next::Step).await?;
        return Err(err.into());
    }
    let why =
        format!("the {kind} file {file_id} could not be downloaded (failing since {since}): {err}");
    let after = match &job.cancel_reason {
        Some(reason) if job.cancel_requested_at.is_some() => {
            format!("the job was cancelled ({reason})")
        }
        _ => format!("collect.give_up_after ({}) passed", clock::humanize(limit)),
    };
    let remote = row.remote_id.as_deref().unwrap_or("?");
    let message = format!("gave up on the results of batch {remote} ({after}): {why}");
    let mut tx = ctx.store.begin().await?;
    transitions::give_up_results(&mut tx, row.id, &why, &now).await?;
    jobs::add_event(&mut tx, &row.job_id, job.state, &message, &now).await?;
    refresh_job(&mut tx, &row.job_id, None, "results given up", &now).await?;
    tx.commit().await?;
    tracing::error!(job = %row.job_id, batch = %remote, "{message}");
    Ok(())
}
