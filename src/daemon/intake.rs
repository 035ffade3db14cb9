//! From incoming/ to a queued job: scan, claim, check, or reject with a reason.
//!
//! Claim order: rename into `processing/JOBID/` (the file now carries its job id), then insert
//! the job row. A crash between the two leaves a job directory without a row; the sweep
//! ([`super::recover`]) adopts it under that id. A rejected job's file moves to failed/ with
//! its reason ([`super::finish::move_on`]).
//!
//! A writer may keep its file open and pause longer than `queue.settle_time`, so a claimed
//! file can still grow. Its size, modification time and inode are recorded at the claim, and
//! compared after validation (with what validation read, too) and before each upload. While
//! nothing of the job has reached the service, a change sends it back to `validating` (an event
//! says so): it waits until the file held still for `queue.settle_time` (`validate_after`) and
//! is validated anew. Once a part was sent, a change can no longer be undone: the job fails,
//! naming it.

use std::ffi::OsStr;
use std::path::Path;

use anyhow::Context;
use futures_util::StreamExt;

use super::ctx::Ctx;
use super::finish;
use super::schedule::CLAIM_RETRY;
use crate::batchfile::{self, Expect, Limits, Violation};
use crate::clock;
use crate::failpoint;
use crate::model::{JobId, JobState};
use crate::queue::scan::{Kind, Scanner};
use crate::queue::sidecar::{self, JobOptions};
use crate::queue::{self, FileLook, Queue};
use crate::store::batches::{self, NewSubmission};
use crate::store::jobs::{self, Job, NewJob, Why};

/// Wakes the loop early when incoming/ changes. Only a hint: the periodic scan is what counts,
/// so when inotify is not available it simply never fires.
pub struct Watcher {
    events: Option<inotify::EventStream<Vec<u8>>>,
}

impl Watcher {
    pub fn new(queue: &Queue) -> Watcher {
        let events = (|| {
            let inotify = inotify::Inotify::init()?;
            inotify.watches().add(
                &queue.incoming,
                inotify::WatchMask::CLOSE_WRITE
                    | inotify::WatchMask::MOVED_TO
                    | inotify::WatchMask::CREATE,
            )?;
            inotify.into_event_stream(vec![0u8; 4096])
        })();
        match events {
            Ok(events) => Watcher {
                events: Some(events),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no inotify; incoming/ is scanned every queue.scan_interval only");
                Watcher { events: None }
            }
        }
    }

    /// Resolves when incoming/ changed (never, without inotify).
    pub async fn changed(&mut self) {
        match &mut self.events {
            Some(events) => {
                if events.next().await.is_none() {
                    self.events = None;
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Scans incoming/ and claims what settled (each claimed job waits in `validating` for the
/// loop to validate it). Returns whether some entries are still settling (so the next scan
/// should come soon).
pub async fn scan_and_claim(ctx: &Ctx, scanner: &mut Scanner) -> anyhow::Result<bool> {
    let ready = scanner
        .scan(&ctx.queue.incoming, ctx.clock.now())
        .context("scanning incoming/")?;
    for entry in ready {
        scanner.forget(&entry.name);
        let job = JobId::generate(u64::try_from(ctx.clock.now().as_millisecond()).unwrap_or(0));
        let path = match ctx.queue.claim(&entry.name, &job) {
            Ok(path) => path,
            // Gone since the scan (the writer moved it away): nothing to do.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(
                    file = %entry.name.to_string_lossy(),
                    error = %e,
                    "cannot move this entry out of incoming/ (a directory must be writable by batchwatch to be moved); it stays there and is tried again in a minute"
                );
                scanner.hold(&entry.name, clock::add(ctx.clock.now(), CLAIM_RETRY));
                continue;
            }
        };
        failpoint::hit("claim:after-rename");
        let sidecar_moved = ctx.queue.adopt_sidecar(&entry.name, &job);
        register(
            ctx,
            &job,
            &entry.name,
            &path,
            entry.kind,
            sidecar_moved.err(),
        )
        .await?;
    }
    Ok(scanner.pending())
}

/// Records a claimed file as a job, with its sidecar's options. Rejects at once what cannot be
/// a job; returns true when the file goes on to validation.
pub async fn register(
    ctx: &Ctx,
    job: &JobId,
    name: &OsStr,
    path: &Path,
    kind: Kind,
    sidecar_not_moved: Option<std::io::Error>,
) -> anyhow::Result<bool> {
    let claimed_at = ctx.clock.now();
    let defaults = || sidecar::defaults(&ctx.settings.batch, claimed_at);
    let read = match sidecar_not_moved {
        Some(e) => Err(sidecar::SidecarError {
            key: None,
            message: format!("cannot be moved with its file: {e}"),
        }),
        // A name too long for a sidecar has none.
        None => queue::sidecar_path(path).map_or(Ok(None), |p| sidecar::read(&p)),
    };
    let (options, sidecar_error) = match read {
        Ok(Some(text)) => match sidecar::parse(&text, &ctx.settings.batch, claimed_at) {
            Ok(options) => (options, None),
            Err(e) => (defaults(), Some(e)),
        },
        Ok(None) => (defaults(), None),
        Err(e) => (defaults(), Some(e)),
    };
    let (bytes, look) = match kind {
        Kind::File { bytes } => (
            bytes,
            std::fs::symlink_metadata(path)
                .ok()
                .map(|m| FileLook::of(&m)),
        ),
        Kind::Unfit { .. } => (0, None),
    };
    insert_job(ctx, job, name, path, bytes, look.as_ref(), &options).await?;

    let max_bytes = ctx.settings.batch.max_bytes.0;
    let why = match kind {
        Kind::Unfit { code, message } => Some(Why::new(code, message)),
        Kind::File { .. } if sidecar_error.is_some() => {
            let e = sidecar_error.expect("checked");
            Some(Why::new(
                "invalid_sidecar",
                format!("{}: {e}", queue::sidecar_name(name).to_string_lossy()),
            ))
        }
        Kind::File { bytes } if bytes > max_bytes && !ctx.settings.batch.split_oversized => {
            Some(Why::new(
                batchfile::Rule::TooLarge.code(),
                format!(
                    "the file has {bytes} bytes, over the limit of {max_bytes} (batch.max_bytes)"
                ),
            ))
        }
        Kind::File { .. } => None,
    };
    match why {
        Some(why) => {
            reject(ctx, job.as_str(), &why).await?;
            Ok(false)
        }
        None => Ok(true),
    }
}

async fn insert_job(
    ctx: &Ctx,
    job: &JobId,
    name: &OsStr,
    path: &Path,
    bytes: u64,
    look: Option<&FileLook>,
    o: &JobOptions,
) -> anyhow::Result<()> {
    let now = ctx.now();
    let metadata = serde_json::to_string(&o.metadata)?;
    let mut tx = ctx.store.begin().await?;
    jobs::insert(
        &mut tx,
        &NewJob {
            id: job.as_str(),
            file_name: &name.to_string_lossy(),
            path: &ctx.queue.relative(path),
            size_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            endpoint: o.endpoint.as_deref(),
            completion_window: &o.completion_window,
            deadline_at: &clock::format(o.deadline_at),
            metadata: &metadata,
            output_expires_after: o.output_expires_after.and_then(|s| i64::try_from(s).ok()),
        },
        &now,
    )
    .await?;
    if let Some(look) = look {
        jobs::set_file_look(&mut tx, job.as_str(), look, &now).await?;
    }
    if let Some(parent) = &o.parent_job {
        crate::store::chain::link(&mut tx, job.as_str(), parent, &now).await?;
    }
    tx.commit().await?;
    tracing::info!(job = %job, file = %name.to_string_lossy(), "claimed");
    Ok(())
}

/// Checks a claimed file against the rules, in one streaming pass off the async threads; a
/// valid file becomes one queued submission per part. A file that changed since its claim, or
/// while it was read, is not judged: it waits to hold still and is validated again.
pub async fn validate(ctx: Ctx, job_id: String) -> anyhow::Result<()> {
    let Some(job) = jobs::get(ctx.store.reader(), &job_id).await? else {
        return Ok(());
    };
    if job.state != JobState::Validating {
        return Ok(());
    }
    let recorded = jobs::recorded_file(ctx.store.reader(), &job_id)
        .await?
        .context("a job vanished")?;
    if recorded
        .validate_after
        .as_deref()
        .and_then(clock::parse)
        .is_some_and(|after| ctx.clock.now() < after)
    {
        return Ok(());
    }
    let path = ctx.queue.root().join(&job.path);
    let batch = &ctx.settings.batch;
    let limits = Limits {
        max_requests: batch.max_requests,
        max_bytes: batch.max_bytes.0,
    };
    let split = batch.split_oversized;
    let endpoint = job.endpoint.clone();
    let checked = tokio::task::spawn_blocking(move || -> Result<Checked, Violation> {
        let unreadable = |e: std::io::Error| Violation {
            rule: batchfile::Rule::Unreadable,
            line: None,
            message: format!("the file cannot be read: {e}"),
        };
        let file = std::fs::File::open(&path).map_err(unreadable)?;
        let outcome = batchfile::validate(
            &file,
            Expect {
                endpoint: endpoint.as_deref(),
                limits,
                split,
            },
        );
        let after = FileLook::of(&file.metadata().map_err(unreadable)?);
        Ok(Checked { outcome, after })
    })
    .await?;
    let checked = match checked {
        Ok(checked) => checked,
        Err(v) => return reject(&ctx, &job_id, &why_of(&v)).await,
    };
    // Judged only when the file read is the file claimed, whole.
    let read = checked.outcome.as_ref().ok().map(|s| s.bytes);
    let change = recorded.change_to(&checked.after).or_else(|| {
        read.filter(|&r| r != checked.after.bytes)
            .map(|r| format!("{r} bytes read, {} there", checked.after.bytes))
    });
    if let Some(change) = change {
        wait_for_file(&ctx, &job_id, &checked.after, None, &change).await?;
        return Ok(());
    }
    let summary = match checked.outcome {
        Ok(summary) => summary,
        Err(v) => return reject(&ctx, &job_id, &why_of(&v)).await,
    };

    let now = ctx.now();
    let mut tx = ctx.store.begin().await?;
    let requests = i64::try_from(summary.requests)?;
    jobs::record_validation(
        &mut tx,
        &job_id,
        &summary.sha256,
        requests,
        &summary.endpoint,
        &summary.model,
        &now,
    )
    .await?;
    for (i, part) in summary.parts.iter().enumerate() {
        batches::insert(
            &mut tx,
            &NewSubmission {
                job_id: &job_id,
                part: i64::try_from(i)?,
                part_start: i64::try_from(part.start)?,
                part_end: i64::try_from(part.end)?,
                part_requests: i64::try_from(part.requests)?,
                attempt: 1,
                not_before: None,
            },
            &now,
        )
        .await?;
    }
    jobs::set_state(
        &mut tx,
        &job_id,
        JobState::Queued,
        None,
        &valid_message(&summary),
        &now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(job = %job_id, requests, model = %summary.model, parts = summary.parts.len(), "valid; queued");
    Ok(())
}

fn valid_message(s: &batchfile::Summary) -> String {
    let parts = if s.parts.len() > 1 {
        format!(", split into {} batches", s.parts.len())
    } else {
        String::new()
    };
    format!(
        "valid: {} requests for {} on {}{parts}",
        s.requests, s.model, s.endpoint
    )
}

/// A validation pass over a file, and how the file looked after it.
struct Checked {
    outcome: Result<batchfile::Summary, Violation>,
    after: FileLook,
}

/// The reason a broken rule gives a rejected job.
fn why_of(v: &Violation) -> Why {
    Why {
        code: v.rule.code().to_owned(),
        message: v.to_string(),
        line: v.line.and_then(|l| i64::try_from(l).ok()),
    }
}

/// How the job's file differs from what was recorded at its claim (it is gone, or a writer
/// changed it), with how it looks now; `None` when it is as claimed.
pub async fn file_changed(
    ctx: &Ctx,
    job: &Job,
) -> anyhow::Result<Option<(Option<FileLook>, String)>> {
    let recorded = jobs::recorded_file(ctx.store.reader(), &job.id)
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
    let mut tx = ctx.store.begin().await?;
    let sent_back = jobs::validate_again(
        &mut tx,
        job_id,
        look,
        sending,
        &after,
        &message,
        &clock::format(now_ts),
    )
    .await?;
    if sent_back {
        tx.commit().await?;
        tracing::warn!(job = %job_id, change, "the file changed after it was claimed; validating it again once it holds still");
    }
    Ok(sent_back)
}

/// Rejects a job: records why, then moves its file to failed/ with a reason file (or leaves
/// that to the next sweep when it cannot be moved now).
pub async fn reject(ctx: &Ctx, job_id: &str, why: &Why) -> anyhow::Result<()> {
    let now = ctx.now();
    let mut tx = ctx.store.begin().await?;
    jobs::set_state(
        &mut tx,
        job_id,
        JobState::Rejected,
        Some(why),
        &format!("rejected: {}", why.message),
        &now,
    )
    .await?;
    let claimed_at = jobs::get(&mut *tx, job_id).await?.map(|j| j.created_at);
    tx.commit().await?;
    if let Some(at) = claimed_at {
        ctx.metrics
            .job_finished(JobState::Rejected, &at, ctx.clock.now());
    }
    tracing::warn!(job = %job_id, rule = %why.code, reason = %why.message, "rejected");
    if let Err(e) = finish::move_on(ctx, job_id).await {
        tracing::warn!(job = %job_id, error = format!("{e:#}"), "cannot move the rejected file on yet; trying again at the next scan");
    }
    Ok(())
}
