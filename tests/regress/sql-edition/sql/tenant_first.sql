-- tenant_first, SQL edition: the calls of one tenant, the instance first and required
-- (README "Running on Citus"), as in tests/regress/sql/tenant_first.sql; the edition's lock
-- keys have objsubid 1, and it has no distribute().
TRUNCATE eventstore.events, eventstore.projection_states;
ALTER SEQUENCE eventstore.position_seq RESTART;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- push(instance_id, commands), array and jsonb (and an untyped JSON text) forms.
SELECT instance_id, aggregate_id, sequence, position
  FROM eventstore.push('acme', ARRAY[eventstore.command('acme', 'order', 'o1', 'placed'),
                                     eventstore.command('acme', 'order', 'o2', 'placed')]);
SELECT instance_id, aggregate_id, sequence, position
  FROM eventstore.push('acme', '[{"instance_id": "acme", "aggregate_type": "order",
                                  "aggregate_id": "o1", "event_type": "paid"}]'::jsonb);
SELECT instance_id, aggregate_id, sequence, position
  FROM eventstore.push('globex', '[{"instance_id": "globex", "aggregate_type": "order",
                                    "aggregate_id": "g1", "event_type": "placed"}]');

-- A command for another tenant is refused (22023), and nothing is written.
SELECT * FROM eventstore.push('acme', ARRAY[eventstore.command('acme', 'order', 'o1', 'shipped'),
                                            eventstore.command('globex', 'order', 'g1', 'shipped')]);
SELECT * FROM eventstore.push('acme', '[{"instance_id": "globex", "aggregate_type": "order",
                                         "aggregate_id": "g1", "event_type": "shipped"}]'::jsonb);
SELECT count(*) FROM eventstore.events;
-- The instance is required.
SELECT * FROM eventstore.push(NULL::text, ARRAY[eventstore.command('acme', 'order', 'o1', 'x')]);
SELECT * FROM eventstore.tenant_catchup(NULL, 'totals');
SELECT eventstore.tenant_lock_projection(NULL, 'totals');
SELECT eventstore.tenant_await_writers(NULL);
SELECT eventstore.tenant_wait_for_events(NULL, 'totals', 0);

-- tenant_catchup is projection_catchup for the tenant: the same checkpoint.
SELECT position, aggregate_id, event_type FROM eventstore.tenant_catchup('acme', 'totals', 2);
SELECT position, aggregate_id, event_type FROM eventstore.projection_catchup('totals', 'acme');
SELECT count(*) FROM eventstore.tenant_catchup('acme', 'totals');
SELECT projection, instance_id, checkpoint FROM eventstore.projection_states ORDER BY 1, 2;

-- The lock, the horizon and the wait.
BEGIN;
SELECT eventstore.tenant_lock_projection('globex', 'totals');
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1;
COMMIT;
SELECT eventstore.tenant_await_writers('acme');
SELECT eventstore.tenant_wait_for_events('globex', 'totals', 0);
SELECT eventstore.tenant_wait_for_events('acme', 'totals', 0);

-- eventstore.distribute() is native only: the SQL edition has none.
SELECT count(*) FROM pg_proc WHERE proname = 'distribute' AND pronamespace = 'eventstore'::regnamespace;
