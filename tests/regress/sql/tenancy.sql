-- tenancy: the three roles, and a session bound to a tenant (README "Security and tenancy").
--
-- A role subject to row-level security on eventstore.events (not the owner, not a superuser,
-- no BYPASSRLS) is bound to the tenant named by the setting eventstore.tenant: its direct
-- reads see only that tenant's rows, and push, catch-up, the lock helpers, wait_for_events and
-- next_number refuse any other instance with 42501, before anything is locked or written. An
-- operator's BYPASSRLS role sees every tenant. Here the roles are taken with SET ROLE in one
-- session; tests/security.rs checks the same over login connections, and the grants exactly.
TRUNCATE eventstore.events, eventstore.projection_states, eventstore.counters;
ALTER SEQUENCE eventstore.position_seq RESTART;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- Two tenants, two events each (written as the superuser, who sees every tenant).
SELECT position, instance_id, aggregate_id
  FROM eventstore.push(ARRAY[
         eventstore.command('acme',   'invoice', 'inv-1', 'invoice.created'),
         eventstore.command('globex', 'invoice', 'inv-1', 'invoice.created'),
         eventstore.command('acme',   'invoice', 'inv-1', 'invoice.paid'),
         eventstore.command('globex', 'invoice', 'inv-2', 'invoice.created')]);

--
-- The roles
--

-- CREATE EXTENSION made three NOLOGIN roles (they belong to the cluster and outlive the
-- extension); grant them to your application's login roles.
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'eventstore\_%' ORDER BY rolname;

-- What each may run (PUBLIC: nothing).
SELECT grantee, string_agg(p.proname, ', ' ORDER BY p.proname) AS may_execute
  FROM unnest(ARRAY['eventstore_writer', 'eventstore_reader', 'eventstore_projector', 'public'])
       AS grantee
  LEFT JOIN pg_proc p ON p.pronamespace = 'eventstore'::regnamespace
                     AND has_function_privilege(grantee, p.oid, 'EXECUTE')
 GROUP BY grantee ORDER BY grantee;

-- What each may do with the tables and the view: read, and the projector may delete a
-- checkpoint (to rebuild a read model). Nobody may write: push, catch-up and next_number run
-- their statements as the extension's owner.
SELECT grantee, c.relname,
       has_table_privilege(grantee, c.oid, 'SELECT') AS "select",
       has_table_privilege(grantee, c.oid, 'INSERT') OR has_table_privilege(grantee, c.oid, 'UPDATE')
         AS "insert or update",
       has_table_privilege(grantee, c.oid, 'DELETE') AS "delete"
  FROM unnest(ARRAY['eventstore_writer', 'eventstore_reader', 'eventstore_projector', 'public'])
       AS grantee,
       pg_class c
 WHERE c.relnamespace = 'eventstore'::regnamespace AND c.relkind IN ('r', 'v')
 ORDER BY grantee, c.relname;

-- An application role with all three, an operator that reads with BYPASSRLS, and a role
-- with none of them.
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_app, regress_ops, regress_stranger;
RESET client_min_messages;
CREATE ROLE regress_app IN ROLE eventstore_writer, eventstore_reader, eventstore_projector;
CREATE ROLE regress_ops BYPASSRLS IN ROLE eventstore_reader;
CREATE ROLE regress_stranger;

--
-- Not bound: eventstore.tenant unset
--

SET ROLE regress_app;
-- Direct reads see no rows at all.
SELECT count(*) AS events_seen FROM eventstore.events;
-- Every call is refused, with a hint.
SELECT * FROM eventstore.push(ARRAY[eventstore.command('acme', 'invoice', 'inv-9', 'invoice.created')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.projection_catchup('totals');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.next_number('invoice');
\echo :LAST_ERROR_SQLSTATE
-- An empty value binds to nothing either.
SET eventstore.tenant = '';
SELECT eventstore.lock_writer('acme');
\echo :LAST_ERROR_SQLSTATE

--
-- Bound to acme
--

SET eventstore.tenant = 'acme';

-- Direct reads: acme's events only, even without a WHERE.
SELECT position, instance_id, aggregate_id, event_type FROM eventstore.events ORDER BY position;

-- Pushes into its own tenant work.
SELECT instance_id, aggregate_id, sequence, position
  FROM eventstore.push(ARRAY[eventstore.command('acme', 'invoice', 'inv-2', 'invoice.created')]);

-- A command for another tenant is refused, the detail naming the command and both tenants,
-- and nothing of the batch is written (acme's first command included).
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme',   'invoice', 'inv-3', 'invoice.created'),
         eventstore.command('globex', 'invoice', 'inv-3', 'invoice.created')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "globex", "aggregate_type": "invoice",
                                 "aggregate_id": "inv-3", "event_type": "invoice.created"}]'::jsonb);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS acme_events FROM eventstore.events;

-- A catch-up of its own tenant works. A global catch-up (instance_id NULL) is its tenant's
-- catch-up: the same checkpoint row, lock and batch as naming the tenant.
BEGIN;
SELECT position, instance_id, event_type FROM eventstore.projection_catchup('totals', batch_size => 2);
COMMIT;
SELECT position, instance_id, event_type FROM eventstore.projection_catchup('totals', 'acme');
SELECT projection, instance_id, checkpoint FROM eventstore.projection_states;
-- projection_status is security_invoker: the same filter applies through the view.
SELECT projection, instance_id, checkpoint, events_behind FROM eventstore.projection_status;

-- Another tenant's catch-up, locks, wait and counters are refused.
SELECT * FROM eventstore.projection_catchup('totals', 'globex');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.lock_projection('totals', 'globex');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.lock_writer('globex');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.await_writers('globex');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.wait_for_events('totals', 'globex', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.next_number('invoice', 'globex');
\echo :LAST_ERROR_SQLSTATE

-- Its own are fine; for next_number the default tenant '' means its own tenant.
BEGIN;
SELECT eventstore.lock_projection('totals', 'acme');
SELECT eventstore.lock_writer('acme');
COMMIT;
-- (false: the projection is caught up; wait_for_events.sql shows the rest)
SELECT eventstore.wait_for_events('totals', 'acme', 0);
SELECT eventstore.next_number('invoice');
SELECT eventstore.next_number('invoice', 'acme');

-- No table is writable directly, whatever the tenant; nor the position sequence.
INSERT INTO eventstore.events SELECT * FROM eventstore.events LIMIT 0;
\echo :LAST_ERROR_SQLSTATE
UPDATE eventstore.projection_states SET checkpoint = 0;
\echo :LAST_ERROR_SQLSTATE
UPDATE eventstore.counters SET value = 0;
\echo :LAST_ERROR_SQLSTATE
SELECT nextval('eventstore.position_seq');
\echo :LAST_ERROR_SQLSTATE

-- Behind a transaction-pooling PgBouncer, bind per transaction: set_config(..., true) is SET
-- LOCAL, and the session's own setting is back after COMMIT.
BEGIN;
SELECT set_config('eventstore.tenant', 'globex', true);
SELECT DISTINCT instance_id FROM eventstore.events;
COMMIT;
SELECT DISTINCT instance_id FROM eventstore.events;
RESET eventstore.tenant;

--
-- A role with none of the three: PostgreSQL's own refusals (also 42501)
--

SET ROLE regress_stranger;
SET eventstore.tenant = 'acme';
SELECT count(*) FROM eventstore.events;
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.next_number('invoice');
\echo :LAST_ERROR_SQLSTATE
RESET eventstore.tenant;

--
-- An operator: BYPASSRLS sees every tenant, with or without eventstore.tenant
--

SET ROLE regress_ops;
SELECT instance_id, count(*) FROM eventstore.events GROUP BY instance_id ORDER BY instance_id;
SET eventstore.tenant = 'acme';
SELECT instance_id, count(*) FROM eventstore.events GROUP BY instance_id ORDER BY instance_id;
RESET eventstore.tenant;
-- eventstore_reader only: no push, no catch-up.
SELECT * FROM eventstore.projection_catchup('totals');
\echo :LAST_ERROR_SQLSTATE

RESET ROLE;
-- The superuser sees both tenants; the refused batches wrote nothing. The bound session's
-- next_number('invoice') counted acme's counter.
SELECT instance_id, count(*) FROM eventstore.events GROUP BY instance_id ORDER BY instance_id;
SELECT scope, tenant, value FROM eventstore.counters;
DROP ROLE regress_app, regress_ops, regress_stranger;
