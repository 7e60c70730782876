-- How much time one partition of `metrics` holds becomes the consumers'
-- setting (a day unless set): an hour for an installation that writes
-- hundreds of gigabytes a day, a week for a small one. Partitions already
-- made keep their bounds; after the setting changes, a new partition fills
-- only the gap its neighbours leave, so two never overlap and no time is
-- left without one.

-- Each partition of `metrics` with its bounds, NULL for MINVALUE/MAXVALUE;
-- a DEFAULT partition (an operator's) is not listed. Bounds are read from
-- their definition ("FOR VALUES FROM ('...') TO ('...')"), which names the
-- time with its offset when written in UTC and ISO, as this function reads.
CREATE FUNCTION metrics_partitions()
RETURNS TABLE (partition regclass, lower timestamptz, upper timestamptz)
LANGUAGE sql STABLE SET TimeZone = 'UTC' SET DateStyle = 'ISO' AS $$
    SELECT c.oid::regclass,
           substring(b.def FROM $re$FROM \('([^']+)'\)$re$)::timestamptz,
           substring(b.def FROM $re$TO \('([^']+)'\)$re$)::timestamptz
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS def) b
    WHERE i.inhparent = 'metrics'::regclass
      AND b.def <> 'DEFAULT'
$$;

-- The partition that holds `at`, and its bounds: the one that covers it, or
-- a new one of `width` (whole multiples of it since 1970-01-01 UTC: hours
-- and days start on the hour and at midnight UTC, weeks on a Thursday, the
-- weekday of 1970-01-01), cut short where a
-- partition of another width is in the way. Several consumers may ask for
-- the same time at once: an advisory lock takes them in turn. CREATE ...
-- (LIKE) then ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on `metrics`,
-- so writes into other partitions go on meanwhile (PARTITION OF would block
-- them); the new partition gets the parent's indexes and foreign key. A
-- partition that starts a UTC day is named `metrics_pYYYYMMDD`, any other
-- `metrics_pYYYYMMDD_HH24MISS`.
CREATE FUNCTION metrics_partition_holding(at timestamptz, width interval)
RETURNS TABLE (lower timestamptz, upper timestamptz)
LANGUAGE plpgsql SET TimeZone = 'UTC' SET DateStyle = 'ISO' AS $$
DECLARE
    seconds float8 := extract(epoch FROM width);
    slot timestamptz;
    name text;
BEGIN
    IF at IS NULL OR NOT isfinite(at) THEN
        RAISE EXCEPTION 'metrics_partition_holding: % is not a time a metric can have', coalesce(at::text, 'NULL');
    END IF;
    IF width IS NULL OR seconds < 60 THEN
        RAISE EXCEPTION 'metrics_partition_holding: a partition must hold at least a minute, not %', coalesce(width::text, 'NULL');
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('sitewatch: metrics partitions'));
    RETURN QUERY
        SELECT p.lower, p.upper FROM metrics_partitions() p
        WHERE (p.lower IS NULL OR p.lower <= at) AND (p.upper IS NULL OR at < p.upper);
    IF FOUND THEN
        RETURN;
    END IF;
    slot := to_timestamp(floor(extract(epoch FROM at) / seconds) * seconds);
    -- In floating point a time a microsecond from the edge can land in the
    -- slot beside its own.
    IF at < slot THEN
        slot := slot - width;
    ELSIF at >= slot + width THEN
        slot := slot + width;
    END IF;
    -- greatest and least skip NULLs: no neighbour, no cut.
    lower := greatest(slot, (SELECT max(p.upper) FROM metrics_partitions() p WHERE p.upper <= at));
    upper := least(slot + width, (SELECT min(p.lower) FROM metrics_partitions() p WHERE p.lower > at));
    name := 'metrics_p' || to_char(lower AT TIME ZONE 'UTC',
        CASE WHEN lower = date_trunc('day', lower, 'UTC') THEN 'YYYYMMDD' ELSE 'YYYYMMDD"_"HH24MISS' END);
    IF to_regclass(name) IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM metrics_partitions() p WHERE p.partition = to_regclass(name)) THEN
            RAISE EXCEPTION 'partition % of metrics does not hold % as its name says', name, at
                USING HINT = 'rename it after the time it starts at';
        END IF;
        RAISE EXCEPTION 'table % exists but is not a partition of metrics, so metrics of % cannot be stored', name, at
            USING HINT = format('attach it again (ALTER TABLE metrics ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)) or rename it',
                                name, lower, upper);
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE metrics INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format('ALTER TABLE metrics ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, lower, upper);
    RETURN NEXT;
END $$;

-- V4's function, kept under its name and type (a consumer of the release
-- before, still running, has it prepared and would fail on another result
-- type): a day's partition, by the function above.
CREATE OR REPLACE FUNCTION metrics_partition_for(at timestamptz) RETURNS void
LANGUAGE sql AS $$
    SELECT FROM metrics_partition_holding(at, interval '1 day')
$$;
