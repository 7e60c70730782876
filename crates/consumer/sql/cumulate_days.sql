-- Each site's running totals over its days (`cum_*` of `metrics_daily`,
-- which `site_uptime` subtracts to sum any run of whole days), made again
-- from the day $1 on, for every site or the sites {sites} keeps; a row is
-- written only if its totals change.
UPDATE metrics_daily d
SET cum_probes = c.cum_probes,
    cum_up = c.cum_up,
    cum_responses = c.cum_responses,
    cum_latency_sum_us = c.cum_latency_sum_us
FROM (
    SELECT x.website_id, x.day,
           coalesce(base.cum_probes, 0) + sum(x.probes) OVER w AS cum_probes,
           coalesce(base.cum_up, 0) + sum(x.up) OVER w AS cum_up,
           coalesce(base.cum_responses, 0) + sum(x.responses) OVER w AS cum_responses,
           coalesce(base.cum_latency_sum_us, 0) + sum(coalesce(x.latency_sum_us, 0)) OVER w AS cum_latency_sum_us
    FROM metrics_daily x
    LEFT JOIN LATERAL (
        SELECT p.cum_probes, p.cum_up, p.cum_responses, p.cum_latency_sum_us
        FROM metrics_daily p
        WHERE p.website_id = x.website_id AND p.day < $1
        ORDER BY p.day DESC
        LIMIT 1
    ) base ON true
    WHERE x.day >= $1 {sites}
    WINDOW w AS (PARTITION BY x.website_id ORDER BY x.day)
) c
WHERE d.website_id = c.website_id AND d.day = c.day
  AND (d.cum_probes, d.cum_up, d.cum_responses, d.cum_latency_sum_us)
      IS DISTINCT FROM (c.cum_probes, c.cum_up, c.cum_responses, c.cum_latency_sum_us)
