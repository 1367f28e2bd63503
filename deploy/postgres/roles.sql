-- One PostgreSQL role per popsync worker, with only the grants it needs: every privilege
-- on the tables it writes (popsync.topology: Worker.writes), SELECT on the ones it only
-- reads (DATABASE_READS); no DDL. The schema (`popsync db migrate`) is owned by the
-- migration role, which runs this file after it, as psql with one password variable per
-- worker (deploy/compose/postgres-roles.sh):
--   psql -v validator_password=... -v synchronizer_password=... -v store_writer_password=...
-- Idempotent. tests/unit/deploy/test_security.py checks it against the topology.
\set ON_ERROR_STOP on

-- validator
SELECT format('CREATE ROLE %I LOGIN', 'popsync_validator')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'popsync_validator') \gexec
ALTER ROLE popsync_validator LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'validator_password';
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM popsync_validator;
GRANT CONNECT, TEMPORARY ON DATABASE popsync TO popsync_validator;
GRANT USAGE ON SCHEMA public TO popsync_validator;
GRANT SELECT, INSERT, UPDATE, DELETE ON pin_serials, pin_allocations, citizen_aliases, match_decisions, match_reviews, source_quarantine TO popsync_validator;
GRANT SELECT ON citizens, sync_citizen_state, publishers, publisher_keys TO popsync_validator;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO popsync_validator;

-- synchronizer
SELECT format('CREATE ROLE %I LOGIN', 'popsync_synchronizer')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'popsync_synchronizer') \gexec
ALTER ROLE popsync_synchronizer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'synchronizer_password';
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM popsync_synchronizer;
GRANT CONNECT, TEMPORARY ON DATABASE popsync TO popsync_synchronizer;
GRANT USAGE ON SCHEMA public TO popsync_synchronizer;
GRANT SELECT, INSERT, UPDATE, DELETE ON sync_citizen_state, source_quarantine TO popsync_synchronizer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO popsync_synchronizer;

-- store-writer
SELECT format('CREATE ROLE %I LOGIN', 'popsync_store_writer')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'popsync_store_writer') \gexec
ALTER ROLE popsync_store_writer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'store_writer_password';
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM popsync_store_writer;
GRANT CONNECT, TEMPORARY ON DATABASE popsync TO popsync_store_writer;
GRANT USAGE ON SCHEMA public TO popsync_store_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON citizens, citizen_history, citizen_conflicts, store_writer_offsets TO popsync_store_writer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO popsync_store_writer;
