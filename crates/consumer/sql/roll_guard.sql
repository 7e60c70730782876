-- A time before which every row of `metrics` that will ever be committed is
-- committed already: a row's `stored_at` is its transaction's start, so the
-- oldest transaction still open bounds it. Read before the rollups' own
-- snapshots are taken, with a margin for a transaction whose start time is
-- set but not yet shown here. (A role that may not see other roles'
-- sessions sees their `xact_start` as NULL: run the consumers as one role.)
SELECT least(now(), min(xact_start) FILTER (WHERE pid <> pg_backend_pid())) - interval '1 second'
FROM pg_stat_activity
WHERE datname = current_database()
