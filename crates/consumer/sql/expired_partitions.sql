-- The partitions of `metrics` whose every day is before $1, oldest first,
-- with the end of each.
-- A partition's upper bound is read from its definition ("FOR VALUES FROM
-- (...) TO ('...')"), which names the time with its offset (the session is
-- in UTC and ISO, as the bounds were written). The name comes quoted and
-- qualified as needed.
SELECT c.oid::regclass::text, bound.upper
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL (
    SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$TO \('([^']+)'\)$re$)::timestamptz AS upper
) bound
WHERE i.inhparent = 'metrics'::regclass
  AND bound.upper <= $1
ORDER BY bound.upper
