# A stand-in for the apache/kafka image, for tests on a machine without a
# registry: the workspace's broker (librdkafka's mock cluster behind a TCP
# front) with shims for the two Kafka tools docker-compose.yml calls.
# Built by scripts/docker/test-compose.sh from binaries built on the host.
ARG BASE=sitewatch-local/runtime:bookworm
FROM ${BASE}
COPY broker kafka-admin /usr/local/bin/
COPY kafka-entrypoint.sh /usr/local/bin/kafka-entrypoint.sh
COPY kafka-topics.sh kafka-broker-api-versions.sh /opt/kafka/bin/
EXPOSE 9092
ENTRYPOINT ["/usr/local/bin/kafka-entrypoint.sh"]
