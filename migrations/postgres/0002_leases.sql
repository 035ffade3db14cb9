-- Several daemons on one database: each running daemon is an instance with a lease, and
-- every unfinished job is held by at most one instance. A write that moves a job, its
-- submissions, their history or its events is refused (SQLSTATE BW001) unless the writer's
-- instance holds the job: the fence, checked here by triggers so that no query can forget it.
-- crates/store/src/ops/lease.rs describes the states and transitions.

-- One row per incarnation of a daemon: a restart registers anew, with a new epoch. The row
-- is deleted (reaped) once its lease expired, which frees its jobs for another instance to
-- take; an instance whose row is gone has lost its lease and must register again.
CREATE TABLE instances (
    epoch BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- instance.name, else HOST-PID.
    name TEXT COLLATE "C" NOT NULL,
    host TEXT COLLATE "C" NOT NULL,
    pid BIGINT NOT NULL,
    started_at TEXT COLLATE "C" NOT NULL,
    -- The last renewal, and until when the lease runs (the server's clock, so that the
    -- instances' clocks need not agree).
    heartbeat_at TEXT COLLATE "C" NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- The instance that holds the job (its epoch); NULL: nobody, until an instance takes it.
ALTER TABLE jobs ADD COLUMN owner_epoch BIGINT;
CREATE INDEX jobs_owner ON jobs (owner_epoch) WHERE NOT terminal;

-- The fence. `batchwatch.epoch` is set (for its transaction) by the store for a writer that
-- holds a lease; a transaction without it is an operator's command or the store's own
-- bookkeeping (a takeover), which the fence lets through. A finished job is not fenced: it
-- never moves again, and what is written of it afterwards (where its file went, what
-- retention pruned) is the same whoever writes it.
CREATE FUNCTION batchwatch_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    writer BIGINT := nullif(current_setting('batchwatch.epoch', true), '')::BIGINT;
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
    IF holder IS DISTINCT FROM writer AND NOT coalesce(finished, false) THEN
        RAISE EXCEPTION 'job % is held under lease epoch %, not %', job, holder, writer
            USING ERRCODE = 'BW001';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_fence BEFORE INSERT OR UPDATE ON jobs
FOR EACH ROW EXECUTE FUNCTION batchwatch_fence();
CREATE TRIGGER batches_fence BEFORE INSERT OR UPDATE ON batches
FOR EACH ROW EXECUTE FUNCTION batchwatch_fence();
CREATE TRIGGER status_history_fence BEFORE INSERT ON status_history
FOR EACH ROW EXECUTE FUNCTION batchwatch_fence();
CREATE TRIGGER job_events_fence BEFORE INSERT ON job_events
FOR EACH ROW EXECUTE FUNCTION batchwatch_fence();
