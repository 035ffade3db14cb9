//! From incoming/ to a queued job: scan, claim, check, or reject with a reason.
//!
//! Claim order: rename into `processing/JOBID/` (the file now carries its job id), then insert the
//! job row. A crash between the two leaves a job directory without a row; the sweep
//! ([`crate::daemon::intake::recover`]) adopts it under that id. A rejected job's file moves to
//! failed/ with its reason ([`crate::daemon::file::move_on`]).
//!
//! A file is claimed once it held still for `queue.settle_time` and no process has it open
//! for writing ([`crate::queue::writers`]: a read lease, or the [`Watcher`]'s record).
//! It can still change after that: a writer that opens it again, or one that could not be
//! seen. So its size, modification time and inode are recorded at the claim, and compared
//! after validation (with what validation read, too) and before each upload. While nothing of
//! the job has reached the service, a change sends it back to `validating` (an event says so):
//! it waits until the file held still for `queue.settle_time` (`validate_after`) and is
//! validated anew. Once a part was sent, a change can no longer be undone: before an upload the
//! job fails, naming it; at the job's end ([`file::changed_since_sent`]) a job that would complete
//! fails with `file_changed`, and any other ending names the change in its reason.

pub mod recover;

use std::ffi::OsStr;
use std::path::Path;

use anyhow::Context;
use futures_util::{FutureExt, StreamExt};

use crate::batchfile::{self, Expect, Limits, Violation};
use crate::clock;
use crate::config::{Flavor, NotifyOn};
use crate::daemon::ctx::Ctx;
use crate::daemon::file;
use crate::daemon::housekeeping::notifications;
use crate::daemon::schedule::CLAIM_RETRY;
use crate::failpoint;
use crate::model::{JobId, JobState};
use crate::queue::scan::{Kind, Scanner};
use crate::queue::sidecar::{self, JobOptions};
use crate::queue::writers::{Event, WriteRecord};
use crate::queue::{self, FileLook, Queue};
use crate::store::jobs::{NewJob, Why};
use crate::store::ops::intake::{Part, Validated};
use crate::store::prelude::*;

/// inotify on incoming/: wakes the loop early when an entry may have become ready, and keeps
/// the record of writes and closes there ([`WriteRecord`]) that decides for the files whose
/// read lease cannot be taken. Without it (no inotify, or `queue.watch = false`) the periodic
/// scan still finds everything, but such files cannot be checked for writers.
pub struct Watcher {
    events: Option<inotify::EventStream<Vec<u8>>>,
    record: WriteRecord,
}

impl Watcher {
    /// Watches incoming/ when `enabled` (`queue.watch`) and inotify is available.
    pub fn new(queue: &Queue, enabled: bool) -> Watcher {
        let events = enabled.then(|| {
            use inotify::WatchMask as M;
            let inotify = inotify::Inotify::init()?;
            inotify.watches().add(
                &queue.incoming,
                M::CREATE | M::MODIFY | M::CLOSE_WRITE | M::MOVED_FROM | M::MOVED_TO | M::DELETE,
            )?;
            inotify.into_event_stream(vec![0u8; 4096])
        });
        let events = match events.transpose() {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "no inotify; incoming/ is scanned every queue.scan_interval only, and a file whose lease cannot be taken is not checked for writers");
                None
            }
        };
        Watcher {
            events,
            record: WriteRecord::default(),
        }
    }

    /// What inotify said of the writers of incoming/'s files, up to the last event taken.
    pub fn record(&self) -> &WriteRecord {
        &self.record
    }

    /// Resolves when incoming/ changed so that an entry may have become ready (never, without
    /// inotify). Every event until then goes into the record.
    pub async fn changed(&mut self) {
        loop {
            let Some(events) = &mut self.events else {
                return std::future::pending().await;
            };
            let next = events.next().await;
            if self.take(next) {
                return;
            }
        }
    }

    /// Takes every event queued now into the record, without waiting.
    pub fn drain(&mut self) {
        while let Some(events) = &mut self.events {
            match events.next().now_or_never() {
                Some(next) => {
                    self.take(next);
                }
                None => break,
            }
        }
    }

    /// Takes what the stream gave into the record; returns whether it may have made an entry
    /// ready. An error or the stream's end loses what inotify would have said from then on.
    fn take(&mut self, next: Option<std::io::Result<inotify::EventOwned>>) -> bool {
        let event = match next {
            Some(Ok(event)) => match event_of(event) {
                Some(event) => event,
                None => return false,
            },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "inotify failed; incoming/ is scanned every queue.scan_interval only from now on");
                self.events = None;
                Event::Lost
            }
            None => {
                self.events = None;
                Event::Lost
            }
        };
        self.record.apply(&event);
        event.may_ready()
    }
}

/// The record's view of an inotify event; `None` for one about a directory or about
/// incoming/ itself.
fn event_of(e: inotify::EventOwned) -> Option<Event> {
    use inotify::EventMask as M;
    if e.mask.intersects(M::Q_OVERFLOW | M::IGNORED) {
        return Some(Event::Lost);
    }
    if e.mask.contains(M::ISDIR) {
        return None;
    }
    let name = e.name?;
    let cookie = e.cookie;
    Some(if e.mask.contains(M::CREATE) {
        Event::Created(name)
    } else if e.mask.contains(M::MODIFY) {
        Event::Modified(name)
    } else if e.mask.contains(M::CLOSE_WRITE) {
        Event::ClosedWrite(name)
    } else if e.mask.contains(M::MOVED_FROM) {
        Event::MovedFrom { name, cookie }
    } else if e.mask.contains(M::MOVED_TO) {
        Event::MovedTo { name, cookie }
    } else if e.mask.contains(M::DELETE) {
        Event::Deleted(name)
    } else {
        return None;
    })
}

/// Scans incoming/ and claims what settled and has no writer (each claimed job waits in
/// `validating` for the loop to validate it). Returns whether some entries are still settling
/// or being written (so the next scan should come soon).
pub async fn scan_and_claim(
    ctx: &Ctx,
    scanner: &mut Scanner,
    watcher: &mut Watcher,
) -> anyhow::Result<bool> {
    // Every write and close up to now counts, not only those the loop happened to read.
    watcher.drain();
    let found = scanner
        .scan(&ctx.queue.incoming, ctx.clock.now(), watcher.record())
        .context("scanning incoming/")?;
    for name in &found.newly_open {
        tracing::info!(
            file = %name.to_string_lossy(),
            "held still, but a process still has it open for writing; it is claimed once closed"
        );
    }
    for notice in &found.notices {
        notice.log();
    }
    for entry in found.ready {
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
        if let Some(why) = &entry.unchecked {
            tracing::warn!(
                job = %job,
                file = %entry.name.to_string_lossy(),
                why,
                "claimed without knowing whether a process still writes to it: it held still for queue.settle_time; a change after the claim is reported"
            );
        }
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
        Err(e) => (defaults(), Some(vec![e])),
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
            let problems = sidecar_error.expect("checked");
            Some(Why::new(
                "invalid_sidecar",
                format!(
                    "{}: {}",
                    queue::sidecar_name(name).to_string_lossy(),
                    sidecar::describe(&problems)
                ),
            ))
        }
        Kind::File { bytes } if bytes > max_bytes && !ctx.settings.batch.split_oversized => {
            let code = batchfile::Rule::TooLarge.code();
            Some(Why::new(
                code,
                format!(
                    "the file has {bytes} bytes, over the limit of {max_bytes}; {}",
                    file::limit_hint(code).expect("a size limit")
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
    let new = NewJob {
        id: job.as_str(),
        file_name: &name.to_string_lossy(),
        path: &ctx.queue.relative(path),
        size_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        endpoint: o.endpoint.as_deref(),
        completion_window: &o.completion_window,
        deadline_at: &clock::format(o.deadline_at),
        metadata: &metadata,
        output_expires_after: o.output_expires_after.and_then(|s| i64::try_from(s).ok()),
        provider: ctx.settings.api.flavor.as_str(),
    };
    ctx.store
        .claim(&ctx.lease, &new, look, o.parent_job.as_deref(), &now)
        .await?;
    failpoint::hit("claim:after-record");
    tracing::info!(job = %job, file = %name.to_string_lossy(), "claimed");
    Ok(())
}

/// Checks a claimed file against the rules, in one streaming pass off the async threads; a
/// valid file becomes one queued submission per part. A file that changed since its claim, or
/// while it was read, is not judged: it waits to hold still and is validated again.
pub async fn validate(ctx: Ctx, job_id: String) -> anyhow::Result<()> {
    let Some(job) = ctx.store.job(&job_id).await? else {
        return Ok(());
    };
    if job.state != JobState::Validating {
        return Ok(());
    }
    let recorded = ctx
        .store
        .recorded_file(&job_id)
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
    // The lines are in the shape of the service they go to, within its limits too.
    let (format, limits) = match ctx.settings.api.flavor {
        Flavor::Anthropic => (
            batchfile::Format::Anthropic,
            limits.within(Limits::ANTHROPIC),
        ),
        Flavor::Openai | Flavor::Azure => (batchfile::Format::OpenAi, limits),
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
                format,
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
        file::wait_for_file(&ctx, &job_id, &checked.after, None, &change).await?;
        return Ok(());
    }
    let summary = match checked.outcome {
        Ok(summary) => summary,
        Err(v) => return reject(&ctx, &job_id, &why_of(&v)).await,
    };

    let now = ctx.now();
    let parts = summary
        .parts
        .iter()
        .map(|p| {
            Ok(Part {
                start: i64::try_from(p.start)?,
                end: i64::try_from(p.end)?,
                requests: i64::try_from(p.requests)?,
            })
        })
        .collect::<Result<Vec<_>, std::num::TryFromIntError>>()?;
    let valid = valid_message(&summary);
    // A cancel asked for while the file was checked holds: the job goes straight to
    // cancelling (the cancel step abandons its submissions), never shown as queued.
    let cancelling = format!("{valid}; a cancel was asked for: cancelling");
    let validated = Validated {
        sha256: &summary.sha256,
        requests: i64::try_from(summary.requests)?,
        endpoint: &summary.endpoint,
        model: &summary.model,
        parts: &parts,
        queued: &valid,
        cancelling: &cancelling,
    };
    let state = ctx
        .store
        .record_valid(&ctx.lease, &job_id, &validated, &now)
        .await?;
    tracing::info!(job = %job_id, requests = summary.requests, model = %summary.model, parts = summary.parts.len(), "valid; {state}");
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
    let code = v.rule.code();
    let message = match file::limit_hint(code) {
        Some(hint) => format!("{v}; {hint}"),
        None => v.to_string(),
    };
    Why {
        code: code.to_owned(),
        message,
        line: v.line.and_then(|l| i64::try_from(l).ok()),
    }
}

/// Rejects a job: records why, then moves its file to failed/ with a reason file (or leaves
/// that to the next sweep when it cannot be moved now).
pub async fn reject(ctx: &Ctx, job_id: &str, why: &Why) -> anyhow::Result<()> {
    let now = ctx.now();
    let wanted = ctx.notify.want(NotifyOn::Rejected);
    let job = match wanted {
        true => ctx.store.job(job_id).await?,
        false => None,
    };
    let notify = match job {
        Some(job) => {
            let facts = notifications::JobFacts {
                finished_at: Some(now.clone()),
                ..notifications::JobFacts::of(&ctx.settings, &job, JobState::Rejected, Some(why))
            };
            notifications::plan(ctx, NotifyOn::Rejected, "end", &facts)?
        }
        None => Vec::new(),
    };
    let notify: Vec<_> = notify.iter().map(notifications::Planned::as_new).collect();
    let claimed_at = ctx
        .store
        .reject(&ctx.lease, job_id, why, &notify, &now)
        .await?;
    if let Some(at) = claimed_at {
        ctx.metrics
            .job_finished(JobState::Rejected, &at, ctx.clock.now());
    }
    tracing::warn!(job = %job_id, rule = %why.code, reason = %why.message, "rejected");
    if let Err(e) = file::move_on(ctx, job_id).await {
        tracing::warn!(job = %job_id, error = format!("{e:#}"), "cannot move the rejected file on yet; trying again at the next scan");
    }
    Ok(())
}
