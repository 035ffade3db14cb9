-- batchwatch's schema. It is a contract for users' status queries: README.md documents it, and
-- later versions only add to it (forward-only migrations).
--
-- Every timestamp is TEXT in UTC, RFC 3339 with milliseconds: 2026-11-22T10:15:00.000Z, so it
-- sorts as text and SQLite's date functions read it.

-- One row per file that entered the queue.
CREATE TABLE jobs (
    -- "job_" and 26 characters; also the batches' metadata value batchwatch_job_id.
    id TEXT PRIMARY KEY NOT NULL,
    -- The file's name in incoming/ (invalid UTF-8 replaced by U+FFFD).
    file_name TEXT NOT NULL,
    -- Where the file is: processing/..., then done/... or failed/... (relative to queue.dir).
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    -- Set once the file is validated.
    sha256 TEXT,
    request_count INTEGER,
    endpoint TEXT,
    model TEXT,
    completion_window TEXT NOT NULL,
    deadline_at TEXT NOT NULL,
    -- JSON object: the metadata sent with each batch, batchwatch's own keys excluded.
    metadata TEXT NOT NULL DEFAULT '{}',
    -- Seconds; sent as output_expires_after when set.
    output_expires_after INTEGER,
    -- validating, rejected, queued, submitting, running, cancelling, collecting,
    -- completed, failed, expired, cancelled (see README.md).
    state TEXT NOT NULL,
    -- Why the job is rejected, failed, expired or cancelled, or why it waits: a stable code
    -- (a validation rule, token_limit_exceeded, deadline, operator, batch_lost, ...) and a message.
    reason_code TEXT,
    reason TEXT,
    -- The 1-based line of the file at fault, for a validation rule.
    reason_line INTEGER,
    -- Remote batches created for this job so far.
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Set by the daemon at the deadline, or by `batchwatch cancel`; the daemon carries it out.
    cancel_requested_at TEXT,
    cancel_reason TEXT,
    -- Where the results are (relative to queue.dir), once collected.
    results_dir TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT
) STRICT;

CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_finished_at ON jobs (finished_at);
-- The daemon looks for deadlines and cancels among unfinished jobs at every tick; finished
-- jobs, which pile up, stay out of these indexes.
CREATE INDEX jobs_unfinished_deadline ON jobs (deadline_at)
    WHERE state NOT IN ('rejected', 'completed', 'failed', 'expired', 'cancelled');
CREATE INDEX jobs_unfinished_cancel ON jobs (cancel_requested_at)
    WHERE state NOT IN ('rejected', 'completed', 'failed', 'expired', 'cancelled');

-- What happened to each job, in order: one row per state change, with its reason.
CREATE TABLE job_events (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    at TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL
) STRICT;

CREATE INDEX job_events_job ON job_events (job_id, id);

-- One row per submission of (a part of) a job. The row is written, as an intent, before the
-- upload and before the create; remote_id is set once the remote batch exists.
CREATE TABLE batches (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    -- 0 unless the file was split; the part's byte range and request count in the file.
    part INTEGER NOT NULL DEFAULT 0,
    part_start INTEGER NOT NULL,
    part_end INTEGER NOT NULL,
    part_requests INTEGER NOT NULL,
    -- 1, 2, ... for each submission of the same part.
    attempt INTEGER NOT NULL,
    -- batchwatch's step: queued, uploading, creating, active, collecting, finished,
    -- abandoned (never created), lost (the remote batch vanished).
    state TEXT NOT NULL,
    -- The next step (upload, create, cancel, download) is not taken before this time: a back-off
    -- after a refusal or a failure. Polls use next_poll_at.
    not_before TEXT,
    -- When an upload or create may or may not have happened; it is reconciled before anything else.
    outcome_unknown_at TEXT,
    -- When the create was sent again because reconciliation found no batch: for a day, the
    -- daemon watches for a late duplicate of the earlier request and cancels it.
    resent_at TEXT,
    -- The remote batch, as last seen.
    remote_id TEXT UNIQUE,
    input_file_id TEXT,
    -- The remote status: validating, in_progress, finalizing, completed, failed, expired,
    -- cancelling, cancelled; any other value is stored as it came.
    status TEXT,
    request_total INTEGER,
    request_completed INTEGER,
    request_failed INTEGER,
    remote_created_at TEXT,
    in_progress_at TEXT,
    expires_at TEXT,
    finalizing_at TEXT,
    completed_at TEXT,
    failed_at TEXT,
    expired_at TEXT,
    cancelling_at TEXT,
    cancelled_at TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    -- JSON: the batch's `errors` object.
    errors TEXT,
    -- JSON: the whole batch object as last received.
    raw TEXT,
    next_poll_at TEXT,
    last_polled_at TEXT,
    cancel_requested_at TEXT,
    cancel_sent_at TEXT,
    -- The last local error for this submission (an upload refused, a download that failed...).
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (job_id, part, attempt)
) STRICT;

CREATE INDEX batches_job ON batches (job_id);
CREATE INDEX batches_state_poll ON batches (state, next_poll_at);

-- Every remote status change batchwatch observed, in order. Append-only.
CREATE TABLE status_history (
    id INTEGER PRIMARY KEY,
    batch_id INTEGER NOT NULL REFERENCES batches (id),
    observed_at TEXT NOT NULL,
    status TEXT NOT NULL,
    request_total INTEGER,
    request_completed INTEGER,
    request_failed INTEGER,
    raw TEXT NOT NULL
) STRICT;

CREATE INDEX status_history_batch ON status_history (batch_id, id);

CREATE TRIGGER status_history_no_update BEFORE UPDATE ON status_history
BEGIN
    SELECT RAISE(ABORT, 'status_history is append-only');
END;

CREATE TRIGGER status_history_no_delete BEFORE DELETE ON status_history
BEGIN
    SELECT RAISE(ABORT, 'status_history is append-only');
END;

-- Remote batches that are not finished, with their job.
CREATE VIEW active_batches AS
SELECT
    b.remote_id,
    b.job_id,
    j.file_name,
    b.part,
    b.attempt,
    b.state,
    b.status,
    b.request_total,
    b.request_completed,
    b.request_failed,
    j.deadline_at,
    b.cancel_requested_at,
    b.next_poll_at,
    b.created_at
FROM batches b
JOIN jobs j ON j.id = b.job_id
WHERE b.state IN ('uploading', 'creating', 'active', 'collecting');

-- How many jobs are in each state.
CREATE VIEW job_state_counts AS
SELECT state, count(*) AS jobs FROM jobs GROUP BY state;

-- How many remote batches are in each remote status.
CREATE VIEW batch_status_counts AS
SELECT status, count(*) AS batches FROM batches WHERE remote_id IS NOT NULL GROUP BY status;

-- Jobs that did not complete, newest first, with why.
CREATE VIEW recent_failures AS
SELECT id, file_name, state, reason_code, reason_line, reason, path, results_dir, finished_at
FROM jobs
WHERE state IN ('rejected', 'failed', 'expired', 'cancelled')
ORDER BY finished_at DESC, id DESC
LIMIT 100;

-- One row per job with the progress of the latest submission of each of its parts: what
-- `batchwatch status` shows.
CREATE VIEW job_overview AS
WITH latest AS (
    SELECT b.*
    FROM batches b
    WHERE b.attempt = (SELECT max(x.attempt) FROM batches x WHERE x.job_id = b.job_id AND x.part = b.part)
)
SELECT
    j.id,
    j.file_name,
    j.state,
    j.reason_code,
    j.reason,
    j.request_count,
    (SELECT group_concat(DISTINCT l.status) FROM latest l WHERE l.job_id = j.id) AS remote_status,
    (SELECT group_concat(l.remote_id, ' ') FROM latest l WHERE l.job_id = j.id) AS remote_ids,
    (SELECT sum(l.request_completed) FROM latest l WHERE l.job_id = j.id) AS requests_completed,
    (SELECT sum(l.request_failed) FROM latest l WHERE l.job_id = j.id) AS requests_failed,
    j.attempts,
    j.deadline_at,
    j.cancel_requested_at,
    j.path,
    j.results_dir,
    j.created_at,
    j.updated_at,
    j.finished_at
FROM jobs j;
