-- locks: the lock helpers, and the advisory locks behind push and catch-up.
--
-- Every eventstore lock is a transaction-scoped advisory lock on two int4 keys: a class id
-- per family, then a hash. It ends with the transaction whatever happens, so it is safe
-- behind a transaction-pooling PgBouncer. What waits for what across sessions is shown in
-- tests/isolation; this file shows one session and what pg_locks sees.
TRUNCATE eventstore.events, eventstore.projection_states;
ALTER SEQUENCE eventstore.position_seq RESTART;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- The documented keys, computed in SQL. In pg_locks an advisory lock on (key1, key2) shows
-- key1 in classid and key2 in objid, with objsubid 2.
--   1163067393 all writers  0
--   1163067394 writer       hashtext(instance_id)
--   1163067395 projection   hashtext(coalesce(instance_id, '') || '/' || projection)
--   1163067396 aggregate    hashtext(instance_id || '/' || aggregate_type || '/' || aggregate_id)
CREATE TEMP VIEW documented_lock_keys (lock, classid, objid) AS VALUES
    ('all writers',                   1163067393::oid, 0::oid),
    ('writer of acme',                1163067394::oid, hashtext('acme')::oid),
    ('writer of globex',              1163067394::oid, hashtext('globex')::oid),
    ('projection user_list (global)', 1163067395::oid, hashtext('/user_list')::oid),
    ('projection user_list of acme',  1163067395::oid, hashtext('acme/user_list')::oid),
    ('aggregate acme/user/u1',        1163067396::oid, hashtext('acme/user/u1')::oid),
    ('aggregate acme/user/u2',        1163067396::oid, hashtext('acme/user/u2')::oid),
    ('aggregate acme/user/u3',        1163067396::oid, hashtext('acme/user/u3')::oid),
    ('aggregate globex/user/u1',      1163067396::oid, hashtext('globex/user/u1')::oid);

-- The advisory locks this session holds, named after the keys above.
CREATE TEMP VIEW my_advisory_locks AS
SELECT coalesce(k.lock, 'undocumented') AS lock, l.classid, l.mode, l.granted
  FROM pg_locks l
  LEFT JOIN documented_lock_keys k ON k.classid = l.classid AND k.objid = l.objid
 WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.pid = pg_backend_pid();

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
SELECT lock, classid, mode, granted FROM my_advisory_locks ORDER BY classid, lock;
COMMIT;

-- Gone after COMMIT.
SELECT lock, classid, mode FROM my_advisory_locks;

-- projection_catchup takes the same lock, so a worker may also take it first.
BEGIN;
SELECT eventstore.lock_projection('user_list', 'acme');
SELECT position FROM eventstore.projection_catchup('user_list', 'acme');
SELECT lock, classid, mode FROM my_advisory_locks ORDER BY classid, lock;
COMMIT;
SELECT lock, classid, mode FROM my_advisory_locks;

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
SELECT lock, classid, mode FROM my_advisory_locks ORDER BY classid, lock;
COMMIT;
SELECT lock, classid, mode FROM my_advisory_locks;

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
SELECT lock, classid, mode FROM my_advisory_locks;
COMMIT;

--
-- lock_writer(instance_id): the shared writer lock push takes, for an application that
-- writes related rows and wants catch-up to wait for them as it waits for push.
--

BEGIN;
SELECT eventstore.lock_writer('acme');
SELECT lock, classid, mode FROM my_advisory_locks ORDER BY classid, lock;
-- Shared: taking it again (or pushing) in the same transaction is fine.
SELECT eventstore.lock_writer('acme');
SELECT count(*) FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u3', 'user.added')]);
SELECT lock, classid, mode FROM my_advisory_locks ORDER BY classid, lock;
COMMIT;
SELECT lock, classid, mode FROM my_advisory_locks;

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
SELECT lock, classid, mode FROM my_advisory_locks;
