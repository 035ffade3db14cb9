-- Resubmissions (README.md, "Housekeeping"): each file of undone requests that `batchwatch
-- resubmit` or batch.resubmit_expired writes into incoming/ is first a row here, committed
-- before the file appears under its name. While a row is pending, or the job that claimed its
-- file runs, the chain of jobs from one original file has a resubmission in flight, and
-- another resubmission of that chain is refused (unless forced).
CREATE TABLE resubmissions (
    id INTEGER PRIMARY KEY,
    -- The job whose undone requests the file holds.
    job_id TEXT NOT NULL REFERENCES jobs (id),
    -- The file's name in incoming/ (`STEM.resubmit-N.jsonl`, its sidecar `NAME.toml`).
    file_name TEXT NOT NULL,
    -- The temporary names the file and its sidecar were written under before the row was
    -- committed: incoming/.batchwatch-resubmit-STAGE.part and .batchwatch-resubmit-STAGE.toml.part.
    -- Renamed into place after the commit; one a crash left is renamed by the next look at the
    -- chain, or by the daemon at its start.
    stage TEXT NOT NULL,
    -- Lines in the file.
    requests INTEGER NOT NULL,
    -- expired, failed or unfinished (`--only`).
    only TEXT NOT NULL,
    -- 1 when written with `--force`, whatever the chain had completed or had in flight.
    forced INTEGER NOT NULL,
    -- cli (`batchwatch resubmit`) or daemon (batch.resubmit_expired).
    origin TEXT NOT NULL,
    -- pending (written, not yet claimed), claimed (a job was made of it: child_job_id) or
    -- withdrawn (its file left incoming/ without being claimed: removed by hand).
    state TEXT NOT NULL,
    -- The job that claimed the file (no foreign key: retention may delete it first).
    child_job_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE INDEX resubmissions_job ON resubmissions (job_id);
-- Two files waiting in incoming/ never share a name.
CREATE UNIQUE INDEX resubmissions_pending_name ON resubmissions (file_name) WHERE state = 'pending';
