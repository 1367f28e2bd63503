#!/bin/sh
# docker-compose one-shot (service postgres-roles), after `popsync db migrate`: one role
# per worker, HTTP service and job with only its grants (deploy/postgres/roles.sql), as the
# migration role.
# Passwords come from the environment; psql reads the owner's from PGPASSWORD.
set -eu
psql --no-psqlrc -h postgres -U popsync -d popsync \
  -v validator_password="$VALIDATOR_PASSWORD" \
  -v synchronizer_password="$SYNCHRONIZER_PASSWORD" \
  -v verification_password="$VERIFICATION_PASSWORD" \
  -v backfill_password="$BACKFILL_PASSWORD" \
  -f /popsync/roles.sql
