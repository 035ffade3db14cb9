-- Downloads that never succeed must end. When a finished batch's result files first failed to
-- download (cleared once they are downloaded); the daemon keeps trying until
-- collect.give_up_after has passed since then, or stops at the next failure once the job is
-- cancelled (deadline or operator).
ALTER TABLE batches ADD COLUMN collect_failing_since TEXT;
-- When the daemon gave up: which result file could not be downloaded and the last error, for
-- example "the output file file-abc could not be downloaded since 2026-...: HTTP 500 ...".
-- The job then fails with reason_code results_unavailable, keeping what was downloaded.
ALTER TABLE batches ADD COLUMN results_unavailable TEXT;
