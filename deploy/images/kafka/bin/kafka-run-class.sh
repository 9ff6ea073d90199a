#!/bin/sh
# Runs a class of Kafka's jars: kafka-run-class.sh <class> [args...]
exec java -Xmx256m -XX:TieredStopAtLevel=1 \
  -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties \
  -cp '/opt/kafka/libs/*' "$@"
