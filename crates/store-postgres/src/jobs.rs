//! Queries on `jobs` and `job_events`.

use sqlx::{PgConnection, PgExecutor};

use super::{Lease, StoreError};
use batchwatch_core::model::FileLook;
use batchwatch_core::model::JobState;
pub use batchwatch_store::jobs::{
    Filter, Job, JobEvent, JobLine, JobOverview, NewJob, RecordedFile, Why,
};

/// Records a newly claimed job, in state `validating`, with its first event.
pub async fn insert(
    conn: &mut PgConnection,
    job: &NewJob<'_>,
    now: &str,
) -> Result<(), StoreError> {
    let state = JobState::Validating;
    sqlx::query!(
        "INSERT INTO jobs (id, file_name, path, size_bytes, endpoint, completion_window, deadline_at, metadata,
                           output_expires_after, state, created_at, updated_at, provider)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12)",
        job.id,
        job.file_name,
        job.path,
        job.size_bytes,
        job.endpoint,
        job.completion_window,
        job.deadline_at,
        job.metadata,
        job.output_expires_after,
        state.as_str(),
        now,
        job.provider,
    )
    .execute(&mut *conn)
    .await?;
    add_event(
        conn,
        job.id,
        state,
        &format!("claimed {}", job.file_name),
        now,
    )
    .await
}

/// `query_as!` of whole [`Job`] rows: every column, `FROM jobs`, then `$tail`.
macro_rules! select_jobs {
    ($tail:literal, $($arg:expr),*) => {
        sqlx::query_as!(
            Job,
            r#"SELECT id, file_name, path, size_bytes, sha256, request_count, endpoint, model, completion_window,
                  deadline_at, metadata, output_expires_after, state AS "state: JobState", reason_code, reason,
                  reason_line, attempts, cancel_requested_at, cancel_reason, results_dir, created_at, updated_at,
                  finished_at, provider
           FROM jobs "# + $tail,
            $($arg),*
        )
    };
}

/// One job by id.
pub async fn get(db: impl PgExecutor<'_>, id: &str) -> Result<Option<Job>, StoreError> {
    Ok(select_jobs!("WHERE id = $1", id).fetch_optional(db).await?)
}

/// The jobs among `ids`, by id; an id of no job is left out.
pub async fn among(db: impl PgExecutor<'_>, ids: &[String]) -> Result<Vec<Job>, StoreError> {
    Ok(select_jobs!("WHERE id = ANY($1) ORDER BY id", ids)
        .fetch_all(db)
        .await?)
}

/// Every job in one of `states`, oldest first.
pub async fn in_states(
    db: impl PgExecutor<'_>,
    states: &[JobState],
) -> Result<Vec<Job>, StoreError> {
    let wanted: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    // A list of `&str` for a `text[]` is given its type with `as`: the macros' own check of
    // an array parameter accepts only `&[String]`.
    Ok(
        select_jobs!("WHERE state = ANY($1) ORDER BY id", &wanted[..] as &[&str])
            .fetch_all(db)
            .await?,
    )
}

/// Moves a job to `state` with `why` (which replaces any earlier reason: the reason always
/// describes the current state), and records an event. Only the edges of the job state machine
/// are taken ([`JobState::sources`]): a terminal job never changes state.
pub async fn set_state(
    conn: &mut PgConnection,
    id: &str,
    state: JobState,
    why: Option<&Why>,
    message: &str,
    now: &str,
) -> Result<(), StoreError> {
    let finished_at = state.is_terminal().then_some(now);
    let (code, text, line) = match why {
        Some(w) => (Some(w.code.as_str()), Some(w.message.as_str()), w.line),
        None => (None, None, None),
    };
    let sources: Vec<&str> = state.sources().iter().map(|s| s.as_str()).collect();
    let updated = sqlx::query!(
        "UPDATE jobs
         SET state = $1, reason_code = $2, reason = $3, reason_line = $4, finished_at = $5, updated_at = $6
         WHERE id = $7 AND state = ANY($8)",
        state.as_str(),
        code,
        text,
        line,
        finished_at,
        now,
        id,
        &sources[..] as &[&str],
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        let found = get(&mut *conn, id).await?.map(|j| j.state);
        return Err(StoreError::job_move_refused(id, found, state));
    }
    add_event(conn, id, state, message, now).await
}

/// Records what the job's file looks like (at its claim).
pub async fn set_file_look(
    conn: &mut PgConnection,
    id: &str,
    look: &FileLook,
    now: &str,
) -> Result<(), StoreError> {
    let size = i64::try_from(look.bytes).unwrap_or(i64::MAX);
    // The inode's bit pattern, stored as a signed integer.
    let inode = look.ino as i64;
    sqlx::query!(
        "UPDATE jobs SET size_bytes = $1, file_mtime_ns = $2, file_inode = $3, updated_at = $4 WHERE id = $5",
        size,
        look.mtime_ns,
        inode,
        now,
        id,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The job's file as recorded, and until when its validation waits.
pub async fn recorded_file(
    db: impl PgExecutor<'_>,
    id: &str,
) -> Result<Option<RecordedFile>, StoreError> {
    Ok(sqlx::query_as!(
        RecordedFile,
        r#"SELECT size_bytes, file_mtime_ns AS mtime_ns, file_inode AS inode, validate_after
           FROM jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?)
}

/// Sends a job whose file changed before any of it reached the service back to `validating`,
/// to be validated again at `validate_after`: records the file as it is now, forgets what the
/// last validation found, drops the job's submissions and records `message` as an event.
///
/// `sending` is a submission whose caller was about to upload it, so nothing of it has been
/// sent. When any other submission has or may have reached the service (an input file, a
/// batch, an upload or create under way, or it is past uploading), or the job is past
/// submitting or being cancelled, nothing changes and the answer is false.
pub async fn validate_again(
    conn: &mut PgConnection,
    id: &str,
    look: &FileLook,
    sending: Option<i64>,
    validate_after: &str,
    message: &str,
    now: &str,
) -> Result<bool, StoreError> {
    let sent = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM batches
           WHERE job_id = $1 AND id IS DISTINCT FROM $2
             AND NOT (state IN ('queued', 'uploading') AND input_file_id IS NULL
                      AND remote_id IS NULL AND outcome_unknown_at IS NULL)"#,
        id,
        sending,
    )
    .fetch_one(&mut *conn)
    .await?;
    if sent > 0 {
        return Ok(false);
    }
    let size = i64::try_from(look.bytes).unwrap_or(i64::MAX);
    let inode = look.ino as i64;
    let state = JobState::Validating;
    let sources: Vec<&str> = state.sources().iter().map(|s| s.as_str()).collect();
    let updated = sqlx::query!(
        "UPDATE jobs
         SET state = $1, size_bytes = $2, file_mtime_ns = $3, file_inode = $4, validate_after = $5,
             sha256 = NULL, request_count = NULL, model = NULL,
             reason_code = NULL, reason = NULL, reason_line = NULL, updated_at = $6
         WHERE id = $7 AND state = ANY($8) AND cancel_requested_at IS NULL",
        state.as_str(),
        size,
        look.mtime_ns,
        inode,
        validate_after,
        now,
        id,
        &sources[..] as &[&str],
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    sqlx::query!("DELETE FROM batches WHERE job_id = $1", id)
        .execute(&mut *conn)
        .await?;
    add_event(conn, id, state, message, now).await?;
    Ok(true)
}

/// Records what validation found.
pub async fn record_validation(
    conn: &mut PgConnection,
    id: &str,
    sha256: &str,
    request_count: i64,
    endpoint: &str,
    model: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET sha256 = $1, request_count = $2, endpoint = $3, model = $4, updated_at = $5 WHERE id = $6",
        sha256,
        request_count,
        endpoint,
        model,
        now,
        id,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records where the file is now, relative to the queue root.
pub async fn set_path(
    conn: &mut PgConnection,
    id: &str,
    path: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET path = $1, updated_at = $2 WHERE id = $3",
        path,
        now,
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records where the results are, relative to the queue root.
pub async fn set_results_dir(
    conn: &mut PgConnection,
    id: &str,
    dir: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET results_dir = $1, updated_at = $2 WHERE id = $3",
        dir,
        now,
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts one more remote batch for the job.
pub async fn count_attempt(conn: &mut PgConnection, id: &str, now: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET attempts = attempts + 1, updated_at = $1 WHERE id = $2",
        now,
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Asks for a job to be cancelled. Returns false when the job is finished or a cancel was
/// already asked for (the first reason stands).
pub async fn request_cancel(
    conn: &mut PgConnection,
    id: &str,
    reason: &str,
    now: &str,
) -> Result<bool, StoreError> {
    let updated = sqlx::query!(
        "UPDATE jobs SET cancel_requested_at = $1, cancel_reason = $2, updated_at = $1
         WHERE id = $3 AND cancel_requested_at IS NULL
           AND NOT terminal",
        now,
        reason,
        id,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Appends an event to a job's story without changing its state.
pub async fn add_event(
    conn: &mut PgConnection,
    id: &str,
    state: JobState,
    message: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO job_events (job_id, at, state, message) VALUES ($1, $2, $3, $4)",
        id,
        now,
        state.as_str(),
        message
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A job's events, in order.
pub async fn events(db: impl PgExecutor<'_>, id: &str) -> Result<Vec<JobEvent>, StoreError> {
    Ok(sqlx::query_as!(
        JobEvent,
        r#"SELECT at, state AS "state: JobState", message FROM job_events WHERE job_id = $1 ORDER BY id"#,
        id
    )
    .fetch_all(db)
    .await?)
}

/// Jobs with their progress, newest first, those `filter` lets through, at most `limit`.
///
/// The file filter is a glob as SQLite's GLOB reads it (`*`, `?`, `[...]`, case-sensitive),
/// matched here as the equivalent regular expression (`glob_to_regex`).
pub async fn overview(
    db: impl PgExecutor<'_>,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<JobOverview>, StoreError> {
    let state = filter.state.map(|s| s.as_str());
    let file = filter.file.as_deref().map(glob_to_regex);
    Ok(sqlx::query_as!(
        JobOverview,
        r#"SELECT id AS "id!", file_name AS "file_name!", state AS "state!: JobState", reason_code, reason,
                  request_count, remote_status, remote_ids, requests_completed, requests_failed,
                  attempts AS "attempts!", deadline_at AS "deadline_at!", cancel_requested_at, path AS "path!",
                  results_dir, created_at AS "created_at!", updated_at AS "updated_at!", finished_at,
                  last_error, provider
           FROM job_overview o
           WHERE ($1::text IS NULL OR state = $1)
             AND ($2::text IS NULL OR file_name ~ $2)
             AND ($3::text IS NULL OR created_at >= $3)
             AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM jobs j WHERE j.id = o.id AND j.model = $4))
           ORDER BY id DESC
           LIMIT $5"#,
        state,
        file,
        filter.since,
        filter.model,
        limit,
    )
    .fetch_all(db)
    .await?)
}

/// One page of jobs, newest first: at most `limit` of those `filter` lets through, after the
/// job `after` (keyset paging on the id, never an offset). The file filter is a glob, as in
/// [`overview`].
pub async fn page(
    db: impl PgExecutor<'_>,
    filter: &Filter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<JobLine>, StoreError> {
    let state = filter.state.map(|s| s.as_str());
    let file = filter.file.as_deref().map(glob_to_regex);
    Ok(sqlx::query_as!(
        JobLine,
        r#"WITH page AS (
               SELECT id FROM jobs
               WHERE ($1::text IS NULL OR state = $1)
                 AND ($2::text IS NULL OR file_name ~ $2)
                 AND ($3::text IS NULL OR created_at >= $3)
                 AND ($4::text IS NULL OR model = $4)
                 AND ($5::text IS NULL OR id < $5)
               ORDER BY id DESC
               LIMIT $6
           ),
           latest AS (
               SELECT b.job_id, b.request_completed, b.request_failed, b.last_error, b.updated_at, b.id
               FROM batches b JOIN page p ON p.id = b.job_id
               WHERE b.attempt = (SELECT max(x.attempt) FROM batches x
                                  WHERE x.job_id = b.job_id AND x.part = b.part)
           )
           SELECT j.id, j.file_name, j.state AS "state: JobState", j.model, j.request_count,
                  (SELECT sum(l.request_completed) FROM latest l WHERE l.job_id = j.id)::BIGINT AS requests_completed,
                  (SELECT sum(l.request_failed) FROM latest l WHERE l.job_id = j.id)::BIGINT AS requests_failed,
                  (SELECT sum(u.cost_usd) FROM batch_usage u JOIN batches b ON b.id = u.batch_id
                   WHERE b.job_id = j.id) AS cost_usd,
                  j.reason_code, j.reason,
                  (SELECT l.last_error FROM latest l WHERE l.job_id = j.id AND l.last_error IS NOT NULL
                   ORDER BY l.updated_at DESC, l.id DESC LIMIT 1) AS last_error,
                  j.deadline_at, j.created_at, j.finished_at
           FROM page p JOIN jobs j ON j.id = p.id
           ORDER BY j.id DESC"#,
        state,
        file,
        filter.since,
        filter.model,
        after,
        limit,
    )
    .fetch_all(db)
    .await?)
}

/// A glob as SQLite's GLOB reads it, as a PostgreSQL regular expression (for `~`) that
/// matches the same strings: `*` any characters, `?` one character, `[...]` one of a set (`^`
/// first negates it, `]` first is itself, `a-z` a range of code points, `-` first or last is
/// itself; a reversed range holds only its first character), everything else itself,
/// case-sensitive, the whole name. A `[` that is never closed matches nothing, as in SQLite.
fn glob_to_regex(glob: &str) -> String {
    /// Matches no string.
    const NOTHING: &str = "(?!x)x";
    let mut out = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => {
                let mut set = String::new();
                let mut invert = false;
                if chars.peek() == Some(&'^') {
                    invert = true;
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    chars.next();
                    set.push_str(&entry(']'));
                }
                // The last single character, which a following `-` may start a range from.
                let mut prior: Option<char> = None;
                let mut closed = false;
                while let Some(c2) = chars.next() {
                    if c2 == ']' {
                        closed = true;
                        break;
                    }
                    match (c2, prior, chars.peek()) {
                        ('-', Some(lo), Some(&hi)) if hi != ']' => {
                            chars.next();
                            if lo <= hi {
                                set.push_str(&format!("{}-{}", entry(lo), entry(hi)));
                            }
                            prior = None;
                        }
                        _ => {
                            set.push_str(&entry(c2));
                            prior = Some(c2);
                        }
                    }
                }
                if !closed {
                    return NOTHING.to_owned();
                }
                // Never empty: a range follows a character, which is taken too.
                let not = if invert { "^" } else { "" };
                out.push_str(&format!("[{not}{set}]"));
            }
            c if c.is_ascii_alphanumeric() || !c.is_ascii() => out.push(c),
            // Any other ASCII character, escaped: `\` before a character that is not a letter
            // or digit stands for that character.
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out.push('$');
    out
}

/// A character as an entry of a bracket expression: its code point, escaped.
fn entry(c: char) -> String {
    format!("\\U{:08X}", u32::from(c))
}

/// The jobs of a file, newest first: those whose file had this name, or whose file is at one
/// of `paths` (relative to queue.dir, as `jobs.path` holds it).
pub async fn of_file(
    db: impl PgExecutor<'_>,
    name: &str,
    paths: &[String],
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs
           WHERE file_name = $1 OR path = ANY($2)
           ORDER BY id DESC"#,
        name,
        paths
    )
    .fetch_all(db)
    .await?)
}

/// The number of jobs in each state.
pub async fn state_counts(db: impl PgExecutor<'_>) -> Result<Vec<(JobState, i64)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT state AS "state!: JobState", jobs AS "jobs!" FROM job_state_counts"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.jobs)).collect())
}

/// Jobs past their deadline that are not finished and not yet marked for cancel.
pub async fn past_deadline(
    db: impl PgExecutor<'_>,
    held_by: &Lease,
    now: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs
           WHERE deadline_at <= $1 AND cancel_requested_at IS NULL
             AND NOT terminal AND ($2::BIGINT = 0 OR owner_epoch = $2)
           ORDER BY id"#,
        now,
        held_by.epoch()
    )
    .fetch_all(db)
    .await?)
}

/// The ids of the jobs that are not finished, oldest first.
pub async fn unfinished(
    db: impl PgExecutor<'_>,
    held_by: &Lease,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs
           WHERE NOT terminal AND ($1::BIGINT = 0 OR owner_epoch = $1)
           ORDER BY id"#,
        held_by.epoch()
    )
    .fetch_all(db)
    .await?)
}

/// Jobs marked for cancel that are not finished yet.
pub async fn cancel_pending(
    db: impl PgExecutor<'_>,
    held_by: &Lease,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs
           WHERE cancel_requested_at IS NOT NULL
             AND NOT terminal AND ($1::BIGINT = 0 OR owner_epoch = $1)"#,
        held_by.epoch()
    )
    .fetch_all(db)
    .await?)
}

/// Up to `limit` claimed jobs waiting for validation, oldest first.
pub async fn validating(
    db: impl PgExecutor<'_>,
    held_by: &Lease,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM jobs
           WHERE state = 'validating' AND ($2::BIGINT = 0 OR owner_epoch = $2)
           ORDER BY id LIMIT $1"#,
        limit,
        held_by.epoch()
    )
    .fetch_all(db)
    .await?)
}

/// Jobs whose every submission is done with (a job in `collecting`, derived from its
/// submissions, with none left to collect): ready to be finished.
pub async fn finishable(
    db: impl PgExecutor<'_>,
    held_by: &Lease,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT j.id AS "id!" FROM jobs j
           WHERE j.state = 'collecting' AND ($1::BIGINT = 0 OR j.owner_epoch = $1)
             AND EXISTS (SELECT 1 FROM batches b WHERE b.job_id = j.id)
             AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.job_id = j.id
                             AND NOT b.terminal)
           ORDER BY j.id"#,
        held_by.epoch()
    )
    .fetch_all(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::glob_to_regex;

    #[test]
    fn a_glob_becomes_a_regex_that_matches_the_whole_name() {
        assert_eq!(glob_to_regex("a*.jsonl"), r"^a.*\.jsonl$");
        assert_eq!(glob_to_regex("?x"), "^.x$");
        assert_eq!(
            glob_to_regex("a+b(c)|d{1}$^\\"),
            r"^a\+b\(c\)\|d\{1\}\$\^\\$"
        );
        assert_eq!(glob_to_regex("été"), "^été$");
    }

    #[test]
    fn sets_read_as_sqlite_reads_them() {
        assert_eq!(glob_to_regex("[ab]"), r"^[\U00000061\U00000062]$");
        // A range's first character is also taken alone, as SQLite takes it.
        assert_eq!(
            glob_to_regex("[^a-c]"),
            r"^[^\U00000061\U00000061-\U00000063]$"
        );
        // `]` first is itself; `-` first or last is itself.
        assert_eq!(glob_to_regex("[]]"), r"^[\U0000005D]$");
        assert_eq!(
            glob_to_regex("[]-a]"),
            r"^[\U0000005D\U0000002D\U00000061]$"
        );
        assert_eq!(
            glob_to_regex("[-a-]"),
            r"^[\U0000002D\U00000061\U0000002D]$"
        );
        // A `-` right after a range is itself.
        assert_eq!(
            glob_to_regex("[a-c-e]"),
            r"^[\U00000061\U00000061-\U00000063\U0000002D\U00000065]$"
        );
        // A reversed range holds nothing but its first character.
        assert_eq!(glob_to_regex("[c-a]x"), r"^[\U00000063]x$");
        // Never closed: matches nothing.
        assert_eq!(glob_to_regex("a[bc"), "(?!x)x");
        assert_eq!(glob_to_regex("*[]"), "(?!x)x");
        // `*`, `?` and `[` inside a set are themselves.
        assert_eq!(
            glob_to_regex("[*?[]"),
            r"^[\U0000002A\U0000003F\U0000005B]$"
        );
    }
}
