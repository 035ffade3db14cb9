//! Results: downloading a finished batch's files, then finishing its job.
//!
//! Each batch's files are downloaded as `results/JOB/BATCH.output.jsonl` and
//! `BATCH.errors.jsonl` (complete or not at all: the client writes a temporary file and
//! renames it). When every submission of the job is done with, the latest attempt of each part
//! is merged into `output.jsonl` and `errors.jsonl`, `manifest.json` describes it all, the
//! job's final state is committed, and the input file moves to done/ or failed/. Every step can
//! be repeated after a crash.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::progress::refresh_job;
use super::{Ctx, Next, defer};
use crate::api::ApiError;
use crate::clock;
use crate::failpoint;
use crate::model::{BatchStatus, JobState, SubmissionState};
use crate::queue;
use crate::store::batches::{self, Submission};
use crate::store::jobs::{self, Job, Why};

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
    // [`outcome`] reads it: a completed batch with results missing is not a completed job.
    let missing = (!missing.is_empty()).then(|| missing.join("; "));
    batches::set_results_missing(&mut tx, row.id, missing.as_deref(), &now).await?;
    batches::set_state(&mut tx, row.id, SubmissionState::Finished, &now).await?;
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
    let since = batches::note_collect_failure(&mut tx, row.id, &now).await?;
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
    batches::set_results_unavailable(&mut tx, row.id, &why, &now).await?;
    batches::set_last_error(&mut tx, row.id, Some(&why), &now).await?;
    batches::set_state(&mut tx, row.id, SubmissionState::Finished, &now).await?;
    jobs::add_event(&mut tx, &row.job_id, job.state, &message, &now).await?;
    refresh_job(&mut tx, &row.job_id, None, "results given up", &now).await?;
    tx.commit().await?;
    tracing::error!(job = %row.job_id, batch = %remote, "{message}");
    Ok(())
}

/// The latest attempt of each part.
pub fn latest(rows: &[Submission]) -> Vec<&Submission> {
    let mut by_part: BTreeMap<i64, &Submission> = BTreeMap::new();
    for row in rows {
        let entry = by_part.entry(row.part).or_insert(row);
        if row.attempt > entry.attempt {
            *entry = row;
        }
    }
    by_part.into_values().collect()
}

/// How a job ends, given the latest attempt of each of its parts.
pub fn outcome(job: &Job, latest: &[&Submission]) -> (JobState, Option<Why>) {
    let status = |s: &Submission| s.status.clone();
    // Results that could not be downloaded fail the job, however its batches ended.
    if let Some((s, why)) = latest
        .iter()
        .find_map(|s| Some((s, s.results_unavailable.as_deref()?)))
    {
        let message = format!(
            "batch {} ended ({}), but {why}; the results that were downloaded are kept",
            s.remote_id.as_deref().unwrap_or("?"),
            s.status.as_ref().map_or("?", |st| st.as_str()),
        );
        return (
            JobState::Failed,
            Some(Why::new("results_unavailable", message)),
        );
    }
    if !latest.is_empty()
        && latest.iter().all(|s| {
            s.state == SubmissionState::Finished && status(s) == Some(BatchStatus::Completed)
        })
    {
        // Completed on the service, but its results are not all here: not a completed job.
        if let Some((s, missing)) = latest
            .iter()
            .find_map(|s| Some((s, s.results_missing.as_deref()?)))
        {
            let message = format!(
                "batch {} completed, but {missing}; the results that remain are kept",
                s.remote_id.as_deref().unwrap_or("?"),
            );
            return (JobState::Failed, Some(Why::new("results_missing", message)));
        }
        return (JobState::Completed, None);
    }
    if let Some(reason) = &job
        .cancel_requested_at
        .as_ref()
        .and(job.cancel_reason.as_ref())
    {
        let message = match reason.as_str() {
            "deadline" => format!(
                "cancelled at its deadline, {}; partial results kept",
                job.deadline_at
            ),
            "operator" => {
                "cancelled by an operator (batchwatch cancel); partial results kept".to_owned()
            }
            other => format!("cancelled ({other}); partial results kept"),
        };
        return (
            JobState::Cancelled,
            Some(Why::new(reason.as_str(), message)),
        );
    }
    if let Some(s) = latest
        .iter()
        .find(|s| status(s) == Some(BatchStatus::Expired))
    {
        let message = format!(
            "batch {} expired before it finished (completion window {}); partial results kept",
            s.remote_id.as_deref().unwrap_or("?"),
            job.completion_window
        );
        return (JobState::Expired, Some(Why::new("expired", message)));
    }
    if let Some(s) = latest.iter().find(|s| s.state == SubmissionState::Lost) {
        return (
            JobState::Failed,
            Some(Why::new(
                "batch_lost",
                s.last_error
                    .clone()
                    .unwrap_or_else(|| "the batch vanished".into()),
            )),
        );
    }
    if let Some(s) = latest
        .iter()
        .find(|s| s.state == SubmissionState::Abandoned)
    {
        let message = s
            .last_error
            .clone()
            .unwrap_or_else(|| "the submission was abandoned".into());
        return (
            JobState::Failed,
            Some(Why::new("submission_refused", message)),
        );
    }
    if let Some(s) = latest
        .iter()
        .find(|s| status(s) == Some(BatchStatus::Failed))
    {
        let (code, message) = first_error(s.errors.as_deref());
        let message = format!(
            "batch {} failed: {message}",
            s.remote_id.as_deref().unwrap_or("?")
        );
        return (
            JobState::Failed,
            Some(Why::new(
                code.unwrap_or_else(|| "batch_failed".into()),
                message,
            )),
        );
    }
    if let Some(s) = latest
        .iter()
        .find(|s| status(s) == Some(BatchStatus::Cancelled))
    {
        let message = format!(
            "batch {} was cancelled outside batchwatch; partial results kept",
            s.remote_id.as_deref().unwrap_or("?")
        );
        return (
            JobState::Cancelled,
            Some(Why::new("cancelled_remotely", message)),
        );
    }
    let seen: Vec<String> = latest
        .iter()
        .map(|s| s.status.as_ref().map_or("none".into(), |s| s.to_string()))
        .collect();
    (
        JobState::Failed,
        Some(Why::new(
            "unexpected_status",
            format!("the batches ended as {}", seen.join(", ")),
        )),
    )
}

/// The first entry of a batch's `errors`: (code, message).
fn first_error(errors: Option<&str>) -> (Option<String>, String) {
    let parsed: Option<serde_json::Value> = errors.and_then(|e| serde_json::from_str(e).ok());
    let first = parsed
        .as_ref()
        .and_then(|v| v.get("data"))
        .and_then(|d| d.get(0));
    let text = |k: &str| {
        first
            .and_then(|f| f.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let line = first.and_then(|f| f.get("line")).and_then(|v| v.as_u64());
    let mut message = text("message").unwrap_or_else(|| "no reason given".into());
    if let Some(line) = line {
        message = format!("line {line}: {message}");
    }
    (text("code"), message)
}

#[derive(Debug, Serialize)]
struct Counts {
    total: i64,
    completed: i64,
    failed: i64,
}

#[derive(Debug, Serialize)]
struct ManifestBatch<'a> {
    batch_id: Option<&'a str>,
    part: i64,
    attempt: i64,
    state: SubmissionState,
    status: Option<&'a BatchStatus>,
    request_counts: Counts,
    input_file_id: Option<&'a str>,
    output_file_id: Option<&'a str>,
    error_file_id: Option<&'a str>,
    last_error: Option<&'a str>,
    results_missing: Option<&'a str>,
    results_unavailable: Option<&'a str>,
}

/// `manifest.json`: what is in a job's results directory, and how the job ended.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    job_id: &'a str,
    file: &'a str,
    state: JobState,
    reason_code: Option<&'a str>,
    reason: Option<&'a str>,
    sha256: Option<&'a str>,
    endpoint: Option<&'a str>,
    model: Option<&'a str>,
    requests: Option<i64>,
    request_counts: Counts,
    /// Merged output of the latest attempt of every part, relative to this directory.
    output_file: Option<String>,
    error_file: Option<String>,
    batches: Vec<ManifestBatch<'a>>,
    finished_at: String,
}

/// Finishes a job whose submissions are all done with: results, final state, file move.
pub async fn finish(ctx: Ctx, job_id: String) -> anyhow::Result<()> {
    let Some(job) = jobs::get(ctx.store.reader(), &job_id).await? else {
        return Ok(());
    };
    if job.state.is_terminal() {
        return Ok(());
    }
    let rows = batches::for_job(ctx.store.reader(), &job_id).await?;
    let last = latest(&rows);
    let (state, why) = outcome(&job, &last);
    let now = ctx.now();

    let dir = ctx.queue.results_dir(&job_id);
    let created_any = rows.iter().any(|r| r.remote_id.is_some());
    let results_dir = if created_any {
        let remote: Vec<String> = last.iter().filter_map(|r| r.remote_id.clone()).collect();
        let merge_dir = dir.clone();
        let (output, errors) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            std::fs::create_dir_all(&merge_dir)?;
            Ok((
                merge(&merge_dir, &remote, "output")?,
                merge(&merge_dir, &remote, "errors")?,
            ))
        })
        .await??;
        let sum = |f: fn(&Submission) -> Option<i64>| last.iter().filter_map(|r| f(r)).sum::<i64>();
        let manifest = Manifest {
            job_id: &job.id,
            file: &job.file_name,
            state,
            reason_code: why.as_ref().map(|w| w.code.as_str()),
            reason: why.as_ref().map(|w| w.message.as_str()),
            sha256: job.sha256.as_deref(),
            endpoint: job.endpoint.as_deref(),
            model: job.model.as_deref(),
            requests: job.request_count,
            request_counts: Counts {
                total: sum(|r| r.request_total),
                completed: sum(|r| r.request_completed),
                failed: sum(|r| r.request_failed),
            },
            output_file: output,
            error_file: errors,
            batches: rows
                .iter()
                .map(|r| ManifestBatch {
                    batch_id: r.remote_id.as_deref(),
                    part: r.part,
                    attempt: r.attempt,
                    state: r.state,
                    status: r.status.as_ref(),
                    request_counts: Counts {
                        total: r.request_total.unwrap_or(0),
                        completed: r.request_completed.unwrap_or(0),
                        failed: r.request_failed.unwrap_or(0),
                    },
                    input_file_id: r.input_file_id.as_deref(),
                    output_file_id: r.output_file_id.as_deref(),
                    error_file_id: r.error_file_id.as_deref(),
                    last_error: r.last_error.as_deref(),
                    results_missing: r.results_missing.as_deref(),
                    results_unavailable: r.results_unavailable.as_deref(),
                })
                .collect(),
            finished_at: now.clone(),
        };
        queue::write_atomically(
            &dir.join("manifest.json"),
            &serde_json::to_vec_pretty(&manifest)?,
        )?;
        Some(ctx.queue.relative(&dir))
    } else {
        None
    };

    let message = match &why {
        Some(w) => format!("{state}: {}", w.message),
        None => format!(
            "{state}: results in {}",
            results_dir.as_deref().unwrap_or("-")
        ),
    };
    let mut tx = ctx.store.begin().await?;
    if let Some(dir) = &results_dir {
        jobs::set_results_dir(&mut tx, &job_id, dir, &now).await?;
    }
    jobs::set_state(&mut tx, &job_id, state, why.as_ref(), &message, &now).await?;
    tx.commit().await?;
    tracing::info!(job = %job_id, %state, results = results_dir.as_deref().unwrap_or("-"), "job finished");
    super::intake::relocate(&ctx, &job).await?;
    // The sweep moves the input file on.
    failpoint::hit("finish:after-state");
    Ok(())
}

/// Merges the downloaded `BATCH.KIND.jsonl` files of `batches` into `KIND.jsonl`; returns its
/// name when there is one. Repeatable: the merged file is complete before any part is removed,
/// so once it exists the merge is done and leftover parts only need removing.
fn merge(dir: &Path, batches: &[String], kind: &str) -> io::Result<Option<String>> {
    let name = format!("{kind}.jsonl");
    let target = dir.join(&name);
    let parts: Vec<PathBuf> = batches
        .iter()
        .map(|b| dir.join(format!("{b}.{kind}.jsonl")))
        .filter(|p| p.exists())
        .collect();
    if target.exists() {
        for part in &parts {
            std::fs::remove_file(part)?;
        }
        return Ok(Some(name));
    }
    match parts.as_slice() {
        [] => return Ok(None),
        [one] => std::fs::rename(one, &target)?,
        many => {
            let mut out = queue::shared_temp_file(dir, ".merge-", "")?;
            for part in many {
                let mut input = std::fs::File::open(part)?;
                let copied = io::copy(&mut input, &mut out)?;
                // Keep one request per line even if a part lacks its final newline.
                let mut last = [0u8; 1];
                if copied > 0 {
                    use std::io::{Read, Seek, SeekFrom};
                    input.seek(SeekFrom::End(-1))?;
                    input.read_exact(&mut last)?;
                    if last[0] != b'\n' {
                        out.write_all(b"\n")?;
                    }
                }
            }
            out.as_file().sync_all()?;
            out.persist(&target).map_err(|e| e.error)?;
            for part in many {
                std::fs::remove_file(part)?;
            }
        }
    }
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: "job_x".into(),
            file_name: "f.jsonl".into(),
            path: "processing/x".into(),
            size_bytes: 1,
            sha256: None,
            request_count: Some(2),
            endpoint: None,
            model: None,
            completion_window: "24h".into(),
            deadline_at: "2026-11-22T12:00:00.000Z".into(),
            metadata: "{}".into(),
            output_expires_after: None,
            state: JobState::Running,
            reason_code: None,
            reason: None,
            reason_line: None,
            attempts: 1,
            cancel_requested_at: None,
            cancel_reason: None,
            results_dir: None,
            created_at: "t".into(),
            updated_at: "t".into(),
            finished_at: None,
        }
    }

    fn sub(
        part: i64,
        attempt: i64,
        state: SubmissionState,
        status: Option<BatchStatus>,
    ) -> Submission {
        Submission {
            id: part * 10 + attempt,
            job_id: "job_x".into(),
            part,
            part_start: 0,
            part_end: 1,
            part_requests: 1,
            attempt,
            state,
            not_before: None,
            outcome_unknown_at: None,
            resent_at: None,
            remote_id: Some(format!("batch_{part}_{attempt}")),
            input_file_id: None,
            status,
            request_total: None,
            request_completed: None,
            request_failed: None,
            remote_created_at: None,
            in_progress_at: None,
            expires_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            output_file_id: None,
            error_file_id: None,
            errors: Some(r#"{"object":"list","data":[{"code":"invalid_json_line","message":"bad","line":3}]}"#.into()),
            raw: None,
            next_poll_at: None,
            last_polled_at: None,
            cancel_requested_at: None,
            cancel_sent_at: None,
            last_error: None,
            results_missing: None,
            collect_failing_since: None,
            results_unavailable: None,
            created_at: "t".into(),
            updated_at: "t".into(),
        }
    }

    use SubmissionState::Finished;

    #[test]
    fn only_the_latest_attempt_of_each_part_decides() {
        let rows = vec![
            sub(0, 1, Finished, Some(BatchStatus::Failed)),
            sub(0, 2, Finished, Some(BatchStatus::Completed)),
            sub(1, 1, Finished, Some(BatchStatus::Completed)),
        ];
        let last = latest(&rows);
        assert_eq!(last.iter().map(|s| s.attempt).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(outcome(&job(), &last), (JobState::Completed, None));
    }

    #[test]
    fn each_ending_has_its_state_and_code() {
        let completed = sub(0, 1, Finished, Some(BatchStatus::Completed));
        let failed = sub(1, 1, Finished, Some(BatchStatus::Failed));
        let (state, why) = outcome(&job(), &[&completed, &failed]);
        assert_eq!(state, JobState::Failed);
        let why = why.unwrap();
        assert_eq!(why.code, "invalid_json_line");
        assert!(why.message.contains("line 3: bad"), "{}", why.message);

        let expired = sub(0, 1, Finished, Some(BatchStatus::Expired));
        assert_eq!(outcome(&job(), &[&expired]).0, JobState::Expired);
        let lost = sub(0, 1, SubmissionState::Lost, Some(BatchStatus::InProgress));
        assert_eq!(outcome(&job(), &[&lost]).1.unwrap().code, "batch_lost");

        let mut cancelled_job = job();
        cancelled_job.cancel_requested_at = Some("t".into());
        cancelled_job.cancel_reason = Some("deadline".into());
        let partial = sub(0, 1, Finished, Some(BatchStatus::Cancelled));
        let (state, why) = outcome(&cancelled_job, &[&partial]);
        assert_eq!(
            (state, why.unwrap().code.as_str()),
            (JobState::Cancelled, "deadline")
        );
        let mut gone = sub(1, 1, Finished, Some(BatchStatus::Completed));
        gone.remote_id = Some("batch_gone".into());
        gone.results_missing = Some("the output file file_x no longer exists".into());
        // A local error left from an earlier step says nothing about the results.
        let mut stale = sub(2, 1, Finished, Some(BatchStatus::Completed));
        stale.last_error = Some("HTTP 500 while polling".into());
        assert_eq!(
            outcome(&job(), &[&completed, &stale]),
            (JobState::Completed, None)
        );
        let (state, why) = outcome(&job(), &[&completed, &gone]);
        let why = why.unwrap();
        assert_eq!(
            (state, why.code.as_str()),
            (JobState::Failed, "results_missing")
        );
        assert_eq!(
            why.message,
            "batch batch_gone completed, but the output file file_x no longer exists; the \
             results that remain are kept"
        );

        // Results given up on fail the job, however its batch ended.
        let mut unavailable = sub(3, 1, Finished, Some(BatchStatus::Completed));
        unavailable.results_unavailable = Some("the output file f could not be downloaded".into());
        let (state, why) = outcome(&cancelled_job, &[&completed, &unavailable]);
        let why = why.unwrap();
        assert_eq!(
            (state, why.code.as_str()),
            (JobState::Failed, "results_unavailable")
        );
        assert!(
            why.message
                .contains("the output file f could not be downloaded"),
            "{}",
            why.message
        );

        // A batch that completed before the cancel took effect still completes the job.
        assert_eq!(
            outcome(&cancelled_job, &[&completed]).0,
            JobState::Completed
        );
    }

    #[test]
    fn merging_joins_parts_line_by_line_and_can_be_repeated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b1.output.jsonl"), "{\"a\":1}\n").unwrap();
        std::fs::write(dir.path().join("b2.output.jsonl"), "{\"b\":2}").unwrap();
        std::fs::write(dir.path().join("b3.output.jsonl"), "{\"c\":3}\n").unwrap();
        let ids = ["b1".to_string(), "b2".to_string(), "b3".to_string()];
        assert_eq!(
            merge(dir.path(), &ids, "output").unwrap().as_deref(),
            Some("output.jsonl")
        );
        let merged = std::fs::read_to_string(dir.path().join("output.jsonl")).unwrap();
        assert_eq!(merged, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
        assert_eq!(
            merge(dir.path(), &ids, "output").unwrap().as_deref(),
            Some("output.jsonl")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("output.jsonl")).unwrap(),
            merged
        );
        assert_eq!(merge(dir.path(), &ids, "errors").unwrap(), None);
        // A crash while the parts were being removed: the merged file is kept as it is.
        std::fs::write(dir.path().join("b3.output.jsonl"), "{\"c\":3}\n").unwrap();
        assert_eq!(
            merge(dir.path(), &ids, "output").unwrap().as_deref(),
            Some("output.jsonl")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("output.jsonl")).unwrap(),
            merged
        );
        assert!(!dir.path().join("b3.output.jsonl").exists());
    }
}
