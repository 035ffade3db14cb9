//! Queries on chains of jobs: a job made from the requests another left undone
//! (`batchwatch resubmit`, `batch.resubmit_expired`) names its parent in `parent_job_id`.

use serde::Serialize;
use sqlx::{SqliteConnection, SqliteExecutor};

use super::StoreError;
use crate::model::JobState;

/// A job of a chain, as `show` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Link {
    pub id: String,
    pub file_name: String,
    pub state: JobState,
}

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
    let child_state = super::jobs::get(&mut *conn, child).await?.map(|j| j.state);
    if let Some(state) = child_state {
        super::jobs::add_event(
            conn,
            child,
            state,
            &format!("resubmits the undone requests of {parent}"),
            now,
        )
        .await?;
    }
    if let Some(parent_job) = super::jobs::get(&mut *conn, parent).await? {
        super::jobs::add_event(
            conn,
            parent,
            parent_job.state,
            &format!("its undone requests were resubmitted as {child}"),
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
pub async fn chain(db: &sqlx::SqlitePool, id: &str) -> Result<Vec<Link>, StoreError> {
    let mut root = id.to_owned();
    while let Some(parent) = parent_of(db, &root).await? {
        if parent == id {
            break;
        }
        root = parent;
    }
    Ok(sqlx::query_as!(
        Link,
        r#"WITH RECURSIVE c(id, depth) AS (
               SELECT ?1, 0
               UNION ALL
               SELECT j.id, c.depth + 1 FROM jobs j JOIN c ON j.parent_job_id = c.id
               WHERE c.depth < 1000
           )
           SELECT j.id AS "id!", j.file_name, j.state AS "state: JobState"
           FROM c JOIN jobs j ON j.id = c.id ORDER BY c.depth, j.created_at"#,
        root
    )
    .fetch_all(db)
    .await?)
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
