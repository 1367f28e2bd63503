-- popsync schema. Idempotent: applied by `popsync db migrate` and at worker start.

-- Synchronizer state: the set of accepted events of each citizen (Avro
-- single-object bytes); the snapshot is a deterministic fold of it.
CREATE TABLE IF NOT EXISTS sync_citizen_state (
    pin         text PRIMARY KEY,
    version     bigint NOT NULL,
    events      bytea[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- What the events fold to, kept so that a state leaves PostgreSQL without decoding
    -- and folding every event again: `event_ids[i]` is the id of `events[i]`; `fold` is
    -- JSON (snapshot, conflicts, last legal order, registered birth) tagged with the fold
    -- rules' version. Derived data: NULL, or another rules version, means the
    -- synchronizer folds the events instead.
    event_ids   text[],
    fold        bytea,
    -- The daily cap: `applied_today` events of the citizen were applied on `day` (UTC,
    -- by arrival); saved with the version, so a retried batch counts nothing twice.
    day           date,
    applied_today int NOT NULL DEFAULT 0
);
-- Tables made before the later columns. Each is looked up first, so that a worker start
-- takes no ACCESS EXCLUSIVE lock on a table that has them already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                    WHERE table_schema = current_schema()
                      AND table_name = 'sync_citizen_state' AND column_name = 'fold') THEN
        ALTER TABLE sync_citizen_state ADD COLUMN IF NOT EXISTS event_ids text[],
                                       ADD COLUMN IF NOT EXISTS fold bytea;
    END IF;
    -- Tables made before the daily cap (a constant default: no table rewrite).
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                    WHERE table_schema = current_schema()
                      AND table_name = 'sync_citizen_state'
                      AND column_name = 'applied_today') THEN
        ALTER TABLE sync_citizen_state ADD COLUMN IF NOT EXISTS day date,
                                       ADD COLUMN IF NOT EXISTS applied_today int NOT NULL DEFAULT 0;
    END IF;
END
$$;

-- The central population store: one row per citizen, its current state.
CREATE TABLE IF NOT EXISTS citizens (
    pin                  text PRIMARY KEY,
    version              bigint NOT NULL,
    full_name            text,
    birth_date           date,
    sex                  text,
    ethnicity            text,
    nationality          text,
    birthplace_province  text,
    marital_status       text NOT NULL,
    spouse_pin           text,
    life_status          text NOT NULL,
    death_date           date,
    permanent_province   text,
    permanent_commune    text,
    temporary_province   text,
    temporary_commune    text,
    id_card_number       text,
    snapshot             jsonb NOT NULL,
    last_event_id        text NOT NULL,
    last_event_at        timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS citizens_permanent_province ON citizens (permanent_province);

-- Room for updates: a citizen's state and current row are rewritten with each of its
-- batches. A quarter of each page left free lets PostgreSQL put the new row version on the
-- old one's page, without new index entries (a HOT update): on the 1,000,000-event
-- benchmark stream 88% (states) and 74% (citizens) of the updates were HOT, and
-- PostgreSQL's CPU per event went from 83 to 79 µs. Set here for new tables and for tables
-- made before (on their new pages), unless an operator has set a fillfactor of their own;
-- looked up first, so that a worker start takes no lock when one is set.
DO $$
DECLARE
    updated text;
BEGIN
    FOREACH updated IN ARRAY ARRAY['sync_citizen_state', 'citizens'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_class, unnest(reloptions) AS option
                        WHERE oid = to_regclass(updated)
                          AND option LIKE 'fillfactor=%') THEN
            EXECUTE format('ALTER TABLE %I SET (fillfactor = 75)', updated);
        END IF;
    END LOOP;
END
$$;

-- Append-only audit: what each version changed, from which event and source.
CREATE TABLE IF NOT EXISTS citizen_history (
    pin              text NOT NULL,
    version          bigint NOT NULL,
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    source_registry  text NOT NULL,
    changed_fields   text[] NOT NULL,
    changes          jsonb NOT NULL,
    occurred_at      timestamptz NOT NULL,
    applied_at       timestamptz NOT NULL,
    written_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pin, version)
);
CREATE INDEX IF NOT EXISTS citizen_history_event ON citizen_history (event_id);
-- Who changed the citizen: the publisher and key of the applied event's verified signature.
ALTER TABLE citizen_history ADD COLUMN IF NOT EXISTS publisher_id text;
ALTER TABLE citizen_history ADD COLUMN IF NOT EXISTS key_id text;

-- Events that were valid alone but contradict the citizen's state; resolved_at
-- is set when a later arrival made the event applicable after all.
CREATE TABLE IF NOT EXISTS citizen_conflicts (
    pin              text NOT NULL,
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    source_registry  text NOT NULL,
    conflict_code    text NOT NULL,
    message          text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    detected_at      timestamptz NOT NULL,
    resolved_at      timestamptz,
    PRIMARY KEY (pin, event_id)
);
CREATE INDEX IF NOT EXISTS citizen_conflicts_open ON citizen_conflicts (conflict_code)
    WHERE resolved_at IS NULL;

-- The store writer's consumed offsets: the synchronizer writes the store in the
-- transaction of its merged states since, and a store of an earlier release drops them.
DROP TABLE IF EXISTS store_writer_offsets;

-- PIN allocation for births registered without a PIN (popsync/adapters/postgres/pins.py):
-- serials handed out per prefix (province, gender/century digit, birth year), and
-- the PIN each birth event got, so that a replayed birth gets the same PIN.
CREATE TABLE IF NOT EXISTS pin_serials (
    prefix     text PRIMARY KEY,
    allocated  integer NOT NULL
);
CREATE TABLE IF NOT EXISTS pin_allocations (
    event_id      text PRIMARY KEY,
    pin           text NOT NULL UNIQUE,
    allocated_at  timestamptz NOT NULL DEFAULT now()
);

-- Aliases (popsync/domain/aliases.py): a legacy identifier (9-digit CMND, or a PIN
-- replaced by a correction) and the current PIN it resolves to.
CREATE TABLE IF NOT EXISTS citizen_aliases (
    alias       text PRIMARY KEY,
    pin         text NOT NULL,
    kind        text NOT NULL,
    event_id    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS citizen_aliases_pin ON citizen_aliases (pin);

-- Sector records without PIN (popsync/adapters/postgres/matching.py). Candidates are loaded
-- by birth date; match_decisions holds the matcher's decision per record event (a
-- re-delivered record gets it back) and the operators' links; match_reviews the records
-- an operator settles with `popsync review` (PENDING, then RESOLVED or REJECTED).
CREATE INDEX IF NOT EXISTS citizens_birth_date ON citizens (birth_date);
CREATE TABLE IF NOT EXISTS match_decisions (
    event_id         text PRIMARY KEY,
    source_registry  text NOT NULL,
    outcome          text NOT NULL,               -- LINKED, REVIEW, UNMATCHED
    method           text NOT NULL,               -- ALIAS, EXACT, PROBABILISTIC, NONE, OPERATOR
    reason           text NOT NULL,
    score            double precision NOT NULL,
    pin              text,
    candidates       jsonb NOT NULL,              -- [[pin, score], ...], best first
    decided_by       text NOT NULL,               -- 'popsync', or the operator
    decided_at       timestamptz NOT NULL,
    audit            jsonb NOT NULL,              -- scores, levels, codes: no personal data
    review_id        text                         -- an operator's decision: its review
);
CREATE TABLE IF NOT EXISTS match_reviews (
    review_id            text PRIMARY KEY,         -- the record's event id
    event_id             text NOT NULL,
    source_registry      text NOT NULL,
    source_province      text NOT NULL,
    status               text NOT NULL,            -- PENDING, RESOLVED, REJECTED
    original_topic       text NOT NULL,
    original_key         bytea,
    original_value       bytea NOT NULL,
    created_at           timestamptz NOT NULL,
    pin                  text,                     -- RESOLVED: the citizen linked
    decided_by           text,
    decided_at           timestamptz,
    resolution_event_id  text                      -- RESOLVED: the event that links it
);
CREATE INDEX IF NOT EXISTS match_reviews_pending ON match_reviews (created_at)
    WHERE status = 'PENDING';
-- Publishing sources quarantined after crossing the dead-letter limit (popsync.runtime.
-- quarantine): their further events are parked as SOURCE_QUARANTINED until released.
CREATE TABLE IF NOT EXISTS source_quarantine (
    source          text PRIMARY KEY,             -- REGISTRY/province, e.g. CIVIL_STATUS/079
    stage           text NOT NULL,                -- the worker that quarantined it
    reason          text NOT NULL,                -- its most frequent dead-letter reason
    detail          text NOT NULL,                -- counts, no personal data
    quarantined_at  timestamptz NOT NULL,
    released_at     timestamptz,                  -- NULL: in force
    released_by     text
);

-- The publisher directory (popsync.trust.identity; popsync/adapters/postgres/publishers.py):
-- which registry may publish what, and its Ed25519 public keys. Written by operators only
-- (`popsync publishers …`, `popsync keys …`), each change with one row in publisher_audit;
-- the validator reads every key, revoked and expired ones too, to tell them from unknown ones.
CREATE TABLE IF NOT EXISTS publishers (
    publisher_id  text PRIMARY KEY,               -- e.g. civil-status-79
    kind          text NOT NULL,                  -- a SourceRegistry, e.g. CIVIL_STATUS
    provinces     text[] NOT NULL,                -- 2-digit admin codes, current or legacy
    event_types   text[] NOT NULL,                -- the EventTypes it may publish
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz                     -- NULL: in force
);
CREATE TABLE IF NOT EXISTS publisher_keys (
    key_id        text PRIMARY KEY,
    publisher_id  text NOT NULL REFERENCES publishers (publisher_id),
    public_key    bytea NOT NULL CHECK (octet_length(public_key) = 32),  -- raw Ed25519
    valid_from    timestamptz NOT NULL,
    valid_until   timestamptz,                    -- NULL: open-ended; else [from, until)
    revoked_at    timestamptz,
    added_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (valid_until IS NULL OR valid_until > valid_from)
);
CREATE INDEX IF NOT EXISTS publisher_keys_publisher ON publisher_keys (publisher_id);
CREATE TABLE IF NOT EXISTS publisher_audit (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    operator      text NOT NULL,
    action        text NOT NULL,                  -- publisher.add, key.rotate, ...
    publisher_id  text NOT NULL,
    key_id        text,
    detail        jsonb NOT NULL                  -- ids, times, fingerprints: no secrets
);
CREATE INDEX IF NOT EXISTS publisher_audit_publisher ON publisher_audit (publisher_id, at);

-- The partner directory (popsync.verification; popsync/adapters/postgres/partners.py): who
-- may ask the verification service (`popsync serve`) what, and how often. Written by
-- operators only (`popsync partners …`), each change with one row in partner_audit. A
-- partner is a principal like a publisher: its own id, credentials, scope and audit.
CREATE TABLE IF NOT EXISTS partners (
    partner_id       text PRIMARY KEY,            -- e.g. bank-demo
    display_name     text NOT NULL,
    purposes         text[] NOT NULL,             -- purpose codes it may state, e.g. KYC
    lookup_fields    text[] NOT NULL,             -- what GET /v1/citizens may return; {}: none
    rate_per_second  double precision NOT NULL CHECK (rate_per_second > 0),
    burst            integer NOT NULL CHECK (burst >= 1),
    daily_quota      bigint NOT NULL CHECK (daily_quota >= 0),  -- verified items per day
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz                  -- NULL: in force
);
-- API keys: `psk_<key_id>.<secret>`; only the SHA-256 of the secret is kept (the secret is
-- 256 random bits, so a slow password hash would add latency and no strength).
CREATE TABLE IF NOT EXISTS partner_keys (
    key_id       text PRIMARY KEY,
    partner_id   text NOT NULL REFERENCES partners (partner_id),
    secret_hash  bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX IF NOT EXISTS partner_keys_partner ON partner_keys (partner_id);
-- Daily quotas, shared by every process of the service: each takes a lease of items.
CREATE TABLE IF NOT EXISTS partner_usage (
    partner_id  text NOT NULL,
    day         date NOT NULL,                    -- Asia/Ho_Chi_Minh calendar day
    used        bigint NOT NULL,
    PRIMARY KEY (partner_id, day)
);
CREATE TABLE IF NOT EXISTS partner_audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    operator    text NOT NULL,
    action      text NOT NULL,                    -- partner.add, partner.policy, ...
    partner_id  text NOT NULL,
    detail      jsonb NOT NULL                    -- ids, fields, limits: never a secret
);
-- One row per answered question (an item of a batch is a question): who asked about whom,
-- why, and what class of answer they got. The citizen is a keyed hash of the PIN
-- (HMAC-SHA256 with POPSYNC_SERVE__AUDIT_KEY), never the PIN: `popsync audit citizen PIN`
-- finds a citizen's rows with the key. Append-only: the trigger refuses any change.
CREATE TABLE IF NOT EXISTS access_audit (
    at          timestamptz NOT NULL,
    request_id  text NOT NULL,
    item        integer NOT NULL,                 -- 0 for single requests, else the index
    partner_id  text,                             -- NULL: no valid credential
    purpose     text,
    endpoint    text NOT NULL,                    -- verify, verify_batch, citizen
    pin_hash    bytea,                            -- NULL: the request named no valid PIN
    result      text NOT NULL,                    -- match, no_match, found, not_found, ...
    status      smallint NOT NULL,
    latency_ms  real NOT NULL
);
CREATE INDEX IF NOT EXISTS access_audit_pin ON access_audit (pin_hash, at)
    WHERE pin_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS access_audit_partner ON access_audit (partner_id, at);
CREATE OR REPLACE FUNCTION access_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'access_audit is append-only: % refused', TG_OP;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'access_audit_append_only') THEN
        CREATE TRIGGER access_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE
            ON access_audit FOR EACH STATEMENT EXECUTE FUNCTION access_audit_append_only();
    END IF;
END
$$;

-- Bulk load (`popsync backfill`): one run per set of archives (their SHA-256s, in order).
-- Each run stages its records in a table of its own, UNLOGGED (nothing of it is
-- WAL-logged; PostgreSQL empties it after a crash of the server, and the run then stages
-- its files again: the archives are the durable copy), dropped when the run finishes.
-- The run's cursor (the last staged record applied, in apply order), its counts and the
-- length of its dead-letter file move in the same transaction as the rows they account
-- for, so a run killed at any point resumes exactly where it committed.
CREATE TABLE IF NOT EXISTS backfill_runs (
    run_id            text PRIMARY KEY,
    files             jsonb NOT NULL,              -- [{name, sha256, size, publisher, key_id}]
    started_at        timestamptz NOT NULL DEFAULT now(),
    staged_records    bigint,                      -- NULL: not staged yet
    pinless           bigint,                      -- of them, left to the last pass
    citizens          bigint,                      -- distinct subject keys staged
    finished_at       timestamptz
);
-- A run's records are applied in `parts` disjoint shares of the citizens (by a hash of
-- the key), each with its own cursor, so parts run side by side.
CREATE TABLE IF NOT EXISTS backfill_parts (
    run_id            text NOT NULL REFERENCES backfill_runs ON DELETE CASCADE,
    part              integer NOT NULL,
    parts             integer NOT NULL,
    cursor_key        text,                        -- NULL: nothing applied yet
    cursor_occurred   timestamptz,
    cursor_recorded   timestamptz,
    cursor_file       integer,
    cursor_position   bigint,
    counts            jsonb NOT NULL DEFAULT '{}', -- applied, duplicates, parked, ...
    dead_letter_bytes bigint NOT NULL DEFAULT 0,   -- of its --dead-letters file
    finished_at       timestamptz,
    PRIMARY KEY (run_id, part)
);
