-- Notifications ([[notify]]): who is told of a job's end, or of a batch stuck, and how each
-- delivery went. A row is written in the transaction that ends the job (for a stuck batch,
-- when the daemon first sees it stuck) and tried until its target takes it or its time runs
-- out: pending -> delivered | abandoned.
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    -- The [[notify]] entry, by name.
    target TEXT NOT NULL,
    -- completed, failed, expired, cancelled, rejected or stuck.
    event TEXT NOT NULL,
    -- What makes it one of a kind for its target: the job's end, or one stuck episode.
    key TEXT NOT NULL,
    -- The webhook-id header: the same on every try, so a receiver drops what it has.
    webhook_id TEXT NOT NULL UNIQUE,
    -- The event, JSON, as sent.
    payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'abandoned')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    give_up_at TEXT NOT NULL,
    -- How the last try went: HTTP 503, exit status 3, timed out after 10s, ...
    last_outcome TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    done_at TEXT,
    UNIQUE (target, key)
) STRICT;

CREATE INDEX notifications_job ON notifications (job_id);
CREATE INDEX notifications_pending ON notifications (next_attempt_at) WHERE state = 'pending';
