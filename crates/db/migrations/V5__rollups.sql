-- Rollups: each site's probes summed per UTC hour and per UTC day, kept far
-- longer than the raw rows. The consumers' maintenance pass writes them once
-- an hour (or day) has closed, and writes them again when metrics of that
-- hour arrive late, while its raw rows are still kept.
--
-- "Up" is the rule of the `site_status` view. The latency figures are of the
-- probes that got a response (`responses` of them): a timeout measures the
-- timeout, not the site. Percentiles are `percentile_disc` over those raw
-- rows, so each is a latency some probe had; a range of several hours or
-- days has exact counts and mean (`latency_sum_us / responses`), but its
-- percentiles cannot be combined: readers report the worst of them.
CREATE TABLE metrics_hourly (
    website_id      bigint NOT NULL REFERENCES websites (id) ON DELETE CASCADE,
    hour            timestamptz NOT NULL,
    probes          integer NOT NULL,
    up              integer NOT NULL,
    errors_dns      integer NOT NULL,
    errors_connect  integer NOT NULL,
    errors_tls      integer NOT NULL,
    errors_timeout  integer NOT NULL,
    errors_redirect integer NOT NULL,
    errors_body     integer NOT NULL,
    errors_other    integer NOT NULL,
    responses       integer NOT NULL,
    latency_sum_us  bigint,
    latency_min_us  bigint,
    latency_p50_us  bigint,
    latency_p95_us  bigint,
    latency_p99_us  bigint,
    latency_max_us  bigint,
    rolled_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_id, hour)
);
CREATE INDEX metrics_hourly_hour ON metrics_hourly (hour);

-- The same per UTC day (`day` is the day's first instant), computed from the
-- raw rows, not from the hours, so that its percentiles are the day's.
CREATE TABLE metrics_daily (LIKE metrics_hourly INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE metrics_daily RENAME COLUMN hour TO day;
ALTER TABLE metrics_daily
    ADD PRIMARY KEY (website_id, day),
    ADD FOREIGN KEY (website_id) REFERENCES websites (id) ON DELETE CASCADE;
-- A range of days for every site, the status page's question, reads only
-- this index.
CREATE INDEX metrics_daily_day ON metrics_daily (day)
    INCLUDE (website_id, probes, up, responses, latency_sum_us, latency_p95_us, latency_max_us);

-- The transaction that stored each row (its 64-bit id): every row of a
-- transaction below the oldest one still open is committed and visible, so
-- the rollups can tell exactly which rows they have seen, whatever the
-- clocks and the sessions they may read. Rows from before have none (NULL:
-- nothing rewritten) and come from before the rollups.
ALTER TABLE metrics ADD COLUMN stored_xid bigint;
ALTER TABLE metrics ALTER COLUMN stored_xid SET DEFAULT pg_current_xact_id()::text::bigint;

-- How far the rollups have come: every hour before `rolled_until` is rolled
-- up, with the rows stored by transactions before `xid_before` (a row of an
-- hour already rolled, stored by a later transaction, marks that hour and its
-- day to roll again, from `raw_complete_since` on: before it, a day's raw
-- rows were dropped, and a late row would make a rollup of itself alone).
CREATE TABLE rollup_progress (
    only_row           boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    rolled_until       timestamptz NOT NULL,
    xid_before         bigint NOT NULL,
    raw_complete_since timestamptz NOT NULL
);

-- Rows are appended in about the order of both, so a block range index
-- finds an hour's rows, and the rows stored since a transaction, for a few
-- pages per partition; summarised as pages fill, not only at vacuum. (Built
-- here over the metrics kept: one read of them, during which writes wait.)
CREATE INDEX metrics_times ON metrics USING brin (started_at, stored_xid)
    WITH (autosummarize = on);

-- Each site's probes, uptime and latency from the hour `since` falls in to
-- `until`: whole days from `metrics_daily`, the other hours rolled up from
-- `metrics_hourly`, and the raw rows of the hours not rolled up yet, each
-- read by an index range, so the counts are exact for any range the
-- rollups reach (metrics stored late count once their hour is rolled again,
-- at the next maintenance pass). The mean latency is exact; percentiles
-- cannot be combined across hours or days, so the worst p95 of the range
-- is given (the raw rows' own p95 among them).
CREATE FUNCTION site_uptime(since timestamptz, until timestamptz DEFAULT now())
RETURNS TABLE (
    url text,
    probes bigint,
    up bigint,
    uptime_pct numeric,
    latency_avg_ms numeric,
    latency_p95_worst_ms numeric,
    latency_max_ms numeric
)
LANGUAGE sql STABLE AS $$
WITH rolled AS (
    SELECT date_trunc('hour', since, 'UTC') AS lo,
           least(date_trunc('hour', until, 'UTC'),
                 coalesce((SELECT rolled_until FROM rollup_progress), '-infinity')) AS upto
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
), parts AS (
    SELECT d.website_id, d.probes, d.up, d.responses, d.latency_sum_us, d.latency_p95_us, d.latency_max_us
    FROM metrics_daily d, bounds b
    WHERE d.day >= b.days_from AND d.day < b.days_to
    UNION ALL
    SELECT h.website_id, h.probes, h.up, h.responses, h.latency_sum_us, h.latency_p95_us, h.latency_max_us
    FROM metrics_hourly h, bounds b
    WHERE h.hour >= b.lo AND h.hour < least(b.days_from, b.upto)
    UNION ALL
    SELECT h.website_id, h.probes, h.up, h.responses, h.latency_sum_us, h.latency_p95_us, h.latency_max_us
    FROM metrics_hourly h, bounds b
    WHERE h.hour >= greatest(b.days_to, b.lo) AND h.hour < b.upto
    UNION ALL
    SELECT m.website_id, count(*),
           count(*) FILTER (WHERE coalesce(m.up, m.status < 400 AND m.error_kind IS NULL AND m.regex_matched IS NOT FALSE)),
           count(m.status),
           sum(m.total_us) FILTER (WHERE m.status IS NOT NULL),
           percentile_disc(0.95) WITHIN GROUP (ORDER BY m.total_us) FILTER (WHERE m.status IS NOT NULL),
           max(m.total_us) FILTER (WHERE m.status IS NOT NULL)
    FROM metrics m, bounds b
    WHERE m.started_at >= b.upto AND m.started_at < until
    GROUP BY m.website_id
)
SELECT w.url,
       sum(p.probes)::bigint,
       sum(p.up)::bigint,
       round(100.0 * sum(p.up) / nullif(sum(p.probes), 0), 3),
       round(sum(p.latency_sum_us) / nullif(sum(p.responses), 0) / 1000.0, 1),
       round(max(p.latency_p95_us) / 1000.0, 1),
       round(max(p.latency_max_us) / 1000.0, 1)
FROM parts p
JOIN websites w ON w.id = p.website_id
GROUP BY w.url
$$;

-- The view's totals now come from the rollups where they exist: "so far"
-- reaches as far back as the rollups are kept, and costs days, not probes.
CREATE OR REPLACE VIEW site_status AS
SELECT w.url,
       last.started_at                                           AS last_probe_at,
       coalesce(last.status::text, last.error_kind)              AS last_result,
       round(last.total_us / 1000.0, 1)                          AS latency_ms,
       last.regex_matched                                        AS regex_ok,
       coalesce(totals.probes, 0)                                AS probes,
       round(totals.uptime_pct, 1)                               AS uptime_pct
FROM websites w
CROSS JOIN LATERAL (
    SELECT m.started_at, m.status, m.error_kind, m.total_us, m.regex_matched
    FROM metrics m
    WHERE m.website_id = w.id
    ORDER BY m.started_at DESC
    LIMIT 1
) last
LEFT JOIN site_uptime('-infinity', 'infinity') totals ON totals.url = w.url;
