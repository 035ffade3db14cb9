-- A local fault is the host's, not the service's: results that cannot be written here (a full
-- disk, a quota, a permission, an I/O error) wait for the host, however long, and never count
-- towards collect.give_up_after. When the current run of such failures began, for a submission
-- whose results are waiting on one (cleared once they are written, or when the service fails
-- instead); `batchwatch status` shows the fault and the metrics count these submissions.
ALTER TABLE batches ADD COLUMN local_fault_since TEXT;
