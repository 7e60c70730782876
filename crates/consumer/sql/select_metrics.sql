SELECT m.probe_id, w.url, m.schema_version, m.scheduled_at, m.started_at, m.lateness_us, m.skipped_before,
       m.dns_us, m.connect_us, m.ttfb_us, m.body_us, m.total_us, m.status, m.body_bytes, m.body_truncated,
       m.regex, m.regex_matched, m.regex_match, m.final_url, m.redirects, m.tls_expires_at,
       m.error_kind, m.error_message, m.kafka_topic, m.kafka_partition, m.kafka_offset
FROM metrics m JOIN websites w ON w.id = m.website_id
