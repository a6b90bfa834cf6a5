-- eventstore 0.2.0 -> 0.3.0 (ALTER EXTENSION eventstore UPDATE).
--
-- Every schema change of release 0.3.0 is here, in the order it was made; sql/eventstore.sql is
-- the same schema for a fresh install, and tests/shell/upgrade.sh checks that both end equal.
-- sql/eventstore--0.2.0.sql is 0.2.0's install script exactly as it was released: never edit it.

-- projection_status: head is the highest committed position in scope or the checkpoint, when
-- that is higher (a catch-up moves an instance's checkpoint past other instances' events), so
-- that a caught-up projection reads checkpoint = head, 0 behind. Same columns, grants and
-- security_invoker; the new comment.
CREATE OR REPLACE VIEW eventstore.projection_status WITH (security_invoker = true) AS
SELECT s.projection,
       s.instance_id,
       s.checkpoint,
       greatest(s.checkpoint, head.position)         AS head,
       greatest(head.position - s.checkpoint, 0)     AS position_behind,
       (SELECT count(*)
          FROM eventstore.events e
         WHERE e.position > s.checkpoint
           AND (s.instance_id IS NULL OR e.instance_id = s.instance_id)) AS events_behind,
       s.updated_at                                  AS last_run
  FROM eventstore.projection_states s
 CROSS JOIN LATERAL (
        SELECT coalesce(max(e.position), 0) AS position
          FROM eventstore.events e
         WHERE s.instance_id IS NULL OR e.instance_id = s.instance_id) head;
COMMENT ON VIEW eventstore.projection_status IS
    'Lag per projection and instance: checkpoint; head, the highest committed position in scope '
    'or the checkpoint when that is higher (a catch-up moves the checkpoint past other '
    'instances'' events); position_behind = head - checkpoint; events_behind, the events in '
    'scope past the checkpoint; last_run, when a catch-up last moved the checkpoint. Caught up: '
    'checkpoint = head, 0 behind.';

-- command(revision => 40000) raised 22003 from the cast to smallint; push documents 22023 for a
-- revision out of 1..32767. The check is now the one push makes, in a native function.
CREATE FUNCTION eventstore.checked_revision(revision integer) RETURNS smallint
LANGUAGE c IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'checked_revision_wrapper';
COMMENT ON FUNCTION eventstore.checked_revision(integer) IS
    'A revision as eventstore.command stores it: NULL, or 1..32767 (22023 otherwise).';
REVOKE ALL ON FUNCTION eventstore.checked_revision(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore.checked_revision(integer) TO eventstore_writer;

CREATE OR REPLACE FUNCTION eventstore.command(
    instance_id       text,
    aggregate_type    text,
    aggregate_id      text,
    event_type        text,
    payload           jsonb   DEFAULT NULL,
    revision          integer DEFAULT 1,
    creator           text    DEFAULT NULL,
    owner             text    DEFAULT NULL,
    expected_sequence bigint  DEFAULT NULL
) RETURNS eventstore.command
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ROW(instance_id, aggregate_type, aggregate_id, event_type,
           eventstore.checked_revision(revision), payload, creator, owner, expected_sequence
          )::eventstore.command;

-- Issue 14: event ids and metadata (G14), reading an aggregate as a writer, ES409/ES422.
ALTER TABLE eventstore.events ADD COLUMN id uuid, ADD COLUMN metadata jsonb;
-- Event ids are unique where given. Partial: events without an id never enter it, so pushes
-- without ids do not pay for it.
CREATE UNIQUE INDEX events_id_key ON eventstore.events (id) WHERE id IS NOT NULL;
COMMENT ON COLUMN eventstore.events.in_tx_order IS
    'Index of the event within its push call, from 0 (ZITADEL numbers from 1).';
COMMENT ON COLUMN eventstore.events.id IS
    'The event id the command carried, or NULL: unique where not NULL; a push repeating stored '
    'ids is answered with the stored rows and writes nothing (G14).';
COMMENT ON COLUMN eventstore.events.metadata IS
    'The command''s metadata, a JSON object or NULL: correlation_id, causation_id, trace_id...';

-- command gains id and metadata at the end; command() gains them as defaulted parameters, so it
-- is dropped and created again (a new signature), with its comment and grant.
DROP FUNCTION eventstore.command(text, text, text, text, jsonb, integer, text, text, bigint);
ALTER TYPE eventstore.command ADD ATTRIBUTE id uuid, ADD ATTRIBUTE metadata jsonb;
CREATE FUNCTION eventstore.command(
    instance_id       text,
    aggregate_type    text,
    aggregate_id      text,
    event_type        text,
    payload           jsonb   DEFAULT NULL,
    revision          integer DEFAULT 1,
    creator           text    DEFAULT NULL,
    owner             text    DEFAULT NULL,
    expected_sequence bigint  DEFAULT NULL,
    id                uuid    DEFAULT NULL,
    metadata          jsonb   DEFAULT NULL
) RETURNS eventstore.command
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ROW(instance_id, aggregate_type, aggregate_id, event_type,
           eventstore.checked_revision(revision), payload, creator, owner, expected_sequence,
           id, metadata
          )::eventstore.command;
COMMENT ON FUNCTION eventstore.command(text, text, text, text, jsonb, integer, text, text, bigint, uuid, jsonb) IS
    'Builds an eventstore.command. creator defaults to current_user, owner to the aggregate''s '
    'owner (or the instance for a new aggregate), revision to 1; id (an event id, for safe '
    'retries) and metadata (a JSON object) to NULL.';
REVOKE ALL ON FUNCTION eventstore.command(text, text, text, text, jsonb, integer, text, text, bigint, uuid, jsonb)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore.command(text, text, text, text, jsonb, integer, text, text, bigint, uuid, jsonb)
    TO eventstore_writer;

-- push returns the event id.
ALTER TYPE eventstore.pushed ADD ATTRIBUTE id uuid;

-- Reading one aggregate, for writers.
CREATE FUNCTION eventstore.read_aggregate(
    instance_id    text,
    aggregate_type text,
    aggregate_id   text,
    from_sequence  bigint  DEFAULT 1,
    max_count      integer DEFAULT 1000
) RETURNS SETOF eventstore.events
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'read_aggregate_rows';
COMMENT ON FUNCTION eventstore.read_aggregate(text, text, text, bigint, integer) IS
    'The aggregate''s events with sequence >= from_sequence, in sequence order, at most '
    'max_count (1..100000).';

CREATE FUNCTION eventstore.aggregate_sequence(instance_id text, aggregate_type text, aggregate_id text)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'aggregate_sequence_wrapper';
COMMENT ON FUNCTION eventstore.aggregate_sequence(text, text, text) IS
    'The aggregate''s current sequence, 0 when it has no event: the expected_sequence of its '
    'next command.';
REVOKE ALL ON FUNCTION eventstore.read_aggregate(text, text, text, bigint, integer),
    eventstore.aggregate_sequence(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore.read_aggregate(text, text, text, bigint, integer),
    eventstore.aggregate_sequence(text, text, text)
    TO eventstore_writer, eventstore_reader, eventstore_projector;

-- The floors (issue 19): the default horizon without preloading.
COMMENT ON FUNCTION eventstore.await_writers(text) IS
    'The horizon (of this instance, or of all when NULL): a position at or below which every '
    'write has finished (G4). Answers at once in floors and registry mode; waits for the writers '
    'in flight in barrier mode (see horizon_mode()).';
COMMENT ON FUNCTION eventstore.horizon_mode() IS
    'The horizon in use; writers never wait for catch-up in any: floors (the default: catch-up '
    'never waits for writers, it reads their floors from the lock table), barrier (setting '
    'eventstore.horizon = barrier: catch-up waits for writers in flight) or registry (eventstore '
    'preloaded: catch-up never waits for writers).';
