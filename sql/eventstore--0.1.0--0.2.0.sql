-- eventstore 0.1.0 -> 0.2.0: ALTER EXTENSION eventstore UPDATE TO '0.2.0'.
-- Brings a 0.1.0 schema to exactly what CREATE EXTENSION creates in 0.2.0 (tests/upgrade.sh
-- compares the two). Keeps every event, position, checkpoint.
\echo Use "ALTER EXTENSION eventstore UPDATE" to load this file. \quit

-- Which horizon catch-up uses (README "Horizon modes"): 'registry' when eventstore is in
-- shared_preload_libraries, else 'barrier'.
CREATE FUNCTION eventstore.horizon_mode()
RETURNS text
LANGUAGE c STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'horizon_mode_wrapper';
COMMENT ON FUNCTION eventstore.horizon_mode() IS
    'The horizon in use: registry (eventstore preloaded: catch-up never waits for writers, '
    'writers never wait for catch-up) or barrier (catch-up waits for writers in flight).';

-- await_writers no longer always waits.
COMMENT ON FUNCTION eventstore.await_writers(text) IS
    'The horizon (of this instance, or of all when NULL): a position at or below which every '
    'write has finished (G4). Waits for the writers in flight in barrier mode; answers at once '
    'in registry mode (see horizon_mode()).';

-- Lag is visible to a tenant-bound reader for its own tenant only.
ALTER VIEW eventstore.projection_status SET (security_invoker = true);

-- Waking a worker without polling (src/wakeup.rs). A transaction that pushed also sends one
-- NOTIFY on channel eventstore_events when it commits: {"instance_id": ..., "position": ...}.
CREATE FUNCTION eventstore.wait_for_events(
    projection  text,
    instance_id text    DEFAULT NULL,
    timeout_ms  integer DEFAULT 10000
) RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'wait_for_events_wrapper';
COMMENT ON FUNCTION eventstore.wait_for_events(text, text, integer) IS
    'Sleeps until events past the projection''s checkpoint are committed (true) or timeout_ms '
    'passes (false). A committing push wakes it; no polling, no LISTEN connection.';

-- Gapless per-tenant counters for human-facing numbers (src/counter.rs).
CREATE TABLE eventstore.counters (
    scope  text   NOT NULL,
    tenant text   NOT NULL,
    value  bigint NOT NULL,
    CONSTRAINT counters_pkey PRIMARY KEY (scope, tenant)
);
COMMENT ON TABLE eventstore.counters IS
    'The last number next_number handed out per scope and tenant. Written only by next_number.';

CREATE FUNCTION eventstore.next_number(scope text, tenant text DEFAULT '')
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'next_number_wrapper';
COMMENT ON FUNCTION eventstore.next_number(text, text) IS
    'The next gapless number of a counter: callers serialize, a rolled-back number is handed '
    'out again, committed numbers are 1..N per scope and tenant.';

-- pg_dump keeps the data of extension tables only when they are marked.
SELECT pg_catalog.pg_extension_config_dump('eventstore.counters', '');

-- Tenancy (src/tenancy.rs). A role subject to row-level security is bound to the tenant named
-- by the setting eventstore.tenant: its direct reads are filtered by the policies below, and
-- push, catch-up, next_number and the lock helpers refuse any other instance (42501). Owner,
-- superusers and BYPASSRLS roles see every tenant. Writes happen only through the functions,
-- which run their statements as the owner: no role is granted a write on a table.
ALTER TABLE eventstore.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE eventstore.projection_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE eventstore.counters ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON eventstore.events
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));
CREATE POLICY tenant_isolation ON eventstore.projection_states
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));
CREATE POLICY tenant_isolation ON eventstore.counters
    USING (tenant = pg_catalog.current_setting('eventstore.tenant', true));

-- The three roles, NOLOGIN: grant them to the application's login roles. Roles belong to the
-- cluster: made by the first CREATE EXTENSION, reused by the next (any database), kept by
-- DROP EXTENSION.
DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['eventstore_writer', 'eventstore_reader', 'eventstore_projector']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', role_name);
        END IF;
    END LOOP;
END
$roles$;

-- Nothing for PUBLIC: functions are executable by PUBLIC unless revoked, types usable.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA eventstore FROM PUBLIC;
REVOKE ALL ON TYPE eventstore.command, eventstore.pushed FROM PUBLIC;

GRANT USAGE ON SCHEMA eventstore TO eventstore_writer, eventstore_reader, eventstore_projector;
GRANT EXECUTE ON FUNCTION eventstore.horizon_mode()
    TO eventstore_writer, eventstore_reader, eventstore_projector;

-- eventstore_writer: push and the writer lock (plus next_number, for numbers in the same
-- transaction as the events).
GRANT USAGE ON TYPE eventstore.command, eventstore.pushed TO eventstore_writer;
GRANT EXECUTE ON FUNCTION
    eventstore.command(text, text, text, text, jsonb, integer, text, text, bigint),
    eventstore.push(eventstore.command[]),
    eventstore.push(jsonb),
    eventstore.push(text),
    eventstore.lock_writer(text),
    eventstore.next_number(text, text)
    TO eventstore_writer;

-- eventstore_reader: the events and the projections' progress.
GRANT SELECT ON eventstore.events, eventstore.projection_states, eventstore.projection_status
    TO eventstore_reader;

-- eventstore_projector: catch-up and its checkpoints (read them; delete one to rebuild).
GRANT EXECUTE ON FUNCTION
    eventstore.projection_catchup(text, text, integer, text[], text[], boolean),
    eventstore.lock_projection(text, text, boolean),
    eventstore.await_writers(text),
    eventstore.wait_for_events(text, text, integer)
    TO eventstore_projector;
GRANT SELECT, DELETE ON eventstore.projection_states TO eventstore_projector;
