-- wait_for_events: a worker's sleep until there is something to catch up.
--
-- eventstore.wait_for_events(projection, instance_id DEFAULT NULL, timeout_ms DEFAULT 10000)
-- returns true as soon as events lie past the projection's checkpoint (in that instance, or in
-- any instance for NULL), false when timeout_ms passes first. While it sleeps it holds a shared
-- waiter lock, and a committing push sets the latch of every holder of its instances' keys.
-- Wake-ups by another session's commit are shown in tests/wakeup.rs (and behind PgBouncer in
-- tests/shell/pgbouncer.sh); this file shows one session.
TRUNCATE eventstore.events, eventstore.projection_states;
ALTER SEQUENCE eventstore.position_seq RESTART;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- How long the current statement has run (only compared, never printed, so the output is stable).
CREATE TEMP VIEW elapsed AS
SELECT clock_timestamp() - statement_timestamp() AS elapsed;

-- Three events of acme.
SELECT position, instance_id, aggregate_id, sequence
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'invoice', 'inv-1', 'invoice.created'),
         eventstore.command('acme', 'invoice', 'inv-1', 'invoice.paid'),
         eventstore.command('acme', 'invoice', 'inv-2', 'invoice.created')]);

--
-- Events past the checkpoint: true at once
--

-- A projection that never ran has everything ahead of it: true at once, not after 10 s.
WITH w AS MATERIALIZED (SELECT eventstore.wait_for_events('totals', 'acme', 10000) AS found)
SELECT found, (SELECT elapsed < interval '5 s' FROM elapsed) AS at_once FROM w;

-- Partly caught up: still true.
BEGIN;
SELECT position FROM eventstore.projection_catchup('totals', 'acme', batch_size => 2);
COMMIT;
SELECT eventstore.wait_for_events('totals', 'acme', 0);

--
-- Caught up: false when the timeout passes
--

BEGIN;
SELECT position FROM eventstore.projection_catchup('totals', 'acme');
COMMIT;
WITH w AS MATERIALIZED (SELECT eventstore.wait_for_events('totals', 'acme', 300) AS found)
SELECT found, (SELECT elapsed >= interval '300 ms' AND elapsed < interval '5 s' FROM elapsed)
       AS slept_300_ms
  FROM w;

-- timeout_ms 0 only looks.
SELECT eventstore.wait_for_events('totals', 'acme', 0);

-- Another tenant's events are nothing new for acme's projection...
SELECT position, instance_id
  FROM eventstore.push(ARRAY[eventstore.command('globex', 'invoice', 'inv-1', 'invoice.created')]);
SELECT eventstore.wait_for_events('totals', 'acme', 0);
-- ...but they are for a global projection (instance_id NULL: every instance), whose
-- checkpoint is its own row.
BEGIN;
SELECT position, instance_id FROM eventstore.projection_catchup('totals', batch_size => 3);
COMMIT;
SELECT eventstore.wait_for_events('totals', NULL, 0) AS global_has_more;
SELECT eventstore.wait_for_events('totals') AS "the default instance_id is NULL";

-- A new event of acme: true again.
SELECT position FROM eventstore.push(ARRAY[eventstore.command('acme', 'invoice', 'inv-2', 'invoice.paid')]);
SELECT eventstore.wait_for_events('totals', 'acme', 0);

--
-- Inside a transaction
--

-- It is one ordinary statement: it can run in a transaction, a timeout is a value (the
-- transaction goes on), and the waiter lock (class 1163067398) is released when it returns,
-- not held until the end of the transaction. It compares with the checkpoint as the caller's
-- transaction sees it: a catch-up earlier in the same transaction counts, and its ROLLBACK
-- puts the events back in front of the projection. (Call it outside a long transaction: its
-- statement holds a snapshot while it sleeps.)
BEGIN;
SELECT eventstore.wait_for_events('totals', 'acme', 0) AS before_catchup;
SELECT position FROM eventstore.projection_catchup('totals', 'acme');
SELECT eventstore.wait_for_events('totals', 'acme', 100) AS after_catchup;
SELECT count(*) AS waiter_locks FROM pg_locks
 WHERE locktype = 'advisory' AND classid = 1163067398 AND pid = pg_backend_pid();
SELECT 'still usable' AS transaction;
ROLLBACK;
SELECT eventstore.wait_for_events('totals', 'acme', 0) AS after_rollback;

--
-- Bad arguments
--

-- projection is required; instance_id may be NULL but not empty.
SELECT eventstore.wait_for_events(NULL, 'acme', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.wait_for_events('', 'acme', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.wait_for_events('totals', '', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.wait_for_events(repeat('p', 513), 'acme', 0);
\echo :LAST_ERROR_SQLSTATE

-- timeout_ms is 0 to 3600000 (one hour).
SELECT eventstore.wait_for_events('totals', 'acme', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.wait_for_events('totals', 'acme', 3600001);
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.wait_for_events('totals', 'acme', NULL);
\echo :LAST_ERROR_SQLSTATE
