-- The states of sites this process does not remember, and the newest probe
-- of each stored before this transaction: every stored probe was applied in
-- the transaction that stored it, so that one is the last applied. Rows
-- this transaction inserted (its own xmin) are the batch being applied.
SELECT i.id AS website_id, s.up, s.since, s.consecutive_failures,
       s.consecutive_successes, s.open_incident_id, s.version,
       last.started_at AS last_started_at, last.probe_id AS last_probe_id
FROM unnest($1::int8[]) AS i(id)
LEFT JOIN site_state s ON s.website_id = i.id
LEFT JOIN LATERAL (
    SELECT m.started_at, m.probe_id
    FROM metrics m
    WHERE m.website_id = i.id AND m.xmin <> pg_current_xact_id()::xid
    ORDER BY m.started_at DESC, m.probe_id DESC
    LIMIT 1
) last ON true
