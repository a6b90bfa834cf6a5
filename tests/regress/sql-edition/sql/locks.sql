-- locks (SQL edition): the lock helpers, and the advisory locks behind push and catch-up.
-- The same steps as tests/regress/sql/locks.sql; only the keys are the SQL edition's.
--
-- Every eventstore lock is a transaction-scoped advisory lock. It ends with the transaction
-- whatever happens, so it is safe behind a transaction-pooling PgBouncer. What waits for what
-- across sessions is shown in tests/isolation; this file shows one session and what pg_locks
-- sees.
TRUNCATE eventstore.events, eventstore.projection_states;
ALTER SEQUENCE eventstore.position_seq RESTART;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- The documented keys of the SQL edition, computed in SQL (sql/plpgsql/eventstore.sql, "Lock
-- keys"). SQL reaches only pg_advisory_lock's own key spaces, so the family moves from
-- pg_locks.objsubid into the digest: every key but a floor is a bigint key (objsubid 1) whose
-- value is the first 8 bytes of SHA-256 over the family number (4 bytes) and the names, each
-- encoded as a 0 byte, its length (4 bytes) and its UTF-8 bytes ("none", a global projection,
-- as a 1 byte); classid shows the high half, objid the low half. A floor is a two-int key
-- (objsubid 2): classid 17671, objid the position (from 2^32 on, a second key 17672 holds the
-- high half).
CREATE FUNCTION pg_temp.name(text) RETURNS bytea LANGUAGE sql IMMUTABLE
RETURN CASE WHEN $1 IS NULL THEN '\x01'::bytea
            ELSE '\x00'::bytea || int4send(octet_length($1)) || convert_to($1, 'UTF8') END;
CREATE FUNCTION pg_temp.lock_key(family int, names bytea, OUT objsubid int, OUT classid oid, OUT objid oid)
LANGUAGE sql IMMUTABLE AS $$
    SELECT 1, ('x' || encode(substring(d FROM 1 FOR 4), 'hex'))::bit(32)::bigint::oid,
              ('x' || encode(substring(d FROM 5 FOR 4), 'hex'))::bit(32)::bigint::oid
      FROM sha256(int4send(family) || names) AS d
$$;
--   17665 all writers  no names
--   17666 writer       instance
--   17667 projection   instance (or none), projection
--   17668 aggregate    instance, aggregate type, aggregate id
--   floor              objsubid 2, classid 17671: the last drawn position + 1 when the
--                      transaction first wrote
CREATE TEMP VIEW documented_lock_keys (lock, family, objsubid, classid, objid) AS
SELECT v.lock, v.family, k.objsubid, k.classid, k.objid FROM (VALUES
    ('all writers',                   17665, ''::bytea),
    ('writer of acme',                17666, pg_temp.name('acme')),
    ('writer of globex',              17666, pg_temp.name('globex')),
    ('projection user_list (global)', 17667, pg_temp.name(NULL) || pg_temp.name('user_list')),
    ('projection user_list of acme',  17667, pg_temp.name('acme') || pg_temp.name('user_list')),
    ('aggregate acme/user/u1',        17668, pg_temp.name('acme') || pg_temp.name('user') || pg_temp.name('u1')),
    ('aggregate acme/user/u2',        17668, pg_temp.name('acme') || pg_temp.name('user') || pg_temp.name('u2')),
    ('aggregate acme/user/u3',        17668, pg_temp.name('acme') || pg_temp.name('user') || pg_temp.name('u3')),
    ('aggregate globex/user/u1',      17668, pg_temp.name('globex') || pg_temp.name('user') || pg_temp.name('u1'))
) AS v(lock, family, names)
CROSS JOIN LATERAL pg_temp.lock_key(v.family, v.names) AS k;

-- The advisory locks this session holds, named after the keys above (family: the documented
-- family number; 17671 for a floor).
CREATE TEMP VIEW my_advisory_locks AS
SELECT coalesce(k.lock,
                CASE WHEN l.objsubid = 2 AND l.classid = 17671 THEN 'floor ' || l.objid END,
                'undocumented') AS lock,
       coalesce(k.family, CASE WHEN l.objsubid = 2 THEN l.classid::int END) AS family,
       l.mode, l.granted
  FROM pg_locks l
  LEFT JOIN documented_lock_keys k
         ON k.objsubid = l.objsubid AND k.classid = l.classid AND k.objid = l.objid
 WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid();

--
-- lock_projection(projection, instance_id DEFAULT NULL, wait DEFAULT false)
--

BEGIN;
-- Try (wait => false, the default): true when no other transaction holds it, false at once
-- when one does (a value, not an error).
SELECT eventstore.lock_projection('user_list');
-- Re-entrant: taking it again in the same transaction returns true at once.
SELECT eventstore.lock_projection('user_list');
-- wait => true waits for another holder to finish; here it returns true at once.
SELECT eventstore.lock_projection('user_list', 'acme', wait => true);
-- The global and the per-instance projection are two locks, both exclusive.
SELECT lock, family, mode, granted FROM my_advisory_locks ORDER BY family, lock;
COMMIT;

-- Gone after COMMIT.
SELECT lock, family, mode FROM my_advisory_locks;

-- projection_catchup takes the same lock, so a worker may also take it first.
BEGIN;
SELECT eventstore.lock_projection('user_list', 'acme');
SELECT position FROM eventstore.projection_catchup('user_list', 'acme');
SELECT lock, family, mode FROM my_advisory_locks ORDER BY family, lock;
COMMIT;
SELECT lock, family, mode FROM my_advisory_locks;

--
-- push: shared writer locks (all writers, then each instance) and an exclusive lock per
-- aggregate, held until the transaction ends.
--

BEGIN;
SELECT instance_id, aggregate_id, sequence, position
  FROM eventstore.push(ARRAY[
         eventstore.command('acme',   'user', 'u1', 'user.added'),
         eventstore.command('acme',   'user', 'u2', 'user.added'),
         eventstore.command('globex', 'user', 'u1', 'user.added'),
         eventstore.command('acme',   'user', 'u1', 'user.renamed')]);
SELECT lock, family, mode FROM my_advisory_locks ORDER BY family, lock;
COMMIT;
SELECT lock, family, mode FROM my_advisory_locks;

--
-- await_writers(instance_id DEFAULT NULL): the barrier. It waits until no write that could
-- land at or below the horizon is in flight, and returns the horizon: the last position
-- drawn, by any writer.
--

SELECT eventstore.await_writers();
SELECT eventstore.await_writers('acme');

-- A rolled-back push drew position 5: the horizon counts positions drawn, committed or not
-- (a catch-up simply finds no event there).
BEGIN;
SELECT position FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u3', 'user.added')]);
ROLLBACK;
SELECT eventstore.await_writers();

-- It holds no lock afterwards: writers are let through again at once.
BEGIN;
SELECT eventstore.await_writers('globex');
SELECT lock, family, mode FROM my_advisory_locks;
COMMIT;

--
-- lock_writer(instance_id): the shared writer lock push takes, for an application that
-- writes related rows and wants catch-up to wait for them as it waits for push.
--

BEGIN;
SELECT eventstore.lock_writer('acme');
SELECT lock, family, mode FROM my_advisory_locks ORDER BY family, lock;
-- Shared: taking it again (or pushing) in the same transaction is fine.
SELECT eventstore.lock_writer('acme');
SELECT count(*) FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u3', 'user.added')]);
SELECT lock, family, mode FROM my_advisory_locks ORDER BY family, lock;
COMMIT;
SELECT lock, family, mode FROM my_advisory_locks;

-- A transaction holding a writer lock cannot wait for writers: it would wait for itself, or
-- deadlock with another writer doing the same. Refused with 55000.
BEGIN;
SELECT eventstore.lock_writer('acme');
SELECT eventstore.await_writers('acme');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

BEGIN;
SELECT eventstore.lock_writer('acme');
SELECT eventstore.await_writers();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- Also for another instance: two transactions each holding one instance's writer lock and
-- waiting for the other's would deadlock. (Only the SQLSTATE is shown.)
BEGIN;
SELECT eventstore.lock_writer('acme');
\set VERBOSITY sqlstate
SELECT eventstore.await_writers('globex');
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

--
-- Bad arguments
--

SELECT eventstore.lock_projection(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.lock_projection('');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.lock_projection('user_list', '');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.lock_writer(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.lock_writer('');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.await_writers('');
\echo :LAST_ERROR_SQLSTATE

-- None left a lock behind.
SELECT lock, family, mode FROM my_advisory_locks;
