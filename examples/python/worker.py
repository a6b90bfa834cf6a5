"""Projection worker: keeps the read model `invoices` up to date from the invoice events (psycopg 3).

A loop of short transactions, one per batch. Each transaction takes the projection's lock,
calls eventstore.projection_catchup, applies every event of the batch to the read model and
commits: the read model and the projection's checkpoint move together (G5). A handler error
rolls the whole transaction back, so the same batch comes again. Another worker holding the
projection is not an error: this one sleeps briefly and tries again (G6). The worker stops when
a catch-up, made while holding the lock, returns no rows (caught up), then prints the read model.

Run as many copies as you like; at most one applies a given tenant's batch at a time.

    python worker.py [--name A] [--batch-size 4] [--fail-on-batch 2] [--tenants acme,globex]

Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). The read model goes to
stdout, one line per invoice; progress and a summary go to stderr.
"""
import argparse
import sys
import time

import psycopg

PROJECTION = "invoices"
RETRY_PAUSE = 0.2  # seconds to wait when the projection is busy or a batch was rolled back
MAX_ATTEMPTS = 5   # consecutive rolled-back attempts of one batch before giving up

READ_MODEL = """
CREATE TABLE IF NOT EXISTS invoices (
    instance_id text    NOT NULL,
    invoice_id  text    NOT NULL,
    total_cents bigint  NOT NULL,
    lines       integer NOT NULL DEFAULT 0,
    paid        boolean NOT NULL DEFAULT false,
    version     bigint  NOT NULL,  -- the sequence of the invoice's last event applied
    PRIMARY KEY (instance_id, invoice_id)
)"""

CATCHUP = """
SELECT instance_id, aggregate_id, sequence, event_type, payload
  FROM eventstore.projection_catchup(%s, %s, %s, aggregate_types => ARRAY['invoice'])"""

# One statement per event type. Every statement checks that the event is the invoice's next
# one (version = sequence - 1), so a skipped, repeated or reordered event would fail loudly.
HANDLERS = {
    "invoice.created": """
        INSERT INTO invoices (instance_id, invoice_id, total_cents, version)
        SELECT %(tenant)s, %(invoice)s, %(amount)s, %(sequence)s WHERE %(sequence)s = 1""",
    "invoice.line_added": """
        UPDATE invoices SET total_cents = total_cents + %(amount)s, lines = lines + 1,
                            version = %(sequence)s
         WHERE instance_id = %(tenant)s AND invoice_id = %(invoice)s
           AND version = %(sequence)s - 1""",
    "invoice.paid": """
        UPDATE invoices SET paid = true, version = %(sequence)s
         WHERE instance_id = %(tenant)s AND invoice_id = %(invoice)s
           AND version = %(sequence)s - 1""",
}


class HandlerError(Exception):
    pass


class Worker:
    def __init__(self, conn, name, batch_size, fail_on_batch):
        self.conn, self.name, self.batch_size = conn, name, batch_size
        self.fail_on_batch = fail_on_batch  # 0, or: fail once, on the last event of this batch
        self.batches = self.events = self.busy = self.rollbacks = 0

    def create_read_model(self):
        # Workers start together: serialize the CREATE with a transaction-scoped lock of our own.
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('examples: invoices read model'))")
            self.conn.execute(READ_MODEL)

    def apply(self, tenant, invoice, sequence, event_type, payload):
        if event_type not in HANDLERS:
            raise HandlerError(f"{tenant}/{invoice} seq {sequence}: unknown event type {event_type}")
        params = {"tenant": tenant, "invoice": invoice, "sequence": sequence,
                  "amount": (payload or {}).get("amount_cents", 0)}
        if self.conn.execute(HANDLERS[event_type], params).rowcount != 1:
            raise HandlerError(f"{tenant}/{invoice} seq {sequence}: not the invoice's next event")

    def run_batch(self, tenant):
        """One transaction. Returns the number of events applied, or None when another worker
        holds the projection. Raises (after rolling back) when a handler fails."""
        with self.conn.transaction():
            # Lock first: a catch-up that returns zero rows cannot tell "another worker has it"
            # from "caught up". Holding the lock, the catch-up re-enters it and zero rows mean
            # caught up. The lock is transaction-scoped: COMMIT or ROLLBACK releases it.
            locked = self.conn.execute("SELECT eventstore.lock_projection(%s, %s)",
                                       [PROJECTION, tenant]).fetchone()[0]
            if not locked:
                return None
            batch = self.conn.execute(CATCHUP, [PROJECTION, tenant, self.batch_size]).fetchall()
            for i, event in enumerate(batch):
                if self.batches + 1 == self.fail_on_batch and i == len(batch) - 1:
                    self.fail_on_batch = 0
                    raise HandlerError("simulated failure on the last event of the batch")
                self.apply(*event)
            return len(batch)

    def catch_up(self, tenant):
        attempts = 0
        while True:
            try:
                applied = self.run_batch(tenant)
            except (HandlerError, psycopg.Error) as e:
                # The transaction was rolled back: read model and checkpoint are unchanged and
                # the same batch comes again on the next try.
                self.rollbacks += 1
                attempts += 1
                print(f"worker {self.name}: {tenant}: batch rolled back ({e})", file=sys.stderr)
                if attempts >= MAX_ATTEMPTS:
                    raise
                time.sleep(RETRY_PAUSE)
                continue
            attempts = 0
            if applied is None:  # another worker is running this projection: try again soon
                self.busy += 1
                time.sleep(RETRY_PAUSE)
            elif applied == 0:   # caught up
                return
            else:
                self.batches += 1
                self.events += applied

    def print_read_model(self):
        for tenant, invoice, total, lines, paid, version in self.conn.execute(
                "SELECT instance_id, invoice_id, total_cents, lines, paid, version"
                "  FROM invoices ORDER BY instance_id, invoice_id"):
            print(f"{tenant}/{invoice} total_cents={total} lines={lines} "
                  f"paid={str(paid).lower()} version={version}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="1")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--fail-on-batch", type=int, default=0)
    parser.add_argument("--tenants", default="acme,globex")
    args = parser.parse_args()
    # autocommit: each `with conn.transaction()` is BEGIN ... COMMIT, never a savepoint (G8);
    # prepare_threshold=None: safe behind PgBouncer in transaction pooling mode.
    with psycopg.connect(autocommit=True, prepare_threshold=None) as conn:
        worker = Worker(conn, args.name, args.batch_size, args.fail_on_batch)
        worker.create_read_model()
        for tenant in args.tenants.split(","):
            worker.catch_up(tenant)
        worker.print_read_model()
        print(f"worker {worker.name}: {worker.batches} batches, {worker.events} events, "
              f"{worker.busy} busy retries, {worker.rollbacks} rollbacks", file=sys.stderr)


if __name__ == "__main__":
    main()
