-- catchup: handing out events to projections.
--
-- eventstore.projection_catchup(projection, instance_id, batch_size, aggregate_types,
-- event_types, wait) returns the next batch of events after the projection's checkpoint, in
-- position order, and advances the checkpoint in the caller's transaction: COMMIT and the
-- batch is done, ROLLBACK and the same batch comes again. Concurrent workers (a busy lock
-- returns zero rows) are shown in tests/isolation; this file shows one session.
TRUNCATE eventstore.events, eventstore.projection_states;
ALTER SEQUENCE eventstore.position_seq RESTART;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- Seven events in two instances, acme and globex.
SELECT position, instance_id, aggregate_type, aggregate_id, sequence
  FROM eventstore.push(ARRAY[
         eventstore.command('acme',   'user',  'u1', 'user.added'),
         eventstore.command('acme',   'user',  'u1', 'user.renamed'),
         eventstore.command('globex', 'user',  'u1', 'user.added'),
         eventstore.command('acme',   'order', 'o1', 'order.placed'),
         eventstore.command('acme',   'user',  'u2', 'user.added'),
         eventstore.command('globex', 'order', 'o1', 'order.placed'),
         eventstore.command('acme',   'order', 'o1', 'order.paid')]);

--
-- Batches and checkpoints
--

-- A projection of one instance, two events at a time: the first two acme events.
BEGIN;
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('user_list', 'acme', batch_size => 2);
-- The checkpoint moved, in this transaction, to the last event handed out.
SELECT projection, instance_id, checkpoint FROM eventstore.projection_states;
COMMIT;

-- The next call continues after the checkpoint (globex's position 3 is not in this projection).
BEGIN;
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('user_list', 'acme', batch_size => 2);
SELECT projection, instance_id, checkpoint FROM eventstore.projection_states;
COMMIT;

-- ROLLBACK hands out the same batch again: the checkpoint moves with the transaction.
BEGIN;
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('user_list', 'acme', batch_size => 2);
ROLLBACK;
SELECT projection, instance_id, checkpoint FROM eventstore.projection_states;

BEGIN;
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('user_list', 'acme', batch_size => 2);
COMMIT;
SELECT projection, instance_id, checkpoint FROM eventstore.projection_states;

-- Caught up: zero rows, and the checkpoint stays where it is.
SELECT position FROM eventstore.projection_catchup('user_list', 'acme', batch_size => 2);
SELECT projection, instance_id, checkpoint FROM eventstore.projection_states;

--
-- Per instance and global
--

-- The same projection name for another instance has its own checkpoint.
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('user_list', 'globex');

-- instance_id NULL (the default) is a global projection: every instance, in position order.
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('audit_log');

-- Its checkpoint is the row with instance_id NULL.
SELECT projection, instance_id, checkpoint
  FROM eventstore.projection_states ORDER BY projection, instance_id NULLS FIRST;

-- wait => true waits for the projection lock instead of returning zero rows when another
-- worker holds it; alone, it behaves the same.
SELECT count(*) = 1 AS pushed
  FROM eventstore.push('[{"instance_id": "globex", "aggregate_type": "user",
                          "aggregate_id": "u1", "event_type": "user.renamed"}]');
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('audit_log', wait => true);

--
-- Filters: aggregate_types and event_types
--

-- Only order events, of every instance.
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('order_totals', aggregate_types => ARRAY['order']);

-- The checkpoint moves past the events the filter skipped, up to the last position written,
-- so the next call does not read them again and returns nothing new.
SELECT projection, instance_id, checkpoint
  FROM eventstore.projection_states WHERE projection = 'order_totals';
SELECT position FROM eventstore.projection_catchup('order_totals', aggregate_types => ARRAY['order']);

-- A new user event (position 9) is skipped too, and the checkpoint moves past it.
SELECT position, aggregate_type
  FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u3', 'user.added')]);
SELECT position FROM eventstore.projection_catchup('order_totals', aggregate_types => ARRAY['order']);
SELECT projection, instance_id, checkpoint
  FROM eventstore.projection_states WHERE projection = 'order_totals';

-- A new order event (position 10) is handed out.
SELECT position, aggregate_type
  FROM eventstore.push(ARRAY[eventstore.command('globex', 'order', 'o1', 'order.paid')]);
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('order_totals', aggregate_types => ARRAY['order']);

-- When a filtered batch is full, the checkpoint stops at the last event handed out, so the
-- events after it are still to come.
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('first_order', 'acme', batch_size => 1,
                                     aggregate_types => ARRAY['order']);
SELECT projection, instance_id, checkpoint
  FROM eventstore.projection_states WHERE projection = 'first_order';

-- event_types: only these event types (here within one instance).
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('signups', 'acme', event_types => ARRAY['user.added']);

-- Both filters together: an event must match both.
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type
  FROM eventstore.projection_catchup('placements',
                                     aggregate_types => ARRAY['order', 'user'],
                                     event_types => ARRAY['order.placed', 'user.renamed']);

--
-- projection_status: the lag of each projection
--

-- Three more acme events.
SELECT position
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u4', 'user.added'),
         eventstore.command('acme', 'user', 'u4', 'user.renamed'),
         eventstore.command('acme', 'order', 'o2', 'order.placed')]);

-- head is the highest position in the projection's scope (its instance, or all), or the
-- checkpoint when that is higher; position_behind is head - checkpoint, and events_behind
-- counts the events in scope after the checkpoint (filters not applied).
SELECT projection, instance_id, checkpoint, head, position_behind, events_behind,
       last_run IS NOT NULL AS has_run
  FROM eventstore.projection_status ORDER BY projection, instance_id NULLS FIRST;

-- After a catch-up, user_list/acme is no longer behind.
SELECT position FROM eventstore.projection_catchup('user_list', 'acme');
SELECT projection, instance_id, checkpoint, head, position_behind, events_behind
  FROM eventstore.projection_status WHERE projection = 'user_list' ORDER BY instance_id;

-- Nor is user_list/globex after its own: the catch-up moves its checkpoint to the horizon
-- (13), past acme's events and above globex's last event (10). Caught up reads checkpoint =
-- head, 0 behind. (Rolled back, so that globex stays at 7 for what follows.)
BEGIN;
SELECT position FROM eventstore.projection_catchup('user_list', 'globex');
SELECT projection, instance_id, checkpoint, head, position_behind, events_behind
  FROM eventstore.projection_status WHERE projection = 'user_list' ORDER BY instance_id;
ROLLBACK;

--
-- Nested catch-up in one transaction
--

-- A second call of the same projection in the same transaction is not blocked by the lock
-- the first one holds: it returns the next batch.
BEGIN;
SELECT position FROM eventstore.projection_catchup('nested', batch_size => 3);
SELECT position FROM eventstore.projection_catchup('nested', batch_size => 3);
SELECT projection, checkpoint FROM eventstore.projection_states WHERE projection = 'nested';
ROLLBACK;

-- Even from inside the statement that runs the first one (say, a projection handler).
BEGIN;
SELECT outer_batch.position AS outer_position,
       (SELECT array_agg(inner_batch.position ORDER BY inner_batch.position)
          FROM eventstore.projection_catchup('nested', batch_size => 3) inner_batch)
         AS inner_positions
  FROM eventstore.projection_catchup('nested', batch_size => 3) outer_batch;
SELECT projection, checkpoint FROM eventstore.projection_states WHERE projection = 'nested';
ROLLBACK;

--
-- Bad arguments: refused with a SQLSTATE, nothing written.
--

-- batch_size must be between 1 and 100000.
SELECT position FROM eventstore.projection_catchup('audit_log', batch_size => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT position FROM eventstore.projection_catchup('audit_log', batch_size => 100001);
\echo :LAST_ERROR_SQLSTATE

-- An empty filter would match nothing: pass NULL (the default) for every type.
SELECT position FROM eventstore.projection_catchup('audit_log', aggregate_types => '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT position FROM eventstore.projection_catchup('audit_log', event_types => '{}');
\echo :LAST_ERROR_SQLSTATE

-- The projection name is required and not empty; so is instance_id when given.
SELECT position FROM eventstore.projection_catchup(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT position FROM eventstore.projection_catchup('');
\echo :LAST_ERROR_SQLSTATE
SELECT position FROM eventstore.projection_catchup('audit_log', '');
\echo :LAST_ERROR_SQLSTATE

-- None of these touched a checkpoint.
SELECT projection, instance_id, checkpoint
  FROM eventstore.projection_states ORDER BY projection, instance_id NULLS FIRST;

--
-- Catch-up after a push in the same transaction is refused (55000): it would wait for
-- every writer in flight, this transaction among them, and could deadlock with another
-- one doing the same. Commit the push first.
--

BEGIN;
SELECT position FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u5', 'user.added')]);
SELECT position FROM eventstore.projection_catchup('audit_log');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

BEGIN;
SELECT position FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u5', 'user.added')]);
SELECT position FROM eventstore.projection_catchup('user_list', 'acme');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- Also for a projection of another instance: two transactions that each pushed to one
-- instance and then caught up on the other's would deadlock. (Only the SQLSTATE is shown.)
BEGIN;
SELECT position FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u5', 'user.added')]);
\set VERBOSITY sqlstate
SELECT position FROM eventstore.projection_catchup('user_list', 'globex');
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- The rolled-back pushes left nothing, and the checkpoints are unchanged.
SELECT count(*) AS u5_events FROM eventstore.events WHERE aggregate_id = 'u5';
SELECT projection, instance_id, checkpoint
  FROM eventstore.projection_states ORDER BY projection, instance_id NULLS FIRST;
