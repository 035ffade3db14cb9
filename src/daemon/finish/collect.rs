//! Results: downloading the files of a batch that ended.
//!
//! Each batch's files are downloaded as `results/JOB/BATCH.output.jsonl` and
//! `BATCH.errors.jsonl`, complete or not at all (the client writes a temporary file, checks its
//! length on disk and renames it; on Anthropic both come from the batch's one results stream,
//! its `output_id` being the batch itself); a file already on disk ([`on_disk`]) is not downloaded
//! again. A file gone from the service is noted as missing. Once every submission of a job is
//! done with, [`crate::daemon::finish`] finishes the job. Every step can be repeated after a crash.
//!
//! # When a download fails
//!
//! ```text
//!              every file downloaded, or gone from the service (404)
//! collecting ──────────────────────────────────────────────────────▶ finished
//!   │  ▲ tried again after backoff.failed_request
//!   ├──┘ the service failed (a 5xx, a timeout, ...): failing since T
//!   │      └─ collect.give_up_after passed since T, or the job is cancelled
//!   │           ──▶ finished, results_unavailable (what was downloaded is kept)
//!   │  ▲ tried again after a back-off that grows with the wait (backoff.failed_task_*)
//!   └──┘ a local fault, the results cannot be written here (a full disk, a quota, a
//!        permission, an I/O error): waiting since L, never given up
//! ```
//!
//! A local fault is the host's, not the service's. It never counts towards
//! `collect.give_up_after` (the service's failures counted before it are forgotten) and never
//! ends the job, cancelled or not: the job waits, and the service keeps its files meanwhile
//! (remote clean-up deletes only results that are on disk, [`crate::daemon::finish`]). The wait is
//! loud: an error in the log and an event when it begins, the fault as the submission's last
//! error (the REASON of `batchwatch status`), and the metric
//! `batchwatch_results_waiting_on_local_fault`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::api::ApiError;
use crate::clock;
use crate::daemon::ctx::{Ctx, Next, defer};
use crate::failpoint;
use crate::model::SubmissionState;
use crate::store::batches::Submission;
use crate::store::prelude::*;
use crate::usage::{self, Tokens};

/// Submissions whose batch ended and whose files are due to be downloaded.
pub async fn due(ctx: &Ctx) -> anyhow::Result<Vec<i64>> {
    Ok(ctx
        .store
        .due_in_state(&ctx.lease, SubmissionState::Collecting, &ctx.now())
        .await?)
}

/// Downloads the output and error files of one ended batch.
pub async fn collect(ctx: Ctx, row_id: i64) -> anyhow::Result<()> {
    let Some(row) = ctx.store.submission(row_id).await? else {
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
    if let Err(source) = std::fs::create_dir_all(&dir) {
        return local_fault(&ctx, &row, &dir, &source).await;
    }
    let mut missing = Vec::new();
    let mut local = None;
    let mut failed = None;
    for (kind, file_id) in [("output", &row.output_id), ("errors", &row.error_output_id)] {
        let Some(file_id) = file_id else { continue };
        if on_disk(&dir, &remote, kind, file_id) {
            continue;
        }
        let dest = dir.join(part_name(&remote, kind));
        let downloaded = match ctx.client.is_anthropic() {
            // One stream holds every request's result, sorted as it arrives into the output
            // file and the errors file (the errors file lands first, so an output file on
            // disk means both are).
            true => {
                let errors = dir.join(part_name(&remote, "errors"));
                ctx.client
                    .download_batch_results(file_id, &dest, &errors)
                    .await
            }
            false => ctx.client.download_file(file_id, &dest).await,
        };
        match downloaded {
            Ok(bytes) => {
                tracing::info!(job = %row.job_id, batch = %remote, file = %file_id, bytes, "downloaded {kind}")
            }
            Err(ApiError::NotFound { .. }) => {
                missing.push(format!("the {kind} file {file_id} no longer exists"))
            }
            Err(ApiError::LocalIo { path, source, .. }) => local = local.or(Some((path, source))),
            Err(e) => failed = failed.or(Some((kind, file_id, e))),
        }
    }
    // While the host is at fault, whatever the service does counts for nothing.
    if let Some((path, source)) = local {
        return local_fault(&ctx, &row, &path, &source).await;
    }
    if let Some((kind, file_id, err)) = failed {
        return download_failed(&ctx, &row, kind, file_id, err).await;
    }
    failpoint::hit("collect:after-download");
    let usage = match ctx.client.is_anthropic() {
        true => usage_from_output(&ctx, &dir, &remote).await?,
        false => None,
    };
    let now = ctx.now();
    // The job's outcome reads it: a completed batch with results missing is not a completed
    // job.
    let missing = (!missing.is_empty()).then(|| missing.join("; "));
    let message = match &row.local_fault_since {
        Some(since) => format!(
            "results of batch {remote} collected, after waiting on a local fault since {since}"
        ),
        None => format!("results of batch {remote} collected"),
    };
    ctx.store
        .collected(
            &ctx.lease,
            &row,
            missing.as_deref(),
            usage.as_ref().map(|(t, c)| (t, *c)),
            &message,
            &now,
        )
        .await?;
    if let Some(since) = &row.local_fault_since {
        tracing::info!(job = %row.job_id, batch = %remote, since = %since, "the local fault is over: results written");
    }
    Ok(())
}

/// The usage a batch's downloaded output reports (where the service reports it per request,
/// in the results), summed over its models, and its cost when `[pricing]` has every one of
/// them; `None` when no output of the batch is on disk to count from.
async fn usage_from_output(
    ctx: &Ctx,
    dir: &Path,
    remote: &str,
) -> anyhow::Result<Option<(Tokens, Option<f64>)>> {
    let path = dir.join(part_name(remote, "output"));
    let by_model = tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
        Ok(file) => crate::api::results_usage(std::io::BufReader::new(file)).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await??;
    let Some(by_model) = by_model else {
        return Ok(None);
    };
    let mut total = Tokens::default();
    let mut cost = Some(0.0);
    for (model, tokens) in &by_model {
        total += *tokens;
        let price = ctx.settings.pricing.get(model);
        cost = cost.zip(price).map(|(sum, p)| sum + usage::cost(p, tokens));
    }
    Ok(Some((total, cost)))
}

/// The name of a batch's downloaded `kind` file in its job's results directory.
pub fn part_name(remote: &str, kind: &str) -> String {
    format!("{remote}.{kind}.jsonl")
}

/// Whether the results of `file_id` (the `kind` file of batch `remote`) are on disk in the
/// job's results directory `dir`: downloaded (`BATCH.KIND.jsonl`), or merged into `KIND.jsonl`,
/// which `manifest.json` says holds `file_id` (a database restored from before the job's end
/// finishes it again).
pub fn on_disk(dir: &Path, remote: &str, kind: &str, file_id: &str) -> bool {
    dir.join(part_name(remote, kind)).is_file() || merged_before(dir, file_id, kind)
}

/// Whether the job's results directory already holds `file_id` merged: its `manifest.json`
/// names the file, and the merged `KIND.jsonl` is there.
fn merged_before(dir: &Path, file_id: &str, kind: &str) -> bool {
    crate::queue::manifest::names_results(dir, kind, file_id)
        && dir.join(format!("{kind}.jsonl")).is_file()
}

/// The results cannot be written at `path`: the host's fault. The submission waits, however
/// long, and is tried again after a back-off that grows with the wait, from
/// `backoff.failed_task_initial` to `backoff.failed_task_max`; nothing counts towards giving
/// up. The first failure of a wait is an error in the log and an event of the job.
async fn local_fault(
    ctx: &Ctx,
    row: &Submission,
    path: &Path,
    source: &std::io::Error,
) -> anyhow::Result<()> {
    let now_ts = ctx.clock.now();
    let now = clock::format(now_ts);
    let waited = row
        .local_fault_since
        .as_deref()
        .and_then(clock::parse)
        .map_or(Duration::ZERO, |since| clock::between(since, now_ts));
    let schedule = &ctx.schedule;
    let delay = waited.clamp(schedule.failed_task_initial, schedule.failed_task_max);
    let retry_at = clock::format(clock::add(now_ts, delay));
    let error = format!("local fault, waiting: {source}: {}", path.display());
    let remote = row.remote_id.as_deref().unwrap_or("?");
    let first = row.local_fault_since.is_none();
    let message = first.then(|| {
        format!(
            "the results of batch {remote} cannot be written here ({source}: {}); the job waits \
             until they can, and the service keeps them meanwhile",
            path.display()
        )
    });
    let since = ctx
        .store
        .wait_on_local_fault(&ctx.lease, row, &error, &retry_at, message.as_deref(), &now)
        .await?;
    if first {
        tracing::error!(job = %row.job_id, batch = %remote, path = %path.display(), error = %source, retry_in = %clock::humanize(delay), "results cannot be written here (a local fault): waiting, nothing is given up");
    } else {
        tracing::warn!(job = %row.job_id, batch = %remote, path = %path.display(), error = %source, since = %since, retry_in = %clock::humanize(delay), "results still cannot be written here (a local fault): waiting");
    }
    Ok(())
}

/// A download failed on the service's side. It is tried again later, until
/// `collect.give_up_after` has passed since the first failure in a row, or until the job is
/// cancelled (deadline or operator): then the submission is done with, its results
/// unavailable, and what was downloaded is kept.
async fn download_failed(
    ctx: &Ctx,
    row: &Submission,
    kind: &str,
    file_id: &str,
    err: ApiError,
) -> anyhow::Result<()> {
    let now_ts = ctx.clock.now();
    let now = clock::format(now_ts);
    let since = ctx
        .store
        .note_collect_failure(&ctx.lease, row.id, &now)
        .await?;
    let job = ctx
        .store
        .job(&row.job_id)
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
    ctx.store
        .give_up_results(&ctx.lease, row, &why, &message, &now)
        .await?;
    tracing::error!(job = %row.job_id, batch = %remote, "{message}");
    Ok(())
}
