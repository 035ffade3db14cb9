-- jobs.provider: the service a job's requests go to (`openai`, `azure` or `anthropic`), recorded
-- when its file is claimed; NULL for jobs claimed before it was recorded (those ran on the
-- service the configuration named then, OpenAI's API or Azure's). job_overview gains it; its
-- other columns are unchanged.
ALTER TABLE jobs ADD COLUMN provider TEXT;

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
     ORDER BY l.updated_at DESC, l.id DESC LIMIT 1) AS last_error,
    j.provider
FROM jobs j;
