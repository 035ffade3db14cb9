-- Two reads that went through every tracked batch find their few rows by index instead (with
-- 10,000 batches tracked, each read some 5,000 pages): the stuck-batch check (every minute)
-- looks only at active batches in the statuses that can be stuck, and the duplicate check
-- (every reconcile.duplicate_check_interval) only at submissions whose create was sent again.
CREATE INDEX batches_state_status ON batches (state, status);
CREATE INDEX batches_resent ON batches (resent_at) WHERE resent_at IS NOT NULL;
