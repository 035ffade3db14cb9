-- Whether a job or a submission is in a final state, computed by SQLite from `state`: 1 for
-- a job that is rejected, completed, failed, expired or cancelled, and for a submission that
-- is finished, abandoned or lost; 0 otherwise. batchwatch's own queries use these columns
-- instead of listing the states (the code's lists, JobState::TERMINAL and
-- SubmissionState::TERMINAL, are tested to agree with them), and so can yours:
--   select count(*) from jobs where terminal = 0
ALTER TABLE jobs ADD COLUMN terminal INTEGER NOT NULL
    GENERATED ALWAYS AS (state IN ('rejected', 'completed', 'failed', 'expired', 'cancelled')) VIRTUAL;
ALTER TABLE batches ADD COLUMN terminal INTEGER NOT NULL
    GENERATED ALWAYS AS (state IN ('finished', 'abandoned', 'lost')) VIRTUAL;

-- The indexes over unfinished jobs, on the same condition as the queries that use them.
DROP INDEX jobs_unfinished_deadline;
CREATE INDEX jobs_unfinished_deadline ON jobs (deadline_at) WHERE terminal = 0;
DROP INDEX jobs_unfinished_cancel;
CREATE INDEX jobs_unfinished_cancel ON jobs (cancel_requested_at) WHERE terminal = 0;

-- The earliest back-off among unfinished submissions: the daemon sleeps until then when
-- nothing is nearer.
CREATE INDEX batches_not_before ON batches (not_before) WHERE terminal = 0 AND not_before IS NOT NULL;
