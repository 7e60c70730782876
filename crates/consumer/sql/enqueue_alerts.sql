-- A transition written twice (it cannot be: the state moves once) would
-- still make one row per webhook.
INSERT INTO alert_outbox (incident_id, website_id, transition, webhook, payload)
SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::jsonb[])
ON CONFLICT (incident_id, transition, webhook) DO NOTHING
