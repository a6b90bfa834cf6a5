-- push: appending events.
--
-- eventstore.push(commands) appends a batch of commands atomically and returns one row per
-- event written. Every aggregate (instance_id, aggregate_type, aggregate_id) numbers its
-- events 1, 2, 3... (sequence); every event gets a global position in the order positions
-- are drawn. A command is built with eventstore.command(...), or passed as JSON.
TRUNCATE eventstore.events, eventstore.projection_states;
ALTER SEQUENCE eventstore.position_seq RESTART;

-- A batch of two events for one new aggregate: sequences 1 and 2, positions 1 and 2,
-- in_tx_order counts the events of the call from 0.
SELECT instance_id, aggregate_type, aggregate_id, sequence, position, in_tx_order, owner
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.added', '{"name": "Ada"}'),
         eventstore.command('acme', 'user', 'u1', 'user.renamed', '{"name": "Ada L."}')]);

-- The next push to the same aggregate continues its sequence (3), and positions continue too.
SELECT aggregate_id, sequence, position, in_tx_order
  FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u1', 'user.deactivated')]);

-- One batch may touch several aggregates, even in several instances: each aggregate keeps
-- its own sequence, positions follow the order of the commands.
SELECT instance_id, aggregate_type, aggregate_id, sequence, position, in_tx_order
  FROM eventstore.push(ARRAY[
         eventstore.command('acme',   'user',  'u2', 'user.added'),
         eventstore.command('acme',   'user',  'u1', 'user.reactivated'),
         eventstore.command('globex', 'user',  'u1', 'user.added'),
         eventstore.command('acme',   'order', 'o1', 'order.placed', '{"total": 42}'),
         eventstore.command('acme',   'user',  'u2', 'user.renamed')]);

-- Every event of one push carries the same created_at.
SELECT count(*) AS events, count(DISTINCT created_at) AS timestamps
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u3', 'user.added'),
         eventstore.command('acme', 'user', 'u4', 'user.added')]);

-- What was stored, in position order.
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type, payload
  FROM eventstore.events ORDER BY position;

-- eventstore.command(...) builds the composite; only the first four arguments are required.
-- Defaults: payload NULL, revision 1, creator NULL (push stores current_user), owner NULL
-- (push stores the aggregate's owner), expected_sequence NULL (no check).
SELECT eventstore.command('acme', 'user', 'u5', 'user.added');

-- The others are named arguments.
SELECT eventstore.command('acme', 'user', 'u5', 'user.added',
                          payload => '{"name": "Grace"}', revision => 2,
                          creator => 'signup-service', owner => 'org-7',
                          expected_sequence => 0);

-- Defaults as push stores them: revision 1, creator = current_user, owner = the instance
-- for a new aggregate.
SELECT aggregate_id, sequence, owner
  FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u6', 'user.added')]);
SELECT revision, creator = current_user AS creator_is_current_user, owner
  FROM eventstore.events WHERE aggregate_id = 'u6';

-- An explicit revision, creator and owner are stored as given.
SELECT aggregate_id, sequence, owner
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u7', 'user.added', revision => 2,
                            creator => 'signup-service', owner => 'org-7')]);

-- Without an owner, later events keep the aggregate's owner, not the instance.
SELECT aggregate_id, sequence, owner
  FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u7', 'user.renamed')]);

-- A new owner given in a batch is the owner of the later events of that batch too.
SELECT aggregate_id, sequence, owner
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u7', 'user.transferred', owner => 'org-8'),
         eventstore.command('acme', 'user', 'u7', 'user.renamed')]);

-- (creator shown as 'current_user' where push filled it in.)
SELECT sequence, event_type, revision,
       CASE WHEN creator = current_user THEN 'current_user' ELSE creator END AS creator, owner
  FROM eventstore.events WHERE aggregate_id = 'u7' ORDER BY sequence;

-- expected_sequence: optimistic concurrency. 0 means "the aggregate must not exist yet".
SELECT aggregate_id, sequence
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'account', 'a1', 'account.opened', expected_sequence => 0)]);

-- Otherwise it is the aggregate's current sequence, as the caller last read it.
SELECT aggregate_id, sequence
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'account', 'a1', 'account.credited', expected_sequence => 1)]);

-- Within a batch, each command is checked against the sequence the earlier commands reached.
SELECT aggregate_id, sequence
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'account', 'a1', 'account.debited', expected_sequence => 2),
         eventstore.command('acme', 'account', 'a1', 'account.credited', expected_sequence => 3)]);

-- A mismatch is refused with SQLSTATE ES409, eventstore's own (not 40001: re-sending the same
-- command cannot succeed; reload the aggregate and decide again), and a detail a driver parses
-- as JSON: the command, the aggregate, the expected and the actual sequence.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT aggregate_id, sequence
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'account', 'a1', 'account.debited', expected_sequence => 2)]);
\echo :LAST_ERROR_SQLSTATE

-- 0 for an aggregate that already exists is a mismatch too.
SELECT aggregate_id, sequence
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'account', 'a1', 'account.opened', expected_sequence => 0)]);
\echo :LAST_ERROR_SQLSTATE

-- A mismatch anywhere in the batch refuses the whole batch: a1 is still at 4.
SELECT aggregate_id, sequence
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'account', 'a2', 'account.opened', expected_sequence => 0),
         eventstore.command('acme', 'account', 'a1', 'account.closed', expected_sequence => 3)]);
\echo :LAST_ERROR_SQLSTATE
SELECT aggregate_id, max(sequence)
  FROM eventstore.events WHERE aggregate_type = 'account' GROUP BY aggregate_id;

-- The JSON form: for drivers that cannot bind a composite array, push takes a JSON array of
-- objects with the fields of eventstore.command (omitted fields take their defaults).
-- The same three commands in each form, each pushed into an empty log, give the same rows.
CREATE TEMP VIEW stored AS
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type, revision,
       payload, creator, owner, in_tx_order
  FROM eventstore.events;

TRUNCATE eventstore.events;
ALTER SEQUENCE eventstore.position_seq RESTART;
CREATE TEMP TABLE returned_by_composite AS
SELECT instance_id, aggregate_type, aggregate_id, sequence, position, in_tx_order, owner
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'order', 'o1', 'order.placed',
                            '{"total": 19.99, "rate": 1.0842712345678901234, "ref": 12345678901234567890123}',
                            expected_sequence => 0),
         eventstore.command('acme', 'order', 'o1', 'order.paid', revision => 2,
                            creator => 'billing'),
         eventstore.command('globex', 'order', 'o1', 'order.placed', owner => 'globex-eu')]);
CREATE TEMP TABLE stored_by_composite AS TABLE stored;

-- The jsonb form.
TRUNCATE eventstore.events;
ALTER SEQUENCE eventstore.position_seq RESTART;
CREATE TEMP TABLE returned_by_jsonb AS
SELECT instance_id, aggregate_type, aggregate_id, sequence, position, in_tx_order, owner
  FROM eventstore.push('[
         {"instance_id": "acme", "aggregate_type": "order", "aggregate_id": "o1",
          "event_type": "order.placed",
          "payload": {"total": 19.99, "rate": 1.0842712345678901234, "ref": 12345678901234567890123},
          "expected_sequence": 0},
         {"instance_id": "acme", "aggregate_type": "order", "aggregate_id": "o1",
          "event_type": "order.paid", "revision": 2, "creator": "billing"},
         {"instance_id": "globex", "aggregate_type": "order", "aggregate_id": "o1",
          "event_type": "order.placed", "owner": "globex-eu"}]'::jsonb);
CREATE TEMP TABLE stored_by_jsonb AS TABLE stored;

-- The text form: an untyped literal (or an untyped bind parameter) needs no cast.
TRUNCATE eventstore.events;
ALTER SEQUENCE eventstore.position_seq RESTART;
PREPARE push_json AS
SELECT instance_id, aggregate_type, aggregate_id, sequence, position, in_tx_order, owner
  FROM eventstore.push($1);
CREATE TEMP TABLE returned_by_text AS
EXECUTE push_json('[
         {"instance_id": "acme", "aggregate_type": "order", "aggregate_id": "o1",
          "event_type": "order.placed",
          "payload": {"total": 19.99, "rate": 1.0842712345678901234, "ref": 12345678901234567890123},
          "expected_sequence": 0},
         {"instance_id": "acme", "aggregate_type": "order", "aggregate_id": "o1",
          "event_type": "order.paid", "revision": 2, "creator": "billing"},
         {"instance_id": "globex", "aggregate_type": "order", "aggregate_id": "o1",
          "event_type": "order.placed", "owner": "globex-eu"}]');
CREATE TEMP TABLE stored_by_text AS TABLE stored;

-- What each form returned and stored (positions restarted each time, so all columns compare).
SELECT * FROM returned_by_composite ORDER BY position;
SELECT position, instance_id, aggregate_id, sequence, event_type, revision, payload,
       CASE WHEN creator = current_user THEN 'current_user' ELSE creator END AS creator, owner
  FROM stored_by_composite ORDER BY position;
SELECT (SELECT jsonb_agg(to_jsonb(r) ORDER BY position) FROM returned_by_jsonb r)
     = (SELECT jsonb_agg(to_jsonb(r) ORDER BY position) FROM returned_by_composite r)
         AS jsonb_returns_the_same,
       (SELECT jsonb_agg(to_jsonb(s) ORDER BY position) FROM stored_by_jsonb s)
     = (SELECT jsonb_agg(to_jsonb(s) ORDER BY position) FROM stored_by_composite s)
         AS jsonb_stores_the_same,
       (SELECT jsonb_agg(to_jsonb(r) ORDER BY position) FROM returned_by_text r)
     = (SELECT jsonb_agg(to_jsonb(r) ORDER BY position) FROM returned_by_composite r)
         AS text_returns_the_same,
       (SELECT jsonb_agg(to_jsonb(s) ORDER BY position) FROM stored_by_text s)
     = (SELECT jsonb_agg(to_jsonb(s) ORDER BY position) FROM stored_by_composite s)
         AS text_stores_the_same;

-- Payload numbers are kept exactly as given, in every form (no rounding through floats).
SELECT 'composite' AS form, payload FROM stored_by_composite WHERE payload IS NOT NULL
UNION ALL
SELECT 'jsonb', payload FROM stored_by_jsonb WHERE payload IS NOT NULL
UNION ALL
SELECT 'text', payload FROM stored_by_text WHERE payload IS NOT NULL
ORDER BY form;

-- Event ids and metadata (G14). A command may carry an event id (a uuid, unique across the
-- store) and metadata (a JSON object: correlation_id, causation_id, trace_id...); push returns
-- the id.
TRUNCATE eventstore.events;
ALTER SEQUENCE eventstore.position_seq RESTART;
PREPARE place_and_pay AS
SELECT aggregate_id, sequence, position, in_tx_order, id
  FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'order', 'o2', 'order.placed', '{"total": 5}',
                            id => '00000000-0000-4000-8000-000000000001',
                            metadata => '{"correlation_id": "req-1", "causation_id": "cmd-1"}'),
         eventstore.command('acme', 'order', 'o2', 'order.paid',
                            id => '00000000-0000-4000-8000-000000000002',
                            metadata => '{"correlation_id": "req-1",
                                          "causation_id": "00000000-0000-4000-8000-000000000001"}')]);
EXECUTE place_and_pay;

-- A retry (after a lost connection or a timeout) carrying the same ids returns the rows the
-- first push returned and writes nothing, in either form.
EXECUTE place_and_pay;
SELECT aggregate_id, sequence, position, in_tx_order, id
  FROM eventstore.push('[
         {"instance_id": "acme", "aggregate_type": "order", "aggregate_id": "o2",
          "event_type": "order.placed", "payload": {"total": 5},
          "id": "00000000-0000-4000-8000-000000000001",
          "metadata": {"correlation_id": "req-1", "causation_id": "cmd-1"}},
         {"instance_id": "acme", "aggregate_type": "order", "aggregate_id": "o2",
          "event_type": "order.paid", "id": "00000000-0000-4000-8000-000000000002",
          "metadata": {"correlation_id": "req-1",
                       "causation_id": "00000000-0000-4000-8000-000000000001"}}]');
SELECT count(*) AS events FROM eventstore.events;

-- Catch-up hands out the id and the metadata with each event.
BEGIN;
SELECT position, event_type, id, metadata FROM eventstore.projection_catchup('ids', 'acme');
ROLLBACK;

-- An empty JSON array as payload ([], what PHP's json_encode([]) writes for an empty map) is
-- stored as {}, in both forms.
SELECT sequence FROM eventstore.push(ARRAY[eventstore.command('acme', 'cart', 'c1', 'cart.emptied', '[]')]);
SELECT sequence FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "cart",
                                       "aggregate_id": "c1", "event_type": "cart.emptied", "payload": []}]');
SELECT sequence, payload FROM eventstore.events WHERE aggregate_id = 'c1' ORDER BY sequence;

-- Reading one aggregate (granted to writers, readers and projectors): forward in sequence
-- order from a sequence, at most max_count events; and its current sequence (0 when new).
SELECT sequence, event_type, id FROM eventstore.read_aggregate('acme', 'order', 'o2');
SELECT sequence, event_type FROM eventstore.read_aggregate('acme', 'order', 'o2', from_sequence => 2, max_count => 1);
SELECT eventstore.aggregate_sequence('acme', 'order', 'o2') AS o2,
       eventstore.aggregate_sequence('acme', 'order', 'o9') AS o9;
