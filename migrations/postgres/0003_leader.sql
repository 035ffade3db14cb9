-- One leader among the instances, for what must run once for the whole fleet (tracking the
-- batches, the stuck check, retention, remote clean-up, resubmissions, the duplicate watch).
-- Elected through this row rather than a session's advisory lock, so that a dropped connection
-- cannot leave two instances each believing it leads: a term runs until `expires_at` by the
-- server's clock, and another instance is elected only once it ran out.
-- crates/store/src/ops/lease.rs describes the terms.
CREATE TABLE leader (
    -- One row at most.
    id SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch BIGINT NOT NULL,
    elected_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- The fence, as in 0002_leases.sql, and one more writer it lets through: the leader, for a job
-- it does not hold, while its term runs. `batchwatch.leader` is set (for its transaction) by
-- the store only after it found the writer's term running and held that row for share, so the
-- term cannot pass to another instance before the transaction ends.
CREATE OR REPLACE FUNCTION batchwatch_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    writer BIGINT := nullif(current_setting('batchwatch.epoch', true), '')::BIGINT;
    leader_epoch BIGINT := nullif(current_setting('batchwatch.leader', true), '')::BIGINT;
    job TEXT;
    holder BIGINT;
    finished BOOLEAN;
BEGIN
    IF writer IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_TABLE_NAME = 'jobs' THEN
        IF TG_OP = 'INSERT' THEN
            NEW.owner_epoch := writer;
            RETURN NEW;
        END IF;
        IF NEW.owner_epoch IS DISTINCT FROM OLD.owner_epoch THEN
            RAISE EXCEPTION 'job % changes hands only by a takeover', OLD.id
                USING ERRCODE = 'BW001';
        END IF;
        job := OLD.id;
        holder := OLD.owner_epoch;
        finished := OLD.terminal;
    ELSE
        IF TG_TABLE_NAME = 'status_history' THEN
            SELECT b.job_id INTO job FROM batches b WHERE b.id = NEW.batch_id;
        ELSE
            job := NEW.job_id;
        END IF;
        SELECT j.owner_epoch, j.terminal INTO holder, finished FROM jobs j WHERE j.id = job;
    END IF;
    IF holder IS DISTINCT FROM writer AND leader_epoch IS DISTINCT FROM writer
       AND NOT coalesce(finished, false) THEN
        RAISE EXCEPTION 'job % is held under lease epoch %, not %', job, holder, writer
            USING ERRCODE = 'BW001';
    END IF;
    RETURN NEW;
END;
$$;
