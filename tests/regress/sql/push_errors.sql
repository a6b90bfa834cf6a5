-- push_errors: bad input is refused before anything is written (G9).
--
-- Each refusal has a SQLSTATE, a message, a detail naming the command ("Command 2 of the
-- batch: ...") and, where it helps, a hint. After each failing statement the SQLSTATE is
-- echoed:
--   22004 null_value_not_allowed   a required value is NULL or missing
--   22023 invalid_parameter_value  empty, malformed, wrong type, out of range
--   22001 string_data_right_truncation  an identifier over 512 bytes
--   54000 program_limit_exceeded   a batch over 10000 commands, a payload over 1 MiB
--   ES422 (eventstore's own)         an event id already stored, in a push that is not an exact replay
TRUNCATE eventstore.events, eventstore.projection_states;
ALTER SEQUENCE eventstore.position_seq RESTART;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- One event, so that "writes nothing" is checked against a log that is not empty.
SELECT aggregate_id, sequence
  FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u1', 'user.added')]);

--
-- The batch
--

-- A NULL array.
SELECT * FROM eventstore.push(NULL::eventstore.command[]);
\echo :LAST_ERROR_SQLSTATE

-- A NULL jsonb.
SELECT * FROM eventstore.push(NULL::jsonb);
\echo :LAST_ERROR_SQLSTATE

-- An empty array, in both forms.
SELECT * FROM eventstore.push(ARRAY[]::eventstore.command[]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[]');
\echo :LAST_ERROR_SQLSTATE

-- A NULL element: the detail says which.
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed'),
         NULL]);
\echo :LAST_ERROR_SQLSTATE

-- More than 10000 commands, in both forms.
SELECT * FROM eventstore.push(
         (SELECT array_agg(eventstore.command('acme', 'user', 'bulk-' || i, 'user.added'))
            FROM generate_series(1, 10001) i));
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(
         (SELECT jsonb_agg(jsonb_build_object('instance_id', 'acme', 'aggregate_type', 'user',
                                              'aggregate_id', 'bulk-' || i,
                                              'event_type', 'user.added'))
            FROM generate_series(1, 10001) i));
\echo :LAST_ERROR_SQLSTATE

-- Exactly 10000 is accepted (rolled back here).
BEGIN;
SELECT count(*) FROM eventstore.push(
         (SELECT array_agg(eventstore.command('acme', 'user', 'bulk-' || i, 'user.added'))
            FROM generate_series(1, 10000) i));
ROLLBACK;

--
-- Identifiers: instance_id, aggregate_type, aggregate_id, event_type are required;
-- creator and owner are optional. None may be empty, over 512 bytes, or hold control
-- characters.
--

-- NULL required fields.
SELECT * FROM eventstore.push(ARRAY[eventstore.command(NULL, 'user', 'u1', 'user.renamed')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[eventstore.command('acme', NULL, 'u1', 'user.renamed')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', NULL, 'user.renamed')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u1', NULL)]);
\echo :LAST_ERROR_SQLSTATE

-- Empty required fields.
SELECT * FROM eventstore.push(ARRAY[eventstore.command('', 'user', 'u1', 'user.renamed')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[eventstore.command('acme', '', 'u1', 'user.renamed')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', '', 'user.renamed')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u1', '')]);
\echo :LAST_ERROR_SQLSTATE

-- Empty optional fields (NULL is their default; empty is refused).
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', creator => '')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', owner => '')]);
\echo :LAST_ERROR_SQLSTATE

-- Over 512 bytes. The limit is in bytes: 257 two-byte characters are too many.
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', repeat('x', 513), 'user.added')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', repeat('é', 257), 'user.added')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', owner => repeat('o', 600))]);
\echo :LAST_ERROR_SQLSTATE

-- Exactly 512 bytes is accepted (rolled back here).
BEGIN;
SELECT length(aggregate_id), sequence
  FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', repeat('x', 512), 'user.added')]);
ROLLBACK;

-- Control characters: a newline, a tab, \x01.
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', E'u1\n', 'user.renamed')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', E'user\trenamed')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command(E'acme\x01', 'user', 'u1', 'user.renamed')]);
\echo :LAST_ERROR_SQLSTATE

--
-- Payload: NULL or a JSON object of at most 1 MiB.
--

-- An array.
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', '["Ada"]')]);
\echo :LAST_ERROR_SQLSTATE

-- A scalar: a string, a number, JSON null.
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', '"Ada"')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', '42')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', 'null')]);
\echo :LAST_ERROR_SQLSTATE

-- Over 1 MiB (1048576 bytes of jsonb).
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed',
                            jsonb_build_object('blob', repeat('x', 1048576)))]);
\echo :LAST_ERROR_SQLSTATE

--
-- revision (1 to 32767) and expected_sequence (0 or more)
--

SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', revision => 0)]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', revision => -1)]);
\echo :LAST_ERROR_SQLSTATE

-- The constructor checks the revision as push does (22023): 1 to 32767, stored as a smallint.
SELECT eventstore.command('acme', 'user', 'u1', 'user.renamed', revision => 32768);
\echo :LAST_ERROR_SQLSTATE

SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed', expected_sequence => -1)]);
\echo :LAST_ERROR_SQLSTATE

--
-- The JSON form
--

-- Not an array: an object, a string, JSON null.
SELECT * FROM eventstore.push('{"instance_id": "acme"}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('"acme"');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('null');
\echo :LAST_ERROR_SQLSTATE

-- Not JSON at all (refused by the jsonb input function).
SELECT * FROM eventstore.push('acme, user, u1');
\echo :LAST_ERROR_SQLSTATE

-- An element that is not an object: a number, an array, null.
SELECT * FROM eventstore.push('[42]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[["acme", "user", "u1", "user.renamed"]]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": "u1", "event_type": "user.renamed"}, null]');
\echo :LAST_ERROR_SQLSTATE

-- A required field missing, or null.
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "event_type": "user.renamed"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": "u1", "event_type": null}]');
\echo :LAST_ERROR_SQLSTATE

-- An unknown field (a misspelt one is never silently ignored).
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": "u1", "event_type": "user.renamed",
                                 "expected_seq": 1}]');
\echo :LAST_ERROR_SQLSTATE

-- Wrong JSON types: an identifier that is a number, a revision that is a string or not an
-- integer, an expected_sequence that is a boolean, a payload that is a string.
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": 1, "event_type": "user.renamed"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": "u1", "event_type": "user.renamed",
                                 "revision": "2"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": "u1", "event_type": "user.renamed",
                                 "revision": 1.5}]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": "u1", "event_type": "user.renamed",
                                 "expected_sequence": true}]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": "u1", "event_type": "user.renamed",
                                 "payload": "Ada"}]');
\echo :LAST_ERROR_SQLSTATE

-- Out of range: revision, expected_sequence.
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": "u1", "event_type": "user.renamed",
                                 "revision": 40000}]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user",
                                 "aggregate_id": "u1", "event_type": "user.renamed",
                                 "expected_sequence": -1}]');
\echo :LAST_ERROR_SQLSTATE

--
-- One bad command among good ones: the whole batch is refused, nothing is written.
--

SELECT count(*) AS events_before FROM eventstore.events;

SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u1', 'user.renamed'),
         eventstore.command('acme', 'user', 'u2', 'user.added'),
         eventstore.command('acme', 'user', 'u3', 'user.added', '[1, 2]'),
         eventstore.command('acme', 'user', 'u4', 'user.added')]);
\echo :LAST_ERROR_SQLSTATE

SELECT * FROM eventstore.push('[
         {"instance_id": "acme", "aggregate_type": "user", "aggregate_id": "u1",
          "event_type": "user.renamed"},
         {"instance_id": "acme", "aggregate_type": "user", "aggregate_id": "u2",
          "event_type": "user.added"},
         {"instance_id": "acme", "aggregate_type": "user", "aggregate_id": "",
          "event_type": "user.added"}]');
\echo :LAST_ERROR_SQLSTATE

-- Still the one event from the start.
SELECT count(*) AS events_after FROM eventstore.events;
SELECT instance_id, aggregate_type, aggregate_id, sequence, event_type FROM eventstore.events;

-- The refused calls left the session usable: the next good push continues at sequence 2.
SELECT aggregate_id, sequence
  FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u1', 'user.renamed')]);

--
-- Event ids: a push carrying a stored id must repeat the push that stored it exactly; anything
-- else is refused with ES422 and writes nothing.
--

SELECT sequence, id FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u7', 'user.added', '{"name": "Ada"}',
                            id => '00000000-0000-4000-8000-0000000000a1'),
         eventstore.command('acme', 'user', 'u7', 'user.renamed',
                            id => '00000000-0000-4000-8000-0000000000a2')]);
SELECT count(*) AS events_before FROM eventstore.events;

-- The same id with other content.
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u7', 'user.added', '{"name": "Bob"}',
                            id => '00000000-0000-4000-8000-0000000000a1')]);
\echo :LAST_ERROR_SQLSTATE

-- A partial overlap: one stored id, one new.
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u7', 'user.added', '{"name": "Ada"}',
                            id => '00000000-0000-4000-8000-0000000000a1'),
         eventstore.command('acme', 'user', 'u7', 'user.removed',
                            id => '00000000-0000-4000-8000-0000000000a3')]);
\echo :LAST_ERROR_SQLSTATE

-- A stored id beside a command without one.
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u7', 'user.added', '{"name": "Ada"}',
                            id => '00000000-0000-4000-8000-0000000000a1'),
         eventstore.command('acme', 'user', 'u7', 'user.renamed')]);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS events_after FROM eventstore.events;

-- One id twice in a batch, an id that is not a UUID, metadata that is not an object: 22023.
SELECT * FROM eventstore.push(ARRAY[
         eventstore.command('acme', 'user', 'u8', 'user.added', id => '00000000-0000-4000-8000-0000000000b1'),
         eventstore.command('acme', 'user', 'u9', 'user.added', id => '00000000-0000-4000-8000-0000000000b1')]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user", "aggregate_id": "u8",
                                 "event_type": "user.added", "id": "not-a-uuid"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push('[{"instance_id": "acme", "aggregate_type": "user", "aggregate_id": "u8",
                                 "event_type": "user.added", "id": 42}]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.push(ARRAY[eventstore.command('acme', 'user', 'u8', 'user.added', metadata => '"trace"')]);
\echo :LAST_ERROR_SQLSTATE

-- read_aggregate's bad arguments.
SELECT * FROM eventstore.read_aggregate('acme', 'user', 'u7', max_count => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM eventstore.read_aggregate('acme', 'user', 'u7', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.aggregate_sequence('acme', '', 'u7');
\echo :LAST_ERROR_SQLSTATE
