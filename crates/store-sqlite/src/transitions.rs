//! How a submission (a row of `batches`) moves: one function per edge of the diagram in
//! `daemon/mod.rs`, and one per mark a step leaves on a row without moving it. Nothing else
//! writes `batches.state`.
//!
//! Each is one guarded UPDATE (`WHERE state IN (the states it leaves)`) that sets every column
//! it implies, so a caller never combines setters by hand, and a move the diagram does not have
//! fails with [`StoreError::Illegal`] instead of happening. (A guarded write is also a fenced
//! write: two writers cannot both take the same edge.)
//!
//! | edge | from | to | also |
//! | --- | --- | --- | --- |
//! | [`arm_upload`] | queued | uploading | outcome unknown from now |
//! | [`arm_create`] | uploading | creating | the input file; outcome unknown from now |
//! | [`arm_create_from_lines`] | queued, creating (nothing under way) | creating | no input file (the lines go in the create); outcome unknown from now; only while no other such create's outcome is unknown |
//! | [`hold`] | queued, creating (no batch) | the same | nothing under way; held until its deadline, why |
//! | [`adopt_upload`] | queued, uploading | creating | an input file found on the service; outcome known |
//! | [`activate`] | queued, uploading, creating | active | outcome known, no back-off, no error; the job's attempt counted |
//! | [`to_collecting`] | active | collecting | no back-off |
//! | [`collected`] | collecting | finished | which result files were gone |
//! | [`give_up_results`] | collecting | finished | why the results are unavailable |
//! | [`refused`] | active | finished | (its batch was refused for the token limit) |
//! | [`abandon`] | queued, uploading, creating | abandoned | outcome known; why |
//! | [`lose`] | active | lost | why |

use sqlx::SqliteConnection;

use super::StoreError;

/// queued → uploading: the upload is about to go out; until its answer is recorded, whether it
/// arrived is unknown.
pub async fn arm_upload(conn: &mut SqliteConnection, id: i64, now: &str) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'uploading', outcome_unknown_at = ?, updated_at = ?
         WHERE id = ? AND state = 'queued'",
        now,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "arm its upload", "queued")
}

/// uploading → creating: the upload is recorded and the create is about to go out.
pub async fn arm_create(
    conn: &mut SqliteConnection,
    id: i64,
    file_id: &str,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'creating', input_file_id = ?, outcome_unknown_at = ?,
                            last_error = NULL, updated_at = ?
         WHERE id = ? AND state = 'uploading'",
        file_id,
        now,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "arm its create", "uploading")
}

/// queued → creating, on a service that takes the lines in the create itself (no upload), or
/// creating → creating for a create sent again after one that was not carried out: the
/// create is about to go out, unless another such create's outcome is unknown (one armed and
/// not yet answered, or lost and not yet reconciled): then nothing moves and `false` says so.
/// One at a time is what lets a lost create be found again on a service whose batches name
/// nothing of their part (see `daemon/submit/reconcile.rs`).
pub async fn arm_create_from_lines(
    conn: &mut SqliteConnection,
    id: i64,
    now: &str,
) -> Result<bool, StoreError> {
    let outstanding = sqlx::query_scalar!(
        "SELECT COUNT(*) FROM batches
         WHERE state = 'creating' AND outcome_unknown_at IS NOT NULL
           AND input_file_id IS NULL AND id <> ?",
        id
    )
    .fetch_one(&mut *conn)
    .await?;
    if outstanding > 0 {
        return Ok(false);
    }
    let n = sqlx::query!(
        "UPDATE batches SET state = 'creating', outcome_unknown_at = ?, last_error = NULL,
                            updated_at = ?
         WHERE id = ? AND input_file_id IS NULL
           AND (state = 'queued' OR (state = 'creating' AND outcome_unknown_at IS NULL))",
        now,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(
        n,
        id,
        "arm its create",
        "queued, or creating with nothing under way",
    )
    .map(|()| true)
}

/// queued or creating → the same state, held: a create that may have been sent could have
/// made any of several batches, so none is taken and it is never sent again. Nothing is under
/// way any more (the mark is cleared, so no other create waits on it); it waits until
/// `until` (its job's deadline) with `why` as its last error.
pub async fn hold(
    conn: &mut SqliteConnection,
    id: i64,
    until: &str,
    why: &str,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET outcome_unknown_at = NULL, not_before = ?, last_error = ?,
                            updated_at = ?
         WHERE id = ? AND state IN ('queued', 'creating') AND remote_id IS NULL",
        until,
        why,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "be held", "queued or creating, with no batch")
}

/// queued or uploading → creating: an input file the database did not record was found on the
/// service (and no batch for it), so the create comes next, with nothing under way.
pub async fn adopt_upload(
    conn: &mut SqliteConnection,
    id: i64,
    file_id: &str,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'creating', input_file_id = ?, outcome_unknown_at = NULL,
                            last_error = NULL, updated_at = ?
         WHERE id = ? AND state IN ('queued', 'uploading')",
        file_id,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "adopt an upload", "queued or uploading")
}

/// queued, uploading or creating → active: its batch exists (record the observation first).
/// The job's attempt is counted in the same write, so a kill can neither lose the count nor
/// make a restart count it twice.
pub async fn activate(conn: &mut SqliteConnection, id: i64, now: &str) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'active', outcome_unknown_at = NULL, not_before = NULL,
                            last_error = NULL, updated_at = ?
         WHERE id = ? AND state IN ('queued', 'uploading', 'creating')",
        now,
        id
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "become active", "queued, uploading or creating")?;
    sqlx::query!(
        "UPDATE jobs SET attempts = attempts + 1, updated_at = ?
         WHERE id = (SELECT job_id FROM batches WHERE id = ?)",
        now,
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// active → collecting: its batch ended; its files are to be downloaded now, whatever back-off
/// a deferred cancel left.
pub async fn to_collecting(
    conn: &mut SqliteConnection,
    id: i64,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'collecting', not_before = NULL, updated_at = ?
         WHERE id = ? AND state = 'active'",
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "start collecting", "active")
}

/// collecting → finished: its result files are downloaded; `missing` names those that were
/// gone from the service.
pub async fn collected(
    conn: &mut SqliteConnection,
    id: i64,
    missing: Option<&str>,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'finished', results_missing = ?, collect_failing_since = NULL,
                            local_fault_since = NULL, updated_at = ?
         WHERE id = ? AND state = 'collecting'",
        missing,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "finish collecting", "collecting")
}

/// collecting → finished: its result files could not be downloaded and the daemon gave up.
pub async fn give_up_results(
    conn: &mut SqliteConnection,
    id: i64,
    why: &str,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'finished', results_unavailable = ?, last_error = ?,
                            updated_at = ?
         WHERE id = ? AND state = 'collecting'",
        why,
        why,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "give up its results", "collecting")
}

/// active → finished: its batch was refused for the enqueued-token limit; the next attempt is
/// a new submission.
pub async fn refused(conn: &mut SqliteConnection, id: i64, now: &str) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'finished', updated_at = ?
         WHERE id = ? AND state = 'active'",
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "be refused", "active")
}

/// queued, uploading or creating → abandoned: it will never become a batch (cancelled first,
/// or refused for good); `why` is kept as its last error.
pub async fn abandon(
    conn: &mut SqliteConnection,
    id: i64,
    why: &str,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'abandoned', outcome_unknown_at = NULL, last_error = ?,
                            updated_at = ?
         WHERE id = ? AND state IN ('queued', 'uploading', 'creating')",
        why,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "be abandoned", "queued, uploading or creating")
}

/// active → lost: its batch vanished from the service.
pub async fn lose(
    conn: &mut SqliteConnection,
    id: i64,
    why: &str,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET state = 'lost', last_error = ?, updated_at = ?
         WHERE id = ? AND state = 'active'",
        why,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "be lost", "active")
}

/// An upload or create whose answer never came (uploading, creating): its outcome stays
/// unknown since it first was, `error` says why, and nothing happens before `retry_at`, when
/// the service is asked what became of it.
pub async fn await_reconcile(
    conn: &mut SqliteConnection,
    id: i64,
    error: &str,
    retry_at: &str,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET outcome_unknown_at = coalesce(outcome_unknown_at, ?), last_error = ?,
                            not_before = ?, updated_at = ?
         WHERE id = ? AND state IN ('uploading', 'creating')",
        now,
        error,
        retry_at,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "await reconciliation", "uploading or creating")
}

/// An upload or create that was refused or never left (uploading, creating): its outcome is
/// known, it did not happen.
pub async fn not_sent(conn: &mut SqliteConnection, id: i64, now: &str) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET outcome_unknown_at = NULL, updated_at = ?
         WHERE id = ? AND state IN ('uploading', 'creating')",
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "be marked not sent", "uploading or creating")
}

/// Puts the next upload, create, cancel or download off until `until` (any state that is not
/// final), with `error` as the last error when one caused it.
pub async fn postpone(
    conn: &mut SqliteConnection,
    id: i64,
    until: &str,
    error: Option<&str>,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET not_before = ?, last_error = coalesce(?, last_error), updated_at = ?
         WHERE id = ? AND terminal = 0",
        until,
        error,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "be postponed", "unfinished")
}

/// A poll answered (active): the next one is at `at`, and no error stands.
pub async fn schedule_poll(
    conn: &mut SqliteConnection,
    id: i64,
    at: &str,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET next_poll_at = ?, last_error = NULL, updated_at = ?
         WHERE id = ? AND state = 'active'",
        at,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "be polled", "active")
}

/// Active batches were seen with nothing history tracks changed while a failed poll's error
/// stood (the quiet case of a poll or a list sweep, after a failure): the error is cleared,
/// nothing else written (a quiet batch's next poll is the daemon's, in memory). A row that
/// left `active` meanwhile, or was written after `observed_at` (a newer failure's error), is
/// left alone. Returns how many rows were updated.
pub async fn seen_unchanged(
    conn: &mut SqliteConnection,
    answered: &[i64],
    observed_at: &str,
) -> Result<u64, StoreError> {
    let ids = super::json_list(answered);
    Ok(sqlx::query!(
        "UPDATE batches SET last_error = NULL, updated_at = ?2
         WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'active'
           AND last_error IS NOT NULL AND updated_at <= ?2",
        ids,
        observed_at,
    )
    .execute(conn)
    .await?
    .rows_affected())
}

/// A poll failed (active): `error` stands, and the next try is at `at`.
pub async fn defer_poll(
    conn: &mut SqliteConnection,
    id: i64,
    at: &str,
    error: &str,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET next_poll_at = ?, last_error = ?, updated_at = ?
         WHERE id = ? AND state = 'active'",
        at,
        error,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "have its poll deferred", "active")
}

/// The create is sent again (creating) after reconciliation found no batch: for a while, a
/// late duplicate of the earlier request is watched for.
pub async fn note_resent(
    conn: &mut SqliteConnection,
    id: i64,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET resent_at = ?, updated_at = ? WHERE id = ? AND state = 'creating'",
        now,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "be sent again", "creating")
}

/// A cancel is about to be sent (active); the first decision stands.
pub async fn arm_cancel(conn: &mut SqliteConnection, id: i64, now: &str) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET cancel_requested_at = coalesce(cancel_requested_at, ?), updated_at = ?
         WHERE id = ? AND state = 'active'",
        now,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "arm a cancel", "active")
}

/// The cancel went out, or is pointless (active): it is not sent again, and the batch is
/// polled at once to follow it to its end.
pub async fn cancel_sent(
    conn: &mut SqliteConnection,
    id: i64,
    now: &str,
) -> Result<(), StoreError> {
    let n = sqlx::query!(
        "UPDATE batches SET cancel_sent_at = coalesce(cancel_sent_at, ?), next_poll_at = ?,
                            updated_at = ?
         WHERE id = ? AND state = 'active'",
        now,
        now,
        now,
        id
    )
    .execute(conn)
    .await?
    .rows_affected();
    StoreError::guarded(n, id, "record its cancel", "active")
}

/// A download of its results failed on the service's side (collecting); returns the time of
/// the first such failure in a row. Results waiting on a local fault wait no more.
pub async fn note_collect_failure(
    conn: &mut SqliteConnection,
    id: i64,
    now: &str,
) -> Result<String, StoreError> {
    sqlx::query_scalar!(
        r#"UPDATE batches SET collect_failing_since = coalesce(collect_failing_since, ?),
                              local_fault_since = NULL, updated_at = ?
           WHERE id = ? AND state = 'collecting' RETURNING collect_failing_since AS "since!""#,
        now,
        now,
        id
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::Illegal {
        id,
        edge: "note a failed download",
        from: "collecting",
    })
}

/// Its results cannot be written here (collecting): a local fault, the host's and not the
/// service's. `error` stands and the next try is at `retry_at`; the failures of the service
/// counted so far are forgotten, as none of this time may count towards giving up. Returns
/// when the wait began.
pub async fn wait_on_local_fault(
    conn: &mut SqliteConnection,
    id: i64,
    error: &str,
    retry_at: &str,
    now: &str,
) -> Result<String, StoreError> {
    sqlx::query_scalar!(
        r#"UPDATE batches SET local_fault_since = coalesce(local_fault_since, ?),
                              collect_failing_since = NULL, last_error = ?, not_before = ?,
                              updated_at = ?
           WHERE id = ? AND state = 'collecting' RETURNING local_fault_since AS "since!""#,
        now,
        error,
        retry_at,
        now,
        id
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::Illegal {
        id,
        edge: "wait on a local fault",
        from: "collecting",
    })
}
