-- The file as it was claimed, to tell whether a writer changed it afterwards: with size_bytes,
-- its modification time (nanoseconds since 1970) and inode number. A file that changed before
-- any of it was sent to the service is validated again instead of being sent truncated.
-- NULL for jobs claimed before this version (only size_bytes is compared for them).
ALTER TABLE jobs ADD COLUMN file_mtime_ns INTEGER;
ALTER TABLE jobs ADD COLUMN file_inode INTEGER;
-- A job whose file changed after its claim waits in `validating` until this time (the file
-- must hold still for queue.settle_time), then is validated again. NULL: validate at once.
ALTER TABLE jobs ADD COLUMN validate_after TEXT;

-- job_overview gains last_error: the last error recorded on the job's latest submissions (a
-- download or a poll that keeps failing), so `batchwatch status` can say why a running job
-- does not move. Its other columns are unchanged.
DROP VIEW job_overview;

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
    j.finished_at,
    (SELECT l.last_error FROM latest l WHERE l.job_id = j.id AND l.last_error IS NOT NULL
     ORDER BY l.updated_at DESC, l.id DESC LIMIT 1) AS last_error
FROM jobs j;
