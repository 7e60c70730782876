-- The partitions of `metrics` whose every row is before $1, oldest first,
-- with the end of each (V6__partition_width.sql reads the bounds). The name
-- comes quoted and qualified as needed.
SELECT partition::text, upper
FROM metrics_partitions()
WHERE upper <= $1
ORDER BY upper
