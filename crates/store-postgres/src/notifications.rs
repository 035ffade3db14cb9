//! Queries on `notifications`: who is told of a job's end or a stuck batch, and how each
//! delivery went ([`batchwatch_store::notifications`] has the states).

use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
pub use batchwatch_store::notifications::{NewNotification, Notification, Tried, Undelivered};

/// Writes notifications `notify` of job `job_id`, due at once, each unless its target has one
/// of its key already; returns how many were written.
pub async fn plan(
    conn: &mut PgConnection,
    job_id: &str,
    notify: &[NewNotification<'_>],
    now: &str,
) -> Result<u64, StoreError> {
    let mut added = 0;
    for n in notify {
        added += sqlx::query!(
            "INSERT INTO notifications (job_id, target, event, key, webhook_id, payload, state,
                                        next_attempt_at, give_up_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $7, $7)
             ON CONFLICT (target, key) DO NOTHING",
            job_id,
            n.target,
            n.event,
            n.key,
            n.webhook_id,
            n.payload,
            now,
            n.give_up_at,
        )
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(added)
}

/// `SELECT` every column of `notifications` as a [`Notification`], followed by `$tail`.
macro_rules! select_notifications {
    ($tail:literal, $($arg:expr),*) => {
        sqlx::query_as!(
            Notification,
            "SELECT id, job_id, target, event, key, webhook_id, payload, state, attempts,
                    next_attempt_at, give_up_at, last_outcome, created_at, updated_at, done_at
             FROM notifications " + $tail,
            $($arg),*
        )
    };
}

/// Entry `target`'s pending notifications due at `now`, oldest first, at most `limit`.
pub async fn due(
    db: impl PgExecutor<'_>,
    target: &str,
    now: &str,
    limit: i64,
) -> Result<Vec<Notification>, StoreError> {
    Ok(select_notifications!(
        "WHERE state = 'pending' AND target = $1 AND next_attempt_at <= $2
         ORDER BY next_attempt_at, id LIMIT $3",
        target,
        now,
        limit
    )
    .fetch_all(db)
    .await?)
}

/// The entries with a pending notification due at `now`, by name.
pub async fn targets_due(db: impl PgExecutor<'_>, now: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT DISTINCT target FROM notifications
         WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY target",
        now
    )
    .fetch_all(db)
    .await?)
}

/// When the next pending notification is due; `None` when none is pending.
pub async fn next_due(db: impl PgExecutor<'_>) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT min(next_attempt_at) AS "at?"
           FROM notifications WHERE state = 'pending'"#
    )
    .fetch_one(db)
    .await?)
}

/// The notifications of a job, in order.
pub async fn for_job(
    db: impl PgExecutor<'_>,
    job_id: &str,
) -> Result<Vec<Notification>, StoreError> {
    Ok(
        select_notifications!("WHERE job_id = $1 ORDER BY id", job_id)
            .fetch_all(db)
            .await?,
    )
}

/// The notifications not yet delivered: how many, and when the oldest was written.
pub async fn undelivered(db: impl PgExecutor<'_>) -> Result<Undelivered, StoreError> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "count!", min(created_at) AS "oldest?"
           FROM notifications WHERE state = 'pending'"#
    )
    .fetch_one(db)
    .await?;
    Ok(Undelivered {
        count: row.count,
        oldest: row.oldest,
    })
}

/// Records a try at delivering pending notification `id`. Returns false when it was not
/// pending (another process settled it first).
pub async fn record(
    conn: &mut PgConnection,
    id: i64,
    tried: &Tried,
    now: &str,
) -> Result<bool, StoreError> {
    let state = tried.state();
    let outcome = tried.outcome();
    let (next, done_at) = match tried {
        Tried::Failed { retry_at, .. } => (Some(retry_at.as_str()), None),
        Tried::Delivered { .. } | Tried::Abandoned { .. } => (None, Some(now)),
    };
    let updated = sqlx::query!(
        "UPDATE notifications
         SET state = $1, attempts = attempts + 1, last_outcome = $2,
             next_attempt_at = coalesce($3, next_attempt_at), done_at = $4, updated_at = $5
         WHERE id = $6 AND state = 'pending'",
        state,
        outcome,
        next,
        done_at,
        now,
        id,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}
