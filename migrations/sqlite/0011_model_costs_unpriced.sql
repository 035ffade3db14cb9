-- model_costs.cost_usd is NULL for a model none of whose batches has a price, as job_costs'
-- is for a job: no price, no estimate (0.0 read as "free"). The monitoring endpoint then leaves
-- such a model out of batchwatch_cost_usd_total, so a dashboard shows no data rather than $0.
-- Its other columns are unchanged.
DROP VIEW model_costs;

CREATE VIEW model_costs AS
SELECT
    coalesce(j.model, '') AS model,
    count(*) AS batches,
    coalesce(sum(u.input_tokens), 0) AS input_tokens,
    coalesce(sum(u.cached_tokens), 0) AS cached_tokens,
    coalesce(sum(u.output_tokens), 0) AS output_tokens,
    coalesce(sum(u.reasoning_tokens), 0) AS reasoning_tokens,
    sum(u.cost_usd) AS cost_usd
FROM batch_usage u
JOIN batches b ON b.id = u.batch_id
JOIN jobs j ON j.id = b.job_id
GROUP BY coalesce(j.model, '');
