#!/bin/sh
# Stands in for Kafka's kafka-broker-api-versions.sh: exit 0 when the broker answers.
set -eu
bootstrap=localhost:9092
while [ $# -gt 0 ]; do
  case $1 in
    --bootstrap-server) bootstrap=$2; shift 2 ;;
    *) shift ;;
  esac
done
exec /usr/local/bin/kafka-admin --bootstrap-server "$bootstrap" ping
