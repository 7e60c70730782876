INSERT INTO dead_letters (kafka_topic, kafka_partition, kafka_offset, key, payload, reason)
SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[])
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING
