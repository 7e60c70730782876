-- The sites and hours (from $3 to before $4) of the raw rows stored by the
-- transactions from $1 to before $2 (and from $5 on, unless NULL: the rows
-- another cluster stored after its last pass, when the database moved):
-- hours rolled up already that got rows since, to roll again with their days. Read once per pass, into
-- `late_hours` (made by the pass's transaction, dropped at its commit).
INSERT INTO late_hours
SELECT DISTINCT website_id, date_trunc('hour', started_at, 'UTC')
FROM metrics
WHERE ((stored_xid >= $1 AND stored_xid < $2) OR stored_xid >= $5)
  AND started_at >= $3 AND started_at < $4
