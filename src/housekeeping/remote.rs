//! Files on the service: deleting them once they are of no more use, and finding the ones
//! earlier runs left behind (`batchwatch gc-remote`).
//!
//! A deletion is a row of `remote_deletions` committed before its request ([`delete`] sends
//! it and records the answer). Repeating one is harmless: a file already deleted answers 404,
//! which counts as done. A deletion that fails is tried again later and never fails a job.
//!
//! What `gc-remote` may delete ([`survey`]) is decided file by file, and anything it cannot
//! tie to batchwatch is kept:
//! * a file is batchwatch's when its name is one batchwatch uploads under
//!   (`JOBID-pN-aM-NAME.jsonl`), when it is the input, output or error file of a batch whose
//!   metadata has `batchwatch_job_id`, or when the database records it for a job;
//! * it is kept while its job is unfinished in the database, while its batch has not ended on
//!   the service, and while it is younger than the threshold; a file of a job the database does
//!   not know (a restored backup, another batchwatch on the same account) is deleted once the
//!   other rules allow it.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use crate::api::{ApiError, Batch, Client, FileObject};
use crate::clock::{self, Timestamp};
use crate::daemon::reconcile::{JOB_KEY, parse_upload_name};
use crate::failpoint;
use crate::store::deletions::{self, Deletion, Done};
use crate::store::{Store, jobs};

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
    let doublings = u32::try_from(failures.clamp(1, 17) - 1).unwrap_or(0);
    base.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// Sends the DELETE for a recorded intent and records what the service answered, with an
/// event on the file's job: the outcome, or the first failure.
pub async fn delete(
    client: &Client,
    store: &Store,
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
    let mut tx = store.begin().await?;
    let recorded = match &outcome {
        Outcome::Done(done) => deletions::finish(&mut tx, row.id, *done, &stamp).await?,
        Outcome::Failed { error, retry_at } => {
            let failures = deletions::failed(
                &mut tx,
                row.id,
                &error.to_string(),
                &clock::format(*retry_at),
                &stamp,
            )
            .await?;
            failures > 0
        }
        Outcome::Settled => false,
    };
    if !recorded {
        tx.rollback().await?;
        return Ok(Outcome::Settled);
    }
    if let (Some(job_id), Some(message)) = (&row.job_id, message)
        && let Some(job) = jobs::get(&mut *tx, job_id).await?
    {
        jobs::add_event(&mut tx, job_id, job.state, &message, &stamp).await?;
    }
    tx.commit().await?;
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

/// The batches on the service, by the files they use.
struct BatchIndex {
    by_file: HashMap<String, (usize, &'static str)>,
    batches: Vec<Batch>,
}

impl BatchIndex {
    fn new(batches: Vec<Batch>) -> BatchIndex {
        let mut by_file = HashMap::new();
        for (i, b) in batches.iter().enumerate() {
            if !b.input_file_id.is_empty() {
                by_file.insert(b.input_file_id.clone(), (i, "input"));
            }
            if let Some(id) = &b.output_file_id {
                by_file.insert(id.clone(), (i, "output"));
            }
            if let Some(id) = &b.error_file_id {
                by_file.insert(id.clone(), (i, "errors"));
            }
        }
        BatchIndex { by_file, batches }
    }

    fn of(&self, file_id: &str) -> Option<(&Batch, &'static str)> {
        self.by_file
            .get(file_id)
            .map(|(i, kind)| (&self.batches[*i], *kind))
    }
}

/// The purposes of the files a batch uses: its input (`batch`), its output and errors
/// (`batch_output`).
pub const PURPOSES: [&str; 2] = ["batch", "batch_output"];

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
    let known: HashMap<String, deletions::KnownFile> = deletions::known_files(store.reader())
        .await?
        .into_iter()
        .map(|k| (k.file_id.clone(), k))
        .collect();
    let job_states: HashMap<String, bool> = deletions::job_states(store.reader())
        .await?
        .into_iter()
        .collect();
    let mut found = Vec::new();
    for purpose in PURPOSES {
        let mut listed = std::pin::pin!(client.list_files(Some(purpose)));
        while let Some(file) = listed.next().await {
            let file = file?;
            found.push(decide(&file, &index, &known, &job_states, older_than, now));
        }
    }
    Ok(found)
}

/// The decision about one file; see the module docs.
fn decide(
    file: &FileObject,
    index: &BatchIndex,
    known: &HashMap<String, deletions::KnownFile>,
    job_states: &HashMap<String, bool>,
    older_than: Duration,
    now: Timestamp,
) -> Found {
    let batch = index.of(&file.id);
    let recorded = known.get(&file.id);
    let by_name = parse_upload_name(&file.filename).map(|(job, _, _)| job);
    let by_metadata = batch.and_then(|(b, _)| b.metadata_value(JOB_KEY).map(str::to_owned));
    let job_id = recorded
        .map(|k| k.job_id.clone())
        .or(by_metadata)
        .or(by_name);
    let kind = recorded
        .map(|k| k.kind)
        .or(batch.map(|(_, kind)| kind))
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
        out.why = "not batchwatch's: neither its name nor its batch's metadata names a job".into();
        return out;
    };
    if let Some((b, _)) = batch
        && !b.status.is_terminal()
    {
        out.why = format!("its batch {} is still {}", b.id, b.status);
        return out;
    }
    match job_states.get(&job_id) {
        Some(false) => {
            out.why = format!("job {job_id} is not finished");
            return out;
        }
        Some(true) => out.why = format!("job {job_id} is finished"),
        None => out.why = format!("job {job_id} is not in this database"),
    }
    let old_enough = file
        .created_at
        .is_some_and(|created| clock::add(created, older_than) <= now);
    if !old_enough {
        out.why = format!(
            "{}, but the file is younger than {}",
            out.why,
            clock::humanize(older_than)
        );
        return out;
    }
    out.delete = true;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(id: &str, name: &str, created: i64) -> FileObject {
        serde_json::from_value(json!({
            "id": id, "object": "file", "bytes": 10, "created_at": created,
            "filename": name, "purpose": "batch"
        }))
        .unwrap()
    }

    fn batch(
        id: &str,
        status: &str,
        input: &str,
        output: Option<&str>,
        job: Option<&str>,
    ) -> Batch {
        let metadata = job.map(|j| json!({ JOB_KEY: j }));
        serde_json::from_value(json!({
            "id": id, "object": "batch", "endpoint": "/v1/chat/completions",
            "input_file_id": input, "completion_window": "24h", "status": status,
            "output_file_id": output, "created_at": 1, "metadata": metadata,
        }))
        .unwrap()
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
        let ours = format!("{JOB}-p0-a1-data.jsonl");
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
        let week = Duration::from_secs(7 * DAY as u64);
        let d = |f: &FileObject, states: &HashMap<String, bool>| {
            decide(f, &index, &not_recorded, states, week, now())
        };
        // Ours by name, job finished, old: deleted.
        assert!(d(&file("file-x", &ours, old), &finished).delete);
        // Ours by the batch's metadata (an output file has the service's name).
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
        // Another tool's files: no batchwatch name, no batchwatch metadata.
        for id in ["file-foreign-in", "file-foreign-out", "file-stray"] {
            let f = d(&file(id, "upload.jsonl", old), &finished);
            assert!(!f.delete && f.why.starts_with("not batchwatch's"), "{f:?}");
        }
        // A name that only looks like ours is not ours.
        assert!(!d(&file("file-y", "job_x-p0-a1-data.jsonl", old), &none).delete);
    }
}
