-- eventstore, SQL edition: the same schema and API as the native extension, in SQL and PL/pgSQL
-- only, for servers that load no third-party library (managed services; pg_tle).
--
-- Install into an empty database, as the role that is to own the event store:
--
--     psql -v ON_ERROR_STOP=1 --single-transaction -d mydb -f sql/plpgsql/eventstore.sql
--
-- It gives schema eventstore with the tables, types, views, roles, grants and row-level security
-- of sql/eventstore.sql, and functions of the same names and signatures: push, catch-up,
-- partitioned projections (G12), poison events (G13), rebuilds, tenancy, next_number. What
-- differs from the native extension is listed in README.md ("Installing on a managed service")
-- and at each function below; in short: the horizon is always the floors (horizon_mode() =
-- 'sql'), read from the pg_locks view; wait_for_events polls with back-off; catch-up (and
-- set_partitions, projection_failed, reset_projection, which wait for partition locks and then
-- read checkpoints) refuses REPEATABLE READ and SERIALIZABLE; lock keys live in
-- pg_advisory_lock's own key spaces; partition_catchup passes over a partition that has nothing
-- to hand out without taking its lock (a transaction's advisory lock cannot be given back before
-- the transaction ends).
--
-- No subtransaction anywhere (G8): no SAVEPOINT, no EXCEPTION block. Internals live in schema
-- eventstore_sql, which no role but the owner may use; every public function is SECURITY
-- DEFINER (it runs as the owner, as the native functions switch to the owner) with a pinned
-- search_path.
--
-- Lock keys (the native families of src/locks.rs, moved into pg_advisory_lock's key spaces,
-- since SQL cannot reach the lock tag's fourth field):
--   * digest keys, pg_advisory_xact_lock(bigint) (pg_locks objsubid 1): the first 8 bytes of
--     SHA-256 over the family number (4 bytes big-endian: 17665 all writers, 17666 writer,
--     17667 projection, 17668 aggregate, 17669 counter) followed by the names encoded as the
--     native keys encode them (per name a 0 byte, its length in 4 bytes and its UTF-8 bytes; a
--     1 byte for "none"). classid shows the high half, objid the low half.
--   * floors, pg_advisory_xact_lock_shared(int, int) (pg_locks objsubid 2): classid 17671 and
--     objid the low 32 bits of the floor; from 2^32 on also classid 17672 with the high 32
--     bits. The application must not use two-int advisory keys whose first key is 17671 or
--     17672 (a lock taken there could only hold horizons back, never let a catch-up skip).

CREATE SCHEMA eventstore;
CREATE SCHEMA eventstore_sql;
REVOKE ALL ON SCHEMA eventstore_sql FROM PUBLIC;
COMMENT ON SCHEMA eventstore_sql IS
    'Internals of the eventstore SQL edition: used only by the functions of schema eventstore.';

-- The global position. CACHE 1 so that positions are drawn in exactly the order writers draw
-- them (G3); it is only ever advanced by push, after the writer and aggregate locks are held.
CREATE SEQUENCE eventstore.position_seq AS bigint CACHE 1 NO CYCLE;

-- One row per event. The primary key is the aggregate's gapless sequence (G2); position is
-- the global order catch-up reads in (G3, G7). id is the event id a caller may give (unique
-- where given: a retried push is recognized by it, G14); metadata is the caller's
-- correlation_id, causation_id, trace_id and the like.
CREATE TABLE eventstore.events (
    instance_id    text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    event_type     text        NOT NULL,
    revision       smallint    NOT NULL,
    payload        jsonb,
    creator        text        NOT NULL,
    owner          text        NOT NULL,
    created_at     timestamptz NOT NULL,
    position       bigint      NOT NULL,
    in_tx_order    integer     NOT NULL,
    id             uuid,
    metadata       jsonb,
    CONSTRAINT events_pkey PRIMARY KEY (instance_id, aggregate_type, aggregate_id, sequence),
    CONSTRAINT events_position_key UNIQUE (position)
);
ALTER SEQUENCE eventstore.position_seq OWNED BY eventstore.events.position;

-- Catch-up reads by position: globally (events_position_key), per instance, and filtered by
-- aggregate type per instance and globally.
CREATE INDEX events_instance_position ON eventstore.events (instance_id, position);
CREATE INDEX events_instance_aggregate_type_position
    ON eventstore.events (instance_id, aggregate_type, position);
CREATE INDEX events_aggregate_type_position ON eventstore.events (aggregate_type, position);
-- Event ids are unique where given. Partial: events without an id never enter it, so pushes
-- without ids do not pay for it.
CREATE UNIQUE INDEX events_id_key ON eventstore.events (id) WHERE id IS NOT NULL;

COMMENT ON TABLE eventstore.events IS
    'The event log: one row per event, written only by eventstore.push.';
COMMENT ON COLUMN eventstore.events.sequence IS
    'Per-aggregate sequence: 1, 2, 3... with no gap and no duplicate (G2).';
COMMENT ON COLUMN eventstore.events.position IS
    'Global position: unique, drawn after the writer and aggregate locks are held (G3).';
COMMENT ON COLUMN eventstore.events.in_tx_order IS
    'Index of the event within its push call, from 0 (ZITADEL numbers from 1).';
COMMENT ON COLUMN eventstore.events.id IS
    'The event id the command carried, or NULL: unique where not NULL; a push repeating stored '
    'ids is answered with the stored rows and writes nothing (G14).';
COMMENT ON COLUMN eventstore.events.metadata IS
    'The command''s metadata, a JSON object or NULL: correlation_id, causation_id, trace_id...';

-- What a caller builds: ZITADEL's field order, plus expected_sequence (NULL = no check), the
-- event id and the metadata.
CREATE TYPE eventstore.command AS (
    instance_id       text,
    aggregate_type    text,
    aggregate_id      text,
    event_type        text,
    revision          smallint,
    payload           jsonb,
    creator           text,
    owner             text,
    expected_sequence bigint,
    id                uuid,
    metadata          jsonb
);
COMMENT ON TYPE eventstore.command IS
    'One event to append. Build it with eventstore.command(...).';


--
-- Internals: errors, checks, tenancy, lock keys, the horizon.
--

-- Raises an error (G9); never returns. An empty hint is left out.
CREATE FUNCTION eventstore_sql.refuse(code text, message text, detail text, hint text DEFAULT '')
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF coalesce(hint, '') = '' THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, DETAIL = detail;
    END IF;
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, DETAIL = detail, HINT = hint;
END
$$;

-- Whether a name is a valid identifier (src/checks.rs): 1..512 bytes, no control character
-- (Unicode category Cc, as Rust's char::is_control).
CREATE FUNCTION eventstore_sql.is_identifier(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.octet_length(name) BETWEEN 1 AND 512
       AND name OPERATOR(pg_catalog.!~) '[\x01-\x1f\x7f-\x9f]';

-- Checks an identifier and raises as the native checks do; returns it. command: the 1-based
-- command of a batch the detail names ("Command 2 of the batch: ..."), NULL for an argument.
CREATE FUNCTION eventstore_sql.identifier(field text, value text, command bigint DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prefix text := CASE WHEN command IS NULL THEN '' ELSE 'Command ' || command || ' of the batch: ' END;
    at integer;
BEGIN
    IF value IS NULL THEN
        IF command IS NULL THEN
            PERFORM eventstore_sql.refuse('22004', field || ' must not be NULL', field || ' is NULL.');
        END IF;
        PERFORM eventstore_sql.refuse('22004', field || ' must not be NULL',
            prefix || field || ' is NULL or missing.',
            'Every command needs instance_id, aggregate_type, aggregate_id and event_type.');
    END IF;
    IF value = '' THEN
        PERFORM eventstore_sql.refuse('22023', field || ' must not be empty',
            prefix || field || ' is an empty string.');
    END IF;
    IF octet_length(value) > 512 THEN
        PERFORM eventstore_sql.refuse('22001', field || ' is too long',
            prefix || format('%s has %s bytes; the limit is 512.', field, octet_length(value)));
    END IF;
    at := regexp_instr(value, '[\x01-\x1f\x7f-\x9f]');
    IF at > 0 THEN
        PERFORM eventstore_sql.refuse('22023', field || ' must not contain control characters',
            prefix || format('%s has the control character U+%s at character %s.', field,
                upper(lpad(to_hex(ascii(substr(value, at, 1))), 4, '0')), at));
    END IF;
    RETURN value;
END
$$;

-- The role the caller acts as. Inside a SECURITY DEFINER function current_user is the owner;
-- the caller is the role of SET ROLE, else the session user. (Native: the user id at the call,
-- which differs only when the caller is itself a SECURITY DEFINER function of another owner.)
CREATE FUNCTION eventstore_sql.caller() RETURNS text
LANGUAGE sql STABLE
RETURN CASE WHEN pg_catalog.current_setting('role') = 'none' THEN SESSION_USER::text
            ELSE pg_catalog.current_setting('role') END;

-- The caller's binding (src/tenancy.rs): NULL when it sees every tenant; else the tenant it is
-- bound to, '' when eventstore.tenant is not set. Bound: row-level security applies to it on
-- eventstore.events (not a superuser, not BYPASSRLS, no privileges of the table's owner).
-- One row; a set-returning SQL function, so that the planner inlines it into the statement
-- that reads it (SELECT b.tenant FROM eventstore_sql.binding() b), whose plan PL/pgSQL keeps:
-- no function call, no planning per call. A caller role that is not found is bound.
CREATE FUNCTION eventstore_sql.binding() RETURNS TABLE (tenant text)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT CASE WHEN r.rolsuper OR r.rolbypassrls OR pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE')
                THEN NULL
                ELSE coalesce(pg_catalog.current_setting('eventstore.tenant', true), '') END
      FROM pg_catalog.pg_class c
      LEFT JOIN pg_catalog.pg_roles r ON r.rolname = eventstore_sql.caller()
     WHERE c.oid = 'eventstore.events'::regclass;
END;

-- The tenant the caller is bound to, NULL when it sees every tenant; a bound session without
-- eventstore.tenant is refused (42501).
CREATE FUNCTION eventstore_sql.caller_tenant() RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    tenant text;
BEGIN
    SELECT b.tenant INTO tenant FROM eventstore_sql.binding() b;
    IF tenant = '' THEN
        PERFORM eventstore_sql.refuse('42501', 'this session is not bound to a tenant',
            format('Role "%s" is subject to tenant isolation and eventstore.tenant is not set.',
                eventstore_sql.caller()),
            'SET eventstore.tenant (or SET LOCAL, behind a transaction pooler) to the tenant''s '
            'instance_id; an operator role that must see every tenant needs BYPASSRLS.');
    END IF;
    RETURN tenant;
END
$$;

-- Refuses an instance outside the caller's tenant (42501); what names the call. Returns the
-- instance the call should use: for a bound session, "every instance" (NULL) is its tenant.
CREATE FUNCTION eventstore_sql.resolve(tenant text, instance_id text, what text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tenant IS NULL OR instance_id IS NULL THEN
        RETURN coalesce(instance_id, tenant);
    END IF;
    IF tenant <> instance_id THEN
        PERFORM eventstore_sql.refuse('42501',
            format('instance "%s" belongs to another tenant', left(instance_id, 80)),
            format('This session is bound to tenant "%s" (eventstore.tenant); %s names instance "%s".',
                left(tenant, 80), what, left(instance_id, 80)),
            'A session may only touch the instance of the tenant it is bound to.');
    END IF;
    RETURN instance_id;
END
$$;

-- A name as the lock keys encode it: a 0 byte, its length (4 bytes) and its UTF-8 bytes; a 1
-- byte for none (the concatenation is NULL for a NULL name). STABLE, as convert_to is: so that
-- the planner inlines it (and the keys built on it) into the calling statement, where its few
-- nodes are compiled at every execution.
CREATE FUNCTION eventstore_sql.key_name(name text) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
RETURN coalesce('\x00'::bytea || pg_catalog.int4send(pg_catalog.octet_length(name))
                || pg_catalog.convert_to(name, 'UTF8'), '\x01'::bytea);

-- A digest key: the first 8 bytes of SHA-256 over the family number and the encoded names.
CREATE FUNCTION eventstore_sql.lock_key(family integer, names bytea) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ('x' || pg_catalog.encode(pg_catalog.substr(
            pg_catalog.sha256(pg_catalog.int4send(family) || names), 1, 8), 'hex'))::bit(64)::bigint;

CREATE FUNCTION eventstore_sql.all_writers_key() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN eventstore_sql.lock_key(17665, ''::bytea);

CREATE FUNCTION eventstore_sql.writer_key(instance_id text) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN eventstore_sql.lock_key(17666, eventstore_sql.key_name(instance_id));

CREATE FUNCTION eventstore_sql.aggregate_key(instance_id text, aggregate_type text, aggregate_id text)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN eventstore_sql.lock_key(17668, eventstore_sql.key_name(instance_id)
           || eventstore_sql.key_name(aggregate_type) || eventstore_sql.key_name(aggregate_id));

CREATE FUNCTION eventstore_sql.counter_key(tenant text, scope text) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN eventstore_sql.lock_key(17669, eventstore_sql.key_name(tenant) || eventstore_sql.key_name(scope));

-- The last position drawn by anyone, committed or not (0 before the first push). A plain
-- expression, so that it is inlined where it is called: a SELECT from the sequence would make
-- it a function planned anew by every statement that calls it (about 40 µs a push).
CREATE FUNCTION eventstore_sql.last_drawn() RETURNS bigint
LANGUAGE sql VOLATILE
RETURN coalesce(pg_catalog.pg_sequence_last_value('eventstore.position_seq'::regclass), 0);

-- The value that marks state kept for the current transaction in a setting (set_config(...,
-- true) is undone at the transaction's end, and at the rollback of the savepoint it was set in).
CREATE FUNCTION eventstore_sql.this_transaction() RETURNS text
LANGUAGE sql STABLE
RETURN pg_catalog.pg_backend_pid()::text || '@' || pg_catalog.now()::text;

-- Whether this transaction writes events: it took its floor (every push and lock_writer do).
CREATE FUNCTION eventstore_sql.writing() RETURNS boolean
LANGUAGE sql STABLE
RETURN pg_catalog.current_setting('eventstore.sql_floor', true) IS NOT DISTINCT FROM eventstore_sql.this_transaction();

-- The floor (src/horizon/floors.rs): once per transaction, with its writer keys held and before
-- its first position is drawn, a writer reads the last drawn position L and holds L+1 shared
-- until it ends. Nobody ever asks for a floor key exclusively, so this never waits.
-- One statement (its target list is computed left to right), and no search_path of its own:
-- it is called on push's general way and by lock_writer, only from functions that pin theirs.
CREATE FUNCTION eventstore_sql.take_floor() RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    -- The high key (past 2^32) from a read before the low key's: a position drawn between the
    -- two reads can only lower the floor they make together (push's single-command way takes
    -- the floor in the same two reads, in its lock expression).
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(17672,
                nullif((eventstore_sql.last_drawn() + 1) >> 32, 0)::bit(32)::integer),
            pg_catalog.pg_advisory_xact_lock_shared(17671,
                (eventstore_sql.last_drawn() + 1)::bit(32)::integer),
            pg_catalog.set_config('eventstore.sql_floor', eventstore_sql.this_transaction(), true)
      WHERE NOT eventstore_sql.writing();
END
$$;

-- The horizon for readers of instance_id (every instance when NULL): the last drawn position,
-- read first, lowered to just below the lowest floor held by a transaction that also holds a
-- writer key in scope (the instance's writer key, or the all-writers key exclusively: a bulk
-- push to many instances); for a global reader, any floor. One read of pg_locks, no lock
-- requested: nobody waits. A prepared transaction (no pid) that holds a floor always counts;
-- while one holds a writer key in scope and no floor (its locks are moving to the prepared
-- transaction), every floor counts.
CREATE FUNCTION eventstore_sql.horizon(instance_id text) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    last bigint := eventstore_sql.last_drawn();
    writer bigint := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.writer_key(instance_id) END;
    all_writers bigint := eventstore_sql.all_writers_key();
    lowest bigint;
BEGIN
    WITH held AS MATERIALIZED (
        SELECT l.virtualtransaction AS holder, l.pid IS NULL AS prepared, l.objsubid,
               l.classid::bigint AS high, l.objid::bigint AS low, l.mode
          FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
           AND (l.objsubid = 2 AND l.classid IN (17671, 17672) OR l.objsubid = 1)
    ), floors AS (
        SELECT h.holder, bool_or(h.prepared) AS prepared,
               (coalesce(min(h.low) FILTER (WHERE h.high = 17672), 0) << 32)
                 | min(h.low) FILTER (WHERE h.high = 17671) AS floor
          FROM held h WHERE h.objsubid = 2
         GROUP BY h.holder
        HAVING min(h.low) FILTER (WHERE h.high = 17671) IS NOT NULL
    ), writers AS (
        SELECT h.holder, bool_or(h.prepared) AS prepared FROM held h
         WHERE h.objsubid = 1
           AND ((h.high << 32) | h.low = writer
                OR (h.high << 32) | h.low = all_writers AND h.mode = 'ExclusiveLock')
         GROUP BY h.holder
    )
    SELECT min(f.floor) INTO lowest
      FROM floors f
     WHERE writer IS NULL
        OR f.prepared
        OR f.holder IN (SELECT w.holder FROM writers w)
        OR EXISTS (SELECT FROM writers w WHERE w.prepared AND w.holder NOT IN (SELECT holder FROM floors));
    RETURN least(last, lowest - 1);
END
$$;

-- Refuses to catch up or wait for writers in a transaction that is itself writing (55000), as
-- the native horizon does.
CREATE FUNCTION eventstore_sql.refuse_while_writing() RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF eventstore_sql.writing() THEN
        PERFORM eventstore_sql.refuse('55000',
            'cannot wait for writers in a transaction that is itself writing events',
            'This transaction holds the writer lock (it called push or lock_writer); waiting for '
            'the other writers could deadlock with them.',
            'Commit the writing transaction first; catch up or wait for writers in a transaction '
            'of its own.');
    END IF;
END
$$;

-- The writer locks for instance_ids, shared: the all-writers key, then each instance's key in
-- key order (trap 11).
CREATE FUNCTION eventstore_sql.lock_writers(instance_ids text[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(eventstore_sql.all_writers_key());
    PERFORM pg_advisory_xact_lock_shared(k.key)
       FROM (SELECT DISTINCT eventstore_sql.writer_key(i) AS key FROM unnest(instance_ids) i
              ORDER BY 1 OFFSET 0) k;
END
$$;

--
-- push (src/push): checks (G9), locks (G2, G3), replays (G14), one INSERT (G1).
--

-- command()'s revision, checked as push checks it (22023 outside 1..32767), as a smallint.
CREATE FUNCTION eventstore.checked_revision(revision integer) RETURNS smallint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF revision IS NOT NULL AND revision NOT BETWEEN 1 AND 32767 THEN
        PERFORM eventstore_sql.refuse('22023', 'revision is out of range',
            format('revision is %s; it must be between 1 and 32767.', revision));
    END IF;
    RETURN revision::smallint;
END
$$;
COMMENT ON FUNCTION eventstore.checked_revision(integer) IS
    'A revision as eventstore.command stores it: NULL, or 1..32767 (22023 otherwise).';

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

-- What push returns: one row per event written.
CREATE TYPE eventstore.pushed AS (
    instance_id    text,
    aggregate_type text,
    aggregate_id   text,
    sequence       bigint,
    "position"     bigint,
    in_tx_order    integer,
    created_at     timestamptz,
    owner          text,
    id             uuid
);
COMMENT ON TYPE eventstore.pushed IS 'One event written by eventstore.push.';

-- A payload or metadata as push stores it: a JSON object; [] is taken as {} (src/push/commands.rs).
CREATE FUNCTION eventstore_sql.json_object(value jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN pg_catalog.jsonb_typeof(value) = 'array' THEN '{}'::jsonb ELSE value END;

-- Whether a payload (limit 1 MiB) or metadata (64 KiB) is acceptable: NULL, an object within
-- the limit, or [].
CREATE FUNCTION eventstore_sql.is_json_object(value jsonb, max_bytes integer) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN value IS NULL
    OR pg_catalog.pg_column_size(value) <= max_bytes
       AND (pg_catalog.jsonb_typeof(value) = 'object' OR value = '[]'::jsonb);

-- Whether a command passes every check (the fast test; command_refusal says why not).
CREATE FUNCTION eventstore_sql.is_valid_command(
    revision bigint, expected_sequence bigint, payload jsonb, metadata jsonb, instance_id text,
    aggregate_type text, aggregate_id text, event_type text, creator text, owner text)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN (revision IS NULL OR revision BETWEEN 1 AND 32767)
   AND (expected_sequence IS NULL OR expected_sequence >= 0)
   AND eventstore_sql.is_json_object(payload, 1048576)
   AND eventstore_sql.is_json_object(metadata, 65536)
   AND pg_catalog.octet_length(instance_id) BETWEEN 1 AND 512
   AND pg_catalog.octet_length(aggregate_type) BETWEEN 1 AND 512
   AND pg_catalog.octet_length(aggregate_id) BETWEEN 1 AND 512
   AND pg_catalog.octet_length(event_type) BETWEEN 1 AND 512
   AND (creator IS NULL OR pg_catalog.octet_length(creator) BETWEEN 1 AND 512)
   AND (owner IS NULL OR pg_catalog.octet_length(owner) BETWEEN 1 AND 512)
   -- One regular expression for the six names (concat skips NULLs).
   AND pg_catalog.concat(instance_id, aggregate_type, aggregate_id, event_type, creator, owner)
       OPERATOR(pg_catalog.!~) '[\x01-\x1f\x7f-\x9f]';

-- Raises the native refusal of command n (its checks in the native order), if any.
CREATE FUNCTION eventstore_sql.check_command(
    n bigint, revision bigint, expected_sequence bigint, payload jsonb, metadata jsonb,
    instance_id text, aggregate_type text, aggregate_id text, event_type text, creator text,
    owner text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prefix text := 'Command ' || n || ' of the batch: ';
    field record;
BEGIN
    IF revision IS NOT NULL AND revision NOT BETWEEN 1 AND 32767 THEN
        PERFORM eventstore_sql.refuse('22023', 'revision is out of range',
            prefix || format('revision is %s; it must be between 1 and 32767.', revision));
    END IF;
    IF expected_sequence < 0 THEN
        PERFORM eventstore_sql.refuse('22023', 'expected_sequence is negative',
            prefix || format('expected_sequence is %s.', expected_sequence),
            'Use 0 for an aggregate that must not exist yet, NULL for no check.');
    END IF;
    FOR field IN
        SELECT * FROM (VALUES
            ('payload', payload, 1048576,
             'Store large documents elsewhere and put a reference in the event.'),
            ('metadata', metadata, 65536,
             'Metadata is for ids and short tags (correlation_id, causation_id, trace_id); put data in the payload.')
        ) AS f(name, value, max_bytes, hint)
    LOOP
        IF pg_column_size(field.value) > field.max_bytes THEN
            PERFORM eventstore_sql.refuse('54000', field.name || ' is too large',
                prefix || format('the %s has %s bytes; the limit is %s.', field.name,
                    pg_column_size(field.value), field.max_bytes),
                field.hint);
        END IF;
        IF NOT eventstore_sql.is_json_object(field.value, field.max_bytes) THEN
            PERFORM eventstore_sql.refuse('22023', field.name || ' must be a JSON object',
                prefix || format('the %s is an array or a scalar.', field.name),
                'Wrap the value in an object, or pass NULL for none.');
        END IF;
    END LOOP;
    PERFORM eventstore_sql.identifier('instance_id', instance_id, n);
    PERFORM eventstore_sql.identifier('aggregate_type', aggregate_type, n);
    PERFORM eventstore_sql.identifier('aggregate_id', aggregate_id, n);
    PERFORM eventstore_sql.identifier('event_type', event_type, n);
    IF creator IS NOT NULL THEN
        PERFORM eventstore_sql.identifier('creator', creator, n);
    END IF;
    IF owner IS NOT NULL THEN
        PERFORM eventstore_sql.identifier('owner', owner, n);
    END IF;
END
$$;

-- Refuses a batch of size 0 or over 10000.
CREATE FUNCTION eventstore_sql.check_batch_size(size bigint) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF coalesce(size, 0) = 0 THEN
        PERFORM eventstore_sql.refuse('22023', 'push needs at least one command', 'The batch is empty.');
    END IF;
    IF size > 10000 THEN
        PERFORM eventstore_sql.refuse('54000', 'too many commands in one push',
            format('The batch has %s commands; the limit is 10000.', size),
            'Split the batch; each push is atomic on its own.');
    END IF;
END
$$;

-- The commands of an array, checked (G9): the refusal of the first bad command.
CREATE FUNCTION eventstore_sql.check_commands(commands eventstore.command[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c record;
BEGIN
    PERFORM eventstore_sql.check_batch_size(cardinality(commands));
    IF NOT EXISTS (
        SELECT FROM unnest(commands) WITH ORDINALITY AS u
         WHERE NOT coalesce(eventstore_sql.is_valid_command(u.revision, u.expected_sequence,
                   u.payload, u.metadata, u.instance_id, u.aggregate_type, u.aggregate_id,
                   u.event_type, u.creator, u.owner), false))
    THEN
        RETURN;
    END IF;
    FOR c IN SELECT u.*, u.ordinality AS n, commands[u.ordinality::integer]::text IS NULL AS missing
               FROM unnest(commands) WITH ORDINALITY AS u ORDER BY u.ordinality
    LOOP
        IF c.missing THEN
            PERFORM eventstore_sql.refuse('22004', 'a command must not be NULL',
                'Command ' || c.n || ' of the batch: the command is NULL.');
        END IF;
        PERFORM eventstore_sql.check_command(c.n, c.revision, c.expected_sequence, c.payload,
            c.metadata, c.instance_id, c.aggregate_type, c.aggregate_id, c.event_type, c.creator,
            c.owner);
    END LOOP;
END
$$;

-- "an object", "a string", ... for jsonb_typeof's answer.
CREATE FUNCTION eventstore_sql.json_kind(kind text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN kind IN ('array', 'object') THEN 'an ' || kind
            WHEN kind = 'null' THEN 'null'
            ELSE 'a ' || kind END;

-- Whether a JSON command's field is of its type (the fast test; json_field_refusal says why not).
CREATE FUNCTION eventstore_sql.is_json_field(key text, value jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN key IN ('instance_id', 'aggregate_type', 'aggregate_id', 'event_type', 'creator', 'owner')
        THEN pg_catalog.jsonb_typeof(value) IN ('string', 'null')
    WHEN key IN ('revision', 'expected_sequence')
        THEN pg_catalog.jsonb_typeof(value) = 'null'
             OR pg_catalog.jsonb_typeof(value) = 'number'
                AND (value #>> '{}') OPERATOR(pg_catalog.~) '^-?[0-9]{1,18}$'
    WHEN key = 'id'
        THEN pg_catalog.jsonb_typeof(value) = 'null'
             OR pg_catalog.jsonb_typeof(value) = 'string'
                AND (value #>> '{}') OPERATOR(pg_catalog.~)
                    '^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32})$'
    WHEN key IN ('payload', 'metadata') THEN true
    ELSE false END;

-- A JSON integer field (revision, expected_sequence) as a bigint: 3 and 3.0 alike; refused when
-- not a number, fractional, or outside bigint (whole numbers written as floats: up to 2^53).
CREATE FUNCTION eventstore_sql.json_integer(key text, value jsonb, n bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prefix text := 'Command ' || n || ' of the batch: ';
    number text := value #>> '{}';
    exact numeric;
BEGIN
    IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) <> 'number' THEN
        PERFORM eventstore_sql.refuse('22023', key || ' must be an integer',
            prefix || key || ' is ' || eventstore_sql.json_kind(jsonb_typeof(value)) || '.');
    END IF;
    exact := number::numeric;
    IF number ~ '^-?[0-9]+$' AND exact BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
        RETURN exact::bigint;
    END IF;
    IF exact <> trunc(exact) THEN
        PERFORM eventstore_sql.refuse('22023', key || ' must be an integer',
            prefix || key || ' is ' || left(number, 64) || '.');
    END IF;
    IF abs(exact) > 9007199254740992 THEN
        PERFORM eventstore_sql.refuse('22023', key || ' is out of range',
            prefix || format('%s is %s; it must fit in a bigint.', key, left(number, 64)));
    END IF;
    RETURN exact::bigint;
END
$$;

-- A JSON string field, refused when not a string (or null).
CREATE FUNCTION eventstore_sql.json_string(key text, value jsonb, n bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) <> 'string' THEN
        PERFORM eventstore_sql.refuse('22023', key || ' must be a string',
            'Command ' || n || ' of the batch: ' || key || ' is '
            || eventstore_sql.json_kind(jsonb_typeof(value)) || '.');
    END IF;
    RETURN value #>> '{}';
END
$$;

-- A JSON array of command objects as commands, every field checked (G9). Unknown fields are
-- refused; payloads stay jsonb, exactly as given.
CREATE FUNCTION eventstore_sql.commands_from_json(commands jsonb) RETURNS eventstore.command[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    element record;
    field record;
    raw record;
    checked eventstore.command[];
BEGIN
    IF jsonb_typeof(commands) <> 'array' THEN
        PERFORM eventstore_sql.refuse('22023', 'commands must be a JSON array',
            'The jsonb is ' || eventstore_sql.json_kind(jsonb_typeof(commands)) || '.',
            'Pass [{"instance_id": ...}, ...].');
    END IF;
    PERFORM eventstore_sql.check_batch_size(jsonb_array_length(commands));
    IF EXISTS (SELECT FROM jsonb_array_elements(commands) AS e(c)
                WHERE jsonb_typeof(e.c) <> 'object'
                   OR EXISTS (SELECT FROM jsonb_each(e.c) f WHERE NOT eventstore_sql.is_json_field(f.key, f.value)))
    THEN
        -- The slow path, for the refusal: each command's fields in jsonb order, then its checks.
        FOR element IN SELECT e.c, e.n FROM jsonb_array_elements(commands) WITH ORDINALITY AS e(c, n) ORDER BY e.n LOOP
            IF jsonb_typeof(element.c) <> 'object' THEN
                PERFORM eventstore_sql.refuse('22023', 'a command must be a JSON object',
                    'Command ' || element.n || ' of the batch: the command is '
                    || eventstore_sql.json_kind(jsonb_typeof(element.c)) || '.');
            END IF;
            FOR field IN SELECT f.key, f.value FROM jsonb_each(element.c) f LOOP
                CASE
                WHEN field.key IN ('instance_id', 'aggregate_type', 'aggregate_id', 'event_type', 'creator', 'owner') THEN
                    PERFORM eventstore_sql.json_string(field.key, field.value, element.n);
                WHEN field.key IN ('revision', 'expected_sequence') THEN
                    PERFORM eventstore_sql.json_integer(field.key, field.value, element.n);
                WHEN field.key = 'id' THEN
                    IF NOT eventstore_sql.is_json_field('id', field.value) THEN
                        PERFORM eventstore_sql.refuse('22023', 'id must be a UUID',
                            'Command ' || element.n || ' of the batch: id is "'
                            || left(eventstore_sql.json_string('id', field.value, element.n), 64) || '".',
                            'Write it as 8-4-4-4-12 hex digits, as uuid libraries do.');
                    END IF;
                WHEN field.key IN ('payload', 'metadata') THEN
                    NULL;
                ELSE
                    PERFORM eventstore_sql.refuse('22023', format('unknown field "%s"', left(field.key, 64)),
                        'Command ' || element.n || ' of the batch: a command has the fields instance_id, '
                        'aggregate_type, aggregate_id, event_type, revision, payload, creator, owner, '
                        'expected_sequence, id and metadata.',
                        'Check the spelling.');
                END CASE;
            END LOOP;
        END LOOP;
    END IF;
    -- Every field has its type: the raw commands, then the same checks as the array form.
    FOR raw IN
        SELECT e.n, e.c ->> 'instance_id' AS instance_id, e.c ->> 'aggregate_type' AS aggregate_type,
               e.c ->> 'aggregate_id' AS aggregate_id, e.c ->> 'event_type' AS event_type,
               e.c ->> 'creator' AS creator, e.c ->> 'owner' AS owner,
               eventstore_sql.json_integer('revision', e.c -> 'revision', e.n) AS revision,
               eventstore_sql.json_integer('expected_sequence', e.c -> 'expected_sequence', e.n) AS expected_sequence,
               nullif(e.c -> 'payload', 'null'::jsonb) AS payload,
               nullif(e.c -> 'metadata', 'null'::jsonb) AS metadata
          FROM jsonb_array_elements(commands) WITH ORDINALITY AS e(c, n)
         WHERE NOT coalesce(eventstore_sql.is_valid_command(
                   eventstore_sql.json_integer('revision', e.c -> 'revision', e.n),
                   eventstore_sql.json_integer('expected_sequence', e.c -> 'expected_sequence', e.n),
                   nullif(e.c -> 'payload', 'null'::jsonb), nullif(e.c -> 'metadata', 'null'::jsonb),
                   e.c ->> 'instance_id', e.c ->> 'aggregate_type', e.c ->> 'aggregate_id',
                   e.c ->> 'event_type', e.c ->> 'creator', e.c ->> 'owner'), false)
         ORDER BY e.n
         LIMIT 1
    LOOP
        PERFORM eventstore_sql.check_command(raw.n, raw.revision, raw.expected_sequence,
            raw.payload, raw.metadata, raw.instance_id, raw.aggregate_type, raw.aggregate_id,
            raw.event_type, raw.creator, raw.owner);
    END LOOP;
    SELECT array_agg(ROW(e.c ->> 'instance_id', e.c ->> 'aggregate_type', e.c ->> 'aggregate_id',
                         e.c ->> 'event_type',
                         coalesce(eventstore_sql.json_integer('revision', e.c -> 'revision', e.n), 1)::smallint,
                         nullif(e.c -> 'payload', 'null'::jsonb), e.c ->> 'creator', e.c ->> 'owner',
                         eventstore_sql.json_integer('expected_sequence', e.c -> 'expected_sequence', e.n),
                         (e.c ->> 'id')::uuid, nullif(e.c -> 'metadata', 'null'::jsonb)
                        )::eventstore.command ORDER BY e.n)
      INTO checked
      FROM jsonb_array_elements(commands) WITH ORDINALITY AS e(c, n);
    RETURN checked;
END
$$;

-- Each command of checked commands with its aggregate's next sequence and the owner its event
-- gets: the command's owner, else the owner of the aggregate's previous event (in the batch or
-- stored), else the instance. Read under the calling statement's snapshot: call it after the
-- aggregates' locks are held (READ COMMITTED: a snapshot taken after the waits, trap 4).
CREATE FUNCTION eventstore_sql.numbered(commands eventstore.command[])
RETURNS TABLE (n bigint, instance_id text, aggregate_type text, aggregate_id text,
               event_type text, revision smallint, payload jsonb, creator text, owner text,
               expected_sequence bigint, id uuid, metadata jsonb, sequence bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH c AS (
        SELECT u.ordinality AS n, u.instance_id, u.aggregate_type, u.aggregate_id, u.event_type,
               coalesce(u.revision, 1::smallint) AS revision,
               eventstore_sql.json_object(u.payload) AS payload, u.creator, u.owner,
               u.expected_sequence, u.id, eventstore_sql.json_object(u.metadata) AS metadata
          FROM unnest(commands) WITH ORDINALITY AS u
    ), stored AS MATERIALIZED (
        -- MATERIALIZED: one look-up per aggregate. Inlined, the planner may join the look-up
        -- to the commands instead, and read the index once per command.
        SELECT a.instance_id, a.aggregate_type, a.aggregate_id,
               coalesce(l.sequence, 0) AS last_sequence, l.owner AS last_owner
          FROM (SELECT DISTINCT c.instance_id, c.aggregate_type, c.aggregate_id FROM c) a
          LEFT JOIN LATERAL (
                SELECT e.sequence, e.owner FROM eventstore.events e
                 WHERE e.instance_id = a.instance_id AND e.aggregate_type = a.aggregate_type
                   AND e.aggregate_id = a.aggregate_id
                 ORDER BY e.sequence DESC LIMIT 1) l ON true
    )
    -- One window, one sort: the aggregate's next sequences, and the owner of the aggregate's
    -- latest command up to this one that names an owner (the greatest of the zero-padded
    -- command numbers with that owner appended; n is at most 10000).
    SELECT c.n, c.instance_id, c.aggregate_type, c.aggregate_id, c.event_type, c.revision,
           c.payload, c.creator,
           coalesce(substr(max(CASE WHEN c.owner IS NOT NULL THEN lpad(c.n::text, 5, '0') || c.owner END
                                   COLLATE "C") OVER agg_window, 6),
                    s.last_owner, c.instance_id),
           c.expected_sequence, c.id, c.metadata, s.last_sequence + row_number() OVER agg_window
      FROM c JOIN stored s
        ON s.instance_id = c.instance_id AND s.aggregate_type = c.aggregate_type
       AND s.aggregate_id = c.aggregate_id
    WINDOW agg_window AS (PARTITION BY c.instance_id, c.aggregate_type, c.aggregate_id ORDER BY c.n)
     ORDER BY c.n;
END;

-- The locks of a push, before any position is drawn (G2, G3), in one canonical order (trap 11):
-- the all-writers key shared, each instance's writer key, then the aggregates' keys
-- exclusively. A bulk push (more than 64 aggregates) takes its instances' writer keys
-- exclusively instead (or the all-writers key, for more than 64 instances), unless this
-- transaction already holds one of them shared (a lock is never upgraded); a transaction locks
-- at most 256 aggregates one by one (src/locks.rs).
CREATE FUNCTION eventstore_sql.lock_for_push(commands eventstore.command[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    instances text[];
    aggregates bigint[];
    writers bigint[];
    mine record;
    taken integer;
    this_transaction text := eventstore_sql.this_transaction();
    marked text := current_setting('eventstore.sql_aggregate_locks', true);
BEGIN
    SELECT array_agg(DISTINCT u.instance_id ORDER BY u.instance_id) INTO instances FROM unnest(commands) u;
    -- One digest per aggregate, not per command.
    SELECT array_agg(eventstore_sql.aggregate_key(a.instance_id, a.aggregate_type, a.aggregate_id))
      INTO aggregates
      FROM (SELECT DISTINCT u.instance_id, u.aggregate_type, u.aggregate_id FROM unnest(commands) u) a;
    IF current_setting('eventstore.sql_bulk', true) IS NOT DISTINCT FROM this_transaction
       OR cardinality(aggregates) > 64 THEN
        -- This transaction's own advisory locks (a bulk push is rare: pg_locks is read only then).
        SELECT coalesce(array_agg(k.key) FILTER (WHERE k.exclusive), '{}') AS exclusive,
               coalesce(array_agg(k.key) FILTER (WHERE NOT k.exclusive), '{}') AS shared
          INTO mine
          FROM (SELECT (l.classid::bigint << 32) | l.objid::bigint AS key, l.mode = 'ExclusiveLock' AS exclusive
                  FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.pid = pg_backend_pid() AND l.granted) k;
        IF eventstore_sql.all_writers_key() = ANY (mine.exclusive) THEN
            RETURN;
        END IF;
        -- Aggregates of instances this transaction holds exclusively need no lock of their own.
        SELECT array_agg(eventstore_sql.aggregate_key(a.instance_id, a.aggregate_type, a.aggregate_id))
          INTO aggregates
          FROM (SELECT DISTINCT u.instance_id, u.aggregate_type, u.aggregate_id FROM unnest(commands) u) a
         WHERE NOT eventstore_sql.writer_key(a.instance_id) = ANY (mine.exclusive);
        aggregates := coalesce(aggregates, '{}');
        SELECT array_agg(DISTINCT eventstore_sql.writer_key(i)) INTO writers FROM unnest(instances) i;
        IF cardinality(aggregates) > 64 THEN
            IF cardinality(writers) > 64
               AND NOT eventstore_sql.all_writers_key() = ANY (mine.shared) THEN
                PERFORM pg_advisory_xact_lock(eventstore_sql.all_writers_key());
                PERFORM set_config('eventstore.sql_bulk', this_transaction, true);
                RETURN;
            END IF;
            IF cardinality(writers) <= 64 AND NOT writers && mine.shared THEN
                PERFORM pg_advisory_xact_lock_shared(eventstore_sql.all_writers_key());
                PERFORM pg_advisory_xact_lock(w.key)
                   FROM (SELECT unnest(writers) AS key ORDER BY 1 OFFSET 0) w;
                PERFORM set_config('eventstore.sql_bulk', this_transaction, true);
                RETURN;
            END IF;
        END IF;
    END IF;
    taken := CASE WHEN split_part(marked, '#', 1) = this_transaction THEN split_part(marked, '#', 2)::integer ELSE 0 END;
    IF taken + cardinality(aggregates) > 256 THEN
        PERFORM eventstore_sql.refuse('54000', 'too many aggregates locked in one transaction',
            format('This transaction already locked %s aggregates one by one; this push needs %s '
                   'more, over the limit of 256.', taken, cardinality(aggregates)),
            'Push events for many aggregates in one call as the transaction''s first write to '
            'their instance (a push of more than 64 aggregates locks the instance once), or '
            'commit in smaller transactions.');
    END IF;
    PERFORM eventstore_sql.lock_writers(instances);
    PERFORM pg_advisory_xact_lock(a.key) FROM (SELECT unnest(aggregates) AS key ORDER BY 1 OFFSET 0) a;
    PERFORM set_config('eventstore.sql_aggregate_locks',
        this_transaction || '#' || (taken + cardinality(aggregates)), true);
END
$$;

-- G14: a push carrying ids whose events are stored. NULL when none of its ids is stored (a new
-- push); the stored rows, as the first push returned them, when it repeats an earlier push
-- exactly; ES422 otherwise. Call with the aggregates locked: their stored ids are final.
CREATE FUNCTION eventstore_sql.replay(commands eventstore.command[]) RETURNS eventstore.pushed[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hint constant text := 'Retry a push only with exactly the commands and ids it was first sent '
                          'with; give every new event a new id.';
    r record;
    first_stored bigint;
    reused text;
    last_position bigint := 0;
    stored eventstore.pushed[] := '{}';
BEGIN
    FOR r IN
        SELECT c.n, c.id, e.id AS stored_id, e.position,
               ROW(e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.position,
                   e.in_tx_order, e.created_at, e.owner, e.id)::eventstore.pushed AS row,
               CASE WHEN e.instance_id IS DISTINCT FROM c.instance_id THEN 'instance_id'
                    WHEN e.aggregate_type IS DISTINCT FROM c.aggregate_type THEN 'aggregate_type'
                    WHEN e.aggregate_id IS DISTINCT FROM c.aggregate_id THEN 'aggregate_id'
                    WHEN e.event_type IS DISTINCT FROM c.event_type THEN 'event_type'
                    WHEN e.revision IS DISTINCT FROM coalesce(c.revision, 1::smallint) THEN 'revision'
                    WHEN e.payload IS DISTINCT FROM eventstore_sql.json_object(c.payload) THEN 'payload'
                    WHEN e.metadata IS DISTINCT FROM eventstore_sql.json_object(c.metadata) THEN 'metadata'
                    ELSE '' END AS differs
          FROM unnest(commands) WITH ORDINALITY
               AS c(instance_id, aggregate_type, aggregate_id, event_type, revision, payload,
                    creator, owner, expected_sequence, id, metadata, n)
          -- One index look-up per command (LATERAL ... LIMIT 1), whatever the statistics when
          -- the plan was cached: a plain join could read the whole id index at every push.
          LEFT JOIN LATERAL (SELECT * FROM eventstore.events e WHERE e.id = c.id LIMIT 1) e ON true
         ORDER BY c.n
    LOOP
        IF first_stored IS NULL THEN
            IF r.stored_id IS NULL THEN
                CONTINUE;
            END IF;
            first_stored := r.n;
            reused := r.id::text;
            -- Command 1 came before the first stored one: it carries no id, or one not stored.
            IF r.n > 1 THEN
                PERFORM eventstore_sql.refuse('ES422',
                    format('event id %s was already used by an earlier push', reused),
                    format('Command %s carries id %s, which is stored, and command 1 %s: a retried '
                           'push must repeat the earlier push exactly.', first_stored, reused,
                           CASE WHEN (commands[1]).id IS NULL THEN 'carries no id'
                                ELSE format('carries id %s, which is not', (commands[1]).id) END),
                    hint);
            END IF;
        END IF;
        IF r.id IS NULL OR r.stored_id IS NULL THEN
            PERFORM eventstore_sql.refuse('ES422',
                format('event id %s was already used by an earlier push', reused),
                format('Command %s carries id %s, which is stored, and command %s %s: a retried '
                       'push must repeat the earlier push exactly.', first_stored, reused, r.n,
                       CASE WHEN r.id IS NULL THEN 'carries no id'
                            ELSE format('carries id %s, which is not', r.id) END),
                hint);
        END IF;
        IF r.differs <> '' THEN
            PERFORM eventstore_sql.refuse('ES422',
                format('event id %s was already used for another event', r.id),
                format('Command %s carries id %s; the stored event with this id has another %s.',
                    r.n, r.id, r.differs),
                hint);
        END IF;
        IF r.position <= last_position THEN
            PERFORM eventstore_sql.refuse('ES422',
                format('event id %s was already used in another order', r.id),
                format('Command %s carries id %s, whose event was stored before the event of '
                       'command %s: a retried push must repeat the earlier push in its order.',
                       r.n, r.id, r.n - 1),
                hint);
        END IF;
        last_position := r.position;
        stored := stored || r.row;
    END LOOP;
    IF first_stored IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN stored;
END
$$;

-- ES409 for the first command whose aggregate is not at its expected_sequence (G2's optimistic
-- check), if any. Call with the aggregates locked.
CREATE FUNCTION eventstore_sql.check_expected_sequences(commands eventstore.command[]) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad record;
BEGIN
    SELECT k.n, k.instance_id, k.aggregate_type, k.aggregate_id, k.expected_sequence,
           k.sequence - 1 AS actual
      INTO bad
      FROM eventstore_sql.numbered(commands) k
     WHERE k.expected_sequence <> k.sequence - 1
     ORDER BY k.n LIMIT 1;
    IF FOUND THEN
        PERFORM eventstore_sql.refuse('ES409',
            format('aggregate %s/%s/%s is not at the expected sequence',
                bad.instance_id, bad.aggregate_type, bad.aggregate_id),
            format('{"command": %s, "instance_id": %s, "aggregate_type": %s, "aggregate_id": %s, '
                   '"expected_sequence": %s, "actual_sequence": %s}', bad.n,
                to_json(bad.instance_id), to_json(bad.aggregate_type), to_json(bad.aggregate_id),
                bad.expected_sequence, bad.actual),
            'Reload the aggregate and retry the command.');
    END IF;
END
$$;

-- With eventstore.notify = on, after a push: the highest position this transaction wrote, for
-- its one NOTIFY at commit; the first push of the transaction (or the first after a rolled-back
-- savepoint undid the note) also queues that NOTIFY: a row in eventstore_sql.notifying, whose
-- deferred trigger sends it at commit (eventstore_sql.notify_at_commit). No search_path of its
-- own: only push calls it, which pins its own.
CREATE FUNCTION eventstore_sql.note_for_notify() RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF pg_catalog.current_setting('eventstore.sql_highest_position', true) IS NULL
       OR pg_catalog.current_setting('eventstore.sql_highest_position', true) = '' THEN
        INSERT INTO eventstore_sql.notifying (xact) VALUES (pg_catalog.pg_current_xact_id());
    END IF;
    PERFORM pg_catalog.set_config('eventstore.sql_highest_position',
        greatest(nullif(pg_catalog.current_setting('eventstore.sql_highest_position', true), '')::bigint,
            pg_catalog.currval('eventstore.position_seq'::regclass))::text, true);
END
$$;

-- push: append a batch atomically (G1), with gapless aggregate sequences (G2) and positions
-- drawn under the locks (G3); src/push/mod.rs. PL/pgSQL pays an executor start-up for every
-- statement it runs (a PERFORM too; not an assignment of one expression) and compiles every
-- expression anew in each transaction, so the common paths run few of either. A single command
-- (a command handler's event): its checks and, for most callers, its binding in one expression,
-- the locks and the floor in another, and one insert, which numbers, checks expected_sequence,
-- draws and writes. A batch of at most 64 aggregates whose commands are all valid: one
-- statement to check it, one for the locks, one for the floor, one to number, draw and insert.
--
-- Under REPEATABLE READ and SERIALIZABLE the aggregate's sequence is read under the
-- transaction's snapshot (SQL cannot take a fresh one): when another transaction committed to
-- the aggregate after that snapshot, the insert fails with 40001 (retry the transaction), where
-- the native push reads the latest sequence and succeeds.
CREATE FUNCTION eventstore.push(commands eventstore.command[])
RETURNS SETOF eventstore.pushed
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    size integer := cardinality(commands);
    one eventstore.command := commands[1];
    tenant text;
    batch record;
    bad record;
    this_transaction text := eventstore_sql.this_transaction();
    marked text := current_setting('eventstore.sql_aggregate_locks', true);
    taken integer;
    replayed eventstore.pushed[];
    written integer;
    locking integer;  -- the value of the single command's lock expression, unused
BEGIN
    IF size IS NULL OR size = 0 OR size > 10000 THEN
        IF commands IS NULL THEN
            PERFORM eventstore_sql.refuse('22004', 'commands must not be NULL',
                'push was called with a NULL array.', 'Pass an array of eventstore.command.');
        END IF;
        PERFORM eventstore_sql.check_batch_size(size);
    END IF;
    taken := CASE WHEN split_part(marked, '#', 1) = this_transaction
                  THEN split_part(marked, '#', 2)::integer ELSE 0 END;

    -- The common case, one valid command without an id under READ COMMITTED, in as few
    -- statements as PL/pgSQL allows (each costs an executor start-up): an expression for the
    -- locks and the floor, one statement to number, check expected_sequence, draw and insert.
    -- Anything else, and every refusal, takes the general way below. The binding without a
    -- query: a session whose eventstore.tenant names the command's instance may push to it,
    -- bound or not, and so may a caller with the privileges of the functions' owner (the role
    -- that installed the edition and owns its tables; superusers too), who is never bound;
    -- anyone else takes the general way, which reads the binding.
    IF size = 1 AND one.id IS NULL AND taken < 256
       AND eventstore_sql.is_valid_command(one.revision, one.expected_sequence, one.payload,
               one.metadata, one.instance_id, one.aggregate_type, one.aggregate_id,
               one.event_type, one.creator, one.owner)
       AND (current_setting('eventstore.tenant', true) = one.instance_id
            OR pg_has_role(eventstore_sql.caller()::name, current_user, 'USAGE'))
       AND current_setting('transaction_isolation') = 'read committed'
       AND current_setting('eventstore.sql_bulk', true) IS DISTINCT FROM this_transaction THEN
        -- One expression assigned, not a statement: PL/pgSQL evaluates it without starting the
        -- executor, as it would for a PERFORM. num_nulls evaluates its arguments left to right:
        -- the locks in their canonical order (trap 11), then the floor, once per transaction
        -- (take_floor), its high key read before its low key, so that a position drawn between
        -- the two reads can only lower the floor they make together, never raise it.
        locking := num_nulls(pg_advisory_xact_lock_shared(eventstore_sql.all_writers_key()),
                pg_advisory_xact_lock_shared(eventstore_sql.writer_key(one.instance_id)),
                pg_advisory_xact_lock(eventstore_sql.aggregate_key(one.instance_id,
                    one.aggregate_type, one.aggregate_id)),
                set_config('eventstore.sql_aggregate_locks', this_transaction || '#' || (taken + 1), true),
                CASE WHEN current_setting('eventstore.sql_floor', true) IS DISTINCT FROM this_transaction
                     THEN pg_advisory_xact_lock_shared(17672,
                              nullif((eventstore_sql.last_drawn() + 1) >> 32, 0)::bit(32)::integer) END,
                CASE WHEN current_setting('eventstore.sql_floor', true) IS DISTINCT FROM this_transaction
                     THEN pg_advisory_xact_lock_shared(17671,
                              (eventstore_sql.last_drawn() + 1)::bit(32)::integer) END,
                set_config('eventstore.sql_floor', this_transaction, true));
        -- Numbered under a snapshot taken after the lock waits (trap 4); no row when the
        -- aggregate is not at the expected sequence. Every column, in the table's order: the
        -- planner then drops the subquery scan it puts over the SELECT of an INSERT.
        RETURN QUERY
        INSERT INTO eventstore.events AS e (instance_id, aggregate_type, aggregate_id,
               sequence, event_type, revision, payload, creator, owner, created_at, position,
               in_tx_order, id, metadata)
        SELECT one.instance_id, one.aggregate_type, one.aggregate_id,
               coalesce(l.sequence, 0) + 1, one.event_type, coalesce(one.revision, 1::smallint),
               eventstore_sql.json_object(one.payload),
               coalesce(one.creator, eventstore_sql.caller()),
               coalesce(one.owner, l.owner, one.instance_id), now(),
               nextval('eventstore.position_seq'::regclass), 0, NULL::uuid,
               eventstore_sql.json_object(one.metadata)
          FROM (SELECT) AS command
          LEFT JOIN LATERAL (
                SELECT s.sequence, s.owner FROM eventstore.events s
                 WHERE s.instance_id = one.instance_id AND s.aggregate_type = one.aggregate_type
                   AND s.aggregate_id = one.aggregate_id
                 ORDER BY s.sequence DESC LIMIT 1) l ON true
         WHERE one.expected_sequence IS NULL OR one.expected_sequence = coalesce(l.sequence, 0)
        RETURNING e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.position,
                  e.in_tx_order, e.created_at, e.owner, e.id;
        IF NOT FOUND THEN
            PERFORM eventstore_sql.check_expected_sequences(commands);
        END IF;
        IF current_setting('eventstore.notify', true) = 'on' THEN
            PERFORM eventstore_sql.note_for_notify();
        END IF;
        RETURN;
    END IF;

    SELECT b.tenant INTO tenant FROM eventstore_sql.binding() b;

    -- The whole batch at once; the slow paths below only name the first refusal.
    SELECT bool_and(coalesce(eventstore_sql.is_valid_command(u.revision, u.expected_sequence,
                        u.payload, u.metadata, u.instance_id, u.aggregate_type, u.aggregate_id,
                        u.event_type, u.creator, u.owner), false)) AS valid,
           coalesce(bool_or(u.instance_id <> tenant), false) AS foreign_instance,
           count(u.id) > count(DISTINCT u.id) AS repeated_ids,
           count(u.id) > 0 AS carries_ids,
           count(u.expected_sequence) > 0 AS expects,
           count(DISTINCT (u.instance_id, u.aggregate_type, u.aggregate_id)) AS aggregates
      INTO batch
      FROM unnest(commands) u;
    IF NOT batch.valid THEN
        PERFORM eventstore_sql.check_commands(commands);
    END IF;
    IF tenant = '' THEN
        PERFORM eventstore_sql.caller_tenant();
    END IF;
    IF batch.foreign_instance THEN
        SELECT u.ordinality AS n, u.instance_id INTO bad
          FROM unnest(commands) WITH ORDINALITY AS u
         WHERE u.instance_id <> tenant ORDER BY u.ordinality LIMIT 1;
        PERFORM eventstore_sql.resolve(tenant, bad.instance_id, format('command %s of the batch', bad.n));
    END IF;
    IF batch.repeated_ids THEN
        SELECT d.n, d.first, d.id INTO bad
          FROM (SELECT u.ordinality AS n, u.id, min(u.ordinality) OVER (PARTITION BY u.id) AS first
                  FROM unnest(commands) WITH ORDINALITY AS u WHERE u.id IS NOT NULL) d
         WHERE d.n > d.first ORDER BY d.n LIMIT 1;
        PERFORM eventstore_sql.refuse('22023', format('event id %s appears twice in the batch', bad.id),
            format('Command %s of the batch: command %s carries the same id.', bad.n, bad.first),
            'Give every event its own id.');
    END IF;

    -- The locks (src/locks.rs), in one canonical order (trap 11): the all-writers key and the
    -- instances' writer keys shared, the aggregates' keys exclusively, each family in key order.
    IF batch.aggregates > 64
       OR current_setting('eventstore.sql_bulk', true) IS NOT DISTINCT FROM this_transaction THEN
        PERFORM eventstore_sql.lock_for_push(commands);
    ELSE
        IF taken + batch.aggregates > 256 THEN
            PERFORM eventstore_sql.lock_for_push(commands);
        ELSE
            WITH locked AS (
                SELECT CASE WHEN k.exclusive THEN pg_advisory_xact_lock(k.key)
                            ELSE pg_advisory_xact_lock_shared(k.key) END
                  FROM (SELECT 0 AS family, eventstore_sql.all_writers_key() AS key, false AS exclusive
                        UNION ALL
                        SELECT 1, eventstore_sql.writer_key(i.instance_id), false
                          FROM (SELECT DISTINCT u.instance_id FROM unnest(commands) u) i
                        UNION ALL
                        -- One digest per aggregate, not per command.
                        SELECT 2, eventstore_sql.aggregate_key(a.instance_id, a.aggregate_type, a.aggregate_id), true
                          FROM (SELECT DISTINCT u.instance_id, u.aggregate_type, u.aggregate_id
                                  FROM unnest(commands) u) a
                        ORDER BY 1, 2 OFFSET 0) k)
            SELECT set_config('eventstore.sql_aggregate_locks',
                       this_transaction || '#' || (taken + batch.aggregates), true)
              INTO marked
              FROM (SELECT count(*) FROM locked) c;
        END IF;
    END IF;

    -- G14: with the aggregates locked, any earlier push to them has ended: a replay is answered
    -- from the store before anything is numbered.
    IF batch.carries_ids THEN
        replayed := eventstore_sql.replay(commands);
        IF replayed IS NOT NULL THEN
            RETURN QUERY SELECT * FROM unnest(replayed);
            RETURN;
        END IF;
    END IF;

    IF batch.expects THEN
        PERFORM eventstore_sql.check_expected_sequences(commands);
    END IF;

    -- The floor (src/horizon/floors.rs): once per transaction, with every lock of the batch held
    -- and before the first position is drawn, the last drawn position + 1, held shared.
    IF current_setting('eventstore.sql_floor', true) IS DISTINCT FROM this_transaction THEN
        PERFORM eventstore_sql.take_floor();
    END IF;

    -- G3: positions drawn in command order (the insert's rows come sorted by command), after
    -- the floor. Pushes without ids under READ COMMITTED insert plainly; with ids an id a
    -- concurrent push stored meanwhile is skipped and refused below; under REPEATABLE READ a
    -- row committed after the snapshot makes ON CONFLICT fail with 40001.
    IF NOT batch.carries_ids AND current_setting('transaction_isolation') = 'read committed' THEN
        -- RETURNING gives the rows in the order they are inserted: command order.
        RETURN QUERY
        INSERT INTO eventstore.events AS e (instance_id, aggregate_type, aggregate_id, sequence,
               event_type, revision, payload, creator, owner, created_at, position, in_tx_order,
               id, metadata)
        SELECT k.instance_id, k.aggregate_type, k.aggregate_id, k.sequence, k.event_type,
               k.revision, k.payload, coalesce(k.creator, eventstore_sql.caller()), k.owner, now(),
               nextval('eventstore.position_seq'::regclass), (k.n - 1)::integer, k.id, k.metadata
          FROM (SELECT * FROM eventstore_sql.numbered(commands) ORDER BY n OFFSET 0) k
        RETURNING e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.position,
                  e.in_tx_order, e.created_at, e.owner, e.id;
    ELSE
        RETURN QUERY
        WITH inserted AS (
            INSERT INTO eventstore.events AS e (instance_id, aggregate_type, aggregate_id, sequence,
                   event_type, revision, payload, creator, owner, created_at, position, in_tx_order,
                   id, metadata)
            SELECT k.instance_id, k.aggregate_type, k.aggregate_id, k.sequence, k.event_type,
                   k.revision, k.payload, coalesce(k.creator, eventstore_sql.caller()), k.owner, now(),
                   nextval('eventstore.position_seq'::regclass), (k.n - 1)::integer, k.id, k.metadata
              FROM (SELECT * FROM eventstore_sql.numbered(commands) ORDER BY n OFFSET 0) k
            ON CONFLICT DO NOTHING
            RETURNING e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.position,
                      e.in_tx_order, e.created_at, e.owner, e.id)
        SELECT * FROM inserted w ORDER BY w.in_tx_order;
        GET DIAGNOSTICS written = ROW_COUNT;
        IF written < size THEN
            -- The first command whose id is stored by another transaction (or, written in a
            -- subtransaction of the caller's, the first command with an id).
            SELECT u.ordinality AS n, u.id INTO bad
              FROM unnest(commands) WITH ORDINALITY AS u
             WHERE u.id IS NOT NULL
             ORDER BY EXISTS (SELECT FROM eventstore.events e
                               WHERE e.id = u.id AND e.xmin = pg_current_xact_id()::xid), u.ordinality
             LIMIT 1;
            PERFORM eventstore_sql.refuse('ES422',
                format('event id %s was already used for another event', bad.id),
                format('Command %s carries id %s, which a concurrent push stored for another event '
                       'while this push waited.', bad.n, bad.id),
                'Retry a push only with exactly the commands and ids it was first sent with; give '
                'every new event a new id.');
        END IF;
    END IF;

    IF current_setting('eventstore.notify', true) = 'on' THEN
        PERFORM eventstore_sql.note_for_notify();
    END IF;
END
$$;
COMMENT ON FUNCTION eventstore.push(eventstore.command[]) IS
    'Appends the commands atomically (G1): per-aggregate gapless sequences (G2), global '
    'positions drawn under the writer lock (G3). One row per event written.';

CREATE FUNCTION eventstore.push(commands jsonb)
RETURNS SETOF eventstore.pushed
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF commands IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'commands must not be NULL',
            'push was called with a NULL jsonb.', 'Pass a JSON array of command objects.');
    END IF;
    RETURN QUERY SELECT * FROM eventstore.push(eventstore_sql.commands_from_json(commands));
END
$$;
COMMENT ON FUNCTION eventstore.push(jsonb) IS
    'push for drivers that cannot bind composite arrays: a JSON array of command objects '
    'with the fields of eventstore.command. Unknown fields are refused.';

-- NOTIFY (src/wakeup.rs): with eventstore.notify = on, a transaction that pushed sends one
-- notification on channel eventstore_events when it commits: {"position": <highest position
-- written>}, no tenant name. Its first push queues a row here (note_for_notify), whose deferred
-- trigger sends the notification at commit and deletes the row. A rolled-back transaction (or
-- savepoint) sends nothing for what it undid: the row goes with it. The trigger is not on
-- eventstore.events, so that pushes with notify off pay nothing for it. The table is unlogged:
-- it only ever holds rows of transactions in flight.
CREATE UNLOGGED TABLE eventstore_sql.notifying (xact xid8 NOT NULL);
REVOKE ALL ON eventstore_sql.notifying FROM PUBLIC;

CREATE FUNCTION eventstore_sql.notify_at_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('eventstore_events', json_build_object('position',
        nullif(current_setting('eventstore.sql_highest_position', true), '')::bigint)::text);
    DELETE FROM eventstore_sql.notifying n WHERE n.xact = NEW.xact;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER notify_at_commit AFTER INSERT ON eventstore_sql.notifying
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
EXECUTE FUNCTION eventstore_sql.notify_at_commit();

-- An untyped literal or parameter ('[...]') would match both forms above; this one takes it.
CREATE FUNCTION eventstore.push(commands text)
RETURNS SETOF eventstore.pushed
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM eventstore.push(commands::jsonb) $$;
COMMENT ON FUNCTION eventstore.push(text) IS
    'push(jsonb) for a JSON text, so that an untyped parameter or literal needs no cast.';

-- Reading one aggregate (src/read.rs): tenancy as push, run as the owner, under the statement's
-- snapshot.
CREATE FUNCTION eventstore.read_aggregate(
    instance_id    text,
    aggregate_type text,
    aggregate_id   text,
    from_sequence  bigint  DEFAULT 1,
    max_count      integer DEFAULT 1000
) RETURNS SETOF eventstore.events
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    i text := eventstore_sql.identifier('instance_id', instance_id);
    t text := eventstore_sql.identifier('aggregate_type', aggregate_type);
    a text := eventstore_sql.identifier('aggregate_id', aggregate_id);
BEGIN
    PERFORM eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'read_aggregate');
    IF from_sequence IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'from_sequence must not be NULL',
            'from_sequence is NULL.', 'Pass 1 to read from the first event.');
    END IF;
    IF max_count IS NULL OR max_count NOT BETWEEN 1 AND 100000 THEN
        PERFORM eventstore_sql.refuse('22023', 'max_count is out of range',
            format('max_count is %s; it must be between 1 and 100000.', coalesce(max_count::text, 'NULL')),
            'Read a long aggregate in pages: from_sequence = the last sequence read + 1.');
    END IF;
    RETURN QUERY
    SELECT e.* FROM eventstore.events e
     WHERE e.instance_id = i AND e.aggregate_type = t AND e.aggregate_id = a
       AND e.sequence >= from_sequence
     ORDER BY e.sequence LIMIT max_count;
END
$$;
COMMENT ON FUNCTION eventstore.read_aggregate(text, text, text, bigint, integer) IS
    'The aggregate''s events with sequence >= from_sequence, in sequence order, at most '
    'max_count (1..100000).';

CREATE FUNCTION eventstore.aggregate_sequence(instance_id text, aggregate_type text, aggregate_id text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    i text := eventstore_sql.identifier('instance_id', instance_id);
    t text := eventstore_sql.identifier('aggregate_type', aggregate_type);
    a text := eventstore_sql.identifier('aggregate_id', aggregate_id);
BEGIN
    PERFORM eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'aggregate_sequence');
    RETURN coalesce((SELECT e.sequence FROM eventstore.events e
                      WHERE e.instance_id = i AND e.aggregate_type = t AND e.aggregate_id = a
                      ORDER BY e.sequence DESC LIMIT 1), 0);
END
$$;
COMMENT ON FUNCTION eventstore.aggregate_sequence(text, text, text) IS
    'The aggregate''s current sequence, 0 when it has no event: the expected_sequence of its '
    'next command.';

--
-- Lock helpers, all transaction-scoped (safe behind a transaction-pooling PgBouncer).
--

CREATE FUNCTION eventstore.lock_writer(instance_id text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    i text := eventstore_sql.identifier('instance_id', instance_id);
BEGIN
    PERFORM eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'lock_writer');
    PERFORM eventstore_sql.lock_writers(ARRAY[i]);
    PERFORM eventstore_sql.take_floor();
END
$$;
COMMENT ON FUNCTION eventstore.lock_writer(text) IS
    'Takes the shared writer lock push takes for this instance, until the transaction ends.';

-- The digest of a partition's lock key (pg_locks: classid high half, objid low half, objsubid
-- 1 in the SQL edition). Partition 0's key is the projection's key.
CREATE FUNCTION eventstore.projection_lock_key(projection text, instance_id text, partition integer)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN eventstore_sql.lock_key(17667, eventstore_sql.key_name(instance_id)
           || eventstore_sql.key_name(projection)
           || CASE WHEN partition = 0 THEN ''::bytea
                   ELSE eventstore_sql.key_name(partition::text) END);
COMMENT ON FUNCTION eventstore.projection_lock_key(text, text, integer) IS
    'The 64-bit digest of a projection partition''s lock key (pg_locks: classid, objid; '
    'objsubid 1 in the SQL edition).';

-- Takes a projection partition's lock (G6), waiting or not; re-entrant within a transaction.
CREATE FUNCTION eventstore_sql.lock_projection(projection text, instance_id text, partition integer, wait boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key bigint := eventstore.projection_lock_key(projection, instance_id, partition);
BEGIN
    IF wait THEN
        PERFORM pg_advisory_xact_lock(key);
        RETURN true;
    END IF;
    RETURN pg_try_advisory_xact_lock(key);
END
$$;

CREATE FUNCTION eventstore.lock_projection(
    projection  text,
    instance_id text    DEFAULT NULL,
    wait        boolean DEFAULT false
) RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    p text := eventstore_sql.identifier('projection', projection);
    i text := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
BEGIN
    i := eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'lock_projection');
    IF coalesce(wait, false) THEN
        -- A catch-up holding the projection may be waiting for this transaction's writes.
        PERFORM eventstore_sql.refuse_while_writing();
    END IF;
    RETURN eventstore_sql.lock_projection(p, i, 0, coalesce(wait, false));
END
$$;
COMMENT ON FUNCTION eventstore.lock_projection(text, text, boolean) IS
    'Takes the exclusive projection lock until the transaction ends (G6). wait = false: '
    'returns false at once when another transaction holds it.';

CREATE FUNCTION eventstore.await_writers(instance_id text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    i text := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
BEGIN
    i := eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'await_writers');
    PERFORM eventstore_sql.refuse_while_writing();
    RETURN eventstore_sql.horizon(i);
END
$$;
COMMENT ON FUNCTION eventstore.await_writers(text) IS
    'The horizon (of this instance, or of all when NULL): a position at or below which every '
    'write has finished (G4). Answers at once: read from the writers'' floors in pg_locks.';

CREATE FUNCTION eventstore.horizon_mode()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN 'sql';
COMMENT ON FUNCTION eventstore.horizon_mode() IS
    'The horizon in use: sql, the SQL edition''s floors (writers hold their floor as an advisory '
    'lock; catch-up reads pg_locks and never waits for writers; writers never wait for catch-up).';

--
-- Catch-up (src/catchup): checkpoints, the batch.
--
-- Checkpoints: one row per projection, instance (instance_id NULL: a global projection) and
-- partition (0 for a projection that is not partitioned).
CREATE TABLE eventstore.projection_states (
    projection  text        NOT NULL,
    instance_id text,
    checkpoint  bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    partition   integer     NOT NULL DEFAULT 0,
    CONSTRAINT projection_states_key UNIQUE NULLS NOT DISTINCT (projection, instance_id, partition)
);
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
-- unambiguous encoding of the aggregate, modulo the count (the native definition).
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

-- A catch-up's filters: NULL means every type; otherwise a non-empty list of names without
-- NULL or empty ones, sorted, without repeats.
CREATE FUNCTION eventstore_sql.type_filter(field text, types text[]) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF types IS NULL THEN
        RETURN NULL;
    END IF;
    IF cardinality(types) = 0 THEN
        PERFORM eventstore_sql.refuse('22023', field || ' must not be empty',
            field || ' is an empty array, which would match no event.', 'Pass NULL for every type.');
    END IF;
    IF EXISTS (SELECT FROM unnest(types) t WHERE coalesce(t, '') = '') THEN
        PERFORM eventstore_sql.refuse('22023', field || ' must not contain NULL or an empty string',
            field || ' has an element that is '
            || CASE WHEN array_position(types, NULL) IS NOT NULL THEN 'NULL' ELSE 'empty' END || '.',
            'Pass NULL instead of the array for every type.');
    END IF;
    RETURN ARRAY(SELECT DISTINCT t FROM unnest(types) t ORDER BY 1);
END
$$;

-- A catch-up's arguments, checked as the native Request (src/catchup/mod.rs): the projection,
-- the instance resolved for the caller's tenant (what names the call in a refusal), the batch
-- size and the type filters.
CREATE FUNCTION eventstore_sql.catchup_request(
    what text, projection text, instance_id text, batch_size integer, aggregate_types text[],
    event_types text[], OUT p text, OUT i text, OUT agg_types text[], OUT ev_types text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    tenant text := eventstore_sql.caller_tenant();
BEGIN
    i := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
    p := eventstore_sql.identifier('projection', projection);
    i := eventstore_sql.resolve(tenant, i, what);
    IF batch_size IS NULL OR batch_size NOT BETWEEN 1 AND 100000 THEN
        PERFORM eventstore_sql.refuse('22023', 'batch_size is out of range',
            format('batch_size is %s; it must be between 1 and 100000.', coalesce(batch_size::text, 'NULL')));
    END IF;
    agg_types := eventstore_sql.type_filter('aggregate_types', aggregate_types);
    ev_types := eventstore_sql.type_filter('event_types', event_types);
END
$$;

-- Refuses a call that waits for projection locks and then reads checkpoints and events, outside
-- READ COMMITTED (0A000): SQL cannot read under a snapshot newer than the transaction's, so under
-- REPEATABLE READ it would read the state from before the wait (the native functions read with
-- fresh snapshots). action: what the message says the edition does only under READ COMMITTED;
-- hazard: what the snapshot could hide.
CREATE FUNCTION eventstore_sql.refuse_unless_read_committed(action text, hazard text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM eventstore_sql.refuse('0A000',
            format('the SQL edition %s only under READ COMMITTED', action),
            format('This transaction is %s: its snapshot could hide %s.',
                upper(current_setting('transaction_isolation')), hazard),
            'Use a READ COMMITTED transaction (the native extension also serves REPEATABLE READ and '
            'SERIALIZABLE).');
    END IF;
END
$$;

-- The projection's definition (its row of eventstore.projections), or the one of a projection
-- without a row: 1 partition, the default poison policy. Two index look-ups, one for an instance
-- and one for a global projection (instance_id NULL), so that a cached plan serves both; in
-- PL/pgSQL, as the look-ups below that every catch-up makes, so that it is planned once per
-- session (a SQL function's statements are planned again in every transaction).
CREATE FUNCTION eventstore_sql.definition(projection text, instance_id text) RETURNS eventstore.projections
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce(
        (SELECT d FROM eventstore.projections d WHERE d.projection = $1 AND d.instance_id = $2
         UNION ALL
         SELECT d FROM eventstore.projections d
          WHERE $2 IS NULL AND d.projection = $1 AND d.instance_id IS NULL),
        ROW($1, $2, 1, NULL, 0, 3, true, NULL)::eventstore.projections);
END
$$;

-- Partition numbers that may have something to hand out: the new layout's and, while a resize
-- drains, the old one's.
CREATE FUNCTION eventstore_sql.slots(d eventstore.projections) RETURNS integer
LANGUAGE sql IMMUTABLE
RETURN greatest(d.partitions, d.resize_from);

-- A partition's checkpoint, 0 when it has none; index look-ups as in definition.
CREATE FUNCTION eventstore_sql.checkpoint(projection text, instance_id text, partition integer) RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((SELECT s.checkpoint FROM eventstore.projection_states s
                      WHERE s.projection = $1 AND s.instance_id = $2 AND s.partition = $3
                     UNION ALL
                     SELECT s.checkpoint FROM eventstore.projection_states s
                      WHERE $2 IS NULL AND s.projection = $1 AND s.instance_id IS NULL
                        AND s.partition = $3), 0);
END
$$;

-- The lowest checkpoint of a projection's partitions, 0 when it has none.
CREATE FUNCTION eventstore_sql.lowest_checkpoint(projection text, instance_id text) RETURNS bigint
LANGUAGE sql STABLE
RETURN coalesce((SELECT pg_catalog.min(s.checkpoint) FROM eventstore.projection_states s
                  WHERE s.projection = $1 AND s.instance_id = $2),
                (SELECT pg_catalog.min(s.checkpoint) FROM eventstore.projection_states s
                  WHERE $2 IS NULL AND s.projection = $1 AND s.instance_id IS NULL), 0);

-- Sets the checkpoints of partitions first..last - 1 to checkpoint, in the caller's transaction
-- (a batch's checkpoint is written by advance, or by its own statement: parked_batch_statement).
CREATE FUNCTION eventstore_sql.write_checkpoints(
    projection text, instance_id text, first integer, last integer, checkpoint bigint) RETURNS void
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    INSERT INTO eventstore.projection_states AS s (projection, instance_id, partition, checkpoint, updated_at)
    SELECT $1, $2, p, $5, pg_catalog.clock_timestamp() FROM pg_catalog.generate_series($3, $4 - 1) AS p
    ON CONFLICT ON CONSTRAINT projection_states_key
    DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at;
END;

-- Whether every partition of the old layout (0..old-1) has committed a checkpoint at or past the
-- resize position (the statement's snapshot: call it with the partition's lock held).
CREATE FUNCTION eventstore_sql.old_partitions_passed(
    projection text, instance_id text, old integer, resize_position bigint) RETURNS boolean
LANGUAGE sql STABLE
RETURN (SELECT pg_catalog.count(*) FROM eventstore.projection_states s
         WHERE s.projection = $1 AND s.instance_id IS NOT DISTINCT FROM $2
           AND s.partition < $3 AND s.checkpoint >= $4) = $3;

-- Which events a partition at checkpoint hands out now (partitions.rs, Definition::layout):
-- partitions, the count its events are chosen by, and until, the last position it may hand out
-- (an old partition stops at the resize position; NULL: no limit). partitions NULL: nothing (a
-- partition beyond the count, or a new partition while an old one has not reached the resize
-- position).
CREATE FUNCTION eventstore_sql.layout(
    d eventstore.projections, partition integer, checkpoint bigint,
    OUT partitions integer, OUT until bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    IF d.resize_from IS NOT NULL THEN
        IF partition < d.resize_from AND checkpoint < d.resize_position THEN
            partitions := d.resize_from;
            until := d.resize_position;
            RETURN;
        END IF;
        IF partition >= d.partitions
           OR NOT eventstore_sql.old_partitions_passed(d.projection, d.instance_id, d.resize_from,
                                                       d.resize_position) THEN
            RETURN;
        END IF;
    END IF;
    IF partition < d.partitions THEN
        partitions := d.partitions;
    END IF;
END
$$;

--
-- Poison events (src/catchup/poison.rs, G13): what projection_failed records, and what a
-- catch-up does with it.
--

-- What a partition has recorded, in one statement, so that a catch-up with nothing recorded
-- (the usual case) runs no other statement about poison: the projection has parked events;
-- the partition has parked events marked for retry; the partition has a recorded failure.
CREATE FUNCTION eventstore_sql.recorded(
    projection text, instance_id text, partition integer,
    OUT parked boolean, OUT retries boolean, OUT failed boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT EXISTS (SELECT FROM eventstore.parked_events p
                    WHERE p.projection = $1 AND p.instance_id IS NOT DISTINCT FROM $2),
           EXISTS (SELECT FROM eventstore.parked_events p
                    WHERE p.projection = $1 AND p.instance_id IS NOT DISTINCT FROM $2
                      AND p.partition = $3 AND p.retry),
           EXISTS (SELECT FROM eventstore.projection_failures f
                    WHERE f.projection = $1 AND f.instance_id IS NOT DISTINCT FROM $2 AND f.partition = $3)
      INTO parked, retries, failed;
END
$$;

-- The partition's recorded failure (position, attempts), if it is about an event past the
-- checkpoint; NULLs otherwise.
CREATE FUNCTION eventstore_sql.failure(
    projection text, instance_id text, partition integer, checkpoint bigint,
    OUT "position" bigint, OUT attempts integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT f.position, f.attempts FROM eventstore.projection_failures f
     WHERE f.projection = $1 AND f.instance_id IS NOT DISTINCT FROM $2 AND f.partition = $3
       AND f.position > $4;
END;

-- Parks the partition's failing event, in the caller's transaction, and forgets the failure.
CREATE FUNCTION eventstore_sql.park(projection text, instance_id text, partition integer) RETURNS void
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    INSERT INTO eventstore.parked_events (projection, instance_id, partition, position, event_instance_id,
        aggregate_type, aggregate_id, sequence, error, attempts, first_failed_at, last_failed_at, parked_at)
    SELECT f.projection, f.instance_id, f.partition, e.position, e.instance_id, e.aggregate_type,
           e.aggregate_id, e.sequence, f.error, f.attempts, f.first_failed_at, f.last_failed_at,
           pg_catalog.clock_timestamp()
      FROM eventstore.projection_failures f JOIN eventstore.events e ON e.position = f.position
     WHERE f.projection = $1 AND f.instance_id IS NOT DISTINCT FROM $2 AND f.partition = $3
    ON CONFLICT ON CONSTRAINT parked_events_key DO NOTHING;
    DELETE FROM eventstore.projection_failures f
     WHERE f.projection = $1 AND f.instance_id IS NOT DISTINCT FROM $2 AND f.partition = $3;
END;

-- Counts a failure of the event at position: one more attempt when the record is about it, a
-- new count otherwise. Returns the attempts counted so far.
CREATE FUNCTION eventstore_sql.record_failure(
    projection text, instance_id text, partition integer, failing bigint, error text) RETURNS integer
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    INSERT INTO eventstore.projection_failures AS f (projection, instance_id, partition, position,
        attempts, error, first_failed_at, last_failed_at)
    VALUES ($1, $2, $3, $4, 1, $5, pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp())
    ON CONFLICT ON CONSTRAINT projection_failures_key DO UPDATE
    SET attempts = CASE WHEN f.position = excluded.position THEN f.attempts + 1 ELSE 1 END,
        first_failed_at = CASE WHEN f.position = excluded.position THEN f.first_failed_at
                               ELSE excluded.first_failed_at END,
        position = excluded.position, error = excluded.error, last_failed_at = excluded.last_failed_at
    RETURNING attempts;
END;

--
-- The batch (src/catchup/mod.rs, hand_out). The catch-up function runs the batch statement
-- itself (RETURN QUERY EXECUTE), so that the rows go straight from the query into its result,
-- and then moves the checkpoint (advance). Statements are built from fixed fragments only (no
-- caller's string is ever part of the SQL text), with the parameters $1 checkpoint, $2 upper
-- bound, $3 batch size, $4 instance, $5 aggregate types, $6 event types, $7 partition count,
-- $8 partition, $9 projection, $10 positions of parked events to retry.
--

-- What the catch-up function needs to run a partition's next batch: statement, NULL for nothing
-- to hand out; last_position, the statement that finds the last position of a full batch again
-- (NULL: the statement moves the checkpoint itself); and the parameters.
CREATE TYPE eventstore_sql.batch AS (
    statement     text,
    last_position text,
    checkpoint    bigint,
    upto          bigint,
    batch_limit   integer,
    partitions    integer,
    retried       bigint[]
);

-- The conditions on event e up to the position upper (an expression): past the checkpoint, in
-- scope, of the event types, of the partition. The aggregate types only where asked (by_type):
-- the batch applies them by index ranges.
CREATE FUNCTION eventstore_sql.batch_conditions(
    upper text, by_instance boolean, by_type boolean, by_event_type boolean, partitioned boolean)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN 'e.position > $1 AND e.position <= ' || upper
    || CASE WHEN by_instance THEN ' AND e.instance_id = $4' ELSE '' END
    || CASE WHEN by_event_type THEN ' AND e.event_type = ANY ($6)' ELSE '' END
    || CASE WHEN by_type THEN ' AND e.aggregate_type = ANY ($5)' ELSE '' END
    || CASE WHEN partitioned
            THEN ' AND eventstore.partition_of(e.instance_id, e.aggregate_type, e.aggregate_id, $7) = $8'
            ELSE '' END;

-- Event e is held behind a parked event of its aggregate (hold_aggregate) when parked is '<';
-- e is itself parked when it is '='. Served by the parked_events_aggregate index.
CREATE FUNCTION eventstore_sql.parked_condition(parked text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN 'EXISTS (SELECT FROM eventstore.parked_events p '
    || 'WHERE p.projection = $9 AND p.event_instance_id = e.instance_id '
    || 'AND p.aggregate_type = e.aggregate_type AND p.aggregate_id = e.aggregate_id '
    || 'AND p.position ' || parked || ' e.position AND p.instance_id IS NOT DISTINCT FROM $4)';

-- The events of a batch in position order, at most $3: one index range per aggregate type,
-- merged by position, when the catch-up filters by aggregate type (served by the
-- (instance_id, aggregate_type, position) and (aggregate_type, position) indexes). parked:
-- parked events are left out (one may lie past the checkpoint: projection_failed parks a due
-- failure whose park a failing batch rolled back); held: so are events held behind them.
-- columns: 'events' (the events' columns), 'positions' (their positions only: an index-only
-- scan) or 'partition_events' (the partition, then the event's columns: partition_catchup's rows).
CREATE FUNCTION eventstore_sql.batch_events(
    by_instance boolean, by_type boolean, by_event_type boolean, partitioned boolean,
    parked boolean, held boolean, columns text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN by_type
            THEN 'SELECT ' || CASE columns WHEN 'positions' THEN 'x.position'
                                           WHEN 'partition_events' THEN '$8, x.*'
                                           ELSE 'x.*' END
                 || ' FROM unnest($5::text[]) AS t(aggregate_type) CROSS JOIN LATERAL (SELECT '
                 || CASE columns WHEN 'positions' THEN 'e.position' ELSE 'e.*' END
                 || ' FROM eventstore.events e WHERE e.aggregate_type = t.aggregate_type AND '
            ELSE 'SELECT ' || CASE columns WHEN 'positions' THEN 'e.position'
                                           WHEN 'partition_events' THEN '$8, e.*'
                                           ELSE 'e.*' END
                 || ' FROM eventstore.events e WHERE ' END
    || eventstore_sql.batch_conditions('$2', by_instance, held AND by_type, by_event_type, partitioned)
    || CASE WHEN held THEN ' AND NOT ' || eventstore_sql.parked_condition('<') ELSE '' END
    || CASE WHEN parked THEN ' AND NOT ' || eventstore_sql.parked_condition('=') ELSE '' END
    || ' ORDER BY e.position LIMIT $3'
    || CASE WHEN by_type THEN ') x ORDER BY x.position LIMIT $3' ELSE '' END;

-- The events of `source` (an alias whose columns are an event's) as a batch statement returns
-- them, in position order.
CREATE FUNCTION eventstore_sql.batch_result(source text, columns text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN 'SELECT '
    || CASE columns WHEN 'partition_events' THEN '$8, ' ELSE '' END || source || '.*'
    || ' FROM ' || source || ' ORDER BY ' || source || '.position';

-- A batch of a projection with parked events, and the checkpoint it moves, in one statement:
-- parked events may be discarded (discard_parked) meanwhile, without the partition lock, so
-- the last position of a full batch is taken from the rows handed out, not found again; with
-- held, the events held behind a parked event up to the new checkpoint are parked too (their
-- held_behind: the first parked event of the aggregate), under the same snapshot.
CREATE FUNCTION eventstore_sql.parked_batch_statement(
    by_instance boolean, by_type boolean, by_event_type boolean, partitioned boolean,
    held boolean, columns text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN 'WITH batch AS MATERIALIZED ('
    || eventstore_sql.batch_events(by_instance, by_type, by_event_type, partitioned, true, held, 'events')
    || '), advanced AS ('
       'SELECT CASE WHEN count(*) = $3 THEN max(b.position) ELSE $2 END AS checkpoint FROM batch b)'
    || CASE WHEN NOT held THEN '' ELSE
       ', held AS (INSERT INTO eventstore.parked_events (projection, instance_id, partition, position, '
       'event_instance_id, aggregate_type, aggregate_id, sequence, attempts, parked_at, held_behind) '
       'SELECT $9, $4, $8, e.position, e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, 0, '
       'clock_timestamp(), (SELECT min(p.position) FROM eventstore.parked_events p '
       'WHERE p.projection = $9 AND p.instance_id IS NOT DISTINCT FROM $4 '
       'AND p.event_instance_id = e.instance_id AND p.aggregate_type = e.aggregate_type '
       'AND p.aggregate_id = e.aggregate_id) '
       'FROM eventstore.events e, advanced a WHERE '
       || eventstore_sql.batch_conditions('a.checkpoint', by_instance, by_type, by_event_type, partitioned)
       || ' AND ' || eventstore_sql.parked_condition('<')
       || ' ON CONFLICT ON CONSTRAINT parked_events_key DO NOTHING)' END
    || ', moved AS (INSERT INTO eventstore.projection_states AS s '
       '(projection, instance_id, partition, checkpoint, updated_at) '
       'SELECT $9, $4, $8, a.checkpoint, clock_timestamp() FROM advanced a '
       'ON CONFLICT ON CONSTRAINT projection_states_key '
       'DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at) '
    || eventstore_sql.batch_result('batch', columns);

-- Parked events handed out again: the events at positions $10, deleted from the parked events
-- in the same statement (commit: done; roll back: they come again).
CREATE FUNCTION eventstore_sql.retry_statement(columns text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN 'WITH retried AS (DELETE FROM eventstore.parked_events r '
       'WHERE r.projection = $9 AND r.instance_id IS NOT DISTINCT FROM $4 AND r.position = ANY ($10)), '
       'e AS (SELECT * FROM eventstore.events WHERE position = ANY ($10)) '
    || eventstore_sql.batch_result('e', columns);

-- The next batch of partition part of a projection, whose lock the caller holds (G4-G7 per
-- partition; hand_out in src/catchup/mod.rs), as the statements that hand it out and move the
-- checkpoint in the caller's transaction; statement NULL for nothing (and nothing written).
-- horizon: the caller's, found before or after the lock (a position at or below which every
-- write has finished; the checkpoint and the batch are read after it, under READ COMMITTED).
-- d: the definition, read with the lock held. columns: as batch_events. In order:
-- 1. parked events marked for retry come first, at most a batch;
-- 2. the partition's layout: an old partition stops at the resize position, a new one waits
--    until every old one has passed it;
-- 3. a recorded failure past the checkpoint (G13): the events before the failing one as usual,
--    then the failing one alone, and after max_attempts, parked and passed (here, in the
--    caller's transaction). Events before it in other partitions or filtered out are passed at
--    once, so that zero rows still means nothing;
-- 4. the batch: events up to the horizon (or the resize position) in position order, then the
--    checkpoint moved (advance).
-- The caller runs it: RETURN QUERY EXECUTE statement USING checkpoint, upto, batch_limit,
-- instance, aggregate types, event types, partitions, part, projection, retried; then advance.
CREATE FUNCTION eventstore_sql.next_batch(
    p text, i text, part integer, horizon bigint, batch_size integer, agg_types text[],
    ev_types text[], d eventstore.projections, columns text)
RETURNS eventstore_sql.batch
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    batch eventstore_sql.batch;
    recorded record;
    layout record;
    failure record;
    parked boolean;
BEGIN
    SELECT * INTO recorded FROM eventstore_sql.recorded(p, i, part);
    IF recorded.retries THEN
        batch.retried := ARRAY(SELECT r.position FROM eventstore.parked_events r
                                WHERE r.projection = p AND r.instance_id IS NOT DISTINCT FROM i
                                  AND r.partition = part AND r.retry
                                ORDER BY r.position LIMIT batch_size);
        IF cardinality(batch.retried) > 0 THEN
            batch.statement := eventstore_sql.retry_statement(columns);
            RETURN batch;
        END IF;
    END IF;
    batch.checkpoint := eventstore_sql.checkpoint(p, i, part);
    SELECT * INTO layout FROM eventstore_sql.layout(d, part, batch.checkpoint);
    IF layout.partitions IS NULL THEN
        RETURN batch;
    END IF;
    batch.partitions := layout.partitions;
    batch.upto := least(layout.until, horizon);
    IF batch.upto <= batch.checkpoint THEN
        RETURN batch;
    END IF;
    batch.batch_limit := batch_size;
    parked := recorded.parked;
    IF recorded.failed THEN
        SELECT * INTO failure FROM eventstore_sql.failure(p, i, part, batch.checkpoint);
        IF failure.position IS NULL THEN
            NULL;   -- a failure at or below the checkpoint: passed already
        ELSIF failure.position - 1 > batch.checkpoint
              AND eventstore_sql.has_events(p, i, part, batch.checkpoint, failure.position - 1,
                                            agg_types, ev_types, batch.partitions) THEN
            batch.upto := least(batch.upto, failure.position - 1);
        ELSIF failure.attempts >= d.max_attempts AND failure.position <= batch.upto THEN
            PERFORM eventstore_sql.park(p, i, part);
            parked := true;
            batch.checkpoint := failure.position;
            IF batch.upto <= batch.checkpoint THEN
                PERFORM eventstore_sql.write_checkpoints(p, i, part, part + 1, batch.checkpoint);
                RETURN batch;
            END IF;
        ELSE
            batch.checkpoint := greatest(batch.checkpoint, failure.position - 1);
            batch.upto := least(batch.upto, failure.position);
            batch.batch_limit := 1;
        END IF;
    END IF;
    IF parked THEN
        batch.statement := eventstore_sql.parked_batch_statement(i IS NOT NULL, agg_types IS NOT NULL,
            ev_types IS NOT NULL, batch.partitions > 1, d.hold_aggregate, columns);
        RETURN batch;
    END IF;
    batch.statement := eventstore_sql.batch_events(i IS NOT NULL, agg_types IS NOT NULL,
        ev_types IS NOT NULL, batch.partitions > 1, false, false, columns);
    batch.last_position := 'SELECT max(z.position) FROM ('
        || eventstore_sql.batch_events(i IS NOT NULL, agg_types IS NOT NULL, ev_types IS NOT NULL,
               batch.partitions > 1, false, false, 'positions') || ') z';
    RETURN batch;
END
$$;

-- Moves the checkpoint of a batch that handed out `handed` events (G5), in the caller's
-- transaction: to its last event when the batch is full (found again, from the index alone:
-- the same rows, since every event at or below the upper bound was settled before the batch was
-- read), else to the upper bound, past the events the filters and the partitioning skipped.
-- Nothing for a batch whose statement moved the checkpoint itself.
CREATE FUNCTION eventstore_sql.advance(
    batch eventstore_sql.batch, handed bigint, p text, i text, part integer, agg_types text[],
    ev_types text[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    advanced_to bigint := batch.upto;
BEGIN
    IF batch.last_position IS NULL THEN
        RETURN;
    END IF;
    IF handed = batch.batch_limit THEN
        EXECUTE batch.last_position INTO advanced_to
          USING batch.checkpoint, batch.upto, batch.batch_limit, i, agg_types, ev_types,
                batch.partitions, part, p;
    END IF;
    INSERT INTO eventstore.projection_states AS s (projection, instance_id, partition, checkpoint, updated_at)
    VALUES (p, i, part, advanced_to, clock_timestamp())
    ON CONFLICT ON CONSTRAINT projection_states_key
    DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at;
END
$$;

-- Whether the partition has an event for the catch-up in (after, upto], parked ones included.
CREATE FUNCTION eventstore_sql.has_events(
    p text, i text, part integer, after bigint, upto bigint, agg_types text[], ev_types text[],
    partitions integer)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_one boolean;
BEGIN
    EXECUTE 'SELECT EXISTS (' || eventstore_sql.batch_events(i IS NOT NULL, agg_types IS NOT NULL,
            ev_types IS NOT NULL, partitions > 1, false, false, 'positions') || ')'
       INTO found_one
      USING after, upto, 1, i, agg_types, ev_types, partitions, part, p;
    RETURN found_one;
END
$$;

-- projection_catchup (src/catchup/mod.rs), in the caller's transaction:
-- 1. the projection lock (G6), partition 0's: busy and wait = false, zero rows at once (trap 10);
-- 2. the horizon from the floors (G4): never waits;
-- 3. the batch of partition 0 (next_batch), read under snapshots taken after both (READ
--    COMMITTED), then its checkpoint advanced in the caller's transaction (advance, G5).
-- A projection of more than one partition is refused (55000): partition_catchup runs it.
-- Refused under REPEATABLE READ and SERIALIZABLE (0A000): SQL cannot read the batch under a
-- snapshot newer than the transaction's, and an event committed after that snapshot below the
-- horizon would be skipped. (The native catch-up reads with fresh snapshots there.)
CREATE FUNCTION eventstore.projection_catchup(
    projection      text,
    instance_id     text    DEFAULT NULL,
    batch_size      integer DEFAULT 1000,
    aggregate_types text[]  DEFAULT NULL,
    event_types     text[]  DEFAULT NULL,
    wait            boolean DEFAULT false
) RETURNS SETOF eventstore.events
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    r record := eventstore_sql.catchup_request('projection_catchup', projection, instance_id,
                    batch_size, aggregate_types, event_types);
    d eventstore.projections;
    batch eventstore_sql.batch;
    handed bigint;
BEGIN
    PERFORM eventstore_sql.refuse_unless_read_committed('catches up',
        'events committed below the horizon, which the catch-up would then skip');
    PERFORM eventstore_sql.refuse_while_writing();
    IF NOT eventstore_sql.lock_projection(r.p, r.i, 0, coalesce(wait, false)) THEN
        RETURN;
    END IF;
    d := eventstore_sql.definition(r.p, r.i);
    IF d.partitions > 1 THEN
        PERFORM eventstore_sql.refuse('55000',
            format('projection "%s" has %s partitions', left(r.p, 80), d.partitions),
            'projection_catchup hands out a whole projection; this one is split into partitions, '
            'each with its own checkpoint and lock.',
            'Use eventstore.partition_catchup, which hands out the next batch of a free partition.');
    END IF;
    batch := eventstore_sql.next_batch(r.p, r.i, 0, eventstore_sql.horizon(r.i), batch_size,
        r.agg_types, r.ev_types, d, 'events');
    IF batch.statement IS NOT NULL THEN
        RETURN QUERY EXECUTE batch.statement
         USING batch.checkpoint, batch.upto, batch.batch_limit, r.i, r.agg_types, r.ev_types,
               batch.partitions, 0, r.p, batch.retried;
        GET DIAGNOSTICS handed = ROW_COUNT;
        PERFORM eventstore_sql.advance(batch, handed, r.p, r.i, 0, r.agg_types, r.ev_types);
    END IF;
END
$$;
COMMENT ON FUNCTION eventstore.projection_catchup(text, text, integer, text[], text[], boolean) IS
    'Hands out the next batch of a projection in position order and advances its checkpoint '
    'in the caller''s transaction: never skipped (G4), never duplicated (G5), never run twice '
    'at once (G6), in order (G7). Busy and wait = false: zero rows at once. READ COMMITTED only '
    '(SQL edition).';

--
-- Partitioned projections (src/catchup/partitions.rs, G12). Each partition is run like a whole
-- projection (next_batch); workers spread over the partitions by trying their locks in turn from
-- a rotating start, never waiting for a busy one unless asked to. A resize from M to N
-- partitions takes effect at a position R (the last position drawn when set_partitions runs,
-- with every partition's lock held, so no batch straddles it): an old partition hands out its
-- events up to R, a partition of the new layout its events above R only once every old
-- partition's committed checkpoint has reached R.
--

-- Where this call starts trying partitions: rotating per call (a session setting counts the
-- calls), and different per backend, so that workers spread over the partitions without a
-- coordinator.
CREATE FUNCTION eventstore_sql.first_partition(slots integer) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    calls bigint := coalesce(nullif(current_setting('eventstore.sql_partition_calls', true), '')::bigint, 0);
BEGIN
    PERFORM set_config('eventstore.sql_partition_calls', ((calls + 1) % 1000000)::text, false);
    RETURN ((pg_backend_pid() + calls) % slots)::integer;
END
$$;

-- Whether a partition may have something to hand out: parked events marked for retry, or a
-- layout with positions up to the horizon past its checkpoint. Read without its lock, so that a
-- partition with nothing is passed over without taking it: an advisory lock taken in a
-- transaction cannot be given back before the transaction ends (the native catch-up takes the
-- lock of a partition that has nothing and gives it back).
CREATE FUNCTION eventstore_sql.may_have_work(p text, i text, part integer, horizon bigint, d eventstore.projections)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    checkpoint bigint;
    layout record;
BEGIN
    IF EXISTS (SELECT FROM eventstore.parked_events r
                WHERE r.projection = p AND r.instance_id IS NOT DISTINCT FROM i AND r.partition = part
                  AND r.retry) THEN
        RETURN true;
    END IF;
    checkpoint := eventstore_sql.checkpoint(p, i, part);
    SELECT * INTO layout FROM eventstore_sql.layout(d, part, checkpoint);
    RETURN layout.partitions IS NOT NULL AND least(layout.until, horizon) > checkpoint;
END
$$;

-- Whether no other transaction holds the lock with this key.
CREATE FUNCTION eventstore_sql.lock_is_free(key bigint) RETURNS boolean
LANGUAGE sql STABLE
RETURN NOT EXISTS (
    SELECT FROM pg_catalog.pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                          WHERE d.datname = pg_catalog.current_database())
       AND l.classid::bigint = (key >> 32) & 4294967295 AND l.objid::bigint = key & 4294967295
       AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid());

-- What a partitioned batch returns: its partition and the event's columns (partition_catchup's
-- result; flat, so that no row is built twice).
CREATE TYPE eventstore_sql.partition_event AS (
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
);

-- partition_catchup (G4-G7 per partition, G12): tries the partitions that may have something,
-- in turn from a rotating start, taking each one's lock without waiting, and hands out the batch
-- of the first free one that has one. A partition whose checkpoint moved past other partitions'
-- (or filtered) events without a batch keeps its lock until the transaction ends, with the
-- write. With wait, when every partition is busy, waits for the first one tried.
CREATE FUNCTION eventstore_sql.partition_batch(
    projection text, instance_id text, batch_size integer, aggregate_types text[],
    event_types text[], wait boolean)
RETURNS SETOF eventstore_sql.partition_event
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    r record := eventstore_sql.catchup_request('partition_catchup', projection, instance_id,
                    batch_size, aggregate_types, event_types);
    d eventstore.projections;
    slots integer;
    first integer;
    horizon bigint;
    part integer;
    any_free boolean := false;
    batch eventstore_sql.batch;
    handed bigint;
BEGIN
    PERFORM eventstore_sql.refuse_unless_read_committed('catches up',
        'events committed below the horizon, which the catch-up would then skip');
    PERFORM eventstore_sql.refuse_while_writing();
    d := eventstore_sql.definition(r.p, r.i);
    slots := eventstore_sql.slots(d);
    first := eventstore_sql.first_partition(slots);
    horizon := eventstore_sql.horizon(r.i);
    -- One try per partition from the rotating start; then, with wait and every partition busy,
    -- one more: the first partition tried, waiting for its lock.
    FOR n IN 0 .. slots LOOP
        IF n < slots THEN
            part := (first + n) % slots;
            IF NOT eventstore_sql.may_have_work(r.p, r.i, part, horizon, d) THEN
                -- As free as the native catch-up would have found it (it takes and gives back).
                any_free := any_free OR coalesce(wait, false)
                    AND eventstore_sql.lock_is_free(eventstore.projection_lock_key(r.p, r.i, part));
                CONTINUE;
            END IF;
            IF NOT eventstore_sql.lock_projection(r.p, r.i, part, false) THEN
                CONTINUE;
            END IF;
            any_free := true;
        ELSIF coalesce(wait, false) AND NOT any_free THEN
            part := first;
            PERFORM eventstore_sql.lock_projection(r.p, r.i, part, true);
        ELSE
            RETURN;
        END IF;
        batch := eventstore_sql.next_batch(r.p, r.i, part, horizon, batch_size, r.agg_types,
            r.ev_types, eventstore_sql.definition(r.p, r.i), 'partition_events');
        IF batch.statement IS NOT NULL THEN
            RETURN QUERY EXECUTE batch.statement
             USING batch.checkpoint, batch.upto, batch.batch_limit, r.i, r.agg_types, r.ev_types,
                   batch.partitions, part, r.p, batch.retried;
            GET DIAGNOSTICS handed = ROW_COUNT;
            PERFORM eventstore_sql.advance(batch, handed, r.p, r.i, part, r.agg_types, r.ev_types);
            IF handed > 0 THEN
                RETURN;
            END IF;
        END IF;
    END LOOP;
END
$$;

-- SQL, not PL/pgSQL: its result columns repeat its argument names (PL/pgSQL refuses that).
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
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM eventstore_sql.partition_batch($1, $2, $3, $4, $5, $6) $$;
COMMENT ON FUNCTION eventstore.partition_catchup(text, text, integer, text[], text[], boolean) IS
    'The next batch of the first free partition of a projection that has one (G4-G7 per '
    'partition, G12), its checkpoint advanced in the caller''s transaction. Busy partitions are '
    'passed over; zero rows: nothing for this worker now. READ COMMITTED only (SQL edition).';

-- Takes the lock of every partition that may hand out events (waiting, in key order, trap 11)
-- and returns the definition read after them; again when it grew meanwhile (a concurrent
-- resize). What a resize, a reset and projection_failed's callers take so that no batch runs
-- beside them.
CREATE FUNCTION eventstore_sql.lock_every_partition(p text, i text) RETURNS eventstore.projections
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    locked integer := 0;
    d eventstore.projections;
BEGIN
    LOOP
        d := eventstore_sql.definition(p, i);
        IF eventstore_sql.slots(d) <= locked THEN
            RETURN d;
        END IF;
        PERFORM pg_advisory_xact_lock(k.key)
           FROM (SELECT eventstore.projection_lock_key(p, i, part) AS key
                   FROM generate_series(locked, eventstore_sql.slots(d) - 1) AS part
                  ORDER BY 1 OFFSET 0) k;
        locked := eventstore_sql.slots(d);
    END LOOP;
END
$$;

-- A partition count: 1..256.
CREATE FUNCTION eventstore_sql.partition_count(partitions integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF partitions IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'partitions must not be NULL', 'partitions is NULL.',
            'A projection that is not partitioned has 1 partition.');
    END IF;
    IF partitions NOT BETWEEN 1 AND 256 THEN
        PERFORM eventstore_sql.refuse('22023', 'partitions is out of range',
            format('partitions is %s; it must be between 1 and 256.', partitions));
    END IF;
    RETURN partitions;
END
$$;

-- set_partitions (src/catchup/partitions.rs, G12): waits for every partition's running batch, then
-- records the resize position R, the last position drawn, and the old count. For a projection
-- that never handed anything out, R is 0 and every partition starts from the beginning. The
-- checkpoint rows: rows beyond the old count (left by an earlier, drained shrink) go; every old
-- partition has a row (0 when it never ran); a partition added by the resize starts at R.
CREATE FUNCTION eventstore.set_partitions(projection text, instance_id text, partitions integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    p text := eventstore_sql.identifier('projection', projection);
    i text := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
    n integer := eventstore_sql.partition_count(partitions);
    current eventstore.projections;
    has_run boolean;
    resize_position bigint := 0;
BEGIN
    i := eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'set_partitions');
    PERFORM eventstore_sql.refuse_unless_read_committed('runs set_partitions',
        'checkpoints committed while it waited for the partitions'' locks');
    PERFORM eventstore_sql.refuse_while_writing();
    current := eventstore_sql.lock_every_partition(p, i);
    IF current.resize_from IS NOT NULL
       AND NOT eventstore_sql.old_partitions_passed(p, i, current.resize_from, current.resize_position) THEN
        PERFORM eventstore_sql.refuse('55000', format('projection "%s" is still resizing', left(p, 80)),
            format('The resize from %s to %s partitions at position %s has not drained: an old '
                   'partition has not reached that position yet.',
                current.resize_from, current.partitions, current.resize_position),
            'Run the projection''s workers until every old partition has passed the resize '
            'position (projection_status), then resize again.');
    END IF;
    IF n = current.partitions THEN
        RETURN current.resize_position;
    END IF;
    has_run := EXISTS (SELECT FROM eventstore.projection_states s
                        WHERE s.projection = p AND s.instance_id IS NOT DISTINCT FROM i AND s.checkpoint > 0);
    IF has_run THEN
        resize_position := eventstore_sql.last_drawn();
    END IF;
    DELETE FROM eventstore.projection_states s
     WHERE s.projection = p AND s.instance_id IS NOT DISTINCT FROM i
       AND s.partition >= CASE WHEN has_run THEN current.partitions ELSE n END;
    INSERT INTO eventstore.projection_states AS s (projection, instance_id, partition, checkpoint, updated_at)
    SELECT p, i, part, CASE WHEN part < current.partitions OR NOT has_run THEN 0 ELSE resize_position END,
           clock_timestamp()
      FROM generate_series(0, CASE WHEN has_run THEN greatest(current.partitions, n) ELSE n END - 1) AS part
    ON CONFLICT ON CONSTRAINT projection_states_key DO NOTHING;
    INSERT INTO eventstore.projections AS d (projection, instance_id, partitions, resize_from, resize_position, updated_at)
    VALUES (p, i, n, CASE WHEN has_run THEN current.partitions END, resize_position, clock_timestamp())
    ON CONFLICT ON CONSTRAINT projections_key DO UPDATE
    SET partitions = excluded.partitions, resize_from = excluded.resize_from,
        resize_position = excluded.resize_position, updated_at = excluded.updated_at;
    RETURN resize_position;
END
$$;
COMMENT ON FUNCTION eventstore.set_partitions(text, text, integer) IS
    'Sets a projection''s partition count (1..256), waiting for its running batches. Returns '
    'the resize position: events above it go to the new partitions, which start once every '
    'old partition has passed it (G12). Refused (55000) while an earlier resize still drains.';

--
-- Poison events: the functions (src/catchup/poison.rs, G13). A worker whose handler failed
-- rolls back and, in a transaction of its own, calls projection_failed; the partition's next
-- batches then stop before the failing event, hand it out alone, and once it has failed
-- max_attempts times park it and go on. No subtransaction anywhere (G8).
--

-- set_poison_policy (G13): after max_attempts (1..100) recorded failures an event is parked;
-- hold_aggregate: its aggregate's later events are parked behind it (true) or go on (false).
CREATE FUNCTION eventstore.set_poison_policy(
    projection     text,
    instance_id    text,
    max_attempts   integer DEFAULT 3,
    hold_aggregate boolean DEFAULT true
) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    p text := eventstore_sql.identifier('projection', projection);
    i text := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
BEGIN
    IF max_attempts IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'max_attempts must not be NULL', 'max_attempts is NULL.');
    END IF;
    IF max_attempts NOT BETWEEN 1 AND 100 THEN
        PERFORM eventstore_sql.refuse('22023', 'max_attempts is out of range',
            format('max_attempts is %s; it must be between 1 and 100.', max_attempts));
    END IF;
    IF hold_aggregate IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'hold_aggregate must not be NULL', 'hold_aggregate is NULL.');
    END IF;
    i := eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'set_poison_policy');
    INSERT INTO eventstore.projections AS d (projection, instance_id, max_attempts, hold_aggregate, updated_at)
    VALUES (p, i, max_attempts, hold_aggregate, clock_timestamp())
    ON CONFLICT ON CONSTRAINT projections_key DO UPDATE
    SET max_attempts = excluded.max_attempts, hold_aggregate = excluded.hold_aggregate,
        updated_at = excluded.updated_at;
END
$$;
COMMENT ON FUNCTION eventstore.set_poison_policy(text, text, integer, boolean) IS
    'After max_attempts (1..100) recorded failures an event is parked; hold_aggregate: the same '
    'aggregate''s later events are parked behind it (true) or go on (false).';

-- projection_failed (G13): counts a handler failure, in the caller's transaction, which should
-- be a new one after the failing batch rolled back (trap 16). The failing event is position when
-- given (past the partition's checkpoint), else the partition's next event after its
-- checkpoint; a retried parked event handed out again is parked again, with one more attempt.
-- Waits for the partition's running batch. When an earlier failure of the partition is due to
-- be parked, the batch that parked it went on and failed here, and its rollback undid the park:
-- counting this failure would replace the record (one per partition) and the two would take
-- turns forever, so the earlier one is parked here, for good; the checkpoint stays (events
-- before it may not have been handed out) and catch-up passes over parked events.
CREATE FUNCTION eventstore.projection_failed(
    projection  text,
    instance_id text,
    partition   integer,
    error       text,
    "position"  bigint DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    p text := eventstore_sql.identifier('projection', projection);
    i text := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
    d eventstore.projections;
    attempts integer;
    checkpoint bigint;
    partitions integer;
    failing bigint;
    due record;
BEGIN
    IF partition IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'partition must not be NULL', 'partition is NULL.',
            'Pass the partition partition_catchup handed out (0 for projection_catchup).');
    END IF;
    IF error IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'error must not be NULL', 'error is NULL.',
            'Pass the handler''s error message.');
    END IF;
    i := eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'projection_failed');
    PERFORM eventstore_sql.refuse_unless_read_committed('runs projection_failed',
        'the checkpoint committed while it waited for the partition''s lock');
    PERFORM eventstore_sql.refuse_while_writing();
    d := eventstore_sql.definition(p, i);
    IF partition NOT BETWEEN 0 AND eventstore_sql.slots(d) - 1 THEN
        PERFORM eventstore_sql.refuse('22023', 'partition is out of range',
            format('partition is %s; projection "%s" has partitions 0 to %s.', partition, left(p, 80),
                eventstore_sql.slots(d) - 1));
    END IF;
    PERFORM eventstore_sql.lock_projection(p, i, partition, true);
    UPDATE eventstore.parked_events r
       SET attempts = r.attempts + 1, error = error, retry = false, last_failed_at = clock_timestamp(),
           first_failed_at = coalesce(r.first_failed_at, clock_timestamp())
     WHERE r.projection = p AND r.instance_id IS NOT DISTINCT FROM i AND r.partition = partition AND r.retry
       AND r.position = coalesce(position,
               (SELECT min(o.position) FROM eventstore.parked_events o
                 WHERE o.projection = p AND o.instance_id IS NOT DISTINCT FROM i
                   AND o.partition = partition AND o.retry))
    RETURNING r.attempts INTO attempts;
    IF FOUND THEN
        RETURN attempts;
    END IF;
    checkpoint := eventstore_sql.checkpoint(p, i, partition);
    IF position <= checkpoint THEN
        PERFORM eventstore_sql.refuse('22023', 'position is not past the partition''s checkpoint',
            format('position is %s; partition %s of projection "%s" has committed everything up to %s.',
                position, partition, left(p, 80), checkpoint),
            'Pass the position of an event of the batch that failed and was rolled back.');
    END IF;
    failing := position;
    IF failing IS NULL THEN
        partitions := coalesce((eventstore_sql.layout(d, partition, checkpoint)).partitions, d.partitions);
        failing := (SELECT e.position FROM eventstore.events e
                     WHERE e.position > checkpoint AND (i IS NULL OR e.instance_id = i)
                       AND (partitions = 1
                            OR eventstore.partition_of(e.instance_id, e.aggregate_type, e.aggregate_id,
                                                       partitions) = partition)
                     ORDER BY e.position LIMIT 1);
    END IF;
    IF failing IS NULL THEN
        PERFORM eventstore_sql.refuse('55000', 'the partition has no event to blame',
            format('Partition %s of projection "%s" has no event after its checkpoint %s.',
                partition, left(p, 80), checkpoint),
            'Call projection_failed after a batch that handed something out failed.');
    END IF;
    SELECT * INTO due FROM eventstore_sql.failure(p, i, partition, checkpoint);
    IF due.position < failing AND due.attempts >= d.max_attempts THEN
        PERFORM eventstore_sql.park(p, i, partition);
    END IF;
    RETURN eventstore_sql.record_failure(p, i, partition, failing, error);
END
$$;
COMMENT ON FUNCTION eventstore.projection_failed(text, text, integer, text, bigint) IS
    'Records a handler failure for the partition''s next event (or the event at position), in '
    'the caller''s transaction: call it after rolling the failing batch back (G13). Returns the '
    'attempts counted so far.';

-- The checked positions of retry_parked and discard_parked (NULL: every parked event).
CREATE FUNCTION eventstore_sql.parked_positions(positions bigint[]) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF array_position(positions, NULL) IS NOT NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'positions must not contain NULL',
            'positions has an element that is NULL.',
            'Pass NULL instead of the array for every parked event.');
    END IF;
    RETURN positions;
END
$$;

-- retry_parked (G13) marks parked events (all when positions is NULL) to be handed out again,
-- first, by their partition's next catch-up (the partition of the current count). Returns how
-- many.
CREATE FUNCTION eventstore.retry_parked(projection text, instance_id text, positions bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    p text := eventstore_sql.identifier('projection', projection);
    i text := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
    chosen bigint[] := eventstore_sql.parked_positions(positions);
    partitions integer;
    marked bigint;
BEGIN
    i := eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'retry_parked');
    partitions := (eventstore_sql.definition(p, i)).partitions;
    UPDATE eventstore.parked_events r
       SET retry = true,
           partition = CASE WHEN partitions = 1 THEN 0
                            ELSE eventstore.partition_of(r.event_instance_id, r.aggregate_type,
                                                         r.aggregate_id, partitions) END
     WHERE r.projection = p AND r.instance_id IS NOT DISTINCT FROM i
       AND (chosen IS NULL OR r.position = ANY (chosen));
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END
$$;
COMMENT ON FUNCTION eventstore.retry_parked(text, text, bigint[]) IS
    'Marks parked events (all when positions is NULL) to be handed out again, in position order, '
    'by their partition''s next catch-up, before its new events. Returns how many.';

-- discard_parked (G13) deletes parked events (all when positions is NULL). Returns how many.
CREATE FUNCTION eventstore.discard_parked(projection text, instance_id text, positions bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    p text := eventstore_sql.identifier('projection', projection);
    i text := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
    chosen bigint[] := eventstore_sql.parked_positions(positions);
    dropped bigint;
BEGIN
    i := eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'discard_parked');
    DELETE FROM eventstore.parked_events r
     WHERE r.projection = p AND r.instance_id IS NOT DISTINCT FROM i
       AND (chosen IS NULL OR r.position = ANY (chosen));
    GET DIAGNOSTICS dropped = ROW_COUNT;
    RETURN dropped;
END
$$;
COMMENT ON FUNCTION eventstore.discard_parked(text, text, bigint[]) IS
    'Deletes parked events (all when positions is NULL): they are never handed out again. '
    'Returns how many.';

-- Rebuilds (src/catchup/rebuild.rs; G5, G6 per partition): sets the checkpoint of one partition, or of every
-- partition when partition is NULL, to to_position (0: from the beginning), waiting for running
-- batches (every partition's lock), in the caller's transaction, so that the events after it are
-- handed out again; forgets their recorded failures (parked events stay: discard_parked drops
-- them). Resetting every partition ends a resize that is still draining. Returns how many
-- partitions were reset.
CREATE FUNCTION eventstore.reset_projection(
    projection  text,
    instance_id text    DEFAULT NULL,
    partition   integer DEFAULT NULL,
    to_position bigint  DEFAULT 0
) RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    p text := eventstore_sql.identifier('projection', projection);
    i text := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
    last bigint;
    d eventstore.projections;
    first integer := coalesce(partition, 0);
    stop integer;
BEGIN
    IF to_position IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'to_position must not be NULL', 'to_position is NULL.',
            'Pass 0 to rebuild from the beginning.');
    END IF;
    i := eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'reset_projection');
    PERFORM eventstore_sql.refuse_unless_read_committed('runs reset_projection',
        'checkpoints committed while it waited for the partitions'' locks');
    PERFORM eventstore_sql.refuse_while_writing();
    last := eventstore_sql.last_drawn();
    IF to_position NOT BETWEEN 0 AND last THEN
        PERFORM eventstore_sql.refuse('22023', 'to_position is out of range',
            format('to_position is %s; it must be between 0 and the last position drawn, %s.', to_position, last));
    END IF;
    d := eventstore_sql.lock_every_partition(p, i);
    IF NOT EXISTS (SELECT FROM eventstore.projection_states s
                    WHERE s.projection = p AND s.instance_id IS NOT DISTINCT FROM i)
       AND NOT EXISTS (SELECT FROM eventstore.projections o
                        WHERE o.projection = p AND o.instance_id IS NOT DISTINCT FROM i) THEN
        PERFORM eventstore_sql.refuse('22023', format('projection "%s" is unknown', left(p, 80)),
            format('Projection "%s" has no checkpoint and no definition%s.', left(p, 80),
                CASE WHEN i IS NULL THEN '' ELSE format(' for instance "%s"', left(i, 80)) END),
            'A projection that never ran starts from the beginning anyway.');
    END IF;
    IF partition NOT BETWEEN 0 AND d.partitions - 1 THEN
        PERFORM eventstore_sql.refuse('22023', 'partition is out of range',
            format('partition is %s; projection "%s" has partitions 0 to %s.', partition, left(p, 80),
                d.partitions - 1),
            'Pass NULL for every partition.');
    END IF;
    IF partition IS NOT NULL AND d.resize_from IS NOT NULL
       AND NOT eventstore_sql.old_partitions_passed(p, i, d.resize_from, d.resize_position) THEN
        PERFORM eventstore_sql.refuse('55000', format('projection "%s" is still resizing', left(p, 80)),
            format('Partition checkpoints follow two layouts until the resize at position %s drains.',
                d.resize_position),
            'Reset every partition (partition => NULL), or wait until the resize has drained.');
    END IF;
    stop := CASE WHEN partition IS NULL THEN d.partitions ELSE partition + 1 END;
    PERFORM eventstore_sql.write_checkpoints(p, i, first, stop, to_position);
    IF partition IS NULL THEN
        DELETE FROM eventstore.projection_states s
         WHERE s.projection = p AND s.instance_id IS NOT DISTINCT FROM i AND s.partition >= stop;
        UPDATE eventstore.projections o SET resize_from = NULL, updated_at = clock_timestamp()
         WHERE o.projection = p AND o.instance_id IS NOT DISTINCT FROM i;
    END IF;
    DELETE FROM eventstore.projection_failures f
     WHERE f.projection = p AND f.instance_id IS NOT DISTINCT FROM i
       AND f.partition >= first AND f.partition < stop;
    RETURN stop - first;
END
$$;
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
CREATE VIEW eventstore.projection_status WITH (security_invoker = true) AS
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
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
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


-- Waking a worker (src/wakeup.rs). The SQL edition cannot sleep on a latch that a committing
-- writer sets: wait_for_events polls, with back-off from 1 ms doubling to 25 ms, so a worker
-- wakes at most about 25 ms after the moment a catch-up could hand it something (natively:
-- within a millisecond), and a sleeping worker costs one short query per 25 ms. It sleeps in
-- pg_sleep (pg_stat_activity: wait_event_type Timeout, not Extension). Under REPEATABLE READ it
-- sees only its snapshot: call it under READ COMMITTED, or outside a transaction.
-- eventstore.notify = on: one NOTIFY per writing transaction, at commit (notify_at_commit).
CREATE FUNCTION eventstore.wait_for_events(
    projection  text,
    instance_id text    DEFAULT NULL,
    timeout_ms  integer DEFAULT 10000
) RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    p text := eventstore_sql.identifier('projection', projection);
    i text := CASE WHEN instance_id IS NULL THEN NULL ELSE eventstore_sql.identifier('instance_id', instance_id) END;
    deadline timestamptz;
    pause_ms double precision := 1;
    remaining_ms double precision;
    reachable bigint;
    checkpoint bigint;
BEGIN
    i := eventstore_sql.resolve(eventstore_sql.caller_tenant(), i, 'wait_for_events');
    IF timeout_ms IS NULL OR timeout_ms NOT BETWEEN 0 AND 3600000 THEN
        PERFORM eventstore_sql.refuse('22023', 'timeout_ms is out of range',
            format('timeout_ms is %s; it must be between 0 and 3600000.', coalesce(timeout_ms::text, 'NULL')));
    END IF;
    deadline := clock_timestamp() + make_interval(secs => timeout_ms / 1000.0);
    LOOP
        -- Committed events past the checkpoint (the lowest of a partitioned projection's) and no
        -- higher than a catch-up could hand out now.
        reachable := eventstore_sql.horizon(i);
        checkpoint := eventstore_sql.lowest_checkpoint(p, i);
        IF EXISTS (SELECT FROM eventstore.events e
                    WHERE e.instance_id = i AND e.position > checkpoint AND e.position <= reachable)
           OR i IS NULL AND EXISTS (SELECT FROM eventstore.events e
                                     WHERE e.position > checkpoint AND e.position <= reachable) THEN
            RETURN true;
        END IF;
        remaining_ms := extract(epoch FROM deadline - clock_timestamp()) * 1000;
        IF remaining_ms <= 0 THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(least(pause_ms, remaining_ms) / 1000.0);
        pause_ms := least(pause_ms * 2, 25);
    END LOOP;
END
$$;
COMMENT ON FUNCTION eventstore.wait_for_events(text, text, integer) IS
    'Sleeps until events past the projection''s checkpoint are committed (true) or timeout_ms '
    'passes (false). SQL edition: polls with back-off (1 to 25 ms), no LISTEN connection.';

-- Tenant-first forms (README "Running on Citus"): the calls of one tenant, the instance first
-- and required (22004 when NULL). They are push, projection_catchup, lock_projection,
-- await_writers and wait_for_events for that instance; a refusal for another tenant (42501)
-- names the function they call. eventstore.distribute() is native only.
CREATE FUNCTION eventstore_sql.for_tenant(tenant text, commands eventstore.command[])
RETURNS eventstore.command[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    other text;
BEGIN
    -- A command without an instance is left to push, which refuses it (22004).
    SELECT u.n, u.instance_id INTO n, other
      FROM unnest(commands) WITH ORDINALITY AS u(instance_id, aggregate_type, aggregate_id,
               event_type, revision, payload, creator, owner, expected_sequence, id, metadata, n)
     WHERE u.instance_id <> tenant
     ORDER BY u.n LIMIT 1;
    IF n IS NOT NULL THEN
        PERFORM eventstore_sql.refuse('22023',
            format('command %s of the batch is for another tenant', n),
            format('push was called for instance "%s"; command %s names instance "%s".',
                left(tenant, 80), n, left(other, 80)),
            'push(instance_id, commands) appends to one tenant: push each tenant''s commands in a '
            'call of its own.');
    END IF;
    RETURN commands;
END
$$;

CREATE FUNCTION eventstore.push(instance_id text, commands eventstore.command[])
RETURNS SETOF eventstore.pushed
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    tenant text := eventstore_sql.identifier('instance_id', instance_id);
BEGIN
    IF commands IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'commands must not be NULL',
            'push was called with a NULL array.', 'Pass an array of eventstore.command.');
    END IF;
    RETURN QUERY SELECT * FROM eventstore.push(eventstore_sql.for_tenant(tenant, commands));
END
$$;
COMMENT ON FUNCTION eventstore.push(text, eventstore.command[]) IS
    'push for one tenant: every command must name instance_id (22023 otherwise).';

CREATE FUNCTION eventstore.push(instance_id text, commands jsonb)
RETURNS SETOF eventstore.pushed
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    tenant text := eventstore_sql.identifier('instance_id', instance_id);
BEGIN
    IF commands IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'commands must not be NULL',
            'push was called with a NULL jsonb.', 'Pass a JSON array of command objects.');
    END IF;
    RETURN QUERY SELECT * FROM eventstore.push(
        eventstore_sql.for_tenant(tenant, eventstore_sql.commands_from_json(commands)));
END
$$;
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
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    RETURN QUERY SELECT * FROM eventstore.projection_catchup(projection,
        eventstore_sql.identifier('instance_id', instance_id), batch_size, aggregate_types,
        event_types, wait);
END
$$;
COMMENT ON FUNCTION eventstore.tenant_catchup(text, text, integer, text[], text[], boolean) IS
    'projection_catchup for one tenant (G4-G7): the instance first and required.';

CREATE FUNCTION eventstore.tenant_lock_projection(
    instance_id text,
    projection  text,
    wait        boolean DEFAULT false
) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT eventstore.lock_projection(projection,
          eventstore_sql.identifier('instance_id', instance_id), wait) $$;
COMMENT ON FUNCTION eventstore.tenant_lock_projection(text, text, boolean) IS
    'lock_projection for one tenant (G6): the instance first and required.';

CREATE FUNCTION eventstore.tenant_await_writers(instance_id text)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT eventstore.await_writers(eventstore_sql.identifier('instance_id', instance_id)) $$;
COMMENT ON FUNCTION eventstore.tenant_await_writers(text) IS
    'await_writers for one tenant (G4): the instance required.';

CREATE FUNCTION eventstore.tenant_wait_for_events(
    instance_id text,
    projection  text,
    timeout_ms  integer DEFAULT 10000
) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT eventstore.wait_for_events(projection,
          eventstore_sql.identifier('instance_id', instance_id), timeout_ms) $$;
COMMENT ON FUNCTION eventstore.tenant_wait_for_events(text, text, integer) IS
    'wait_for_events for one tenant (G15): the instance first and required.';

-- Gapless per-tenant counters for human-facing numbers (src/counter.rs). The counter's lock is
-- taken first, then the value read and raised by one statement started after the wait. Under
-- REPEATABLE READ and SERIALIZABLE that statement sees the transaction's snapshot, so a caller
-- that waited for another transaction of the same counter fails with 40001 (retry the
-- transaction), where the native next_number succeeds.
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
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    s text := eventstore_sql.identifier('scope', scope);
    bound text;
    t text;
    value bigint;
BEGIN
    IF tenant IS NULL THEN
        PERFORM eventstore_sql.refuse('22004', 'tenant must not be NULL', 'tenant is NULL.',
            'Use '''' (the default) for a counter that belongs to no tenant.');
    END IF;
    bound := eventstore_sql.caller_tenant();
    IF tenant = '' THEN
        t := coalesce(bound, '');
    ELSE
        t := eventstore_sql.resolve(bound, eventstore_sql.identifier('tenant', tenant), 'next_number');
    END IF;
    PERFORM pg_advisory_xact_lock(eventstore_sql.counter_key(t, s));
    INSERT INTO eventstore.counters AS c (scope, tenant, value) VALUES (s, t, 1)
    ON CONFLICT ON CONSTRAINT counters_pkey DO UPDATE SET value = c.value + 1
    RETURNING c.value INTO value;
    RETURN value;
END
$$;
COMMENT ON FUNCTION eventstore.next_number(text, text) IS
    'The next gapless number of a counter: callers serialize, a rolled-back number is handed '
    'out again, committed numbers are 1..N per scope and tenant.';
-- Tenancy (src/tenancy.rs). A role subject to row-level security is bound to the tenant named
-- by the setting eventstore.tenant: its direct reads are filtered by the policies below, and
-- push, catch-up, next_number and the lock helpers refuse any other instance (42501). Owner,
-- superusers and BYPASSRLS roles see every tenant. Writes happen only through the functions,
-- which run their statements as the owner: no role is granted a write on a table.
ALTER TABLE eventstore.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE eventstore.projection_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE eventstore.counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE eventstore.projections ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON eventstore.events
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));
CREATE POLICY tenant_isolation ON eventstore.projection_states
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));
CREATE POLICY tenant_isolation ON eventstore.counters
    USING (tenant = pg_catalog.current_setting('eventstore.tenant', true));
CREATE POLICY tenant_isolation ON eventstore.projections
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));

-- The three roles, NOLOGIN: grant them to the application's login roles. Roles belong to the
-- cluster: made by the first install, reused by the next (any database), kept when the
-- schema is dropped.
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
GRANT EXECUTE ON FUNCTION eventstore.horizon_mode(),
    eventstore.read_aggregate(text, text, text, bigint, integer),
    eventstore.aggregate_sequence(text, text, text)
    TO eventstore_writer, eventstore_reader, eventstore_projector;

-- eventstore_writer: push and the writer lock (plus next_number, for numbers in the same
-- transaction as the events).
GRANT USAGE ON TYPE eventstore.command, eventstore.pushed TO eventstore_writer;
GRANT EXECUTE ON FUNCTION
    eventstore.command(text, text, text, text, jsonb, integer, text, text, bigint, uuid, jsonb),
    eventstore.checked_revision(integer),
    eventstore.push(eventstore.command[]),
    eventstore.push(jsonb),
    eventstore.push(text),
    eventstore.push(text, eventstore.command[]),
    eventstore.push(text, jsonb),
    eventstore.push(text, text),
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
    eventstore.wait_for_events(text, text, integer),
    eventstore.tenant_catchup(text, text, integer, text[], text[], boolean),
    eventstore.tenant_lock_projection(text, text, boolean),
    eventstore.tenant_await_writers(text),
    eventstore.tenant_wait_for_events(text, text, integer)
    TO eventstore_projector;
GRANT SELECT, DELETE ON eventstore.projection_states TO eventstore_projector;

-- Partitioned projections: their definitions and progress are readable like the checkpoints;
-- the functions projection_status calls are granted to whoever may read it.
GRANT SELECT ON eventstore.projections TO eventstore_reader, eventstore_projector;
GRANT EXECUTE ON FUNCTION
    eventstore.partition_of(text, text, text, integer),
    eventstore.projection_lock_key(text, text, integer)
    TO eventstore_reader, eventstore_projector;
GRANT EXECUTE ON FUNCTION
    eventstore.set_partitions(text, text, integer),
    eventstore.partition_catchup(text, text, integer, text[], text[], boolean)
    TO eventstore_projector;

ALTER TABLE eventstore.projection_failures ENABLE ROW LEVEL SECURITY;
ALTER TABLE eventstore.parked_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON eventstore.projection_failures
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));
CREATE POLICY tenant_isolation ON eventstore.parked_events
    USING (instance_id = pg_catalog.current_setting('eventstore.tenant', true));
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
GRANT EXECUTE ON FUNCTION eventstore.reset_projection(text, text, integer, bigint) TO eventstore_projector;
