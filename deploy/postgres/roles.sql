-- One PostgreSQL role per popsync worker, HTTP service and job, with only the grants it
-- needs (popsync.topology.database_grants): a worker every privilege on the tables it
-- writes (Worker.writes) and SELECT on the ones it only reads (DATABASE_READS); a service
-- or a job exactly what its declaration says (HttpService: reads, appends, updates; Job:
-- reads, writes, owns). No DDL on the pipeline's schema: a job that makes tables of its
-- own makes them in a schema of its own (popsync.topology.scratch_schemas). The schema
-- (`popsync db migrate`) is owned by the migration role, which runs this file after it, as
-- psql with one password variable per role (deploy/compose/postgres-roles.sh):
--   psql -v validator_password=... -v synchronizer_password=... -v verification_password=...
--        -v backfill_password=...
-- Idempotent. tests/unit/deploy/test_deploy_config.py checks it against the topology.
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
GRANT SELECT, INSERT, UPDATE, DELETE ON sync_citizen_state, citizens, citizen_history, citizen_conflicts, source_quarantine TO popsync_synchronizer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO popsync_synchronizer;

-- verification (`popsync serve`): reads citizens and the partner directory, appends the
-- access audit, leases daily quotas. Needs no sequence and no temporary table.
SELECT format('CREATE ROLE %I LOGIN', 'popsync_verification')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'popsync_verification') \gexec
ALTER ROLE popsync_verification LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'verification_password';
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM popsync_verification;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM popsync_verification;
GRANT CONNECT ON DATABASE popsync TO popsync_verification;
GRANT USAGE ON SCHEMA public TO popsync_verification;
GRANT SELECT ON citizens, partners, partner_keys TO popsync_verification;
GRANT INSERT ON access_audit TO popsync_verification;
GRANT SELECT, INSERT, UPDATE ON partner_usage TO popsync_verification;

-- backfill (`popsync backfill`, run by an operator): the validator's identity tables, the
-- synchronizer's states and store rows, never a DELETE; every privilege on its own run
-- tables only (`--restart` deletes a run); the publisher directory to check the archives'
-- signatures. Each run's UNLOGGED staging tables (backfill_stage_<run>,
-- backfill_defer_<run>, created and dropped by the job, unqualified) land in the schema
-- named for the role, first on its search_path; it is granted no CREATE in public
-- (PostgreSQL 15 and later give PUBLIC none there either; on an older server, have the
-- schema's owner revoke it). Its temporary tables (the store's COPY staging) need
-- TEMPORARY; no table it writes has a sequence.
SELECT format('CREATE ROLE %I LOGIN', 'popsync_backfill')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'popsync_backfill') \gexec
ALTER ROLE popsync_backfill LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'backfill_password';
ALTER ROLE popsync_backfill SET search_path = "$user", public;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM popsync_backfill;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM popsync_backfill;
GRANT CONNECT, TEMPORARY ON DATABASE popsync TO popsync_backfill;
GRANT USAGE ON SCHEMA public TO popsync_backfill;
CREATE SCHEMA IF NOT EXISTS popsync_backfill;
REVOKE ALL ON SCHEMA popsync_backfill FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA popsync_backfill TO popsync_backfill;
GRANT SELECT ON publishers, publisher_keys TO popsync_backfill;
GRANT SELECT, INSERT, UPDATE ON pin_serials, pin_allocations, citizen_aliases, match_decisions, match_reviews, sync_citizen_state, citizens, citizen_history, citizen_conflicts TO popsync_backfill;
GRANT SELECT, INSERT, UPDATE, DELETE ON backfill_runs, backfill_parts TO popsync_backfill;

-- The store writer of earlier releases: the synchronizer writes the store itself now. On a
-- database that still has its role, take back its grants (they stop the drop) and drop it,
-- so no login with write access to the store lingers. Nothing where it never existed.
SELECT format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I', rolname),
       format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %I', rolname),
       format('REVOKE ALL ON SCHEMA public FROM %I', rolname),
       format('REVOKE ALL ON DATABASE popsync FROM %I', rolname),
       format('DROP ROLE %I', rolname)
FROM pg_roles WHERE rolname = 'popsync_store_writer' \gexec

-- access_audit is append-only (popsync.topology.APPEND_ONLY_TABLES): nobody is granted
-- UPDATE, DELETE or TRUNCATE on it, and the owner gives them up too, so that changing a
-- row takes a deliberate GRANT first (the trigger in schema.sql refuses it regardless).
REVOKE UPDATE, DELETE, TRUNCATE ON access_audit FROM PUBLIC, CURRENT_USER;
