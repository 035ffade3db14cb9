//! Files on the service: deleting them once they are of no more use, and finding the ones
//! earlier runs left behind (`batchwatch gc-remote`).
//!
//! A deletion is a row of `remote_deletions` committed before its request ([`delete`] sends
//! it and records the answer). Repeating one is harmless: a file already deleted answers 404,
//! which counts as done. A deletion that fails is tried again later and never fails a job.
//!
//! What `gc-remote` may delete ([`survey`]) is decided file by file, and anything it cannot
//! tie to batchwatch is kept:
//! * a file is batchwatch's when the database records it for a job, when its name is one
//!   batchwatch uploads under ([`FileObject::uploaded_for`]), or when it is the output or
//!   error file of a batch whose upload is batchwatch's by one of those two. What a batch
//!   claims is not enough: any key of the organisation can tag a batch of its own with a
//!   job's id, and its files are not batchwatch's to delete;
//! * an output or error file the database records for a job that never downloaded it (its
//!   results were given up on) is kept: it is the only copy, left to its expiry;
//! * it is kept while its job is unfinished in the database, while any batch that uses it
//!   (another tool's, or a manual re-run on the same input) has not ended on the service, and
//!   while it is younger than the threshold; a file of a job the database does
//!   not know (a restored backup, another batchwatch on the same account) is deleted once the
//!   other rules allow it.
//!
//! # In the daemon
//!
//! When a job ends with `cleanup.remote_files` on, the transaction that records its end also
//! records the intent to delete its input files and those of its output and error files whose
//! results are on disk ([`crate::store::Finish::finish_job`], from what
//! [`crate::daemon::finish`] found in the job's results directory): nothing is deleted from the
//! service that is not here. [`run`] carries the intents out with [`delete`]: a deletion that
//! fails is tried again after a growing delay, a refused key closes the gate as any request
//! does, none of it changes the job's state, and a stop does not wait for it
//! ([`crate::daemon::Task::stops_at_once`]).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use crate::api::{ApiError, Batch, Client, FileObject};
use crate::clock::{self, Timestamp};
use crate::daemon::ctx::Ctx;
use crate::failpoint;
use crate::store::deletions::{self, Deletion, Done};
use crate::store::ops::housekeeping::Deleted;
use crate::store::prelude::*;
use crate::store::{Lease, Store};

/// The longest a failed deletion waits before it is tried again.
pub const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

/// How one deletion request went.
#[derive(Debug)]
pub enum Outcome {
    /// Deleted, or already gone; recorded.
    Done(Done),
    /// The request failed; recorded, and tried again at `retry_at`.
    Failed {
        error: ApiError,
        retry_at: Timestamp,
    },
    /// Another process (gc-remote beside the daemon) finished it first.
    Settled,
}

/// The wait before a deletion that failed `failures` times is tried again: `base`, doubling,
/// up to [`RETRY_MAX`].
pub fn retry_delay(base: Duration, failures: i64) -> Duration {
    crate::daemon::schedule::doubling(base, failures, RETRY_MAX)
}

/// Sends the DELETE for a recorded intent and records what the service answered, with an
/// event on the file's job: the outcome, or the first failure.
pub async fn delete(
    client: &Client,
    store: &Store,
    lease: &Lease,
    row: &Deletion,
    now: impl Fn() -> Timestamp,
    retry_base: Duration,
) -> anyhow::Result<Outcome> {
    failpoint::hit("cleanup:before-delete");
    let answer = client.delete_file(&row.file_id).await;
    let at = now();
    let stamp = clock::format(at);
    let kind = &row.kind;
    let file = &row.file_id;
    let (outcome, message) = match answer {
        Ok(answer) if answer.deleted => (
            Outcome::Done(Done::Deleted),
            Some(format!("deleted its {kind} file {file} from the service")),
        ),
        Err(ApiError::NotFound { .. }) => (
            Outcome::Done(Done::Gone),
            Some(format!(
                "its {kind} file {file} was already gone from the service"
            )),
        ),
        Ok(_) => {
            let error = ApiError::lost_answer(
                crate::api::Operation::DeleteFile,
                Some(200),
                "the service answered deleted: false".to_owned(),
            );
            failed(row, error, at, retry_base)
        }
        Err(error) => failed(row, error, at, retry_base),
    };
    let deleted = match &outcome {
        Outcome::Done(done) => Deleted::Done(*done),
        Outcome::Failed { error, retry_at } => Deleted::Failed {
            error: error.to_string(),
            retry_at: clock::format(*retry_at),
        },
        Outcome::Settled => return Ok(Outcome::Settled),
    };
    let recorded = store
        .record_deletion(lease, row, &deleted, message.as_deref(), &stamp)
        .await?;
    if !recorded {
        return Ok(Outcome::Settled);
    }
    match &outcome {
        Outcome::Done(done) => {
            tracing::info!(job = row.job_id.as_deref().unwrap_or("-"), file = %file, kind = %kind, outcome = done.as_str(), "remote file deleted")
        }
        Outcome::Failed { error, retry_at } => {
            tracing::warn!(job = row.job_id.as_deref().unwrap_or("-"), file = %file, kind = %kind, error = %error, retry_at = %clock::format(*retry_at), "a remote file could not be deleted; trying again later")
        }
        Outcome::Settled => {}
    }
    Ok(outcome)
}

/// A failed request: tried again after the back-off; the first failure is told in the job's
/// events.
fn failed(
    row: &Deletion,
    error: ApiError,
    at: Timestamp,
    retry_base: Duration,
) -> (Outcome, Option<String>) {
    let delay = error
        .retry_after()
        .unwrap_or_else(|| retry_delay(retry_base, row.failures + 1));
    let retry_at = clock::add(at, delay);
    let message = (row.failures == 0).then(|| {
        format!(
            "could not delete its {} file {} from the service ({error}); trying again",
            row.kind, row.file_id
        )
    });
    (Outcome::Failed { error, retry_at }, message)
}

/// What `gc-remote` decided about one file on the service.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub file_id: String,
    pub filename: String,
    pub purpose: String,
    pub created_at: Option<String>,
    pub bytes: Option<u64>,
    /// The batchwatch job it belongs to, when it belongs to one.
    pub job_id: Option<String>,
    /// input, output or errors, when known.
    pub kind: Option<&'static str>,
    /// Whether it may be deleted.
    pub delete: bool,
    /// Why it is deleted or kept.
    pub why: String,
}

/// The batches on the service, by the files they use. One file can be the input of several
/// batches (another tool's, or a manual re-run on the same upload): each is kept.
struct BatchIndex {
    by_file: HashMap<String, Vec<(usize, &'static str)>>,
    batches: Vec<Batch>,
}

impl BatchIndex {
    fn new(batches: Vec<Batch>) -> BatchIndex {
        let mut by_file: HashMap<String, Vec<(usize, &'static str)>> = HashMap::new();
        for (i, b) in batches.iter().enumerate() {
            let files = [&b.upload_id, &b.output_id, &b.error_output_id];
            for (id, kind) in files.into_iter().zip(["input", "output", "errors"]) {
                if let Some(id) = id {
                    by_file.entry(id.clone()).or_default().push((i, kind));
                }
            }
        }
        BatchIndex { by_file, batches }
    }

    /// Every batch that uses `file_id`, with what the file is to it.
    fn uses(&self, file_id: &str) -> Vec<(&Batch, &'static str)> {
        self.by_file.get(file_id).map_or_else(Vec::new, |uses| {
            uses.iter()
                .map(|(i, kind)| (&self.batches[*i], *kind))
                .collect()
        })
    }
}

/// Lists the service's batch files and decides for each whether `gc-remote` may delete it.
pub async fn survey(
    client: &Client,
    store: &Store,
    older_than: Duration,
    now: Timestamp,
) -> anyhow::Result<Vec<Found>> {
    let mut batches = Vec::new();
    let mut listed = std::pin::pin!(client.list_batches(100));
    while let Some(batch) = listed.next().await {
        batches.push(batch?);
    }
    let index = BatchIndex::new(batches);
    let known: HashMap<String, deletions::KnownFile> = store
        .known_files()
        .await?
        .into_iter()
        .map(|k| (k.file_id.clone(), k))
        .collect();
    let ended: HashMap<String, bool> = store.jobs_ended().await?.into_iter().collect();
    let mut files = Vec::new();
    let mut listed = std::pin::pin!(client.list_batch_files());
    while let Some(file) = listed.next().await {
        files.push(file?);
    }
    let owners = Owners::new(&files, &known);
    Ok(files
        .iter()
        .map(|file| decide(file, &index, &owners, &known, &ended, older_than, now))
        .collect())
}

/// Which job each file batchwatch uploaded belongs to: the one the database records it for,
/// else the one its upload name gives. What a batch's output and error files are tied to.
struct Owners<'a> {
    known: &'a HashMap<String, deletions::KnownFile>,
    uploaded: HashMap<&'a str, String>,
}

impl<'a> Owners<'a> {
    fn new(files: &'a [FileObject], known: &'a HashMap<String, deletions::KnownFile>) -> Self {
        let uploaded = files
            .iter()
            .filter_map(|f| Some((f.id.as_str(), f.uploaded_for()?)))
            .collect();
        Owners { known, uploaded }
    }

    /// The job whose input `file_id` is, when it is batchwatch's.
    fn of_input(&self, file_id: &str) -> Option<String> {
        match self.known.get(file_id) {
            Some(k) if k.kind == "input" => Some(k.job_id.clone()),
            Some(_) => None,
            None => self.uploaded.get(file_id).cloned(),
        }
    }
}

/// The decision about one file; see the module docs.
fn decide(
    file: &FileObject,
    index: &BatchIndex,
    owners: &Owners,
    known: &HashMap<String, deletions::KnownFile>,
    ended: &HashMap<String, bool>,
    older_than: Duration,
    now: Timestamp,
) -> Found {
    let uses = index.uses(&file.id);
    let recorded = known.get(&file.id);
    let by_name = file.uploaded_for();
    let by_input = uses
        .iter()
        .filter(|(_, kind)| *kind != "input")
        .find_map(|(b, _)| owners.of_input(b.upload_id.as_deref()?));
    let job_id = recorded.map(|k| k.job_id.clone()).or(by_name).or(by_input);
    let kind = recorded
        .map(|k| k.kind)
        .or(uses.first().map(|(_, kind)| *kind))
        .or(job_id.as_ref().map(|_| "input"));
    let mut out = Found {
        file_id: file.id.clone(),
        filename: file.filename.clone(),
        purpose: file.purpose.clone(),
        created_at: file.created_at.map(clock::format),
        bytes: file.bytes,
        job_id: job_id.clone(),
        kind,
        delete: false,
        why: String::new(),
    };
    let Some(job_id) = job_id else {
        out.why =
            "not batchwatch's: the database does not record it, and neither its name nor its batch's input file is batchwatch's".into();
        return out;
    };
    if let Some(k) = recorded.filter(|k| k.kind != "input" && !k.downloaded) {
        out.why = format!(
            "job {} never downloaded this {} file: it is the only copy, left to its expiry",
            k.job_id, k.kind
        );
        return out;
    }
    if let Some((b, _)) = uses.iter().find(|(b, _)| !b.status.is_terminal()) {
        out.why = format!("batch {} that uses it is still {}", b.id, b.status);
        return out;
    }
    match ended.get(&job_id) {
        Some(false) => {
            out.why = format!("job {job_id} is not finished");
            return out;
        }
        Some(true) => out.why = format!("job {job_id} is finished"),
        None => out.why = format!("job {job_id} is not in this database"),
    }
    if let Some(too_young) = too_young(file.created_at, older_than, now) {
        out.why = format!("{}, but {too_young}", out.why);
        return out;
    }
    out.delete = true;
    out
}

/// Why a file created at `created` is not yet older than `older_than` at `now`, when it is
/// not. A creation time after `now` is the service's clock running ahead of this host's: said
/// as such, with by how much, since "younger than 0s" would make no sense.
fn too_young(created: Option<Timestamp>, older_than: Duration, now: Timestamp) -> Option<String> {
    let Some(created) = created else {
        return Some("the service gives no creation time for the file".to_owned());
    };
    if created > now {
        return Some(format!(
            "the file's creation time is {} in the future ({}): the service's clock runs ahead of this host's",
            exact(clock::between(now, created)),
            clock::format(created)
        ));
    }
    (clock::add(created, older_than) > now).then(|| {
        format!(
            "the file is younger than {} (created {} ago)",
            clock::humanize(older_than),
            exact(clock::between(created, now))
        )
    })
}

/// A duration for a message: under a second in milliseconds, where `humanize` says `0s`.
fn exact(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        clock::humanize(d)
    }
}

/// The most deletions one task sends before it hands back to the loop.
const PER_TASK: i64 = 50;

/// When the next pending deletion is due; `now` when one is due already.
pub async fn next_due(ctx: &Ctx, now: Timestamp) -> anyhow::Result<Option<Timestamp>> {
    Ok(ctx
        .store
        .next_deletion_due()
        .await?
        .map(|at| clock::parse(&at).unwrap_or(now)))
}

/// Sends the deletions that are due, one after the other, until the gate closes.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let rows = ctx.store.deletions_due(&ctx.now(), PER_TASK).await?;
    for row in rows {
        if ctx.gate.paused().is_some() {
            break;
        }
        ctx.may_send()?;
        let outcome = delete(
            &ctx.client,
            &ctx.store,
            &ctx.leader_lease(),
            &row,
            || ctx.clock.now(),
            ctx.schedule.failed_request,
        )
        .await?;
        match &outcome {
            Outcome::Done(done) => ctx.metrics.remote_file_deleted(done.as_str()),
            Outcome::Failed { error, .. } => {
                ctx.gate
                    .note(error, ctx.clock.now(), ctx.schedule.auth_retry);
                ctx.metrics.remote_file_deleted("failed");
            }
            Outcome::Settled => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::{self, upload_file_name};
    use crate::model::BatchStatus;

    fn file(id: &str, name: &str, created: i64) -> FileObject {
        testing::file(id, name, Some(10), created)
    }

    /// A batch of `upload` in `status`, with its `output`, claiming to be `job`'s when given.
    fn batch(
        id: &str,
        status: &str,
        upload: &str,
        output: Option<&str>,
        job: Option<&str>,
    ) -> Batch {
        let mut batch = Batch::new(id, BatchStatus::parse(status));
        batch.upload_id = Some(upload.to_owned());
        batch.output_id = output.map(str::to_owned);
        batch.created_at = Timestamp::from_second(1).ok();
        match job {
            Some(job) => testing::tagged(batch, job, 0, 1),
            None => batch,
        }
    }

    const JOB: &str = "job_01M8TJDJ345DF998F02K1HFFBP";
    const DAY: i64 = 86_400;

    fn now() -> Timestamp {
        Timestamp::from_second(10 * DAY).unwrap()
    }

    #[test]
    fn retry_delays_double_up_to_their_maximum() {
        let base = Duration::from_secs(10);
        assert_eq!(retry_delay(base, 1), Duration::from_secs(10));
        assert_eq!(retry_delay(base, 3), Duration::from_secs(40));
        assert_eq!(retry_delay(base, 40), RETRY_MAX);
    }

    #[test]
    fn a_file_is_deleted_only_when_it_is_batchwatchs_its_job_ended_and_it_is_old_enough() {
        let old = 1;
        let young = 10 * DAY - 60;
        let ours = upload_file_name(JOB, 0, 1, "data.jsonl");
        let index = BatchIndex::new(vec![
            batch("batch_live", "in_progress", "file-live", None, Some(JOB)),
            batch(
                "batch_done",
                "completed",
                "file-in",
                Some("file-out"),
                Some(JOB),
            ),
            batch(
                "batch_other",
                "completed",
                "file-foreign-in",
                Some("file-foreign-out"),
                None,
            ),
        ]);
        let finished: HashMap<String, bool> = [(JOB.to_owned(), true)].into();
        let running: HashMap<String, bool> = [(JOB.to_owned(), false)].into();
        let none: HashMap<String, bool> = HashMap::new();
        let not_recorded = HashMap::new();
        let listed = [file("file-in", &ours, old)];
        let owners = Owners::new(&listed, &not_recorded);
        let week = Duration::from_secs(7 * DAY as u64);
        let d = |f: &FileObject, states: &HashMap<String, bool>| {
            decide(f, &index, &owners, &not_recorded, states, week, now())
        };
        // Ours by name, job finished, old: deleted.
        assert!(d(&file("file-x", &ours, old), &finished).delete);
        // Ours by its batch's input file, named as batchwatch names uploads (an output file
        // has the service's name).
        let out = d(&file("file-out", "batch_done_output.jsonl", old), &finished);
        assert!(out.delete, "{out:?}");
        assert_eq!(out.kind, Some("output"));
        // A job the database does not know: deleted once the batch ended and it is old.
        assert!(d(&file("file-x", &ours, old), &none).delete);
        // Kept: the job is unfinished, the batch still runs, the file is young.
        assert!(!d(&file("file-x", &ours, old), &running).delete);
        let live = d(&file("file-live", &ours, old), &none);
        assert!(
            !live.delete && live.why.contains("still in_progress"),
            "{live:?}"
        );
        assert!(!d(&file("file-x", &ours, young), &finished).delete);
        // Another tool's files: no batchwatch name, no batchwatch tags.
        for id in ["file-foreign-in", "file-foreign-out", "file-stray"] {
            let f = d(&file(id, "upload.jsonl", old), &finished);
            assert!(!f.delete && f.why.starts_with("not batchwatch's"), "{f:?}");
        }
        // A name that only looks like ours is not ours.
        let lookalike = upload_file_name("job_x", 0, 1, "data.jsonl");
        assert!(!d(&file("file-y", &lookalike, old), &none).delete);
    }

    #[test]
    fn a_file_from_a_clock_ahead_is_said_to_be_in_the_future_by_how_much() {
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let at = |t: &str| Some(t.parse::<Timestamp>().unwrap());
        let ahead = too_young(at("2026-11-22T13:00:00Z"), Duration::ZERO, now).unwrap();
        assert!(
            ahead.starts_with(
                "the file's creation time is 3h in the future (2026-11-22T13:00:00.000Z)"
            ) && ahead.contains("clock runs ahead"),
            "{ahead}"
        );
        let barely = too_young(at("2026-11-22T10:00:00.250Z"), Duration::ZERO, now).unwrap();
        assert!(barely.contains("is 250ms in the future"), "{barely}");
        assert_eq!(
            too_young(
                at("2026-11-22T09:00:00Z"),
                Duration::from_secs(2 * 3600),
                now
            )
            .as_deref(),
            Some("the file is younger than 2h (created 1h ago)")
        );
        assert_eq!(
            too_young(at("2026-11-22T09:00:00Z"), Duration::ZERO, now),
            None
        );
        assert_eq!(
            too_young(at("2026-11-22T10:00:00Z"), Duration::ZERO, now),
            None
        );
    }

    #[test]
    fn a_file_another_batch_still_runs_on_is_kept_whichever_batch_is_listed_first() {
        let finished = batch("batch_ours", "completed", "file-in", None, Some(JOB));
        let rerun = batch("batch_rerun", "in_progress", "file-in", None, None);
        let states: HashMap<String, bool> = [(JOB.to_owned(), true)].into();
        let ours = file("file-in", &upload_file_name(JOB, 0, 1, "data.jsonl"), 1);
        let d = |batches: Vec<Batch>| {
            let index = BatchIndex::new(batches);
            let hour = Duration::from_secs(3600);
            let listed = [ours.clone()];
            let not_recorded = HashMap::new();
            let owners = Owners::new(&listed, &not_recorded);
            decide(&ours, &index, &owners, &not_recorded, &states, hour, now())
        };
        for f in [
            d(vec![rerun.clone(), finished.clone()]),
            d(vec![finished.clone(), rerun.clone()]),
        ] {
            assert!(!f.delete, "{f:?}");
            assert!(
                f.why.contains("batch_rerun") && f.why.contains("in_progress"),
                "{f:?}"
            );
            assert_eq!(f.job_id.as_deref(), Some(JOB), "still known as ours");
        }
        // Once the re-run ended too, the file may go.
        let ended = batch("batch_rerun", "completed", "file-in", None, None);
        let f = d(vec![ended, finished]);
        assert!(f.delete, "{f:?}");
    }

    #[test]
    fn a_batch_that_only_claims_a_job_does_not_make_its_files_batchwatchs() {
        // Another key of the organisation: its own upload, our job's id in its tags.
        let forged = batch(
            "batch_forged",
            "completed",
            "file-evil-in",
            Some("file-evil-out"),
            Some(JOB),
        );
        let index = BatchIndex::new(vec![forged]);
        let listed = [
            file("file-evil-in", "evil.jsonl", 1),
            file("file-evil-out", "batch_forged_output.jsonl", 1),
        ];
        let states: HashMap<String, bool> = [(JOB.to_owned(), true)].into();
        let not_recorded = HashMap::new();
        let owners = Owners::new(&listed, &not_recorded);
        for f in &listed {
            let found = decide(
                f,
                &index,
                &owners,
                &not_recorded,
                &states,
                Duration::ZERO,
                now(),
            );
            assert!(!found.delete && found.job_id.is_none(), "{found:?}");
            assert!(found.why.starts_with("not batchwatch's"), "{found:?}");
        }
    }

    #[test]
    fn an_output_file_whose_job_never_downloaded_it_is_kept() {
        let done = batch("batch_done", "completed", "file-in", Some("file-out"), None);
        let index = BatchIndex::new(vec![done]);
        let recorded = |downloaded| {
            let k = |file_id: &str, kind| deletions::KnownFile {
                file_id: file_id.into(),
                job_id: JOB.into(),
                kind,
                job_terminal: true,
                downloaded,
            };
            HashMap::from([
                ("file-in".to_owned(), k("file-in", "input")),
                ("file-out".to_owned(), k("file-out", "output")),
            ])
        };
        let states: HashMap<String, bool> = [(JOB.to_owned(), true)].into();
        let out = file("file-out", "batch_done_output.jsonl", 1);
        for (downloaded, deleted) in [(true, true), (false, false)] {
            let known = recorded(downloaded);
            let owners = Owners::new(std::slice::from_ref(&out), &known);
            let found = decide(
                &out,
                &index,
                &owners,
                &known,
                &states,
                Duration::ZERO,
                now(),
            );
            assert_eq!(found.delete, deleted, "{found:?}");
            if !deleted {
                assert!(found.why.contains("never downloaded"), "{found:?}");
            }
        }
    }
}
