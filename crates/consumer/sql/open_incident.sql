-- A site whose state row was deleted while its incident was open (an
-- operator resetting site_state) goes down again into that same incident,
-- rather than failing the batch on the one-open-incident index.
INSERT INTO incidents (website_id, opened_at, opened_by, failed_condition, failed_message)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (website_id) WHERE resolved_at IS NULL
DO UPDATE SET website_id = EXCLUDED.website_id
RETURNING id
