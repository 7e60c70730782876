COPY metrics (
    probe_id, website_id, schema_version, scheduled_at, started_at, lateness_us, skipped_before,
    dns_us, connect_us, ttfb_us, body_us, total_us, status, body_bytes, body_truncated,
    regex, regex_matched, regex_match, final_url, redirects, tls_expires_at,
    error_kind, error_message, kafka_topic, kafka_partition, kafka_offset
) FROM STDIN (FORMAT binary)
