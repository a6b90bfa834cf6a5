"""Producer: appends invoice events for two tenants with eventstore.push (psycopg 3).

Each push is one call in one short transaction, as a request handler would make it: all its
events commit or none do (G1), and each aggregate gets sequences 1, 2, 3... (G2). Commands are
sent in the composite form, eventstore.push(eventstore.command[]): psycopg binds a list of
registered composites as an array. The last push shows optimistic concurrency: a stale
expected_sequence is refused with SQLSTATE ES409 (a JSON detail: expected and actual
sequence) and nothing is written.

Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). Prints one line per
event written and one per refused push.
"""
import json

import psycopg
from psycopg.types.composite import CompositeInfo, register_composite
from psycopg.types.json import Jsonb

TENANTS = {"acme": 100, "globex": 7}  # tenant -> price unit in cents


def connect():
    # autocommit: every transaction is an explicit `with conn.transaction()` (BEGIN ... COMMIT),
    # never a savepoint (G8). prepare_threshold=None: no server-side prepared statements, so
    # the same code runs behind PgBouncer in transaction pooling mode.
    conn = psycopg.connect(autocommit=True, prepare_threshold=None)
    register_composite(CompositeInfo.fetch(conn, "eventstore.command"), conn)
    return conn


def command(conn, tenant, invoice, event_type, payload=None, expected_sequence=None):
    """One eventstore.command, field by field (the composite has no defaults of its own)."""
    Command = conn.adapters.types["eventstore.command"].python_type
    return Command(
        instance_id=tenant, aggregate_type="invoice", aggregate_id=invoice,
        event_type=event_type, revision=1,
        payload=Jsonb(payload) if payload is not None else None,
        creator=None, owner=None,  # NULL: current_user, and the aggregate's owner
        expected_sequence=expected_sequence,
        id=None, metadata=None)  # an event id makes a retried push safe (README "Retries")


def push(conn, commands):
    """Appends the commands in one transaction; prints the events written, or the refusal."""
    try:
        with conn.transaction():
            rows = conn.execute(
                "SELECT instance_id, aggregate_id, sequence, in_tx_order"
                "  FROM eventstore.push(%s) ORDER BY in_tx_order", [commands]).fetchall()
    except psycopg.Error as e:
        if e.sqlstate != "ES409":  # ES409: expected_sequence did not match
            raise
        conflict = json.loads(e.diag.message_detail)
        print(f"refused {conflict['instance_id']}/{conflict['aggregate_id']}: {e.sqlstate} "
              f"expected_sequence {conflict['expected_sequence']}, "
              f"actual_sequence {conflict['actual_sequence']}")
        return
    for (tenant, invoice, sequence, in_tx_order), cmd in zip(rows, commands):
        amount = f" amount_cents={cmd.payload.obj['amount_cents']}" if cmd.payload else ""
        print(f"pushed {tenant}/{invoice} seq={sequence} {cmd.event_type}{amount}")


def main():
    with connect() as conn:
        for tenant, unit in TENANTS.items():
            # A new invoice and its first line in one atomic push; expected_sequence 0: the
            # aggregate must not exist yet.
            push(conn, [command(conn, tenant, "inv-1", "invoice.created",
                                {"amount_cents": 120 * unit}, expected_sequence=0),
                        command(conn, tenant, "inv-1", "invoice.line_added",
                                {"amount_cents": 30 * unit})])
            push(conn, [command(conn, tenant, "inv-2", "invoice.created",
                                {"amount_cents": 75 * unit}, expected_sequence=0)])
            for i in range(1, 6):  # one event per call, as request handlers append them
                push(conn, [command(conn, tenant, "inv-2", "invoice.line_added",
                                    {"amount_cents": i * unit})])
            push(conn, [command(conn, tenant, "inv-1", "invoice.paid", expected_sequence=2)])
            # A second "pay" decided on the same stale state: refused, nothing written.
            push(conn, [command(conn, tenant, "inv-1", "invoice.paid", expected_sequence=2)])


if __name__ == "__main__":
    main()
