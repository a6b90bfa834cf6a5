-- next_number: gapless counters for human-facing numbers (invoice 1, 2, 3 per tenant).
--
-- eventstore.next_number(scope, tenant DEFAULT '') returns the next number of the counter
-- (scope, tenant): 1 for a new counter, then one more each call. The counter's lock is held
-- until the transaction ends, so concurrent callers wait their turn (tests/next_number.rs);
-- a rolled-back number is handed out again, so the committed numbers are exactly 1..N. This
-- file shows one session. For a session bound to a tenant, see tenancy.sql.
TRUNCATE eventstore.counters;
\set VERBOSITY default
\set SHOW_CONTEXT never

--
-- Counting
--

-- A new counter starts at 1 and counts up.
SELECT eventstore.next_number('invoice', 'acme');
SELECT eventstore.next_number('invoice', 'acme');
SELECT eventstore.next_number('invoice', 'acme');

-- Each scope and each tenant counts on its own.
SELECT eventstore.next_number('invoice', 'globex');
SELECT eventstore.next_number('order', 'acme');

-- The tenant defaults to '': a counter that belongs to no tenant.
SELECT eventstore.next_number('ticket');
SELECT eventstore.next_number('ticket', '');

-- Several numbers in one statement come one after the other.
SELECT n, eventstore.next_number('invoice', 'acme') AS number
  FROM generate_series(1, 3) AS n ORDER BY n;

-- The counters table holds the last number handed out.
SELECT scope, tenant, value FROM eventstore.counters ORDER BY scope, tenant;

--
-- Transactions
--

-- A rolled-back number is handed out again: no gap among committed numbers.
BEGIN;
SELECT eventstore.next_number('invoice', 'acme');
SELECT eventstore.next_number('invoice', 'acme');
ROLLBACK;
SELECT eventstore.next_number('invoice', 'acme');

-- The counter's lock (SQL edition: a bigint advisory key, objsubid 1; classid and objid hold
-- the first 8 bytes of SHA-256 over the family 17669 (4 bytes), the tenant and the scope, each
-- encoded as a 0 byte, its length in 4 bytes and its bytes) is held exclusively until the
-- transaction ends; another counter's lock is another key.
CREATE FUNCTION pg_temp.counter_key(tenant text, scope text) RETURNS oid[] LANGUAGE sql IMMUTABLE
RETURN (SELECT ARRAY[('x' || encode(substring(d FROM 1 FOR 4), 'hex'))::bit(32)::bigint::oid,
                     ('x' || encode(substring(d FROM 5 FOR 4), 'hex'))::bit(32)::bigint::oid]
          FROM sha256(int4send(17669) || '\x00'::bytea || int4send(octet_length(tenant)) || convert_to(tenant, 'UTF8') ||
                      '\x00'::bytea || int4send(octet_length(scope)) || convert_to(scope, 'UTF8')) AS d);
BEGIN;
SELECT eventstore.next_number('invoice', 'acme');
SELECT eventstore.next_number('order', 'acme');
SELECT ARRAY[l.classid, l.objid] = pg_temp.counter_key('acme', 'invoice') AS acme_invoice,
       ARRAY[l.classid, l.objid] = pg_temp.counter_key('acme', 'order')   AS acme_order,
       l.mode, l.granted
  FROM pg_locks l
 WHERE l.locktype = 'advisory' AND l.objsubid = 1
   AND l.pid = pg_backend_pid()
 ORDER BY acme_invoice DESC;
COMMIT;
SELECT count(*) AS counter_locks_after_commit
  FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 1 AND pid = pg_backend_pid();

-- The same under REPEATABLE READ and SERIALIZABLE, with no error: the counter is read with a
-- snapshot taken after its lock (a caller that waited for another under each level:
-- tests/next_number.rs).
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT eventstore.next_number('invoice', 'acme');
SELECT eventstore.next_number('invoice', 'acme');
COMMIT;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT eventstore.next_number('invoice', 'acme');
COMMIT;

-- A number drawn in the same transaction as a push commits or rolls back with it.
BEGIN;
SELECT sequence,
       eventstore.next_number('invoice', 'acme') AS invoice_number
  FROM eventstore.push(ARRAY[eventstore.command('acme', 'invoice', 'inv-next', 'invoice.created')]);
ROLLBACK;
SELECT eventstore.next_number('invoice', 'acme');

--
-- Bad arguments: refused before anything is locked or written
--

-- A NULL scope, a NULL tenant (use '' for a counter of no tenant).
SELECT eventstore.next_number(NULL, 'acme');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.next_number('invoice', NULL);
\echo :LAST_ERROR_SQLSTATE

-- An empty scope; control characters; more than 512 bytes.
SELECT eventstore.next_number('', 'acme');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.next_number(E'in\nvoice', 'acme');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.next_number('invoice', E'ac\tme');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.next_number(repeat('s', 513), 'acme');
\echo :LAST_ERROR_SQLSTATE
SELECT eventstore.next_number('invoice', repeat('t', 513));
\echo :LAST_ERROR_SQLSTATE

-- None of them wrote a counter.
SELECT scope, tenant, value FROM eventstore.counters ORDER BY scope, tenant;
