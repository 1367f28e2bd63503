#!/bin/sh
# docker-compose one-shot (service kafka-users): the SCRAM-SHA-512 users of the stack,
# created through the broker as its super user popsync-admin (SASL/PLAIN on the internal
# listener, the only mechanism that needs no user created first). Passwords come from the
# environment, never from this file. The popsync principals are those of popsync.topology
# (tests/unit/deploy/test_deploy_config.py checks the list); their ACLs are `popsync acls
# --apply` (popsync-init). The Schema Registry's own ACLs are granted here: it is no part of
# popsync's topology.
set -eu
config=/tmp/admin.properties
umask 077
cat > "$config" <<PROPERTIES
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="popsync-admin" password="$ADMIN_PASSWORD";
PROPERTIES

scram_user() {
  /opt/kafka/bin/kafka-configs.sh --bootstrap-server kafka:9092 --command-config "$config" \
    --alter --entity-type users --entity-name "$1" \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$2]"
}

scram_user popsync-validator "$VALIDATOR_PASSWORD"
scram_user popsync-synchronizer "$SYNCHRONIZER_PASSWORD"
scram_user popsync-backfill "$BACKFILL_PASSWORD"
scram_user popsync-operator "$OPERATOR_PASSWORD"
scram_user schema-registry "$SCHEMA_REGISTRY_PASSWORD"

acl() {
  /opt/kafka/bin/kafka-acls.sh --bootstrap-server kafka:9092 --command-config "$config" --add \
    --allow-principal User:schema-registry "$@"
}
acl --operation All --topic _schemas
acl --operation Read --operation Describe --group schema-registry
acl --operation DescribeConfigs --topic _schemas
