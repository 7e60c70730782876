-- `site_uptime` as V5 defined it (same arguments, columns and answers),
-- reading the whole days by a join instead of an aggregate: the sites with
-- a `metrics_daily` row on both end days of the range (nearly all) take
-- their running totals from one join of two ranges of the day index; only
-- the others are looked up one by one; the hours at either end and the raw
-- rows not rolled up yet are summed apart and joined on. Two aggregates of
-- every site, and the join with `websites` done twice, cost more than the
-- rows read. Without JIT: its compilation takes longer than the query.
CREATE OR REPLACE FUNCTION site_uptime(since timestamptz, until timestamptz DEFAULT now())
RETURNS TABLE (
    url text,
    probes bigint,
    up bigint,
    uptime_pct numeric,
    latency_avg_ms numeric
)
LANGUAGE sql STABLE PARALLEL SAFE SET jit = off AS $$
WITH rolled AS (
    SELECT date_trunc('hour', since, 'UTC') AS lo,
           least(date_trunc('hour', until, 'UTC'),
                 coalesce((SELECT rolled_until FROM rollup_progress), '-infinity')) AS upto
    -- No range, no rows (least and greatest would pass over a NULL).
    WHERE since IS NOT NULL AND until IS NOT NULL
), bounds AS (
    -- Whole days from the first day that starts at or after `lo` to the day
    -- `upto` falls in; the hours at either end come from `metrics_hourly`.
    SELECT r.lo, greatest(r.upto, r.lo) AS upto, first.day AS days_from,
           greatest(first.day, date_trunc('day', r.upto, 'UTC')) AS days_to
    FROM rolled r
    CROSS JOIN LATERAL (
        SELECT CASE WHEN date_trunc('day', r.lo, 'UTC') = r.lo THEN r.lo
                    ELSE date_trunc('day', r.lo, 'UTC') + interval '24 hours' END AS day
    ) first
), last_day AS MATERIALIZED (
    SELECT d.website_id, d.cum_probes, d.cum_up, d.cum_responses, d.cum_latency_sum_us
    FROM metrics_daily d, bounds b
    WHERE d.day = b.days_to - interval '24 hours' AND b.days_from < b.days_to
), first_day AS MATERIALIZED (
    -- The running totals before the first day: its own less its day's.
    SELECT d.website_id, d.cum_probes - d.probes AS cum_probes, d.cum_up - d.up AS cum_up,
           d.cum_responses - d.responses AS cum_responses,
           d.cum_latency_sum_us - coalesce(d.latency_sum_us, 0) AS cum_latency_sum_us
    FROM metrics_daily d, bounds b
    WHERE d.day = b.days_from AND b.days_from < b.days_to
), ends AS MATERIALIZED (
    -- Each site's running totals on the range's last day less those before
    -- its first, for the sites with a row on both: each end day read as one
    -- range of the day index, and the two joined whole (not looked up site
    -- by site).
    SELECT e.website_id,
           e.cum_probes - f.cum_probes AS probes,
           e.cum_up - f.cum_up AS up,
           e.cum_responses - f.cum_responses AS responses,
           e.cum_latency_sum_us - f.cum_latency_sum_us AS latency_sum_us
    FROM last_day e
    JOIN first_day f ON f.website_id = e.website_id
), days AS (
    SELECT * FROM ends
    UNION ALL
    -- A site without a row on an end day (added, or silent, during the
    -- range): its first and last days within the range, looked up.
    SELECT w.id,
           e.cum_probes - (f.cum_probes - f.probes),
           e.cum_up - (f.cum_up - f.up),
           e.cum_responses - (f.cum_responses - f.responses),
           e.cum_latency_sum_us - (f.cum_latency_sum_us - coalesce(f.latency_sum_us, 0))
    FROM websites w
    CROSS JOIN bounds b
    CROSS JOIN LATERAL (
        SELECT d.cum_probes, d.cum_up, d.cum_responses, d.cum_latency_sum_us
        FROM metrics_daily d
        WHERE d.website_id = w.id AND d.day >= b.days_from AND d.day < b.days_to
        ORDER BY d.day DESC LIMIT 1
    ) e
    CROSS JOIN LATERAL (
        SELECT d.cum_probes, d.cum_up, d.cum_responses, d.cum_latency_sum_us,
               d.probes, d.up, d.responses, d.latency_sum_us
        FROM metrics_daily d
        WHERE d.website_id = w.id AND d.day >= b.days_from AND d.day < b.days_to
        ORDER BY d.day LIMIT 1
    ) f
    WHERE b.days_from < b.days_to
      AND NOT EXISTS (SELECT 1 FROM ends WHERE ends.website_id = w.id)
), rest AS (
    -- The hours before the first whole day and after the last, rolled up,
    -- and the raw rows of the hours not rolled up yet.
    SELECT website_id, sum(probes) AS probes, sum(up) AS up,
           sum(responses) AS responses, sum(latency_sum_us) AS latency_sum_us
    FROM (
        SELECT h.website_id, h.probes, h.up, h.responses, h.latency_sum_us
        FROM metrics_hourly h, bounds b
        WHERE h.hour >= b.lo AND h.hour < least(b.days_from, b.upto)
        UNION ALL
        SELECT h.website_id, h.probes, h.up, h.responses, h.latency_sum_us
        FROM metrics_hourly h, bounds b
        WHERE h.hour >= greatest(b.days_to, b.lo) AND h.hour < b.upto
        UNION ALL
        SELECT m.website_id, 1,
               coalesce(m.up, m.status < 400 AND m.error_kind IS NULL AND m.regex_matched IS NOT FALSE)::int,
               (m.status IS NOT NULL)::int,
               CASE WHEN m.status IS NOT NULL THEN m.total_us END
        FROM metrics m, bounds b
        WHERE m.started_at >= b.upto AND m.started_at < until
    ) parts
    GROUP BY website_id
), sites AS (
    SELECT coalesce(d.website_id, r.website_id) AS website_id,
           coalesce(d.probes, 0)::numeric + coalesce(r.probes, 0) AS probes,
           coalesce(d.up, 0)::numeric + coalesce(r.up, 0) AS up,
           coalesce(d.responses, 0)::numeric + coalesce(r.responses, 0) AS responses,
           coalesce(d.latency_sum_us, 0)::numeric + coalesce(r.latency_sum_us, 0) AS latency_sum_us
    FROM days d
    FULL JOIN rest r ON r.website_id = d.website_id
)
SELECT w.url,
       s.probes::bigint,
       s.up::bigint,
       round(100.0 * s.up / nullif(s.probes, 0), 3),
       round(s.latency_sum_us / nullif(s.responses, 0) / 1000.0, 1)
FROM sites s
JOIN websites w ON w.id = s.website_id
$$;
