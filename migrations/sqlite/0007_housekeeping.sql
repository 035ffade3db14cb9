-- Housekeeping for a daemon that runs for months (README.md, "Housekeeping"): files deleted
-- from the service once a job is done with them, the history of old jobs pruned, and the
-- requests a batch left undone sent again.

-- Every deletion of a file on the service. The row is the intent: it is committed before the
-- DELETE request is sent (in the transaction that ends the job, for the job's own files), and
-- a deletion is repeated until the service answers; a 404 (already gone) counts as done.
CREATE TABLE remote_deletions (
    id INTEGER PRIMARY KEY,
    -- The file on the service.
    file_id TEXT NOT NULL UNIQUE,
    -- The job it belongs to; NULL for a file `batchwatch gc-remote` found whose job this
    -- database does not hold.
    job_id TEXT REFERENCES jobs (id),
    -- input, output or errors.
    kind TEXT NOT NULL,
    -- cleanup (the daemon, cleanup.remote_files) or gc (`batchwatch gc-remote --delete`).
    origin TEXT NOT NULL,
    -- pending (to be sent, or tried again after not_before), deleted (the service said so) or
    -- gone (404: it was already gone, expired or deleted by someone else).
    state TEXT NOT NULL,
    -- Requests sent so far that failed.
    failures INTEGER NOT NULL DEFAULT 0,
    not_before TEXT,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    done_at TEXT
) STRICT;

CREATE INDEX remote_deletions_job ON remote_deletions (job_id);
CREATE INDEX remote_deletions_pending ON remote_deletions (not_before) WHERE state = 'pending';

-- status_history stays append-only, except that retention.history may delete the rows of
-- jobs that ended (the rows of unfinished jobs can never be deleted).
DROP TRIGGER status_history_no_delete;

CREATE TRIGGER status_history_no_delete BEFORE DELETE ON status_history
WHEN NOT EXISTS (
    SELECT 1 FROM batches b JOIN jobs j ON j.id = b.job_id
    WHERE b.id = old.batch_id AND j.terminal = 1
)
BEGIN
    SELECT RAISE(ABORT, 'status_history is append-only; only the rows of finished jobs are pruned');
END;

-- Local retention (retention.*): when the job's file (with its sidecar and reason file) was
-- removed from done/ or failed/, and when its results/JOBID/ directory was removed. NULL:
-- still there (or never made).
ALTER TABLE jobs ADD COLUMN files_pruned_at TEXT;
ALTER TABLE jobs ADD COLUMN results_pruned_at TEXT;

-- A job made by `batchwatch resubmit` or batch.resubmit_expired: the job whose undone requests
-- it holds (no foreign key: retention may delete the parent's rows first).
ALTER TABLE jobs ADD COLUMN parent_job_id TEXT;
CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;
-- Set when the job ended expired and batch.resubmit_expired asks for its undone requests to
-- be queued again ('expired'); cleared once the new file is written into incoming/.
ALTER TABLE jobs ADD COLUMN resubmit_due TEXT;
CREATE INDEX jobs_resubmit_due ON jobs (id) WHERE resubmit_due IS NOT NULL;
