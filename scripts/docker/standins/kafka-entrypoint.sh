#!/bin/sh
# Reads the settings the real image reads (KAFKA_ADVERTISED_LISTENERS) and
# those the test adds (STANDIN_TOPIC, STANDIN_PARTITIONS): the mock broker
# cannot create topics on request, so it creates the topic at start.
set -eu
# Like the real image's entrypoint, a command given runs instead (the topic job).
if [ $# -gt 0 ]; then
  exec "$@"
fi
advertised=${KAFKA_ADVERTISED_LISTENERS:-PLAINTEXT://localhost:9092}
advertised=${advertised#*://}
advertised=${advertised%%,*}
exec /usr/local/bin/broker --listen 0.0.0.0:9092 --advertise "$advertised" \
  --topic "${STANDIN_TOPIC:-website-metrics}" --partitions "${STANDIN_PARTITIONS:-6}"
