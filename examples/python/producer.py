"""Producer: appends invoice events for two tenants with eventstore.push (psycopg 3).

Each push is one call in one short transaction, as a request handler would make it: all its
events commit or none do (G1), and each aggregate gets sequences 1, 2, 3... (G2). Commands are
sent in the composite form, eventstore.push(eventstore.command[]): psycopg binds a list of
registered composites as an array. A stale expected_sequence shows optimistic concurrency: it
is refused with SQLSTATE ES409, whose detail is a JSON object (the aggregate, the expected and
the actual sequence), and nothing is written. The last push carries an event id and metadata
and is sent twice, the second time on a new connection as after a connection lost before the
answer came: the retry returns the rows the first one wrote and writes nothing (G14).

Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). Prints one line per
event written, one per refused push and one per retried event.
"""
import json
import uuid

import psycopg
from psycopg.types.composite import CompositeInfo, register_composite
from psycopg.types.json import Jsonb

TENANTS = {"acme": 100, "globex": 7}  # tenant -> price unit in cents
# The id of each tenant's inv-3 created event. An application makes a fresh one (UUIDv4 or v7)
# when it decides the event; fixed here so that every run and every language print the same.
EVENT_IDS = {"acme": uuid.UUID("00000000-0000-4000-8000-0000000000a1"),
             "globex": uuid.UUID("00000000-0000-4000-8000-0000000000b1")}


def connect():
    # autocommit: every transaction is an explicit `with conn.transaction()` (BEGIN ... COMMIT),
    # never a savepoint (G8). prepare_threshold=None: no server-side prepared statements, so
    # the same code runs behind PgBouncer in transaction pooling mode.
    conn = psycopg.connect(autocommit=True, prepare_threshold=None)
    register_composite(CompositeInfo.fetch(conn, "eventstore.command"), conn)
    return conn


def command(conn, tenant, invoice, event_type, payload=None, expected_sequence=None,
            event_id=None, metadata=None):
    """One eventstore.command, field by field (the composite has no defaults of its own)."""
    Command = conn.adapters.types["eventstore.command"].python_type
    return Command(
        instance_id=tenant, aggregate_type="invoice", aggregate_id=invoice,
        event_type=event_type, revision=1,
        payload=Jsonb(payload) if payload is not None else None,
        creator=None, owner=None,  # NULL: current_user, and the aggregate's owner
        expected_sequence=expected_sequence,
        id=event_id,  # NULL: no event id (then a retry is not recognised as one)
        metadata=Jsonb(metadata) if metadata is not None else None)


def send(conn, commands):
    """Appends the commands in one transaction; returns push's rows, one per event."""
    with conn.transaction():
        return conn.execute(
            "SELECT instance_id, aggregate_id, sequence, position, in_tx_order"
            "  FROM eventstore.push(%s) ORDER BY in_tx_order", [commands]).fetchall()


def push(conn, commands):
    """Appends the commands; prints the events written, or the refusal. Returns the rows."""
    try:
        rows = send(conn, commands)
    except psycopg.Error as e:
        if e.sqlstate != "ES409":  # ES409: expected_sequence did not match
            raise
        conflict = json.loads(e.diag.message_detail)
        print(f"refused {conflict['instance_id']}/{conflict['aggregate_id']}: {e.sqlstate} "
              f"expected_sequence={conflict['expected_sequence']} "
              f"actual_sequence={conflict['actual_sequence']}")
        return []
    for (tenant, invoice, sequence, _, _), cmd in zip(rows, commands):
        amount = f" amount_cents={cmd.payload.obj['amount_cents']}" if cmd.payload else ""
        print(f"pushed {tenant}/{invoice} seq={sequence} {cmd.event_type}{amount}")
    return rows


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
            # A push with an event id and metadata, then the same push again as its retry: the
            # answer to the first was "lost" (a new connection sends the retry). The stored
            # event's rows come back, nothing is written, and expected_sequence 0 is not
            # checked again (the first push moved the aggregate past it).
            created = [command(conn, tenant, "inv-3", "invoice.created", {"amount_cents": unit},
                               expected_sequence=0, event_id=EVENT_IDS[tenant],
                               metadata={"correlation_id": f"example-{tenant}"})]
            first = push(conn, created)
            with connect() as reconnected:
                retried = send(reconnected, created)
            for (_, invoice, sequence, position, _), first_row in zip(retried, first):
                print(f"retried {tenant}/{invoice} seq={sequence} "
                      f"same_position={str(position == first_row[3]).lower()}")


if __name__ == "__main__":
    main()
