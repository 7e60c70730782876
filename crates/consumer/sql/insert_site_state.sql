-- Sites whose first probes this batch applied. A row made meanwhile by
-- another writer is left alone, and the caller, seeing fewer rows written,
-- retries the batch with that row read.
INSERT INTO site_state (website_id, up, since, consecutive_failures,
                        consecutive_successes, open_incident_id, version)
SELECT id, up, since, failures, successes, open_incident_id, 1
FROM unnest($1::int8[], $2::bool[], $3::timestamptz[], $4::int4[], $5::int4[],
            $6::int8[], $7::int8[])
     AS u(id, up, since, failures, successes, open_incident_id, version)
ORDER BY id
ON CONFLICT (website_id) DO NOTHING
