-- Each row only if it is still the version the batch read: one written
-- meanwhile by another writer is left alone, and the caller, seeing fewer
-- rows written, retries the batch with that row read.
UPDATE site_state AS s
SET up = u.up,
    since = u.since,
    consecutive_failures = u.failures,
    consecutive_successes = u.successes,
    open_incident_id = u.open_incident_id,
    version = s.version + 1
FROM unnest($1::int8[], $2::bool[], $3::timestamptz[], $4::int4[], $5::int4[],
            $6::int8[], $7::int8[])
     AS u(website_id, up, since, failures, successes, open_incident_id, version)
WHERE s.website_id = u.website_id AND s.version = u.version
