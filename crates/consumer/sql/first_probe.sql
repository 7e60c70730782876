-- The earliest raw row, found through each site's index rather than a scan.
SELECT min(first.started_at)
FROM websites w
CROSS JOIN LATERAL (
    SELECT m.started_at FROM metrics m
    WHERE m.website_id = w.id
    ORDER BY m.started_at
    LIMIT 1
) first
