-- Makes the partition of `metrics` for the day $1 falls on, unless one
-- covers it already (V4__partitioned_metrics.sql).
SELECT metrics_partition_for($1)
