-- The baselines of the write cases (tests/bench/writes.sh), in schema "bench" of their template
-- database, writes_template (which already has CREATE EXTENSION eventstore).
--
-- 1. bench.insert_events: a bare table identical to eventstore.events (same columns,
--    constraints and indexes), with its position from a CACHE 1 sequence like
--    eventstore.position_seq. The "bare prepared INSERT" cases write here.
-- 2. bench.plpgsql_push: "what teams write today" — a set-based PL/pgSQL push with the same
--    semantics as eventstore.push (the shared writer locks and the aggregate locks, with
--    eventstore's own lock keys, in key order; per-aggregate max(sequence) + 1 read after the
--    locks; positions from a sequence drawn after the locks, in command order; the
--    expected_sequence check) into bench.plpgsql_events, another copy of the table.
--    Simplification: owner is the command's, else the aggregate's stored owner, else the
--    instance (eventstore also carries an owner from an earlier command of the same batch).

CREATE SCHEMA bench;

CREATE TABLE bench.insert_events (LIKE eventstore.events INCLUDING ALL);
CREATE SEQUENCE bench.insert_position_seq AS bigint CACHE 1;

CREATE TABLE bench.plpgsql_events (LIKE eventstore.events INCLUDING ALL);
CREATE SEQUENCE bench.plpgsql_position_seq AS bigint CACHE 1;

CREATE FUNCTION bench.plpgsql_push(commands eventstore.command[])
RETURNS TABLE (
    instance_id    text,
    aggregate_type text,
    aggregate_id   text,
    sequence       bigint,
    "position"     bigint,
    in_tx_order    integer,
    created_at     timestamptz,
    owner          text
)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    mismatch record;
BEGIN
    IF coalesce(cardinality(commands), 0) = 0 THEN
        RAISE EXCEPTION 'push needs at least one command' USING ERRCODE = '22023';
    END IF;

    -- The shared writer locks (all writers, then each instance), then the aggregate locks,
    -- each family in key order. Key classes as in src/locks.rs.
    PERFORM pg_advisory_xact_lock_shared(1163067393, 0);
    PERFORM pg_advisory_xact_lock_shared(1163067394, k)
       FROM (SELECT DISTINCT hashtext(c.instance_id) AS k FROM unnest(commands) c) keys
      ORDER BY k;
    PERFORM pg_advisory_xact_lock(1163067396, k)
       FROM (SELECT DISTINCT hashtext(c.instance_id || '/' || c.aggregate_type || '/' || c.aggregate_id) AS k
               FROM unnest(commands) c) keys
      ORDER BY k;

    -- Every statement from here on runs under a snapshot taken after the lock waits.
    IF EXISTS (SELECT FROM unnest(commands) c WHERE c.expected_sequence IS NOT NULL) THEN
        SELECT n.* INTO mismatch
          FROM bench.plpgsql_numbered(commands) n
         WHERE n.expected_sequence IS NOT NULL AND n.expected_sequence <> n.sequence - 1
         ORDER BY n.ord LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'aggregate %/%/% is not at the expected sequence',
                    mismatch.instance_id, mismatch.aggregate_type, mismatch.aggregate_id
                USING ERRCODE = 'ES409',
                      DETAIL = format('Command %s expected sequence %s, the aggregate is at %s.',
                                      mismatch.ord, mismatch.expected_sequence, mismatch.sequence - 1);
        END IF;
    END IF;

    RETURN QUERY
    WITH written AS (
        INSERT INTO bench.plpgsql_events AS e (instance_id, aggregate_type, aggregate_id, sequence,
               event_type, revision, payload, creator, owner, created_at, position, in_tx_order)
        SELECT n.instance_id, n.aggregate_type, n.aggregate_id, n.sequence, n.event_type,
               n.revision, n.payload, coalesce(n.creator, current_user), n.owner, now(),
               nextval('bench.plpgsql_position_seq'), (n.ord - 1)::int
          FROM (SELECT * FROM bench.plpgsql_numbered(commands) ORDER BY ord) n
        RETURNING e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.position,
                  e.in_tx_order, e.created_at, e.owner)
    SELECT * FROM written ORDER BY in_tx_order;
END
$$;

-- The commands with their new sequences: each aggregate's current sequence plus the command's
-- rank within the aggregate in the batch. STABLE and without SET, so that the planner inlines
-- it into the calling statement (whose snapshot is taken after the lock waits).
CREATE FUNCTION bench.plpgsql_numbered(commands eventstore.command[])
RETURNS TABLE (
    ord               bigint,
    instance_id       text,
    aggregate_type    text,
    aggregate_id      text,
    event_type        text,
    revision          smallint,
    payload           jsonb,
    creator           text,
    owner             text,
    expected_sequence bigint,
    sequence          bigint
)
LANGUAGE sql STABLE
AS $$
    WITH cmd AS (
        SELECT *
          FROM unnest(commands) WITH ORDINALITY
               AS c(instance_id, aggregate_type, aggregate_id, event_type, revision, payload,
                    creator, owner, expected_sequence, id, metadata, ord)
    ), current AS (
        SELECT a.instance_id, a.aggregate_type, a.aggregate_id,
               coalesce(last.sequence, 0) AS sequence, last.owner
          FROM (SELECT DISTINCT instance_id, aggregate_type, aggregate_id FROM cmd) a
          LEFT JOIN LATERAL (
                SELECT e.sequence, e.owner FROM bench.plpgsql_events e
                 WHERE e.instance_id = a.instance_id AND e.aggregate_type = a.aggregate_type
                   AND e.aggregate_id = a.aggregate_id
                 ORDER BY e.sequence DESC LIMIT 1) last ON true
    )
    SELECT c.ord, c.instance_id, c.aggregate_type, c.aggregate_id, c.event_type, c.revision,
           c.payload, c.creator, coalesce(c.owner, cur.owner, c.instance_id),
           c.expected_sequence,
           cur.sequence + row_number() OVER (
               PARTITION BY c.instance_id, c.aggregate_type, c.aggregate_id ORDER BY c.ord)
      FROM cmd c
      JOIN current cur USING (instance_id, aggregate_type, aggregate_id)
$$;
