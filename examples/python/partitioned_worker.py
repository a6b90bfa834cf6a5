"""Partitioned projection worker with poison events (psycopg 3): keeps the read model `invoices`.

The projection is split into partitions (eventstore.set_partitions): every invoice belongs to
one partition, each partition has its own checkpoint and lock, and
eventstore.partition_catchup hands out the next batch of a free partition, passing over busy
ones, so copies of this worker run side by side with no coordinator. A batch is one
transaction: its events are applied in order and the partition's checkpoint moves with them
(G5, G12).

A handler that fails on an event (a poison event: here, an amount that is not a number) rolls
the batch back and reports the failure with eventstore.projection_failed in a new transaction,
which the rollback cannot undo. The partition's next batches stop before that event, then hand
it out alone; after max_attempts failures (eventstore.set_poison_policy, default 3) the
catch-up parks it in eventstore.parked_events and goes on. With hold_aggregate (the default)
the invoice's later events are parked behind it. No savepoint anywhere (G8).

The worker stops when a catch-up returns no rows and projection_status shows no partition of
the tenant behind (the other workers have committed theirs), then prints the read model.

    python partitioned_worker.py [--name A] [--batch-size 4] [--tenants acme,globex]

Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). The read model goes to
stdout, one line per invoice (as worker.py prints it); a summary goes to stderr.
"""
import argparse
import sys

import psycopg

from worker import HANDLERS, READ_MODEL, HandlerError

CAUGHT_UP = """
SELECT coalesce(bool_and(events_behind = 0), false)
  FROM eventstore.projection_status WHERE projection = 'invoices' AND instance_id = %s"""


def apply(conn, tenant, invoice, sequence, event_type, payload):
    """The handler: one statement per event, in the batch's transaction (see worker.py)."""
    amount = (payload or {}).get("amount_cents", 0)
    if event_type not in HANDLERS or not isinstance(amount, int):
        raise HandlerError(f"{tenant}/{invoice} seq {sequence}: cannot handle {event_type} {payload}")
    params = {"tenant": tenant, "invoice": invoice, "sequence": sequence, "amount": amount}
    if conn.execute(HANDLERS[event_type], params).rowcount != 1:
        raise HandlerError(f"{tenant}/{invoice} seq {sequence}: not the invoice's next event")


def caught_up(conn, tenant):
    return conn.execute(CAUGHT_UP, [tenant]).fetchone()[0]


def work(conn, tenant, batch_size):
    while True:
        failed = None
        try:
            with conn.transaction():
                rows = conn.execute(
                    "SELECT partition, position, instance_id, aggregate_id, sequence, event_type, payload"
                    "  FROM eventstore.partition_catchup('invoices', %s, %s)", (tenant, batch_size)).fetchall()
                for partition, position, *event in rows:
                    failed = (partition, position)
                    apply(conn, *event)                   # the handler, in the batch's transaction
                failed = None
        except HandlerError as error:                     # the transaction rolled back
            conn.execute("SELECT eventstore.projection_failed('invoices', %s, %s, %s, %s)",
                         (tenant, failed[0], str(error), failed[1]))   # its own transaction: kept
            continue
        if not rows:   # nothing for this worker now: caught up, or the rest is in busy partitions
            if caught_up(conn, tenant):
                return
            conn.execute("SELECT eventstore.wait_for_events('invoices', %s, 200)", (tenant,))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="1")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--tenants", default="acme,globex")
    args = parser.parse_args()
    # autocommit: each `with conn.transaction()` is BEGIN ... COMMIT, never a savepoint (G8);
    # prepare_threshold=None: safe behind PgBouncer in transaction pooling mode.
    with psycopg.connect(autocommit=True, prepare_threshold=None) as conn:
        with conn.transaction():   # workers start together: one CREATE at a time
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('examples: invoices read model'))")
            conn.execute(READ_MODEL)
        for tenant in args.tenants.split(","):
            work(conn, tenant, args.batch_size)
        for tenant, invoice, total, lines, paid, version in conn.execute(
                "SELECT instance_id, invoice_id, total_cents, lines, paid, version"
                "  FROM invoices ORDER BY instance_id, invoice_id"):
            print(f"{tenant}/{invoice} total_cents={total} lines={lines} "
                  f"paid={str(paid).lower()} version={version}")
        print(f"worker {args.name}: caught up", file=sys.stderr)


if __name__ == "__main__":
    main()
