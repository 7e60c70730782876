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
-- raw rows, not from the hours, so that its percentiles are the day's. Each
-- row also holds the site's running totals up to and with its day (`cum_*`):
-- the totals of any run of whole days are the last day's running totals
-- less the first day's before it, so a month for every site reads two rows
-- per site, not thirty.
CREATE TABLE metrics_daily (LIKE metrics_hourly INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE metrics_daily RENAME COLUMN hour TO day;
ALTER TABLE metrics_daily
    ADD COLUMN cum_probes         bigint NOT NULL DEFAULT 0,
    ADD COLUMN cum_up             bigint NOT NULL DEFAULT 0,
    ADD COLUMN cum_responses      bigint NOT NULL DEFAULT 0,
    ADD COLUMN cum_latency_sum_us bigint NOT NULL DEFAULT 0,
    ADD PRIMARY KEY (website_id, day),
    ADD FOREIGN KEY (website_id) REFERENCES websites (id) ON DELETE CASCADE;
CREATE INDEX metrics_daily_day ON metrics_daily (day);

-- The transaction that stored each row (its 64-bit id): every row of a
-- transaction below the oldest one still open is committed and visible, so
-- the rollups can tell exactly which rows they have seen, whatever the
-- clocks and the sessions they may read. Rows from before have none (NULL:
-- nothing rewritten) and come from before the rollups.
ALTER TABLE metrics ADD COLUMN stored_xid bigint;
-- (txid_current() is pg_current_xact_id() as a bigint, without a cast per row.)
ALTER TABLE metrics ALTER COLUMN stored_xid SET DEFAULT txid_current();

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

-- Each site's probes, uptime and mean latency (of the probes that got a
-- response) from the hour `since` falls in to `until`: whole days from the
-- running totals of `metrics_daily`, the other hours rolled up from
-- `metrics_hourly`, and the raw rows of the hours not rolled up yet, each
-- read by an index, so the counts are exact for any range the rollups reach
-- (metrics stored late count once their hour is rolled again, at the next
-- maintenance pass). Percentiles cannot be combined across hours or days:
-- they are in the rollup tables, per hour and per day.
CREATE FUNCTION site_uptime(since timestamptz, until timestamptz DEFAULT now())
RETURNS TABLE (
    url text,
    probes bigint,
    up bigint,
    uptime_pct numeric,
    latency_avg_ms numeric
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
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
), parts AS (
    -- Each site's running totals on the range's last day less those before
    -- its first: for most sites both rows are read by one range of the day
    -- index; a site without a row on either day has it looked up.
    SELECT w.id AS website_id,
           coalesce(n.e_probes, e.cum_probes) - coalesce(n.f_probes, f.cum_probes - f.probes) AS probes,
           coalesce(n.e_up, e.cum_up) - coalesce(n.f_up, f.cum_up - f.up) AS up,
           coalesce(n.e_responses, e.cum_responses) - coalesce(n.f_responses, f.cum_responses - f.responses) AS responses,
           coalesce(n.e_latency, e.cum_latency_sum_us)
               - coalesce(n.f_latency, f.cum_latency_sum_us - coalesce(f.latency_sum_us, 0)) AS latency_sum_us
    FROM websites w
    CROSS JOIN bounds b
    LEFT JOIN (
        SELECT d.website_id,
               max(d.cum_probes) FILTER (WHERE d.day = b.days_to - interval '24 hours') AS e_probes,
               max(d.cum_up) FILTER (WHERE d.day = b.days_to - interval '24 hours') AS e_up,
               max(d.cum_responses) FILTER (WHERE d.day = b.days_to - interval '24 hours') AS e_responses,
               max(d.cum_latency_sum_us) FILTER (WHERE d.day = b.days_to - interval '24 hours') AS e_latency,
               max(d.cum_probes - d.probes) FILTER (WHERE d.day = b.days_from) AS f_probes,
               max(d.cum_up - d.up) FILTER (WHERE d.day = b.days_from) AS f_up,
               max(d.cum_responses - d.responses) FILTER (WHERE d.day = b.days_from) AS f_responses,
               max(d.cum_latency_sum_us - coalesce(d.latency_sum_us, 0)) FILTER (WHERE d.day = b.days_from) AS f_latency
        FROM metrics_daily d, bounds b
        WHERE d.day IN (b.days_from, b.days_to - interval '24 hours')
        GROUP BY d.website_id
    ) n ON n.website_id = w.id
    LEFT JOIN LATERAL (
        SELECT d.cum_probes, d.cum_up, d.cum_responses, d.cum_latency_sum_us
        FROM metrics_daily d
        WHERE n.e_probes IS NULL
          AND d.website_id = w.id AND d.day >= b.days_from AND d.day < b.days_to
        ORDER BY d.day DESC LIMIT 1
    ) e ON true
    LEFT JOIN LATERAL (
        SELECT d.cum_probes, d.cum_up, d.cum_responses, d.cum_latency_sum_us,
               d.probes, d.up, d.responses, d.latency_sum_us
        FROM metrics_daily d
        WHERE n.f_probes IS NULL
          AND d.website_id = w.id AND d.day >= b.days_from AND d.day < b.days_to
        ORDER BY d.day LIMIT 1
    ) f ON true
    WHERE b.days_from < b.days_to
      AND coalesce(n.e_probes, e.cum_probes) IS NOT NULL
    UNION ALL
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
), sites AS (
    SELECT website_id, sum(probes) AS probes, sum(up) AS up,
           sum(responses) AS responses, sum(latency_sum_us) AS latency_sum_us
    FROM parts
    GROUP BY website_id
)
SELECT w.url,
       s.probes::bigint,
       s.up::bigint,
       round(100.0 * s.up / nullif(s.probes, 0), 3),
       round(s.latency_sum_us / nullif(s.responses, 0) / 1000.0, 1)
FROM sites s
JOIN websites w ON w.id = s.website_id
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
