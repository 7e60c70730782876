-- `metrics` becomes range-partitioned by `started_at`, one partition per UTC
-- day, so that an old day can be dropped whole instead of deleted row by
-- row. The key includes the partition column, as PostgreSQL requires: a
-- redelivered message carries the same `started_at`, so it still hits the
-- same key and is skipped.
--
-- The rows kept from before become one partition holding everything up to
-- the end of today (or are dropped with the table when there are none):
-- nothing is copied, and the old table's indexes and foreign key serve as
-- that partition's. Rebuilding its key, and the scan that checks its rows
-- fit, are this migration's cost on a large table; the consumers wait for
-- it (their lock waits time out and are retried) and Kafka holds their
-- messages meanwhile.

DO $$
BEGIN
    IF current_setting('server_version_num')::int < 130000 THEN
        RAISE EXCEPTION 'sitewatch needs PostgreSQL 13 or newer to partition metrics (this is %)',
            current_setting('server_version');
    END IF;
END $$;

LOCK TABLE metrics IN ACCESS EXCLUSIVE MODE;
ALTER TABLE metrics RENAME TO metrics_before_partitioning;
ALTER INDEX metrics_website_started RENAME TO metrics_before_partitioning_website_started;
ALTER TABLE metrics_before_partitioning DROP CONSTRAINT metrics_pkey;
ALTER TABLE metrics_before_partitioning
    ADD CONSTRAINT metrics_before_partitioning_pkey PRIMARY KEY (probe_id, started_at);

CREATE TABLE metrics (
    LIKE metrics_before_partitioning INCLUDING DEFAULTS INCLUDING CONSTRAINTS
) PARTITION BY RANGE (started_at);
ALTER TABLE metrics
    ADD CONSTRAINT metrics_pkey PRIMARY KEY (probe_id, started_at),
    ADD CONSTRAINT metrics_website_id_fkey FOREIGN KEY (website_id) REFERENCES websites (id);
CREATE INDEX metrics_website_started ON metrics (website_id, started_at DESC);

-- The partition that holds `at`, created unless one covers it already;
-- several consumers may ask for the same day at once. CREATE ... (LIKE)
-- then ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on `metrics`, so
-- writes into other partitions go on meanwhile (PARTITION OF would block
-- them); the new partition gets the parent's indexes and foreign key.
-- Bounds are written and read in UTC and ISO, whatever the session's settings.
CREATE FUNCTION metrics_partition_for(at timestamptz) RETURNS void
LANGUAGE plpgsql SET TimeZone = 'UTC' SET DateStyle = 'ISO' AS $$
DECLARE
    day_start timestamptz := date_trunc('day', at, 'UTC');
    name text := 'metrics_p' || to_char(day_start AT TIME ZONE 'UTC', 'YYYYMMDD');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sitewatch: metrics partitions'));
    IF to_regclass(name) IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_inherits
                       WHERE inhrelid = to_regclass(name) AND inhparent = 'metrics'::regclass) THEN
            RAISE EXCEPTION 'table % exists but is not a partition of metrics, so metrics of % cannot be stored', name, day_start::date
                USING HINT = format('attach it again (ALTER TABLE metrics ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)) or rename it',
                                    name, day_start, day_start + interval '24 hours');
        END IF;
        RETURN;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I (LIKE metrics INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
        EXECUTE format('ALTER TABLE metrics ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       name, day_start, day_start + interval '24 hours');
    EXCEPTION WHEN invalid_object_definition THEN
        -- Another partition covers the day (the rows kept from before
        -- partitioning): the table made above is rolled back with this block.
        NULL;
    END;
END $$;

-- A view is bound to the table it was made with, which is now the rows kept
-- from before (or about to be dropped).
CREATE OR REPLACE VIEW site_status AS
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
           count(*) FILTER (WHERE coalesce(m.up, m.status < 400 AND m.error_kind IS NULL AND m.regex_matched IS NOT FALSE)) AS up
    FROM metrics m
    WHERE m.website_id = w.id
) totals;

-- The rows kept from before hold every day up to the end of today; rows
-- dated later (a monitor whose clock ran ahead) move to their own days, so
-- that the days to come get partitions of their own and can be dropped.
CREATE TEMP TABLE metrics_ahead (LIKE metrics_before_partitioning) ON COMMIT DROP;

DO $$
DECLARE
    tomorrow timestamptz := date_trunc('day', now(), 'UTC') + interval '24 hours';
    day timestamptz;
BEGIN
    WITH moved AS (
        DELETE FROM metrics_before_partitioning WHERE started_at >= tomorrow RETURNING *
    )
    INSERT INTO metrics_ahead SELECT * FROM moved;
    IF NOT EXISTS (SELECT 1 FROM metrics_before_partitioning) THEN
        DROP TABLE metrics_before_partitioning;
    ELSE
        EXECUTE format(
            'ALTER TABLE metrics ATTACH PARTITION metrics_before_partitioning FOR VALUES FROM (MINVALUE) TO (%L)',
            tomorrow);
    END IF;
    -- Today and the days just ahead exist before the first write needs them.
    FOR ahead IN 0..3 LOOP
        PERFORM metrics_partition_for(now() + ahead * interval '24 hours');
    END LOOP;
    FOR day IN SELECT DISTINCT date_trunc('day', started_at, 'UTC') FROM metrics_ahead LOOP
        PERFORM metrics_partition_for(day);
    END LOOP;
    INSERT INTO metrics SELECT * FROM metrics_ahead;
END $$;
