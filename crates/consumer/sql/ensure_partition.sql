-- The bounds of the partition of `metrics` that holds $1 (NULL where it has
-- none), made $2 seconds wide unless one holds it already
-- (V6__partition_width.sql).
SELECT lower, upper FROM metrics_partition_holding($1, $2::bigint * interval '1 second')
