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
