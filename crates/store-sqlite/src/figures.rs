//! What the monitoring endpoint reads from the database at each scrape, and the stuck batches
//! that `status`, `show` and the daemon report: counts of rows, computed when asked, so they
//! are right after a restart. Each is one query on an index or a view.

use sqlx::SqliteExecutor;

use super::StoreError;
use super::usage::{self};
use batchwatch_core::clock::{self, Timestamp};
use batchwatch_core::config::StuckAfter;
use batchwatch_core::model::{BatchStatus, JobState};
pub use batchwatch_store::figures::{Figures, StuckBatch};

/// Reads the figures of one scrape.
pub async fn read(
    pool: &sqlx::SqlitePool,
    stuck_after: &StuckAfter,
    now: Timestamp,
) -> Result<Figures, StoreError> {
    let mut tx = pool.begin().await?;
    let jobs = super::jobs::state_counts(&mut *tx).await?;
    let batches = super::batches::status_counts(&mut *tx).await?;
    let transitions = sqlx::query!(
        r#"SELECT from_state, to_state, count FROM job_transitions ORDER BY from_state, to_state"#
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.from_state, r.to_state, r.count))
    .collect();
    let jobs_by_provider = sqlx::query!(
        r#"SELECT coalesce(provider, '') AS "provider!: String", state AS "state!: JobState",
                  count(*) AS "jobs!: i64"
           FROM jobs GROUP BY 1, 2 ORDER BY 1, 2"#
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.provider, r.state, r.jobs))
    .collect();
    let cancels = sqlx::query!(
        r#"SELECT coalesce(cancel_reason, '') AS "reason!: String", count(*) AS "jobs!: i64"
           FROM jobs WHERE cancel_requested_at IS NOT NULL GROUP BY 1 ORDER BY 1"#
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.reason, r.jobs))
    .collect();
    let oldest = sqlx::query_scalar!(
        r#"SELECT min(created_at) AS "at: String" FROM jobs
           WHERE state NOT IN ('rejected', 'completed', 'failed', 'expired', 'cancelled')"#
    )
    .fetch_one(&mut *tx)
    .await?;
    let waiting = sqlx::query_scalar!(
        r#"SELECT min(created_at) AS "at: String" FROM jobs
           WHERE state IN ('queued', 'submitting')"#
    )
    .fetch_one(&mut *tx)
    .await?;
    let last_poll =
        sqlx::query_scalar!(r#"SELECT max(last_polled_at) AS "at: String" FROM batches"#)
            .fetch_one(&mut *tx)
            .await?;
    let models = usage::model_costs(&mut *tx).await?;
    let stuck = stuck(&mut *tx, stuck_after, now).await?;
    let waiting_on_local_fault = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!: i64" FROM batches
           WHERE state = 'collecting' AND local_fault_since IS NOT NULL"#
    )
    .fetch_one(&mut *tx)
    .await?;
    let undelivered = super::notifications::undelivered(&mut *tx).await?;
    tx.commit().await?;
    Ok(Figures {
        jobs,
        jobs_by_provider,
        batches,
        transitions,
        cancels,
        oldest_unfinished_job: oldest.as_deref().and_then(clock::parse),
        oldest_waiting_job: waiting.as_deref().and_then(clock::parse),
        last_poll: last_poll.as_deref().and_then(clock::parse),
        models,
        stuck,
        waiting_on_local_fault,
        undelivered,
    })
}

/// The batches stuck at `now`: longest stuck first.
pub async fn stuck(
    db: impl SqliteExecutor<'_>,
    after: &StuckAfter,
    now: Timestamp,
) -> Result<Vec<StuckBatch>, StoreError> {
    // `now` less the duration, saturating at the earliest time.
    let before = |d: batchwatch_core::config::Dur| clock::format(clock::sub(now, d.get()));
    let (validating, finalizing, cancelling) = (
        before(after.validating),
        before(after.finalizing),
        before(after.cancelling),
    );
    Ok(sqlx::query_as!(
        StuckBatch,
        r#"SELECT id AS "id!", remote_id, job_id AS "job_id!", status AS "status!: BatchStatus",
                  status_since AS "since!: String"
           FROM batch_status_since
           -- The IN finds the few candidates by index (state, status), not every active row.
           WHERE status IN ('validating', 'finalizing', 'cancelling')
             AND ((status = 'validating' AND status_since <= ?1)
              OR (status = 'finalizing' AND status_since <= ?2)
              OR (status = 'cancelling' AND status_since <= ?3))
           ORDER BY status_since, id"#,
        validating,
        finalizing,
        cancelling,
    )
    .fetch_all(db)
    .await?)
}
