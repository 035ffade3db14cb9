//! Notifications (`[[notify]]`): telling a program or a URL that a job ended, or that one of
//! its batches is stuck, at least once, without losing any and without holding anything up.
//!
//! ```text
//!   job ends ──(same transaction)──▶ one row per [[notify]] entry that wants the event
//!                                      │ pending
//!                                      ▼
//!   delivery task (the leader's housekeeping, a few at a time, each under its timeout)
//!        ├── 2xx / exit status 0 ─────────────────────────▶ delivered
//!        ├── anything else: attempts + 1, tried again after 5 s, doubling up to 1 h
//!        │   (a 429's or 503's Retry-After when longer), until retry_for has passed
//!        └── still failing at retry_for, or its entry gone ─▶ abandoned (logged, counted)
//! ```
//!
//! * **Never lost**: the row is written in the transaction that ends the job
//!   ([`crate::store::Finish::finish_job`], [`crate::store::Intake::reject`]) before anything is
//!   sent; a stuck episode's row when the leader first sees the batch stuck, one per
//!   `(entry, job, batch, status, since)` whatever restarts come between. A kill -9 anywhere
//!   leaves the row pending, and the next start delivers it.
//! * **At least once**: a try whose outcome is not recorded (a crash after the receiver took
//!   it) is tried again. Every try carries the row's `webhook-id`, by which a receiver drops
//!   what it already has; the payload is the row's, byte for byte.
//! * **Never blocking**: each entry's deliveries run in a task of their own beside the loop,
//!   at most [`AT_ONCE`] at a time, each under the entry's `timeout`; a receiver that hangs
//!   holds up its own entry's deliveries until its timeout, never another entry's, never a
//!   poll. A stop does not wait for them ([`crate::daemon::Task::stops_at_once`]).
//! * **Signed**: a URL gets a POST of the event signed as Standard Webhooks specifies
//!   (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//!   "id.timestamp.body">` with the base64 secret after `whsec_`). A command runs without a
//!   shell, the event on its standard input and `BATCHWATCH_JOB_ID`, `BATCHWATCH_STATE`,
//!   `BATCHWATCH_EVENT`, `BATCHWATCH_RESULTS_DIR`, `BATCHWATCH_WEBHOOK_ID` in its environment;
//!   its output is logged, escaped, and its exit status recorded.
//!
//! The event is versioned ([`VERSION`]); README documents its JSON schema.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clock::{self, Timestamp};
use crate::config::{NotifyOn, NotifyVia, Settings};
use crate::daemon::ctx::Ctx;
use crate::daemon::notifiers::Target;
use crate::model::JobState;
use crate::printable;
use crate::queue::manifest::Counts;
use crate::store::jobs::{Job, Why};
use crate::store::notifications::{NewNotification, Notification, Tried};
use crate::store::prelude::*;
use crate::store::usage::JobCost;

/// The version of the event's schema: a field added keeps it, a field removed or changed in
/// meaning takes the next.
pub const VERSION: u32 = 1;

/// Deliveries of one entry under way at once.
pub const AT_ONCE: usize = 8;

/// Rows read per run of an entry's delivery task.
const PER_RUN: i64 = 64;

/// The first wait after a failed try; it doubles after each.
const RETRY_FIRST: Duration = Duration::from_secs(5);

/// The longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// The most of a command's output kept for the log, per stream.
const OUTPUT_KEPT: u64 = 4096;

/// What an event says of its job. Its JSON is the `data` of [`Event`]; README documents it.
#[derive(Debug, Clone, Serialize)]
pub struct JobFacts {
    pub job_id: String,
    pub file_name: String,
    /// The job's state: its final one for an end, the one it is in for `stuck`.
    pub state: JobState,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    /// `openai`, `azure` or `anthropic`: where the job ran.
    pub provider: String,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub requests: Option<i64>,
    pub request_counts: Counts,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
    /// Absolute paths, `None` when there is nothing there.
    pub results_dir: Option<String>,
    pub output_file: Option<String>,
    pub errors_file: Option<String>,
    pub manifest_file: Option<String>,
    pub parent_job_id: Option<String>,
    /// Whether a resubmission of its failed or expired requests follows (`batch.resubmit_*`).
    pub retry_follows: bool,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// For `stuck`: the batch, and how long it has been in its status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stuck: Option<Stuck>,
}

impl JobFacts {
    /// What the job's row tells, in `state` for `why`; the rest empty, for the caller to fill.
    pub fn of(settings: &Settings, job: &Job, state: JobState, why: Option<&Why>) -> JobFacts {
        JobFacts {
            job_id: job.id.clone(),
            file_name: job.file_name.clone(),
            state,
            reason_code: why.map(|w| w.code.clone()),
            reason: why.map(|w| w.message.clone()),
            // A job claimed before its provider was recorded ran on the one configured.
            provider: job
                .provider
                .clone()
                .unwrap_or_else(|| settings.api.flavor.as_str().to_owned()),
            endpoint: job.endpoint.clone(),
            model: job.model.clone(),
            requests: job.request_count,
            request_counts: Counts {
                total: 0,
                completed: 0,
                failed: 0,
            },
            usage: None,
            cost_usd: None,
            results_dir: None,
            output_file: None,
            errors_file: None,
            manifest_file: None,
            parent_job_id: None,
            retry_follows: false,
            created_at: job.created_at.clone(),
            finished_at: state
                .is_terminal()
                .then(|| job.finished_at.clone())
                .flatten(),
            stuck: None,
        }
    }
}

/// A job's tokens.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
}

impl Usage {
    pub fn of(cost: &JobCost) -> Usage {
        Usage {
            input_tokens: cost.input_tokens,
            cached_tokens: cost.cached_tokens,
            output_tokens: cost.output_tokens,
            reasoning_tokens: cost.reasoning_tokens,
        }
    }
}

/// A stuck batch, as a `stuck` event tells it.
#[derive(Debug, Clone, Serialize)]
pub struct Stuck {
    pub batch_id: Option<String>,
    pub status: String,
    pub since: String,
    /// `alerts.stuck_after` for that status, as configured.
    pub limit: String,
}

/// The JSON a notification carries: Standard Webhooks' envelope (`type`, `timestamp`,
/// `data`) with the schema's version.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub timestamp: &'a str,
    pub data: &'a JobFacts,
}

/// A notification to write: its row's text, owned until the write borrows it.
#[derive(Debug, Clone)]
pub struct Planned {
    target: String,
    event: &'static str,
    key: String,
    webhook_id: String,
    payload: String,
    give_up_at: String,
}

impl Planned {
    pub fn as_new(&self) -> NewNotification<'_> {
        NewNotification {
            target: &self.target,
            event: self.event,
            key: &self.key,
            webhook_id: &self.webhook_id,
            payload: &self.payload,
            give_up_at: &self.give_up_at,
        }
    }
}

/// The notifications of event `on` of the job `facts` tell of, one per entry that wants it,
/// `key` telling this event from the job's others; none when nobody wants it.
pub fn plan(ctx: &Ctx, on: NotifyOn, key: &str, facts: &JobFacts) -> anyhow::Result<Vec<Planned>> {
    let now = ctx.clock.now();
    let stamp = clock::format(now);
    let event = Event {
        kind: format!("job.{on}"),
        version: VERSION,
        timestamp: &stamp,
        data: facts,
    };
    let mut planned = Vec::new();
    for target in ctx.notify.wanting(on) {
        planned.push(Planned {
            target: target.settings.name.clone(),
            event: on.as_str(),
            key: format!("{}/{key}", facts.job_id),
            webhook_id: format!(
                "msg_{}",
                ulid::Ulid::from_parts(
                    u64::try_from(now.as_millisecond()).unwrap_or(0),
                    fastrand::u128(..),
                )
            ),
            payload: serde_json::to_string(&event)?,
            give_up_at: clock::format(clock::add(now, target.settings.retry_for.get())),
        });
    }
    Ok(planned)
}

/// The event a job's final state is: `rejected` and the four ends.
pub fn on_end(state: JobState) -> Option<NotifyOn> {
    match state {
        JobState::Completed => Some(NotifyOn::Completed),
        JobState::Failed => Some(NotifyOn::Failed),
        JobState::Expired => Some(NotifyOn::Expired),
        JobState::Cancelled => Some(NotifyOn::Cancelled),
        JobState::Rejected => Some(NotifyOn::Rejected),
        _ => None,
    }
}

/// When the notifications next become due; `None` when none is pending.
pub async fn next_due(ctx: &Ctx, now: Timestamp) -> anyhow::Result<Option<Timestamp>> {
    Ok(ctx
        .store
        .next_notification_due()
        .await?
        .map(|at| clock::parse(&at).unwrap_or(now)))
}

/// The entries with notifications due now, each to be delivered by a task of its own.
pub async fn targets_due(ctx: &Ctx) -> anyhow::Result<Vec<String>> {
    Ok(ctx.store.notification_targets_due(&ctx.now()).await?)
}

/// Delivers entry `target`'s notifications that are due, [`AT_ONCE`] at a time.
pub async fn run(ctx: Ctx, target: String) -> anyhow::Result<()> {
    let rows = ctx
        .store
        .notifications_due(&target, &ctx.now(), PER_RUN)
        .await?;
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(rows)
        .map(|row| {
            let ctx = ctx.clone();
            async move { deliver(&ctx, &row).await }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Tries notification `row` once and records how it went.
async fn deliver(ctx: &Ctx, row: &Notification) -> anyhow::Result<()> {
    let outcome = match ctx.notify.get(&row.target) {
        Some(target) => match target.settings.via() {
            NotifyVia::Url(url) => post(ctx, target, url, row).await,
            NotifyVia::Command(command) => run_command(target, command, row).await,
        },
        None => Err(Failure {
            outcome: format!("no [[notify]] entry is named {} any more", row.target),
            retry_after: None,
            gone: true,
        }),
    };
    let now = ctx.clock.now();
    let give_up_at = clock::parse(&row.give_up_at).unwrap_or(now);
    let tried = match outcome {
        Ok(outcome) => Tried::Delivered { outcome },
        Err(f) if f.gone || now >= give_up_at => Tried::Abandoned { outcome: f.outcome },
        Err(f) => {
            let wait = f
                .retry_after
                .unwrap_or_default()
                .max(retry_delay(row.attempts))
                .min(RETRY_MAX);
            let retry_at = clock::add(now, wait).min(give_up_at);
            Tried::Failed {
                outcome: f.outcome,
                retry_at: clock::format(retry_at),
            }
        }
    };
    let target = &row.target;
    let message = match &tried {
        Tried::Delivered { outcome } => {
            Some(format!("notified {target} of {} ({outcome})", row.event))
        }
        Tried::Failed { outcome, .. } if row.attempts == 0 => Some(format!(
            "could not notify {target} of {} ({outcome}); trying again until {}",
            row.event, row.give_up_at
        )),
        Tried::Failed { .. } => None,
        Tried::Abandoned { outcome } => Some(format!(
            "gave up notifying {target} of {} after {} tries ({outcome})",
            row.event,
            row.attempts + 1
        )),
    };
    let recorded = ctx
        .store
        .record_notification(
            &ctx.leader_lease(),
            row,
            &tried,
            message.as_deref(),
            &clock::format(now),
        )
        .await?;
    if !recorded {
        return Ok(());
    }
    ctx.metrics.notification_tried(tried.state());
    match &tried {
        Tried::Delivered { outcome } => {
            tracing::info!(job = %row.job_id, target = %target, event = %row.event, webhook_id = %row.webhook_id, outcome = %outcome, "notified")
        }
        Tried::Failed { outcome, retry_at } => {
            tracing::warn!(job = %row.job_id, target = %target, event = %row.event, webhook_id = %row.webhook_id, outcome = %outcome, retry_at = %retry_at, "a notification failed; trying again later")
        }
        Tried::Abandoned { outcome } => {
            tracing::error!(job = %row.job_id, target = %target, event = %row.event, webhook_id = %row.webhook_id, outcome = %outcome, attempts = row.attempts + 1, "gave up a notification")
        }
    }
    Ok(())
}

/// Why a try failed.
struct Failure {
    outcome: String,
    /// The receiver's `Retry-After`.
    retry_after: Option<Duration>,
    /// Its entry is gone: it can never be delivered.
    gone: bool,
}

impl Failure {
    fn new(outcome: String) -> Failure {
        Failure {
            outcome,
            retry_after: None,
            gone: false,
        }
    }
}

/// The wait after a try that failed when `failed` had failed before it: [`RETRY_FIRST`],
/// doubling, up to [`RETRY_MAX`].
pub fn retry_delay(failed: i64) -> Duration {
    crate::daemon::schedule::doubling(RETRY_FIRST, failed + 1, RETRY_MAX)
}

/// POSTs the event to `url`, signed.
async fn post(
    ctx: &Ctx,
    target: &Target,
    url: &str,
    row: &Notification,
) -> Result<String, Failure> {
    let Some(secret) = &target.secret else {
        return Err(Failure::new("the entry has no secret".to_owned()));
    };
    ctx.notify
        .poster
        .post(
            url,
            secret,
            &row.webhook_id,
            ctx.clock.now().as_second(),
            &row.payload,
            target.settings.timeout.get(),
        )
        .await
        .map_err(|not| Failure {
            outcome: not.outcome,
            retry_after: not.retry_after,
            gone: false,
        })
}

/// Runs `command` with the event on its standard input.
async fn run_command(
    target: &Target,
    command: &[String],
    row: &Notification,
) -> Result<String, Failure> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Failure::new("no program".to_owned()))?;
    let facts: serde_json::Value = serde_json::from_str(&row.payload).unwrap_or_default();
    let data = &facts["data"];
    let text = |key: &str| data[key].as_str().unwrap_or("").to_owned();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("BATCHWATCH_JOB_ID", &row.job_id)
        .env("BATCHWATCH_STATE", text("state"))
        .env("BATCHWATCH_EVENT", &row.event)
        .env("BATCHWATCH_RESULTS_DIR", text("results_dir"))
        .env("BATCHWATCH_WEBHOOK_ID", &row.webhook_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout ends what it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::new(format!("cannot run {}: {e}", printable::escape(program))))?;
    let pid = child.id();
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let payload = row.payload.clone();
    let run = async {
        let feed = async {
            if let Some(mut stdin) = stdin {
                // A program that does not read its input is its own business.
                let _ = stdin.write_all(payload.as_bytes()).await;
            }
        };
        let (_, out, err, status) = tokio::join!(feed, kept(stdout), kept(stderr), child.wait());
        (out, err, status)
    };
    let timeout = target.settings.timeout.get();
    let Ok((out, err, status)) = tokio::time::timeout(timeout, run).await else {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: a signal to the process group the child leads; nothing else is touched.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
        }
        return Err(Failure::new(format!(
            "{} did not end within {}",
            printable::escape(program),
            clock::humanize(timeout)
        )));
    };
    let job = &row.job_id;
    for (stream, text) in [("stdout", out), ("stderr", err)] {
        if !text.is_empty() {
            tracing::info!(job = %job, target = %target.settings.name, stream, output = %printable::escape(&text), "notify command output");
        }
    }
    match status {
        Ok(status) if status.success() => Ok("exit status 0".to_owned()),
        Ok(status) => Err(Failure::new(
            match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => status.to_string(),
            },
        )),
        Err(e) => Err(Failure::new(format!(
            "cannot wait for {}: {e}",
            printable::escape(program)
        ))),
    }
}

/// Up to [`OUTPUT_KEPT`] bytes of a stream, the rest read and dropped (a full pipe would
/// stop the program).
async fn kept(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut head = Vec::new();
    let _ = (&mut stream).take(OUTPUT_KEPT).read_to_end(&mut head).await;
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_five_seconds_to_an_hour() {
        assert_eq!(retry_delay(0), Duration::from_secs(5));
        assert_eq!(retry_delay(1), Duration::from_secs(10));
        assert_eq!(retry_delay(5), Duration::from_secs(160));
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(1000), RETRY_MAX);
    }
}
