//! A database filled through the store's own functions, for the store and status tests.

use batchwatch::model::{BatchStatus, JobState};
use batchwatch_store_sqlite::batches::{self, NewSubmission, Observation};
use batchwatch_store_sqlite::jobs::{self, NewJob, Why};
use batchwatch_store_sqlite::{Access, Store, transitions};

/// The ids of what [`fill`] made.
pub struct Filled {
    /// Completed, one batch with four history rows.
    pub completed: String,
    pub completed_batch: i64,
    pub completed_remote: String,
    /// Running, split in two parts; part 0 was refused once for the token limit.
    pub running: String,
    /// Rejected for a duplicate custom_id.
    pub rejected: String,
    /// Queued, not yet submitted.
    pub queued: String,
}

pub const T0: &str = "2026-11-22T10:00:00.000Z";

pub async fn open(path: &std::path::Path) -> Store {
    Store::open(path, std::time::Duration::from_secs(5), Access::Migrate)
        .await
        .expect("open store")
}

pub fn job_id(n: u64) -> String {
    batchwatch::model::JobId::generate(1_763_805_600_000 + n).to_string()
}

/// A remote batch observation with a status and counts.
pub fn seen(remote_id: &str, status: &str, counts: Option<(i64, i64, i64)>) -> Observation {
    let (total, completed, failed) = match counts {
        Some((t, c, f)) => (Some(t), Some(c), Some(f)),
        None => (None, None, None),
    };
    Observation {
        remote_id: remote_id.into(),
        upload_id: Some(format!("file-{remote_id}")),
        status: Some(BatchStatus::parse(status)),
        request_total: total,
        request_completed: completed,
        request_failed: failed,
        created_at: Some(T0.into()),
        raw: format!(r#"{{"id":"{remote_id}","status":"{status}"}}"#),
        ..Observation::default()
    }
}

pub async fn new_job(store: &Store, id: &str, name: &str, requests: i64) {
    let mut tx = store.begin().await.unwrap();
    let path = format!("processing/{id}__{name}");
    jobs::insert(
        &mut tx,
        &NewJob {
            id,
            file_name: name,
            path: &path,
            size_bytes: requests * 100,
            endpoint: None,
            completion_window: "24h",
            deadline_at: "2026-11-23T06:00:00.000Z",
            metadata: r#"{"team":"research"}"#,
            output_expires_after: None,
            provider: "openai",
        },
        T0,
    )
    .await
    .unwrap();
    jobs::record_validation(
        &mut tx,
        id,
        &"ab".repeat(32),
        requests,
        "/v1/chat/completions",
        "gpt-4o-mini",
        T0,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// A submission of `job`, active (without a batch yet); returns its id.
pub async fn submission(store: &Store, job: &str, part: i64, attempt: i64, requests: i64) -> i64 {
    let mut tx = store.begin().await.unwrap();
    let id = batches::insert(
        &mut tx,
        &NewSubmission {
            job_id: job,
            part,
            part_start: part * 1000,
            part_end: (part + 1) * 1000,
            part_requests: requests,
            attempt,
            not_before: None,
        },
        T0,
    )
    .await
    .unwrap();
    transitions::activate(&mut tx, id, T0).await.unwrap();
    tx.commit().await.unwrap();
    id
}

async fn observe(store: &Store, id: i64, obs: Observation, at: &str) {
    let mut tx = store.begin().await.unwrap();
    batches::record_observation(&mut tx, id, &obs, at)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Moves job `id` to `state`, through queued when no edge leads there from where it is (a job
/// is validated before it runs).
async fn set_job(store: &Store, id: &str, state: JobState, reason: Option<(&str, &str)>, at: &str) {
    let why = reason.map(|(code, message)| Why::new(code, message));
    let mut tx = store.begin().await.unwrap();
    let from = jobs::get(&mut *tx, id).await.unwrap().unwrap().state;
    if !state.sources().contains(&from) {
        jobs::set_state(&mut tx, id, JobState::Queued, None, "now queued", at)
            .await
            .unwrap();
    }
    jobs::set_state(
        &mut tx,
        id,
        state,
        why.as_ref(),
        &format!("now {state}"),
        at,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Fills the store with four jobs in different states.
pub async fn fill(store: &Store) -> Filled {
    let completed = job_id(1);
    new_job(store, &completed, "nightly.jsonl", 10).await;
    set_job(
        store,
        &completed,
        JobState::Queued,
        None,
        "2026-11-22T10:00:01.000Z",
    )
    .await;
    let completed_batch = submission(store, &completed, 0, 1, 10).await;
    set_job(
        store,
        &completed,
        JobState::Running,
        None,
        "2026-11-22T10:00:02.000Z",
    )
    .await;
    let remote = "batch_completed1".to_string();
    observe(
        store,
        completed_batch,
        seen(&remote, "validating", Some((0, 0, 0))),
        "2026-11-22T10:00:03.000Z",
    )
    .await;
    observe(
        store,
        completed_batch,
        seen(&remote, "in_progress", Some((10, 0, 0))),
        "2026-11-22T10:01:00.000Z",
    )
    .await;
    observe(
        store,
        completed_batch,
        seen(&remote, "in_progress", Some((10, 0, 0))),
        "2026-11-22T10:02:00.000Z",
    )
    .await;
    observe(
        store,
        completed_batch,
        seen(&remote, "in_progress", Some((10, 6, 1))),
        "2026-11-22T10:03:00.000Z",
    )
    .await;
    observe(
        store,
        completed_batch,
        seen(&remote, "completed", Some((10, 9, 1))),
        "2026-11-22T10:04:00.000Z",
    )
    .await;
    let mut tx = store.begin().await.unwrap();
    let at = "2026-11-22T10:05:00.000Z";
    transitions::to_collecting(&mut tx, completed_batch, at)
        .await
        .unwrap();
    transitions::collected(&mut tx, completed_batch, None, at)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    set_job(
        store,
        &completed,
        JobState::Completed,
        None,
        "2026-11-22T10:05:00.000Z",
    )
    .await;

    let running = job_id(2);
    new_job(store, &running, "split.jsonl", 10).await;
    let refused = submission(store, &running, 0, 1, 5).await;
    observe(
        store,
        refused,
        seen("batch_refused", "failed", None),
        "2026-11-22T10:01:00.000Z",
    )
    .await;
    let retried = submission(store, &running, 0, 2, 5).await;
    observe(
        store,
        retried,
        seen("batch_retried", "in_progress", Some((5, 3, 0))),
        "2026-11-22T10:02:00.000Z",
    )
    .await;
    let second = submission(store, &running, 1, 1, 5).await;
    observe(
        store,
        second,
        seen("batch_second", "in_progress", Some((5, 2, 1))),
        "2026-11-22T10:02:00.000Z",
    )
    .await;
    set_job(
        store,
        &running,
        JobState::Running,
        None,
        "2026-11-22T10:02:00.000Z",
    )
    .await;

    let rejected = job_id(3);
    new_job(store, &rejected, "bad.jsonl", 3).await;
    set_job(
        store,
        &rejected,
        JobState::Rejected,
        Some((
            "duplicate_custom_id",
            "line 2: `custom_id` \"a\" appears more than once",
        )),
        "2026-11-22T10:00:05.000Z",
    )
    .await;

    let queued = job_id(4);
    new_job(store, &queued, "later.jsonl", 2).await;
    set_job(
        store,
        &queued,
        JobState::Queued,
        None,
        "2026-11-22T10:00:06.000Z",
    )
    .await;

    Filled {
        completed,
        completed_batch,
        completed_remote: remote,
        running,
        rejected,
        queued,
    }
}

/// A job claimed from `path` as `name`, of 100 bytes, due the day after [`T0`], for the
/// store's port (`Intake::claim`).
pub fn port_job<'a>(
    id: &'a str,
    name: &'a str,
    path: &'a str,
) -> batchwatch::store::jobs::NewJob<'a> {
    batchwatch::store::jobs::NewJob {
        id,
        file_name: name,
        path,
        size_bytes: 100,
        endpoint: None,
        completion_window: "24h",
        deadline_at: "2026-11-23T06:00:00.000Z",
        metadata: "{}",
        output_expires_after: None,
        provider: "openai",
    }
}

/// One part of four requests.
pub const ONE_PART: [batchwatch::store::ops::intake::Part; 1] =
    [batchwatch::store::ops::intake::Part {
        start: 0,
        end: 100,
        requests: 4,
    }];

/// A validation of [`ONE_PART`] for `model` (`Intake::record_valid`).
pub fn valid(model: &str) -> batchwatch::store::ops::intake::Validated<'_> {
    batchwatch::store::ops::intake::Validated {
        sha256: "abababababababababababababababababababababababababababababababab",
        requests: 4,
        endpoint: "/v1/chat/completions",
        model,
        parts: &ONE_PART,
        queued: "valid",
        cancelling: "cancelling",
    }
}
