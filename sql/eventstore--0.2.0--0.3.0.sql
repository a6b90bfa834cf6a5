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

-- Partitioned projections (issue 13): a checkpoint per partition (existing rows become
-- partition 0, so every projection keeps its checkpoint and its lock), the projections'
-- definitions, partition_of, set_partitions, partition_catchup, and projection_status with a
-- row per partition (new columns partition, partitions, held_by at the end).
ALTER TABLE eventstore.projection_states ADD COLUMN partition integer NOT NULL DEFAULT 0;
ALTER TABLE eventstore.projection_states DROP CONSTRAINT projection_states_key,
    ADD CONSTRAINT projection_states_key UNIQUE NULLS NOT DISTINCT (projection, instance_id, partition);
COMMENT ON TABLE eventstore.projection_states IS
    'Projection checkpoints, one per partition: every event of the partition at or below '
    'checkpoint has been handed out and committed. Written by projection_catchup and '
    'partition_catchup in the caller''s transaction, and by set_partitions and reset_projection.';

-- Partitioned projections (src/catchup/partitions.rs). A projection may be split into N
-- partitions, each with its own checkpoint row and its own lock, so that N workers run it side
-- by side (G12). An event's partition is chosen from its aggregate, so an aggregate's events
-- stay in one partition, in sequence order. A projection without a row here has 1 partition.
CREATE TABLE eventstore.projections (
    projection      text        NOT NULL,
    instance_id     text,
    partitions      integer     NOT NULL DEFAULT 1,
    resize_from     integer,
    resize_position bigint      NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL DEFAULT 3,
    hold_aggregate  boolean     NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projections_key UNIQUE NULLS NOT DISTINCT (projection, instance_id),
    CONSTRAINT projections_partitions_check CHECK (partitions BETWEEN 1 AND 256),
    CONSTRAINT projections_resize_from_check CHECK (resize_from BETWEEN 1 AND 256),
    CONSTRAINT projections_max_attempts_check CHECK (max_attempts BETWEEN 1 AND 100)
);
COMMENT ON TABLE eventstore.projections IS
    'How a projection is run: its partition count and, while a resize drains, the count before '
    '(resize_from) and the position from which the new count applies (resize_position: events '
    'at or below it belong to the old partitions); its poison policy (max_attempts, '
    'hold_aggregate). Written by set_partitions and set_poison_policy.';

-- The partition of an aggregate among `partitions`: hashtextextended (seed 0) over an
-- unambiguous encoding of the aggregate (each name as its length in characters, a colon and the
-- name), taken modulo the count. Stable across servers and releases: changing it would move
-- aggregates between partitions.
CREATE FUNCTION eventstore.partition_of(
    instance_id    text,
    aggregate_type text,
    aggregate_id   text,
    partitions     integer
) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ((pg_catalog.hashtextextended(
            pg_catalog.length(instance_id)::text || ':' || instance_id ||
            pg_catalog.length(aggregate_type)::text || ':' || aggregate_type ||
            pg_catalog.length(aggregate_id)::text || ':' || aggregate_id, 0)
         % partitions + partitions) % partitions)::integer;
COMMENT ON FUNCTION eventstore.partition_of(text, text, text, integer) IS
    'The partition (0..partitions-1) an aggregate''s events belong to in a projection of '
    'that many partitions.';

-- The digest of a partition's lock key, as src/locks.rs computes it (README "Lock keys"):
-- pg_locks shows it in classid (high 32 bits) and objid (low 32 bits), objsubid 17667.
-- Partition 0's key is the projection's key, so an unpartitioned projection keeps its lock.
CREATE FUNCTION eventstore.projection_lock_key(projection text, instance_id text, partition integer)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN ('x' || pg_catalog.encode(pg_catalog.substr(pg_catalog.sha256(
            CASE WHEN instance_id IS NULL THEN '\x01'::bytea
                 ELSE '\x00'::bytea || pg_catalog.int4send(pg_catalog.octet_length(instance_id))
                      || pg_catalog.convert_to(instance_id, 'UTF8') END
            || '\x00'::bytea || pg_catalog.int4send(pg_catalog.octet_length(projection))
            || pg_catalog.convert_to(projection, 'UTF8')
            || CASE WHEN partition = 0 THEN ''::bytea
                    ELSE '\x00'::bytea || pg_catalog.int4send(pg_catalog.octet_length(partition::text))
                         || pg_catalog.convert_to(partition::text, 'UTF8') END),
        1, 8), 'hex'))::bit(64)::bigint;
COMMENT ON FUNCTION eventstore.projection_lock_key(text, text, integer) IS
    'The 64-bit digest of a projection partition''s lock key (pg_locks: classid, objid; '
    'objsubid 17667).';

CREATE FUNCTION eventstore.set_partitions(projection text, instance_id text, partitions integer)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'set_partitions_wrapper';
COMMENT ON FUNCTION eventstore.set_partitions(text, text, integer) IS
    'Sets a projection''s partition count (1..256), waiting for its running batches. Returns '
    'the resize position: events above it go to the new partitions, which start once every '
    'old partition has passed it (G12). Refused (55000) while an earlier resize still drains.';

CREATE FUNCTION eventstore.partition_catchup(
    projection      text,
    instance_id     text    DEFAULT NULL,
    batch_size      integer DEFAULT 1000,
    aggregate_types text[]  DEFAULT NULL,
    event_types     text[]  DEFAULT NULL,
    wait            boolean DEFAULT false
) RETURNS TABLE (
    partition      integer,
    instance_id    text,
    aggregate_type text,
    aggregate_id   text,
    sequence       bigint,
    event_type     text,
    revision       smallint,
    payload        jsonb,
    creator        text,
    owner          text,
    created_at     timestamptz,
    "position"     bigint,
    in_tx_order    integer,
    id             uuid,
    metadata       jsonb
)
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'partition_catchup_batch';
COMMENT ON FUNCTION eventstore.partition_catchup(text, text, integer, text[], text[], boolean) IS
    'The next batch of the first free partition of a projection that has one (G4-G7 per '
    'partition, G12), its checkpoint advanced in the caller''s transaction. Busy partitions are '
    'passed over; zero rows: nothing for this worker now.';

-- Poison events (src/catchup/poison.rs, G13). A worker whose handler failed rolls back and, in a
-- transaction of its own, calls projection_failed: the failure is recorded here, outside the
-- failing transaction (trap 16). The partition's next batch then stops before the failing event
-- and hands it out alone; after max_attempts (set_poison_policy) the catch-up parks it instead
-- and goes on.
CREATE TABLE eventstore.projection_failures (
    projection      text        NOT NULL,
    instance_id     text,
    partition       integer     NOT NULL,
    "position"      bigint      NOT NULL,
    attempts        integer     NOT NULL,
    error           text        NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    CONSTRAINT projection_failures_key UNIQUE NULLS NOT DISTINCT (projection, instance_id, partition)
);
COMMENT ON TABLE eventstore.projection_failures IS
    'The event a partition failed on, and how often: written by projection_failed in a '
    'transaction of its own, so the count survives the failing batch''s rollback.';

-- Parked events: handed out no more until retried (retry_parked) or discarded (discard_parked).
-- held_behind: the position of the parked event of the same aggregate this one waits behind
-- (hold_aggregate); NULL for an event parked for its own failures.
CREATE TABLE eventstore.parked_events (
    projection        text        NOT NULL,
    instance_id       text,
    partition         integer     NOT NULL,
    "position"        bigint      NOT NULL,
    event_instance_id text        NOT NULL,
    aggregate_type    text        NOT NULL,
    aggregate_id      text        NOT NULL,
    sequence          bigint      NOT NULL,
    error             text,
    attempts          integer     NOT NULL,
    first_failed_at   timestamptz,
    last_failed_at    timestamptz,
    parked_at         timestamptz NOT NULL,
    held_behind       bigint,
    retry             boolean     NOT NULL DEFAULT false,
    CONSTRAINT parked_events_key UNIQUE NULLS NOT DISTINCT (projection, instance_id, "position")
);
CREATE INDEX parked_events_aggregate
    ON eventstore.parked_events (projection, event_instance_id, aggregate_type, aggregate_id);
COMMENT ON TABLE eventstore.parked_events IS
    'Events a projection parked: failed max_attempts times (error, attempts, first and last '
    'failure), or held behind such an event of the same aggregate (held_behind). retry: handed '
    'out again by the partition''s next catch-up.';

CREATE FUNCTION eventstore.set_poison_policy(
    projection     text,
    instance_id    text,
    max_attempts   integer DEFAULT 3,
    hold_aggregate boolean DEFAULT true
) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'set_poison_policy_wrapper';
COMMENT ON FUNCTION eventstore.set_poison_policy(text, text, integer, boolean) IS
    'After max_attempts (1..100) recorded failures an event is parked; hold_aggregate: the same '
    'aggregate''s later events are parked behind it (true) or go on (false).';

CREATE FUNCTION eventstore.projection_failed(
    projection  text,
    instance_id text,
    partition   integer,
    error       text,
    "position"  bigint DEFAULT NULL
) RETURNS integer
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'projection_failed_wrapper';
COMMENT ON FUNCTION eventstore.projection_failed(text, text, integer, text, bigint) IS
    'Records a handler failure for the partition''s next event (or the event at position), in '
    'the caller''s transaction: call it after rolling the failing batch back (G13). Returns the '
    'attempts counted so far.';

CREATE FUNCTION eventstore.retry_parked(projection text, instance_id text, positions bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'retry_parked_wrapper';
COMMENT ON FUNCTION eventstore.retry_parked(text, text, bigint[]) IS
    'Marks parked events (all when positions is NULL) to be handed out again, in position order, '
    'by their partition''s next catch-up, before its new events. Returns how many.';

CREATE FUNCTION eventstore.discard_parked(projection text, instance_id text, positions bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'discard_parked_wrapper';
COMMENT ON FUNCTION eventstore.discard_parked(text, text, bigint[]) IS
    'Deletes parked events (all when positions is NULL): they are never handed out again. '
    'Returns how many.';

-- Rebuilds (src/catchup/rebuild.rs).
CREATE FUNCTION eventstore.reset_projection(
    projection  text,
    instance_id text    DEFAULT NULL,
    partition   integer DEFAULT NULL,
    to_position bigint  DEFAULT 0
) RETURNS integer
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'reset_projection_wrapper';
COMMENT ON FUNCTION eventstore.reset_projection(text, text, integer, bigint) IS
    'Moves the checkpoint of one partition (or of all, when partition is NULL) to to_position, '
    'waiting for running batches, in the caller''s transaction: the events after it are handed '
    'out again to rebuild the read model. Returns how many partitions were reset.';

-- security_invoker: a reader bound to a tenant sees its own tenant's lag only (the tables'
-- row-level security applies to the caller, not to the view's owner).
--
-- One row per partition's checkpoint. head is where the projection stands once caught up: the
-- highest committed position in its scope (its instance, or every instance), or its checkpoint
-- when that is higher. A catch-up moves the checkpoint up to its horizon, past other instances'
-- (and partitions') events, so a checkpoint can be above the scope's own last event; caught up
-- then reads checkpoint = head and 0 behind. events_behind counts the partition's own events
-- (by the current partition count). held_by is the pid of the backend holding the partition's
-- lock, NULL when none does.
CREATE OR REPLACE VIEW eventstore.projection_status WITH (security_invoker = true) AS
SELECT s.projection,
       s.instance_id,
       s.checkpoint,
       greatest(s.checkpoint, head.position)         AS head,
       greatest(head.position - s.checkpoint, 0)     AS position_behind,
       (SELECT count(*)
          FROM eventstore.events e
         WHERE e.position > s.checkpoint
           AND (s.instance_id IS NULL OR e.instance_id = s.instance_id)
           AND (coalesce(d.partitions, 1) = 1
                OR eventstore.partition_of(e.instance_id, e.aggregate_type, e.aggregate_id,
                                           d.partitions) = s.partition)) AS events_behind,
       s.updated_at                                  AS last_run,
       s.partition,
       coalesce(d.partitions, 1)                     AS partitions,
       (SELECT l.pid
          FROM pg_catalog.pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 17667
           AND l.database = (SELECT oid FROM pg_catalog.pg_database
                              WHERE datname = pg_catalog.current_database())
           AND l.classid::bigint = (k.digest >> 32) & 4294967295
           AND l.objid::bigint = k.digest & 4294967295
         LIMIT 1)                                    AS held_by
  FROM eventstore.projection_states s
  LEFT JOIN eventstore.projections d
    ON d.projection = s.projection AND d.instance_id IS NOT DISTINCT FROM s.instance_id
 CROSS JOIN LATERAL (
        SELECT coalesce(max(e.position), 0) AS position
          FROM eventstore.events e
         WHERE s.instance_id IS NULL OR e.instance_id = s.instance_id) head
 CROSS JOIN LATERAL (
        SELECT eventstore.projection_lock_key(s.projection, s.instance_id, s.partition) AS digest) k;
COMMENT ON VIEW eventstore.projection_status IS
    'Lag per projection, instance and partition: checkpoint; head, the highest committed '
    'position in scope or the checkpoint when that is higher; position_behind = head - '
    'checkpoint; events_behind, the partition''s events in scope past the checkpoint; last_run, '
    'when a catch-up last moved the checkpoint; partition and partitions; held_by, the pid '
    'holding the partition''s lock (NULL: free). Caught up: checkpoint = head, 0 behind.';

SELECT pg_catalog.pg_extension_config_dump('eventstore.projections', '');
ALTER TABLE eventstore.projections ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON eventstore.projections
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));
REVOKE ALL ON FUNCTION
    eventstore.partition_of(text, text, text, integer),
    eventstore.projection_lock_key(text, text, integer),
    eventstore.set_partitions(text, text, integer),
    eventstore.partition_catchup(text, text, integer, text[], text[], boolean)
    FROM PUBLIC;
GRANT SELECT ON eventstore.projections TO eventstore_reader, eventstore_projector;
GRANT EXECUTE ON FUNCTION
    eventstore.partition_of(text, text, text, integer),
    eventstore.projection_lock_key(text, text, integer)
    TO eventstore_reader, eventstore_projector;
GRANT EXECUTE ON FUNCTION
    eventstore.set_partitions(text, text, integer),
    eventstore.partition_catchup(text, text, integer, text[], text[], boolean)
    TO eventstore_projector;
SELECT pg_catalog.pg_extension_config_dump('eventstore.projection_failures', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.parked_events', '');
ALTER TABLE eventstore.projection_failures ENABLE ROW LEVEL SECURITY;
ALTER TABLE eventstore.parked_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON eventstore.projection_failures
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));
CREATE POLICY tenant_isolation ON eventstore.parked_events
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));
REVOKE ALL ON FUNCTION
    eventstore.set_poison_policy(text, text, integer, boolean),
    eventstore.projection_failed(text, text, integer, text, bigint),
    eventstore.retry_parked(text, text, bigint[]),
    eventstore.discard_parked(text, text, bigint[])
    FROM PUBLIC;
-- Poison events: the failures and parked events are readable by readers and projectors; the
-- functions that record, retry and discard belong to the projector.
GRANT SELECT ON eventstore.projection_failures, eventstore.parked_events
    TO eventstore_reader, eventstore_projector;
GRANT EXECUTE ON FUNCTION
    eventstore.set_poison_policy(text, text, integer, boolean),
    eventstore.projection_failed(text, text, integer, text, bigint),
    eventstore.retry_parked(text, text, bigint[]),
    eventstore.discard_parked(text, text, bigint[])
    TO eventstore_projector;
REVOKE ALL ON FUNCTION eventstore.reset_projection(text, text, integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore.reset_projection(text, text, integer, bigint) TO eventstore_projector;

-- Tenant-first forms (README "Running on Citus"): the calls of one tenant, the instance first
-- and required, never NULL. On one node they are push, projection_catchup, lock_projection,
-- await_writers and wait_for_events for that instance; on Citus, eventstore.distribute() has
-- Citus delegate each call to the node that holds the tenant's shard, by its first argument.
CREATE FUNCTION eventstore.push(instance_id text, commands eventstore.command[])
RETURNS SETOF eventstore.pushed
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'push_tenant_commands_wrapper';
COMMENT ON FUNCTION eventstore.push(text, eventstore.command[]) IS
    'push for one tenant: every command must name instance_id (22023 otherwise). The form Citus '
    'delegates to the tenant''s node.';

CREATE FUNCTION eventstore.push(instance_id text, commands jsonb)
RETURNS SETOF eventstore.pushed
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'push_tenant_json_wrapper';
COMMENT ON FUNCTION eventstore.push(text, jsonb) IS
    'push(instance_id, commands) with a JSON array of command objects.';

CREATE FUNCTION eventstore.push(instance_id text, commands text)
RETURNS SETOF eventstore.pushed
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM eventstore.push(instance_id, commands::jsonb) $$;
COMMENT ON FUNCTION eventstore.push(text, text) IS
    'push(instance_id, jsonb) for a JSON text, so that an untyped parameter needs no cast.';

CREATE FUNCTION eventstore.tenant_catchup(
    instance_id     text,
    projection      text,
    batch_size      integer DEFAULT 1000,
    aggregate_types text[]  DEFAULT NULL,
    event_types     text[]  DEFAULT NULL,
    wait            boolean DEFAULT false
) RETURNS SETOF eventstore.events
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'tenant_catchup_batch';
COMMENT ON FUNCTION eventstore.tenant_catchup(text, text, integer, text[], text[], boolean) IS
    'projection_catchup for one tenant (G4-G7): the instance first and required.';

CREATE FUNCTION eventstore.tenant_lock_projection(
    instance_id text,
    projection  text,
    wait        boolean DEFAULT false
) RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'tenant_lock_projection_wrapper';
COMMENT ON FUNCTION eventstore.tenant_lock_projection(text, text, boolean) IS
    'lock_projection for one tenant (G6): the instance first and required.';

CREATE FUNCTION eventstore.tenant_await_writers(instance_id text)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'tenant_await_writers_wrapper';
COMMENT ON FUNCTION eventstore.tenant_await_writers(text) IS
    'await_writers for one tenant (G4): the instance required.';

CREATE FUNCTION eventstore.tenant_wait_for_events(
    instance_id text,
    projection  text,
    timeout_ms  integer DEFAULT 10000
) RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'tenant_wait_for_events_wrapper';
COMMENT ON FUNCTION eventstore.tenant_wait_for_events(text, text, integer) IS
    'wait_for_events for one tenant (G15): the instance first and required.';

-- Distributing with Citus (README "Running on Citus"): the tables of tenants' data distributed
-- by tenant and colocated, position unique per tenant, the tenant functions delegated to the
-- node of the tenant's shard. Run once, on the coordinator, as a superuser.
CREATE FUNCTION eventstore.distribute(shard_count integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $distribute$
DECLARE
    tenant_function text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'eventstore.distribute() distributes eventstore''s tables with Citus, '
                           'and the extension citus is not in this database.',
                  HINT = 'Run CREATE EXTENSION citus on the coordinator and add the workers '
                         'first, or keep eventstore on one node.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                WHERE logicalrelid = 'eventstore.events'::pg_catalog.regclass) THEN
        RAISE EXCEPTION 'eventstore is already distributed'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'eventstore.events is already a Citus distributed table.';
    END IF;
    IF EXISTS (SELECT FROM eventstore.projection_states WHERE instance_id IS NULL)
       OR EXISTS (SELECT FROM eventstore.projections WHERE instance_id IS NULL) THEN
        RAISE EXCEPTION 'global projections cannot be distributed'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'A checkpoint or definition of a global projection (instance_id '
                           'NULL) exists; on Citus there is no order across tenants.',
                  HINT = 'Run each global projection as one projection per tenant, then '
                         'delete the global rows (README "Running on Citus").';
    END IF;
    -- A distributed unique constraint must include the distribution column.
    ALTER TABLE eventstore.events DROP CONSTRAINT events_position_key;
    ALTER TABLE eventstore.events
        ADD CONSTRAINT events_instance_position_key UNIQUE (instance_id, position);
    DROP INDEX eventstore.events_id_key;
    CREATE UNIQUE INDEX events_id_key ON eventstore.events (instance_id, id) WHERE id IS NOT NULL;
    PERFORM pg_catalog.create_distributed_table('eventstore.events', 'instance_id',
        shard_count => shard_count);
    PERFORM pg_catalog.create_distributed_table('eventstore.projection_states', 'instance_id',
        colocate_with => 'eventstore.events');
    PERFORM pg_catalog.create_distributed_table('eventstore.counters', 'tenant',
        colocate_with => 'eventstore.events');
    FOREACH tenant_function IN ARRAY ARRAY[
        'eventstore.push(text, eventstore.command[])',
        'eventstore.push(text, jsonb)',
        'eventstore.push(text, text)',
        'eventstore.tenant_catchup(text, text, integer, text[], text[], boolean)',
        'eventstore.tenant_lock_projection(text, text, boolean)',
        'eventstore.tenant_await_writers(text)',
        'eventstore.tenant_wait_for_events(text, text, integer)']
    LOOP
        PERFORM pg_catalog.create_distributed_function(tenant_function::pg_catalog.regprocedure, 'instance_id',
            colocate_with => 'eventstore.events', force_delegation => true);
    END LOOP;
    PERFORM pg_catalog.create_distributed_function('eventstore.next_number(text, text)'::pg_catalog.regprocedure, 'tenant',
        colocate_with => 'eventstore.events', force_delegation => true);
END
$distribute$;
COMMENT ON FUNCTION eventstore.distribute(integer) IS
    'On Citus: distributes events, projection_states and counters by tenant, colocated '
    '(position unique per tenant), and delegates the tenant functions to the tenant''s node. '
    'Refused (0A000) without Citus.';

REVOKE ALL ON FUNCTION
    eventstore.push(text, eventstore.command[]),
    eventstore.push(text, jsonb),
    eventstore.push(text, text),
    eventstore.tenant_catchup(text, text, integer, text[], text[], boolean),
    eventstore.tenant_lock_projection(text, text, boolean),
    eventstore.tenant_await_writers(text),
    eventstore.tenant_wait_for_events(text, text, integer),
    eventstore.distribute(integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    eventstore.push(text, eventstore.command[]),
    eventstore.push(text, jsonb),
    eventstore.push(text, text)
    TO eventstore_writer;
GRANT EXECUTE ON FUNCTION
    eventstore.tenant_catchup(text, text, integer, text[], text[], boolean),
    eventstore.tenant_lock_projection(text, text, boolean),
    eventstore.tenant_await_writers(text),
    eventstore.tenant_wait_for_events(text, text, integer)
    TO eventstore_projector;
