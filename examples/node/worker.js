// Projection worker: keeps the read model `invoices` up to date from the invoice events
// (node-postgres).
//
// A loop of short transactions, one per batch. Each transaction takes the projection's lock,
// calls eventstore.projection_catchup, applies every event of the batch to the read model and
// commits: the read model and the projection's checkpoint move together (G5). A handler error
// rolls the whole transaction back, so the same batch comes again. Another worker holding the
// projection is not an error: this one sleeps briefly and tries again (G6). The worker stops
// when a catch-up, made while holding the lock, returns no rows (caught up), then prints the
// read model.
//
// Run as many copies as you like; at most one applies a given tenant's batch at a time.
//
//     node worker.js [--name A] [--batch-size 4] [--fail-on-batch 2] [--tenants acme,globex]
//
// Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). The read model goes
// to stdout, one line per invoice; progress and a summary go to stderr.
'use strict';
const { Client } = require('pg');
const { parseArgs } = require('node:util');

const PROJECTION = 'invoices';
const RETRY_PAUSE_MS = 200; // when the projection is busy or a batch was rolled back
const MAX_ATTEMPTS = 5;     // consecutive rolled-back attempts of one batch before giving up

const READ_MODEL = `
CREATE TABLE IF NOT EXISTS invoices (
    instance_id text    NOT NULL,
    invoice_id  text    NOT NULL,
    total_cents bigint  NOT NULL,
    lines       integer NOT NULL DEFAULT 0,
    paid        boolean NOT NULL DEFAULT false,
    version     bigint  NOT NULL,  -- the sequence of the invoice's last event applied
    PRIMARY KEY (instance_id, invoice_id)
)`;

const CATCHUP = `
SELECT instance_id, aggregate_id, sequence, event_type, payload
  FROM eventstore.projection_catchup($1, $2, $3, aggregate_types => ARRAY['invoice'])`;

// One statement per event type, with its parameters. Every statement checks that the event is
// the invoice's next one (version = sequence - 1), so a skipped, repeated or reordered event
// would fail loudly.
const HANDLERS = {
  'invoice.created': (e) => [`
    INSERT INTO invoices (instance_id, invoice_id, total_cents, version)
    SELECT $1, $2, $3::bigint, $4::bigint WHERE $4::bigint = 1`,
    [e.instance_id, e.aggregate_id, e.payload.amount_cents, e.sequence]],
  'invoice.line_added': (e) => [`
    UPDATE invoices SET total_cents = total_cents + $3::bigint, lines = lines + 1,
                        version = $4::bigint
     WHERE instance_id = $1 AND invoice_id = $2 AND version = $4::bigint - 1`,
    [e.instance_id, e.aggregate_id, e.payload.amount_cents, e.sequence]],
  'invoice.paid': (e) => [`
    UPDATE invoices SET paid = true, version = $3::bigint
     WHERE instance_id = $1 AND invoice_id = $2 AND version = $3::bigint - 1`,
    [e.instance_id, e.aggregate_id, e.sequence]],
};

class HandlerError extends Error {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Worker {
  constructor(client, name, batchSize, failOnBatch) {
    Object.assign(this, { client, name, batchSize });
    this.failOnBatch = failOnBatch; // 0, or: fail once, on the last event of this batch
    this.batches = this.events = this.busy = this.rollbacks = 0;
  }

  // Workers start together: serialize the CREATE with a transaction-scoped lock of our own.
  async createReadModel() {
    await this.inTransaction(async () => {
      await this.client.query("SELECT pg_advisory_xact_lock(hashtext('examples: invoices read model'))");
      await this.client.query(READ_MODEL);
    });
  }

  // BEGIN, fn, COMMIT; on any error ROLLBACK and rethrow. No savepoints (G8).
  async inTransaction(fn) {
    await this.client.query('BEGIN');
    let result;
    try {
      result = await fn();
    } catch (err) {
      await this.client.query('ROLLBACK');
      throw err;
    }
    await this.client.query('COMMIT');
    return result;
  }

  async apply(event) {
    const where = `${event.instance_id}/${event.aggregate_id} seq ${event.sequence}`;
    const handler = HANDLERS[event.event_type];
    if (!handler) throw new HandlerError(`${where}: unknown event type ${event.event_type}`);
    const result = await this.client.query(...handler(event));
    if (result.rowCount !== 1) throw new HandlerError(`${where}: not the invoice's next event`);
  }

  // One transaction. Returns the number of events applied, or null when another worker holds
  // the projection. Throws (after rolling back) when a handler fails.
  runBatch(tenant) {
    return this.inTransaction(async () => {
      // Lock first: a catch-up that returns zero rows cannot tell "another worker has it" from
      // "caught up". Holding the lock, the catch-up re-enters it and zero rows mean caught up.
      // The lock is transaction-scoped: COMMIT or ROLLBACK releases it.
      const lock = await this.client.query('SELECT eventstore.lock_projection($1, $2) AS locked',
                                           [PROJECTION, tenant]);
      if (!lock.rows[0].locked) return null;
      const batch = await this.client.query(CATCHUP, [PROJECTION, tenant, this.batchSize]);
      for (const [i, event] of batch.rows.entries()) {
        if (this.batches + 1 === this.failOnBatch && i === batch.rows.length - 1) {
          this.failOnBatch = 0;
          throw new HandlerError('simulated failure on the last event of the batch');
        }
        await this.apply(event);
      }
      return batch.rows.length;
    });
  }

  async catchUp(tenant) {
    let attempts = 0;
    for (;;) {
      let applied;
      try {
        applied = await this.runBatch(tenant);
      } catch (err) {
        // The transaction was rolled back: read model and checkpoint are unchanged and the
        // same batch comes again on the next try.
        this.rollbacks += 1;
        attempts += 1;
        console.error(`worker ${this.name}: ${tenant}: batch rolled back (${err.message})`);
        if (attempts >= MAX_ATTEMPTS) throw err;
        await sleep(RETRY_PAUSE_MS);
        continue;
      }
      attempts = 0;
      if (applied === null) { // another worker is running this projection: try again soon
        this.busy += 1;
        await sleep(RETRY_PAUSE_MS);
      } else if (applied === 0) { // caught up
        return;
      } else {
        this.batches += 1;
        this.events += applied;
      }
    }
  }

  async printReadModel() {
    const { rows } = await this.client.query(
      `SELECT instance_id, invoice_id, total_cents, lines, paid, version
         FROM invoices ORDER BY instance_id, invoice_id`);
    for (const r of rows) {
      console.log(`${r.instance_id}/${r.invoice_id} total_cents=${r.total_cents} lines=${r.lines} ` +
                  `paid=${r.paid} version=${r.version}`);
    }
  }
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      name: { type: 'string', default: '1' },
      'batch-size': { type: 'string', default: '100' },
      'fail-on-batch': { type: 'string', default: '0' },
      tenants: { type: 'string', default: 'acme,globex' },
    },
  });
  const client = new Client();
  await client.connect();
  try {
    const worker = new Worker(client, args.name, Number(args['batch-size']), Number(args['fail-on-batch']));
    await worker.createReadModel();
    for (const tenant of args.tenants.split(',')) await worker.catchUp(tenant);
    await worker.printReadModel();
    console.error(`worker ${worker.name}: ${worker.batches} batches, ${worker.events} events, ` +
                  `${worker.busy} busy retries, ${worker.rollbacks} rollbacks`);
  } finally {
    await client.end();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
