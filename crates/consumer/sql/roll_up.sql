-- Rolls the raw rows `{rows}` reads (as `m`) up into `{table}`: one row per
-- site and UTC {unit}, replacing what an earlier roll wrote for the same
-- pair, so that rolling a pair again (late metrics) leaves it as if they had
-- come in time. `{rows}` reads every raw row of each pair it names.
-- (The columns are described in V5__rollups.sql.)
INSERT INTO {table} AS r (
    website_id, {unit}, probes, up,
    errors_dns, errors_connect, errors_tls, errors_timeout, errors_redirect, errors_body, errors_other,
    responses, latency_sum_us, latency_min_us, latency_p50_us, latency_p95_us, latency_p99_us, latency_max_us)
SELECT website_id, bucket, probes, up,
       errors_dns, errors_connect, errors_tls, errors_timeout, errors_redirect, errors_body, errors_other,
       responses, latency_sum_us, latency_min_us, p[1], p[2], p[3], latency_max_us
FROM (
    SELECT m.website_id,
           date_trunc('{unit}', m.started_at, 'UTC') AS bucket,
           count(*) AS probes,
           count(*) FILTER (WHERE coalesce(m.up, m.status < 400 AND m.error_kind IS NULL AND m.regex_matched IS NOT FALSE)) AS up,
           count(*) FILTER (WHERE m.error_kind = 'dns') AS errors_dns,
           count(*) FILTER (WHERE m.error_kind = 'connect') AS errors_connect,
           count(*) FILTER (WHERE m.error_kind = 'tls') AS errors_tls,
           count(*) FILTER (WHERE m.error_kind = 'timeout') AS errors_timeout,
           count(*) FILTER (WHERE m.error_kind = 'redirect') AS errors_redirect,
           count(*) FILTER (WHERE m.error_kind = 'body') AS errors_body,
           count(*) FILTER (WHERE m.error_kind = 'other') AS errors_other,
           count(m.status) AS responses,
           sum(m.total_us) FILTER (WHERE m.status IS NOT NULL) AS latency_sum_us,
           min(m.total_us) FILTER (WHERE m.status IS NOT NULL) AS latency_min_us,
           -- One sort per pair for the three.
           percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY m.total_us)
               FILTER (WHERE m.status IS NOT NULL) AS p,
           max(m.total_us) FILTER (WHERE m.status IS NOT NULL) AS latency_max_us
    FROM {rows}
    GROUP BY 1, 2
) rolled
ON CONFLICT (website_id, {unit}) DO UPDATE SET
    probes = EXCLUDED.probes,
    up = EXCLUDED.up,
    errors_dns = EXCLUDED.errors_dns,
    errors_connect = EXCLUDED.errors_connect,
    errors_tls = EXCLUDED.errors_tls,
    errors_timeout = EXCLUDED.errors_timeout,
    errors_redirect = EXCLUDED.errors_redirect,
    errors_body = EXCLUDED.errors_body,
    errors_other = EXCLUDED.errors_other,
    responses = EXCLUDED.responses,
    latency_sum_us = EXCLUDED.latency_sum_us,
    latency_min_us = EXCLUDED.latency_min_us,
    latency_p50_us = EXCLUDED.latency_p50_us,
    latency_p95_us = EXCLUDED.latency_p95_us,
    latency_p99_us = EXCLUDED.latency_p99_us,
    latency_max_us = EXCLUDED.latency_max_us,
    rolled_at = now()
