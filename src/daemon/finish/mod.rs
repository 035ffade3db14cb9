//! Finishing a job, once every submission is done with: its outcome, its results merged
//! (`output.jsonl`, `errors.jsonl`), `manifest.json`, its final state, and its file's last move
//! from processing/ to done/ or failed/ (with a reason file, [`file::move_on`]). The final state
//! is committed before the file moves; the destination is recorded before anything moves; every
//! step can be repeated after a crash, and the sweep of processing/
//! ([`crate::daemon::intake::recover`]) finishes a move a crash or an error interrupted.

pub mod collect;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::daemon::ctx::Ctx;
use crate::daemon::file;
use crate::daemon::housekeeping::notifications;
use crate::daemon::housekeeping::resubmit::{self, Only};
use crate::failpoint;
use crate::model::{BatchStatus, JobState, SubmissionState};
use crate::queue;
use crate::queue::manifest::{self, Counts};
use crate::store::batches::Submission;
use crate::store::jobs::{Job, Why};
use crate::store::ops::finish::{Ending, Resubmit};
use crate::store::prelude::*;

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

/// How a job ends, given the latest attempt of each of its parts and whether any of their
/// results are on disk (`kept`): a job that ended early says whether it left any.
pub fn outcome(job: &Job, latest: &[&Submission], kept: bool) -> (JobState, Option<Why>) {
    let status = |s: &Submission| s.status.clone();
    let partial = if kept {
        "partial results kept"
    } else {
        "no results to keep"
    };
    // Results that could not be downloaded fail the job, however its batches ended.
    if let Some((s, why)) = latest
        .iter()
        .find_map(|s| Some((s, s.results_unavailable.as_deref()?)))
    {
        let message = format!(
            "batch {} ended ({}), but {why}; {partial}",
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
        // Completed on the service, but not one request succeeded: a failed job.
        let (succeeded, failed) = latest.iter().fold((0, 0), |(ok, bad), s| {
            (
                ok + s.request_completed.unwrap_or(0),
                bad + s.request_failed.unwrap_or(0),
            )
        });
        if succeeded == 0 && failed > 0 {
            let errors = match kept {
                true => "their errors are kept (errors.jsonl)",
                false => "no results to keep",
            };
            let message = format!("every request failed ({failed} of {failed}); {errors}");
            return (
                JobState::Failed,
                Some(Why::new("all_requests_failed", message)),
            );
        }
        return (JobState::Completed, None);
    }
    if let Some(reason) = &job
        .cancel_requested_at
        .as_ref()
        .and(job.cancel_reason.as_ref())
    {
        let mut message = match reason.as_str() {
            "deadline" => format!("cancelled at its deadline, {}", job.deadline_at),
            "operator" => "cancelled by an operator (batchwatch cancel)".to_owned(),
            other => format!("cancelled ({other})"),
        };
        if let Some(s) = latest.iter().find(|s| s.state == SubmissionState::Lost) {
            message.push_str(&format!(
                "; batch {} vanished from the service before it ended",
                s.remote_id.as_deref().unwrap_or("?")
            ));
        }
        message.push_str(&format!("; {partial}"));
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
            "batch {} expired before it finished (completion window {}); {partial}",
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
        let mut message = format!(
            "batch {} failed: {message}",
            s.remote_id.as_deref().unwrap_or("?")
        );
        if let Some(hint) = code.as_deref().and_then(crate::daemon::file::limit_hint) {
            // The service's limit is below the one configured.
            message.push_str(&format!("; {hint}"));
        }
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
            "batch {} was cancelled outside batchwatch; {partial}",
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

/// How a job ends whose file changed after it was sent: a job that would complete fails with
/// `file_changed` (its results answer a file that is no longer the one in the queue); any other
/// ending keeps its state and code, and its reason says so too.
pub fn with_file_change(
    state: JobState,
    why: Option<Why>,
    change: &str,
) -> (JobState, Option<Why>) {
    let said = format!(
        "the file changed after it was submitted ({change}); the results answer the file as it \
         was submitted"
    );
    match why {
        Some(mut why) => {
            why.message = format!("{}; {said}", why.message);
            (state, Some(why))
        }
        None => (JobState::Failed, Some(Why::new("file_changed", said))),
    }
}

/// Whether a job that ends as `state` for `why` has its failed requests worth retrying sent
/// again (`batch.resubmit_failed`): one that completed, or failed because every request did.
/// Not one cancelled (its deadline passed), expired (`batch.resubmit_expired`) or failed for
/// anything else (its results are not all there, or its file changed).
fn retries_failures(state: JobState, why: Option<&Why>) -> bool {
    match state {
        JobState::Completed => true,
        JobState::Failed => why.is_some_and(|w| w.code == "all_requests_failed"),
        _ => false,
    }
}

/// Whether the results in `dir` hold a request that failed for a reason worth retrying.
async fn failed_worth_retrying(dir: &Path) -> anyhow::Result<bool> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || resubmit::any_transient(&dir)).await?
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

/// Finishes a job whose submissions are all done with: results, final state, file move.
pub async fn finish(ctx: Ctx, job_id: String) -> anyhow::Result<()> {
    let Some(job) = ctx.store.job(&job_id).await? else {
        return Ok(());
    };
    if job.state.is_terminal() {
        return Ok(());
    }
    let rows = ctx.store.submissions_of(&job_id).await?;
    let used = ctx.store.usage_of(&job_id).await?;
    let job_cost = ctx.store.job_costs(&[&job_id]).await?.pop();
    let last = latest(&rows);
    let now = ctx.now();

    let dir = ctx.queue.results_dir(&job_id);
    let created_any = rows.iter().any(|r| r.remote_id.is_some());
    let merged = if created_any {
        let files: Vec<ResultFiles> = last.iter().filter_map(|r| ResultFiles::of(r)).collect();
        let merge_dir = dir.clone();
        Some(tokio::task::spawn_blocking(move || merge_results(&merge_dir, &files)).await??)
    } else {
        None
    };
    let kept = merged
        .as_ref()
        .is_some_and(|m| m.output.is_some() || m.errors.is_some());
    let (state, why) = outcome(&job, &last, kept);
    let (state, why) = match file::changed_since_sent(&ctx, &job, &rows).await? {
        Some(change) => with_file_change(state, why, &change),
        None => (state, why),
    };
    let parent_job_id = ctx.store.parent_of(&job.id).await?;
    let results_dir = if let Some(merged) = &merged {
        let manifest = manifest::Manifest {
            job_id: &job.id,
            file: &job.file_name,
            state,
            reason_code: why.as_ref().map(|w| w.code.as_str()),
            reason: why.as_ref().map(|w| w.message.as_str()),
            sha256: job.sha256.as_deref(),
            endpoint: job.endpoint.as_deref(),
            model: job.model.as_deref(),
            requests: job.request_count,
            request_counts: counts(&last),
            usage: job_cost.as_ref(),
            parent_job_id: parent_job_id.clone(),
            output_file: merged.output.clone(),
            error_file: merged.errors.clone(),
            batches: rows
                .iter()
                .map(|r| manifest::Batch {
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
                    upload_id: r.upload_id.as_deref(),
                    output_id: r.output_id.as_deref(),
                    error_output_id: r.error_output_id.as_deref(),
                    last_error: r.last_error.as_deref(),
                    results_missing: r.results_missing.as_deref(),
                    results_unavailable: r.results_unavailable.as_deref(),
                    usage: used.iter().find(|u| u.batch_id == r.id),
                })
                .collect(),
            finished_at: now.clone(),
        };
        queue::write_atomically(
            &dir.join(queue::MANIFEST_FILE),
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
    let on_disk = merged.as_ref().map_or(&[][..], |m| &m.on_disk[..]);
    let resubmit = match state {
        JobState::Expired => Some(Resubmit {
            only: Only::Expired.as_str(),
            at_most: i64::from(ctx.settings.batch.resubmit_expired),
        }),
        _ if ctx.settings.batch.resubmit_failed > 0
            && retries_failures(state, why.as_ref())
            && failed_worth_retrying(&dir).await? =>
        {
            Some(Resubmit {
                only: Only::Transient.as_str(),
                at_most: i64::from(ctx.settings.batch.resubmit_failed),
            })
        }
        _ => None,
    };
    let notify = match notifications::on_end(state).filter(|on| ctx.notify.want(*on)) {
        Some(on) => {
            let retry_follows = match resubmit {
                // The rule `finish_job` plans the resubmission by.
                Some(r) => ctx.store.chain_depth(&job_id).await? < r.at_most,
                None => false,
            };
            let results = results_dir.as_deref().map(|r| ctx.queue.root().join(r));
            let inside =
                |name: Option<&str>| Some(results.as_ref()?.join(name?).display().to_string());
            let facts = notifications::JobFacts {
                request_counts: counts(&last),
                usage: job_cost.as_ref().map(notifications::Usage::of),
                cost_usd: job_cost.as_ref().and_then(|c| c.cost_usd),
                results_dir: results.as_ref().map(|d| d.display().to_string()),
                output_file: inside(merged.as_ref().and_then(|m| m.output.as_deref())),
                errors_file: inside(merged.as_ref().and_then(|m| m.errors.as_deref())),
                manifest_file: inside(Some(queue::MANIFEST_FILE)),
                parent_job_id: parent_job_id.clone(),
                retry_follows,
                finished_at: Some(now.clone()),
                ..notifications::JobFacts::of(&ctx.settings, &job, state, why.as_ref())
            };
            notifications::plan(&ctx, on, "end", &facts)?
        }
        None => Vec::new(),
    };
    let notify: Vec<_> = notify.iter().map(notifications::Planned::as_new).collect();
    let ending = Ending {
        job_id: &job_id,
        state,
        why: why.as_ref(),
        message: &message,
        results_dir: results_dir.as_deref(),
        delete_remote: ctx.settings.cleanup.remote_files.then_some(on_disk),
        resubmit,
        notify: &notify,
    };
    ctx.store.finish_job(&ctx.lease, &ending, &now).await?;
    ctx.metrics
        .job_finished(state, &job.created_at, ctx.clock.now());
    tracing::info!(job = %job_id, %state, results = results_dir.as_deref().unwrap_or("-"), "job finished");
    failpoint::hit("finish:after-state");
    file::move_on(&ctx, &job_id).await
}

/// The request counts of a job's latest attempts, summed.
fn counts(last: &[&Submission]) -> Counts {
    let sum = |f: fn(&Submission) -> Option<i64>| last.iter().filter_map(|r| f(r)).sum::<i64>();
    Counts {
        total: sum(|r| r.request_total),
        completed: sum(|r| r.request_completed),
        failed: sum(|r| r.request_failed),
    }
}

/// The result files of one batch, as the database records them.
struct ResultFiles {
    remote: String,
    output: Option<String>,
    errors: Option<String>,
}

impl ResultFiles {
    fn of(row: &Submission) -> Option<ResultFiles> {
        Some(ResultFiles {
            remote: row.remote_id.clone()?,
            output: row.output_id.clone(),
            errors: row.error_output_id.clone(),
        })
    }
}

/// A job's results directory once its batches' files are merged.
struct Merged {
    /// `output.jsonl` when there is one.
    output: Option<String>,
    /// `errors.jsonl` when there is one.
    errors: Option<String>,
    /// The result files (ids on the service) whose contents are on disk: the only ones remote
    /// clean-up may delete.
    on_disk: Vec<String>,
}

/// Merges the downloaded files of `batches` in the job's results directory `dir`, noting
/// first which of them are on disk.
fn merge_results(dir: &Path, batches: &[ResultFiles]) -> io::Result<Merged> {
    std::fs::create_dir_all(dir)?;
    let mut on_disk = Vec::new();
    for b in batches {
        for (kind, file_id) in [("output", &b.output), ("errors", &b.errors)] {
            if let Some(id) = file_id
                && collect::on_disk(dir, &b.remote, kind, id)
            {
                on_disk.push(id.clone());
            }
        }
    }
    let remote: Vec<String> = batches.iter().map(|b| b.remote.clone()).collect();
    Ok(Merged {
        output: merge(dir, &remote, "output")?,
        errors: merge(dir, &remote, "errors")?,
        on_disk,
    })
}

/// Merges the downloaded `BATCH.KIND.jsonl` files of `batches` into `KIND.jsonl`; returns its
/// name when there is one. Repeatable: the merged file is complete before any part is removed,
/// so once it exists the merge is done and leftover parts only need removing.
pub(crate) fn merge(dir: &Path, batches: &[String], kind: &str) -> io::Result<Option<String>> {
    let name = format!("{kind}.jsonl");
    let target = dir.join(&name);
    let parts: Vec<PathBuf> = batches
        .iter()
        .map(|b| dir.join(collect::part_name(b, kind)))
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
    use crate::store::fixtures::{job, submission};

    fn cancelled_at_deadline() -> Job {
        Job {
            cancel_requested_at: Some("t".into()),
            cancel_reason: Some("deadline".into()),
            ..job()
        }
    }

    fn sub(
        part: i64,
        attempt: i64,
        state: SubmissionState,
        status: Option<BatchStatus>,
    ) -> Submission {
        Submission {
            state,
            status,
            remote_id: Some(format!("batch_{part}_{attempt}")),
            errors: Some(r#"{"object":"list","data":[{"code":"invalid_json_line","message":"bad","line":3}]}"#.into()),
            ..submission(part, attempt)
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
        assert_eq!(outcome(&job(), &last, true), (JobState::Completed, None));
    }

    #[test]
    fn a_completed_job_whose_every_request_failed_is_failed_and_one_success_completes_it() {
        let counted = |part, completed, failed| Submission {
            request_total: Some(completed + failed),
            request_completed: Some(completed),
            request_failed: Some(failed),
            ..sub(part, 1, Finished, Some(BatchStatus::Completed))
        };
        let (all_failed, more_failed) = (counted(0, 0, 5), counted(1, 0, 3));
        let (state, why) = outcome(&job(), &[&all_failed, &more_failed], true);
        let why = why.unwrap();
        assert_eq!(
            (state, why.code.as_str()),
            (JobState::Failed, "all_requests_failed")
        );
        assert_eq!(
            why.message,
            "every request failed (8 of 8); their errors are kept (errors.jsonl)"
        );
        let one_done = counted(2, 1, 4);
        assert_eq!(
            outcome(&job(), &[&all_failed, &one_done], true),
            (JobState::Completed, None)
        );
        // No counts reported: nothing says every request failed.
        let uncounted = sub(0, 1, Finished, Some(BatchStatus::Completed));
        assert_eq!(outcome(&job(), &[&uncounted], true).0, JobState::Completed);
    }

    #[test]
    fn each_ending_has_its_state_and_code() {
        let completed = sub(0, 1, Finished, Some(BatchStatus::Completed));
        let failed = sub(1, 1, Finished, Some(BatchStatus::Failed));
        let (state, why) = outcome(&job(), &[&completed, &failed], true);
        assert_eq!(state, JobState::Failed);
        let why = why.unwrap();
        assert_eq!(why.code, "invalid_json_line");
        assert!(why.message.contains("line 3: bad"), "{}", why.message);

        let expired = sub(0, 1, Finished, Some(BatchStatus::Expired));
        assert_eq!(outcome(&job(), &[&expired], true).0, JobState::Expired);
        let lost = sub(0, 1, SubmissionState::Lost, Some(BatchStatus::InProgress));
        assert_eq!(
            outcome(&job(), &[&lost], true).1.unwrap().code,
            "batch_lost"
        );

        let cancelled_job = cancelled_at_deadline();
        let partial = sub(0, 1, Finished, Some(BatchStatus::Cancelled));
        let (state, why) = outcome(&cancelled_job, &[&partial], true);
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
            outcome(&job(), &[&completed, &stale], true),
            (JobState::Completed, None)
        );
        let (state, why) = outcome(&job(), &[&completed, &gone], true);
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
        let (state, why) = outcome(&cancelled_job, &[&completed, &unavailable], true);
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
            outcome(&cancelled_job, &[&completed], true).0,
            JobState::Completed
        );
    }

    #[test]
    fn a_job_that_ended_early_says_partial_results_are_kept_only_when_there_are_some() {
        let cancelled_job = cancelled_at_deadline();
        // Its batch vanished (404) while cancelling: nothing was ever downloaded.
        let vanished = sub(0, 1, SubmissionState::Lost, Some(BatchStatus::Cancelling));
        let (state, why) = outcome(&cancelled_job, &[&vanished], false);
        let why = why.unwrap();
        assert_eq!(
            (state, why.code.as_str()),
            (JobState::Cancelled, "deadline")
        );
        assert_eq!(
            why.message,
            "cancelled at its deadline, 2026-11-22T12:00:00.000Z; batch batch_0_1 vanished \
             from the service before it ended; no results to keep"
        );
        let partial = sub(0, 1, Finished, Some(BatchStatus::Cancelled));
        let (_, why) = outcome(&cancelled_job, &[&partial], true);
        assert!(
            why.unwrap().message.ends_with("; partial results kept"),
            "with results on disk"
        );
        let expired = sub(0, 1, Finished, Some(BatchStatus::Expired));
        for (kept, end) in [
            (true, "; partial results kept"),
            (false, "; no results to keep"),
        ] {
            let message = outcome(&job(), &[&expired], kept).1.unwrap().message;
            assert!(message.ends_with(end), "{message}");
        }
        let mut unavailable = sub(0, 1, Finished, Some(BatchStatus::Completed));
        unavailable.results_unavailable = Some("the output file f could not be downloaded".into());
        let message = outcome(&job(), &[&unavailable], false).1.unwrap().message;
        assert!(message.ends_with("; no results to keep"), "{message}");
    }

    #[test]
    fn a_file_changed_after_it_was_sent_fails_a_completed_job_and_is_named_in_any_other_ending() {
        let change = "3 bytes then, 12 now";
        let (state, why) = with_file_change(JobState::Completed, None, change);
        let why = why.unwrap();
        assert_eq!(
            (state, why.code.as_str()),
            (JobState::Failed, "file_changed")
        );
        assert_eq!(
            why.message,
            "the file changed after it was submitted (3 bytes then, 12 now); the results \
             answer the file as it was submitted"
        );

        let expired = Why::new("expired", "batch b expired before it finished");
        let (state, why) = with_file_change(JobState::Expired, Some(expired), change);
        let why = why.unwrap();
        assert_eq!((state, why.code.as_str()), (JobState::Expired, "expired"));
        assert_eq!(
            why.message,
            "batch b expired before it finished; the file changed after it was submitted \
             (3 bytes then, 12 now); the results answer the file as it was submitted"
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
