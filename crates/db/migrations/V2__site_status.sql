-- What an operator looks at first: each site's latest result and its uptime
-- so far. "Up" means a response below 400 whose body matched the site's
-- regex, if it has one. The counts scan each site's metrics through the
-- (website_id, started_at) index: fine for a dashboard refreshed every few
-- seconds, not something to run per probe.
CREATE VIEW site_status AS
SELECT w.url,
       last.started_at                                           AS last_probe_at,
       coalesce(last.status::text, last.error_kind)              AS last_result,
       round(last.total_us / 1000.0, 1)                          AS latency_ms,
       last.regex_matched                                        AS regex_ok,
       totals.probes,
       round(100.0 * totals.up / nullif(totals.probes, 0), 1)    AS uptime_pct
FROM websites w
CROSS JOIN LATERAL (
    SELECT m.started_at, m.status, m.error_kind, m.total_us, m.regex_matched
    FROM metrics m
    WHERE m.website_id = w.id
    ORDER BY m.started_at DESC
    LIMIT 1
) last
CROSS JOIN LATERAL (
    SELECT count(*) AS probes,
           count(*) FILTER (WHERE m.status < 400 AND m.error_kind IS NULL AND m.regex_matched IS NOT FALSE) AS up
    FROM metrics m
    WHERE m.website_id = w.id
) totals;
