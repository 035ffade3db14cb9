//! The store: migrations, schema version checks, every query, and reading while another
//! connection writes.

use std::time::Duration;

use batchwatch::model::{BatchStatus, JobState, SubmissionState};
use batchwatch::store::prelude::*;
use batchwatch_store_sqlite::batches::{self, NewSubmission, Recorded};
use batchwatch_store_sqlite::{
    Access, Store, StoreError, deletions, jobs, known_schema_version, transitions,
};

use crate::support::Sandbox;
use crate::support::fixtures::{self, T0, fill, job_id, new_job, open, seen};

const BUSY: Duration = Duration::from_secs(5);

#[tokio::test]
async fn migrations_create_a_fresh_database_in_wal_mode_with_foreign_keys() {
    let sandbox = Sandbox::new();
    let path = sandbox.path().join("nested/dir/state.db");
    let store = open(&path).await;
    assert_eq!(
        store.schema_version().await.unwrap(),
        Some(known_schema_version())
    );
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.writer().unwrap())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(store.writer().unwrap())
        .await
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.writer().unwrap())
        .await
        .unwrap();
    assert_eq!(fk, 1);
    // A batch for a job that does not exist is refused by the foreign key.
    let mut tx = store.begin().await.unwrap();
    let orphan = NewSubmission {
        job_id: "job_nothere",
        part: 0,
        part_start: 0,
        part_end: 1,
        part_requests: 1,
        attempt: 1,
        not_before: None,
    };
    assert!(batches::insert(&mut tx, &orphan, T0).await.is_err());
}

/// An upgrade: a database of the first schema version, with rows in it, gets the later
/// migrations at the next start, and keeps every row.
#[tokio::test]
async fn a_database_of_the_first_schema_version_is_upgraded_keeping_its_rows() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let filled = fill(&store).await;
    // Back to version 1, as the first release left it: without what later migrations add,
    // undone newest first.
    let writer = store.writer().unwrap();
    for undo in [
        "DROP VIEW job_overview",
        "ALTER TABLE jobs DROP COLUMN provider",
        // Made again by the migrations that come after (which drop it first).
        "CREATE VIEW job_overview AS SELECT 1 AS placeholder",
        "DROP TABLE notifications",
        "ALTER TABLE batches DROP COLUMN local_fault_since",
        "DROP TABLE resubmissions",
        "DROP INDEX batches_resent",
        "DROP INDEX batches_state_status",
        "DROP INDEX jobs_resubmit_due",
        "ALTER TABLE jobs DROP COLUMN resubmit_due",
        "DROP INDEX jobs_parent",
        "ALTER TABLE jobs DROP COLUMN parent_job_id",
        "ALTER TABLE jobs DROP COLUMN results_pruned_at",
        "ALTER TABLE jobs DROP COLUMN files_pruned_at",
        "DROP TRIGGER status_history_no_delete",
        "CREATE TRIGGER status_history_no_delete BEFORE DELETE ON status_history \
         BEGIN SELECT RAISE(ABORT, 'status_history is append-only'); END",
        "DROP TABLE remote_deletions",
        "DROP INDEX batches_not_before",
        "DROP INDEX jobs_unfinished_deadline",
        "DROP INDEX jobs_unfinished_cancel",
        "ALTER TABLE jobs DROP COLUMN terminal",
        "ALTER TABLE batches DROP COLUMN terminal",
        "CREATE INDEX jobs_unfinished_deadline ON jobs (deadline_at) \
         WHERE state NOT IN ('rejected', 'completed', 'failed', 'expired', 'cancelled')",
        "CREATE INDEX jobs_unfinished_cancel ON jobs (cancel_requested_at) \
         WHERE state NOT IN ('rejected', 'completed', 'failed', 'expired', 'cancelled')",
        "DROP VIEW job_costs",
        "DROP VIEW model_costs",
        "DROP VIEW batch_status_since",
        "DROP TRIGGER jobs_count_transitions",
        "DROP TABLE job_transitions",
        "DROP TABLE batch_usage",
        "DROP INDEX batches_last_polled",
        "ALTER TABLE batches DROP COLUMN collect_failing_since",
        "ALTER TABLE batches DROP COLUMN results_unavailable",
        "ALTER TABLE jobs DROP COLUMN file_mtime_ns",
        "ALTER TABLE jobs DROP COLUMN file_inode",
        "ALTER TABLE jobs DROP COLUMN validate_after",
        "ALTER TABLE batches DROP COLUMN results_missing",
        "DELETE FROM _sqlx_migrations WHERE version > 1",
        "PRAGMA user_version = 0",
    ] {
        sqlx::query(undo).execute(writer).await.unwrap();
    }
    assert_eq!(store.schema_version().await.unwrap(), Some(1));
    store.close().await;

    let store = open(&sandbox.db_path()).await;
    assert_eq!(
        store.schema_version().await.unwrap(),
        Some(known_schema_version())
    );
    let batch = store
        .submission(filled.completed_batch)
        .await
        .unwrap()
        .expect("the batch row survived");
    assert_eq!(
        batch.remote_id.as_deref(),
        Some(filled.completed_remote.as_str())
    );
    assert_eq!(batch.results_missing, None);
    let job = store.job(&filled.completed).await.unwrap();
    assert_eq!(job.map(|j| j.state), Some(JobState::Completed));
}

#[tokio::test]
async fn migrating_an_already_migrated_database_keeps_its_data() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let filled = fill(&store).await;
    store.close().await;
    let store = open(&sandbox.db_path()).await;
    assert_eq!(
        store.schema_version().await.unwrap(),
        Some(known_schema_version())
    );
    assert!(store.job(&filled.completed).await.unwrap().is_some());
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(store.reader())
        .await
        .unwrap();
    assert_eq!(
        applied,
        batchwatch_store_sqlite::MIGRATOR.iter().count() as i64
    );
}

/// A filled database in a sandbox, then altered by `sql`.
async fn altered(sql: &'static str) -> Sandbox {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    fill(&store).await;
    sqlx::raw_sql(sql)
        .execute(store.writer().unwrap())
        .await
        .unwrap();
    store.close().await;
    sandbox
}

#[tokio::test]
async fn a_database_from_a_newer_schema_is_refused_with_a_clear_message() {
    let sandbox = altered(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .await;
    for access in [Access::Migrate, Access::Write, Access::ReadOnly] {
        let err = Store::open(&sandbox.db_path(), BUSY, access)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 9999, .. }),
            "{access:?}: {err:?}"
        );
        assert!(
            err.to_string()
                .contains("migrated by a newer batchwatch (schema version 9999"),
            "{err}"
        );
    }
    let out = crate::support::process::run(
        None,
        &["status", "--database", sandbox.db_path().to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(i32::from(batchwatch::EXIT_NEWER_DATABASE))
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("migrated by a newer batchwatch"));
}

/// A newer batchwatch's mark may be the database's `user_version` alone: the status commands
/// say the database is newer than they are instead of reading it as current.
#[tokio::test]
async fn a_database_whose_user_version_is_from_the_future_is_refused_as_newer() {
    let sandbox = altered("PRAGMA user_version = 9999").await;
    for access in [Access::Migrate, Access::ReadOnly] {
        let err = Store::open(&sandbox.db_path(), BUSY, access)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 9999, .. }),
            "{access:?}: {err:?}"
        );
    }
    let db = sandbox.db_path().display().to_string();
    for args in [
        vec!["status", "--database", &db],
        vec!["show", "1", "--database", &db],
        vec!["history", "1", "--database", &db],
    ] {
        let out = crate::support::process::run(None, &args);
        assert_eq!(
            out.status.code(),
            Some(i32::from(batchwatch::EXIT_NEWER_DATABASE)),
            "{args:?}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("migrated by a newer batchwatch (schema version 9999"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// Damages `db` with `sql`, then checks that every way of opening it, and the daemon and the
/// status commands, refuse it with exit 65 and a message that names `what`.
async fn refused_as_damaged(sql: &'static str, what: &str) {
    let sandbox = altered(sql).await;
    for access in [Access::Migrate, Access::Write, Access::ReadOnly] {
        let err = Store::open(&sandbox.db_path(), BUSY, access)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Damaged { problems, .. } if problems.iter().any(|p| p.contains(what))),
            "{access:?}: {err}"
        );
    }
    let db = sandbox.db_path().display().to_string();
    let out = crate::support::process::run(None, &["status", "--database", &db]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains(what), "{stderr}");
    assert!(
        stderr.contains("does not have the schema its migrations make"),
        "{stderr}"
    );

    let config = sandbox.write_config("");
    let out = crate::support::process::command(Some(&config))
        .arg("run")
        .env("OPENAI_API_KEY", crate::support::KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(65),
        "the daemon refuses to start: {stderr}"
    );
    assert!(stderr.contains(what), "{stderr}");
}

#[tokio::test]
async fn a_database_whose_status_history_was_dropped_is_refused_at_start() {
    refused_as_damaged(
        "DROP TABLE status_history",
        "table status_history is missing",
    )
    .await;
}

#[tokio::test]
async fn a_database_missing_a_trigger_is_refused_at_start() {
    refused_as_damaged(
        "DROP TRIGGER status_history_no_delete",
        "trigger status_history_no_delete is missing",
    )
    .await;
}

#[tokio::test]
async fn a_database_with_a_changed_view_or_migration_is_refused_and_one_with_an_extra_index_is_not()
{
    refused_as_damaged(
        "DROP VIEW job_state_counts; CREATE VIEW job_state_counts AS SELECT 1 AS state, 2 AS jobs",
        "view job_state_counts differs",
    )
    .await;
    refused_as_damaged(
        "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 1",
        "migration 1 (initial) was applied from other text",
    )
    .await;

    let sandbox = altered("CREATE INDEX my_own_index ON jobs (file_name)").await;
    for access in [Access::Migrate, Access::ReadOnly] {
        Store::open(&sandbox.db_path(), BUSY, access)
            .await
            .unwrap_or_else(|e| panic!("{access:?}: {e}"));
    }
}

#[tokio::test]
async fn reading_an_older_or_foreign_or_missing_database_is_a_clear_error() {
    let sandbox = altered("DELETE FROM _sqlx_migrations").await;
    let err = Store::open(&sandbox.db_path(), BUSY, Access::ReadOnly)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("older than this batchwatch's"),
        "{err}"
    );

    let foreign = sandbox.path().join("other.db");
    let other = Store::open(&foreign, BUSY, Access::Migrate).await.unwrap();
    sqlx::query("DROP TABLE _sqlx_migrations")
        .execute(other.writer().unwrap())
        .await
        .unwrap();
    other.close().await;
    let err = Store::open(&foreign, BUSY, Access::ReadOnly)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is not a batchwatch database"),
        "{err}"
    );

    let err = Store::open(&sandbox.path().join("missing.db"), BUSY, Access::ReadOnly)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(
        !sandbox.path().join("missing.db").exists(),
        "a read never creates the database"
    );

    let garbage = sandbox.path().join("garbage.db");
    std::fs::write(
        &garbage,
        b"this is not sqlite, just text that is long enough to have a header..........",
    )
    .unwrap();
    let err = Store::open(&garbage, BUSY, Access::ReadOnly)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot open database"), "{err}");
}

#[tokio::test]
async fn a_read_only_store_refuses_to_write() {
    let sandbox = Sandbox::new();
    open(&sandbox.db_path()).await.close().await;
    let store = Store::open(&sandbox.db_path(), BUSY, Access::ReadOnly)
        .await
        .unwrap();
    assert!(matches!(store.begin().await, Err(StoreError::ReadOnly)));
    let write = sqlx::query("DELETE FROM jobs")
        .execute(store.reader())
        .await;
    assert!(write.is_err(), "the read pool itself is read-only");
}

#[tokio::test]
async fn job_queries_insert_read_and_move_jobs_through_their_states() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let id = job_id(10);
    new_job(&store, &id, "a.jsonl", 4).await;

    let job = store.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Validating);
    assert_eq!(job.file_name, "a.jsonl");
    assert_eq!(job.request_count, Some(4));
    assert_eq!(job.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(job.metadata, r#"{"team":"research"}"#);
    assert!(store.job("job_unknown").await.unwrap().is_none());

    let mut tx = store.begin().await.unwrap();
    jobs::set_state(
        &mut tx,
        &id,
        JobState::Queued,
        None,
        "valid",
        "2026-11-22T10:00:01.000Z",
    )
    .await
    .unwrap();
    jobs::set_path(&mut tx, &id, "processing/x", "2026-11-22T10:00:01.000Z")
        .await
        .unwrap();
    jobs::count_attempt(&mut tx, &id, "2026-11-22T10:00:02.000Z")
        .await
        .unwrap();
    jobs::add_event(
        &mut tx,
        &id,
        JobState::Queued,
        "waiting for the token limit",
        "2026-11-22T10:00:03.000Z",
    )
    .await
    .unwrap();
    assert!(
        jobs::request_cancel(&mut tx, &id, "operator", "2026-11-22T10:00:04.000Z")
            .await
            .unwrap()
    );
    assert!(
        !jobs::request_cancel(&mut tx, &id, "deadline", "2026-11-22T10:00:05.000Z")
            .await
            .unwrap()
    );
    jobs::set_results_dir(
        &mut tx,
        &id,
        &format!("results/{id}"),
        "2026-11-22T10:00:06.000Z",
    )
    .await
    .unwrap();
    jobs::set_state(
        &mut tx,
        &id,
        JobState::Cancelled,
        Some(&jobs::Why::new("operator", "cancelled by an operator")),
        "cancelled",
        "2026-11-22T10:00:07.000Z",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let job = store.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.path, "processing/x");
    assert_eq!(job.attempts, 1);
    assert_eq!(
        job.cancel_reason.as_deref(),
        Some("operator"),
        "the first cancel reason stands"
    );
    assert_eq!(
        job.cancel_requested_at.as_deref(),
        Some("2026-11-22T10:00:04.000Z")
    );
    assert_eq!(job.reason_code.as_deref(), Some("operator"));
    assert_eq!(job.finished_at.as_deref(), Some("2026-11-22T10:00:07.000Z"));
    assert_eq!(job.results_dir, Some(format!("results/{id}")));

    let events = store.job_events(&id).await.unwrap();
    let states: Vec<JobState> = events.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [
            JobState::Validating,
            JobState::Queued,
            JobState::Queued,
            JobState::Cancelled
        ]
    );
    assert_eq!(events[2].message, "waiting for the token limit");

    // Terminal stays terminal, and a finished job cannot be cancelled.
    let mut tx = store.begin().await.unwrap();
    let err = jobs::set_state(&mut tx, &id, JobState::Running, None, "back", T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Finished { .. }), "{err:?}");
    assert!(
        !jobs::request_cancel(&mut tx, &id, "operator", T0)
            .await
            .unwrap()
    );
    drop(tx);

    let in_states = store
        .jobs_in_states(&[JobState::Cancelled, JobState::Queued])
        .await
        .unwrap();
    assert_eq!(
        in_states.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert!(
        store
            .jobs_in_states(&[JobState::Running])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn submission_queries_track_intent_remote_state_and_cancels() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let job = job_id(11);
    new_job(&store, &job, "b.jsonl", 2).await;

    let mut tx = store.begin().await.unwrap();
    let new = NewSubmission {
        job_id: &job,
        part: 0,
        part_start: 0,
        part_end: 200,
        part_requests: 2,
        attempt: 1,
        not_before: Some("2026-11-22T11:00:00.000Z"),
    };
    let id = batches::insert(&mut tx, &new, T0).await.unwrap();
    assert!(
        batches::insert(&mut tx, &new, T0).await.is_err(),
        "one row per (job, part, attempt)"
    );
    tx.commit().await.unwrap();

    let s = store.submission(id).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.remote_id.as_deref(), s.not_before.as_deref()),
        (
            SubmissionState::Queued,
            None,
            Some("2026-11-22T11:00:00.000Z")
        )
    );

    let mut tx = store.begin().await.unwrap();
    transitions::arm_upload(&mut tx, id, T0).await.unwrap();
    transitions::arm_create(&mut tx, id, "file-abc", T0)
        .await
        .unwrap();
    transitions::await_reconcile(&mut tx, id, "HTTP 500", "2026-11-22T10:00:05.000Z", T0)
        .await
        .unwrap();
    transitions::activate(&mut tx, id, T0).await.unwrap();
    transitions::defer_poll(&mut tx, id, "2026-11-22T10:00:10.000Z", "HTTP 502", T0)
        .await
        .unwrap();
    transitions::arm_cancel(&mut tx, id, "2026-11-22T10:00:20.000Z")
        .await
        .unwrap();
    transitions::arm_cancel(&mut tx, id, "2026-11-22T10:00:25.000Z")
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let s = store.submission(id).await.unwrap().unwrap();
    assert_eq!(s.state, SubmissionState::Active);
    assert_eq!(s.upload_id.as_deref(), Some("file-abc"));
    assert_eq!(s.outcome_unknown_at, None, "activation settles the outcome");
    assert_eq!(s.not_before, None, "and ends the back-off");
    assert_eq!(s.last_error.as_deref(), Some("HTTP 502"));
    assert_eq!(s.next_poll_at.as_deref(), Some("2026-11-22T10:00:10.000Z"));
    assert_eq!(
        s.cancel_requested_at.as_deref(),
        Some("2026-11-22T10:00:20.000Z"),
        "the first decision stands"
    );
    let attempts = store.job(&job).await.unwrap().unwrap().attempts;
    assert_eq!(attempts, 1, "activation counts the attempt");

    let mut tx = store.begin().await.unwrap();
    let obs = seen("batch_x1", "in_progress", Some((2, 1, 0)));
    assert_eq!(
        batches::record_observation(&mut tx, id, &obs, "2026-11-22T10:01:00.000Z")
            .await
            .unwrap(),
        Recorded::Changed
    );
    tx.commit().await.unwrap();
    assert_eq!(
        store
            .submission_by_remote_id("batch_x1")
            .await
            .unwrap()
            .unwrap()
            .id,
        id
    );
    assert!(
        store
            .submission_by_remote_id("batch_nope")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.submissions_of(&job).await.unwrap().len(), 1);

    let mut tx = store.begin().await.unwrap();
    transitions::lose(&mut tx, id, "gone", T0).await.unwrap();
    let err = transitions::activate(&mut tx, id, T0).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Illegal { .. }),
        "terminal stays terminal: {err:?}"
    );
}

/// The quiet case of a poll or sweep page after a failed poll: a named active row whose error
/// stood is cleared of it, and nothing else of it changes (its planned poll stays as stored:
/// the next poll is the daemon's, in memory). A row that left `active`, one whose error was
/// stored after the look, one without an error and one not named are not written at all.
#[tokio::test]
async fn seen_unchanged_clears_only_the_errors_of_the_named_active_rows_stored_before() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let job = job_id(12);
    new_job(&store, &job, "q.jsonl", 5).await;
    let mut ids = Vec::new();
    for part in 0..5 {
        ids.push(fixtures::submission(&store, &job, part, 1, 1).await);
    }
    let planned = "2026-11-22T10:00:10.000Z";
    let later = "2026-11-22T10:05:00.000Z";
    let mut tx = store.begin().await.unwrap();
    for (id, at) in [(ids[0], T0), (ids[1], later), (ids[2], T0), (ids[3], T0)] {
        transitions::defer_poll(&mut tx, id, planned, "HTTP 502", at)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    force_state(&store, ids[2], SubmissionState::Collecting).await;
    let rows = async || {
        let mut rows = Vec::new();
        for &id in &ids {
            let s = store.submission(id).await.unwrap().unwrap();
            rows.push((s.last_error, s.next_poll_at, s.last_polled_at, s.updated_at));
        }
        rows
    };
    let before = rows().await;

    let seen_at = "2026-11-22T10:01:00.000Z";
    let named = [ids[0], ids[1], ids[2], ids[4], 9999];
    let mut tx = store.begin().await.unwrap();
    let n = transitions::seen_unchanged(&mut tx, &named, seen_at)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        n, 1,
        "only the first row is active with an error stored before the look"
    );
    let after = rows().await;
    assert_eq!(after[0].0, None, "the error no longer stands");
    assert_eq!(
        after[0].1.as_deref(),
        Some(planned),
        "the stored plan is left"
    );
    assert_eq!(after[0].2, before[0].2, "no observation is recorded");
    for k in 1..5 {
        assert_eq!(after[k], before[k], "row {k} is not written");
    }
}

/// Puts a submission in `state` directly, to try an edge from there.
async fn force_state(store: &Store, id: i64, state: SubmissionState) {
    sqlx::query("UPDATE batches SET state = ? WHERE id = ?")
        .bind(state.as_str())
        .bind(id)
        .execute(store.writer().unwrap())
        .await
        .unwrap();
}

/// Every edge of the submission diagram moves a submission from the states it leaves, and
/// from no other: its guard refuses the rest, and leaves the row as it was.
#[tokio::test]
async fn every_transition_moves_only_from_the_states_the_diagram_allows() {
    use SubmissionState as S;
    type Edge = fn(
        &mut sqlx::SqliteConnection,
        i64,
    ) -> futures_util::future::BoxFuture<'_, Result<(), StoreError>>;
    let edges: Vec<(&str, &[S], Option<S>, Edge)> = vec![
        ("arm_upload", &[S::Queued], Some(S::Uploading), |c, id| {
            Box::pin(transitions::arm_upload(c, id, T0))
        }),
        ("arm_create", &[S::Uploading], Some(S::Creating), |c, id| {
            Box::pin(transitions::arm_create(c, id, "file-1", T0))
        }),
        (
            "adopt_upload",
            &[S::Queued, S::Uploading],
            Some(S::Creating),
            |c, id| Box::pin(transitions::adopt_upload(c, id, "file-1", T0)),
        ),
        (
            "activate",
            &[S::Queued, S::Uploading, S::Creating],
            Some(S::Active),
            |c, id| Box::pin(transitions::activate(c, id, T0)),
        ),
        (
            "to_collecting",
            &[S::Active],
            Some(S::Collecting),
            |c, id| Box::pin(transitions::to_collecting(c, id, T0)),
        ),
        ("collected", &[S::Collecting], Some(S::Finished), |c, id| {
            Box::pin(transitions::collected(c, id, None, T0))
        }),
        (
            "give_up_results",
            &[S::Collecting],
            Some(S::Finished),
            |c, id| Box::pin(transitions::give_up_results(c, id, "x", T0)),
        ),
        ("refused", &[S::Active], Some(S::Finished), |c, id| {
            Box::pin(transitions::refused(c, id, T0))
        }),
        (
            "abandon",
            &[S::Queued, S::Uploading, S::Creating],
            Some(S::Abandoned),
            |c, id| Box::pin(transitions::abandon(c, id, "x", T0)),
        ),
        ("lose", &[S::Active], Some(S::Lost), |c, id| {
            Box::pin(transitions::lose(c, id, "x", T0))
        }),
        (
            "await_reconcile",
            &[S::Uploading, S::Creating],
            None,
            |c, id| Box::pin(transitions::await_reconcile(c, id, "x", T0, T0)),
        ),
        ("not_sent", &[S::Uploading, S::Creating], None, |c, id| {
            Box::pin(transitions::not_sent(c, id, T0))
        }),
        (
            "postpone",
            &[
                S::Queued,
                S::Uploading,
                S::Creating,
                S::Active,
                S::Collecting,
            ],
            None,
            |c, id| Box::pin(transitions::postpone(c, id, T0, None, T0)),
        ),
        ("schedule_poll", &[S::Active], None, |c, id| {
            Box::pin(transitions::schedule_poll(c, id, T0, T0))
        }),
        ("defer_poll", &[S::Active], None, |c, id| {
            Box::pin(transitions::defer_poll(c, id, T0, "x", T0))
        }),
        ("note_resent", &[S::Creating], None, |c, id| {
            Box::pin(transitions::note_resent(c, id, T0))
        }),
        ("arm_cancel", &[S::Active], None, |c, id| {
            Box::pin(transitions::arm_cancel(c, id, T0))
        }),
        ("cancel_sent", &[S::Active], None, |c, id| {
            Box::pin(transitions::cancel_sent(c, id, T0))
        }),
        ("note_collect_failure", &[S::Collecting], None, |c, id| {
            Box::pin(async move {
                transitions::note_collect_failure(c, id, T0)
                    .await
                    .map(|_| ())
            })
        }),
        ("wait_on_local_fault", &[S::Collecting], None, |c, id| {
            Box::pin(async move {
                transitions::wait_on_local_fault(c, id, "x", T0, T0)
                    .await
                    .map(|_| ())
            })
        }),
    ];
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let job = job_id(77);
    new_job(&store, &job, "edges.jsonl", 1).await;
    let mut tx = store.begin().await.unwrap();
    let id = batches::insert(
        &mut tx,
        &NewSubmission {
            job_id: &job,
            part: 0,
            part_start: 0,
            part_end: 1,
            part_requests: 1,
            attempt: 1,
            not_before: None,
        },
        T0,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for (name, from, to, edge) in &edges {
        for state in SubmissionState::ALL.iter().copied() {
            force_state(&store, id, state).await;
            let mut tx = store.begin().await.unwrap();
            let result = edge(&mut tx, id).await;
            let allowed = from.contains(&state);
            match result {
                Ok(()) => {
                    assert!(allowed, "{name} moved a submission that was {state}");
                    tx.commit().await.unwrap();
                }
                Err(StoreError::Illegal { .. }) => {
                    assert!(!allowed, "{name} refused a submission that was {state}");
                    drop(tx);
                }
                Err(other) => panic!("{name} from {state}: {other}"),
            }
            let after = store.submission(id).await.unwrap().unwrap().state;
            let expected = if allowed { to.unwrap_or(state) } else { state };
            assert_eq!(after, expected, "{name} from {state}");
        }
    }
}

/// Every move of a job follows the job state machine ([`JobState::sources`]): from each state
/// to each other, `set_state` moves the job only along an edge; it refuses the rest, naming
/// both states (or saying the job is finished), and leaves the job as it was.
#[tokio::test]
async fn every_job_move_follows_an_edge_of_the_job_state_machine() {
    use JobState as J;
    // Spot checks of the table itself, the ones the daemon depends on.
    assert!(J::Queued.sources().contains(&J::Validating));
    assert!(J::Cancelling.sources().contains(&J::Validating));
    assert!(J::Rejected.sources() == [J::Validating]);
    assert!(
        J::Queued.sources().contains(&J::Running),
        "a refused attempt waits again"
    );
    assert!(!J::Running.sources().contains(&J::Validating));
    assert!(
        J::ALL
            .iter()
            .all(|to| to.sources().iter().all(|from| !from.is_terminal()))
    );

    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let job = job_id(78);
    new_job(&store, &job, "job-edges.jsonl", 1).await;
    let state_now = || async { store.job(&job).await.unwrap().unwrap().state };
    for from in J::ALL.iter().copied() {
        for to in J::ALL.iter().copied() {
            sqlx::query("UPDATE jobs SET state = ? WHERE id = ?")
                .bind(from.as_str())
                .bind(&job)
                .execute(store.writer().unwrap())
                .await
                .unwrap();
            let mut tx = store.begin().await.unwrap();
            let result = jobs::set_state(&mut tx, &job, to, None, "edge", T0).await;
            let allowed = to.sources().contains(&from);
            match result {
                Ok(()) => {
                    assert!(allowed, "a job moved from {from} to {to}");
                    tx.commit().await.unwrap();
                }
                Err(StoreError::IllegalJob { from: f, to: t, .. }) => {
                    assert!(!allowed && !from.is_terminal(), "{from} -> {to} refused");
                    assert_eq!((f, t), (from, to));
                }
                Err(StoreError::Finished { .. }) => {
                    assert!(from.is_terminal(), "{from} -> {to} called finished");
                }
                Err(other) => panic!("{from} -> {to}: {other}"),
            }
            let expected = if allowed { to } else { from };
            assert_eq!(state_now().await, expected, "{from} -> {to}");
        }
    }
}

/// A wait on a local fault forgets the service's failures counted before it, and a failure of
/// the service ends the wait: the two never add up towards `collect.give_up_after`.
#[tokio::test]
async fn a_local_fault_and_the_services_failures_are_counted_apart() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let job = job_id(78);
    new_job(&store, &job, "faults.jsonl", 1).await;
    let id = fixtures::submission(&store, &job, 0, 1, 1).await;
    let (t1, t2, t3) = (
        "2026-11-22T10:00:01.000Z",
        "2026-11-22T10:00:02.000Z",
        "2026-11-22T10:00:03.000Z",
    );
    let mut tx = store.begin().await.unwrap();
    transitions::to_collecting(&mut tx, id, T0).await.unwrap();
    assert_eq!(
        transitions::note_collect_failure(&mut tx, id, T0)
            .await
            .unwrap(),
        T0
    );
    let since = transitions::wait_on_local_fault(&mut tx, id, "disk full", t2, t1)
        .await
        .unwrap();
    assert_eq!(since, t1);
    let since = transitions::wait_on_local_fault(&mut tx, id, "disk full", t3, t2)
        .await
        .unwrap();
    assert_eq!(since, t1, "the wait began at its first failure");
    tx.commit().await.unwrap();
    let row = store.submission(id).await.unwrap().unwrap();
    assert_eq!(
        (
            row.collect_failing_since.as_deref(),
            row.local_fault_since.as_deref(),
            row.last_error.as_deref(),
            row.not_before.as_deref()
        ),
        (None, Some(t1), Some("disk full"), Some(t3))
    );
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        transitions::note_collect_failure(&mut tx, id, t3)
            .await
            .unwrap(),
        t3,
        "the service's failures count from the end of the wait"
    );
    tx.commit().await.unwrap();
    let row = store.submission(id).await.unwrap().unwrap();
    assert_eq!(row.local_fault_since, None);
    let mut tx = store.begin().await.unwrap();
    transitions::wait_on_local_fault(&mut tx, id, "disk full", t3, t3)
        .await
        .unwrap();
    transitions::collected(&mut tx, id, None, t3).await.unwrap();
    tx.commit().await.unwrap();
    let row = store.submission(id).await.unwrap().unwrap();
    assert_eq!(
        (row.local_fault_since, row.collect_failing_since),
        (None, None)
    );
}

/// Remote clean-up plans to delete a job's input files, and only those of its result files
/// whose contents are on disk: one never downloaded (an attempt refused for the token limit,
/// a file that could not be written) is left to its expiry.
#[tokio::test]
async fn remote_clean_up_plans_only_the_result_files_that_are_on_disk() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let job = job_id(79);
    new_job(&store, &job, "plan.jsonl", 2).await;
    let refused = fixtures::submission(&store, &job, 0, 1, 2).await;
    let latest = fixtures::submission(&store, &job, 0, 2, 2).await;
    let mut tx = store.begin().await.unwrap();
    for (id, remote) in [(refused, "batch_refused"), (latest, "batch_latest")] {
        let mut obs = seen(remote, "completed", Some((2, 1, 1)));
        obs.output_id = Some(format!("out-{remote}"));
        obs.error_output_id = Some(format!("err-{remote}"));
        batches::record_observation(&mut tx, id, &obs, T0)
            .await
            .unwrap();
    }
    transitions::refused(&mut tx, refused, T0).await.unwrap();
    transitions::to_collecting(&mut tx, latest, T0)
        .await
        .unwrap();
    transitions::collected(&mut tx, latest, None, T0)
        .await
        .unwrap();
    let on_disk = vec!["out-batch_latest".to_owned()];
    let added = deletions::plan_for_job(&mut tx, &job, &on_disk, T0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(added, 3);
    let planned: Vec<(String, String)> = store
        .deletions_of(&job)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.kind, d.file_id))
        .collect();
    let pair = |k: &str, f: &str| (k.to_owned(), f.to_owned());
    assert_eq!(
        planned,
        [
            pair("input", "file-batch_refused"),
            pair("input", "file-batch_latest"),
            pair("output", "out-batch_latest"),
        ]
    );
}

/// The schema's `terminal` columns say final for exactly the states the code calls final.
#[tokio::test]
async fn the_schema_and_the_code_agree_on_which_states_are_final() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let filled = fill(&store).await;
    for state in JobState::ALL.iter().copied() {
        sqlx::query("UPDATE jobs SET state = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(&filled.queued)
            .execute(store.writer().unwrap())
            .await
            .unwrap();
        let terminal: i64 = sqlx::query_scalar("SELECT terminal FROM jobs WHERE id = ?")
            .bind(&filled.queued)
            .fetch_one(store.reader())
            .await
            .unwrap();
        assert_eq!(terminal == 1, state.is_terminal(), "job state {state}");
    }
    for state in SubmissionState::ALL.iter().copied() {
        force_state(&store, filled.completed_batch, state).await;
        let terminal: i64 = sqlx::query_scalar("SELECT terminal FROM batches WHERE id = ?")
            .bind(filled.completed_batch)
            .fetch_one(store.reader())
            .await
            .unwrap();
        assert_eq!(
            terminal == 1,
            state.is_terminal(),
            "submission state {state}"
        );
    }
}

#[tokio::test]
async fn observations_append_history_only_when_something_changed_and_terminal_stays_terminal() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let filled = fill(&store).await;

    let rows = store.history(filled.completed_batch).await.unwrap();
    let seen_statuses: Vec<(String, Option<i64>)> = rows
        .iter()
        .map(|h| (h.status.to_string(), h.request_completed))
        .collect();
    // Five observations, one of them identical to the one before: four history rows.
    assert_eq!(
        seen_statuses,
        [
            ("validating".to_string(), Some(0)),
            ("in_progress".to_string(), Some(0)),
            ("in_progress".to_string(), Some(6)),
            ("completed".to_string(), Some(9)),
        ]
    );
    assert!(
        rows.windows(2)
            .all(|w| w[0].observed_at < w[1].observed_at && w[0].id < w[1].id)
    );

    let id = filled.completed_batch;
    let remote = filled.completed_remote.clone();
    let mut tx = store.begin().await.unwrap();
    let again = batches::record_observation(
        &mut tx,
        id,
        &seen(&remote, "in_progress", Some((10, 9, 1))),
        T0,
    )
    .await
    .unwrap();
    assert_eq!(
        again,
        Recorded::RefusedAfterTerminal {
            stored: BatchStatus::Completed,
            seen: BatchStatus::InProgress
        }
    );
    let same = batches::record_observation(
        &mut tx,
        id,
        &seen(&remote, "Completed", Some((10, 9, 1))),
        T0,
    )
    .await
    .unwrap();
    assert_eq!(
        same,
        Recorded::Unchanged,
        "a capitalised known status is the same status"
    );
    tx.commit().await.unwrap();
    let s = store.submission(id).await.unwrap().unwrap();
    assert_eq!(s.status, Some(BatchStatus::Completed));
    assert_eq!(store.history(id).await.unwrap().len(), 4);

    // An unknown status is stored exactly as it came.
    let job = job_id(20);
    new_job(&store, &job, "odd.jsonl", 1).await;
    let mut tx = store.begin().await.unwrap();
    let sub = batches::insert(
        &mut tx,
        &NewSubmission {
            job_id: &job,
            part: 0,
            part_start: 0,
            part_end: 9,
            part_requests: 1,
            attempt: 1,
            not_before: None,
        },
        T0,
    )
    .await
    .unwrap();
    batches::record_observation(
        &mut tx,
        sub,
        &seen("batch_odd", "Paused_By_Admin", None),
        T0,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let raw: String = sqlx::query_scalar("SELECT status FROM batches WHERE id = ?")
        .bind(sub)
        .fetch_one(store.reader())
        .await
        .unwrap();
    assert_eq!(raw, "Paused_By_Admin");
    let hist: String = sqlx::query_scalar("SELECT status FROM status_history WHERE batch_id = ?")
        .bind(sub)
        .fetch_one(store.reader())
        .await
        .unwrap();
    assert_eq!(hist, "Paused_By_Admin");
}

#[tokio::test]
async fn status_history_is_append_only() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    fill(&store).await;
    let update = sqlx::query("UPDATE status_history SET status = 'completed'")
        .execute(store.writer().unwrap())
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM status_history")
        .execute(store.writer().unwrap())
        .await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn the_overview_and_the_views_answer_the_common_questions() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let f = fill(&store).await;

    let all = store.overview(&jobs::Filter::default(), 100).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].id, f.queued, "newest first");
    let running = all.iter().find(|r| r.id == f.running).unwrap();
    // Progress counts only the latest attempt of each part: 3 + 2 done, 1 failed.
    assert_eq!(
        (running.requests_completed, running.requests_failed),
        (Some(5), Some(1))
    );
    assert_eq!(running.remote_status.as_deref(), Some("in_progress"));
    let ids = running.remote_ids.as_deref().unwrap();
    assert!(
        ids.contains("batch_retried")
            && ids.contains("batch_second")
            && !ids.contains("batch_refused"),
        "{ids}"
    );
    let queued = all.iter().find(|r| r.id == f.queued).unwrap();
    assert_eq!(
        (queued.remote_status.as_deref(), queued.requests_completed),
        (None, None)
    );

    let failed_only = store
        .overview(
            &jobs::Filter {
                state: Some(JobState::Rejected),
                ..jobs::Filter::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(
        failed_only
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        [f.rejected.as_str()]
    );
    assert_eq!(
        store
            .overview(&jobs::Filter::default(), 2)
            .await
            .unwrap()
            .len(),
        2
    );

    let counts = store.job_state_counts().await.unwrap();
    for (state, n) in [
        (JobState::Completed, 1),
        (JobState::Running, 1),
        (JobState::Rejected, 1),
        (JobState::Queued, 1),
    ] {
        assert!(counts.contains(&(state, n)), "{counts:?}");
    }
    let statuses = store.batch_status_counts().await.unwrap();
    for (status, n) in [
        (BatchStatus::Completed, 1),
        (BatchStatus::InProgress, 2),
        (BatchStatus::Failed, 1),
    ] {
        assert!(statuses.contains(&(status.clone(), n)), "{statuses:?}");
    }
    // A batch whose status was never told (a row edited by hand) is counted under none, and
    // does not make the counts unreadable.
    sqlx::query("UPDATE batches SET status = NULL WHERE remote_id = 'batch_second'")
        .execute(store.writer().unwrap())
        .await
        .unwrap();
    let without = store.batch_status_counts().await.unwrap();
    assert!(
        without.contains(&(BatchStatus::InProgress, 1)),
        "{without:?}"
    );
    sqlx::query("UPDATE batches SET status = 'in_progress' WHERE remote_id = 'batch_second'")
        .execute(store.writer().unwrap())
        .await
        .unwrap();

    let active: Vec<String> =
        sqlx::query_scalar("SELECT remote_id FROM active_batches ORDER BY remote_id")
            .fetch_all(store.reader())
            .await
            .unwrap();
    assert_eq!(
        active,
        ["batch_refused", "batch_retried", "batch_second"],
        "the fixture leaves them active"
    );
    let failures: Vec<(String, String)> =
        sqlx::query_as("SELECT id, reason_code FROM recent_failures")
            .fetch_all(store.reader())
            .await
            .unwrap();
    assert_eq!(
        failures,
        [(f.rejected.clone(), "duplicate_custom_id".to_string())]
    );
}

#[tokio::test]
async fn a_status_query_succeeds_while_another_connection_is_writing() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let f = fill(&store).await;

    // Hold a write transaction open, with an uncommitted change, while another process reads.
    let mut tx = store.begin().await.unwrap();
    let uncommitted = job_id(99);
    jobs::insert(
        &mut tx,
        &jobs::NewJob {
            id: &uncommitted,
            file_name: "uncommitted.jsonl",
            path: "processing/u",
            size_bytes: 1,
            endpoint: None,
            completion_window: "24h",
            deadline_at: T0,
            metadata: "{}",
            output_expires_after: None,
            provider: "openai",
        },
        T0,
    )
    .await
    .unwrap();

    let db = sandbox.db_path();
    let out = tokio::task::spawn_blocking(move || {
        crate::support::process::run(
            None,
            &["status", "--json", "--database", db.to_str().unwrap()],
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 4, "the reader sees the committed jobs");
    assert!(rows.iter().any(|r| r["id"] == f.running.as_str()));
    assert!(
        !rows.iter().any(|r| r["id"] == uncommitted.as_str()),
        "and not the uncommitted one"
    );
    tx.commit().await.unwrap();

    let reader = fixtures::open(&sandbox.db_path()).await;
    assert!(reader.job(&uncommitted).await.unwrap().is_some());
}

#[tokio::test]
async fn a_daemon_stop_leaves_the_database_readable_without_its_wal_files() {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    fill(&store).await;
    store.close_for_readers().await;
    let wal = sandbox.path().join("state.db-wal");
    assert!(!wal.exists(), "no -wal file is needed to read it");
    let reader = Store::open(&sandbox.db_path(), BUSY, Access::ReadOnly)
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(reader.reader())
        .await
        .unwrap();
    assert_eq!(mode, "delete");
    assert_eq!(
        reader
            .overview(&jobs::Filter::default(), 10)
            .await
            .unwrap()
            .len(),
        4
    );
    reader.close().await;
    // The next start returns to WAL.
    let again = open(&sandbox.db_path()).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(again.writer().unwrap())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

/// After a daemon's stop the database is in rollback-journal mode, and every process that
/// opens it for writing switches it back to WAL. Several at once (a starting daemon and
/// `batchwatch cancel`, four operators' `resubmit`) race for that switch, which SQLite refuses
/// the losers at once rather than after the busy timeout: each must still open it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_opening_a_stopped_daemons_database_at_once_all_open_it() {
    let env = crate::support::daemon::Env::new("http://127.0.0.1:9", "");
    for round in 0..60 {
        open(&env.db).await.close_for_readers().await;
        let running: Vec<_> = (0..6)
            .map(|_| {
                crate::support::process::command(Some(&env.config))
                    .arg("migrate")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in running {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let store = Store::open(&env.db, BUSY, Access::ReadOnly).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.reader())
            .await
            .unwrap();
        assert_eq!(mode, "wal", "round {round}");
        store.close().await;
    }
}

/// A resubmission whose file left incoming/ unclaimed is withdrawn, and its name is free to be
/// written again. A file of that name claimed then is the new resubmission, not the withdrawn
/// one: only the pending row becomes claimed, and the child's event tells what it holds. On
/// SQLite and on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_file_is_the_pending_resubmission_of_its_name_not_a_withdrawn_one() {
    use batchwatch::config::DatabaseLocation;
    use batchwatch::store::chain::NewResubmission;
    use batchwatch::store::{Lease, Store as Port};

    let sandbox = Sandbox::new();
    let mut places = vec![("sqlite", DatabaseLocation::Sqlite(sandbox.db_path()))];
    if let Some(url) = crate::support::postgres::database().await {
        places.push(("postgres", DatabaseLocation::Postgres(url)));
    }
    for (backend, location) in places {
        let store = Port::open_at(&location, None, BUSY, Access::Migrate)
            .await
            .unwrap();
        let lease = Lease::SOLE;
        let claim = async |id: &str, name: &str, parent: Option<&str>| {
            let path = format!("processing/{id}__{name}");
            let job = fixtures::port_job(id, name, &path);
            store.claim(&lease, &job, None, parent, T0).await.unwrap();
        };
        let parent = job_id(40);
        claim(&parent, "p.jsonl", None).await;
        let resubmit = async |name: &str, requests: i64, only: &str, withdrawn: &[i64]| {
            let view = store.resubmission_view(&parent).await.unwrap();
            let row = NewResubmission {
                job_id: &parent,
                file_name: name,
                stage: only,
                requests,
                only,
                forced: false,
                origin: "cli",
            };
            let recorded = store
                .record_resubmission(
                    &lease,
                    &parent,
                    &view,
                    withdrawn,
                    &row,
                    "resubmitted",
                    false,
                    T0,
                )
                .await
                .unwrap();
            assert!(recorded, "{backend}");
        };
        resubmit("p.resubmit-1.jsonl", 3, "expired", &[]).await;
        let first = store.pending_resubmissions().await.unwrap();
        // Its file was removed by hand: the next resubmission withdraws it (under another
        // name, the first one's still taken); that one's file was removed too, and the third
        // withdraws it and takes the first name, free again.
        resubmit("p.resubmit-2.jsonl", 4, "failed", &[first[0].id]).await;
        let second = store.pending_resubmissions().await.unwrap();
        resubmit("p.resubmit-1.jsonl", 5, "unfinished", &[second[0].id]).await;
        let third = store.pending_resubmissions().await.unwrap();
        assert_eq!(third.len(), 1, "{backend}");

        let child = job_id(41);
        claim(&child, "p.resubmit-1.jsonl", Some(&parent)).await;
        assert!(
            store.pending_resubmissions().await.unwrap().is_empty(),
            "{backend}"
        );
        let events = store.job_events(&child).await.unwrap();
        assert!(
            events.iter().any(|e| e
                .message
                .contains("5 unfinished requests (--only unfinished)")),
            "{backend}: {events:?}"
        );
        let view = store.resubmission_view(&parent).await.unwrap();
        assert!(
            view.members.iter().any(|m| m.id == child),
            "{backend}: {view:?}"
        );
        // The withdrawn rows stay withdrawn; the pending one was claimed.
        let states: Vec<(i64, String)> = match &location {
            DatabaseLocation::Sqlite(path) => {
                let reader = Store::open(path, BUSY, Access::ReadOnly).await.unwrap();
                sqlx::query_as("SELECT id, state FROM resubmissions ORDER BY id")
                    .fetch_all(reader.reader())
                    .await
                    .unwrap()
            }
            DatabaseLocation::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                sqlx::query_as("SELECT id, state FROM resubmissions ORDER BY id")
                    .fetch_all(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            states,
            [
                (first[0].id, "withdrawn".to_owned()),
                (second[0].id, "withdrawn".to_owned()),
                (third[0].id, "claimed".to_owned())
            ],
            "{backend}"
        );
    }
}

/// A full disk makes a write fail in the middle of a transaction, or at its commit. The failed
/// transaction must be rolled back and the writer stay usable: once space is back, the next
/// transaction succeeds (not "attempted to call begin_with at non-zero transaction depth" for
/// good).
#[tokio::test]
async fn a_write_that_fails_on_a_full_disk_leaves_the_writer_usable_once_space_returns() {
    let Some(fs) = crate::support::tmpfs::Tmpfs::mount(1024) else {
        return;
    };
    let store = open(&fs.path().join("state.db")).await;
    new_job(&store, &job_id(1), "before.jsonl", 1).await;
    let filler = fs.fill("filler");
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(200_000));
    let mut failures = 0;
    for n in 0..3u64 {
        let attempt = async {
            let mut tx = store.begin().await?;
            let id = job_id(10 + n);
            jobs::insert(
                &mut tx,
                &jobs::NewJob {
                    id: &id,
                    file_name: "full.jsonl",
                    path: "processing/x",
                    size_bytes: 1,
                    endpoint: None,
                    completion_window: "24h",
                    deadline_at: T0,
                    metadata: &big,
                    output_expires_after: None,
                    provider: "openai",
                },
                T0,
            )
            .await?;
            tx.commit().await?;
            Ok::<(), StoreError>(())
        };
        if let Err(e) = attempt.await {
            failures += 1;
            let text = e.to_string() + &format!("{e:?}");
            assert!(
                !text.contains("transaction depth"),
                "the writer was left inside a failed transaction: {text}"
            );
        }
    }
    assert!(failures > 0, "the disk was full: writes must have failed");
    std::fs::remove_file(&filler).unwrap();
    new_job(&store, &job_id(2), "after.jsonl", 1).await;
    let all = store.jobs_in_states(JobState::ALL).await.unwrap();
    let names: Vec<&str> = all.iter().map(|j| j.file_name.as_str()).collect();
    assert_eq!(
        names,
        ["before.jsonl", "after.jsonl"],
        "nothing half-written"
    );
}
