#!/bin/sh
# Stands in for Kafka's kafka-topics.sh: takes its --bootstrap-server,
# --topic and --partitions, and waits for the topic the stand-in broker made.
set -eu
bootstrap=localhost:9092 topic='' partitions=1
while [ $# -gt 0 ]; do
  case $1 in
    --bootstrap-server) bootstrap=$2; shift 2 ;;
    --topic) topic=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    *) shift ;;
  esac
done
exec /usr/local/bin/kafka-admin --bootstrap-server "$bootstrap" wait-topic --topic "$topic" --partitions "$partitions"
