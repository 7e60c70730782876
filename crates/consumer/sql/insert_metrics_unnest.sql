INSERT INTO metrics (
    probe_id, website_id, schema_version, scheduled_at, started_at, lateness_us, skipped_before,
    dns_us, connect_us, ttfb_us, body_us, total_us, status, body_bytes, body_truncated,
    regex, regex_matched, regex_match, final_url, redirects, tls_expires_at,
    error_kind, error_message, kafka_topic, kafka_partition, kafka_offset
)
SELECT * FROM unnest(
    $1::uuid[], $2::int8[], $3::int2[], $4::timestamptz[], $5::timestamptz[], $6::int8[], $7::int4[],
    $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int2[], $14::int8[], $15::bool[],
    $16::text[], $17::bool[], $18::text[], $19::text[], $20::int4[], $21::timestamptz[],
    $22::text[], $23::text[], $24::text[], $25::int4[], $26::int8[]
)
ON CONFLICT (probe_id) DO NOTHING
