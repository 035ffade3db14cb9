-- Which result files of a finished submission were gone from the service when batchwatch came
-- to download them (expired or deleted), for example "the output file file-abc no longer
-- exists". Written by the download step alone, and read when the job's outcome is decided: a
-- batch that completed with results missing fails its job with reason_code results_missing.
-- NULL: every result file the batch had was downloaded (or it is not downloaded yet).
ALTER TABLE batches ADD COLUMN results_missing TEXT;
