-- Token usage and estimated cost per remote batch, counts of job state changes, and what the
-- monitoring endpoint reads at every scrape (README.md, "Monitoring").

-- The token usage of each remote batch, as its batch object's `usage` last reported it, and its
-- estimated cost. A row exists once the API reported usage, or once the batch ended.
CREATE TABLE batch_usage (
    batch_id INTEGER PRIMARY KEY NOT NULL REFERENCES batches (id),
    -- usage.input_tokens, of which usage.input_tokens_details.cached_tokens were cached; and
    -- usage.output_tokens, of which usage.output_tokens_details.reasoning_tokens were reasoning.
    -- NULL when the service reported no usage (older batches, some services).
    input_tokens INTEGER,
    cached_tokens INTEGER,
    output_tokens INTEGER,
    reasoning_tokens INTEGER,
    -- The estimated cost in US dollars, from the configuration's [pricing] for the job's model
    -- when the batch ended. NULL: not ended yet, no usage, or no price for the model.
    cost_usd REAL,
    -- When batchwatch first saw the batch ended and booked its cost. Set once: a later
    -- observation (or a restart) changes neither the usage nor the cost.
    booked_at TEXT,
    updated_at TEXT NOT NULL
) STRICT;

-- Per job: its batches' tokens and estimated cost (NULL when no batch of it is priced).
CREATE VIEW job_costs AS
SELECT
    j.id AS job_id,
    j.model,
    j.state,
    count(u.batch_id) AS batches,
    coalesce(sum(u.input_tokens), 0) AS input_tokens,
    coalesce(sum(u.cached_tokens), 0) AS cached_tokens,
    coalesce(sum(u.output_tokens), 0) AS output_tokens,
    coalesce(sum(u.reasoning_tokens), 0) AS reasoning_tokens,
    sum(u.cost_usd) AS cost_usd
FROM jobs j
LEFT JOIN batches b ON b.job_id = j.id
LEFT JOIN batch_usage u ON u.batch_id = b.id
GROUP BY j.id;

-- Per model: the tokens and estimated cost of all its batches so far.
CREATE VIEW model_costs AS
SELECT
    coalesce(j.model, '') AS model,
    count(*) AS batches,
    coalesce(sum(u.input_tokens), 0) AS input_tokens,
    coalesce(sum(u.cached_tokens), 0) AS cached_tokens,
    coalesce(sum(u.output_tokens), 0) AS output_tokens,
    coalesce(sum(u.reasoning_tokens), 0) AS reasoning_tokens,
    coalesce(sum(u.cost_usd), 0.0) AS cost_usd
FROM batch_usage u
JOIN batches b ON b.id = u.batch_id
JOIN jobs j ON j.id = b.job_id
GROUP BY coalesce(j.model, '');

-- How many times jobs moved from one state to another, kept by the trigger below in the same
-- transaction as the move (counted from schema version 5 on).
CREATE TABLE job_transitions (
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (from_state, to_state)
) STRICT, WITHOUT ROWID;

-- The moves into a final state start at zero, so a monitoring system sees the first one as an
-- increase (a series that appears already at 1 shows none).
INSERT INTO job_transitions (from_state, to_state, count) VALUES
    ('validating', 'rejected', 0),
    ('collecting', 'completed', 0),
    ('collecting', 'failed', 0),
    ('collecting', 'expired', 0),
    ('collecting', 'cancelled', 0);

CREATE TRIGGER jobs_count_transitions AFTER UPDATE OF state ON jobs
WHEN old.state IS NOT new.state
BEGIN
    INSERT INTO job_transitions (from_state, to_state, count) VALUES (old.state, new.state, 1)
    ON CONFLICT (from_state, to_state) DO UPDATE SET count = count + 1;
END;

-- Remote batches batchwatch still follows, with when it first saw each in its current status:
-- what stuck batches are found by.
CREATE VIEW batch_status_since AS
SELECT
    b.id,
    b.remote_id,
    b.job_id,
    b.status,
    (SELECT min(h.observed_at) FROM status_history h
     WHERE h.batch_id = b.id AND h.status = b.status) AS status_since
FROM batches b
WHERE b.state = 'active';

-- The last answer about any batch (batchwatch_last_successful_poll_timestamp_seconds).
CREATE INDEX batches_last_polled ON batches (last_polled_at);
