//! Queries on chains of jobs: a job made from the requests another left undone
//! (`batchwatch resubmit`, `batch.resubmit_expired`) names its parent in `parent_job_id`; the
//! file it came from was first a row of `resubmissions` (states in
//! `batchwatch::housekeeping::resubmit`).

use sqlx::{SqliteConnection, SqliteExecutor};

use super::StoreError;
use batchwatch_core::model::JobState;
pub use batchwatch_store::chain::{Link, Member, NewResubmission, Pending, View};

/// Records that `child` holds requests `parent` left undone, with an event on each.
pub async fn link(
    conn: &mut SqliteConnection,
    child: &str,
    parent: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET parent_job_id = ? WHERE id = ?",
        parent,
        child
    )
    .execute(&mut *conn)
    .await?;
    // What was resubmitted, as the resubmission recorded it: `3 unfinished requests (--only
    // unfinished)`; a file not written as one (made by hand) holds some undone requests.
    let mut what = "undone requests".to_owned();
    if let Some(job) = super::jobs::get(&mut *conn, child).await? {
        // The resubmission this file was written as, if it was one: the pending one of that
        // name, else the newest withdrawn one (a file put back by hand after a later resubmit
        // saw it gone is still that one; a name withdrawn is free to be written again).
        let row = sqlx::query!(
            "UPDATE resubmissions SET state = 'claimed', child_job_id = ?, updated_at = ?
             WHERE id = (SELECT id FROM resubmissions
                         WHERE job_id = ? AND file_name = ? AND state IN ('pending', 'withdrawn')
                         ORDER BY state = 'pending' DESC, id DESC LIMIT 1)
             RETURNING requests, only, forced",
            child,
            now,
            parent,
            job.file_name
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            let forced = if row.forced != 0 { ", --force" } else { "" };
            what = format!(
                "{} {} requests (--only {}{forced})",
                row.requests, row.only, row.only
            );
        }
        super::jobs::add_event(
            conn,
            child,
            job.state,
            &format!("resubmits the {what} of {parent}"),
            now,
        )
        .await?;
    }
    if let Some(parent_job) = super::jobs::get(&mut *conn, parent).await? {
        super::jobs::add_event(
            conn,
            parent,
            parent_job.state,
            &format!("its {what} were resubmitted as {child}"),
            now,
        )
        .await?;
    }
    Ok(())
}

/// The job a job was resubmitted from.
pub async fn parent_of(
    db: impl SqliteExecutor<'_>,
    id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar!("SELECT parent_job_id FROM jobs WHERE id = ?", id)
            .fetch_optional(db)
            .await?
            .flatten(),
    )
}

/// Every job of the chain `id` belongs to, from the original file on, in order: its
/// ancestors, itself, and what was resubmitted from it (and from those).
pub async fn members(conn: &mut SqliteConnection, id: &str) -> Result<Vec<Member>, StoreError> {
    Ok(sqlx::query_as!(
        Member,
        r#"WITH RECURSIVE up(id, depth) AS (
               SELECT ?1, 0
               UNION ALL
               SELECT j.parent_job_id, up.depth + 1 FROM jobs j JOIN up ON j.id = up.id
               WHERE j.parent_job_id IS NOT NULL AND j.parent_job_id != ?1 AND up.depth < 1000
           ),
           down(id, depth) AS (
               SELECT id, 0 FROM (SELECT id FROM up ORDER BY depth DESC LIMIT 1)
               UNION ALL
               SELECT j.id, down.depth + 1 FROM jobs j JOIN down ON j.parent_job_id = down.id
               WHERE down.depth < 1000
           )
           SELECT j.id AS "id!", j.file_name, j.path, j.state AS "state: JobState", j.results_dir
           FROM down JOIN jobs j ON j.id = down.id ORDER BY down.depth, j.created_at"#,
        id
    )
    .fetch_all(conn)
    .await?)
}

/// The chain as `show` lists it.
pub async fn chain(db: &sqlx::SqlitePool, id: &str) -> Result<Vec<Link>, StoreError> {
    let mut conn = db.acquire().await?;
    Ok(members(&mut conn, id)
        .await?
        .into_iter()
        .map(|m| Link {
            id: m.id,
            file_name: m.file_name,
            state: m.state,
        })
        .collect())
}

/// The chain `id` belongs to, as a resubmission of it sees it.
pub async fn view(conn: &mut SqliteConnection, id: &str) -> Result<View, StoreError> {
    let members = members(&mut *conn, id).await?;
    let ids = serde_json::to_string(&members.iter().map(|m| &m.id).collect::<Vec<_>>())
        .expect("strings serialise");
    let pending = sqlx::query_as!(
        Pending,
        r#"SELECT id, file_name, stage FROM resubmissions
           WHERE state = 'pending' AND job_id IN (SELECT value FROM json_each(?)) ORDER BY id"#,
        ids
    )
    .fetch_all(conn)
    .await?;
    Ok(View { members, pending })
}

/// Every resubmission not yet claimed, of every chain.
pub async fn all_pending(db: impl SqliteExecutor<'_>) -> Result<Vec<Pending>, StoreError> {
    Ok(sqlx::query_as!(
        Pending,
        r#"SELECT id, file_name, stage FROM resubmissions
           WHERE state = 'pending' ORDER BY id"#
    )
    .fetch_all(db)
    .await?)
}

/// Records a resubmission as pending, with an event on its job; `false` (and nothing
/// recorded) when a pending one has that file name already.
pub async fn record(
    conn: &mut SqliteConnection,
    new: &NewResubmission<'_>,
    message: &str,
    now: &str,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query!(
        "INSERT INTO resubmissions
             (job_id, file_name, stage, requests, only, forced, origin, state, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)
         ON CONFLICT DO NOTHING",
        new.job_id,
        new.file_name,
        new.stage,
        new.requests,
        new.only,
        new.forced,
        new.origin,
        now,
        now
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    if let Some(job) = super::jobs::get(&mut *conn, new.job_id).await? {
        super::jobs::add_event(conn, new.job_id, job.state, message, now).await?;
    }
    Ok(true)
}

/// Records that a pending resubmission's file left incoming/ without being claimed.
pub async fn withdraw(conn: &mut SqliteConnection, id: i64, now: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE resubmissions SET state = 'withdrawn', updated_at = ? WHERE id = ? AND state = 'pending'",
        now,
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// How many ancestors a job has: 0 for an original file.
pub async fn depth(conn: &mut SqliteConnection, id: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"WITH RECURSIVE a(id, depth) AS (
               SELECT parent_job_id, 1 FROM jobs WHERE id = ?1 AND parent_job_id IS NOT NULL
               UNION ALL
               SELECT j.parent_job_id, a.depth + 1 FROM jobs j JOIN a ON j.id = a.id
               WHERE j.parent_job_id IS NOT NULL AND a.depth < 1000
           )
           SELECT coalesce(max(depth), 0) AS "depth!: i64" FROM a"#,
        id
    )
    .fetch_one(conn)
    .await?)
}

/// Asks for a finished job's undone requests (`only`) to be queued again.
pub async fn set_resubmit_due(
    conn: &mut SqliteConnection,
    id: &str,
    only: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query!("UPDATE jobs SET resubmit_due = ? WHERE id = ?", only, id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The jobs whose undone requests are due to be queued again, with what to queue.
pub async fn resubmit_due(
    db: impl SqliteExecutor<'_>,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query!(
        r#"SELECT id, resubmit_due AS "only!" FROM jobs WHERE resubmit_due IS NOT NULL ORDER BY id"#
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|r| (r.id, r.only))
    .collect())
}
